//! The admin page: server-rendered HTML with no script, its login sessions and CSRF
//! tokens, and the status JSON behind it (read by `isr status`).
//!
//! Everything here reads the engine; nothing here decides about caching. Listing is
//! paginated with a key cursor (`after`), so a page of the table costs the same with a
//! million entries as with ten.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::engine::Engine;
use crate::entry::Meta;
use crate::policy::{self, Freshness};
use crate::store::StoreError;

/// Rows per page of the table.
pub const PAGE_ROWS: usize = 50;
/// How long an admin session lasts.
const SESSION_MS: u64 = 12 * 3_600_000;
/// Sessions kept at most (the oldest is dropped first).
const MAX_SESSIONS: usize = 1000;

/// The session cookie's name.
pub const COOKIE: &str = "isr_admin";

struct Session {
    csrf: String,
    expires: u64,
}

/// Logged-in admin sessions, in memory (a restart logs everybody out).
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session; returns its cookie value.
    pub fn open(&self, now: u64) -> String {
        let token = random_hex();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            token.clone(),
            Session {
                csrf: random_hex(),
                expires: now + SESSION_MS,
            },
        );
        token
    }

    /// The CSRF token of a live session, if `token` is one.
    pub fn csrf(&self, token: &str, now: u64) -> Option<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token)
            .filter(|s| s.expires > now)
            .map(|s| s.csrf.clone())
    }

    /// Ends a session.
    pub fn close(&self, token: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }
}

/// 128 random bits from the kernel, in hex.
fn random_hex() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom is readable");
    b.iter().fold(String::with_capacity(32), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// What the table shows: a prefix or a tag, a view, and where the page starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    /// Keys starting with this.
    pub prefix: String,
    /// Keys carrying this tag (instead of the prefix).
    pub tag: String,
    /// `overdue` for the overdue view.
    pub view: String,
    /// The cursor: rows after this key.
    pub after: String,
    /// A message to show (after a revalidation).
    pub done: String,
}

impl Query {
    /// Parses `a=b&c=d` (form-encoded).
    pub fn parse(query: Option<&str>) -> Query {
        let mut q = Query::default();
        for (k, v) in form_pairs(query.unwrap_or("")) {
            match k.as_str() {
                "prefix" => q.prefix = v,
                "tag" => q.tag = v,
                "view" => q.view = v,
                "after" => q.after = v,
                "done" => q.done = v,
                _ => {}
            }
        }
        q
    }

    fn link(&self, after: &str) -> String {
        let mut s = String::from("/_isr/admin?");
        for (k, v) in [
            ("prefix", &self.prefix),
            ("tag", &self.tag),
            ("view", &self.view),
        ] {
            if !v.is_empty() {
                let _ = write!(s, "{k}={}&", url_encode(v));
            }
        }
        let _ = write!(s, "after={}", url_encode(after));
        s
    }
}

/// `a=b&c=d` as decoded pairs.
pub fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (crate::api::form_decode(k), crate::api::form_decode(v))
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters and `/`.
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One row of the table.
struct Row {
    key: String,
    meta: Meta,
}

/// Totals shown on the page and returned by the status JSON.
#[derive(Debug, serde::Serialize)]
pub struct Status {
    /// Pages in the store.
    pub entries: u64,
    /// Bytes the store takes.
    pub store_bytes: u64,
    /// Bytes in this node's memory tier.
    pub memory_tier_bytes: u64,
    /// Requests per cache state since start.
    pub requests: HashMap<&'static str, u64>,
    /// (HIT + STALE) / (HIT + STALE + MISS) since start; `null` before any.
    pub hit_ratio: Option<f64>,
    /// Origin fetches for the cache running now.
    pub regenerations_in_flight: i64,
    /// Pages overdue at the last scan.
    pub overdue: u64,
    /// When that scan ran (unix ms; 0 = not yet).
    pub overdue_scanned_at: u64,
    /// The first overdue pages.
    pub overdue_pages: Vec<OverduePage>,
}

/// An overdue page in the status JSON.
#[derive(Debug, serde::Serialize)]
pub struct OverduePage {
    /// Cache key.
    pub key: String,
    /// Seconds since its last successful regeneration.
    pub age_s: u64,
    /// Its revalidate window in seconds.
    pub revalidate_s: Option<u64>,
}

/// Collects the totals.
pub async fn status(engine: &Engine, overdue_listed: usize) -> Result<Status, StoreError> {
    let stats = engine.store().stats().await?;
    let req = engine.metrics().requests();
    let requests = crate::metrics::STATES.iter().copied().zip(req).collect();
    let served = req[0] + req[1] + req[2];
    let overdue = engine.overdue();
    let now = engine.now();
    Ok(Status {
        entries: stats.entries,
        store_bytes: stats.bytes,
        memory_tier_bytes: engine.hot().bytes(),
        requests,
        hit_ratio: (served > 0).then(|| (req[0] + req[1]) as f64 / served as f64),
        regenerations_in_flight: engine.metrics().in_flight_now().max(0),
        overdue: overdue.count,
        overdue_scanned_at: overdue.scanned_at,
        overdue_pages: overdue
            .pages
            .iter()
            .take(overdue_listed)
            .map(|(key, m)| OverduePage {
                key: key.clone(),
                age_s: policy::secs(m.timing().age(now)),
                revalidate_s: m.revalidate.map(policy::secs),
            })
            .collect(),
    })
}

/// The login form (`error` shown above it).
pub fn login_page(error: Option<&str>) -> String {
    let mut h = head("isr admin: log in");
    h.push_str("<main class=login><h1>isr admin</h1>");
    if let Some(e) = error {
        let _ = write!(h, "<p class=error id=error>{}</p>", escape(e));
    }
    h.push_str(
        "<form method=post action=/_isr/admin/login>\
         <label>Secret <input type=password name=secret id=secret autofocus required></label> \
         <button type=submit id=login>Log in</button></form></main></body></html>",
    );
    h
}

/// The admin page for `q`.
pub async fn page(engine: &Engine, q: &Query, csrf: &str) -> Result<String, StoreError> {
    let st = status(engine, 0).await?;
    let (rows, next) = rows(engine, q).await?;
    let now = engine.now();
    let mut h = head("isr admin");
    h.push_str("<header><h1>isr admin</h1><form method=post action=/_isr/admin/logout>");
    let _ = write!(
        h,
        "<input type=hidden name=csrf value=\"{csrf}\"><button>Log out</button></form></header>"
    );
    let _ = write!(
        h,
        "<section class=totals><span><b id=entries>{}</b> pages</span><span><b>{}</b> stored</span>\
         <span><b>{}</b> in memory</span><span>hit ratio <b id=hit-ratio>{}</b></span>\
         <span><b>{}</b> fetching now</span><span><a href=\"/_isr/admin?view=overdue\"><b id=overdue>{}</b> overdue</a></span></section>",
        st.entries,
        size(st.store_bytes),
        size(st.memory_tier_bytes),
        st.hit_ratio
            .map_or("–".into(), |r| format!("{:.1} %", r * 100.0)),
        st.regenerations_in_flight,
        st.overdue,
    );
    if !q.done.is_empty() {
        let _ = write!(h, "<p class=done id=done>{}</p>", escape(&q.done));
    }
    let _ = write!(
        h,
        "<form class=search method=get action=/_isr/admin>\
         <label>Path prefix <input name=prefix id=prefix value=\"{}\" placeholder=/blog/></label> \
         <label>or tag <input name=tag id=tag value=\"{}\"></label> \
         <button id=search>Search</button> <a href=/_isr/admin>all</a></form>",
        escape(&q.prefix),
        escape(&q.tag)
    );
    let revalidate_form = |kind: &str, value: &str, label: &str, id: &str| {
        format!(
            "<form method=post action=/_isr/admin/revalidate class=inline>\
             <input type=hidden name=csrf value=\"{csrf}\"><input type=hidden name=type value={kind}>\
             <input type=hidden name=value value=\"{}\"><input type=hidden name=back value=\"{}\">\
             <button id=\"{id}\">{label}</button></form>",
            escape(value),
            escape(&q.link(&q.after)),
        )
    };
    if !q.tag.is_empty() {
        h.push_str(&revalidate_form(
            "tag",
            &q.tag,
            &format!("Revalidate tag {}", escape(&q.tag)),
            "revalidate-tag",
        ));
    } else if !q.prefix.is_empty() && q.prefix.starts_with('/') {
        h.push_str(&revalidate_form(
            "layout",
            &q.prefix,
            &format!("Revalidate everything under {}", escape(&q.prefix)),
            "revalidate-layout",
        ));
    }
    if q.view == "overdue" {
        let _ = write!(
            h,
            "<h2>Overdue pages</h2><p>Not regenerated for longer than their revalidate window \
             plus {} (scan of {}).</p>",
            duration(engine.config().overdue_after),
            if st.overdue_scanned_at == 0 {
                "none yet".to_string()
            } else {
                format!(
                    "{} ago",
                    duration(now.saturating_sub(st.overdue_scanned_at))
                )
            }
        );
    }
    h.push_str(
        "<table><thead><tr><th>page</th><th>state</th><th>age</th><th>revalidate</th>\
         <th>last regeneration</th><th>last error</th><th>tags</th><th>size</th><th></th></tr></thead><tbody>",
    );
    if rows.is_empty() {
        h.push_str("<tr><td colspan=9>No pages.</td></tr>");
    }
    for (i, r) in rows.iter().enumerate() {
        let t = r.meta.timing();
        let state = match engine.freshness(&r.key, &r.meta, now) {
            Freshness::Fresh => "fresh",
            Freshness::Stale => "stale",
            Freshness::Expired => "expired",
        };
        let error = engine
            .last_error(&r.key)
            .map_or(String::new(), |(e, n)| format!("{} ({n}×)", escape(&e)));
        let _ = write!(
            h,
            "<tr data-key=\"{k}\"><td class=key>{k}</td><td class=\"state {state}\">{state}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=error>{error}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            duration(t.age(now)),
            r.meta
                .revalidate
                .map_or("on demand".into(), duration),
            unix_time(r.meta.generated),
            r.meta
                .tags
                .iter()
                .map(|t| format!(
                    "<a href=\"/_isr/admin?tag={}\">{}</a>",
                    url_encode(t),
                    escape(t)
                ))
                .collect::<Vec<_>>()
                .join(" "),
            size(r.meta.bytes),
            revalidate_form(
                "page",
                crate::key::path_of(&r.key),
                "Revalidate",
                &format!("revalidate-{i}")
            ),
            k = escape(&r.key),
        );
    }
    h.push_str("</tbody></table>");
    if let Some(next) = next {
        let _ = write!(
            h,
            "<p><a id=next href=\"{}\">Next {PAGE_ROWS} →</a></p>",
            escape(&q.link(&next))
        );
    }
    h.push_str("</body></html>");
    Ok(h)
}

/// The rows of one page of the table, and the cursor of the next page if there is one.
async fn rows(engine: &Engine, q: &Query) -> Result<(Vec<Row>, Option<String>), StoreError> {
    let after = (!q.after.is_empty()).then_some(q.after.as_str());
    let mut rows: Vec<Row> = if q.view == "overdue" {
        engine
            .overdue()
            .pages
            .into_iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(PAGE_ROWS + 1)
            .map(|(key, meta)| Row { key, meta })
            .collect()
    } else if !q.tag.is_empty() {
        let keys = engine
            .store()
            .keys_with_tag_after(&q.tag, after, PAGE_ROWS + 1)
            .await?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(meta) = engine.store().get_meta(&key).await? {
                out.push(Row { key, meta });
            }
        }
        out
    } else {
        engine
            .store()
            .list(&q.prefix, after, PAGE_ROWS + 1)
            .await?
            .into_iter()
            .map(|(key, meta)| Row { key, meta })
            .collect()
    };
    let next = (rows.len() > PAGE_ROWS).then(|| {
        rows.truncate(PAGE_ROWS);
        rows[PAGE_ROWS - 1].key.clone()
    });
    Ok((rows, next))
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>\
         <meta name=viewport content=\"width=device-width\"><style>{CSS}</style></head><body>"
    )
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
header{display:flex;justify-content:space-between;align-items:center}h1{font-size:1.4em;margin:0}\
.totals{display:flex;gap:1.5em;margin:1em 0;padding:.6em 1em;background:#f4f4f6;border-radius:6px}\
table{border-collapse:collapse;width:100%;margin-top:1em}th,td{text-align:left;padding:.35em .6em;border-bottom:1px solid #e4e4e8;vertical-align:top}\
th{background:#fafafa;font-weight:600}.key{font-family:ui-monospace,monospace}.fresh{color:#17803d}.stale{color:#b26a00}.expired{color:#b3261e}\
.error{color:#b3261e}.done{background:#e8f5e9;padding:.5em 1em;border-radius:6px}.inline{display:inline;margin:0 .5em 0 0}\
.search{margin:1em 0}.login{max-width:24em;margin:4em auto}.login input{margin:.5em 0;width:100%}";

fn size(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// `2026-11-23 06:18:52 UTC`.
fn unix_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_links_encoded() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_encode("/blog/a b&c=d"), "/blog/a%20b%26c%3Dd");
        let q = Query::parse(Some("tag=post%20a&after=%2Fb&view=overdue&x=1"));
        assert_eq!((q.tag.as_str(), q.after.as_str()), ("post a", "/b"));
        assert_eq!(
            q.link("/c"),
            "/_isr/admin?tag=post%20a&view=overdue&after=/c"
        );
    }

    #[test]
    fn dates_and_durations_read_well() {
        assert_eq!(unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(unix_time(1_795_414_732_000), "2026-11-23 06:18:52 UTC");
        assert_eq!(duration(90_000), "1m 30s");
        assert_eq!(duration(90_000_000), "1d 1h");
        assert_eq!(size(16_384), "16.0 KiB");
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let t = s.open(1000);
        assert_eq!(t.len(), 32);
        let csrf = s.csrf(&t, 2000).unwrap();
        assert_ne!(csrf, t);
        assert_eq!(s.csrf(&t, 1000 + SESSION_MS), None);
        s.close(&t);
        assert_eq!(s.csrf(&t, 2000), None);
        assert_eq!(s.csrf("forged", 2000), None);
    }
}
