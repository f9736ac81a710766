//! Which failures are retried, where, and with what: GETs recover on the live endpoint
//! while the other is dead, under concurrent load; POST is retried on a 503 only with
//! an `Idempotency-Key` (or `retry_non_idempotent`, here as a route override); resets
//! and timeouts only for idempotent requests; bodies are replayed byte-exact (and not
//! at all past `max_replay_body`); a retry goes to an untried endpoint; every attempt
//! carries the same `X-Request-ID`.

use std::collections::HashSet;

use crate::common::scripted::*;
use crate::common::*;

/// A catch-all route to upstream `app` built from `up`.
async fn proxy(up: UpstreamToml) -> Proxy {
    spawn_proxy(&format!(
        "{}{}",
        up.build(),
        route_toml("all", "/", "app", "")
    ))
    .await
}

const RETRY_TWICE: &str = "max_retries = 2\nbase_delay = \"5ms\"\nmax_delay = \"50ms\"";

fn unavailable() -> Behaviour {
    Behaviour::respond(503, "busy").with_header("x-model", "yolo")
}

/// Proves: with one of two endpoints a closed port, 4 concurrent tasks x 50 GETs all
/// get the live endpoint's 200 (zero client-visible errors); the live endpoint answers
/// each request exactly once, the dead endpoint's breaker opened on the way, and every
/// attempt on the dead endpoint was followed by exactly one retry, counted as
/// `gateway_proxy_retries_total{reason="connect_failure"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_recover_on_the_live_endpoint_while_the_other_is_dead() {
    let held = dead_port(); // refuses connections while held
    let dead = held.addr;
    let live = Scripted::ok("alive").await;
    let fb = proxy(
        UpstreamToml::new("app", &[dead, live.addr])
            .retry(RETRY_TWICE)
            .breaker("failure_threshold = 5\nrecovery_timeout = \"200ms\""),
    )
    .await;
    let c = http1_client();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, url) = (c.clone(), fb.url(&format!("/detect/{t}")));
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for i in 0..50 {
                let r = get(&c, &url).await;
                if r.status != 200 || r.text() != "alive" {
                    errors.push(format!("task {t} request {i}: {} {}", r.status, r.text()));
                }
            }
            errors
        }));
    }
    for t in tasks {
        let errors = within(WAIT * 3, "the load tasks", t).await.expect("task");
        assert!(errors.is_empty(), "client-visible errors: {errors:#?}");
    }
    assert_eq!(
        live.hits(),
        200,
        "every request answered once by the live one"
    );
    let stats = fb
        .endpoint("app", dead)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert!(stats.failure_count >= 1, "the dead endpoint was tried");
    assert!(stats.times_opened >= 1, "and its breaker opened: {stats:?}");
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("connect_failure", stats.failure_count)]),
        "one retry per attempt on the dead endpoint"
    );
}

/// The non-zero retry counts a test expects, by reason.
fn reasons(counts: &[(&str, u64)]) -> std::collections::BTreeMap<String, f64> {
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| ((*r).to_owned(), *n as f64))
        .collect()
}

/// Proves: a POST answered 503 is not retried without `Idempotency-Key` (1 hit, the
/// upstream's 503 returned unchanged), is retried with one (1 + max_retries hits, each
/// with the key and the body), and a route's `retry_non_idempotent = true` override
/// retries it without a key while the upstream's own policy still does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_on_503_only_with_an_idempotency_key() {
    let up = Scripted::start(unavailable()).await;
    let tables = format!(
        "{}{}{}[routes.retry]\nretry_non_idempotent = true\n\n",
        UpstreamToml::new("app", &[up.addr])
            .retry(RETRY_TWICE)
            .build(),
        route_toml("strict", "/strict", "app", ""),
        route_toml("lenient", "/lenient", "app", ""),
    );
    let fb = spawn_proxy(&tables).await;
    let c = http1_client();

    let r = call(&c, Method::POST, &fb.url("/strict"), &[], "frame-1").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(
        r.header("x-model"),
        Some("yolo"),
        "the upstream's answer, unchanged"
    );
    assert_eq!(r.header("x-fusebox-error"), None);
    assert_eq!(up.hits(), 1, "no retry without Idempotency-Key");
    assert_eq!(prom::retries(fb.admin(), "app", "status_503").await, 0.0);

    let key = [("idempotency-key", "order-77")];
    let r = call(&c, Method::POST, &fb.url("/strict"), &key, "frame-2").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(up.hits(), 4, "1 + 2 retries with the key");
    for s in &up.seen()[1..] {
        assert_eq!(s.header("idempotency-key"), Some("order-77"));
        assert_eq!(&s.body[..], b"frame-2");
    }
    assert_eq!(prom::retries(fb.admin(), "app", "status_503").await, 2.0);

    let r = call(&c, Method::POST, &fb.url("/lenient"), &[], "frame-3").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 7, "retry_non_idempotent on the route");
    let r = call(&c, Method::POST, &fb.url("/strict"), &[], "frame-4").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 8, "the override is the route's only");
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("status_503", 4)])
    );
}

/// Proves: a connection reset after the request was sent is retried for a GET (which
/// then succeeds) but not for a POST without a key, which gets 502 UPSTREAM_RESET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_are_retried_only_for_idempotent_requests() {
    let up = Scripted::ok("second try").await;
    let fb = proxy(UpstreamToml::new("app", &[up.addr]).retry(RETRY_TWICE)).await;
    let c = http1_client();
    up.then([Behaviour::Reset]);
    let r = get(&c, &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "second try"));
    assert_eq!(up.hits(), 2);

    up.then([Behaviour::Reset]);
    let r = call(&c, Method::POST, &fb.url("/x"), &[], "once").await;
    assert_fusebox_error(&r, 502, "UPSTREAM_RESET", Some("app"));
    assert_eq!(up.hits(), 3, "the POST was not sent again");
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("reset", 1)]),
        "the GET's retry only"
    );
}

/// Proves: a per-attempt timeout (`timeouts.request`) is retried for a GET, which then
/// succeeds, but not for a POST without a key, which gets 504 UPSTREAM_TIMEOUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_retried_only_for_idempotent_requests() {
    let up = Scripted::ok("in time").await;
    let fb = proxy(
        UpstreamToml::new("app", &[up.addr])
            .retry(RETRY_TWICE)
            .table("timeouts", "request = \"150ms\""),
    )
    .await;
    let c = http1_client();
    up.then([Behaviour::Hang]);
    let r = get(&c, &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "in time"));
    assert_eq!(up.hits(), 2);

    up.then([Behaviour::Hang]);
    let r = call(&c, Method::POST, &fb.url("/x"), &[], "once").await;
    assert_fusebox_error(&r, 504, "UPSTREAM_TIMEOUT", Some("app"));
    assert_eq!(up.hits(), 3);
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("timeout", 1)]),
        "the GET's retry only"
    );
}

/// Proves: 200 KB POST bodies (no key: connect failures are retried for every method),
/// sent with a Content-Length and chunked, reach the live endpoint byte-exact after
/// the attempt on a closed port failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200kb_post_body_is_replayed_byte_exact_after_a_connect_failure() {
    let held = dead_port(); // refuses connections while held
    let dead = held.addr;
    let live = Scripted::start(Behaviour::Echo).await;
    let fb = proxy(UpstreamToml::new("app", &[dead, live.addr]).retry(RETRY_TWICE)).await;
    let c = http1_client();
    let mut sent = Vec::new();
    for i in 0..4u64 {
        let body = random_bytes(200 * 1024, 11 + i);
        let req = if i % 2 == 0 {
            request(Method::POST, &fb.url("/upload"))
                .body(full(body.clone()))
                .expect("request")
        } else {
            let (tx, b) = channel_body(4);
            let chunks: Vec<Bytes> = body.chunks(8 * 1024).map(Bytes::copy_from_slice).collect();
            tokio::spawn(async move {
                for ch in chunks {
                    if tx.send(ch).await.is_err() {
                        return;
                    }
                }
            });
            request(Method::POST, &fb.url("/upload"))
                .body(b)
                .expect("request")
        };
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert!(r.body == body, "request {i}: the echo is the body sent");
        sent.push(body);
    }
    let seen = live.seen();
    assert_eq!(seen.len(), 4);
    for (s, body) in seen.iter().zip(&sent) {
        assert!(s.body_complete);
        assert_eq!(s.body.len(), body.len());
        assert!(s.body == body[..], "byte-exact at the upstream");
    }
    let dead_ep = fb.endpoint("app", dead);
    let failures = dead_ep.own_breakers().stats(tokio::time::Instant::now());
    assert!(
        failures.failure_count >= 1,
        "some first attempts hit the closed port"
    );
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("connect_failure", failures.failure_count)]),
        "one retry per attempt on the closed port"
    );
}

/// Proves: a 200 KB PUT body that an endpoint read in full before resetting the
/// connection is replayed byte-exact to the other endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_read_by_a_failed_attempt_is_replayed_byte_exact() {
    let breaking = Scripted::start(Behaviour::Reset).await;
    let live = Scripted::start(Behaviour::Echo).await;
    let fb = proxy(UpstreamToml::new("app", &[breaking.addr, live.addr]).retry(RETRY_TWICE)).await;
    let c = http1_client();
    for i in 0..2u64 {
        let body = random_bytes(200 * 1024, 99 + i);
        let req = request(Method::PUT, &fb.url("/model/weights"))
            .body(full(body.clone()))
            .expect("request");
        let r = send(&c, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == body, "request {i}: replayed byte-exact");
    }
    let read_then_reset = breaking.seen();
    assert!(
        !read_then_reset.is_empty(),
        "round robin sent a first attempt to it"
    );
    assert!(
        read_then_reset
            .iter()
            .all(|s| s.body_complete && s.body.len() == 200 * 1024),
        "it read whole bodies before resetting"
    );
    assert_eq!(live.seen().len(), 2);
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("reset", read_then_reset.len() as u64)]),
        "one retry per reset"
    );
}

/// Proves: a body larger than `max_replay_body` streams through once and is not
/// retried after a 503, while a small body on the same route is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_replay_body_is_not_retried() {
    let up = Scripted::start(unavailable()).await;
    let retry = format!("{RETRY_TWICE}\nmax_replay_body = \"1KiB\"");
    let fb = proxy(UpstreamToml::new("app", &[up.addr]).retry(&retry)).await;
    let c = http1_client();
    let big = random_bytes(8 * 1024, 5);
    let r = call(&c, Method::PUT, &fb.url("/x"), &[], big.clone()).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(up.hits(), 1, "not retried");
    assert!(up.seen()[0].body == big[..], "streamed through whole");
    assert_eq!(prom::retries(fb.admin(), "app", "status_503").await, 0.0);

    let r = call(&c, Method::PUT, &fb.url("/x"), &[], "small").await;
    assert_eq!(r.status, 503);
    assert_eq!(up.hits(), 4, "a small body is retried");
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("status_503", 2)])
    );
}

/// Proves: with two endpoints both answering 503 and one retry, each request's two
/// attempts go to different endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_prefers_an_untried_endpoint() {
    let a = Scripted::start(unavailable()).await;
    let b = Scripted::start(unavailable()).await;
    let fb = proxy(
        UpstreamToml::new("app", &[a.addr, b.addr]).retry("max_retries = 1\nbase_delay = \"1ms\""),
    )
    .await;
    let c = http1_client();
    for i in 0..10 {
        let id = format!("req-{i}");
        let r = call(&c, Method::GET, &fb.url("/x"), &[("x-request-id", &id)], "").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            (
                a.seen_with("x-request-id", &id),
                b.seen_with("x-request-id", &id)
            ),
            (1, 1),
            "request {i}: one attempt on each endpoint"
        );
    }
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("status_503", 10)])
    );
}

/// Proves: once every endpoint was tried, retries keep alternating (A, B, A, B with
/// two endpoints and three retries), rather than staying on the one that just failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_past_every_endpoint_keep_alternating() {
    let a = Scripted::start(unavailable()).await;
    let b = Scripted::start(unavailable()).await;
    let fb = proxy(
        UpstreamToml::new("app", &[a.addr, b.addr])
            .retry("max_retries = 3\nbase_delay = \"1ms\"\nmax_delay = \"5ms\"\nbudget_min_per_second = 100")
            .table("circuit_breaker", "failure_threshold = 100"),
    )
    .await;
    let c = http1_client();
    for i in 0..4 {
        let id = format!("req-{i}");
        let r = call(&c, Method::GET, &fb.url("/x"), &[("x-request-id", &id)], "").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            (
                a.seen_with("x-request-id", &id),
                b.seen_with("x-request-id", &id)
            ),
            (2, 2),
            "request {i}: four attempts, two on each endpoint"
        );
    }
}

/// Proves: every attempt of one request carries the same `X-Request-ID`: the one the
/// caller sent, or the UUID fusebox made (which is also echoed to the caller).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_carries_the_same_request_id() {
    let up = Scripted::start(unavailable()).await;
    let fb = proxy(UpstreamToml::new("app", &[up.addr]).retry(RETRY_TWICE)).await;
    let c = http1_client();

    let r = get(&c, &fb.url("/x")).await;
    let echoed = r.header("x-request-id").expect("echoed").to_owned();
    assert!(is_uuid_v4(&echoed), "generated id {echoed:?}");
    let ids: Vec<_> = up
        .seen()
        .iter()
        .map(|s| s.header("x-request-id").map(str::to_owned))
        .collect();
    assert_eq!(ids, vec![Some(echoed.clone()); 3], "3 attempts, one id");

    let own = [("x-request-id", "cam-7.req:42")];
    let r = call(&c, Method::GET, &fb.url("/x"), &own, "").await;
    assert_eq!(r.header("x-request-id"), Some("cam-7.req:42"));
    let later: HashSet<_> = up.seen()[3..]
        .iter()
        .map(|s| s.header("x-request-id").map(str::to_owned))
        .collect();
    assert_eq!(up.hits(), 6);
    assert_eq!(later, HashSet::from([Some("cam-7.req:42".to_owned())]));
    assert_eq!(
        prom::retries_by_reason(fb.admin(), "app").await,
        reasons(&[("status_503", 4)])
    );
}

/// A route's own `retry_status_codes` count their retries as the upstream's do:
/// `gateway_proxy_retries_total{reason="status_500"}` exists and moves although 500 is
/// not one of the upstream's codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_for_a_routes_own_codes_are_counted() {
    let up = Scripted::start(Behaviour::respond(500, "boom")).await;
    let tables = format!(
        "{}{}[routes.retry]\nretry_status_codes = [500]\nmax_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"\n\n",
        UpstreamToml::new("app", &[up.addr]).build(),
        route_toml("own", "/", "app", ""),
    );
    let fb = spawn_proxy(&tables).await;
    let r = get(&http1_client(), &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (500, "boom"));
    assert_eq!(up.hits(), 2, "retried once for the route's code");
    assert_eq!(prom::retries(fb.admin(), "app", "status_500").await, 1.0);
}
