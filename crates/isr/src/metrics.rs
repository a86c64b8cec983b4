//! Counters for Prometheus, rendered in its text format at `/_isr/metrics`.
//!
//! Hand-written rather than the `metrics` crates: a dozen fixed series need only atomics,
//! a hit costs one relaxed increment, and the build stays small.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Labels of `isr_requests_total{state}`, in [`Metrics::request`] index order.
pub const STATES: [&str; 5] = ["HIT", "STALE", "MISS", "REVALIDATED", "BYPASS"];

/// Why an origin fetch for the cache failed (`isr_origin_errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    /// Refused, reset, unreachable.
    Connect = 0,
    /// No complete answer within `origin_timeout`.
    Timeout = 1,
    /// Not valid HTTP, or a body cut short.
    Invalid = 2,
    /// A 5xx status.
    Status5xx = 3,
    /// Larger than `max_body`.
    TooLarge = 4,
}

const ORIGIN_ERRORS: [&str; 5] = ["connect", "timeout", "invalid", "status_5xx", "too_large"];

/// What a revalidation named (`isr_revalidations_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevalidationKind {
    /// One page.
    Path = 0,
    /// A subtree.
    Layout = 1,
    /// A tag.
    Tag = 2,
}

const REVALIDATION_KINDS: [&str; 3] = ["path", "layout", "tag"];

/// Upper bounds (seconds) of the origin fetch histogram's buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Gauges read from elsewhere when the metrics are rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    /// Pages in the store.
    pub entries: u64,
    /// Bytes the store takes.
    pub store_bytes: u64,
    /// Bytes held by the memory tier.
    pub memory_tier_bytes: u64,
    /// Pages not regenerated for longer than their window plus `overdue_after`.
    pub pages_overdue: u64,
}

/// Every counter isr keeps. Shared by the engine and the front.
#[derive(Default)]
pub struct Metrics {
    requests: [AtomicU64; 5],
    fetch_buckets: [AtomicU64; 12],
    fetch_count: AtomicU64,
    fetch_micros: AtomicU64,
    origin_errors: [AtomicU64; 5],
    regenerations_ok: AtomicU64,
    regenerations_failed: AtomicU64,
    in_flight: AtomicI64,
    revalidations: [AtomicU64; 3],
    store_errors: [AtomicU64; 2],
}

/// A store operation that failed (`isr_store_errors_total{op}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    /// Reading a page.
    Read = 0,
    /// Storing a page or a revalidation mark.
    Write = 1,
}

const STORE_OPS: [&str; 2] = ["read", "write"];

impl Metrics {
    /// Counts one answered request in state `STATES[state]`.
    pub fn request(&self, state: usize) {
        self.requests[state].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered in each state since start, in [`STATES`] order.
    pub fn requests(&self) -> [u64; 5] {
        self.requests.each_ref().map(|c| c.load(Ordering::Relaxed))
    }

    /// Records the duration of one origin fetch for the cache.
    pub fn origin_fetch(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.fetch_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.fetch_count.fetch_add(1, Ordering::Relaxed);
        self.fetch_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts one failed origin fetch.
    pub fn origin_error(&self, kind: OriginError) {
        self.origin_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one regeneration of a stored page, successful or not.
    pub fn regeneration(&self, ok: bool) {
        let c = if ok {
            &self.regenerations_ok
        } else {
            &self.regenerations_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A fetch for the cache started (`+1`) or ended (`-1`).
    pub fn in_flight(&self, delta: i64) {
        self.in_flight.fetch_add(delta, Ordering::Relaxed);
    }

    /// Fetches for the cache running now.
    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one revalidated target.
    pub fn revalidation(&self, kind: RevalidationKind) {
        self.revalidations[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed store operation.
    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        family(
            &mut out,
            "isr_requests_total",
            "counter",
            "Requests answered, by cache state.",
        );
        for (label, c) in STATES.iter().zip(&self.requests) {
            let _ = writeln!(out, "isr_requests_total{{state=\"{label}\"}} {}", load(c));
        }
        family(
            &mut out,
            "isr_origin_fetch_seconds",
            "histogram",
            "Duration of origin fetches made for the cache (misses and regenerations).",
        );
        let mut cumulative = 0;
        for (bound, c) in BUCKETS.iter().zip(&self.fetch_buckets) {
            cumulative += load(c);
            let _ = writeln!(
                out,
                "isr_origin_fetch_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = load(&self.fetch_count);
        let _ = writeln!(
            out,
            "isr_origin_fetch_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "isr_origin_fetch_seconds_sum {}",
            load(&self.fetch_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "isr_origin_fetch_seconds_count {count}");
        family(
            &mut out,
            "isr_origin_errors_total",
            "counter",
            "Failed origin fetches for the cache, by kind.",
        );
        for (label, c) in ORIGIN_ERRORS.iter().zip(&self.origin_errors) {
            let _ = writeln!(
                out,
                "isr_origin_errors_total{{kind=\"{label}\"}} {}",
                load(c)
            );
        }
        family(
            &mut out,
            "isr_regenerations_total",
            "counter",
            "Regenerations of stored pages, by result.",
        );
        let _ = writeln!(
            out,
            "isr_regenerations_total{{result=\"ok\"}} {}",
            load(&self.regenerations_ok)
        );
        let _ = writeln!(
            out,
            "isr_regenerations_total{{result=\"failed\"}} {}",
            load(&self.regenerations_failed)
        );
        family(
            &mut out,
            "isr_regenerations_in_flight",
            "gauge",
            "Origin fetches for the cache running now (misses and regenerations).",
        );
        let _ = writeln!(
            out,
            "isr_regenerations_in_flight {}",
            self.in_flight_now().max(0)
        );
        family(
            &mut out,
            "isr_revalidations_total",
            "counter",
            "On-demand revalidation targets, by kind.",
        );
        for (label, c) in REVALIDATION_KINDS.iter().zip(&self.revalidations) {
            let _ = writeln!(
                out,
                "isr_revalidations_total{{kind=\"{label}\"}} {}",
                load(c)
            );
        }
        family(
            &mut out,
            "isr_store_errors_total",
            "counter",
            "Store reads and writes that failed (a full or unwritable disk, Redis errors).",
        );
        for (label, c) in STORE_OPS.iter().zip(&self.store_errors) {
            let _ = writeln!(out, "isr_store_errors_total{{op=\"{label}\"}} {}", load(c));
        }
        for (name, help, v) in [
            ("isr_entries", "Pages in the store.", g.entries),
            ("isr_store_bytes", "Bytes the store takes (file size, or Redis memory).", g.store_bytes),
            ("isr_memory_tier_bytes", "Bytes held by the memory tier.", g.memory_tier_bytes),
            ("isr_pages_overdue", "Pages not regenerated for longer than their revalidate window plus [monitor] overdue_after (as of the last scan).", g.pages_overdue),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of one series in a rendering.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_and_histogram_render_in_prometheus_text_format() {
        let m = Metrics::default();
        m.request(0);
        m.request(0);
        m.request(2);
        m.origin_fetch(Duration::from_millis(30));
        m.origin_fetch(Duration::from_secs(60));
        m.origin_error(OriginError::Timeout);
        m.regeneration(true);
        m.revalidation(RevalidationKind::Tag);
        let text = m.render(&Gauges {
            entries: 7,
            ..Default::default()
        });
        assert_eq!(value(&text, "isr_requests_total{state=\"HIT\"}"), 2.0);
        assert_eq!(value(&text, "isr_requests_total{state=\"MISS\"}"), 1.0);
        assert_eq!(
            value(&text, "isr_origin_fetch_seconds_bucket{le=\"0.025\"}"),
            0.0
        );
        assert_eq!(
            value(&text, "isr_origin_fetch_seconds_bucket{le=\"0.05\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "isr_origin_fetch_seconds_bucket{le=\"30\"}"),
            1.0
        );
        assert_eq!(
            value(&text, "isr_origin_fetch_seconds_bucket{le=\"+Inf\"}"),
            2.0
        );
        assert_eq!(value(&text, "isr_origin_fetch_seconds_count"), 2.0);
        assert_eq!(
            value(&text, "isr_origin_errors_total{kind=\"timeout\"}"),
            1.0
        );
        assert_eq!(value(&text, "isr_regenerations_total{result=\"ok\"}"), 1.0);
        assert_eq!(value(&text, "isr_revalidations_total{kind=\"tag\"}"), 1.0);
        assert_eq!(value(&text, "isr_entries"), 7.0);
        assert!(text.contains("# TYPE isr_origin_fetch_seconds histogram"));
    }
}
