//! The hit lane: a connection the hit loops ([`super::hits`]) cannot answer comes here (or
//! starts here when they could not start), and every plain `GET`/`HEAD` of a cacheable
//! page is answered straight from the socket: a fresh or stale page from the memory tier
//! or read back from the store, and a miss or an expired page once the engine has fetched
//! and stored it (single flight, within `[limits] request_timeout`, as hyper's path). Once
//! a hit answered without waiting ([`Front::answer_from`]) leaves nothing to read, the
//! connection goes back to the hit loops.
//! `httparse` reads the head, one `writev` sends headers and body, or for a body in a page
//! file (or in the store's segment file) the headers go with `MSG_MORE` and the body with
//! `sendfile`; an `If-None-Match`
//! that matches gets its 304 here too. The first request that needs anything else (a
//! request body, the `/_isr/` routes, a bypass, or an outcome that is not a page: a
//! pass-through, an origin error, a 404) hands the connection, with the bytes already
//! read, to hyper for the rest of its life; an outcome the engine already has goes with
//! it, so nothing is fetched twice.
//!
//! Why: on a 16 KiB hit, hyper's request and response machinery costs more CPU than
//! isr's own cache work (BENCHMARKS.md). The headers written here are the ones
//! `Front::cached` writes through hyper, byte for byte apart from their order; every
//! end-to-end test of a hit runs through this lane.

use std::io::{self, IoSlice};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::{CacheState, Front};
use crate::engine::Served;
use crate::entry::{self, Body, Entry};
use crate::key;
use crate::page_file::PageFile;
use crate::policy::{self, Freshness};

/// How the lane left the connection.
pub(super) enum Handoff {
    /// Closed (by the peer, a timeout, an error or shutdown).
    Closed,
    /// Hand it to hyper, which must first read these bytes.
    Hyper(Bytes),
    /// Hand it to hyper, which must first read these bytes and answer the first request
    /// in them (for this cache key) with this outcome: the engine already served it.
    Served(Bytes, String, Served),
    /// Nothing left to read after a hit answered without waiting: back to the hit loops
    /// (only when the
    /// lane was asked to give connections back).
    Idle,
}

/// Where a connection starts on tokio, with the bytes already read from it.
pub(super) enum Start {
    /// In the lane.
    Lane(BytesMut),
    /// In hyper.
    Hyper(Bytes),
}

/// What an accepted connection holds until it closes: its place under `[limits]
/// max_connections`, in hyper's graceful shutdown and in the lane's count, and its peer.
pub(super) struct Held {
    pub(super) remote: std::net::SocketAddr,
    pub(super) slot: tokio::sync::OwnedSemaphorePermit,
    pub(super) watcher: hyper_util::server::graceful::Watcher,
    pub(super) in_lane: Tracker,
}

/// A head larger than this (or than `[limits] max_header_bytes`) goes to hyper, which
/// answers 431 when it is over the limit.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 48;

impl Front {
    /// Serves hits on `stream`, after the bytes in `buf`, until a request needs hyper, the
    /// peer closes or shutdown. With `give_back` (a connection from the hit loops, whose
    /// first request in `buf` they could not answer without waiting), that request goes
    /// straight to the engine, and the connection goes back once a hit answered without
    /// waiting ([`Front::answer_from`]) leaves nothing
    /// to read (for the hit loops, which answer those at less cost).
    pub(super) async fn lane(
        &self,
        stream: &mut TcpStream,
        shutdown: &mut watch::Receiver<bool>,
        mut buf: BytesMut,
        give_back: bool,
    ) -> Handoff {
        let mut out = Vec::with_capacity(1024);
        let mut key = String::with_capacity(256);
        // As hyper's header_read_timeout: a head must arrive within this.
        let limits = &self.engine.config().limits;
        let head_timeout = limits.header_read_timeout;
        let deadline = tokio::time::sleep(head_timeout);
        tokio::pin!(deadline);
        // One shutdown future for the connection's life, polled while it waits for a
        // request: made anew for each wait, it would register with the watch and leave it
        // again on every request.
        let mut stop = shutdown.clone();
        let stopping = stop.wait_for(|s| *s);
        tokio::pin!(stopping);
        // The hit loops tried the first request already: another try would read the store
        // again for nothing.
        let mut tried_now = give_back;
        loop {
            if !buf.is_empty() {
                match self.head(&buf, &mut key) {
                    Head::Ask(ask, len) => {
                        out.clear();
                        let now = if std::mem::take(&mut tried_now) {
                            None
                        } else {
                            self.answer_from(&ask, &mut out, self.engine.now())
                        };
                        let answered_now = now.is_some();
                        let body = match now {
                            Some(body) => body,
                            // Not to be had without waiting, not stored, or expired: the
                            // engine serves it here (from the store on the blocking pool, or
                            // one origin fetch per key, as always), so
                            // neither a restart nor a miss sends the connection to hyper.
                            // Outcomes other than a page (a pass-through, an error, a 404)
                            // go to hyper with the outcome, never to be served twice.
                            None => match self.serve_here(&ask, &mut out).await {
                                Ok(body) => body,
                                Err(served) => {
                                    let key = ask.key.to_owned();
                                    return Handoff::Served(buf.freeze(), key, *served);
                                }
                            },
                        };
                        buf.advance(len);
                        let ok = match body {
                            Some(Body::Memory(b)) => write_all(stream, &out, &b).await,
                            Some(Body::File(f)) => send_file(stream, &out, &f).await,
                            None => stream.write_all(&out).await,
                        };
                        if ok.is_err() {
                            return Handoff::Closed;
                        }
                        // Back to the hit loops after a hit answered without waiting, which
                        // is what they answer: a connection whose pages come from the origin
                        // or the disk stays here rather than move twice per request.
                        if give_back && answered_now && buf.is_empty() && !*shutdown.borrow() {
                            return Handoff::Idle;
                        }
                        continue;
                    }
                    Head::Smuggling => {
                        let _ = stream.write_all(REFUSE_SMUGGLING).await;
                        return Handoff::Closed;
                    }
                    Head::Partial => {}
                    Head::Hyper => return Handoff::Hyper(buf.freeze()),
                }
            }
            if *shutdown.borrow() && buf.is_empty() {
                return Handoff::Closed;
            }
            match read(
                stream,
                &mut buf,
                deadline.as_mut(),
                head_timeout,
                stopping.as_mut(),
            )
            .await
            {
                Ok(0) | Err(_) if buf.is_empty() => return Handoff::Closed,
                // A head cut short: hyper answers it (400) or closes.
                Ok(0) | Err(_) => return Handoff::Hyper(buf.freeze()),
                Ok(_) => {}
            }
        }
    }

    /// What the bytes read so far on a connection start with (the lane and the hit loops
    /// read heads alike). The cache key of an [`Ask`] is built in `key`, the connection's
    /// buffer for it.
    pub(super) fn head<'b>(&self, buf: &'b [u8], key: &'b mut String) -> Head<'b> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(_)) if smuggling(req.headers) => Head::Smuggling,
            Ok(httparse::Status::Complete(len)) => match self.ask(&req, key) {
                Some(ask) => Head::Ask(ask, len),
                None => Head::Hyper,
            },
            Ok(httparse::Status::Partial)
                if buf.len() < MAX_HEAD.min(self.engine.config().limits.max_header_bytes) =>
            {
                Head::Partial
            }
            _ => Head::Hyper,
        }
    }

    /// What a plain `GET`/`HEAD` of a cacheable page asks for, or `None` when the request
    /// needs hyper whatever the cache holds.
    fn ask<'r>(&self, req: &httparse::Request<'_, 'r>, key: &'r mut String) -> Option<Ask<'r>> {
        let head = match req.method? {
            "GET" => false,
            "HEAD" => true,
            _ => return None,
        };
        if req.version? != 1 {
            return None;
        }
        let target = req.path?;
        if !target.starts_with('/') || target.starts_with("/_isr/") {
            return None;
        }
        let cfg = self.engine.config();
        let (path, query) = key::split_target(target);
        if cfg.api_path.as_deref() == Some(path) || cfg.debug_cache {
            return None;
        }
        let (mut accept, mut if_none_match) = (None, None);
        for h in req.headers.iter() {
            let n = h.name;
            if n.eq_ignore_ascii_case("accept-encoding") {
                accept = Some(h.value);
            } else if n.eq_ignore_ascii_case("if-none-match") {
                if if_none_match.is_some() {
                    return None;
                }
                if_none_match = Some(h.value);
            } else if n.eq_ignore_ascii_case("content-length") {
                if h.value != b"0" {
                    return None;
                }
            } else if n.eq_ignore_ascii_case("cookie") {
                if super::cookie_bypasses(h.value, &cfg.cache.bypass_cookies) {
                    return None;
                }
            } else if n.eq_ignore_ascii_case("connection") {
                if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                    return None;
                }
            } else if n.eq_ignore_ascii_case("transfer-encoding")
                || n.eq_ignore_ascii_case("authorization")
                || n.eq_ignore_ascii_case("x-prerender-revalidate")
                || n.eq_ignore_ascii_case("expect")
                || n.eq_ignore_ascii_case("upgrade")
            {
                return None;
            }
        }
        key::normalize_into(key, path, query, &cfg.cache.ignore_query);
        let path = key::path_of(key);
        if self.engine.routes().bypasses(path) || self.engine.is_dropped(path) {
            return None;
        }
        Some(Ask {
            key,
            head,
            accept,
            if_none_match,
        })
    }

    /// Writes the head of the answer to `ask` into `out` and returns its body (`None` for
    /// `HEAD` and 304) when the page can be had without waiting ([`Engine::lookup_now`]:
    /// from the memory tier, or from the store's pages in the OS page cache); `None` when
    /// it cannot, when it is not stored, or when its copy has expired. `now` is
    /// [`Engine::now`], read a moment ago.
    ///
    /// [`Engine::lookup_now`]: crate::engine::Engine::lookup_now
    /// [`Engine::now`]: crate::engine::Engine::now
    pub(super) fn answer_from(
        &self,
        ask: &Ask<'_>,
        out: &mut Vec<u8>,
        now: u64,
    ) -> Option<Option<Body>> {
        let e = self.engine.lookup_now(ask.key)??;
        let served = self.engine.answer_cached(ask.key, e, now).ok()?;
        self.write_served(ask, served, now, out).ok()
    }

    /// Serves `ask` through the engine (a page read on the blocking pool, a miss or an expired
    /// page) within `[limits] request_timeout`, as hyper's path does. A page is written
    /// into `out` and its body returned; any other outcome is given back for hyper to
    /// answer.
    async fn serve_here(
        &self,
        ask: &Ask<'_>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Body>, Box<Served>> {
        let limit = self.engine.config().limits.request_timeout;
        let Ok(served) = tokio::time::timeout(limit, self.engine.serve(ask.key)).await else {
            tracing::warn!(key = %ask.key, timeout = ?limit, "request took longer than [limits] request_timeout");
            write_timeout(out, ask.head);
            return Ok(None);
        };
        self.write_served(ask, served, self.engine.now(), out)
    }

    /// Writes the head of a page the engine served (HIT, STALE or MISS) into `out`, counts
    /// the request, and returns the body to send (`None` for `HEAD`, 204 and 304); any
    /// other outcome is given back.
    fn write_served(
        &self,
        ask: &Ask<'_>,
        served: Served,
        now: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<Body>, Box<Served>> {
        let (e, state, freshness) = match served {
            Served::Hit(e) => (e, CacheState::Hit, Freshness::Fresh),
            Served::Stale(e) => (e, CacheState::Stale, Freshness::Stale),
            Served::Miss(e) => {
                let freshness = self.engine.freshness(ask.key, &e.meta, now);
                (e, CacheState::Miss, freshness)
            }
            other => return Err(Box::new(other)),
        };
        let emit_tags = self.engine.cdn().emits_tags();
        let body = write_head(out, &e, ask, state, freshness, now, emit_tags);
        self.engine.metrics().request(state as usize);
        Ok(body.filter(|_| !ask.head && e.meta.status != 204))
    }
}

/// hyper's path answers a request over `[limits] request_timeout` with this text.
pub(super) const TIMEOUT_TEXT: &str = "the request took longer than request_timeout\n";

/// The 504 of a request over `[limits] request_timeout`, as hyper's path sends it (without
/// the text for a `HEAD`).
fn write_timeout(out: &mut Vec<u8>, head: bool) {
    out.extend_from_slice(b"HTTP/1.1 504 Gateway Timeout\r\n");
    header(out, b"content-type", b"text/plain; charset=utf-8");
    header(
        out,
        b"content-length",
        itoa::Buffer::new().format(TIMEOUT_TEXT.len()).as_bytes(),
    );
    DATE.with(|d| d.write(out));
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(TIMEOUT_TEXT.as_bytes());
    }
}

/// A head with both `Content-Length` and `Transfer-Encoding`: the classic request
/// smuggling ambiguity. hyper would serve it by `Transfer-Encoding` alone and close the
/// connection (RFC 9112 section 6.1), which is safe; isr refuses it outright where it can.
fn smuggling(headers: &[httparse::Header<'_>]) -> bool {
    let has = |name: &str| headers.iter().any(|h| h.name.eq_ignore_ascii_case(name));
    has("content-length") && has("transfer-encoding")
}

pub(super) const REFUSE_SMUGGLING: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 58\r\nconnection: close\r\n\r\nContent-Length and Transfer-Encoding together are refused\n";

/// What a connection's buffered bytes start with.
pub(super) enum Head<'b> {
    /// A complete head of this many bytes, of a request the cache may answer.
    Ask(Ask<'b>, usize),
    /// A head that needs hyper whatever the cache holds, or one too large to wait for:
    /// hyper answers it (431 over the limit).
    Hyper,
    /// Both `Content-Length` and `Transfer-Encoding`: answered with [`REFUSE_SMUGGLING`],
    /// then closed.
    Smuggling,
    /// Not complete yet: read more.
    Partial,
}

/// A request the lane can answer from a cached page: its cache key, whether it is a
/// `HEAD`, and the request headers the response depends on.
pub(super) struct Ask<'a> {
    pub(super) key: &'a str,
    head: bool,
    accept: Option<&'a [u8]>,
    if_none_match: Option<&'a [u8]>,
}

/// The status line and headers of a cached page, as `Front::cached` sends them, and the
/// body to send (`None` for a 304).
fn write_head(
    out: &mut Vec<u8>,
    e: &Entry,
    ask: &Ask<'_>,
    state: CacheState,
    freshness: Freshness,
    now: u64,
    emit_tags: bool,
) -> Option<Body> {
    let (encoding, body) = e.body_for_bytes(ask.accept);
    let not_modified = (200..300).contains(&e.meta.status)
        && ask
            .if_none_match
            .is_some_and(|inm| entry::if_none_match_bytes(inm, e.etag(encoding)));
    if not_modified {
        status_line(out, http::StatusCode::NOT_MODIFIED);
        etag_and_vary(out, e, encoding);
    } else {
        out.extend_from_slice(e.wire_head(encoding, || fixed_head(e, encoding, body.len())));
    }
    let mut num = itoa::Buffer::new();
    header(out, b"x-isr-cache", state.as_str().as_bytes());
    let timing = e.meta.timing();
    header(
        out,
        b"age",
        num.format(policy::secs(timing.age(now))).as_bytes(),
    );
    let cache_control = policy::CacheControl::of(&timing, freshness, now);
    if emit_tags {
        let text = cache_control.to_string();
        for (name, value) in crate::cdn::emitted_headers(&e.meta.tags, &text) {
            header(out, name.as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"cache-control: ");
    cache_control.write(out);
    out.extend_from_slice(b"\r\n");
    DATE.with(|d| d.write(out));
    out.extend_from_slice(b"\r\n");
    (!not_modified).then(|| body.clone())
}

/// What every answer of `e` in `encoding` (other than a 304) starts with: the status line,
/// the stored headers, `Content-Encoding`, `Content-Length`, `ETag` and `Vary`. The lane
/// renders it once per entry and encoding ([`Entry::wire_head`]); only `X-ISR-Cache`,
/// `Age`, `Cache-Control` (and the CDN's tag headers) and `Date` are written per request.
fn fixed_head(e: &Entry, encoding: entry::Encoding, len: usize) -> Vec<u8> {
    let status = http::StatusCode::from_u16(e.meta.status).unwrap_or(http::StatusCode::OK);
    let mut out = Vec::with_capacity(256);
    status_line(&mut out, status);
    for (n, v) in &e.headers {
        header(&mut out, n.as_str().as_bytes(), v.as_bytes());
    }
    if let Some(ce) = encoding.header() {
        header(&mut out, b"content-encoding", ce.as_bytes());
    }
    if status != http::StatusCode::NO_CONTENT {
        header(
            &mut out,
            b"content-length",
            itoa::Buffer::new().format(len).as_bytes(),
        );
    }
    etag_and_vary(&mut out, e, encoding);
    out
}

/// `ETag`, and `Vary` when the page has compressed variants: in every answer, 304s too.
fn etag_and_vary(out: &mut Vec<u8>, e: &Entry, encoding: entry::Encoding) {
    header(out, b"etag", e.etag(encoding).as_bytes());
    if e.varies() {
        header(out, b"vary", b"Accept-Encoding");
    }
}

fn status_line(out: &mut Vec<u8>, status: http::StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The `Date` header, formatted once a second per thread.
struct CachedDate {
    at: std::cell::Cell<u64>,
    text: std::cell::RefCell<String>,
}

impl CachedDate {
    fn write(&self, out: &mut Vec<u8>) {
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.at.get() != secs {
            self.at.set(secs);
            *self.text.borrow_mut() = httpdate::fmt_http_date(now);
        }
        header(out, b"date", self.text.borrow().as_bytes());
    }
}

thread_local! {
    static DATE: CachedDate = const {
        CachedDate {
            at: std::cell::Cell::new(0),
            text: std::cell::RefCell::new(String::new()),
        }
    };
}

/// Reads what is there, or waits for more: at most `head_timeout` from the start of a
/// request head (give or take a tenth of it, at most a second: one timer per connection is
/// re-armed only when it has drifted, not per request), and not past shutdown while no
/// request is under way (`stopping`: the connection's one shutdown future, which
/// completes once; the lane closes after it).
async fn read(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    mut deadline: std::pin::Pin<&mut tokio::time::Sleep>,
    head_timeout: Duration,
    stopping: std::pin::Pin<&mut impl std::future::Future>,
) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    // When tokio already knows the socket is readable, read without waiting. This never
    // reads blindly: while tokio has no readiness, `try_io` makes no system call (an
    // EAGAIN would cost one per request).
    match try_read(stream, buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => return other,
    }
    let idle = buf.is_empty();
    if idle {
        let wanted = tokio::time::Instant::now() + head_timeout;
        let drift = (head_timeout / 10).min(Duration::from_secs(1));
        if wanted.saturating_duration_since(deadline.deadline()) > drift {
            deadline.as_mut().reset(wanted);
        }
    }
    let wait = async {
        loop {
            stream.readable().await?;
            match try_read(stream, buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    };
    // In this order, without tokio's random start (which reads a random number per wait).
    tokio::select! {
        biased;
        r = wait => r,
        () = deadline => Ok(0),
        _ = stopping, if idle => Ok(0),
    }
}

/// Reads what the socket holds into `buf`'s spare room. A read that leaves room to spare
/// emptied the socket, so tokio's readiness is cleared then, as after an `EAGAIN`: the
/// next read waits for epoll's edge instead of making a system call that can only fail
/// (nginx's `ngx_unix_recv` does the same). Bytes that arrive later raise a new edge, which
/// tokio's readiness tick keeps this clearing from swallowing.
fn try_read(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut got = 0;
    let read = stream.try_io(Interest::READABLE, || {
        got = stream.try_read_buf(buf)?;
        if got > 0 && got < spare {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match read {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Writes `head` then `body` with as few `writev` calls as the socket allows.
async fn write_all(stream: &mut TcpStream, head: &[u8], body: &Bytes) -> io::Result<()> {
    let (mut h, mut b) = (0, 0);
    while h < head.len() || b < body.len() {
        let n = stream
            .write_vectored(&[IoSlice::new(&head[h..]), IoSlice::new(&body[b..])])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len() - h);
        h += from_head;
        b += n - from_head;
    }
    Ok(())
}

/// Writes `head` with `MSG_MORE` (so it leaves in the same packet as the body's start),
/// then the body from its page file with `sendfile`.
async fn send_file(stream: &mut TcpStream, head: &[u8], body: &PageFile) -> io::Result<()> {
    let mut sent = 0;
    while sent < head.len() {
        sent += write_with(stream, || {
            rustix::net::send(stream.as_fd(), &head[sent..], rustix::net::SendFlags::MORE)
        })
        .await?;
    }
    let mut offset = body.offset();
    let end = offset + body.len() as u64;
    while offset < end {
        let left = (end - offset) as usize;
        write_with(stream, || {
            rustix::fs::sendfile(stream.as_fd(), body.fd(), Some(&mut offset), left)
        })
        .await?;
    }
    Ok(())
}

/// Runs one non-blocking write `op` once the socket is writable, as often as it would
/// block; a write of 0 bytes is an error.
async fn write_with(
    stream: &TcpStream,
    mut op: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || op().map_err(io::Error::from)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// A connection handed to hyper: the bytes the lane already read, then the socket.
pub(super) struct Rewind {
    pub(super) prefix: Bytes,
    pub(super) inner: TcpStream,
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Connections in the lane, so shutdown can wait for them (hyper counts its own).
pub(super) type Tracker = Arc<()>;
