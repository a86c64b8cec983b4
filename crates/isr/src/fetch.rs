//! `GET /_isr/fetch?url=<upstream URL>`: the data cache for origins in any language
//! (Next.js's `fetch` cache for Rails, Django, PHP…).
//!
//! The origin's render code asks isr for an upstream URL, with the tags and window it
//! wants in `x-isr-tags` and `x-isr-revalidate`; isr fetches the upstream once, caches
//! the response in the data cache (same store, same tag clock as pages) and answers
//! with it, echoing the tags and window so the origin can put them on its page.
//!
//! Only hosts listed in `[fetch] allow` are fetched; anything else is 403, so the
//! endpoint can never be used to reach other (internal) addresses:
//! - the host must equal an allowed name exactly (an entry with a port also needs that
//!   port); an IP literal, a numeric or dotted alias, or a name with a trailing dot is
//!   a different string, so it is refused unless listed as written;
//! - URLs with user info (`http://api.example.com@10.0.0.1/`) are refused;
//! - redirects are not followed: a 3xx from upstream is an error, never fetched on;
//! - no header of the caller is sent upstream (its secret least of all).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::body::Body;
use crate::data::{CacheLife, DataCache, Found, Raw};
use crate::engine::Engine;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The upstream client and allow-list behind `/_isr/fetch`.
pub struct Fetcher {
    /// Made on first use (loading the root certificates takes a moment).
    client: std::sync::OnceLock<HttpsClient>,
    connect_timeout: std::time::Duration,
    allow: Vec<String>,
    max_body: usize,
}

/// Why a URL may not be fetched: the status to answer and a message.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused(pub StatusCode, pub String);

/// Checks `url` against `allow` (lower-case hosts, optionally `host:port`). Pure, so the
/// rules can be tested without a network.
///
/// ```
/// use isr::fetch::check;
/// let allow = vec!["api.example.com".to_string()];
/// assert!(check("https://api.example.com/posts?page=2", &allow).is_ok());
/// assert_eq!(check("http://127.0.0.1/", &allow).unwrap_err().0, 403);
/// assert_eq!(check("http://api.example.com@127.0.0.1/", &allow).unwrap_err().0, 400);
/// ```
pub fn check(url: &str, allow: &[String]) -> Result<Uri, Refused> {
    let bad = |m: String| Refused(StatusCode::BAD_REQUEST, m);
    let uri: Uri = url
        .parse()
        .map_err(|e| bad(format!("`{url}` is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(bad(format!(
                "`{url}` must be an absolute http:// or https:// URL"
            )))
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| bad(format!("`{url}` has no host")))?;
    if authority.as_str().contains('@') {
        return Err(bad(format!("`{url}` carries user info, which is refused")));
    }
    let host = authority.host().to_ascii_lowercase();
    let port = authority.port_u16();
    let allowed = allow.iter().any(|a| match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => {
            h == host && p.parse::<u16>().ok() == port
        }
        _ => *a == host,
    });
    if !allowed {
        return Err(Refused(
            StatusCode::FORBIDDEN,
            format!("`{host}` is not in [fetch] allow"),
        ));
    }
    Ok(uri)
}

/// The life that the caller's `x-isr-revalidate` asks for: seconds, `false` (only on
/// demand) or a profile name; the `[cache]` defaults when absent.
fn requested_life(
    data: &DataCache,
    engine: &Engine,
    v: Option<&str>,
) -> Result<CacheLife, Refused> {
    let cache = &engine.config().cache;
    let base = CacheLife {
        stale: CacheLife::DEFAULT.stale,
        revalidate: cache.revalidate,
        expire: cache.expire,
    };
    let Some(v) = v.map(str::trim) else {
        return Ok(base);
    };
    if v == "false" {
        return Ok(CacheLife {
            revalidate: None,
            ..base
        });
    }
    if let Ok(secs) = v.parse::<u64>() {
        return Ok(CacheLife {
            revalidate: Some(secs.saturating_mul(1000)),
            ..base
        });
    }
    data.life(&v.into())
        .map_err(|e| Refused(StatusCode::BAD_REQUEST, format!("x-isr-revalidate: {e}")))
}

impl Fetcher {
    /// A fetcher for the `[fetch] allow` hosts of `cfg`.
    pub fn new(cfg: &crate::Config) -> Fetcher {
        Fetcher {
            client: std::sync::OnceLock::new(),
            connect_timeout: cfg.cache.origin_timeout,
            allow: cfg.fetch_allow.clone(),
            max_body: cfg.cache.max_body as usize,
        }
    }

    /// Answers a `/_isr/fetch` request (already authorised).
    pub async fn serve(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        req: &Request<crate::body::Boxed>,
    ) -> Response<Body> {
        match self.answer(engine, req).await {
            Ok(res) => res,
            Err(Refused(status, message)) => crate::front::json_error(status, &message),
        }
    }

    async fn answer(
        self: &Arc<Self>,
        engine: &Arc<Engine>,
        req: &Request<crate::body::Boxed>,
    ) -> Result<Response<Body>, Refused> {
        let url = req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|p| p.strip_prefix("url="))
            .map(crate::api::form_decode)
            .ok_or_else(|| {
                Refused(
                    StatusCode::BAD_REQUEST,
                    "missing ?url=<upstream URL>".into(),
                )
            })?;
        if self.allow.is_empty() {
            return Err(Refused(
                StatusCode::FORBIDDEN,
                "no upstream host is allowed: list them in [fetch] allow".into(),
            ));
        }
        let uri = check(&url, &self.allow)?;
        let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
        let tags: Vec<String> = header("x-isr-tags")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let data = DataCache::new(engine.clone());
        let life = requested_life(&data, engine, header("x-isr-revalidate"))?;
        let (me, upstream) = (self.clone(), uri.clone());
        let fetch = Box::new(move || {
            Box::pin(async move { me.fetch(upstream).await }) as crate::data::RawFuture
        });
        let (entry, found) = data
            .get_raw(&format!("fetch:{uri}"), tags, life, fetch)
            .await
            .map_err(|e| Refused(StatusCode::BAD_GATEWAY, e.to_string()))?;
        let now = engine.now();
        let mut res = Response::new(Body::full(entry.identity()));
        *res.status_mut() = StatusCode::from_u16(entry.meta.status).unwrap_or(StatusCode::OK);
        let h = res.headers_mut();
        for (n, v) in &entry.headers {
            h.append(n.clone(), v.clone());
        }
        let state = match found {
            Found::Hit => "HIT",
            Found::Stale => "STALE",
            Found::Miss => "MISS",
        };
        h.insert("x-isr-cache", HeaderValue::from_static(state));
        h.insert(
            header::AGE,
            HeaderValue::from(crate::policy::secs(entry.meta.timing().age(now))),
        );
        if let Ok(v) = HeaderValue::from_str(&entry.meta.tags.join(",")) {
            h.insert("x-isr-tags", v);
        }
        let window = entry
            .meta
            .revalidate
            .map_or("false".to_string(), |ms| (ms / 1000).to_string());
        if let Ok(v) = HeaderValue::from_str(&window) {
            h.insert("x-isr-revalidate", v);
        }
        Ok(res)
    }

    /// One upstream request: no caller header, no redirect followed, at most `max_body`.
    async fn fetch(&self, uri: Uri) -> Result<Raw, String> {
        let host = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let mut req = Request::get(uri.clone())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let host = HeaderValue::from_str(&host).map_err(|e| e.to_string())?;
        crate::origin::cache_fetch_headers(req.headers_mut(), host);
        let client = self
            .client
            .get_or_init(|| crate::origin::https_client(self.connect_timeout));
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("upstream {uri} could not be reached: {e}"))?;
        let (parts, body) = res.into_parts();
        if parts.status.is_redirection() {
            let to = parts
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(format!(
                "upstream {uri} redirected ({}) to {to}; /_isr/fetch does not follow redirects",
                parts.status.as_u16()
            ));
        }
        let body = http_body_util::Limited::new(body, self.max_body)
            .collect()
            .await
            .map_err(|e| format!("upstream {uri} body: {e}"))?
            .to_bytes();
        let headers = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|ct| vec![("content-type".to_string(), ct.to_string())])
            .unwrap_or_default();
        Ok(Raw {
            status: parts.status.as_u16(),
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow() -> Vec<String> {
        vec!["api.example.com".into(), "localhost:8443".into()]
    }

    #[test]
    fn only_listed_hosts_are_fetched() {
        assert!(check("https://api.example.com/posts", &allow()).is_ok());
        assert!(check("https://API.example.com:444/posts", &allow()).is_ok());
        assert!(check("http://localhost:8443/x", &allow()).is_ok());
        let refused = |u: &str| check(u, &allow()).unwrap_err().0;
        // Other hosts, and the same machine by other names.
        for u in [
            "http://localhost/x",
            "http://localhost:8444/x",
            "http://127.0.0.1/",
            "http://127.0.0.1:8443/",
            "http://[::1]/",
            "http://2130706433/",
            "http://0x7f.0.0.1/",
            "http://169.254.169.254/latest/meta-data/",
            "http://api.example.com./",
            "http://api.example.com.evil.net/",
            "http://evilapi.example.com/",
        ] {
            assert_eq!(refused(u), StatusCode::FORBIDDEN, "{u}");
        }
        for u in [
            "http://api.example.com@127.0.0.1/",
            "file:///etc/passwd",
            "gopher://api.example.com/",
            "/relative",
            "not a url",
        ] {
            assert_eq!(refused(u), StatusCode::BAD_REQUEST, "{u}");
        }
    }
}
