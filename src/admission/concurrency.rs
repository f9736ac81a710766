//! The concurrency limit of a route: at most `max_in_flight` requests at once, up to
//! `max_queue` more waiting (highest priority first, then first come) for at most
//! `queue_timeout`, and 503 `OVERLOADED` past that. A full queue sheds its lowest
//! priority waiter for a more urgent arrival (DESIGN, *Priority*).
//!
//! Built per route with the snapshot (carried over on reload while its settings stay);
//! touched per request (`acquire`, and the permit's drop): one short lock.

use std::sync::Arc;
use std::time::Duration;

use super::queue::{Priority, Shed, WaitQueue};
use crate::config::ConcurrencyConfig;

/// `Retry-After` when shedding (full queue, or a wait past `queue_timeout`): 1 s, the
/// smallest non-zero value the header's whole seconds carry. Shedding reflects this
/// moment's load (queue waits are ~100 ms) and no latency estimate is kept that would
/// found a longer wait; a longer one would leave capacity idle once it frees up.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The concurrency limit of one route.
#[derive(Debug)]
pub struct Concurrency {
    slots: Arc<WaitQueue>,
    /// The limit: `in_flight` = this - free slots.
    max_in_flight: usize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// An admitted request's slot, freed on drop. Owned (no borrow of the limiter), so it
/// can travel with a streaming response body.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct ConcurrencyPermit {
    slots: Arc<WaitQueue>,
}

impl Drop for ConcurrencyPermit {
    fn drop(&mut self) {
        self.slots.release();
    }
}

impl Concurrency {
    /// `max_in_flight` of at least 1 (validation bounds it).
    pub fn new(cfg: &ConcurrencyConfig) -> Concurrency {
        let max_in_flight = cfg.max_in_flight.max(1);
        Concurrency {
            slots: Arc::new(WaitQueue::counting(max_in_flight)),
            max_in_flight,
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
        }
    }

    /// Admits the request now or after a wait in the queue. A full queue (of requests
    /// at least as urgent), or a wait past `queue_timeout`, is `Shed::Overloaded`; being
    /// pushed out by a more urgent request is `Shed::Priority`. Dropping the future
    /// while it waits leaves the queue.
    /// A slot now, or after waiting in the queue for at most `queue_timeout` and
    /// `max_wait` (the request's time left: a queue wait never outlasts its deadline).
    /// A slot at once, when one is free and nobody waits.
    pub fn try_acquire(&self) -> Option<ConcurrencyPermit> {
        self.slots.try_take().then(|| self.permit())
    }

    pub async fn acquire(
        &self,
        priority: Priority,
        max_wait: Duration,
    ) -> Result<ConcurrencyPermit, Shed> {
        if self.slots.try_take() {
            return Ok(self.permit());
        }
        let ticket = self.slots.join(priority, self.max_queue)?;
        ticket.wait(self.queue_timeout.min(max_wait)).await?;
        Ok(self.permit())
    }

    fn permit(&self) -> ConcurrencyPermit {
        ConcurrencyPermit {
            slots: self.slots.clone(),
        }
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight.saturating_sub(self.slots.permits())
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const FOREVER: Duration = Duration::from_secs(86_400);

    fn concurrency(max_in_flight: usize, max_queue: usize) -> Arc<Concurrency> {
        Arc::new(Concurrency::new(&ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout: 100 * MS,
        }))
    }

    /// Proves the limit and the queue: two in flight, the third waits and gets in when
    /// one finishes, the fourth (queue full) is refused at once.
    #[tokio::test(start_paused = true)]
    async fn third_waits_for_a_slot_and_fourth_is_refused() {
        let c = concurrency(2, 1);
        let n = Priority::Normal;
        let first = c.acquire(n, FOREVER).await.expect("1st admitted");
        let _second = c.acquire(n, FOREVER).await.expect("2nd admitted");
        let waiter = Arc::clone(&c);
        let third = tokio::spawn(async move { waiter.acquire(n, FOREVER).await.map(drop) });
        while c.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((c.in_flight(), c.queued()), (2, 1));
        let started = Instant::now();
        assert_eq!(c.acquire(n, FOREVER).await.map(drop), Err(Shed::Overloaded));
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
        let n = Priority::Normal;
        let _held = c.acquire(n, FOREVER).await.expect("admitted");
        let started = Instant::now();
        assert_eq!(c.acquire(n, FOREVER).await.map(drop), Err(Shed::Overloaded));
        let waited = started.elapsed();
        assert!(waited >= 100 * MS && waited < 102 * MS, "waited {waited:?}");
        assert!(tokio::time::timeout(10 * MS, c.acquire(n, FOREVER))
            .await
            .is_err());
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
        // A request with less time left than the queue timeout waits only that long.
        let started = Instant::now();
        assert_eq!(c.acquire(n, 30 * MS).await.map(drop), Err(Shed::Overloaded));
        let waited = started.elapsed();
        assert!(waited >= 30 * MS && waited < 32 * MS, "waited {waited:?}");
    }

    /// Proves priority: with the queue full of `low`, a `critical` request takes a
    /// place (the low one is shed with `Priority`) and is admitted first when a slot
    /// frees, before a `normal` that came earlier.
    #[tokio::test(start_paused = true)]
    async fn the_most_urgent_waiter_goes_first_and_pushes_out_the_least() {
        let c = concurrency(1, 2);
        let held = c
            .acquire(Priority::Normal, FOREVER)
            .await
            .expect("admitted");
        let spawn = |p| {
            let c = Arc::clone(&c);
            tokio::spawn(async move { c.acquire(p, FOREVER).await.map(|permit| (p, permit)) })
        };
        let low = spawn(Priority::Low);
        while c.queued() < 1 {
            tokio::task::yield_now().await;
        }
        let normal = spawn(Priority::Normal);
        while c.queued() < 2 {
            tokio::task::yield_now().await;
        }
        let critical = spawn(Priority::Critical);
        assert_eq!(low.await.expect("task").map(drop), Err(Shed::Priority));
        drop(held);
        let (p, permit) = critical.await.expect("task").expect("admitted");
        assert_eq!(p, Priority::Critical, "critical before the earlier normal");
        drop(permit);
        let (p, _permit) = normal.await.expect("task").expect("admitted");
        assert_eq!(p, Priority::Normal);
    }
}
