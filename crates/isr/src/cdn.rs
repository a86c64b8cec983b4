//! CDN purging: when isr's own copy of a page changes on demand (and, with
//! `purge_on_regenerate`, after time-based regenerations), every `[[cdn]]` layer in front
//! of isr is told to drop it, so a CDN never keeps serving what isr has replaced.
//!
//! - [`Purge`]: what to purge: paths, tags, and the stored paths carrying those tags
//!   (for a CDN that cannot purge by tag).
//! - [`requests`]: the exact HTTP requests one CDN's API takes for a purge, batched to
//!   its documented limits. Pure, so the wire format is unit-tested.
//! - [`Cdns`]: one worker task per CDN. Purges wait in that worker's pending set, where a
//!   burst of revalidations merges into one batch; failed requests are retried with
//!   backoff; nothing here is ever on a visitor's path. Counted in
//!   `isr_cdn_purges_total{cdn,result}`.
//! - [`TagHeaders`]: the `Surrogate-Key`, `Cache-Tag` and `CDN-Cache-Control` values sent
//!   downstream with `emit_tags`, so a CDN can be purged by tag.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::config::{CdnConfig, CdnKind, Config};

/// Pages and tags to purge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    /// Paths (with their query strings), as isr keys them.
    pub paths: BTreeSet<String>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// The stored paths carrying `tags`, for a CDN that cannot purge those tags directly.
    pub tag_paths: BTreeSet<String>,
}

impl Purge {
    fn merge(&mut self, other: Purge) {
        self.paths.extend(other.paths);
        self.tags.extend(other.tags);
        self.tag_paths.extend(other.tag_paths);
    }

    fn len(&self) -> usize {
        self.paths.len() + self.tags.len() + self.tag_paths.len()
    }
}

/// Whether a tag can travel in a `Surrogate-Key`/`Cache-Tag`/`xkey` header: printable
/// ASCII without spaces or commas, at most 1,024 bytes (Fastly's and Cloudflare's rule).
pub fn is_header_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 1024 && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// Whether `kind` can purge by tag (else it is sent the tagged pages' paths).
fn purges_tags(kind: &CdnKind) -> bool {
    !matches!(kind, CdnKind::HttpPurge { xkey: false, .. })
}

/// Cloudflare takes at most 100 URLs or tags per `purge_cache` call.
pub const CLOUDFLARE_BATCH: usize = 100;
/// Fastly takes at most 256 surrogate keys per bulk purge.
pub const FASTLY_BATCH: usize = 256;
/// Paths and tags per webhook call.
pub const WEBHOOK_BATCH: usize = 1000;
/// Bytes of tags per `xkey-purge` header (Varnish's default header limit is 8 KiB).
const XKEY_HEADER_BYTES: usize = 4000;
/// Bytes of tags per emitted header (Fastly and Cloudflare take 16 KB).
const EMIT_HEADER_BYTES: usize = 16_000;

/// One HTTP request to a CDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    /// `PURGE` or `POST`.
    pub method: Method,
    /// The full URL.
    pub url: String,
    /// Headers besides `Host` (unless set here) and `Content-Length`.
    pub headers: Vec<(&'static str, String)>,
    /// JSON, or empty.
    pub body: String,
}

/// A CDN with its secret read from the environment.
#[derive(Clone)]
pub struct Cdn {
    /// The block.
    pub cfg: CdnConfig,
    /// The API token (Cloudflare, Fastly) or signing secret (webhook); empty if unset.
    secret: String,
}

impl std::fmt::Debug for Cdn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cdn({})", self.cfg.name)
    }
}

impl Cdn {
    /// `cfg` with its secret looked up by `env` (the secret never appears in `Debug`).
    pub fn new(cfg: CdnConfig, env: impl Fn(&str) -> Option<String>) -> Cdn {
        let secret = secret_env(&cfg.kind)
            .and_then(env)
            .map(|s| s.split(',').next().unwrap_or("").trim().to_string())
            .unwrap_or_default();
        Cdn { cfg, secret }
    }
}

/// The environment variable a kind reads its secret from.
fn secret_env(kind: &CdnKind) -> Option<&str> {
    match kind {
        CdnKind::HttpPurge { .. } => None,
        CdnKind::Cloudflare { token_env, .. } | CdnKind::Fastly { token_env, .. } => {
            Some(token_env)
        }
        CdnKind::Webhook { secret_env, .. } => Some(secret_env),
    }
}

/// Every `[[cdn]]` whose secret is missing from the environment, as an error message.
pub fn check_env(cfg: &Config, env: impl Fn(&str) -> Option<String>) -> Result<(), String> {
    for c in &cfg.cdns {
        if let Some(var) = secret_env(&c.kind) {
            if env(var).is_none_or(|v| v.trim().is_empty()) {
                return Err(format!(
                    "[[cdn]] {}: the environment variable {var} is not set (it holds the {})",
                    c.name,
                    if matches!(c.kind, CdnKind::Webhook { .. }) {
                        "secret that signs the webhook"
                    } else {
                        "API token"
                    }
                ));
            }
        }
    }
    Ok(())
}

/// The requests that purge `p` on `cdn`, batched to its API's limits.
pub fn requests(cdn: &Cdn, p: &Purge) -> Vec<PurgeRequest> {
    // Tags that cannot be sent in a header were never attached to a CDN object: such a
    // CDN gets the paths that carry them instead.
    let tags: Vec<&String> = p.tags.iter().filter(|t| is_header_tag(t)).collect();
    let by_paths = !purges_tags(&cdn.cfg.kind) || tags.len() < p.tags.len();
    let mut paths: BTreeSet<&String> = p.paths.iter().collect();
    if by_paths {
        paths.extend(&p.tag_paths);
    }
    let tags = if purges_tags(&cdn.cfg.kind) {
        tags
    } else {
        Vec::new()
    };
    let json = |v: serde_json::Value| v.to_string();
    let mut out = Vec::new();
    match &cdn.cfg.kind {
        CdnKind::HttpPurge { url, xkey, host } => {
            let purge = Method::from_bytes(b"PURGE").expect("a valid method");
            for path in &paths {
                out.push(PurgeRequest {
                    method: purge.clone(),
                    url: format!("{url}{path}"),
                    headers: vec![("host", host.clone())],
                    body: String::new(),
                });
            }
            if *xkey {
                for group in joined(&tags, ' ', XKEY_HEADER_BYTES) {
                    out.push(PurgeRequest {
                        method: purge.clone(),
                        url: format!("{url}/"),
                        headers: vec![("host", host.clone()), ("xkey-purge", group)],
                        body: String::new(),
                    });
                }
            }
        }
        CdnKind::Cloudflare {
            zone_id,
            api_url,
            site,
            ..
        } => {
            let endpoint = format!("{api_url}/zones/{zone_id}/purge_cache");
            let headers = vec![
                ("authorization", format!("Bearer {}", cdn.secret)),
                ("content-type", "application/json".to_string()),
            ];
            let files: Vec<String> = paths.iter().map(|p| format!("{site}{p}")).collect();
            for chunk in files.chunks(CLOUDFLARE_BATCH) {
                out.push(PurgeRequest {
                    method: Method::POST,
                    url: endpoint.clone(),
                    headers: headers.clone(),
                    body: json(serde_json::json!({ "files": chunk })),
                });
            }
            for chunk in tags.chunks(CLOUDFLARE_BATCH) {
                out.push(PurgeRequest {
                    method: Method::POST,
                    url: endpoint.clone(),
                    headers: headers.clone(),
                    body: json(serde_json::json!({ "tags": chunk })),
                });
            }
        }
        CdnKind::Fastly {
            service_id,
            api_url,
            soft,
            site_host,
            ..
        } => {
            let mut headers = vec![("fastly-key", cdn.secret.clone())];
            if *soft {
                headers.push(("fastly-soft-purge", "1".to_string()));
            }
            for chunk in tags.chunks(FASTLY_BATCH) {
                let mut h = headers.clone();
                h.push(("content-type", "application/json".to_string()));
                h.push(("accept", "application/json".to_string()));
                out.push(PurgeRequest {
                    method: Method::POST,
                    url: format!("{api_url}/service/{service_id}/purge"),
                    headers: h,
                    body: json(serde_json::json!({ "surrogate_keys": chunk })),
                });
            }
            for path in &paths {
                out.push(PurgeRequest {
                    method: Method::POST,
                    url: format!("{api_url}/purge/{site_host}{path}"),
                    headers: headers.clone(),
                    body: String::new(),
                });
            }
        }
        CdnKind::Webhook { url, .. } => {
            let paths: Vec<&String> = paths.into_iter().collect();
            let (pc, tc) = (
                paths.chunks(WEBHOOK_BATCH).collect::<Vec<_>>(),
                tags.chunks(WEBHOOK_BATCH).collect::<Vec<_>>(),
            );
            for i in 0..pc.len().max(tc.len()) {
                let body = json(serde_json::json!({
                    "paths": pc.get(i).copied().unwrap_or_default(),
                    "tags": tc.get(i).copied().unwrap_or_default(),
                }));
                out.push(PurgeRequest {
                    method: Method::POST,
                    url: url.clone(),
                    headers: vec![
                        ("content-type", "application/json".to_string()),
                        (
                            "x-isr-signature",
                            sign(cdn.secret.as_bytes(), body.as_bytes()),
                        ),
                    ],
                    body,
                });
            }
        }
    }
    out
}

/// `items` joined by `sep` into strings of at most `max` bytes (an item longer than that
/// travels alone).
fn joined(items: &[&String], sep: char, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        match out.last_mut() {
            Some(last) if last.len() + 1 + item.len() <= max => {
                last.push(sep);
                last.push_str(item);
            }
            _ => out.push(item.to_string()),
        }
    }
    out
}

/// `sha256=<hex HMAC-SHA256 of body>`: what a webhook receiver checks.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let mut out = String::from("sha256=");
    for b in mac.finalize().into_bytes() {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The tag headers sent downstream with `emit_tags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHeaders {
    /// `Surrogate-Key` (Fastly; Varnish's xkey reads it when VCL copies it): space-separated.
    pub surrogate_key: String,
    /// `Cache-Tag` (Cloudflare): comma-separated.
    pub cache_tag: String,
}

impl TagHeaders {
    /// The headers for a page's tags; `None` when it has none that can be sent. Tags
    /// that are not [`is_header_tag`] are left out, and the list stops at 16 KB.
    pub fn of(tags: &[String]) -> Option<TagHeaders> {
        let ok: Vec<&String> = tags.iter().filter(|t| is_header_tag(t)).collect();
        let surrogate_key = joined(&ok, ' ', EMIT_HEADER_BYTES).into_iter().next()?;
        let cache_tag = surrogate_key.replace(' ', ",");
        Some(TagHeaders {
            surrogate_key,
            cache_tag,
        })
    }
}

/// The headers `emit_tags` adds to a cached page with these `tags` and `cache_control`,
/// in the order they are sent: `Surrogate-Key` and `Cache-Tag` (when a tag can be sent),
/// then `CDN-Cache-Control`. The hit lane and hyper's path both send exactly these.
pub fn emitted_headers(tags: &[String], cache_control: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(3);
    if let Some(t) = TagHeaders::of(tags) {
        out.push(("surrogate-key", t.surrogate_key));
        out.push(("cache-tag", t.cache_tag));
    }
    out.push(("cdn-cache-control", cdn_cache_control(cache_control)));
    out
}

/// `CDN-Cache-Control` (RFC 9213) for a cached page: the same schedule as its
/// `Cache-Control`, addressed to the CDN (`max-age` instead of `s-maxage`).
pub fn cdn_cache_control(cache_control: &str) -> String {
    cache_control.replacen("s-maxage=", "max-age=", 1)
}

/// `isr_cdn_purges_total` results, in counter order.
const RESULTS: [&str; 4] = ["ok", "retried", "failed", "dropped"];

/// At most this many paths and tags wait for one CDN; more are dropped (and counted).
const MAX_PENDING: usize = 1_000_000;
/// Tries per request.
const ATTEMPTS: u32 = 5;
/// Deadline of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Worker {
    cdn: Cdn,
    pending: Mutex<Purge>,
    wake: tokio::sync::Notify,
    /// By [`RESULTS`]: requests that succeeded, attempts retried, requests given up,
    /// paths and tags dropped because too many were pending.
    counts: [AtomicU64; 4],
}

/// The configured CDNs and their purge workers.
#[derive(Default)]
pub struct Cdns {
    workers: Vec<Arc<Worker>>,
    /// Any CDN has `emit_tags` (read on every hit, so kept as one flag).
    emit_tags: bool,
}

impl Cdns {
    /// Starts one worker per CDN (needs a tokio runtime when `cdns` is not empty).
    pub fn start(cdns: Vec<Cdn>) -> Cdns {
        if cdns.is_empty() {
            return Cdns::default();
        }
        let client: HttpsClient = crate::origin::https_client(REQUEST_TIMEOUT);
        let workers: Vec<Arc<Worker>> = cdns
            .into_iter()
            .map(|cdn| {
                Arc::new(Worker {
                    cdn,
                    pending: Mutex::default(),
                    wake: tokio::sync::Notify::new(),
                    counts: Default::default(),
                })
            })
            .collect();
        for w in &workers {
            tokio::spawn(run(w.clone(), client.clone()));
        }
        let emit_tags = workers.iter().any(|w| w.cdn.cfg.emit_tags);
        Cdns { workers, emit_tags }
    }

    /// No CDN is configured.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Whether some CDN must be sent the paths of tagged pages for `tag` (it cannot purge
    /// that tag directly), so the caller looks them up.
    pub fn needs_tag_paths(&self, tag: &str) -> bool {
        !is_header_tag(tag) || self.workers.iter().any(|w| !purges_tags(&w.cdn.cfg.kind))
    }

    /// Whether any CDN wants tag headers on responses.
    pub fn emits_tags(&self) -> bool {
        self.emit_tags
    }

    /// Whether any CDN purges after time-based regenerations.
    pub fn purges_on_regenerate(&self) -> bool {
        self.workers.iter().any(|w| w.cdn.cfg.purge_on_regenerate)
    }

    /// Queues `p` on every CDN (`regenerated`: only on those with `purge_on_regenerate`).
    /// Returns at once; the workers send it.
    pub fn purge(&self, p: &Purge, regenerated: bool) {
        for w in &self.workers {
            if regenerated && !w.cdn.cfg.purge_on_regenerate {
                continue;
            }
            {
                let mut pending = w.pending.lock().unwrap_or_else(|e| e.into_inner());
                let room = MAX_PENDING.saturating_sub(pending.len());
                if p.len() > room {
                    w.counts[3].fetch_add(p.len() as u64, Ordering::Relaxed);
                    tracing::error!(
                        cdn = %w.cdn.cfg.name,
                        dropped = p.len(),
                        "CDN purge queue full ({MAX_PENDING} paths and tags waiting): dropping this purge"
                    );
                    continue;
                }
                pending.merge(p.clone());
            }
            w.wake.notify_one();
        }
    }

    /// Queues the purge of one page (`regenerated`: as [`Cdns::purge`]).
    pub fn purge_path(&self, key: &str, regenerated: bool) {
        let p = Purge {
            paths: [key.to_string()].into(),
            ..Purge::default()
        };
        self.purge(&p, regenerated);
    }

    /// `isr_cdn_purges_total` in Prometheus text format (nothing without CDNs).
    pub fn render_metrics(&self, out: &mut String) {
        if self.workers.is_empty() {
            return;
        }
        out.push_str("# HELP isr_cdn_purges_total CDN purge requests by result (ok, retried attempts, failed after retries, dropped paths and tags).\n# TYPE isr_cdn_purges_total counter\n");
        for w in &self.workers {
            for (label, c) in RESULTS.iter().zip(&w.counts) {
                let _ = writeln!(
                    out,
                    "isr_cdn_purges_total{{cdn=\"{}\",result=\"{label}\"}} {}",
                    w.cdn.cfg.name,
                    c.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// A CDN's worker: sends whatever is pending, merged into one batch, then waits for more.
async fn run(w: Arc<Worker>, client: HttpsClient) {
    loop {
        let batch = std::mem::take(&mut *w.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.len() == 0 {
            // A purge queued since the take above has left a permit: this returns at once.
            w.wake.notified().await;
            continue;
        }
        for req in requests(&w.cdn, &batch) {
            send(&w, &client, &req).await;
        }
    }
}

/// Sends one request, retrying connection errors, timeouts, 5xx and 429 with backoff
/// (1 s doubling, or the server's `Retry-After`, at most 60 s), five tries in all.
async fn send(w: &Worker, client: &HttpsClient, req: &PurgeRequest) {
    let name = &w.cdn.cfg.name;
    for attempt in 1..=ATTEMPTS {
        let (retry, wait, why) = match attempt_once(client, req).await {
            Ok(_) => {
                w.counts[0].fetch_add(1, Ordering::Relaxed);
                tracing::debug!(cdn = %name, method = %req.method, url = %req.url, "CDN purged");
                return;
            }
            Err(e) => e,
        };
        if !retry || attempt == ATTEMPTS {
            w.counts[2].fetch_add(1, Ordering::Relaxed);
            tracing::error!(cdn = %name, method = %req.method, url = %req.url, attempts = attempt, error = %why, "CDN purge failed");
            return;
        }
        w.counts[1].fetch_add(1, Ordering::Relaxed);
        let wait = wait.unwrap_or(Duration::from_secs(1 << (attempt - 1)));
        tracing::warn!(cdn = %name, url = %req.url, error = %why, retry_in = ?wait, "CDN purge failed; retrying");
        tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
    }
}

/// One try: `Ok` on a 2xx; else whether to retry, how long the server asked to wait, and
/// what went wrong (never the secret).
async fn attempt_once(
    client: &HttpsClient,
    req: &PurgeRequest,
) -> Result<(), (bool, Option<Duration>, String)> {
    let mut b = Request::builder()
        .method(req.method.clone())
        .uri(&req.url)
        .header("user-agent", concat!("isr/", env!("CARGO_PKG_VERSION")));
    for (n, v) in &req.headers {
        b = b.header(*n, v);
    }
    let request = b
        .body(Full::new(Bytes::from(req.body.clone())))
        .map_err(|e| (false, None, format!("cannot build the request: {e}")))?;
    let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let res = client.request(request).await?;
        let status = res.status();
        let retry_after = res
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, body.unwrap_or_default()))
    })
    .await;
    match answer {
        Err(_) => Err((true, None, format!("no answer within {REQUEST_TIMEOUT:?}"))),
        Ok(Err(e)) => Err((true, None, format!("cannot reach it: {e}"))),
        Ok(Ok((status, _, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, retry_after, body))) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            let retry = status.is_server_error() || status.as_u16() == 429;
            Err((
                retry,
                retry_after,
                format!("answered {status}: {}", text.trim()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cdn(kind: CdnKind) -> Cdn {
        Cdn::new(
            CdnConfig {
                name: kind.as_str().into(),
                kind,
                emit_tags: false,
                purge_on_regenerate: false,
            },
            |_| Some("tok".into()),
        )
    }

    fn purge(paths: &[&str], tags: &[&str], tag_paths: &[&str]) -> Purge {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Purge {
            paths: set(paths),
            tags: set(tags),
            tag_paths: set(tag_paths),
        }
    }

    fn http_purge(xkey: bool) -> Cdn {
        cdn(CdnKind::HttpPurge {
            url: "http://127.0.0.1:6081".into(),
            xkey,
            host: "www.example.com".into(),
        })
    }

    #[test]
    fn http_purge_sends_tagged_paths_without_xkey_and_tags_with_it() {
        let p = purge(&["/a?x=1"], &["posts"], &["/b", "/c"]);
        let urls =
            |c: &Cdn| -> Vec<String> { requests(c, &p).into_iter().map(|r| r.url).collect() };
        assert_eq!(
            urls(&http_purge(false)),
            [
                "http://127.0.0.1:6081/a?x=1",
                "http://127.0.0.1:6081/b",
                "http://127.0.0.1:6081/c"
            ]
        );
        let with_xkey = requests(&http_purge(true), &p);
        assert_eq!(with_xkey.len(), 2);
        assert_eq!(with_xkey[0].method.as_str(), "PURGE");
        assert_eq!(with_xkey[1].url, "http://127.0.0.1:6081/");
        assert_eq!(
            with_xkey[1].headers,
            [
                ("host", "www.example.com".to_string()),
                ("xkey-purge", "posts".to_string())
            ]
        );
    }

    #[test]
    fn a_tag_that_cannot_be_a_header_is_purged_by_its_paths() {
        let p = purge(&[], &["two words"], &["/t"]);
        let reqs = requests(&http_purge(true), &p);
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].url, "http://127.0.0.1:6081/t");
        assert!(!is_header_tag("a,b") && !is_header_tag("") && is_header_tag("post-1"));
    }

    #[test]
    fn cloudflare_batches_files_and_tags_by_100() {
        let c = cdn(CdnKind::Cloudflare {
            zone_id: "Z".into(),
            token_env: "T".into(),
            api_url: "http://127.0.0.1:1/client/v4".into(),
            site: "https://www.example.com".into(),
        });
        let paths: Vec<String> = (0..150).map(|i| format!("/p{i:03}")).collect();
        let tags: Vec<String> = (0..101).map(|i| format!("t{i:03}")).collect();
        let p = Purge {
            paths: paths.iter().cloned().collect(),
            tags: tags.iter().cloned().collect(),
            tag_paths: ["/ignored".to_string()].into(),
        };
        let reqs = requests(&c, &p);
        assert_eq!(reqs.len(), 4);
        for r in &reqs {
            assert_eq!(r.method, Method::POST);
            assert_eq!(r.url, "http://127.0.0.1:1/client/v4/zones/Z/purge_cache");
            assert!(r.headers.contains(&("authorization", "Bearer tok".into())));
            assert!(r
                .headers
                .contains(&("content-type", "application/json".into())));
        }
        let body = |i: usize| serde_json::from_str::<serde_json::Value>(&reqs[i].body).unwrap();
        assert_eq!(body(0)["files"].as_array().unwrap().len(), 100);
        assert_eq!(body(0)["files"][0], "https://www.example.com/p000");
        assert_eq!(body(1)["files"].as_array().unwrap().len(), 50);
        assert_eq!(body(2)["tags"].as_array().unwrap().len(), 100);
        assert_eq!(body(3)["tags"], serde_json::json!(["t100"]));
    }

    #[test]
    fn fastly_soft_purges_keys_by_256_and_urls_one_by_one() {
        let c = cdn(CdnKind::Fastly {
            service_id: "S".into(),
            token_env: "T".into(),
            api_url: "http://127.0.0.1:1".into(),
            soft: true,
            site_host: "www.example.com".into(),
        });
        let tags: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        let p = Purge {
            paths: ["/a".to_string()].into(),
            tags: tags.into_iter().collect(),
            tag_paths: BTreeSet::new(),
        };
        let reqs = requests(&c, &p);
        assert_eq!(reqs.len(), 3);
        assert_eq!(reqs[0].url, "http://127.0.0.1:1/service/S/purge");
        assert!(reqs[0].headers.contains(&("fastly-key", "tok".into())));
        assert!(reqs[0].headers.contains(&("fastly-soft-purge", "1".into())));
        let keys = |i: usize| {
            serde_json::from_str::<serde_json::Value>(&reqs[i].body).unwrap()["surrogate_keys"]
                .as_array()
                .unwrap()
                .len()
        };
        assert_eq!((keys(0), keys(1)), (256, 44));
        assert_eq!(reqs[2].url, "http://127.0.0.1:1/purge/www.example.com/a");
        assert_eq!(reqs[2].body, "");
    }

    #[test]
    fn webhook_bodies_are_signed() {
        let c = cdn(CdnKind::Webhook {
            url: "http://127.0.0.1:1/hook".into(),
            secret_env: "S".into(),
        });
        let reqs = requests(&c, &purge(&["/a"], &["posts"], &["/b"]));
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].body, r#"{"paths":["/a"],"tags":["posts"]}"#);
        let sig = &reqs[0].headers[1];
        assert_eq!(sig.0, "x-isr-signature");
        assert_eq!(sig.1, sign(b"tok", reqs[0].body.as_bytes()));
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn emitted_tag_headers() {
        let tags = vec!["posts".to_string(), "bad tag".into(), "post-1".into()];
        let h = TagHeaders::of(&tags).unwrap();
        assert_eq!(h.surrogate_key, "posts post-1");
        assert_eq!(h.cache_tag, "posts,post-1");
        assert_eq!(TagHeaders::of(&["a b".to_string()]), None);
        assert_eq!(
            cdn_cache_control("public, s-maxage=5, stale-while-revalidate=10"),
            "public, max-age=5, stale-while-revalidate=10"
        );
    }

    #[test]
    fn xkey_headers_stay_under_the_limit() {
        let tags: Vec<String> = (0..2000).map(|i| format!("tag-{i:05}")).collect();
        let refs: Vec<&String> = tags.iter().collect();
        let groups = joined(&refs, ' ', XKEY_HEADER_BYTES);
        assert!(groups.len() > 1 && groups.iter().all(|g| g.len() <= XKEY_HEADER_BYTES));
        assert_eq!(
            groups.iter().map(|g| g.split(' ').count()).sum::<usize>(),
            2000
        );
    }
}
