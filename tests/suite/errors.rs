//! Errors fusebox answers itself (DESIGN.md "Errors that fusebox itself answers"): the
//! status, `x-fusebox-error`, the JSON body with code, message, upstream and the ids.
//! Timeouts (UPSTREAM_TIMEOUT, DEADLINE_EXCEEDED) are in `timeouts.rs`, size limits
//! (REQUEST_TOO_LARGE) in `limits.rs`.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404_with_contract_body() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let config = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], ""),
        route_toml("api", "/api", "app", "")
    );
    let fb = spawn_fusebox(&config).await;
    let c = http1_client();
    let r = get(&c, &fb.url("/other")).await;
    assert_fusebox_error(&r, 404, "NO_ROUTE", None);
    assert!(is_uuid_v4(r.header("x-request-id").unwrap()));

    // The caller's correlation id is the one in the error body.
    let r = send(
        &c,
        request(Method::GET, &fb.url("/apix"))
            .header("x-correlation-id", "client-corr-7")
            .header("x-request-id", "client-req-7")
            .body(empty())
            .unwrap(),
    )
    .await;
    let v = assert_fusebox_error(&r, 404, "NO_ROUTE", None);
    assert_eq!(v["error"]["correlation_id"], "client-corr-7");
    assert_eq!(v["error"]["request_id"], "client-req-7");
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_502_upstream_connect_failed() {
    let dead = closed_port();
    let config = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("down", &[dead], ""),
        route_toml("all", "/", "down", "")
    );
    let fb = spawn_fusebox(&config).await;
    let c = http1_client();
    for method in [Method::GET, Method::POST] {
        let r = send(
            &c,
            request(method, &fb.url("/x"))
                .body(full("payload"))
                .unwrap(),
        )
        .await;
        assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("down"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_is_502_upstream_reset() {
    let up = TestUpstream::start(Behaviour::Reset).await;
    let config = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("flaky", &[up.addr], ""),
        route_toml("all", "/", "flaky", "")
    );
    let fb = spawn_fusebox(&config).await;
    let c = http1_client();
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 502, "UPSTREAM_RESET", Some("flaky"));
    assert_eq!(up.hits(), 1, "the request reached the upstream once");

    // The proxy recovers: the next request on a healthy upstream succeeds.
    up.set(Behaviour::ok("back"));
    let r = get(&c, &fb.url("/x")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "back");
}

/// Malformed framing (an invalid Content-Length) is refused with 400 and never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_content_length_is_400_and_not_forwarded() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    for cl in ["abc", "-1", "5, 6"] {
        let mut conn = RawConn::connect(fb.addr).await;
        let req = format!("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {cl}\r\n\r\nhello");
        conn.write(req.as_bytes()).await.unwrap();
        let resp = conn.read_response().await;
        assert_eq!(resp.status, 400, "Content-Length: {cl}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
}

/// Error answers carry the ids of the request like any response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_echo_valid_caller_ids() {
    let fb = spawn_fusebox(&simple_config(closed_port())).await;
    let r = send(
        &http1_client(),
        request(Method::GET, &fb.url("/x"))
            .header("x-correlation-id", "trace-me")
            .body(empty())
            .unwrap(),
    )
    .await;
    let v = assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("app"));
    assert_eq!(r.header("x-correlation-id"), Some("trace-me"));
    assert_eq!(v["error"]["correlation_id"], "trace-me");
}
