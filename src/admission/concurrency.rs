//! The concurrency limit of a route: at most `max_in_flight` requests at once, a
//! bounded wait queue, and 503 `OVERLOADED` past it.
//!
//! Built per route with the snapshot (carried over on reload while its settings stay);
//! touched per request (`acquire`): a semaphore and atomics, nothing awaited while locked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::ConcurrencyConfig;

/// `Retry-After` when shedding (full queue, or a wait past `queue_timeout`): 1 s, the
/// smallest non-zero value the header's whole seconds carry. Shedding reflects this
/// moment's load (queue waits are ~100 ms) and no latency estimate is kept that would
/// found a longer wait; a longer one would leave capacity idle once it frees up.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The concurrency limit of one route: at most `max_in_flight` requests at once; up to
/// `max_queue` more wait, first come first served, for at most `queue_timeout`.
#[derive(Debug)]
pub struct Concurrency {
    /// One permit per slot. tokio's semaphore is fair: a released permit goes to the
    /// oldest waiter, so the queue is FIFO.
    slots: Arc<Semaphore>,
    /// The semaphore's initial permits: `in_flight` = this - available.
    max_in_flight: usize,
    /// Requests waiting now, at most `max_queue`, so parked requests cannot pile up.
    queued: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// An admitted request's slot, freed on drop. Owned (no borrow of the limiter), so it
/// can travel with a streaming response body.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct ConcurrencyPermit {
    _slot: OwnedSemaphorePermit,
}

impl Concurrency {
    /// `max_in_flight` is kept within 1..=`Semaphore::MAX_PERMITS`.
    pub fn new(cfg: &ConcurrencyConfig) -> Concurrency {
        let max_in_flight = cfg.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Concurrency {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queued: AtomicUsize::new(0),
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
        }
    }

    /// Admits the request now or after a wait in the queue. A full queue, or a wait
    /// past `queue_timeout`, returns `Err(OVERLOADED_RETRY_AFTER)`. Dropping the future
    /// while it waits leaves the queue.
    pub async fn acquire(&self) -> Result<ConcurrencyPermit, Duration> {
        // Released permits go to waiters first, so this never overtakes the queue.
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(ConcurrencyPermit { _slot: slot });
        }
        let reserve = |q: usize| (q < self.max_queue).then_some(q + 1);
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, reserve)
            .is_err()
        {
            return Err(OVERLOADED_RETRY_AFTER);
        }
        let _in_queue = QueueSlot(&self.queued);
        let wait = Arc::clone(&self.slots).acquire_owned();
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Ok(slot)) => Ok(ConcurrencyPermit { _slot: slot }),
            // Timed out, or the semaphore was closed (never done here).
            Ok(Err(_)) | Err(_) => Err(OVERLOADED_RETRY_AFTER),
        }
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.slots.available_permits())
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// A place in the queue, given back on drop: admitted, timed out or cancelled.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn concurrency(max_in_flight: usize, max_queue: usize) -> Arc<Concurrency> {
        let queue_timeout = 100 * MS;
        Arc::new(Concurrency::new(&ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout,
        }))
    }

    /// Proves the limit and the queue: two in flight, the third waits and gets in when
    /// one finishes, the fourth (queue full) is refused at once.
    #[tokio::test(start_paused = true)]
    async fn third_waits_for_a_slot_and_fourth_is_refused() {
        let c = concurrency(2, 1);
        let first = c.acquire().await.expect("1st admitted");
        let _second = c.acquire().await.expect("2nd admitted");
        let waiter = Arc::clone(&c);
        let third = tokio::spawn(async move { waiter.acquire().await.map(drop) });
        while c.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((c.in_flight(), c.queued()), (2, 1));
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(drop), Err(OVERLOADED_RETRY_AFTER));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        drop(first);
        assert_eq!(third.await.expect("task"), Ok(()));
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
    }

    /// Proves a queued request is refused after `queue_timeout`, and a cancelled wait
    /// gives its queue place back.
    #[tokio::test(start_paused = true)]
    async fn queued_request_times_out_and_cancelled_waits_leave_the_queue() {
        let c = concurrency(1, 1);
        let _held = c.acquire().await.expect("admitted");
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(drop), Err(OVERLOADED_RETRY_AFTER));
        let waited = started.elapsed();
        assert!(waited >= 100 * MS && waited < 102 * MS, "waited {waited:?}");
        assert!(tokio::time::timeout(10 * MS, c.acquire()).await.is_err());
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
    }
}
