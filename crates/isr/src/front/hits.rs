//! The hit loops: plain epoll loops, one thread per CPU, that answer the public listener's
//! hits without a task, a waker or a timer per request.
//!
//! A connection the listener accepts comes here first. Each loop reads what its sockets
//! hold and answers every request for a page that can be had without waiting (fresh or
//! stale), from the memory tier or from the store's pages in the OS page cache, with the
//! lane's own code (`Front::head`, `Front::answer_from`): the same headers, byte for byte.
//! Everything else leaves the loop with the bytes already read:
//! - a request for a page that cannot be had without waiting (a miss, an expired page, a
//!   page the store would read from the disk) goes to the lane on tokio, which serves it
//!   through the engine, and gives the connection back here after a hit that leaves
//!   nothing more to read (a connection whose pages keep coming from the origin or the
//!   disk stays there);
//! - a request that needs hyper (a body, the `/_isr/` routes, a bypass, a head cut short)
//!   goes to hyper through the lane's hand-off.
//!
//! A response the socket cannot take at once waits here for the socket to drain (epoll's
//! `EPOLLOUT`), head first, then the body (copied, or with `sendfile` from its page file).
//! A head must arrive within `[limits] header_read_timeout` of the previous answer (or of
//! the connection's start), checked every tenth of it (at most every second), as the lane's
//! timer does. On shutdown idle connections close, and the others once their answer is out.
//!
//! Why: on a 16 KiB hit, tokio's readiness, wakeups and timers took about a third of
//! isr's user-space instructions per hit, about as much as its cache work; without them a
//! hit costs 45 % fewer (BENCHMARKS.md, "Hit loops without tokio").

use std::io::{self, IoSlice, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::sync::watch;

use super::lane::{self, Head, Held, Start};
use super::Front;
use crate::entry::Body;

/// The hit loops of one listener: where accepted connections go.
#[derive(Clone)]
pub(super) struct Hits {
    inner: Arc<Inner>,
}

struct Inner {
    doors: Vec<Door>,
    next: AtomicUsize,
    stopping: AtomicBool,
    closed: AtomicBool,
}

/// How a connection enters one loop.
struct Door {
    arrivals: mpsc::Sender<Arrival>,
    waker: Waker,
}

/// A connection on its way into a loop (accepted, or given back with nothing to read).
struct Arrival {
    stream: TcpStream,
    held: Held,
}

const WAKE: Token = Token(usize::MAX);

impl Hits {
    /// Starts one loop per CPU this process may run on. `stopping` turns true on
    /// shutdown; it goes with each connection handed to tokio.
    pub(super) fn start(front: Arc<Front>, stopping: watch::Receiver<bool>) -> io::Result<Hits> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        let rt = tokio::runtime::Handle::current();
        let mut doors = Vec::with_capacity(n);
        let mut loops = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKE)?;
            let (arrivals, inbox) = mpsc::channel();
            doors.push(Door { arrivals, waker });
            loops.push((poll, inbox));
        }
        let hits = Hits {
            inner: Arc::new(Inner {
                doors,
                next: AtomicUsize::new(0),
                stopping: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        };
        for (i, (poll, inbox)) in loops.into_iter().enumerate() {
            let mut l = Loop {
                front: front.clone(),
                hits: hits.clone(),
                shutdown: stopping.clone(),
                stopping: false,
                rt: rt.clone(),
                poll,
                inbox,
                conns: Vec::new(),
                free: Vec::new(),
                key: String::with_capacity(256),
            };
            std::thread::Builder::new()
                .name(format!("isr-hits-{i}"))
                .spawn(move || l.run())?;
        }
        Ok(hits)
    }

    /// Takes an accepted connection (or one the lane gives back, with nothing left to
    /// read) into a loop, in turn.
    pub(super) fn add(&self, stream: std::net::TcpStream, held: Held) {
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.doors.len();
        let door = &self.inner.doors[i];
        let arrival = Arrival {
            stream: TcpStream::from_std(stream),
            held,
        };
        if door.arrivals.send(arrival).is_ok() {
            let _ = door.waker.wake();
        }
    }

    /// Shutdown: idle connections close now, the others once their answer is out.
    pub(super) fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        self.wake_all();
    }

    /// Ends the loops and closes the connections they hold.
    pub(super) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        for door in &self.inner.doors {
            let _ = door.waker.wake();
        }
    }
}

/// Closes the hit loops when dropped (when the listener's `serve` ends, or is dropped).
pub(super) struct CloseOnDrop(pub(super) Hits);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// One loop's state, owned by its thread.
struct Loop {
    front: Arc<Front>,
    hits: Hits,
    /// Goes with each connection handed to tokio.
    shutdown: watch::Receiver<bool>,
    /// Shutdown has begun: connections close once idle.
    stopping: bool,
    rt: tokio::runtime::Handle,
    poll: Poll,
    inbox: mpsc::Receiver<Arrival>,
    /// Indexed by token; `free` lists the empty places.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// The cache key of the request being answered (requests are answered one at a time).
    key: String,
}

/// A connection in a loop.
struct Conn {
    stream: TcpStream,
    held: Held,
    /// Bytes read and not yet answered.
    buf: Vec<u8>,
    /// The answer being written: its head, how much of it is out, then its body.
    out: Vec<u8>,
    out_sent: usize,
    body: Option<Body>,
    body_sent: usize,
    /// When the loop started waiting for the next request head.
    since: Instant,
    /// The last read emptied the socket: nothing to read until epoll says so.
    drained: bool,
}

/// When a batch of epoll events is answered: the loop's clock (for head timeouts) and the
/// engine's (freshness, `Age`), each read once per batch rather than once per hit (100
/// fewer user-space instructions per hit under `wrk -c64`, BENCHMARKS.md). A batch is
/// answered within milliseconds, so a page that went stale during it is found stale by the
/// next request rather than by this one.
#[derive(Clone, Copy)]
struct Now {
    at: Instant,
    /// [`crate::engine::Engine::now`].
    ms: u64,
}

/// What a connection needs after the loop has done what it could.
enum Next {
    /// Wait for epoll.
    Wait,
    Close,
    /// To the lane on tokio (a request for a page that cannot be had without waiting).
    Lane,
    /// To hyper, through the lane's hand-off.
    Hyper,
}

impl Loop {
    fn run(&mut self) {
        // Stale pages start their regeneration with `tokio::spawn`; the engine's clock is
        // tokio's.
        let _rt = self.rt.enter();
        let limits = &self.front.engine.config().limits;
        let head_timeout = limits.header_read_timeout;
        let sweep_every =
            (head_timeout / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut events = Events::with_capacity(256);
        let mut last_sweep = Instant::now();
        loop {
            let timeout = (self.free.len() < self.conns.len()).then_some(sweep_every);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "hit loop: epoll failed; its connections close");
                return;
            }
            let now = Now {
                at: Instant::now(),
                ms: self.front.engine.now(),
            };
            for ev in events.iter() {
                if ev.token() == WAKE {
                    if self.hits.inner.closed.load(Ordering::Acquire) {
                        return;
                    }
                    if !self.stopping && self.hits.inner.stopping.load(Ordering::Acquire) {
                        self.stopping = true;
                        for i in 0..self.conns.len() {
                            self.drive(i, now, false);
                        }
                    }
                    self.admit(now);
                } else {
                    let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
                    self.drive(ev.token().0, now, readable);
                }
            }
            if now.at.duration_since(last_sweep) >= sweep_every {
                last_sweep = now.at;
                self.sweep(now.at, head_timeout);
            }
        }
    }

    /// Registers the connections waiting at the door and answers what they already hold.
    fn admit(&mut self, now: Now) {
        while let Ok(Arrival { mut stream, held }) = self.inbox.try_recv() {
            let i = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let interest = Interest::READABLE | Interest::WRITABLE;
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, Token(i), interest)
            {
                tracing::warn!(error = %e, "hit loop: could not register a connection");
                self.free.push(i);
                continue;
            }
            self.conns[i] = Some(Conn {
                stream,
                held,
                buf: Vec::new(),
                out: Vec::with_capacity(1024),
                out_sent: 0,
                body: None,
                body_sent: 0,
                since: now.at,
                drained: false,
            });
            if self.stopping {
                self.drive(i, now, false);
            }
            // epoll reports a socket that is already readable when it is registered.
        }
    }

    /// Answers what connection `i` allows, and lets it go when it must. `readable`: epoll
    /// reported bytes (or the peer's end) to read.
    fn drive(&mut self, i: usize, now: Now, readable: bool) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        if readable {
            c.drained = false;
        }
        // A panic while answering closes this connection only, as it would end only its
        // task on tokio: the loop goes on serving the others.
        let (front, key, stopping) = (&self.front, &mut self.key, self.stopping);
        let answer = std::panic::AssertUnwindSafe(|| serve(front, c, key, now, stopping));
        let next = std::panic::catch_unwind(answer).unwrap_or_else(|_| {
            tracing::error!("hit loop: answering a request panicked; its connection closes");
            Next::Close
        });
        self.settle(i, next);
    }

    /// Does what `next` says with connection `i`: leaves it, closes it, or hands it to tokio.
    fn settle(&mut self, i: usize, next: Next) {
        if matches!(next, Next::Wait) {
            return;
        }
        let Some(mut c) = self.conns[i].take() else {
            return;
        };
        self.free.push(i);
        match next {
            Next::Wait | Next::Close => {}
            Next::Lane | Next::Hyper => {
                let _ = self.poll.registry().deregister(&mut c.stream);
                self.hand_off(c, matches!(next, Next::Hyper));
            }
        }
    }

    /// Connections whose next head has not come within `head_timeout`: an idle one closes,
    /// a head cut short goes to hyper (which answers it or closes).
    fn sweep(&mut self, now: Instant, head_timeout: Duration) {
        for i in 0..self.conns.len() {
            let Some(c) = &self.conns[i] else { continue };
            if c.writing() || now.duration_since(c.since) < head_timeout {
                continue;
            }
            let next = if c.buf.is_empty() {
                Next::Close
            } else {
                Next::Hyper
            };
            self.settle(i, next);
        }
    }

    /// Gives `c` to tokio: to hyper, or to the lane (which gives it back after a hit
    /// answered without waiting).
    fn hand_off(&self, c: Conn, hyper: bool) {
        let front = self.front.clone();
        let stopping = self.shutdown.clone();
        let hits = self.hits.clone();
        let stream = std::net::TcpStream::from(c.stream);
        let buf = BytesMut::from(&c.buf[..]);
        let held = c.held;
        self.rt.spawn(async move {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let first = if hyper {
                Start::Hyper(buf.freeze())
            } else {
                Start::Lane(buf)
            };
            front
                .connection(stream, held, first, false, stopping, Some(hits))
                .await;
        });
    }
}

/// Reads, answers and writes on `c` until it would block or must leave the loop.
fn serve(front: &Front, c: &mut Conn, key: &mut String, now: Now, stopping: bool) -> Next {
    loop {
        match c.flush() {
            Ok(true) => {}
            Ok(false) => return Next::Wait,
            Err(_) => return Next::Close,
        }
        if !c.buf.is_empty() {
            match front.head(&c.buf, key) {
                Head::Ask(ask, len) => {
                    let Some(body) = front.answer_from(&ask, &mut c.out, now.ms) else {
                        return Next::Lane;
                    };
                    c.body = body;
                    c.buf.drain(..len);
                    c.since = now.at;
                    continue;
                }
                Head::Smuggling => {
                    let _ = (&c.stream).write(lane::REFUSE_SMUGGLING);
                    return Next::Close;
                }
                Head::Partial => {}
                Head::Hyper => return Next::Hyper,
            }
        }
        if stopping && c.buf.is_empty() {
            return Next::Close;
        }
        if c.drained {
            return Next::Wait;
        }
        match c.read() {
            Ok(0) if c.buf.is_empty() => return Next::Close,
            // A head cut short: hyper answers it (400) or closes.
            Ok(0) => return Next::Hyper,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Wait,
            Err(_) if c.buf.is_empty() => return Next::Close,
            Err(_) => return Next::Hyper,
        }
    }
}

impl Conn {
    fn writing(&self) -> bool {
        self.out_sent < self.out.len() || self.body.is_some()
    }

    /// Reads what the socket holds. A read that leaves room to spare emptied the socket,
    /// so the next read waits for epoll's next edge (`drained`) instead of making a
    /// system call that can only fail (as the lane's `try_read`).
    fn read(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(4096);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read = rustix::net::recv(
            &self.stream,
            rustix::buffer::spare_capacity(&mut self.buf),
            rustix::net::RecvFlags::empty(),
        );
        match read {
            Ok((n, _)) => {
                self.drained = n > 0 && n < spare;
                Ok(n)
            }
            Err(rustix::io::Errno::INTR) => self.read(),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes what is left of the answer: `Ok(true)` once all of it is out, `Ok(false)`
    /// when the socket is full (epoll reports when it drains).
    fn flush(&mut self) -> io::Result<bool> {
        loop {
            let head = &self.out[self.out_sent..];
            let written = match &self.body {
                None if head.is_empty() => break,
                // rustix's calls, as `read`'s: straight to the kernel, without libc's
                // wrappers (about 1 % of a hit's CPU).
                None => rustix::io::write(&self.stream, head).map_err(io::Error::from),
                Some(Body::Memory(b)) => rustix::io::writev(
                    &self.stream,
                    &[IoSlice::new(head), IoSlice::new(&b[self.body_sent..])],
                )
                .map_err(io::Error::from),
                Some(Body::File(_)) if !head.is_empty() => {
                    rustix::net::send(&self.stream, head, rustix::net::SendFlags::MORE)
                        .map_err(io::Error::from)
                }
                Some(Body::File(f)) => {
                    let mut offset = f.offset() + self.body_sent as u64;
                    let left = f.len() - self.body_sent;
                    rustix::fs::sendfile(self.stream.as_fd(), f.fd(), Some(&mut offset), left)
                        .map_err(io::Error::from)
                }
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let from_head = n.min(head.len());
                    self.out_sent += from_head;
                    self.body_sent += n - from_head;
                    if self
                        .body
                        .as_ref()
                        .is_some_and(|b| self.body_sent == b.len())
                    {
                        self.body = None;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        self.out_sent = 0;
        self.body_sent = 0;
        Ok(true)
    }
}
