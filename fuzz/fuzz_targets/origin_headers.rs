//! Origin responses: any headers (Cache-Control, x-isr-revalidate, x-isr-tags, Cache-Tag,
//! Surrogate-Key, Set-Cookie, Vary…) become an entry or a reason not to store, never a
//! panic; a stored entry keeps its route's tags and none of the control headers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut res = http::Response::builder().status(200);
    for line in text.lines() {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            ) {
                res = res.header(n, v);
            }
        }
    }
    let Ok(res) = res.body(()) else { return };
    let (parts, ()) = res.into_parts();
    let cache = isr::config::CacheConfig::default();
    let rules = isr::route::Rules {
        revalidate: None,
        tags: vec!["route-tag".into()],
        cache: true,
    };
    if let Ok(e) = isr::origin::build_entry(&parts, bytes::Bytes::from_static(b"<p>hi</p>"), &rules, &cache, "/k", 1_000) {
        assert!(e.meta.tags.iter().all(|t| !t.trim().is_empty()), "{:?}", e.meta.tags);
        assert!(e.meta.tags.contains(&"route-tag".to_string()));
        // Control and caching headers are never stored (so never sent to visitors).
        for (name, _) in &e.meta.headers {
            let n = name.to_ascii_lowercase();
            assert!(
                !["x-isr-tags", "x-isr-revalidate", "cache-tag", "surrogate-key", "set-cookie", "cache-control"]
                    .contains(&n.as_str()),
                "{n} was stored"
            );
        }
    }
});
