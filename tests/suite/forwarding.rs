//! Forwarding: a request reaches the upstream with its method, path, query, headers and
//! body bytes unchanged, the upstream's answer comes back unchanged, connections to the
//! upstream are pooled, and bodies stream both ways instead of being buffered whole.

use crate::common::*;
use http_body_util::BodyExt;

/// A GET keeps method, path and query; the upstream's status, headers and body return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_forwarded_and_answer_returned_unchanged() {
    let up = TestUpstream::start(
        Behaviour::ok("hello from upstream")
            .with_header("x-up", "yes")
            .with_header("content-type", "text/plain"),
    )
    .await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let r = send(
        &c,
        request(Method::GET, &fb.url("/v1/items/42?a=1&b=two%20words"))
            .header("x-custom", "abc")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello from upstream");
    assert_eq!(r.header("x-up"), Some("yes"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert_eq!(up.hits(), 1);
    let rec = up.last();
    assert_eq!(rec.method, Method::GET);
    assert_eq!(rec.path_and_query(), "/v1/items/42?a=1&b=two%20words");
    // RFC 9112 3.2.1: to an origin server, the request target is in origin form.
    assert_eq!(
        rec.uri.to_string(),
        "/v1/items/42?a=1&b=two%20words",
        "the upstream got an absolute-form request target"
    );
    assert_eq!(rec.header("x-custom"), "abc");
    assert!(rec.body.is_empty());
    assert!(rec.opt_header("x-fusebox-error").is_none());
}

/// Every method is forwarded as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_forwarded_as_sent() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    for m in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
    ] {
        let r = send(&c, request(m.clone(), &fb.url("/m")).body(empty()).unwrap()).await;
        assert_eq!(r.status, 200, "{m}");
        assert_eq!(up.last().method, m);
    }
    let r = send(
        &c,
        request(Method::HEAD, &fb.url("/m")).body(empty()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty(), "HEAD has no body");
    assert_eq!(up.last().method, Method::HEAD);
}

/// An upstream's own error status and body pass through unchanged: fusebox does not
/// mistake them for its own errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_statuses_pass_through() {
    let up = TestUpstream::start(Behaviour::respond(404, "upstream says no")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let r = get(&c, &fb.url("/missing")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), "upstream says no");
    assert_eq!(r.header("x-fusebox-error"), None);

    up.set(Behaviour::respond(500, "boom"));
    let r = get(&c, &fb.url("/boom")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.text(), "boom");
    assert_eq!(r.header("x-fusebox-error"), None);
}

/// A 300 KB POST with a declared length arrives byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_300kb_arrives_byte_exact() {
    let up = TestUpstream::start(Behaviour::ok("stored")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let payload = random_bytes(300 * 1024, 7);
    let r = send(
        &c,
        request(Method::POST, &fb.url("/upload"))
            .header("content-type", "application/octet-stream")
            .body(full(payload.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "stored");
    let rec = up.last();
    assert_eq!(rec.method, Method::POST);
    assert!(rec.body_complete);
    assert_eq!(rec.body.len(), payload.len());
    assert!(rec.body == payload, "body differs from what was sent");
    assert_eq!(rec.header("content-type"), "application/octet-stream");
}

/// A 300 KB POST sent chunked (no declared length) arrives byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_post_arrives_byte_exact() {
    let up = TestUpstream::start(Behaviour::ok("stored")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let payload = random_bytes(300 * 1024, 11);
    let (tx, body) = channel_body(4);
    let chunks: Vec<Bytes> = payload
        .chunks(30 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    tokio::spawn(async move {
        for ch in chunks {
            if tx.send(ch).await.is_err() {
                return;
            }
        }
    });
    let r = send(
        &c,
        request(Method::POST, &fb.url("/upload"))
            .body(body)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.last();
    assert!(rec.body_complete);
    assert!(
        rec.body == payload,
        "chunked body differs from what was sent"
    );
}

/// The request body streams: the upstream receives the first chunk while the caller
/// still holds back the rest (a store-and-forward proxy would deliver nothing yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_to_upstream_before_it_ends() {
    let up = TestUpstream::start(Behaviour::ok("done")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let first = random_bytes(64 * 1024, 3);
    let rest = random_bytes(256 * 1024, 5);
    let (tx, body) = channel_body(1);
    let req = request(Method::POST, &fb.url("/stream-in"))
        .body(body)
        .unwrap();
    let pending = tokio::spawn({
        let c = c.clone();
        async move { try_send(&c, req).await }
    });
    tx.send(Bytes::from(first.clone())).await.unwrap();
    eventually("the first request chunk at the upstream", WAIT, || {
        up.body_bytes_seen() >= first.len() as u64
    })
    .await;
    tx.send(Bytes::from(rest.clone())).await.unwrap();
    drop(tx);
    let r = pending.await.unwrap().expect("request");
    assert_eq!(r.status, 200);
    let rec = up.last();
    assert!(rec.body_complete);
    assert_eq!(&rec.body[..first.len()], &first[..]);
    assert_eq!(&rec.body[first.len()..], &rest[..]);
}

/// A 4 MiB response streams: the caller gets the first chunk while the upstream waits
/// (for a signal given only after that chunk arrived) before sending the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_megabyte_response_streams_without_buffering() {
    let gate = Gate::new();
    let spec = StreamSpec {
        chunk_size: 64 * 1024,
        chunks: 64,
        interval: std::time::Duration::ZERO,
        gate_after_first: Some(gate.clone()),
    };
    let total = spec.total();
    let up = TestUpstream::start(Behaviour::Stream(spec)).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    let mut resp = send_head(
        &c,
        request(Method::GET, &fb.url("/video"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut got: Vec<u8> = Vec::with_capacity(total);
    // Before the gate opens, only the first chunk exists anywhere.
    while got.is_empty() {
        let frame = within(
            WAIT,
            "the first response chunk before the gate opens",
            resp.body_mut().frame(),
        )
        .await
        .expect("body ended before the first chunk")
        .expect("body error");
        if let Ok(d) = frame.into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert!(
        got.len() <= 64 * 1024,
        "more than the first chunk arrived before the gate opened"
    );
    gate.open();
    while let Some(frame) = within(WAIT, "the rest of the response", resp.body_mut().frame()).await
    {
        if let Ok(d) = frame.expect("body error").into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got.len(), total);
    assert!(got == pattern(0, total), "streamed bytes differ");
}

/// A body streamed slowly in small chunks arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stream_arrives_whole() {
    let spec = StreamSpec {
        chunk_size: 1000,
        chunks: 10,
        interval: std::time::Duration::from_millis(20),
        gate_after_first: None,
    };
    let up = TestUpstream::start(Behaviour::Stream(spec)).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let r = get(&http1_client(), &fb.url("/slow")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 10_000);
    assert!(r.body == pattern(0, 10_000));
}

/// Upstream connections are kept alive and reused: sequential requests do not each
/// open a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = http1_client();
    for _ in 0..30 {
        assert_eq!(get(&c, &fb.url("/k")).await.status, 200);
    }
    assert_eq!(up.hits(), 30);
    assert!(
        up.connections() <= 15,
        "30 sequential requests opened {} upstream connections",
        up.connections()
    );
}

/// An endpoint given as a DNS name (`localhost:PORT`) is resolved into one endpoint per
/// answer (127.0.0.1, and ::1 where `localhost` answers that too), and every answer is
/// served: the test upstream listens on each answered address with the same port, and
/// round robin sends each address its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_name_endpoint_is_resolved() {
    let mut ips: Vec<std::net::IpAddr> = tokio::net::lookup_host(("localhost", 0))
        .await
        .expect("resolve localhost")
        .map(|a| a.ip())
        .collect();
    ips.sort();
    ips.dedup();
    assert!(
        !ips.is_empty() && ips.iter().all(|ip| ip.is_loopback()),
        "localhost must answer loopback addresses only: {ips:?}"
    );
    let up = TestUpstream::start_on(&ips, Behaviour::ok("by name")).await;
    let port = up.addr.port();
    let config = format!(
        "{}[upstreams.named]\nendpoints = [\"localhost:{port}\"]\n\n{}",
        base_config(""),
        route_toml("all", "/", "named", "")
    );
    let fb = spawn_fusebox(&config).await;
    let snap = fb.running().snapshot();
    let mut resolved: Vec<std::net::SocketAddr> = snap.upstreams["named"]
        .endpoints()
        .iter()
        .map(|e| e.addr)
        .collect();
    resolved.sort();
    let mut want = up.addrs.clone();
    want.sort();
    assert_eq!(resolved, want, "one endpoint per answer for localhost");

    let c = http1_client();
    let rounds = 3;
    for _ in 0..rounds * want.len() {
        let r = get(&c, &fb.url("/dns")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "by name");
    }
    for addr in &want {
        let n = up.requests().iter().filter(|r| r.local == *addr).count();
        assert_eq!(n, rounds, "requests answered on {addr}");
    }
}

/// An upstream that answers every request head it reads with `response`, verbatim.
async fn verbatim_upstream(response: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    match tcp.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        if tcp.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// RFC 9112 6.3: an upstream answer framed by `Transfer-Encoding` and carrying a
/// `Content-Length` too reaches the caller without that length (it would announce a
/// body the re-framed answer does not have: truncated or cut short), and the caller's
/// connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_length_beside_transfer_encoding_is_not_forwarded() {
    let up = verbatim_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    .await;
    let fb = spawn_fusebox(&simple_config(up)).await;
    let mut conn = RawConn::connect(fb.addr).await;
    for _ in 0..2 {
        conn.write(b"GET /te HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("sent");
        let r = conn.read_response().await;
        assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
        assert_ne!(r.header("content-length"), Some("50"), "{:?}", r.headers);
    }
}

/// The caller's `Upgrade` is removed as hop-by-hop, so an upstream's 101 answers
/// nothing that was asked: the caller gets 502 `UPSTREAM_RESET` (fusebox does not
/// proxy protocol upgrades), not a 101 on a connection that carries nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_is_a_bad_gateway() {
    let up = verbatim_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let fb = spawn_fusebox(&simple_config(up)).await;
    let r = send(
        &http1_client(),
        request(Method::GET, &fb.url("/ws"))
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(empty())
            .expect("request"),
    )
    .await;
    assert_fusebox_error(&r, 502, "UPSTREAM_RESET", Some("app"));
}
