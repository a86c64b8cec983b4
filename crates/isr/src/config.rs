//! `isr.toml`: parsing, defaults and validation.
//!
//! The file is read with `deny_unknown_fields`, so a typo is an error, and every error
//! names the file, the line and the key. Durations accept integer seconds or strings such
//! as `"500ms"`, `"90s"`, `"1h"`, `"7d"`; sizes accept integer bytes or `"256MiB"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// A configuration problem, located as precisely as the input allows.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: key `{key}`: {message}")]
pub struct ConfigError {
    /// The file the problem is in (or `<flags>` for command-line values).
    pub file: String,
    /// 1-based line number (0 when not known, e.g. for a flag).
    pub line: usize,
    /// The key whose value is wrong.
    pub key: String,
    /// What is wrong, and what to do.
    pub message: String,
}

/// A revalidate window: a number of milliseconds, or `false` (only on demand).
pub type Window = Option<u64>;

/// The validated configuration that the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// Base URL of the origin, e.g. `http://127.0.0.1:3000`.
    pub origin: http::Uri,
    /// Directory of the embedded store.
    pub data_dir: PathBuf,
    /// Name of the environment variable holding the revalidation secret(s).
    pub secret_env: String,
    /// `Host` header sent to the origin (default: the origin URL's authority).
    pub origin_host: String,
    /// Public URL of the site; sets `X-Forwarded-Proto`/`X-Forwarded-Host` on origin requests.
    pub public_url: Option<http::Uri>,
    /// Cache policy defaults and limits.
    pub cache: CacheConfig,
    /// Routes, in file order (matching uses matchit precedence, not order).
    pub routes: Vec<RouteConfig>,
    /// Extra path serving the revalidation API, besides `/_isr/revalidate`.
    pub api_path: Option<String>,
    /// The shared store, when several nodes share one cache (`[redis]` or `--redis`).
    pub redis: Option<RedisConfig>,
    /// A private listener for metrics, the admin page, health and the API, served there
    /// without the secret.
    pub admin_listen: Option<SocketAddr>,
    /// `[monitor] overdue_after` in ms: a page is overdue when its last successful
    /// regeneration is older than its revalidate window plus this.
    pub overdue_after: u64,
    /// `--debug-cache` / `ISR_DEBUG_CACHE=1`: one log line per request and per origin fetch.
    pub debug_cache: bool,
    /// `[prebuild]`: pages fetched at start, before any visitor asks.
    pub prebuild: PrebuildConfig,
    /// `[refresh] max_per_second`: regenerations started per second for `refresh =
    /// "always"` routes when nobody asks.
    pub refresh_per_second: u32,
    /// `[[cdn]]`: the CDN layers in front of isr, purged on revalidation.
    pub cdns: Vec<CdnConfig>,
    /// `[limits]`: what one client may take.
    pub limits: Limits,
    /// `[cache_life.NAME]`: data cache profiles defined in the file (they may redefine
    /// the built-in ones).
    pub cache_life: std::collections::BTreeMap<String, crate::data::CacheLife>,
    /// `[fetch] allow`: the upstream hosts `/_isr/fetch` may fetch (lower-case, with a
    /// port when one is given).
    pub fetch_allow: Vec<String>,
}

/// The `[limits]` table: bounds on what one client or connection may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive within this (slowloris); an idle keep-alive
    /// connection is closed after it.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers); larger ones get 431.
    pub max_header_bytes: usize,
    /// Connections served at once per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Longest time to produce a response head; then 504.
    pub request_timeout: Duration,
    /// Largest revalidation API body; larger ones get 413.
    pub max_api_body: usize,
    /// Wrong secrets accepted from one client address a minute; then 429.
    pub failed_secrets_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 65536,
            max_connections: 10_000,
            request_timeout: Duration::from_secs(60),
            max_api_body: 64 * 1024,
            failed_secrets_per_minute: 10,
        }
    }
}

/// One `[[cdn]]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CdnConfig {
    /// The `cdn` label of `isr_cdn_purges_total` (default: the kind, numbered when a kind
    /// is repeated).
    pub name: String,
    /// What it is and how to reach it.
    pub kind: CdnKind,
    /// Send `Surrogate-Key`, `Cache-Tag` and `CDN-Cache-Control` downstream.
    pub emit_tags: bool,
    /// Also purge a page after each time-based regeneration that changed its body.
    pub purge_on_regenerate: bool,
}

/// The kinds of `[[cdn]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdnKind {
    /// `PURGE <url><path>` (Varnish, Squid, nginx `cache_purge`); with `xkey`, tags too.
    HttpPurge {
        /// Where the cache listens, e.g. `http://127.0.0.1:6081`.
        url: String,
        /// Purge tags with `PURGE <url>/` and an `xkey-purge` header (varnish-modules).
        xkey: bool,
        /// `Host` of the purge requests: `public_url`'s host, else `url`'s.
        host: String,
    },
    /// Cloudflare's `purge_cache` API: URLs and `Cache-Tag`s.
    Cloudflare {
        /// The zone.
        zone_id: String,
        /// The environment variable holding the API token.
        token_env: String,
        /// The API's base URL (tests point it at a local receiver).
        api_url: String,
        /// `public_url`, the site whose URLs are purged.
        site: String,
    },
    /// Fastly's purge API: surrogate keys (soft by default) and URLs.
    Fastly {
        /// The service.
        service_id: String,
        /// The environment variable holding the API token.
        token_env: String,
        /// The API's base URL.
        api_url: String,
        /// Soft purges (`Fastly-Soft-Purge: 1`): objects are marked stale, not removed.
        soft: bool,
        /// `public_url`'s host, whose URLs are purged.
        site_host: String,
    },
    /// `POST {"paths": [...], "tags": [...]}` to a URL of yours, HMAC-signed.
    Webhook {
        /// Where to post.
        url: String,
        /// The environment variable holding the signing secret (its first
        /// comma-separated value is used).
        secret_env: String,
    },
}

impl CdnKind {
    /// The `kind` value of the block.
    pub fn as_str(&self) -> &'static str {
        match self {
            CdnKind::HttpPurge { .. } => "http-purge",
            CdnKind::Cloudflare { .. } => "cloudflare",
            CdnKind::Fastly { .. } => "fastly",
            CdnKind::Webhook { .. } => "webhook",
        }
    }
}

/// The `[prebuild]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrebuildConfig {
    /// Paths always prebuilt.
    pub paths: Vec<String>,
    /// A sitemap on the origin (sitemap index files are followed).
    pub sitemap: Option<String>,
    /// At most this many sitemap URLs, highest `<priority>` first.
    pub limit: usize,
    /// Fetches at once.
    pub concurrency: usize,
}

impl Default for PrebuildConfig {
    fn default() -> Self {
        PrebuildConfig {
            paths: Vec::new(),
            sitemap: None,
            limit: 1000,
            concurrency: 8,
        }
    }
}

/// The `[redis]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Namespace of every key and channel, so several sites can share one Redis.
    pub prefix: String,
}

/// The `[cache]` table.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Default revalidate window in ms (`None` = only on demand).
    pub revalidate: Window,
    /// Age in ms past which a page is not served stale.
    pub expire: u64,
    /// Byte budget of the hot in-memory tier (0 disables it).
    pub memory: u64,
    /// Largest origin body that is stored.
    pub max_body: u64,
    /// Deadline for a whole origin fetch.
    pub origin_timeout: Duration,
    /// Background regenerations at once.
    pub regen_concurrency: usize,
    /// Query parameters dropped from the cache key (`*` suffix = prefix match).
    pub ignore_query: Vec<String>,
    /// Cookies whose presence makes a request bypass the cache.
    pub bypass_cookies: Vec<String>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            revalidate: Some(3600 * 1000),
            expire: 365 * 86400 * 1000,
            memory: 256 << 20,
            max_body: 8 << 20,
            origin_timeout: Duration::from_secs(30),
            regen_concurrency: 16,
            ignore_query: vec!["utm_*".into(), "fbclid".into(), "gclid".into()],
            bypass_cookies: vec!["__isr_preview".into()],
        }
    }
}

/// One `[[route]]` block.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// matchit pattern, e.g. `/blog/{slug}`.
    pub pattern: String,
    /// The route's own revalidate window; `None` = not set (use the origin's or the default).
    pub revalidate: Option<Window>,
    /// Tag templates, filled from the pattern's parameters.
    pub tags: Vec<String>,
    /// `false`: only prebuilt paths exist (enforced by a later feature; accepted now).
    pub dynamic: bool,
    /// `false`: always passed through to the origin.
    pub cache: bool,
    /// `refresh = "ahead"`: a HIT past 80 % of the window regenerates the page early.
    pub refresh_ahead: bool,
    /// `refresh = "always"`: pages regenerate when they go stale, with or without visitors.
    pub refresh_always: bool,
}

// ---- the file as written ---------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<String>,
    origin: Option<String>,
    data_dir: Option<PathBuf>,
    secret_env: Option<String>,
    origin_host: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    cache: FileCache,
    #[serde(default)]
    route: Vec<FileRoute>,
    #[serde(default)]
    api: FileApi,
    redis: Option<FileRedis>,
    admin_listen: Option<String>,
    #[serde(default)]
    monitor: FileMonitor,
    #[serde(default)]
    prebuild: FilePrebuild,
    #[serde(default)]
    refresh: FileRefresh,
    #[serde(default)]
    cdn: Vec<FileCdn>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    cache_life: std::collections::BTreeMap<String, FileCacheLife>,
    #[serde(default)]
    fetch: FileFetch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCacheLife {
    stale: Option<DurationValue>,
    revalidate: Option<WindowValue>,
    expire: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFetch {
    #[serde(default)]
    allow: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    header_read_timeout: Option<DurationValue>,
    max_header_bytes: Option<SizeValue>,
    max_connections: Option<usize>,
    request_timeout: Option<DurationValue>,
    max_api_body: Option<SizeValue>,
    failed_secrets_per_minute: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCdn {
    kind: String,
    name: Option<String>,
    url: Option<String>,
    xkey: Option<bool>,
    #[serde(default)]
    emit_tags: bool,
    #[serde(default)]
    purge_on_regenerate: bool,
    zone_id: Option<String>,
    service_id: Option<String>,
    token_env: Option<String>,
    api_url: Option<String>,
    soft: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRefresh {
    max_per_second: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilePrebuild {
    #[serde(default)]
    paths: Vec<String>,
    sitemap: Option<String>,
    limit: Option<usize>,
    concurrency: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileMonitor {
    overdue_after: Option<DurationValue>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCache {
    revalidate: Option<WindowValue>,
    expire: Option<DurationValue>,
    memory: Option<SizeValue>,
    max_body: Option<SizeValue>,
    origin_timeout: Option<DurationValue>,
    regen_concurrency: Option<usize>,
    ignore_query: Option<Vec<String>>,
    bypass_cookies: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    #[serde(rename = "match")]
    pattern: String,
    revalidate: Option<WindowValue>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "yes")]
    dynamic: bool,
    #[serde(default = "yes")]
    cache: bool,
    refresh: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileApi {
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRedis {
    url: Option<String>,
    prefix: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum WindowValue {
    Flag(bool),
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Parses `"500ms"`, `"90s"`, `"5m"`, `"1h"`, `"7d"` or a bare number of seconds, to ms.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("ms", 1),
        ("", 1000),
        ("s", 1000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    parse_with_unit(text, UNITS, "a duration (examples: 500ms, 90s, 5m, 1h, 7d)")
}

/// Parses `"256MiB"`, `"8MB"`, `"64KiB"` or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    const UNITS: &[(&str, u64)] = &[
        ("", 1),
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("kB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ];
    parse_with_unit(text, UNITS, "a size (examples: 65536, 64KiB, 256MiB, 1GiB)")
}

/// A number followed by one of `units`, multiplied out.
fn parse_with_unit(text: &str, units: &[(&str, u64)], what: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{text}` is not {what}"))?;
    let factor = units
        .iter()
        .find(|(u, _)| *u == unit.trim())
        .map(|(_, f)| *f)
        .ok_or_else(|| format!("`{text}` has an unknown unit: expected {what}"))?;
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl DurationValue {
    fn ms(&self) -> Result<u64, String> {
        match self {
            DurationValue::Secs(s) => s.checked_mul(1000).ok_or_else(|| "too large".into()),
            DurationValue::Text(t) => parse_duration_ms(t),
        }
    }
}

impl WindowValue {
    fn window(&self) -> Result<Window, String> {
        match self {
            WindowValue::Flag(false) => Ok(None),
            WindowValue::Flag(true) => {
                Err("`true` is not a window: give a duration, or `false` for on-demand only".into())
            }
            WindowValue::Secs(s) => Ok(Some(s.checked_mul(1000).ok_or("too large")?)),
            WindowValue::Text(t) => parse_duration_ms(t).map(Some),
        }
    }
}

impl SizeValue {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            SizeValue::Bytes(b) => Ok(*b),
            SizeValue::Text(t) => parse_size(t),
        }
    }
}

/// Values given on the command line; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`
    pub listen: Option<String>,
    /// `--origin`
    pub origin: Option<String>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--redis`
    pub redis: Option<String>,
    /// `--debug-cache`
    pub debug_cache: bool,
}

/// Reads and validates a config file (when given) and applies the overrides.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let (name, text) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                file: path.display().to_string(),
                line: 0,
                key: "-".into(),
                message: format!("cannot read the file: {e}"),
            })?;
            (path.display().to_string(), text)
        }
        None => ("<flags>".to_string(), String::new()),
    };
    parse(&name, &text, overrides)
}

/// Parses config text (`name` is used in error messages).
pub fn parse(name: &str, text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
    let locate = Locator { name, text };
    let file: File = toml::from_str(text).map_err(|e| locate.toml_error(&e))?;
    let defaults = CacheConfig::default();
    let c = &file.cache;
    let at = |key: &str, r: Result<u64, String>| r.map_err(|m| locate.key_error(key, m));
    let cache = CacheConfig {
        revalidate: match &c.revalidate {
            Some(w) => w.window().map_err(|m| locate.key_error("revalidate", m))?,
            None => defaults.revalidate,
        },
        expire: match &c.expire {
            Some(d) => at("expire", d.ms())?,
            None => defaults.expire,
        },
        memory: match &c.memory {
            Some(s) => at("memory", s.bytes())?,
            None => defaults.memory,
        },
        max_body: match &c.max_body {
            Some(s) => at("max_body", s.bytes())?,
            None => defaults.max_body,
        },
        origin_timeout: match &c.origin_timeout {
            Some(d) => Duration::from_millis(at("origin_timeout", d.ms())?),
            None => defaults.origin_timeout,
        },
        regen_concurrency: match c.regen_concurrency {
            Some(0) => {
                return Err(locate.key_error("regen_concurrency", "must be at least 1".into()))
            }
            Some(n) => n,
            None => defaults.regen_concurrency,
        },
        ignore_query: c.ignore_query.clone().unwrap_or(defaults.ignore_query),
        bypass_cookies: c.bypass_cookies.clone().unwrap_or(defaults.bypass_cookies),
    };
    if cache.origin_timeout.is_zero() {
        return Err(locate.key_error("origin_timeout", "must be more than 0".into()));
    }

    let mut routes = Vec::new();
    let mut seen = matchit::Router::new();
    for r in &file.route {
        let revalidate = match &r.revalidate {
            Some(w) => Some(w.window().map_err(|m| locate.key_error("revalidate", m))?),
            None => None,
        };
        if !r.pattern.starts_with('/') {
            return Err(locate.value_error("match", &r.pattern, "a route must start with `/`"));
        }
        if let Err(e) = seen.insert(r.pattern.clone(), ()) {
            return Err(locate.value_error("match", &r.pattern, &format!("invalid route: {e}")));
        }
        let params = crate::route::param_names(&r.pattern);
        for t in &r.tags {
            for p in crate::route::template_params(t) {
                if !params.contains(&p) {
                    return Err(locate.value_error(
                        "tags",
                        t,
                        &format!(
                            "tag template uses `{{{p}}}`, which `{}` does not define",
                            r.pattern
                        ),
                    ));
                }
            }
        }
        let (refresh_ahead, refresh_always) = match r.refresh.as_deref() {
            None | Some("on-request") => (false, false),
            Some("ahead") => (true, false),
            Some("always") => (false, true),
            Some(other) => {
                return Err(locate.value_error(
                    "refresh",
                    other,
                    "expected \"on-request\", \"ahead\" or \"always\"",
                ))
            }
        };
        routes.push(RouteConfig {
            pattern: r.pattern.clone(),
            revalidate,
            tags: r.tags.clone(),
            dynamic: r.dynamic,
            cache: r.cache,
            refresh_ahead,
            refresh_always,
        });
    }

    let listen_text = overrides
        .listen
        .clone()
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        locate.value_error(
            "listen",
            &listen_text,
            "expected an address such as 127.0.0.1:8080",
        )
    })?;

    let origin_text = overrides
        .origin
        .clone()
        .or(file.origin.clone())
        .ok_or_else(|| {
            locate.key_error(
                "origin",
                "required: the URL of your site, e.g. http://127.0.0.1:3000 (or --origin)".into(),
            )
        })?;
    let origin = parse_url(&origin_text, false)
        .map_err(|m| locate.value_error("origin", &origin_text, &m))?;
    let origin_host = match &file.origin_host {
        Some(h) if h.is_empty() || http::HeaderValue::from_str(h).is_err() => {
            return Err(locate.value_error("origin_host", h, "not a valid Host header value"))
        }
        Some(h) => h.clone(),
        None => origin
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default(),
    };
    let public_url = match &file.public_url {
        Some(u) => Some(parse_url(u, true).map_err(|m| locate.value_error("public_url", u, &m))?),
        None => None,
    };
    let api_path = match &file.api.path {
        Some(p) if !p.starts_with('/') || p.starts_with("/_isr/") => {
            return Err(locate.value_error("path", p, "must start with `/` and not with `/_isr/`"))
        }
        other => other.clone(),
    };
    let redis = match (&overrides.redis, &file.redis) {
        (None, None) => None,
        (url, table) => {
            let url = url
                .clone()
                .or_else(|| table.as_ref()?.url.clone())
                .ok_or_else(|| {
                    locate.key_error(
                        "redis",
                        "[redis] needs url = \"redis://host:port/db\" (or --redis)".into(),
                    )
                })?;
            if !url.starts_with("redis://") && !url.starts_with("unix://") {
                return Err(locate.value_error(
                    "url",
                    &url,
                    "expected redis://host:port/db (rediss:// is not supported)",
                ));
            }
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(locate.value_error("url", &url, &e.to_string()));
            }
            let prefix = table
                .as_ref()
                .and_then(|t| t.prefix.clone())
                .unwrap_or_else(|| "isr".into());
            if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace()) {
                return Err(locate.value_error(
                    "prefix",
                    &prefix,
                    "must be non-empty, without spaces",
                ));
            }
            Some(RedisConfig { url, prefix })
        }
    };
    let admin_listen = match &file.admin_listen {
        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
            locate.value_error(
                "admin_listen",
                a,
                "expected an address such as 127.0.0.1:9091",
            )
        })?),
        None => None,
    };
    let overdue_after = match &file.monitor.overdue_after {
        Some(d) => at("overdue_after", d.ms())?,
        None => 24 * 3_600_000,
    };
    let p = &file.prebuild;
    for path in p.paths.iter().chain(&p.sitemap) {
        if !path.starts_with('/') {
            let key = if Some(path) == p.sitemap.as_ref() {
                "sitemap"
            } else {
                "paths"
            };
            return Err(locate.value_error(key, path, "must be a path starting with `/`"));
        }
    }
    if p.concurrency == Some(0) {
        return Err(locate.key_error("concurrency", "must be at least 1".into()));
    }
    let prebuild = PrebuildConfig {
        paths: p.paths.clone(),
        sitemap: p.sitemap.clone(),
        limit: p.limit.unwrap_or(1000),
        concurrency: p.concurrency.unwrap_or(8),
    };
    let refresh_per_second = match file.refresh.max_per_second {
        Some(0) => return Err(locate.key_error("max_per_second", "must be at least 1".into())),
        Some(n) => n,
        None => 50,
    };
    let cdns = parse_cdns(&file.cdn, public_url.as_ref(), &file.secret_env, &locate)?;
    let limits = parse_limits(&file.limits, &locate)?;
    let cache_life = parse_cache_life(&file.cache_life, &locate)?;
    let fetch_allow = parse_fetch_allow(&file.fetch.allow, &locate)?;
    Ok(Config {
        cache_life,
        fetch_allow,
        limits,
        cdns,
        refresh_per_second,
        prebuild,
        admin_listen,
        overdue_after,
        debug_cache: overrides.debug_cache,
        listen,
        origin,
        data_dir: overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./isr-data")),
        secret_env: file.secret_env.unwrap_or_else(|| "ISR_SECRET".into()),
        origin_host,
        public_url,
        cache,
        routes,
        api_path,
        redis,
    })
}

/// Reads `[cache_life.NAME]` tables; a key left out takes the built-in `default`
/// profile's value, as in Next.js.
fn parse_cache_life(
    tables: &std::collections::BTreeMap<String, FileCacheLife>,
    locate: &Locator<'_>,
) -> Result<std::collections::BTreeMap<String, crate::data::CacheLife>, ConfigError> {
    let mut out = std::collections::BTreeMap::new();
    for (name, t) in tables {
        let base = crate::data::CacheLife::DEFAULT;
        let at = |key: &str, r: Result<u64, String>| {
            r.map_err(|m| locate.key_error(key, format!("[cache_life.{name}]: {m}")))
        };
        let life = crate::data::CacheLife {
            stale: match &t.stale {
                Some(d) => at("stale", d.ms())?,
                None => base.stale,
            },
            revalidate: match &t.revalidate {
                Some(w) => w.window().map_err(|m| {
                    locate.key_error("revalidate", format!("[cache_life.{name}]: {m}"))
                })?,
                None => base.revalidate,
            },
            expire: match &t.expire {
                Some(d) => at("expire", d.ms())?,
                None => base.expire,
            },
        };
        if life.revalidate.is_some_and(|r| r > life.expire) {
            return Err(locate.key_error(
                "expire",
                format!("[cache_life.{name}]: expire must not be shorter than revalidate"),
            ));
        }
        out.insert(name.clone(), life);
    }
    Ok(out)
}

/// Reads `[fetch] allow`: host names (or `host:port`), nothing else, so that the list
/// can only ever name the APIs meant.
fn parse_fetch_allow(hosts: &[String], locate: &Locator<'_>) -> Result<Vec<String>, ConfigError> {
    hosts
        .iter()
        .map(|h| {
            let ok = !h.is_empty()
                && h.parse::<http::uri::Authority>()
                    .is_ok_and(|a| a.as_str() == h && !h.contains('@'));
            if ok {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(locate.value_error(
                    "allow",
                    h,
                    "expected a host name such as \"api.example.com\" (optionally with :port), without scheme or path",
                ))
            }
        })
        .collect()
}

/// Validates `[limits]`: every value must leave isr usable.
fn parse_limits(l: &FileLimits, locate: &Locator<'_>) -> Result<Limits, ConfigError> {
    let d = Limits::default();
    let duration = |key: &str, v: &Option<DurationValue>, default: Duration| match v {
        None => Ok(default),
        Some(v) => match v.ms() {
            Ok(0) => Err(locate.key_error(key, "must be more than 0".into())),
            Ok(ms) => Ok(Duration::from_millis(ms)),
            Err(m) => Err(locate.key_error(key, m)),
        },
    };
    let size = |key: &str, v: &Option<SizeValue>, default: usize, min: u64| match v {
        None => Ok(default),
        Some(v) => match v.bytes() {
            Ok(n) if n < min => Err(locate.key_error(key, format!("must be at least {min} bytes"))),
            Ok(n) => Ok(n as usize),
            Err(m) => Err(locate.key_error(key, m)),
        },
    };
    let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(locate.key_error(key, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(Limits {
        header_read_timeout: duration(
            "header_read_timeout",
            &l.header_read_timeout,
            d.header_read_timeout,
        )?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: size(
            "max_header_bytes",
            &l.max_header_bytes,
            d.max_header_bytes,
            8192,
        )?,
        max_connections: at_least_one("max_connections", l.max_connections, d.max_connections)?,
        request_timeout: duration("request_timeout", &l.request_timeout, d.request_timeout)?,
        max_api_body: size("max_api_body", &l.max_api_body, d.max_api_body, 1024)?,
        failed_secrets_per_minute: match l.failed_secrets_per_minute {
            Some(n) => n,
            None => d.failed_secrets_per_minute,
        },
    })
}

/// Validates the `[[cdn]]` blocks: each kind's required keys, no key of another kind.
fn parse_cdns(
    blocks: &[FileCdn],
    public_url: Option<&http::Uri>,
    secret_env: &Option<String>,
    locate: &Locator<'_>,
) -> Result<Vec<CdnConfig>, ConfigError> {
    let mut out: Vec<CdnConfig> = Vec::new();
    for b in blocks {
        let kind = b.kind.as_str();
        let given = [
            ("url", b.url.is_some()),
            ("xkey", b.xkey.is_some()),
            ("zone_id", b.zone_id.is_some()),
            ("service_id", b.service_id.is_some()),
            ("token_env", b.token_env.is_some()),
            ("api_url", b.api_url.is_some()),
            ("soft", b.soft.is_some()),
        ];
        let allowed: &[&str] = match kind {
            "http-purge" => &["url", "xkey"],
            "cloudflare" => &["zone_id", "token_env", "api_url"],
            "fastly" => &["service_id", "token_env", "api_url", "soft"],
            "webhook" => &["url", "token_env"],
            other => {
                return Err(locate.value_error(
                    "kind",
                    other,
                    "expected \"http-purge\", \"cloudflare\", \"fastly\" or \"webhook\"",
                ))
            }
        };
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            return Err(locate.key_error(
                key,
                format!(
                    "not a key of kind = \"{kind}\" (its keys: {})",
                    allowed.join(", ")
                ),
            ));
        }
        let required = |key: &str, v: &Option<String>| {
            v.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                locate.value_error("kind", kind, &format!("kind = \"{kind}\" needs `{key}`"))
            })
        };
        let url_of = |key: &str, text: &str| {
            parse_url(text, true).map_err(|m| locate.value_error(key, text, &m))
        };
        let site = || {
            public_url.ok_or_else(|| {
                locate.value_error(
                    "kind",
                    kind,
                    &format!("kind = \"{kind}\" purges URLs of your public site: set public_url"),
                )
            })
        };
        let api = |default: &str| -> Result<String, ConfigError> {
            let text = b.api_url.clone().unwrap_or_else(|| default.into());
            url_of("api_url", &text)?;
            Ok(text.trim_end_matches('/').to_string())
        };
        let cdn_kind = match kind {
            "http-purge" => {
                let text = required("url", &b.url)?;
                let url = url_of("url", &text)?;
                let host = public_url
                    .and_then(|u| u.authority())
                    .or(url.authority())
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                CdnKind::HttpPurge {
                    url: text.trim_end_matches('/').to_string(),
                    xkey: b.xkey.unwrap_or(false),
                    host,
                }
            }
            "cloudflare" => CdnKind::Cloudflare {
                zone_id: required("zone_id", &b.zone_id)?,
                token_env: b
                    .token_env
                    .clone()
                    .unwrap_or_else(|| "CLOUDFLARE_API_TOKEN".into()),
                api_url: api("https://api.cloudflare.com/client/v4")?,
                site: site()?.to_string().trim_end_matches('/').to_string(),
            },
            "fastly" => CdnKind::Fastly {
                service_id: required("service_id", &b.service_id)?,
                token_env: b
                    .token_env
                    .clone()
                    .unwrap_or_else(|| "FASTLY_API_TOKEN".into()),
                api_url: api("https://api.fastly.com")?,
                soft: b.soft.unwrap_or(true),
                site_host: site()?
                    .authority()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            },
            _ => {
                let text = required("url", &b.url)?;
                url_of("url", &text)?;
                CdnKind::Webhook {
                    url: text,
                    secret_env: b
                        .token_env
                        .clone()
                        .or_else(|| secret_env.clone())
                        .unwrap_or_else(|| "ISR_SECRET".into()),
                }
            }
        };
        let name = match &b.name {
            Some(n) if n.is_empty() || !n.bytes().all(|c| c.is_ascii_graphic() && c != b'"') => {
                return Err(locate.value_error("name", n, "use letters, digits and - _ . only"))
            }
            Some(n) => n.clone(),
            None => {
                let same = out.iter().filter(|c| c.kind.as_str() == kind).count();
                if same == 0 {
                    kind.to_string()
                } else {
                    format!("{kind}-{}", same + 1)
                }
            }
        };
        if out.iter().any(|c| c.name == name) {
            return Err(locate.value_error("name", &name, "two [[cdn]] blocks have this name"));
        }
        out.push(CdnConfig {
            name,
            kind: cdn_kind,
            emit_tags: b.emit_tags,
            purge_on_regenerate: b.purge_on_regenerate,
        });
    }
    Ok(out)
}

/// An absolute URL with a host; `https` only where `allow_https` (the public URL).
fn parse_url(text: &str, allow_https: bool) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| "not a URL (expected e.g. http://127.0.0.1:3000)".to_string())?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if allow_https => {}
        Some("https") => {
            return Err(
                "https origins are not supported yet: put isr next to the origin and use http"
                    .into(),
            )
        }
        _ => return Err("the URL must start with http://".into()),
    }
    if uri.authority().is_none() {
        return Err("the URL has no host".into());
    }
    Ok(uri)
}

/// Turns byte offsets and key names into `file:line` positions.
struct Locator<'a> {
    name: &'a str,
    text: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = e.message().trim().to_string();
        let (line, key) = match e.span() {
            Some(span) => {
                let line = self.line_of(span.start);
                let line_text = self.text.lines().nth(line - 1).unwrap_or("");
                let key = line_text
                    .split('=')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .trim_matches(|c| c == '[' || c == ']')
                    .to_string();
                (line, key)
            }
            None => (0, String::new()),
        };
        let key = if key.is_empty() {
            // "unknown field `x`" names the key itself.
            message.split('`').nth(1).unwrap_or("-").to_string()
        } else {
            key
        };
        ConfigError {
            file: self.name.into(),
            line,
            key,
            message,
        }
    }

    /// An error about `key` whose value could not be located more precisely.
    fn key_error(&self, key: &str, message: String) -> ConfigError {
        let line = self.find_line(|l| l.split('=').next().map(str::trim) == Some(key));
        ConfigError {
            file: self.name.into(),
            line,
            key: key.into(),
            message,
        }
    }

    /// An error about `key = value`: the line holding that value.
    fn value_error(&self, key: &str, value: &str, message: &str) -> ConfigError {
        let line = self
            .find_line(|l| l.split('=').next().map(str::trim) == Some(key) && l.contains(value));
        let line = if line == 0 {
            self.find_line(|l| l.contains(value))
        } else {
            line
        };
        ConfigError {
            file: self.name.into(),
            line,
            key: key.into(),
            message: format!("`{value}`: {message}"),
        }
    }

    fn find_line(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.text.lines().position(pred).map(|i| i + 1).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<Config, ConfigError> {
        parse("isr.toml", text, &Overrides::default())
    }

    #[test]
    fn durations_and_sizes_accept_numbers_and_strings() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("7d"), Ok(604_800_000));
        assert_eq!(parse_duration_ms("60"), Ok(60_000));
        assert!(parse_duration_ms("soon").is_err());
        assert!(parse_duration_ms("5y").is_err());
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn full_example_parses() {
        let c = cfg(r#"
listen = "127.0.0.1:9000"
origin = "http://127.0.0.1:3000"
[cache]
revalidate = "1h"
expire = 86400
memory = "64MiB"
ignore_query = ["utm_*"]
[[route]]
match = "/blog/{slug}"
revalidate = 60
tags = ["posts", "post-{slug}"]
[[route]]
match = "/api/{*rest}"
cache = false
[[route]]
match = "/docs"
revalidate = false
"#)
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cache.expire, 86_400_000);
        assert_eq!(c.cache.memory, 64 << 20);
        assert_eq!(c.routes[0].revalidate, Some(Some(60_000)));
        assert!(!c.routes[1].cache);
        assert_eq!(c.routes[2].revalidate, Some(None));
        assert_eq!(c.origin_host, "127.0.0.1:3000");
    }

    #[test]
    fn data_cache_profiles_and_the_fetch_allow_list() {
        let c = cfg("origin = \"http://127.0.0.1:3000\"\n[cache_life.editorial]\nrevalidate = \"2m\"\n[fetch]\nallow = [\"API.example.com\", \"localhost:8080\"]\n").unwrap();
        let l = c.cache_life["editorial"];
        assert_eq!(
            (l.revalidate, l.expire),
            (Some(120_000), crate::data::CacheLife::DEFAULT.expire)
        );
        assert_eq!(c.fetch_allow, ["api.example.com", "localhost:8080"]);
        let e = cfg("origin = \"http://127.0.0.1:3000\"\n[cache_life.x]\nrevalidate = \"2h\"\nexpire = \"1h\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "expire"), "{e}");
        for bad in [
            "https://api.example.com",
            "api.example.com/x",
            "user@api.example.com",
            "",
        ] {
            let text =
                format!("origin = \"http://127.0.0.1:3000\"\n[fetch]\nallow = [\"{bad}\"]\n");
            let e = cfg(&text).unwrap_err();
            assert_eq!(e.key, "allow", "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = cfg("origin = \"http://127.0.0.1:3000\"\n[cache]\nrevalidat = 5\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "revalidat"), "{e}");
        assert!(
            e.to_string().starts_with("isr.toml:3: key `revalidat`"),
            "{e}"
        );
    }

    #[test]
    fn bad_duration_names_its_line() {
        let e = cfg("origin = \"http://a:1\"\n\n[cache]\nexpire = \"soon\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "expire"), "{e}");
    }

    #[test]
    fn missing_origin_is_an_error_unless_given_as_flag() {
        assert_eq!(cfg("").unwrap_err().key, "origin");
        let o = Overrides {
            origin: Some("http://127.0.0.1:3000".into()),
            ..Default::default()
        };
        assert!(parse("<flags>", "", &o).is_ok());
    }

    #[test]
    fn tag_template_must_use_route_params() {
        let e =
            cfg("origin = \"http://a:1\"\n[[route]]\nmatch = \"/b/{slug}\"\ntags = [\"p-{id}\"]\n")
                .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "tags"), "{e}");
    }

    #[test]
    fn wrong_type_names_key() {
        let e =
            cfg("origin = \"http://a:1\"\n[cache]\nregen_concurrency = \"many\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "regen_concurrency"), "{e}");
    }

    #[test]
    fn redis_table_and_flag() {
        let c =
            cfg("origin = \"http://a:1\"\n[redis]\nurl = \"redis://127.0.0.1:6379/2\"\n").unwrap();
        let r = c.redis.unwrap();
        assert_eq!(
            (r.url.as_str(), r.prefix.as_str()),
            ("redis://127.0.0.1:6379/2", "isr")
        );
        let o = Overrides {
            origin: Some("http://a:1".into()),
            redis: Some("redis://127.0.0.1:7000/0".into()),
            ..Default::default()
        };
        let c = parse("<flags>", "[redis]\nprefix = \"site-b\"\n", &o).unwrap();
        let r = c.redis.unwrap();
        assert_eq!(
            (r.url.as_str(), r.prefix.as_str()),
            ("redis://127.0.0.1:7000/0", "site-b")
        );
        assert_eq!(cfg("origin = \"http://a:1\"").unwrap().redis, None);
    }

    #[test]
    fn bad_redis_settings_name_their_line() {
        let e =
            cfg("origin = \"http://a:1\"\n[redis]\nurl = \"http://127.0.0.1:6379\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "url"), "{e}");
        let e = cfg("origin = \"http://a:1\"\n[redis]\nprefix = \"x\"\n").unwrap_err();
        assert_eq!(e.key, "redis", "{e}");
        let e =
            cfg("origin = \"http://a:1\"\n[redis]\nurl = \"redis://h:1/0\"\nprefix = \"a b\"\n")
                .unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (4, "prefix"), "{e}");
    }

    #[test]
    fn admin_listen_and_monitor() {
        let c = cfg("origin = \"http://a:1\"\nadmin_listen = \"127.0.0.1:9091\"\n[monitor]\noverdue_after = \"2h\"\n").unwrap();
        assert_eq!(c.admin_listen.unwrap().port(), 9091);
        assert_eq!(c.overdue_after, 7_200_000);
        assert_eq!(
            cfg("origin = \"http://a:1\"").unwrap().overdue_after,
            86_400_000
        );
        let e = cfg("origin = \"http://a:1\"\nadmin_listen = \"localhost\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (2, "admin_listen"), "{e}");
        let e = cfg("origin = \"http://a:1\"\n[monitor]\noverdue_after = \"often\"\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "overdue_after"), "{e}");
    }

    #[test]
    fn route_refresh_modes() {
        let c = cfg("origin = \"http://a:1\"\n[[route]]\nmatch = \"/a\"\nrefresh = \"ahead\"\n[[route]]\nmatch = \"/b\"\n").unwrap();
        assert!(c.routes[0].refresh_ahead && !c.routes[1].refresh_ahead);
        let c = cfg("origin = \"http://a:1\"\n[[route]]\nmatch = \"/a\"\nrefresh = \"always\"\n[refresh]\nmax_per_second = 5\n").unwrap();
        assert!(c.routes[0].refresh_always && c.refresh_per_second == 5);
        assert_eq!(
            cfg("origin = \"http://a:1\"").unwrap().refresh_per_second,
            50
        );
        let e = cfg("origin = \"http://a:1\"\n[[route]]\nmatch = \"/a\"\nrefresh = \"soon\"\n")
            .unwrap_err();
        assert_eq!(e.key, "refresh", "{e}");
    }

    #[test]
    fn prebuild_table() {
        let c = cfg("origin = \"http://a:1\"\n[prebuild]\npaths = [\"/\", \"/about\"]\nsitemap = \"/sitemap.xml\"\nlimit = 10\n").unwrap();
        assert_eq!(c.prebuild.paths, ["/", "/about"]);
        assert_eq!(c.prebuild.sitemap.as_deref(), Some("/sitemap.xml"));
        assert_eq!((c.prebuild.limit, c.prebuild.concurrency), (10, 8));
        let e = cfg("origin = \"http://a:1\"\n[prebuild]\npaths = [\"about\"]\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "paths"), "{e}");
        let e = cfg("origin = \"http://a:1\"\n[prebuild]\nconcurrency = 0\n").unwrap_err();
        assert_eq!((e.line, e.key.as_str()), (3, "concurrency"), "{e}");
    }

    #[test]
    fn cdn_blocks() {
        let c = cfg(concat!(
            "origin = \"http://a:1\"\npublic_url = \"https://www.example.com\"\n",
            "[[cdn]]\nkind = \"http-purge\"\nurl = \"http://127.0.0.1:6081/\"\nxkey = true\nemit_tags = true\n",
            "[[cdn]]\nkind = \"cloudflare\"\nzone_id = \"z1\"\n",
            "[[cdn]]\nkind = \"fastly\"\nservice_id = \"s1\"\nsoft = false\npurge_on_regenerate = true\n",
            "[[cdn]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n",
            "[[cdn]]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/other\"\ntoken_env = \"HOOK\"\n",
        ))
        .unwrap();
        let names: Vec<_> = c.cdns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            ["http-purge", "cloudflare", "fastly", "webhook", "webhook-2"]
        );
        assert_eq!(
            c.cdns[0].kind,
            CdnKind::HttpPurge {
                url: "http://127.0.0.1:6081".into(),
                xkey: true,
                host: "www.example.com".into()
            }
        );
        assert!(c.cdns[0].emit_tags && !c.cdns[0].purge_on_regenerate);
        assert_eq!(
            c.cdns[1].kind,
            CdnKind::Cloudflare {
                zone_id: "z1".into(),
                token_env: "CLOUDFLARE_API_TOKEN".into(),
                api_url: "https://api.cloudflare.com/client/v4".into(),
                site: "https://www.example.com".into()
            }
        );
        assert!(
            matches!(&c.cdns[2].kind, CdnKind::Fastly { soft: false, site_host, .. } if site_host == "www.example.com")
        );
        assert!(c.cdns[2].purge_on_regenerate);
        assert!(
            matches!(&c.cdns[3].kind, CdnKind::Webhook { secret_env, .. } if secret_env == "ISR_SECRET")
        );
        assert!(
            matches!(&c.cdns[4].kind, CdnKind::Webhook { secret_env, .. } if secret_env == "HOOK")
        );
    }

    #[test]
    fn cdn_mistakes_name_the_line_and_key() {
        let bad = |text: &str| cfg(&format!("origin = \"http://a:1\"\n{text}")).unwrap_err();
        let e = bad("[[cdn]]\nkind = \"akamai\"\n");
        assert_eq!((e.line, e.key.as_str()), (3, "kind"), "{e}");
        let e = bad("[[cdn]]\nkind = \"http-purge\"\n");
        assert!(e.message.contains("needs `url`"), "{e}");
        let e = bad("[[cdn]]\nkind = \"http-purge\"\nurl = \"http://v:1\"\nzone_id = \"z\"\n");
        assert_eq!((e.line, e.key.as_str()), (5, "zone_id"), "{e}");
        let e = bad("[[cdn]]\nkind = \"cloudflare\"\nzone_id = \"z\"\n");
        assert!(e.message.contains("public_url"), "{e}");
        let e = bad("[[cdn]]\nkind = \"webhook\"\nurl = \"ftp://x\"\n");
        assert_eq!((e.line, e.key.as_str()), (4, "url"), "{e}");
        let e = bad("[[cdn]]\nkind = \"http-purge\"\nurl = \"http://v:1\"\ncolour = 1\n");
        assert_eq!((e.line, e.key.as_str()), (5, "colour"), "{e}");
    }

    #[test]
    fn limits_table() {
        let c = cfg("origin = \"http://a:1\"").unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = cfg("origin = \"http://a:1\"\n[limits]\nheader_read_timeout = \"2s\"\nmax_header_bytes = \"16KiB\"\nmax_connections = 5\nrequest_timeout = 3\nmax_api_body = 2048\nfailed_secrets_per_minute = 0\n").unwrap();
        assert_eq!(
            c.limits,
            Limits {
                header_read_timeout: Duration::from_secs(2),
                max_header_bytes: 16384,
                max_connections: 5,
                request_timeout: Duration::from_secs(3),
                max_api_body: 2048,
                failed_secrets_per_minute: 0,
            }
        );
        let bad = |t: &str| cfg(&format!("origin = \"http://a:1\"\n[limits]\n{t}\n")).unwrap_err();
        let e = bad("max_header_bytes = 100");
        assert_eq!((e.line, e.key.as_str()), (3, "max_header_bytes"), "{e}");
        let e = bad("max_connections = 0");
        assert_eq!((e.line, e.key.as_str()), (3, "max_connections"), "{e}");
        let e = bad("request_timeout = \"0s\"");
        assert_eq!((e.line, e.key.as_str()), (3, "request_timeout"), "{e}");
    }
}
