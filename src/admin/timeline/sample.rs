//! One tick of the sampler: reads the counters the timeline is drawn from and turns
//! them into one slot's figures per upstream and per endpoint. Cumulative readings are
//! kept from the previous tick; a series first seen now counts from zero (every counter
//! read here starts at zero when it is made, and the sampler runs from the start), and a
//! counter that went down was reset (admin reset, or a series made anew) and counts from
//! zero again.
//!
//! What is read, per tick (no registry-wide `gather()`):
//! - per upstream: the children of `gateway_proxy_requests_total` and
//!   `gateway_proxy_request_duration_seconds` (collected per family) whose `service` is
//!   the upstream: requests answered, 5xx answers (the upstream's and fusebox's own:
//!   CIRCUIT_OPEN, OVERLOADED, UPSTREAM_*, DEADLINE_EXCEEDED), latency buckets;
//! - per endpoint: its `gateway_upstream_request_duration_seconds` handle (attempts and
//!   their latency) and the main breaker of each of its breaker sets (failures and
//!   successes as the breakers judged them, and the state). With `partition_by`, a
//!   key's failure statuses are successes of the endpoint's own breaker (it answered).
//!
//! gRPC errors answered with HTTP 200 carry no 5xx status, so the upstream's error %
//! does not see them; the counters have no `grpc-status` label to read.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::core::{Collector, Metric as _};
use prometheus::proto::{self, MetricFamily};
use tokio::time::Instant;

use super::quantile::{quantile, Counts};
use crate::metrics::{Metrics, DURATION_BUCKETS};
use crate::snapshot::Snapshot;
use crate::upstream::breaker::BreakerState;
use crate::upstream::Endpoint;

/// One series' figures for one slot. Latencies and error % are `NaN` when nothing was
/// measured in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Point {
    /// Requests answered (upstream) or attempts sent (endpoint) in the slot.
    pub(super) count: u32,
    pub(super) error_pct: f32,
    pub(super) p50_ms: f32,
    pub(super) p99_ms: f32,
}

impl Point {
    /// A slot with no traffic.
    pub(super) const IDLE: Point = Point {
        count: 0,
        error_pct: f32::NAN,
        p50_ms: f32::NAN,
        p99_ms: f32::NAN,
    };

    fn new(count: u64, errors: u64, judged: u64, latency: &Counts) -> Point {
        let ms = |q| quantile(q, DURATION_BUCKETS, latency).map_or(f32::NAN, |s| (s * 1e3) as f32);
        Point {
            count: u32::try_from(count).unwrap_or(u32::MAX),
            error_pct: if judged == 0 {
                f32::NAN
            } else {
                (errors as f64 * 100.0 / judged as f64) as f32
            },
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        }
    }
}

/// One tick's figures, upstreams and endpoints in the snapshot's current lists.
#[derive(Debug, Clone)]
pub(super) struct Tick {
    /// How long the slot lasted (about 1000; longer when the sampler was delayed).
    pub(super) slot_ms: u32,
    /// Unix time of the slot's end, in milliseconds.
    pub(super) end_ms: u64,
    pub(super) upstreams: Vec<UpstreamTick>,
}

#[derive(Debug, Clone)]
pub(super) struct UpstreamTick {
    pub(super) name: Arc<str>,
    pub(super) point: Point,
    pub(super) endpoints: Vec<EndpointTick>,
}

#[derive(Debug, Clone)]
pub(super) struct EndpointTick {
    pub(super) key: Arc<str>,
    pub(super) point: Point,
    /// Each breaker set's state: `""` for the upstream's own, else the route's name.
    pub(super) breakers: Vec<(Arc<str>, BreakerState)>,
}

/// An endpoint's cumulative readings at the last tick.
#[derive(Debug, Default)]
struct EndpointPrev {
    latency: Counts,
    /// (route, successes, failures) of each breaker set's main breaker.
    sets: Vec<(Arc<str>, u64, u64)>,
}

/// The readings kept between ticks. Owned by the sampler task alone.
#[derive(Debug)]
pub(super) struct Sampler {
    last: Instant,
    /// Request counter children by label-set hash: their last value.
    requests: HashMap<u64, u64>,
    /// Request duration children by label-set hash.
    durations: HashMap<u64, Counts>,
    /// By (upstream, endpoint): every endpoint of the snapshot, also those the
    /// timeline has no room for, so one admitted later starts with true deltas.
    endpoints: HashMap<(Arc<str>, Arc<str>), EndpointPrev>,
}

/// What one upstream's route children added up to this tick.
#[derive(Debug, Default)]
struct UpstreamAcc {
    requests: u64,
    errors: u64,
    latency: Counts,
}

impl Sampler {
    pub(super) fn new(now: Instant) -> Sampler {
        Sampler {
            last: now,
            requests: HashMap::new(),
            durations: HashMap::new(),
            endpoints: HashMap::new(),
        }
    }

    /// Reads everything for the slot ending `now` (`wall` is the same moment).
    pub(super) fn tick(
        &mut self,
        snap: &Snapshot,
        metrics: &Metrics,
        now: Instant,
        wall: SystemTime,
    ) -> Tick {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = now;
        let families = (metrics.requests.collect(), metrics.duration.collect());
        let by_service = self.read_routes(&families.0, &families.1);
        let mut names: Vec<&String> = snap.upstreams.keys().collect();
        names.sort_unstable();
        let mut endpoints = HashMap::with_capacity(self.endpoints.len());
        let mut upstreams = Vec::with_capacity(names.len());
        for name in names {
            let up = &snap.upstreams[name];
            let acc = by_service.get(name.as_str());
            let point = acc.map_or(Point::IDLE, |a| {
                Point::new(a.requests, a.errors, a.requests, &a.latency)
            });
            let eps = up.endpoints();
            let mut ep_ticks = Vec::with_capacity(eps.len());
            for ep in eps.iter() {
                let id = (up.name.clone(), ep.key.clone());
                let prev = self.endpoints.remove(&id).unwrap_or_default();
                let (tick, cur) = endpoint_tick(ep, &prev, now);
                ep_ticks.push(tick);
                endpoints.insert(id, cur);
            }
            upstreams.push(UpstreamTick {
                name: up.name.clone(),
                point,
                endpoints: ep_ticks,
            });
        }
        self.endpoints = endpoints;
        Tick {
            slot_ms: u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX),
            end_ms: unix_ms(wall),
            upstreams,
        }
    }

    /// Per-upstream sums of the route children's deltas since the last tick; the
    /// previous readings are replaced by this tick's (children gone are forgotten).
    fn read_routes<'f>(
        &mut self,
        requests: &'f [MetricFamily],
        durations: &'f [MetricFamily],
    ) -> HashMap<&'f str, UpstreamAcc> {
        let mut acc: HashMap<&str, UpstreamAcc> = HashMap::new();
        let mut seen_requests = HashMap::with_capacity(self.requests.len());
        for m in requests.iter().flat_map(|f| f.get_metric()) {
            let service = label(m, "service");
            if service.is_empty() {
                continue; // answered before a route was known
            }
            let h = label_hash(m);
            let cur = m.get_counter().value() as u64;
            let prev = self.requests.get(&h).copied().unwrap_or(0);
            let delta = if cur < prev { cur } else { cur - prev };
            seen_requests.insert(h, cur);
            let a = acc.entry(service).or_default();
            a.requests += delta;
            if label(m, "status").starts_with('5') {
                a.errors += delta;
            }
        }
        self.requests = seen_requests;
        let mut seen_durations = HashMap::with_capacity(self.durations.len());
        for m in durations.iter().flat_map(|f| f.get_metric()) {
            let service = label(m, "service");
            if service.is_empty() {
                continue;
            }
            let h = label_hash(m);
            let cur = counts_of(m.get_histogram());
            let delta = match self.durations.get(&h) {
                Some(prev) => Counts::delta(&cur, prev),
                None => cur.clone(),
            };
            seen_durations.insert(h, cur);
            acc.entry(service).or_default().latency.add(&delta);
        }
        self.durations = seen_durations;
        acc
    }
}

/// One endpoint's figures and its readings to keep.
fn endpoint_tick(ep: &Endpoint, prev: &EndpointPrev, now: Instant) -> (EndpointTick, EndpointPrev) {
    let latency = counts_of(ep.core.metrics.duration.metric().get_histogram());
    let delta = Counts::delta(&latency, &prev.latency);
    let (mut errors, mut judged) = (0, 0);
    let mut sets = Vec::with_capacity(ep.all_breakers().len());
    let mut breakers = Vec::with_capacity(ep.all_breakers().len());
    for set in ep.all_breakers() {
        let stats = set.stats(now);
        let route = set.route().unwrap_or("");
        let known = prev.sets.iter().find(|(r, _, _)| &**r == route);
        let (ps, pf) = known.map_or((0, 0), |(_, s, f)| (*s, *f));
        // A reset zeroes both counts: if either went down, all of both is new.
        let (ds, df) = if stats.success_count < ps || stats.failure_count < pf {
            (stats.success_count, stats.failure_count)
        } else {
            (stats.success_count - ps, stats.failure_count - pf)
        };
        errors += df;
        judged += ds + df;
        let route: Arc<str> = known.map_or_else(|| route.into(), |(r, _, _)| r.clone());
        sets.push((route.clone(), stats.success_count, stats.failure_count));
        breakers.push((route, stats.state));
    }
    let tick = EndpointTick {
        key: ep.key.clone(),
        point: Point::new(delta.total, errors, judged, &delta),
        breakers,
    };
    (tick, EndpointPrev { latency, sets })
}

fn counts_of(h: &proto::Histogram) -> Counts {
    Counts {
        cumulative: h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect(),
        total: h.get_sample_count(),
    }
}

fn label<'m>(m: &'m proto::Metric, name: &str) -> &'m str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// Identifies a child of a family by its label values (listed in label-name order).
fn label_hash(m: &proto::Metric) -> u64 {
    let mut h = DefaultHasher::new();
    for l in m.get_label() {
        l.value().hash(&mut h);
    }
    h.finish()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
