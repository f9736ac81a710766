//! `/circuit_breakers` and the breaker half of `/health`: the JSON view of every
//! endpoint's breaker, the upstream and process summaries drawn from it, the admin
//! mutations (reset, force open), and the refresh of the breaker and connection gauges
//! before `/metrics` is rendered.
//!
//! Every breaker set of every endpoint is shown: the upstream's own under
//! `endpoints`, each route's own table under `routes.<name>.endpoints`. Admin reset
//! and force-open of an endpoint act on all of them.
//!
//! Reads the endpoint breakers' own state (`Breaker::stats`, observed at `now`: an open
//! breaker whose open time has passed reads `half_open`), so the view never lags.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::snapshot::Snapshot;
use crate::upstream::breaker::{BreakerState, BreakerStats};
use crate::upstream::{Endpoint, Upstream};

/// The `status` of `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Health {
    /// Every endpoint's breaker is closed and every endpoint passes its health checks.
    Healthy,
    /// Some endpoint is open, half open, or failing its active health checks.
    Degraded,
    /// Some upstream has every endpoint open: its calls fail fast (or fall back).
    Unhealthy,
}

impl Health {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Every upstream's breaker view (the `/circuit_breakers` body) and the summary.
pub(super) struct View {
    pub(super) upstreams: Map<String, Value>,
    pub(super) health: Health,
}

pub(super) fn view(snap: &Snapshot, now: Instant) -> View {
    let mut upstreams = Map::new();
    let mut health = Health::Healthy;
    for (name, up) in &snap.upstreams {
        let (v, h) = upstream_view(up, now);
        health = health.max(h);
        upstreams.insert(name.clone(), v);
    }
    View { upstreams, health }
}

/// `{"state", "endpoints": {key: {...}}, "routes": {name: {"state", "endpoints"}}}`
/// of one upstream (the routes with breaker tables of their own), and what it says
/// about health.
fn upstream_view(up: &Upstream, now: Instant) -> (Value, Health) {
    let eps = up.endpoints();
    let (own, mut health) = policy_view(&eps, 0, now, true);
    let mut routes = Map::new();
    for (slot, p) in up.policies.iter().enumerate().skip(1) {
        let (v, h) = policy_view(&eps, slot, now, false);
        health = health.max(h);
        if let Some(name) = &p.route {
            routes.insert(name.to_string(), v);
        }
    }
    // As DESIGN's example: `routes` only where a route has a table of its own.
    let mut v = own;
    if let (Value::Object(m), false) = (&mut v, routes.is_empty()) {
        m.insert("routes".into(), Value::Object(routes));
    }
    (v, health)
}

/// `{"state", "endpoints"}` of one breaker policy (slot) over the endpoints;
/// `with_health` adds each endpoint's health-check verdict (shown once, with the
/// upstream's own breakers).
fn policy_view(
    eps: &[Arc<Endpoint>],
    slot: usize,
    now: Instant,
    with_health: bool,
) -> (Value, Health) {
    let mut endpoints = Map::new();
    let mut states = Vec::with_capacity(eps.len());
    let mut health = Health::Healthy;
    for ep in eps.iter() {
        let set = ep.breakers(slot);
        let stats = set.stats(now);
        let healthy = ep.is_healthy();
        if stats.state != BreakerState::Closed || (with_health && !healthy) {
            health = Health::Degraded;
        }
        states.push(stats.state);
        let mut v = stats_json(&stats);
        if with_health {
            v.insert("healthy".into(), json!(healthy));
        }
        if let Some(parts) = set.partitions() {
            let keyed: Map<String, Value> = parts
                .snapshot(now)
                .into_iter()
                .map(|(key, s)| (key, Value::Object(stats_json(&s))))
                .collect();
            v.insert("partitions".into(), Value::Object(keyed));
        }
        endpoints.insert(ep.key.to_string(), Value::Object(v));
    }
    let state = upstream_state(&states);
    // Every endpoint open, or none at all (its DNS name gave no address): it can serve
    // nothing, whatever its breakers say.
    if state == BreakerState::Open || (with_health && eps.is_empty()) {
        health = Health::Unhealthy;
    }
    (
        json!({"state": state.as_str(), "endpoints": endpoints}),
        health,
    )
}

/// The contract's rule: `open` when every endpoint is open, `half_open` when none is
/// closed but one is half open, else `closed` (also for an upstream whose DNS name has
/// no address yet: nothing is known to be broken).
fn upstream_state(states: &[BreakerState]) -> BreakerState {
    if !states.is_empty() && states.iter().all(|s| *s == BreakerState::Open) {
        BreakerState::Open
    } else if !states.contains(&BreakerState::Closed) && states.contains(&BreakerState::HalfOpen) {
        BreakerState::HalfOpen
    } else {
        BreakerState::Closed
    }
}

fn stats_json(s: &BreakerStats) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("state".into(), json!(s.state.as_str()));
    m.insert("failure_count".into(), json!(s.failure_count));
    m.insert("success_count".into(), json!(s.success_count));
    m.insert("consecutive_failures".into(), json!(s.consecutive_failures));
    m.insert("times_opened".into(), json!(s.times_opened));
    m
}

/// An admin mutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Close the breaker and zero its counts (and its partitions' breakers).
    Reset,
    /// Open the breaker until reset (maintenance), with no half-open.
    ForceOpen,
}

impl Action {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Action::Reset => "reset",
            Action::ForceOpen => "open",
        }
    }
}

/// What a mutation did.
pub(super) struct Applied {
    /// The endpoint's key (`None`: every endpoint of the upstream).
    pub(super) endpoint: Option<String>,
    /// Breaker state changes made (0: it already was so).
    pub(super) changed: usize,
    /// The upstream's view afterwards.
    pub(super) upstream_view: Value,
}

pub(super) enum NotFound {
    Upstream,
    /// The endpoints the upstream does have.
    Endpoint(Vec<String>),
}

/// Applies `action` to one endpoint of `upstream`, or (`endpoint` = `None`, reset only)
/// to all of them. `endpoint` is `ip:port` (IPv6 as `[::1]:9001`).
pub(super) fn apply(
    snap: &Snapshot,
    upstream: &str,
    endpoint: Option<&str>,
    action: Action,
    now: Instant,
) -> Result<Applied, NotFound> {
    let up = snap.upstreams.get(upstream).ok_or(NotFound::Upstream)?;
    let eps = up.endpoints();
    let targets: Vec<&Arc<Endpoint>> = match endpoint {
        None => eps.iter().collect(),
        Some(name) => match find_endpoint(&eps, name) {
            Some(ep) => vec![ep],
            None => {
                return Err(NotFound::Endpoint(
                    eps.iter().map(|e| e.key.to_string()).collect(),
                ))
            }
        },
    };
    let mut changed = 0;
    for ep in &targets {
        // Every breaker of the endpoint: the upstream's and each route's own, with
        // every partition key.
        changed += match action {
            Action::Reset => ep.reset(),
            Action::ForceOpen => ep.force_open(),
        };
    }
    Ok(Applied {
        endpoint: endpoint.and(targets.first().map(|e| e.key.to_string())),
        changed,
        upstream_view: upstream_view(up, now).0,
    })
}

fn find_endpoint<'a>(eps: &'a [Arc<Endpoint>], name: &str) -> Option<&'a Arc<Endpoint>> {
    if let Ok(addr) = name.parse::<SocketAddr>() {
        if let Some(ep) = eps.iter().find(|e| e.addr == addr) {
            return Some(ep);
        }
    }
    eps.iter().find(|e| &*e.key == name)
}

/// Sets every endpoint's `gateway_circuit_breaker_state` from its breaker as observed
/// now (an open breaker past its open time reads half open before any request has
/// probed it) and `gateway_upstream_connections`: active = connections carrying a
/// request (HTTP/1: requests in flight, capped by the open connections; HTTP/2: open
/// connections with a stream in flight), idle = the other open connections.
pub(super) fn refresh_gauges(snap: &Snapshot, now: Instant) {
    for up in snap.upstreams.values() {
        for ep in up.endpoints().iter() {
            for set in ep.all_breakers() {
                set.metrics.state.set(set.state(now).gauge());
            }
            let pool = ep.core.pool.load();
            let open = pool.open();
            let active = pool.h2_busy().unwrap_or_else(|| ep.in_flight()).min(open);
            ep.core.metrics.conns_active.set(as_i64(active));
            ep.core.metrics.conns_idle.set(as_i64(open - active));
        }
    }
}

fn as_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BreakerState::{Closed, HalfOpen, Open};

    #[test]
    fn upstream_state_rule() {
        assert_eq!(upstream_state(&[]), Closed);
        assert_eq!(upstream_state(&[Open]), Open);
        assert_eq!(upstream_state(&[Open, Open]), Open);
        assert_eq!(upstream_state(&[Open, HalfOpen]), HalfOpen);
        assert_eq!(upstream_state(&[HalfOpen]), HalfOpen);
        assert_eq!(upstream_state(&[Open, Closed]), Closed);
        assert_eq!(upstream_state(&[HalfOpen, Closed]), Closed);
        assert_eq!(upstream_state(&[Closed]), Closed);
    }
}
