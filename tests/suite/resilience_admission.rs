//! Route admission: the concurrency limit sheds with 503 OVERLOADED (full queue, or a
//! queue wait past `queue_timeout`) and admits a queued request when a slot frees; the
//! rate limit answers 429 RATE_LIMITED per key; fault injection aborts or delays the
//! configured share of requests. Every refusal carries `Retry-After` and never reaches
//! the upstream.

use std::sync::Arc;

use crate::common::scripted::*;
use crate::common::*;
use fusebox::admission::Concurrency;
use tokio::time::Instant;

/// Upstream `app` on `up` and the given routes to it.
async fn proxy(up: &Scripted, routes: &[(&str, &str, &str)]) -> Proxy {
    let mut tables = UpstreamToml::new("app", &[up.addr]).build();
    for (name, prefix, extra) in routes {
        tables.push_str(&route_toml(name, prefix, "app", extra));
    }
    spawn_proxy(&tables).await
}

/// The concurrency limiter of route `name`.
fn limiter(fb: &Proxy, name: &str) -> Arc<Concurrency> {
    let snap = fb.running.snapshot();
    let route = snap
        .routes
        .iter()
        .find(|r| &*r.name == name)
        .expect("route");
    route.concurrency.clone().expect("a concurrency limit")
}

/// Sends a GET in a task; the reply comes back through the handle.
fn spawn_get(c: &TestClient, url: String) -> tokio::task::JoinHandle<Reply> {
    let c = c.clone();
    tokio::spawn(async move { get(&c, &url).await })
}

/// Proves: with `max_in_flight = 1` and `max_queue = 0`, a second request while one is
/// in flight gets 503 OVERLOADED with `Retry-After` at once, without reaching the
/// upstream; once the first finishes, the next request is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_in_flight_with_no_queue_is_overloaded() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let fb = proxy(
        &up,
        &[(
            "one",
            "/",
            "concurrency = { max_in_flight = 1, max_queue = 0 }",
        )],
    )
    .await;
    let c = http1_client();
    let first = spawn_get(&c, fb.url("/a"));
    up.wait_hits(1).await;

    let r = get(&c, &fb.url("/b")).await;
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("app"));
    assert!(retry_after_secs(&r) >= 1);
    assert_eq!(up.hits(), 1, "shed before the upstream");
    assert_eq!(prom::rejected(fb.admin(), "one", "overloaded").await, 1.0);

    gate.open();
    let r = within(WAIT, "the first request", first)
        .await
        .expect("task");
    assert_eq!(r.status, 200);
    let cc = limiter(&fb, "one");
    eventually("the slot to free", WAIT, || cc.in_flight() == 0).await;
    assert_eq!(get(&c, &fb.url("/c")).await.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(prom::rejected(fb.admin(), "one", "overloaded").await, 1.0);
}

/// Proves: a request over a full queue is shed at once, and a queued one that waits
/// past `queue_timeout` (300 ms) is shed after at least that wait; both OVERLOADED
/// with `Retry-After`, neither reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_queue_timeout_are_overloaded() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let cfg = "concurrency = { max_in_flight = 1, max_queue = 1, queue_timeout = \"300ms\" }";
    let fb = proxy(&up, &[("q", "/", cfg)]).await;
    let c = http1_client();
    let cc = limiter(&fb, "q");
    let first = spawn_get(&c, fb.url("/1"));
    up.wait_hits(1).await;
    let queued_at = Instant::now();
    let queued = spawn_get(&c, fb.url("/2"));
    eventually("a queued request", WAIT, || cc.queued() == 1).await;

    let r = get(&c, &fb.url("/3")).await;
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("app"));
    assert!(retry_after_secs(&r) >= 1);

    let r = within(WAIT, "the queued request", queued)
        .await
        .expect("task");
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("app"));
    assert!(retry_after_secs(&r) >= 1);
    assert!(queued_at.elapsed() >= ms(300), "shed after queue_timeout");
    assert_eq!(up.hits(), 1);
    assert_eq!(
        prom::rejected(fb.admin(), "q", "overloaded").await,
        2.0,
        "the full queue's refusal and the queue timeout's"
    );
    gate.open();
    assert_eq!(
        within(WAIT, "first", first).await.expect("task").status,
        200
    );
}

/// Proves: a queued request is admitted (and reaches the upstream) when the request
/// in flight finishes within `queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_admitted_when_a_slot_frees() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let cfg = "concurrency = { max_in_flight = 1, max_queue = 4, queue_timeout = \"5s\" }";
    let fb = proxy(&up, &[("q", "/", cfg)]).await;
    let c = http1_client();
    let cc = limiter(&fb, "q");
    let first = spawn_get(&c, fb.url("/1"));
    up.wait_hits(1).await;
    let queued = spawn_get(&c, fb.url("/2"));
    eventually("a queued request", WAIT, || cc.queued() == 1).await;
    assert_eq!(up.hits(), 1, "the queued one waits");
    gate.open();
    for t in [first, queued] {
        assert_eq!(within(WAIT, "answers", t).await.expect("task").status, 200);
    }
    assert_eq!(up.hits(), 2);
    assert_eq!(prom::rejected(fb.admin(), "q", "overloaded").await, 0.0);
}

/// Proves: rate limits are per key: with `burst = 2` (and a refill of one token per
/// 100 s, so no token comes back during the test however slow the machine) camera A's
/// third request gets 429 RATE_LIMITED with `Retry-After` without reaching the
/// upstream, while camera B still gets its two; a global key limits everyone together.
/// Each refusal counts as `rejected_total{reason="rate_limited"}` on its route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_key() {
    let up = Scripted::ok("ok").await;
    let per_cam =
        "rate_limit = { requests_per_second = 0.01, burst = 2, key = \"header:X-Camera-ID\" }";
    let global = "rate_limit = { requests_per_second = 0.01, burst = 3, key = \"global\" }";
    let fb = proxy(&up, &[("cams", "/cams", per_cam), ("all", "/all", global)]).await;
    let c = http1_client();
    let cam = |id: &'static str| [("x-camera-id", id)];
    let url = fb.url("/cams/frame");

    for _ in 0..2 {
        assert_eq!(call(&c, Method::GET, &url, &cam("A"), "").await.status, 200);
    }
    let r = call(&c, Method::GET, &url, &cam("A"), "").await;
    assert_fusebox_error(&r, 429, "RATE_LIMITED", Some("app"));
    let ra = retry_after_secs(&r);
    assert!(
        (1..=100).contains(&ra),
        "Retry-After {ra}: one token per 100 s"
    );
    for _ in 0..2 {
        assert_eq!(call(&c, Method::GET, &url, &cam("B"), "").await.status, 200);
    }
    assert_fusebox_error(
        &call(&c, Method::GET, &url, &cam("B"), "").await,
        429,
        "RATE_LIMITED",
        Some("app"),
    );
    assert_eq!(up.hits(), 4);
    assert_eq!(
        prom::rejected(fb.admin(), "cams", "rate_limited").await,
        2.0
    );

    let url = fb.url("/all/frame");
    for id in ["A", "B", "C"] {
        assert_eq!(call(&c, Method::GET, &url, &cam(id), "").await.status, 200);
    }
    let r = call(&c, Method::GET, &url, &cam("D"), "").await;
    assert_fusebox_error(&r, 429, "RATE_LIMITED", Some("app"));
    assert!(retry_after_secs(&r) >= 1);
    assert_eq!(up.hits(), 7);
    assert_eq!(prom::rejected(fb.admin(), "all", "rate_limited").await, 1.0);
    assert_eq!(
        prom::rejected(fb.admin(), "cams", "rate_limited").await,
        2.0
    );
}

/// Proves: `abort_percent = 100` aborts every request with `abort_status` and
/// `x-fusebox-fault: abort`, never calling the upstream; `abort_percent = 0` aborts
/// none; 50 % aborts about half (wide band).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_shares_behave_as_configured() {
    let up = Scripted::ok("real").await;
    let fb = proxy(
        &up,
        &[
            (
                "all",
                "/all",
                "fault = { abort_percent = 100.0, abort_status = 418 }",
            ),
            (
                "none",
                "/none",
                "fault = { abort_percent = 0.0, abort_status = 418 }",
            ),
            (
                "half",
                "/half",
                "fault = { abort_percent = 50.0, abort_status = 418 }",
            ),
        ],
    )
    .await;
    let c = http1_client();
    for _ in 0..20 {
        let r = get(&c, &fb.url("/all")).await;
        assert_eq!(r.status, 418);
        assert_eq!(r.header("x-fusebox-fault"), Some("abort"));
    }
    assert_eq!(up.hits(), 0, "aborted before the upstream");
    for _ in 0..20 {
        let r = get(&c, &fb.url("/none")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "real"));
        assert_eq!(r.header("x-fusebox-fault"), None);
    }
    assert_eq!(up.hits(), 20);
    let mut aborted = 0;
    for _ in 0..200 {
        if get(&c, &fb.url("/half")).await.status == 418 {
            aborted += 1;
        }
    }
    assert!(
        (50..=150).contains(&aborted),
        "{aborted} of 200 aborted at 50 %"
    );
    assert_eq!(up.hits(), 20 + 200 - aborted);
}

/// Proves: `delay_percent = 100` delays every request by `delay` before it reaches the
/// upstream, which then answers normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_delay_delays_requests_before_the_upstream() {
    let up = Scripted::ok("real").await;
    let fb = proxy(
        &up,
        &[(
            "slow",
            "/",
            "fault = { delay_percent = 100.0, delay = \"300ms\" }",
        )],
    )
    .await;
    let c = http1_client();
    for _ in 0..2 {
        let started = Instant::now();
        let r = get(&c, &fb.url("/x")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "real"));
        let arrived = up.seen().last().expect("seen").at;
        assert!(arrived - started >= ms(300), "delayed before the upstream");
    }
    assert_eq!(up.hits(), 2);
}

/// Proves: a queued request waits no longer than its deadline: with the slot held and a
/// 30 s `queue_timeout`, a caller with 200 ms left (`x-request-timeout-ms`) gets 503
/// OVERLOADED while the slot is still held, and never reaches the upstream. Before, it
/// waited out the queue timeout, long after its caller had given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_waits_no_longer_than_its_deadline() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let cfg = "timeout = \"20s\"\nconcurrency = { max_in_flight = 1, max_queue = 4, queue_timeout = \"30s\" }";
    let fb = proxy(&up, &[("q", "/", cfg)]).await;
    let c = http1_client();
    let first = spawn_get(&c, fb.url("/1"));
    up.wait_hits(1).await;
    let hurried = [("x-request-timeout-ms", "200")];
    let r = within(
        WAIT,
        "the hurried caller's answer",
        call(&c, Method::GET, &fb.url("/2"), &hurried, ""),
    )
    .await;
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("app"));
    assert_eq!(
        up.hits(),
        1,
        "the slot is still held; the queued one never went"
    );
    gate.open();
    assert_eq!(
        within(WAIT, "first", first).await.expect("task").status,
        200
    );
}

/// Proves: an injected delay ends by the deadline: a 30 s `delay` on a route whose
/// caller has 100 ms left answers 504 DEADLINE_EXCEEDED then, and the upstream is
/// never reached (a delay that fits is `fault_delay_delays_requests_before_the_upstream`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_delay_ends_at_the_deadline() {
    let up = Scripted::ok("real").await;
    let fb = proxy(
        &up,
        &[(
            "slow",
            "/",
            "timeout = \"60s\"\nfault = { delay_percent = 100.0, delay = \"30s\" }",
        )],
    )
    .await;
    let c = http1_client();
    let hurried = [("x-request-timeout-ms", "100")];
    let r = within(
        WAIT,
        "the delayed caller's answer",
        call(&c, Method::GET, &fb.url("/x"), &hurried, ""),
    )
    .await;
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("app"));
    assert_eq!(up.hits(), 0, "never reached the upstream");
}
