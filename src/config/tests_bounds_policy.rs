//! Bounds of an upstream's policies (breaker, retry, health check, peak EWMA, adaptive
//! concurrency) and a route's (timeout, rate limit, concurrency, fault, overrides):
//! accepted at the bounds, refused just past them with the range, at the value.

use super::tests_bounds::{check, At, Case};

#[test]
fn breaker_retry_and_health_check_bounds() {
    let threshold = |path: &'static str, lines: &'static str| Case {
        at: At::End,
        lines,
        path,
        ok: &["1", "1000000"],
        bad: &[
            (
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 1..=1000000)",
            ),
            ("0", "must be at least 1, got 0 (allowed: 1..=1000000)"),
        ],
    };
    let hour = |path: &'static str, lines: &'static str| Case {
        at: At::End,
        lines,
        path,
        ok: &["\"1ms\"", "\"1h\""],
        bad: &[(
            "\"2h\"",
            "2h is above the maximum of 1h (allowed: 1ms..=1h)",
        )],
    };
    check(&[
        threshold(
            "upstreams.a.circuit_breaker.failure_threshold",
            "[upstreams.a.circuit_breaker]\nfailure_threshold = {v}",
        ),
        threshold(
            "upstreams.a.circuit_breaker.success_threshold",
            "[upstreams.a.circuit_breaker]\nsuccess_threshold = {v}",
        ),
        threshold(
            "upstreams.a.circuit_breaker.half_open_max_requests",
            "[upstreams.a.circuit_breaker]\nhalf_open_max_requests = {v}",
        ),
        threshold(
            "upstreams.a.circuit_breaker.max_partitions",
            "[upstreams.a.circuit_breaker]\nmax_partitions = {v}",
        ),
        threshold(
            "upstreams.a.circuit_breaker.request_volume_threshold",
            "[upstreams.a.circuit_breaker]\nwindow = \"10s\"\nrequest_volume_threshold = {v}",
        ),
        threshold(
            "upstreams.a.health_check.unhealthy_threshold",
            "[upstreams.a.health_check]\nunhealthy_threshold = {v}",
        ),
        threshold(
            "upstreams.a.health_check.healthy_threshold",
            "[upstreams.a.health_check]\nhealthy_threshold = {v}",
        ),
        hour(
            "upstreams.a.circuit_breaker.recovery_timeout",
            "[upstreams.a.circuit_breaker]\nmax_recovery_timeout = \"24h\"\nrecovery_timeout = {v}",
        ),
        hour(
            "upstreams.a.circuit_breaker.window",
            "[upstreams.a.circuit_breaker]\nwindow = {v}",
        ),
        hour(
            "upstreams.a.circuit_breaker.slow_call_duration",
            "[upstreams.a.circuit_breaker]\nslow_call_duration = {v}",
        ),
        hour(
            "upstreams.a.health_check.timeout",
            "[upstreams.a.health_check]\ntimeout = {v}",
        ),
        Case {
            at: At::End,
            lines: "[upstreams.a.circuit_breaker]\nmax_recovery_timeout = {v}",
            path: "upstreams.a.circuit_breaker.max_recovery_timeout",
            ok: &["\"30s\"", "\"24h\"", "86400"],
            bad: &[
                (
                    "\"25h\"",
                    "25h is above the maximum of 24h (allowed: 1ms..=24h)",
                ),
                (
                    "1e19",
                    "1e19s is above the maximum of 24h (allowed: 1ms..=24h)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.health_check]\ninterval = {v}",
            path: "upstreams.a.health_check.interval",
            ok: &["\"10ms\"", "\"1h\""],
            bad: &[
                (
                    "\"9ms\"",
                    "9ms is below the minimum of 10ms (allowed: 10ms..=1h)",
                ),
                (
                    "\"2h\"",
                    "2h is above the maximum of 1h (allowed: 10ms..=1h)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.retry]\nmax_retries = {v}",
            path: "upstreams.a.retry.max_retries",
            ok: &["0", "100"],
            bad: &[
                ("101", "101 is above the maximum of 100 (allowed: 0..=100)"),
                ("-1", "must be at least 0, got -1 (allowed: 0..=100)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.retry]\nmax_delay = \"1h\"\nbase_delay = {v}",
            path: "upstreams.a.retry.base_delay",
            ok: &["0", "\"1h\""],
            bad: &[("\"2h\"", "2h is above the maximum of 1h (allowed: 0s..=1h)")],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.retry]\nmax_delay = {v}",
            path: "upstreams.a.retry.max_delay",
            ok: &["\"1h\""],
            bad: &[(
                "1e19",
                "1e19s is above the maximum of 1h (allowed: 0s..=1h)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.retry]\nmax_replay_body = {v}",
            path: "upstreams.a.retry.max_replay_body",
            ok: &["0", "\"1GiB\""],
            bad: &[(
                "\"1025MiB\"",
                "1025MiB is above the maximum of 1GiB (allowed: 0..=1GiB)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.retry]\nbudget_min_per_second = {v}",
            path: "upstreams.a.retry.budget_min_per_second",
            ok: &["0", "1000000"],
            bad: &[(
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 0..=1000000)",
            )],
        },
    ]);
}

#[test]
fn balancing_bounds() {
    let limit = |path: &'static str, lines: &'static str| Case {
        at: At::End,
        lines,
        path,
        ok: &["1", "1000000"],
        bad: &[
            (
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 1..=1000000)",
            ),
            ("0", "must be at least 1, got 0 (allowed: 1..=1000000)"),
        ],
    };
    check(&[
        Case {
            at: At::End,
            lines: "[upstreams.a.peak_ewma]\ndefault_latency = {v}",
            path: "upstreams.a.peak_ewma.default_latency",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[
                ("\"2h\"", "2h is above the maximum of 1h (allowed: 1ms..=1h)"),
                ("0", "must be greater than 0 (allowed: 1ms..=1h)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.peak_ewma]\ndecay = {v}",
            path: "upstreams.a.peak_ewma.decay",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[("1e19", "1e19s is above the maximum of 1h (allowed: 1ms..=1h)")],
        },
        limit(
            "upstreams.a.adaptive_concurrency.min_limit",
            "[upstreams.a.adaptive_concurrency]\nmax_limit = 1000000\nmin_limit = {v}",
        ),
        limit("upstreams.a.adaptive_concurrency.max_limit", "[upstreams.a.adaptive_concurrency]\nmax_limit = {v}"),
        limit("upstreams.a.adaptive_concurrency.initial_limit", "[upstreams.a.adaptive_concurrency]\ninitial_limit = {v}"),
        Case {
            at: At::End,
            lines: "[upstreams.a.adaptive_concurrency]\nrtt_tolerance = {v}",
            path: "upstreams.a.adaptive_concurrency.rtt_tolerance",
            ok: &["1.0", "1", "10.0"],
            bad: &[
                ("0.99", "0.99 is below the minimum of 1 (allowed: 1..=10)"),
                ("10.5", "10.5 is above the maximum of 10 (allowed: 1..=10)"),
                ("inf", "inf is above the maximum of 10 (allowed: 1..=10)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.adaptive_concurrency]\nsmoothing = {v}",
            path: "upstreams.a.adaptive_concurrency.smoothing",
            ok: &["0.01", "1.0"],
            bad: &[
                ("1.5", "1.5 is above the maximum of 1 (allowed: 0..=1)"),
                ("-0.1", "-0.1 is below the minimum of 0 (allowed: 0..=1)"),
                ("0.0", "must be greater than 0: the limit would never move (allowed: 0..=1, 0 excluded)"),
            ],
        },
    ]);
}

#[test]
fn route_bounds() {
    check(&[
        Case {
            at: At::Route,
            lines: "timeout = {v}",
            path: "routes[0].timeout",
            ok: &["\"1ms\"", "\"1h\"", "3600"],
            bad: &[
                (
                    "1e19",
                    "1e19s is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                ("\"0s\"", "must be greater than 0 (allowed: 1ms..=1h)"),
            ],
        },
        Case {
            at: At::Route,
            lines: "rate_limit = { requests_per_second = {v} }",
            path: "routes[0].rate_limit.requests_per_second",
            ok: &["0.001", "1000000", "1e6"],
            bad: &[
                (
                    "0.0009",
                    "0.0009 is below the minimum of 0.001 (allowed: 0.001..=1000000)",
                ),
                (
                    "1e7",
                    "10000000 is above the maximum of 1000000 (allowed: 0.001..=1000000)",
                ),
                ("0", "must be greater than 0 (allowed: 0.001..=1000000)"),
                (
                    "-inf",
                    "-inf is below the minimum of 0.001 (allowed: 0.001..=1000000)",
                ),
            ],
        },
        Case {
            at: At::Route,
            lines: "rate_limit = { burst = {v} }",
            path: "routes[0].rate_limit.burst",
            ok: &["1", "2000000"],
            bad: &[(
                "2000001",
                "2000001 is above the maximum of 2000000 (allowed: 1..=2000000)",
            )],
        },
        Case {
            at: At::Route,
            lines: "rate_limit = { max_keys = {v} }",
            path: "routes[0].rate_limit.max_keys",
            ok: &["1000000"],
            bad: &[(
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 1..=1000000)",
            )],
        },
        Case {
            at: At::Route,
            lines: "concurrency = { max_in_flight = {v} }",
            path: "routes[0].concurrency.max_in_flight",
            ok: &["1", "1000000"],
            bad: &[(
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 1..=1000000)",
            )],
        },
        Case {
            at: At::Route,
            lines: "concurrency = { max_queue = {v} }",
            path: "routes[0].concurrency.max_queue",
            ok: &["0", "1000000"],
            bad: &[(
                "1000001",
                "1000001 is above the maximum of 1000000 (allowed: 0..=1000000)",
            )],
        },
        Case {
            at: At::Route,
            lines: "concurrency = { queue_timeout = {v} }",
            path: "routes[0].concurrency.queue_timeout",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[(
                "\"2h\"",
                "2h is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
        Case {
            at: At::Route,
            lines: "fault = { delay = {v} }",
            path: "routes[0].fault.delay",
            ok: &["0", "\"1h\""],
            bad: &[("\"2h\"", "2h is above the maximum of 1h (allowed: 0s..=1h)")],
        },
        Case {
            at: At::Route,
            lines: "retry = { max_retries = {v} }",
            path: "routes[0].retry.max_retries",
            ok: &["100"],
            bad: &[("101", "101 is above the maximum of 100 (allowed: 0..=100)")],
        },
        Case {
            at: At::Route,
            lines: "circuit_breaker = { max_recovery_timeout = {v} }",
            path: "routes[0].circuit_breaker.max_recovery_timeout",
            ok: &["\"24h\""],
            bad: &[(
                "\"48h\"",
                "48h is above the maximum of 24h (allowed: 1ms..=24h)",
            )],
        },
    ]);
}
