//! DNS names as endpoints: every `dns_refresh` each name is resolved again and the
//! upstream's endpoint list is replaced by the literal addresses plus every answer
//! (Kubernetes headless services answer with one address per pod). Addresses still
//! answered keep their state (core and breakers by identity); new ones ramp in with
//! `slow_start`. A failed or slow lookup keeps the previous answers: a DNS outage must
//! not empty an upstream. Lookups are bounded by [`LOOKUP_TIMEOUT`] and run in the
//! background: they never hold up binding, a reload or a request.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Endpoint, Upstream};
use crate::config::EndpointAddr;

/// Longest wait for one name's answers; past it the previous answers stay.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

impl Upstream {
    /// Resolves every DNS name once and installs the answers.
    pub async fn refresh_dns(&self) {
        if !self.has_dns() || self.is_retired() {
            return;
        }
        let old = self.endpoints();
        let ramp = !old.is_empty();
        let mut failed = false;
        let mut eps: Vec<Arc<Endpoint>> = Vec::new();
        for e in &self.cfg.endpoints {
            match &e.address {
                EndpointAddr::Socket(addr) => {
                    if let Some(x) = old.iter().find(|x| x.addr == *addr && x.origin.is_none()) {
                        if !eps.iter().any(|y| y.addr == x.addr) {
                            eps.push(x.clone());
                        }
                    }
                }
                EndpointAddr::Dns { host, port } => {
                    let lookup = tokio::net::lookup_host((host.as_str(), *port));
                    let answers: Result<Vec<SocketAddr>, String> =
                        match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                            Ok(Ok(addrs)) => Ok(addrs.collect()),
                            Ok(Err(err)) => Err(err.to_string()),
                            Err(_) => Err(format!("no answer within {LOOKUP_TIMEOUT:?}")),
                        };
                    let same_origin = |x: &&Arc<Endpoint>| {
                        x.origin
                            .as_ref()
                            .is_some_and(|(h, p)| &**h == host && p == port)
                    };
                    match answers {
                        Ok(addrs) => {
                            for addr in addrs {
                                if eps.iter().any(|y| y.addr == addr) {
                                    continue;
                                }
                                let kept = old.iter().filter(same_origin).find(|x| x.addr == addr);
                                eps.push(match kept {
                                    Some(x) => x.clone(),
                                    None => self.endpoint(
                                        addr,
                                        e.weight,
                                        Some((host.as_str().into(), *port)),
                                        ramp,
                                    ),
                                });
                            }
                        }
                        Err(err) => {
                            failed = true;
                            tracing::warn!(upstream = %self.name, host = %host, error = %err, "DNS lookup failed; keeping previous answers");
                            for x in old.iter().filter(same_origin) {
                                if !eps.iter().any(|y| y.addr == x.addr) {
                                    eps.push(x.clone());
                                }
                            }
                        }
                    }
                }
            }
        }
        let changed =
            eps.len() != old.len() || eps.iter().zip(old.iter()).any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            let list: Vec<SocketAddr> = eps.iter().map(|e| e.addr).collect();
            tracing::info!(upstream = %self.name, endpoints = ?list, "endpoints updated from DNS");
            self.set_endpoints(eps);
        }
        if !failed {
            self.release_held();
        }
    }

    /// Resolves every `dns_refresh` (the first time at once when `resolve_now`) while
    /// the upstream is alive and current (it stops once a reload replaced it).
    /// Runs in the background: callers never wait for DNS.
    pub fn spawn_dns_refresher(self: &Arc<Self>, resolve_now: bool) {
        if !self.has_dns() {
            return;
        }
        let weak: Weak<Upstream> = Arc::downgrade(self);
        let every = self.cfg.dns_refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            if !resolve_now {
                tick.tick().await; // the first tick is immediate; resolved already
            }
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(up) if !up.is_retired() => up.refresh_dns().await,
                    _ => break,
                }
            }
        });
    }
}
