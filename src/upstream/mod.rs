//! Upstreams and their endpoints. An [`Upstream`] owns its pooled client, its balancer
//! and its current endpoint list (swapped whole when DNS answers change); an
//! [`Endpoint`] owns what must survive a reload: its in-flight count, health and
//! connection cap. Touched per request: `endpoints()`, `pick`, the endpoint atomics.

pub mod balancer;
pub mod breaker;
pub mod dns;
pub mod health;
pub mod partition;
pub mod pool;
pub mod retry;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::HeaderMap;
use tokio::time::Instant;

use crate::config::{BreakerConfig, EndpointAddr, PartitionKey, UpstreamConfig};
use crate::metrics::{EndpointMetrics, Metrics, UpstreamMetrics};
use balancer::{Balancer, Tried};
use breaker::{Breaker, BreakerState, Transition};
use partition::PartitionedBreakers;
use pool::{Pool, PoolSettings, PoolTls};
use retry::RetryBudget;

/// The breakers of one endpoint: the endpoint's own, plus one per key when the upstream
/// partitions by a request header.
#[derive(Debug)]
pub struct EndpointBreakers {
    pub main: Breaker,
    pub partitions: Option<(http::HeaderName, PartitionedBreakers)>,
}

/// The breaker an attempt goes through: the endpoint's, or its key's.
#[derive(Debug)]
pub enum BreakerRef<'a> {
    Main(&'a Breaker),
    Keyed(Arc<Breaker>, &'a [u8]),
}

impl BreakerRef<'_> {
    pub fn get(&self) -> &Breaker {
        match self {
            BreakerRef::Main(b) => b,
            BreakerRef::Keyed(b, _) => b,
        }
    }

    pub fn key(&self) -> Option<&[u8]> {
        match self {
            BreakerRef::Main(_) => None,
            BreakerRef::Keyed(_, k) => Some(k),
        }
    }
}

impl EndpointBreakers {
    pub fn new(cfg: &BreakerConfig) -> Self {
        EndpointBreakers {
            main: Breaker::new(cfg),
            partitions: cfg
                .partition_by
                .as_ref()
                .map(|PartitionKey::Header(h)| (h.clone(), PartitionedBreakers::new(cfg))),
        }
    }

    /// The endpoint's breaker when an operator forced it open: that overrides every
    /// partition (one atomic load while closed).
    fn forced(&self, now: Instant) -> Option<breaker::Rejected> {
        self.main.rejection(now).filter(|r| r.forced)
    }

    /// The breaker for a request with these headers.
    pub fn for_request<'a>(&'a self, headers: &'a HeaderMap) -> BreakerRef<'a> {
        if let Some((name, parts)) = &self.partitions {
            if self.forced(Instant::now()).is_some() {
                return BreakerRef::Main(&self.main);
            }
            if let Some(v) = headers.get(name) {
                return BreakerRef::Keyed(parts.get(v.as_bytes()), v.as_bytes());
            }
        }
        BreakerRef::Main(&self.main)
    }

    /// Whether the breaker for a request with these headers would admit now. A key
    /// without a breaker yet is closed; looking does not create one.
    pub fn available(&self, headers: &HeaderMap, now: Instant) -> bool {
        if let Some((name, parts)) = &self.partitions {
            if self.forced(now).is_some() {
                return false;
            }
            if let Some(v) = headers.get(name) {
                return parts.peek(v.as_bytes()).is_none_or(|b| b.is_available(now));
            }
        }
        self.main.is_available(now)
    }

    /// What the breaker for these headers would refuse with (`None`: it admits).
    pub fn rejection(&self, headers: &HeaderMap, now: Instant) -> Option<breaker::Rejected> {
        if let Some((name, parts)) = &self.partitions {
            if let Some(r) = self.forced(now) {
                return Some(r);
            }
            if let Some(v) = headers.get(name) {
                return parts.peek(v.as_bytes()).and_then(|b| b.rejection(now));
            }
        }
        self.main.rejection(now)
    }

    pub fn set_config(&self, cfg: &BreakerConfig) {
        self.main.set_config(cfg);
        if let Some((_, p)) = &self.partitions {
            p.set_config(cfg);
        }
    }
}

/// The breakers a route keeps for itself when it has its own `circuit_breaker` table:
/// one set per endpoint address, made on first use, separate from the upstream's.
/// Read per request without a lock (copy-on-write map).
#[derive(Debug)]
pub struct RouteBreakers {
    cfg: ArcSwap<BreakerConfig>,
    by_addr: ArcSwap<std::collections::HashMap<SocketAddr, Arc<EndpointBreakers>>>,
}

impl RouteBreakers {
    pub fn new(cfg: &BreakerConfig) -> Self {
        RouteBreakers {
            cfg: ArcSwap::from_pointee(cfg.clone()),
            by_addr: ArcSwap::from_pointee(Default::default()),
        }
    }

    pub fn get(&self, addr: SocketAddr) -> Arc<EndpointBreakers> {
        if let Some(b) = self.by_addr.load().get(&addr) {
            return b.clone();
        }
        let cfg = self.cfg.load();
        let mut made = None;
        self.by_addr.rcu(|m| {
            let mut m = std::collections::HashMap::clone(m);
            let b = m
                .entry(addr)
                .or_insert_with(|| Arc::new(EndpointBreakers::new(&cfg)))
                .clone();
            made = Some(b);
            m
        });
        made.unwrap_or_else(|| Arc::new(EndpointBreakers::new(&cfg)))
    }

    /// New settings on reload; state is kept.
    pub fn set_config(&self, cfg: &BreakerConfig) {
        self.cfg.store(Arc::new(cfg.clone()));
        for b in self.by_addr.load().values() {
            b.set_config(cfg);
        }
    }
}

/// The breakers an attempt uses: the endpoint's own, or its route's.
#[derive(Debug)]
pub enum BreakersOf<'a> {
    Endpoint(&'a EndpointBreakers),
    Route(Arc<EndpointBreakers>),
}

impl std::ops::Deref for BreakersOf<'_> {
    type Target = EndpointBreakers;
    fn deref(&self) -> &EndpointBreakers {
        match self {
            BreakersOf::Endpoint(b) => b,
            BreakersOf::Route(b) => b,
        }
    }
}

impl Endpoint {
    /// This endpoint's breakers for a route with (`Some`) or without its own table.
    pub fn breakers_for<'a>(&'a self, route: Option<&RouteBreakers>) -> BreakersOf<'a> {
        match route {
            Some(r) => BreakersOf::Route(r.get(self.addr)),
            None => BreakersOf::Endpoint(&self.breakers),
        }
    }
}

/// One address of an upstream (a configured ip:port, or one answer of a DNS name).
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `ip:port`, as shown in logs, metrics and the admin API.
    pub key: Arc<str>,
    /// The same, pre-parsed for building request URIs.
    pub authority: Authority,
    pub weight: u32,
    in_flight: AtomicUsize,
    /// Active health checks' verdict; true when none are configured.
    pub healthy: AtomicBool,
    /// Consecutive health check passes (+) or failures (-) since the verdict last changed.
    pub health_streak: AtomicU32,
    pub health_fails: AtomicU32,
    /// Milliseconds since [`epoch`] when the endpoint last came back (breaker closed or
    /// health recovered); `slow_start` ramps its share from then. 0 = never ramped.
    ramp_start_ms: AtomicU64,
    /// The upstream's name, for logs.
    pub service: Arc<str>,
    pub breakers: EndpointBreakers,
    pub metrics: EndpointMetrics,
    /// Replaced when a reload changes the pool settings (the old one drains).
    pub pool: ArcSwap<Pool>,
}

/// The process's time origin for millisecond stamps kept in atomics.
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn ms_since_epoch(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

impl Endpoint {
    pub fn new(
        addr: SocketAddr,
        weight: u32,
        service: &Arc<str>,
        breaker: &BreakerConfig,
        metrics: &Arc<Metrics>,
        pool: PoolSettings,
    ) -> Self {
        let key: Arc<str> = addr.to_string().into();
        let em = EndpointMetrics::new(metrics, service, &key);
        // An ip:port string is always a valid authority.
        let authority =
            Authority::try_from(&*key).unwrap_or_else(|_| Authority::from_static("invalid"));
        Endpoint {
            addr,
            key,
            authority,
            weight: weight.max(1),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            health_streak: AtomicU32::new(0),
            health_fails: AtomicU32::new(0),
            ramp_start_ms: AtomicU64::new(0),
            service: service.clone(),
            breakers: EndpointBreakers::new(breaker),
            metrics: em,
            pool: ArcSwap::new(Pool::new(addr, pool)),
        }
    }

    /// Logs a breaker state change as its own line and updates the breaker metrics.
    pub fn on_transition(&self, t: Transition, key: Option<&[u8]>) {
        let idx = match t.to {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.metrics.changes[idx].inc();
        match key {
            None => {
                self.metrics.state.set(t.to.gauge());
                tracing::warn!(
                    event = "circuit_breaker_state_change",
                    upstream = %self.service,
                    endpoint = %self.key,
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker {}", t.to.as_str()
                );
            }
            Some(k) => {
                tracing::warn!(
                    event = "circuit_breaker_state_change",
                    upstream = %self.service,
                    endpoint = %self.key,
                    partition = %String::from_utf8_lossy(k),
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker {}", t.to.as_str()
                );
            }
        }
        if t.to == BreakerState::Closed && key.is_none() {
            self.mark_recovered(Instant::now());
        }
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
        let total = slow_start.as_millis() as u64;
        if elapsed >= total {
            return true;
        }
        let share = (elapsed as f64 / total as f64).max(0.1);
        rand::random::<f64>() < share
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
}

/// Decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A named group of endpoints with its pool, balancer and policies.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub cfg: UpstreamConfig,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    /// Shared by every request to this upstream (and carried over on reload).
    pub budget: Arc<RetryBudget>,
    pub metrics: UpstreamMetrics,
    pub family: Arc<Metrics>,
    /// The client config of an `https` / `h2` upstream, built with the snapshot; DNS
    /// refreshes hand it to the endpoints they add.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Upstream {
    /// Builds an upstream from its config. Literal addresses become endpoints at once;
    /// DNS names are filled in by [`Upstream::refresh_dns`]. Endpoints of `previous`
    /// with the same address are carried over (in-flight counts, health, caps).
    pub fn build(
        cfg: &UpstreamConfig,
        previous: Option<&Upstream>,
        metrics: &Arc<Metrics>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Upstream {
        let name: Arc<str> = cfg.name.as_str().into();
        let old = previous.map(|p| p.endpoints());
        let mut eps = Vec::new();
        for e in &cfg.endpoints {
            if let EndpointAddr::Socket(addr) = e.address {
                eps.push(reuse_or_new(
                    old.as_deref(),
                    addr,
                    e.weight,
                    pool_settings(cfg, tls.as_ref(), addr, None),
                    &name,
                    cfg,
                    metrics,
                ));
            }
        }
        // DNS answers of the previous build stay until the next refresh replaces them.
        if let Some(old) = &old {
            for ep in old.iter() {
                let from_dns = !cfg
                    .endpoints
                    .iter()
                    .any(|c| c.address == EndpointAddr::Socket(ep.addr));
                if from_dns && cfg.endpoints.iter().any(|c| matches!(c.address, EndpointAddr::Dns { port, .. } if port == ep.addr.port())) {
                    ep.breakers.set_config(&cfg.circuit_breaker);
                    eps.push(ep.clone());
                }
            }
        }
        let budget = match previous {
            Some(p)
                if p.cfg.retry.budget_percent == cfg.retry.budget_percent
                    && p.cfg.retry.budget_min_per_second == cfg.retry.budget_min_per_second =>
            {
                p.budget.clone()
            }
            _ => Arc::new(RetryBudget::from_config(&cfg.retry)),
        };
        Upstream {
            metrics: UpstreamMetrics::new(
                metrics,
                &name,
                &cfg.retry.retry_status_codes,
                &cfg.retry.retry_grpc_codes,
            ),
            family: metrics.clone(),
            name,
            cfg: cfg.clone(),
            endpoints: ArcSwap::from_pointee(eps),
            balancer: Balancer::new(cfg.load_balancing),
            budget,
            tls,
        }
    }

    /// The current endpoint list (one atomic load).
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
            .map_or(0, |e| e.pool.load().open())
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
                    ep.pool.load().sweep();
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

    /// Picks the endpoint of the next attempt.
    pub fn pick(
        &self,
        eps: &[Arc<Endpoint>],
        tried: Tried,
        ok: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        self.balancer.pick(eps, tried, ok)
    }
}

/// The pool settings of the endpoint at `addr`; `host` is the DNS name it was
/// resolved from (certificates name hosts), else its IP is the TLS server name.
fn pool_settings(
    cfg: &UpstreamConfig,
    tls: Option<&Arc<rustls::ClientConfig>>,
    addr: SocketAddr,
    host: Option<&str>,
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
    PoolSettings::new(cfg.protocol, &cfg.pool, &cfg.timeouts, tls)
}

/// The endpoint of `old` with this address and weight (its breaker takes the new
/// settings), else a new one.
fn reuse_or_new(
    old: Option<&Vec<Arc<Endpoint>>>,
    addr: SocketAddr,
    weight: u32,
    settings: PoolSettings,
    service: &Arc<str>,
    cfg: &UpstreamConfig,
    metrics: &Arc<Metrics>,
) -> Arc<Endpoint> {
    let same_partitioning = |e: &Endpoint| {
        e.breakers.partitions.as_ref().map(|(h, _)| h)
            == cfg
                .circuit_breaker
                .partition_by
                .as_ref()
                .map(|PartitionKey::Header(h)| h)
    };
    match old.and_then(|o| {
        o.iter()
            .find(|e| e.addr == addr && e.weight == weight.max(1) && same_partitioning(e))
    }) {
        Some(e) => {
            e.breakers.set_config(&cfg.circuit_breaker);
            if e.pool.load().settings != settings {
                e.pool.store(Pool::new(addr, settings));
            }
            e.clone()
        }
        None => Arc::new(Endpoint::new(
            addr,
            weight,
            service,
            &cfg.circuit_breaker,
            metrics,
            settings,
        )),
    }
}
