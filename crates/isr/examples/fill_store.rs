//! Fills an embedded store with synthetic pages, for start-up and scale measurements.
//!
//! `cargo run --release -p isr --example fill_store -- DIR COUNT [BYTES]`
//! writes `/page/0` … `/page/COUNT-1` (BYTES of HTML each, default 1024), tagged
//! `pages` and `page-group-<i % 100>`, generated now with a 24 hour window (long enough that a scale run never sees them stale).

use std::sync::Arc;

use bytes::Bytes;
use isr::entry::{Entry, Meta};
use isr::store::{RedbStore, Store};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(count)) = (
        args.get(1),
        args.get(2).and_then(|c| c.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: fill_store DIR COUNT [BYTES]");
        std::process::exit(2);
    };
    let bytes = args
        .get(3)
        .and_then(|b| b.parse::<usize>().ok())
        .unwrap_or(1024);
    let store = Arc::new(RedbStore::open(std::path::Path::new(dir)).expect("open store"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let started = std::time::Instant::now();
    let body = Bytes::from(format!(
        "<html><body>{}</body></html>",
        "x".repeat(bytes.saturating_sub(26))
    ));
    let mut pending = Vec::new();
    for i in 0..count {
        let meta = Meta {
            status: 200,
            headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
            generated: now,
            revalidate: Some(86_400_000),
            expire: 365 * 86_400_000,
            tags: vec!["pages".into(), format!("page-group-{}", i % 100)],
            hash: isr::entry::hash(&body),
            br: false,
            gzip: false,
            bytes: 0,
        };
        let entry = Arc::new(Entry::new(meta, body.clone(), None, None));
        let s = store.clone();
        pending.push(tokio::spawn(async move {
            s.put(&format!("/page/{i}"), entry).await
        }));
        if pending.len() >= 4096 {
            for p in pending.drain(..) {
                p.await.unwrap().expect("put");
            }
        }
    }
    for p in pending {
        p.await.unwrap().expect("put");
    }
    println!(
        "wrote {count} pages of {bytes} bytes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
