//! When retries happen and when they stop: the exponential backoff between attempts,
//! a `Retry-After` within `max_delay` waited and a longer one ending the retries, the
//! route deadline cutting retries and capping each attempt's timeout, and the retry
//! budget capping upstream hits under a total outage. Lower bounds on time are exact;
//! there are no upper bounds on time: what did not happen (a wait, a retry) shows in
//! the answer, the upstream's hits and `gateway_proxy_retries_total`. How fast answers
//! come is for the benches.

use crate::common::scripted::*;
use crate::common::*;
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
    assert_eq!(prom::retries(fb.admin(), "app", "status_503").await, 2.0);
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
    assert_eq!(prom::retries(fb.admin(), "app", "status_503").await, 1.0);
}

/// Proves: a `Retry-After` longer than `max_delay` ends the retries: one attempt, no
/// retry counted, and the upstream's 503 with its `Retry-After` is returned unchanged
/// (a 30 s wait would not fit the harness's 10 s bound on an answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_beyond_max_delay_stops_retrying() {
    let up = Scripted::start(unavailable().with_header("retry-after", "30")).await;
    let fb = proxy(
        &up,
        "max_retries = 3\nbase_delay = \"10ms\"\nmax_delay = \"2s\"",
        "",
    )
    .await;
    let r = get(&http1_client(), &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.header("x-fusebox-error"), None);
    assert_eq!(up.hits(), 1);
    assert!(prom::retries_by_reason(fb.admin(), "app").await.is_empty());
}

/// Proves: the route deadline stops retries: with a 300 ms route timeout and a 400 ms
/// backoff, the first retry would end past the deadline, so none is made (one attempt,
/// no retry counted) and the upstream's 503 comes back unchanged, not a fusebox 504
/// after waiting out the backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_deadline_stops_retries() {
    let up = Scripted::start(unavailable()).await;
    let fb = proxy(
        &up,
        "max_retries = 5\nbase_delay = \"400ms\"\nmax_delay = \"5s\"\njitter = false",
        "timeout = \"300ms\"",
    )
    .await;
    let r = get(&http1_client(), &fb.url("/x")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "busy"));
    assert_eq!(r.header("x-fusebox-error"), None, "the upstream's answer");
    assert_eq!(up.hits(), 1, "no retry past the deadline");
    assert!(prom::retries_by_reason(fb.admin(), "app").await.is_empty());
}

/// Proves: each attempt's timeout is capped by the time left before the route deadline:
/// an upstream that never answers (with `timeouts.request` = 10 s) gets one attempt and
/// the caller 504 DEADLINE_EXCEEDED (not the UPSTREAM_TIMEOUT a 10 s attempt timeout
/// would give) no earlier than the 300 ms deadline, with no retry.
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
    assert!(took >= ms(300), "waited for the deadline: {took:?}");
    assert_eq!(up.hits(), 1, "no retry once the deadline passed");
    assert!(prom::retries_by_reason(fb.admin(), "app").await.is_empty());
}

/// Proves: the retry budget caps retries under a total outage: 100 requests with
/// `max_retries = 3` against an always-503 upstream would make 400 attempts; with
/// `budget_percent = 20` and `budget_min_per_second = 1` (10 per 10 s window) the
/// upstream sees at most 100 + 20 + 10 (+ one racing retry per task) while the load fits
/// one window, and the floor's 10 retries are certainly made. Every retry is counted
/// (`retries_total` = hits - 100) and every request whose retries the budget cut short
/// is counted once as `rejected_total{reason="budget"}`: exactly the requests that made
/// fewer than 4 attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_under_a_total_outage() {
    const TASKS: usize = 4;
    let up = Scripted::start(unavailable()).await;
    let fb = proxy(
        &up,
        "max_retries = 3\nbase_delay = \"1ms\"\nmax_delay = \"1ms\"\n\
         budget_percent = 20.0\nbudget_min_per_second = 1",
        "",
    )
    .await;
    let c = http1_client();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
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
    let span = started.elapsed();
    let hits = up.hits() as u64;
    assert!(hits >= 110, "the floor's retries were made: {hits}");
    // The budget's window is ten one-second buckets. While the load touches at most ten
    // (it normally takes well under a second), every retry was judged against all of it;
    // a load spread wider (a very busy machine) gets one window's allowance per window,
    // each counting its own and the previous window's requests.
    let windows = (span.as_secs() + 2).div_ceil(10);
    let slack = TASKS as u64;
    let cap = if windows == 1 {
        100 + 20 + 10 + slack
    } else {
        100 + 40 + windows * (10 + 1 + slack)
    };
    assert!(
        hits <= cap,
        "budget caps retries: {hits} hits over {span:?} ({windows} window(s), cap {cap})"
    );

    let text = prom::scrape(fb.admin()).await;
    let retried = prom::metric(
        &text,
        "gateway_proxy_retries_total",
        r#"reason="status_503",service="app""#,
    );
    assert_eq!(retried, Some((hits - 100) as f64), "every retry counted");
    let refused = prom::metric(
        &text,
        "gateway_proxy_rejected_total",
        r#"reason="budget",route="all""#,
    )
    .expect("rejected_total{reason=budget}");
    let under_four = attempts_at_most(&text, 3.0);
    assert!(refused >= 1.0, "the budget refused retries");
    assert_eq!(
        refused, under_four,
        "one budget refusal per request that stopped short of 4 attempts"
    );
}

/// Requests of `app` that made at most `n` attempts, from the
/// `gateway_proxy_attempts_per_request` histogram's cumulative bucket.
fn attempts_at_most(text: &str, n: f64) -> f64 {
    prom::series(text, "gateway_proxy_attempts_per_request_bucket")
        .into_iter()
        .find_map(|(labels, v)| {
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            (labels.contains(r#"service="app""#) && le.parse::<f64>().ok()? == n).then_some(v)
        })
        .unwrap_or_else(|| panic!("no attempts bucket le={n} for app in:\n{text}"))
}

/// A route whose own retry table sets budget values has a budget of its own (DESIGN:
/// the route's table overrides the upstream's); routes without one share the
/// upstream's. With the upstream's budget at 0 % and 1 per second (10 per window),
/// 30 failing GETs on the route with its own 100 per second are all retried, and 30
/// on a route sharing the upstream's budget are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_own_budget_is_its_own() {
    let up = Scripted::start(unavailable()).await;
    let tables = format!(
        "{}{}[routes.retry]\nbudget_min_per_second = 100\n\n{}",
        UpstreamToml::new("app", &[up.addr])
            .retry(
                "max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"\n\
                 budget_percent = 0.0\nbudget_min_per_second = 1"
            )
            .build(),
        route_toml("own", "/own", "app", ""),
        route_toml("shared", "/shared", "app", ""),
    );
    let fb = spawn_proxy(&tables).await;
    let c = http1_client();
    for _ in 0..30 {
        assert_eq!(get(&c, &fb.url("/own")).await.status, 503);
    }
    assert_eq!(
        up.hits(),
        60,
        "every request on the route's own budget retried once"
    );
    assert_eq!(prom::rejected(fb.admin(), "own", "budget").await, 0.0);
    for _ in 0..30 {
        assert_eq!(get(&c, &fb.url("/shared")).await.status, 503);
    }
    let shared = up.hits() - 60;
    assert!(
        shared < 60,
        "the upstream's budget (10 per window) cut retries: {shared} hits"
    );
    assert!(prom::rejected(fb.admin(), "shared", "budget").await > 0.0);
}
