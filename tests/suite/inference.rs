//! Inference-aware traffic against real upstreams on 127.0.0.1: `peak_ewma` keeps a
//! slow replica, and one that fails fast, out of the way; load reports move traffic;
//! the adaptive concurrency limit falls when latency rises under load and recovers;
//! a request whose deadline is shorter than the predicted wait is shed at once; under
//! overload, `low` is shed before `normal` before `critical`; a reported queue drives
//! the limit, also across a reload; an endpoint slower than the time left is not
//! picked. Every check is a count (requests per endpoint, upstream hits, error codes,
//! counters), never elapsed time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::common::scripted::*;
use crate::common::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` requests from `clients` concurrent clients to `url`, with `headers`; returns
/// the statuses in completion order.
async fn drive(url: &str, clients: usize, n: usize, headers: &[(&str, &str)]) -> Vec<u16> {
    let c = http1_client();
    let per = n / clients;
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, url, headers) = (c.clone(), url.to_owned(), headers.clone());
        tasks.push(tokio::spawn(async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (&**k, &**v)).collect();
            let mut out = Vec::with_capacity(per);
            for _ in 0..per {
                out.push(call(&c, Method::GET, &url, &h, "").await.status.as_u16());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(within(WAIT * 6, "the clients", t).await.expect("task"));
    }
    all
}

async fn metrics(p: &Proxy) -> String {
    let url = format!("http://{}/metrics", p.running.admin_addr);
    get(&http1_client(), &url).await.text()
}

fn sample(text: &str, name_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_labels)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn fleet(addrs: &[SocketAddr], lb: &str, extra: &str) -> String {
    format!(
        "{}{}",
        UpstreamToml::new("gpu", addrs)
            .extra(&format!("load_balancing = \"{lb}\"\n{extra}"))
            .build(),
        route_toml("infer", "/", "gpu", "timeout = \"20s\"")
    )
}

/// Proves: with one of two replicas 30x slower (100 ms against ~3 ms), 8 concurrent
/// clients and 400 requests, `peak_ewma` sends it under 10 % of the requests (it
/// learns the latency and compares cost, not only requests in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_keeps_a_slow_replica_out_of_the_way() {
    let fast = Scripted::start(Behaviour::delayed(ms(3), Behaviour::ok("fast"))).await;
    let slow = Scripted::start(Behaviour::delayed(ms(100), Behaviour::ok("slow"))).await;
    let p = spawn_proxy(&fleet(&[fast.addr, slow.addr], "peak_ewma", "")).await;
    let statuses = drive(&p.url("/detect"), 8, 400, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(fast.hits() + slow.hits(), 400);
    assert!(
        slow.hits() < 40,
        "the slow replica got {} of 400 requests",
        slow.hits()
    );
    assert!(p.shutdown().await);
}

/// Proves: a replica that answers 503 in 1 ms gets less traffic, not more: a failure
/// counts as at least twice the latency estimate, so failing fast never looks fast
/// (with `least_request` it would win every comparison: it has nothing in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_fast_gets_less_traffic() {
    let good = Scripted::start(Behaviour::delayed(ms(5), Behaviour::ok("ok"))).await;
    let bad = Scripted::start(Behaviour::respond(503, "overloaded")).await;
    let p = spawn_proxy(&fleet(&[good.addr, bad.addr], "peak_ewma", "")).await;
    let statuses = drive(&p.url("/detect"), 4, 200, &[]).await;
    let failed = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        failed,
        bad.hits(),
        "every 503 came from the failing replica"
    );
    assert!(
        bad.hits() * 5 < good.hits(),
        "the failing replica got {} requests, the good one {}",
        bad.hits(),
        good.hits()
    );
    assert!(p.shutdown().await);
}

/// Proves: a configured load-report header (`x-queue-depth`) and ORCA's
/// `endpoint-load-metrics` each move traffic away from the replica reporting a long
/// queue within a few responses, and neither header reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_move_traffic_and_are_not_forwarded() {
    for (header, busy_value) in [
        ("x-queue-depth", "50"),
        (
            "endpoint-load-metrics",
            "TEXT named_metrics.num_requests_waiting=50, application_utilization=0.5",
        ),
    ] {
        let calm_value = if header == "x-queue-depth" {
            "0"
        } else {
            "TEXT named_metrics.num_requests_waiting=0"
        };
        let answer =
            |v: &str| Behaviour::delayed(ms(5), Behaviour::ok("ok").with_header(header, v));
        let busy = Scripted::start(answer(busy_value)).await;
        let calm = Scripted::start(answer(calm_value)).await;
        let p = spawn_proxy(&fleet(
            &[busy.addr, calm.addr],
            "peak_ewma",
            "load_report_header = \"x-queue-depth\"",
        ))
        .await;
        let c = http1_client();
        // A few responses teach it; the next 100 go around the busy replica.
        for _ in 0..6 {
            let r = get(&c, &p.url("/x")).await;
            assert_eq!(r.status, 200);
            assert_eq!(r.header(header), None, "{header} is not forwarded");
        }
        let before = busy.hits();
        let statuses = drive(&p.url("/x"), 2, 100, &[]).await;
        assert!(statuses.iter().all(|s| *s == 200));
        let to_busy = busy.hits() - before;
        assert!(
            to_busy < 10,
            "{header}: the replica reporting a queue of 50 got {to_busy} of 100"
        );
        assert!(p.shutdown().await);
    }
}

/// The adaptive limit now, from its gauge.
async fn limit(p: &Proxy, ep: SocketAddr) -> f64 {
    let text = metrics(p).await;
    let labels = format!(r#"gateway_upstream_concurrency_limit{{endpoint="{ep}",service="gpu"}}"#);
    sample(&text, &labels).unwrap_or_else(|| panic!("no {labels} in:\n{text}"))
}

/// Proves: the adaptive concurrency limit grows while latency is steady under load,
/// falls when latency rises (10 ms -> 80 ms) with 16 concurrent clients, and recovers
/// once latency is back; requests over the limit wait in the route's queue (a long
/// `queue_timeout` here, so none is shed) and every one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adaptive_limit_falls_under_queueing_and_recovers() {
    let up = Scripted::start(Behaviour::delayed(ms(10), Behaviour::ok("ok"))).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[up.addr])
            .table(
                "adaptive_concurrency",
                "min_limit = 1\nmax_limit = 64\ninitial_limit = 8"
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 1000, max_queue = 64, queue_timeout = \"30s\" }"
        )
    );
    let p = spawn_proxy(&tables).await;
    let url = p.url("/infer");
    let all_ok = |s: Vec<u16>| assert!(s.iter().all(|x| *x == 200), "{s:?}");
    all_ok(drive(&url, 16, 320, &[]).await);
    let steady = limit(&p, up.addr).await;
    assert!(steady > 8.0, "grew from 8 under steady latency: {steady}");
    up.set(Behaviour::delayed(ms(80), Behaviour::ok("ok")));
    all_ok(drive(&url, 16, 48, &[]).await);
    let loaded = limit(&p, up.addr).await;
    assert!(
        loaded < steady,
        "the limit fell when latency rose: {steady} -> {loaded}"
    );
    up.set(Behaviour::delayed(ms(10), Behaviour::ok("ok")));
    all_ok(drive(&url, 16, 480, &[]).await);
    let recovered = limit(&p, up.addr).await;
    assert!(
        recovered > loaded,
        "the limit recovered after the load: {loaded} -> {recovered}"
    );
    assert!(p.shutdown().await);
}

/// Proves: an adaptive limit is a bound, not a hint. With the limit pinned at 2
/// (`min_limit = max_limit = 2`), 16 concurrent clients and 160 requests, the upstream
/// never holds more than 2 at once: the requests over it wait in the route's queue and
/// every one is answered. (The check against the limit and the count in flight are one
/// step; two requests racing for the last slot cannot both take it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adaptive_limit_is_never_exceeded() {
    let up = Scripted::start(Behaviour::delayed(ms(2), Behaviour::ok("ok"))).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[up.addr])
            .table(
                "adaptive_concurrency",
                "min_limit = 2\nmax_limit = 2\ninitial_limit = 2"
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 1000, max_queue = 64, queue_timeout = \"30s\" }"
        )
    );
    let p = spawn_proxy(&tables).await;
    let statuses = drive(&p.url("/infer"), 16, 160, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.hits(), 160);
    assert_eq!(
        up.peak_in_flight(),
        2,
        "at most the limit at once, and all of it used"
    );
    // The slot is taken in one step with the check: the third of three takers at a
    // limit of 2 gets none, and a slot given back can be taken again.
    let ep = p.endpoint("gpu", up.addr);
    let first = ep.try_start_request().expect("a first slot");
    let second = ep.try_start_request().expect("a second slot");
    assert_eq!((first.1, second.1), (0, 1), "the counts before each");
    assert!(
        ep.try_start_request().is_none(),
        "no third slot at a limit of 2"
    );
    drop(second);
    assert!(ep.try_start_request().is_some(), "the freed slot");
    drop(first);
    assert!(p.shutdown().await);
}

/// Proves: a request with 50 ms left, where the endpoint's answers take ~200 ms, is
/// answered `503 OVERLOADED` (with `Retry-After`) at once and never reaches the
/// upstream, counted as `reason="deadline"`; one with time enough goes through; a
/// route with `shed_on_deadline = false` does not shed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_cannot_make_its_deadline_is_shed_at_once() {
    let up = Scripted::start(Behaviour::delayed(ms(200), Behaviour::ok("ok"))).await;
    let tables = format!(
        "{}{}{}",
        UpstreamToml::new("gpu", &[up.addr]).build(),
        route_toml("infer", "/infer", "gpu", ""),
        route_toml("patient", "/patient", "gpu", "shed_on_deadline = false"),
    );
    let p = spawn_proxy(&tables).await;
    let c = http1_client();
    for _ in 0..3 {
        assert_eq!(get(&c, &p.url("/infer")).await.status, 200);
    }
    let hits = up.hits();
    let r = call(
        &c,
        Method::GET,
        &p.url("/infer"),
        &[("x-request-timeout-ms", "50")],
        "",
    )
    .await;
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("gpu"));
    assert!(retry_after_secs(&r) >= 1);
    assert_eq!(up.hits(), hits, "never reached the upstream");
    let text = metrics(&p).await;
    assert_eq!(
        sample(
            &text,
            r#"gateway_proxy_rejected_total{reason="deadline",route="infer"}"#
        ),
        Some(1.0)
    );
    let r = call(
        &c,
        Method::GET,
        &p.url("/infer"),
        &[("x-request-timeout-ms", "5000")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "time enough: forwarded");
    let r = call(
        &c,
        Method::GET,
        &p.url("/patient"),
        &[("x-request-timeout-ms", "50")],
        "",
    )
    .await;
    assert_fusebox_error(&r, 504, "DEADLINE_EXCEEDED", Some("gpu"));
    assert_eq!(up.hits(), hits + 2);
    assert!(p.shutdown().await);
}

fn finished(tasks: &[(&str, tokio::task::JoinHandle<Reply>)]) -> usize {
    tasks.iter().filter(|(_, t)| t.is_finished()).count()
}

/// Proves DESIGN's *Priority*: with 2 requests in flight and a queue of 4, four `low`
/// are queued, four `normal` push them out, four `critical` push those out, and a
/// late `low` is refused on arrival: 8 shed as `reason="priority"`, 1 as
/// `overloaded`; the 4 critical and the 2 held requests are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_overload_low_goes_before_normal_before_critical() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("ok"))).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[up.addr]).build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 2, max_queue = 4, queue_timeout = \"60s\" }"
        )
    );
    let p = Arc::new(spawn_proxy(&tables).await);
    let snap = p.running.snapshot();
    let queue = snap.routes[0]
        .concurrency
        .clone()
        .expect("a concurrency limit");
    let send = |prio: &'static str| {
        let (c, url) = (http1_client(), p.url("/x"));
        tokio::spawn(async move { call(&c, Method::GET, &url, &[("x-priority", prio)], "").await })
    };
    let held = [send("normal"), send("normal")];
    up.wait_hits(2).await;
    let mut queued: Vec<(&str, tokio::task::JoinHandle<Reply>)> = Vec::new();
    for prio in ["low", "normal", "critical"] {
        for _ in 0..4 {
            let (waiting, shed) = (queue.queued(), finished(&queued));
            queued.push((prio, send(prio)));
            // Joined: the queue grew, or (full) the request it pushed out was answered.
            eventually("the request to join the queue", WAIT, || {
                queue.queued() == waiting + 1 || finished(&queued) == shed + 1
            })
            .await;
        }
    }
    let late = send("low");
    let r = within(WAIT, "the late low request", late)
        .await
        .expect("task");
    assert_fusebox_error(&r, 503, "OVERLOADED", Some("gpu"));
    gate.open();
    let mut by_prio: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (prio, t) in queued {
        let r = within(WAIT, "a queued request", t).await.expect("task");
        let e = by_prio.entry(prio).or_default();
        if r.status == 200 {
            e.0 += 1;
        } else {
            assert_fusebox_error(&r, 503, "OVERLOADED", Some("gpu"));
            e.1 += 1;
        }
    }
    for t in held {
        assert_eq!(
            within(WAIT, "a held request", t)
                .await
                .expect("task")
                .status,
            200
        );
    }
    assert_eq!(by_prio["low"], (0, 4), "every low was shed");
    assert_eq!(by_prio["normal"], (0, 4), "every queued normal was shed");
    assert_eq!(by_prio["critical"], (4, 0), "every critical was served");
    let text = metrics(&p).await;
    let rejected = |reason: &str| {
        sample(
            &text,
            &format!(r#"gateway_proxy_rejected_total{{reason="{reason}",route="infer"}}"#),
        )
    };
    assert_eq!(rejected("priority"), Some(8.0));
    assert_eq!(rejected("overloaded"), Some(1.0));
    assert_eq!(up.hits(), 6);
}

/// The queue-report tests' `gpu` upstream (`extra` lines, an adaptive limit of 1..64
/// starting at 16) behind a catch-all route whose queue holds every request meanwhile.
fn queue_report_tables(addr: SocketAddr, extra: &str) -> String {
    format!(
        "{}{}",
        UpstreamToml::new("gpu", &[addr])
            .extra(extra)
            .table(
                "adaptive_concurrency",
                "min_limit = 1\nmax_limit = 64\ninitial_limit = 16"
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 1000, max_queue = 64, queue_timeout = \"30s\" }"
        )
    )
}

/// 64 requests from 8 clients while `ep` reports 200 waiting: all answered, and the
/// limit is at `min_limit`.
async fn assert_limit_cut(p: &Proxy, ep: SocketAddr, why: &str) {
    let statuses = drive(&p.url("/infer"), 8, 64, &[]).await;
    assert!(statuses.iter().all(|x| *x == 200), "{statuses:?}");
    assert_eq!(limit(p, ep).await, 1.0, "{why}");
}

/// 480 requests from 16 clients while `ep` reports an empty queue: all answered, and
/// the limit grew back to 8 or more.
async fn assert_limit_recovered(p: &Proxy, ep: SocketAddr) {
    let statuses = drive(&p.url("/infer"), 16, 480, &[]).await;
    assert!(statuses.iter().all(|x| *x == 200), "{statuses:?}");
    let recovered = limit(p, ep).await;
    assert!(
        recovered >= 8.0,
        "an empty queue under load grew the limit back: {recovered}"
    );
}

/// Proves: when the upstream reports more requests waiting than fusebox has in flight
/// there (work it still runs for callers that gave up, or other clients'), the
/// adaptive limit falls to `min_limit`; once the reported queue is empty again it
/// grows back under load. Every request is answered meanwhile (a long queue timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_queue_beyond_ours_cuts_the_limit_and_it_recovers() {
    let answer = |depth: &str| {
        Behaviour::delayed(
            ms(5),
            Behaviour::ok("ok").with_header("x-queue-depth", depth),
        )
    };
    let up = Scripted::start(answer("200")).await;
    let p = spawn_proxy(&queue_report_tables(
        up.addr,
        "load_report_header = \"x-queue-depth\"",
    ))
    .await;
    assert_limit_cut(
        &p,
        up.addr,
        "200 waiting beyond our 16: the limit fell to min_limit",
    )
    .await;
    up.set(answer("0"));
    assert_limit_recovered(&p, up.addr).await;
    assert!(p.shutdown().await);
}

/// Proves: with deadline shedding on, an endpoint whose mean latency (150 ms) is
/// longer than a request's time left (100 ms) is not sent that request while another
/// endpoint fits: round robin would send it half of them; all go to the fast one and
/// are answered. With `shed_on_deadline = false` the slow one gets its turn again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_slower_than_the_time_left_is_not_picked() {
    let fast = Scripted::start(Behaviour::delayed(ms(5), Behaviour::ok("fast"))).await;
    let slow = Scripted::start(Behaviour::delayed(ms(150), Behaviour::ok("slow"))).await;
    let tables = format!(
        "{}{}{}",
        UpstreamToml::new("gpu", &[fast.addr, slow.addr])
            .extra("load_balancing = \"round_robin\"")
            .build(),
        route_toml("infer", "/infer", "gpu", "timeout = \"20s\""),
        route_toml(
            "patient",
            "/patient",
            "gpu",
            "timeout = \"20s\"\nshed_on_deadline = false"
        ),
    );
    let p = spawn_proxy(&tables).await;
    let c = http1_client();
    for _ in 0..4 {
        assert_eq!(get(&c, &p.url("/infer")).await.status, 200);
    }
    assert!(slow.hits() >= 1 && fast.hits() >= 1, "both are known");
    let (fast0, slow0) = (fast.hits(), slow.hits());
    let hurried = [("x-request-timeout-ms", "100")];
    for _ in 0..20 {
        let r = call(&c, Method::GET, &p.url("/infer"), &hurried, "").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "fast");
    }
    assert_eq!(slow.hits(), slow0, "the slow endpoint got none");
    assert_eq!(fast.hits(), fast0 + 20);
    let mut slow_turns = 0;
    for _ in 0..4 {
        let r = call(&c, Method::GET, &p.url("/patient"), &hurried, "").await;
        if r.status == 504 {
            slow_turns += 1;
        }
    }
    assert_eq!(
        slow_turns, 2,
        "without deadline shedding, round robin as usual"
    );
    assert!(p.shutdown().await);
}

/// Proves a reload keeps what an endpoint's adaptive limit learned when its settings
/// stay (a route added: the limit cut to 1 by a reported queue is still 1), and goes on
/// from it when they change, clamped into the new bounds (`max_limit` 64 -> 32: still
/// 1, not `initial_limit`; `min_limit` 1 -> 4: 4); a reload that is refused while
/// building (a CA file that holds no certificate) changes nothing, even when it would
/// have changed the settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_learned_limit_unless_its_settings_change() {
    let up = Scripted::start(Behaviour::delayed(
        ms(5),
        Behaviour::ok("ok").with_header("x-queue-depth", "200"),
    ))
    .await;
    let tables = |min_limit: u32, max_limit: u32, extra_route: bool| {
        let mut t = format!(
            "{}{}",
            UpstreamToml::new("gpu", &[up.addr])
                .extra("load_report_header = \"x-queue-depth\"")
                .table(
                    "adaptive_concurrency",
                    &format!("min_limit = {min_limit}\nmax_limit = {max_limit}\ninitial_limit = 16")
                )
                .build(),
            route_toml(
                "infer",
                "/",
                "gpu",
                "timeout = \"60s\"\nconcurrency = { max_in_flight = 1000, max_queue = 64, queue_timeout = \"30s\" }"
            )
        );
        if extra_route {
            t.push_str(&route_toml("other", "/other", "gpu", ""));
        }
        t
    };
    let p = spawn_proxy(&tables(1, 64, false)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let reload = |text: String| {
        let path = dir.path().join("fusebox.toml");
        let ctrl = p.running.ctrl.clone();
        async move {
            std::fs::write(&path, format!("{}{text}", base_config(""))).expect("write config");
            let out = fusebox::reload::reload_from(&ctrl, &path).await;
            assert!(
                matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
                "reload: {out:?}"
            );
        }
    };
    let statuses = drive(&p.url("/infer"), 8, 64, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(p.endpoint("gpu", up.addr).core.limit(), Some(1), "learned");
    reload(tables(1, 64, true)).await;
    assert_eq!(
        p.endpoint("gpu", up.addr).core.limit(),
        Some(1),
        "same settings: the learned limit stays"
    );
    assert_eq!(limit(&p, up.addr).await, 1.0);
    // Refused because a later upstream's CA file holds no certificate (it can be
    // read, so validation passes and the build refuses it; upstreams build in name
    // order, so `gpu` with its new settings would be built first): nothing changes,
    // not even the learned limit of the upstream before it.
    let bad_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad_ca, "this is no PEM certificate\n").expect("write CA");
    let refused = format!(
        "{}{}",
        tables(1, 32, true),
        UpstreamToml::new("zz-tls", &[up.addr])
            .extra(&format!(
                "protocol = \"https\"\ntls = {{ ca = \"{}\" }}",
                bad_ca.display()
            ))
            .build()
    );
    let path = dir.path().join("refused.toml");
    std::fs::write(&path, format!("{}{refused}", base_config(""))).expect("write config");
    let out = fusebox::reload::reload_from(&p.running.ctrl, &path).await;
    assert!(
        out.is_err(),
        "a CA file without a certificate refuses the reload: {out:?}"
    );
    assert_eq!(
        p.endpoint("gpu", up.addr).core.limit(),
        Some(1),
        "a refused reload keeps the learned limit"
    );
    reload(tables(1, 32, true)).await;
    assert_eq!(
        p.endpoint("gpu", up.addr).core.limit(),
        Some(1),
        "new settings: the learned limit goes on, not initial_limit"
    );
    reload(tables(4, 32, true)).await;
    assert_eq!(
        p.endpoint("gpu", up.addr).core.limit(),
        Some(4),
        "clamped into the new min_limit"
    );
    assert_eq!(limit(&p, up.addr).await, 4.0, "and its gauge");
    assert!(p.shutdown().await);
}

/// ORCA's report as a gRPC server sends it: `endpoint-load-metrics-bin`, base64 of an
/// `OrcaLoadReport` with `named_metrics { num_requests_waiting }` (field 8).
fn orca_bin(waiting: f64) -> String {
    use base64::Engine as _;
    use prost::Message as _;
    #[derive(Clone, PartialEq, prost::Message)]
    struct OrcaLoadReport {
        #[prost(map = "string, double", tag = "8")]
        named_metrics: std::collections::HashMap<String, f64>,
    }
    let r = OrcaLoadReport {
        named_metrics: [("num_requests_waiting".to_owned(), waiting)].into(),
    };
    base64::engine::general_purpose::STANDARD.encode(r.encode_to_vec())
}

/// An h2c upstream that answers like a gRPC server reporting its load per call: after
/// 5 ms, headers, one data frame, then trailers with `grpc-status: 0` and
/// `endpoint-load-metrics-bin` saying `waiting` requests queue there (set by the test).
struct TrailerReporter {
    addr: SocketAddr,
    waiting: Arc<std::sync::atomic::AtomicU32>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TrailerReporter {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TrailerReporter {
    async fn start(waiting: u32) -> TrailerReporter {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let waiting = Arc::new(std::sync::atomic::AtomicU32::new(waiting));
        let w = waiting.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let w = w.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let report =
                            orca_bin(f64::from(w.load(std::sync::atomic::Ordering::SeqCst)));
                        async move {
                            tokio::time::sleep(ms(5)).await;
                            let mut t = http::HeaderMap::new();
                            t.insert("grpc-status", http::HeaderValue::from_static("0"));
                            t.insert(
                                "endpoint-load-metrics-bin",
                                http::HeaderValue::from_str(&report).expect("base64"),
                            );
                            let frames: Vec<Result<Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                                Ok(Frame::data(bytes::Bytes::from_static(b"ok"))),
                                Ok(Frame::trailers(t)),
                            ];
                            let body = StreamBody::new(futures_util::stream::iter(frames));
                            Ok::<_, std::convert::Infallible>(http::Response::new(body))
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
                });
            }
        });
        TrailerReporter {
            addr,
            waiting,
            accept,
        }
    }

    fn set(&self, waiting: u32) {
        self.waiting
            .store(waiting, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The trailers of one h2c call to fusebox at `url`.
async fn trailers_of(url: &str) -> http::HeaderMap {
    use http_body_util::BodyExt as _;
    let c = h2c_client();
    let r = send_head(
        &c,
        request(Method::GET, url)
            .body(crate::common::body::empty())
            .expect("request"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let body = within(WAIT, "the body", r.into_body().collect())
        .await
        .expect("body");
    body.trailers().cloned().expect("trailers")
}

/// Proves: a load report in a response's trailers (ORCA `endpoint-load-metrics-bin`,
/// as gRPC servers send it per call over h2c) feeds the endpoint like one in the
/// headers: 200 waiting cuts the adaptive limit to `min_limit`, 0 waiting grows it back
/// under load; the report is removed from the trailers the caller gets (the other
/// trailers pass) unless `forward_load_report = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_report_in_the_trailers_drives_the_limit_and_is_removed() {
    let up = TrailerReporter::start(200).await;
    let tables = format!(
        "{}{}{}",
        queue_report_tables(up.addr, "protocol = \"h2c\""),
        UpstreamToml::new("open", &[up.addr])
            .extra("protocol = \"h2c\"\nforward_load_report = true")
            .build(),
        route_toml("forwarded", "/forwarded", "open", ""),
    );
    let p = spawn_proxy(&tables).await;
    assert_limit_cut(
        &p,
        up.addr,
        "200 waiting, reported in the trailers: min_limit",
    )
    .await;
    let url = p.url("/infer");
    let t = trailers_of(&url).await;
    assert_eq!(t.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
    assert!(
        t.get("endpoint-load-metrics-bin").is_none(),
        "the report is not the caller's: {t:?}"
    );
    let t = trailers_of(&p.url("/forwarded")).await;
    assert!(
        t.get("endpoint-load-metrics-bin").is_some(),
        "forward_load_report passes it on: {t:?}"
    );
    up.set(0);
    assert_limit_recovered(&p, up.addr).await;
    assert!(p.shutdown().await);
}

/// Proves a replica that stopped answering gets nothing more while another can take
/// the request once it frees capacity: the other at its limit (8 in flight, 12
/// clients), callers wait for it instead of piling onto the stalled one, which keeps
/// just the request it holds. Before, the fallback pick took any endpoint under its
/// limit, stalled or not, and each caller sent there waited for its whole deadline.
/// The good replica answers in 100 ms (it would count as stalled only after 300 ms
/// without an answer) and the queue waits up to 30 s, so a slow machine changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replica_gets_nothing_while_another_can_take_it() {
    let good = Scripted::start(Behaviour::delayed(ms(100), Behaviour::ok("good"))).await;
    let stall = Scripted::start(Behaviour::delayed(ms(2), Behaviour::ok("stall"))).await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[good.addr, stall.addr])
            .extra("load_balancing = \"peak_ewma\"")
            .table(
                "adaptive_concurrency",
                "min_limit = 8\nmax_limit = 8\ninitial_limit = 8"
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 1000, max_queue = 64, queue_timeout = \"30s\" }"
        )
    );
    let p = spawn_proxy(&tables).await;
    // Both known: 12 clients overflow either one's limit of 8.
    let statuses = drive(&p.url("/infer"), 12, 60, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(good.hits() > 0 && stall.hits() > 0, "both answered");
    // It stalls. It is the cheaper one (2 ms against 100), so the next request goes
    // there and stays; once it has waited 3x the mean with no answer it counts as
    // stalled.
    let gate = Gate::new();
    stall.set(Behaviour::gated(&gate, Behaviour::ok("stall")));
    let held = stall.hits() + 1;
    let c = http1_client();
    let first = tokio::spawn({
        let (c, url) = (c.clone(), p.url("/infer"));
        async move { get(&c, &url).await.status }
    });
    within(WAIT, "the stalled replica's request", stall.wait_hits(held)).await;
    let ep = p.endpoint("gpu", stall.addr);
    let mean = ep.core.load.mean_latency().expect("a mean of answers");
    eventually("the stall to show", WAIT, || {
        let now = tokio::time::Instant::now();
        ep.core
            .load
            .unanswered_for(now)
            .is_some_and(|w| w > mean * 3)
    })
    .await;
    // 120 requests from 12 clients: the good one at its limit most of the time.
    let good_before = good.hits();
    let statuses = drive(&p.url("/infer"), 12, 120, &[]).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        good.hits(),
        good_before + 120,
        "all went to the good replica"
    );
    assert_eq!(stall.hits(), held, "the stalled replica got nothing more");
    gate.open();
    assert_eq!(within(WAIT, "the held request", first).await.unwrap(), 200);
    assert!(p.shutdown().await);
}

/// Requests waiting for an endpoint's adaptive limit are woken by a reload that makes
/// room (here: the table removed): before, only a finished request woke one waiter,
/// so they waited out their queue timeout and were shed with capacity free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_makes_room_wakes_the_waiters() {
    let gate = Gate::new();
    let up = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("ok"))).await;
    let tables = |adaptive: bool| {
        let u = UpstreamToml::new("gpu", &[up.addr]);
        let u = if adaptive {
            u.table(
                "adaptive_concurrency",
                "min_limit = 1\nmax_limit = 1\ninitial_limit = 1",
            )
        } else {
            u
        };
        format!(
            "{}{}",
            u.build(),
            route_toml(
                "infer",
                "/",
                "gpu",
                "timeout = \"60s\"\nconcurrency = { max_in_flight = 100, max_queue = 10, queue_timeout = \"30s\" }"
            )
        )
    };
    let p = spawn_proxy(&tables(true)).await;
    let mut calls = Vec::new();
    for i in 0..3 {
        let (c, url) = (http1_client(), p.url(&format!("/x/{i}")));
        calls.push(tokio::spawn(
            async move { get(&c, &url).await.status.as_u16() },
        ));
        if i == 0 {
            // The first holds the one slot before the others arrive (two picks at
            // the same instant may both pass a limit of 1).
            up.wait_hits(1).await;
        }
    }
    eventually("two requests waiting for the limit", WAIT, || {
        p.running.snapshot().upstreams["gpu"].waiting.len() == 2
    })
    .await;
    assert_eq!(up.hits(), 1, "the limit of 1 holds the others");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    std::fs::write(&path, format!("{}{}", base_config(""), tables(false))).expect("write");
    let out = fusebox::reload::reload_from(&p.running.ctrl, &path).await;
    assert!(
        matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
        "{out:?}"
    );
    // Woken at once: all three reach the upstream while the first still holds its slot.
    up.wait_hits(3).await;
    gate.open();
    for c in calls {
        assert_eq!(within(WAIT, "a call", c).await.expect("task"), 200);
    }
}

/// Two endpoints with an adaptive limit of 1, both held; camera k1's breaker is open
/// on `b`. When `b` frees, the first waiter (k1) is woken but may not use it: the wake
/// goes on to the waiter behind it (k2), which `b` serves while `a` is still held.
/// Before, the wake was used up by k1 and k2 waited out its queue timeout while `b`
/// sat idle (503 OVERLOADED).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_a_waiter_cannot_use_goes_to_the_one_behind_it() {
    let (gate_a, gate_b) = (Gate::new(), Gate::new());
    let a = Scripted::start(Behaviour::ok("a")).await;
    let b = Scripted::start(Behaviour::ok("b")).await;
    a.rule(
        Match::path("/hold"),
        Behaviour::gated(&gate_a, Behaviour::ok("a")),
    );
    b.rule(
        Match::path("/hold"),
        Behaviour::gated(&gate_b, Behaviour::ok("b")),
    );
    b.rule(
        Match::header("x-key", "k1"),
        Behaviour::respond(500, "k1 fails on b"),
    );
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[a.addr, b.addr])
            .table(
                "adaptive_concurrency",
                "min_limit = 1\nmax_limit = 1\ninitial_limit = 1"
            )
            .breaker(
                "failure_threshold = 1\nrecovery_timeout = \"60s\"\npartition_by = \"header:x-key\""
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 100, max_queue = 10, queue_timeout = \"20s\" }"
        )
    );
    let p = spawn_proxy(&tables).await;
    let c = http1_client();
    // k1 fails once on b: its key's breaker opens there (round robin: two calls, one
    // on each endpoint).
    for _ in 0..2 {
        let _ = call(&c, Method::GET, &p.url("/warm"), &[("x-key", "k1")], "").await;
    }
    assert_eq!(b.seen_with("x-key", "k1"), 1);
    // Both slots held.
    let spawn = |path: &str, key: &str| {
        let (c, url, key) = (c.clone(), p.url(path), key.to_owned());
        tokio::spawn(async move {
            let r = call(&c, Method::GET, &url, &[("x-key", &key)], "").await;
            (r.status.as_u16(), r.text())
        })
    };
    let hold_a = spawn("/hold", "k3");
    eventually("a slot held", WAIT, || {
        a.seen_on("/hold").len() + b.seen_on("/hold").len() == 1
    })
    .await;
    let hold_b = spawn("/hold", "k3");
    eventually("both slots held", WAIT, || {
        a.seen_on("/hold").len() + b.seen_on("/hold").len() == 2
    })
    .await;
    let waiting = || p.running.snapshot().upstreams["gpu"].waiting.len();
    let w1 = spawn("/w1", "k1");
    eventually("k1 waiting", WAIT, || waiting() == 1).await;
    let w2 = spawn("/w2", "k2");
    eventually("k1 and k2 waiting", WAIT, || waiting() == 2).await;
    // b frees: k1 may not go there, k2 may.
    gate_b.open();
    let (status, text) = within(WAIT, "the hold on b", hold_b).await.expect("task");
    assert_eq!((status, text.as_str()), (200, "b"));
    let (status, text) = within(WAIT, "k2", w2).await.expect("task");
    assert_eq!(
        (status, text.as_str()),
        (200, "b"),
        "k2 served by the freed b"
    );
    assert!(!w1.is_finished(), "k1 still waits for a");
    gate_a.open();
    let (status, text) = within(WAIT, "k1", w1).await.expect("task");
    assert_eq!((status, text.as_str()), (200, "a"));
    let _ = within(WAIT, "the hold on a", hold_a).await;
    assert!(p.shutdown().await);
}

/// A request waiting for its upstream's adaptive limits is woken when an endpoint
/// forced open is reset through the admin API: before, nothing woke it (no request of
/// that endpoint finished), so it waited for the busy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reset_wakes_the_waiters() {
    let gate = Gate::new();
    let a = Scripted::start(Behaviour::gated(&gate, Behaviour::ok("a"))).await;
    let b = Scripted::ok("b").await;
    let tables = format!(
        "{}{}",
        UpstreamToml::new("gpu", &[a.addr, b.addr])
            .table(
                "adaptive_concurrency",
                "min_limit = 1\nmax_limit = 1\ninitial_limit = 1"
            )
            .build(),
        route_toml(
            "infer",
            "/",
            "gpu",
            "timeout = \"60s\"\nconcurrency = { max_in_flight = 100, max_queue = 10, queue_timeout = \"20s\" }"
        )
    );
    let p = spawn_proxy(&tables).await;
    p.endpoint("gpu", b.addr).force_open();
    let c = http1_client();
    let held = tokio::spawn({
        let (c, url) = (c.clone(), p.url("/hold"));
        async move { get(&c, &url).await.status.as_u16() }
    });
    a.wait_hits(1).await;
    let waiter = tokio::spawn({
        let (c, url) = (c.clone(), p.url("/wait"));
        async move {
            let r = get(&c, &url).await;
            (r.status.as_u16(), r.text())
        }
    });
    eventually("a waiter", WAIT, || {
        p.running.snapshot().upstreams["gpu"].waiting.len() == 1
    })
    .await;
    let url = format!("http://{}/circuit_breakers/gpu/{}/reset", p.admin(), b.addr);
    let r = call(&c, Method::POST, &url, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (status, text) = within(WAIT, "the waiter", waiter).await.expect("task");
    assert_eq!(
        (status, text.as_str()),
        (200, "b"),
        "served by the reset endpoint"
    );
    assert!(!held.is_finished(), "while a is still held");
    gate.open();
    assert_eq!(
        within(WAIT, "the held call", held).await.expect("task"),
        200
    );
}
