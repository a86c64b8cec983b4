//! The revalidation API: checking the secret and parsing the request body (pure), the
//! typed errors it answers with, and the limit on wrong secrets per client address.

use http::StatusCode;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::engine::Revalidation;

/// An API failure: its status and the message sent as `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// 401 with a message.
    pub fn unauthorized() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or invalid secret (send it as `Authorization: Bearer <secret>`, `?secret=` or the JSON field `secret`)".into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({ "error": self.message }).to_string()
    }
}

/// The configured secrets (comma-separated in the environment, for rotation).
#[derive(Clone, Default)]
pub struct Secrets(Vec<Vec<u8>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} configured)", self.0.len())
    }
}

impl Secrets {
    /// Parses `a,b,c`; empty parts are ignored.
    pub fn parse(value: &str) -> Secrets {
        Secrets(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        )
    }

    /// True when no secret is configured (the API then refuses everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time check of a candidate against every configured secret.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0);
        for s in &self.0 {
            ok |= s.as_slice().ct_eq(candidate);
        }
        bool::from(ok) && !candidate.is_empty()
    }
}

/// Unknown fields are ignored, so clients written for other ISR APIs keep working.
#[derive(Deserialize)]
struct RequestBody {
    path: Option<String>,
    paths: Option<Vec<String>>,
    tag: Option<String>,
    tags: Option<Vec<String>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    mode: Option<String>,
    eager: Option<bool>,
    #[allow(dead_code)]
    secret: Option<String>,
}

/// The secret found in a JSON body, if the body is a JSON object with a string `secret`.
fn body_secret(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("secret")?.as_str().map(String::from)
}

/// Checks the secret (Bearer header, `?secret=`, then the body's `secret`) and parses
/// the body. Order of checks as SPEC section 4: 401 before 400.
pub fn parse_request(
    secrets: &Secrets,
    bearer: Option<&str>,
    query_secret: Option<&str>,
    body: &[u8],
) -> Result<Revalidation, ApiError> {
    let authorized = bearer.is_some_and(|s| secrets.accepts(s.as_bytes()))
        || query_secret.is_some_and(|s| secrets.accepts(s.as_bytes()))
        || body_secret(body).is_some_and(|s| secrets.accepts(s.as_bytes()));
    if secrets.is_empty() || !authorized {
        return Err(ApiError::unauthorized());
    }
    parse_body(body)
}

/// Validates a revalidation body whose sender needs no secret (the private
/// `admin_listen` listener).
pub fn parse_body(body: &[u8]) -> Result<Revalidation, ApiError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let req: RequestBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))?;
    let layout = match req.kind.as_deref() {
        None | Some("page") => false,
        Some("layout") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "unknown type `{other}` (use \"page\" or \"layout\")"
            )))
        }
    };
    let expire = match req.mode.as_deref() {
        None | Some("stale") => false,
        Some("expire") => true,
        Some(other) => {
            return Err(ApiError::bad(format!(
                "unknown mode `{other}` (use \"stale\" or \"expire\")"
            )))
        }
    };
    let paths: Vec<String> = req
        .path
        .into_iter()
        .chain(req.paths.unwrap_or_default())
        .collect();
    for p in &paths {
        if !p.starts_with('/') {
            return Err(ApiError::bad(format!("path `{p}` must start with `/`")));
        }
        if p.contains('?') {
            return Err(ApiError::bad(format!(
                "path `{p}` has a query string; revalidating a path covers all its query variants"
            )));
        }
    }
    let paths: Vec<String> = paths
        .iter()
        .map(|p| crate::key::normalize_path(p))
        .collect();
    let tags: Vec<String> = req
        .tag
        .into_iter()
        .chain(req.tags.unwrap_or_default())
        .collect();
    if let Some(t) = tags.iter().find(|t| t.trim().is_empty()) {
        return Err(ApiError::bad(format!("tag `{t}` is empty")));
    }
    if paths.is_empty() && tags.is_empty() {
        return Err(ApiError::bad(
            "nothing to revalidate: give `path`, `paths`, `tag` or `tags`",
        ));
    }
    let (pages, layouts) = if layout {
        (vec![], paths)
    } else {
        (paths, vec![])
    };
    Ok(Revalidation {
        pages,
        layouts,
        tags,
        expire,
        eager: req.eager.unwrap_or(false),
    })
}

/// Decodes `%XX` and `+` in a query or form value (`application/x-www-form-urlencoded`).
pub fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Counts wrong secrets per client address in one-minute windows: past `limit` in a
/// window, the address is refused (429) until the window ends, even with the right
/// secret, so a secret cannot be guessed faster than `limit` tries a minute.
pub struct SecretThrottle {
    limit: u32,
    /// Address → (start of its window in unix ms, failures in it).
    seen: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (u64, u32)>>,
}

/// One throttle window.
const WINDOW_MS: u64 = 60_000;
/// Addresses remembered at most (older windows are forgotten first).
const MAX_TRACKED: usize = 100_000;

impl SecretThrottle {
    /// At most `limit` wrong secrets a minute per address (0: no limit).
    pub fn new(limit: u32) -> SecretThrottle {
        SecretThrottle {
            limit,
            seen: Default::default(),
        }
    }

    /// Seconds until `ip` may try again, when it is refused now.
    pub fn blocked(&self, ip: std::net::IpAddr, now: u64) -> Option<u64> {
        if self.limit == 0 {
            return None;
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (start, failures) = *seen.get(&ip)?;
        let ends = start + WINDOW_MS;
        (failures >= self.limit && now < ends).then(|| (ends - now).div_ceil(1000))
    }

    /// Records a wrong secret from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr, now: u64) {
        if self.limit == 0 {
            return;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&ip) {
            seen.retain(|_, (start, _)| now < *start + WINDOW_MS);
            if seen.len() >= MAX_TRACKED {
                seen.clear();
            }
        }
        let w = seen.entry(ip).or_insert((now, 0));
        if now >= w.0 + WINDOW_MS {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
    }

    /// The 429 answer for an address refused for `wait` more seconds.
    pub fn refusal(wait: u64) -> ApiError {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: format!("too many wrong secrets from this address: try again in {wait} s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_secrets_are_limited_per_address_and_minute() {
        let t = SecretThrottle::new(3);
        let (a, b): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for i in 0..3 {
            assert_eq!(t.blocked(a, 1000 + i), None);
            t.failed(a, 1000 + i);
        }
        assert_eq!(t.blocked(a, 1500), Some(60));
        assert_eq!(t.blocked(a, 60_500), Some(1));
        assert_eq!(t.blocked(b, 1500), None, "another address is not affected");
        assert_eq!(t.blocked(a, 61_000), None, "the window ended");
        t.failed(a, 61_000);
        assert_eq!(t.blocked(a, 61_001), None, "a new window counts from zero");
        let off = SecretThrottle::new(0);
        for i in 0..100 {
            off.failed(a, i);
        }
        assert_eq!(off.blocked(a, 100), None);
    }

    fn secrets() -> Secrets {
        Secrets::parse("old, new")
    }

    fn call(
        bearer: Option<&str>,
        query: Option<&str>,
        body: &str,
    ) -> Result<Revalidation, ApiError> {
        parse_request(&secrets(), bearer, query, body.as_bytes())
    }

    #[test]
    fn every_way_of_passing_the_secret_and_rotation() {
        assert!(call(Some("new"), None, r#"{"tag":"a"}"#).is_ok());
        assert!(call(Some("old"), None, r#"{"tag":"a"}"#).is_ok());
        assert!(call(None, Some("new"), r#"{"tag":"a"}"#).is_ok());
        assert!(call(None, None, r#"{"tag":"a","secret":"old"}"#).is_ok());
        assert_eq!(
            call(Some("nope"), None, r#"{"tag":"a"}"#)
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            call(None, None, r#"{"tag":"a","secret":""}"#)
                .unwrap_err()
                .status,
            401
        );
        let none = Secrets::parse("");
        assert_eq!(
            parse_request(&none, Some(""), None, b"{}")
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn unauthorized_comes_before_bad_request() {
        assert_eq!(call(None, None, "not json").unwrap_err().status, 401);
        assert_eq!(call(Some("new"), None, "not json").unwrap_err().status, 400);
    }

    #[test]
    fn bad_requests() {
        let bad = |body: &str| call(Some("new"), None, body).unwrap_err();
        assert_eq!(bad(r#"{"tag":"a","type":"tree"}"#).status, 400);
        assert_eq!(bad(r#"{"tag":"a","mode":"now"}"#).status, 400);
        assert_eq!(bad(r#"{"path":"blog"}"#).status, 400);
        assert_eq!(bad(r#"{"path":"/blog?x=1"}"#).status, 400);
        assert_eq!(bad(r#"{}"#).status, 400);
        assert_eq!(bad("").status, 400);
        assert!(bad(r#"{"tag":"a","type":"tree"}"#).message.contains("tree"));
    }

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a%2Bb+c"), "a+b c");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("caf%C3%A9"), "café");
    }

    #[test]
    fn fields_combine() {
        let r = call(
            Some("new"),
            None,
            r#"{"path":"/a","paths":["/b"],"tag":"t","tags":["u"],"mode":"expire","eager":true}"#,
        )
        .unwrap();
        assert_eq!(r.pages, ["/a", "/b"]);
        assert_eq!(r.tags, ["t", "u"]);
        assert!(r.expire && r.eager && r.layouts.is_empty());
        let r = call(Some("new"), None, r#"{"path":"/blog","type":"layout"}"#).unwrap();
        assert_eq!(r.layouts, ["/blog"]);
    }
}
