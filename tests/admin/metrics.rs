//! Counter values after a known sequence, and the upstream connection gauges.

use crate::*;

/// Proves: after 3 answered requests and 2 upstream 503s, `gateway_proxy_requests_total`
/// holds exactly those two series with those counts, and the duration histogram 5.
#[tokio::test]
async fn request_counters_match_a_known_sequence() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/detect\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    for _ in 0..3 {
        assert_eq!(p.data_get("/detect").await.status, 200);
    }
    up.set(Behaviour::respond(503, "busy"));
    for _ in 0..2 {
        assert_eq!(p.data_get("/detect").await.status, 503);
    }
    let name = "gateway_proxy_requests_total";
    let l =
        |status: u16| format!(r#"method="GET",route="detect",service="yolo",status="{status}""#);
    let expected: BTreeMap<String, f64> = [(l(200), 3.0), (l(503), 2.0)].into_iter().collect();
    // Counted when the response is done; poll (bounded) for the last one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = p.metrics().await;
        if series(&text, name) == expected || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(series(&text, name), expected, "{text}");
    assert_eq!(
        metric(
            &text,
            "gateway_proxy_request_duration_seconds_count",
            r#"method="GET",route="detect",service="yolo""#
        ),
        Some(5.0)
    );
    assert_eq!(up.hits(), 5);
    let ep = &p.admin_json("/circuit_breakers").await["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["success_count"], 3);
    assert_eq!(ep["failure_count"], 2);
    assert_eq!(ep["consecutive_failures"], 2);
    assert!(p.running.shutdown().await);
}

/// Proves: `gateway_upstream_connections` counts a connection carrying a request as
/// active and, once the response is done and the connection pooled, as idle.
#[tokio::test]
async fn connection_gauges_count_active_and_idle() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let conns = |text: &str, state: &str| {
        metric(
            text,
            "gateway_upstream_connections",
            &format!(r#"endpoint="{}",service="yolo",state="{state}""#, up.addr),
        )
    };
    let text = p.metrics().await;
    assert_eq!(
        (conns(&text, "active"), conns(&text, "idle")),
        (Some(0.0), Some(0.0))
    );

    let client = p.client.clone();
    let url = format!("http://{}/", p.data);
    let pending = tokio::spawn(async move { get(&client, &url).await });
    up.wait_hits(1).await;
    let text = p.metrics().await;
    assert_eq!(
        (conns(&text, "active"), conns(&text, "idle")),
        (Some(1.0), Some(0.0)),
        "{text}"
    );
    gate.open();
    let r = within(WAIT, "the held request", pending)
        .await
        .expect("task");
    assert_eq!(r.status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = p.metrics().await;
        let now = (conns(&text, "active"), conns(&text, "idle"));
        if now == (Some(0.0), Some(1.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never idle: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.running.shutdown().await);
}

/// Proves: `gateway_proxy_in_flight_requests{route}` reads the number of requests held
/// in flight (three, held at the upstream), and 0 once they are answered.
#[tokio::test]
async fn in_flight_gauge_counts_held_requests_then_zero() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let gauge = |text: &str| {
        metric(
            text,
            "gateway_proxy_in_flight_requests",
            r#"route="detect""#,
        )
    };
    assert_eq!(gauge(&p.metrics().await), Some(0.0));

    let mut held = Vec::new();
    for i in 0..3 {
        let (c, url) = (p.client.clone(), format!("http://{}/held/{i}", p.data));
        held.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    // Each request is counted in flight before it is forwarded: three at the upstream
    // means three counted.
    up.wait_hits(3).await;
    let text = p.metrics().await;
    assert_eq!(gauge(&text), Some(3.0), "{text}");

    gate.open();
    for h in held {
        let r = within(WAIT, "a held request", h).await.expect("task");
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "done"));
    }
    // Released when each response has been sent: read as a state, bounded.
    common::prom::wait_in_flight(p.admin, "detect", 0.0).await;
    assert!(p.running.shutdown().await);
}
