//! The `fusebox` binary as a child process: the config goes to a temp dir, stdout lines
//! are read on a thread into a channel, and the start waits for the "fusebox listening"
//! line, whose `address` field tells the port when the config says port 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::WAIT;

/// Path of the binary cargo built for these tests.
pub fn binary_path() -> &'static str {
    env!("CARGO_BIN_EXE_fusebox")
}

/// A running `fusebox run --config ...` process. Killed on drop if still running.
pub struct FuseboxProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line read so far (for messages when a wait fails).
    pub seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// Writes `config_text` to a temp dir, starts the binary on it and waits (bounded) for
/// its "fusebox listening" line.
pub async fn spawn_binary(config_text: &str) -> FuseboxProcess {
    spawn_binary_with(&["run"], Some(config_text)).await
}

/// Starts the binary with `args` (plus `--config PATH` when `config_text` is given,
/// written to a temp dir) and waits (bounded) for its "fusebox listening" line.
pub async fn spawn_binary_with(args: &[&str], config_text: Option<&str>) -> FuseboxProcess {
    spawn_binary_env(args, config_text, &[("FUSEBOX_LOG", "info")]).await
}

/// As [`spawn_binary_with`], with these environment variables (`FUSEBOX_LOG` among
/// them, or none set).
pub async fn spawn_binary_env(
    args: &[&str],
    config_text: Option<&str>,
    envs: &[(&str, &str)],
) -> FuseboxProcess {
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("fusebox.toml");
    let mut cmd = Command::new(binary_path());
    cmd.args(args);
    if let Some(text) = config_text {
        std::fs::write(&config_path, text).expect("write config");
        cmd.arg("--config").arg(&config_path);
    }
    let mut child = cmd
        .env_remove("RUST_LOG")
        .env_remove("FUSEBOX_CONFIG")
        .env_remove("FUSEBOX_LOG")
        .envs(envs.iter().copied())
        .env("FUSEBOX_WORKER_THREADS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the fusebox binary");
    let (tx, rx) = mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let err_pipe = child.stderr.take().expect("stderr");
    let err_buf = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines() {
            let Ok(line) = line else { break };
            let mut b = err_buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    let mut p = FuseboxProcess {
        child,
        addr: "0.0.0.0:0".parse().expect("placeholder"),
        config_path,
        lines: rx,
        seen: Vec::new(),
        stderr,
        _dir: dir,
    };
    let listening = p
        .wait_json(Duration::from_secs(30), |v| {
            v["message"] == "fusebox listening"
        })
        .await;
    let addr = listening["address"]
        .as_str()
        .unwrap_or_else(|| panic!("no address in the listening line: {listening}"));
    p.addr = addr
        .parse()
        .unwrap_or_else(|e| panic!("bad listening address {addr:?}: {e}"));
    p
}

impl FuseboxProcess {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits up to `timeout` for a JSON stdout line matching `pred`; lines read while
    /// waiting are kept in `seen`. Panics with the output so far when none comes.
    pub async fn wait_json(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        // Lines already read first.
        for l in &self.seen {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                if pred(&v) {
                    return v;
                }
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let line = match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) | Err(_) => panic!(
                    "no matching log line within {timeout:?}; stdout so far:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                ),
            };
            self.seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if pred(&v) {
                    return v;
                }
            }
        }
    }

    /// Waits up to `timeout` for a stdout line equal to `line` (trimmed); returns every
    /// line read up to it. Panics with the output so far when none comes.
    pub async fn wait_text(&mut self, timeout: Duration, line: &str) -> Vec<String> {
        if let Some(i) = self.seen.iter().position(|l| l.trim() == line) {
            return self.seen[..=i].to_vec();
        }
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(l)) => {
                    let found = l.trim() == line;
                    self.seen.push(l);
                    if found {
                        return self.seen.clone();
                    }
                }
                Ok(None) | Err(_) => panic!(
                    "no line {line:?} within {timeout:?}; stdout so far:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Sends SIGTERM (through `kill`, no extra crate needed).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// The exit status if the process has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (bounded, polling) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "fusebox did not exit within {timeout:?}; stdout:\n{}",
                self.seen.join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for FuseboxProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the binary to completion with `args` (bounded by [`WAIT`] via a kill).
pub fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(binary_path());
    cmd.args(args)
        .env_remove("FUSEBOX_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the fusebox binary");
    let id = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(WAIT * 3) {
        Ok(out) => out.expect("binary output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("fusebox {args:?} did not finish within {:?}", WAIT * 3);
        }
    }
}
