//! Cache keys: normalising is idempotent, a key always starts with `/`, and no `.` or
//! `..` segment survives (nothing can climb out of the site).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|target: &str| {
    let ignore = ["utm_*".to_string(), "fbclid".to_string()];
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let key = isr::key::normalize(path, query, &ignore);
    assert!(key.starts_with('/'), "{key:?}");
    let (kp, kq) = match key.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (key.as_str(), None),
    };
    assert!(
        !kp.split('/').any(|s| s == "." || s == ".."),
        "{target:?} -> {key:?}"
    );
    assert_eq!(isr::key::normalize(kp, kq, &ignore), key, "{target:?}");
});
