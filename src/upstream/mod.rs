//! Upstreams and their endpoints. An [`Upstream`] owns its pooled client, its balancer
//! and its current endpoint list (swapped whole when DNS answers change); an
//! [`Endpoint`] owns what must survive a reload: its in-flight count, health and
//! connection cap. Touched per request: `endpoints()`, `pick`, the endpoint atomics.

pub mod balancer;
pub mod client;
pub mod dns;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::uri::Authority;

use crate::config::{EndpointAddr, UpstreamConfig};
use balancer::{Balancer, Tried};
use client::{build_client, ConnLimits, HttpClient};

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
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32) -> Self {
        let key: Arc<str> = addr.to_string().into();
        // An ip:port string is always a valid authority.
        let authority = Authority::try_from(&*key).unwrap_or_else(|_| Authority::from_static("invalid"));
        Endpoint {
            addr,
            key,
            authority,
            weight: weight.max(1),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
        }
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
    pub client: HttpClient,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    limits: Arc<ConnLimits>,
}

impl Upstream {
    /// Builds an upstream from its config. Literal addresses become endpoints at once;
    /// DNS names are filled in by [`Upstream::refresh_dns`]. Endpoints of `previous`
    /// with the same address are carried over (in-flight counts, health, caps).
    pub fn build(cfg: &UpstreamConfig, previous: Option<&Upstream>) -> Upstream {
        let limits = previous
            .filter(|p| p.cfg.pool.max_connections_per_host == cfg.pool.max_connections_per_host)
            .map(|p| p.limits.clone())
            .unwrap_or_default();
        let old = previous.map(|p| p.endpoints());
        let mut eps = Vec::new();
        for e in &cfg.endpoints {
            if let EndpointAddr::Socket(addr) = e.address {
                eps.push(reuse_or_new(old.as_deref(), addr, e.weight));
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
                    eps.push(ep.clone());
                }
            }
        }
        let client = build_client(cfg.protocol, &cfg.pool, &cfg.timeouts, limits.clone());
        Upstream {
            name: cfg.name.as_str().into(),
            cfg: cfg.clone(),
            client,
            endpoints: ArcSwap::from_pointee(eps),
            balancer: Balancer::new(cfg.load_balancing),
            limits,
        }
    }

    /// The current endpoint list (one atomic load).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    pub fn set_endpoints(&self, eps: Vec<Arc<Endpoint>>) {
        let keep: Vec<SocketAddr> = eps.iter().map(|e| e.addr).collect();
        self.endpoints.store(Arc::new(eps));
        self.limits.retain(|a| keep.contains(a));
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

fn reuse_or_new(old: Option<&Vec<Arc<Endpoint>>>, addr: SocketAddr, weight: u32) -> Arc<Endpoint> {
    match old.and_then(|o| o.iter().find(|e| e.addr == addr && e.weight == weight.max(1))) {
        Some(e) => e.clone(),
        None => Arc::new(Endpoint::new(addr, weight)),
    }
}
