//! Validation of a route's admission tables: `rate_limit`, `concurrency` and `fault`.

use super::ctx::Ctx;
use super::defaults::*;
use super::error::Path;
use super::file::{ConcurrencyFile, FaultFile, RateLimitFile};
use super::types::{ConcurrencyConfig, FaultConfig, RateLimitConfig, RateLimitKey};

pub fn rate_limit(cx: &mut Ctx, f: &RateLimitFile, p: &Path) -> RateLimitConfig {
    let rps = cx.float(
        &p.key("requests_per_second"),
        f.requests_per_second,
        DEFAULT_RATE_LIMIT_RPS,
        RATE_LIMIT_RPS_BOUNDS,
    );
    // At most 2 s of the highest rate: inside RATE_LIMIT_BURST_BOUNDS.
    let default_burst = (rps * DEFAULT_RATE_LIMIT_BURST_SECONDS)
        .ceil()
        .clamp(1.0, u32::MAX as f64) as u32;
    let kp = p.key("key");
    let key = match cx.opt_string(&kp, f.key.as_ref()) {
        None => RateLimitKey::Global,
        Some(s) if s == "global" => RateLimitKey::Global,
        Some(s) if s == "client_ip" => RateLimitKey::ClientIp,
        Some(s) => match cx.header_key(&kp, &s) {
            Some(name) => name.map_or(RateLimitKey::Global, RateLimitKey::Header),
            None => {
                cx.problem(&kp, format!("unknown rate-limit key {s:?}; expected one of: global, client_ip, header:NAME"));
                RateLimitKey::Global
            }
        },
    };
    RateLimitConfig {
        requests_per_second: rps,
        burst: cx.int(
            &p.key("burst"),
            f.burst,
            default_burst,
            RATE_LIMIT_BURST_BOUNDS,
        ),
        key,
        max_keys: cx.int(
            &p.key("max_keys"),
            f.max_keys,
            DEFAULT_RATE_LIMIT_MAX_KEYS,
            RATE_LIMIT_MAX_KEYS_BOUNDS,
        ),
    }
}

pub fn concurrency(cx: &mut Ctx, f: &ConcurrencyFile, p: &Path) -> ConcurrencyConfig {
    ConcurrencyConfig {
        max_in_flight: cx.int(
            &p.key("max_in_flight"),
            f.max_in_flight,
            DEFAULT_MAX_IN_FLIGHT,
            MAX_IN_FLIGHT_BOUNDS,
        ),
        max_queue: cx.int(
            &p.key("max_queue"),
            f.max_queue,
            DEFAULT_MAX_QUEUE,
            MAX_QUEUE_BOUNDS,
        ),
        queue_timeout: cx.duration(
            &p.key("queue_timeout"),
            f.queue_timeout.as_ref(),
            DEFAULT_QUEUE_TIMEOUT,
            QUEUE_TIMEOUT_BOUNDS,
        ),
    }
}

pub fn fault(cx: &mut Ctx, f: &FaultFile, p: &Path) -> FaultConfig {
    let status_path = p.key("abort_status");
    let abort_status = f
        .abort_status
        .and_then(|s| cx.answer_status(&status_path, s))
        .or_else(|| http::StatusCode::from_u16(DEFAULT_FAULT_ABORT_STATUS).ok())
        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    FaultConfig {
        abort_percent: cx.percent(
            &p.key("abort_percent"),
            f.abort_percent,
            DEFAULT_FAULT_ABORT_PERCENT,
        ),
        abort_status,
        delay_percent: cx.percent(
            &p.key("delay_percent"),
            f.delay_percent,
            DEFAULT_FAULT_DELAY_PERCENT,
        ),
        delay: cx.duration(
            &p.key("delay"),
            f.delay.as_ref(),
            DEFAULT_FAULT_DELAY,
            FAULT_DELAY_BOUNDS,
        ),
    }
}
