//! HTTP/2 upstreams get more connections as their stream limits fill: fusebox learns
//! each connection's `SETTINGS_MAX_CONCURRENT_STREAMS`, puts a request on the least
//! loaded connection below its limit, opens another one when all are full (up to
//! `max_connections_per_host`), and at the cap waits for a stream to free (pool
//! exhaustion past the connect timeout). The
//! upstreams here hold every request until the test releases them, so the counts are
//! exact, not a matter of timing.

use std::net::SocketAddr;

use crate::common::h2_upstream::H2Upstream;
use crate::common::tls::Pki;
use crate::common::*;

/// One h2c (or h2) upstream behind a catch-all route, with `pool` lines in its pool
/// table; a generous connect timeout (the two cores are shared).
fn config(up: SocketAddr, protocol_lines: &str, pool: &str) -> String {
    format!(
        "{}{}[upstreams.app.pool]\n{pool}\n\n[upstreams.app.timeouts]\nconnect = \"5s\"\n\n{}",
        base_config(""),
        upstream_toml("app", &[up], protocol_lines),
        route_toml("all", "/", "app", "")
    )
}

/// Sends `n` concurrent GETs over one h2c connection to fusebox.
fn burst(fb: &Fusebox, n: usize) -> Vec<tokio::task::JoinHandle<Reply>> {
    let c = h2c_client();
    (0..n)
        .map(|i| {
            let (c, url) = (c.clone(), fb.url(&format!("/infer/{i}")));
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect()
}

async fn all_ok(tasks: Vec<tokio::task::JoinHandle<Reply>>) {
    for t in tasks {
        let r = within(WAIT, "a released request", t).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

fn conns_labels(up: SocketAddr, state: &str) -> String {
    format!(r#"endpoint="{up}",service="app",state="{state}""#)
}

/// Proves: with a peer limit of 4 streams and `max_connections_per_host = 3`, 16
/// concurrent requests open exactly 3 connections (not 1, not 16): 12 requests are
/// served 4 per connection and the other 4 wait inside fusebox for a stream to free;
/// once released, all 16 are answered without a fourth connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_grow_with_the_peer_stream_limit_up_to_the_cap() {
    let up = H2Upstream::h2c(Some(4)).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "protocol = \"h2c\"",
        "max_connections_per_host = 3",
    ))
    .await;
    let tasks = burst(&fb, 16);
    prom::wait_in_flight(fb.admin_addr, "all", 16.0).await;
    eventually("12 requests held at the upstream", WAIT, || up.held() == 12).await;
    assert_eq!(up.connections(), 3, "connections opened");
    assert_eq!(
        up.held_per_connection(),
        [4, 4, 4],
        "streams per connection"
    );
    let text = fb.metrics().await;
    assert_eq!(
        prom::metric(
            &text,
            "gateway_upstream_connections",
            &conns_labels(up.addr, "active")
        ),
        Some(3.0),
        "{text}"
    );

    up.release();
    all_ok(tasks).await;
    assert_eq!(up.served(), 16);
    assert_eq!(up.connections(), 3, "no connection past the cap");
}

/// Proves: under a higher cap the pool opens just enough connections for the load: 16
/// concurrent requests at 4 streams per connection take exactly 4 connections of the 8
/// allowed, all 16 reach the upstream at once, and the connections go idle (still
/// open, counted idle) when the responses are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_as_many_connections_as_the_streams_need() {
    let up = H2Upstream::h2c(Some(4)).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "protocol = \"h2c\"",
        "max_connections_per_host = 8",
    ))
    .await;
    let tasks = burst(&fb, 16);
    eventually("16 requests held at the upstream", WAIT, || up.held() == 16).await;
    assert_eq!(up.connections(), 4, "connections opened");
    assert_eq!(up.held_per_connection(), [4, 4, 4, 4]);

    up.release();
    all_ok(tasks).await;
    assert_eq!(up.connections(), 4);
    prom::wait_metric(
        fb.admin_addr,
        "gateway_upstream_connections",
        &conns_labels(up.addr, "idle"),
        4.0,
    )
    .await;
    prom::wait_metric(
        fb.admin_addr,
        "gateway_upstream_connections",
        &conns_labels(up.addr, "active"),
        0.0,
    )
    .await;
}

/// Proves: a peer that sets no limit, or a high one, keeps getting one connection for
/// a handful of concurrent requests (no limit counts as 100 streams), however many
/// connections the cap would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_while_the_peer_limit_is_not_reached() {
    for limit in [None, Some(1000)] {
        let up = H2Upstream::h2c(limit).await;
        let fb = spawn_fusebox(&config(up.addr, "protocol = \"h2c\"", "")).await;
        let tasks = burst(&fb, 10);
        eventually("10 requests held at the upstream", WAIT, || up.held() == 10).await;
        assert_eq!(up.connections(), 1, "peer limit {limit:?}");
        up.release();
        all_ok(tasks).await;
        assert_eq!(up.connections(), 1, "peer limit {limit:?}");
    }
}

/// Proves: the same holds over TLS (`protocol = "h2"`): a limit of 4 and a cap of 3
/// give 3 connections carrying 4 streams each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_over_tls_scales_the_same_way() {
    let pki = Pki::generate();
    let up = H2Upstream::tls(Some(4), pki.server_config(&pki.server("upstream"), false)).await;
    let tls = format!(
        "protocol = \"h2\"\ntls = {{ ca = \"{}\", server_name = \"localhost\" }}",
        pki.ca_path.display()
    );
    let fb = spawn_fusebox(&config(up.addr, &tls, "max_connections_per_host = 3")).await;
    let tasks = burst(&fb, 16);
    prom::wait_in_flight(fb.admin_addr, "all", 16.0).await;
    eventually("12 requests held at the upstream", WAIT, || up.held() == 12).await;
    assert_eq!(up.connections(), 3);
    assert_eq!(up.held_per_connection(), [4, 4, 4]);
    up.release();
    all_ok(tasks).await;
    assert_eq!(up.connections(), 3);
}

/// Proves: connections that carry nothing for `pool.idle_timeout` are closed and leave
/// the pool (the gauges read zero), and the next request opens a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_replaced() {
    let up = H2Upstream::h2c(Some(2)).await;
    let fb = spawn_fusebox(&config(
        up.addr,
        "protocol = \"h2c\"",
        "max_connections_per_host = 4\nidle_timeout = \"200ms\"",
    ))
    .await;
    let tasks = burst(&fb, 4);
    eventually("4 requests held at the upstream", WAIT, || up.held() == 4).await;
    assert_eq!(up.connections(), 2);
    up.release();
    all_ok(tasks).await;
    eventually("both idle connections to close", WAIT, || up.closed() == 2).await;
    for state in ["active", "idle"] {
        prom::wait_metric(
            fb.admin_addr,
            "gateway_upstream_connections",
            &conns_labels(up.addr, state),
            0.0,
        )
        .await;
    }
    let r = get(&h2c_client(), &fb.url("/again")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.connections(), 3, "a fresh connection");
}

/// Proves: at the cap (one connection, a peer limit of 2) a request finding every
/// stream taken waits in fusebox for one to free, within the connect timeout, and past
/// it fails as pool exhaustion (502 `UPSTREAM_CONNECT_FAILED`, "max_connections_per_host
/// reached"): it was never sent, so the endpoint's breaker (threshold 1) records
/// nothing and stays closed, and the upstream holds only the two streams it allows.
/// A waiter whose stream frees in time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_cap_a_request_waits_for_a_stream_then_is_pool_exhaustion() {
    use crate::common::scripted::{spawn_proxy, UpstreamToml};
    let up = H2Upstream::h2c(Some(2)).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .extra("protocol = \"h2c\"")
            .table("pool", "max_connections_per_host = 1")
            .table("timeouts", "connect = \"300ms\"\nrequest = \"30s\"")
            .breaker("failure_threshold = 1")
            .retry("max_retries = 0")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = h2c_client();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), fb.url(&format!("/held/{i}")));
            tokio::spawn(async move { get(&c, &url).await })
        })
        .collect();
    eventually("2 streams held at the upstream", WAIT, || up.held() == 2).await;
    let r = get(&c, &fb.url("/third")).await;
    assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("app"));
    assert!(
        r.text().contains("max_connections_per_host"),
        "says why: {}",
        r.text()
    );
    assert_eq!(up.held(), 2, "the third was never sent");
    assert_eq!(up.connections(), 1);
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(tokio::time::Instant::now());
    assert_eq!(stats.failure_count, 0, "{stats:?}");
    assert_eq!(
        fb.breaker_state("app", up.addr),
        fusebox::upstream::breaker::BreakerState::Closed
    );
    up.release();
    all_ok(held).await;
    assert_eq!(get(&c, &fb.url("/after")).await.status, 200);
}

/// Proves: an "h2c" endpoint that accepts connections and never speaks (no SETTINGS:
/// a hung process, or no HTTP/2 server) fails each attempt on it within the connect
/// timeout as a connect failure, retried on the healthy endpoint for any method; its
/// connections are closed, not kept and shared (each request on a kept one would wait
/// out the 30 s request timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_endpoint_that_sends_no_settings_is_a_connect_failure() {
    use crate::common::scripted::{call, spawn_proxy, UpstreamToml};
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mute_addr = mute.local_addr().expect("address");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = mute.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp); // open, silent
        }
    });
    let good = H2Upstream::h2c(Some(100)).await;
    good.release();
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[mute_addr, good.addr])
            .extra("protocol = \"h2c\"")
            .table("timeouts", "connect = \"200ms\"\nrequest = \"30s\"")
            .retry("max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = h2c_client();
    for i in 0..4 {
        let r = within(
            WAIT,
            "an answer",
            call(&c, Method::POST, &fb.url(&format!("/infer/{i}")), &[], "x"),
        )
        .await;
        assert_eq!(r.status, 200, "POST {i}: {}", r.text());
    }
    let tried = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(tried >= 1, "round robin tried the mute endpoint");
    assert_eq!(good.served(), 4);
    // Each attempt's connection is closed by its task as the attempt gives up (the
    // two end at the same deadline, the count a moment after the answer).
    eventually("no connection to the mute endpoint is kept", WAIT, || {
        fb.running.snapshot().upstreams["app"].open_connections(mute_addr) == 0
    })
    .await;
}
