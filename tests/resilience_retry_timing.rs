//! When retries happen and when they stop: the exponential backoff between attempts,
//! a `Retry-After` within `max_delay` waited and a longer one ending the retries, the
//! route deadline cutting retries and capping each attempt's timeout, and the retry
//! budget capping upstream hits under a total outage. Lower bounds on time are exact;
//! upper bounds are generous (two shared cores).

mod common;

use common::scripted::*;
use common::*;
use tokio::time::Instant;

/// Upstream `app` on `up` with these retry lines behind a catch-all route; `route`
/// adds lines to the route (its timeout).
async fn proxy(up: &Scripted, retry: &str, route: &str) -> Proxy {
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr]).retry(retry).build(),
        route_toml("all", "/", "app", route)
    );
    spawn_proxy(&tables).await
}

fn unavailable() -> Behaviour {
    Behaviour::respond(503, "busy")
}

/// Proves: the waits between attempts follow `base_delay * 2^(n-1)` (no jitter): the
/// second attempt comes >= 100 ms after the first, the third >= 200 ms after the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_doubles_between_attempts() {
    let up = Scripted::ok("third time").await;
    up.then([unavailable(), unavailable()]);
    let fb = proxy(
        &up,
        "max_retries = 3\nbase_delay = \"100ms\"\nmax_delay = \"1s\"\njitter = false",
        "",
    )
    .await;
    let r = get(&http1_client(), &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "third time"));
    let at: Vec<Instant> = up.seen().iter().map(|s| s.at).collect();
    assert_eq!(at.len(), 3);
    let (gap1, gap2) = (at[1] - at[0], at[2] - at[1]);
    assert!(gap1 >= ms(100), "first backoff {gap1:?}");
    assert!(gap2 >= ms(200), "second backoff doubled: {gap2:?}");
}

/// Proves: a `Retry-After: 1` on a 503 within `max_delay` is waited (the retry comes at
/// least 1 s later, not after the 10 ms backoff) and the retry's 200 is the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_within_max_delay_is_waited() {
    let up = Scripted::ok("after the pause").await;
    up.then([unavailable().with_header("retry-after", "1")]);
    let fb = proxy(
        &up,
        "max_retries = 2\nbase_delay = \"10ms\"\nmax_delay = \"5s\"",
        "",
    )
    .await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/x")).await;
    let took = started.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (200, "after the pause")
    );
    assert!(took >= ms(1000), "waited Retry-After: {took:?}");
    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[1].at - seen[0].at >= ms(1000));
}

/// Proves: a `Retry-After` longer than `max_delay` ends the retries: one attempt, and
/// the upstream's 503 with its `Retry-After` is returned unchanged, without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_beyond_max_delay_stops_retrying() {
    let up = Scripted::start(unavailable().with_header("retry-after", "30")).await;
    let fb = proxy(
        &up,
        "max_retries = 3\nbase_delay = \"10ms\"\nmax_delay = \"2s\"",
        "",
    )
    .await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("x-fusebox-error"), None);
    assert_eq!(up.hits(), 1);
    assert!(started.elapsed() < ms(2000), "no 30 s wait");
}

/// Proves: the route deadline stops retries: with a 300 ms route timeout and a 200 ms
/// base delay (then 400 ms), at most two attempts are made and the upstream's 503
/// comes back well before the ~6 s that five unbounded retries would take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_deadline_stops_retries() {
    let up = Scripted::start(unavailable()).await;
    let fb = proxy(
        &up,
        "max_retries = 5\nbase_delay = \"200ms\"\nmax_delay = \"5s\"\njitter = false",
        "timeout = \"300ms\"",
    )
    .await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/x")).await;
    let took = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!((1..=2).contains(&up.hits()), "{} attempts", up.hits());
    assert!(
        took < ms(2000),
        "answered within the deadline plus margin: {took:?}"
    );
}

/// Proves: each attempt's timeout is capped by the time left before the route deadline:
/// an upstream that never answers (with `timeouts.request` = 10 s) gets one attempt and
/// the caller 504 DEADLINE_EXCEEDED after the 300 ms deadline, not after 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_timeout_is_capped_by_the_time_left() {
    let up = Scripted::start(Behaviour::Hang).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .retry("max_retries = 3\nbase_delay = \"10ms\"")
            .table("timeouts", "request = \"10s\"")
            .build(),
        route_toml("all", "/", "app", "timeout = \"300ms\"")
    );
    let fb = spawn_proxy(&tables).await;
    let started = Instant::now();
    let r = get(&http1_client(), &fb.url("/x")).await;
    let took = started.elapsed();
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("app"));
    assert!(took >= ms(290), "waited for the deadline: {took:?}");
    assert!(
        took < ms(3000),
        "not the 10 s per-attempt timeout: {took:?}"
    );
    assert_eq!(up.hits(), 1, "no retry once the deadline passed");
}

/// Proves: the retry budget caps retries under a total outage: 100 requests with
/// `max_retries = 3` against an always-503 upstream would make 400 attempts; with
/// `budget_percent = 20` and `budget_min_per_second = 1` (10 per window) the upstream
/// sees at most 100 + 20 + 10 (+ a little slack for racing retries), and the floor's 10
/// retries are certainly made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_under_a_total_outage() {
    let up = Scripted::start(unavailable()).await;
    let fb = proxy(
        &up,
        "max_retries = 3\nbase_delay = \"1ms\"\nmax_delay = \"1ms\"\n\
         budget_percent = 20.0\nbudget_min_per_second = 1",
        "",
    )
    .await;
    let c = http1_client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (c, url) = (c.clone(), fb.url("/x"));
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                assert_eq!(get(&c, &url).await.status, 503);
            }
        }));
    }
    for t in tasks {
        within(WAIT * 3, "the outage load", t).await.expect("task");
    }
    let hits = up.hits();
    assert!(hits >= 110, "the floor's retries were made: {hits}");
    assert!(
        hits <= 100 + 20 + 10 + 4,
        "budget caps retries: {hits} hits"
    );
}
