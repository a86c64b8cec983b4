//! Micro-benchmarks of the pieces of a cache hit, so a regression shows up without a
//! load test: `cargo bench -p isr --bench hit_path`.

use std::sync::Arc;

use bytes::Bytes;
use isr::entry::{Entry, Meta};
use isr::policy::{self, Mark, Timing};
use isr::store::{HotTier, RedbStore, Store};
use isr::tags::{TagClock, Target};

fn main() {
    divan::main();
}

fn entry(body_len: usize) -> Arc<Entry> {
    let body = Bytes::from(vec![b'x'; body_len]);
    let meta = Meta {
        status: 200,
        headers: vec![("content-type".into(), "text/html; charset=utf-8".into())],
        generated: 1_700_000_000_000,
        revalidate: Some(60_000),
        expire: 31_536_000_000,
        tags: vec!["posts".into(), "post-hello".into()],
        hash: isr::entry::hash(&body),
        br: false,
        gzip: false,
        bytes: 0,
    };
    Arc::new(Entry::new(meta, body, None, None))
}

#[divan::bench]
fn key_plain_path() -> String {
    isr::key::normalize(divan::black_box("/blog/hello-world"), None, &[])
}

#[divan::bench]
fn key_with_query() -> String {
    let ignore = ["utm_*".to_string(), "fbclid".to_string()];
    isr::key::normalize(
        divan::black_box("/search"),
        Some(divan::black_box("q=rust&utm_source=x&page=2")),
        &ignore,
    )
}

const PAGE: Timing = Timing {
    generated: 1_000_000,
    revalidate: Some(60_000),
    expire: 3_600_000,
};

/// `Cache-Control` of a fresh page as a `String` (hyper's path and emitted tag headers).
#[divan::bench]
fn cache_control_string() -> String {
    policy::cache_control(
        divan::black_box(&PAGE),
        policy::Freshness::Fresh,
        divan::black_box(1_030_000),
    )
}

/// The same header written into a reused buffer, as the hit lane does.
#[divan::bench]
fn cache_control_written(b: divan::Bencher) {
    let mut out = Vec::with_capacity(128);
    b.bench_local(|| {
        out.clear();
        policy::CacheControl::of(
            divan::black_box(&PAGE),
            policy::Freshness::Fresh,
            divan::black_box(1_030_000),
        )
        .write(&mut out);
        divan::black_box(&out);
    });
}

#[divan::bench]
fn policy_freshness() -> policy::Freshness {
    let t = Timing {
        generated: 1_000_000,
        revalidate: Some(60_000),
        expire: 3_600_000,
    };
    policy::freshness(
        divan::black_box(&t),
        Mark::default(),
        divan::black_box(1_030_000),
    )
}

#[divan::bench]
fn tag_clock_check_with_marks(b: divan::Bencher) {
    let clock = TagClock::new();
    for i in 0..10_000 {
        clock.apply(Target::Tag(&format!("tag-{i}")), Mark::at(i, false));
        clock.apply(Target::Layout(&format!("/section-{i}")), Mark::at(i, false));
    }
    let tags = vec!["posts".to_string(), "post-hello".to_string()];
    b.bench(|| clock.mark_for(divan::black_box("/blog/2024/hello"), &tags));
}

#[divan::bench]
fn hot_tier_lookup(b: divan::Bencher) {
    let hot = HotTier::new(256 << 20);
    for i in 0..10_000 {
        hot.insert(&format!("/page/{i}"), entry(16 * 1024));
    }
    b.bench(|| hot.get(divan::black_box("/page/5000")));
}

#[divan::bench]
fn store_lookup_16k(b: divan::Bencher) {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    rt.block_on(async {
        for i in 0..1000 {
            store
                .put(&format!("/page/{i}"), entry(16 * 1024))
                .await
                .unwrap();
        }
    });
    b.bench(|| {
        rt.block_on(store.get(divan::black_box("/page/500")))
            .unwrap()
    });
}

/// Text of `len` bytes that compresses like prose: words of the README in a
/// pseudo-random order.
fn prose(len: usize) -> Vec<u8> {
    let text = include_str!("../../../README.md");
    let words: Vec<&str> = text.split_whitespace().collect();
    let (mut out, mut x) = (Vec::with_capacity(len + 64), 12345u64);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(words[(x >> 33) as usize % words.len()].as_bytes());
        out.push(if x % 11 == 0 { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

/// The Brotli and gzip variants made once per regeneration (not on the hit path, but
/// they share its CPU).
#[divan::bench(args = [16 * 1024, 128 * 1024])]
fn compress_variants(b: divan::Bencher, len: usize) {
    let body = prose(len);
    b.bench(|| isr::entry::compress(divan::black_box(&body)));
}
