//! Routes for the proxies' metrics, as an annotation writes them (`config.meshwork.io/routes`):
//! on a Service, its clients' proxies label their requests to it by route (Linkerd's
//! HTTPRoute with a Service parent); on a pod or its namespace, the pod's own proxy labels
//! the requests it receives (an HTTPRoute with a Server parent). Routes name requests for
//! the metrics only: they neither allow nor refuse anything.
//!
//! Syntax: entries separated by `;` or newlines, each `[METHOD ]PATH`. A path segment is a
//! literal, `{name}` (any one segment), or a last `*` (any rest, none included). Paths are
//! compared as the request sends them (not percent-decoded), and empty segments are ignored on
//! both sides (`/books/` and `//books` are `/books`). A literal has only the characters RFC 3986
//! allows in a path segment, less `,` (so a label value needs no escaping, and readers that
//! split labels on commas still work); a method only capitals. The first entry that matches
//! names the request; the name is the entry as written, spaces collapsed (`GET
//! /books/{id}`). A request no entry matches has no route (an empty label).

use std::sync::Arc;

/// On a Service (outbound) or a pod or namespace (inbound): the routes, as above.
pub const ROUTES: &str = "config.meshwork.io/routes";

/// At most this many routes per annotation: each is a label value in every proxy that sees it.
pub const MAX_ROUTES: usize = 100;
const MAX_ENTRY: usize = 256;

/// RFC 3986 `pchar` (unreserved, percent, sub-delims, `:` `@`), less `,` and the `*` and
/// `{}` that have meanings here.
fn path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'+'
                | b'='
                | b':'
                | b'@'
        )
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Rest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The metrics label value: the entry as written.
    pub name: Arc<str>,
    method: Option<String>,
    segments: Vec<Segment>,
}

/// The routes of one annotation, in order, and the annotation as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    routes: Vec<Route>,
    source: String,
}

impl Routes {
    /// Reads an annotation's value; the error names the entry and what is wrong with it.
    pub fn parse(s: &str) -> Result<Routes, String> {
        let mut out = Vec::new();
        for entry in s
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            if entry.len() > MAX_ENTRY {
                let start: String = entry.chars().take(32).collect();
                return Err(format!("a route of over {MAX_ENTRY} bytes: {start:?}…"));
            }
            let words: Vec<&str> = entry.split_whitespace().collect();
            let (method, path) = match words[..] {
                [path] => (None, path),
                [method, path] => {
                    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
                        return Err(format!(
                            "{entry:?}: {method:?} is not an HTTP method in capitals (GET, POST, …)"
                        ));
                    }
                    (Some(method.to_string()), path)
                }
                _ => return Err(format!("{entry:?} is not [METHOD ]PATH")),
            };
            let Some(rest) = path.strip_prefix('/') else {
                return Err(format!("{entry:?}: the path must start with /"));
            };
            if path.contains(['?', '#']) {
                return Err(format!(
                    "{entry:?}: a route matches the path only, no query"
                ));
            }
            let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
            let mut segments = Vec::with_capacity(parts.len());
            for (i, part) in parts.iter().enumerate() {
                segments.push(match *part {
                    "*" if i + 1 == parts.len() => Segment::Rest,
                    "*" => return Err(format!("{entry:?}: * may only end a path")),
                    p if p.len() > 2
                        && p.starts_with('{')
                        && p.ends_with('}')
                        && p[1..p.len() - 1]
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
                    {
                        Segment::Any
                    }
                    p if p.bytes().all(path_char) => Segment::Literal(p.to_string()),
                    p => {
                        return Err(format!(
                            "{entry:?}: {p:?} is neither a literal (RFC 3986 path characters but \
                             ','), {{name}} nor a last *"
                        ))
                    }
                });
            }
            let name = match &method {
                Some(m) => format!("{m} {path}"),
                None => path.to_string(),
            };
            out.push(Route {
                name: name.into(),
                method,
                segments,
            });
            if out.len() > MAX_ROUTES {
                return Err(format!("more than {MAX_ROUTES} routes"));
            }
        }
        Ok(Routes {
            routes: out,
            source: s.to_string(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The annotation they were read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The name of the first route `method` and `path` (the request target's path, a query
    /// ignored) match.
    pub fn find(&self, method: &str, path: &str) -> Option<&Arc<str>> {
        let path = path.split(['?', '#']).next().unwrap_or_default();
        self.routes
            .iter()
            .find(|r| r.method.as_deref().is_none_or(|m| m == method) && r.matches(path))
            .map(|r| &r.name)
    }
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        for s in &self.segments {
            match s {
                Segment::Rest => return true,
                Segment::Any => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn the_first_matching_route_names_the_request() {
        let r = Routes::parse(
            "GET /books/{id}; POST  /books\n/books/{id}/reviews ; /static/* ;/healthz",
        )
        .unwrap();
        let find = |m: &str, p: &str| r.find(m, p).map(|n| n.to_string());
        assert_eq!(find("GET", "/books/42").as_deref(), Some("GET /books/{id}"));
        assert_eq!(
            find("GET", "/books/42?x=1").as_deref(),
            Some("GET /books/{id}")
        );
        assert_eq!(find("DELETE", "/books/42"), None);
        assert_eq!(find("POST", "/books").as_deref(), Some("POST /books"));
        assert_eq!(find("POST", "/books/").as_deref(), Some("POST /books"));
        assert_eq!(find("GET", "/books"), None);
        assert_eq!(
            find("PUT", "/books/1/reviews").as_deref(),
            Some("/books/{id}/reviews")
        );
        assert_eq!(find("GET", "/books/1/reviews/2"), None);
        assert_eq!(find("GET", "/static").as_deref(), Some("/static/*"));
        assert_eq!(find("GET", "/static/a/b.css").as_deref(), Some("/static/*"));
        assert_eq!(find("GET", "/healthz").as_deref(), Some("/healthz"));
        assert_eq!(find("GET", "/"), None);
        let r = Routes::parse("/caf%C3%A9/{x_1}").unwrap();
        assert!(r.find("GET", "/caf%C3%A9/a").is_some());
        assert!(Routes::parse("").unwrap().is_empty());
        assert!(Routes::parse(" ; \n").unwrap().is_empty());
    }

    #[test]
    fn bad_routes_say_what_is_wrong() {
        for (bad, why) in [
            ("books", "must start with /"),
            ("get /books", "not an HTTP method"),
            ("GET /a b", "not [METHOD ]PATH"),
            ("/a/*/b", "* may only end"),
            ("/a/x{id}", "neither a literal"),
            ("/a?x=1", "no query"),
            ("/a\"b", "neither a literal"),
            ("/a\\b", "neither a literal"),
            ("/a,b", "neither a literal"),
            ("/café", "neither a literal"),
            ("GET /{a b}", "not [METHOD ]PATH"),
            ("/{a.b}", "neither a literal"),
        ] {
            let e = Routes::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let many = (0..=MAX_ROUTES)
            .map(|i| format!("/r{i}"))
            .collect::<Vec<_>>();
        assert!(Routes::parse(&many.join(";"))
            .unwrap_err()
            .contains("more than"));
        assert!(Routes::parse(&format!("/{}", "a".repeat(300))).is_err());
        assert!(Routes::parse(&format!("/{}", "é".repeat(200))).is_err());
    }
}
