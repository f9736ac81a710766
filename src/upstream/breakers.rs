//! The breakers of one endpoint under one breaker policy: a [`BreakerSet`] holds the
//! endpoint's own breaker and, when the policy partitions by a request header, one
//! breaker per key. A policy is the upstream's `circuit_breaker` table (slot 0) or a
//! route's own table (one slot per such route); each set is made once per
//! (upstream, endpoint address, policy) by the [`Registry`](super::registry::Registry)
//! and shared by every snapshot that has it, so admin, metrics and the status page
//! enumerate exactly the breakers requests use.
//!
//! Partitions (DESIGN, *Breaker*): faults of the endpoint itself count on its own
//! breaker and eject it for every key; failure statuses, slow calls and per-attempt
//! timeouts count on the key's breaker. A keyed request needs both to admit it.
//!
//! Touched per request: `main`, `key_breaker`, `available`; reload and admin: the rest.

use std::sync::{Arc, Weak};

use http::{HeaderMap, HeaderName};
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerState, BreakerStats, Rejected, Transition};
use super::partition::PartitionedBreakers;
use super::registry::{BreakerId, Registry};
use crate::config::{BreakerConfig, PartitionKey};
use crate::metrics::BreakerMetrics;

/// One breaker policy of an upstream in one snapshot.
#[derive(Debug, Clone)]
pub struct BreakerPolicy {
    /// The route whose own table this is; `None` for the upstream's table.
    pub route: Option<Arc<str>>,
    pub cfg: BreakerConfig,
}

/// The breakers of one (endpoint, policy).
#[derive(Debug)]
pub struct BreakerSet {
    /// Shared with the set this one replaced when only the partition header changed: the
    /// endpoint's own breaker carries over a reload; only the keys start afresh.
    main: Arc<Breaker>,
    partitions: Option<(HeaderName, PartitionedBreakers)>,
    pub(super) id: BreakerId,
    pub metrics: BreakerMetrics,
    pub(super) registry: Weak<Registry>,
}

impl BreakerSet {
    /// A set with a new breaker of its own, or `main` (with `cfg` applied) when it
    /// replaces a set whose keys mean nothing under the new partition header.
    pub(super) fn new(
        cfg: &BreakerConfig,
        id: BreakerId,
        metrics: BreakerMetrics,
        registry: Weak<Registry>,
        main: Option<Arc<Breaker>>,
    ) -> BreakerSet {
        let main = match main {
            Some(m) => {
                m.set_config(cfg);
                m
            }
            None => Arc::new(Breaker::new(cfg)),
        };
        BreakerSet {
            main,
            partitions: cfg
                .partition_by
                .as_ref()
                .map(|PartitionKey::Header(h)| (h.clone(), PartitionedBreakers::new(cfg))),
            id,
            metrics,
            registry,
        }
    }

    /// The endpoint's own breaker under this policy.
    pub fn main(&self) -> &Breaker {
        &self.main
    }

    /// The endpoint's own breaker, for a set that replaces this one.
    pub(super) fn main_shared(&self) -> Arc<Breaker> {
        self.main.clone()
    }

    /// The per-key table, with the header it is keyed by.
    pub fn partitions(&self) -> Option<&PartitionedBreakers> {
        self.partitions.as_ref().map(|(_, p)| p)
    }

    /// The header this set is partitioned by.
    pub fn partition_header(&self) -> Option<&HeaderName> {
        self.partitions.as_ref().map(|(h, _)| h)
    }

    /// The route owning this policy (`None`: the upstream's own).
    pub fn route(&self) -> Option<&str> {
        self.id.route.as_deref().filter(|r| !r.is_empty())
    }

    /// The key's breaker for a request with these headers (made on first use), and the
    /// key; `None` when the set is not partitioned or the request has no key.
    pub fn key_breaker<'h>(&self, headers: &'h HeaderMap) -> Option<(Arc<Breaker>, &'h [u8])> {
        let (name, parts) = self.partitions.as_ref()?;
        let v = headers.get(name)?.as_bytes();
        Some((parts.get(v), v))
    }

    /// Whether a request with these headers would be admitted now: the endpoint's own
    /// breaker and, for a keyed request, its key's (a key without a breaker yet is
    /// closed; looking does not make one).
    pub fn available(&self, headers: &HeaderMap, now: Instant) -> bool {
        if !self.main.is_available(now) {
            return false;
        }
        match &self.partitions {
            Some((name, parts)) => match headers.get(name) {
                Some(v) => parts.peek(v.as_bytes()).is_none_or(|b| b.is_available(now)),
                None => true,
            },
            None => true,
        }
    }

    /// What this set would refuse a request with these headers with (`None`: admits):
    /// the longer wait of the endpoint's breaker and the key's.
    pub fn rejection(&self, headers: &HeaderMap, now: Instant) -> Option<Rejected> {
        let main = self.main.rejection(now);
        let key = self.partitions.as_ref().and_then(|(name, parts)| {
            let v = headers.get(name)?;
            parts.peek(v.as_bytes())?.rejection(now)
        });
        match (main, key) {
            (Some(a), Some(b)) => Some(if b.retry_after > a.retry_after && !a.forced {
                b
            } else {
                a
            }),
            (a, b) => a.or(b),
        }
    }

    /// New settings on reload; state is kept (a smaller `max_partitions` drops the
    /// least recently used keys).
    pub fn set_config(&self, cfg: &BreakerConfig) {
        self.main.set_config(cfg);
        if let Some((_, p)) = &self.partitions {
            p.set_config(cfg);
        }
    }

    /// Closes the endpoint's breaker and every key's; returns the changes made (each
    /// logged and counted).
    pub fn reset(&self) -> usize {
        let mut changed = 0;
        if let Some(t) = self.main.reset() {
            self.on_transition(t, None);
            changed += 1;
        }
        if let Some((_, parts)) = &self.partitions {
            for (key, t) in parts.reset_all() {
                self.on_transition(t, Some(&key));
                changed += 1;
            }
        }
        changed
    }

    /// The state of the endpoint's own breaker as observed now.
    pub fn state(&self, now: Instant) -> BreakerState {
        self.main.state(now)
    }

    pub fn stats(&self, now: Instant) -> BreakerStats {
        self.main.stats(now)
    }

    /// Logs a state change as its own line and updates this set's metrics. Changes of
    /// a key's breaker are logged with the key and counted; the state gauge follows
    /// the endpoint's own breaker.
    pub fn on_transition(&self, t: Transition, key: Option<&[u8]>) {
        let idx = match t.to {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        self.metrics.changes[idx].inc();
        let route = self.route().unwrap_or("");
        match key {
            None => {
                self.metrics.state.set(t.to.gauge());
                tracing::warn!(
                    event = "circuit_breaker_state_change",
                    upstream = %self.id.service,
                    endpoint = %self.id.endpoint,
                    route,
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker {}", t.to.as_str()
                );
            }
            Some(k) => {
                tracing::warn!(
                    event = "circuit_breaker_state_change",
                    upstream = %self.id.service,
                    endpoint = %self.id.endpoint,
                    route,
                    partition = %String::from_utf8_lossy(k),
                    from = t.from.as_str(),
                    to = t.to.as_str(),
                    "circuit breaker {}", t.to.as_str()
                );
            }
        }
    }
}

impl Drop for BreakerSet {
    fn drop(&mut self) {
        let ours = match self.registry.upgrade() {
            Some(reg) => reg.forget_breakers(&self.id, self as *const _),
            None => true,
        };
        if ours {
            self.metrics.remove();
        }
    }
}
