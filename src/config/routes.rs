//! Validation of `[[routes]]`: names, match fields, the upstream each route names, and
//! route-level policies (retry and circuit breaker read over the upstream's values).

use std::collections::{BTreeMap, HashMap};

use http::Method;

use super::ctx::Ctx;
use super::defaults::*;
use super::error::Path;
use super::file::RouteFile;
use super::types::*;
use super::units;
use super::{admission, policy};

/// Methods a route may name (upper-cased before the check).
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

pub fn routes(
    cx: &mut Ctx,
    files: &[RouteFile],
    upstreams: &BTreeMap<String, UpstreamConfig>,
    names: &[&str],
    p: &Path,
) -> Vec<RouteConfig> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        let rp = p.idx(i);
        let name_path = if f.name.is_some() {
            rp.key("name")
        } else {
            rp.clone()
        };
        let name = cx.nonempty(&rp.key("name"), f.name.as_ref(), &format!("route-{i}"));
        if let Some(first) = seen.get(&name) {
            cx.problem(
                &name_path,
                format!("duplicate route name {name:?} (also used by routes[{first}])"),
            );
        } else {
            seen.insert(name.clone(), i);
        }
        out.push(route(cx, f, name, upstreams, names, &rp));
    }
    out
}

fn route(
    cx: &mut Ctx,
    f: &RouteFile,
    name: String,
    upstreams: &BTreeMap<String, UpstreamConfig>,
    names: &[&str],
    p: &Path,
) -> RouteConfig {
    let has_methods = f.methods.as_ref().is_some_and(|m| !m.is_empty());
    let has_headers = f.headers.as_ref().is_some_and(|h| !h.0.is_empty());
    if f.host.is_none() && f.path_prefix.is_none() && !has_methods && !has_headers {
        cx.problem(
            p,
            "a route needs at least one match field: host, path_prefix, methods or headers",
        );
    }

    let host = f
        .host
        .as_ref()
        .and_then(|raw| host(cx, &p.key("host"), raw));
    let pp = p.key("path_prefix");
    let path_prefix = cx.nonempty(&pp, f.path_prefix.as_ref(), "/");
    if !path_prefix.starts_with('/') {
        cx.problem(&pp, format!("{path_prefix:?} must start with `/`"));
    } else if path_prefix.contains(['?', '#']) {
        // Matched against the path alone: it could never match.
        cx.problem(
            &pp,
            format!(
                "{path_prefix:?} is matched against the request path, which holds no `?` or `#`"
            ),
        );
    }
    let sp = p.key("strip_prefix");
    let strip_prefix = cx.opt_string(&sp, f.strip_prefix.as_ref());
    if let Some(s) = strip_prefix.as_ref().filter(|s| !s.starts_with('/')) {
        cx.problem(&sp, format!("{s:?} must start with `/`"));
    }

    let mp = p.key("methods");
    let methods = f.methods.iter().flatten().enumerate();
    let methods = methods
        .filter_map(|(i, m)| method(cx, &mp.idx(i), m))
        .collect();
    let hp = p.key("headers");
    let mut headers = Vec::new();
    for (key, value) in f.headers.iter().flat_map(|h| &h.0) {
        let name = cx.header_name(&hp.key(key), key);
        let value = cx.header_value(&hp.key(key), value);
        if let (Some(n), Some(v)) = (name, value) {
            if headers.iter().any(|(h, _): &(http::HeaderName, _)| *h == n) {
                // Header names are case-insensitive: `X-A` and `x-a` are one header,
                // which cannot hold both values, so the route could never match.
                cx.problem(
                    &hp.key(key),
                    format!("header {n} is listed twice (header names are case-insensitive)"),
                );
                continue;
            }
            headers.push((n, v));
        }
    }

    let up_path = p.key("upstream");
    let upstream = match &f.upstream {
        None => {
            cx.problem(
                p,
                "missing `upstream`: the name of an [upstreams.NAME] table",
            );
            String::new()
        }
        Some(raw) => match cx.string(&up_path, raw) {
            Some(name) => {
                if !upstreams.contains_key(&name) {
                    cx.problem(&up_path, policy::unknown_upstream(&name, names));
                }
                name
            }
            None => String::new(),
        },
    };
    let target = upstreams.get(&upstream);
    let base_retry = target.map(|u| u.retry.clone()).unwrap_or_default();
    let base_breaker = target
        .map(|u| u.circuit_breaker.clone())
        .unwrap_or_default();

    RouteConfig {
        name,
        host,
        path_prefix,
        methods,
        headers,
        upstream,
        timeout: cx.duration(
            &p.key("timeout"),
            f.timeout.as_ref(),
            DEFAULT_ROUTE_TIMEOUT,
            ROUTE_TIMEOUT_BOUNDS,
        ),
        strip_prefix,
        rate_limit: f
            .rate_limit
            .as_ref()
            .map(|r| admission::rate_limit(cx, r, &p.key("rate_limit"))),
        concurrency: f
            .concurrency
            .as_ref()
            .map(|c| admission::concurrency(cx, c, &p.key("concurrency"))),
        fault: f
            .fault
            .as_ref()
            .map(|x| admission::fault(cx, x, &p.key("fault"))),
        retry: f
            .retry
            .as_ref()
            .map(|r| policy::retry(cx, r, &base_retry, &p.key("retry"))),
        circuit_breaker: f
            .circuit_breaker
            .as_ref()
            .map(|b| policy::breaker(cx, b, &base_breaker, &p.key("circuit_breaker"))),
        propagate_deadline: f.propagate_deadline.unwrap_or(DEFAULT_PROPAGATE_DEADLINE),
        shed_on_deadline: f.shed_on_deadline.unwrap_or(DEFAULT_SHED_ON_DEADLINE),
    }
}

/// `*.example.com` -> `Suffix(".example.com")`, anything else `Exact`; lower-cased.
fn host(cx: &mut Ctx, path: &Path, raw: &str) -> Option<HostMatch> {
    let h = cx.string(path, raw)?.trim().to_ascii_lowercase();
    let (checked, result) = match h.strip_prefix("*.") {
        Some(rest) => (rest, HostMatch::Suffix(format!(".{rest}"))),
        None => (h.as_str(), HostMatch::Exact(h.clone())),
    };
    let check = if checked.contains('*') {
        Err(format!(
            "{h:?}: a wildcard is only allowed as the whole first label, as in \"*.example.com\""
        ))
    } else {
        units::check_route_host(checked)
    };
    check.map_err(|msg| cx.problem(path, msg)).ok()?;
    Some(result)
}

fn method(cx: &mut Ctx, path: &Path, raw: &str) -> Option<Method> {
    let m = cx.string(path, raw)?.trim().to_ascii_uppercase();
    if !METHODS.contains(&m.as_str()) {
        cx.problem(
            path,
            format!(
                "unknown method {raw:?}; expected one of: {}",
                METHODS.join(", ")
            ),
        );
        return None;
    }
    Method::from_bytes(m.as_bytes()).ok()
}
