//! How a bad file is reported: every semantic problem collected, each located at the
//! right line and column, syntax and type errors located by toml's span.

use super::error::line_col;
use super::tests::{parse_env, MINIMAL};
use super::*;

fn problems(text: &str) -> Vec<Problem> {
    problems_env(text, &[])
}

fn problems_env(text: &str, vars: &[(&str, &str)]) -> Vec<Problem> {
    match parse_env(text, vars) {
        Ok(_) => panic!("expected an invalid config:\n{text}"),
        Err(e) => e.problems().to_vec(),
    }
}

/// The single problem of `text`, which must mention `needle`.
fn one(text: &str, needle: &str) -> Problem {
    let ps = problems(text);
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    assert!(
        ps[0].message.contains(needle),
        "{:?} does not mention {needle:?}",
        ps[0].message
    );
    ps[0].clone()
}

/// `MINIMAL` plus `extra` appended to its route, which must give one problem.
fn route_problem(extra: &str, needle: &str) -> Problem {
    one(&format!("{MINIMAL}{extra}\n"), needle)
}

/// `MINIMAL` with `extra` appended to upstream `a`.
fn upstream_problem(extra: &str, needle: &str) -> Problem {
    let text = MINIMAL.replacen("\n\n[[routes]]", &format!("\n{extra}\n\n[[routes]]"), 1);
    one(&text, needle)
}

/// An upstream `a` whose only key is `extra` (no routes).
fn endpoint_problem(extra: &str, needle: &str) -> Problem {
    one(&format!("[upstreams.a]\n{extra}\n"), needle)
}

#[test]
fn line_and_column_are_one_based_and_count_characters() {
    let text = "ab\ncdé\nf";
    assert_eq!(line_col(text, 0), (1, 1));
    assert_eq!(line_col(text, 3), (2, 1));
    assert_eq!(line_col(text, 8), (3, 1)); // after the two-byte é
    assert_eq!(line_col(text, 7), (2, 4));
    assert_eq!(line_col(text, 999), (3, 2));
}

#[test]
fn unknown_key_is_refused_at_the_key() {
    let text = "[listener]\naddress = \"0.0.0.0:8080\"\n  max_conections = 5\n";
    let p = one(text, "unknown field `max_conections`");
    assert_eq!((p.file.as_str(), p.line, p.column), ("t.toml", 3, 3));
    assert!(
        p.message.starts_with("listener.max_conections: "),
        "{}",
        p.message
    );
    assert!(
        p.message.contains("max_connections"),
        "lists the allowed keys"
    );
    assert_eq!(p.to_string(), format!("t.toml:3:3: {}", p.message));
}

#[test]
fn unknown_key_in_an_inline_table_inside_an_array() {
    let text =
        "[upstreams.a]\nendpoints = [\"127.0.0.1:1\", { address = \"127.0.0.1:2\", wieght = 2 }]\n";
    let p = one(text, "unknown field `wieght`");
    assert_eq!((p.line, p.column), (2, 56));
    assert!(
        p.message.starts_with("upstreams.a.endpoints[1].wieght: "),
        "{}",
        p.message
    );
}

#[test]
fn type_error_is_located_at_the_value() {
    let text = "[listener]\nmax_connections = \"many\"\n";
    let p = one(text, "invalid type: string \"many\"");
    assert_eq!((p.line, p.column), (2, 19));
    assert!(
        p.message.starts_with("listener.max_connections: "),
        "{}",
        p.message
    );

    let p = one("[listener]\nidle_timeout = true\n", "expected a duration");
    assert_eq!((p.line, p.column), (2, 16));
    let p = one("[listener]\nmax_request_body = 1.5\n", "expected a size");
    assert_eq!((p.line, p.column), (2, 20));
}

/// An integer past i64 fails the TOML parse itself, so no parsed document can say
/// whose value it is: the key path comes from the line and the headers above it.
#[test]
fn an_integer_too_large_for_toml_names_its_key() {
    let p = one(
        "[listener]\nmax_connections = 99999999999999999999\n",
        "integer too large",
    );
    assert_eq!((p.line, p.column), (2, 19));
    assert!(
        p.message.starts_with("listener.max_connections: "),
        "{}",
        p.message
    );
    let text = format!(
        "{MINIMAL}\n[[routes]]\npath_prefix = \"/b\"\nupstream = \"a\"\ntimeout = 1\n\
         retry.max_attempts = 99999999999999999999\n"
    );
    let p = one(&text, "integer too large");
    assert!(
        p.message.starts_with("routes[1].retry.max_attempts: "),
        "{}",
        p.message
    );
    let p = one(
        "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n\n[upstreams.a.pool]\n\
         max_idle_per_host = -99999999999999999999\n",
        "integer too small",
    );
    assert!(
        p.message
            .starts_with("upstreams.a.pool.max_idle_per_host: "),
        "{}",
        p.message
    );
}

#[test]
fn syntax_error_is_located_and_on_one_line() {
    let p = one("[listener]\naddress = \"0.0.0.0:8080\n", "");
    assert_eq!(p.line, 2);
    assert!(!p.to_string().contains('\n'));
}

#[test]
fn semantic_error_is_located_at_the_value() {
    let text = r#"[upstreams.yolo]
endpoints = ["127.0.0.1:9001"]

[upstreams.ocr]
endpoints = ["127.0.0.1:9003"]

[[routes]]
path_prefix = "/a"
upstream = "yolo"

[[routes]]
path_prefix = "/b"
upstream  = "yolo2"
"#;
    let p = one(text, "unknown upstream");
    assert_eq!(
        p.to_string(),
        "t.toml:13:13: routes[1].upstream: unknown upstream \"yolo2\"; expected one of: yolo, ocr"
    );
}

#[test]
fn an_absent_key_is_reported_at_its_table() {
    let text = "[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"x\"\npath_prefix = \"/\"\n";
    let p = one(text, "missing `upstream`");
    assert_eq!((p.line, p.column), (4, 1));
    assert!(p.message.starts_with("routes[0]: "));

    let p = one(
        "[upstreams.a]\nprotocol = \"http1\"\n",
        "missing `endpoints`",
    );
    assert_eq!((p.line, p.column), (1, 1));
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let text = r#"[listener]
max_connections = 0

[upstreams.a]
endpoints = []
protocol = "http3"

[[routes]]
name = "x"
path_prefix = "detect"
upstream = "b"

[[routes]]
name = "x"
upstream = "a"
"#;
    let ps = problems(text);
    let got: Vec<(usize, &str)> = ps.iter().map(|p| (p.line, p.message.as_str())).collect();
    let expect: [(usize, &str); 6] = [
        (2, "listener.max_connections: must be at least 1, got 0 (allowed: 1..=1000000)"),
        (5, "upstreams.a.endpoints: an upstream needs at least one endpoint"),
        (6, "upstreams.a.protocol: unknown protocol \"http3\"; expected one of: http1, h2c, https, h2"),
        (10, "routes[0].path_prefix: \"detect\" must start with `/`"),
        (11, "routes[0].upstream: unknown upstream \"b\"; expected one of: a"),
        (13, "routes[1]: a route needs at least one match field: host, path_prefix, methods or headers"),
    ];
    assert_eq!(got[..6], expect, "{got:#?}");
    assert_eq!(
        got[6],
        (
            14,
            "routes[1].name: duplicate route name \"x\" (also used by routes[0])"
        )
    );
    assert_eq!(got.len(), 7);
    let shown = ConfigError::Invalid(ps).to_string();
    assert_eq!(shown.lines().count(), 7);
    assert!(
        shown.starts_with("t.toml:2:19: listener.max_connections"),
        "{shown}"
    );
}

#[test]
fn unset_variable_is_named_and_located() {
    let text = "[listener]\naddress = \"0.0.0.0:${PORT}\"\n";
    let p = one(text, "environment variable PORT is not set");
    assert_eq!((p.line, p.column), (2, 11));
}

#[test]
fn listener_and_admin_cannot_share_a_port() {
    one(
        "[listener]\naddress = \"0.0.0.0:32204\"\n[admin]\naddress = \"127.0.0.1:32204\"\n",
        "cannot be bound beside the listener's address 0.0.0.0:32204: same port",
    );
    one(
        "[listener]\naddress = \"127.0.0.1:32204\"\n[admin]\naddress = \"127.0.0.1:32204\"\n",
        "same port",
    );
    // Different addresses, both specific: both can be bound.
    assert!(parse_env(
        "[listener]\naddress = \"127.0.0.1:32204\"\n[admin]\naddress = \"127.0.0.2:32204\"\n",
        &[]
    )
    .is_ok());
}

#[test]
fn an_upstream_tls_server_name_must_be_a_dns_name_or_an_ip() {
    upstream_problem(
        "protocol = \"https\"\ntls = { server_name = \"bad name!\" }",
        "\"bad name!\" is not a DNS name or an IP address",
    );
    let good = MINIMAL.replacen(
        "\n\n[[routes]]",
        "\nprotocol = \"https\"\ntls = { server_name = \"models.internal\" }\n\n[[routes]]",
        1,
    );
    assert!(parse_env(&good, &[]).is_ok());
}

#[test]
fn a_health_check_path_must_be_a_valid_request_path() {
    upstream_problem(
        "health_check = { path = \"/a b\" }",
        "\"/a b\" is not a valid request path",
    );
}

/// Values from `${VAR}` are secrets: a problem message that would quote one (an
/// invalid header value, a URL holding credentials) shows `<redacted>` instead, since
/// messages reach the log and `/config`'s `last_reload.error`.
#[test]
fn problem_messages_do_not_quote_values_from_the_environment() {
    let text = format!(
        "{}\n[tracing]\notlp_endpoint = \"http://user:${{OTLP_TOKEN}}@127.0.0.1:4318\"\n",
        MINIMAL.replacen(
            "upstream = \"a\"",
            "upstream = \"a\"\nheaders = { \"X-A\" = \"${ROUTE_SECRET}\\u0001\" }",
            1
        )
    );
    let ps = problems_env(
        &text,
        &[
            ("OTLP_TOKEN", "otlp-t0ken"),
            ("ROUTE_SECRET", "r0ute-secret"),
        ],
    );
    assert_eq!(ps.len(), 2, "{ps:#?}");
    for p in &ps {
        assert!(
            !p.message.contains("otlp-t0ken") && !p.message.contains("r0ute-secret"),
            "a secret in {:?}",
            p.message
        );
        assert!(p.message.contains("<redacted>"), "{:?}", p.message);
    }
}

#[test]
fn admin_token_rules() {
    one("[admin]\naddress = \"0.0.0.0:9901\"\n", "token_env");
    let p = one("[admin]\ntoken_env = \"TOK\"\n", "TOK is not set");
    assert_eq!((p.line, p.column), (2, 13));
    let ps = problems_env("[admin]\ntoken_env = \"TOK\"\n", &[("TOK", "")]);
    assert!(ps[0].message.contains("TOK is empty"), "{ps:?}");
    assert!(parse_env("[admin]\naddress = \"[::1]:9901\"\n", &[]).is_ok());
    one(
        "[listener]\naddress = \"127.0.0.1:9901\"\n",
        "cannot be bound beside the listener's address",
    );
}

#[test]
fn bad_route_values_are_refused() {
    route_problem(
        "methods = [\"FETCH\"]",
        "unknown method \"FETCH\"; expected one of: GET",
    );
    route_problem(
        "headers = { \"bad header\" = \"x\" }",
        "invalid header name",
    );
    route_problem(
        "headers = { \"X-A\" = \"a\\u0001b\" }",
        "invalid header value",
    );
    route_problem("strip_prefix = \"detect\"", "must start with `/`");
    route_problem(
        "headers = { \"X-A\" = \"1\", \"x-a\" = \"2\" }",
        "header x-a is listed twice",
    );
    route_problem("host = \"a.*.com\"", "wildcard");
    route_problem("host = \"a.local:8080\"", "must not include a port");
    route_problem(
        "timeout = \"0s\"",
        "routes[0].timeout: must be greater than 0",
    );
    route_problem("timeout = -1", "negative duration");
    route_problem("name = \"\"", "routes[0].name: must not be empty");
    route_problem(
        "fault = { abort_percent = 120.0 }",
        "between 0 and 100, got 120",
    );
    route_problem(
        "fault = { abort_status = 42 }",
        "42 is not a final HTTP status code",
    );
    // A 1xx is no answer: hyper sends a bare 500 for it, and a 101 leaves the caller
    // on a connection that carries nothing.
    route_problem(
        "fault = { abort_status = 101 }",
        "101 is not a final HTTP status code an answer can carry (200..=599)",
    );
    route_problem(
        "rate_limit = { requests_per_second = 0 }",
        "must be greater than 0",
    );
    route_problem(
        "rate_limit = { key = \"cookie:x\" }",
        "expected one of: global, client_ip, header:NAME",
    );
    route_problem("concurrency = { max_in_flight = 0 }", "must be at least 1");
    route_problem(
        "retry = { max_delay = \"10ms\" }",
        "max_delay (10ms) must be at least base_delay (500ms)",
    );
    route_problem(
        "circuit_breaker = { request_volume_threshold = 5 }",
        "has no effect without `window`",
    );
    route_problem(
        "circuit_breaker = { partition_by = \"X-Camera\" }",
        "expected \"header:NAME\"",
    );
}

#[test]
fn bad_upstream_values_are_refused() {
    upstream_problem(
        "load_balancing = \"fastest\"",
        "expected one of: round_robin, least_request, random, weighted",
    );
    endpoint_problem(
        "endpoints = [\"127.0.0.1:1\", \"127.0.0.1:1\"]",
        "duplicate endpoint",
    );
    endpoint_problem(
        "endpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]",
        "endpoints[0].weight: must be at least 1",
    );
    endpoint_problem("endpoints = [{ weight = 2 }]", "missing `address`");
    upstream_problem(
        "pool = { max_connections_per_host = -3 }",
        "must be at least 1, got -3",
    );
    upstream_problem("timeouts = { connect = 0 }", "must be greater than 0");
    upstream_problem("circuit_breaker = { failure_threshold = 0 }", "at least 1");
    upstream_problem(
        "circuit_breaker = { failure_status_codes = [500, 700] }",
        "failure_status_codes[1]: 700 is not",
    );
    upstream_problem(
        "circuit_breaker = { window = \"10s\", error_threshold_percentage = 150 }",
        "between 0 and 100",
    );
    upstream_problem(
        "circuit_breaker = { max_recovery_timeout = \"1s\" }",
        "must be at least recovery_timeout (30s)",
    );
    upstream_problem("retry = { budget_percent = -1 }", "between 0 and 100");
    upstream_problem(
        "retry = { max_replay_body = \"4 parsecs\" }",
        "unknown size unit",
    );
    upstream_problem("retry = { max_replay_body = -1 }", "negative size");
    upstream_problem(
        "health_check = { path = \"health\" }",
        "must start with `/`",
    );
    upstream_problem(
        "fallback = { upstream = \"nope\" }",
        "unknown upstream \"nope\"; expected one of: a",
    );
    upstream_problem(
        "fallback = { upstream = \"a\" }",
        "cannot be its own fallback",
    );
    upstream_problem("fallback = { upstream = \"a\", body = \"{}\" }", "not both");
    upstream_problem(
        "fallback = { status = 100 }",
        "100 is not a final HTTP status code",
    );
    upstream_problem("tls = { ca = \"Cargo.toml\" }", "needs protocol");
    upstream_problem(
        "protocol = \"h2\"\ntls = { client_cert = \"Cargo.toml\" }",
        "give both or neither",
    );
}

#[test]
fn upstream_without_endpoints_and_bad_names_are_refused() {
    let text = "[upstreams.\"a/b\"]\nendpoints = [\"127.0.0.1:1\"]\n";
    let p = one(text, "may only hold letters");
    assert!(
        p.message.starts_with("upstreams.\"a/b\": "),
        "{}",
        p.message
    );
    assert_eq!((p.line, p.column), (1, 1));
}

#[test]
fn an_empty_upstream_name_is_unknown() {
    route_problem_replacing(
        "upstream = \"a\"",
        "upstream = \"\"",
        "unknown upstream \"\"",
    );
}

#[test]
fn a_path_prefix_with_a_query_or_fragment_is_refused() {
    route_problem_replacing(
        "path_prefix = \"/\"",
        "path_prefix = \"/detect?v=2\"",
        "holds no `?` or `#`",
    );
}

/// `MINIMAL` with `from` replaced by `to`, which must give one problem.
fn route_problem_replacing(from: &str, to: &str, needle: &str) -> Problem {
    one(&MINIMAL.replace(from, to), needle)
}

#[test]
fn truncated_and_garbled_files_give_errors_not_panics() {
    // Every prefix of the example (cut at char boundaries) and a few byte swaps must
    // come back as Ok or located problems, never a panic or an out-of-range position.
    let text = DEFAULT_CONFIG_TOML;
    let cuts = (0..text.len())
        .step_by(5)
        .filter(|&i| text.is_char_boundary(i));
    let variants = cuts.map(|i| text[..i].to_string()).chain(
        ["=", "[", "\"", "0", "-"]
            .iter()
            .map(|s| text.replace(" = ", &format!(" {s} "))),
    );
    for variant in variants {
        if let Err(e) = parse_env(&variant, &[]) {
            let lines = variant.lines().count().max(1);
            for p in e.problems() {
                assert!(p.line >= 1 && p.line <= lines + 1 && p.column >= 1, "{p}");
            }
        }
    }
}

#[test]
fn a_refused_value_gives_no_follow_on_problem() {
    // max_delay is refused and takes its default (5s); comparing that default with
    // base_delay would report a second, made-up problem.
    let p = upstream_problem(
        "retry = { base_delay = \"10s\", max_delay = \"soon\" }",
        "invalid duration \"soon\"",
    );
    assert!(
        p.message.starts_with("upstreams.a.retry.max_delay: "),
        "{p}"
    );
    upstream_problem(
        "circuit_breaker = { recovery_timeout = \"10m\", max_recovery_timeout = \"48h\" }",
        "48h is above the maximum of 24h",
    );
    upstream_problem(
        "adaptive_concurrency = { min_limit = 300, max_limit = 0 }",
        "max_limit: must be at least 1, got 0",
    );
}

#[test]
fn keys_of_a_refused_mode_key_are_still_checked() {
    // window is refused, so error-rate mode is off; its keys are still checked rather
    // than passed over.
    let text = MINIMAL.replacen(
        "\n\n[[routes]]",
        "\n[upstreams.a.circuit_breaker]\nwindow = \"2h\"\nrequest_volume_threshold = 0\n\n[[routes]]",
        1,
    );
    let ps = problems(&text);
    let got: Vec<&str> = ps.iter().map(|p| p.message.as_str()).collect();
    assert_eq!(
        got,
        [
            "upstreams.a.circuit_breaker.window: 2h is above the maximum of 1h (allowed: 1ms..=1h)",
            "upstreams.a.circuit_breaker.request_volume_threshold: must be at least 1, got 0 (allowed: 1..=1000000)",
        ]
    );
}

/// A rate threshold of 0 would open the breaker on healthy traffic (a share of 0 bad or
/// slow calls reaches it): refused, with the key's location.
#[test]
fn zero_rate_thresholds_are_refused() {
    upstream_problem(
        "circuit_breaker = { window = \"10s\", error_threshold_percentage = 0 }",
        "must be greater than 0",
    );
    upstream_problem(
        "circuit_breaker = { slow_call_duration = \"5s\", slow_call_rate_threshold = 0 }",
        "must be greater than 0",
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever the text (broken headers, keys and values, numbers past i64,
    /// multi-byte characters), a file that does not parse is refused with a located
    /// problem and never a panic.
    #[test]
    fn any_text_is_refused_or_accepted_without_panic(
        text in "(\\[\\[?[a-z.]{0,6}\\]?\\]?|[a-z\"é.]{0,6} ?= ?(-?[0-9]{1,22}|\"[a-zé]{0,4}\"?|\\[[0-9, ]{0,6}\\]?)|\\n){0,12}"
    ) {
        if let Err(e) = parse_env(&text, &[]) {
            for p in e.problems() {
                proptest::prop_assert!(p.line >= 1 && p.column >= 1, "{p}");
            }
        }
    }
}
