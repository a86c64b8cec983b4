//! Faults against the real binary: `kill -9` under write and revalidation load, again and
//! again; an origin failing in every way while visitors keep coming.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{send, Isr, Origin, Spec, SECRET};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_under_write_and_revalidation_load_twenty_times() {
    let origin = Origin::start().await;
    let mut isr = Isr::start(&origin).await;
    // Pages that a revalidation load keeps rewriting (eager) while new pages are stored.
    for i in 0..20 {
        isr.get(&format!("/fast/f{i}")).await.unwrap();
    }
    let mut stored: Vec<String> = Vec::new(); // every page a visitor got as a stored MISS
    let mut revalidated_before_kill = 0;
    for round in 0..20 {
        let mut writes = Vec::new();
        let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..60 {
            let path = format!("/blog/r{round}-{i}");
            let url = isr.url(&path);
            let answered = answered.clone();
            writes.push(tokio::spawn(async move {
                let r = send("GET", &url, &[], "").await;
                answered.fetch_add(1, Ordering::SeqCst);
                (path, r)
            }));
        }
        let mut revalidations = Vec::new();
        for _ in 0..5 {
            let url = isr.url("/_isr/revalidate");
            revalidations.push(tokio::spawn(async move {
                let auth = format!("Bearer {SECRET}");
                send(
                    "POST",
                    &url,
                    &[("authorization", &auth)],
                    r#"{"tag": "fast", "eager": true}"#,
                )
                .await
            }));
        }
        // Kill in the middle of the load, at a different point each round: after a few
        // pages were answered (so some are stored), while the rest are being written.
        let wanted = 1 + round % 6;
        common::eventually("a few pages answered", async || {
            answered.load(Ordering::SeqCst) >= wanted
        })
        .await;
        let (data, config, kept) = isr.kill();
        for w in writes {
            if let (path, Ok(r)) = w.await.unwrap() {
                if r.status == 200 && r.cache() == "MISS" {
                    stored.push(path);
                }
            }
        }
        for r in revalidations {
            if r.await.unwrap().is_ok_and(|r| r.status == 200) {
                revalidated_before_kill += 1;
            }
        }
        isr = Isr::spawn_keeping(&origin, &data, &config, kept).await;
    }
    // The store opened after every kill (spawn waits for health). Every page a visitor
    // was served as stored is a HIT, without the origin, with its whole body.
    let seen: HashSet<&String> = stored.iter().collect();
    assert_eq!(seen.len(), stored.len());
    assert!(
        stored.len() >= 20,
        "the load stored pages before the kills: {}",
        stored.len()
    );
    eprintln!(
        "{} pages stored before the 20 kills; {revalidated_before_kill} revalidations answered",
        stored.len()
    );
    for path in &stored {
        let before = origin.count(path);
        let r = isr.get(path).await.unwrap();
        assert_eq!((r.status, r.cache()), (200, "HIT"), "{path}");
        assert_eq!(
            origin.count(path),
            before,
            "{path}: a HIT never asks the origin"
        );
        let text = r.text();
        assert!(
            text.starts_with(&format!("<html><body>page {path} v1 "))
                && text.ends_with("</body></html>"),
            "{path}: torn body {text:?}"
        );
    }
    // Pages whose write was cut short are whole or absent: never torn.
    for round in 0..20 {
        for i in 0..60 {
            let path = format!("/blog/r{round}-{i}");
            let r = isr.get(&path).await.unwrap();
            assert_eq!(r.status, 200, "{path}");
            assert!(r.text().ends_with("</body></html>"), "{path}: {}", r.text());
        }
    }
    assert!(revalidated_before_kill > 0, "the revalidation load ran");
}

/// The ways an origin fails, named by the first part of a page's last path segment.
const FAULTS: [&str; 7] = [
    "status",
    "reset",
    "hang",
    "drip",
    "truncated",
    "invalid",
    "huge",
];

/// A raw origin: every page is `good page <path>` (revalidate 1 s) until [`broken`] is
/// set; from then on, a page fails the way its name says.
async fn fault_origin(broken: Arc<AtomicBool>) -> Origin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let broken = broken.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                let mode = path
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .split('-')
                    .next()
                    .unwrap_or("");
                if !broken.load(Ordering::SeqCst) || !FAULTS.contains(&mode) {
                    let body = format!("good page {path}");
                    let res = format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-isr-revalidate: 1\r\nconnection: close\r\n\r\n{body}", body.len());
                    let _ = s.write_all(res.as_bytes()).await;
                    return;
                }
                match mode {
                    "status" => {
                        let _ = s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown").await;
                    }
                    "reset" => {
                        // SO_LINGER 0: closing sends a RST.
                        let _ = rustix::net::sockopt::set_socket_linger(&s, Some(Duration::ZERO));
                    }
                    "hang" => tokio::time::sleep(Duration::from_secs(5)).await,
                    "drip" => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 20\r\n\r\n").await;
                        for _ in 0..20 {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            if s.write_all(b"x").await.is_err() {
                                return;
                            }
                        }
                    }
                    "truncated" => {
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\ncut").await;
                    }
                    "invalid" => {
                        let _ = s.write_all(b"SSH-2.0-not-http\r\n\r\n").await;
                    }
                    _ => {
                        // 1 MiB, over the test config's max_body of 64 KiB.
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1048576\r\n\r\n").await;
                        let chunk = vec![b'h'; 65536];
                        for _ in 0..16 {
                            if s.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let real = Origin::start().await;
    Origin { addr, ..real }
}

/// Origin failures of every kind, on misses and on regenerations, while visitors keep
/// asking: cached pages keep being served, no client gets a connection error, and no
/// good page is ever replaced.
#[tokio::test(flavor = "multi_thread")]
async fn a_failing_origin_never_costs_a_cached_page_or_a_visitor() {
    let broken = Arc::new(AtomicBool::new(false));
    let origin = fault_origin(broken.clone()).await;
    let isr = Isr::start(&origin).await; // origin_timeout 2 s, max_body 64 KiB
    for m in FAULTS {
        let r = isr.get(&format!("/fast/{m}")).await.unwrap();
        assert_eq!((r.status, r.text()), (200, format!("good page /fast/{m}")));
    }
    broken.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await; // every page is now stale
    let mut load = Vec::new();
    for round in 0..4 {
        for m in FAULTS {
            for path in [format!("/fast/{m}"), format!("/blog/{m}-{round}")] {
                let url = isr.url(&path);
                load.push(tokio::spawn(async move {
                    (path, send("GET", &url, &[], "").await)
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for t in load {
        let (path, r) = t.await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("{path}: the visitor got a connection error: {e}"));
        if path.starts_with("/fast/") {
            assert_eq!(
                (r.cache(), r.text()),
                ("STALE", format!("good page {path}"))
            );
        } else if path.starts_with("/blog/huge") {
            // Too large to store: streamed to the visitor who asked.
            assert_eq!(
                (r.status, r.cache(), r.body.len()),
                (200, "BYPASS", 1 << 20)
            );
        } else {
            assert!((502..=504).contains(&r.status), "{path}: {}", r.status);
            assert_eq!(r.cache(), "MISS", "{path}");
        }
    }
    // Not one good page was replaced, and none of the failures was stored.
    for m in FAULTS {
        let r = isr.get(&format!("/fast/{m}")).await.unwrap();
        assert_eq!(
            (r.cache(), r.text()),
            ("STALE", format!("good page /fast/{m}"))
        );
        assert_ne!(
            isr.get(&format!("/blog/{m}-0")).await.unwrap().cache(),
            "HIT",
            "{m}"
        );
    }
    // When the origin heals, the pages are regenerated (after their backoff).
    broken.store(false, Ordering::SeqCst);
    common::eventually_for(
        Duration::from_secs(20),
        "every page fresh again",
        async || {
            let mut fresh = 0;
            for m in FAULTS {
                if isr.get(&format!("/fast/{m}")).await.unwrap().cache() == "HIT" {
                    fresh += 1;
                }
            }
            fresh == FAULTS.len()
        },
    )
    .await;
}

/// A tmpfs of `size` mounted on a fresh directory (isr's data_dir goes inside), unmounted
/// when dropped. Needs root, as `scripts/test.sh` runs (it panics rather than skips).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root (scripts/test.sh runs as root)"
        );
        SmallDisk { dir }
    }

    /// Fills what is left with a file.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.path().join("filler")).unwrap();
        let block = vec![0u8; 65536];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&block[..1]);
        let _ = f.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_keeps_isr_serving_and_storing_resumes_when_space_returns() {
    let origin = Origin::start().await;
    // Pages of ~50 KiB that do not compress, so a few fill the disk.
    let noise: String = (0..50_000u32)
        .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26))
        .collect();
    for i in 0..40 {
        origin.set(
            &format!("/blog/big{i}"),
            Spec {
                body: Some(format!("{i} {noise}")),
                headers: vec![("content-type".into(), "application/octet-stream".into())],
                ..Spec::default()
            },
        );
    }
    let disk = SmallDisk::mount("3m");
    let data = disk.dir.path().join("data");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("isr.toml");
    std::fs::write(&config, common::CONFIG).unwrap();
    let log = dir.path().join("isr.log");
    let mut isr = Isr::spawn_logging(&origin, &data, &config, &log).await;
    assert_eq!(isr.get("/blog/before").await.unwrap().cache(), "MISS");

    disk.fill();
    // Every page is still served: from the origin, then from memory.
    for i in 0..20 {
        let path = format!("/blog/big{i}");
        let r = isr.get(&path).await.unwrap();
        assert_eq!((r.status, r.cache()), (200, "MISS"), "{path}");
        assert_eq!(
            isr.get(&path).await.unwrap().cache(),
            "HIT",
            "{path}: from memory"
        );
    }
    assert_eq!(isr.get("/blog/before").await.unwrap().cache(), "HIT");
    let m = isr.metrics().await;
    assert!(
        common::metric(&m, "isr_store_errors_total{op=\"write\"}") >= 1.0,
        "{m}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let lines = logged.matches("could not store the page").count();
    assert_eq!(lines, 1, "logged once a minute, not per page:\n{logged}");

    // Space returns: storing resumes by itself (after the store reopens itself).
    disk.free();
    // Writes keep coming meanwhile (each fails at once until the store has reopened):
    // they must not postpone the reopen.
    for i in 0..25 {
        isr.get(&format!("/blog/w{i}")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 20..24 {
        isr.get(&format!("/blog/big{i}")).await.unwrap();
    }
    let code = tokio::task::block_in_place(|| isr.terminate());
    assert_eq!(code, Some(0));
    let restarted = Isr::spawn(&origin, &data, &config).await;
    for path in ["/blog/before", "/blog/big23"] {
        let before = origin.count(path);
        let r = restarted.get(path).await.unwrap();
        assert_eq!(r.cache(), "HIT", "{path} was stored");
        assert_eq!(origin.count(path), before);
    }
    drop(restarted);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_abandons_a_regeneration_cleanly_and_the_next_start_serves_the_old_page() {
    let origin = Origin::start().await;
    let mut isr = Isr::start(&origin).await;
    assert_eq!(isr.get("/blog/s").await.unwrap().cache(), "MISS");
    // Its next regeneration hangs far past the shutdown.
    origin.set(
        "/blog/s",
        Spec {
            delay: Duration::from_secs(20),
            body: Some("<html><body>never</body></html>".into()),
            ..Spec::default()
        },
    );
    isr.revalidate(serde_json::json!({"path": "/blog/s"})).await;
    assert_eq!(isr.get("/blog/s").await.unwrap().cache(), "STALE");
    common::eventually("the regeneration reached the origin", async || {
        origin.count("/blog/s") == 2
    })
    .await;
    let addr = isr.addr;
    let code = tokio::task::block_in_place(|| isr.terminate());
    assert_eq!(
        code,
        Some(0),
        "exits 0 without waiting for the regeneration"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    let restarted = Isr::spawn(&origin, &isr.data_dir, &isr.config).await;
    let r = restarted.get("/blog/s").await.unwrap();
    assert_eq!(
        r.cache(),
        "STALE",
        "still the old page, still due for regeneration"
    );
    assert!(r.text().contains("page /blog/s v1"), "{}", r.text());
}
