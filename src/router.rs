//! The route table, built once per config and read per request without locks.
//!
//! Specificity (DESIGN.md): exact host > wildcard host > no host, then the longest path
//! prefix, then method and header constraints; ties go to the earlier route. Path
//! prefixes match whole segments: `/detect` matches `/detect` and `/detect/batch`, not
//! `/detection` (a prefix ending in `/` is the same as one without).
//!
//! Lookup: routes are grouped by host (a hash map for exact hosts, a list of wildcard
//! suffixes longest first, one group for no host); inside a group a hash map from prefix
//! to candidates. A request walks its own path's segment prefixes from the longest, so
//! the cost depends on the path's depth, not on the number of routes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use crate::config::{HostMatch, RouteConfig};

/// FNV-1a: the tables are built from the config alone, so the keys are known and few;
/// a request's path or host is only looked up, never inserted, and costs at most the
/// longest chain among the config's own keys. SipHash's defence against chosen
/// collisions buys nothing here and cost ~200 instructions per request (two lookups of
/// a short prefix). std has no fast hasher and this is ten lines, so no crate.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

type Table<V> = HashMap<Box<str>, V, BuildHasherDefault<Fnv>>;

#[derive(Debug)]
struct Candidate {
    index: usize,
    methods: Vec<Method>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Candidate {
    fn matches(&self, method: &Method, headers: &HeaderMap) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self
                .headers
                .iter()
                .all(|(n, v)| headers.get_all(n).iter().any(|hv| hv == v))
    }

    fn constraint_count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len()
    }
}

/// Routes of one host group, by normalised prefix.
#[derive(Debug, Default)]
struct Group {
    by_prefix: Table<Vec<Candidate>>,
}

impl Group {
    fn insert(&mut self, prefix: &str, c: Candidate) {
        let list = self.by_prefix.entry(prefix.into()).or_default();
        list.push(c);
        // More constraints first; the sort is stable, so file order breaks ties.
        list.sort_by_key(|c| std::cmp::Reverse(c.constraint_count()));
    }

    fn find(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<usize> {
        if self.by_prefix.is_empty() {
            return None;
        }
        let mut end = path.len();
        loop {
            let candidate = if end == 0 { "/" } else { &path[..end] };
            if let Some(list) = self.by_prefix.get(candidate) {
                if let Some(c) = list.iter().find(|c| c.matches(method, headers)) {
                    return Some(c.index);
                }
            }
            if end == 0 {
                return None;
            }
            // Next shorter prefix: cut at the previous '/'.
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }
}

/// The compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    exact: Table<Group>,
    /// (suffix such as `.example.com`, group), longest suffix first.
    wildcard: Vec<(Box<str>, Group)>,
    any_host: Group,
}

/// `/detect/` and `/detect` are the same prefix; `/` stays `/`.
fn normalise_prefix(p: &str) -> &str {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/"
    } else {
        t
    }
}

impl Router {
    pub fn build(routes: &[RouteConfig]) -> Router {
        let mut r = Router::default();
        for (index, route) in routes.iter().enumerate() {
            let c = Candidate {
                index,
                methods: route.methods.clone(),
                headers: route.headers.clone(),
            };
            let prefix = normalise_prefix(&route.path_prefix);
            match &route.host {
                None => r.any_host.insert(prefix, c),
                Some(HostMatch::Exact(h)) => r
                    .exact
                    .entry(h.to_ascii_lowercase().into())
                    .or_default()
                    .insert(prefix, c),
                Some(HostMatch::Suffix(s)) => {
                    let s = s.to_ascii_lowercase();
                    match r.wildcard.iter_mut().find(|(k, _)| **k == *s) {
                        Some((_, g)) => g.insert(prefix, c),
                        None => {
                            let mut g = Group::default();
                            g.insert(prefix, c);
                            r.wildcard.push((s.into(), g));
                        }
                    }
                }
            }
        }
        r.wildcard.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        r
    }

    /// The index (into the config's routes) of the route for this request.
    pub fn find(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<usize> {
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        // Strip one trailing '/' so `/detect/` tries `/detect` first.
        let path = if path.len() > 1 {
            path.trim_end_matches('/')
        } else {
            path
        };
        let path = if path.is_empty() { "/" } else { path };
        if let Some(host) = request_host(uri, headers) {
            let mut buf = [0u8; 256];
            if let Some(host) = lowercase(host, &mut buf) {
                if let Some(g) = self.exact.get(host) {
                    if let Some(i) = g.find(path, method, headers) {
                        return Some(i);
                    }
                }
                for (suffix, g) in &self.wildcard {
                    if host.len() > suffix.len() && host.ends_with(&**suffix) {
                        if let Some(i) = g.find(path, method, headers) {
                            return Some(i);
                        }
                    }
                }
            }
        }
        self.any_host.find(path, method, headers)
    }
}

/// A path whose `..` segments climb above the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AboveRoot;

/// The path with its dot segments resolved (RFC 3986 5.2.4), `None` when it has none
/// (the common case: one scan, no allocation). `.` and `..` count in their
/// percent-encoded forms too (`%2e`), so `/detect/%2e%2e/admin` cannot reach a route
/// the caller was not routed to. `Err` when `..` would climb above the root.
pub fn resolve_dot_segments(path: &str) -> Result<Option<String>, AboveRoot> {
    fn dot_kind(seg: &str) -> u8 {
        let s = seg.as_bytes();
        let is_dot = |i: usize| -> Option<usize> {
            if s.get(i) == Some(&b'.') {
                Some(i + 1)
            } else if s.len() >= i + 3
                && s[i] == b'%'
                && s[i + 1] == b'2'
                && (s[i + 2] | 0x20) == b'e'
            {
                Some(i + 3)
            } else {
                None
            }
        };
        match is_dot(0) {
            Some(n) if n == s.len() => 1,
            Some(n) => match is_dot(n) {
                Some(m) if m == s.len() => 2,
                _ => 0,
            },
            None => 0,
        }
    }
    // Most paths hold neither '.' nor '%': one byte scan, no segment split.
    if !path.bytes().any(|b| b == b'.' || b == b'%') || !path.split('/').any(|s| dot_kind(s) != 0) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segs.iter().enumerate() {
        match dot_kind(seg) {
            1 => trailing = i == last,
            2 => {
                if out.pop().is_none() {
                    return Err(AboveRoot);
                }
                trailing = i == last;
            }
            _ => {
                out.push(seg);
                trailing = false;
            }
        }
    }
    let mut p = String::with_capacity(path.len());
    for seg in &out {
        p.push('/');
        p.push_str(seg);
    }
    if trailing || p.is_empty() {
        p.push('/');
    }
    Ok(Some(p))
}

/// The request's host without port: the URI authority (HTTP/2, absolute form) or `Host`.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => {
            let h = headers.get(http::header::HOST)?.to_str().ok()?;
            if let Some(rest) = h.strip_prefix('[') {
                return rest.split(']').next();
            }
            h.rsplit_once(':').map_or(h, |(host, port)| {
                if port.bytes().all(|b| b.is_ascii_digit()) {
                    host
                } else {
                    h
                }
            })
        }
    };
    Some(raw)
}

fn lowercase<'b>(s: &'b str, buf: &'b mut [u8; 256]) -> Option<&'b str> {
    if !s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(s);
    }
    let n = s.len();
    if n > buf.len() {
        return None;
    }
    buf[..n].copy_from_slice(s.as_bytes());
    buf[..n].make_ascii_lowercase();
    std::str::from_utf8(&buf[..n]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    pub(crate) fn route(name: &str, host: Option<HostMatch>, prefix: &str) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host,
            path_prefix: prefix.into(),
            methods: vec![],
            headers: vec![],
            upstream: "u".into(),
            timeout: Duration::from_secs(30),
            strip_prefix: None,
            rate_limit: None,
            concurrency: None,
            fault: None,
            retry: None,
            circuit_breaker: None,
            propagate_deadline: false,
            shed_on_deadline: true,
        }
    }

    fn find(
        r: &Router,
        method: Method,
        uri: &str,
        host: Option<&str>,
        hdrs: &[(&str, &str)],
    ) -> Option<usize> {
        let mut h = HeaderMap::new();
        if let Some(host) = host {
            h.insert("host", host.parse().unwrap());
        }
        for (k, v) in hdrs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        r.find(&method, &uri.parse().unwrap(), &h)
    }

    #[test]
    fn longest_prefix_wins_by_segment() {
        let routes = vec![
            route("root", None, "/"),
            route("d", None, "/detect"),
            route("db", None, "/detect/batch/"),
        ];
        let r = Router::build(&routes);
        assert_eq!(find(&r, Method::GET, "/detect", None, &[]), Some(1));
        assert_eq!(find(&r, Method::GET, "/detect/", None, &[]), Some(1));
        assert_eq!(find(&r, Method::GET, "/detect/x?q=1", None, &[]), Some(1));
        assert_eq!(find(&r, Method::GET, "/detect/batch/7", None, &[]), Some(2));
        assert_eq!(find(&r, Method::GET, "/detection", None, &[]), Some(0));
        assert_eq!(find(&r, Method::GET, "/", None, &[]), Some(0));
    }

    #[test]
    fn host_rank_beats_prefix_length() {
        let routes = vec![
            route("none", None, "/detect"),
            route("wild", Some(HostMatch::Suffix(".local".into())), "/"),
            route("exact", Some(HostMatch::Exact("yolo.local".into())), "/"),
        ];
        let r = Router::build(&routes);
        assert_eq!(
            find(&r, Method::GET, "/detect", Some("YOLO.local:8080"), &[]),
            Some(2)
        );
        assert_eq!(
            find(&r, Method::GET, "/detect", Some("ocr.local"), &[]),
            Some(1)
        );
        assert_eq!(
            find(&r, Method::GET, "/detect", Some("other"), &[]),
            Some(0)
        );
        assert_eq!(find(&r, Method::GET, "/x", Some("other"), &[]), None);
        // "local" itself is not under "*.local"
        assert_eq!(find(&r, Method::GET, "/x", Some("local"), &[]), None);
    }

    #[test]
    fn constraints_then_file_order() {
        let mut post = route("post", None, "/detect");
        post.methods = vec![Method::POST];
        let mut org = route("org", None, "/detect");
        org.headers = vec![(
            HeaderName::from_static("x-org-id"),
            HeaderValue::from_static("org123"),
        )];
        let plain = route("plain", None, "/detect");
        let plain2 = route("plain2", None, "/detect");
        let r = Router::build(&[plain, post, org, plain2]);
        assert_eq!(find(&r, Method::POST, "/detect", None, &[]), Some(1));
        assert_eq!(
            find(&r, Method::GET, "/detect", None, &[("x-org-id", "org123")]),
            Some(2)
        );
        assert_eq!(find(&r, Method::GET, "/detect", None, &[]), Some(0));
    }

    #[test]
    fn method_mismatch_falls_back_to_shorter_prefix() {
        let mut post = route("post", None, "/detect");
        post.methods = vec![Method::POST];
        let r = Router::build(&[route("root", None, "/"), post]);
        assert_eq!(find(&r, Method::GET, "/detect", None, &[]), Some(0));
    }

    #[test]
    fn dot_segments_are_resolved_before_routing() {
        let r = |p: &str| resolve_dot_segments(p);
        assert_eq!(r("/detect/v1"), Ok(None));
        assert_eq!(r("/a.b/..c/.d/"), Ok(None));
        assert_eq!(
            r("/detect/../admin/secret"),
            Ok(Some("/admin/secret".into()))
        );
        assert_eq!(r("/detect/%2e%2e/admin"), Ok(Some("/admin".into())));
        assert_eq!(r("/detect/.%2E/admin"), Ok(Some("/admin".into())));
        assert_eq!(r("/a/./b/."), Ok(Some("/a/b/".into())));
        assert_eq!(r("/a/b/.."), Ok(Some("/a/".into())));
        assert_eq!(r("/a/%2e/b"), Ok(Some("/a/b".into())));
        assert_eq!(r("/.."), Err(AboveRoot));
        assert_eq!(r("/a/../../b"), Err(AboveRoot));
        assert_eq!(r("/a/.."), Ok(Some("/".into())));
    }
}
