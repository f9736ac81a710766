//! The newer keys ([limits], [tracing], peak_ewma and load reports, adaptive
//! concurrency, shed_on_deadline): default, valid and invalid values; and
//! `parse_with_options` with `allow_missing_env`.

use std::collections::HashMap;
use std::time::Duration;

use super::tests::{ok, parse_env, MINIMAL};
use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The problems of `text`, which must be refused.
fn refused(text: &str) -> Vec<String> {
    match parse_env(text, &[]) {
        Ok(_) => panic!("expected an invalid config:\n{text}"),
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

/// `MINIMAL` with `extra` lines appended to upstream `a`.
fn with_upstream(extra: &str) -> String {
    MINIMAL.replacen("\n\n[[routes]]", &format!("\n{extra}\n\n[[routes]]"), 1)
}

#[test]
fn new_keys_take_their_defaults() {
    let c = ok(MINIMAL);
    assert_eq!(c.limits.max_buffered_body_bytes, 256 << 20);
    assert_eq!(c.limits.priority_header, "x-priority");
    assert!(c.tracing.is_none());
    let u = &c.upstreams["a"];
    assert_eq!(u.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(u.load_report_header, None);
    assert!(!u.forward_load_report);
    assert_eq!(u.load_report_expiry, Duration::from_secs(2));
    assert_eq!(
        u.peak_ewma,
        PeakEwmaConfig {
            default_latency: ms(30),
            decay: Duration::from_secs(1)
        }
    );
    assert!(u.adaptive_concurrency.is_none());
    assert!(c.routes[0].shed_on_deadline);
}

#[test]
fn limits_are_read() {
    let c = ok(&format!(
        "{MINIMAL}\n[limits]\nmax_buffered_body_bytes = \"1GiB\"\npriority_header = \"X-Prio\"\n"
    ));
    assert_eq!(c.limits.max_buffered_body_bytes, 1 << 30);
    assert_eq!(c.limits.priority_header, "x-prio");
    let ps = refused(&format!(
        "{MINIMAL}\n[limits]\npriority_header = \"bad header\"\n"
    ));
    assert_eq!(
        ps,
        ["t.toml:10:19: limits.priority_header: invalid header name \"bad header\""]
    );
    let ps = refused(&format!("{MINIMAL}\n[limits]\nmax_buffered = 1\n"));
    assert!(ps[0].contains("unknown field `max_buffered`"), "{ps:?}");
}

#[test]
fn tracing_is_off_without_an_endpoint_and_read_with_one() {
    assert!(ok(&format!("{MINIMAL}\n[tracing]\n")).tracing.is_none());
    let text = format!(
        "[service]\nname = \"fusion\"\n{MINIMAL}\n[tracing]\notlp_endpoint = \"http://otel:4318\"\n"
    );
    let t = ok(&text).tracing.expect("tracing on");
    assert_eq!(t.otlp_endpoint, "http://otel:4318/");
    assert_eq!(t.traces_url, "http://otel:4318/v1/traces");
    assert_eq!(t.sample_ratio, 0.05);
    assert!(t.headers.is_empty());
    assert_eq!(t.service_name, "fusion", "defaults to service.name");
    assert_eq!(
        (t.max_queue, t.export_timeout),
        (2048, Duration::from_secs(10))
    );

    let text = format!(
        r#"{MINIMAL}
[tracing]
otlp_endpoint = "https://otel.example.com/otlp"
sample_ratio = 1
headers = {{ "Authorization" = "Bearer ${{OTLP_TOKEN}}", "x-tenant" = "vision" }}
service_name = "fusebox-sidecar"
max_queue = 512
export_timeout = "2s"
"#
    );
    let c = parse_env(&text, &[("OTLP_TOKEN", "s3cret")]).unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.traces_url, "https://otel.example.com/otlp/v1/traces");
    assert_eq!(t.sample_ratio, 1.0);
    assert_eq!(t.headers[0].0, "authorization");
    assert_eq!(t.headers[0].1, "Bearer s3cret");
    assert!(t.headers[0].1.is_sensitive(), "kept out of Debug output");
    assert_eq!(t.headers[1].0, "x-tenant");
    assert_eq!(t.service_name, "fusebox-sidecar");
    assert_eq!(
        (t.max_queue, t.export_timeout),
        (512, Duration::from_secs(2))
    );
}

#[test]
fn bad_tracing_values_are_refused() {
    let tracing = |lines: &str| format!("{MINIMAL}\n[tracing]\n{lines}\n");
    let ps = refused(&tracing("otlp_endpoint = \"otel:4318\""));
    assert_eq!(ps.len(), 1);
    assert!(
        ps[0].starts_with("t.toml:10:17: tracing.otlp_endpoint: URL \"otel:4318\" must start with http:// or https://"),
        "{ps:?}"
    );
    let ps = refused(&tracing("sample_ratio = 0.5\nmax_queue = 10"));
    assert_eq!(
        ps,
        [
            "t.toml:10:16: tracing.sample_ratio: has no effect without `otlp_endpoint`, which turns this mode on",
            "t.toml:11:13: tracing.max_queue: has no effect without `otlp_endpoint`, which turns this mode on",
        ]
    );
    // A secret with a control character: refused without being echoed.
    let text =
        tracing("otlp_endpoint = \"http://c:4318\"\nheaders = { authorization = \"${TOK}\" }");
    let err = parse_env(&text, &[("TOK", "s3cret\u{1}")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tracing.headers.authorization: invalid header value"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
    let ps = refused(&tracing(
        "otlp_endpoint = \"http://c:4318\"\nheaders = { \"bad name\" = \"x\" }",
    ));
    assert!(ps[0].contains("invalid header name"), "{ps:?}");
}

/// `"${OTLP_ENDPOINT:-}"` turns tracing off where the variable is unset, and the other
/// keys are still checked.
#[test]
fn an_empty_endpoint_turns_tracing_off() {
    let text = format!(
        "{MINIMAL}\n[tracing]\notlp_endpoint = \"${{OTLP_ENDPOINT:-}}\"\nsample_ratio = 0.5\n"
    );
    assert!(parse_env(&text, &[]).unwrap().tracing.is_none());
    let on = parse_env(&text, &[("OTLP_ENDPOINT", "http://c:4318")]).unwrap();
    assert_eq!(on.tracing.unwrap().sample_ratio, 0.5);
    let bad = text.replace("0.5", "5.0");
    assert!(parse_env(&bad, &[])
        .unwrap_err()
        .to_string()
        .contains("sample_ratio"));
}

#[test]
fn peak_ewma_and_load_reports_are_read() {
    let c = ok(&with_upstream(
        "load_balancing = \"peak_ewma\"\nload_report_header = \"X-Queue-Depth\"\nforward_load_report = true\nload_report_expiry = \"500ms\"\npeak_ewma = { default_latency = \"5ms\", decay = \"1s\" }",
    ));
    let u = &c.upstreams["a"];
    assert_eq!(u.load_balancing, LoadBalancing::PeakEwma);
    assert_eq!(u.load_report_header.as_ref().unwrap(), "x-queue-depth");
    assert!(u.forward_load_report);
    assert_eq!(u.load_report_expiry, ms(500));
    assert_eq!(
        (u.peak_ewma.default_latency, u.peak_ewma.decay),
        (ms(5), ms(1000))
    );

    let ps = refused(&with_upstream("load_balancing = \"fastest\""));
    assert!(
        ps[0].ends_with("expected one of: round_robin, least_request, random, weighted, peak_ewma"),
        "{ps:?}"
    );
    let ps = refused(&with_upstream("load_report_header = \"x queue\""));
    assert_eq!(
        ps,
        ["t.toml:4:22: upstreams.a.load_report_header: invalid header name \"x queue\""]
    );
    for name in [
        "grpc-status",
        "Content-Length",
        "transfer-encoding",
        "x-request-id",
    ] {
        let ps = refused(&with_upstream(&format!("load_report_header = \"{name}\"")));
        assert!(
            ps.len() == 1 && ps[0].contains("is a header the answer needs"),
            "{name}: {ps:?}"
        );
    }
    let ps = refused(&with_upstream("peak_ewma = { decay = \"soon\" }"));
    assert!(
        ps[0].contains("upstreams.a.peak_ewma.decay: invalid duration"),
        "{ps:?}"
    );
    let ps = refused(&with_upstream("peak_ewma = { alpha = 0.5 }"));
    assert!(ps[0].contains("unknown field `alpha`"), "{ps:?}");
}

#[test]
fn adaptive_concurrency_defaults_clamping_and_refusals() {
    let limits = |lines: &str| {
        let c = ok(&with_upstream(&format!(
            "adaptive_concurrency = {{ {lines} }}"
        )));
        let a = c.upstreams["a"].adaptive_concurrency.clone().expect("on");
        (
            a.min_limit,
            a.initial_limit,
            a.max_limit,
            a.rtt_tolerance,
            a.smoothing,
        )
    };
    assert_eq!(limits(""), (1, 20, 256, 1.5, 0.2));
    assert_eq!(
        limits("min_limit = 50"),
        (50, 50, 256, 1.5, 0.2),
        "initial clamped up"
    );
    assert_eq!(
        limits("max_limit = 10"),
        (1, 10, 10, 1.5, 0.2),
        "initial clamped down"
    );
    assert_eq!(
        limits("initial_limit = 100, rtt_tolerance = 2.0, smoothing = 1.0"),
        (1, 100, 256, 2.0, 1.0)
    );
    assert_eq!(limits("min_limit = 7, max_limit = 7"), (7, 7, 7, 1.5, 0.2));

    let ps = refused(&with_upstream("adaptive_concurrency = { min_limit = 300 }"));
    assert_eq!(
        ps,
        ["t.toml:4:38: upstreams.a.adaptive_concurrency.min_limit: min_limit (300) must be at most max_limit (256)"]
    );
    let ps = refused(&with_upstream(
        "adaptive_concurrency = { min_limit = 30, max_limit = 20 }",
    ));
    assert!(
        ps[0].contains(
            "adaptive_concurrency.max_limit: min_limit (30) must be at most max_limit (20)"
        ),
        "{ps:?}"
    );
    let ps = refused(&with_upstream(
        "adaptive_concurrency = { rtt_tolerance = 0.5 }",
    ));
    assert!(
        ps[0].contains("rtt_tolerance: 0.5 is below the minimum of 1"),
        "{ps:?}"
    );
}

#[test]
fn shed_on_deadline_is_read() {
    let c = ok(&format!("{MINIMAL}shed_on_deadline = false\n"));
    assert!(!c.routes[0].shed_on_deadline);
    let ps = refused(&format!("{MINIMAL}shed_on_deadline = \"no\"\n"));
    assert!(
        ps[0].contains("routes[0].shed_on_deadline: invalid type"),
        "{ps:?}"
    );
}

/// Unset variables, as a CI job without the pod's secrets sees them.
const NEEDS_SECRETS: &str = r#"[admin]
address = "0.0.0.0:9901"
token_env = "FUSEBOX_ADMIN_TOKEN"

[tracing]
otlp_endpoint = "http://otel:4318"
headers = { authorization = "Bearer ${OTLP_TOKEN}" }

[upstreams.a]
endpoints = ["${YOLO_HOST}:9001", "127.0.0.1:9002"]
[upstreams.a.retry]
base_delay = "10s"
max_delay = "${MAX_DELAY}"

[[routes]]
path_prefix = "/"
upstream = "a"
"#;

fn parse_allowing(text: &str, vars: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let env = move |name: &str| map.get(name).cloned();
    let options = ParseOptions {
        env: &env,
        allow_missing_env: true,
        allow_missing_files: false,
    };
    parse_with_options(text, "t.toml", None, &options)
}

#[test]
fn allow_missing_env_lists_the_unset_variables_in_file_order() {
    let parsed = parse_allowing(NEEDS_SECRETS, &[]).expect("valid but for the variables");
    let missing: Vec<String> = parsed.missing_env.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        missing,
        [
            "FUSEBOX_ADMIN_TOKEN (admin.token_env)",
            "OTLP_TOKEN (tracing.headers.authorization)",
            "YOLO_HOST (upstreams.a.endpoints[0])",
            "MAX_DELAY (upstreams.a.retry.max_delay)",
        ]
    );
    assert_eq!(
        (parsed.missing_env[0].line, parsed.missing_env[0].column),
        (3, 13)
    );
    let c = &parsed.config;
    assert_eq!(c.admin.token, None, "no token invented");
    assert!(
        c.tracing.as_ref().unwrap().headers.is_empty(),
        "header skipped"
    );
    assert_eq!(c.upstreams["a"].endpoints.len(), 1, "endpoint skipped");

    // With every variable set, nothing is missing and the same file is valid.
    let all = [
        ("FUSEBOX_ADMIN_TOKEN", "t"),
        ("OTLP_TOKEN", "o"),
        ("YOLO_HOST", "yolo"),
        ("MAX_DELAY", "20s"),
    ];
    assert!(parse_allowing(NEEDS_SECRETS, &all)
        .unwrap()
        .missing_env
        .is_empty());
    assert!(parse_env(NEEDS_SECRETS, &all).is_ok());
}

#[test]
fn allow_missing_env_still_refuses_every_other_problem() {
    let text = NEEDS_SECRETS.replace("upstream = \"a\"", "upstream = \"a\"\ntimeout = \"2h\"");
    let err = parse_allowing(&text, &[]).unwrap_err().to_string();
    assert_eq!(
        err,
        "t.toml:18:11: routes[0].timeout: 2h is above the maximum of 1h (allowed: 1ms..=1h)"
    );
    // A malformed reference is not a missing variable.
    let err = parse_allowing(&NEEDS_SECRETS.replace("${MAX_DELAY}", "${MAX-DELAY}"), &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("invalid environment variable reference"),
        "{err}"
    );
    // A set but empty token is still wrong.
    let err = parse_allowing(NEEDS_SECRETS, &[("FUSEBOX_ADMIN_TOKEN", " ")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("FUSEBOX_ADMIN_TOKEN is empty"), "{err}");
}

#[test]
fn without_the_option_a_missing_variable_says_how_to_go_on() {
    let err = parse_env(NEEDS_SECRETS, &[]).unwrap_err();
    let lines: Vec<String> = err.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert_eq!(
        lines[0],
        "t.toml:3:13: admin.token_env: environment variable FUSEBOX_ADMIN_TOKEN is not set; it must hold the admin token (run validate --allow-missing-env to check the rest without it)"
    );
    assert_eq!(
        lines[2],
        "t.toml:10:14: upstreams.a.endpoints[0]: environment variable YOLO_HOST is not set (write ${YOLO_HOST:-default} to give a default, or run validate --allow-missing-env to check the rest without it)"
    );
}

#[test]
fn grpc_codes_take_names_numbers_and_number_strings() {
    let c = ok(&with_upstream(
        "[upstreams.a.retry]\nretry_grpc_codes = [8, \"unavailable\", \"4\"]\n\
         [upstreams.a.circuit_breaker]\nfailure_grpc_codes = [13, \"INTERNAL\"]",
    ));
    let u = &c.upstreams["a"];
    assert_eq!(u.retry.retry_grpc_codes, vec![8, 14, 4]);
    assert_eq!(u.circuit_breaker.failure_grpc_codes, vec![13, 13]);
    let p = refused(&with_upstream(
        "[upstreams.a.retry]\nretry_grpc_codes = [17]",
    ));
    assert!(
        p.iter()
            .any(|p| p.contains("unknown gRPC status") && p.contains(":")),
        "{p:?}"
    );
}

#[test]
fn log_levels_must_name_a_level() {
    for ok_level in [
        "info",
        "WARN",
        "fusebox=debug,info",
        "off",
        "hyper=warn,fusebox=trace",
    ] {
        let c = ok(&MINIMAL.replacen(
            "[[routes]]",
            &format!("[logging]\nlevel = \"{ok_level}\"\n\n[[routes]]"),
            1,
        ));
        assert_eq!(c.logging.level, ok_level);
    }
    for bad in ["warning", "inf", "verbose!!", "fusebox=loud"] {
        let p = refused(&MINIMAL.replacen(
            "[[routes]]",
            &format!("[logging]\nlevel = \"{bad}\"\n\n[[routes]]"),
            1,
        ));
        assert!(
            p.iter()
                .any(|p| p.contains("logging.level") && p.contains("names no level")),
            "{bad}: {p:?}"
        );
    }
    // Spaces around the commas are dropped; one inside a directive is refused (a
    // target `fusebox ` would match nothing, in silence).
    let c = ok(&MINIMAL.replacen(
        "[[routes]]",
        "[logging]\nlevel = \"hyper=warn, fusebox=trace \"\n\n[[routes]]",
        1,
    ));
    assert_eq!(c.logging.level, "hyper=warn,fusebox=trace");
    for bad in ["fusebox =debug,info", "info,fusebox= debug"] {
        let p = refused(&MINIMAL.replacen(
            "[[routes]]",
            &format!("[logging]\nlevel = \"{bad}\"\n\n[[routes]]"),
            1,
        ));
        assert!(
            p.iter()
                .any(|p| p.contains("logging.level") && p.contains("space inside")),
            "{bad}: {p:?}"
        );
    }
}

#[test]
fn an_empty_file_is_refused() {
    for text in ["", "  \n\n\t\n"] {
        let p = refused(text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains(":1:1") && p[0].contains("empty"), "{p:?}");
    }
}
