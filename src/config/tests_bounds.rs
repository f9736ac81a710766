//! Every bounded value at its bounds (accepted) and just past them (refused at the
//! value's line and column, the message stating the allowed range), and values far
//! past anything a `Duration` or `u64` holds: the listener, `[limits]`, `[tracing]`
//! and the upstream's own keys here, its policies and the route's in
//! `tests_bounds_policy.rs`.

use super::tests::parse_env;
use super::Problem;

/// Where a case's lines go in the test file.
#[derive(Clone, Copy)]
pub(super) enum At {
    /// Inside `[upstreams.a]`.
    Upstream,
    /// Inside the one `[[routes]]` entry.
    Route,
    /// After everything, under their own table header.
    End,
}

/// One bounded key: `lines` hold `{v}` where the value goes (and any other keys the
/// case needs); `path` is the key's TOML path in messages.
pub(super) struct Case {
    pub(super) at: At,
    pub(super) lines: &'static str,
    pub(super) path: &'static str,
    /// Values that must be accepted (the bounds themselves).
    pub(super) ok: &'static [&'static str],
    /// Values that must be refused, each with the message after `path: `.
    pub(super) bad: &'static [(&'static str, &'static str)],
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

pub(super) fn check(cases: &[Case]) {
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

/// A `${VAR}` value is checked against its bounds after interpolation, and the
/// message does not quote it, short as it is.
#[test]
fn interpolated_values_are_bounded_too() {
    let text = "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\ntimeout = \"${T}\"\n";
    assert!(parse_env(text, &[("T", "1h")]).is_ok());
    let err = parse_env(text, &[("T", "2h")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "t.toml:6:11: routes[0].timeout: <redacted> is above the maximum of 1h (allowed: 1ms..=1h)"
    );
}
