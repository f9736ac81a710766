//! The sampler on a real snapshot: what it reads from the route counters, the endpoint
//! histograms and the breakers, and that resets and idle seconds give no false figures.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use tokio::time::Instant;

use super::sample::{Point, Sampler, Tick};
use crate::snapshot::{Shared, Snapshot};
use crate::upstream::breaker::{BreakerState, Outcome};
use crate::upstream::Endpoint;

fn snapshot(toml: &str) -> Snapshot {
    let config = crate::config::parse(toml, "test.toml", None)
        .unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    Snapshot::build(config, "v".into(), None, &Shared::new())
        .unwrap_or_else(|e| panic!("build: {e}"))
}

const TOML: &str = r#"
[upstreams.yolo]
endpoints = ["127.0.0.1:9001", "127.0.0.1:9002"]
[upstreams.yolo.circuit_breaker]
failure_threshold = 2

[[routes]]
name = "detect"
path_prefix = "/detect"
upstream = "yolo"

[[routes]]
name = "batch"
path_prefix = "/batch"
upstream = "yolo"
[routes.circuit_breaker]
failure_threshold = 50
"#;

fn endpoint(snap: &Snapshot, i: usize) -> Arc<Endpoint> {
    snap.upstreams["yolo"].endpoints()[i].clone()
}

/// One attempt on `slot`'s breaker of `ep`, as the attempt loop records it.
fn attempt(ep: &Endpoint, slot: usize, failure: bool, secs: f64, now: Instant) {
    ep.core.metrics.duration.observe(secs);
    let b = ep.breakers(slot).main();
    if let Ok(permit) = b.try_acquire(now) {
        let d = Duration::from_secs_f64(secs);
        let o = if failure {
            Outcome::failure(d)
        } else {
            Outcome::success(d)
        };
        if let Some(t) = b.record(permit, o, now) {
            ep.on_transition(slot, t, None);
        }
    }
}

fn tick(s: &mut Sampler, snap: &Snapshot, now: Instant) -> Tick {
    s.tick(snap, &snap.metrics, now, SystemTime::now())
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() < 1e-3
}

#[tokio::test]
async fn one_second_of_traffic_and_an_idle_one() {
    let snap = snapshot(TOML);
    let t0 = Instant::now();
    let mut s = Sampler::new(t0);
    let (detect, batch) = (&snap.routes[0], &snap.routes[1]);
    for _ in 0..6 {
        detect.metrics.observe(&Method::GET, 200, 0.007);
    }
    detect.metrics.observe(&Method::POST, 503, 0.3);
    batch.metrics.observe(&Method::POST, 200, 0.007);
    // Unrouted answers belong to no upstream.
    snap.unrouted.observe(&Method::GET, 404, 0.001);
    let (a, b) = (endpoint(&snap, 0), endpoint(&snap, 1));
    attempt(&a, 0, false, 0.007, t0);
    attempt(&a, 0, true, 0.3, t0);
    attempt(&a, 0, true, 0.3, t0); // the 2nd consecutive failure opens it
    attempt(&b, 1, false, 0.007, t0); // the batch route's own breaker

    let t = tick(&mut s, &snap, t0 + Duration::from_millis(1000));
    assert_eq!(t.slot_ms, 1000);
    assert_eq!(t.upstreams.len(), 1);
    let up = &t.upstreams[0];
    assert_eq!(&*up.name, "yolo");
    assert_eq!(up.point.count, 8);
    assert!(close(up.point.error_pct, 12.5), "{:?}", up.point);
    // 7 of 8 in (5 ms, 10 ms], 1 in (250 ms, 500 ms].
    assert!((5.0..=10.0).contains(&up.point.p50_ms), "{:?}", up.point);
    assert!((250.0..=500.0).contains(&up.point.p99_ms), "{:?}", up.point);
    let (ea, eb) = (&up.endpoints[0], &up.endpoints[1]);
    assert_eq!((ea.point.count, eb.point.count), (3, 1));
    assert!(close(ea.point.error_pct, 200.0 / 3.0), "{:?}", ea.point);
    assert!(close(eb.point.error_pct, 0.0));
    let routes: Vec<&str> = ea.breakers.iter().map(|(r, _)| &**r).collect();
    assert_eq!(routes, ["", "batch"]);
    assert_eq!(ea.breakers[0].1, BreakerState::Open);
    assert_eq!(ea.breakers[1].1, BreakerState::Closed);

    // Nothing happens: no figures, and the states carry on.
    let t = tick(&mut s, &snap, t0 + Duration::from_millis(2100));
    assert_eq!(t.slot_ms, 1100);
    let up = &t.upstreams[0];
    assert_eq!(up.point.count, 0);
    assert!(up.point.error_pct.is_nan() && up.point.p50_ms.is_nan());
    assert_eq!(up.endpoints[0].point.count, 0);
    assert!(up.endpoints[0].point.error_pct.is_nan());
    assert_eq!(up.endpoints[0].breakers[0].1, BreakerState::Open);

    // An admin reset zeroes the breaker's counts: no negative or replayed figures.
    a.reset();
    attempt(&a, 0, false, 0.007, t0 + Duration::from_millis(2500));
    let t = tick(&mut s, &snap, t0 + Duration::from_millis(3100));
    let ea = &t.upstreams[0].endpoints[0];
    assert_eq!(ea.point.count, 1);
    assert!(close(ea.point.error_pct, 0.0), "{:?}", ea.point);
    assert_eq!(ea.breakers[0].1, BreakerState::Closed);
}

#[test]
fn idle_point_has_no_figures() {
    let p = Point::IDLE;
    assert_eq!(p.count, 0);
    assert!(p.error_pct.is_nan() && p.p50_ms.is_nan() && p.p99_ms.is_nan());
}
