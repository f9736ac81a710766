//! The timeline's bookkeeping on synthetic ticks: alignment of series of different
//! ages, dropping what left the config, the caps, and the JSON figures.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::sample::{EndpointTick, Point, Tick, UpstreamTick};
use super::*;

fn point(count: u32, error_pct: f32) -> Point {
    Point {
        count,
        error_pct,
        p50_ms: 2.5,
        p99_ms: 9.75,
    }
}

fn ep(key: &str, count: u32, states: &[(&str, BreakerState)]) -> EndpointTick {
    EndpointTick {
        key: key.into(),
        point: point(count, 0.0),
        breakers: states.iter().map(|(r, s)| (Arc::from(*r), *s)).collect(),
    }
}

fn up(name: &str, point: Point, endpoints: Vec<EndpointTick>) -> UpstreamTick {
    UpstreamTick {
        name: name.into(),
        point,
        endpoints,
    }
}

fn tick(slot_ms: u32, upstreams: Vec<UpstreamTick>) -> Tick {
    Tick {
        slot_ms,
        end_ms: 1_000,
        upstreams,
    }
}

fn doc(t: &Timeline, seconds: usize) -> Value {
    t.render(
        seconds,
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_234),
    )
}

#[test]
fn series_are_aligned_on_the_newest_slot_and_padded_with_null() {
    let t = Timeline::default();
    t.record(tick(1000, vec![up("a", point(10, 10.0), vec![])]));
    t.record(tick(
        2000,
        vec![
            up("a", Point::IDLE, vec![]),
            up("b", point(4, 25.0), vec![ep("10.0.0.1:80", 3, &[])]),
        ],
    ));
    let d = doc(&t, 900);
    assert_eq!(d["seconds"], 2);
    assert_eq!(d["now"], 1_234);
    assert_eq!(d["slot_ms"], serde_json::json!([1000, 2000]));
    let a = &d["upstreams"]["a"]["series"];
    assert_eq!(a["rps"], serde_json::json!([10.0, 0.0]), "{a}");
    assert_eq!(a["error_pct"], serde_json::json!([10.0, null]));
    assert_eq!(a["p50_ms"], serde_json::json!([2.5, null]));
    let b = &d["upstreams"]["b"]["series"];
    // 4 requests in a 2 s slot: 2/s.
    assert_eq!(b["rps"], serde_json::json!([null, 2.0]), "{b}");
    assert_eq!(b["error_pct"], serde_json::json!([null, 25.0]));
    assert_eq!(b["p99_ms"], serde_json::json!([null, 9.75]));
    let e = &d["upstreams"]["b"]["endpoints"]["10.0.0.1:80"]["series"];
    assert_eq!(e["rps"], serde_json::json!([null, 1.5]));
    // ?seconds=1: the newest slot only.
    let d = doc(&t, 1);
    assert_eq!(d["slot_ms"], serde_json::json!([2000]));
    assert_eq!(
        d["upstreams"]["a"]["series"]["rps"],
        serde_json::json!([0.0])
    );
}

#[test]
fn breaker_rows_follow_the_breaker_sets() {
    let t = Timeline::default();
    use BreakerState::{Closed, HalfOpen, Open};
    let states = [
        vec![("", Closed)],
        vec![("", Open), ("detect", Closed)],
        vec![("", HalfOpen), ("detect", Open)],
        vec![("", Closed)],
    ];
    for s in &states {
        t.record(tick(
            1000,
            vec![up("a", Point::IDLE, vec![ep("e:1", 0, s)])],
        ));
    }
    let d = doc(&t, 900);
    let rows = d["upstreams"]["a"]["endpoints"]["e:1"]["breakers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        rows.len(),
        1,
        "the route's row left with its table: {rows:?}"
    );
    assert_eq!(rows[0]["route"], "");
    assert_eq!(
        rows[0]["states"],
        serde_json::json!(["closed", "open", "half_open", "closed"])
    );
    // While it existed, the route's row was padded where it had no state yet.
    let t = Timeline::default();
    for s in &states[..3] {
        t.record(tick(
            1000,
            vec![up("a", Point::IDLE, vec![ep("e:1", 0, s)])],
        ));
    }
    let d = doc(&t, 900);
    let row = &d["upstreams"]["a"]["endpoints"]["e:1"]["breakers"][1];
    assert_eq!(row["route"], "detect");
    assert_eq!(row["states"], serde_json::json!([null, "closed", "open"]));
}

#[test]
fn what_leaves_the_config_is_dropped() {
    let t = Timeline::default();
    let two = || vec![ep("e:1", 1, &[]), ep("e:2", 1, &[])];
    t.record(tick(
        1000,
        vec![up("a", Point::IDLE, two()), up("b", Point::IDLE, two())],
    ));
    t.record(tick(
        1000,
        vec![up("a", Point::IDLE, vec![ep("e:2", 1, &[])])],
    ));
    let d = doc(&t, 900);
    let ups = d["upstreams"].as_object().cloned().unwrap_or_default();
    assert_eq!(ups.keys().collect::<Vec<_>>(), ["a"]);
    let eps = ups["a"]["endpoints"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(eps.keys().collect::<Vec<_>>(), ["e:2"]);
    assert_eq!(eps["e:2"]["series"]["rps"], serde_json::json!([1.0, 1.0]));
}

#[test]
fn caps_bound_the_series_and_count_what_they_leave_out() {
    let t = Timeline::default();
    // 70 upstreams of 10 endpoints with 10 breaker sets each.
    let routes: Vec<(String, BreakerState)> = (0..10)
        .map(|i| (format!("r{i}"), BreakerState::Closed))
        .collect();
    let sets: Vec<(&str, BreakerState)> = routes.iter().map(|(r, s)| (r.as_str(), *s)).collect();
    let mk = || {
        (0..70)
            .map(|u| {
                let eps = (0..10).map(|e| ep(&format!("e:{e}"), 1, &sets)).collect();
                up(&format!("u{u:02}"), Point::IDLE, eps)
            })
            .collect::<Vec<_>>()
    };
    for _ in 0..3 {
        t.record(tick(1000, mk()));
    }
    let d = doc(&t, 900);
    let ups = d["upstreams"].as_object().cloned().unwrap_or_default();
    assert_eq!(ups.len(), MAX_UPSTREAMS);
    let eps: usize = ups
        .values()
        .map(|u| u["endpoints"].as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(eps, MAX_ENDPOINTS);
    let rows = ups["u00"]["endpoints"]["e:0"]["breakers"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(rows, MAX_BREAKERS_PER_ENDPOINT);
    // Left out: 6 upstreams with their 60 endpoints, 640 - 256 endpoints, and 2 rows of
    // each of the 256 endpoints kept.
    assert_eq!(d["limits"]["left_out"], 6 * 11 + (640 - 256) + 2 * 256);
    // The kept series are the first by name, stable over ticks.
    assert!(ups.contains_key("u00") && ups.contains_key("u63") && !ups.contains_key("u64"));
}

#[test]
fn slots_are_bounded() {
    let t = Timeline::default();
    for i in 0..(SLOTS + 50) {
        let count = u32::try_from(i).unwrap_or(0);
        t.record(tick(1000, vec![up("a", point(count, 0.0), vec![])]));
    }
    let d = doc(&t, usize::MAX);
    assert_eq!(d["seconds"], SLOTS);
    let rps = d["upstreams"]["a"]["series"]["rps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(rps.len(), SLOTS);
    assert_eq!(rps[0], 50.0);
    assert_eq!(
        rps[SLOTS - 1],
        f64::from(u32::try_from(SLOTS + 49).unwrap_or(0))
    );
}

#[test]
fn the_seconds_parameter() {
    assert_eq!(seconds_param(None), Ok(SLOTS));
    assert_eq!(seconds_param(Some("")), Ok(SLOTS));
    assert_eq!(seconds_param(Some("seconds=60")), Ok(60));
    assert_eq!(seconds_param(Some("x=1&seconds=5")), Ok(5));
    assert_eq!(seconds_param(Some("seconds=100000")), Ok(SLOTS));
    assert!(seconds_param(Some("seconds=0")).is_err());
    assert!(seconds_param(Some("seconds=-1")).is_err());
    assert!(seconds_param(Some("seconds=1.5")).is_err());
    assert!(seconds_param(Some("seconds=")).is_err());
}
