//! `fusebox demo` shows what it prints: the test starts the demo (the real binary, on
//! loopback ports 0), runs every command it prints with `sh`, in order, and checks the
//! output shows a retried success (and the retry counted), the flaky upstream's
//! breaker opening after exactly `failure_threshold` failures and the fallback
//! answering, the breaker closing again after `recovery_timeout`, and `peak_ewma`
//! keeping most requests off the slow replica.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The printed steps: (what it shows, the commands), as the demo printed them.
fn steps(out: &[String]) -> Vec<(String, Vec<String>)> {
    let start = out
        .iter()
        .position(|l| l.trim() == "Try:")
        .expect("a Try: block");
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    for l in &out[start + 1..] {
        let l = l.trim();
        if let Some(what) = l.strip_prefix("# ") {
            steps.push((what.to_owned(), Vec::new()));
        } else if !l.is_empty() && !l.starts_with("Ctrl-C") {
            steps
                .last_mut()
                .expect("a step title first")
                .1
                .push(l.to_owned());
        }
    }
    steps
}

/// Runs one printed command with `sh`, bounded; returns its stdout.
fn run(cmd: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "sh", "-c", cmd])
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{cmd} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_commands_show_retries_the_breaker_and_peak_ewma() {
    let mut p = spawn_binary_with(
        &["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        None,
    )
    .await;
    let out = p
        .wait_text(Duration::from_secs(30), "Ctrl-C stops the demo.")
        .await;
    let steps = steps(&out);
    assert_eq!(steps.len(), 7, "{steps:#?}");
    let mut outputs = Vec::new();
    for (what, cmds) in &steps {
        let text: Vec<String> = cmds.iter().map(|c| run(c)).collect();
        outputs.push((what.clone(), text));
    }
    let step = |i: usize| &outputs[i].1;

    // 1: every answer 200, and at least one retry on a 503 counted.
    assert_eq!(step(0)[0].trim(), "200 200 200 200", "{:?}", outputs[0]);
    let retries: f64 = step(0)[1]
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a retry counter: {:?}", step(0)));
    assert!(retries >= 1.0, "retries counted: {retries}");
    // 2: ids echoed.
    assert!(
        step(1)[0].contains("x-correlation-id: demo-123"),
        "{:?}",
        step(1)
    );
    // 3: three 503s, then the fallback; the breaker reads open (1).
    let flaky: Vec<&str> = step(2)[1].lines().collect();
    assert_eq!(flaky.len(), 4, "{flaky:?}");
    assert!(flaky[..3].iter().all(|l| l.ends_with(" 503")), "{flaky:?}");
    assert!(
        flaky[3].contains("\"degraded\": true") && flaky[3].ends_with(" 200"),
        "the fallback answers once the breaker is open: {flaky:?}"
    );
    assert!(step(2)[2].trim_end().ends_with(" 1"), "open: {:?}", step(2));
    // 4: after recovery_timeout a probe succeeds and the breaker reads closed (0).
    assert!(
        step(3)[1].contains("\"upstream\":\"yolo-gpu-flaky\""),
        "{:?}",
        step(3)
    );
    assert!(step(3)[1].trim_end().ends_with(" 200"));
    assert!(
        step(3)[2].trim_end().ends_with(" 0"),
        "closed: {:?}",
        step(3)
    );
    // 5: most of 30 requests go to the healthy replica, not the slow one.
    let healthy: usize = step(4)[0]
        .lines()
        .find(|l| l.contains("yolo-gpu-healthy"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(healthy >= 25, "peak_ewma: {:?}", step(4));
    // 7: no route.
    assert!(step(6)[0].contains("NO_ROUTE"), "{:?}", step(6));
    p.sigterm();
    assert_eq!(p.wait_exit(WAIT).await.code(), Some(0));
}
