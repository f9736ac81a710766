//! Every bounded value at its bounds (accepted) and just past them (refused at the
//! value's line and column, the message stating the allowed range), and values far
//! past anything a `Duration` or `u64` holds.

use super::tests::parse_env;
use super::Problem;

/// Where a case's lines go in the test file.
#[derive(Clone, Copy)]
enum At {
    /// Inside `[upstreams.a]`.
    Upstream,
    /// Inside the one `[[routes]]` entry.
    Route,
    /// After everything, under their own table header.
    End,
}

/// One bounded key: `lines` hold `{v}` where the value goes (and any other keys the
/// case needs); `path` is the key's TOML path in messages.
struct Case {
    at: At,
    lines: &'static str,
    path: &'static str,
    /// Values that must be accepted (the bounds themselves).
    ok: &'static [&'static str],
    /// Values that must be refused, each with the message after `path: `.
    bad: &'static [(&'static str, &'static str)],
}

fn text(case: &Case, v: &str) -> String {
    let lines = case.lines.replace("{v}", v);
    let (up, route, end) = match case.at {
        At::Upstream => (lines.as_str(), "", ""),
        At::Route => ("", lines.as_str(), ""),
        At::End => ("", "", lines.as_str()),
    };
    format!(
        "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n{up}\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n{route}\n\n{end}\n"
    )
}

/// Line and column (1-based, characters) where `v` was written for `case`.
fn position(case: &Case, v: &str) -> (usize, usize) {
    let full = text(case, v);
    let marker = case.lines.find("{v}").expect("case has {v}");
    let before_v = &case.lines[..marker];
    let line_start = before_v.rfind('\n').map_or(0, |i| i + 1);
    let pattern = format!("{}{v}", &before_v[line_start..]);
    let (n, l) = full
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(&pattern))
        .expect("value line");
    let col = l.find(&pattern).expect("pattern") + pattern.len() - v.len();
    (n + 1, l[..col].chars().count() + 1)
}

fn check(cases: &[Case]) {
    for case in cases {
        for v in case.ok {
            if let Err(e) = parse_env(&text(case, v), &[]) {
                panic!("{} = {v} should be accepted:\n{e}", case.path);
            }
        }
        for (v, msg) in case.bad {
            let problems: Vec<Problem> = match parse_env(&text(case, v), &[]) {
                Ok(_) => panic!("{} = {v} should be refused", case.path),
                Err(e) => e.problems().to_vec(),
            };
            assert_eq!(problems.len(), 1, "{} = {v}: {problems:#?}", case.path);
            let p = &problems[0];
            assert_eq!(
                p.message,
                format!("{}: {msg}", case.path),
                "{} = {v}",
                case.path
            );
            assert_eq!(
                (p.line, p.column),
                position(case, v),
                "{} = {v} located at the value: {p}",
                case.path
            );
        }
    }
}

#[test]
fn listener_bounds() {
    check(&[
        Case {
            at: At::End,
            lines: "[listener]\nmax_connections = {v}",
            path: "listener.max_connections",
            ok: &["1", "1000000"],
            bad: &[
                ("0", "must be at least 1, got 0 (allowed: 1..=1000000)"),
                (
                    "1000001",
                    "1000001 is above the maximum of 1000000 (allowed: 1..=1000000)",
                ),
                (
                    "9223372036854775807",
                    "9223372036854775807 is above the maximum of 1000000 (allowed: 1..=1000000)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[listener]\nheader_read_timeout = {v}",
            path: "listener.header_read_timeout",
            ok: &["\"1ms\"", "\"1h\"", "3600", "0.001"],
            bad: &[
                (
                    "\"3601s\"",
                    "3601s is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                (
                    "1e19",
                    "1e19s is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                (
                    "1e300",
                    "1e300s is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                (
                    "\"99999999999999999999999h\"",
                    "99999999999999999999999h is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                (
                    "\"500us\"",
                    "500us is below the minimum of 1ms (allowed: 1ms..=1h)",
                ),
                ("0", "must be greater than 0 (allowed: 1ms..=1h)"),
                (
                    "-1",
                    "negative duration -1s is not allowed (allowed: 1ms..=1h)",
                ),
                (
                    "\"-5s\"",
                    "negative duration -5s is not allowed (allowed: 1ms..=1h)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[listener]\nidle_timeout = {v}",
            path: "listener.idle_timeout",
            ok: &["\"1h\""],
            bad: &[(
                "\"61m\"",
                "61m is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
        Case {
            at: At::End,
            lines: "[listener]\nmax_header_bytes = {v}",
            path: "listener.max_header_bytes",
            ok: &["\"8KiB\"", "8192", "\"1MiB\""],
            bad: &[
                (
                    "8191",
                    "8191 is below the minimum of 8KiB (allowed: 8KiB..=1MiB)",
                ),
                (
                    "\"4KiB\"",
                    "4KiB is below the minimum of 8KiB (allowed: 8KiB..=1MiB)",
                ),
                (
                    "\"2MiB\"",
                    "2MiB is above the maximum of 1MiB (allowed: 8KiB..=1MiB)",
                ),
                ("0", "must be greater than 0 (allowed: 8KiB..=1MiB)"),
                (
                    "-8192",
                    "negative size -8192 is not allowed (allowed: 8KiB..=1MiB)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[listener]\nmax_request_body = {v}",
            path: "listener.max_request_body",
            ok: &["1", "\"16GiB\""],
            bad: &[
                (
                    "17179869185",
                    "17179869185 is above the maximum of 16GiB (allowed: 1B..=16GiB)",
                ),
                (
                    "\"99999999999999TiB\"",
                    "99999999999999TiB is above the maximum of 16GiB (allowed: 1B..=16GiB)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[listener]\nshutdown_timeout = {v}",
            path: "listener.shutdown_timeout",
            ok: &["\"1h\""],
            bad: &[(
                "\"2h\"",
                "2h is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
    ]);
}

#[test]
fn limits_and_tracing_bounds() {
    check(&[
        Case {
            at: At::End,
            lines: "[limits]\nmax_buffered_body_bytes = {v}",
            path: "limits.max_buffered_body_bytes",
            ok: &["0", "\"64GiB\""],
            bad: &[
                (
                    "\"65GiB\"",
                    "65GiB is above the maximum of 64GiB (allowed: 0..=64GiB)",
                ),
                ("-1", "negative size -1 is not allowed (allowed: 0..=64GiB)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[tracing]\notlp_endpoint = \"http://c:4318\"\nsample_ratio = {v}",
            path: "tracing.sample_ratio",
            ok: &["0.0", "1.0", "1"],
            bad: &[
                ("1.5", "1.5 is above the maximum of 1 (allowed: 0..=1)"),
                ("-0.1", "-0.1 is below the minimum of 0 (allowed: 0..=1)"),
                ("nan", "must be a number, got nan (allowed: 0..=1)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[tracing]\notlp_endpoint = \"http://c:4318\"\nmax_queue = {v}",
            path: "tracing.max_queue",
            ok: &["1", "100000"],
            bad: &[
                ("0", "must be at least 1, got 0 (allowed: 1..=100000)"),
                (
                    "100001",
                    "100001 is above the maximum of 100000 (allowed: 1..=100000)",
                ),
            ],
        },
        Case {
            at: At::End,
            lines: "[tracing]\notlp_endpoint = \"http://c:4318\"\nexport_timeout = {v}",
            path: "tracing.export_timeout",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[(
                "\"1h 1s\"",
                "1h 1s is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
    ]);
}

#[test]
fn upstream_bounds() {
    check(&[
        Case {
            at: At::Upstream,
            lines: "dns_refresh = {v}",
            path: "upstreams.a.dns_refresh",
            ok: &["\"100ms\"", "\"1h\""],
            bad: &[
                (
                    "\"99ms\"",
                    "99ms is below the minimum of 100ms (allowed: 100ms..=1h)",
                ),
                (
                    "\"2h\"",
                    "2h is above the maximum of 1h (allowed: 100ms..=1h)",
                ),
            ],
        },
        Case {
            at: At::Upstream,
            lines: "slow_start = {v}",
            path: "upstreams.a.slow_start",
            ok: &["0", "\"1h\""],
            bad: &[(
                "\"1h 1ms\"",
                "1h 1ms is above the maximum of 1h (allowed: 0s..=1h)",
            )],
        },
        Case {
            at: At::Upstream,
            lines: "load_report_expiry = {v}",
            path: "upstreams.a.load_report_expiry",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[
                (
                    "\"2h\"",
                    "2h is above the maximum of 1h (allowed: 1ms..=1h)",
                ),
                ("0", "must be greater than 0 (allowed: 1ms..=1h)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.b]\nendpoints = [{ address = \"127.0.0.1:1\", weight = {v} }]",
            path: "upstreams.b.endpoints[0].weight",
            ok: &["1", "10000"],
            bad: &[
                (
                    "10001",
                    "10001 is above the maximum of 10000 (allowed: 1..=10000)",
                ),
                ("0", "must be at least 1, got 0 (allowed: 1..=10000)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.pool]\nmax_connections_per_host = {v}",
            path: "upstreams.a.pool.max_connections_per_host",
            ok: &["1", "100000"],
            bad: &[(
                "100001",
                "100001 is above the maximum of 100000 (allowed: 1..=100000)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.pool]\nmax_idle_per_host = {v}",
            path: "upstreams.a.pool.max_idle_per_host",
            ok: &["0", "100000"],
            bad: &[
                (
                    "100001",
                    "100001 is above the maximum of 100000 (allowed: 0..=100000)",
                ),
                ("-1", "must be at least 0, got -1 (allowed: 0..=100000)"),
            ],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.pool]\nidle_timeout = {v}",
            path: "upstreams.a.pool.idle_timeout",
            ok: &["\"1h\""],
            bad: &[(
                "\"2h\"",
                "2h is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.timeouts]\nconnect = {v}",
            path: "upstreams.a.timeouts.connect",
            ok: &["\"1ms\"", "\"1h\""],
            bad: &[(
                "3601",
                "3601s is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.timeouts]\nrequest = {v}",
            path: "upstreams.a.timeouts.request",
            ok: &["\"1h\""],
            bad: &[(
                "1e19",
                "1e19s is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
        Case {
            at: At::End,
            lines: "[upstreams.a.timeouts]\nidle = {v}",
            path: "upstreams.a.timeouts.idle",
            ok: &["\"1h\""],
            bad: &[(
                "\"2h\"",
                "2h is above the maximum of 1h (allowed: 1ms..=1h)",
            )],
        },
    ]);
}

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

/// A `${VAR}` value is checked against its bounds after interpolation.
#[test]
fn interpolated_values_are_bounded_too() {
    let text = "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\ntimeout = \"${T}\"\n";
    assert!(parse_env(text, &[("T", "1h")]).is_ok());
    let err = parse_env(text, &[("T", "2h")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml:6:11: routes[0].timeout: 2h is above the maximum of 1h (allowed: 1ms..=1h)"
    );
}
