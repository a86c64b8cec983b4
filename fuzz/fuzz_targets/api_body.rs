//! Revalidation API bodies: never a panic; whatever is accepted names something to
//! revalidate, with paths that start with `/` and carry no query string.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let secrets = isr::Secrets::parse("s3cret");
    let _ = isr::api::parse_request(&secrets, None, None, body);
    if let Ok(r) = isr::api::parse_body(body) {
        assert!(!(r.pages.is_empty() && r.layouts.is_empty() && r.tags.is_empty()));
        for p in r.pages.iter().chain(&r.layouts) {
            assert!(p.starts_with('/') && !p.contains('?'), "{p}");
        }
    }
});
