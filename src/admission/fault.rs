//! Fault injection of a route (`fault`): aborts or delays a share of requests before
//! they reach the upstream. Touched per request (`decide`): the thread-local rng, only
//! when a fault is configured.

use std::time::Duration;

use http::StatusCode;
use rand::Rng;

use crate::config::FaultConfig;

/// Fault injection for one route: what to do to a request before it is forwarded.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Probability (0..=1) that a request is aborted.
    abort: f64,
    abort_status: StatusCode,
    /// Probability (0..=1) that a request not aborted is delayed.
    delay: f64,
    delay_for: Duration,
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    None,
    /// Answer with this status without contacting the upstream.
    Abort(StatusCode),
    /// Wait this long, then forward as usual.
    Delay(Duration),
}

impl Fault {
    /// Percentages outside 0..=100 (refused by validation) are clamped; NaN never fires.
    pub fn new(cfg: &FaultConfig) -> Fault {
        Fault {
            abort: (cfg.abort_percent / 100.0).clamp(0.0, 1.0),
            abort_status: cfg.abort_status,
            delay: (cfg.delay_percent / 100.0).clamp(0.0, 1.0),
            delay_for: cfg.delay,
        }
    }

    /// Draws for abort (`abort_percent` of requests), then independently for delay
    /// among the requests not aborted: with 5% abort and 10% delay, 5% are aborted
    /// and 9.5% (10% of the other 95%) delayed; no request is both.
    pub fn decide(&self) -> FaultAction {
        if self.abort <= 0.0 && self.delay <= 0.0 {
            return FaultAction::None; // no fault configured: no draw
        }
        let mut rng = rand::thread_rng();
        // `gen::<f64>()` is in [0, 1): probability 0 never fires, 1 always does.
        if rng.gen::<f64>() < self.abort {
            FaultAction::Abort(self.abort_status)
        } else if rng.gen::<f64>() < self.delay {
            FaultAction::Delay(self.delay_for)
        } else {
            FaultAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Shares of (aborted, delayed) requests over `n` draws.
    fn shares(abort_percent: f64, delay_percent: f64, n: u32) -> (f64, f64) {
        let (abort_status, delay) = (StatusCode::IM_A_TEAPOT, 200 * MS);
        let f = Fault::new(&FaultConfig {
            abort_percent,
            abort_status,
            delay_percent,
            delay,
        });
        let draws: Vec<_> = (0..n).map(|_| f.decide()).collect();
        let share = |a| draws.iter().filter(|&&d| d == a).count() as f64 / f64::from(n);
        (
            share(FaultAction::Abort(abort_status)),
            share(FaultAction::Delay(delay)),
        )
    }

    /// Proves the shares: 5% aborted and 10% of the rest (9.5%) delayed, within bands
    /// of about seven standard deviations; 0% and 100% are exact.
    #[test]
    fn fault_shares_match_the_percentages() {
        let (abort, delay) = shares(5.0, 10.0, 10_000);
        assert!((abort - 0.05).abs() < 0.015, "abort share {abort}");
        assert!((delay - 0.095).abs() < 0.015, "delay share {delay}");
        assert_eq!(shares(0.0, 0.0, 10_000), (0.0, 0.0));
        assert_eq!(shares(100.0, 100.0, 10_000), (1.0, 0.0));
        assert_eq!(shares(0.0, 100.0, 10_000), (0.0, 1.0));
        assert_eq!(shares(f64::NAN, 250.0, 1_000), (0.0, 1.0));
    }
}
