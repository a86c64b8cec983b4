//! The rules of ISR as pure functions: no I/O, no clocks, no async.
//!
//! Everything here takes `now` (unix milliseconds) as an argument, so the rules can be
//! read in one place and tested exhaustively.

use crate::config::Window;

/// How fresh a stored entry is at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Serve it (`HIT`).
    Fresh,
    /// Serve it and regenerate in the background (`STALE`).
    Stale,
    /// Do not serve it unless the origin fails: the request waits (`MISS`).
    Expired,
}

/// On-demand revalidations that may affect an entry: the latest time it was asked to be
/// served stale, and the latest time it was asked to expire (unix ms, 0 = never).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Entries generated at or before this are stale.
    pub stale_at: u64,
    /// Entries generated at or before this are expired.
    pub expire_at: u64,
}

impl Mark {
    /// The union of two marks: an entry is invalidated if either invalidates it.
    pub fn merge(self, other: Mark) -> Mark {
        Mark {
            stale_at: self.stale_at.max(other.stale_at),
            expire_at: self.expire_at.max(other.expire_at),
        }
    }

    /// A revalidation at `now`: `expire` also makes entries stale.
    pub fn at(now: u64, expire: bool) -> Mark {
        Mark {
            stale_at: now,
            expire_at: if expire { now } else { 0 },
        }
    }
}

/// The timing facts of a stored entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the origin fetch that produced it started (unix ms).
    pub generated: u64,
    /// Revalidate window in ms (`None` = only on demand).
    pub revalidate: Window,
    /// Age in ms past which it is not served stale.
    pub expire: u64,
}

impl Timing {
    /// Age at `now` in ms (0 if the clock went backwards).
    pub fn age(&self, now: u64) -> u64 {
        now.saturating_sub(self.generated)
    }
}

/// Decides the state of an entry. `mark` is the merge of every on-demand revalidation
/// that concerns it (its tags, its path, the layouts above it).
///
/// ```
/// use isr::policy::{freshness, Freshness, Mark, Timing};
/// let page = Timing { generated: 1_000, revalidate: Some(60_000), expire: 3_600_000 };
/// assert_eq!(freshness(&page, Mark::default(), 30_000), Freshness::Fresh);
/// assert_eq!(freshness(&page, Mark::default(), 61_000), Freshness::Stale);
/// // Revalidated on demand (mode "expire") after it was generated: the next visitor waits.
/// assert_eq!(freshness(&page, Mark::at(2_000, true), 30_000), Freshness::Expired);
/// ```
pub fn freshness(t: &Timing, mark: Mark, now: u64) -> Freshness {
    let age = t.age(now);
    // A mark of 0 means "never revalidated".
    let marked = |at: u64| at != 0 && t.generated <= at;
    if age >= t.expire || marked(mark.expire_at) {
        Freshness::Expired
    } else if marked(mark.stale_at) || t.revalidate.is_some_and(|r| age >= r) {
        Freshness::Stale
    } else {
        Freshness::Fresh
    }
}

/// `Cache-Control` for a cached response, so a CDN in front keeps the same schedule:
/// `public, s-maxage=<s until stale>, stale-while-revalidate=<s from then until expire>`,
/// or `public, s-maxage=<s until expire>` for an entry without a revalidate window.
pub fn cache_control(t: &Timing, state: Freshness, now: u64) -> String {
    CacheControl::of(t, state, now).to_string()
}

/// The numbers of a cached page's `Cache-Control`, so the hit lane can write the header
/// straight into its buffer without building a `String` per hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    /// `s-maxage`, in seconds.
    pub s_maxage: u64,
    /// `stale-while-revalidate`, in seconds; absent for a fresh page with no revalidate
    /// window (`revalidate = false`).
    pub stale_while_revalidate: Option<u64>,
}

impl CacheControl {
    /// The header for an entry with timing `t`, in state `state`, at `now`.
    pub fn of(t: &Timing, state: Freshness, now: u64) -> CacheControl {
        let age = t.age(now);
        let until_expire = t.expire.saturating_sub(age);
        match t.revalidate {
            None if state == Freshness::Fresh => CacheControl {
                s_maxage: secs(until_expire),
                stale_while_revalidate: None,
            },
            _ => {
                let until_stale = match (state, t.revalidate) {
                    (Freshness::Fresh, Some(r)) => r.saturating_sub(age).min(until_expire),
                    _ => 0,
                };
                CacheControl {
                    s_maxage: secs(until_stale),
                    stale_while_revalidate: Some(secs(until_expire.saturating_sub(until_stale))),
                }
            }
        }
    }

    /// Appends the header's value to `out`.
    pub fn write(&self, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"public, s-maxage=");
        out.extend_from_slice(num.format(self.s_maxage).as_bytes());
        if let Some(swr) = self.stale_while_revalidate {
            out.extend_from_slice(b", stale-while-revalidate=");
            out.extend_from_slice(num.format(swr).as_bytes());
        }
    }
}

impl std::fmt::Display for CacheControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "public, s-maxage={}", self.s_maxage)?;
        if let Some(swr) = self.stale_while_revalidate {
            write!(f, ", stale-while-revalidate={swr}")?;
        }
        Ok(())
    }
}

/// Whole seconds, rounded down (an HTTP delta-seconds value).
pub fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// What the origin said about freshness, already parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginFreshness {
    /// `x-isr-revalidate`: seconds (as ms) or `false`.
    pub isr_revalidate: Option<Window>,
    /// `Cache-Control: s-maxage` in ms.
    pub s_maxage: Option<u64>,
    /// `Cache-Control: stale-while-revalidate` in ms.
    pub swr: Option<u64>,
}

/// Resolves an entry's revalidate window and expire age, in order of precedence: the
/// route's window; `x-isr-revalidate`; `s-maxage` (with expire = s-maxage + swr when
/// swr is given); the default.
pub fn resolve_timing(
    route: Option<Window>,
    origin: OriginFreshness,
    default_revalidate: Window,
    default_expire: u64,
) -> (Window, u64) {
    if let Some(w) = route {
        return (w, default_expire);
    }
    if let Some(w) = origin.isr_revalidate {
        return (w, default_expire);
    }
    if let Some(n) = origin.s_maxage {
        let expire = origin
            .swr
            .map_or(default_expire, |swr| n.saturating_add(swr));
        return (Some(n), expire);
    }
    (default_revalidate, default_expire)
}

/// Whether a fresh page is in the last 20 % of its window, where `refresh = "ahead"`
/// regenerates it early so that popular pages never go stale.
pub fn prefresh_due(t: &Timing, now: u64) -> bool {
    match t.revalidate {
        Some(window) => t.age(now).saturating_mul(5) >= window.saturating_mul(4),
        None => false,
    }
}

/// Whether a page is overdue: its last successful regeneration is older than its
/// revalidate window plus `overdue_after` (pages revalidated only on demand never are).
pub fn is_overdue(t: &Timing, now: u64, overdue_after: u64) -> bool {
    match t.revalidate {
        Some(window) => t.age(now) > window.saturating_add(overdue_after),
        None => false,
    }
}

/// How long the entry a same-bodies rewrite replaces must stay servable for the rewrite
/// to be committed later (see [`rewrite_may_wait`]): a restart within this margin of a
/// crash serves it without the origin.
pub const REWRITE_WAIT_MARGIN_MS: u64 = 3_600_000;

/// Whether a regeneration that changed no body may be committed to the store a moment
/// later, together with others, rather than on its own at once. Only while `old`, the
/// entry it replaces (with `mark`, every revalidation concerning it), would still be
/// served without the origin an hour from `now`: a crash before the commit then loses no
/// more than a timestamp, and after a restart `old` is a `HIT` or `STALE` (regenerated
/// again), never a `MISS`.
pub fn rewrite_may_wait(old: &Timing, mark: Mark, now: u64) -> bool {
    freshness(old, mark, now.saturating_add(REWRITE_WAIT_MARGIN_MS)) != Freshness::Expired
}

/// Statuses that are stored (as Next.js and shared caches do).
pub fn is_storable_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 307 | 308 | 404 | 410
    )
}

/// Why an origin response cannot be stored and shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uncacheable {
    /// It sets a cookie.
    SetCookie,
    /// `Cache-Control: private` or `no-store`.
    Private,
    /// `Vary: *` or `Vary: Cookie`.
    Vary,
    /// The body is over `max_body`.
    TooLarge,
}

/// The facts about an origin response that decide whether it may be shared.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFacts {
    /// It has a `Set-Cookie` header.
    pub set_cookie: bool,
    /// Its `Cache-Control` says `private` or `no-store`.
    pub private: bool,
    /// Its `Vary` names `*` or `Cookie`.
    pub vary_cookie: bool,
}

/// `Err` when a response must go only to the visitor who asked.
pub fn cacheability(f: &ResponseFacts) -> Result<(), Uncacheable> {
    if f.set_cookie {
        Err(Uncacheable::SetCookie)
    } else if f.private {
        Err(Uncacheable::Private)
    } else if f.vary_cookie {
        Err(Uncacheable::Vary)
    } else {
        Ok(())
    }
}

/// How long a key stays known as uncacheable (hit-for-miss): the route's window, at most
/// five minutes.
pub fn hit_for_miss_ms(revalidate: Window) -> u64 {
    const CAP: u64 = 5 * 60 * 1000;
    revalidate.map_or(CAP, |r| r.min(CAP))
}

/// Delay before the next regeneration after `failures` failures in a row: 3 s doubling,
/// capped at the revalidate window (five minutes without one).
pub fn backoff_ms(failures: u32, revalidate: Window) -> u64 {
    let cap = revalidate.unwrap_or(5 * 60 * 1000).max(1000);
    let exp = failures.saturating_sub(1).min(20);
    (3000u64 << exp).min(cap)
}

/// Whether an origin status counts as a regeneration failure (the old page stays).
pub fn is_regeneration_failure(status: u16) -> bool {
    !is_storable_status(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1000;

    #[test]
    fn early_refresh_is_due_in_the_last_fifth_of_the_window() {
        let t = timing(1_000, Some(10_000), 100_000);
        assert!(!prefresh_due(&t, 1_000));
        assert!(!prefresh_due(&t, 8_999));
        assert!(prefresh_due(&t, 9_000));
        assert!(prefresh_due(&t, 20_000));
        assert!(!prefresh_due(&timing(1_000, None, 100_000), 1_000_000));
    }

    #[test]
    fn an_unchanged_page_waits_for_its_commit_only_while_the_old_entry_stays_servable() {
        let h = REWRITE_WAIT_MARGIN_MS;
        let none = Mark::default();
        // A stale page a day from its expiry: a crash costs a regeneration, not a miss.
        assert!(rewrite_may_wait(
            &timing(0, Some(60 * S), 24 * h),
            none,
            120 * S
        ));
        // Expiring within the margin, or expired by an on-demand revalidation: at once.
        assert!(!rewrite_may_wait(
            &timing(0, Some(60 * S), h),
            none,
            120 * S
        ));
        assert!(!rewrite_may_wait(
            &timing(0, Some(60 * S), 24 * h),
            Mark::at(10 * S, true),
            120 * S
        ));
        // A mark that only makes it stale still lets it wait.
        assert!(rewrite_may_wait(
            &timing(0, Some(60 * S), 24 * h),
            Mark::at(10 * S, false),
            120 * S
        ));
    }

    #[test]
    fn overdue_after_the_window_plus_the_grace() {
        let t = timing(0, Some(60_000), u64::MAX);
        assert!(!is_overdue(&t, 60_000 + 1_000, 1_000));
        assert!(is_overdue(&t, 60_000 + 1_001, 1_000));
        assert!(!is_overdue(&timing(0, None, u64::MAX), u64::MAX / 2, 0));
    }

    fn timing(generated: u64, revalidate: Window, expire: u64) -> Timing {
        Timing {
            generated,
            revalidate,
            expire,
        }
    }

    #[test]
    fn states_follow_age() {
        let t = timing(1_000_000, Some(60 * S), 3600 * S);
        let none = Mark::default();
        assert_eq!(freshness(&t, none, 1_000_000), Freshness::Fresh);
        assert_eq!(freshness(&t, none, 1_000_000 + 59_999), Freshness::Fresh);
        assert_eq!(freshness(&t, none, 1_000_000 + 60 * S), Freshness::Stale);
        assert_eq!(
            freshness(&t, none, 1_000_000 + 3600 * S),
            Freshness::Expired
        );
    }

    #[test]
    fn on_demand_only_never_goes_stale_by_age() {
        let t = timing(0, None, 100 * S);
        assert_eq!(freshness(&t, Mark::default(), 99 * S), Freshness::Fresh);
        assert_eq!(freshness(&t, Mark::default(), 100 * S), Freshness::Expired);
    }

    #[test]
    fn marks_apply_to_entries_generated_before_them() {
        let t = timing(5000, Some(60 * S), 3600 * S);
        assert_eq!(freshness(&t, Mark::at(5000, false), 6000), Freshness::Stale);
        assert_eq!(freshness(&t, Mark::at(4999, false), 6000), Freshness::Fresh);
        assert_eq!(
            freshness(&t, Mark::at(6000, true), 6000),
            Freshness::Expired
        );
        // A later stale mark does not undo an earlier expire.
        let m = Mark::at(6000, true).merge(Mark::at(7000, false));
        assert_eq!(freshness(&t, m, 8000), Freshness::Expired);
    }

    #[test]
    fn cache_control_counts_down() {
        let t = timing(0, Some(60 * S), 3600 * S);
        assert_eq!(
            cache_control(&t, Freshness::Fresh, 10 * S),
            "public, s-maxage=50, stale-while-revalidate=3540"
        );
        assert_eq!(
            cache_control(&t, Freshness::Stale, 100 * S),
            "public, s-maxage=0, stale-while-revalidate=3500"
        );
        let never = timing(0, None, 3600 * S);
        assert_eq!(
            cache_control(&never, Freshness::Fresh, 600 * S),
            "public, s-maxage=3000"
        );
    }

    #[test]
    fn timing_precedence() {
        let origin = OriginFreshness {
            isr_revalidate: Some(Some(30 * S)),
            s_maxage: Some(10 * S),
            swr: Some(20 * S),
        };
        assert_eq!(
            resolve_timing(Some(Some(60 * S)), origin, Some(S), 99 * S),
            (Some(60 * S), 99 * S)
        );
        assert_eq!(
            resolve_timing(None, origin, Some(S), 99 * S),
            (Some(30 * S), 99 * S)
        );
        let cc = OriginFreshness {
            s_maxage: Some(10 * S),
            swr: Some(20 * S),
            ..Default::default()
        };
        assert_eq!(
            resolve_timing(None, cc, Some(S), 99 * S),
            (Some(10 * S), 30 * S)
        );
        let cc = OriginFreshness {
            s_maxage: Some(10 * S),
            ..Default::default()
        };
        assert_eq!(
            resolve_timing(None, cc, Some(S), 99 * S),
            (Some(10 * S), 99 * S)
        );
        assert_eq!(
            resolve_timing(None, OriginFreshness::default(), None, 99 * S),
            (None, 99 * S)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff_ms(1, Some(3600 * S)), 3 * S);
        assert_eq!(backoff_ms(2, Some(3600 * S)), 6 * S);
        assert_eq!(backoff_ms(3, Some(3600 * S)), 12 * S);
        assert_eq!(backoff_ms(10, Some(60 * S)), 60 * S);
        assert_eq!(backoff_ms(30, None), 300 * S);
    }

    #[test]
    fn storable_statuses() {
        for s in [200, 203, 204, 300, 301, 302, 307, 308, 404, 410] {
            assert!(is_storable_status(s));
        }
        for s in [201, 206, 304, 400, 401, 403, 429, 500, 502, 503] {
            assert!(!is_storable_status(s));
        }
    }

    proptest! {
        #[test]
        fn state_only_gets_worse_with_time(gen in 0u64..1_000_000, rev in proptest::option::of(0u64..100_000),
                                            exp in 0u64..1_000_000, stale in 0u64..2_000_000, expire_at in 0u64..2_000_000,
                                            now in 0u64..2_000_000, later in 0u64..1_000_000) {
            let t = timing(gen, rev, exp);
            let m = Mark { stale_at: stale, expire_at };
            let rank = |f| match f { Freshness::Fresh => 0, Freshness::Stale => 1, Freshness::Expired => 2 };
            prop_assert!(rank(freshness(&t, m, now)) <= rank(freshness(&t, m, now + later)));
        }

        #[test]
        fn a_mark_never_makes_an_entry_fresher(gen in 0u64..1000, now in 0u64..3000, a in 0u64..3000, b in 0u64..3000, e in any::<bool>()) {
            let t = timing(gen, Some(500), 2000);
            let rank = |f| match f { Freshness::Fresh => 0, Freshness::Stale => 1, Freshness::Expired => 2 };
            let base = Mark::at(a, false);
            prop_assert!(rank(freshness(&t, base, now)) <= rank(freshness(&t, base.merge(Mark::at(b, e)), now)));
        }

        #[test]
        fn cache_control_never_promises_past_expire(gen in 0u64..1000, rev in proptest::option::of(0u64..5000), exp in 0u64..10_000, now in 0u64..20_000) {
            let t = timing(gen, rev, exp);
            let state = freshness(&t, Mark::default(), now);
            let cc = cache_control(&t, state, now);
            let total: u64 = cc.split(", ").filter_map(|p| p.split_once('=')).map(|(_, v)| v.parse::<u64>().unwrap()).sum();
            prop_assert!(total * 1000 <= exp.saturating_sub(t.age(now)) + 1000);
        }

        #[test]
        fn the_lane_writes_the_same_cache_control_as_hypers_path(gen in 0u64..1000, rev in proptest::option::of(0u64..5000), exp in 0u64..10_000, now in 0u64..20_000) {
            let t = timing(gen, rev, exp);
            let state = freshness(&t, Mark::default(), now);
            let mut written = Vec::new();
            CacheControl::of(&t, state, now).write(&mut written);
            prop_assert_eq!(String::from_utf8(written).unwrap(), cache_control(&t, state, now));
        }
    }
}
