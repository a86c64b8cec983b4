//! The origin: fetching pages for the cache, proxying what is not cached, and turning an
//! origin response into an [`Entry`] (header filtering, tags, freshness, compression).
//!
//! The engine asks a [`Source`] for pages. `isr serve`'s source is [`Origin`], an HTTP
//! client for the configured site; [`crate::layer::IsrLayer`]'s is the app it wraps,
//! called in-process. Everything after the fetch (what is stored, tags, freshness,
//! variants) is the same for both.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::body::{self, Boxed};
use crate::config::{CacheConfig, Config};
use crate::entry::{self, Entry, Meta};
use crate::policy::{self, OriginFreshness, ResponseFacts, Uncacheable};
use crate::route::Rules;

/// Why the origin gave no usable response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// Connection refused, reset, DNS failure.
    #[error("origin {origin} could not be reached: {detail}")]
    Connect {
        /// The origin URL.
        origin: String,
        /// What went wrong.
        detail: String,
    },
    /// No complete response within `origin_timeout`.
    #[error("origin {origin} did not answer within {timeout:?}")]
    Timeout {
        /// The origin URL.
        origin: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The origin answered something that is not valid HTTP, or cut the body short.
    #[error("origin {origin} sent an invalid response: {detail}")]
    Invalid {
        /// The origin URL.
        origin: String,
        /// What went wrong.
        detail: String,
    },
}

impl FetchError {
    /// True for a timeout (answered 504 on a miss; other errors are 502).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FetchError::Timeout { .. })
    }

    /// The status a visitor gets when this happens on a miss.
    pub fn status(&self) -> StatusCode {
        if self.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// An origin response to a cache fetch.
pub enum Fetched {
    /// Fully read, within `max_body`.
    Complete(http::response::Parts, Bytes),
    /// Over `max_body`: what was read so far and the rest, for the visitor who asked.
    TooLarge(http::response::Parts, Bytes, Boxed),
}

/// A future returned by a [`Source`].
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where pages come from: the site's HTTP origin ([`Origin`]) or an app in-process.
pub trait Source: Send + Sync + 'static {
    /// Fetches `key` (path and query) for the cache, with no visitor data, reading at
    /// most `max_body` bytes before giving up on storing it.
    fn fetch<'a>(&'a self, key: &'a str) -> SourceFuture<'a, Result<Fetched, FetchError>>;

    /// Hands a visitor's own request on (bypass, non-`GET` methods, hit-for-miss).
    fn proxy(
        &self,
        req: Request<Boxed>,
        client: IpAddr,
    ) -> SourceFuture<'_, Result<Response<Boxed>, FetchError>>;

    /// What to call the source in messages (the origin's URL).
    fn name(&self) -> &str;
}

/// The headers of every fetch isr makes for a cache (pages from the origin or the app,
/// `/_isr/fetch` upstreams): `Host`, the fixed `User-Agent: isr/<version>` and
/// `Accept-Encoding: identity`. Nothing of a visitor's request.
pub(crate) fn cache_fetch_headers(h: &mut HeaderMap, host: HeaderValue) {
    h.insert(header::HOST, host);
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("isr/", env!("CARGO_PKG_VERSION"))),
    );
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
}

/// A client for `http://` and `https://` URLs elsewhere (CDN APIs, `/_isr/fetch`
/// upstreams), with the web's root certificates.
pub(crate) fn https_client<B>(
    connect_timeout: Duration,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// The source of an engine that has none yet: every request fails.
pub(crate) struct Unbound;

impl Source for Unbound {
    fn fetch<'a>(&'a self, _key: &'a str) -> SourceFuture<'a, Result<Fetched, FetchError>> {
        Box::pin(async { Err(unbound()) })
    }

    fn proxy(
        &self,
        _req: Request<Boxed>,
        _client: IpAddr,
    ) -> SourceFuture<'_, Result<Response<Boxed>, FetchError>> {
        Box::pin(async { Err(unbound()) })
    }

    fn name(&self) -> &str {
        "(none)"
    }
}

fn unbound() -> FetchError {
    FetchError::Connect {
        origin: "(none)".into(),
        detail: "the engine has no source yet: wrap a service with its IsrLayer".into(),
    }
}

/// Reads `body` into memory unless it is longer than `max_body`.
pub(crate) async fn read_body(
    parts: http::response::Parts,
    mut body: Boxed,
    max_body: u64,
    invalid: impl Fn(String) -> FetchError,
) -> Result<Fetched, FetchError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Ok(Fetched::TooLarge(parts, Bytes::new(), body));
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(16384).min(max_body) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| invalid(format!("body cut short: {e}")))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() as u64 > max_body {
                return Ok(Fetched::TooLarge(parts, buf.freeze(), body));
            }
        }
    }
    Ok(Fetched::Complete(parts, buf.freeze()))
}

/// The HTTP client side of isr.
pub struct Origin {
    client: Client<HttpConnector, Empty<Bytes>>,
    proxy_client: Client<HttpConnector, Boxed>,
    base: String,
    host: HeaderValue,
    forwarded: Option<(HeaderValue, HeaderValue)>,
    timeout: Duration,
    max_body: u64,
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
];

/// Origin headers that are not stored: hop-by-hop, the ones isr sets itself, and the
/// control headers meant for isr only.
const NOT_STORED: [&str; 13] = [
    "content-length",
    "cache-control",
    "age",
    "date",
    "etag",
    "expires",
    "vary",
    "x-isr-tags",
    "x-isr-revalidate",
    "x-isr-revalidate-max",
    "cache-tag",
    "surrogate-key",
    "surrogate-control",
];

impl Origin {
    /// A client for the configured origin.
    pub fn new(cfg: &Config) -> Origin {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.cache.origin_timeout));
        let builder = {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(Duration::from_secs(30)).set_host(false);
            b
        };
        let base = cfg.origin.to_string().trim_end_matches('/').to_string();
        let forwarded = cfg.public_url.as_ref().and_then(|u| {
            Some((
                HeaderValue::from_str(u.scheme_str()?).ok()?,
                HeaderValue::from_str(u.authority()?.as_str()).ok()?,
            ))
        });
        Origin {
            client: builder.build(connector.clone()),
            proxy_client: builder.build(connector),
            base,
            host: HeaderValue::from_str(&cfg.origin_host).expect("validated in config"),
            forwarded,
            timeout: cfg.cache.origin_timeout,
            max_body: cfg.cache.max_body,
        }
    }

    /// The origin's URL, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn connect_error(&self, e: &hyper_util::client::legacy::Error) -> FetchError {
        // The innermost cause says what happened ("Connection refused").
        let mut detail = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            detail = c.to_string();
            cause = c.source();
        }
        if e.is_connect() {
            FetchError::Connect {
                origin: self.base.clone(),
                detail,
            }
        } else {
            self.invalid(detail)
        }
    }

    fn invalid(&self, detail: impl ToString) -> FetchError {
        FetchError::Invalid {
            origin: self.base.clone(),
            detail: detail.to_string(),
        }
    }

    fn timed_out(&self) -> FetchError {
        FetchError::Timeout {
            origin: self.base.clone(),
            timeout: self.timeout,
        }
    }

    /// Fetches `key` for the cache. The request is the same whoever triggered it: no
    /// visitor header or cookie is ever part of it.
    pub async fn fetch(&self, key: &str) -> Result<Fetched, FetchError> {
        let mut req = Request::get(format!("{}{}", self.base, key))
            .body(Empty::new())
            .map_err(|e| self.invalid(e))?;
        let h = req.headers_mut();
        cache_fetch_headers(h, self.host.clone());
        if let Some((proto, host)) = &self.forwarded {
            h.insert("x-forwarded-proto", proto.clone());
            h.insert("x-forwarded-host", host.clone());
        }
        let work = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| self.connect_error(&e))?;
            let (parts, body) = res.into_parts();
            read_body(parts, body::boxed(body), self.max_body, |d| self.invalid(d)).await
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Proxies a visitor's request as it is (bypass, non-GET methods): the visitor's
    /// headers minus hop-by-hop ones, `Host` = origin_host, `X-Forwarded-For` appended.
    pub async fn proxy(
        &self,
        req: Request<Boxed>,
        client: IpAddr,
    ) -> Result<Response<Boxed>, FetchError> {
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut out = Request::builder()
            .method(parts.method)
            .uri(format!("{}{}", self.base, target))
            .body(body)
            .map_err(|e| self.invalid(e))?;
        let h = out.headers_mut();
        *h = parts.headers;
        strip_hop_by_hop(h);
        h.insert(header::HOST, self.host.clone());
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {client}"),
            None => client.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        match tokio::time::timeout(self.timeout, self.proxy_client.request(out)).await {
            Ok(Ok(mut res)) => {
                strip_hop_by_hop(res.headers_mut());
                Ok(res.map(body::boxed))
            }
            Ok(Err(e)) => Err(self.connect_error(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }
}

impl Source for Origin {
    fn fetch<'a>(&'a self, key: &'a str) -> SourceFuture<'a, Result<Fetched, FetchError>> {
        Box::pin(Origin::fetch(self, key))
    }

    fn proxy(
        &self,
        req: Request<Boxed>,
        client: IpAddr,
    ) -> SourceFuture<'_, Result<Response<Boxed>, FetchError>> {
        Box::pin(Origin::proxy(self, req, client))
    }

    fn name(&self) -> &str {
        &self.base
    }
}

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Reads the cacheability facts of an origin response.
pub fn response_facts(h: &HeaderMap) -> ResponseFacts {
    let cc = directives(h, header::CACHE_CONTROL);
    ResponseFacts {
        set_cookie: h.contains_key(header::SET_COOKIE),
        private: cc.iter().any(|(n, _)| n == "private" || n == "no-store"),
        vary_cookie: h
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|v| {
                let v = v.trim();
                v == "*" || v.eq_ignore_ascii_case("cookie")
            }),
    }
}

/// Lower-cased `Cache-Control` directives with their values.
fn directives(h: &HeaderMap, name: HeaderName) -> Vec<(String, Option<String>)> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|d| !d.trim().is_empty())
        .map(|d| match d.split_once('=') {
            Some((n, v)) => (
                n.trim().to_ascii_lowercase(),
                Some(v.trim().trim_matches('"').to_string()),
            ),
            None => (d.trim().to_ascii_lowercase(), None),
        })
        .collect()
}

/// Reads what the origin says about freshness. Values that do not parse are ignored
/// with a warning.
pub fn origin_freshness(h: &HeaderMap, key: &str) -> OriginFreshness {
    let mut f = OriginFreshness::default();
    if let Some(v) = h.get("x-isr-revalidate") {
        match v.to_str().map(str::trim) {
            Ok("false") => f.isr_revalidate = Some(None),
            Ok(s) => match s.parse::<u64>() {
                Ok(n) => f.isr_revalidate = Some(Some(n.saturating_mul(1000))),
                Err(_) => tracing::warn!(
                    key,
                    value = s,
                    "ignoring x-isr-revalidate: expected seconds or `false`"
                ),
            },
            Err(_) => tracing::warn!(key, "ignoring x-isr-revalidate: not text"),
        }
    }
    for (name, value) in directives(h, header::CACHE_CONTROL) {
        let secs = || {
            let v = value.as_deref()?;
            match v.parse::<u64>() {
                Ok(n) => Some(n.saturating_mul(1000)),
                Err(_) => {
                    tracing::warn!(key, directive = %name, value = v, "ignoring a Cache-Control directive that is not a number");
                    None
                }
            }
        };
        match name.as_str() {
            "s-maxage" => f.s_maxage = secs().or(f.s_maxage),
            "stale-while-revalidate" => f.swr = secs().or(f.swr),
            _ => {}
        }
    }
    f
}

/// Tags the origin gave: `x-isr-tags` and `Cache-Tag` (comma-separated), `Surrogate-Key`
/// (space-separated).
pub fn origin_tags(h: &HeaderMap) -> Vec<String> {
    let mut tags = Vec::new();
    let mut add = |name: &str, sep: char| {
        for v in h.get_all(name).iter().filter_map(|v| v.to_str().ok()) {
            tags.extend(
                v.split(sep)
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from),
            );
        }
    };
    add("x-isr-tags", ',');
    add("cache-tag", ',');
    add("surrogate-key", ' ');
    tags
}

/// Turns a complete origin response into an entry (without compressed variants yet;
/// see [`with_variants`]). `Err` when it must not be shared.
pub fn build_entry(
    parts: &http::response::Parts,
    body: Bytes,
    rules: &Rules,
    cache: &CacheConfig,
    key: &str,
    generated: u64,
) -> Result<Entry, Uncacheable> {
    policy::cacheability(&response_facts(&parts.headers))?;
    let (revalidate, expire) = policy::resolve_timing(
        rules.revalidate,
        origin_freshness(&parts.headers, key),
        cache.revalidate,
        cache.expire,
    );
    // `x-isr-revalidate-max`: a cap on the window, whatever set it (the layer sends the
    // shortest window of the data a render read).
    let cap = parts
        .headers
        .get("x-isr-revalidate-max")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    let revalidate = match (revalidate, cap) {
        (Some(r), Some(c)) => Some(r.min(c)),
        (None, c) => c,
        (r, None) => r,
    };
    let mut tags = rules.tags.clone();
    for t in origin_tags(&parts.headers) {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let mut headers = parts.headers.clone();
    strip_hop_by_hop(&mut headers);
    for n in NOT_STORED {
        headers.remove(n);
    }
    let headers = headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let meta = Meta {
        status: parts.status.as_u16(),
        headers,
        generated,
        revalidate,
        expire,
        tags,
        hash: entry::hash(&body),
        br: false,
        gzip: false,
        bytes: 0,
    };
    Ok(Entry::new(meta, body, None, None))
}

fn header<'a>(e: &'a Entry, name: &str) -> Option<&'a str> {
    e.meta
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// When a regeneration brought back the same body (the usual case), the previous
/// entry's bodies are reused: its compressed variants are not made again, and bodies in
/// page files stay there (no new file on the next hit).
pub fn reuse_variants(new: &Entry, previous: &Entry) -> Option<Entry> {
    let same = new.meta.hash == previous.meta.hash
        && new.identity() == previous.identity()
        && ["content-type", "content-encoding"]
            .iter()
            .all(|h| header(new, h) == header(previous, h));
    if !same {
        return None;
    }
    Some(previous.same_bodies_with(new.meta.clone()))
}

/// Adds Brotli and gzip variants when the content type is worth it and the origin did
/// not encode the body itself. CPU-bound: call from a blocking thread.
pub fn with_variants(e: Entry) -> Entry {
    let encoded = header(&e, "content-encoding").is_some_and(|v| v != "identity");
    if encoded || !header(&e, "content-type").is_some_and(entry::is_compressible) {
        return e;
    }
    let identity = e.identity();
    let (br, gzip) = entry::compress(&identity);
    let mut meta = e.meta;
    meta.br = br.is_some();
    meta.gzip = gzip.is_some();
    Entry::new(meta, identity, br, gzip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> http::response::Parts {
        let mut b = Response::builder().status(200);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn uncacheable_responses() {
        let rules = Rules {
            cache: true,
            ..Default::default()
        };
        let c = CacheConfig::default();
        let build =
            |h: &[(&str, &str)]| build_entry(&parts(h), Bytes::new(), &rules, &c, "/", 0).err();
        assert_eq!(
            build(&[("set-cookie", "a=b")]),
            Some(Uncacheable::SetCookie)
        );
        assert_eq!(
            build(&[("cache-control", "private, max-age=0")]),
            Some(Uncacheable::Private)
        );
        assert_eq!(
            build(&[("cache-control", "no-store")]),
            Some(Uncacheable::Private)
        );
        assert_eq!(
            build(&[("vary", "Accept-Encoding, Cookie")]),
            Some(Uncacheable::Vary)
        );
        assert_eq!(build(&[("vary", "*")]), Some(Uncacheable::Vary));
        assert_eq!(build(&[("vary", "accept-language")]), None);
    }

    #[test]
    fn tags_headers_and_freshness_from_the_origin() {
        let rules = Rules {
            cache: true,
            tags: vec!["route".into()],
            ..Default::default()
        };
        let p = parts(&[
            ("x-isr-tags", "a, b"),
            ("cache-tag", "c,route"),
            ("surrogate-key", "d  e"),
            (
                "cache-control",
                "public, s-maxage=30, stale-while-revalidate=60",
            ),
            ("content-type", "text/html"),
            ("connection", "x-custom"),
            ("x-custom", "hop"),
            ("x-kept", "yes"),
        ]);
        let e = build_entry(
            &p,
            Bytes::from_static(b"hi"),
            &rules,
            &CacheConfig::default(),
            "/",
            7,
        )
        .unwrap();
        assert_eq!(e.meta.tags, ["route", "a", "b", "c", "d", "e"]);
        assert_eq!((e.meta.revalidate, e.meta.expire), (Some(30_000), 90_000));
        let names: Vec<&str> = e.meta.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-kept"]);
    }

    /// A cacheable `text/html` page of `html`, fetched at `generated`.
    fn html_page(html: &str, generated: u64) -> Entry {
        let rules = Rules {
            cache: true,
            ..Default::default()
        };
        let p = parts(&[("content-type", "text/html")]);
        let body = Bytes::copy_from_slice(html.as_bytes());
        build_entry(&p, body, &rules, &CacheConfig::default(), "/", generated).unwrap()
    }

    #[test]
    fn unchanged_bodies_reuse_their_variants() {
        let html = "<p>same page</p>".repeat(50);
        let first = with_variants(html_page(&html, 1));
        assert!(first.br().is_some() && first.gzip().is_some());
        let reused = reuse_variants(&html_page(&html, 2), &first).unwrap();
        assert_eq!(reused.meta.generated, 2);
        assert_eq!(reused.br(), first.br());
        let changed = html_page(&"<p>new page</p>".repeat(50), 3);
        assert!(reuse_variants(&changed, &first).is_none());
    }

    #[test]
    fn unchanged_bodies_in_page_files_stay_in_the_same_files() {
        let html = "<p>a large page</p>".repeat(2_000);
        let Some(first) = html_page(&html, 1).in_page_files() else {
            return; // no memory files on this kernel: nothing to keep
        };
        let again = html_page(&html, 2);
        let reused = reuse_variants(&again, &first).unwrap();
        let file = |e: &Entry| match e.body_for_bytes(None).1 {
            crate::entry::Body::File(f) => Some(f.clone()),
            crate::entry::Body::Memory(_) => None,
        };
        let (before, after) = (file(&first).unwrap(), file(&reused));
        assert!(
            after.is_some_and(|a| std::sync::Arc::ptr_eq(&a, &before)),
            "the same file"
        );
        assert!(!reused.wants_page_files(), "no new file on the next hit");
        assert_eq!(reused.meta.generated, 2);
    }

    #[test]
    fn unparseable_control_headers_are_ignored() {
        let h = parts(&[
            ("x-isr-revalidate", "soon"),
            ("cache-control", "s-maxage=abc"),
        ])
        .headers;
        assert_eq!(origin_freshness(&h, "/"), OriginFreshness::default());
        let h = parts(&[("x-isr-revalidate", "false")]).headers;
        assert_eq!(origin_freshness(&h, "/").isr_revalidate, Some(None));
    }
}
