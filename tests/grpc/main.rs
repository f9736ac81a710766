//! gRPC through fusebox end to end: a real tonic client calls a real gRPC upstream
//! (`echo.rs`) through an in-process fusebox whose upstream speaks h2c. Unary and
//! streaming calls, metadata and trailers pass through unbuffered; gRPC statuses in
//! trailers-only responses drive retries and the breaker; fusebox's own errors are
//! gRPC-shaped; the caller's `grpc-timeout` is enforced and propagated.

#[path = "../common/mod.rs"]
mod common;
mod echo;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::prom;
use echo::{fusebox_error, raw_call, EchoClient, EchoReply, EchoRequest, EchoUpstream};
use tonic::{Code, Request};

/// Bound for anything that should happen "soon" (two shared cores).
const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

/// A fusebox routing `/fusebox.test.Echo/` to an h2c upstream of `endpoints`; `upstream`
/// and `route` are extra lines for those tables (sub-tables of the upstream allowed
/// at the end of `upstream`).
async fn fusebox(endpoints: &[SocketAddr], upstream: &str, route: &str) -> fusebox::app::Running {
    let eps: Vec<String> = endpoints.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        r#"[listener]
address = "127.0.0.1:0"
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[logging]
access_log = false

[[routes]]
name = "echo"
path_prefix = "/fusebox.test.Echo"
upstream = "echo"
{route}

[upstreams.echo]
endpoints = [{eps}]
protocol = "h2c"
{upstream}
"#,
        eps = eps.join(", ")
    );
    let config = fusebox::config::parse(&text, "test", None)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"));
    fusebox::app::start(config, "v".into())
        .await
        .unwrap_or_else(|e| panic!("fusebox did not start: {e:#}"))
}

/// Retries off and a breaker that never opens: exactly one attempt per call.
const ONE_ATTEMPT: &str = r#"
[upstreams.echo.retry]
max_retries = 0

[upstreams.echo.circuit_breaker]
failure_threshold = 1000
"#;

fn hello(message: &str) -> Request<EchoRequest> {
    Request::new(EchoRequest {
        message: message.into(),
        ..Default::default()
    })
}

/// Unary call: the upstream's reply and response metadata come back, the caller's
/// metadata (x-request-id, custom keys) and `te: trailers` reach the upstream, and
/// fusebox stamps its ids on the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_call_passes_reply_and_metadata() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let mut req = hello("ping");
    req.metadata_mut()
        .insert("x-request-id", "grpc-req-1".parse().unwrap());
    req.metadata_mut()
        .insert("x-camera-id", "cam-7".parse().unwrap());
    let resp = within("unary reply", client.unary(req)).await.unwrap();

    let md = resp.metadata().clone();
    let reply = resp.into_inner();
    assert_eq!(reply.message, "ping");
    assert_eq!(reply.upstream, "a");
    assert_eq!(md.get("x-upstream-name").unwrap(), "a", "response metadata");
    assert_eq!(md.get("x-request-id").unwrap(), "grpc-req-1", "id echoed");
    assert!(md.get("x-fusebox-error").is_none());
    assert_eq!(up.calls(), 1);
    assert_eq!(up.seen_header("x-request-id"), ["grpc-req-1"]);
    assert_eq!(up.seen_header("x-camera-id"), ["cam-7"]);
    assert_eq!(
        up.seen_header("te"),
        ["trailers"],
        "gRPC keeps te: trailers"
    );
    assert_eq!(up.seen_header("content-type"), ["application/grpc"]);
}

/// Server streaming: the first reply reaches the caller while the upstream still holds
/// the rest (it sends them only when the test says so), then all arrive in order and
/// the call ends OK (trailers passed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stream_is_delivered_in_order_without_buffering() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let req = Request::new(EchoRequest {
        message: "frame".into(),
        count: 5,
        end_with: 0,
    });
    let mut stream = within("stream headers", client.server_stream(req))
        .await
        .unwrap()
        .into_inner();
    let first = within(
        "first message, before the upstream sent the rest",
        stream.message(),
    )
    .await
    .unwrap()
    .expect("a first message");
    assert_eq!((first.seq, first.message.as_str()), (0, "frame-0"));

    up.release_stream();
    let mut rest: Vec<EchoReply> = Vec::new();
    while let Some(m) = within("stream messages", stream.message()).await.unwrap() {
        rest.push(m);
    }
    let seqs: Vec<u32> = rest.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4], "every message, in order");
    assert_eq!(rest[3].message, "frame-4");
    let trailers = within("trailers", stream.trailers()).await.unwrap();
    assert!(
        trailers.is_some(),
        "the upstream's trailers reach the caller"
    );
    assert_eq!(up.calls(), 1);
}

/// A caller that drops a server stream midway cancels it at the upstream too (fusebox
/// resets its upstream stream), so a model server stops work nobody reads. Replies are
/// 16 KiB: without the reset the upstream would block on flow control and never see
/// the cancellation (tiny replies would instead trip h2's small-frame flood guard,
/// which closes the whole connection and would hide a missing reset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_stream_is_cancelled_upstream() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let req = Request::new(EchoRequest {
        message: "x".repeat(16 * 1024),
        count: u32::MAX,
        end_with: 0,
    });
    let mut stream = within("stream headers", client.server_stream(req))
        .await
        .unwrap()
        .into_inner();
    let first = within("first message", stream.message()).await.unwrap();
    assert_eq!(first.map(|m| m.seq), Some(0));
    drop(stream);
    up.release_stream();
    within(
        "the upstream to see the cancellation",
        up.stream_cancelled(),
    )
    .await;
}

/// A status sent in trailers after stream messages (not trailers-only) reaches the
/// caller with its code, message and metadata.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_in_stream_trailers_passes_through() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let req = Request::new(EchoRequest {
        message: "m".into(),
        count: 1,
        end_with: Code::Aborted as i32,
    });
    let mut stream = within("stream", client.server_stream(req))
        .await
        .unwrap()
        .into_inner();
    let first = within("message", stream.message()).await.unwrap();
    assert_eq!(first.map(|m| m.seq), Some(0));
    let err = within("trailers", stream.message()).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(err.message(), "stream ended badly");
    assert_eq!(err.metadata().get("x-detail").unwrap(), "after-stream");
}

/// A streamed answer whose trailers carry a `failure_grpc_codes` status (UNAVAILABLE
/// after a message) fails its endpoint as a trailers-only one does: two such calls open
/// a breaker of threshold 2 (the success the headers counted was provisional), and the
/// third call is refused `CIRCUIT_OPEN` without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_status_in_stream_trailers_counts_on_the_breaker() {
    let up = EchoUpstream::start("a").await;
    let breaker = r#"
[upstreams.echo.retry]
max_retries = 0

[upstreams.echo.circuit_breaker]
failure_threshold = 2
recovery_timeout = "60s"
"#;
    let fb = fusebox(&[up.addr], breaker, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;
    for _ in 0..2 {
        let req = Request::new(EchoRequest {
            message: "m".into(),
            count: 1,
            end_with: Code::Unavailable as i32,
        });
        let mut stream = within("stream", client.server_stream(req))
            .await
            .unwrap()
            .into_inner();
        let first = within("message", stream.message()).await.unwrap();
        assert_eq!(first.map(|m| m.seq), Some(0));
        let err = within("trailers", stream.message()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(fusebox_error(&err), None, "the upstream's own status");
    }
    assert_eq!(up.calls(), 2);
    let err = within("rejected call", client.unary(hello("x")))
        .await
        .unwrap_err();
    assert_eq!(fusebox_error(&err), Some("CIRCUIT_OPEN"), "{err:?}");
    assert_eq!(up.calls(), 2, "an open breaker sends nothing upstream");
}

/// With `partition_by`, failure statuses are one key's business: a camera whose
/// streamed answers all end UNAVAILABLE in their trailers does not open the endpoint's
/// shared breaker, and another camera's calls keep reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_calls_failure_trailers_do_not_eject_the_endpoint() {
    let up = EchoUpstream::start("a").await;
    let breaker = r#"
[upstreams.echo.retry]
max_retries = 0

[upstreams.echo.circuit_breaker]
failure_threshold = 2
recovery_timeout = "60s"
partition_by = "header:x-camera-id"
"#;
    let fb = fusebox(&[up.addr], breaker, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;
    for _ in 0..3 {
        let mut req = Request::new(EchoRequest {
            message: "m".into(),
            count: 1,
            end_with: Code::Unavailable as i32,
        });
        req.metadata_mut()
            .insert("x-camera-id", "cam-1".parse().unwrap());
        let mut stream = within("stream", client.server_stream(req))
            .await
            .unwrap()
            .into_inner();
        let _ = within("message", stream.message()).await;
        let err = within("trailers", stream.message()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    let mut req = hello("other camera");
    req.metadata_mut()
        .insert("x-camera-id", "cam-2".parse().unwrap());
    let reply = within("cam-2", client.unary(req)).await.expect("served");
    assert_eq!(reply.into_inner().message, "other camera");
    assert_eq!(up.calls(), 4);
}

/// Bidirectional streaming: each reply comes back before the caller sends the next
/// message, so neither direction is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_stream_is_interactive() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let send = |m: &str| {
        let tx = tx.clone();
        let m = EchoRequest {
            message: m.into(),
            ..Default::default()
        };
        async move { tx.send(m).await.unwrap() }
    };
    send("one").await;
    let mut replies = within("chat headers", client.chat(Request::new(outbound)))
        .await
        .unwrap()
        .into_inner();
    for (seq, word) in ["one", "two", "three"].into_iter().enumerate() {
        if seq > 0 {
            send(word).await;
        }
        let r = within("chat reply", replies.message())
            .await
            .unwrap()
            .expect("a reply");
        assert_eq!((r.seq as usize, r.message.as_str()), (seq, word));
    }
    drop(tx);
    assert!(within("end of chat", replies.message())
        .await
        .unwrap()
        .is_none());
}

/// An application error from the upstream (trailers-only NOT_FOUND) reaches the caller
/// with its code and (percent-encoded) message intact, and is neither retried nor
/// fusebox's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_error_status_passes_through_and_is_not_retried() {
    let up = EchoUpstream::start("a").await;
    let retries = r#"
[upstreams.echo.retry]
max_retries = 3
base_delay = "1ms"
"#;
    let fb = fusebox(&[up.addr], retries, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let message = "no detector named 'yolo-x' (100% sure) — check the model";
    up.fail(Code::NotFound, message, 1);
    let err = within("error status", client.unary(hello("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.message(), message, "message intact");
    assert_eq!(
        fusebox_error(&err),
        None,
        "the upstream's status, not fusebox's"
    );
    assert_eq!(up.calls(), 1, "NOT_FOUND is not retried");
}

/// UNAVAILABLE from one endpoint is retried on the other: over four calls every caller
/// sees OK from the healthy endpoint; each call whose first attempt met the failing
/// endpoint (at least one: round robin over two) was sent there once and retried, with
/// the same request id, on the healthy one, and each such retry is counted as
/// `gateway_proxy_retries_total{reason="grpc_14"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_on_a_healthy_endpoint() {
    let bad = EchoUpstream::start("bad").await;
    let good = EchoUpstream::start("good").await;
    bad.fail(Code::Unavailable, "overloaded", usize::MAX);
    let retry = r#"
[upstreams.echo.retry]
max_retries = 1
base_delay = "1ms"
max_delay = "5ms"

[upstreams.echo.circuit_breaker]
failure_threshold = 1000
"#;
    let fb = fusebox(&[bad.addr, good.addr], retry, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let mut ids = Vec::new();
    for i in 0..4 {
        let mut req = hello("retry me");
        let id = format!("retry-{i}");
        req.metadata_mut()
            .insert("x-request-id", id.parse().unwrap());
        let resp = within("retried call", client.unary(req)).await;
        let reply = resp.unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        assert_eq!(reply.get_ref().upstream, "good");
        ids.push(id);
    }
    let at_bad = bad.seen_header("x-request-id");
    let at_good = good.seen_header("x-request-id");
    assert!(!at_bad.is_empty(), "no call met the failing endpoint");
    let mut distinct = at_bad.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        at_bad.len(),
        "one attempt per call there: {at_bad:?}"
    );
    for id in &at_bad {
        assert!(ids.contains(id), "unknown id {id}");
        assert!(
            at_good.contains(id),
            "{id} was retried on the healthy endpoint: {at_good:?}"
        );
    }
    assert_eq!(
        at_good.len(),
        4,
        "every call answered once by the healthy endpoint"
    );
    assert_eq!(
        prom::retries(fb.admin_addr, "echo", "grpc_14").await,
        at_bad.len() as f64
    );
}

/// Repeated UNAVAILABLE opens the breaker; the next call is answered by fusebox with a
/// gRPC-shaped CIRCUIT_OPEN (HTTP 200, grpc-status 14) without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_unavailable_opens_the_breaker() {
    let up = EchoUpstream::start("a").await;
    up.fail(Code::Unavailable, "down", usize::MAX);
    let breaker = r#"
[upstreams.echo.retry]
max_retries = 0

[upstreams.echo.circuit_breaker]
failure_threshold = 2
recovery_timeout = "60s"
"#;
    let fb = fusebox(&[up.addr], breaker, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    for i in 1..=2 {
        let err = within("failing call", client.unary(hello("x")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert_eq!(err.message(), "down", "call {i} is the upstream's answer");
        assert_eq!(fusebox_error(&err), None);
    }
    assert_eq!(up.calls(), 2);

    let err = within("rejected call", client.unary(hello("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(fusebox_error(&err), Some("CIRCUIT_OPEN"), "{err:?}");
    assert!(!err.message().is_empty());
    let head = within("raw call", raw_call(fb.data_addr, echo::UNARY)).await;
    assert_grpc_shaped(&head, "14", "CIRCUIT_OPEN");
    assert_eq!(up.calls(), 2, "an open breaker sends nothing upstream");
    assert_eq!(
        prom::rejected(fb.admin_addr, "echo", "circuit_open").await,
        2.0
    );
}

/// The caller's `grpc-timeout` (200 ms) becomes the deadline, shorter than the route's
/// 30 s: fusebox answers DEADLINE_EXCEEDED, no earlier than 200 ms, to a call the
/// upstream would answer only after an hour, and the upstream was told the time left
/// (at most 200 ms) in `grpc-timeout`. The plain client has no timer of its own
/// (tonic's `Channel` enforces `grpc-timeout` on the client side too and would win the
/// race), so the deadline seen is fusebox's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_is_enforced_and_propagated() {
    let up = EchoUpstream::start("a").await;
    up.delay(Duration::from_secs(3600));
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, r#"timeout = "30s""#).await;
    let mut client = EchoClient::plain(fb.data_addr);

    let mut req = hello("slow");
    req.set_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let err = within("deadline", client.unary(req)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(fusebox_error(&err), Some("DEADLINE_EXCEEDED"), "{err:?}");
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}, before the deadline"
    );

    let sent = up.seen_header("grpc-timeout");
    assert_eq!(sent.len(), 1, "one attempt: {sent:?}");
    let ms: u64 = sent[0]
        .strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout {:?} is not <ms>m", sent[0]));
    assert!((1..=200).contains(&ms), "time left sent upstream: {ms}m");
}

/// The route's `timeout` bounds the wait for response headers, not the call, so it is
/// never sent upstream as `grpc-timeout` (the upstream would cut a long stream at it):
/// a call without a deadline reaches the upstream without one, and a caller's deadline
/// longer than the route's (60 s against 2 s) is sent on as the caller's time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_callers_deadline_is_sent_upstream() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, r#"timeout = "2s""#).await;
    let mut client = EchoClient::plain(fb.data_addr);
    within("a call without a deadline", client.unary(hello("free")))
        .await
        .expect("answered");
    assert_eq!(
        up.seen_header("grpc-timeout"),
        [""],
        "no deadline from the caller: none upstream"
    );
    let mut req = hello("patient");
    req.set_timeout(Duration::from_secs(60));
    within("a call with a long deadline", client.unary(req))
        .await
        .expect("answered");
    let sent = up.seen_header("grpc-timeout");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let ms: u64 = sent[1]
        .strip_suffix('m')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout {:?} is not <ms>m", sent[1]));
    assert!(
        (2_001..=60_000).contains(&ms),
        "the caller's time left, not the route's: {ms}m"
    );
}

/// A caller's own short `grpc-timeout` says nothing about the upstream: timeouts it
/// causes do not count on the breaker, so one impatient caller cannot cut the upstream
/// off for everybody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_short_deadline_does_not_open_the_breaker() {
    let up = EchoUpstream::start("a").await;
    up.delay(Duration::from_millis(500));
    let tables = r#"
[upstreams.echo.retry]
max_retries = 0

[upstreams.echo.circuit_breaker]
failure_threshold = 2
recovery_timeout = "30s"
"#;
    // Deadline shedding off: after the first timeout it would answer the next
    // impatient calls OVERLOADED at once (the endpoint is known to take longer), and
    // this test is about what the breaker learns from timeouts.
    let route = "timeout = \"30s\"\nshed_on_deadline = false";
    let fb = fusebox(&[up.addr], tables, route).await;
    let mut client = EchoClient::plain(fb.data_addr);
    for _ in 0..3 {
        let mut req = hello("impatient");
        req.set_timeout(Duration::from_millis(20));
        let err = within("deadline", client.unary(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    up.delay(Duration::ZERO);
    let reply = within("patient call", client.unary(hello("patient"))).await;
    assert!(
        reply.is_ok(),
        "breaker opened on the caller's deadlines: {reply:?}"
    );
}

/// A gRPC call no route matches gets UNIMPLEMENTED (grpc-status 12) from fusebox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_unimplemented() {
    let up = EchoUpstream::start("a").await;
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let err = within("no route", client.unary_at("/other.Service/Call"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert_eq!(fusebox_error(&err), Some("NO_ROUTE"), "{err:?}");
    let head = within("raw call", raw_call(fb.data_addr, "/other.Service/Call")).await;
    assert_grpc_shaped(&head, "12", "NO_ROUTE");
    assert_eq!(up.calls(), 0);
}

/// An upstream nobody listens on: fusebox's UPSTREAM_CONNECT_FAILED reaches a gRPC
/// caller as UNAVAILABLE (grpc-status 14), HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_unavailable() {
    // Refuses connections while held; a released port could be taken by another test.
    let closed = common::scripted::dead_port();
    let fb = fusebox(&[closed.addr], ONE_ATTEMPT, "").await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    let err = within("connect failure", client.unary(hello("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(
        fusebox_error(&err),
        Some("UPSTREAM_CONNECT_FAILED"),
        "{err:?}"
    );
    let head = within("raw call", raw_call(fb.data_addr, echo::UNARY)).await;
    assert_grpc_shaped(&head, "14", "UPSTREAM_CONNECT_FAILED");
}

/// Over the route's rate: RESOURCE_EXHAUSTED (grpc-status 8), HTTP 200, and the
/// upstream is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_is_resource_exhausted() {
    let up = EchoUpstream::start("a").await;
    let limit = "rate_limit = { requests_per_second = 0.01, burst = 1 }";
    let fb = fusebox(&[up.addr], ONE_ATTEMPT, limit).await;
    let mut client = EchoClient::connect(fb.data_addr).await;

    within("first call", client.unary(hello("x")))
        .await
        .unwrap();
    let err = within("limited call", client.unary(hello("x")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(fusebox_error(&err), Some("RATE_LIMITED"), "{err:?}");
    let head = within("raw call", raw_call(fb.data_addr, echo::UNARY)).await;
    assert_grpc_shaped(&head, "8", "RATE_LIMITED");
    assert_eq!(up.calls(), 1);
    assert_eq!(
        prom::rejected(fb.admin_addr, "echo", "rate_limited").await,
        2.0
    );
}

/// A gRPC-shaped answer of fusebox's own: HTTP 200, gRPC content type, the status and
/// a message in the headers (trailers-only), and the contract's error code.
fn assert_grpc_shaped(head: &http::response::Parts, grpc_status: &str, code: &str) {
    let h = &head.headers;
    assert_eq!(head.status, 200, "gRPC errors are HTTP 200: {h:?}");
    assert_eq!(h["content-type"], "application/grpc", "{h:?}");
    assert_eq!(h["grpc-status"], grpc_status, "{h:?}");
    assert!(
        h.get("grpc-message").is_some_and(|m| !m.is_empty()),
        "{h:?}"
    );
    assert_eq!(h["x-fusebox-error"], code, "{h:?}");
}
