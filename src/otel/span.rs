//! The spans of one sampled request: the server span ([`RequestSpan`]) and one client
//! span per upstream attempt ([`AttemptSpan`]), with their attributes and events.
//! Attribute names follow the OpenTelemetry HTTP semantic conventions where one exists
//! and are prefixed `fusebox.` otherwise; docs/tracing.md lists them.
//!
//! Exists only for sampled requests: an unsampled request has no `RequestSpan` at all.
//! A span dropped without `end` (a cancelled request, an abandoned attempt) is still
//! ended and exported, with `fusebox.cancelled = true` and an error status.

use std::borrow::Cow;
use std::sync::{Mutex, PoisonError};

use http::{HeaderValue, Method};
use opentelemetry::trace::{Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};

use super::traceparent;

/// Event on the server span: a breaker changed state during the request.
pub const EVENT_BREAKER: &str = "breaker.transition";
/// Event on the server span: the answer is a fallback.
pub const EVENT_FALLBACK: &str = "fallback";
/// Event on the server span: fusebox refused the request (or a retry of it).
pub const EVENT_SHED: &str = "shed";

/// The server span of one sampled request. `&self` methods so the request path can
/// pass `Option<&RequestSpan>` down; the span sits behind an uncontended lock.
#[derive(Debug)]
pub struct RequestSpan {
    span: Mutex<Span>,
    /// The span's own context: the parent of every attempt.
    context: SpanContext,
    tracer: SdkTracer,
    /// Copied onto each attempt (`http.request.method`).
    method: Method,
    /// Set by [`Self::end`]; a span dropped without it is marked cancelled.
    ended: bool,
}

impl RequestSpan {
    /// Starts the server span under `parent` (the caller's span, remote) or as a root.
    pub(crate) fn start(
        tracer: &SdkTracer,
        parent: Option<traceparent::Parent>,
        method: &Method,
        request_id: &str,
        correlation_id: &str,
    ) -> RequestSpan {
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                p.trace_id,
                p.span_id,
                opentelemetry::trace::TraceFlags::SAMPLED,
                true,
                Default::default(),
            )),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method_name(method)),
                KeyValue::new("fusebox.request_id", request_id.to_owned()),
                KeyValue::new("fusebox.correlation_id", correlation_id.to_owned()),
            ])
            .start_with_context(tracer, &cx);
        RequestSpan {
            context: span.span_context().clone(),
            span: Mutex::new(span),
            tracer: tracer.clone(),
            method: method.clone(),
            ended: false,
        }
    }

    /// `00-<trace id>-<server span id>-01`: for the access log's `trace_id`, or as the
    /// upstream `traceparent` where no attempt span applies.
    pub fn traceparent(&self) -> HeaderValue {
        traceparent::format(self.context.trace_id(), self.context.span_id(), true)
    }

    /// The route matched: names the span `<method> <path_prefix>` and records
    /// `http.route` (the path prefix), `fusebox.route` (its name) and `fusebox.upstream`.
    pub fn routed(&self, route_name: &str, path_prefix: &str, upstream: &str) {
        self.with_span(|s| {
            s.update_name(format!("{} {path_prefix}", self.method.as_str()));
            s.set_attributes([
                KeyValue::new("http.route", path_prefix.to_owned()),
                KeyValue::new("fusebox.route", route_name.to_owned()),
                KeyValue::new("fusebox.upstream", upstream.to_owned()),
            ]);
        });
    }

    /// Starts the client span of attempt `number` (1 for the first) to `endpoint`
    /// (`host:port`). `retry_reason` says why this attempt was made (`status_503`,
    /// `connect_failure`, `timeout`, `reset`, ...; `None` for the first);
    /// `breaker_state` is the endpoint breaker's state when it let the attempt through
    /// (`closed` or `half_open`).
    pub fn attempt(
        &self,
        number: u32,
        endpoint: &str,
        retry_reason: Option<&str>,
        breaker_state: &'static str,
    ) -> AttemptSpan {
        let (address, port) = split_endpoint(endpoint);
        let mut attrs = Vec::with_capacity(7);
        attrs.push(KeyValue::new(
            "http.request.method",
            method_name(&self.method),
        ));
        attrs.push(KeyValue::new("server.address", address.to_owned()));
        if let Some(port) = port {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        attrs.push(KeyValue::new("fusebox.endpoint", endpoint.to_owned()));
        attrs.push(KeyValue::new("fusebox.attempt", i64::from(number)));
        if let Some(reason) = retry_reason {
            attrs.push(KeyValue::new("fusebox.retry_reason", reason.to_owned()));
        }
        attrs.push(KeyValue::new("fusebox.breaker_state", breaker_state));
        let cx = Context::new().with_remote_span_context(self.context.clone());
        let span = self
            .tracer
            .span_builder(method_name(&self.method))
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &cx);
        AttemptSpan { span, ended: false }
    }

    /// A breaker of `endpoint` went from `from` to `to` during this request.
    pub fn breaker_transition(&self, endpoint: &str, from: &'static str, to: &'static str) {
        self.event(
            EVENT_BREAKER,
            &[
                ("fusebox.endpoint", endpoint),
                ("fusebox.breaker.from", from),
                ("fusebox.breaker.to", to),
            ],
        );
    }

    /// The answer is a fallback: `kind` `static` or `upstream` (then `upstream` names
    /// the second upstream).
    pub fn fallback(&self, kind: &'static str, upstream: Option<&str>) {
        match upstream {
            Some(u) => self.event(
                EVENT_FALLBACK,
                &[("fusebox.fallback.kind", kind), ("fusebox.upstream", u)],
            ),
            None => self.event(EVENT_FALLBACK, &[("fusebox.fallback.kind", kind)]),
        }
    }

    /// fusebox refused the request or a retry of it; `reason` as in
    /// `gateway_proxy_rejected_total` (`overloaded`, `rate_limited`, `priority`,
    /// `deadline`, `budget`, `circuit_open`).
    pub fn shed(&self, reason: &'static str) {
        self.event(EVENT_SHED, &[("fusebox.shed.reason", reason)]);
    }

    /// Any other event, with string attributes.
    pub fn event(&self, name: &'static str, attrs: &[(&'static str, &str)]) {
        let attrs = attrs
            .iter()
            .map(|(k, v)| KeyValue::new(*k, (*v).to_owned()))
            .collect();
        self.with_span(|s| s.add_event(name, attrs));
    }

    /// Ends the server span with the answer's status (`None`: no answer was sent),
    /// when fusebox answered itself its error code (`CIRCUIT_OPEN`, ...), and for a gRPC
    /// call the `grpc-status` the caller got.
    pub fn end(mut self, status: Option<u16>, error_code: Option<&str>, grpc: Option<u8>) {
        self.ended = true;
        let s = self.span.get_mut().unwrap_or_else(PoisonError::into_inner);
        record_outcome(s, status, error_code, grpc, SpanKind::Server);
        s.end();
    }

    /// Ends the server span of an answer the caller left before its end (its body
    /// or a gRPC call's trailers): the status it was sent, and cancelled (an error),
    /// as the access log's `cancelled`.
    pub fn end_cancelled(mut self, status: u16) {
        self.ended = true;
        let s = self.span.get_mut().unwrap_or_else(PoisonError::into_inner);
        s.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        mark_cancelled(s);
    }

    fn with_span(&self, f: impl FnOnce(&mut Span)) {
        f(&mut self.span.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        if !self.ended {
            mark_cancelled(self.span.get_mut().unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// The client span of one upstream attempt.
#[derive(Debug)]
pub struct AttemptSpan {
    span: Span,
    ended: bool,
}

impl AttemptSpan {
    /// `00-<trace id>-<attempt span id>-01`, the `traceparent` to send upstream so the
    /// upstream's spans nest under this attempt.
    pub fn traceparent(&self) -> HeaderValue {
        let cx = self.span.span_context();
        traceparent::format(cx.trace_id(), cx.span_id(), true)
    }

    /// Ends the attempt with the upstream's status, or without one (connect failure,
    /// timeout, reset) and the error code fusebox turned the failure into; for a gRPC
    /// call, with the upstream's `grpc-status` (from its headers or its trailers).
    pub fn end(mut self, status: Option<u16>, error_code: Option<&str>, grpc: Option<u8>) {
        self.ended = true;
        record_outcome(&mut self.span, status, error_code, grpc, SpanKind::Client);
        self.span.end();
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if !self.ended {
            mark_cancelled(&mut self.span);
        }
    }
}

/// gRPC codes that make a server span an error (the RPC semantic conventions: the
/// server's own faults, not the caller's): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
/// INTERNAL, UNAVAILABLE, DATA_LOSS. On a client span every code but OK is an error.
const GRPC_SERVER_ERRORS: [u8; 6] = [2, 4, 12, 13, 14, 15];

/// Status and error attributes, as the semantic conventions say. HTTP: statuses from
/// 500 up on the server span, from 400 up on a client span, and a missing status are
/// errors. gRPC (`grpc` is the call's status): `rpc.grpc.status_code`, and the error
/// follows the code (an HTTP 200 carrying UNAVAILABLE is a failed call). `error.type`
/// is fusebox's code, else the gRPC code, else the HTTP status.
fn record_outcome(
    s: &mut Span,
    status: Option<u16>,
    error_code: Option<&str>,
    grpc: Option<u8>,
    kind: SpanKind,
) {
    if let Some(st) = status {
        s.set_attribute(KeyValue::new("http.response.status_code", i64::from(st)));
    }
    if let Some(g) = grpc {
        s.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(g)));
    }
    if let Some(code) = error_code {
        s.set_attribute(KeyValue::new("fusebox.error_code", code.to_owned()));
    }
    let client = kind == SpanKind::Client;
    let failed = match (grpc, status) {
        (_, None) => true,
        (Some(g), Some(_)) if client => g != 0,
        (Some(g), Some(_)) => GRPC_SERVER_ERRORS.contains(&g),
        (None, Some(st)) => st >= if client { 400 } else { 500 },
    };
    if failed {
        let kind: Cow<'static, str> = match (error_code, grpc, status) {
            (Some(code), ..) => code.to_owned().into(),
            (None, Some(g), _) => g.to_string().into(),
            (None, None, Some(st)) => st.to_string().into(),
            (None, None, None) => "_OTHER".into(),
        };
        s.set_attribute(KeyValue::new("error.type", kind.clone()));
        s.set_status(Status::error(kind));
    }
}

fn mark_cancelled(s: &mut Span) {
    s.set_attribute(KeyValue::new("fusebox.cancelled", true));
    s.set_status(Status::error("cancelled"));
    s.end();
}

/// The method's name without allocating for the standard ones.
fn method_name(m: &Method) -> Cow<'static, str> {
    match *m {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::PUT => "PUT".into(),
        Method::DELETE => "DELETE".into(),
        Method::PATCH => "PATCH".into(),
        Method::HEAD => "HEAD".into(),
        Method::OPTIONS => "OPTIONS".into(),
        _ => m.as_str().to_owned().into(),
    }
}

/// `host:port`, `[v6]:port` or a bare host -> (host, port).
pub(crate) fn split_endpoint(endpoint: &str) -> (&str, Option<u16>) {
    if let Some(rest) = endpoint.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (host, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host, Some(p)),
            Err(_) => (endpoint, None),
        },
        _ => (endpoint, None),
    }
}

#[cfg(test)]
mod tests {
    use super::split_endpoint;

    #[test]
    fn endpoints_split_into_address_and_port() {
        assert_eq!(split_endpoint("127.0.0.1:9001"), ("127.0.0.1", Some(9001)));
        assert_eq!(split_endpoint("yolo.svc:80"), ("yolo.svc", Some(80)));
        assert_eq!(split_endpoint("[::1]:9001"), ("::1", Some(9001)));
        assert_eq!(split_endpoint("yolo.svc"), ("yolo.svc", None));
        assert_eq!(split_endpoint("::1"), ("::1", None));
    }
}
