//! Prebuilding: the `[prebuild]` paths and the origin's sitemap fetched before any visitor
//! asks (Next.js's `generateStaticParams`). Runs in the background at start (with
//! `/_isr/health?ready` answering 503 until it is done) or once with `isr prebuild`.
//!
//! A page already stored and fresh is skipped; a stored page newer than the fetch is never
//! overwritten (the store keeps the newer generation); prebuilding never counts as a
//! visitor. A bad sitemap gives a warning and whatever part of it is valid.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::engine::{Engine, Warmed};
use crate::origin::Fetched;

/// The sitemap protocol's limit of URLs per file.
const SITEMAP_MAX: usize = 50_000;
/// Sitemaps read at most from one sitemap index.
const INDEX_MAX: usize = 100;

/// What a prebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Pages it tried.
    pub total: usize,
    /// Fetched and stored.
    pub stored: usize,
    /// Already stored and fresh: skipped.
    pub fresh: usize,
    /// Not stored (origin error, uncacheable).
    pub failed: usize,
}

/// Prebuilds every configured page, `concurrency` at a time, calling `progress(done,
/// total)` after each.
pub async fn run(engine: &Arc<Engine>, progress: &(dyn Fn(usize, usize) + Sync)) -> Report {
    let cfg = &engine.config().prebuild;
    let mut keys: Vec<String> = cfg.paths.iter().map(|p| key_of(engine, p)).collect();
    // Whether every sitemap was read: only then may pages that left it be forgotten.
    let mut complete = true;
    if let Some(sitemap) = &cfg.sitemap {
        let (mut found, all_read) = sitemap_pages(engine, sitemap).await;
        complete = all_read;
        // Highest priority first; the sort is stable, so the file's order breaks ties.
        found.sort_by(|a, b| b.1.total_cmp(&a.1));
        keys.extend(found.into_iter().take(cfg.limit).map(|(k, _)| k));
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    if complete {
        // The `dynamic = false` routes now know exactly these pages.
        let known = keys
            .iter()
            .map(|k| crate::key::path_of(k).to_string())
            .collect();
        if let Err(e) = engine.set_known_static(known).await {
            tracing::warn!(error = %e, "prebuild: could not list the stored pages; none forgotten");
        }
    }
    let total = keys.len();
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for key in keys {
        let (engine, slots) = (engine.clone(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let warmed = engine.warm(&key).await;
            if let Warmed::Failed(why) = &warmed {
                tracing::warn!(key, reason = %why, "prebuild: page not stored");
            }
            warmed
        });
    }
    let mut report = Report {
        total,
        ..Report::default()
    };
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        done += 1;
        match r {
            Ok(Warmed::Stored) => report.stored += 1,
            Ok(Warmed::Fresh) => report.fresh += 1,
            _ => report.failed += 1,
        }
        progress(done, total);
    }
    tracing::info!(
        total,
        stored = report.stored,
        fresh = report.fresh,
        failed = report.failed,
        "prebuild done"
    );
    report
}

fn key_of(engine: &Engine, path_and_query: &str) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    crate::key::normalize(path, query, &engine.config().cache.ignore_query)
}

/// The pages a sitemap (or sitemap index) on the origin lists, with their priorities, and
/// whether every sitemap could be read.
async fn sitemap_pages(engine: &Engine, path: &str) -> (Vec<(String, f32)>, bool) {
    let mut pages = Vec::new();
    let mut complete = true;
    let mut todo = vec![path.to_string()];
    let mut read = 0;
    while let Some(path) = todo.pop() {
        read += 1;
        let text = match fetch_text(engine, &path).await {
            Ok(t) => t,
            Err(why) => {
                tracing::warn!(sitemap = %path, reason = %why, "prebuild: sitemap skipped");
                complete = false;
                continue;
            }
        };
        match parse_sitemap(&text) {
            Ok(Sitemap::Index(locs)) => {
                for loc in locs {
                    match site_path(engine, &loc) {
                        Some(p) if read + todo.len() < INDEX_MAX => todo.push(p),
                        Some(_) => {}
                        None => {
                            tracing::warn!(sitemap = %path, url = %loc, "prebuild: sitemap of another host skipped")
                        }
                    }
                }
            }
            Ok(Sitemap::Urls(urls)) => {
                if urls.len() > SITEMAP_MAX {
                    tracing::warn!(sitemap = %path, urls = urls.len(), "prebuild: sitemap over 50,000 URLs; using the first 50,000");
                }
                let mut foreign = 0;
                for (loc, priority) in urls.into_iter().take(SITEMAP_MAX) {
                    match site_path(engine, &loc) {
                        Some(p) => pages.push((key_of(engine, &p), priority)),
                        None => foreign += 1,
                    }
                }
                if foreign > 0 {
                    tracing::warn!(sitemap = %path, urls = foreign, "prebuild: URLs of another host skipped");
                }
            }
            Err(why) => {
                tracing::warn!(sitemap = %path, reason = %why, "prebuild: sitemap skipped");
                complete = false;
            }
        }
    }
    (pages, complete)
}

async fn fetch_text(engine: &Engine, path: &str) -> Result<String, String> {
    match engine.source().fetch(path).await {
        Ok(Fetched::Complete(parts, body)) if parts.status.is_success() => {
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        Ok(Fetched::Complete(parts, _)) => Err(format!("origin answered {}", parts.status)),
        Ok(Fetched::TooLarge(..)) => Err("larger than max_body".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The path and query of `url` when it is on this site (the host of `public_url`, else
/// `origin_host`); `None` for another host.
fn site_path(engine: &Engine, url: &str) -> Option<String> {
    if url.starts_with('/') {
        return Some(url.to_string());
    }
    let uri: http::Uri = url.parse().ok()?;
    let cfg = engine.config();
    let site = match &cfg.public_url {
        Some(public) => public.authority()?.as_str().to_string(),
        None => cfg.origin_host.clone(),
    };
    let host = uri.authority()?.as_str();
    let same = host.eq_ignore_ascii_case(&site)
        || host.eq_ignore_ascii_case(site.split(':').next().unwrap_or(&site));
    same.then(|| {
        uri.path_and_query()
            .map_or("/".to_string(), |p| p.as_str().to_string())
    })
}

/// What a sitemap file holds.
#[derive(Debug, PartialEq)]
pub enum Sitemap {
    /// `<urlset>`: page URLs with their `<priority>` (default 0.5).
    Urls(Vec<(String, f32)>),
    /// `<sitemapindex>`: URLs of further sitemaps.
    Index(Vec<String>),
}

/// Reads a sitemap (or sitemap index) without a full XML parser: the protocol is flat.
pub fn parse_sitemap(xml: &str) -> Result<Sitemap, String> {
    let text = xml.trim_start_matches('\u{feff}').trim_start();
    if !text.starts_with('<') {
        return Err("not XML".into());
    }
    let blocks = |tag: &str| {
        let open = format!("<{tag}");
        let close = format!("</{tag}>");
        text.split(open.as_str())
            .skip(1)
            .filter_map(move |b| {
                // `<url>` or `<url attr…>`, not `<urlset`.
                let b = b.strip_prefix('>').or_else(|| b.strip_prefix(' '))?;
                Some(b.split(close.as_str()).next().unwrap_or(b).to_string())
            })
            .collect::<Vec<_>>()
    };
    if text.contains("<sitemapindex") {
        let locs = blocks("sitemap")
            .iter()
            .filter_map(|b| element(b, "loc"))
            .collect();
        return Ok(Sitemap::Index(locs));
    }
    if !text.contains("<urlset") {
        return Err("neither <urlset> nor <sitemapindex>".into());
    }
    Ok(Sitemap::Urls(
        blocks("url")
            .iter()
            .filter_map(|b| {
                let loc = element(b, "loc")?;
                let priority = element(b, "priority")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0.5);
                Some((loc, priority))
            })
            .collect(),
    ))
}

/// The unescaped text of the first `<name>…</name>` in `block`.
fn element(block: &str, name: &str) -> Option<String> {
    let start = block.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + block[start..].find(&format!("</{name}>"))?;
    let raw = block[start..end].trim();
    let raw = raw
        .strip_prefix("<![CDATA[")
        .and_then(|r| r.strip_suffix("]]>"))
        .unwrap_or(raw);
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlsets_and_indexes_parse() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc>https://example.com/a?x=1&amp;y=2</loc><priority>0.9</priority></url>
  <url>
    <loc> https://example.com/b </loc>
  </url>
  <url><priority>1.0</priority></url>
</urlset>"#;
        assert_eq!(
            parse_sitemap(xml),
            Ok(Sitemap::Urls(vec![
                ("https://example.com/a?x=1&y=2".into(), 0.9),
                ("https://example.com/b".into(), 0.5),
            ]))
        );
        let index = "<sitemapindex><sitemap><loc>https://example.com/s1.xml</loc></sitemap>\
                     <sitemap><loc><![CDATA[/s2.xml]]></loc></sitemap></sitemapindex>";
        assert_eq!(
            parse_sitemap(index),
            Ok(Sitemap::Index(vec![
                "https://example.com/s1.xml".into(),
                "/s2.xml".into()
            ]))
        );
        assert!(parse_sitemap("User-agent: *").is_err());
        assert!(parse_sitemap("<html><body>404</body></html>").is_err());
    }
}
