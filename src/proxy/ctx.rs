//! [`RequestCtx`]: the one per-request value the request path owns, from accept to the
//! last byte of the response. Every stage writes what it learned into it (ids, route,
//! deadline, attempts, endpoint, outcome, error code) and it holds the request's
//! guards (connection, route in-flight gauge, concurrency slot, endpoint in-flight
//! count), so they live exactly as long as the request. It travels inside the response
//! body; when that is done (or the caller went away) its drop writes the access-log
//! line, once, as a reader of the context (pingora's `logging()` phase), then releases
//! the guards.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::time::Instant;

use super::correlate::{Ids, X_CAMERA_ID, X_ORG_ID};
use super::error::ErrorCode;
use super::listener::ConnState;
use crate::access_log::{self, AccessLogger, Entry};
use crate::admission::{ConcurrencyPermit, Priority};
use crate::body::BodyShared;
use crate::config::LogFormat;
use crate::upstream::InFlight;

/// Everything known about one request.
#[derive(Debug)]
pub struct RequestCtx {
    pub started: Instant,
    pub ids: Ids,
    /// A gRPC call: gRPC-shaped errors, `grpc-timeout`, `grpc-status` classification.
    pub grpc: bool,
    pub method: Method,
    /// The path, for the access log (copied, and only when the log is on: a clone of
    /// the URI would keep the connection's read buffer shared until the response is
    /// done, and hyper would allocate a new one for the next request).
    pub path: Option<Box<str>>,
    pub service: Arc<str>,
    /// The route's index in the snapshot, once routed.
    pub route_index: Option<usize>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    /// The endpoint of the last attempt.
    pub endpoint: Option<Arc<str>>,
    /// When the request's time is up: the smallest of the route timeout, the caller's
    /// `grpc-timeout` and `x-request-timeout-ms` (set once routed).
    pub deadline: Instant,
    /// The deadline is the caller's own, shorter than the route's: a timeout it causes
    /// says nothing about the upstream.
    pub caller_deadline: bool,
    /// When the caller's own deadline (`grpc-timeout`, `x-request-timeout-ms`) ends,
    /// if it gave one: a whole-call deadline, unlike the route's (to response headers).
    pub caller_deadline_at: Option<Instant>,
    pub attempts: u32,
    /// `rejected_total{reason="circuit_open"}` counted this request already (a
    /// fallback upstream that is all open too does not count it twice).
    pub circuit_open_counted: bool,
    pub status: u16,
    /// Set when fusebox answered itself (or a fallback answered for this failure).
    pub error_code: Option<ErrorCode>,
    pub org_id: Option<HeaderValue>,
    pub camera_id: Option<HeaderValue>,
    /// Values of `correlation.propagate` headers, for the log.
    pub propagated: Vec<(HeaderName, HeaderValue)>,
    /// From the `[limits] priority_header` (`X-Priority`), `normal` when absent.
    pub priority: Priority,
    /// How long it waited in its route's `concurrency` queue.
    pub queue_waited: std::time::Duration,
    /// The caller sent `Idempotency-Key`: retried like an idempotent method.
    pub idempotency_key: bool,
    /// The declared `Content-Length` (within `max_request_body`).
    pub declared_length: Option<u64>,
    /// The caller sent `x-request-timeout-ms`: it is rewritten upstream to the time left.
    pub caller_timeout_ms: bool,
    /// Shared with the request body wrappers (bytes in, too large, stalled).
    pub body: Arc<BodyShared>,
    pub bytes_out: u64,
    /// The response body failed mid-stream (upstream reset or idle timeout).
    pub body_error: bool,
    /// The caller went away: before any answer was sent (`status` 0), or while the
    /// answer's body was still being sent.
    pub cancelled: bool,
    /// In the attempt loop: the histogram its `attempts` go to when it ends.
    pub attempt_loop: Option<prometheus::Histogram>,
    /// The route's metrics once routed, before that the unrouted ones' (for counting
    /// the request when the caller leaves).
    pub metrics: Option<Arc<crate::metrics::RouteMetrics>>,
    logger: Option<(Arc<AccessLogger>, LogFormat)>,
    /// The server span, when tracing is on and the request is sampled.
    pub span: Option<crate::otel::RequestSpan>,
    /// A gRPC call's `grpc-status` from the upstream (its headers, or its trailers once
    /// the body is done).
    pub grpc_status: Option<u8>,
    /// The client span of the attempt whose gRPC answer is being streamed, with its
    /// HTTP status: its outcome is in the trailers, so it ends with the body.
    pub attempt_span: Option<(crate::otel::AttemptSpan, u16)>,
    /// The policy slot and breaker generation of the forwarded answer's provisional
    /// success on its endpoint's breaker, settled when its body ends.
    pub breaker_pending: Option<(usize, crate::upstream::breaker::Settle)>,
    /// A gRPC call: its breaker policy's `failure_grpc_codes` as a bit set (codes are
    /// 0..=16), for a status that arrives in the trailers of a streamed answer.
    pub grpc_failure_mask: u32,
    // Guards, released when the context drops (after the log line is written).
    conn: ConnGuard,
    /// The route's `gateway_proxy_in_flight_requests`, while the request lives.
    pub route_in_flight: Option<GaugeGuard>,
    /// The route's concurrency slot.
    pub admission: Option<ConcurrencyPermit>,
    /// Keeps the endpoint's in-flight count up while the response body streams.
    pub in_flight: Option<InFlight>,
}

impl RequestCtx {
    /// A context for a request whose headers were just correlated.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        started: Instant,
        ids: Ids,
        grpc: bool,
        parts: &http::request::Parts,
        service: Arc<str>,
        propagate: &[HeaderName],
        conn: Arc<ConnState>,
        logger: Option<(Arc<AccessLogger>, LogFormat)>,
    ) -> RequestCtx {
        let headers = &parts.headers;
        RequestCtx {
            started,
            ids,
            grpc,
            method: parts.method.clone(),
            path: logger.as_ref().map(|_| parts.uri.path().into()),
            service,
            route_index: None,
            route: None,
            upstream: None,
            endpoint: None,
            deadline: started,
            caller_deadline: false,
            caller_deadline_at: None,
            attempts: 0,
            circuit_open_counted: false,
            status: 0,
            error_code: None,
            org_id: None,
            camera_id: None,
            propagated: propagated(headers, propagate),
            priority: Priority::Normal,
            queue_waited: std::time::Duration::ZERO,
            idempotency_key: false,
            declared_length: None,
            caller_timeout_ms: false,
            body: Arc::new(BodyShared::default()),
            bytes_out: 0,
            body_error: false,
            cancelled: false,
            attempt_loop: None,
            metrics: None,
            logger,
            span: None,
            grpc_status: None,
            attempt_span: None,
            breaker_pending: None,
            grpc_failure_mask: 0,
            conn: ConnGuard::new(conn),
            route_in_flight: None,
            admission: None,
            in_flight: None,
        }
    }
}

impl RequestCtx {
    /// The caller's address.
    pub fn peer_ip(&self) -> std::net::IpAddr {
        self.conn.0.peer.ip()
    }
}

/// The configured extra headers present on the request (X-Org-ID and X-Camera-ID are
/// logged as their own fields; nothing else configured: no work).
fn propagated(headers: &HeaderMap, names: &[HeaderName]) -> Vec<(HeaderName, HeaderValue)> {
    let extra = || {
        names
            .iter()
            .filter(|n| **n != X_ORG_ID && **n != X_CAMERA_ID)
    };
    if extra().next().is_none() {
        return Vec::new();
    }
    extra()
        .filter_map(|n| headers.get(n).map(|v| (n.clone(), v.clone())))
        .collect()
}

impl RequestCtx {
    /// A request its caller left counts in `gateway_proxy_cancelled_total`, and one
    /// that left in the attempt loop has its attempts observed there (as when it ends).
    fn count_cancelled(&mut self) {
        if self.status == 0 {
            self.cancelled = true;
        }
        if !self.cancelled {
            return;
        }
        let Some(metrics) = &self.metrics else {
            return;
        };
        if self.status == 0 {
            metrics.cancelled_before_response.inc();
            if let Some(h) = self.attempt_loop.take() {
                h.observe(f64::from(self.attempts));
            }
        } else {
            metrics.cancelled_during_body.inc();
        }
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        if let Some((attempt, status)) = self.attempt_span.take() {
            if self.body_error || self.status == 0 || self.grpc_status.is_none() {
                // The answer broke off, or the caller left before its trailers:
                // dropped unended, the attempt is marked cancelled, an error.
                drop(attempt);
            } else {
                attempt.end(Some(status), None, self.grpc_status);
            }
        }
        if let Some(span) = self.span.take() {
            if self.status == 0 {
                // No answer was sent: the caller gave up (or the connection was cut).
                // Dropped unended, the span is marked cancelled, an error.
                drop(span);
            } else if self.cancelled {
                // The caller left during the answer's body (or before a gRPC call's
                // trailers: its deadline passed mid-stream).
                span.end_cancelled(self.status);
            } else {
                // A gRPC caller got the status of the answer forwarded to it, or else
                // fusebox's own error's.
                let grpc = self.grpc.then(|| {
                    self.grpc_status
                        .or(self.error_code.map(ErrorCode::grpc_status))
                });
                span.end(
                    Some(self.status),
                    self.error_code.map(ErrorCode::as_str),
                    grpc.flatten(),
                );
            }
        }
        self.count_cancelled();
        let Some((logger, format)) = &self.logger else {
            return;
        };
        let entry = Entry {
            service: &self.service,
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            endpoint: self.endpoint.as_deref(),
            method: self.method.as_str(),
            path: self.path.as_deref().unwrap_or(""),
            status: self.status,
            duration: self.started.elapsed(),
            attempts: self.attempts,
            correlation_id: self.ids.correlation_id.as_bytes(),
            request_id: self.ids.request_id.as_bytes(),
            trace_id: access_log::trace_id_of(&self.ids.traceparent),
            org_id: self.org_id.as_ref().map(HeaderValue::as_bytes),
            camera_id: self.camera_id.as_ref().map(HeaderValue::as_bytes),
            priority: self.priority.as_str(),
            error_code: self.error_code.map(ErrorCode::as_str),
            bytes_in: self
                .body
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: self.bytes_out,
            body_error: self.body_error,
            cancelled: self.cancelled,
            propagated: &self.propagated,
        };
        logger.write(&entry, *format);
    }
}

/// Tells the connection one request fewer is in flight, on drop.
#[derive(Debug)]
struct ConnGuard(Arc<ConnState>);

impl ConnGuard {
    fn new(conn: Arc<ConnState>) -> ConnGuard {
        conn.request_started();
        ConnGuard(conn)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// Decrements a gauge on drop (a route's in-flight requests).
#[derive(Debug)]
pub struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    pub fn inc(g: &prometheus::IntGauge) -> GaugeGuard {
        g.inc();
        GaugeGuard(g.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
