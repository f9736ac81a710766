//! OpenTelemetry trace export: what fusebox records about a sampled request (one server
//! span, one client span per upstream attempt, events for breaker transitions,
//! fallbacks and shedding) and how it leaves the process (OTLP over HTTP/protobuf to
//! `<endpoint>/v1/traces`, from a bounded queue on a thread of its own).
//!
//! The request path sees three calls: [`Tracing::start_request`] decides first and
//! builds nothing when the request is not sampled (`None`); [`RequestSpan::attempt`]
//! per attempt, whose [`AttemptSpan::traceparent`] goes upstream; `end` on each. Ending
//! a span never blocks: a full queue or a failed export drops spans and counts them in
//! `gateway_tracing_spans_dropped_total`. docs/tracing.md is the operator's view.
//!
//! Built once at startup ([`Tracing::new`]), shared by reference or clone (cheap);
//! [`Tracing::shutdown`] flushes within a bound at exit.
//!
//! Wiring it into the request path:
//! - pass `start_request` the caller's `traceparent` as received, before
//!   `correlate` replaces it;
//! - send each attempt's [`AttemptSpan::traceparent`] upstream instead of the one
//!   `correlate` made, and log [`RequestSpan::traceparent`]'s trace id in the access
//!   log (for a request without an incoming `traceparent` the trace id is new, not
//!   the one `correlate` drew);
//! - for a request that is not sampled, the upstream `traceparent` should say so
//!   (flag `00`, [`traceparent::format`]): `correlate` sets `01` on the ones it creates;
//! - call [`RequestSpan::routed`] when a route matched, the event helpers where the
//!   breaker, fallback and admission decide, and `end` with the answer; a span dropped
//!   without `end` is exported as cancelled.

mod client;
mod processor;
mod span;
pub mod traceparent;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, RetryPolicy, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, SpanExporter as _};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;

pub use processor::{EXPORT_DELAY, MAX_BATCH};
pub use span::{AttemptSpan, RequestSpan, EVENT_BREAKER, EVENT_FALLBACK, EVENT_SHED};

/// Share of requests without a valid `traceparent` that are sampled (the `[tracing]`
/// example's value): at 200 requests a second, ten traces a second.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.05;
/// Spans waiting for export (the OpenTelemetry SDK's default queue size): about 7 s of
/// 100 sampled requests a second with two attempts each (three spans), a few MiB.
pub const DEFAULT_MAX_QUEUE: usize = 2048;
/// Bound on one export request, connect included (OTLP's default timeout).
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `service.name` of fusebox's spans when the config names none.
pub const DEFAULT_SERVICE_NAME: &str = "fusebox";

/// How traces are exported; the config layer maps `[tracing]` onto it.
#[derive(Debug, Clone)]
pub struct OtelSettings {
    /// The collector's OTLP/HTTP base URL, `http(s)://host:port` (a path prefix is kept);
    /// spans are posted to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// Sent on every export request (an `authorization` token for a hosted backend).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// 0.0..=1.0: share of requests without a valid `traceparent` that are sampled.
    pub sample_ratio: f64,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// Spans queued for export, at least 1; past it new spans are dropped and counted.
    pub max_queue: usize,
    /// Bound on one export request; a batch that misses it is dropped and counted.
    pub export_timeout: Duration,
}

impl OtelSettings {
    /// Settings for `endpoint` with every other field at its default.
    pub fn new(endpoint: impl Into<String>) -> OtelSettings {
        OtelSettings {
            endpoint: endpoint.into(),
            headers: Vec::new(),
            sample_ratio: DEFAULT_SAMPLE_RATIO,
            service_name: DEFAULT_SERVICE_NAME.to_owned(),
            max_queue: DEFAULT_MAX_QUEUE,
            export_timeout: DEFAULT_EXPORT_TIMEOUT,
        }
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("tracing endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("tracing sample_ratio must be between 0.0 and 1.0, not {0}")]
    SampleRatio(f64),
    #[error("tracing max_queue must be at least 1")]
    MaxQueue,
    #[error("tracing export_timeout must be longer than zero")]
    ExportTimeout,
    #[error("tracing endpoint TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot start the trace export thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The tracer of the process. Cheap to clone; every clone feeds the same queue.
#[derive(Clone, Debug)]
pub struct Tracing {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    queue: processor::QueueHandle,
    sample_ratio: f64,
    export_timeout: Duration,
}

impl Tracing {
    /// Validates `settings`, builds the OTLP exporter and starts the export thread.
    /// `dropped` is `gateway_tracing_spans_dropped_total`. Needs no runtime.
    pub fn new(settings: OtelSettings, dropped: IntCounter) -> Result<Tracing, OtelError> {
        let s = settings;
        if !(0.0..=1.0).contains(&s.sample_ratio) {
            return Err(OtelError::SampleRatio(s.sample_ratio));
        }
        if s.max_queue == 0 {
            return Err(OtelError::MaxQueue);
        }
        if s.export_timeout.is_zero() {
            return Err(OtelError::ExportTimeout);
        }
        let traces_url = traces_url(&s.endpoint)?;
        let tls = match traces_url.scheme_str() {
            Some("https") => {
                let host = traces_url.host().unwrap_or_default();
                let connector =
                    tokio_rustls::TlsConnector::from(crate::tls::client_config(None, false)?);
                Some((connector, crate::tls::server_name(None, host)?))
            }
            _ => None,
        };
        let client = client::CollectorClient::new(&traces_url, tls, s.headers, s.export_timeout)
            .map_err(|reason| OtelError::Endpoint {
                endpoint: s.endpoint.clone(),
                reason,
            })?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url.to_string())
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(s.export_timeout)
            .with_http_client(client)
            // One attempt per batch: a sidecar drops and counts rather than piling up
            // retries behind a struggling collector.
            .with_retry_policy(RetryPolicy::disabled())
            .build()?;
        let resource = Resource::builder()
            .with_service_name(s.service_name)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        exporter.set_resource(&resource);
        let (processor, queue) =
            processor::QueueProcessor::start(exporter, s.max_queue, s.export_timeout, dropped)?;
        let provider = SdkTracerProvider::builder()
            // The decision is made in `start_request`; whatever reaches the SDK is sampled.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .with_span_processor(processor)
            .build();
        let tracer = provider.tracer("fusebox");
        Ok(Tracing {
            inner: Arc::new(Inner {
                tracer,
                provider,
                queue,
                sample_ratio: s.sample_ratio,
                export_timeout: s.export_timeout,
            }),
        })
    }

    /// The server span of a request, or `None` when it is not sampled (then nothing was
    /// built: no span, no allocation). `incoming` is the caller's `traceparent` as
    /// received, before fusebox rewrites it.
    pub fn start_request(
        &self,
        incoming: Option<&HeaderValue>,
        method: &Method,
        request_id: &str,
        correlation_id: &str,
    ) -> Option<RequestSpan> {
        let i = &self.inner;
        match traceparent::decide(incoming, i.sample_ratio, rand::random::<f64>) {
            traceparent::Decision::Drop => None,
            traceparent::Decision::Sample(parent) => Some(RequestSpan::start(
                &i.tracer,
                parent,
                method,
                request_id,
                correlation_id,
            )),
        }
    }

    /// Exports what is queued, spending at most the export timeout, then stops; spans
    /// still open, and any started later, record nothing. Spans it could not export
    /// in time are counted as dropped. `false` if the export thread did not answer
    /// within the bound (it was inside an export that had not timed out yet).
    pub async fn shutdown(&self) -> bool {
        let i = &self.inner;
        let done = i.queue.call(true, i.export_timeout).await;
        // Returns at once: the processor was shut above. Later spans are not recorded.
        let _ = i.provider.shutdown();
        done
    }

    /// Exports what is queued now, spending at most the export timeout (spans left
    /// over stay queued); `false` if the export thread did not answer in time.
    pub async fn flush(&self) -> bool {
        let i = &self.inner;
        i.queue.call(false, i.export_timeout).await
    }
}

impl Drop for Inner {
    /// The last clone is gone without [`Tracing::shutdown`]: the export thread finishes
    /// on its own, so that the provider's drop (which would wait for it) returns at once.
    fn drop(&mut self) {
        self.queue.stop_in_background(self.export_timeout);
    }
}

/// `<endpoint>/v1/traces`, checking the endpoint is `http(s)://host[:port][/prefix]`.
fn traces_url(endpoint: &str) -> Result<Uri, OtelError> {
    let bad = |reason: &str| OtelError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad("expected http://host:port or https://host:port"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.query().is_some() {
        return Err(bad("a query is not allowed"));
    }
    let prefix = uri.path().trim_end_matches('/');
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let scheme = uri.scheme_str().unwrap_or("http");
    format!("{scheme}://{authority}{prefix}/v1/traces")
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))
}

#[cfg(test)]
mod tests;
