//! The request path, as one straight line (see the crate docs for the diagram):
//! correlate -> route -> admit -> forward (attempt loop, fallback) -> respond. Each
//! stage lives in its own module and writes what it learned into the request's
//! [`RequestCtx`], which rides in the response body and writes the access-log line
//! when the body is done.

pub mod apply;
pub mod attempt;
pub mod classify;
pub mod correlate;
pub mod ctx;
pub mod ending;
pub mod error;
pub mod fallback;
pub mod forward;
pub mod inference;
pub mod listener;
pub mod resp_body;
pub mod scan;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::AccessLogger;
use crate::admission::{FaultAction, Shed, OVERLOADED_RETRY_AFTER};
use crate::body::LimitedIncoming;
use crate::snapshot::{Route, Snapshot, SnapshotCell};
use ctx::{GaugeGuard, RequestCtx};
use error::{ErrorCode, ProxyError};
use listener::ConnState;
use resp_body::RespBody;

/// What every request of the data listener shares. Per request: one snapshot load.
#[derive(Debug)]
pub struct Proxy {
    pub state: Arc<SnapshotCell>,
    pub logger: Arc<AccessLogger>,
}

/// gRPC callers get gRPC-shaped errors and keep `TE: trailers`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Proxy {
    /// Correlates the request at once, before the future is first polled: a request
    /// whose caller goes away before that (an HTTP/1.1 caller that half-closes right
    /// after its request) still has its context, so it is logged and counted as
    /// cancelled rather than lost without a trace.
    #[inline]
    pub fn handle(&self, req: Request<Incoming>, conn: Arc<ConnState>) -> Prepared {
        let started = Instant::now();
        let snap = self.state.load_full(); // pin this config for the whole request
        let (mut parts, body) = req.into_parts();
        let grpc = is_grpc(&parts.headers);
        // correlate (the caller's traceparent is read before it is rewritten)
        let tracing = snap.shared.tracing.as_ref();
        // (Two of them are none: W3C restarts the trace.)
        let incoming_tp = tracing.and_then(|_| {
            let mut all = parts.headers.get_all(&correlate::TRACEPARENT).iter();
            match (all.next(), all.next()) {
                (Some(v), None) => Some(v.clone()),
                _ => None,
            }
        });
        // The caller's headers of interest, read once (hop-by-hop ones removed first,
        // before fusebox adds its own).
        correlate::strip_hop_by_hop(&mut parts.headers, grpc);
        let scan = scan::scan(&parts.headers, &snap.config.limits.priority_header);
        let mut ids = correlate::stamp_request(&mut parts.headers, &snap.headers, &conn.peer_ip);
        let span = tracing.and_then(|t| {
            let rid = ids.request_id.to_str().unwrap_or("");
            let cid = ids.correlation_id.to_str().unwrap_or("");
            t.start_request(incoming_tp.as_ref(), &parts.method, rid, cid)
        });
        if let Some(s) = &span {
            // The trace the spans belong to, as sent upstream and logged.
            ids.traceparent = s.traceparent();
            parts
                .headers
                .insert(correlate::TRACEPARENT.clone(), ids.traceparent.clone());
        } else if tracing.is_some() && !ids.trace_kept {
            // (A caller's header that was invalid started a new trace too.)
            // Not sampled here: say so, so the model server does not sample it either.
            ids.traceparent = correlate::unsampled(&ids.traceparent);
            parts
                .headers
                .insert(correlate::TRACEPARENT.clone(), ids.traceparent.clone());
        }
        let logging = &snap.config.logging;
        let logger = logging
            .access_log
            .then(|| (self.logger.clone(), logging.format));
        let mut ctx = Box::new(RequestCtx::new(
            started,
            ids,
            grpc,
            &parts,
            snap.service.clone(),
            &snap.config.correlation.propagate,
            conn,
            logger,
        ));
        ctx.span = span;
        ctx.metrics = Some(snap.unrouted.clone());
        ctx.org_id = scan.org_id.clone();
        ctx.camera_id = scan.camera_id.clone();
        ctx.priority = scan.priority.unwrap_or_default();
        ctx.idempotency_key = scan.idempotency_key;
        Prepared {
            snap,
            parts,
            body,
            scan,
            ctx,
        }
    }
}

/// A correlated request, not yet routed: [`Prepared::respond`] answers it.
///
/// `handle` returns this rather than a future so that the caller awaits
/// `respond()` inside the future it gives hyper: the request's state machine
/// (routing, admission, attempts: several KiB) is then built in place, where
/// hyper keeps that future. A future returned from here would be moved, whole,
/// into hyper's state (about 12 KiB copied per request).
pub struct Prepared {
    snap: Arc<Snapshot>,
    parts: http::request::Parts,
    body: Incoming,
    scan: scan::Scan,
    ctx: Box<RequestCtx>,
}

impl Prepared {
    /// Routes, admits and forwards the request; the answer carries its context.
    ///
    /// The request's whole state machine is this future's, with no `async fn` of
    /// its own around it: a wrapper would build the inner future (5 KiB) on the
    /// stack and copy it into its own state at the first poll (twice: about 1,000
    /// instructions per request).
    pub async fn respond(self) -> Response<RespBody> {
        let Prepared {
            snap,
            parts,
            body,
            scan,
            mut ctx,
        } = self;
        let started = ctx.started;
        let grpc = ctx.grpc;
        // route, admit, forward
        let result = serve(&snap, parts, body, &scan, &mut ctx).await;
        // respond
        let mut resp = result.unwrap_or_else(|e| {
            ctx.error_code = Some(e.code);
            e.to_response(grpc, &ctx.ids.request_id, &ctx.ids.correlation_id)
        });
        if ctx.method == http::Method::HEAD {
            if let Some(n) = resp.body_mut().take_for_head() {
                resp.headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(n));
            }
        }
        correlate::stamp_response(resp.headers_mut(), &ctx.ids);
        ctx.status = resp.status().as_u16();
        let metrics = match ctx.route_index {
            Some(i) => &snap.routes[i].metrics,
            None => &snap.unrouted,
        };
        metrics.observe(&ctx.method, ctx.status, started.elapsed().as_secs_f64());
        resp.body_mut().set_ctx(ctx);
        resp
    }
}

/// Route, admit and forward one request.
async fn serve(
    snap: &Snapshot,
    mut parts: http::request::Parts,
    body: Incoming,
    scan: &scan::Scan,
    ctx: &mut RequestCtx,
) -> Result<Response<RespBody>, ProxyError> {
    // admit: a declared body over the cap is refused before reading it
    let max_body = snap.config.listener.max_request_body;
    ctx.declared_length = check_declared_length(scan.content_length, max_body)?;
    check_host(&mut parts, scan)?;
    resolve_dot_segments(&mut parts)?;
    // route
    let idx = snap
        .router
        .find(&parts.method, &parts.uri, &parts.headers)
        .ok_or_else(|| ProxyError::new(ErrorCode::NoRoute, "no route matches this request"))?;
    let route = &snap.routes[idx];
    ctx.route_index = Some(idx);
    ctx.metrics = Some(route.metrics.clone());
    ctx.route = Some(route.name.clone());
    ctx.upstream = Some(route.upstream.name.clone());
    if let Some(s) = &ctx.span {
        s.routed(&route.name, &route.cfg.path_prefix, &route.upstream.name);
    }
    set_deadline(route, scan, ctx);
    // admit: rate limit, concurrency, fault injection
    admit(route, &parts, ctx).await?;
    // forward: attempts, breakers, timeouts, retries, fallback
    let idle = route.upstream.cfg.timeouts.idle;
    let body =
        LimitedIncoming::new(body, max_body, idle, ctx.body.clone()).declared(ctx.declared_length);
    forward::send(route, parts, body, ctx).await
}

/// The `reason` label of a shed request.
pub(crate) fn shed_reason(shed: Shed) -> &'static str {
    match shed {
        Shed::Overloaded => "overloaded",
        Shed::Priority => "priority",
    }
}

/// OVERLOADED for a request shed from a queue, counted by why.
pub(crate) fn shed_error(route: &Route, shed: Shed, message: &'static str) -> ProxyError {
    match shed {
        Shed::Overloaded => route.metrics.rejected_overloaded.inc(),
        Shed::Priority => route.metrics.rejected_priority.inc(),
    }
    let message = match shed {
        Shed::Overloaded => message,
        Shed::Priority => "shed from a full queue for a request of higher priority",
    };
    ProxyError::new(ErrorCode::Overloaded, message)
        .upstream(&route.upstream.name)
        .retry_after(OVERLOADED_RETRY_AFTER)
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one valid `Host`; an absolute-form
/// target's authority replaces it (3.2.2), so the host that picked the route is the
/// host the upstream sees. HTTP/2 callers send `:authority`, which wins over a `Host`
/// beside it for the same reason.
fn check_host(parts: &mut http::request::Parts, scan: &scan::Scan) -> Result<(), ProxyError> {
    let bad = |m: &'static str| Err(ProxyError::new(ErrorCode::BadRequest, m));
    if parts.method == http::Method::CONNECT {
        // A tunnel is not a request fusebox can route, retry or log as one.
        return bad("CONNECT is not supported: fusebox is a reverse proxy");
    }
    if scan.hosts > 1 {
        return bad("more than one Host header");
    }
    if scan.host_invalid {
        return bad("the Host header is not a valid host[:port]");
    }
    if let Some(a) = parts.uri.authority() {
        if a.as_str().contains('@') {
            return bad("the request target carries user information");
        }
        if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(http::header::HOST, v);
        }
    } else if scan.hosts == 0 && parts.version == http::Version::HTTP_11 {
        return bad("an HTTP/1.1 request needs a Host header");
    }
    Ok(())
}

/// Routes see, and the upstream gets, the path with its dot segments resolved: a
/// caller cannot reach `/admin` through `/detect/../admin` (an upstream that resolves
/// them itself would serve a route the caller was not routed to).
fn resolve_dot_segments(parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    let resolved = crate::router::resolve_dot_segments(parts.uri.path()).map_err(|_| {
        ProxyError::new(
            ErrorCode::BadRequest,
            "the path climbs above the root with '..'",
        )
    })?;
    let Some(path) = resolved else {
        return Ok(());
    };
    let pq = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.path_and_query = Some(
        http::uri::PathAndQuery::try_from(pq)
            .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "invalid request path"))?,
    );
    parts.uri = http::Uri::from_parts(uri)
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "invalid request target"))?;
    Ok(())
}

fn check_declared_length(
    declared: Option<Option<u64>>,
    max_body: u64,
) -> Result<Option<u64>, ProxyError> {
    match declared {
        None => Ok(None),
        Some(Some(n)) if n > max_body => Err(ProxyError::new(
            ErrorCode::RequestTooLarge,
            format!("request body of {n} bytes is over the limit of {max_body}"),
        )),
        Some(Some(n)) => Ok(Some(n)),
        Some(None) => Err(ProxyError::new(
            ErrorCode::BadRequest,
            "invalid content-length",
        )),
    }
}

/// The deadline is the smallest of the route `timeout`, the caller's `grpc-timeout`
/// and the caller's `x-request-timeout-ms`; a caller's that is no longer than the
/// route's makes it the caller's own (equal ones too: the caller would have given up
/// then anyway, so an attempt cut short by it says nothing about the endpoint, and
/// counting it would open breakers on a fleet that is only busy).
fn set_deadline(route: &Route, scan: &scan::Scan, ctx: &mut RequestCtx) {
    let at = |d: Duration| {
        ctx.started
            .checked_add(d)
            .unwrap_or_else(|| ctx.started + Duration::from_secs(86_400))
    };
    let mut deadline = at(route.cfg.timeout);
    let mut caller = false;
    let asked = [scan.grpc_timeout, scan.request_timeout];
    let mut caller_at: Option<Instant> = None;
    for d in asked.into_iter().flatten() {
        let d = at(d);
        caller_at = Some(caller_at.map_or(d, |c| c.min(d)));
        if d <= deadline {
            deadline = d;
            caller = true;
        }
    }
    ctx.deadline = deadline;
    ctx.caller_deadline = caller;
    ctx.caller_deadline_at = caller_at;
    ctx.caller_timeout_ms = scan.request_timeout.is_some();
}

/// The route's own admission: rate limit (429), concurrency (503, waiting in the
/// queue first), then fault injection (abort or delay).
async fn admit(
    route: &Route,
    parts: &http::request::Parts,
    ctx: &mut RequestCtx,
) -> Result<(), ProxyError> {
    let conn_ip = ctx.peer_ip();
    if let Some(rl) = &route.rate_limit {
        if let Err(wait) = rl.check(&parts.headers, conn_ip, ctx.started) {
            route.metrics.rejected_rate_limited.inc();
            if let Some(s) = &ctx.span {
                s.shed("rate_limited");
            }
            return Err(
                ProxyError::new(ErrorCode::RateLimited, "rate limit exceeded")
                    .upstream(&route.upstream.name)
                    .retry_after(wait),
            );
        }
    }
    if let Some(c) = &route.concurrency {
        // The queue wait ends by the deadline at the latest: the caller gets its answer
        // when it gives up, not a queue timeout later.
        let got = match c.try_acquire() {
            Some(permit) => Ok(permit),
            None => {
                let now = Instant::now();
                let left = ctx.deadline.saturating_duration_since(now);
                let got = c.acquire(ctx.priority, left).await;
                // `queue_timeout` bounds this wait and any for the upstream's
                // adaptive limits together.
                ctx.queue_waited = now.elapsed();
                got
            }
        };
        match got {
            Ok(permit) => ctx.admission = Some(permit),
            Err(shed) => {
                if let Some(s) = &ctx.span {
                    s.shed(shed_reason(shed));
                }
                return Err(shed_error(route, shed, "too many requests in flight"));
            }
        }
    }
    ctx.route_in_flight = Some(GaugeGuard::inc(&route.metrics.in_flight));
    if let Some(f) = &route.fault {
        match f.decide() {
            FaultAction::None => {}
            FaultAction::Delay(d) => {
                route.metrics.fault_delay.inc();
                // An injected delay is part of the request's time: it ends by the
                // deadline, answered DEADLINE_EXCEEDED (before any attempt, so no
                // fallback answers it).
                let left = ctx.deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(d.min(left)).await;
                if d >= left {
                    return Err(ending::deadline_exceeded(route, &route.upstream, ctx));
                }
            }
            FaultAction::Abort(status) => {
                route.metrics.fault_abort.inc();
                return Err(ProxyError::new(
                    ErrorCode::FaultInjected,
                    "fault injection aborted this request",
                )
                .upstream(&route.upstream.name)
                .with_status(status));
            }
        }
    }
    Ok(())
}
