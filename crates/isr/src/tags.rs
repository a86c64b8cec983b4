//! The tag clock: when each tag, page path and layout prefix was last revalidated on
//! demand. An entry generated at or before such a mark is stale (or expired).
//! Revalidating a tag is one map write, whatever the number of pages carrying it.

use std::collections::HashMap;
use std::sync::RwLock;

use crate::key;
use crate::policy::Mark;

/// What a revalidation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every entry carrying this tag.
    Tag(&'a str),
    /// One page and all its query variants.
    Page(&'a str),
    /// A path and everything below it, segment-wise.
    Layout(&'a str),
}

impl Target<'_> {
    /// The name under which the mark is persisted.
    pub fn store_name(&self) -> String {
        match self {
            Target::Tag(t) => format!("t:{t}"),
            Target::Page(p) => format!("p:{p}"),
            Target::Layout(p) => format!("l:{}", layout_key(p)),
        }
    }

    /// Parses a persisted name back.
    pub fn from_store_name(name: &str) -> Option<Target<'_>> {
        let (kind, rest) = name.split_at_checked(2)?;
        match kind {
            "t:" => Some(Target::Tag(rest)),
            "p:" => Some(Target::Page(rest)),
            "l:" => Some(Target::Layout(rest)),
            _ => None,
        }
    }
}

/// `/blog/` and `/blog` name the same layout; the root is `/`.
fn layout_key(path: &str) -> &str {
    let t = path.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

#[derive(Default)]
struct Marks {
    tags: HashMap<Box<str>, Mark>,
    pages: HashMap<Box<str>, Mark>,
    layouts: HashMap<Box<str>, Mark>,
}

/// The in-memory tag clock (its durable copy lives in the store).
#[derive(Default)]
pub struct TagClock {
    marks: RwLock<Marks>,
}

impl TagClock {
    /// An empty clock.
    pub fn new() -> TagClock {
        TagClock::default()
    }

    /// Merges `mark` into the target's mark.
    pub fn apply(&self, target: Target<'_>, mark: Mark) {
        let mut m = self.marks.write().unwrap_or_else(|e| e.into_inner());
        let (map, name) = match target {
            Target::Tag(t) => (&mut m.tags, t),
            Target::Page(p) => (&mut m.pages, p),
            Target::Layout(p) => (&mut m.layouts, layout_key(p)),
        };
        let slot = map.entry(name.into()).or_default();
        *slot = slot.merge(mark);
    }

    /// The merged mark of everything that concerns an entry: its tags, its page path and
    /// every layout above it.
    pub fn mark_for(&self, path: &str, tags: &[String]) -> Mark {
        let m = self.marks.read().unwrap_or_else(|e| e.into_inner());
        let mut out = Mark::default();
        if !m.tags.is_empty() {
            for t in tags {
                if let Some(x) = m.tags.get(t.as_str()) {
                    out = out.merge(*x);
                }
            }
        }
        if let Some(x) = m.pages.get(path) {
            out = out.merge(*x);
        }
        if !m.layouts.is_empty() {
            for prefix in key::layout_prefixes(path) {
                if let Some(x) = m.layouts.get(prefix) {
                    out = out.merge(*x);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_reach_tags_pages_and_layouts() {
        let c = TagClock::new();
        c.apply(Target::Tag("posts"), Mark::at(10, false));
        c.apply(Target::Page("/a"), Mark::at(20, false));
        c.apply(Target::Layout("/blog/"), Mark::at(30, true));
        assert_eq!(c.mark_for("/x", &["posts".into()]).stale_at, 10);
        assert_eq!(c.mark_for("/a", &[]).stale_at, 20);
        assert_eq!(c.mark_for("/blog/a/b", &[]).expire_at, 30);
        assert_eq!(c.mark_for("/blog", &[]).expire_at, 30);
        assert_eq!(c.mark_for("/blogroll", &[]), Mark::default());
        c.apply(Target::Layout("/"), Mark::at(40, false));
        assert_eq!(c.mark_for("/anything", &[]).stale_at, 40);
    }

    #[test]
    fn store_names_round_trip() {
        for t in [Target::Tag("a:b"), Target::Page("/x"), Target::Layout("/y")] {
            let n = t.store_name();
            assert_eq!(Target::from_store_name(&n), Some(t));
        }
    }
}
