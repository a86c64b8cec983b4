//! A stored page: metadata (everything freshness checks need) apart from its bodies
//! (identity, and Brotli and gzip variants made once when it was generated).

use std::io::Write;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::page_file::{self, PageFile};
use crate::policy::Timing;

/// A body encoding isr stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// As the origin sent it.
    Identity,
    /// Brotli.
    Br,
    /// gzip.
    Gzip,
}

impl Encoding {
    /// All encodings, in storage order.
    pub const ALL: [Encoding; 3] = [Encoding::Identity, Encoding::Br, Encoding::Gzip];

    /// The store's code for this encoding.
    pub fn code(self) -> u8 {
        self as u8
    }

    fn etag_suffix(self) -> &'static str {
        match self {
            Encoding::Identity => "",
            Encoding::Br => "-br",
            Encoding::Gzip => "-gz",
        }
    }

    /// The `Content-Encoding` value, if any.
    pub fn header(self) -> Option<HeaderValue> {
        match self {
            Encoding::Identity => None,
            Encoding::Br => Some(HeaderValue::from_static("br")),
            Encoding::Gzip => Some(HeaderValue::from_static("gzip")),
        }
    }
}

/// Everything about a page except its bodies. Stored apart from them, so freshness
/// checks and the admin never read a body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// Origin status.
    pub status: u16,
    /// Origin headers kept for visitors (control, hop-by-hop and caching headers removed).
    pub headers: Vec<(String, String)>,
    /// When the fetch that produced it started (unix ms).
    pub generated: u64,
    /// Revalidate window in ms; `None` = only on demand.
    pub revalidate: Option<u64>,
    /// Age in ms past which it is not served stale.
    pub expire: u64,
    /// Tags, for on-demand revalidation.
    pub tags: Vec<String>,
    /// Hash of the identity body (hex), the base of every ETag.
    pub hash: String,
    /// Which compressed variants exist.
    pub br: bool,
    /// See `br`.
    pub gzip: bool,
    /// Bytes of all body variants together (set by [`Entry::new`]).
    #[serde(default)]
    pub bytes: u64,
}

impl Meta {
    /// The timing facts the policy needs.
    pub fn timing(&self) -> Timing {
        Timing {
            generated: self.generated,
            revalidate: self.revalidate,
            expire: self.expire,
        }
    }

    /// Encodes for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("meta serializes")
    }

    /// Decodes from the store.
    pub fn from_bytes(b: &[u8]) -> Result<Meta, serde_json::Error> {
        serde_json::from_slice(b)
    }

    /// Encodes compactly, for the embedded store's rows: no field names and no escaping,
    /// so a disk-tier hit decodes it in a fraction of JSON's time. Starts with
    /// [`BINARY_META`], which no JSON text starts with. (Redis keeps JSON, which nodes of
    /// other versions read.)
    pub(crate) fn to_binary(&self) -> Vec<u8> {
        let strings = self.headers.iter().map(|(n, v)| n.len() + v.len());
        let size = 64
            + self.hash.len()
            + strings.sum::<usize>()
            + self.tags.iter().map(String::len).sum::<usize>();
        let mut b = Vec::with_capacity(size + 8 * (self.headers.len() + self.tags.len()));
        b.push(BINARY_META);
        b.extend_from_slice(&self.status.to_le_bytes());
        for n in [
            self.generated,
            self.revalidate.unwrap_or(0),
            self.expire,
            self.bytes,
        ] {
            b.extend_from_slice(&n.to_le_bytes());
        }
        let flags =
            u8::from(self.revalidate.is_some()) | u8::from(self.br) << 1 | u8::from(self.gzip) << 2;
        b.push(flags);
        put_str(&mut b, &self.hash);
        put_count(&mut b, self.headers.len());
        for (n, v) in &self.headers {
            put_str(&mut b, n);
            put_str(&mut b, v);
        }
        put_count(&mut b, self.tags.len());
        for t in &self.tags {
            put_str(&mut b, t);
        }
        b
    }

    /// Decodes what [`Meta::to_binary`] encoded; `None` when `b` is not that.
    pub(crate) fn from_binary(b: &[u8]) -> Option<Meta> {
        let mut r = Reader(b);
        if r.take(1)? != [BINARY_META] {
            return None;
        }
        let status = u16::from_le_bytes(r.take(2)?.try_into().ok()?);
        let (generated, revalidate, expire, bytes) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let flags = r.take(1)?[0];
        let hash = r.string()?;
        let headers = (0..r.u32()?)
            .map(|_| Some((r.string()?, r.string()?)))
            .collect::<Option<Vec<_>>>()?;
        let tags = (0..r.u32()?)
            .map(|_| r.string())
            .collect::<Option<Vec<_>>>()?;
        r.0.is_empty().then_some(Meta {
            status,
            headers,
            generated,
            revalidate: (flags & 1 != 0).then_some(revalidate),
            expire,
            tags,
            hash,
            br: flags & 2 != 0,
            gzip: flags & 4 != 0,
            bytes,
        })
    }
}

/// The first byte of [`Meta::to_binary`]'s encoding.
const BINARY_META: u8 = 0xB1;

fn put_count(b: &mut Vec<u8>, n: usize) {
    b.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_count(b, s.len());
    b.extend_from_slice(s.as_bytes());
}

/// Reads [`Meta::to_binary`]'s encoding front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        Some(std::str::from_utf8(self.take(n)?).ok()?.to_owned())
    }
}

/// One body variant: on the heap, or in a file the hit lane sends with `sendfile`: a
/// sealed memory file (large bodies in the memory tier) or the store's own segment file
/// (large bodies read from the store to be sent once, not kept).
#[derive(Debug, Clone)]
pub enum Body {
    /// In memory.
    Memory(Bytes),
    /// In a page file or a segment ([`crate::page_file`]).
    File(Arc<PageFile>),
}

impl Body {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Body::Memory(b) => b.len(),
            Body::File(f) => f.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The body as bytes (a copy when it is in a page file).
    pub fn bytes(&self) -> Bytes {
        match self {
            Body::Memory(b) => b.clone(),
            Body::File(f) => f.read(),
        }
    }

    /// True for a body on the heap large enough for a page file.
    fn wants_file(&self) -> bool {
        matches!(self, Body::Memory(b) if b.len() >= page_file::MIN_BYTES)
    }

    /// This body in a page file, when it is large enough and a file can be made.
    fn in_file(&self) -> Option<Body> {
        match self {
            Body::Memory(b) if self.wants_file() => PageFile::holding(b).map(Body::File),
            _ => None,
        }
    }
}

/// A page ready to serve: metadata, bodies and pre-built header values.
#[derive(Debug)]
pub struct Entry {
    /// Metadata.
    pub meta: Meta,
    identity: Body,
    br: Option<Body>,
    gzip: Option<Body>,
    /// `meta.headers`, parsed once.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Each encoding's ETag, made the first time it is asked for: a page read from the
    /// store to be sent once needs one of the three.
    etags: [OnceLock<HeaderValue>; 3],
    /// The fixed part of each encoding's HTTP/1 response head, rendered by the hit lane on
    /// the first answer in that encoding and copied as it is into every later one.
    wire_heads: [OnceLock<Box<[u8]>>; 3],
}

impl Entry {
    /// Assembles an entry from metadata and bodies (from a fetch or from the store).
    pub fn new(meta: Meta, identity: Bytes, br: Option<Bytes>, gzip: Option<Bytes>) -> Entry {
        Entry::with_bodies(
            meta,
            Body::Memory(identity),
            br.map(Body::Memory),
            gzip.map(Body::Memory),
        )
    }

    /// Like [`Entry::new`], with bodies that may be in files.
    pub(crate) fn with_bodies(
        mut meta: Meta,
        identity: Body,
        br: Option<Body>,
        gzip: Option<Body>,
    ) -> Entry {
        meta.bytes = [Some(&identity), br.as_ref(), gzip.as_ref()]
            .into_iter()
            .flatten()
            .map(|b| b.len() as u64)
            .sum();
        let mut headers = Vec::with_capacity(meta.headers.len());
        headers.extend(meta.headers.iter().filter_map(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            ))
        }));
        Entry {
            meta,
            identity,
            br,
            gzip,
            headers,
            etags: Default::default(),
            wire_heads: Default::default(),
        }
    }

    /// This entry's bodies, shared and not copied, under `meta` (its variant flags set
    /// from them): a regeneration that found the page byte-identical keeps the page files
    /// the bodies are already in.
    pub(crate) fn same_bodies_with(&self, mut meta: Meta) -> Entry {
        meta.br = self.br.is_some();
        meta.gzip = self.gzip.is_some();
        Entry::with_bodies(
            meta,
            self.identity.clone(),
            self.br.clone(),
            self.gzip.clone(),
        )
    }

    /// The body as the origin sent it.
    pub fn identity(&self) -> Bytes {
        self.identity.bytes()
    }

    /// The Brotli variant.
    pub fn br(&self) -> Option<Bytes> {
        self.br.as_ref().map(Body::bytes)
    }

    /// The gzip variant.
    pub fn gzip(&self) -> Option<Bytes> {
        self.gzip.as_ref().map(Body::bytes)
    }

    /// True when a body is large enough for a page file, is still on the heap, and a file
    /// can be had (cheap: no file is made).
    pub fn wants_page_files(&self) -> bool {
        (self.identity.wants_file()
            || self.br.as_ref().is_some_and(Body::wants_file)
            || self.gzip.as_ref().is_some_and(Body::wants_file))
            && page_file::available()
    }

    /// The same entry with its large bodies moved to page files, for the memory tier;
    /// `None` when no body is large enough (or no file could be made).
    pub fn in_page_files(&self) -> Option<Entry> {
        let identity = self.identity.in_file();
        let br = self.br.as_ref().and_then(Body::in_file);
        let gzip = self.gzip.as_ref().and_then(Body::in_file);
        if identity.is_none() && br.is_none() && gzip.is_none() {
            return None;
        }
        Some(Entry {
            meta: self.meta.clone(),
            identity: identity.unwrap_or_else(|| self.identity.clone()),
            br: br.or_else(|| self.br.clone()),
            gzip: gzip.or_else(|| self.gzip.clone()),
            headers: self.headers.clone(),
            etags: self.etags.clone(),
            wire_heads: self.wire_heads.clone(),
        })
    }

    /// This entry with every body on the heap, read from its file where it is in one: a
    /// page read from the store to be sent, then kept in the memory tier after all.
    pub(crate) fn on_heap(self) -> Entry {
        let heap = |b: Body| match b {
            Body::File(f) => Body::Memory(f.read()),
            memory => memory,
        };
        Entry {
            identity: heap(self.identity),
            br: self.br.map(heap),
            gzip: self.gzip.map(heap),
            ..self
        }
    }

    /// The body and encoding to send for an `Accept-Encoding` header.
    pub fn body_for(&self, accept: Option<&HeaderValue>) -> (Encoding, &Body) {
        self.body_for_bytes(accept.map(HeaderValue::as_bytes))
    }

    /// [`Entry::body_for`] with the header's raw bytes.
    pub fn body_for_bytes(&self, accept: Option<&[u8]>) -> (Encoding, &Body) {
        let accepted = |name| accept.is_some_and(|a| accepts(a, name));
        match (&self.br, &self.gzip) {
            (Some(b), _) if accepted("br") => (Encoding::Br, b),
            (_, Some(g)) if accepted("gzip") => (Encoding::Gzip, g),
            _ => (Encoding::Identity, &self.identity),
        }
    }

    /// The ETag of one encoding: the body's hash in quotes, with a suffix per encoding.
    pub fn etag(&self, e: Encoding) -> &HeaderValue {
        self.etags[e as usize].get_or_init(|| etag_value(&self.meta.hash, e.etag_suffix()))
    }

    /// The fixed part of the response head in encoding `e`, made by `render` the first
    /// time it is asked for.
    pub(crate) fn wire_head(&self, e: Encoding, render: impl FnOnce() -> Vec<u8>) -> &[u8] {
        self.wire_heads[e as usize].get_or_init(|| render().into_boxed_slice())
    }

    /// True when compressed variants exist (so the response varies by `Accept-Encoding`).
    pub fn varies(&self) -> bool {
        self.br.is_some() || self.gzip.is_some()
    }

    /// Bytes this entry holds in memory (for the hot tier's budget). The constant covers
    /// the struct, parsed headers, ETags and the tier's own bookkeeping: measured at about
    /// 1.5 KiB per entry with a million 16 KiB pages (BENCHMARKS.md). The response heads
    /// the hit lane renders on the first hits are counted ahead, once per encoding.
    pub fn weight(&self) -> u64 {
        let bodies = self.identity.len()
            + self.br.as_ref().map_or(0, Body::len)
            + self.gzip.as_ref().map_or(0, Body::len);
        let header_bytes: usize = self
            .meta
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        let headers = header_bytes + 64 * self.meta.headers.len();
        let encodings = 1 + usize::from(self.br.is_some()) + usize::from(self.gzip.is_some());
        let wire_heads = encodings * (header_bytes + 4 * self.meta.headers.len() + 160);
        let tags: usize = self.meta.tags.iter().map(|t| t.len() + 24).sum();
        (bodies + headers + wire_heads + tags + 1536) as u64
    }
}

/// `"HASH SUFFIX"` as a header value, built without `format!` (a page read from the store
/// to be sent once makes one per request). The hash is hex when isr wrote it; one that a
/// damaged row made unfit for a header (quotes, control bytes) is sent hex-encoded rather
/// than failing the request.
fn etag_value(hash: &str, suffix: &str) -> HeaderValue {
    let fits = |b: &u8| *b == b'!' || (b'#'..=b'~').contains(b);
    let mut v = Vec::with_capacity(2 * hash.len() + suffix.len() + 2);
    v.push(b'"');
    if hash.as_bytes().iter().all(fits) {
        v.extend_from_slice(hash.as_bytes());
    } else {
        for b in hash.bytes() {
            v.extend_from_slice(format!("{b:02x}").as_bytes());
        }
    }
    v.extend_from_slice(suffix.as_bytes());
    v.push(b'"');
    HeaderValue::from_maybe_shared(Bytes::from(v)).expect("quoted etagc bytes are a header value")
}

/// True when an `Accept-Encoding` value accepts `name` (a `q=0` refuses it).
fn accepts(header: &[u8], name: &str) -> bool {
    let Ok(text) = std::str::from_utf8(header) else {
        return false;
    };
    text.split(',').any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        if !coding.eq_ignore_ascii_case(name) && coding != "*" {
            return false;
        }
        !parts.any(|p| {
            let p = p.trim();
            p.strip_prefix("q=")
                .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0))
        })
    })
}

/// True for content types worth compressing: HTML, CSS, JS, JSON, XML, SVG, text.
pub fn is_compressible(content_type: &str) -> bool {
    let ct = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.ends_with("+json")
        || ct.ends_with("+xml")
        || matches!(
            ct.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "image/svg+xml"
                | "application/manifest+json"
        )
}

/// Brotli and gzip variants of `body`, each kept only when smaller than the original.
/// CPU-bound: call from a blocking thread.
pub fn compress(body: &[u8]) -> (Option<Bytes>, Option<Bytes>) {
    if body.len() < 128 {
        return (None, None);
    }
    let mut br = Vec::with_capacity(body.len() / 3);
    {
        // A window just large enough for the body, from 256 KiB to brotli's 4 MiB: the
        // same output for pages up to 256 KiB, with smaller encoder tables to allocate and
        // clear per page. (Below 2^18 this brotli switches to a much slower matcher at
        // quality 5: 10-15x slower, measured, so 18 is the floor.) BENCHMARKS.md has the
        // before and after.
        let lgwin = (usize::BITS - (body.len() - 1).leading_zeros()).clamp(18, 22) as i32;
        let params = brotli::enc::BrotliEncoderParams {
            quality: 5,
            lgwin,
            size_hint: body.len(),
            ..Default::default()
        };
        let _ = brotli::BrotliCompress(&mut GivingWay(body), &mut br, &params);
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 3),
        flate2::Compression::new(5),
    );
    let written = body.chunks(GIVE_WAY_EVERY).try_for_each(|chunk| {
        crate::background::let_others_run();
        gz.write_all(chunk)
    });
    let gz = written.and_then(|_| gz.finish()).ok();
    let keep = |v: Vec<u8>| (v.len() < body.len()).then(|| Bytes::from(v));
    (keep(br), gz.and_then(keep))
}

/// How much input the compressors take between two chances for the hit loops to get the
/// CPU back from a background thread ([`crate::background::let_others_run`]): well under a
/// millisecond of work.
const GIVE_WAY_EVERY: usize = 4096;

/// A body read by brotli (4 KiB at a time), giving way to the hit loops before each read.
struct GivingWay<'a>(&'a [u8]);

impl std::io::Read for GivingWay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::background::let_others_run();
        let n = buf.len().min(self.0.len()).min(GIVE_WAY_EVERY);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

/// A strong validator for a body: 128 bits of SipHash (two keyed passes) plus the length,
/// in hex. It is stored with the entry, so it never changes for a stored body.
pub fn hash(body: &[u8]) -> String {
    use std::hash::Hasher;
    let pass = |seed: u64| {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(seed);
        h.write(body);
        h.finish()
    };
    format!(
        "{:016x}{:016x}{:x}",
        pass(0x6973_722d_6574_6167),
        pass(0x7361_6c74_2d32_2d32),
        body.len()
    )
}

/// True when an `If-None-Match` value matches `etag` (weak comparison, as RFC 9110 says).
pub fn if_none_match(header: &HeaderValue, etag: &HeaderValue) -> bool {
    if_none_match_bytes(header.as_bytes(), etag)
}

/// [`if_none_match`] with the header's raw bytes (a value that is not visible ASCII
/// matches nothing, as `HeaderValue::to_str` refuses it).
pub fn if_none_match_bytes(header: &[u8], etag: &HeaderValue) -> bool {
    let visible = |b: &u8| *b == b'\t' || (0x20..0x7f).contains(b);
    if !header.iter().all(visible) {
        return false;
    }
    let Ok(text) = std::str::from_utf8(header) else {
        return false;
    };
    let want = etag.as_bytes();
    text.split(',').any(|t| {
        let t = t.trim();
        t == "*" || t.trim_start_matches("W/").as_bytes() == want
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(body: &str) -> Entry {
        let (br, gz) = compress(body.as_bytes());
        let meta = Meta {
            status: 200,
            headers: vec![("content-type".into(), "text/html".into())],
            generated: 0,
            revalidate: Some(1000),
            expire: 10_000,
            tags: vec![],
            hash: hash(body.as_bytes()),
            br: br.is_some(),
            gzip: gz.is_some(),
            bytes: 0,
        };
        Entry::new(meta, Bytes::from(body.to_string()), br, gz)
    }

    #[test]
    fn etags_quote_the_hash_and_survive_a_damaged_one() {
        let mut e = entry("<p>hello</p>");
        let hash = e.meta.hash.clone();
        assert_eq!(e.etag(Encoding::Identity), &format!("\"{hash}\""));
        assert_eq!(e.etag(Encoding::Br), &format!("\"{hash}-br\""));
        assert_eq!(e.etag(Encoding::Gzip), &format!("\"{hash}-gz\""));
        e.meta.hash = "a\"b\n".into();
        e.etags = Default::default();
        assert_eq!(e.etag(Encoding::Identity), "\"6122620a\"");
    }

    #[test]
    fn encoding_follows_accept_encoding() {
        let e = entry(&"<p>hello</p>".repeat(100));
        let h = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(e.body_for(Some(&h("gzip, deflate, br"))).0, Encoding::Br);
        assert_eq!(e.body_for(Some(&h("gzip"))).0, Encoding::Gzip);
        assert_eq!(e.body_for(Some(&h("br;q=0, gzip"))).0, Encoding::Gzip);
        assert_eq!(e.body_for(Some(&h("identity"))).0, Encoding::Identity);
        assert_eq!(e.body_for(None).0, Encoding::Identity);
        assert_ne!(e.etag(Encoding::Br), e.etag(Encoding::Identity));
    }

    #[test]
    fn variants_decompress_to_the_original() {
        use std::io::Read;
        let text = "<p>hello</p>".repeat(100);
        let e = entry(&text);
        let mut out = String::new();
        flate2::read::GzDecoder::new(&e.gzip().unwrap()[..])
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, text);
        let mut out = Vec::new();
        brotli::BrotliDecompress(&mut &e.br().unwrap()[..], &mut out).unwrap();
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn small_bodies_are_not_compressed() {
        assert!(!entry("tiny").varies());
    }

    #[test]
    fn etag_matching() {
        let e = entry("x");
        let tag = e.etag(Encoding::Identity).clone();
        let w = HeaderValue::from_str(&format!("W/{}", tag.to_str().unwrap())).unwrap();
        assert!(if_none_match(&tag, &tag));
        assert!(if_none_match(&w, &tag));
        assert!(if_none_match(&HeaderValue::from_static("*"), &tag));
        assert!(!if_none_match(&HeaderValue::from_static("\"other\""), &tag));
    }

    proptest::proptest! {
        /// Any metadata survives the store's binary encoding, and no cut of an encoding
        /// decodes (a torn row reads as corrupt, never as other metadata).
        #[test]
        fn binary_metadata_round_trips_and_truncations_are_refused(
            status in 100u16..600,
            headers in proptest::collection::vec(("[a-z-]{1,12}", "\\PC{0,40}"), 0..4),
            times in (proptest::num::u64::ANY, proptest::option::of(proptest::num::u64::ANY), proptest::num::u64::ANY, proptest::num::u64::ANY),
            tags in proptest::collection::vec("\\PC{0,20}", 0..4),
            flags in (proptest::bool::ANY, proptest::bool::ANY),
        ) {
            let (generated, revalidate, expire, bytes) = times;
            let m = Meta {
                status, headers, generated, revalidate, expire, tags,
                hash: hash(b"x"), br: flags.0, gzip: flags.1, bytes,
            };
            let b = m.to_binary();
            proptest::prop_assert_eq!(Meta::from_binary(&b), Some(m.clone()));
            for cut in 0..b.len() {
                proptest::prop_assert_eq!(Meta::from_binary(&b[..cut]), None);
            }
            proptest::prop_assert_eq!(Meta::from_binary(&m.to_bytes()), None, "JSON is not taken for it");
        }
    }

    #[test]
    fn compressible_types() {
        assert!(is_compressible("text/html; charset=utf-8"));
        assert!(is_compressible("application/json"));
        assert!(is_compressible("image/svg+xml"));
        assert!(!is_compressible("image/png"));
    }
}
