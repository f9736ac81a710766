//! DNS names as endpoints: every `dns_refresh` each name is resolved again and the
//! upstream's endpoint list is replaced by the literal addresses plus every answer
//! (Kubernetes headless services answer with one address per pod). Endpoints whose
//! address is still answered are kept, with their state. A failed lookup keeps the
//! previous answers: a DNS outage must not empty an upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::{pool_settings, reuse_or_new, Endpoint, Upstream};
use crate::config::EndpointAddr;

impl Upstream {
    /// Resolves every DNS name once and installs the answers.
    pub async fn refresh_dns(&self) {
        if !self.has_dns() {
            return;
        }
        let old = self.endpoints();
        let mut eps: Vec<Arc<Endpoint>> = Vec::new();
        let mut previous_by_name: HashMap<(String, u16), Vec<Arc<Endpoint>>> = HashMap::new();
        for e in &self.cfg.endpoints {
            match &e.address {
                EndpointAddr::Socket(addr) => eps.push(reuse_or_new(
                    Some(&old),
                    *addr,
                    e.weight,
                    pool_settings(&self.cfg, self.tls.as_ref(), *addr, None),
                    &self.name,
                    &self.cfg,
                    &self.family,
                )),
                EndpointAddr::Dns { host, port } => {
                    match tokio::net::lookup_host((host.as_str(), *port)).await {
                        Ok(addrs) => {
                            for addr in addrs {
                                if !eps.iter().any(|x| x.addr == addr) {
                                    eps.push(reuse_or_new(
                                        Some(&old),
                                        addr,
                                        e.weight,
                                        pool_settings(
                                            &self.cfg,
                                            self.tls.as_ref(),
                                            addr,
                                            Some(host),
                                        ),
                                        &self.name,
                                        &self.cfg,
                                        &self.family,
                                    ));
                                }
                            }
                        }
                        Err(err) => {
                            tracing::warn!(upstream = %self.name, host = %host, error = %err, "DNS lookup failed; keeping previous answers");
                            let kept = previous_by_name.entry((host.clone(), *port)).or_default();
                            for ep in old.iter().filter(|x| x.addr.port() == *port) {
                                let literal = self
                                    .cfg
                                    .endpoints
                                    .iter()
                                    .any(|c| c.address == EndpointAddr::Socket(ep.addr));
                                if !literal && !eps.iter().any(|x| x.addr == ep.addr) {
                                    kept.push(ep.clone());
                                    eps.push(ep.clone());
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
    }

    /// Re-resolves every `dns_refresh` while the upstream is alive (it stops itself once
    /// a reload dropped the upstream).
    pub fn spawn_dns_refresher(self: &Arc<Self>) {
        if !self.has_dns() {
            return;
        }
        let weak: Weak<Upstream> = Arc::downgrade(self);
        let every = self.cfg.dns_refresh;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await; // the first tick is immediate; the build resolved already
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(up) => up.refresh_dns().await,
                    None => break,
                }
            }
        });
    }
}
