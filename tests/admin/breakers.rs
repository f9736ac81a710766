//! Breaker state through the admin API and the gauges: the state machine as seen from
//! `/metrics`, `/circuit_breakers` and `/health`; force open and reset; partitions.

use crate::*;

/// Proves: `gateway_circuit_breaker_state` reads closed 0, open 1 after
/// `failure_threshold` failures, half_open 2 once `recovery_timeout` has passed (with no
/// request needed), and closed 0 after a successful probe; `/circuit_breakers` and
/// `/health` agree at each step and the state-change counter counts each change.
/// `recovery_timeout` is 2 s: the open-state reads (three admin requests) finish long
/// before it can half-open, and half open is then waited for as a state.
#[tokio::test]
async fn breaker_gauge_follows_closed_open_half_open_closed() {
    let up = TestUpstream::start(Behaviour::respond(503, "down")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream(
            "yolo",
            &[up.addr],
            "failure_threshold = 2\nrecovery_timeout = \"2s\"\nsuccess_threshold = 1\njitter = false",
        ),
    );
    let p = start(&toml).await;
    assert_eq!(
        breaker_gauge(&p.metrics().await, "yolo", up.addr),
        Some(0.0)
    );
    assert_eq!(p.data_get("/").await.status, 503);
    let opening = tokio::time::Instant::now(); // the breaker opens after this
    assert_eq!(p.data_get("/").await.status, 503);
    let text = p.metrics().await;
    let cb = p.admin_json("/circuit_breakers").await;
    let health = p.admin_json("/health").await;
    assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(1.0), "{text}");
    assert_eq!(cb["yolo"]["state"], "open");
    assert_eq!(health["status"], "unhealthy");
    let ep = &cb["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["times_opened"], 1);
    let changes = |text: &str, state: &str| {
        metric(
            text,
            "gateway_circuit_breaker_state_changes_total",
            &format!(
                r#"endpoint="{}",route="",service="yolo",state="{state}""#,
                up.addr
            ),
        )
    };
    assert_eq!(changes(&text, "open"), Some(1.0));

    // Half open by time alone: the scrape reads the breaker, no request needed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = breaker_gauge(&p.metrics().await, "yolo", up.addr);
        if g == Some(2.0) {
            break;
        }
        assert_eq!(g, Some(1.0), "open until it half-opens");
        assert!(tokio::time::Instant::now() < deadline, "never half-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        opening.elapsed() >= Duration::from_secs(2),
        "half open only after recovery_timeout"
    );
    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(cb["yolo"]["state"], "half_open");
    assert_eq!(
        cb["yolo"]["endpoints"][up.addr.to_string()]["state"],
        "half_open"
    );
    assert_eq!(p.admin_json("/health").await["status"], "degraded");

    up.set(Behaviour::ok("back"));
    let r = p.data_get("/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = p.metrics().await;
    assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(0.0), "{text}");
    assert_eq!(changes(&text, "half_open"), Some(1.0));
    assert_eq!(changes(&text, "closed"), Some(1.0));
    assert_eq!(
        p.admin_json("/circuit_breakers").await["yolo"]["state"],
        "closed"
    );
    assert_eq!(p.admin_json("/health").await["status"], "healthy");
    assert!(p.running.shutdown().await);
}

/// Proves: a forced-open endpoint answers 503 CIRCUIT_OPEN without the upstream being
/// called, stays open past `recovery_timeout`, and an endpoint reset (plain, URL-encoded)
/// or an upstream reset closes it; IPv6 endpoint keys are accepted in both forms.
/// "Past `recovery_timeout`" is shown by a control breaker with the same 50 ms, opened
/// after the force-open: once it has half-opened, a breaker merely open would have too.
#[tokio::test]
async fn force_open_fails_fast_and_reset_closes() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let ctl = closed_port();
    // `[::1]:9` is never called: it only proves the admin API finds IPv6 keys.
    let toml = format!(
        "{}{}{}[upstreams.v6]\nendpoints = [\"[::1]:9\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n\n\
         [[routes]]\npath_prefix = \"/ctl\"\nupstream = \"ctl\"\n",
        base(""),
        upstream("yolo", &[up.addr], "recovery_timeout = \"50ms\""),
        upstream(
            "ctl",
            &[ctl],
            "failure_threshold = 1\nrecovery_timeout = \"50ms\"\njitter = false"
        ),
    );
    let p = start(&toml).await;
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 1);
    let encoded = up.addr.to_string().replace(':', "%3A");

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{encoded}/open"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["action"], "open");
    assert_eq!(v["upstream"], "yolo");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["changed"], 1);
    assert_eq!(v["circuit_breaker"]["state"], "open");
    // Again: already open, nothing changes.
    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/open", up.addr))
        .await;
    assert_eq!(r.json()["changed"], 0);

    let r = p.data_get("/").await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert_eq!(up.hits(), 1, "the upstream was not called");
    let text = p.metrics().await;
    assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(1.0));
    assert_eq!(p.admin_json("/health").await["status"], "unhealthy");
    // Forced open ignores recovery_timeout: the control breaker, opened now with the
    // same recovery_timeout, half-opens; the forced one is still open after that.
    assert_fusebox_error(
        &p.data_get("/ctl").await,
        502,
        "UPSTREAM_CONNECT_FAILED",
        Some("ctl"),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = breaker_gauge(&p.metrics().await, "ctl", ctl);
        if g == Some(2.0) {
            break;
        }
        assert_eq!(g, Some(1.0), "the control breaker opened");
        assert!(
            tokio::time::Instant::now() < deadline,
            "control never half-opened"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(cb["yolo"]["state"], "open");
    assert_eq!(
        breaker_gauge(&p.metrics().await, "yolo", up.addr),
        Some(1.0)
    );
    assert_fusebox_error(&p.data_get("/").await, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert_eq!(up.hits(), 1);

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/reset", up.addr))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["action"], "reset");
    assert_eq!(v["changed"], 1);
    assert_eq!(v["circuit_breaker"]["state"], "closed");
    let ep = &v["circuit_breaker"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["times_opened"], 0, "reset zeroes the counts");
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(
        breaker_gauge(&p.metrics().await, "yolo", up.addr),
        Some(0.0)
    );

    // Upstream-wide reset.
    p.admin_post(&format!("/circuit_breakers/yolo/{encoded}/open"))
        .await;
    let r = p.admin_post("/circuit_breakers/yolo/reset").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["endpoint"], Value::Null);
    assert_eq!(v["changed"], 1);
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 3);

    // IPv6 keys: raw brackets and fully encoded.
    for (path, action) in [
        ("/circuit_breakers/v6/[::1]:9/open", "open"),
        ("/circuit_breakers/v6/%5B%3A%3A1%5D%3A9/reset", "reset"),
    ] {
        let r = p.admin_post(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["endpoint"], "[::1]:9");
        assert_eq!(r.json()["action"], action);
    }
    assert!(p.running.shutdown().await);
}

/// Proves: with `partition_by`, each key's breaker is listed under its endpoint's
/// `partitions`, and an endpoint reset closes them too.
#[tokio::test]
async fn partitions_are_listed_and_reset_with_their_endpoint() {
    let up = TestUpstream::start(Behaviour::respond(503, "bad camera")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream(
            "yolo",
            &[up.addr],
            "failure_threshold = 1\nrecovery_timeout = \"5m\"\npartition_by = \"header:X-Camera-ID\"",
        ),
    );
    let p = start(&toml).await;
    let url = format!("http://{}/", p.data);
    let cam = |id: &'static str| {
        request(Method::GET, &url)
            .header("x-camera-id", id)
            .body(empty())
            .expect("request")
    };
    assert_eq!(send(&p.client, cam("cam-1")).await.status, 503);
    up.set(Behaviour::ok("ok"));
    assert_eq!(send(&p.client, cam("cam-2")).await.status, 200);
    let r = send(&p.client, cam("cam-1")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));

    let cb = p.admin_json("/circuit_breakers").await;
    let ep = &cb["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["state"], "closed", "the endpoint's own breaker");
    assert_eq!(cb["yolo"]["state"], "closed");
    let parts = &ep["partitions"];
    assert_eq!(keys(parts), ["cam-1", "cam-2"]);
    assert_eq!(parts["cam-1"]["state"], "open");
    assert_eq!(parts["cam-1"]["times_opened"], 1);
    assert_eq!(parts["cam-2"]["state"], "closed");
    assert_eq!(parts["cam-2"]["success_count"], 1);
    assert_eq!(
        keys(&parts["cam-1"]),
        [
            "consecutive_failures",
            "failure_count",
            "state",
            "success_count",
            "times_opened"
        ]
    );

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/reset", up.addr))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["changed"], 1, "cam-1 closed");
    let parts = &r.json()["circuit_breaker"]["endpoints"][up.addr.to_string()]["partitions"];
    assert_eq!(parts["cam-1"]["state"], "closed");
    assert_eq!(send(&p.client, cam("cam-1")).await.status, 200);
    assert!(p.running.shutdown().await);
}

/// Proves: a route with its own `circuit_breaker` table has breakers of its own in
/// `/circuit_breakers` (`routes.<name>`, in the documented shape), `/health` counts
/// them, and resetting the endpoint resets them too.
#[tokio::test]
async fn route_breakers_are_listed_and_reset_with_their_endpoint() {
    let up = TestUpstream::start(Behaviour::respond(500, "down")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/\"\nupstream = \"yolo\"\n\
         [routes.circuit_breaker]\nfailure_threshold = 1\nrecovery_timeout = \"60s\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let ep = up.addr.to_string();
    assert_eq!(p.data_get("/").await.status, 500);
    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(cb["yolo"]["state"], "closed");
    let route = &cb["yolo"]["routes"]["detect"];
    assert_eq!(route["state"], "open", "{cb:#}");
    let without_health: Vec<&str> = STATS_KEYS.into_iter().filter(|k| *k != "healthy").collect();
    assert_eq!(keys(&route["endpoints"][&ep]), without_health);
    assert_eq!(p.admin_json("/health").await["status"], "unhealthy");
    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{ep}/reset"))
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["changed"], 1);
    assert_eq!(v["circuit_breaker"]["routes"]["detect"]["state"], "closed");
    assert!(p.running.shutdown().await);
}
