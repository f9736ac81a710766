//! The upstream connection pool: `max_connections_per_host` is a hard cap (extra
//! requests wait for a connection, and fail after the connect timeout if none frees),
//! `max_idle_per_host = 0` disables reuse, and `pool.idle_timeout` closes idle pooled
//! connections.

use std::time::{Duration, Instant};

use crate::common::scripted::spawn_proxy;
use crate::common::*;

fn config(up: std::net::SocketAddr, upstream_extra: &str) -> String {
    format!(
        "{}{}{}{}",
        base_config(""),
        upstream_toml("app", &[up], ""),
        upstream_extra,
        route_toml("all", "/", "app", "")
    )
}

/// Four concurrent requests with `max_connections_per_host = 2`: two reach the upstream,
/// two wait inside fusebox (all four counted in flight) without a connection being opened
/// for them, and once the first two are answered all four are served over the same two
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_host_is_a_hard_cap() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("ok"))).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "[upstreams.app.pool]\nmax_connections_per_host = 2\n\n\
         [upstreams.app.timeouts]\nconnect = \"10s\"\n\n",
    ))
    .await;
    let c = http1_client();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = c.clone();
        let url = fb.url(&format!("/cap/{i}"));
        tasks.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    up.wait_hits(2).await;
    // All four are inside fusebox (counted in flight once admitted to the route); the
    // two past the cap wait for a connection.
    prom::wait_in_flight(fb.admin_addr, "all", 4.0).await;
    assert_eq!(up.hits(), 2, "requests past the cap reached the upstream");
    assert_eq!(up.connections(), 2, "connections past the cap were opened");

    // Once connections free up, the waiting requests are served too, on the same two
    // connections (an uncapped pool would have opened two more for them by now).
    gate.open();
    for t in tasks {
        let r = within(WAIT, "capped requests", t).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.hits(), 4);
    assert_eq!(
        up.connections(),
        2,
        "the waiters reused the capped connections"
    );
    prom::wait_in_flight(fb.admin_addr, "all", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_capped_connection_times_out_as_connect_failure() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("first"))).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "[upstreams.app.pool]\nmax_connections_per_host = 1\n\n\
         [upstreams.app.timeouts]\nconnect = \"300ms\"\n\n",
    ))
    .await;
    let c = http1_client();
    let url = fb.url("/first");
    let first = tokio::spawn({
        let c = c.clone();
        async move { get(&c, &url).await }
    });
    up.wait_hits(1).await;

    let started = Instant::now();
    let r = get(&c, &fb.url("/second")).await;
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "failed before the connect timeout"
    );
    assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("app"));
    assert_eq!(
        up.hits(),
        1,
        "the second request never reached the upstream"
    );

    gate.open();
    let r = within(WAIT, "the first request", first).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_idle_per_host_zero_disables_reuse() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "[upstreams.app.pool]\nmax_idle_per_host = 0\n\n",
    ))
    .await;
    let c = http1_client();
    for _ in 0..5 {
        assert_eq!(get(&c, &fb.url("/n")).await.status, 200);
    }
    assert_eq!(
        up.connections(),
        5,
        "each request used a new upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed_after_pool_idle_timeout() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "[upstreams.app.pool]\nidle_timeout = \"2s\"\n\n",
    ))
    .await;
    let c = http1_client();
    // Back to back, the pooled connection is reused...
    assert_eq!(get(&c, &fb.url("/n")).await.status, 200);
    assert_eq!(get(&c, &fb.url("/n")).await.status, 200);
    assert_eq!(up.connections(), 1, "the idle connection was reused");
    // ...and closed once idle past the pool's idle_timeout.
    eventually("the idle pooled connection to close", WAIT, || {
        up.closed_connections() == 1
    })
    .await;
    // A later request opens a fresh connection and succeeds.
    assert_eq!(get(&c, &fb.url("/n")).await.status, 200);
    assert_eq!(up.connections(), 2);
    assert_eq!(up.hits(), 3);
}

/// Upstream `app` with one connection at most, `timeouts` as given, and a breaker
/// that opens on one failure.
fn capped_upstream(addr: std::net::SocketAddr, timeouts: &str) -> String {
    crate::common::scripted::UpstreamToml::new("app", &[addr])
        .table("pool", "max_connections_per_host = 1")
        .table("timeouts", timeouts)
        .breaker("failure_threshold = 1")
        .build()
}

/// A holder that keeps the only connection (`max_connections_per_host = 1`) for about
/// a second: its head at once, its body's last chunk a second later.
fn holding_upstream_spec() -> StreamSpec {
    StreamSpec {
        chunk_size: 10,
        chunks: 2,
        interval: Duration::from_millis(1000),
        gate_after_first: None,
    }
}

/// `timeouts.request` is the upstream's time to answer: it starts once the request has
/// its connection. A request that waits past it (300 ms) for the only connection, under
/// a connect timeout of 5 s, is served once the connection frees, and the endpoint's
/// breaker (`failure_threshold = 1`) records no timeout for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_starts_once_the_pooled_connection_is_leased() {
    let up = TestUpstream::start(Behaviour::Stream(holding_upstream_spec())).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        capped_upstream(up.addr, "connect = \"5s\"\nrequest = \"300ms\""),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = http1_client();
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), fb.url("/hold"));
        async move { get(&c, &url).await }
    });
    up.wait_hits(1).await;
    up.set(Behaviour::ok("second"));
    let r = get(&c, &fb.url("/second")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "second");
    let h = within(WAIT, "the holder", holder).await.unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(up.connections(), 1, "the cap held");
    // The breaker saw no failure: the next request is served, not CIRCUIT_OPEN.
    let r = get(&c, &fb.url("/third")).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A route deadline (250 ms) that passes while the request waits for fusebox's own
/// capped connection is `DEADLINE_EXCEEDED`, and no failure of the endpoint, which
/// never saw the request: with `failure_threshold = 1` its breaker stays closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_in_the_pool_wait_is_no_endpoint_failure() {
    let up = TestUpstream::start(Behaviour::Stream(holding_upstream_spec())).await;
    let fb = spawn_proxy(&format!(
        "{}{}{}",
        capped_upstream(up.addr, "connect = \"5s\""),
        route_toml("short", "/short", "app", "timeout = \"250ms\""),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = http1_client();
    let holder = tokio::spawn({
        let (c, url) = (c.clone(), fb.url("/hold"));
        async move { get(&c, &url).await }
    });
    up.wait_hits(1).await;
    up.set(Behaviour::ok("later"));
    let r = get(&c, &fb.url("/short/x")).await;
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("app"));
    assert!(
        r.text().contains("waiting for a connection"),
        "{}",
        r.text()
    );
    assert_eq!(up.hits(), 1, "the request never reached the upstream");
    let h = within(WAIT, "the holder", holder).await.unwrap();
    assert_eq!(h.status, 200);
    let r = get(&c, &fb.url("/x")).await;
    assert_eq!(r.status, 200, "the breaker opened: {}", r.text());
    assert_eq!(r.text(), "later");
}
