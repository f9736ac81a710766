//! Fallbacks: the static answer and the second upstream, marked `x-fusebox-fallback`,
//! used when the last attempt failed without an HTTP response (connect failure,
//! timeout) or every breaker is open, and not when the upstream did answer; each one
//! counted as `gateway_proxy_fallbacks_total{service,kind}`.

use crate::common::scripted::*;
use crate::common::*;

const STATIC: &str = "status = 200\ncontent_type = \"application/json\"\n\
                      body = '{\"detections\": [], \"degraded\": true}'";

fn proxy_tables(ups: &[UpstreamToml]) -> String {
    let mut s: String = ups.iter().map(UpstreamToml::build).collect();
    s.push_str(&route_toml("detect", "/detect", "yolo", ""));
    s
}

fn assert_static_fallback(r: &Reply) {
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-fusebox-fallback"), Some("static"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"detections": [], "degraded": true})
    );
    assert!(r.header("x-request-id").is_some(), "ids are still echoed");
}

/// Proves: when the only endpoint refuses connections, the static fallback answers
/// with its status, content type and body, marked `x-fusebox-fallback: static`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_fallback_answers_a_connect_failure() {
    let dead = dead_port(); // refuses connections while held
    let yolo = UpstreamToml::new("yolo", &[dead.addr]).table("fallback", STATIC);
    let fb = spawn_proxy(&proxy_tables(&[yolo])).await;
    let r = get(&http1_client(), &fb.url("/detect")).await;
    assert_static_fallback(&r);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 1.0);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 0.0);
}

/// Proves: a last attempt that timed out (no response headers within
/// `timeouts.request`) is answered by the static fallback too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_fallback_answers_a_timeout() {
    let up = Scripted::start(Behaviour::Hang).await;
    let yolo = UpstreamToml::new("yolo", &[up.addr])
        .table("timeouts", "request = \"150ms\"")
        .table("fallback", STATIC);
    let fb = spawn_proxy(&proxy_tables(&[yolo])).await;
    let r = get(&http1_client(), &fb.url("/detect")).await;
    assert_static_fallback(&r);
    assert_eq!(up.hits(), 1);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 1.0);
}

/// Proves: with `fallback.upstream`, a request whose primary attempt failed to connect
/// is sent to the second upstream (method, path and body intact) and its answer comes
/// back marked `x-fusebox-fallback: upstream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fallback_serves_from_the_second_upstream() {
    let cpu = Scripted::ok("cpu detections").await;
    let dead = dead_port(); // refuses connections while held
    let yolo = UpstreamToml::new("yolo", &[dead.addr]).table("fallback", "upstream = \"yolo_cpu\"");
    let fb = spawn_proxy(&proxy_tables(&[
        yolo,
        UpstreamToml::new("yolo_cpu", &[cpu.addr]),
    ]))
    .await;
    let r = call(
        &http1_client(),
        Method::POST,
        &fb.url("/detect/v1?x=1"),
        &[],
        "jpeg bytes",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "cpu detections")
    );
    assert_eq!(r.header("x-fusebox-fallback"), Some("upstream"));
    let seen = cpu.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/detect/v1")
    );
    assert_eq!(&seen[0].body[..], b"jpeg bytes");
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 1.0);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 0.0);
}

/// Proves: an upstream HTTP answer is never replaced by the fallback (the two 503s that
/// open the breaker come back unchanged); once every endpoint's breaker is open, the
/// fallback answers without the upstream being called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_answers_when_every_breaker_is_open() {
    let a = Scripted::start(Behaviour::respond(503, "gpu busy")).await;
    let b = Scripted::start(Behaviour::respond(503, "gpu busy")).await;
    let cpu = Scripted::ok("cpu detections").await;
    let yolo = UpstreamToml::new("yolo", &[a.addr, b.addr])
        .breaker("failure_threshold = 1\nrecovery_timeout = \"30s\"")
        .table("fallback", "upstream = \"yolo_cpu\"");
    let fb = spawn_proxy(&proxy_tables(&[
        yolo,
        UpstreamToml::new("yolo_cpu", &[cpu.addr]),
    ]))
    .await;
    let c = http1_client();
    for _ in 0..2 {
        let r = get(&c, &fb.url("/detect")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "gpu busy"));
        assert_eq!(r.header("x-fusebox-fallback"), None);
    }
    assert_eq!((a.hits(), b.hits(), cpu.hits()), (1, 1, 0));
    assert_eq!(
        prom::fallbacks(fb.admin(), "yolo", "upstream").await,
        0.0,
        "the upstream's answers were not replaced"
    );
    for _ in 0..3 {
        let r = get(&c, &fb.url("/detect")).await;
        assert_eq!(
            (r.status.as_u16(), r.text().as_str()),
            (200, "cpu detections")
        );
        assert_eq!(r.header("x-fusebox-fallback"), Some("upstream"));
    }
    assert_eq!((a.hits(), b.hits(), cpu.hits()), (1, 1, 3));
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 3.0);
    // The breakers refused them first; the fallback answered instead of CIRCUIT_OPEN.
    assert_eq!(
        prom::rejected(fb.admin(), "detect", "circuit_open").await,
        3.0
    );
}

/// Proves: the static fallback also answers when every breaker is open (instead of
/// CIRCUIT_OPEN), and the upstream is not called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_fallback_replaces_circuit_open() {
    let up = Scripted::start(Behaviour::respond(500, "crashed")).await;
    let yolo = UpstreamToml::new("yolo", &[up.addr])
        .breaker("failure_threshold = 2\nrecovery_timeout = \"30s\"")
        .table("fallback", STATIC);
    let fb = spawn_proxy(&proxy_tables(&[yolo])).await;
    let c = http1_client();
    for _ in 0..2 {
        assert_eq!(get(&c, &fb.url("/detect")).await.status, 500);
    }
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 0.0);
    for _ in 0..3 {
        assert_static_fallback(&get(&c, &fb.url("/detect")).await);
    }
    assert_eq!(up.hits(), 2);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 3.0);
    assert_eq!(
        prom::rejected(fb.admin(), "detect", "circuit_open").await,
        3.0
    );
}

/// A caller whose deadline has already passed (`x-request-timeout-ms: 0`) made no
/// attempt, so no attempt failed: the answer is `504 DEADLINE_EXCEEDED` naming the
/// caller's deadline, not the fallback, and no fallback is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fallback_for_a_request_that_made_no_attempt() {
    let up = Scripted::start(Behaviour::Echo).await;
    let yolo = UpstreamToml::new("yolo", &[up.addr]).table("fallback", STATIC);
    let fb = spawn_proxy(&proxy_tables(&[yolo])).await;
    let r = send(
        &http1_client(),
        request(Method::GET, &fb.url("/detect"))
            .header("x-request-timeout-ms", "0")
            .body(empty())
            .expect("request"),
    )
    .await;
    let body = assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("yolo"));
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("caller")),
        "{body}"
    );
    assert_eq!(r.header("x-fusebox-fallback"), None);
    assert_eq!(up.hits(), 0);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "static").await, 0.0);
}

/// A fallback upstream that fails too answers with its own error, marked
/// `x-fusebox-fallback: upstream` (a caller can tell it from the primary's failure), and
/// `gateway_proxy_attempts_per_request` counts the fallback's attempts as the access
/// log does. Once both are open, one request counts one `circuit_open` rejection, not
/// one per upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fallback_upstream_is_marked_and_counted_once() {
    let (dead_a, dead_b) = (dead_port(), dead_port());
    let once = "max_retries = 0";
    let yolo = UpstreamToml::new("yolo", &[dead_a.addr])
        .retry(once)
        .breaker("failure_threshold = 1\nrecovery_timeout = \"60s\"")
        .table("fallback", "upstream = \"yolo_cpu\"");
    let cpu = UpstreamToml::new("yolo_cpu", &[dead_b.addr])
        .retry(once)
        .breaker("failure_threshold = 1\nrecovery_timeout = \"60s\"");
    let fb = spawn_proxy(&proxy_tables(&[yolo, cpu])).await;
    let r = get(&http1_client(), &fb.url("/detect")).await;
    assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("yolo_cpu"));
    assert_eq!(r.header("x-fusebox-fallback"), Some("upstream"));
    let text = prom::scrape(fb.admin()).await;
    assert_eq!(
        prom::metric(
            &text,
            "gateway_proxy_attempts_per_request_sum",
            "service=\"yolo\""
        ),
        Some(2.0),
        "the primary's attempt and the fallback's"
    );
    let r = get(&http1_client(), &fb.url("/detect")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo_cpu"));
    assert_eq!(r.header("x-fusebox-fallback"), Some("upstream"));
    assert_eq!(
        prom::rejected(fb.admin(), "detect", "circuit_open").await,
        1.0
    );
}

/// Proves: a POST the primary may have carried out (its attempt timed out after the
/// request was sent) is not sent again to the fallback upstream unless a retry would
/// be allowed: without a body and without `Idempotency-Key` it gets the primary's
/// 504; with `Idempotency-Key` the fallback upstream answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_may_have_been_processed_goes_to_the_fallback_only_when_retryable() {
    let primary = Scripted::start(Behaviour::Hang).await;
    let cpu = Scripted::ok("cpu detections").await;
    let yolo = UpstreamToml::new("yolo", &[primary.addr])
        .table("timeouts", "request = \"150ms\"")
        .retry("max_retries = 0")
        .table("fallback", "upstream = \"yolo_cpu\"");
    let fb = spawn_proxy(&proxy_tables(&[
        yolo,
        UpstreamToml::new("yolo_cpu", &[cpu.addr]),
    ]))
    .await;
    let c = http1_client();
    let r = call(&c, Method::POST, &fb.url("/detect/ack"), &[], "").await;
    assert_fusebox_error(&r, 504, "UPSTREAM_TIMEOUT", Some("yolo"));
    assert_eq!(r.header("x-fusebox-fallback"), None);
    assert_eq!(
        cpu.hits(),
        0,
        "a POST that may have been processed was sent again"
    );
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 0.0);

    let r = call(
        &c,
        Method::POST,
        &fb.url("/detect/ack"),
        &[("idempotency-key", "ack-1")],
        "",
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "cpu detections")
    );
    assert_eq!(r.header("x-fusebox-fallback"), Some("upstream"));
    assert_eq!(cpu.hits(), 1);
    assert_eq!(primary.hits(), 2);
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 1.0);
}

/// Proves: when the caller's deadline passes during the primary's attempt, the answer
/// is 504 `DEADLINE_EXCEEDED`, not a fallback upstream loop that has no time left
/// (which, with deadline shedding on, answered 503 `OVERLOADED` with `Retry-After`
/// once the fallback upstream had latency samples). No fallback is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_fallback_once_the_deadline_has_passed() {
    let primary = Scripted::start(Behaviour::Hang).await;
    let cpu = Scripted::ok("cpu detections").await;
    let yolo = UpstreamToml::new("yolo", &[primary.addr])
        .table("timeouts", "request = \"2s\"")
        .table("fallback", "upstream = \"yolo_cpu\"");
    let mut tables: String = [yolo, UpstreamToml::new("yolo_cpu", &[cpu.addr])]
        .iter()
        .map(UpstreamToml::build)
        .collect();
    tables.push_str(&route_toml(
        "detect",
        "/detect",
        "yolo",
        "shed_on_deadline = true",
    ));
    tables.push_str(&route_toml("cpu", "/cpu", "yolo_cpu", ""));
    let fb = spawn_proxy(&tables).await;
    let c = http1_client();
    // The fallback upstream has fresh latency samples (the prediction path is live).
    for _ in 0..3 {
        assert_eq!(get(&c, &fb.url("/cpu/warm")).await.status, 200);
    }
    let r = call(
        &c,
        Method::GET,
        &fb.url("/detect/x"),
        &[("x-request-timeout-ms", "200")],
        "",
    )
    .await;
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("yolo"));
    assert_eq!(r.header("retry-after"), None);
    assert_eq!(r.header("x-fusebox-fallback"), None);
    assert_eq!(cpu.hits(), 3, "only the warm-up requests");
    assert_eq!(prom::fallbacks(fb.admin(), "yolo", "upstream").await, 0.0);
}
