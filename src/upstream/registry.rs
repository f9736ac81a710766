//! The process-wide table of what belongs to an endpoint by identity, shared by every
//! snapshot: one [`EndpointCore`] per (upstream, address) and one [`BreakerSet`] per
//! (upstream, address, breaker policy) while anything holds them, and the upstreams'
//! TLS client configs by content. A reload or DNS refresh asks it for the core and
//! breakers of each address it lists and gets the live ones back, whatever else about
//! the endpoint changed (weight, order, other upstreams): state carries over by
//! identity, never by position or by equality of unrelated fields (pingora's
//! load-balancing keeps a backend's health across updates by key the same way).
//!
//! Entries are weak: when the last snapshot (and request) holding a core or set lets
//! go, it leaves the table and its metric series are deleted.
//!
//! Touched on reload and DNS refresh only (one lock each); never per request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::time::Instant;

use super::breakers::BreakerSet;
use super::endpoint::EndpointCore;
use super::pool::{Pool, PoolSettings};
use crate::admission::WaitQueue;
use crate::config::{BreakerConfig, PartitionKey, UpstreamTls};
use crate::metrics::{BreakerMetrics, EndpointMetrics, Metrics};
use crate::tls;

/// What a breaker set protects: an endpoint of an upstream under one policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BreakerId {
    pub service: Arc<str>,
    pub endpoint: Arc<str>,
    /// The route whose own `circuit_breaker` table this is; `None`: the upstream's.
    pub route: Option<Arc<str>>,
}

/// Cores by (upstream name, address).
type CoreTable = HashMap<(Arc<str>, SocketAddr), Weak<EndpointCore>>;

/// One process's endpoint state by identity.
#[derive(Debug)]
pub struct Registry {
    metrics: Arc<Metrics>,
    cores: Mutex<CoreTable>,
    sets: Mutex<HashMap<BreakerId, Weak<BreakerSet>>>,
    /// Upstream name -> (fingerprint, config): an unchanged TLS setup keeps its config
    /// object, so pools compare equal and keep their connections.
    tls: Mutex<HashMap<String, (u64, Arc<rustls::ClientConfig>)>>,
    /// Upstream name -> the queue of requests waiting for its endpoints' adaptive
    /// limits, shared by every snapshot while anything holds it.
    queues: Mutex<HashMap<Arc<str>, Weak<WaitQueue>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; a poisoned table is still a valid table.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pool settings of a core's data pool and of its health probe's own connection.
#[derive(Debug, Clone)]
pub struct CorePools {
    pub data: PoolSettings,
    pub probe: PoolSettings,
}

impl Registry {
    pub fn new(metrics: &Arc<Metrics>) -> Arc<Registry> {
        Arc::new(Registry {
            metrics: metrics.clone(),
            cores: Mutex::default(),
            sets: Mutex::default(),
            tls: Mutex::default(),
            queues: Mutex::default(),
        })
    }

    /// The adaptive-limit wait queue of upstream `service`.
    pub fn queue(&self, service: &Arc<str>) -> Arc<WaitQueue> {
        let mut queues = lock(&self.queues);
        if let Some(q) = queues.get(service).and_then(Weak::upgrade) {
            return q;
        }
        let q = Arc::new(WaitQueue::new());
        queues.insert(service.clone(), Arc::downgrade(&q));
        q
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The live core of `addr` in upstream `service`, its pools brought to `pools`
    /// (a changed pool is replaced; its connections drain), or a new one. The flag
    /// says whether it is new.
    pub fn core(
        self: &Arc<Self>,
        service: &Arc<str>,
        addr: SocketAddr,
        pools: &CorePools,
        pool_wait: &prometheus::Histogram,
        default_latency: std::time::Duration,
    ) -> (Arc<EndpointCore>, bool) {
        let mut cores = lock(&self.cores);
        let key = (service.clone(), addr);
        if let Some(core) = cores.get(&key).and_then(Weak::upgrade) {
            drop(cores);
            if core.pool.load().settings != pools.data {
                core.pool
                    .store(Pool::new(addr, pools.data.clone(), Some(pool_wait.clone())));
            }
            if core.probe_pool.load().settings != pools.probe {
                core.probe_pool
                    .store(Pool::new(addr, pools.probe.clone(), None));
            }
            return (core, false);
        }
        let metrics = EndpointMetrics::new(&self.metrics, service, &addr.to_string());
        let waiting = self.queue(service);
        let core = Arc::new(EndpointCore::new(
            service,
            addr,
            Pool::new(addr, pools.data.clone(), Some(pool_wait.clone())),
            // Probes are not data: their waits are not the pool's.
            Pool::new(addr, pools.probe.clone(), None),
            metrics,
            default_latency,
            waiting,
            Arc::downgrade(self),
        ));
        cores.insert(key, Arc::downgrade(&core));
        (core, true)
    }

    /// The live breaker set `id` with `cfg` applied, or a new one. When only the
    /// partition key changed, the new set keeps the endpoint's own breaker (its state
    /// carries over, as every breaker's does on reload) and starts its keys afresh: the
    /// old keys mean nothing under another header. A new set of an endpoint that an
    /// operator forced open starts forced open.
    pub fn breakers(
        self: &Arc<Self>,
        id: BreakerId,
        cfg: &BreakerConfig,
        core: &EndpointCore,
    ) -> Arc<BreakerSet> {
        let wanted = cfg.partition_by.as_ref().map(|PartitionKey::Header(h)| h);
        let mut sets = lock(&self.sets);
        let live = sets.get(&id).and_then(Weak::upgrade);
        if let Some(set) = live.as_ref().filter(|s| s.partition_header() == wanted) {
            let set = set.clone();
            drop(sets);
            set.set_config(cfg);
            return set;
        }
        let metrics = BreakerMetrics::new(
            &self.metrics,
            &id.service,
            &id.endpoint,
            id.route.as_deref().unwrap_or(""),
        );
        let set = Arc::new(BreakerSet::new(
            cfg,
            id.clone(),
            metrics,
            Arc::downgrade(self),
            live.as_ref().map(|s| s.main_shared()),
        ));
        sets.insert(id, Arc::downgrade(&set));
        drop(sets);
        // The replaced set (if any) drops here, after the lock: its drop looks itself up.
        drop(live);
        // Forcing an inherited breaker that is forced already changes nothing (no
        // state change is logged or counted).
        let forced = core
            .is_forced_open()
            .then(|| set.main().force_open())
            .flatten();
        match forced {
            Some(t) => set.on_transition(t, None),
            None => set.metrics.state.set(set.state(Instant::now()).gauge()),
        }
        set
    }

    /// Called by a dropping core: removes its entry when it is still the listed one
    /// (then its series go), else leaves the newer core in place.
    pub(super) fn forget_core(
        &self,
        service: &Arc<str>,
        addr: SocketAddr,
        me: *const EndpointCore,
    ) -> bool {
        let mut cores = lock(&self.cores);
        let key = (service.clone(), addr);
        match cores.get(&key) {
            Some(w) if std::ptr::eq(w.as_ptr(), me) => {
                cores.remove(&key);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// As [`Registry::forget_core`], for a breaker set.
    pub(super) fn forget_breakers(&self, id: &BreakerId, me: *const BreakerSet) -> bool {
        let mut sets = lock(&self.sets);
        match sets.get(id) {
            Some(w) if std::ptr::eq(w.as_ptr(), me) => {
                sets.remove(id);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The client config of upstream `name`: the previous one when its settings and
    /// files are unchanged (so its TLS pools carry over), else a new one.
    pub fn tls_config(
        &self,
        name: &str,
        cfg: Option<&UpstreamTls>,
        h2: bool,
    ) -> Result<Arc<rustls::ClientConfig>, tls::TlsError> {
        let fingerprint = tls::client_fingerprint(cfg, h2);
        if let Some((fp, config)) = lock(&self.tls).get(name) {
            if *fp == fingerprint {
                return Ok(config.clone());
            }
        }
        let config = tls::client_config(cfg, h2)?;
        lock(&self.tls).insert(name.to_owned(), (fingerprint, config.clone()));
        Ok(config)
    }

    /// Live cores and breaker sets (for tests of the carry-over rules).
    pub fn counts(&self) -> (usize, usize) {
        let cores = lock(&self.cores)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count();
        let sets = lock(&self.sets)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count();
        (cores, sets)
    }
}
