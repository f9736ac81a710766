//! Upstreams and their endpoints. An [`Upstream`] is one config's view of a named group
//! of endpoints: its settings, its breaker policies (its own table, then each route's
//! own), its balancer and retry budget, and its current endpoint list (swapped whole
//! when DNS answers change; a request pins the list it started with). What belongs to
//! an address itself lives in its [`EndpointCore`] and survives reloads by identity
//! (see [`registry`]).
//!
//! Touched per request: `endpoints()`, `pick`, the endpoints' atomics and breakers.

pub mod balancer;
pub mod breaker;
pub mod breakers;
pub mod dns;
pub mod endpoint;
pub mod health;
pub mod load;
pub mod partition;
pub mod pool;
pub mod registry;
pub mod retry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::config::{EndpointAddr, Protocol, UpstreamConfig};
use crate::metrics::{Metrics, UpstreamMetrics};
use balancer::{Balancer, Tried};
use breakers::BreakerPolicy;
pub use endpoint::{epoch, Endpoint, EndpointCore, InFlight};
use load::ReportSettings;
use pool::{PoolSettings, PoolTls};
use registry::{BreakerId, CorePools, Registry};
use retry::RetryBudget;

/// A named group of endpoints with its policies, as one config says.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub cfg: UpstreamConfig,
    /// Breaker policies by slot: 0 is the upstream's own table, then one per route
    /// that has its own `circuit_breaker` table (the route holds its slot).
    pub policies: Vec<BreakerPolicy>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    /// Requests waiting for an endpoint below its adaptive limit (shared with the
    /// endpoints' cores, which wake it as requests finish).
    pub waiting: Arc<crate::admission::WaitQueue>,
    /// Shared by every request to this upstream (and carried over on reload while the
    /// budget settings stay).
    pub budget: Arc<RetryBudget>,
    pub metrics: UpstreamMetrics,
    pub registry: Arc<Registry>,
    /// The client config of an `https` / `h2` upstream, built with the snapshot; DNS
    /// refreshes hand it to the endpoints they add.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// How this build reads its endpoints' load reports; every endpoint it makes holds
    /// it (a per-snapshot value: a refused or superseded build never reaches the
    /// endpoints of the running one).
    pub reports: Arc<ReportSettings>,
    /// Set once a reload replaced this build: its DNS refresher and health checks stop,
    /// so a build kept alive by a long request does not write its settings or verdicts
    /// into the endpoint cores the running build shares.
    retired: std::sync::atomic::AtomicBool,
    /// The previous build's endpoints, held until this build's first DNS answers: an
    /// endpoint re-spelled (an IP literal now written as a name that resolves to it)
    /// keeps its core and breakers (a forced open included) instead of losing them in
    /// the gap before the name is resolved.
    held: std::sync::Mutex<Vec<Arc<Endpoint>>>,
}

/// `own` and then every code of `more` not in it yet, in order.
fn union<'a, T: Copy + PartialEq + 'a>(own: &[T], more: impl Iterator<Item = &'a [T]>) -> Vec<T> {
    let mut all = own.to_vec();
    for c in more.flatten() {
        if !all.contains(c) {
            all.push(*c);
        }
    }
    all
}

impl Upstream {
    /// Marks this build superseded (see `retired`).
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Builds an upstream from its config and breaker policies. Literal addresses
    /// become endpoints at once; DNS names keep the previous build's answers (when
    /// there was one) until [`Upstream::refresh_dns`] replaces them. Every endpoint
    /// gets its core and breaker sets from the registry by identity, so whatever is
    /// known of an address carries over.
    pub fn build(
        cfg: &UpstreamConfig,
        policies: Vec<BreakerPolicy>,
        previous: Option<&Upstream>,
        registry: &Arc<Registry>,
        tls: Option<Arc<rustls::ClientConfig>>,
        route_retries: &[&crate::config::RetryConfig],
    ) -> Upstream {
        let name: Arc<str> = cfg.name.as_str().into();
        let metrics = registry.metrics().clone();
        let budget = match previous {
            Some(p)
                if p.cfg.retry.budget_percent == cfg.retry.budget_percent
                    && p.cfg.retry.budget_min_per_second == cfg.retry.budget_min_per_second =>
            {
                p.budget.clone()
            }
            _ => Arc::new(RetryBudget::from_config(&cfg.retry)),
        };
        let up = Upstream {
            // A counter for every code a retry may be made for: the upstream's own and
            // those of the routes' own retry tables.
            metrics: UpstreamMetrics::new(
                &metrics,
                &name,
                &union(
                    &cfg.retry.retry_status_codes,
                    route_retries.iter().map(|r| &r.retry_status_codes[..]),
                ),
                &union(
                    &cfg.retry.retry_grpc_codes,
                    route_retries.iter().map(|r| &r.retry_grpc_codes[..]),
                ),
            ),
            name: name.clone(),
            cfg: cfg.clone(),
            policies,
            endpoints: ArcSwap::from_pointee(Vec::new()),
            balancer: Balancer::new(cfg.load_balancing, &cfg.peak_ewma),
            waiting: registry.queue(&name),
            budget,
            registry: registry.clone(),
            tls,
            reports: Arc::new(ReportSettings {
                header: cfg.load_report_header.clone(),
                forward: cfg.forward_load_report,
                expiry: cfg.load_report_expiry,
            }),
            retired: std::sync::atomic::AtomicBool::new(false),
            held: std::sync::Mutex::new(Vec::new()),
        };
        // A new address of a running upstream ramps in; at first start nothing does.
        let ramp = previous.is_some_and(|p| !p.endpoints().is_empty());
        let old = previous.map(|p| p.endpoints());
        let mut eps = Vec::new();
        for e in &cfg.endpoints {
            match &e.address {
                EndpointAddr::Socket(addr) => {
                    if !eps.iter().any(|x: &Arc<Endpoint>| x.addr == *addr) {
                        eps.push(up.endpoint(*addr, e.weight, None, ramp));
                    }
                }
                EndpointAddr::Dns { host, port } => {
                    let answered = old.iter().flat_map(|o| o.iter()).filter(|x| {
                        x.origin
                            .as_ref()
                            .is_some_and(|(h, p)| &**h == host && p == port)
                    });
                    for x in answered {
                        if !eps.iter().any(|y| y.addr == x.addr) {
                            let origin = Some((host.as_str().into(), *port));
                            eps.push(up.endpoint(x.addr, e.weight, origin, ramp));
                        }
                    }
                }
            }
        }
        up.set_endpoints(eps);
        up.wake_waiters();
        if up.has_dns() {
            if let (Some(old), Ok(mut held)) = (old, up.held.lock()) {
                *held = old.iter().cloned().collect();
            }
        }
        up
    }

    /// Requests waiting for an endpoint's adaptive limit get the room this build made
    /// (a limit raised, or the table removed): a finished request wakes one waiter,
    /// and a reload that frees capacity finishes none.
    fn wake_waiters(&self) {
        let q = &self.waiting;
        if q.is_empty() {
            return;
        }
        let mut free = 0usize;
        for ep in self.endpoints().iter() {
            match ep.core.limit() {
                None => {
                    free = usize::MAX;
                    break;
                }
                Some(l) => free = free.saturating_add(l.saturating_sub(ep.core.in_flight())),
            }
        }
        for _ in 0..free.min(q.len()) {
            if !q.release() {
                break;
            }
        }
    }

    /// This build's DNS answers are in: what the previous build held may go.
    pub(crate) fn release_held(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }

    /// The endpoint at `addr` for this upstream's policies: its live core and breaker
    /// sets from the registry, or new ones (a new core ramps in when `ramp`).
    fn endpoint(
        &self,
        addr: SocketAddr,
        weight: u32,
        origin: Option<(Arc<str>, u16)>,
        ramp: bool,
    ) -> Arc<Endpoint> {
        let host = origin.as_ref().map(|(h, _)| &**h);
        let pools = CorePools {
            data: pool_settings(&self.cfg, self.tls.as_ref(), addr, host, false),
            probe: pool_settings(&self.cfg, self.tls.as_ref(), addr, host, true),
        };
        let (core, new) = self.registry.core(
            &self.name,
            addr,
            &pools,
            &self.metrics.pool_wait,
            self.cfg.peak_ewma.default_latency,
        );
        if new && ramp && !self.cfg.slow_start.is_zero() {
            core.mark_recovered(Instant::now());
        }
        self.set_adaptive(&core);
        let sets = self
            .policies
            .iter()
            .map(|p| {
                let id = BreakerId {
                    service: self.name.clone(),
                    endpoint: core.key.clone(),
                    route: p.route.clone(),
                };
                self.registry.breakers(id, &p.cfg, &core)
            })
            .collect();
        Arc::new(Endpoint::new(
            core,
            weight,
            origin,
            sets,
            self.reports.clone(),
        ))
    }

    /// Gives the core this upstream's adaptive limit: the learned one is kept while the
    /// settings stay, a changed table goes on from it (clamped into its new bounds),
    /// none removes it.
    fn set_adaptive(&self, core: &EndpointCore) {
        match &self.cfg.adaptive_concurrency {
            None => {
                core.adaptive.store(None);
                core.metrics.clear_limit();
            }
            Some(cfg) => {
                let next = match core.adaptive.load().as_ref() {
                    Some(l) if l.same_settings(cfg) => None,
                    Some(l) => Some(l.carried(cfg)),
                    None => Some(crate::admission::AdaptiveLimit::new(cfg)),
                };
                if let Some(next) = next {
                    core.adaptive.store(Some(Arc::new(next)));
                }
                let limit = core.limit().unwrap_or(cfg.initial_limit);
                core.metrics.set_limit(limit);
            }
        }
    }

    /// The current endpoint list (one atomic load). A request loads it once and keeps
    /// it for all its attempts.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    pub fn set_endpoints(&self, eps: Vec<Arc<Endpoint>>) {
        self.endpoints.store(Arc::new(eps));
    }

    /// Connections open to `addr` now (pooled idle ones included).
    pub fn open_connections(&self, addr: SocketAddr) -> usize {
        self.endpoints()
            .iter()
            .find(|e| e.addr == addr)
            .map_or(0, |e| e.core.pool.load().open())
    }

    /// The route-owned policy slot of `route`, if it has one here.
    pub fn slot_of(&self, route: &str) -> Option<usize> {
        self.policies
            .iter()
            .position(|p| p.route.as_deref() == Some(route))
    }

    /// Closes idle connections past `idle_timeout` and trims the idle surplus, while the
    /// upstream is alive.
    pub fn spawn_pool_sweeper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let every = (self.cfg.pool.idle_timeout / 2)
            .min(pool::SWEEP_EVERY)
            .max(Duration::from_millis(50));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { break };
                for ep in up.endpoints().iter() {
                    ep.core.pool.load().sweep();
                    ep.core.probe_pool.load().sweep();
                }
            }
        });
    }

    pub fn has_dns(&self) -> bool {
        self.cfg
            .endpoints
            .iter()
            .any(|e| matches!(e.address, EndpointAddr::Dns { .. }))
    }

    /// Picks the endpoint of the next attempt among `eps` (the request's pinned list).
    pub fn pick(
        &self,
        eps: &[Arc<Endpoint>],
        tried: &Tried,
        now: Instant,
        ok: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        self.balancer.pick(eps, tried, now, ok)
    }

    /// The metric families (for handles resolved outside the build).
    pub fn family(&self) -> &Arc<Metrics> {
        self.registry.metrics()
    }
}

/// The pool settings of the endpoint at `addr`; `host` is the DNS name it was
/// resolved from (certificates name hosts), else its IP is the TLS server name. A
/// probe pool is the health check's own single connection, outside the data cap.
fn pool_settings(
    cfg: &UpstreamConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
    addr: SocketAddr,
    host: Option<&str>,
    probe: bool,
) -> PoolSettings {
    let tls = tls.map(|config| {
        let ip = addr.ip();
        let name = match host {
            Some(h) => crate::tls::server_name(cfg.tls.as_ref(), h),
            None => crate::tls::server_name(cfg.tls.as_ref(), &ip.to_string()),
        };
        PoolTls {
            config: config.clone(),
            // The snapshot build checked the name; failing closed on the IP if not.
            server_name: name.unwrap_or(rustls::pki_types::ServerName::IpAddress(ip.into())),
        }
    });
    let mut s = PoolSettings::new(cfg.protocol, &cfg.pool, &cfg.timeouts, tls);
    if probe {
        s.max_connections = 1;
        s.max_idle = 1;
        if let Some(hc) = &cfg.health_check {
            // Kept between probes; connecting is part of the probe's own timeout.
            s.idle_timeout = hc.interval.saturating_mul(3).max(s.idle_timeout);
            s.connect_timeout = hc.timeout;
        }
    }
    s
}

/// Whether `protocol` multiplexes requests over shared connections.
pub fn is_http2(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::H2c | Protocol::H2)
}
