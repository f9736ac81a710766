//! HTTP/2 prior knowledge (h2c) from the caller to fusebox, on the same port as
//! HTTP/1.1; the upstream (protocol http1) still gets HTTP/1.1 with a Host header.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_get_and_post_are_forwarded() {
    let up = TestUpstream::start(Behaviour::ok("over h2").with_header("x-up", "1")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = h2c_client();

    let r = send(
        &c,
        request(Method::GET, &fb.url("/h2/get?q=1"))
            .header("x-correlation-id", "h2-corr")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "over h2");
    assert_eq!(r.header("x-up"), Some("1"));
    assert_eq!(r.header("x-correlation-id"), Some("h2-corr"));
    let rec = up.last();
    assert_eq!(rec.version, Version::HTTP_11, "protocol = http1 upstream");
    assert_eq!(rec.path_and_query(), "/h2/get?q=1");
    assert_eq!(
        rec.header("host"),
        fb.addr.to_string(),
        ":authority becomes Host"
    );
    assert_eq!(rec.header("x-correlation-id"), "h2-corr");

    let payload = random_bytes(200 * 1024, 21);
    let r = send(
        &c,
        request(Method::POST, &fb.url("/h2/post"))
            .body(full(payload.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let rec = up.last();
    assert_eq!(rec.method, Method::POST);
    assert!(rec.body == payload, "h2 body arrived changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_concurrent_streams_on_one_connection() {
    let up = TestUpstream::start(Behaviour::Echo).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let c = h2c_client();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        let url = fb.url(&format!("/stream/{i}"));
        tasks.push(tokio::spawn(async move {
            send(
                &c,
                request(Method::POST, &url)
                    .body(full(format!("body-{i}")))
                    .unwrap(),
            )
            .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = within(WAIT, "concurrent h2 responses", t).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.version, Version::HTTP_2);
        let v = r.json();
        assert_eq!(v["path"], format!("/stream/{i}"));
        assert_eq!(v["body"], format!("body-{i}"));
    }
    assert_eq!(up.hits(), 20);
}

/// Errors fusebox answers itself reach h2 callers in the same shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_gets_contract_errors() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let config = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], ""),
        route_toml("api", "/api", "app", "")
    );
    let fb = spawn_fusebox(&config).await;
    let r = get(&h2c_client(), &fb.url("/nowhere")).await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_fusebox_error(&r, 404, "NO_ROUTE", None);
}

/// Proves: an HTTP/2 upstream (`protocol = "h2c"`) gets the caller's authority as
/// `:authority`, as an HTTP/1.1 upstream gets it in `Host`, and no `host` header beside
/// it (RFC 9113 8.3.1; strict servers, Python's h2 and the gRPC servers built on it,
/// refuse a `host` that differs from `:authority`). Before, `:authority` was the
/// endpoint's address and the caller's `Host` went along too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_upstream_gets_the_callers_authority_and_no_host_header() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], "protocol = \"h2c\""),
        route_toml("all", "/", "app", "")
    ))
    .await;
    for (client, caller) in [(http1_client(), "detect.internal:8080"), (h2c_client(), "")] {
        let mut req = request(Method::GET, &fb.url("/x"));
        if !caller.is_empty() {
            req = req.header("host", caller);
        }
        let r = send(&client, req.body(empty()).unwrap()).await;
        assert_eq!(r.status, 200);
        let rec = up.last();
        assert_eq!(rec.version, Version::HTTP_2);
        let want = if caller.is_empty() {
            fb.addr.to_string()
        } else {
            caller.to_owned()
        };
        assert_eq!(
            rec.uri.authority().map(|a| a.as_str()),
            Some(want.as_str()),
            ":authority is the caller's"
        );
        assert_eq!(rec.opt_header("host"), None, "no host beside :authority");
    }
}

/// An h2c upstream that refuses every stream with `REFUSED_STREAM`.
async fn refusing_h2_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    count.fetch_add(1, Ordering::SeqCst);
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    (addr, refused)
}

/// RFC 9113 8.7: a stream the upstream refused (`REFUSED_STREAM`) was not processed,
/// so it is retried on another endpoint for any method, as a connect failure is (when
/// its body can still be sent again): four POSTs without an `Idempotency-Key` all get
/// the other endpoint's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_retried_for_any_method() {
    use crate::common::scripted::*;
    let (refusing, refused) = refusing_h2_upstream().await;
    let up = Scripted::ok("served").await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[refusing, up.addr])
            .extra("protocol = \"h2c\"")
            .retry("max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = http1_client();
    for i in 0..4 {
        let r = send(
            &c,
            request(Method::POST, &fb.url(&format!("/infer/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "served"),
            "POST {i}"
        );
    }
    assert!(
        refused.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "round robin sent some first attempts to the refusing endpoint"
    );
    assert_eq!(up.hits(), 4);
}

/// An HTTP/2 caller that resets its stream with `NO_ERROR` mid-body (the stream ends
/// cleanly, short of its `content-length`) broke the request itself, as an HTTP/1.1
/// caller closing mid-body does: the endpoint's breaker records nothing and nothing
/// is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_reset_mid_body_is_the_callers_fault() {
    use crate::common::scripted::*;
    let up = Scripted::start(Behaviour::Echo).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .breaker("failure_threshold = 1")
            .retry("max_retries = 2\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(fb.addr)
        .await
        .expect("connect");
    let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    for i in 0..6 {
        let req = http::Request::post(format!("http://{}/upload/{i}", fb.addr))
            .header("content-length", "100000")
            .body(())
            .unwrap();
        let (_resp, mut stream) = client.send_request(req, false).expect("send");
        stream
            .send_data(bytes::Bytes::from(vec![b'x'; 1000]), false)
            .expect("data");
        up.wait_hits(i + 1).await;
        stream.send_reset(h2::Reason::NO_ERROR);
        // The request is over (answered 400, or dropped with the stream) before the
        // next; the breaker is read after the last.
        crate::common::prom::wait_in_flight(fb.admin(), "all", 0.0).await;
    }
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(
        (stats.failure_count, stats.consecutive_failures),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(up.hits(), 6, "nothing retried");
}

/// A raw HTTP/2 upstream that shuts down gracefully on its first connection: it answers
/// that connection's first request with `GOAWAY(last_stream_id = 0, NO_ERROR)`, so that
/// stream was promised unprocessed, and keeps the socket open. Every later connection
/// answers each request `200`. Counts connections and the requests it refused.
async fn going_away_h2_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let refused = std::sync::Arc::new(AtomicUsize::new(0));
    let (c, r) = (conns.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            let refused = r.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if tcp.read_exact(&mut preface).await.is_err() {
                    return;
                }
                if tcp.write_all(&frame(4, 0, 0, &[])).await.is_err() {
                    return;
                }
                let mut gone_away = false;
                loop {
                    let mut head = [0u8; 9];
                    if tcp.read_exact(&mut head).await.is_err() {
                        return;
                    }
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if tcp.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let reply = match kind {
                        // SETTINGS (not an ACK): acknowledge it.
                        4 if flags & 1 == 0 => frame(4, 1, 0, &[]),
                        // PING (not an ACK): answer it.
                        6 if flags & 1 == 0 => frame(6, 1, 0, &payload),
                        // HEADERS: the first connection goes away; the others answer
                        // `:status 200` (HPACK static index 8) and end the stream.
                        1 if first => {
                            if gone_away {
                                continue;
                            }
                            gone_away = true;
                            refused.fetch_add(1, Ordering::SeqCst);
                            frame(7, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0])
                        }
                        1 => frame(1, 0x4 | 0x1, stream, &[0x88]),
                        _ => continue,
                    };
                    if tcp.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, refused)
}

/// RFC 9113 6.8: streams above a `GOAWAY`'s last stream id were not processed. An
/// upstream restarting gracefully (one endpoint, a rolling restart) sends one; the
/// request it left unprocessed is retried on a new connection, for any method, and the
/// endpoint's breaker records no failure. The connection that went away is not reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_a_graceful_goaway_left_unprocessed_is_retried() {
    use crate::common::scripted::*;
    let (addr, conns, refused) = going_away_h2_upstream().await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[addr])
            .extra("protocol = \"h2c\"")
            .breaker("failure_threshold = 1")
            .retry("max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = http1_client();
    for i in 0..4 {
        let r = send(
            &c,
            request(Method::POST, &fb.url(&format!("/infer/{i}")))
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status.as_u16(), 200, "POST {i}: {}", r.text());
    }
    let sa = std::sync::atomic::Ordering::SeqCst;
    assert_eq!(refused.load(sa), 1, "the first connection went away once");
    assert_eq!(
        conns.load(sa),
        2,
        "one new connection, the gone one not reused"
    );
    assert_eq!(
        crate::common::prom::retries_by_reason(fb.admin(), "app").await,
        [("connect_failure".to_owned(), 1.0)].into_iter().collect(),
        "the one refused request was retried once"
    );
    let stats = fb
        .endpoint("app", addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(stats.failure_count, 0, "{stats:?}");
    assert_eq!(
        fb.breaker_state("app", addr),
        fusebox::upstream::breaker::BreakerState::Closed
    );
}

/// Proves: health probes to an HTTP/2 upstream carry the endpoint as `:authority` and
/// no `host` header (RFC 9113 8.3.1), as proxied requests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_health_probes_carry_authority_and_no_host() {
    use crate::common::scripted::*;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let _ = tx.send((
                        req.uri().path().to_owned(),
                        req.uri().authority().map(|a| a.to_string()),
                        req.headers().get("host").cloned(),
                    ));
                    let _ = respond.send_response(http::Response::new(()), true);
                }
            });
        }
    });
    let _fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[addr])
            .extra("protocol = \"h2c\"")
            .table(
                "health_check",
                "path = \"/healthz\"\ninterval = \"50ms\"\ntimeout = \"1s\""
            )
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let (path, authority, host) = within(WAIT, "a health probe", rx.recv())
        .await
        .expect("a probe");
    assert_eq!(path, "/healthz");
    assert_eq!(authority, Some(addr.to_string()));
    assert_eq!(host, None, "no host beside :authority");
}

/// RFC 9110 9.3.2: an answer to HEAD has no content, also when fusebox answers itself
/// (an error, a static fallback). Over HTTP/2 a DATA frame there is a stream error for
/// the caller, which then never sees the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_head_answered_by_fusebox_carries_no_body() {
    let up = TestUpstream::start(Behaviour::ok("x")).await;
    let cfg = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], ""),
        route_toml("only", "/only", "app", "")
    );
    let fb = spawn_fusebox(&cfg).await;
    let c = h2c_client();
    let get = send(
        &c,
        request(Method::GET, &fb.url("/nowhere"))
            .body(empty())
            .unwrap(),
    )
    .await;
    let r = send(
        &c,
        request(Method::HEAD, &fb.url("/nowhere"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(r.version, Version::HTTP_2);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-fusebox-error"), Some("NO_ROUTE"));
    assert!(r.body.is_empty(), "HEAD has no body");
    assert_eq!(
        r.header("content-length"),
        Some(get.body.len().to_string().as_str()),
        "the length the GET's answer has"
    );
}
