//! Cache keys: the normalised path plus the sorted, filtered query string.
//!
//! The key is also exactly what is requested from the origin, so the page stored under a
//! key is always the page the origin serves for it.

/// Whether a store key is a page's (data cache values are stored under `data:` and
/// `fetch:` keys, which never start with `/`).
pub fn is_page(key: &str) -> bool {
    key.starts_with('/')
}

/// Normalises a request target (`path?query`) into a cache key.
///
/// - unreserved characters that were percent-encoded are decoded, other escapes get
///   upper-case hex (`%2f` and `%2F` are one key);
/// - `.` and `..` segments are resolved (never above the root);
/// - query parameters are sorted by name (values of a repeated name keep their order),
///   empty ones and those matching `ignore` (`utm_*` = prefix) are dropped.
///
/// The trailing slash is kept: `/blog` and `/blog/` are two keys.
///
/// ```
/// let ignore = ["utm_*".to_string()];
/// let key = isr::key::normalize("/blog/../docs/%7Euser", Some("b=2&utm_source=x&a=1"), &ignore);
/// assert_eq!(key, "/docs/~user?a=1&b=2");
/// ```
pub fn normalize(path: &str, query: Option<&str>, ignore: &[String]) -> String {
    let mut key = String::new();
    normalize_into(&mut key, path, query, ignore);
    key
}

/// [`normalize`] into `key`, which is cleared first: a connection serving many requests
/// builds every key in one buffer instead of allocating one per request.
pub fn normalize_into(key: &mut String, path: &str, query: Option<&str>, ignore: &[String]) {
    key.clear();
    push_normalized_path(key, path);
    if let Some(q) = query {
        // Escapes are normalised before filtering and sorting, so `%31=x` and `1=x` sort
        // (and are ignored) alike and normalising a key again leaves it unchanged.
        let mut params: Vec<String> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let mut normalized = String::with_capacity(p.len());
                push_normalized_escapes(&mut normalized, p);
                normalized
            })
            .filter(|p| !is_ignored(param_name(p), ignore))
            .collect();
        if !params.is_empty() {
            params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
            key.push('?');
            key.push_str(&params.join("&"));
        }
    }
}

/// The path part of a key (everything before `?`).
pub fn path_of(key: &str) -> &str {
    split_target(key).0
}

/// A request target (or a key) split at its first `?` into path and query.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    // A plain byte scan: targets are short, and `split_once` sets up a searcher per call
    // (this runs several times per hit).
    match target.bytes().position(|b| b == b'?') {
        Some(i) => (&target[..i], Some(&target[i + 1..])),
        None => (target, None),
    }
}

fn param_name(p: &str) -> &str {
    p.split_once('=').map_or(p, |(n, _)| n)
}

fn is_ignored(name: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|pat| match pat.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pat,
    })
}

/// Decodes escaped unreserved characters and resolves dot segments.
pub fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1);
    push_normalized_path(&mut out, path);
    out
}

/// [`normalize_path`] appended to the empty `out`.
fn push_normalized_path(out: &mut String, path: &str) {
    if !path.starts_with('/') {
        out.push('/');
    }
    push_normalized_escapes(out, path);
    // A byte scan: `str::contains` sets up a substring searcher, which cost more than the
    // rest of a plain path's normalisation (this runs on every request).
    if out.as_bytes().windows(2).any(|w| w == b"/.") {
        let resolved = remove_dot_segments(out);
        out.clear();
        out.push_str(&resolved);
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `s`, decoding `%XX` of unreserved characters and upper-casing other escapes.
fn push_normalized_escapes(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        out.push_str(s);
        return;
    }
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    out.push('%');
                    out.push(bytes[i + 1].to_ascii_uppercase() as char);
                    out.push(bytes[i + 2].to_ascii_uppercase() as char);
                }
                i += 3;
                continue;
            }
        }
        if bytes[i] == b'%' {
            // A `%` that starts no escape is itself escaped, so that decoding never
            // creates a new escape (`%%30a` would otherwise become `%0a`).
            out.push_str("%25");
            i += 1;
            continue;
        }
        // `s` is valid UTF-8 and `%` is ASCII, so copying up to the next `%` is safe.
        let next = s[i..].find('%').map_or(s.len(), |n| i + n);
        out.push_str(&s[i..next]);
        i = next;
    }
}

/// RFC 3986 section 5.2.4, on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || result.is_empty() {
        result.push('/');
    }
    result
}

/// True when `path` is `prefix` or lies below it, segment-wise
/// (`/blog` covers `/blog`, `/blog/`, `/blog/a/b`, not `/blogroll`; `/` covers all).
pub fn is_under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The layout prefixes that cover `path`: `/`, then each leading run of segments.
/// `/blog/a/` yields `/`, `/blog`, `/blog/a`.
pub fn layout_prefixes(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.trim_end_matches('/');
    std::iter::once("/").chain(
        trimmed
            .match_indices('/')
            .skip(1)
            .map(move |(i, _)| &trimmed[..i])
            .chain((!trimmed.is_empty()).then_some(trimmed)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(target: &str) -> String {
        let (p, q) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        normalize(p, q, &["utm_*".into(), "fbclid".into()])
    }

    #[test]
    fn the_path_of_a_key_ends_at_its_first_question_mark() {
        assert_eq!(path_of("/a/b?x=1&y=2"), "/a/b");
        assert_eq!(path_of("/a/b"), "/a/b");
        assert_eq!(path_of("/a?"), "/a");
        assert_eq!(path_of("/caf%C3%A9/ü?q=?"), "/caf%C3%A9/ü");
        assert_eq!(split_target("/a?q=?"), ("/a", Some("q=?")));
        assert_eq!(split_target("/a?"), ("/a", Some("")));
        assert_eq!(split_target("/a"), ("/a", None));
    }

    #[test]
    fn query_is_sorted_and_filtered() {
        assert_eq!(key("/a?b=2&a=1"), "/a?a=1&b=2");
        assert_eq!(key("/a?utm_source=x&fbclid=y"), "/a");
        assert_eq!(key("/a?x=1&utm_medium=z&&"), "/a?x=1");
        assert_eq!(key("/a?t=2&s=1&t=1"), "/a?s=1&t=2&t=1");
        assert_eq!(key("/a?"), "/a");
        assert_eq!(key("/a?0&%31"), "/a?0&1");
        assert_eq!(key("/a?utm%5Fsource=x&b=1"), "/a?b=1");
    }

    #[test]
    fn path_escapes_and_dot_segments() {
        assert_eq!(key("/%62log/%7Euser"), "/blog/~user");
        assert_eq!(key("/a%2fb"), "/a%2Fb");
        assert_eq!(key("/a/../b"), "/b");
        assert_eq!(key("/a/./b/"), "/a/b/");
        assert_eq!(key("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(key("/a/%2e%2e/b"), "/b");
        assert_eq!(key("/a/.."), "/");
        assert_eq!(key("/a/b/."), "/a/b/");
        assert_eq!(key("/100%"), "/100%25");
        assert_eq!(key("/x%4"), "/x%254");
        assert_eq!(key("/%%30a"), "/%250a");
    }

    #[test]
    fn trailing_slash_is_significant() {
        assert_ne!(key("/blog"), key("/blog/"));
    }

    #[test]
    fn layout_coverage_is_segment_wise() {
        assert!(is_under("/blog", "/blog"));
        assert!(is_under("/blog/", "/blog"));
        assert!(is_under("/blog/a/b", "/blog/"));
        assert!(!is_under("/blogroll", "/blog"));
        assert!(is_under("/anything", "/"));
        let p: Vec<&str> = layout_prefixes("/blog/a/").collect();
        assert_eq!(p, ["/", "/blog", "/blog/a"]);
        let p: Vec<&str> = layout_prefixes("/").collect();
        assert_eq!(p, ["/"]);
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in "(/[a-zA-Z0-9%._~-]{0,6}){1,5}/?", q in "[a-z=&%0-9]{0,20}") {
            let once = normalize(&path, Some(&q), &[]);
            let (p2, q2) = split_target(&once);
            prop_assert_eq!(normalize(p2, q2, &[]), once.clone());
        }

        #[test]
        fn a_key_built_in_a_used_buffer_is_the_key_built_afresh(
            before in "(/[a-z.]{0,6}){1,4}\\?[a-z=&]{0,12}",
            path in "(/[a-zA-Z0-9%._~-]{0,6}){1,5}/?",
            q in proptest::option::of("[a-z=&%0-9]{0,20}"),
        ) {
            let mut buf = String::new();
            let (p, q0) = split_target(&before);
            normalize_into(&mut buf, p, q0, &[]);
            normalize_into(&mut buf, &path, q.as_deref(), &[]);
            prop_assert_eq!(buf, normalize(&path, q.as_deref(), &[]));
        }

        #[test]
        fn layout_prefixes_all_cover_the_path(path in "(/[a-z]{0,3}){1,5}/?") {
            for prefix in layout_prefixes(&path) {
                prop_assert!(is_under(&path, prefix), "{} not under {}", path, prefix);
            }
        }
    }
}
