//! The JSON of `GET /stats/timeline` (shape in docs/admin-openapi.yaml, `Timeline`).
//! Every array has one entry per slot, oldest first, the newest ending at `end`; a
//! series younger than the window is padded with `null` at the start. `rps` is 0 in a
//! slot without traffic; `error_pct`, `p50_ms` and `p99_ms` are `null` then.

use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::ring::Ring;
use super::sample::Point;
use super::{
    State, INTERVAL, MAX_BREAKERS_PER_ENDPOINT, MAX_ENDPOINTS, MAX_ENDPOINTS_PER_UPSTREAM,
    MAX_UPSTREAMS, SLOTS,
};

pub(super) fn document(st: &State, seconds: usize, now: SystemTime) -> Value {
    let n = seconds.min(st.slot_ms.len());
    let slot_ms: Vec<u32> = st.slot_ms.last(n).collect();
    let mut upstreams = Map::new();
    for (name, up) in &st.upstreams {
        let mut endpoints = Map::new();
        for (key, ep) in &up.endpoints {
            let breakers: Vec<Value> = ep
                .breakers
                .iter()
                .map(|row| json!({"route": &*row.route, "states": states(&row.states, n)}))
                .collect();
            endpoints.insert(
                key.to_string(),
                json!({"series": series(&ep.points, &slot_ms), "breakers": breakers}),
            );
        }
        upstreams.insert(
            name.to_string(),
            json!({"series": series(&up.points, &slot_ms), "endpoints": endpoints}),
        );
    }
    json!({
        "interval_seconds": INTERVAL.as_secs(),
        "now": unix_ms(now),
        "end": st.end_ms,
        "seconds": n,
        "slot_ms": slot_ms,
        "limits": {
            "slots": SLOTS,
            "upstreams": MAX_UPSTREAMS,
            "endpoints_per_upstream": MAX_ENDPOINTS_PER_UPSTREAM,
            "endpoints": MAX_ENDPOINTS,
            "breakers_per_endpoint": MAX_BREAKERS_PER_ENDPOINT,
            "left_out": st.left_out,
        },
        "upstreams": upstreams,
    })
}

/// `{"rps", "error_pct", "p50_ms", "p99_ms"}` over the slots whose lengths are `slot_ms`.
fn series(points: &Ring<Point>, slot_ms: &[u32]) -> Value {
    let n = slot_ms.len();
    let pad = n - points.len().min(n);
    let mut rps = vec![Value::Null; pad];
    let mut err = vec![Value::Null; pad];
    let mut p50 = vec![Value::Null; pad];
    let mut p99 = vec![Value::Null; pad];
    for (p, ms) in points.last(n).zip(&slot_ms[pad..]) {
        rps.push(match *ms {
            0 => Value::Null,
            ms => number(f64::from(p.count) * 1000.0 / f64::from(ms), 3),
        });
        err.push(number(f64::from(p.error_pct), 2));
        p50.push(number(f64::from(p.p50_ms), 3));
        p99.push(number(f64::from(p.p99_ms), 3));
    }
    json!({"rps": rps, "error_pct": err, "p50_ms": p50, "p99_ms": p99})
}

fn states(ring: &Ring<u8>, n: usize) -> Vec<Value> {
    let pad = n - ring.len().min(n);
    let mut out = vec![Value::Null; pad];
    out.extend(ring.last(n).map(|s| match s {
        0 => json!("closed"),
        1 => json!("open"),
        2 => json!("half_open"),
        _ => Value::Null,
    }));
    out
}

/// `v` rounded to `digits` decimals; `null` for NaN.
fn number(v: f64, digits: i32) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    let f = 10f64.powi(digits);
    json!((v * f).round() / f)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
