//! Endpoint choice per attempt: round_robin, least_request (power of two choices on the
//! in-flight count), peak_ewma (power of two choices on the cost of `load.rs`: peak-EWMA
//! latency x (in flight + 1), scaled by reported load), random and weighted. Every policy skips endpoints that cannot take a
//! request now (breaker open, failing health checks) and, on a retry, prefers one not yet
//! tried. Lock-free: one atomic counter per upstream and the endpoints' own atomics.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;

use super::Endpoint;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{LoadBalancing, PeakEwmaConfig};

/// Which endpoints (by index in the request's pinned list) an attempt loop already
/// tried: one word for up to 64 endpoints, a heap bitset beyond.
#[derive(Debug, Clone)]
pub enum Tried {
    Small(u64),
    Large(Vec<u64>),
}

impl Default for Tried {
    fn default() -> Self {
        Tried::Small(0)
    }
}

impl Tried {
    /// An empty set for a list of `n` endpoints.
    pub fn for_len(n: usize) -> Tried {
        if n <= 64 {
            Tried::Small(0)
        } else {
            Tried::Large(vec![0; n.div_ceil(64)])
        }
    }

    pub fn add(&mut self, i: usize) {
        match self {
            Tried::Small(w) if i < 64 => *w |= 1 << i,
            Tried::Large(ws) if i / 64 < ws.len() => ws[i / 64] |= 1 << (i % 64),
            _ => {}
        }
    }

    pub fn has(&self, i: usize) -> bool {
        match self {
            Tried::Small(w) => i < 64 && w & (1 << i) != 0,
            Tried::Large(ws) => ws.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0),
        }
    }
}

#[derive(Debug)]
pub struct Balancer {
    policy: LoadBalancing,
    next: AtomicUsize,
    /// `peak_ewma`'s settings: the decay of the estimate and the latency assumed for an
    /// endpoint without samples.
    decay: Duration,
    default_latency: Duration,
}

impl Balancer {
    pub fn new(policy: LoadBalancing, ewma: &PeakEwmaConfig) -> Self {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
            decay: ewma.decay,
            default_latency: ewma.default_latency,
        }
    }

    /// The index of the endpoint for the next attempt, or `None` when no endpoint can
    /// take a request. `ok(ep)` says whether an endpoint may be picked now.
    pub fn pick(
        &self,
        eps: &[Arc<Endpoint>],
        tried: &Tried,
        now: Instant,
        ok: impl Fn(&Endpoint) -> bool,
    ) -> Option<usize> {
        let n = eps.len();
        if n == 0 {
            return None;
        }
        // Where the rotation starts, read once per pick (and given back when nothing
        // is found): were the counter advanced for each pass, a retry after every
        // endpoint was tried would land on the same parity each time (A, B, B, B with
        // two endpoints) instead of alternating.
        let start = match self.policy {
            LoadBalancing::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed),
            LoadBalancing::Weighted => {
                let total: usize = eps.iter().map(|e| e.weight as usize).sum();
                let pick_no = self.next.fetch_add(1, Ordering::Relaxed);
                let mut k = weyl_slot(pick_no, total);
                let mut start = 0;
                for (i, e) in eps.iter().enumerate() {
                    if k < e.weight as usize {
                        start = i;
                        break;
                    }
                    k -= e.weight as usize;
                }
                start
            }
            _ => 0,
        };
        // First pass prefers endpoints not yet tried; the second takes any that admits.
        for allow_tried in [false, true] {
            let usable = |i: usize| (allow_tried || !tried.has(i)) && ok(&eps[i]);
            let found = match self.policy {
                LoadBalancing::RoundRobin | LoadBalancing::Weighted => scan(n, start, &usable),
                LoadBalancing::Random => scan(n, rand::thread_rng().gen_range(0..n), &usable),
                LoadBalancing::LeastRequest => {
                    two_choices(eps, &usable, |e: &Endpoint| e.in_flight() as f64)
                }
                LoadBalancing::PeakEwma => {
                    let cost = |e: &Endpoint| {
                        // With an adaptive limit, load counts in units of it.
                        let scale = e.core.limit().map_or(1.0, |l| l.max(1) as f64);
                        e.core.load.cost(
                            e.in_flight(),
                            scale,
                            now,
                            self.decay,
                            self.default_latency,
                        )
                    };
                    two_choices(eps, &usable, cost)
                }
            };
            if found.is_some() {
                return found;
            }
        }
        // Nothing admits: this pick took no turn (the caller may pick again with a
        // looser filter, which must not land on the same parity every time).
        if matches!(
            self.policy,
            LoadBalancing::RoundRobin | LoadBalancing::Weighted
        ) {
            self.next.fetch_sub(1, Ordering::Relaxed);
        }
        None
    }
}

/// The slot in `0..total` of weighted pick number `n`: the golden-ratio (Weyl)
/// sequence `frac(n x 0.618...)`, in 64-bit fixed point so it stays exact however many
/// picks were made. Each pick lands in the largest gap the previous ones left, so over
/// any stretch of picks the shares follow the weights, interleaved as nginx's smooth
/// weighted round robin interleaves them, with one atomic counter and no lock or
/// per-endpoint state. (`n % total` gave each endpoint `weight` picks in a row: with
/// weights 100 and 100, the first hundred requests all went to one endpoint.)
fn weyl_slot(n: usize, total: usize) -> usize {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15; // 2^64 / golden ratio
    let x = (n as u64).wrapping_mul(GOLDEN);
    ((u128::from(x) * total as u128) >> 64) as usize
}

fn scan(n: usize, start: usize, usable: &impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
}

/// Power of two choices: two distinct random endpoints, the cheaper wins (ties go to
/// the first drawn). When either sample is unusable, fall back to a full scan for the
/// cheapest usable endpoint (rare: only while breakers or limits refuse).
fn two_choices(
    eps: &[Arc<Endpoint>],
    usable: &impl Fn(usize) -> bool,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<usize> {
    let n = eps.len();
    if n == 1 {
        return usable(0).then_some(0);
    }
    let mut rng = rand::thread_rng();
    let a = rng.gen_range(0..n);
    let b = (a + rng.gen_range(1..n)) % n;
    if usable(a) && usable(b) {
        let (ca, cb) = (cost(&eps[a]), cost(&eps[b]));
        return Some(if cb < ca { b } else { a });
    }
    (0..n)
        .filter(|&i| usable(i))
        .min_by(|&i, &j| cost(&eps[i]).total_cmp(&cost(&eps[j])))
}

#[cfg(test)]
mod tests {
    use super::weyl_slot;

    /// The endpoint of slot `k` for `weights` (the walk `pick` makes).
    fn endpoint(weights: &[usize], mut k: usize) -> usize {
        for (i, w) in weights.iter().enumerate() {
            if k < *w {
                return i;
            }
            k -= w;
        }
        unreachable!("slot {k} past the weights")
    }

    fn counts(weights: &[usize], picks: std::ops::Range<usize>) -> Vec<usize> {
        let total = weights.iter().sum();
        let mut c = vec![0; weights.len()];
        for n in picks {
            c[endpoint(weights, weyl_slot(n, total))] += 1;
        }
        c
    }

    /// Proves weighted picks interleave and follow the weights over short stretches,
    /// wherever the counter is: equal weights of 100 split any 20 picks 8-12 each (the
    /// old `n % total` walk gave one endpoint the first 100); weights 1 and 3 split 400
    /// picks 100 / 300 within 2; three endpoints of 1, 2, 7 over 1,000 picks within 1 %.
    #[test]
    fn weighted_picks_interleave_and_follow_the_weights() {
        for start in [0, 7, 1_000_003, usize::MAX / 3] {
            let c = counts(&[100, 100], start..start + 20);
            assert!(c.iter().all(|x| (8..=12).contains(x)), "{start}: {c:?}");
            let c = counts(&[1, 3], start..start + 400);
            assert!(c[0].abs_diff(100) <= 2, "{start}: {c:?}");
            let c = counts(&[1, 2, 7], start..start + 1000);
            for (got, want) in c.iter().zip([100, 200, 700]) {
                assert!(got.abs_diff(want) <= 10, "{start}: {c:?}");
            }
        }
    }
}
