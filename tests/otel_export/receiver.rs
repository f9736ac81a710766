//! The test's OTLP/HTTP collector: a hyper server on 127.0.0.1:0 that accepts
//! `POST /v1/traces`, decodes the body with the official protobuf definitions
//! (`opentelemetry-proto`) and records it, or hangs, or answers an error status; and
//! the helpers the tests share.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fusebox::otel::{OtelSettings, Tracing};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prometheus::IntCounter;
use prost::Message;

/// Bound on anything that should happen soon (two shared cores).
pub const WAIT: Duration = Duration::from_secs(10);

/// One export request as the receiver got it.
pub struct Export {
    pub headers: HeaderMap,
    pub body: ExportTraceServiceRequest,
}

#[derive(Clone, Copy)]
pub enum Mode {
    /// Records and answers 200.
    Answer,
    /// Reads the request, never answers.
    Hang,
    /// Answers this status without recording.
    Status(u16),
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Export>>>,
    /// Connections accepted.
    pub conns: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(mode: Mode) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let store = got.clone();
        let conns = Arc::new(AtomicUsize::new(0));
        let accepted = conns.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let store = store.clone();
                let svc = service_fn(move |req| handle(req, mode, store.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        Receiver { addr, got, conns }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Span> {
        let got = self.got.lock().unwrap();
        got.iter()
            .flat_map(|e| &e.body.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

async fn handle(
    req: Request<Incoming>,
    mode: Mode,
    store: Arc<Mutex<Vec<Export>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST || req.uri().path() != "/v1/traces" {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    match mode {
        Mode::Answer => {}
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Status(code) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::from_u16(code).unwrap();
            return Ok(resp);
        }
    }
    let body = ExportTraceServiceRequest::decode(bytes).expect("an OTLP protobuf body");
    store.lock().unwrap().push(Export {
        headers: parts.headers,
        body,
    });
    let answer = ExportTraceServiceResponse::default().encode_to_vec();
    let mut resp = Response::new(Full::new(Bytes::from(answer)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(resp)
}

pub fn settings(endpoint: String, ratio: f64) -> OtelSettings {
    let mut s = OtelSettings::new(endpoint);
    s.sample_ratio = ratio;
    s.export_timeout = Duration::from_secs(5);
    s
}

pub fn counter() -> IntCounter {
    IntCounter::new("gateway_tracing_spans_dropped_total", "test").unwrap()
}

pub fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    find(&span.attributes, key)
}

pub fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

pub fn s(v: &str) -> Value {
    Value::StringValue(v.to_owned())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Polls `cond` every 5 ms until it holds; panics with `what` after `bound`.
pub async fn eventually(what: &str, bound: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Ends `n` request spans with one attempt each (2n spans) and returns how long all the
/// `end` calls took.
pub fn end_requests(tracing: &Tracing, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let id = i.to_string();
        let req = tracing.start_request(None, &Method::GET, &id, &id).unwrap();
        req.attempt(1, "127.0.0.1:9001", None, "closed")
            .end(Some(200), None, None);
        req.end(Some(200), None, None);
    }
    started.elapsed()
}
