//! Where features meet: a route's own breakers under admin force-open and in the admin
//! view and metrics; partitions and an endpoint that refuses connections; a reload that
//! changes only a weight; health probes of a busy endpoint; a DNS-style change of the
//! endpoint list in the middle of a request; route state carried over a reload.
//! Each test drives a real in-process fusebox against real upstreams on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::common::scripted::*;
use crate::common::*;
use fusebox::upstream::breaker::BreakerState;
use serde_json::Value;

/// A proxy with its admin address and a client.
struct P {
    proxy: Proxy,
    client: TestClient,
    dir: tempfile::TempDir,
}

async fn start(tables: &str) -> P {
    P {
        proxy: spawn_proxy(tables).await,
        client: http1_client(),
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

impl P {
    fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.running.admin_addr)
    }

    async fn breakers(&self) -> Value {
        let r = get(&self.client, &self.admin_url("/circuit_breakers")).await;
        assert_eq!(r.status, 200);
        r.json()
    }

    async fn metrics(&self) -> String {
        get(&self.client, &self.admin_url("/metrics")).await.text()
    }

    async fn admin_post(&self, path: &str) -> Reply {
        call(&self.client, Method::POST, &self.admin_url(path), &[], "").await
    }

    /// Applies `tables` (over the same base config) as a reload.
    async fn reload(&self, tables: &str) {
        let text = format!("{}{tables}", base_config(""));
        let path: PathBuf = self.dir.path().join("fusebox.toml");
        std::fs::write(&path, &text).expect("write config");
        let out = fusebox::reload::reload_from(&self.proxy.running.ctrl, &path).await;
        assert!(
            matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
            "reload: {out:?}"
        );
    }
}

/// The value of one series in a Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn route(name: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    route_toml(name, prefix, upstream, extra)
}

/// Proves: `POST /circuit_breakers/yolo/<endpoint>/open` stops traffic to the endpoint
/// from every route, also from one with its own `circuit_breaker` table (the upstream's
/// request count does not move), both views show it open, and a reset reopens both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_open_reaches_a_route_with_its_own_breakers() {
    let up = Scripted::ok("detections").await;
    let tables = format!(
        "{}{}{}[routes.circuit_breaker]\nfailure_threshold = 3\n\n",
        UpstreamToml::new("yolo", &[up.addr]).build(),
        route("plain", "/plain", "yolo", ""),
        route("detect", "/detect", "yolo", ""),
    );
    let p = start(&tables).await;
    let ep = up.addr.to_string();
    for path in ["/plain", "/detect"] {
        assert_eq!(get(&p.client, &p.proxy.url(path)).await.status, 200);
    }
    assert_eq!(up.hits(), 2);

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{ep}/open"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["changed"],
        2,
        "the upstream's and the route's breaker"
    );
    for path in ["/plain", "/detect"] {
        let r = get(&p.client, &p.proxy.url(path)).await;
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));
    }
    assert_eq!(up.hits(), 2, "nothing reached the forced-open endpoint");
    let cb = p.breakers().await;
    assert_eq!(cb["yolo"]["endpoints"][&ep]["state"], "open", "{cb:#}");
    assert_eq!(cb["yolo"]["routes"]["detect"]["state"], "open", "{cb:#}");
    assert_eq!(
        cb["yolo"]["routes"]["detect"]["endpoints"][&ep]["state"],
        "open"
    );
    let text = p.metrics().await;
    for route in ["", "detect"] {
        let labels = format!(r#"endpoint="{ep}",route="{route}",service="yolo""#);
        assert_eq!(
            sample(&text, "gateway_circuit_breaker_state", &labels),
            Some(1.0),
            "{labels}"
        );
    }

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{ep}/reset"))
        .await;
    assert_eq!(r.status, 200);
    for path in ["/plain", "/detect"] {
        assert_eq!(get(&p.client, &p.proxy.url(path)).await.status, 200);
    }
    assert_eq!(up.hits(), 4);
    assert!(p.proxy.shutdown().await);
}

/// Proves: a route-level breaker that opens is its own: `/circuit_breakers` shows it
/// open under `routes.detect` while the upstream's own breaker of the same endpoint
/// stays closed, and the metrics carry it with `route="detect"` (state 1, one change
/// to open), the upstream's series with `route=""` unmoved; the other route still
/// reaches the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_level_breaker_is_visible_in_admin_and_metrics() {
    let up = Scripted::start(Behaviour::respond(500, "boom")).await;
    let tables = format!(
        "{}{}{}[routes.circuit_breaker]\nfailure_threshold = 2\nrecovery_timeout = \"30s\"\n\n",
        UpstreamToml::new("yolo", &[up.addr]).build(),
        route("plain", "/plain", "yolo", ""),
        route("detect", "/detect", "yolo", ""),
    );
    let p = start(&tables).await;
    let ep = up.addr.to_string();
    for _ in 0..2 {
        assert_eq!(get(&p.client, &p.proxy.url("/detect")).await.status, 500);
    }
    let r = get(&p.client, &p.proxy.url("/detect")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert_eq!(up.hits(), 2);
    assert_eq!(get(&p.client, &p.proxy.url("/plain")).await.status, 500);
    assert_eq!(
        up.hits(),
        3,
        "the other route uses the upstream's own breaker"
    );

    let cb = p.breakers().await;
    let own = &cb["yolo"]["endpoints"][&ep];
    assert_eq!(own["state"], "closed", "{cb:#}");
    let routed = &cb["yolo"]["routes"]["detect"];
    assert_eq!(routed["state"], "open", "{cb:#}");
    assert_eq!(routed["endpoints"][&ep]["state"], "open");
    assert_eq!(routed["endpoints"][&ep]["failure_count"], 2);
    assert_eq!(routed["endpoints"][&ep]["times_opened"], 1);

    let text = p.metrics().await;
    let labels = |route: &str| format!(r#"endpoint="{ep}",route="{route}",service="yolo""#);
    assert_eq!(
        sample(&text, "gateway_circuit_breaker_state", &labels("detect")),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "gateway_circuit_breaker_state", &labels("")),
        Some(0.0)
    );
    let opened = |route: &str| format!("{},state=\"open\"", labels(route));
    assert_eq!(
        sample(
            &text,
            "gateway_circuit_breaker_state_changes_total",
            &opened("detect")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_circuit_breaker_state_changes_total",
            &opened("")
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_proxy_rejected_total",
            r#"reason="circuit_open",route="detect""#
        ),
        Some(1.0)
    );
    assert!(p.proxy.shutdown().await);
}

/// Proves: with `partition_by = "header:X-Camera-ID"` and an endpoint that refuses
/// connections, 40 requests from 40 cameras (no retries) fail at most
/// `failure_threshold` times in all: connect failures count on the endpoint's shared
/// breaker, which then ejects it for every camera.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_endpoint_costs_at_most_failure_threshold_across_cameras() {
    let live = Scripted::ok("ok").await;
    let dead = dead_port();
    let tables = format!(
        "{}{}",
        UpstreamToml::new("cams", &[live.addr, dead.addr])
            .extra("load_balancing = \"round_robin\"")
            .breaker(
                "failure_threshold = 3\nrecovery_timeout = \"60s\"\n\
                 partition_by = \"header:X-Camera-ID\""
            )
            .build(),
        route("frames", "/", "cams", ""),
    );
    let p = start(&tables).await;
    let mut failed = 0;
    for cam in 0..40 {
        let id = format!("cam-{cam}");
        let r = call(
            &p.client,
            Method::GET,
            &p.proxy.url("/f"),
            &[("x-camera-id", &id)],
            "",
        )
        .await;
        if r.status != 200 {
            assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("cams"));
            failed += 1;
        }
    }
    assert_eq!(
        failed, 3,
        "exactly failure_threshold requests paid for the dead endpoint"
    );
    assert_eq!(live.hits(), 37);
    assert_eq!(
        p.proxy.breaker_state("cams", dead.addr),
        BreakerState::Open,
        "the endpoint's own breaker opened"
    );
    let cb = p.breakers().await;
    let parts = &cb["cams"]["endpoints"][dead.addr.to_string()]["partitions"];
    let opened = parts
        .as_object()
        .expect("partitions")
        .values()
        .filter(|b| b["state"] == "open")
        .count();
    assert_eq!(opened, 0, "no camera's own breaker opened: {parts:#}");
    assert!(p.proxy.shutdown().await);
}

/// Proves: a reload that changes only an endpoint's weight keeps its open breaker
/// open, with its counts and `times_opened`, its gauge at 1 and its state-change series
/// (the series of an endpoint still present are never deleted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_only_reload_keeps_an_open_breaker_open() {
    let live = Scripted::ok("ok").await;
    let dead = dead_port();
    let tables = |weight: u32| {
        format!(
            "[upstreams.app]\nendpoints = [\"{}\", {{ address = \"{}\", weight = {weight} }}]\n\
             load_balancing = \"weighted\"\n\n[upstreams.app.retry]\nmax_retries = 0\n\n\
             [upstreams.app.circuit_breaker]\nfailure_threshold = 1\nrecovery_timeout = \"60s\"\n\n{}",
            live.addr,
            dead.addr,
            route("all", "/", "app", "")
        )
    };
    let p = start(&tables(1)).await;
    // Round the weighted rotation until the dead endpoint was tried and opened.
    for _ in 0..4 {
        let _ = get(&p.client, &p.proxy.url("/x")).await;
    }
    p.proxy
        .wait_breaker("app", dead.addr, BreakerState::Open)
        .await;
    let ep = dead.addr.to_string();
    let before = p.breakers().await["app"]["endpoints"][&ep].clone();
    assert_eq!(before["times_opened"], 1);

    p.reload(&tables(2)).await;
    let after = p.breakers().await["app"]["endpoints"][&ep].clone();
    assert_eq!(after["state"], "open", "{after:#}");
    assert_eq!(after["times_opened"], 1);
    assert_eq!(after["failure_count"], before["failure_count"]);
    let text = p.metrics().await;
    let labels = format!(r#"endpoint="{ep}",route="",service="app""#);
    assert_eq!(
        sample(&text, "gateway_circuit_breaker_state", &labels),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "gateway_circuit_breaker_state_changes_total",
            &format!("{labels},state=\"open\"")
        ),
        Some(1.0)
    );
    let hits = live.hits();
    for _ in 0..6 {
        assert_eq!(get(&p.client, &p.proxy.url("/x")).await.status, 200);
    }
    assert_eq!(live.hits(), hits + 6, "the open endpoint gets no traffic");
    assert!(p.proxy.shutdown().await);
}

/// Proves: a busy endpoint whose pool of two connections is held by six slow requests
/// stays healthy through fifteen probes 100 ms apart: probes use a connection of their
/// own, outside `max_connections_per_host`, never queued behind data. A probe queued
/// behind the held data would time out after its 1 s (well within the fifteen) and,
/// with `unhealthy_threshold = 1`, mark the endpoint unhealthy; 1 s also leaves a probe
/// on a busy machine the time to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_endpoint_stays_healthy() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    up.rule(Match::path("/health"), Behaviour::ok("healthy"));
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[up.addr])
            .table("pool", "max_connections_per_host = 2")
            .table("timeouts", "connect = \"30s\"\nrequest = \"30s\"")
            .table(
                "health_check",
                "path = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n\
                 unhealthy_threshold = 1\nhealthy_threshold = 1"
            )
            .build(),
        route("infer", "/", "gpu", "timeout = \"60s\""),
    );
    let p = start(&tables).await;
    let mut slow = Vec::new();
    for _ in 0..6 {
        let (c, url) = (p.client.clone(), p.proxy.url("/infer"));
        slow.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    // Two requests hold the pool's two connections; four wait for one.
    eventually("two slow requests at the upstream", WAIT, || {
        up.seen_on("/infer").len() >= 2
    })
    .await;
    let probes_before = up.seen_on("/health").len();
    let ep = p.proxy.endpoint("gpu", up.addr);
    eventually("fifteen probes while busy", WAIT * 2, || {
        assert!(ep.is_healthy(), "a busy endpoint was marked unhealthy");
        up.seen_on("/health").len() >= probes_before + 15
    })
    .await;
    assert!(ep.is_healthy());
    assert_eq!(ep.core.pool.load().open(), 2, "data stayed within its cap");
    gate.open();
    for t in slow {
        let r = within(WAIT, "a slow request", t).await.expect("task");
        assert_eq!(r.status, 200);
    }
    assert!(p.proxy.shutdown().await);
}

/// Proves: a request pins its endpoint list: when the list changes under it (a DNS
/// refresh that reorders the answers) between its first attempt and its retry, the
/// retry still goes to the endpoint it has not tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_keeps_its_endpoint_list_across_a_refresh() {
    let gate = Gate::new();
    let a = Scripted::start(Behaviour::gated(&gate, Behaviour::respond(503, "busy"))).await;
    let b = Scripted::ok("from b").await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[a.addr, b.addr])
            .extra("load_balancing = \"round_robin\"")
            .retry("max_retries = 1\nbase_delay = \"0s\"\nmax_delay = \"1ms\"")
            .build(),
        route("all", "/", "app", ""),
    );
    let p = start(&tables).await;
    let (c, url) = (p.client.clone(), p.proxy.url("/x"));
    let pending = tokio::spawn(async move { get(&c, &url).await });
    a.wait_hits(1).await;
    // The refresh: same endpoints, reversed.
    let snap = p.proxy.running.snapshot();
    let up = snap.upstreams.get("app").expect("upstream");
    let mut eps: Vec<_> = up.endpoints().iter().cloned().collect();
    eps.reverse();
    up.set_endpoints(eps);
    gate.open();
    let r = within(WAIT, "the retried request", pending)
        .await
        .expect("task");
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "from b"));
    assert_eq!((a.hits(), b.hits()), (1, 1));
    assert!(p.proxy.shutdown().await);
}

/// Proves: a reload that leaves a route's rate limit unchanged keeps its buckets (the
/// spent burst is not handed out again), and one that changes it starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_buckets_survive_a_reload_that_keeps_them() {
    let up = Scripted::ok("ok").await;
    let tables = |timeout: &str, burst: u32| {
        format!(
            "{}{}",
            UpstreamToml::new("app", &[up.addr]).build(),
            route(
                "limited",
                "/",
                "app",
                &format!(
                    "timeout = \"{timeout}\"\nrate_limit = {{ requests_per_second = 0.01, burst = {burst} }}"
                )
            ),
        )
    };
    let p = start(&tables("30s", 2)).await;
    for _ in 0..2 {
        assert_eq!(get(&p.client, &p.proxy.url("/")).await.status, 200);
    }
    let r = get(&p.client, &p.proxy.url("/")).await;
    assert_fusebox_error(&r, 429, "RATE_LIMITED", Some("app"));

    p.reload(&tables("20s", 2)).await;
    let r = get(&p.client, &p.proxy.url("/")).await;
    assert_fusebox_error(&r, 429, "RATE_LIMITED", Some("app"));

    p.reload(&tables("20s", 3)).await;
    assert_eq!(get(&p.client, &p.proxy.url("/")).await.status, 200);
    assert_eq!(up.hits(), 3);
    assert!(p.proxy.shutdown().await);
}

/// Proves: after a reload that removes an endpoint, its series leave `/metrics`
/// (connections and breaker), while the endpoint that stayed keeps its series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_of_a_removed_endpoint_go_and_the_others_stay() {
    let a = Scripted::ok("a").await;
    let b = Scripted::ok("b").await;
    let tables = |eps: &[SocketAddr]| {
        format!(
            "{}{}",
            UpstreamToml::new("app", eps).build(),
            route("all", "/", "app", "")
        )
    };
    let p = start(&tables(&[a.addr, b.addr])).await;
    for _ in 0..2 {
        assert_eq!(get(&p.client, &p.proxy.url("/")).await.status, 200);
    }
    let has = |text: &str, ep: SocketAddr| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .any(|l| l.contains(&format!("endpoint=\"{ep}\"")))
    };
    let text = p.metrics().await;
    assert!(has(&text, a.addr) && has(&text, b.addr));
    p.reload(&tables(&[a.addr])).await;
    let text = p.metrics().await;
    assert!(
        has(&text, a.addr),
        "the endpoint still present keeps its series"
    );
    assert!(
        !has(&text, b.addr),
        "the removed endpoint's series are gone:\n{text}"
    );
    assert!(p.proxy.shutdown().await);
}

/// Proves: a reload that changes only `partition_by` keeps the endpoint's own breaker
/// (open, with its `times_opened`) on the upstream's table and on a route's own, and
/// starts the keys afresh; an endpoint forced open stays forced and the reload logs and
/// counts no state change for it. Before, a changed partition header made new sets,
/// own breakers included: an open breaker came back closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changing_partition_by_keeps_the_endpoints_own_breaker() {
    let up = Scripted::start(Behaviour::respond(500, "broken")).await;
    let forced = Scripted::ok("forced").await;
    let tables = |header: &str| {
        let breaker = format!(
            "failure_threshold = 1\nrecovery_timeout = \"60s\"\npartition_by = \"header:{header}\""
        );
        format!(
            "{}{}{}{}",
            UpstreamToml::new("p", &[up.addr]).breaker(&breaker).build(),
            UpstreamToml::new("f", &[forced.addr])
                .breaker(&breaker)
                .build(),
            route("shared", "/s", "p", ""),
            route(
                "own",
                "/o",
                "p",
                "circuit_breaker = { failure_threshold = 1, recovery_timeout = \"60s\" }"
            ),
        ) + &route("forced", "/f", "f", "")
    };
    let p = start(&tables("X-Camera-ID")).await;
    // No camera header: the failures count on the endpoint's own breakers.
    for path in ["/s/x", "/o/x"] {
        assert_eq!(get(&p.client, &p.proxy.url(path)).await.status, 500);
        let r = get(&p.client, &p.proxy.url(path)).await;
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("p"));
    }
    let r = p
        .admin_post(&format!("/circuit_breakers/f/{}/open", forced.addr))
        .await;
    assert_eq!(r.status, 200);
    let changes = |text: &str| {
        sample(
            text,
            "gateway_circuit_breaker_state_changes_total",
            &format!(
                "endpoint=\"{}\",route=\"\",service=\"f\",state=\"open\"",
                forced.addr
            ),
        )
    };
    let before = changes(&p.metrics().await);
    assert_eq!(before, Some(1.0), "forced open once");
    let hits = up.hits();

    p.reload(&tables("X-Org-ID")).await;
    for path in ["/s/x", "/o/x"] {
        let r = get(&p.client, &p.proxy.url(path)).await;
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("p"));
    }
    assert_eq!(up.hits(), hits, "nothing reached the open endpoint");
    let v = p.breakers().await;
    let own = &v["p"]["endpoints"][up.addr.to_string()];
    assert_eq!(own["state"], "open", "{v}");
    assert_eq!(own["times_opened"], 1, "{v}");
    let route_own = &v["p"]["routes"]["own"]["endpoints"][up.addr.to_string()];
    assert_eq!(route_own["state"], "open", "{v}");
    let r = get(&p.client, &p.proxy.url("/f/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("f"));
    assert_eq!(
        changes(&p.metrics().await),
        before,
        "no state change on reload"
    );
    assert_eq!(forced.hits(), 0);
    assert!(p.proxy.shutdown().await);
}

/// Proves: an upstream left with no endpoints (what a DNS name that resolves to no
/// address gives) makes `/health` read `unhealthy`: it can serve nothing, though no
/// breaker is open. Before, it read `healthy` while every request failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_endpoints_is_unhealthy() {
    let a = Scripted::ok("a").await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[a.addr]).build(),
        route("all", "/", "app", ""),
    );
    let p = start(&tables).await;
    let health = |p: &P| {
        let url = p.admin_url("/health");
        let c = p.client.clone();
        async move { get(&c, &url).await.json()["status"].clone() }
    };
    assert_eq!(health(&p).await, "healthy");
    let snap = p.proxy.running.snapshot();
    snap.upstreams
        .get("app")
        .expect("upstream")
        .set_endpoints(Vec::new());
    assert_eq!(health(&p).await, "unhealthy");
    let r = get(&p.client, &p.proxy.url("/x")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(p.proxy.shutdown().await);
}

/// Proves: `gateway_upstream_concurrency_limit` is exported only for endpoints whose
/// upstream has an adaptive limit: none without it (a 0 there read as "limit 0"), the
/// initial limit once a reload adds the table, none again once a reload removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_gauge_is_exported_only_with_an_adaptive_limit() {
    let a = Scripted::ok("a").await;
    let tables = |adaptive: bool| {
        let mut up = UpstreamToml::new("app", &[a.addr]);
        if adaptive {
            up = up.table("adaptive_concurrency", "initial_limit = 12");
        }
        format!("{}{}", up.build(), route("all", "/", "app", ""))
    };
    let p = start(&tables(false)).await;
    assert_eq!(get(&p.client, &p.proxy.url("/x")).await.status, 200);
    let labels = format!(r#"endpoint="{}",service="app""#, a.addr);
    let gauge = "gateway_upstream_concurrency_limit";
    assert_eq!(sample(&p.metrics().await, gauge, &labels), None);
    p.reload(&tables(true)).await;
    assert_eq!(sample(&p.metrics().await, gauge, &labels), Some(12.0));
    p.reload(&tables(false)).await;
    assert_eq!(sample(&p.metrics().await, gauge, &labels), None);
    assert!(p.proxy.shutdown().await);
}

/// An endpoint re-spelled by a reload (an IP literal now written as a name that
/// resolves to it) is the same endpoint: its forced open holds through the reload and
/// the name's first DNS answers, and nothing reaches it. Before, the gap before the
/// name was resolved let its core and breakers go, and the maintenance block lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_respelled_endpoint_keeps_its_forced_open() {
    let up = Scripted::ok("ok").await;
    let port = up.addr.port();
    let tables = |ep: &str| {
        format!(
            "{}{}",
            UpstreamToml::new("yolo", &[])
                .extra("dns_refresh = \"100ms\"")
                .build()
                .replace("endpoints = []", &format!("endpoints = [\"{ep}\"]")),
            route_toml("all", "/", "yolo", "")
        )
    };
    let p = start(&tables(&format!("127.0.0.1:{port}"))).await;
    let ep = up.addr.to_string();
    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{ep}/open"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    p.reload(&tables(&format!("localhost:{port}"))).await;
    // The name's answers are in once the endpoint list holds the address again.
    eventually("localhost resolved", WAIT, || {
        p.proxy.running.snapshot().upstreams["yolo"]
            .endpoints()
            .iter()
            .any(|e| e.addr == up.addr)
    })
    .await;
    let cb = p.breakers().await;
    assert_eq!(cb["yolo"]["endpoints"][&ep]["state"], "open", "{cb:#}");
    for _ in 0..4 {
        let _ = get(&p.client, &p.proxy.url("/x")).await;
    }
    assert_eq!(up.hits(), 0, "nothing reached the forced-open endpoint");
}
