//! Validation of what an upstream's balancer and concurrency limit read: the load
//! report keys, `[upstreams.NAME.peak_ewma]` and `[upstreams.NAME.adaptive_concurrency]`.

use super::ctx::Ctx;
use super::defaults::*;
use super::error::Path;
use super::file::{AdaptiveConcurrencyFile, PeakEwmaFile};
use super::types::{AdaptiveConcurrencyConfig, PeakEwmaConfig};

pub fn peak_ewma(cx: &mut Ctx, f: &PeakEwmaFile, p: &Path) -> PeakEwmaConfig {
    PeakEwmaConfig {
        default_latency: cx.duration(
            &p.key("default_latency"),
            f.default_latency.as_ref(),
            DEFAULT_PEAK_EWMA_DEFAULT_LATENCY,
            PEAK_EWMA_DEFAULT_LATENCY_BOUNDS,
        ),
        decay: cx.duration(
            &p.key("decay"),
            f.decay.as_ref(),
            DEFAULT_PEAK_EWMA_DECAY,
            PEAK_EWMA_DECAY_BOUNDS,
        ),
    }
}

/// Refuses `min_limit > max_limit` and a `smoothing` of 0; clamps `initial_limit`
/// into `min_limit..=max_limit`.
pub fn adaptive_concurrency(
    cx: &mut Ctx,
    f: &AdaptiveConcurrencyFile,
    p: &Path,
) -> AdaptiveConcurrencyConfig {
    let limit = |cx: &mut Ctx, key: &str, v: Option<i64>, default: usize| {
        cx.int(&p.key(key), v, default, ADAPTIVE_LIMIT_BOUNDS)
    };
    let mark = cx.mark();
    let min_limit = limit(cx, "min_limit", f.min_limit, DEFAULT_ADAPTIVE_MIN_LIMIT);
    let max_limit = limit(cx, "max_limit", f.max_limit, DEFAULT_ADAPTIVE_MAX_LIMIT);
    if min_limit > max_limit && cx.mark() == mark {
        let key = if f.max_limit.is_some() {
            "max_limit"
        } else {
            "min_limit"
        };
        let msg = format!("min_limit ({min_limit}) must be at most max_limit ({max_limit})");
        cx.problem(&p.key(key), msg);
    }
    let initial = limit(
        cx,
        "initial_limit",
        f.initial_limit,
        DEFAULT_ADAPTIVE_INITIAL_LIMIT,
    );
    // Not `clamp`, which panics when min > max (refused above, but still built).
    let initial_limit = initial.max(min_limit).min(max_limit);
    let sp = p.key("smoothing");
    let smoothing = cx.float(
        &sp,
        f.smoothing,
        DEFAULT_ADAPTIVE_SMOOTHING,
        ADAPTIVE_SMOOTHING_BOUNDS,
    );
    if smoothing == 0.0 {
        let msg = format!(
            "must be greater than 0: the limit would never move (allowed: {ADAPTIVE_SMOOTHING_BOUNDS}, 0 excluded)"
        );
        cx.problem(&sp, msg);
    }
    AdaptiveConcurrencyConfig {
        min_limit,
        max_limit,
        initial_limit,
        rtt_tolerance: cx.float(
            &p.key("rtt_tolerance"),
            f.rtt_tolerance,
            DEFAULT_ADAPTIVE_RTT_TOLERANCE,
            ADAPTIVE_RTT_TOLERANCE_BOUNDS,
        ),
        smoothing: if smoothing == 0.0 {
            DEFAULT_ADAPTIVE_SMOOTHING
        } else {
            smoothing
        },
    }
}
