//! CPU-bound work of background regenerations (compressing a changed page into its Brotli
//! and gzip variants) runs on threads of its own, at a lower scheduling priority than the
//! threads that serve visitors: nice [`NICE`] (Linux keeps a nice value per thread).
//!
//! Why: a publish that changes many pages makes isr compress each of them, several
//! milliseconds of CPU per 128 KiB page. On tokio's blocking pool that work ran at the
//! same priority as the hit loops, and the kernel shared the CPU evenly between every
//! runnable thread: while 1,000 changed 128 KiB pages were compressed, hits on other
//! pages fell to a fifth of their rate and their p99 rose from about 1 ms to 31–38 ms
//! (BENCHMARKS.md, "An AMD VM again, and a publish that no longer starves hits"). At
//! nice 10 a compressing thread gets about a tenth of a CPU the hit loops want, and all of
//! any CPU they leave idle, so hits keep their pace and a publish finishes as fast as the
//! spare CPU allows. The compressors also give way every 4 KiB of input
//! ([`let_others_run`]), so that a hit loop woken meanwhile waits a fraction of a
//! millisecond rather than a scheduler tick (p99 during a publish: ~4 → 2–3 ms).
//!
//! The caller waits for the result on one of tokio's blocking threads (which sleeps
//! meanwhile), as if the work ran there: tokio's paused test clock stands still while
//! blocking work is in flight, and tests of regenerations rely on that. Work a visitor
//! waits for (a miss, `x-prerender-revalidate`) stays on tokio's blocking pool at normal
//! priority, and so does a background regeneration's once a visitor joins its flight
//! (a page past its `expire`), unless a background thread has already started on it.
//! If the threads cannot start, or the kernel refuses the nice
//! value, background work runs there too, or at normal priority: slower hits during a
//! publish, nothing worse.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, OnceLock};

/// The nice value of the background threads (0 is normal; 19 the lowest priority).
pub(crate) const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The background threads: one per CPU this process may run on, started on first use.
struct Pool {
    jobs: mpsc::Sender<Job>,
}

/// The work ended without a result: it panicked, or no thread was left to run it.
#[derive(Debug)]
pub(crate) struct Lost;

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("compressing the page failed: the work panicked or was dropped")
    }
}

/// Runs `work` on a background thread and waits for its result; on tokio's blocking pool
/// when the background threads could not start. Once `visitor` completes (a visitor now
/// waits for this work), work that no background thread has started yet runs on tokio's
/// blocking pool at normal priority instead: a visitor never waits behind queued
/// background work at a lower priority.
pub(crate) async fn run<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
    visitor: impl std::future::Future<Output = ()>,
) -> Result<T, Lost> {
    let Some(pool) = pool() else {
        return on_blocking_pool(work).await;
    };
    // Whoever takes the work first runs it: a background thread, or the visitor's.
    let work = Arc::new(Mutex::new(Some(work)));
    let take = |work: &Mutex<Option<_>>| work.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (done, result) = tokio::sync::oneshot::channel();
    let queued = work.clone();
    let job: Job = Box::new(move || {
        if let Some(work) = take(&queued) {
            let _ = done.send(panic::catch_unwind(AssertUnwindSafe(work)));
        }
    });
    pool.jobs.send(job).map_err(|_| Lost)?;
    // Waited for on a blocking thread, so that tokio counts the work as blocking work in
    // flight, as when it ran there: a paused test clock does not jump ahead meanwhile.
    let mut waiting = tokio::task::spawn_blocking(move || result.blocking_recv());
    tokio::select! {
        biased;
        finished = &mut waiting => return finished_with(finished),
        () = visitor => {}
    }
    match take(&work) {
        Some(work) => on_blocking_pool(work).await,
        None => finished_with(waiting.await),
    }
}

/// The result of background work, as its waiting thread received it.
fn finished_with<T>(
    finished: Result<Result<std::thread::Result<T>, impl Sized>, tokio::task::JoinError>,
) -> Result<T, Lost> {
    match finished {
        Ok(Ok(Ok(value))) => Ok(value),
        _ => Err(Lost),
    }
}

/// Runs `work` on tokio's blocking pool, at normal priority: work a visitor waits for.
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Lost> {
    tokio::task::spawn_blocking(work).await.map_err(|_| Lost)
}

/// How many background threads the pool starts: one per CPU this process may run on.
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<Pool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = threads();
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for i in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("isr-background-{i}"))
                .spawn(move || serve(&queue));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "cannot start a background thread"),
            }
        }
        (started > 0).then_some(Pool { jobs })
    })
    .as_ref()
}

thread_local! {
    static ON_BACKGROUND_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// On a background thread, lets a thread of higher priority that is waiting for this CPU
/// (a hit loop woken by a request) run first (`sched_yield`); elsewhere, nothing. Long
/// background work calls it every few kilobytes of input, so that a hit loop woken meanwhile
/// need not wait for the scheduler's next tick to get the CPU back.
pub(crate) fn let_others_run() {
    if ON_BACKGROUND_THREAD.get() {
        std::thread::yield_now();
    }
}

/// A background thread: lowers its own priority, then runs jobs until the pool is gone.
fn serve(queue: &Mutex<mpsc::Receiver<Job>>) {
    ON_BACKGROUND_THREAD.set(true);
    lower_priority();
    loop {
        // The lock is held only while waiting for a job, not while running it.
        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        job();
    }
}

/// Sets the calling thread's nice value to [`NICE`], unless it is already lower in
/// priority. On Linux `setpriority` of "the calling process" (no pid) sets the calling
/// thread's, which is what makes this per thread.
fn lower_priority() {
    let now = rustix::process::getpriority_process(None).unwrap_or(0);
    if now >= NICE {
        return;
    }
    if let Err(e) = rustix::process::setpriority_process(None, NICE) {
        tracing::debug!(error = %e, "background thread stays at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }

    #[tokio::test]
    async fn work_runs_at_a_lower_priority_and_returns_its_result() {
        let before = nice();
        let (nice_there, sum) = run(|| (nice(), (1..=10).sum::<i32>()), pending())
            .await
            .unwrap();
        assert_eq!(sum, 55);
        assert!(
            nice_there >= NICE,
            "background work ran at nice {nice_there}"
        );
        // Only the background threads are lowered, not the caller's.
        assert_eq!(nice(), before);
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_threads_go_on() {
        assert!(run(|| -> u8 { panic!("boom") }, pending()).await.is_err());
        assert_eq!(run(|| 7, pending()).await.unwrap(), 7);
    }

    /// Keeps every background thread busy until dropped, so that work sent meanwhile
    /// stays queued.
    struct Busy {
        _releases: Vec<std::sync::mpsc::Sender<()>>,
    }

    async fn occupy_every_thread() -> Busy {
        let n = threads();
        let (started, all_started) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        for _ in 0..n {
            let (release, held) = std::sync::mpsc::channel::<()>();
            let started = started.clone();
            let hold = move || {
                let _ = started.send(());
                let _ = held.recv();
            };
            tokio::spawn(run(hold, pending()));
            releases.push(release);
        }
        tokio::task::spawn_blocking(move || all_started.iter().take(n).count())
            .await
            .unwrap();
        Busy {
            _releases: releases,
        }
    }

    #[tokio::test]
    async fn queued_work_runs_at_normal_priority_once_a_visitor_waits() {
        let before = nice();
        let busy = occupy_every_thread().await;
        let limit = std::time::Duration::from_secs(10);
        let outcome = tokio::time::timeout(limit, run(nice, ready(()))).await;
        drop(busy);
        let nice_there = outcome
            .expect("the visitor's work waited for a busy background thread")
            .unwrap();
        assert_eq!(
            nice_there, before,
            "the visitor's work ran at a lower priority"
        );
    }

    #[tokio::test]
    async fn started_work_finishes_where_it_runs_when_a_visitor_comes() {
        let (started, has_started) = tokio::sync::oneshot::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let work = move || {
            let _ = started.send(());
            let _ = held.recv();
            nice()
        };
        let visitor = async move {
            let _ = has_started.await;
            let _ = release.send(());
        };
        let limit = std::time::Duration::from_secs(10);
        let nice_there = tokio::time::timeout(limit, run(work, visitor))
            .await
            .expect("the visitor was never heard")
            .unwrap();
        assert!(
            nice_there >= NICE,
            "started work moved: it ran at nice {nice_there}"
        );
    }
}
