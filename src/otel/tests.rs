//! Settings validation, the endpoint URL, and the queue's drop counting against
//! in-process exporters (the wire format is tested in tests/otel_export.rs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};

use super::processor::{QueueProcessor, MAX_BATCH};
use super::*;

fn counter() -> IntCounter {
    IntCounter::new("dropped", "test").unwrap()
}

#[test]
fn spans_can_cross_await_points_and_tasks() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tracing>();
    send_sync::<RequestSpan>();
    send_sync::<AttemptSpan>();
}

#[test]
fn the_traces_url_is_the_endpoint_plus_v1_traces() {
    let url = |e: &str| traces_url(e).map(|u| u.to_string());
    assert_eq!(
        url("http://collector:4318").unwrap(),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        url("http://collector:4318/").unwrap(),
        "http://collector:4318/v1/traces"
    );
    assert_eq!(
        url("https://otlp.example/tenant/").unwrap(),
        "https://otlp.example/tenant/v1/traces"
    );
    for bad in [
        "collector:4318",
        "ftp://collector",
        "http://",
        "http://c/?x=1",
        "",
    ] {
        assert!(url(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn invalid_settings_are_refused() {
    let with = |f: fn(&mut OtelSettings)| {
        let mut s = OtelSettings::new("http://127.0.0.1:4318");
        f(&mut s);
        Tracing::new(s, counter()).map(|_| ())
    };
    assert!(with(|_| {}).is_ok());
    assert!(matches!(
        with(|s| s.sample_ratio = 1.5),
        Err(OtelError::SampleRatio(_))
    ));
    assert!(matches!(
        with(|s| s.sample_ratio = f64::NAN),
        Err(OtelError::SampleRatio(_))
    ));
    assert!(matches!(
        with(|s| s.max_queue = 0),
        Err(OtelError::MaxQueue)
    ));
    assert!(matches!(
        with(|s| s.export_timeout = Duration::ZERO),
        Err(OtelError::ExportTimeout)
    ));
    assert!(matches!(
        with(|s| s.endpoint = "collector:4318".into()),
        Err(OtelError::Endpoint { .. })
    ));
}

/// An exporter that records how many spans it was given and then fails, succeeds or
/// never answers.
#[derive(Debug, Clone)]
struct Fake {
    outcome: Outcome,
    seen: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, Copy)]
enum Outcome {
    Ok,
    Fail,
    Hang,
}

impl SpanExporter for Fake {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.seen.fetch_add(batch.len(), Ordering::SeqCst);
        match self.outcome {
            Outcome::Ok => Ok(()),
            Outcome::Fail => Err(OTelSdkError::InternalFailure("collector said no".into())),
            Outcome::Hang => std::future::pending().await,
        }
    }
}

fn provider(
    outcome: Outcome,
    max_queue: usize,
    timeout: Duration,
) -> (
    SdkTracerProvider,
    processor::QueueHandle,
    Arc<AtomicUsize>,
    IntCounter,
) {
    let seen = Arc::new(AtomicUsize::new(0));
    let dropped = counter();
    let fake = Fake {
        outcome,
        seen: seen.clone(),
    };
    let (p, handle) = QueueProcessor::start(fake, max_queue, timeout, dropped.clone()).unwrap();
    let provider = SdkTracerProvider::builder().with_span_processor(p).build();
    (provider, handle, seen, dropped)
}

fn end_spans(provider: &SdkTracerProvider, n: usize) {
    let tracer = provider.tracer("test");
    for _ in 0..n {
        tracer.start("s").end();
    }
}

#[tokio::test]
async fn exported_spans_are_not_counted() {
    let (provider, handle, seen, dropped) = provider(Outcome::Ok, 2048, Duration::from_secs(5));
    end_spans(&provider, 700);
    assert!(
        handle.call(false, Duration::from_secs(5)).await,
        "flush in time"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 700);
    assert_eq!(dropped.get(), 0);
}

#[tokio::test]
async fn every_span_of_a_failed_export_is_counted() {
    let (provider, handle, seen, dropped) = provider(Outcome::Fail, 2048, Duration::from_secs(5));
    end_spans(&provider, 700);
    assert!(
        handle.call(false, Duration::from_secs(5)).await,
        "flush in time"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 700, "two batches were tried");
    assert_eq!(dropped.get(), 700);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_waiting() {
    // The exporter never answers: it holds at most one batch, the queue two spans.
    let (provider, handle, _seen, dropped) = provider(Outcome::Hang, 2, Duration::from_secs(30));
    let started = Instant::now();
    end_spans(&provider, MAX_BATCH + 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "ending spans never waits"
    );
    // No export has failed yet (it hangs for 30 s): these are overflow drops alone.
    assert!(dropped.get() >= 200 - 2, "dropped {}", dropped.get());
    // Shutting down is bounded even while the exporter hangs (whether the thread was
    // inside an export or could still try one, it answers or is given up on in time).
    let asked = Instant::now();
    handle.call(true, Duration::from_millis(200)).await;
    assert!(asked.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn spans_ended_after_shutdown_are_counted() {
    let (provider, handle, seen, dropped) = provider(Outcome::Ok, 16, Duration::from_secs(5));
    assert!(handle.call(true, Duration::from_secs(5)).await);
    end_spans(&provider, 3);
    assert_eq!(dropped.get(), 3);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
}
