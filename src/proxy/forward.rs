//! The attempt loop: pick an endpoint, send over its pooled connection with the
//! per-attempt timeout capped by the route deadline, classify the outcome.



use http::header::HOST;
use http::uri::{PathAndQuery, Scheme};
use http::{request, HeaderValue, Response, Uri, Version};
use tokio::time::Instant;

use super::body::{LimitedIncoming, ReqBody, RespBody};
use super::error::{ErrorCode, ProxyError};
use crate::access_log::Completion;
use crate::config::Protocol;
use crate::snapshot::Route;
use crate::upstream::balancer::Tried;

/// The path and query sent upstream: `strip_prefix` removed when the path starts with
/// it (an emptied path becomes `/`).
pub fn upstream_path(uri: &Uri, strip: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(strip) = strip else { return Ok(pq) };
    let strip = strip.trim_end_matches('/');
    let path = pq.path();
    let Some(rest) = path.strip_prefix(strip) else { return Ok(pq) };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Ok(pq); // `/detect` does not strip from `/detection`
    }
    let mut s = String::with_capacity(pq.as_str().len());
    s.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = pq.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s)
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "path invalid after strip_prefix"))
}

/// Sends the request to the route's upstream and returns its response, or the typed
/// error fusebox answers with.
pub async fn send(
    route: &Route,
    mut parts: request::Parts,
    body: LimitedIncoming,
    started: Instant,
    done: &mut Completion,
) -> Result<Response<RespBody>, ProxyError> {
    let up = &route.upstream;
    let deadline = started + route.cfg.timeout;
    let pq = upstream_path(&parts.uri, route.cfg.strip_prefix.as_deref())?;
    if !parts.headers.contains_key(HOST) {
        // HTTP/2 callers send :authority instead of Host; HTTP/1.1 upstreams need Host.
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    parts.version = match up.cfg.protocol {
        Protocol::H2c | Protocol::H2 => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let req_body = if body.is_end_stream() {
        ReqBody::Empty
    } else {
        ReqBody::Stream {
            head: Default::default(),
            rest: Box::new(body),
        }
    };

    let eps = up.endpoints();
    let idx = up
        .pick(&eps, Tried::default(), |e| e.is_healthy())
        .ok_or_else(|| {
            ProxyError::new(ErrorCode::UpstreamConnectFailed, "no endpoint of the upstream is available")
                .upstream(&up.name)
        })?;
    let ep = eps[idx].clone();
    done.record.endpoint = Some(ep.key.clone());
    done.record.attempts += 1;

    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(ep.authority.clone());
    uri.path_and_query = Some(pq);
    parts.uri = Uri::from_parts(uri)
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "cannot build upstream URI"))?;
    let req = http::Request::from_parts(parts, req_body);

    let in_flight = ep.start_request();
    let now = Instant::now();
    if now >= deadline {
        return Err(deadline_exceeded(route));
    }
    let left = deadline - now;
    let per_attempt = up.cfg.timeouts.request;
    let capped_by_deadline = left < per_attempt;
    let attempt_timeout = per_attempt.min(left);
    match tokio::time::timeout(attempt_timeout, up.client.request(req)).await {
        Err(_) if capped_by_deadline => Err(deadline_exceeded(route)),
        Err(_) => Err(ProxyError::new(
            ErrorCode::UpstreamTimeout,
            format!("no response headers from {} within {:?}", ep.key, attempt_timeout),
        )
        .upstream(&up.name)),
        Ok(Err(e)) => {
            if done.body.too_large.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ProxyError::new(
                    ErrorCode::RequestTooLarge,
                    "request body is over the limit",
                ));
            }
            let code = if e.is_connect() {
                ErrorCode::UpstreamConnectFailed
            } else {
                ErrorCode::UpstreamReset
            };
            let msg = format!("{}: {}", ep.key, error_chain(&e));
            Err(ProxyError::new(code, msg).upstream(&up.name).source(e))
        }
        Ok(Ok(resp)) => {
            let (p, b) = resp.into_parts();
            done.in_flight = Some(in_flight);
            Ok(Response::from_parts(p, RespBody::upstream(b, up.cfg.timeouts.idle)))
        }
    }
}

fn deadline_exceeded(route: &Route) -> ProxyError {
    ProxyError::new(
        ErrorCode::DeadlineExceeded,
        format!("route '{}' deadline of {:?} passed", route.name, route.cfg.timeout),
    )
    .upstream(&route.upstream.name)
}

/// "outer: inner: innermost", for error messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_prefix_rewrites_path_and_keeps_query() {
        let u: Uri = "/detect/v1/x?a=1".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect")).unwrap(), "/v1/x?a=1");
        let u: Uri = "/detect".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect/")).unwrap(), "/");
        let u: Uri = "/detection".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect")).unwrap(), "/detection");
        assert_eq!(upstream_path(&u, None).unwrap(), "/detection");
    }
}
