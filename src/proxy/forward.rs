//! The attempt loop, bounded by the route deadline: pick an endpoint whose breaker
//! admits (the balancer skips open ones), send over its pooled connection with the
//! per-attempt timeout capped by the time left, classify the outcome, record it on the
//! breaker, then retry (policy, budget, backoff, another endpoint) or finish. When no
//! attempt can succeed, the upstream's fallback answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::uri::{PathAndQuery, Scheme};
use http::{request, HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, Version};
use tokio::time::Instant;

use super::body::{LimitedIncoming, ReplaySource, ReqBody, RespBody};
use super::error::{ErrorCode, ProxyError};
use crate::access_log::Completion;
use crate::config::{FallbackConfig, Protocol, RetryConfig};
use crate::snapshot::Route;
use crate::upstream::balancer::Tried;
use crate::upstream::breaker::Outcome;
use crate::upstream::pool::Lease;
use crate::upstream::retry::{is_idempotent, parse_retry_after, Backoff};
use crate::upstream::{Endpoint, RouteBreakers, Upstream};

static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");
static X_FUSEBOX_FALLBACK: http::HeaderName = http::HeaderName::from_static("x-fusebox-fallback");

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
    let Some(rest) = path.strip_prefix(strip) else {
        return Ok(pq);
    };
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

/// A retry policy with its backoff, valid by construction (built with the snapshot).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub cfg: RetryConfig,
    pub backoff: Backoff,
}

/// What the attempt loop needs of the request; reused by every attempt.
struct Outbound<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    pq: &'a PathAndQuery,
    body: Option<&'a Arc<ReplaySource>>,
    /// Non-idempotent requests are retried only after connect failures.
    retry_any_failure: bool,
    /// A gRPC call: `grpc-timeout` carries the time left, `grpc-status` classifies.
    grpc: bool,
    /// Send the time left as `x-request-timeout-ms` (route `propagate_deadline`).
    propagate_deadline: bool,
    /// The deadline is the caller's own (`grpc-timeout` shorter than the route's): a
    /// timeout it causes says nothing about the upstream, so the breaker ignores it.
    caller_deadline: bool,
}

static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
static X_REQUEST_TIMEOUT_MS: http::HeaderName =
    http::HeaderName::from_static("x-request-timeout-ms");

/// A `grpc-timeout` value (`1-8 digits` + `H M S m u n`) as a duration.
pub fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    if b.len() < 2 || b.len() > 9 {
        return None;
    }
    let (digits, unit) = b.split_at(b.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The time left, as milliseconds in a header value (at least 1).
fn millis_value(left: Duration, suffix: &str) -> HeaderValue {
    let ms = left.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}{suffix}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1"))
}

/// The `grpc-status` of a trailers-only response (status in the headers).
fn grpc_status_of(r: &Response<hyper::body::Incoming>) -> Option<u8> {
    r.headers()
        .get(&GRPC_STATUS)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok())
}

/// How one attempt ended.
enum Attempt {
    Response(Response<hyper::body::Incoming>, Option<Lease>),
    ConnectFailed(ProxyError),
    Reset(ProxyError),
    Timeout { err: ProxyError, deadline: bool },
}

/// How the loop ended.
enum LoopEnd {
    /// An upstream response (success, or the last one when retries ran out).
    Response(Response<RespBody>),
    /// No response; `fallback` says whether a fallback may answer instead.
    Error { err: ProxyError, fallback: bool },
}

/// Sends the request to the route's upstream and returns its response, a fallback
/// answer, or the typed error fusebox answers with.
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
    let retry_any_failure = is_idempotent(&parts.method)
        || parts.headers.contains_key(&IDEMPOTENCY_KEY)
        || route.retry.cfg.retry_non_idempotent;
    let grpc = super::is_grpc(&parts.headers);
    // A body is kept for replay only when a retry after it was sent is allowed (and
    // gRPC, whose UNAVAILABLE is retried for any call). Otherwise only a connect
    // failure is retried, and that happens before any byte is read: keeping the body
    // would cost memory for nothing.
    let keep = if retry_any_failure || grpc {
        route.retry.cfg.max_replay_body
    } else {
        0
    };
    let source = (!body.is_end_stream()).then(|| {
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        ReplaySource::new(body, keep, declared)
    });
    let mut out = Outbound {
        method: &parts.method,
        headers: &parts.headers,
        pq: &pq,
        body: source.as_ref(),
        retry_any_failure,
        grpc,
        propagate_deadline: route.cfg.propagate_deadline,
        caller_deadline: false,
    };
    // A gRPC caller's own deadline wins when it is shorter than the route's.
    let deadline = match parts
        .headers
        .get(&GRPC_TIMEOUT)
        .and_then(parse_grpc_timeout)
    {
        Some(t) if out.grpc && started + t < deadline => {
            out.caller_deadline = true;
            started + t
        }
        _ => deadline,
    };
    up.budget.record_request(started);
    match attempts(
        route,
        up,
        route.breakers.as_deref(),
        &route.retry,
        &out,
        deadline,
        done,
    )
    .await
    {
        LoopEnd::Response(r) => Ok(r),
        LoopEnd::Error { err, fallback } => {
            if !fallback || done.body.too_large.load(Ordering::Relaxed) {
                return Err(err);
            }
            match &up.cfg.fallback {
                None => Err(err),
                Some(FallbackConfig::Static {
                    status,
                    content_type,
                    body,
                }) => {
                    up.metrics.fallback_static.inc();
                    done.record.error_code = Some(err.code.as_str());
                    let mut r = Response::new(RespBody::full(body.clone()));
                    *r.status_mut() = *status;
                    r.headers_mut()
                        .insert(http::header::CONTENT_TYPE, content_type.clone());
                    r.headers_mut().insert(
                        X_FUSEBOX_FALLBACK.clone(),
                        HeaderValue::from_static("static"),
                    );
                    Ok(r)
                }
                Some(FallbackConfig::Upstream(_)) => {
                    let Some(fb) = route.fallback.as_ref() else {
                        return Err(err);
                    };
                    if out.body.is_some_and(|b| !b.can_replay()) {
                        return Err(err);
                    }
                    up.metrics.fallback_upstream.inc();
                    done.record.error_code = Some(err.code.as_str());
                    done.record.upstream = Some(fb.upstream.name.clone());
                    match attempts(route, &fb.upstream, None, &fb.retry, &out, deadline, done).await
                    {
                        LoopEnd::Response(mut r) => {
                            r.headers_mut().insert(
                                X_FUSEBOX_FALLBACK.clone(),
                                HeaderValue::from_static("upstream"),
                            );
                            Ok(r)
                        }
                        LoopEnd::Error { err, .. } => Err(err),
                    }
                }
            }
        }
    }
}

async fn attempts(
    route: &Route,
    up: &Upstream,
    rb: Option<&RouteBreakers>,
    policy: &RetryPolicy,
    out: &Outbound<'_>,
    deadline: Instant,
    done: &mut Completion,
) -> LoopEnd {
    let retry = &policy.cfg;
    let breaker_cfg = match (rb, &route.cfg.circuit_breaker) {
        (Some(_), Some(c)) => c,
        _ => &up.cfg.circuit_breaker,
    };
    let mut tried = Tried::default();
    let mut retries_done = 0u32;
    let mut refused = 0usize;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return LoopEnd::Error {
                err: deadline_exceeded(route, up),
                fallback: true,
            };
        }
        let eps = up.endpoints();
        let breaker_ok = |ep: &Endpoint| ep.breakers_for(rb).available(out.headers, now);
        // Healthy, admitted and past slow start first; failing that (every endpoint
        // fails its health checks, or slow start said no) any whose breaker admits.
        let picked = up
            .pick(&eps, tried, |ep| {
                ep.is_healthy() && breaker_ok(ep) && ep.slow_start_admits(now, up.cfg.slow_start)
            })
            .or_else(|| up.pick(&eps, tried, breaker_ok));
        let Some(i) = picked else {
            return all_open(route, up, rb, &eps, out.headers, now);
        };
        let ep = eps[i].clone();
        tried.add(i);
        let brk = ep.breakers_for(rb);
        let bref = brk.for_request(out.headers);
        let permit = match bref.get().try_acquire(now) {
            Ok(p) => p,
            Err(_) => {
                // Lost a race for the last half-open probe slot: pick again.
                refused += 1;
                if refused > eps.len() * 2 {
                    return all_open(route, up, rb, &eps, out.headers, now);
                }
                continue;
            }
        };
        if let Some(t) = permit.transition() {
            ep.on_transition(t, bref.key());
        }
        done.record.attempts += 1;
        done.record.endpoint = Some(ep.key.clone());

        let in_flight = ep.start_request();
        let left = deadline.saturating_duration_since(now);
        let per_attempt = up.cfg.timeouts.request.min(left);
        let t0 = Instant::now();
        let attempt = send_once(
            up,
            &ep,
            out,
            per_attempt,
            per_attempt < up.cfg.timeouts.request,
            left,
        )
        .await;
        let elapsed = t0.elapsed();

        if out.caller_deadline && matches!(attempt, Attempt::Timeout { deadline: true, .. }) {
            drop(permit); // the caller's short deadline: the breaker learns nothing
            return finish(attempt, in_flight, up, done);
        }
        if done.body.too_large.load(Ordering::Relaxed) {
            drop(permit); // the caller's fault: the breaker learns nothing
            return LoopEnd::Error {
                err: ProxyError::new(ErrorCode::RequestTooLarge, "request body is over the limit"),
                fallback: false,
            };
        }
        // classify and record on the breaker
        let (failure, retry_after, status) = match &attempt {
            Attempt::Response(r, _) => {
                let s = r.status();
                let ra = matches!(
                    s,
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
                )
                .then(|| r.headers().get(RETRY_AFTER))
                .flatten()
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
                let failure = breaker_cfg.failure_status_codes.contains(&s.as_u16())
                    || (out.grpc
                        && grpc_status_of(r)
                            .is_some_and(|g| breaker_cfg.failure_grpc_codes.contains(&g)));
                (failure, ra, Some(s.as_u16()))
            }
            _ => (true, None, None),
        };
        let breaker_ra = if status == Some(503) {
            retry_after
        } else {
            None
        };
        let outcome = Outcome {
            failure,
            duration: elapsed,
            retry_after: breaker_ra,
        };
        if let Some(t) = bref.get().record(permit, outcome, Instant::now()) {
            ep.on_transition(t, bref.key());
        }

        // retry?
        let retryable = match &attempt {
            Attempt::ConnectFailed(_) => true,
            Attempt::Reset(_) => out.retry_any_failure,
            Attempt::Timeout { deadline, .. } => out.retry_any_failure && !deadline,
            Attempt::Response(r, _) => {
                (out.retry_any_failure && retry.retry_status_codes.contains(&r.status().as_u16()))
                    || (out.grpc
                        && grpc_status_of(r).is_some_and(|g| retry.retry_grpc_codes.contains(&g)))
            }
        };
        let may_retry = retryable
            && retries_done < retry.max_retries
            && out.body.is_none_or(|b| b.can_replay())
            && any_available(up, rb, out.headers, Instant::now());
        let delay = if may_retry {
            next_delay(policy, retries_done + 1, retry_after, deadline)
        } else {
            None
        };
        let go = match delay {
            Some(_) if !up.budget.try_withdraw(Instant::now()) => {
                route.metrics.rejected_budget.inc();
                false
            }
            Some(_) => true,
            None => false,
        };
        if !go {
            return finish(attempt, in_flight, up, done);
        }
        match &attempt {
            Attempt::ConnectFailed(_) => up.metrics.retry_connect.inc(),
            Attempt::Reset(_) => up.metrics.retry_reset.inc(),
            Attempt::Timeout { .. } => up.metrics.retry_timeout.inc(),
            Attempt::Response(r, _) => {
                let counter = match grpc_status_of(r).filter(|_| out.grpc) {
                    Some(g) => up.metrics.retry_for_grpc(g),
                    None => up.metrics.retry_for_status(r.status().as_u16()),
                };
                if let Some(c) = counter {
                    c.inc();
                }
            }
        }
        drop(attempt);
        drop(in_flight);
        if let Some(d) = delay.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
        retries_done += 1;
    }
}

/// The wait before retry `n`, or `None` when it would not fit: a `Retry-After` past
/// `max_delay`, or a wait that would end at or after the deadline.
fn next_delay(
    policy: &RetryPolicy,
    n: u32,
    retry_after: Option<Duration>,
    deadline: Instant,
) -> Option<Duration> {
    let delay = match retry_after {
        Some(ra) if ra > policy.cfg.max_delay => return None,
        Some(ra) => ra,
        None => policy.backoff.delay(n),
    };
    (Instant::now() + delay < deadline).then_some(delay)
}

fn any_available(
    up: &Upstream,
    rb: Option<&RouteBreakers>,
    headers: &HeaderMap,
    now: Instant,
) -> bool {
    up.endpoints()
        .iter()
        .any(|ep| ep.breakers_for(rb).available(headers, now))
}

/// CIRCUIT_OPEN: no endpoint's breaker admits. `Retry-After` is the time until the
/// first one half-opens.
fn all_open(
    route: &Route,
    up: &Upstream,
    rb: Option<&RouteBreakers>,
    eps: &[Arc<Endpoint>],
    headers: &HeaderMap,
    now: Instant,
) -> LoopEnd {
    route.metrics.rejected_circuit_open.inc();
    if eps.is_empty() {
        return LoopEnd::Error {
            err: ProxyError::new(
                ErrorCode::UpstreamConnectFailed,
                "the upstream has no endpoints (DNS gave no address)",
            )
            .upstream(&up.name),
            fallback: true,
        };
    }
    let wait = eps
        .iter()
        .map(|ep| {
            ep.breakers_for(rb)
                .rejection(headers, now)
                .map_or(Duration::ZERO, |r| r.retry_after)
        })
        .min()
        .unwrap_or(Duration::ZERO);
    let msg = format!("all endpoints of upstream '{}' are open", up.name);
    LoopEnd::Error {
        err: ProxyError::new(ErrorCode::CircuitOpen, msg)
            .upstream(&up.name)
            .retry_after(wait.max(Duration::from_secs(1))),
        fallback: true,
    }
}

fn finish(
    attempt: Attempt,
    in_flight: crate::upstream::InFlight,
    up: &Upstream,
    done: &mut Completion,
) -> LoopEnd {
    match attempt {
        Attempt::Response(r, lease) => {
            let (p, b) = r.into_parts();
            done.in_flight = Some(in_flight);
            LoopEnd::Response(Response::from_parts(
                p,
                RespBody::upstream(b, lease, up.cfg.timeouts.idle),
            ))
        }
        Attempt::ConnectFailed(err) | Attempt::Reset(err) => LoopEnd::Error {
            err,
            fallback: true,
        },
        Attempt::Timeout { err, .. } => LoopEnd::Error {
            err,
            fallback: true,
        },
    }
}

async fn send_once(
    up: &Upstream,
    ep: &Endpoint,
    out: &Outbound<'_>,
    timeout: Duration,
    capped_by_deadline: bool,
    left: Duration,
) -> Attempt {
    let http2 = matches!(up.cfg.protocol, Protocol::H2c | Protocol::H2);
    // HTTP/1.1 sends the origin form (`/path?q`); HTTP/2 needs scheme and authority for
    // its pseudo-headers.
    let uri = if http2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if up.cfg.protocol == Protocol::H2 {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        uri.authority = Some(ep.authority.clone());
        uri.path_and_query = Some(out.pq.clone());
        match Uri::from_parts(uri) {
            Ok(u) => u,
            Err(_) => {
                return Attempt::Reset(ProxyError::new(
                    ErrorCode::BadRequest,
                    "cannot build upstream URI",
                ))
            }
        }
    } else {
        Uri::from(out.pq.clone())
    };
    let mut req = http::Request::new(match out.body {
        Some(src) => ReqBody::Replay(src.attempt()),
        None => ReqBody::Empty,
    });
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = out.headers.clone();
    if out.grpc {
        req.headers_mut()
            .insert(GRPC_TIMEOUT.clone(), millis_value(left, "m"));
    }
    if out.propagate_deadline {
        req.headers_mut()
            .insert(X_REQUEST_TIMEOUT_MS.clone(), millis_value(left, ""));
    }
    let pool = ep.pool.load_full();
    match tokio::time::timeout(timeout, pool.send(req)).await {
        Ok(Ok((resp, lease))) => Attempt::Response(resp, lease),
        Err(_) if capped_by_deadline => Attempt::Timeout {
            err: ProxyError::new(
                ErrorCode::DeadlineExceeded,
                "route deadline passed while waiting for the upstream",
            )
            .upstream(&up.name),
            deadline: true,
        },
        Err(_) => Attempt::Timeout {
            err: ProxyError::new(
                ErrorCode::UpstreamTimeout,
                format!("no response headers from {} within {:?}", ep.key, timeout),
            )
            .upstream(&up.name),
            deadline: false,
        },
        Ok(Err(e)) => {
            let msg = format!("{}: {}", ep.key, error_chain(&e));
            if e.is_connect() {
                Attempt::ConnectFailed(
                    ProxyError::new(ErrorCode::UpstreamConnectFailed, msg)
                        .upstream(&up.name)
                        .source(e),
                )
            } else {
                Attempt::Reset(
                    ProxyError::new(ErrorCode::UpstreamReset, msg)
                        .upstream(&up.name)
                        .source(e),
                )
            }
        }
    }
}

fn deadline_exceeded(route: &Route, up: &Upstream) -> ProxyError {
    ProxyError::new(
        ErrorCode::DeadlineExceeded,
        format!(
            "route '{}' deadline of {:?} passed",
            route.name, route.cfg.timeout
        ),
    )
    .upstream(&up.name)
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
    fn grpc_timeout_units() {
        let p = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("100m"), Some(Duration::from_millis(100)));
        assert_eq!(p("2S"), Some(Duration::from_secs(2)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("5u"), Some(Duration::from_micros(5)));
        assert_eq!(p("123456789m"), None);
        assert_eq!(p("m"), None);
        assert_eq!(p("1x"), None);
        assert_eq!(millis_value(Duration::from_micros(10), "m"), "1m");
    }

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
