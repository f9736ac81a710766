//! Property: whatever durations, sizes and counts a config holds, `config::parse`
//! either refuses it with located problems that state the allowed range, or accepts
//! it and the proxy started on it answers a request without panicking.
//!
//! Each case writes 1-5 bounded keys with values drawn inside their bounds (log-uniform,
//! and the bounds themselves) or past them (just past, 0, negative, 1e19 s, `i64::MAX`,
//! u64-sized sizes, NaN and infinities). A config is expected to be accepted exactly when
//! every drawn value is inside its bounds (the keys whose bounds depend on another key,
//! such as `max_delay >= base_delay`, are pinned to their maximum so the others are
//! independent). Accepted configs are started in-process on 127.0.0.1:0 in front of a
//! real upstream and get one request with a 1 s client timeout: an HTTP answer or the
//! timeout elapsing (a long injected delay, say) is fine; a panic anywhere (seen by a
//! panic hook) or a dropped connection fails the case (unless the listener's idle or
//! header-read timeout is a few milliseconds: then closing a connection whose request
//! came late is what the config asks for).

#[path = "config_bounds/cases.rs"]
mod cases;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fusebox::config::{content_hash, parse, Config, ConfigError};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use cases::{case, render};
use common::*;

/// Every panic message seen by the hook, from any thread of the process.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut p) = PANICS.lock() {
            p.push(info.to_string());
        }
        default(info);
    }));
}

/// How the one request went.
#[derive(Debug)]
enum Outcome {
    Answered(u16),
    TimedOut,
    Dropped(String),
}

/// Starts the proxy on `config`, sends one request, shuts it down.
async fn exercise(config: Config, text: &str) -> Result<Outcome, String> {
    let running = fusebox::app::start(config, content_hash(text))
        .await
        .map_err(|e| format!("a valid config did not start: {e:#}"))?;
    let url = format!("http://{}/probe", running.data_addr);
    let client = http1_client();
    let req = request(Method::GET, &url)
        .header("x-camera-id", "cam-1")
        .body(empty())
        .map_err(|e| e.to_string())?;
    let outcome = match tokio::time::timeout(Duration::from_secs(1), client.request(req)).await {
        Err(_) => Outcome::TimedOut,
        Ok(Ok(resp)) => Outcome::Answered(resp.status().as_u16()),
        Ok(Err(e)) => Outcome::Dropped(format!("{e:?}")),
    };
    drop(client);
    // Bounded: a request still in flight (a long injected delay) may hold the drain.
    let _ = tokio::time::timeout(Duration::from_secs(3), running.shutdown()).await;
    Ok(outcome)
}

fn check_refusal(err: &ConfigError, text: &str, past: &[String]) -> Result<(), TestCaseError> {
    let problems = err.problems();
    prop_assert!(!problems.is_empty(), "refused without a problem: {err}");
    let lines = text.lines().count();
    for p in problems {
        prop_assert!(
            p.line >= 1 && p.line <= lines && p.column >= 1,
            "not located: {p}"
        );
    }
    for path in past {
        let prefix = format!("{path}: ");
        let found = problems
            .iter()
            .any(|p| p.message.starts_with(&prefix) && p.message.contains("(allowed: "));
        prop_assert!(found, "no located range message for {path}:\n{err}");
    }
    Ok(())
}

#[test]
fn any_bounded_value_is_refused_with_its_range_or_served_without_panic() {
    install_panic_hook();
    let up_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("upstream runtime");
    let up = up_rt.block_on(TestUpstream::start(Behaviour::ok("ok")));
    let up_addr = up.addr;
    let started = Arc::new(Mutex::new(0usize));
    let counter = started.clone();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&case(), move |case| {
        let (text, valid, past) = render(&case, up_addr);
        let parsed = std::panic::catch_unwind(|| parse(&text, "bounds.toml", None));
        let parsed =
            parsed.map_err(|_| TestCaseError::fail(format!("parse panicked on:\n{text}")))?;
        let config = match parsed {
            Err(e) => {
                prop_assert!(
                    !valid,
                    "a config inside every bound was refused:\n{e}\n---\n{text}"
                );
                return check_refusal(&e, &text, &past);
            }
            Ok(config) => config,
        };
        prop_assert!(valid, "accepted values past their bounds {past:?}:\n{text}");
        // A listener idle or header-read timeout of a few milliseconds may close the
        // connection before the request's bytes arrive on a busy machine: that is the
        // configured behaviour (a silent connection is closed), not a failure.
        let tight = Duration::from_millis(200);
        let may_close =
            config.listener.idle_timeout < tight || config.listener.header_read_timeout < tight;
        PANICS
            .lock()
            .map_err(|_| TestCaseError::fail("lock"))?
            .clear();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let outcome = rt.block_on(exercise(config, &text));
        rt.shutdown_background();
        let panics = PANICS
            .lock()
            .map_err(|_| TestCaseError::fail("lock"))?
            .clone();
        prop_assert!(panics.is_empty(), "panicked: {panics:?}\n---\n{text}");
        let outcome = outcome.map_err(TestCaseError::fail)?;
        match outcome {
            Outcome::Answered(status) => prop_assert!((100..=599).contains(&status)),
            Outcome::TimedOut => {}
            Outcome::Dropped(_) if may_close => {}
            Outcome::Dropped(e) => {
                return Err(TestCaseError::fail(format!(
                    "connection dropped without an answer ({e}):\n{text}"
                )))
            }
        }
        if let Ok(mut n) = counter.lock() {
            *n += 1;
        }
        Ok(())
    });
    drop(up);
    up_rt.shutdown_background();
    if let Err(e) = result {
        panic!("{e}");
    }
    let served = *started.lock().unwrap();
    assert!(
        served >= 4,
        "only {served} of 64 cases were valid; the generator is off"
    );
}
