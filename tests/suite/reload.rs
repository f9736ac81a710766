//! Hot reload against a real in-process fusebox watching a config file in a temp dir:
//! 50 reloads under load drop nothing and each one serves; a Kubernetes ConfigMap
//! `..data` symlink swap and an editor's write-then-rename are both seen; an invalid
//! file keeps the old config serving and is counted and shown with its line and column,
//! once however many events follow; breaker state survives a reload that keeps its
//! endpoint. Waits are on `/config`, `/metrics` or the reloader's log lines (captured
//! in-process), never a sleep; how fast a change is visible is for a bench.
//!
//! With `FUSEBOX_OPENAPI_SAMPLES=DIR`, the `/config` answers (with a successful and a
//! failed `last_reload`) are written there for `tests/openapi_check.py`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use fusebox::app::{Running, StartOptions};
use serde_json::Value;

/// The reloader's log lines, kept for tests that wait on them.
const RELOAD_LOGS: &str = "fusebox::reload=debug";

/// Config text: upstreams `a` and `b` (no retries), route `r` at `/r` to `route_to`,
/// and `extra` appended.
fn config(
    a: &TestUpstream,
    b: &TestUpstream,
    route_to: &str,
    breaker: &str,
    extra: &str,
) -> String {
    format!(
        r#"[service]
name = "reload-test"

[listener]
address = "127.0.0.1:0"
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"

[logging]
access_log = false

[upstreams.a]
endpoints = ["{a}"]
[upstreams.a.retry]
max_retries = 0
[upstreams.a.circuit_breaker]
{breaker}

[upstreams.b]
endpoints = ["{b}"]
[upstreams.b.retry]
max_retries = 0

[[routes]]
name = "r"
path_prefix = "/r"
upstream = "{route_to}"
{extra}
"#,
        a = a.addr,
        b = b.addr,
    )
}

/// A proxy serving (and watching) `path`.
struct Watched {
    running: Running,
    path: PathBuf,
    client: TestClient,
    _dir: tempfile::TempDir,
}

/// Starts fusebox on the config file at `path` (already written), watching it.
async fn start_watching(dir: tempfile::TempDir, path: PathBuf) -> Watched {
    let text = std::fs::read_to_string(&path).expect("read config");
    let config =
        fusebox::config::load(&path).unwrap_or_else(|e| panic!("invalid test config:\n{e}"));
    let running = fusebox::app::start_with(
        config,
        fusebox::config::content_hash(&text),
        StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("fusebox did not start: {e:#}"));
    Watched {
        running,
        path,
        client: http1_client(),
        _dir: dir,
    }
}

/// Writes `text` to `dir/fusebox.toml` and starts fusebox watching it.
async fn start_file(text: &str) -> Watched {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    std::fs::write(&path, text).expect("write config");
    start_watching(dir, path).await
}

impl Watched {
    async fn data_get(&self, path: &str) -> Reply {
        get(
            &self.client,
            &format!("http://{}{path}", self.running.data_addr),
        )
        .await
    }

    async fn admin_get(&self, path: &str) -> Reply {
        let r = get(
            &self.client,
            &format!("http://{}{path}", self.running.admin_addr),
        )
        .await;
        if path == "/config" {
            save_sample("getConfig", &r);
        }
        r
    }

    async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    async fn metric(&self, name_and_labels: &str) -> Option<f64> {
        let text = self.admin_get("/metrics").await.text();
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
            .map(|v| v.trim().parse().expect("metric value"))
    }

    /// Polls `/config` until `pred` holds for it (bounded by [`WAIT`]); returns it.
    async fn wait_config(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        let url = format!("http://{}/config", self.running.admin_addr);
        loop {
            // Polls are not kept as samples; the answer that satisfies `pred` is.
            let r = get(&self.client, &url).await;
            assert_eq!(r.status, 200, "GET /config: {}", r.text());
            let v = r.json();
            if pred(&v) {
                save_sample("getConfig", &r);
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not within {WAIT:?}: {what}; /config is {v:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `/config` shows the version of `text`.
    async fn wait_version(&self, text: &str) {
        let version = fusebox::config::content_hash(text);
        self.wait_config(&format!("version {version}"), |v| v["version"] == version)
            .await;
    }

    /// Waits until the reloader has read this file again (a line logged after `from`,
    /// see [`logs::mark`]): either it found text it had already judged, or it judged it
    /// again and failed (which the caller's failure count then shows).
    async fn wait_judged_again(&self, from: usize) {
        let path = self.path.display().to_string();
        logs::wait_line("the reloader reading the file again", from, |v| {
            v["path"] == path.as_str()
                && (v["message"] == "config file event without change" || v["result"] == "failure")
        })
        .await;
    }
}

fn save_sample(op: &str, r: &Reply) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("FUSEBOX_OPENAPI_SAMPLES") else {
        return;
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let file = Path::new(&dir).join(format!("{op}.{}.reload-{n}.json", r.status.as_u16()));
    std::fs::create_dir_all(&dir).expect("samples dir");
    std::fs::write(file, &r.body).expect("write sample");
}

/// Writes by rename, as editors and `kubectl cp` do: a temp file in the same
/// directory, then `rename(2)` over the target.
fn write_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name(".fusebox.toml.swp");
    std::fs::write(&tmp, text).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename over the config");
}

/// Proves: 50 reloads alternating two route tables, while three clients keep sending,
/// fail no request, and each reload is visible (in `/config` and in where the route
/// goes) once it is counted. (How soon is the reload bench's figure, not a test's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing() {
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let texts = [config(&a, &b, "a", "", ""), config(&a, &b, "b", "", "")];
    let w = start_file(&texts[0]).await;
    assert_eq!(w.data_get("/r").await.text(), "A");

    // Each load task stops when told, or after MAX_PER_TASK requests.
    const MAX_PER_TASK: usize = 100_000;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..3 {
        let stop = stop.clone();
        let client = http1_client();
        let url = format!("http://{}/r", w.running.data_addr);
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) && ok + failed.len() < MAX_PER_TASK {
                let req = request(Method::GET, &url).body(empty()).expect("request");
                match try_send(&client, req).await {
                    Ok(r) if r.status == 200 && (r.body == "A" || r.body == "B") => ok += 1,
                    Ok(r) => failed.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }

    for i in 1..=50 {
        let (text, body) = (&texts[i % 2], ["A", "B"][i % 2]);
        std::fs::write(&w.path, text).expect("write config");
        w.wait_version(text).await;
        let r = w.data_get("/r").await;
        assert_eq!(
            r.text(),
            body,
            "reload {i}: the route goes to the new upstream"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        let (ok, failed) = within(WAIT, "load task", t).await.expect("load task");
        assert!(
            failed.is_empty(),
            "failed requests during reloads: {failed:?}"
        );
        total += ok;
    }
    assert!(total > 50, "the load kept running ({total} requests)");
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="success"}"#)
            .await,
        Some(50.0)
    );
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="failure"}"#)
            .await,
        Some(0.0),
        "both series exist from the start"
    );
    assert!(w.running.shutdown().await);
}

/// Proves: a Kubernetes ConfigMap update (files under a `..2026_...` directory, the
/// config a symlink through `..data`, and `..data` swapped atomically to a new
/// directory) is reloaded.
#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let (v1, v2) = (config(&a, &b, "a", "", ""), config(&a, &b, "b", "", ""));
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path().to_path_buf();
    std::fs::create_dir(d.join("..2026_01_01_00_00_00.1")).expect("mkdir");
    std::fs::write(d.join("..2026_01_01_00_00_00.1/fusebox.toml"), &v1).expect("write");
    std::os::unix::fs::symlink("..2026_01_01_00_00_00.1", d.join("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/fusebox.toml", d.join("fusebox.toml")).expect("link");
    let w = start_watching(dir, d.join("fusebox.toml")).await;
    assert_eq!(w.data_get("/r").await.text(), "A");

    // What the kubelet does: new timestamped dir, `..data_tmp` -> it, rename over `..data`.
    std::fs::create_dir(d.join("..2026_01_01_00_05_00.2")).expect("mkdir");
    std::fs::write(d.join("..2026_01_01_00_05_00.2/fusebox.toml"), &v2).expect("write");
    std::os::unix::fs::symlink("..2026_01_01_00_05_00.2", d.join("..data_tmp")).expect("tmp");
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(d.join("..2026_01_01_00_00_00.1")).expect("old dir");
    w.wait_version(&v2).await;
    assert_eq!(w.data_get("/r").await.text(), "B");
    let cfg = w.admin_json("/config").await;
    assert_eq!(cfg["last_reload"]["result"], "success");
    assert!(w.running.shutdown().await);
}

/// Proves: an editor-style save (write a temp file, rename it over the config) is
/// reloaded.
#[tokio::test]
async fn editor_rename_reloads() {
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let (v1, v2) = (config(&a, &b, "a", "", ""), config(&a, &b, "b", "", ""));
    let w = start_file(&v1).await;
    assert_eq!(w.data_get("/r").await.text(), "A");
    write_by_rename(&w.path, &v2);
    w.wait_version(&v2).await;
    assert_eq!(w.data_get("/r").await.text(), "B");
    // And once more: the watch survives the inode change.
    write_by_rename(&w.path, &v1);
    w.wait_version(&v1).await;
    assert_eq!(w.data_get("/r").await.text(), "A");
    assert!(w.running.shutdown().await);
}

/// Proves: a truncated file changes nothing (same version, same routing), counts
/// `gateway_config_reloads_total{result="failure"}` and shows the error located as
/// `FILE:LINE:COL` in `/config`; the same broken text read again is not counted again;
/// fixing the file then reloads.
#[tokio::test]
async fn invalid_file_keeps_the_old_config_serving() {
    logs::capture(RELOAD_LOGS);
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let (v1, v2) = (config(&a, &b, "a", "", ""), config(&a, &b, "b", "", ""));
    let w = start_file(&v1).await;
    let before = w.admin_json("/config").await;
    let loaded_at = before["loaded_at"].clone();

    // Cut in the middle of the `[upstreams.b.retry]` header.
    let cut = v2.find("[upstreams.b.retry]").expect("header") + 12;
    write_by_rename(&w.path, &v2[..cut]);
    let cfg = w
        .wait_config("a failed reload", |v| {
            v["last_reload"]["result"] == "failure"
        })
        .await;
    let error = cfg["last_reload"]["error"].as_str().expect("error text");
    let file = w.path.display().to_string();
    let located = error.strip_prefix(&format!("{file}:")).and_then(|rest| {
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts.next()?.parse().ok()?;
        let col: usize = parts.next()?.parse().ok()?;
        Some((line, col))
    });
    let (line, col) = located.unwrap_or_else(|| panic!("error not FILE:LINE:COL: {error:?}"));
    assert_eq!(line, v2[..cut].lines().count(), "the cut line: {error}");
    assert!(col >= 1);
    humantime::parse_rfc3339(cfg["last_reload"]["at"].as_str().expect("at")).expect("RFC 3339");
    assert_eq!(cfg["version"], before["version"], "the old config serves");
    assert_eq!(cfg["loaded_at"], loaded_at, "nothing was loaded");
    assert_eq!(w.data_get("/r").await.text(), "A");
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="failure"}"#)
            .await,
        Some(1.0)
    );
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="success"}"#)
            .await,
        Some(0.0),
        "both series exist from the start"
    );
    // The same broken text must not be judged (and counted) again: write it once more
    // (an event like the ones reading the file or an editor's backup raise) and wait
    // until the reloader has read it and said it judged it already.
    let from = logs::mark();
    write_by_rename(&w.path, &v2[..cut]);
    w.wait_judged_again(from).await;
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="failure"}"#)
            .await,
        Some(1.0),
        "one broken file, one failure"
    );

    // A semantically invalid file (unknown upstream) is refused the same way.
    write_by_rename(&w.path, &config(&a, &b, "nope", "", ""));
    w.wait_config("a second failure", |v| {
        v["last_reload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("nope"))
    })
    .await;
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="failure"}"#)
            .await,
        Some(2.0)
    );
    assert_eq!(w.data_get("/r").await.text(), "A");

    write_by_rename(&w.path, &v2);
    let cfg = w
        .wait_config("the fixed file", |v| {
            v["version"] == fusebox::config::content_hash(&v2)
        })
        .await;
    assert_eq!(cfg["last_reload"]["result"], "success");
    assert_eq!(cfg["last_reload"]["error"], Value::Null);
    assert_ne!(cfg["loaded_at"], loaded_at);
    assert_eq!(w.data_get("/r").await.text(), "B");
    assert!(w.running.shutdown().await);
}

/// Proves: an open breaker stays open, with its counts and gauge, across a reload that
/// keeps its endpoint (here: a route added), so the reload does not send traffic to a
/// broken endpoint.
#[tokio::test]
async fn breaker_state_survives_a_reload_that_keeps_its_endpoint() {
    let a = TestUpstream::start(Behaviour::respond(503, "down")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let breaker = "failure_threshold = 2\nrecovery_timeout = \"5m\"";
    let v1 = config(&a, &b, "a", breaker, "");
    let v2 = config(
        &a,
        &b,
        "a",
        breaker,
        "\n[[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nupstream = \"a\"\n",
    );
    let w = start_file(&v1).await;
    for _ in 0..2 {
        assert_eq!(w.data_get("/r").await.status, 503);
    }
    let ep = a.addr.to_string();
    let cb = w.admin_json("/circuit_breakers").await;
    assert_eq!(cb["a"]["endpoints"][&ep]["state"], "open");
    let hits = a.hits();

    std::fs::write(&w.path, &v2).expect("write config");
    w.wait_version(&v2).await;
    let cb = w.admin_json("/circuit_breakers").await;
    let e = &cb["a"]["endpoints"][&ep];
    assert_eq!(e["state"], "open", "{cb:#}");
    assert_eq!(e["times_opened"], 1);
    assert_eq!(e["failure_count"], 2);
    let gauge = format!(r#"gateway_circuit_breaker_state{{endpoint="{ep}",route="",service="a"}}"#);
    assert_eq!(w.metric(&gauge).await, Some(1.0));
    for path in ["/r", "/other"] {
        let r = w.data_get(path).await;
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("a"));
    }
    assert_eq!(a.hits(), hits, "nothing reached the open endpoint");
    assert!(w.running.shutdown().await);
}

/// Proves: a broken file written in place (an editor or `echo >>` that keeps the inode)
/// is reported once, not retried in a loop by other writes in the directory (fusebox's
/// own log redirected next to its config did exactly that). After the writes beside
/// it, the config itself is touched (same broken text): once the reloader has read
/// that, every earlier event has been dealt with, and the failure count is still one.
#[tokio::test]
async fn broken_file_written_in_place_fails_once() {
    logs::capture(RELOAD_LOGS);
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let v1 = config(&a, &b, "a", "", "");
    let w = start_file(&v1).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&w.path)
        .expect("open the config in place");
    std::io::Write::write_all(&mut f, b"\ngarbage = [\n").expect("append");
    drop(f);
    w.wait_config("a failed reload", |v| {
        v["last_reload"]["result"] == "failure"
    })
    .await;
    let broken = std::fs::read_to_string(&w.path).expect("read the broken config");
    let log = w.path.with_file_name("fusebox.log");
    for i in 0..4 {
        std::fs::write(&log, format!("log line {i}\n")).expect("write beside the config");
    }
    let from = logs::mark();
    write_by_rename(&w.path, &broken);
    w.wait_judged_again(from).await;
    assert_eq!(
        w.metric(r#"gateway_config_reloads_total{result="failure"}"#)
            .await,
        Some(1.0),
        "one broken file, one failure"
    );
    assert_eq!(w.data_get("/r").await.text(), "A");
    assert!(w.running.shutdown().await);
}

/// Proves: a file rewritten every 100 ms (shorter than the 150 ms debounce, so a plain
/// debounce would wait for the edits to stop) is still judged while the edits go on:
/// the debounce waits at most 500 ms from the first event, so reloads are made between
/// edits: at least 4 while the edits go on (30 edits, 3 s, on an idle machine; up to
/// 100 are allowed for a loaded one, where the test's own edits and reads are slowed
/// too: a debounce that waited for the edits to stop judges none while they last), and
/// the last text is the one serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_stream_of_edits_still_reloads() {
    // The issue's figure: an edit every 100 ms for 3 s applies at least 4 reloads
    // (the debounce waits at most 500 ms from the first event of a burst).
    const MAX_EDITS: u32 = 100;
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let text = |i: u32| config(&a, &b, "a", "", &format!("timeout = \"{}ms\"", 10_000 + i));
    let w = start_file(&text(0)).await;
    let success = r#"gateway_config_reloads_total{result="success"}"#;
    let failure = r#"gateway_config_reloads_total{result="failure"}"#;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = 0;
    let mut during = 0.0;
    for i in 1..=MAX_EDITS {
        tick.tick().await;
        // In place (truncate, then write): an empty read in between waits for the
        // write's own event. A read in the middle of a write (on a busy machine) is a
        // half-written file, refused as it should be: it still shows the debounce
        // judged the file while the edits went on, which is what is proved here.
        std::fs::write(&w.path, text(i)).expect("write config");
        last = i;
        let judged = w.metric(success).await.expect("the success series")
            + w.metric(failure).await.expect("the failure series");
        during = judged;
        if during >= 4.0 {
            break;
        }
    }
    assert!(
        during >= 4.0,
        "only {during} reloads judged while the file changed every 100 ms, {last} times"
    );
    w.wait_version(&text(last)).await;
    assert!(w.running.shutdown().await);
}

/// Proves: a reload that changes settings read only at start (the listener's
/// connection limit, the log level) applies everything else, keeps those at their
/// running values (so `/config` shows what is in force) and names them in
/// `last_reload.not_applied`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_only_settings_are_named_in_not_applied() {
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let v1 = config(&a, &b, "a", "", "");
    let w = start_file(&v1).await;
    let v2 = config(&a, &b, "b", "", "")
        .replace(
            "shutdown_timeout = \"5s\"",
            "shutdown_timeout = \"5s\"\nmax_connections = 7",
        )
        .replace(
            "access_log = false",
            "access_log = false\nlevel = \"debug\"",
        );
    assert_ne!(v1, v2);
    std::fs::write(&w.path, &v2).expect("write config");
    let cfg = w
        .wait_config("the reload", |v| {
            v["version"] == fusebox::config::content_hash(&v2)
        })
        .await;
    assert_eq!(
        cfg["last_reload"]["not_applied"],
        serde_json::json!(["listener.max_connections", "logging.level"]),
        "{cfg:#}"
    );
    assert_eq!(cfg["last_reload"]["result"], "success");
    assert_eq!(
        cfg["config"]["listener"]["max_connections"], 10000,
        "in force"
    );
    assert_eq!(cfg["config"]["logging"]["level"], "info", "in force");
    assert_eq!(w.data_get("/r").await.text(), "B", "the rest is applied");
    assert!(w.running.shutdown().await);
}

/// A config file emptied (a copy that truncated it and failed, a template that
/// rendered nothing) is refused once no write completes it: the old config keeps
/// serving, and the failure says the file is empty. An empty read followed by the
/// rest of the write is no failure at all (the loops above write in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_file_is_refused_and_the_old_config_serves() {
    let a = TestUpstream::start(Behaviour::ok("A")).await;
    let b = TestUpstream::start(Behaviour::ok("B")).await;
    let w = start_file(&config(&a, &b, "a", "", "")).await;
    std::fs::write(&w.path, "").expect("empty the config");
    let cfg = w
        .wait_config("the empty file refused", |v| {
            v["last_reload"]["result"] == "failure"
        })
        .await;
    let error = cfg["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("empty"), "{cfg:#}");
    assert_eq!(w.data_get("/r").await.text(), "A", "the old config serves");
    assert!(w.running.shutdown().await);
}
