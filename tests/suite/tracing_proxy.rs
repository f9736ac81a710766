//! OpenTelemetry traces of proxied requests: a real fusebox with `[tracing]` pointed at
//! an OTLP/HTTP receiver in the test (decoding with the official protobuf types), a
//! real upstream, and a request retried once: one server span and two client spans in
//! the caller's trace, parented as W3C says, the retry reason on the second, and the
//! upstream told each attempt's own span id. With no collector, requests are not
//! slowed and the spans lost are counted.

use crate::common::scripted::*;
use crate::common::*;
use crate::receiver::{attr, hex, s, Mode, Receiver};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn config(up: std::net::SocketAddr, collector: &str) -> String {
    format!(
        "[tracing]\notlp_endpoint = \"{collector}\"\nsample_ratio = 0.0\nexport_timeout = \"2s\"\n\n{}{}",
        UpstreamToml::new("yolo", &[up])
            .retry("max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("detect", "/detect", "yolo", "")
    )
}

/// Proves: a request (caller's traceparent sampled) answered 503 then retried to 200
/// exports exactly one server span and two client spans in the caller's trace; the
/// server span's parent is the caller's span, both client spans' parent is the server
/// span; the second carries `fusebox.retry_reason = status_503`; and the upstream got,
/// on each attempt, a traceparent naming that attempt's client span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_is_one_server_span_and_two_attempt_spans() {
    let rx = Receiver::start(Mode::Answer).await;
    let up = Scripted::ok("detections").await;
    up.then([Behaviour::respond(503, "busy")]);
    let p = spawn_proxy(&config(up.addr, &rx.endpoint())).await;
    let c = http1_client();
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = call(
        &c,
        Method::GET,
        &p.url("/detect/x"),
        &[("traceparent", &tp)],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(p.shutdown().await, "drained (and the spans flushed)");

    let spans = rx.spans();
    assert_eq!(spans.len(), 3, "one server span and two client spans");
    assert!(
        spans.iter().all(|s| hex(&s.trace_id) == TRACE),
        "the caller's trace"
    );
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    let mut clients: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    clients.sort_by_key(|s| s.start_time_unix_nano);
    assert_eq!(clients.len(), 2);
    for c in &clients {
        assert_eq!(
            c.parent_span_id, server.span_id,
            "attempts nest under the request"
        );
    }
    assert_eq!(attr(clients[0], "fusebox.retry_reason"), None);
    assert_eq!(
        attr(clients[1], "fusebox.retry_reason"),
        Some(&s("status_503"))
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for (attempt, span) in seen.iter().zip(&clients) {
        let sent = attempt
            .header("traceparent")
            .expect("traceparent sent upstream");
        assert_eq!(sent, format!("00-{TRACE}-{}-01", hex(&span.span_id)));
    }
}

/// Proves: with no collector listening, 1,000 traced requests are all answered (export
/// never blocks the request path) and `gateway_tracing_spans_dropped_total` counts the
/// spans of the failed exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_collector_requests_succeed_and_drops_are_counted() {
    let dead = dead_port();
    let up = Scripted::ok("ok").await;
    let p = spawn_proxy(&config(up.addr, &format!("http://{}", dead.addr))).await;
    let c = http1_client();
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    for _ in 0..1000 {
        let r = call(
            &c,
            Method::GET,
            &p.url("/detect"),
            &[("traceparent", &tp)],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    let url = format!("http://{}/metrics", p.running.admin_addr);
    let dropped = || async {
        get(&http1_client(), &url)
            .await
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("gateway_tracing_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while dropped().await == 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no drop was counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(up.hits(), 1000);
    let metrics = p.running.ctrl.metrics.clone();
    assert!(p.shutdown().await);
    let total = metrics.tracing_spans_dropped.get();
    assert!(
        total > 0 && total <= 2000,
        "{total} dropped: at most the 2,000 spans made"
    );
}

/// A caller that gives up before the answer leaves a server span marked cancelled (an
/// error, no status code), as docs/tracing.md says, not a span with status code 0 and
/// no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_request_is_a_cancelled_server_span() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let rx = Receiver::start(Mode::Answer).await;
    let up = Scripted::start(Behaviour::Hang).await;
    let p = spawn_proxy(&config(up.addr, &rx.endpoint())).await;
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (c, url) = (http1_client(), p.url("/detect/x"));
    let call = tokio::spawn(async move {
        send(
            &c,
            request(Method::GET, &url)
                .header("traceparent", tp.as_str())
                .body(empty())
                .unwrap(),
        )
        .await
    });
    up.wait_hits(1).await;
    call.abort(); // the caller goes away: its connection closes
    let _ = call.await;
    eventually("the request to end", WAIT, || {
        p.running.snapshot().routes[0].metrics.in_flight.get() == 0
    })
    .await;
    assert!(p.shutdown().await);
    let spans = rx.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(
        attr(server, "fusebox.cancelled"),
        Some(&Value::BoolValue(true))
    );
    assert_eq!(attr(server, "http.response.status_code"), None);
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
}

/// A caller that leaves after the answer's head, during its body, leaves a server span
/// marked cancelled (an error) with the status it was sent, as the access log marks
/// the line `cancelled`; before, the span looked like a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaving_mid_body_is_a_cancelled_server_span() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rx = Receiver::start(Mode::Answer).await;
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::Stream(StreamSpec {
        chunk_size: 1000,
        chunks: 4,
        interval: std::time::Duration::ZERO,
        gate_after_first: Some(gate.clone()),
    }))
    .await;
    let p = spawn_proxy(&config(up.addr, &rx.endpoint())).await;
    let mut conn = tokio::net::TcpStream::connect(p.running.data_addr)
        .await
        .expect("connect");
    let head = format!(
        "GET /detect/stream HTTP/1.1\r\nHost: t\r\ntraceparent: 00-{TRACE}-{CALLER_SPAN}-01\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.expect("sent");
    let mut got = Vec::new();
    within(WAIT, "the answer's head", async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before the head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    drop(conn); // during the body
    eventually("the request to end", WAIT, || {
        p.running.snapshot().routes[0].metrics.in_flight.get() == 0
    })
    .await;
    gate.open();
    assert!(p.shutdown().await);
    let spans = rx.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    assert_eq!(
        attr(server, "fusebox.cancelled"),
        Some(&Value::BoolValue(true))
    );
    assert_eq!(
        attr(server, "http.response.status_code"),
        Some(&Value::IntValue(200))
    );
    assert_eq!(
        server.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR"
    );
}

/// A request refused because every breaker is open carries the `shed` event with
/// `fusebox.shed.reason = circuit_open` on its server span, as the other sheds do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_open_refusal_is_a_shed_event() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let rx = Receiver::start(Mode::Answer).await;
    let up = Scripted::ok("ok").await;
    let p = spawn_proxy(&config(up.addr, &rx.endpoint())).await;
    p.endpoint("yolo", up.addr).force_open();
    let c = http1_client();
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let r = call(
        &c,
        Method::GET,
        &p.url("/detect/x"),
        &[("traceparent", &tp)],
        "",
    )
    .await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert!(p.shutdown().await);
    let spans = rx.spans();
    let server = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a server span");
    let shed = server
        .events
        .iter()
        .find(|e| e.name == "shed")
        .expect("a shed event");
    let reason = shed
        .attributes
        .iter()
        .find(|kv| kv.key == "fusebox.shed.reason")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref());
    assert_eq!(reason, Some(&Value::StringValue("circuit_open".into())));
}

/// An h2c gRPC upstream: `/g/ok` answers OK in its trailers, `/g/stream14` a message
/// then UNAVAILABLE (14) in its trailers, `/g/only14` UNAVAILABLE trailers-only.
async fn grpc_status_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    // Each call answered once its request has arrived whole, as a
                    // unary server does: answered before, the caller's stream may be
                    // closed before the caller sent its message (a test race).
                    tokio::spawn(async move {
                        let path = req.uri().path().to_owned();
                        let mut req_body = req.into_body();
                        while let Some(d) = req_body.data().await {
                            let Ok(d) = d else { return };
                            let _ = req_body.flow_control().release_capacity(d.len());
                        }
                        let head = |status: Option<&str>| {
                            let mut b = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/grpc");
                            if let Some(g) = status {
                                b = b.header("grpc-status", g);
                            }
                            b.body(()).unwrap()
                        };
                        if path == "/g/only14" {
                            let _ = respond.send_response(head(Some("14")), true);
                            return;
                        }
                        let Ok(mut body) = respond.send_response(head(None), false) else {
                            return;
                        };
                        let code = if path == "/g/ok" { "0" } else { "14" };
                        let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", code.parse().unwrap());
                        let _ = body.send_trailers(trailers);
                    });
                }
            });
        }
    });
    addr
}

/// Proves: gRPC calls' spans follow the gRPC status, not the HTTP 200 that carries it
/// (the RPC semantic conventions). A call answered UNAVAILABLE in its trailers, or
/// trailers-only, gives an error server span and an error attempt span, both with
/// `rpc.grpc.status_code = 14` and `error.type = "14"`; a call answered OK gives
/// neither an error, with `rpc.grpc.status_code = 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_spans_follow_the_grpc_status() {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let rx = Receiver::start(Mode::Answer).await;
    let up = grpc_status_upstream().await;
    let p = spawn_proxy(&format!(
        "[tracing]\notlp_endpoint = \"{}\"\nsample_ratio = 0.0\nexport_timeout = \"2s\"\n\n{}{}",
        rx.endpoint(),
        UpstreamToml::new("g", &[up])
            .extra("protocol = \"h2c\"")
            .retry("max_retries = 0")
            .build(),
        route_toml("grpc", "/g", "g", "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let calls = [("ok", "0"), ("stream14", "14"), ("only14", "14")];
    for (i, (path, want)) in calls.iter().enumerate() {
        let req = http::Request::post(format!("http://{}/g/{path}", p.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("traceparent", format!("00-{:032x}-{CALLER_SPAN}-01", i + 1))
            .body(())
            .unwrap();
        let mut c = client.clone().ready().await.expect("ready");
        let (resp, mut stream) = c.send_request(req, false).expect("send");
        stream
            .send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
            .expect("data");
        let resp = resp.await.expect("response");
        let (head, mut body) = resp.into_parts();
        let mut got = head
            .headers
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned());
        while let Some(d) = body.data().await {
            let d = d.expect("data");
            let _ = body.flow_control().release_capacity(d.len());
        }
        if let Some(t) = body.trailers().await.expect("trailers") {
            got = t.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
        }
        assert_eq!(
            got.as_deref(),
            Some(*want),
            "{path}: the caller's grpc-status"
        );
    }
    assert!(p.shutdown().await, "drained (and the spans flushed)");
    let spans = rx.spans();
    for (i, (path, want)) in calls.iter().enumerate() {
        let trace = format!("{:032x}", i + 1);
        let of_call: Vec<&Span> = spans.iter().filter(|s| hex(&s.trace_id) == trace).collect();
        assert_eq!(of_call.len(), 2, "{path}: a server and an attempt span");
        let code: i64 = want.parse().unwrap();
        for span in of_call {
            let kind = if span.kind == SpanKind::Server as i32 {
                "server"
            } else {
                "attempt"
            };
            assert_eq!(
                attr(span, "rpc.grpc.status_code"),
                Some(&Value::IntValue(code)),
                "{path} {kind}"
            );
            let status = span.status.as_ref().map_or(0, |s| s.code);
            if code == 0 {
                assert_eq!(status, 0, "{path} {kind}: no error");
                assert_eq!(attr(span, "error.type"), None, "{path} {kind}");
            } else {
                assert_eq!(status, 2, "{path} {kind}: STATUS_CODE_ERROR");
                assert_eq!(attr(span, "error.type"), Some(&s(want)), "{path} {kind}");
            }
        }
    }
}
