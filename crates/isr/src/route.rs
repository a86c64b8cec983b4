//! Routes: which rules apply to a path (matchit syntax and precedence, as axum).

use crate::config::{RouteConfig, Window};

/// What a route says about the pages it matches.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    /// The route's revalidate window, when it sets one.
    pub revalidate: Option<Window>,
    /// Tags filled from the route's templates.
    pub tags: Vec<String>,
    /// `false`: pass through to the origin, never store.
    pub cache: bool,
}

/// The compiled route table.
pub struct Routes {
    router: matchit::Router<usize>,
    routes: Vec<RouteConfig>,
    /// Whether any route is `cache = false` (when none is, no request needs a match to
    /// know it is not bypassed).
    any_bypass: bool,
}

impl Routes {
    /// Compiles routes that `config::parse` already validated.
    pub fn new(routes: &[RouteConfig]) -> Self {
        let mut router = matchit::Router::new();
        for (i, r) in routes.iter().enumerate() {
            // Validated when the config was parsed.
            let _ = router.insert(r.pattern.clone(), i);
        }
        Routes {
            router,
            routes: routes.to_vec(),
            any_bypass: routes.iter().any(|r| !r.cache),
        }
    }

    /// The rules for `path`; a path no route matches gets the defaults.
    pub fn rules(&self, path: &str) -> Rules {
        match self.router.at(path) {
            Ok(m) => {
                let r = &self.routes[*m.value];
                let tags = r
                    .tags
                    .iter()
                    .map(|t| fill(t, |name| m.params.get(name)))
                    .filter(|t| !t.is_empty())
                    .collect();
                Rules {
                    revalidate: r.revalidate,
                    tags,
                    cache: r.cache,
                }
            }
            Err(_) => Rules {
                cache: true,
                ..Rules::default()
            },
        }
    }

    /// True when the route of `path` is `dynamic = false` (only known paths exist).
    pub fn is_static(&self, path: &str) -> bool {
        self.router
            .at(path)
            .is_ok_and(|m| !self.routes[*m.value].dynamic)
    }

    /// True when some route is `dynamic = false`.
    pub fn any_static(&self) -> bool {
        self.routes.iter().any(|r| !r.dynamic)
    }

    /// True when the route of `path` has `refresh = "always"`.
    pub fn refreshes_always(&self, path: &str) -> bool {
        self.router
            .at(path)
            .is_ok_and(|m| self.routes[*m.value].refresh_always)
    }

    /// True when some route has `refresh = "always"`.
    pub fn any_refresh_always(&self) -> bool {
        self.routes.iter().any(|r| r.refresh_always)
    }

    /// True when the route of `path` has `refresh = "ahead"`.
    pub fn refreshes_ahead(&self, path: &str) -> bool {
        self.router
            .at(path)
            .is_ok_and(|m| self.routes[*m.value].refresh_ahead)
    }

    /// True when the route of `path` is `cache = false`.
    pub fn bypasses(&self, path: &str) -> bool {
        self.any_bypass
            && self
                .router
                .at(path)
                .is_ok_and(|m| !self.routes[*m.value].cache)
    }
}

/// Replaces each `{name}` in `template` with `value(name)` (empty when missing).
fn fill<'a>(template: &str, value: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                let name = &rest[open + 1..open + close];
                out.push_str(value(name.trim_start_matches('*')).unwrap_or(""));
                rest = &rest[open + close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Parameter names a matchit pattern defines (`{slug}`, `{*rest}` → `slug`, `rest`).
pub(crate) fn param_names(pattern: &str) -> Vec<&str> {
    template_params(pattern)
}

/// Parameter names a template uses.
pub(crate) fn template_params(template: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        names.push(rest[open + 1..open + close].trim_start_matches('*'));
        rest = &rest[open + close + 1..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(pattern: &str, tags: &[&str], cache: bool) -> RouteConfig {
        RouteConfig {
            pattern: pattern.into(),
            revalidate: Some(Some(60_000)),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            dynamic: true,
            cache,
            refresh_ahead: false,
            refresh_always: false,
        }
    }

    #[test]
    fn templates_are_filled_and_precedence_is_matchit() {
        let routes = Routes::new(&[
            route("/blog/{slug}", &["posts", "post-{slug}"], true),
            route("/blog/about", &["about"], true),
            route("/api/{*rest}", &["api-{rest}"], false),
        ]);
        assert_eq!(routes.rules("/blog/hello").tags, ["posts", "post-hello"]);
        assert_eq!(routes.rules("/blog/about").tags, ["about"]);
        assert!(routes.bypasses("/api/x/y"));
        assert!(!routes.bypasses("/blog/hello") && !routes.bypasses("/other"));
        assert_eq!(routes.rules("/api/x/y").tags, ["api-x/y"]);
        let none = routes.rules("/other");
        assert!(none.cache && none.tags.is_empty() && none.revalidate.is_none());
    }
}
