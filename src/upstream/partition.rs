//! Breakers partitioned by a request key (`partition_by = "header:X"`): one breaker per
//! (endpoint, key), so one broken camera stream fails fast without cutting the other
//! cameras off that endpoint.
//!
//! One [`PartitionedBreakers`] per endpoint holds a bounded LRU table (crate `lru`) of
//! key -> breaker, at most `max_partitions` keys; the least recently used key is dropped
//! (its breaker forgotten, so a dropped key starts closed if it comes back). Requests
//! without the header use the endpoint's unpartitioned breaker, which the caller keeps.
//!
//! Touched per request (`get`: one short lock, an allocation only for a new key);
//! `set_config` on reload; `snapshot` and `reset_all` from the admin API.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lru::LruCache;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerStats, Transition};
use crate::config::BreakerConfig;

/// Longest key kept, in bytes; longer header values are cut to this, so keys sharing
/// their first 256 bytes share a breaker. Bounds the table's memory at
/// `max_partitions * 256` bytes of keys even when clients send huge header values.
pub const MAX_KEY_BYTES: usize = 256;

/// The per-key breakers of one endpoint.
#[derive(Debug)]
pub struct PartitionedBreakers {
    inner: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    /// Settings given to breakers made from now on (and to all on `set_config`).
    cfg: BreakerConfig,
    breakers: LruCache<Box<[u8]>, Arc<Breaker>>,
}

impl PartitionedBreakers {
    /// A table of at most `cfg.max_partitions` keys (0 acts as 1).
    pub fn new(cfg: &BreakerConfig) -> PartitionedBreakers {
        PartitionedBreakers {
            inner: Mutex::new(Table {
                cfg: cfg.clone(),
                breakers: table(cfg),
            }),
        }
    }

    /// The breaker of `key` (the header value), made on first use; marks it recently used.
    pub fn get(&self, key: &[u8]) -> Arc<Breaker> {
        let key = &key[..key.len().min(MAX_KEY_BYTES)];
        let mut table = self.lock();
        if let Some(breaker) = table.breakers.get(key) {
            return Arc::clone(breaker);
        }
        let breaker = Arc::new(Breaker::new(&table.cfg));
        table.breakers.put(key.into(), Arc::clone(&breaker));
        breaker
    }

    /// The breaker of `key` if it has one, without making one or marking it used.
    pub fn peek(&self, key: &[u8]) -> Option<Arc<Breaker>> {
        let key = &key[..key.len().min(MAX_KEY_BYTES)];
        self.lock().breakers.peek(key).cloned()
    }

    /// Keys held now (never more than `max_partitions`).
    pub fn len(&self) -> usize {
        self.lock().breakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resets every key's breaker; returns the changes made with their keys, for the
    /// caller to log.
    pub fn reset_all(&self) -> Vec<(Box<[u8]>, Transition)> {
        self.breakers()
            .into_iter()
            .filter_map(|(key, breaker)| breaker.reset().map(|t| (key, t)))
            .collect()
    }

    /// Every key (lossy UTF-8) with its breaker's stats, most recently used first.
    pub fn snapshot(&self, now: Instant) -> Vec<(String, BreakerStats)> {
        self.breakers()
            .iter()
            .map(|(key, breaker)| {
                (
                    String::from_utf8_lossy(key).into_owned(),
                    breaker.stats(now),
                )
            })
            .collect()
    }

    /// Takes new settings on reload: every breaker keeps its state; a smaller
    /// `max_partitions` drops the least recently used keys.
    pub fn set_config(&self, cfg: &BreakerConfig) {
        let mut table = self.lock();
        table.cfg = cfg.clone();
        table.breakers.resize(capacity(cfg));
        for (_, breaker) in table.breakers.iter() {
            breaker.set_config(cfg);
        }
    }

    /// The keys and breakers, copied out so the lock is not held while they are read.
    fn breakers(&self) -> Vec<(Box<[u8]>, Arc<Breaker>)> {
        let table = self.lock();
        table
            .breakers
            .iter()
            .map(|(key, breaker)| (key.clone(), Arc::clone(breaker)))
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // No critical section here panics; a poisoned table is still a valid table.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An empty table capped at `max_partitions`. Not `LruCache::new`, which reserves room
/// for every key up front (a large `max_partitions` would allocate it all at start);
/// this one grows up to the cap.
fn table(cfg: &BreakerConfig) -> LruCache<Box<[u8]>, Arc<Breaker>> {
    let mut t = LruCache::unbounded();
    t.resize(capacity(cfg));
    t
}

fn capacity(cfg: &BreakerConfig) -> NonZeroUsize {
    NonZeroUsize::new(cfg.max_partitions).unwrap_or(NonZeroUsize::MIN)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::upstream::breaker::{BreakerState, Outcome};

    fn cfg(max_partitions: usize) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 1,
            success_threshold: 1,
            max_partitions,
            jitter: false,
            ..BreakerConfig::default()
        }
    }

    fn trip(breaker: &Breaker, now: Instant) {
        let permit = breaker.try_acquire(now).expect("closed breaker admits");
        breaker.record(permit, Outcome::failure(Duration::ZERO), now);
    }

    #[test]
    fn a_broken_key_does_not_open_the_others() {
        let table = PartitionedBreakers::new(&cfg(10));
        let now = Instant::now();
        trip(&table.get(b"cam-1"), now);
        assert_eq!(table.get(b"cam-1").state(now), BreakerState::Open);
        assert_eq!(table.get(b"cam-2").state(now), BreakerState::Closed);
        assert!(Arc::ptr_eq(&table.get(b"cam-1"), &table.get(b"cam-1")));
    }

    #[test]
    fn key_spraying_never_grows_past_max_partitions() {
        let table = PartitionedBreakers::new(&cfg(1000));
        for i in 0..100_000u32 {
            table.get(&i.to_be_bytes());
            assert!(table.len() <= 1000);
        }
        assert_eq!(table.len(), 1000);
        // The most recent keys survived, the oldest were dropped.
        assert!(table.peek(&99_999u32.to_be_bytes()).is_some());
        assert!(table.peek(&0u32.to_be_bytes()).is_none());
    }

    #[test]
    fn least_recently_used_key_is_dropped() {
        let table = PartitionedBreakers::new(&cfg(2));
        let now = Instant::now();
        trip(&table.get(b"a"), now);
        table.get(b"b");
        table.get(b"a"); // a is now the most recently used
        table.get(b"c"); // drops b
        assert!(table.peek(b"b").is_none());
        assert_eq!(
            table.peek(b"a").map(|b| b.state(now)),
            Some(BreakerState::Open)
        );
    }

    #[test]
    fn long_keys_are_cut_and_zero_capacity_acts_as_one() {
        let table = PartitionedBreakers::new(&cfg(0));
        let long = vec![b'x'; 10_000];
        let mut longer = long.clone();
        longer.push(b'y');
        assert!(Arc::ptr_eq(&table.get(&long), &table.get(&longer)));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reset_all_closes_every_key_and_snapshot_lists_them() {
        let table = PartitionedBreakers::new(&cfg(10));
        let now = Instant::now();
        trip(&table.get(b"a"), now);
        trip(&table.get(b"b"), now);
        table.get(b"c");
        let snap = table.snapshot(now);
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].0, "c");
        assert_eq!(
            snap.iter()
                .filter(|(_, s)| s.state == BreakerState::Open)
                .count(),
            2
        );
        let reset = table.reset_all();
        assert_eq!(reset.len(), 2);
        assert!(reset.iter().all(|(k, _)| &**k == b"a" || &**k == b"b"));
        assert!(table
            .snapshot(now)
            .iter()
            .all(|(_, s)| s.state == BreakerState::Closed));
    }

    #[test]
    fn set_config_keeps_state_and_shrinks_the_table() {
        let table = PartitionedBreakers::new(&cfg(10));
        let now = Instant::now();
        table.get(b"a");
        table.get(b"b");
        trip(&table.get(b"c"), now);
        let mut smaller = cfg(2);
        smaller.failure_threshold = 5;
        table.set_config(&smaller);
        assert_eq!(table.len(), 2);
        assert!(
            table.peek(b"a").is_none(),
            "the least recently used key went"
        );
        assert_eq!(table.get(b"c").state(now), BreakerState::Open, "state kept");
        // New settings reach existing breakers: one failure no longer opens b.
        let b = table.get(b"b");
        trip(&b, now);
        assert_eq!(b.state(now), BreakerState::Closed);
    }
}
