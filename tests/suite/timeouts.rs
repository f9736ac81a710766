//! Timeouts: the per-attempt timeout (`timeouts.request`, until response headers) gives
//! 504 UPSTREAM_TIMEOUT; a route `timeout` shorter than that gives 504
//! DEADLINE_EXCEEDED; an answer inside both passes; a body that stalls past
//! `timeouts.idle` is cut rather than left hanging or silently truncated.

use std::time::{Duration, Instant};

use crate::common::*;
use http_body_util::BodyExt;

fn config(up: std::net::SocketAddr, timeouts: &str, route_extra: &str) -> String {
    format!(
        "{}{}[upstreams.slow.timeouts]\n{timeouts}\n\n{}",
        base_config(""),
        upstream_toml("slow", &[up], ""),
        route_toml("all", "/", "slow", route_extra)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_headers_within_request_timeout_is_504_upstream_timeout() {
    let up = TestUpstream::start(Behaviour::Hang).await;
    let fb = spawn_fusebox(&config(up.addr, "request = \"200ms\"", "")).await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/infer")).await;
    let elapsed = started.elapsed();
    assert_fusebox_error(&r, 504, "UPSTREAM_TIMEOUT", Some("slow"));
    assert!(
        elapsed >= Duration::from_millis(200),
        "answered after {elapsed:?}, before the timeout"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_deadline_shorter_than_request_timeout_is_504_deadline_exceeded() {
    let up = TestUpstream::start(Behaviour::Hang).await;
    let fb = spawn_fusebox(&config(up.addr, "request = \"10s\"", "timeout = \"250ms\"")).await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/infer")).await;
    let elapsed = started.elapsed();
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("slow"));
    assert!(
        elapsed >= Duration::from_millis(250),
        "answered after {elapsed:?}, before the deadline"
    );
}

/// An upstream slower than nothing but faster than both limits is not cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_within_limits_passes() {
    let up = TestUpstream::start(Behaviour::delayed(
        Duration::from_millis(100),
        Behaviour::ok("late but fine"),
    ))
    .await;
    let fb = spawn_fusebox(&config(up.addr, "request = \"5s\"", "timeout = \"8s\"")).await;
    let r = get(&http1_client(), &fb.url("/infer")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "late but fine");
}

/// The per-attempt timeout runs until response headers only: a body that keeps
/// flowing after the headers is not cut by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_does_not_cut_a_flowing_body() {
    let spec = StreamSpec {
        chunk_size: 100,
        chunks: 8,
        interval: Duration::from_millis(60),
        gate_after_first: None,
    };
    let up = TestUpstream::start(Behaviour::Stream(spec)).await;
    let fb = spawn_fusebox(&config(up.addr, "request = \"200ms\"\nidle = \"5s\"", "")).await;
    let r = get(&http1_client(), &fb.url("/stream")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 800);
}

/// A response body that stops flowing for longer than `timeouts.idle` is cut: the
/// caller sees the stream fail, not a clean (silently truncated) end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_cut_after_idle_timeout() {
    let never = Gate::new();
    let spec = StreamSpec {
        chunk_size: 1000,
        chunks: 4,
        interval: Duration::ZERO,
        gate_after_first: Some(never.clone()),
    };
    let up = TestUpstream::start(Behaviour::Stream(spec)).await;
    let fb = spawn_fusebox(&config(up.addr, "idle = \"300ms\"", "")).await;
    let c = http1_client();
    let mut resp = send_head(
        &c,
        request(Method::GET, &fb.url("/stall"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut got = 0usize;
    let ended_with_error = within(WAIT, "the stalled body to be cut", async {
        loop {
            match resp.body_mut().frame().await {
                Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await;
    assert!(
        ended_with_error,
        "the stalled body ended cleanly after {got} bytes"
    );
    assert!(got <= 1000, "only the first chunk was ever sent");
    drop(never);
}

/// `propagate_deadline = true` tells the upstream how long the caller still waits, as
/// `x-request-timeout-ms`, no more than the route timeout; without it nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagate_deadline_sends_the_time_left() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "request = \"5s\"",
        "timeout = \"2s\"\npropagate_deadline = true",
    ))
    .await;
    let r = get(&http1_client(), &fb.url("/infer")).await;
    assert_eq!(r.status.as_u16(), 200);
    let sent: u64 = up
        .last()
        .header("x-request-timeout-ms")
        .parse()
        .expect("x-request-timeout-ms is a number of milliseconds");
    assert!(sent > 0 && sent <= 2000, "x-request-timeout-ms = {sent}");

    let up2 = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb2 = spawn_fusebox(&config(up2.addr, "request = \"5s\"", "timeout = \"2s\"")).await;
    let r = get(&http1_client(), &fb2.url("/infer")).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(up2.last().opt_header("x-request-timeout-ms"), None);
}

/// DESIGN, *Stalled bodies*: a caller that stops sending its request body for the
/// upstream's `timeouts.idle` gets `408 REQUEST_TIMEOUT` (no response had started),
/// well before the 10 s per-attempt timeout; it is the caller's fault, so the
/// endpoint's breaker records nothing and the request is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408_and_the_breaker_learns_nothing() {
    use crate::common::scripted::*;
    let up = Scripted::start(Behaviour::Echo).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .retry("max_retries = 2\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .table("timeouts", "idle = \"300ms\"\nrequest = \"10s\"")
            .build(),
        route_toml("all", "/", "app", "timeout = \"20s\"")
    );
    let fb = spawn_proxy(&tables).await;
    let (tx, body) = channel_body(4);
    let c = http1_client();
    let req = request(Method::PUT, &fb.url("/upload"))
        .body(body)
        .expect("request");
    let pending = tokio::spawn(async move { send(&c, req).await });
    tx.send(Bytes::from_static(b"first part"))
        .await
        .expect("sent");
    let r = within(WAIT, "the answer to a stalled body", pending)
        .await
        .expect("task");
    assert_fusebox_error(&r, 408, "REQUEST_TIMEOUT", Some("app"));
    drop(tx);
    assert_eq!(up.hits(), 1, "not retried");
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(
        (stats.failure_count, stats.success_count),
        (0, 0),
        "{stats:?}"
    );
    assert!(fb.shutdown().await);
}

/// A caller that closes its connection mid-body, or sends chunked framing that cannot
/// be parsed, broke the request itself: the endpoint did nothing wrong, so its breaker
/// records nothing and the request is not retried (an impatient or broken client must
/// not eject a healthy upstream for every other caller). A malformed body that can
/// still be answered gets `400 BAD_REQUEST`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_the_caller_broke_is_not_an_upstream_failure() {
    use crate::common::prom::wait_metric;
    use crate::common::scripted::*;
    use fusebox::upstream::breaker::BreakerState;
    let up = Scripted::start(Behaviour::Echo).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .breaker("failure_threshold = 2")
            .retry("max_retries = 2\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("all", "/", "app", "")
    );
    let fb = spawn_proxy(&tables).await;
    let answered = |n: f64| {
        wait_metric(
            fb.admin(),
            "gateway_proxy_requests_total",
            "method=\"POST\",route=\"all\",service=\"app\",status=\"400\"",
            n,
        )
    };
    // Three callers give up after 10 of 500 declared bytes.
    for i in 0..3 {
        let mut conn = RawConn::connect(fb.addr).await;
        conn.write(b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 500\r\n\r\n0123456789")
            .await
            .expect("sent");
        up.wait_hits(i + 1).await;
        drop(conn);
        answered((i + 1) as f64).await;
    }
    // Two send a chunk size that is not hex.
    for _ in 0..2 {
        let mut conn = RawConn::connect(fb.addr).await;
        conn.write(
            b"PUT /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n",
        )
        .await
        .expect("sent");
        let r = conn.read_response().await;
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.header("x-fusebox-error"), Some("BAD_REQUEST"));
    }
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Closed);
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(
        (stats.failure_count, stats.consecutive_failures),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(up.hits(), 3, "nothing retried, no malformed body forwarded");
    // The endpoint still serves.
    let r = get(&http1_client(), &fb.url("/ok")).await;
    assert_eq!(r.status.as_u16(), 200);
}

/// Sends `chunks` chunks of `b"0123456789"` through `tx`, `gap` apart, then ends the
/// body (the sender is dropped).
async fn trickle(tx: tokio::sync::mpsc::Sender<bytes::Bytes>, chunks: usize, gap: Duration) {
    let mut tick = tokio::time::interval(gap);
    for _ in 0..chunks {
        tick.tick().await;
        if tx
            .send(bytes::Bytes::from_static(b"0123456789"))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A caller still sending its body holds the clocks of the wait for response headers:
/// `timeouts.request` (200 ms) and the route `timeout` (300 ms) count from the body's
/// end, as Envoy's route timeout does. An upload trickling in for ~800 ms to an
/// upstream that answers only once it has it all (as a client-streaming gRPC server
/// does) gets its answer, and the endpoint's breaker records a success, not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_still_arriving_holds_the_timeouts() {
    use crate::common::scripted::*;
    let up = Scripted::start(Behaviour::Echo).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .table("timeouts", "request = \"200ms\"\nidle = \"2s\"")
            .retry("max_retries = 0")
            .build(),
        route_toml("all", "/", "app", "timeout = \"300ms\"")
    ))
    .await;
    let (tx, body) = channel_body(4);
    let c = http1_client();
    let req = request(Method::POST, &fb.url("/upload"))
        .body(body)
        .expect("request");
    let pending = tokio::spawn(async move { send(&c, req).await });
    trickle(tx, 16, Duration::from_millis(50)).await;
    let r = within(WAIT, "the answer", pending).await.expect("task");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "0123456789".repeat(16), "the whole body, echoed");
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(
        (stats.failure_count, stats.success_count),
        (0, 1),
        "{stats:?}"
    );
    assert!(fb.shutdown().await);
}

/// The route's timeout (200 ms) counts from the body's end, so a caller's deadline
/// (`x-request-timeout-ms: 600`) is what ends an upload that trickles for ~550 ms to
/// an upstream that never answers. That cut is the caller's own, as without a body:
/// 504 `DEADLINE_EXCEEDED`, not retried, and no failure of the endpoint's breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_deadline_ending_an_upload_is_no_endpoint_failure() {
    use crate::common::scripted::*;
    let up = Scripted::start(Behaviour::Hang).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .table("timeouts", "request = \"2s\"\nidle = \"2s\"")
            .table("circuit_breaker", "failure_threshold = 1")
            .build(),
        route_toml("all", "/", "app", "timeout = \"200ms\"")
    ))
    .await;
    let (tx, body) = channel_body(4);
    let c = http1_client();
    let req = request(Method::POST, &fb.url("/upload"))
        .header("x-request-timeout-ms", "600")
        .header("idempotency-key", "frame-1")
        .body(body)
        .expect("request");
    let pending = tokio::spawn(async move { send(&c, req).await });
    trickle(tx, 12, Duration::from_millis(50)).await;
    let r = within(WAIT, "the answer", pending).await.expect("task");
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("app"));
    assert_eq!(up.hits(), 1, "not retried");
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(stats.failure_count, 0, "{stats:?}");
    assert!(fb.shutdown().await);
}

/// An upstream that answers headers at once and the rest of its body only once it has
/// the caller's whole body (a bidirectional stream). While the caller's bytes keep
/// flowing the exchange is not idle: "no body bytes either way" for `timeouts.idle`
/// (700 ms here) resets it, bytes one way do not. The caller trickles its body for
/// ~1.5 s (a chunk every 50 ms) and gets the whole answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_one_way_keep_an_exchange_alive() {
    use crate::common::scripted::*;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let (tx, body) = channel_body(4);
                tokio::spawn(async move {
                    let _ = tx.send(bytes::Bytes::from_static(b"start;")).await;
                    let mut n = 0;
                    let mut b = req.into_body();
                    while let Some(Ok(f)) = b.frame().await {
                        n += f.data_ref().map_or(0, |d| d.len());
                    }
                    let _ = tx.send(bytes::Bytes::from(format!("end:{n}"))).await;
                });
                Ok::<_, std::convert::Infallible>(http::Response::new(body))
            });
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[addr])
            .table("timeouts", "request = \"10s\"\nidle = \"700ms\"")
            .retry("max_retries = 0")
            .build(),
        route_toml("all", "/", "app", "timeout = \"20s\"")
    ))
    .await;
    let (tx, body) = channel_body(4);
    let c = http1_client();
    let req = request(Method::POST, &fb.url("/duplex"))
        .body(body)
        .expect("request");
    let pending = tokio::spawn(async move {
        let resp = c.request(req).await.expect("response head");
        let status = resp.status();
        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
        (status, body)
    });
    trickle(tx, 30, Duration::from_millis(50)).await;
    let (status, body) = within(WAIT, "the answer", pending).await.expect("task");
    assert_eq!(status, 200);
    let body = body.expect("the whole answer, not a reset");
    assert_eq!(&body[..], b"start;end:300");
    assert!(fb.shutdown().await);
}
