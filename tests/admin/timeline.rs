//! `GET /stats/timeline`, the status page's per-second figures, against a real fusebox
//! and a real upstream: what a known sequence of requests adds up to, per upstream and
//! per endpoint, and the breaker-state timeline of the upstream's and a route's own
//! breakers; the `seconds` parameter.

use crate::*;

/// The timeline, asserting 200 JSON.
async fn timeline(p: &Proxy, query: &str) -> Value {
    p.admin_json(&format!("/stats/timeline{query}")).await
}

/// Polls the timeline (bounded by [`WAIT`]) until `cond` holds; returns that answer.
async fn timeline_until(p: &Proxy, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = timeline(p, "").await;
        if cond(&t) {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn array(v: &Value) -> &[Value] {
    v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("not an array: {v}"))
}

/// The count behind each slot's rate: rps x slot length.
fn counts(t: &Value, series: &Value) -> Vec<u64> {
    let slot_ms = array(&t["slot_ms"]);
    let rps = array(&series["rps"]);
    assert_eq!(rps.len(), slot_ms.len(), "one rate per slot");
    rps.iter()
        .zip(slot_ms)
        .map(|(r, ms)| match (r.as_f64(), ms.as_f64()) {
            (Some(r), Some(ms)) => (r * ms / 1000.0).round() as u64,
            _ => 0,
        })
        .collect()
}

/// Errors behind each slot's error %: error_pct x the slot's judged count.
fn errors(series: &Value, judged: &[u64]) -> u64 {
    array(&series["error_pct"])
        .iter()
        .zip(judged)
        .map(|(e, n)| {
            e.as_f64()
                .map_or(0, |e| (e * *n as f64 / 100.0).round() as u64)
        })
        .sum()
}

fn total_requests(t: &Value) -> u64 {
    let s = &t["upstreams"]["yolo"]["series"];
    if s.is_null() {
        return 0;
    }
    counts(t, s).iter().sum()
}

/// Proves: 12 requests (6 answered 200; 3 upstream 503s that open the breaker, 2
/// CIRCUIT_OPEN answers of fusebox's own, 1 upstream 503 through a route with its own
/// breaker) add up in the upstream's series to 12 requests and 6 errors, counted once
/// (still 12 a slot later), with p50 <= p99 wherever there was traffic and null where
/// not; the endpoint's series to 10 attempts, 4 of them failures; the upstream's own
/// breaker row reads closed, then open from the slot it opened in on, and the route's
/// own row stays closed.
#[tokio::test]
async fn figures_add_up_to_the_requests_sent() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/\"\nupstream = \"yolo\"\n\n\
         [[routes]]\nname = \"batch\"\npath_prefix = \"/batch\"\nupstream = \"yolo\"\n\
         [routes.circuit_breaker]\nfailure_threshold = 100\n",
        base(""),
        upstream(
            "yolo",
            &[up.addr],
            "failure_threshold = 3\nrecovery_timeout = \"60s\"\njitter = false",
        ),
    );
    let p = start(&toml).await;
    // One slot before any traffic, so the breaker rows start closed.
    let t = timeline_until(&p, "a first slot", |t| t["seconds"].as_u64() >= Some(1)).await;
    assert_eq!(t["interval_seconds"], 1);
    assert_eq!(total_requests(&t), 0, "{t}");

    for _ in 0..6 {
        assert_eq!(p.data_get("/").await.status, 200);
    }
    up.set(Behaviour::respond(503, "down"));
    for _ in 0..3 {
        assert_eq!(p.data_get("/").await.status, 503);
    }
    for _ in 0..2 {
        let r = p.data_get("/").await;
        assert_eq!(r.header("x-fusebox-error"), Some("CIRCUIT_OPEN"));
    }
    assert_eq!(p.data_get("/batch").await.status, 503);
    assert_eq!(up.hits(), 10);

    let t = timeline_until(&p, "12 requests in the timeline", |t| {
        total_requests(t) >= 12
    })
    .await;
    let end = t["end"].as_u64();
    // A slot later nothing was counted twice.
    let t = timeline_until(&p, "one more slot", |t| t["end"].as_u64() > end).await;
    let up_series = &t["upstreams"]["yolo"]["series"];
    let per_slot = counts(&t, up_series);
    assert_eq!(per_slot.iter().sum::<u64>(), 12, "{t}");
    assert_eq!(errors(up_series, &per_slot), 6, "{up_series}");
    let p50 = array(&up_series["p50_ms"]);
    let p99 = array(&up_series["p99_ms"]);
    for (i, n) in per_slot.iter().enumerate() {
        match (p50[i].as_f64(), p99[i].as_f64(), *n) {
            (None, None, 0) => {}
            (Some(a), Some(b), n) if n > 0 => {
                assert!(0.0 <= a && a <= b, "slot {i}: p50 {a} p99 {b}")
            }
            other => panic!("slot {i}: latencies {other:?} for {n} requests"),
        }
    }

    let ep = &t["upstreams"]["yolo"]["endpoints"][up.addr.to_string()];
    let attempts = counts(&t, &ep["series"]);
    assert_eq!(attempts.iter().sum::<u64>(), 10, "{ep}");
    assert_eq!(errors(&ep["series"], &attempts), 4, "{ep}");

    let rows = array(&ep["breakers"]);
    let routes: Vec<&str> = rows.iter().filter_map(|r| r["route"].as_str()).collect();
    assert_eq!(routes, ["", "batch"], "{ep}");
    let own: Vec<&str> = array(&rows[0]["states"])
        .iter()
        .map(|s| s.as_str().unwrap_or("null"))
        .collect();
    let opened = own.iter().position(|s| *s == "open").expect("an open slot");
    assert!(
        opened > 0 && own[..opened].iter().all(|s| *s == "closed"),
        "{own:?}"
    );
    assert!(own[opened..].iter().all(|s| *s == "open"), "{own:?}");
    assert!(
        array(&rows[1]["states"]).iter().all(|s| s == "closed"),
        "{}",
        rows[1]
    );
    assert!(p.running.shutdown().await);
}

/// Proves: `?seconds=N` returns the newest N slots (every array that long) and values
/// that are not a whole number of at least 1 answer 400 BAD_REQUEST.
#[tokio::test]
async fn seconds_limits_the_window() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    timeline_until(&p, "two slots", |t| t["seconds"].as_u64() >= Some(2)).await;
    let t = timeline(&p, "?seconds=1").await;
    assert_eq!(t["seconds"], 1);
    assert_eq!(array(&t["slot_ms"]).len(), 1);
    let ep = &t["upstreams"]["yolo"]["endpoints"][up.addr.to_string()];
    for s in [&t["upstreams"]["yolo"]["series"], &ep["series"]] {
        for k in ["rps", "error_pct", "p50_ms", "p99_ms"] {
            assert_eq!(array(&s[k]).len(), 1, "{k}: {s}");
        }
    }
    assert_eq!(array(&ep["breakers"][0]["states"]).len(), 1);
    for bad in ["0", "-3", "abc", ""] {
        let r = p.admin_get(&format!("/stats/timeline?seconds={bad}")).await;
        assert_admin_error(&r, 400, "BAD_REQUEST");
    }
    assert!(p.running.shutdown().await);
}

/// Proves: a reload that removes an upstream and one endpoint of another drops their
/// series from the timeline at the next slot, while the remaining endpoint and
/// upstream keep their history (their arrays stay as long as the window).
#[tokio::test]
async fn a_reload_drops_the_series_of_what_it_removed() {
    let a = TestUpstream::start(Behaviour::ok("a")).await;
    let b = TestUpstream::start(Behaviour::ok("b")).await;
    let routes = "[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n";
    let first = format!(
        "{}{}{}{routes}",
        base(""),
        upstream("yolo", &[a.addr, b.addr], ""),
        upstream("ocr", &[b.addr], ""),
    );
    let p = start(&first).await;
    let has = |t: &Value, up: &str, ep: SocketAddr| {
        t["upstreams"][up]["endpoints"][ep.to_string()].is_object()
    };
    let t = timeline_until(&p, "two slots of both upstreams", |t| {
        t["seconds"].as_u64() >= Some(2) && has(t, "yolo", b.addr) && has(t, "ocr", b.addr)
    })
    .await;
    let end = t["end"].as_u64();

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fusebox.toml");
    let second = format!("{}{}{routes}", base(""), upstream("yolo", &[a.addr], ""));
    std::fs::write(&path, second).expect("write config");
    let out = fusebox::reload::reload_from(&p.running.ctrl, &path).await;
    assert!(
        matches!(out, Ok(fusebox::reload::ReloadOutcome::Applied(_))),
        "reload: {out:?}"
    );

    let t = timeline_until(&p, "a slot after the reload", |t| t["end"].as_u64() > end).await;
    let t = if has(&t, "yolo", b.addr) {
        // That slot may have been read just before the swap: one more.
        let end = t["end"].as_u64();
        timeline_until(&p, "another slot", |t| t["end"].as_u64() > end).await
    } else {
        t
    };
    let ups: Vec<&String> = t["upstreams"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(ups, ["yolo"], "{t}");
    assert!(
        !has(&t, "yolo", b.addr),
        "removed endpoint still there: {t}"
    );
    let n = t["seconds"].as_u64().unwrap_or(0) as usize;
    assert!(n >= 3, "{t}");
    let kept = &t["upstreams"]["yolo"]["endpoints"][a.addr.to_string()];
    for s in [&t["upstreams"]["yolo"]["series"], &kept["series"]] {
        let rps = array(&s["rps"]);
        assert_eq!(rps.len(), n);
        assert!(
            rps.iter().all(|v| v.as_f64() == Some(0.0)),
            "history kept: {s}"
        );
    }
    assert!(p.running.shutdown().await);
}
