//! One address of an upstream. [`EndpointCore`] is what belongs to the address itself
//! and survives reloads and DNS refreshes by identity (upstream name + address): its
//! in-flight count, health verdict, slow-start ramp, force-open flag, connection pools
//! and metric series. [`Endpoint`] is the core as one snapshot sees it: with its weight
//! and the breaker set of every breaker policy of the upstream in that snapshot.
//!
//! Touched per request: the atomics of the core, `breakers(slot)`; everything else on
//! reload, on DNS refresh and by the admin API.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::uri::Authority;
use tokio::time::Instant;

use super::breaker::{BreakerState, Transition};
use super::breakers::BreakerSet;
use super::load::{has_report, parse_report, strip_report, LoadState, ReportSettings};
use super::pool::Pool;
use super::registry::Registry;
use crate::admission::{AdaptiveLimit, WaitQueue};
use crate::metrics::EndpointMetrics;

/// The process's time origin for millisecond stamps kept in atomics.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Milliseconds since [`epoch`], never 0 (0 means "never" in the atomics).
pub fn ms_since_epoch(now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch()).as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

/// What belongs to one address of one upstream, whatever the config says about it.
/// One per (upstream name, address) while anything holds it (see [`Registry`]).
#[derive(Debug)]
pub struct EndpointCore {
    pub service: Arc<str>,
    pub addr: SocketAddr,
    /// `ip:port`, as shown in logs, metrics and the admin API.
    pub key: Arc<str>,
    in_flight: AtomicUsize,
    /// Active health checks' verdict; true when none are configured.
    healthy: AtomicBool,
    /// Consecutive health check passes since the verdict last changed.
    pub(super) health_streak: AtomicU32,
    /// Consecutive health check failures since the verdict last changed.
    pub(super) health_fails: AtomicU32,
    /// Milliseconds since [`epoch`] when the endpoint last came back (breaker closed,
    /// health recovered, or new to a running upstream); `slow_start` ramps its share
    /// from then. 0 = never ramped.
    ramp_start_ms: AtomicU64,
    /// Forced open by an operator until reset: every breaker set of this endpoint,
    /// including ones a later reload makes, starts forced open while this is set.
    forced_open: AtomicBool,
    /// Data connections (`max_connections_per_host`); replaced when a reload changes
    /// the pool settings (the old one drains).
    pub pool: ArcSwap<Pool>,
    /// The health probe's own connection, outside the data pool's cap, so probes never
    /// queue behind inference traffic.
    pub probe_pool: ArcSwap<Pool>,
    pub metrics: EndpointMetrics,
    /// Latency estimate and reported load (the `peak_ewma` cost, deadline predictions).
    pub load: LoadState,
    /// The learned in-flight limit, when the upstream sets `adaptive_concurrency`.
    pub adaptive: ArcSwapOption<AdaptiveLimit>,
    /// Requests waiting for an endpoint of this upstream to get below its limit (one
    /// queue per upstream name, shared by its endpoints): woken as requests finish.
    pub waiting: Arc<WaitQueue>,
    /// Where this core is listed, so its metric series go with it.
    pub(super) registry: Weak<Registry>,
}

impl EndpointCore {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(super) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn is_forced_open(&self) -> bool {
        self.forced_open.load(Ordering::Relaxed)
    }

    pub(super) fn set_forced_open(&self, forced: bool) {
        self.forced_open.store(forced, Ordering::Relaxed);
    }

    /// Whether one more request fits the adaptive limit (always, without one).
    pub fn under_limit(&self) -> bool {
        match &*self.adaptive.load() {
            Some(l) => self.in_flight() < l.limit(),
            None => true,
        }
    }

    /// The adaptive limit now, if the upstream has one.
    pub fn limit(&self) -> Option<usize> {
        self.adaptive.load().as_ref().map(|l| l.limit())
    }

    /// Starts the slow-start ramp.
    pub fn mark_recovered(&self, now: Instant) {
        self.ramp_start_ms
            .store(ms_since_epoch(now), Ordering::Relaxed);
    }

    /// Whether slow start lets this attempt through: during the ramp an endpoint takes
    /// a share of the attempts it would otherwise get that grows linearly from 10 % to
    /// 100 % over `slow_start`.
    pub fn slow_start_admits(&self, now: Instant, slow_start: Duration) -> bool {
        if slow_start.is_zero() {
            return true;
        }
        let start = self.ramp_start_ms.load(Ordering::Relaxed);
        if start == 0 {
            return true;
        }
        let elapsed = ms_since_epoch(now).saturating_sub(start);
        let total = u64::try_from(slow_start.as_millis()).unwrap_or(u64::MAX);
        if elapsed >= total {
            return true;
        }
        let share = (elapsed as f64 / total as f64).max(0.1);
        rand::random::<f64>() < share
    }
}

impl Drop for EndpointCore {
    fn drop(&mut self) {
        // The last holder let go: the address left its upstream. Its series go too,
        // unless a newer core with the same labels took its place meanwhile.
        if let Some(reg) = self.registry.upgrade() {
            if reg.forget_core(&self.service, self.addr, self as *const _) {
                self.metrics.remove();
            }
        } else {
            self.metrics.remove();
        }
    }
}

impl EndpointCore {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        service: &Arc<str>,
        addr: SocketAddr,
        pool: Arc<Pool>,
        probe_pool: Arc<Pool>,
        metrics: EndpointMetrics,
        default_latency: Duration,
        waiting: Arc<WaitQueue>,
        registry: Weak<Registry>,
    ) -> EndpointCore {
        EndpointCore {
            service: service.clone(),
            addr,
            key: addr.to_string().into(),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            health_fails: AtomicU32::new(0),
            ramp_start_ms: AtomicU64::new(0),
            forced_open: AtomicBool::new(false),
            pool: ArcSwap::new(pool),
            probe_pool: ArcSwap::new(probe_pool),
            metrics,
            load: LoadState::new(default_latency),
            adaptive: ArcSwapOption::empty(),
            waiting,
            registry,
        }
    }
}

/// An endpoint as one snapshot sees it.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, as shown in logs, metrics and the admin API.
    pub key: Arc<str>,
    /// The same, pre-parsed for building request URIs.
    pub authority: Authority,
    /// Relative share for `weighted`; at least 1.
    pub weight: u32,
    /// The DNS name (and port) this address was resolved from; `None` for a literal.
    pub origin: Option<(Arc<str>, u16)>,
    pub core: Arc<EndpointCore>,
    /// One set per breaker policy of the upstream, by slot (0 = the upstream's own).
    breakers: Box<[Arc<BreakerSet>]>,
    /// How the build that made this endpoint reads load reports (for trailers, read
    /// after the attempt loop, through the request's [`InFlight`] guard).
    pub reports: Arc<ReportSettings>,
}

impl Endpoint {
    pub(super) fn new(
        core: Arc<EndpointCore>,
        weight: u32,
        origin: Option<(Arc<str>, u16)>,
        breakers: Box<[Arc<BreakerSet>]>,
        reports: Arc<ReportSettings>,
    ) -> Endpoint {
        // An ip:port string is always a valid authority.
        let authority =
            Authority::try_from(&*core.key).unwrap_or_else(|_| Authority::from_static("invalid"));
        Endpoint {
            addr: core.addr,
            key: core.key.clone(),
            authority,
            weight: weight.max(1),
            origin,
            breakers,
            core,
            reports,
        }
    }

    /// Feeds a load report in an answer's `trailers` (ORCA's names or the upstream's
    /// `load_report_header`) to this endpoint, and removes it unless the upstream
    /// forwards reports. Trailers without one are left as they are.
    pub fn trailer_report(&self, trailers: &mut http::HeaderMap) {
        let header = self.reports.header.as_ref();
        if !has_report(trailers, header) {
            return;
        }
        let (queue, util) = parse_report(trailers, header);
        self.core
            .load
            .report(queue, util, Instant::now(), self.reports.expiry);
        if !self.reports.forward {
            strip_report(trailers, header);
        }
    }

    /// The breaker set of policy `slot` (0 = the upstream's own table). A slot the
    /// upstream does not have falls back to its own (never happens: slots are resolved
    /// with the snapshot).
    pub fn breakers(&self, slot: usize) -> &BreakerSet {
        self.breakers.get(slot).unwrap_or(&self.breakers[0])
    }

    /// The upstream's own breaker set (slot 0).
    pub fn own_breakers(&self) -> &BreakerSet {
        &self.breakers[0]
    }

    /// Every breaker set of this endpoint, by slot.
    pub fn all_breakers(&self) -> &[Arc<BreakerSet>] {
        &self.breakers
    }

    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    pub fn is_healthy(&self) -> bool {
        self.core.is_healthy()
    }

    /// Counts one more request in flight, until the guard drops, if it fits the
    /// adaptive limit (always, without one); with the count before it. The check and the count are one step, so two
    /// requests racing for the last slot under the limit cannot both take it.
    pub fn try_start_request(self: &Arc<Self>) -> Option<(InFlight, usize)> {
        let guard = self.core.adaptive.load();
        let Some(limit) = guard.as_ref().map(|l| l.limit()) else {
            let before = self.core.in_flight.fetch_add(1, Ordering::Relaxed);
            return Some((InFlight(self.clone()), before));
        };
        self.core
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|before| (InFlight(self.clone()), before))
    }

    /// Logs and counts a state change of the set in `slot` (for `key`, a partition);
    /// a closing own breaker starts the slow-start ramp.
    pub fn on_transition(&self, slot: usize, t: Transition, key: Option<&[u8]>) {
        let set = self.breakers(slot);
        set.on_transition(t, key);
        if t.to == BreakerState::Closed && key.is_none() {
            self.core.mark_recovered(Instant::now());
        }
    }

    /// Forces every breaker of this endpoint open (every policy) until
    /// [`Endpoint::reset`]; returns the state changes made.
    pub fn force_open(&self) -> usize {
        self.core.set_forced_open(true);
        let mut changed = 0;
        for set in self.breakers.iter() {
            if let Some(t) = set.main().force_open() {
                set.on_transition(t, None);
                changed += 1;
            }
        }
        changed
    }

    /// Closes every breaker of this endpoint (every policy, every partition key) and
    /// zeroes their counts; returns the state changes made.
    pub fn reset(&self) -> usize {
        self.core.set_forced_open(false);
        let mut changed = 0;
        for set in self.breakers.iter() {
            changed += set.reset();
        }
        if changed > 0 {
            self.core.mark_recovered(Instant::now());
            // Requests waiting for their upstream's adaptive limits may go here now:
            // nothing else would wake them (no request of this endpoint finishes).
            let q = &self.core.waiting;
            let free = match self.core.limit() {
                None => q.len(),
                Some(l) => l.saturating_sub(self.core.in_flight()),
            };
            for _ in 0..free.min(q.len()) {
                if !q.release() {
                    break;
                }
            }
        }
        changed
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn core(&self) -> &EndpointCore {
        &self.0.core
    }

    /// The endpoint (as the snapshot that picked it built it).
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let core = &self.0.core;
        core.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Below its adaptive limit again: a request waiting for this upstream may go.
        if core.adaptive.load().is_some() && !core.waiting.is_empty() {
            core.waiting.release();
        }
    }
}
