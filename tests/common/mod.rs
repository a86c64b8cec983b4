//! Shared harness for the end-to-end tests: a programmable test origin on loopback, the
//! real `isr` binary started against it, and a small HTTP client.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const SECRET: &str = "test-secret";

/// How the test origin answers one path.
#[derive(Clone, Default)]
pub struct Spec {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    /// Body; default `page <path> v<n>` where n counts requests for that path.
    pub body: Option<String>,
    pub delay: Duration,
    /// Statuses of the first requests, in order (then `status`).
    pub statuses: Vec<u16>,
}

/// One request the test origin received.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Default)]
pub struct OriginState {
    specs: HashMap<String, Spec>,
    counts: HashMap<String, usize>,
    last: HashMap<String, (String, HeaderMap, Bytes)>,
    log: Vec<Logged>,
}

/// A test origin: counts requests per path, remembers the last request of each path.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<OriginState>>,
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(OriginState::default()));
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Origin { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, path: &str, spec: Spec) {
        self.state
            .lock()
            .unwrap()
            .specs
            .insert(path.to_string(), spec);
    }

    pub fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .counts
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Every request received so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// (path and query, headers, body) of the last request for `path`.
    pub fn last(&self, path: &str) -> (String, HeaderMap, Bytes) {
        self.state
            .lock()
            .unwrap()
            .last
            .get(path)
            .cloned()
            .expect("origin saw no request for this path")
    }
}

async fn handle(
    state: Arc<Mutex<OriginState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let method = req.method().to_string();
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (spec, n) = {
        let mut s = state.lock().unwrap();
        let n = {
            let c = s.counts.entry(path.clone()).or_insert(0);
            *c += 1;
            *c
        };
        s.log.push(Logged {
            method,
            target: target.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        s.last.insert(path.clone(), (target, parts.headers, body));
        (s.specs.get(&path).cloned().unwrap_or_default(), n)
    };
    tokio::time::sleep(spec.delay).await;
    let status = spec.statuses.get(n - 1).copied().or(spec.status);
    let mut res = Response::builder().status(status.unwrap_or(200));
    let has_ct = spec
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !has_ct {
        res = res.header("content-type", "text/html; charset=utf-8");
    }
    for (k, v) in &spec.headers {
        res = res.header(k.as_str(), v.as_str());
    }
    let body = spec.body.unwrap_or_else(|| {
        format!(
            "<html><body>page {path} v{n} {}</body></html>",
            "lorem ipsum ".repeat(40)
        )
    });
    Ok(res.body(Full::new(Bytes::from(body))).unwrap())
}

/// A running `isr serve` process.
pub struct Isr {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

pub const CONFIG: &str = r#"
[cache]
origin_timeout = "2s"
max_body = "64KiB"

[[route]]
match = "/fast/{slug}"
revalidate = 1
tags = ["fast", "fast-{slug}"]

[[route]]
match = "/blog/{slug}"
tags = ["posts", "post-{slug}"]

[[route]]
match = "/api/{*rest}"
cache = false
"#;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Isr {
    /// Starts isr in a fresh data directory with the standard test config.
    pub async fn start(origin: &Origin) -> Isr {
        Isr::start_with(origin, CONFIG).await
    }

    pub async fn start_with(origin: &Origin, config: &str) -> Isr {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("isr.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut isr = Isr::spawn(origin, &data_dir, &config_path).await;
        isr._dir = Some(dir);
        isr
    }

    /// Starts isr on an existing data directory and config (a restart).
    pub async fn spawn(origin: &Origin, data_dir: &Path, config: &Path) -> Isr {
        Isr::spawn_opts(origin, data_dir, config, &[], None).await
    }

    /// [`Isr::spawn`] with stderr sent to `log`.
    pub async fn spawn_logging(origin: &Origin, data_dir: &Path, config: &Path, log: &Path) -> Isr {
        Isr::spawn_opts(origin, data_dir, config, &[], Some(log)).await
    }

    /// [`Isr::spawn`] that also keeps the temporary directory the data lives in.
    pub async fn spawn_keeping(
        origin: &Origin,
        data_dir: &Path,
        config: &Path,
        dir: Option<tempfile::TempDir>,
    ) -> Isr {
        let mut isr = Isr::spawn(origin, data_dir, config).await;
        isr._dir = dir;
        isr
    }

    /// Like [`Isr::start_with`], with extra environment variables and stderr sent to a file.
    pub async fn start_opts(
        origin: &Origin,
        config: &str,
        env: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Isr {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let config_path = dir.path().join("isr.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut isr = Isr::spawn_opts(origin, &data_dir, &config_path, env, stderr).await;
        isr._dir = Some(dir);
        isr
    }

    async fn spawn_opts(
        origin: &Origin,
        data_dir: &Path,
        config: &Path,
        env: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Isr {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_isr"))
            .args(["serve", "--config"])
            .arg(config)
            .args([
                "--listen",
                &addr.to_string(),
                "--origin",
                &origin.url(),
                "--data-dir",
            ])
            .arg(data_dir)
            .env("ISR_SECRET", format!("old-secret,{SECRET}"))
            .env("ISR_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(match stderr {
                Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start isr");
        let isr = Isr {
            addr,
            data_dir: data_dir.into(),
            config: config.into(),
            child,
            _dir: None,
        };
        for _ in 0..200 {
            if let Ok(r) = isr.get("/_isr/health").await {
                if r.status == 200 {
                    return isr;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("isr did not become healthy");
    }

    /// Page files (sealed memfds holding large bodies) the process holds open now.
    pub fn page_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .filter_map(|f| std::fs::read_link(f.ok()?.path()).ok())
            .filter(|l| l.to_string_lossy().starts_with("/memfd:isr-page"))
            .count()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.request("GET", path, &[], "").await
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        send(method, &self.url(path), headers, body).await
    }

    /// Posts to the revalidation API with the secret.
    pub async fn revalidate(&self, body: serde_json::Value) -> Reply {
        let auth = format!("Bearer {SECRET}");
        self.request(
            "POST",
            "/_isr/revalidate",
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .await
        .unwrap()
    }

    /// `/_isr/metrics`, read with the secret.
    pub async fn metrics(&self) -> String {
        let auth = format!("Bearer {SECRET}");
        let r = self
            .request("GET", "/_isr/metrics", &[("authorization", &auth)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .starts_with("text/plain; version=0.0.4"));
        r.text()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        self.child.wait().unwrap().code()
    }

    /// `kill -9`.
    pub fn kill(mut self) -> (PathBuf, PathBuf, Option<tempfile::TempDir>) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        (self.data_dir.clone(), self.config.clone(), self._dir.take())
    }
}

impl Drop for Isr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn cache(&self) -> &str {
        self.header("x-isr-cache")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Reply, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status,
        headers: parts.headers,
        body,
    })
}

/// Raw HTTP/1.1 on one connection: writes `requests` at once, reads until `responses`
/// complete responses arrived (bodies read by their content-length).
pub async fn raw(isr: &Isr, requests: &str, responses: usize) -> Vec<(String, String)> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(isr.addr).await.unwrap();
    s.write_all(requests.as_bytes()).await.unwrap();
    read_responses(&mut s, responses).await
}

pub async fn read_responses(
    s: &mut tokio::net::TcpStream,
    responses: usize,
) -> Vec<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < responses {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = if head.starts_with("http/1.1 304") {
                0
            } else {
                head.lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse().unwrap())
            };
            if buf.len() < end + 4 + len {
                break;
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            out.push((head, body));
        }
    }
    out
}

/// Reads one whole response from `s`: its head (lowercased) and its body as bytes (for
/// bodies that are not UTF-8, such as compressed ones).
pub async fn read_response_bytes(s: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    loop {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "connection closed before the whole response");
        got.extend_from_slice(&chunk[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + len {
            return (head, got[end + 4..end + 4 + len].to_vec());
        }
    }
}

/// The value of one series in metrics text, e.g. `isr_requests_total{state="HIT"}`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
        .parse()
        .unwrap()
}

/// Waits (at most 5 s) until `f` is true.
pub async fn eventually(what: &str, f: impl AsyncFnMut() -> bool) {
    eventually_for(Duration::from_secs(5), what, f).await
}

/// Waits (at most `limit`) until `f` is true.
pub async fn eventually_for(limit: Duration, what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A real `redis-server` on a free loopback port, stopped when dropped. Panics (never
/// skips) when redis-server is not installed: `scripts/test.sh` installs it.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.resume();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts (or starts again) the server on the same port. Data lives in memory, so a
    /// restart comes back empty unless the caller wrote it again.
    pub fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server is required for these tests (bash scripts/test.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.cli(&["PING"]).is_ok_and(|r| r == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Stops the server (SIGKILL: as abrupt as a crash or a cut cable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs one command with a minimal RESP client; returns the reply as text.
    pub fn cli(&self, args: &[&str]) -> std::io::Result<String> {
        use std::io::{BufRead, BufReader, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut cmd = format!("*{}\r\n", args.len());
        for a in args {
            cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(cmd.as_bytes())?;
        let mut line = String::new();
        let mut r = BufReader::new(s);
        r.read_line(&mut line)?;
        let line = line.trim_end();
        Ok(match line.as_bytes().first() {
            Some(b'$') if line != "$-1" => {
                let mut v = String::new();
                r.read_line(&mut v)?;
                v.trim_end().to_string()
            }
            _ => line.trim_start_matches(['+', ':']).to_string(),
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
