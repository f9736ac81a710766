//! Listener limits: `max_header_bytes` (431), `max_request_body` (413 for a declared
//! length, before the body is read; an undeclared chunked body is cut when it passes the
//! limit, answered 413 as no response has started, and never reaches the upstream
//! whole), `header_read_timeout` (slow headers -> 408 and the connection closed),
//! `max_connections` (a second connection waits while the first is open) and
//! `idle_timeout` (idle keep-alive connections are closed).

use std::time::Duration;

use crate::common::*;

fn config(up: std::net::SocketAddr, listener: &str) -> String {
    format!(
        "{}{}{}",
        base_config(listener),
        upstream_toml("app", &[up], ""),
        route_toml("all", "/", "app", "")
    )
}

fn get_with_header(name: &str, value_len: usize) -> Vec<u8> {
    format!(
        "GET /h HTTP/1.1\r\nHost: t\r\n{name}: {}\r\n\r\n",
        "v".repeat(value_len)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_max_header_bytes_get_431() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "max_header_bytes = \"16KiB\"")).await;

    // Under the limit: served.
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(&get_with_header("X-Small", 8 * 1024))
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.status, 200);
    assert_eq!(up.hits(), 1);

    // Over it: 431, not forwarded.
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(&get_with_header("X-Big", 20 * 1024))
        .await
        .unwrap();
    let resp = conn.read_response().await;
    assert_eq!(resp.status, 431);
    assert_eq!(up.hits(), 1, "the oversized request was not forwarded");
}

/// A body far larger than the socket buffers, so the caller is still sending when the
/// 413 comes: the answer must survive fusebox closing the connection on unread input.
const BIG: usize = 16 * 1024 * 1024;

/// `BIG` bytes as 64 KiB chunks (cheap clones of one chunk).
fn big_chunks() -> Vec<Bytes> {
    let chunk = Bytes::from(random_bytes(64 * 1024, 9));
    vec![chunk; BIG / (64 * 1024)]
}

/// A declared body over the limit gets 413 before it is read (the caller is still
/// sending 16 MiB when it comes) and is not forwarded; one of exactly the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_max_request_body_gets_413_unforwarded() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "max_request_body = \"1KiB\"")).await;
    let c = http1_client();

    let at_limit = random_bytes(1024, 1);
    let r = send(
        &c,
        request(Method::POST, &fb.url("/u"))
            .body(full(at_limit.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "a body of exactly the limit passes");
    assert!(up.last().body == at_limit);

    let over: Vec<u8> = big_chunks().concat();
    let r = send(
        &http1_client(),
        request(Method::POST, &fb.url("/u"))
            .body(full(over))
            .unwrap(),
    )
    .await;
    assert_fusebox_error(&r, 413, "REQUEST_TOO_LARGE", None);
    assert_eq!(up.hits(), 1, "the oversized body was not forwarded");
}

/// A body sent chunked (no declared length) that passes `max_request_body` is cut: no
/// response has started, so the caller gets 413 REQUEST_TOO_LARGE
/// (docs/configuration.md), although it is still sending; the upstream never receives
/// the whole body, nor a complete one over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_chunked_body_over_limit_is_cut_with_413() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "max_request_body = \"64KiB\"")).await;
    let (tx, body) = channel_body(2);
    tokio::spawn(async move {
        for ch in big_chunks() {
            if tx.send(ch).await.is_err() {
                return; // the request was abandoned
            }
        }
    });
    let r = send(
        &http1_client(),
        request(Method::POST, &fb.url("/u")).body(body).unwrap(),
    )
    .await;
    // Cut after routing: the error names the upstream it was routed to.
    assert_fusebox_error(&r, 413, "REQUEST_TOO_LARGE", Some("app"));
    // Whatever reached the upstream is settled (its body read ended) before judging.
    let hits = up.hits();
    up.wait_requests(hits).await;
    for rec in up.requests() {
        assert!(
            !(rec.body_complete && rec.body.len() == BIG),
            "the upstream received the whole over-limit body"
        );
        assert!(
            !rec.body_complete || rec.body.len() <= 64 * 1024,
            "the upstream saw a complete body of {} bytes, over the limit",
            rec.body.len()
        );
    }
}

/// A caller trickling header lines (slowloris) gets `408 REQUEST_TIMEOUT` (the
/// contract's JSON error) and is disconnected once `header_read_timeout` passes,
/// although it never stops sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_after_header_read_timeout() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "header_read_timeout = \"300ms\"")).await;
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let mut closed = None;
    // Bounded: at most 100 lines, 100 ms apart (10 s), far past the 300 ms limit.
    for i in 0..100 {
        if conn
            .write(format!("X-Drip-{i}: x\r\n").as_bytes())
            .await
            .is_err()
        {
            closed = Some(Vec::new());
            break;
        }
        if let Ending::Closed(data) = conn.wait_closed(Duration::from_millis(100)).await {
            closed = Some(data);
            break;
        }
    }
    let data = closed.expect("a slowloris connection was kept open for 10 s");
    assert_request_timeout(&data);
    assert_eq!(up.hits(), 0);
}

/// The bytes are one 408 with the contract's error: `x-fusebox-error`, JSON body with
/// the code, ids echoed, and the connection closed.
fn assert_request_timeout(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a whole 408 response, got {text:?}"));
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-fusebox-error: request_timeout"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(v["error"]["code"], "REQUEST_TIMEOUT");
    let rid = v["error"]["request_id"].as_str().expect("request_id");
    assert!(head.contains(&format!("x-request-id: {rid}")), "{head}");
}

/// A caller that sends part of its headers and goes silent gets `408 REQUEST_TIMEOUT`
/// and is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_partial_headers_are_cut_after_header_read_timeout() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "header_read_timeout = \"300ms\"")).await;
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    match conn.wait_closed(WAIT).await {
        Ending::Closed(data) => assert_request_timeout(&data),
        Ending::Open => panic!("a connection with unfinished headers stayed open for {WAIT:?}"),
    }
    assert_eq!(up.hits(), 0);
    // Answered like any request: counted (no route, no method read).
    crate::common::prom::wait_metric(
        fb.admin_addr,
        "gateway_proxy_requests_total",
        "method=\"OTHER\",route=\"\",service=\"\",status=\"408\"",
        1.0,
    )
    .await;
}

/// With `max_connections = 1`, a second connection is not served while the first is
/// open, and is served once the first closes. "Not served" is judged after three more
/// requests on the first connection, sent after the second's and served: had fusebox
/// taken the second connection, its request would have reached the upstream too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_connection_waits_while_max_connections_is_reached() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "max_connections = 1\nidle_timeout = \"60s\"",
    ))
    .await;
    let req = b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n";

    let mut first = RawConn::connect(fb.addr).await;
    first.write(req).await.unwrap();
    assert_eq!(first.read_response().await.status, 200);

    // The kernel completes the handshake, but fusebox must not serve it yet.
    let mut second = RawConn::connect(fb.addr).await;
    second.write(req).await.unwrap();

    // The first one still works (keep-alive), while the second waits.
    for _ in 0..3 {
        first.write(req).await.unwrap();
        assert_eq!(first.read_response().await.status, 200);
    }
    assert_eq!(
        up.hits(),
        4,
        "only the first connection's requests reached the upstream"
    );
    assert!(
        second.response_within(Duration::ZERO).await.is_none(),
        "a second connection was served past max_connections = 1"
    );

    // Once the first closes, the second is served.
    drop(first);
    assert_eq!(second.read_response().await.status, 200);
    assert_eq!(up.hits(), 5);
}

/// A keep-alive connection serves several requests, then is closed once idle for
/// `idle_timeout`, and not sooner (header_read_timeout is long here, so only
/// idle_timeout can close it within the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "idle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
    ))
    .await;
    let mut conn = RawConn::connect(fb.addr).await;
    for _ in 0..3 {
        conn.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(conn.read_response().await.status, 200);
    }
    let idle_from = std::time::Instant::now();
    assert_eq!(
        conn.wait_closed(WAIT).await,
        Ending::Closed(Vec::new()),
        "an idle keep-alive connection must be closed after idle_timeout"
    );
    // Never before it: a client whose own keep-alive timeout is just under fusebox's
    // must not send on a connection fusebox is already closing.
    let idle = idle_from.elapsed();
    assert!(
        idle >= std::time::Duration::from_millis(300),
        "closed after {idle:?} idle, before idle_timeout"
    );
}

/// A connection that connects and sends nothing is closed after `idle_timeout`, as an
/// idle keep-alive is (fusebox waits for its first bytes before it sets anything up for
/// it), and it holds no slot after that: with `max_connections = 1`, the next
/// connection is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_after_idle_timeout() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "max_connections = 1\nidle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
    ))
    .await;
    let mut silent = RawConn::connect(fb.addr).await;
    assert_eq!(
        silent.wait_closed(WAIT).await,
        Ending::Closed(Vec::new()),
        "a connection that never sent a byte must be closed after idle_timeout"
    );
    let mut next = RawConn::connect(fb.addr).await;
    next.write(b"GET /n HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(next.read_response().await.status, 200);
    assert_eq!(up.hits(), 1);
}

/// A connection that stays silent while others are served is answered once it speaks:
/// waiting for its first bytes loses none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_that_speaks_late_is_served() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(up.addr, "idle_timeout = \"60s\"")).await;
    let mut late = RawConn::connect(fb.addr).await;
    let mut other = RawConn::connect(fb.addr).await;
    for _ in 0..3 {
        other
            .write(b"GET /o HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(other.read_response().await.status, 200);
    }
    // Split across writes: the head's first byte, then the rest.
    late.write(b"G").await.unwrap();
    late.write(b"ET /late HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let r = late.read_response().await;
    assert_eq!(r.status, 200);
    assert_eq!(up.hits(), 4);
    assert_eq!(up.last().path_and_query(), "/late");
}

/// `header_read_timeout` guards a request head that has started arriving; it must not
/// cut a keep-alive connection that is merely idle between requests (that is
/// `idle_timeout`'s job, 60 s here). While it idles, two slow heads on other
/// connections, one after the other, are each cut with a 408: by the second cut the
/// idle connection has waited more than twice `header_read_timeout`, and must still be
/// open and serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_outlives_header_read_timeout() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "header_read_timeout = \"200ms\"\nidle_timeout = \"60s\"",
    ))
    .await;
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.status, 200);
    for _ in 0..2 {
        let mut slow = RawConn::connect(fb.addr).await;
        slow.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        match slow.wait_closed(WAIT).await {
            Ending::Closed(data) => assert_request_timeout(&data),
            Ending::Open => panic!("a slow head stayed open for {WAIT:?}"),
        }
    }
    // The idle connection must still be open...
    assert_eq!(
        conn.wait_closed(Duration::ZERO).await,
        Ending::Open,
        "an idle keep-alive connection was closed by header_read_timeout, long before idle_timeout"
    );
    // ...and still serve.
    conn.write(b"GET /k HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(conn.read_response().await.status, 200);
}

/// An idle HTTP/2 caller that answers nothing (a hung client, a dead path) is closed
/// too: the GOAWAY's PING goes unanswered, and the connection is dropped a moment
/// later instead of holding its slot forever. With `max_connections = 1`, the next
/// caller is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2_caller_that_answers_nothing_is_closed() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "max_connections = 1\nidle_timeout = \"300ms\"\nheader_read_timeout = \"30s\"",
    ))
    .await;
    let mut mute = RawConn::connect(fb.addr).await;
    // The preface and an empty SETTINGS frame; then nothing: no SETTINGS ack, no PING
    // answer, no stream.
    mute.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let ending = mute.wait_closed(WAIT).await;
    assert!(
        matches!(ending, Ending::Closed(_)),
        "the mute h2 connection stayed open: {ending:?}"
    );
    let r = get(&http1_client(), &fb.url("/after")).await;
    assert_eq!(r.status, 200, "the slot is free again");
}
