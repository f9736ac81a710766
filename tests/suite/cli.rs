//! The command line: `validate` accepts a good file (exit 0) and refuses a bad one
//! (exit 1, each problem located as FILE:LINE:COL), `validate --allow-missing-env`
//! (unset variables listed, not refused), `--version`, `--help`, `run` with a bad file,
//! `${VAR}` interpolation, and the embedded default config.

use std::path::Path;

use crate::common::*;

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

/// An `https` upstream without `ca` trusts the system's roots: on a machine (a slim
/// image) that has none, `validate` refuses the file, located, as `run` would refuse
/// it; before, `validate` said ok and `run` exited 1 with the message said twice.
#[test]
fn validate_refuses_an_https_upstream_when_the_system_has_no_roots() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\nprotocol = \"https\"\n\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"a\"\n";
    let path = write(dir.path(), "tls.toml", text);
    let nowhere = dir.path().join("no-roots");
    let nowhere = nowhere.to_str().unwrap();
    let envs = [("SSL_CERT_FILE", nowhere), ("SSL_CERT_DIR", nowhere)];
    let out = run_binary(&["validate", "--config", &path], &envs);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(located(&err, &path, 3), "located at protocol: {err}");
    assert!(err.contains("no usable system root certificates"), "{err}");
    assert_eq!(
        err.matches("no usable system root certificates").count(),
        1,
        "said once: {err}"
    );
    // With roots (the machine's), the same file is fine.
    let out = run_binary(&["validate", "--config", &path], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
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

/// A config as a CI job sees it: the admin token and the collector token are secrets
/// of the pod, not set where `validate` runs.
const NEEDS_SECRETS: &str = r#"[admin]
address = "0.0.0.0:9901"
token_env = "FUSEBOX_TEST_ADMIN_TOKEN"

[tracing]
otlp_endpoint = "http://otel-collector:4318"
headers = { authorization = "Bearer ${FUSEBOX_TEST_OTLP_TOKEN}" }

[upstreams.a]
endpoints = ["127.0.0.1:9001"]

[[routes]]
path_prefix = "/"
upstream = "a"
"#;

#[test]
fn validate_without_the_flag_refuses_unset_variables_and_names_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "secrets.toml", NEEDS_SECRETS);
    let out = run_binary(&["validate", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        located(&err, &path, 3),
        "token_env located at line 3: {err}"
    );
    assert!(located(&err, &path, 7), "header located at line 7: {err}");
    for name in ["FUSEBOX_TEST_ADMIN_TOKEN", "FUSEBOX_TEST_OTLP_TOKEN"] {
        assert!(
            err.contains(&format!("environment variable {name} is not set")),
            "{err}"
        );
    }
    assert_eq!(
        err.matches("run validate --allow-missing-env").count(),
        2,
        "{err}"
    );
}

#[test]
fn validate_allow_missing_env_checks_the_rest_and_lists_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "secrets.toml", NEEDS_SECRETS);
    let out = run_binary(&["validate", "--allow-missing-env", "--config", &path], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("{path}: ok (1 upstreams, 1 routes)").as_str(),
            "note: not set here, so not checked: FUSEBOX_TEST_ADMIN_TOKEN (admin.token_env), \
             FUSEBOX_TEST_OTLP_TOKEN (tracing.headers.authorization)",
        ]
    );
    // Variables that are set are used and not listed.
    let out = run_binary(
        &["validate", "--allow-missing-env", "--config", &path],
        &[("FUSEBOX_TEST_ADMIN_TOKEN", "t0ken")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(!stdout.contains("FUSEBOX_TEST_ADMIN_TOKEN"), "{stdout}");
    assert!(
        stdout.contains("FUSEBOX_TEST_OTLP_TOKEN (tracing.headers.authorization)"),
        "{stdout}"
    );
    // Everything set: no note at all.
    let out = run_binary(
        &["validate", "--allow-missing-env", "--config", &path],
        &[
            ("FUSEBOX_TEST_ADMIN_TOKEN", "t"),
            ("FUSEBOX_TEST_OTLP_TOKEN", "o"),
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("note:"));
}

#[test]
fn validate_allow_missing_env_still_refuses_other_problems() {
    let dir = tempfile::tempdir().unwrap();
    let text = NEEDS_SECRETS.replace("upstream = \"a\"", "upstream = \"a\"\ntimeout = 1e19");
    let path = write(dir.path(), "bad.toml", &text);
    let out = run_binary(&["validate", "--allow-missing-env", "--config", &path], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        located(&err, &path, 15),
        "timeout located at line 15: {err}"
    );
    assert!(
        err.contains("routes[0].timeout: 1e19s is above the maximum of 1h (allowed: 1ms..=1h)"),
        "{err}"
    );
    assert!(
        !err.contains("is not set"),
        "missing variables are not errors here: {err}"
    );
    assert!(out.stdout.is_empty(), "no ok line");
}

#[test]
fn run_does_not_take_allow_missing_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "secrets.toml", NEEDS_SECRETS);
    for args in [
        vec!["run", "--allow-missing-env", "--config", &path],
        vec!["--allow-missing-env", "--config", &path],
    ] {
        let out = run_binary(&args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("unexpected argument '--allow-missing-env'"),
            "{err}"
        );
    }
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

/// `FUSEBOX_LOG` (or `RUST_LOG`) that names no level (`warning`, or empty) is judged
/// as `logging.level` is: it would silence every line, the errors included, so it is
/// refused with a warning (on stderr, and as a log line) and the config's level
/// applies: the "fusebox listening" line still comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_filter_from_the_environment_that_names_no_level_is_refused() {
    let config = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[closed_port()], ""),
        route_toml("all", "/", "app", "")
    );
    for (name, value) in [("FUSEBOX_LOG", "warning"), ("RUST_LOG", "")] {
        let mut p = spawn_binary_env(&["run"], Some(&config), &[(name, value)]).await;
        let warned = p
            .wait_json(WAIT, |v| {
                v["level"] == "WARN"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!("ignoring {name}")))
            })
            .await;
        assert!(warned["message"]
            .as_str()
            .unwrap()
            .contains("logging.level"));
        let needle = format!("ignoring {name}");
        eventually("the warning on stderr", WAIT, || {
            p.stderr().contains(&needle)
        })
        .await;
        p.sigterm();
        p.wait_exit(WAIT).await;
    }
}

/// Without `--config`, fusebox reads `config/fusebox.toml` when anything is there: a
/// dangling link (a broken ConfigMap mount) or a directory is refused as unreadable,
/// exit 1, rather than skipped for the embedded default on 0.0.0.0:8080.
#[test]
fn a_default_config_path_that_cannot_be_read_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("config")).expect("config dir");
    std::os::unix::fs::symlink(
        dir.path().join("nowhere.toml"),
        dir.path().join("config/fusebox.toml"),
    )
    .expect("symlink");
    let mut child = std::process::Command::new(crate::common::binary::binary_path())
        .current_dir(dir.path())
        .env_remove("FUSEBOX_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fusebox");
    // Bounded: a fusebox that serves instead of refusing is killed, and fails below.
    let deadline = std::time::Instant::now() + WAIT;
    while child.try_wait().expect("wait").is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config/fusebox.toml"), "{stderr}");
}

/// `-c FILE` before the subcommand is the subcommand's own (`fusebox -c FILE validate`
/// checks FILE), and `demo`, which takes no config file, does not offer one.
#[test]
fn config_before_the_subcommand_counts_and_demo_offers_none() {
    let example_path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/fusebox.toml");
    let out = run_binary(&["-c", example_path, "validate"], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    let out = run_binary(&["validate"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a config file"));
    for sub in ["demo", "demo-upstream"] {
        // A config file typed before the subcommand is refused, not ignored.
        let out = run_binary(&["-c", example_path, sub], &[]);
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("take no config file"),
            "{sub}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = run_binary(&[sub, "--help"], &[]);
        assert_eq!(out.status.code(), Some(0));
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(
            !s.contains("--config"),
            "{sub} --help offers no --config: {s}"
        );
    }
}
