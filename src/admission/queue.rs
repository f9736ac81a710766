//! A bounded wait queue ordered by request priority (`X-Priority: critical | high |
//! normal | low`), then by arrival, with the capacity it guards. Waiters are woken one
//! at a time, highest priority first, when capacity frees up: a counted queue hands
//! the freed slot itself to the waiter (a route's `max_in_flight`); an uncounted one
//! wakes it to try again (an upstream whose endpoints' adaptive limits were full). A request that finds the queue at its bound takes the
//! place of the lowest-priority waiter when it outranks it (that waiter is shed:
//! `reason="priority"`), and is refused on arrival otherwise (`reason="overloaded"`).
//!
//! Hand-written: tokio's semaphore queues first come first served only, and no crate
//! offers priority order with eviction of the lowest waiter. One short lock per join,
//! wake and leave; nothing is awaited while it is held.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

/// A request's priority; the default is `Normal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
    Critical,
}

impl Priority {
    /// The header value (case-insensitive); anything else is `Normal`.
    pub fn parse(v: &[u8]) -> Priority {
        let is = |s: &str| v.eq_ignore_ascii_case(s.as_bytes());
        if is("critical") {
            Priority::Critical
        } else if is("high") {
            Priority::High
        } else if is("low") {
            Priority::Low
        } else {
            Priority::Normal
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// Why a queued request did not get in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Refused on arrival (full of equal or higher priority), or waited past its time.
    Overloaded,
    /// Pushed out of a full queue by a request of higher priority.
    Priority,
}

/// Ordering key: highest priority first, then oldest.
type Key = (std::cmp::Reverse<Priority>, u64);

#[derive(Debug)]
enum Wake {
    Go,
    Shed,
}

/// The queue.
#[derive(Debug, Default)]
pub struct WaitQueue {
    state: Mutex<State>,
    /// Slots are counted here (`permits`) and handed over on release.
    counting: bool,
}

#[derive(Debug, Default)]
struct State {
    waiters: BTreeMap<Key, oneshot::Sender<Wake>>,
    next: u64,
    /// Free slots of a counting queue.
    permits: usize,
}

/// A place in the queue; leaving (drop) frees it.
#[derive(Debug)]
pub struct Ticket<'a> {
    queue: &'a WaitQueue,
    key: Key,
    rx: oneshot::Receiver<Wake>,
}

impl WaitQueue {
    /// A queue that wakes waiters to try again (the capacity is counted elsewhere).
    pub fn new() -> WaitQueue {
        WaitQueue::default()
    }

    /// A queue guarding `permits` slots, handed from a releaser to a waiter.
    pub fn counting(permits: usize) -> WaitQueue {
        WaitQueue {
            state: Mutex::new(State {
                permits,
                ..State::default()
            }),
            counting: true,
        }
    }

    /// Takes a free slot at once, when one is free and nobody waits for it.
    pub fn try_take(&self) -> bool {
        let mut s = self.lock();
        if self.counting && s.permits > 0 && s.waiters.is_empty() {
            s.permits -= 1;
            return true;
        }
        false
    }

    /// Free slots of a counting queue.
    pub fn permits(&self) -> usize {
        self.lock().permits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No critical section here panics; a poisoned queue is still a valid queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waiters now.
    pub fn len(&self) -> usize {
        self.lock().waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waiters that would be woken before a new request of `priority`.
    pub fn ahead_of(&self, priority: Priority) -> usize {
        self.lock()
            .waiters
            .keys()
            .take_while(|(p, _)| p.0 >= priority)
            .count()
    }

    /// Joins with `priority` into a queue of at most `max` waiters. When it is full,
    /// the lowest-priority waiter is shed if `priority` outranks it; otherwise the
    /// join is refused.
    pub fn join(&self, priority: Priority, max: usize) -> Result<Ticket<'_>, Shed> {
        self.join_at(priority, max, None)
    }

    /// As [`WaitQueue::join`], back at the place `seq` (a [`Ticket::seq`]) when
    /// given: a request woken for capacity it could not use waits on from where it
    /// was, not behind those who came after it.
    pub fn join_at(
        &self,
        priority: Priority,
        max: usize,
        seq: Option<u64>,
    ) -> Result<Ticket<'_>, Shed> {
        let mut s = self.lock();
        if s.waiters.len() >= max {
            let lowest = s.waiters.keys().next_back().copied();
            match lowest {
                Some(k) if k.0 .0 < priority => {
                    if let Some(tx) = s.waiters.remove(&k) {
                        let _ = tx.send(Wake::Shed);
                    }
                }
                _ => return Err(Shed::Overloaded),
            }
        }
        let key = match seq {
            Some(seq) => (std::cmp::Reverse(priority), seq),
            None => {
                s.next += 1;
                (std::cmp::Reverse(priority), s.next - 1)
            }
        };
        let (tx, rx) = oneshot::channel();
        s.waiters.insert(key, tx);
        Ok(Ticket {
            queue: self,
            key,
            rx,
        })
    }

    /// Capacity freed up: the first waiter still waiting gets it (a counting queue's
    /// slot goes back to the free ones when nobody waits). False when nobody was woken.
    pub fn release(&self) -> bool {
        let mut s = self.lock();
        while let Some((_, tx)) = s.waiters.pop_first() {
            if tx.send(Wake::Go).is_ok() {
                return true;
            }
        }
        if self.counting {
            s.permits += 1;
        }
        false
    }
}

impl WaitQueue {
    /// A request woken at place (`priority`, `seq`) could not use the capacity (it
    /// is not for the endpoints its key's breakers or its deadline allow): the first
    /// waiter behind it is woken instead, so the wake is not lost. A wake only moves
    /// back through the queue, never to the passer or those ahead of it: bounded.
    pub fn pass_on(&self, priority: Priority, seq: u64) -> bool {
        use std::ops::Bound::{Excluded, Unbounded};
        let mut s = self.lock();
        let after = (std::cmp::Reverse(priority), seq);
        loop {
            let Some(k) = s
                .waiters
                .range((Excluded(after), Unbounded))
                .next()
                .map(|(k, _)| *k)
            else {
                return false;
            };
            if let Some(tx) = s.waiters.remove(&k) {
                if tx.send(Wake::Go).is_ok() {
                    return true;
                }
            }
        }
    }
}

impl Ticket<'_> {
    /// Its place, for [`WaitQueue::join_at`].
    pub fn seq(&self) -> u64 {
        self.key.1
    }

    /// Waits to be woken, at most `timeout`. `Ok`: a counting queue's slot is now the
    /// caller's (give it back with [`WaitQueue::release`]).
    pub async fn wait(mut self, timeout: Duration) -> Result<(), Shed> {
        let woken = match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(w)) => Some(w),
            Ok(Err(_)) => None,
            // A wake that came just as the time ran out still counts.
            Err(_) => self.rx.try_recv().ok(),
        };
        match woken {
            Some(Wake::Go) => {
                self.rx.close();
                Ok(())
            }
            Some(Wake::Shed) => Err(Shed::Priority),
            None => Err(Shed::Overloaded),
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        // Still queued (timed out, cancelled, or leaving on its own): free the place.
        self.queue.lock().waiters.remove(&self.key);
        // Woken but gone before taking it (a cancelled request): pass the wake on, so
        // a handed-over slot is not lost.
        if let Ok(Wake::Go) = self.rx.try_recv() {
            self.queue.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn priorities_parse_with_normal_as_default() {
        assert_eq!(Priority::parse(b"Critical"), Priority::Critical);
        assert_eq!(Priority::parse(b"HIGH"), Priority::High);
        assert_eq!(Priority::parse(b"low"), Priority::Low);
        assert_eq!(Priority::parse(b"urgent"), Priority::Normal);
        assert!(Priority::Critical > Priority::High && Priority::Normal > Priority::Low);
    }

    /// Proves the order: highest priority first, then arrival; each release wakes
    /// exactly the next one.
    #[tokio::test(start_paused = true)]
    async fn wakes_highest_priority_then_oldest() {
        let q = WaitQueue::new();
        let low = q.join(Priority::Low, 10).expect("joined");
        let n1 = q.join(Priority::Normal, 10).expect("joined");
        let crit = q.join(Priority::Critical, 10).expect("joined");
        let n2 = q.join(Priority::Normal, 10).expect("joined");
        assert_eq!(q.ahead_of(Priority::Normal), 3);
        assert_eq!(q.ahead_of(Priority::Critical), 1);
        let mut pending = vec![("crit", crit), ("n1", n1), ("n2", n2), ("low", low)];
        while !pending.is_empty() {
            assert!(q.release());
            let (name, first) = pending.remove(0);
            assert_eq!(first.wait(MS).await, Ok(()), "{name} is next");
            for (other, t) in pending.iter_mut() {
                assert!(t.rx.try_recv().is_err(), "{other} was not woken yet");
            }
        }
        assert!(!q.release());
        assert!(q.is_empty());
    }

    /// Proves a counting queue hands a released slot to the waiter, returns it to the
    /// free slots when nobody waits, and passes on a slot handed to a cancelled waiter.
    #[tokio::test(start_paused = true)]
    async fn a_counting_queue_hands_slots_over_and_never_loses_one() {
        let q = WaitQueue::counting(1);
        assert!(q.try_take());
        assert!(!q.try_take());
        let a = q.join(Priority::Normal, 10).expect("joined");
        let b = q.join(Priority::Normal, 10).expect("joined");
        assert!(q.release(), "handed to a");
        drop(a); // cancelled after being handed the slot: it goes to b
        assert_eq!(b.wait(MS).await, Ok(()));
        assert_eq!(q.permits(), 0, "b holds it");
        assert!(!q.release(), "nobody waits");
        assert_eq!(q.permits(), 1);
    }

    /// Proves shedding at the bound: a higher priority pushes out the lowest waiter
    /// (it gets `Priority`), an equal or lower one is refused (`Overloaded`), and a
    /// waiter that times out leaves its place.
    #[tokio::test(start_paused = true)]
    async fn a_full_queue_sheds_its_lowest_for_a_higher_priority() {
        let q = WaitQueue::new();
        let low = q.join(Priority::Low, 2).expect("joined");
        let normal = q.join(Priority::Normal, 2).expect("joined");
        assert_eq!(q.join(Priority::Low, 2).err(), Some(Shed::Overloaded));
        let crit = q.join(Priority::Critical, 2).expect("took low's place");
        assert_eq!(low.wait(MS).await, Err(Shed::Priority));
        assert_eq!(q.join(Priority::Normal, 2).err(), Some(Shed::Overloaded));
        assert_eq!(
            normal.wait(10 * MS).await,
            Err(Shed::Overloaded),
            "timed out"
        );
        assert_eq!(q.len(), 1);
        drop(crit);
        assert!(q.is_empty());
    }
}
