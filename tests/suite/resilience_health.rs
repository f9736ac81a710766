//! Active health checks: an endpoint failing `unhealthy_threshold` checks leaves the
//! balancer and returns after `healthy_threshold` passes; when every endpoint fails its
//! checks, traffic still goes to all of them (panic mode). The endpoints answer real
//! traffic on `/work` normally throughout; only their `/health` answers change.

use crate::common::scripted::*;
use crate::common::*;

const CHECKS: &str = "path = \"/health\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\n\
                      unhealthy_threshold = 2\nhealthy_threshold = 2";

async fn proxy(a: &Scripted, b: &Scripted) -> Proxy {
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[a.addr, b.addr])
            .table("health_check", CHECKS)
            .build(),
        route_toml("work", "/work", "app", "")
    );
    spawn_proxy(&tables).await
}

/// Sends `n` GETs to `/work` and returns how many each endpoint answered.
async fn spread(c: &TestClient, fb: &Proxy, n: usize) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for _ in 0..n {
        let r = get(c, &fb.url("/work")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        match r.text().as_str() {
            "a" => a += 1,
            "b" => b += 1,
            other => panic!("unexpected answer {other:?}"),
        }
    }
    (a, b)
}

/// Proves: an endpoint whose `/health` fails is taken out of the balancer (all traffic
/// goes to the other, though it would still answer), and once its checks pass again
/// it is brought back into the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let a = Scripted::ok("a").await;
    let b = Scripted::ok("b").await;
    a.rule(Match::path("/health"), Behaviour::respond(503, "sick"));
    let fb = proxy(&a, &b).await;
    let ep_a = fb.endpoint("app", a.addr);
    let ep_b = fb.endpoint("app", b.addr);
    eventually("a to fail its checks", WAIT, || !ep_a.is_healthy()).await;
    // b's checks run on their own schedule: wait for two of them too.
    eventually("b to be checked twice", WAIT, || {
        b.seen_on("/health").len() >= 2
    })
    .await;
    assert!(ep_b.is_healthy());

    let c = http1_client();
    assert_eq!(
        spread(&c, &fb, 20).await,
        (0, 20),
        "a is out of the balancer"
    );
    assert!(a.seen_on("/work").is_empty());

    a.rule(Match::path("/health"), Behaviour::ok("well"));
    eventually("a to pass its checks", WAIT, || ep_a.is_healthy()).await;
    assert_eq!(
        spread(&c, &fb, 20).await,
        (10, 10),
        "a is back in the rotation"
    );
}

/// Proves: when every endpoint fails its checks, requests are still served by all of
/// them (panic mode) rather than refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_endpoint_is_unhealthy_traffic_goes_to_all() {
    let a = Scripted::ok("a").await;
    let b = Scripted::ok("b").await;
    for up in [&a, &b] {
        up.rule(Match::path("/health"), Behaviour::respond(503, "sick"));
    }
    let fb = proxy(&a, &b).await;
    let (ep_a, ep_b) = (fb.endpoint("app", a.addr), fb.endpoint("app", b.addr));
    eventually("both to fail their checks", WAIT, || {
        !ep_a.is_healthy() && !ep_b.is_healthy()
    })
    .await;
    let (na, nb) = spread(&http1_client(), &fb, 20).await;
    assert!(na > 0 && nb > 0, "both still serve: a {na}, b {nb}");
}

/// Proves: a reload that drops an upstream's health checks stops them even while a
/// request still runs on the old build (which keeps that build alive): its checker
/// would otherwise go on probing and write its verdicts into the endpoint the running
/// build shares. A second upstream's checks, which go on, are the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_stops_the_replaced_builds_checks_while_its_requests_finish() {
    let a = Scripted::ok("a").await;
    let clock = Scripted::ok("clock").await;
    let gate = Gate::new();
    a.rule(
        Match::path("/slow"),
        Behaviour::gated(&gate, Behaviour::ok("slow")),
    );
    let checks = "path = \"/health\"\ninterval = \"50ms\"\ntimeout = \"500ms\"";
    let tables = |with_checks: bool| {
        let app = UpstreamToml::new("app", &[a.addr]);
        let app = if with_checks {
            app.table("health_check", checks)
        } else {
            app
        };
        format!(
            "{}{}{}",
            app.build(),
            UpstreamToml::new("clock", &[clock.addr])
                .table("health_check", checks)
                .build(),
            route_toml("slow", "/slow", "app", "timeout = \"30s\"")
        )
    };
    let fb = spawn_proxy(&tables(true)).await;
    eventually("a to be checked twice", WAIT, || {
        a.seen_on("/health").len() >= 2
    })
    .await;
    // A request that holds the old build until the gate opens.
    let c = http1_client();
    let url = fb.url("/slow");
    let held = tokio::spawn(async move { get(&c, &url).await.status });
    eventually("the slow request to reach a", WAIT, || {
        !a.seen_on("/slow").is_empty()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    std::fs::write(&path, format!("{}{}", base_config(""), tables(false))).expect("write");
    let out = fusebox::reload::reload_from(&fb.running.ctrl, &path).await;
    assert!(
        matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
        "{out:?}"
    );
    let probes = a.seen_on("/health").len();
    let ticks = clock.seen_on("/health").len();
    eventually("five more checks of the clock", WAIT, || {
        clock.seen_on("/health").len() >= ticks + 5
    })
    .await;
    let after = a.seen_on("/health").len();
    assert!(
        after <= probes + 1,
        "the replaced build's checks stopped ({probes} before the reload, {after} after; one may have been under way)"
    );
    gate.open();
    assert_eq!(
        within(WAIT, "the held request", held).await.expect("task"),
        200
    );
}

/// A reload that removes the `health_check` table lifts the last verdict: with no
/// checks configured an endpoint is healthy (operations.md), so one held out as
/// unhealthy is back in the rotation at once; before, nothing was left to lift it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_health_checks_brings_an_unhealthy_endpoint_back() {
    let a = Scripted::ok("a").await;
    let b = Scripted::ok("b").await;
    a.rule(Match::path("/health"), Behaviour::respond(503, "sick"));
    let fb = proxy(&a, &b).await;
    let ep_a = fb.endpoint("app", a.addr);
    eventually("a to fail its checks", WAIT, || !ep_a.is_healthy()).await;
    let c = http1_client();
    assert_eq!(spread(&c, &fb, 10).await, (0, 10));

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[a.addr, b.addr]).build(),
        route_toml("work", "/work", "app", "")
    );
    std::fs::write(&path, format!("{}{tables}", base_config(""))).expect("write");
    let out = fusebox::reload::reload_from(&fb.running.ctrl, &path).await;
    assert!(
        matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
        "{out:?}"
    );
    assert!(
        fb.endpoint("app", a.addr).is_healthy(),
        "no checks: healthy"
    );
    assert_eq!(
        spread(&c, &fb, 20).await,
        (10, 10),
        "a is back in the rotation"
    );
}
