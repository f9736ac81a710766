//! Typed errors of the request path and the one function that turns them into the
//! contract's answer (JSON body + `x-fusebox-error`, or a gRPC-shaped trailers-only
//! response for gRPC callers). Turning an error into a response logs nothing: the access
//! log does.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::resp_body::RespBody;

/// The error codes of DESIGN.md, each with its fixed HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NoRoute,
    CircuitOpen,
    UpstreamConnectFailed,
    UpstreamReset,
    UpstreamTimeout,
    DeadlineExceeded,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    RequestTimeout,
    BadRequest,
    /// Route `fault` injection aborted the request (its status is the configured one).
    FaultInjected,
}

/// Which side caused an error (pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The upstream failed or did not answer in time.
    Upstream,
    /// The caller: unknown route, bad or oversized request, a body that stalled.
    Downstream,
    /// fusebox's own policy refused it: open breakers, shedding, limits, fault injection.
    Internal,
}

/// Whether a request that failed this way may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retryable {
    /// Nothing reached the upstream: safe for every method.
    Always,
    /// The upstream may have acted on it: only idempotent or keyed requests.
    IfIdempotent,
    Never,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoRoute => "NO_ROUTE",
            ErrorCode::CircuitOpen => "CIRCUIT_OPEN",
            ErrorCode::UpstreamConnectFailed => "UPSTREAM_CONNECT_FAILED",
            ErrorCode::UpstreamReset => "UPSTREAM_RESET",
            ErrorCode::UpstreamTimeout => "UPSTREAM_TIMEOUT",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::RequestTooLarge => "REQUEST_TOO_LARGE",
            ErrorCode::RequestTimeout => "REQUEST_TIMEOUT",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::FaultInjected => "FAULT_INJECTED",
        }
    }

    pub fn side(self) -> Side {
        match self {
            ErrorCode::UpstreamConnectFailed
            | ErrorCode::UpstreamReset
            | ErrorCode::UpstreamTimeout
            | ErrorCode::DeadlineExceeded => Side::Upstream,
            ErrorCode::NoRoute
            | ErrorCode::RequestTooLarge
            | ErrorCode::RequestTimeout
            | ErrorCode::BadRequest => Side::Downstream,
            ErrorCode::CircuitOpen
            | ErrorCode::Overloaded
            | ErrorCode::RateLimited
            | ErrorCode::FaultInjected => Side::Internal,
        }
    }

    pub fn retryable(self) -> Retryable {
        match self {
            ErrorCode::UpstreamConnectFailed => Retryable::Always,
            ErrorCode::UpstreamReset | ErrorCode::UpstreamTimeout => Retryable::IfIdempotent,
            _ => Retryable::Never,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NoRoute => StatusCode::NOT_FOUND,
            ErrorCode::CircuitOpen | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamConnectFailed | ErrorCode::UpstreamReset => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout | ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::FaultInjected => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status a gRPC caller sees for this case.
    pub fn grpc_status(self) -> u8 {
        match self {
            ErrorCode::NoRoute => 12, // UNIMPLEMENTED
            ErrorCode::UpstreamTimeout
            | ErrorCode::DeadlineExceeded
            | ErrorCode::RequestTimeout => 4, // DEADLINE_EXCEEDED
            ErrorCode::RateLimited | ErrorCode::RequestTooLarge => 8, // RESOURCE_EXHAUSTED
            ErrorCode::BadRequest => 13, // INTERNAL (gRPC's own mapping of HTTP 400)
            _ => 14,                  // UNAVAILABLE
        }
    }
}

/// An error fusebox answers itself.
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProxyError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    /// The upstream involved, when there is one (it goes in the body).
    pub upstream: Option<std::sync::Arc<str>>,
    /// `Retry-After` seconds for CIRCUIT_OPEN, OVERLOADED and RATE_LIMITED.
    pub retry_after: Option<Duration>,
    /// A status other than the code's own (an injected fault's configured status).
    pub status: Option<StatusCode>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            upstream: None,
            retry_after: None,
            status: None,
            source: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub fn side(&self) -> Side {
        self.code.side()
    }

    pub fn retryable(&self) -> Retryable {
        self.code.retryable()
    }

    pub fn upstream(mut self, name: &std::sync::Arc<str>) -> Self {
        self.upstream = Some(name.clone());
        self
    }

    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    pub fn source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(e));
        self
    }

    /// The contract's answer for this error. `request_id` / `correlation_id` go in the
    /// body; the caller stamps the id headers.
    /// The contract's JSON error body.
    pub fn json_body(&self, request_id: &str, correlation_id: &str) -> String {
        serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "upstream": self.upstream.as_deref(),
                "request_id": request_id,
                "correlation_id": correlation_id,
            }
        })
        .to_string()
    }

    pub fn to_response(
        &self,
        grpc: bool,
        request_id: &HeaderValue,
        correlation_id: &HeaderValue,
    ) -> Response<RespBody> {
        let code_hdr = HeaderValue::from_static(self.code.as_str());
        let mut builder = Response::builder().header("x-fusebox-error", code_hdr);
        if self.code == ErrorCode::FaultInjected {
            // Marked so nobody mistakes a rehearsed failure for a real one.
            builder = builder.header("x-fusebox-fault", "abort");
        }
        if let Some(ra) = self.retry_after {
            // Round up: a client that waits the advertised seconds must find it open.
            let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
            builder = builder.header(RETRY_AFTER, secs.max(1));
        }
        let resp = if grpc {
            let msg = percent_encode_grpc(&self.message);
            builder
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, "application/grpc")
                .header("grpc-status", u16::from(self.code.grpc_status()))
                .header("grpc-message", msg)
                .body(RespBody::empty())
        } else {
            let body = self.json_body(
                request_id.to_str().unwrap_or(""),
                correlation_id.to_str().unwrap_or(""),
            );
            builder
                .status(self.status.unwrap_or(self.code.status()))
                .header(CONTENT_TYPE, "application/json")
                .body(RespBody::full(Bytes::from(body)))
        };
        // The builder only fails on invalid header values; every value above is valid.
        resp.unwrap_or_else(|_| {
            let mut r = Response::new(RespBody::empty());
            *r.status_mut() = self.status.unwrap_or(self.code.status());
            r
        })
    }
}

/// gRPC's `grpc-message` is percent-encoded (gRPC HTTP/2 spec: bytes outside 0x20-0x7E
/// and `%`).
fn percent_encode_grpc(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    for b in msg.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(e: ProxyError) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let rid = HeaderValue::from_static("rid-1");
        let cid = HeaderValue::from_static("cid-1");
        let resp = e.to_response(false, &rid, &cid);
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_code_maps_to_its_status_and_body() {
        let cases = [
            (ErrorCode::NoRoute, 404),
            (ErrorCode::CircuitOpen, 503),
            (ErrorCode::UpstreamConnectFailed, 502),
            (ErrorCode::UpstreamReset, 502),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::DeadlineExceeded, 504),
            (ErrorCode::Overloaded, 503),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::RequestTooLarge, 413),
            (ErrorCode::RequestTimeout, 408),
            (ErrorCode::BadRequest, 400),
            (ErrorCode::FaultInjected, 503),
        ];
        for (code, status) in cases {
            let up: std::sync::Arc<str> = "yolo".into();
            let (st, headers, body) = json_of(ProxyError::new(code, "msg").upstream(&up)).await;
            assert_eq!(st.as_u16(), status, "{code:?}");
            assert_eq!(headers["x-fusebox-error"], code.as_str());
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(body["error"]["code"], code.as_str());
            assert_eq!(body["error"]["message"], "msg");
            assert_eq!(body["error"]["upstream"], "yolo");
            assert_eq!(body["error"]["request_id"], "rid-1");
            assert_eq!(body["error"]["correlation_id"], "cid-1");
        }
    }

    #[tokio::test]
    async fn retry_after_is_rounded_up_to_whole_seconds() {
        let e = ProxyError::new(ErrorCode::CircuitOpen, "open")
            .retry_after(Duration::from_millis(1200));
        let (_, headers, _) = json_of(e).await;
        assert_eq!(headers[RETRY_AFTER], "2");
    }

    #[test]
    fn grpc_callers_get_grpc_status() {
        let rid = HeaderValue::from_static("r");
        let e = ProxyError::new(ErrorCode::CircuitOpen, "all 100% open");
        let resp = e.to_response(true, &rid, &rid);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-message"], "all 100%25 open");
        assert_eq!(resp.headers()["x-fusebox-error"], "CIRCUIT_OPEN");
    }
}
