//! Quantiles of one second's observations from the deltas of a Prometheus histogram's
//! cumulative bucket counts, estimated as PromQL's `histogram_quantile` does: find the
//! bucket holding the rank, interpolate linearly inside it (the first bucket starts at
//! 0), and answer the highest finite bound when the rank falls in the `+Inf` bucket.

/// A histogram's counts over one interval: `cumulative[i]` observations at or below
/// `bounds[i]` (the finite upper bounds, ascending), `total` in all (the `+Inf` bucket).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Counts {
    pub(super) cumulative: Vec<u64>,
    pub(super) total: u64,
}

impl Counts {
    /// Cumulative counts `cur` minus an earlier reading `prev` of the same histogram. A
    /// count that went down means the series was reset (removed and made anew):
    /// everything in `cur` is new then, as Prometheus' `rate()` assumes.
    pub(super) fn delta(cur: &Counts, prev: &Counts) -> Counts {
        let reset = cur.total < prev.total
            || cur.cumulative.len() != prev.cumulative.len()
            || cur
                .cumulative
                .iter()
                .zip(&prev.cumulative)
                .any(|(c, p)| c < p);
        if reset {
            return cur.clone();
        }
        Counts {
            cumulative: cur
                .cumulative
                .iter()
                .zip(&prev.cumulative)
                .map(|(c, p)| c - p)
                .collect(),
            total: cur.total - prev.total,
        }
    }

    /// Adds another histogram's counts with the same bounds (a missing bucket list is
    /// taken as this one's shape).
    pub(super) fn add(&mut self, other: &Counts) {
        if self.cumulative.len() < other.cumulative.len() {
            self.cumulative.resize(other.cumulative.len(), 0);
        }
        for (a, b) in self.cumulative.iter_mut().zip(&other.cumulative) {
            *a += b;
        }
        self.total += other.total;
    }
}

/// The `q`-quantile (0..=1) of the observations in `counts`, in the unit of `bounds`;
/// `None` when there were none.
pub(super) fn quantile(q: f64, bounds: &[f64], counts: &Counts) -> Option<f64> {
    if counts.total == 0 || bounds.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let n = bounds.len().min(counts.cumulative.len());
    let rank = q * counts.total as f64;
    // The first finite bucket whose cumulative count reaches the rank, if any.
    let Some(b) = (0..n).find(|&i| counts.cumulative[i] as f64 >= rank) else {
        // In the +Inf bucket: the highest finite bound is all that is known.
        return Some(bounds[n.saturating_sub(1)]);
    };
    let end = bounds[b];
    if b == 0 && end <= 0.0 {
        return Some(end);
    }
    let (start, below) = if b == 0 {
        (0.0, 0)
    } else {
        (bounds[b - 1], counts.cumulative[b - 1])
    };
    let in_bucket = counts.cumulative[b] - below;
    if in_bucket == 0 {
        return Some(start);
    }
    Some(start + (end - start) * (rank - below as f64) / in_bucket as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: &[f64] = &[0.1, 0.2, 0.5, 1.0];

    fn counts(cumulative: &[u64], total: u64) -> Counts {
        Counts {
            cumulative: cumulative.to_vec(),
            total,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn interpolates_within_the_bucket_like_histogram_quantile() {
        // 10 observations: 4 in (0, 0.1], 4 in (0.1, 0.2], 2 in (0.2, 0.5].
        let c = counts(&[4, 8, 10, 10], 10);
        // rank 5 is the 1st of 4 in (0.1, 0.2]: 0.1 + 0.1 * 1/4.
        assert!(close(quantile(0.5, BOUNDS, &c), 0.125));
        // rank 9.9: 1.9 of 2 into (0.2, 0.5]: 0.2 + 0.3 * 0.95.
        assert!(close(quantile(0.99, BOUNDS, &c), 0.485));
        // The first bucket starts at 0: rank 2 of 4 -> 0.05.
        assert!(close(quantile(0.2, BOUNDS, &c), 0.05));
        assert!(close(quantile(1.0, BOUNDS, &c), 0.5));
        assert!(close(quantile(0.0, BOUNDS, &c), 0.0));
    }

    #[test]
    fn rank_in_the_inf_bucket_answers_the_highest_finite_bound() {
        let c = counts(&[1, 1, 1, 1], 10);
        assert!(close(quantile(0.99, BOUNDS, &c), 1.0));
        assert!(close(quantile(0.05, BOUNDS, &c), 0.05));
    }

    #[test]
    fn nothing_observed_is_none() {
        assert_eq!(quantile(0.5, BOUNDS, &counts(&[0, 0, 0, 0], 0)), None);
        assert_eq!(quantile(0.5, &[], &counts(&[], 3)), None);
    }

    #[test]
    fn a_single_observation_lands_inside_its_bucket() {
        let c = counts(&[0, 0, 1, 1], 1);
        let p50 = quantile(0.5, BOUNDS, &c).unwrap_or(f64::NAN);
        assert!((0.2..=0.5).contains(&p50), "{p50}");
        assert!(close(quantile(0.99, BOUNDS, &c), 0.2 + 0.3 * 0.99));
    }

    #[test]
    fn deltas_of_cumulative_readings() {
        let prev = counts(&[4, 8, 10, 10], 10);
        let cur = counts(&[5, 9, 12, 14], 15);
        let d = Counts::delta(&cur, &prev);
        assert_eq!(d, counts(&[1, 1, 2, 4], 5));
        // Of these 5: 1 <= 0.1, 1 in (0.2, 0.5], 2 in (0.5, 1], 1 above 1. Rank 2.5 is
        // half-way into (0.5, 1]'s two: 0.5 + 0.5 * 0.5 / 2.
        assert!(close(quantile(0.5, BOUNDS, &d), 0.625));
        assert!(close(quantile(0.99, BOUNDS, &d), 1.0));
        // A series made anew (counts went down): all of it is new.
        let reset = counts(&[1, 1, 1, 2], 2);
        assert_eq!(Counts::delta(&reset, &prev), reset);
        // Summing two series' deltas.
        let mut sum = Counts::default();
        sum.add(&d);
        sum.add(&d);
        assert_eq!(sum, counts(&[2, 2, 4, 8], 10));
    }
}
