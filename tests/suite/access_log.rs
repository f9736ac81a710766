//! The access log of the binary: one JSON line per request on stdout with the fields of
//! DESIGN.md "Access log", matching what the caller and the upstream saw.

use crate::common::prom::{metric, scrape, wait_metric};
use crate::common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn config(up: std::net::SocketAddr) -> String {
    format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("yolo", &[up], ""),
        route_toml("detect", "/detect", "yolo", "")
    )
    .replace("access_log = false", "access_log = true")
}

/// Waits for the access line of the request whose id the caller got back.
async fn access_line(p: &mut FuseboxProcess, request_id: &str) -> serde_json::Value {
    let rid = request_id.to_owned();
    p.wait_json(WAIT, move |v| {
        v["message"] == "access" && v["request_id"] == rid.as_str()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_request_is_logged_with_every_field() {
    let up = TestUpstream::start(Behaviour::respond(201, vec![b'r'; 77])).await;
    let mut p = spawn_binary(&config(up.addr)).await;
    let body = random_bytes(1234, 4);
    let r = send(
        &http1_client(),
        request(Method::POST, &p.url("/detect/frame?secret=1"))
            .header("x-correlation-id", "corr-log-1")
            .header("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))
            .header("x-org-id", "org123")
            .header("x-camera-id", "cam-9")
            .body(full(body))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201);
    let rid = r.header("x-request-id").unwrap().to_owned();
    let v = access_line(&mut p, &rid).await;

    assert_eq!(v["level"], "INFO", "{v}");
    let ts = v["timestamp"].as_str().expect("timestamp");
    assert!(
        ts.contains('T') && ts.ends_with('Z'),
        "RFC 3339 UTC timestamp: {ts}"
    );
    assert_eq!(v["service"], "fusion-test");
    assert_eq!(v["route"], "detect");
    assert_eq!(v["upstream"], "yolo");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/detect/frame", "the path, without the query");
    assert_eq!(v["status"], 201);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{v}");
    assert_eq!(v["attempts"], 1);
    assert_eq!(v["correlation_id"], "corr-log-1");
    assert_eq!(v["request_id"], rid.as_str());
    assert_eq!(v["trace_id"], TRACE);
    assert_eq!(v["org_id"], "org123");
    assert_eq!(v["camera_id"], "cam-9");
    assert!(v["error_code"].is_null(), "no error_code on success: {v}");
    assert_eq!(v["bytes_in"], 1234);
    assert_eq!(v["bytes_out"], 77);

    // The ids in the log are the ones the upstream got.
    let rec = up.last();
    assert_eq!(rec.header("x-request-id"), rid);
    assert!(rec.header("traceparent").contains(TRACE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fusebox_errors_are_logged_with_their_code() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let mut p = spawn_binary(&config(up.addr)).await;
    let c = http1_client();

    let r = get(&c, &p.url("/nowhere")).await;
    assert_eq!(r.status, 404);
    let v = access_line(&mut p, r.header("x-request-id").unwrap()).await;
    assert_eq!(v["status"], 404);
    assert_eq!(v["error_code"], "NO_ROUTE");
    assert!(v["route"].is_null(), "{v}");
    assert_eq!(v["path"], "/nowhere");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["correlation_id"], r.header("x-correlation-id").unwrap());
    let trace = v["trace_id"].as_str().expect("a trace id even for errors");
    assert_eq!(trace.len(), 32, "{v}");
    assert_eq!(v["attempts"], 0);

    // An upstream that answers nothing: the endpoint tried is logged.
    up.set(Behaviour::Reset);
    let r = get(&c, &p.url("/detect")).await;
    assert_eq!(r.status, 502);
    let v = access_line(&mut p, r.header("x-request-id").unwrap()).await;
    assert_eq!(v["status"], 502);
    assert_eq!(v["error_code"], "UPSTREAM_RESET");
    assert_eq!(v["route"], "detect");
    assert_eq!(v["upstream"], "yolo");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["attempts"], 1);
}

/// Five requests, then a sixth: once the sixth's line is in, each of the five has
/// exactly one line (a duplicate written later than its first would still come before
/// the sixth's, the lines being written in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_per_request() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let mut p = spawn_binary(&config(up.addr)).await;
    let c = http1_client();
    let mut ids = Vec::new();
    for _ in 0..5 {
        let r = get(&c, &p.url("/detect/n")).await;
        ids.push(r.header("x-request-id").unwrap().to_owned());
    }
    let sentinel = get(&c, &p.url("/detect/last")).await;
    access_line(&mut p, sentinel.header("x-request-id").unwrap()).await;
    let lines_of = |p: &FuseboxProcess, id: &str| {
        p.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "access" && v["request_id"] == id)
            .count()
    };
    for id in &ids {
        assert_eq!(
            lines_of(&p, id),
            1,
            "one access line for {id}:\n{}",
            p.seen.join("\n")
        );
    }
}

/// A head that did not arrive within `header_read_timeout` is answered 408 by fusebox
/// and logged like any answer, under the ids its body names (no method or path read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_read_timeout_is_logged() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let text = config(up.addr).replace(
        "[listener]\n",
        "[listener]\nheader_read_timeout = \"300ms\"\n",
    );
    let mut p = spawn_binary(&text).await;
    let mut conn = RawConn::connect(p.addr).await;
    conn.write(b"GET /never-finished HTTP/1.1\r\nHost: t\r\n")
        .await
        .expect("sent");
    let Ending::Closed(data) = conn.wait_closed(WAIT).await else {
        panic!("the connection stayed open");
    };
    let text = String::from_utf8_lossy(&data);
    let body = text.split_once("\r\n\r\n").expect("a response").1;
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON");
    let rid = v["error"]["request_id"].as_str().expect("request_id");
    let line = access_line(&mut p, rid).await;
    assert_eq!(line["status"], 408, "{line}");
    assert_eq!(line["error_code"], "REQUEST_TIMEOUT", "{line}");
    // Two ids of their own (the contract makes each a new UUID), as in the body.
    let cid = v["error"]["correlation_id"]
        .as_str()
        .expect("correlation_id");
    assert_eq!(line["correlation_id"], cid, "{line}");
    assert_ne!(rid, cid, "one UUID for both ids");
    assert!(is_uuid_v4(rid) && is_uuid_v4(cid), "{rid} {cid}");
    // `bytes_out` counts the body, as on every other line.
    assert_eq!(line["bytes_out"], body.len() as u64, "{line}");
}

/// A caller that sends a whole request and half-closes at once (`printf ... | nc`):
/// the request is logged (cancelled, status 0) whether fusebox got to route it or not.
/// It was lost without a line when the caller's FIN came before the request's future
/// was first polled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_half_closed_at_once_is_logged_as_cancelled() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start(Behaviour::delayed(
        std::time::Duration::from_secs(3),
        Behaviour::ok("late"),
    ))
    .await;
    let mut p = spawn_binary(&config(up.addr)).await;
    for i in 0..3 {
        let rid = format!("half-closed-{i}");
        let mut s = tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect");
        let req = format!("GET /detect/x HTTP/1.1\r\nHost: t\r\nX-Request-ID: {rid}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("sent");
        s.shutdown().await.expect("half-closed");
        let v = access_line(&mut p, &rid).await;
        assert_eq!(v["status"], 0, "{v}");
        assert_eq!(v["cancelled"], true, "{v}");
        assert_eq!(v["error_code"], serde_json::Value::Null, "{v}");
    }
}

/// A caller that leaves while the answer's body streams: the line says so (`cancelled`),
/// beside the status that was sent and the bytes that went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_leaving_mid_body_is_logged_as_cancelled() {
    let gate = Gate::new();
    let spec = StreamSpec {
        chunk_size: 1000,
        chunks: 4,
        interval: std::time::Duration::ZERO,
        gate_after_first: Some(gate.clone()),
    };
    let up = TestUpstream::start(Behaviour::Stream(spec)).await;
    let mut p = spawn_binary(&config(up.addr)).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(p.addr)
        .await
        .expect("connect");
    conn.write_all(
        b"GET /detect/stream HTTP/1.1\r\nHost: t\r\nX-Request-ID: left-mid-body\r\n\r\n",
    )
    .await
    .expect("sent");
    // Read until the answer's head is in: the caller leaves after it.
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
    drop(conn); // after the head, before the gate lets the rest of the body go
    let v = access_line(&mut p, "left-mid-body").await;
    gate.open();
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["cancelled"], true, "{v}");
    assert!(v["bytes_out"].as_u64().is_some_and(|n| n < 4000), "{v}");
    // A whole answer is not marked.
    let r = get(&http1_client(), &p.url("/detect/whole")).await;
    assert_eq!(r.status, 200);
    gate.open();
    let v = access_line(&mut p, r.header("x-request-id").unwrap()).await;
    assert_eq!(v["bytes_out"], 4000, "{v}");
    assert_eq!(v.get("cancelled"), None, "{v}");
}

/// Callers that give up show in the metrics: `gateway_proxy_cancelled_total` by stage,
/// and the attempts they made in `gateway_proxy_attempts_per_request` (as the log's
/// `attempts`); before, they were in no metric at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_are_counted() {
    let up = TestUpstream::start(Behaviour::Hang).await;
    let fb = spawn_fusebox(&format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("yolo", &[up.addr], ""),
        route_toml("detect", "/detect", "yolo", "")
    ))
    .await;
    let (c, url) = (http1_client(), fb.url("/detect/x"));
    let call =
        tokio::spawn(
            async move { send(&c, request(Method::GET, &url).body(empty()).unwrap()).await },
        );
    up.wait_hits(1).await;
    call.abort(); // the caller goes away while fusebox waits for the upstream
    let _ = call.await;
    let admin = fb.admin_addr;
    wait_metric(
        admin,
        "gateway_proxy_cancelled_total",
        r#"route="detect",stage="before_response""#,
        1.0,
    )
    .await;
    wait_metric(
        admin,
        "gateway_proxy_attempts_per_request_count",
        r#"service="yolo""#,
        1.0,
    )
    .await;
    let text = scrape(admin).await;
    assert_eq!(
        metric(
            &text,
            "gateway_proxy_attempts_per_request_sum",
            r#"service="yolo""#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "gateway_proxy_cancelled_total",
            r#"route="detect",stage="during_body""#
        ),
        Some(0.0)
    );
    assert!(fb.shutdown().await);
}
