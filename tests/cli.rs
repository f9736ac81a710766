//! The command line: `validate` accepts a good file (exit 0) and refuses a bad one
//! (exit 1, each problem located as FILE:LINE:COL), `--version`, `--help`, `run` with a
//! bad file, `${VAR}` interpolation, and the embedded default config.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p.display().to_string()
}

/// Whether some line of `out` reads `PATH:LINE:COL: message`.
fn located(out: &str, path: &str, line: u32) -> bool {
    let prefix = format!("{path}:{line}:");
    out.lines().any(|l| {
        l.find(&prefix).is_some_and(|i| {
            let rest = &l[i + prefix.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with(':')
        })
    })
}

const GOOD: &str = r#"[service]
name = "fusion"

[upstreams.yolo]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]

[[routes]]
name = "detect"
path_prefix = "/detect"
upstream = "yolo"
timeout = "1.5s"
"#;

#[test]
fn validate_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = run_binary(&["validate", "--config", &path], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_reads_fusebox_config_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "good.toml", GOOD);
    let out = run_binary(&["validate"], &[("FUSEBOX_CONFIG", path.as_str())]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_locates_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[service]\nname = \"x\"\n\n[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\nload_balancer = \"round_robin\"\n";
    let path = write(dir.path(), "typo.toml", text);
    let out = run_binary(&["validate", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        located(&err, &path, 6),
        "the error names {path}:6:COL: {err}"
    );
    assert!(
        err.contains("load_balancer"),
        "the error names the key: {err}"
    );
}

#[test]
fn validate_locates_semantic_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[listener]
address = "127.0.0.1:0"
max_connections = 0

[upstreams.a]
endpoints = ["127.0.0.1:9001"]

[[routes]]
name = "r"
path_prefix = "/"
upstream = "missing"
"#;
    let path = write(dir.path(), "bad.toml", text);
    let out = run_binary(&["validate", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        located(&err, &path, 11),
        "unknown upstream located at line 11: {err}"
    );
    assert!(err.contains("missing"), "names the unknown upstream: {err}");
    assert!(
        located(&err, &path, 3),
        "zero max_connections located at line 3: {err}"
    );
}

#[test]
fn validate_locates_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[upstreams.a]
endpoints = ["127.0.0.1:9001"]

[upstreams.a.timeouts]
connect = "soon"
"#;
    let path = write(dir.path(), "dur.toml", text);
    let out = run_binary(&["validate", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        located(&err, &path, 5),
        "bad duration located at line 5: {err}"
    );
}

#[test]
fn validate_interpolates_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let text = r#"[upstreams.a]
endpoints = ["${FUSEBOX_TEST_ENDPOINT}"]

[[routes]]
path_prefix = "${FUSEBOX_TEST_UNSET_PREFIX:-/detect}"
upstream = "a"
"#;
    let path = write(dir.path(), "env.toml", text);
    let out = run_binary(
        &["validate", "--config", &path],
        &[("FUSEBOX_TEST_ENDPOINT", "127.0.0.1:9001")],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_binary(&["validate", "--config", &path], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unset variable without default is an error"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(located(&err, &path, 2), "located at line 2: {err}");
}

#[test]
fn run_refuses_a_bad_file_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[listener]\naddress = \"not an address\"\n";
    let path = write(dir.path(), "bad.toml", text);
    let out = run_binary(&["run", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(located(&err, &path, 2), "located at line 2: {err}");
}

#[test]
fn version_prints_name_and_version() {
    let out = run_binary(&["--version"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(s.trim(), format!("fusebox {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn help_lists_the_commands() {
    let out = run_binary(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let s = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "validate", "demo", "--config", "--version"] {
        assert!(s.contains(word), "--help mentions {word}: {s}");
    }
}

/// The embedded default (served when no config file is given) is the documented
/// example, and it is valid both in-process and through `validate`.
#[test]
fn embedded_default_is_the_documented_example_and_valid() {
    let example_path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fusebox.toml");
    let example = std::fs::read_to_string(example_path).expect("config/fusebox.toml");
    assert_eq!(fusebox::config::DEFAULT_CONFIG_TOML, example);
    let cfg = fusebox::config::embedded_default();
    assert!(!cfg.upstreams.is_empty(), "the default has an upstream");
    assert!(!cfg.routes.is_empty(), "the default has a route");
    let out = run_binary(&["validate", "--config", example_path], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `fusebox::config::parse` reports located problems too (the library API).
#[test]
fn parse_errors_are_located() {
    let err = fusebox::config::parse("[service]\nnmae = \"x\"\n", "inline.toml", None)
        .expect_err("unknown key");
    assert!(located(&err.to_string(), "inline.toml", 2), "{err}");
    let hash = fusebox::config::content_hash(GOOD);
    assert_eq!(hash, fusebox::config::content_hash(GOOD), "stable hash");
    assert_ne!(hash, fusebox::config::content_hash("x"));
}

/// `fusebox demo` starts its demo upstreams behind a proxy that serves `/detect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_detections() {
    let mut p = spawn_binary_with(
        &[
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--fail-rate",
            "0",
        ],
        None,
    )
    .await;
    let r = get(&http1_client(), &p.url("/detect")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["detections"].is_array(), "demo answer: {v}");
    p.sigterm();
    assert_eq!(p.wait_exit(WAIT).await.code(), Some(0));
}
