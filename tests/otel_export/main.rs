//! OpenTelemetry export over real loopback sockets: the `otel` module's spans, sampling,
//! drop counting and export headers as an OTLP/HTTP collector in the test
//! ([`receiver`]) receives them. Nothing sleeps and hopes: waits poll a condition up to
//! a bound.

mod alloc_count;
mod receiver;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fusebox::otel::Tracing;
use http::{HeaderName, HeaderValue, Method};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

use receiver::{
    attr, counter, end_requests, eventually, find, hex, s, settings, Mode, Receiver, WAIT,
};

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const INCOMING_UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

/// Proves: a sampled incoming traceparent gives one server span (its trace id kept, the
/// caller's span as parent) and one client span per attempt under it, with the
/// attempt attributes, the events, the outcome, and each attempt's traceparent naming
/// that attempt's own span.
#[tokio::test]
async fn a_request_with_two_attempts_is_one_trace() {
    let rx = Receiver::start(Mode::Answer).await;
    let tracing = Tracing::new(settings(rx.endpoint(), 0.0), counter()).unwrap();
    let incoming = HeaderValue::from_static(INCOMING);
    let req = tracing
        .start_request(Some(&incoming), &Method::POST, "req-1", "corr-1")
        .expect("a sampled caller is followed even at ratio 0");
    req.routed("detect", "/detect", "yolo");
    let first = req.attempt(1, "127.0.0.1:9001", None, "closed");
    let first_tp = first.traceparent();
    first.end(Some(503), None, None);
    req.breaker_transition("127.0.0.1:9001", "closed", "open");
    let second = req.attempt(2, "127.0.0.1:9002", Some("status_503"), "half_open");
    let second_tp = second.traceparent();
    second.end(Some(200), None, None);
    req.end(Some(200), None, None);
    assert!(tracing.shutdown().await, "flushed within the bound");

    let spans = rx.spans();
    assert_eq!(spans.len(), 3, "one server and two client spans");
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| match attr(s, "fusebox.attempt") {
        Some(Value::IntValue(n)) => *n,
        _ => 0,
    });
    assert_eq!(clients.len(), 2);

    for span in &spans {
        assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.name, "POST /detect");
    assert_eq!(attr(server, "http.request.method"), Some(&s("POST")));
    assert_eq!(attr(server, "http.route"), Some(&s("/detect")));
    assert_eq!(attr(server, "fusebox.route"), Some(&s("detect")));
    assert_eq!(attr(server, "fusebox.upstream"), Some(&s("yolo")));
    assert_eq!(attr(server, "fusebox.request_id"), Some(&s("req-1")));
    assert_eq!(attr(server, "fusebox.correlation_id"), Some(&s("corr-1")));
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(attr(server, "error.type"), None);
    let event = &server.events[0];
    assert_eq!(event.name, "breaker.transition");
    assert_eq!(
        find(&event.attributes, "fusebox.breaker.to"),
        Some(&s("open"))
    );

    for (n, (client, tp)) in clients.iter().zip([&first_tp, &second_tp]).enumerate() {
        assert_eq!(
            client.parent_span_id, server.span_id,
            "attempt {n} under the server span"
        );
        let own = format!(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
            hex(&client.span_id)
        );
        assert_eq!(tp.to_str().unwrap(), own, "attempt {n}'s traceparent");
        assert_eq!(attr(client, "server.address"), Some(&s("127.0.0.1")));
        assert_eq!(attr(client, "http.request.method"), Some(&s("POST")));
    }
    let (c1, c2) = (clients[0], clients[1]);
    assert_eq!(attr(c1, "server.port"), Some(&Value::IntValue(9001)));
    assert_eq!(attr(c1, "fusebox.retry_reason"), None);
    assert_eq!(attr(c1, "fusebox.breaker_state"), Some(&s("closed")));
    assert_eq!(attr(c1, "error.type"), Some(&s("503")));
    assert_eq!(attr(c2, "fusebox.attempt"), Some(&Value::IntValue(2)));
    assert_eq!(attr(c2, "fusebox.retry_reason"), Some(&s("status_503")));
    assert_eq!(attr(c2, "fusebox.breaker_state"), Some(&s("half_open")));
    assert_eq!(
        attr(c2, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );

    let got = rx.got.lock().unwrap();
    let resource = got[0].body.resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(
        find(&resource.attributes, "service.name"),
        Some(&s("fusebox"))
    );
}

/// Proves: an incoming `00` flag is followed even at ratio 1, a missing traceparent at
/// ratio 0 is not sampled, and at ratio 1 it is (a root span): exactly the sampled
/// ones reach the receiver.
#[tokio::test]
async fn sampling_follows_the_caller_then_the_ratio() {
    let unsampled = HeaderValue::from_static(INCOMING_UNSAMPLED);
    let sampled = HeaderValue::from_static(INCOMING);

    let rx = Receiver::start(Mode::Answer).await;
    let never = Tracing::new(settings(rx.endpoint(), 0.0), counter()).unwrap();
    assert!(never
        .start_request(Some(&unsampled), &Method::GET, "a", "a")
        .is_none());
    assert!(never.start_request(None, &Method::GET, "b", "b").is_none());
    let bogus = HeaderValue::from_static("00-zz-01");
    assert!(never
        .start_request(Some(&bogus), &Method::GET, "c", "c")
        .is_none());
    never
        .start_request(Some(&sampled), &Method::GET, "d", "d")
        .expect("sampled caller")
        .end(Some(200), None, None);
    assert!(never.shutdown().await);
    let spans = rx.spans();
    assert_eq!(spans.len(), 1, "only the sampled caller's request");
    assert_eq!(attr(&spans[0], "fusebox.request_id"), Some(&s("d")));

    let rx = Receiver::start(Mode::Answer).await;
    let always = Tracing::new(settings(rx.endpoint(), 1.0), counter()).unwrap();
    assert!(always
        .start_request(Some(&unsampled), &Method::GET, "e", "e")
        .is_none());
    always
        .start_request(None, &Method::GET, "f", "f")
        .expect("ratio 1 samples every request without a traceparent")
        .end(Some(204), None, None);
    assert!(always.shutdown().await);
    let spans = rx.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(attr(&spans[0], "fusebox.request_id"), Some(&s("f")));
    assert!(spans[0].parent_span_id.is_empty(), "a root span");
    assert_eq!(spans[0].trace_id.len(), 16);
}

/// Proves: with the collector refusing connections, ending 1,000 requests never waits
/// and every span lost in the failed exports is counted (the queue is large enough
/// that none overflowed, so each count is a failed export).
#[tokio::test]
async fn a_refused_collector_costs_requests_nothing_and_is_counted() {
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let addr = closed.local_addr().unwrap().as_socket().unwrap();
    let dropped = counter();
    let mut s = settings(format!("http://{addr}"), 1.0);
    s.max_queue = 4096;
    let tracing = Tracing::new(s, dropped.clone()).unwrap();
    ends_without_blocking(&tracing, 1000).await;
    eventually("every span counted as dropped", WAIT, || {
        dropped.get() == 2000
    })
    .await;
    drop(closed);
}

/// Ends `n` request spans (with one attempt each) on a blocking thread: ending a span
/// never waits for the export, so they all end; a hang guard (not a speed bound) fails
/// the test if ending ever blocked.
async fn ends_without_blocking(tracing: &Tracing, n: usize) {
    let t = tracing.clone();
    let ends = tokio::task::spawn_blocking(move || end_requests(&t, n));
    match tokio::time::timeout(WAIT, ends).await {
        Ok(done) => drop(done.expect("the ending thread")),
        Err(_) => panic!("ending {n} spans blocked on the export"),
    }
}

/// Proves: a collector that accepts but never answers costs requests nothing; each
/// export gives up at the export timeout and its spans are counted.
#[tokio::test]
async fn a_hanging_collector_costs_requests_nothing_and_is_counted() {
    let rx = Receiver::start(Mode::Hang).await;
    let dropped = counter();
    let mut s = settings(rx.endpoint(), 1.0);
    s.max_queue = 4096;
    s.export_timeout = Duration::from_millis(300);
    let tracing = Tracing::new(s, dropped.clone()).unwrap();
    ends_without_blocking(&tracing, 1000).await;
    eventually("every span counted as dropped", WAIT, || {
        dropped.get() == 2000
    })
    .await;
    assert!(rx.got.lock().unwrap().is_empty());
}

/// Proves: with a tiny queue behind a hanging collector, spans that do not fit are
/// dropped and counted at once, before any export has had time to fail.
#[tokio::test]
async fn a_full_queue_drops_and_counts_at_once() {
    let rx = Receiver::start(Mode::Hang).await;
    let dropped = counter();
    let mut s = settings(rx.endpoint(), 1.0);
    s.max_queue = 4;
    s.export_timeout = Duration::from_secs(30);
    let tracing = Tracing::new(s, dropped.clone()).unwrap();
    ends_without_blocking(&tracing, 1000).await;
    // 2,000 spans; at most one batch (512) is with the hanging export and 4 are queued.
    // No export can have failed yet (the timeout is 30 s), so these are all overflow.
    let overflow = dropped.get();
    assert!(overflow >= 2000 - 512 - 4, "overflow drops: {overflow}");
}

/// Proves: a collector that answers an error status (here 401, a wrong token) loses
/// the batch, and it is counted.
#[tokio::test]
async fn a_collector_error_status_is_counted() {
    let rx = Receiver::start(Mode::Status(401)).await;
    let dropped = counter();
    let tracing = Tracing::new(settings(rx.endpoint(), 1.0), dropped.clone()).unwrap();
    end_requests(&tracing, 3);
    assert!(tracing.flush().await);
    assert_eq!(dropped.get(), 6);
}

/// Proves: the configured export headers reach the collector, on the OTLP path and
/// content type.
#[tokio::test]
async fn export_headers_reach_the_collector() {
    let rx = Receiver::start(Mode::Answer).await;
    let mut s = settings(rx.endpoint(), 1.0);
    s.headers = vec![
        (
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer s3cr%20t"),
        ),
        (
            HeaderName::from_static("x-scope-orgid"),
            HeaderValue::from_static("tenant-1"),
        ),
    ];
    let tracing = Tracing::new(s, counter()).unwrap();
    end_requests(&tracing, 1);
    assert!(tracing.shutdown().await);
    let got = rx.got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let h = &got[0].headers;
    assert_eq!(h["authorization"], "Bearer s3cr%20t", "sent as configured");
    assert_eq!(h["x-scope-orgid"], "tenant-1");
    assert_eq!(h["content-type"], "application/x-protobuf");
}

/// Proves: spans dropped without `end` (a cancelled request and attempt) are still
/// exported, marked cancelled with an error status; and the exporter reuses its
/// connection across exports (flush, then more spans, then shutdown).
#[tokio::test]
async fn spans_dropped_without_end_are_exported_as_cancelled() {
    let rx = Receiver::start(Mode::Answer).await;
    let tracing = Tracing::new(settings(rx.endpoint(), 1.0), counter()).unwrap();
    end_requests(&tracing, 1);
    assert!(tracing.flush().await);
    {
        let req = tracing
            .start_request(None, &Method::GET, "gone", "gone")
            .unwrap();
        let _attempt = req.attempt(1, "127.0.0.1:9001", None, "closed");
    }
    assert!(tracing.shutdown().await);
    assert_eq!(rx.got.lock().unwrap().len(), 2, "two export requests");
    assert_eq!(
        rx.conns.load(Ordering::SeqCst),
        1,
        "on one kept-alive connection"
    );
    let spans = rx.spans();
    let cancelled: Vec<&Span> = spans
        .iter()
        .filter(|s| attr(s, "fusebox.cancelled") == Some(&Value::BoolValue(true)))
        .collect();
    assert_eq!(cancelled.len(), 2, "the request and its attempt");
    for span in cancelled {
        let status = span.status.as_ref().unwrap();
        assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
        assert_eq!(status.message, "cancelled");
    }
}

/// Proves: an unsampled request builds nothing: deciding that a request with a `00`
/// traceparent, or none at ratio 0, or none at a ratio that draws and loses, is not
/// sampled makes no allocation at all (so no span, no context, no attribute).
#[test]
fn an_unsampled_request_allocates_nothing() {
    let unsampled = HeaderValue::from_static(INCOMING_UNSAMPLED);
    let every = Tracing::new(settings("http://127.0.0.1:9".into(), 1.0), counter()).unwrap();
    let none = Tracing::new(settings("http://127.0.0.1:9".into(), 0.0), counter()).unwrap();
    let rare = Tracing::new(settings("http://127.0.0.1:9".into(), 1e-12), counter()).unwrap();
    // The random generator allocates its per-thread state on first use.
    assert!(rare.start_request(None, &Method::GET, "w", "w").is_none());
    let mut sampled = 0;
    let n = alloc_count::allocations_in(|| {
        for _ in 0..1000 {
            sampled += usize::from(
                every
                    .start_request(Some(&unsampled), &Method::POST, "a", "a")
                    .is_some(),
            );
            sampled += usize::from(none.start_request(None, &Method::POST, "b", "b").is_some());
            sampled += usize::from(rare.start_request(None, &Method::POST, "c", "c").is_some());
        }
    });
    assert_eq!(sampled, 0);
    assert_eq!(n, 0, "allocations while deciding 3,000 unsampled requests");
    // The counter does see allocations: a sampled request makes several.
    let n = alloc_count::allocations_in(|| {
        drop(every.start_request(None, &Method::POST, "d", "d"));
    });
    assert!(n > 0);
}
