//! The generated configs of `config_bounds.rs`: every bounded key with its bounds
//! (read from `fusebox::config`, so the test follows them), the values drawn for it
//! and the config text they are written into.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use fusebox::config::*;
use proptest::prelude::*;

/// The table a key lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Listener,
    Limits,
    Tracing,
    Upstream,
    Pool,
    Timeouts,
    Breaker,
    Retry,
    Health,
    PeakEwma,
    Adaptive,
    Route,
    RateLimit,
    Concurrency,
    Fault,
}

impl Table {
    /// The TOML path prefix in messages.
    fn path(self) -> &'static str {
        match self {
            Table::Listener => "listener",
            Table::Limits => "limits",
            Table::Tracing => "tracing",
            Table::Upstream => "upstreams.app",
            Table::Pool => "upstreams.app.pool",
            Table::Timeouts => "upstreams.app.timeouts",
            Table::Breaker => "upstreams.app.circuit_breaker",
            Table::Retry => "upstreams.app.retry",
            Table::Health => "upstreams.app.health_check",
            Table::PeakEwma => "upstreams.app.peak_ewma",
            Table::Adaptive => "upstreams.app.adaptive_concurrency",
            Table::Route => "routes[0]",
            Table::RateLimit => "routes[0].rate_limit",
            Table::Concurrency => "routes[0].concurrency",
            Table::Fault => "routes[0].fault",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    Duration(Bounds<Duration>),
    Size(Bounds<u64>),
    Count(Bounds<u64>),
    /// `open_min`: the minimum itself is refused too (`smoothing > 0`).
    Float(Bounds<f64>, bool),
}

use Bound::{Count, Duration as Dur, Float, Size};
use Table::*;

const KEYS: &[(Table, &str, Bound)] = &[
    (Listener, "max_connections", Count(MAX_CONNECTIONS_BOUNDS)),
    (
        Listener,
        "header_read_timeout",
        Dur(HEADER_READ_TIMEOUT_BOUNDS),
    ),
    (Listener, "idle_timeout", Dur(LISTENER_IDLE_TIMEOUT_BOUNDS)),
    (Listener, "max_header_bytes", Size(MAX_HEADER_BYTES_BOUNDS)),
    (Listener, "max_request_body", Size(MAX_REQUEST_BODY_BOUNDS)),
    (Listener, "shutdown_timeout", Dur(SHUTDOWN_TIMEOUT_BOUNDS)),
    (
        Limits,
        "max_buffered_body_bytes",
        Size(MAX_BUFFERED_BODY_BYTES_BOUNDS),
    ),
    (
        Tracing,
        "sample_ratio",
        Float(TRACING_SAMPLE_RATIO_BOUNDS, false),
    ),
    (Tracing, "max_queue", Count(TRACING_MAX_QUEUE_BOUNDS)),
    (
        Tracing,
        "export_timeout",
        Dur(TRACING_EXPORT_TIMEOUT_BOUNDS),
    ),
    (Upstream, "dns_refresh", Dur(DNS_REFRESH_BOUNDS)),
    (Upstream, "slow_start", Dur(SLOW_START_BOUNDS)),
    (
        Upstream,
        "load_report_expiry",
        Dur(LOAD_REPORT_EXPIRY_BOUNDS),
    ),
    (Upstream, "weight", Count(ENDPOINT_WEIGHT_BOUNDS)),
    (
        Pool,
        "max_connections_per_host",
        Count(POOL_MAX_CONNECTIONS_PER_HOST_BOUNDS),
    ),
    (
        Pool,
        "max_idle_per_host",
        Count(POOL_MAX_IDLE_PER_HOST_BOUNDS),
    ),
    (Pool, "idle_timeout", Dur(POOL_IDLE_TIMEOUT_BOUNDS)),
    (Timeouts, "connect", Dur(CONNECT_TIMEOUT_BOUNDS)),
    (Timeouts, "request", Dur(REQUEST_TIMEOUT_BOUNDS)),
    (Timeouts, "idle", Dur(UPSTREAM_IDLE_TIMEOUT_BOUNDS)),
    (
        Breaker,
        "failure_threshold",
        Count(FAILURE_THRESHOLD_BOUNDS),
    ),
    (Breaker, "recovery_timeout", Dur(RECOVERY_TIMEOUT_BOUNDS)),
    (
        Breaker,
        "success_threshold",
        Count(SUCCESS_THRESHOLD_BOUNDS),
    ),
    (
        Breaker,
        "half_open_max_requests",
        Count(HALF_OPEN_MAX_REQUESTS_BOUNDS),
    ),
    (Breaker, "window", Dur(WINDOW_BOUNDS)),
    (
        Breaker,
        "request_volume_threshold",
        Count(REQUEST_VOLUME_THRESHOLD_BOUNDS),
    ),
    (
        Breaker,
        "slow_call_duration",
        Dur(SLOW_CALL_DURATION_BOUNDS),
    ),
    (Breaker, "max_partitions", Count(MAX_PARTITIONS_BOUNDS)),
    (Retry, "max_retries", Count(MAX_RETRIES_BOUNDS)),
    (Retry, "base_delay", Dur(RETRY_DELAY_BOUNDS)),
    (Retry, "max_replay_body", Size(MAX_REPLAY_BODY_BOUNDS)),
    (
        Retry,
        "budget_min_per_second",
        Count(BUDGET_MIN_PER_SECOND_BOUNDS),
    ),
    (Health, "interval", Dur(HEALTH_CHECK_INTERVAL_BOUNDS)),
    (Health, "timeout", Dur(HEALTH_CHECK_TIMEOUT_BOUNDS)),
    (
        Health,
        "unhealthy_threshold",
        Count(HEALTH_THRESHOLD_BOUNDS),
    ),
    (Health, "healthy_threshold", Count(HEALTH_THRESHOLD_BOUNDS)),
    (
        PeakEwma,
        "default_latency",
        Dur(PEAK_EWMA_DEFAULT_LATENCY_BOUNDS),
    ),
    (PeakEwma, "decay", Dur(PEAK_EWMA_DECAY_BOUNDS)),
    (Adaptive, "min_limit", Count(ADAPTIVE_LIMIT_BOUNDS)),
    (Adaptive, "initial_limit", Count(ADAPTIVE_LIMIT_BOUNDS)),
    (
        Adaptive,
        "rtt_tolerance",
        Float(ADAPTIVE_RTT_TOLERANCE_BOUNDS, false),
    ),
    (
        Adaptive,
        "smoothing",
        Float(ADAPTIVE_SMOOTHING_BOUNDS, true),
    ),
    (Route, "timeout", Dur(ROUTE_TIMEOUT_BOUNDS)),
    (
        RateLimit,
        "requests_per_second",
        Float(RATE_LIMIT_RPS_BOUNDS, false),
    ),
    (RateLimit, "burst", Count(RATE_LIMIT_BURST_BOUNDS)),
    (RateLimit, "max_keys", Count(RATE_LIMIT_MAX_KEYS_BOUNDS)),
    (Concurrency, "max_in_flight", Count(MAX_IN_FLIGHT_BOUNDS)),
    (Concurrency, "max_queue", Count(MAX_QUEUE_BOUNDS)),
    (Concurrency, "queue_timeout", Dur(QUEUE_TIMEOUT_BOUNDS)),
    (Fault, "delay", Dur(FAULT_DELAY_BOUNDS)),
];

/// Which value to write: `Inside(f)` is log-uniform between the bounds at `f` in 0..1.
#[derive(Debug, Clone, Copy)]
enum Pick {
    Inside(f64),
    Min,
    Max,
    PastMax,
    BelowMin,
    Zero,
    Negative,
    Huge,
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        10 => (0.0..1.0f64).prop_map(Pick::Inside),
        1 => Just(Pick::Min),
        1 => Just(Pick::Max),
        1 => Just(Pick::PastMax),
        1 => Just(Pick::BelowMin),
        1 => Just(Pick::Zero),
        1 => Just(Pick::Negative),
        1 => Just(Pick::Huge),
    ]
}

/// Log-uniform in `lo..=hi` (linear from 0 when `lo` is 0).
fn between(lo: f64, hi: f64, f: f64) -> f64 {
    let lo1 = lo.max(1e-9_f64.max(hi * 1e-12));
    (lo1 * (hi / lo1).powf(f)).clamp(lo, hi)
}

/// The TOML text of the value and whether it lies inside the bounds.
fn value(bound: Bound, p: Pick) -> (String, bool) {
    match bound {
        Dur(b) => {
            let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
            let (lo, hi) = (nanos(b.min), nanos(b.max));
            let ns = |n: u64| (format!("\"{n}ns\""), n >= lo && n <= hi);
            match p {
                Pick::Inside(f) => ns(between(lo as f64, hi as f64, f) as u64),
                Pick::Min => ns(lo),
                Pick::Max => ns(hi),
                Pick::PastMax => ns(hi.saturating_add(1_000_000)),
                Pick::BelowMin if lo > 0 => ns(lo - 1),
                Pick::BelowMin | Pick::Zero => ("0".into(), lo == 0),
                Pick::Negative => ("-1.5".into(), false),
                Pick::Huge => ("1e19".into(), false),
            }
        }
        Size(b) | Count(b) => {
            let int = |n: u64| (n.to_string(), n >= b.min && n <= b.max);
            match p {
                Pick::Inside(f) => int(between(b.min as f64, b.max as f64, f).round() as u64),
                Pick::Min => int(b.min),
                Pick::Max => int(b.max),
                Pick::PastMax => int(b.max.saturating_add(1)),
                Pick::BelowMin if b.min > 0 => int(b.min - 1),
                Pick::BelowMin | Pick::Zero => int(0),
                Pick::Negative => ("-1".into(), false),
                Pick::Huge if matches!(bound, Size(_)) => {
                    ("\"18446744073709551616B\"".into(), false)
                }
                Pick::Huge => (i64::MAX.to_string(), false),
            }
        }
        Float(b, open_min) => {
            let num = |v: f64| {
                let inside = v >= b.min && v <= b.max && !(open_min && v == b.min);
                (format!("{v:?}"), inside)
            };
            match p {
                Pick::Inside(f) => num(b.min + (b.max - b.min) * f),
                Pick::Min => num(b.min),
                Pick::Max => num(b.max),
                Pick::PastMax => num(b.max * 2.0 + 1.0),
                Pick::BelowMin => num(b.min - 0.5),
                Pick::Zero => num(0.0),
                Pick::Negative => ("-inf".into(), false),
                Pick::Huge => ("nan".into(), false),
            }
        }
    }
}

/// One generated case: values by index into `KEYS` (a key drawn twice keeps the last).
#[derive(Debug, Clone)]
pub struct Case(BTreeMap<usize, Pick>);

pub fn case() -> impl Strategy<Value = Case> {
    prop::collection::vec((0..KEYS.len(), pick()), 1..=5)
        .prop_map(|v| Case(v.into_iter().collect()))
}

/// The config text of `case` in front of upstream `up`, whether it should be valid, and
/// the TOML paths of the values drawn past their bounds.
pub fn render(case: &Case, up: SocketAddr) -> (String, bool, Vec<String>) {
    let mut lines: BTreeMap<Table, Vec<String>> = Default::default();
    let mut valid = true;
    let mut past = Vec::new();
    let mut weight = None;
    for (&i, &p) in &case.0 {
        let (table, key, bound) = KEYS[i];
        let (text, inside) = value(bound, p);
        valid &= inside;
        if !inside {
            past.push(match key {
                "weight" => "upstreams.app.endpoints[0].weight".to_owned(),
                _ => format!("{}.{key}", table.path()),
            });
        }
        if key == "weight" {
            weight = Some(text);
            continue;
        }
        lines
            .entry(table)
            .or_default()
            .push(format!("{key} = {text}"));
    }
    let section = |t: Table, header: &str, pinned: &[&str]| {
        let given = lines.get(&t).cloned().unwrap_or_default();
        let keys: Vec<&str> = given.iter().filter_map(|l| l.split(" = ").next()).collect();
        let pinned = pinned
            .iter()
            .filter(|l| !keys.contains(&l.split(" = ").next().unwrap_or("")));
        let body: Vec<String> = pinned.map(|s| s.to_string()).chain(given.clone()).collect();
        format!("{header}\n{}\n\n", body.join("\n"))
    };
    let endpoint = match weight {
        Some(w) => format!("[{{ address = \"{up}\", weight = {w} }}]"),
        None => format!("[\"{up}\"]"),
    };
    let optional = |t: Table, header: &str, pinned: &[&str]| {
        if lines.contains_key(&t) {
            section(t, header, pinned)
        } else {
            String::new()
        }
    };
    let text = [
        "[admin]\naddress = \"127.0.0.1:0\"\n\n[logging]\naccess_log = false\n\n".to_owned(),
        section(
            Listener,
            "[listener]",
            &["address = \"127.0.0.1:0\"", "shutdown_timeout = \"2s\""],
        ),
        section(Limits, "[limits]", &[]),
        optional(
            Tracing,
            "[tracing]",
            &["otlp_endpoint = \"http://127.0.0.1:4318\""],
        ),
        section(
            Upstream,
            "[upstreams.app]",
            &[
                &format!("endpoints = {endpoint}"),
                "load_balancing = \"peak_ewma\"",
            ],
        ),
        section(Pool, "[upstreams.app.pool]", &[]),
        section(Timeouts, "[upstreams.app.timeouts]", &[]),
        section(
            Breaker,
            "[upstreams.app.circuit_breaker]",
            &[
                "max_recovery_timeout = \"24h\"",
                "window = \"10s\"",
                "partition_by = \"header:x-camera-id\"",
            ],
        ),
        section(Retry, "[upstreams.app.retry]", &["max_delay = \"1h\""]),
        optional(Health, "[upstreams.app.health_check]", &[]),
        section(PeakEwma, "[upstreams.app.peak_ewma]", &[]),
        optional(
            Adaptive,
            "[upstreams.app.adaptive_concurrency]",
            &["max_limit = 1000000"],
        ),
        section(
            Route,
            "[[routes]]",
            &[
                "name = \"all\"",
                "path_prefix = \"/\"",
                "upstream = \"app\"",
            ],
        ),
        optional(
            RateLimit,
            "[routes.rate_limit]",
            &["key = \"header:x-camera-id\""],
        ),
        optional(Concurrency, "[routes.concurrency]", &[]),
        optional(Fault, "[routes.fault]", &["delay_percent = 100.0"]),
    ]
    .concat();
    (text, valid, past)
}
