//! Hot reload: watch the config file's directory (not the file's inode, so an editor's
//! write-by-rename and a Kubernetes ConfigMap's `..data` symlink swap are both seen),
//! and SIGHUP; debounce; read, parse and validate off the request path; build the new
//! snapshot carrying breakers, pools and counters over by endpoint; swap it in
//! atomically. Requests in flight keep the snapshot they loaded. An invalid file
//! changes nothing: the old config keeps serving and the failure is logged (with line
//! and column), counted and shown in `/config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config;
use crate::control::Control;
use crate::snapshot::Snapshot;

/// Quiet time after the last file event before reloading: a ConfigMap update or an
/// editor's save is several events within a few milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Longest wait from the first event of a burst to the reload: a file that a tool
/// rewrites without pause still has its latest valid text applied at least this often.
pub const DEBOUNCE_MAX_WAIT: Duration = Duration::from_millis(500);

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied(String),
    Unchanged,
}

/// Reads `path` and swaps in its config when it is valid and differs from the active
/// one, recording the reload (`/config` `last_reload`, the success counter) with the
/// swap; a failure is the caller's to record. The error string names file, line and
/// column.
pub async fn reload_from(ctrl: &Control, path: &Path) -> Result<ReloadOutcome, String> {
    reload_from_with(ctrl, path, false).await
}

/// As [`reload_from`]; with `rebuild` (SIGHUP), an unchanged text is built and swapped
/// in again too, and one refused before is judged again: the files it names (an
/// upstream's CA, client certificate and key) may have changed in place, which no
/// event in the config's directory announces. State carries over as on any reload; a
/// TLS setup whose files did not change keeps its pools.
pub async fn reload_from_with(
    ctrl: &Control,
    path: &Path,
    rebuild: bool,
) -> Result<ReloadOutcome, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let version = config::content_hash(&text);
    let old = ctrl.snapshot();
    // Reading the file makes events of its own; the same text is judged only once.
    if version == old.version && !rebuild {
        ctrl.set_failed(None);
        return Ok(ReloadOutcome::Unchanged);
    }
    if ctrl.failed_before(&version) && !rebuild {
        return Ok(ReloadOutcome::Unchanged);
    }
    let cfg = match config::parse(&text, &path.display().to_string(), Some(path.to_path_buf())) {
        Ok(cfg) => cfg,
        Err(e) => {
            ctrl.set_failed(Some(version));
            return Err(e.to_string());
        }
    };
    ctrl.set_failed(None);
    let mut cfg = cfg;
    let not_applied = keep_restart_only(&mut cfg, &old.config);
    if !not_applied.is_empty() {
        tracing::warn!(
            event = "config_reload",
            not_applied = %not_applied.join(","),
            "these settings take effect only after a restart; the running values stay, everything else is applied now"
        );
    }
    // The token rule is judged on the admin address in force: a reload to a loopback
    // address without a token, not applied until a restart, must not leave a
    // non-loopback admin port open to anyone.
    if let Err(e) = admin_token_in_force(&cfg) {
        ctrl.set_failed(Some(version));
        return Err(format!("{}: {e}", path.display()));
    }
    ctrl.set_not_applied(not_applied);
    let snap = Snapshot::build(cfg, version.clone(), Some(&old), &ctrl.shared)
        .map_err(|e| e.to_string())?;
    // DNS answers of the old build serve until the background refresh replaces them.
    snap.start_background(true);
    let new = Arc::new(snap);
    // Recorded before the swap: whoever sees the new version in `/config` sees this
    // reload in `last_reload` too.
    ctrl.record_reload(Ok(()));
    ctrl.state.store(new.clone());
    // Requests still on the old build keep its upstreams alive; their background work
    // stops now, so it cannot write old settings or verdicts into the shared cores.
    for up in old.upstreams.values() {
        up.retire();
    }
    remove_stale_series(&old, &new);
    Ok(ReloadOutcome::Applied(version))
}

/// The admin token rule on the config as it will run (after [`keep_restart_only`]):
/// a non-loopback admin address needs a token.
pub fn admin_token_in_force(cfg: &crate::config::Config) -> Result<(), String> {
    let admin = cfg.admin.address;
    if !admin.ip().is_loopback() && cfg.admin.token.is_none() {
        return Err(format!(
            "admin.address stays {admin} until a restart, which is not a loopback address, so `token_env` must name the variable holding the admin token"
        ));
    }
    Ok(())
}

/// Settings read once when fusebox starts (bound sockets, the connection limits the
/// listener was built with, the logging subscriber): a reload that changes them keeps
/// the running values in `new` (so `/config` shows what is in force) and returns the
/// keys it kept, for the log line and `/config`'s `last_reload.not_applied`.
/// Certificate contents at unchanged paths keep rotating by themselves.
pub fn keep_restart_only(
    new: &mut crate::config::Config,
    running: &crate::config::Config,
) -> Vec<String> {
    let mut kept = Vec::new();
    let (n, r) = (&mut new.listener, &running.listener);
    macro_rules! keep {
        ($new:expr, $old:expr, $key:expr) => {
            if $new != $old {
                $new = $old.clone();
                kept.push($key.to_string());
            }
        };
    }
    keep!(n.address, r.address, "listener.address");
    // A TCP listener has no socket file: its `unix_mode` changes nothing, so a change
    // of it is no setting left unapplied.
    if matches!(r.address, crate::config::ListenAddr::Unix(_)) {
        keep!(n.unix_mode, r.unix_mode, "listener.unix_mode");
    }
    keep!(
        n.max_connections,
        r.max_connections,
        "listener.max_connections"
    );
    keep!(
        n.header_read_timeout,
        r.header_read_timeout,
        "listener.header_read_timeout"
    );
    keep!(n.idle_timeout, r.idle_timeout, "listener.idle_timeout");
    keep!(
        n.max_header_bytes,
        r.max_header_bytes,
        "listener.max_header_bytes"
    );
    let tls_paths = |t: &Option<crate::config::ListenerTls>| {
        t.as_ref()
            .map(|t| (t.cert.clone(), t.key.clone(), t.client_ca.clone()))
    };
    if tls_paths(&n.tls) != tls_paths(&r.tls) {
        n.tls = r.tls.clone();
        kept.push("listener.tls".to_string());
    }
    keep!(new.admin.address, running.admin.address, "admin.address");
    keep!(new.logging.level, running.logging.level, "logging.level");
    if new.logging.format != running.logging.format {
        new.logging.format = running.logging.format;
        kept.push("logging.format".to_string());
    }
    let tracing = |t: &Option<crate::config::TracingConfig>| {
        t.as_ref().map(|t| {
            (
                t.otlp_endpoint.clone(),
                t.sample_ratio,
                t.headers.clone(),
                t.service_name.clone(),
                t.max_queue,
                t.export_timeout,
            )
        })
    };
    if tracing(&new.tracing) != tracing(&running.tracing) {
        new.tracing = running.tracing.clone();
        kept.push("tracing".to_string());
    }
    kept
}

/// Drops the metric series of routes and upstreams the new config no longer has.
/// Route series are labelled by route (and by route and upstream): a series goes only
/// when no route of the new config still has its labels. Endpoint and breaker series
/// go by themselves when the last holder of their state lets go (see
/// `upstream::registry`).
fn remove_stale_series(old: &Snapshot, new: &Snapshot) {
    for r in &old.routes {
        let same_name = new.routes.iter().find(|n| n.name == r.name);
        match same_name {
            None => r.metrics.remove(),
            Some(n) if n.upstream.name != r.upstream.name => r.metrics.remove_service_series(),
            Some(_) => {}
        }
    }
    for (name, up) in &old.upstreams {
        if !new.upstreams.contains_key(name) {
            up.metrics.remove();
        }
    }
}

/// Runs one reload and reports it (log line, metric, `/config`); `rebuild` as in
/// [`reload_from_with`].
pub async fn reload_and_report(ctrl: &Control, path: &Path, rebuild: bool) {
    match reload_from_with(ctrl, path, rebuild).await {
        Ok(ReloadOutcome::Applied(version)) => {
            // Recorded by `reload_from_with`, with the swap.
            tracing::info!(event = "config_reload", result = "success", version = %version, path = %path.display(), "config reloaded");
        }
        Ok(ReloadOutcome::Unchanged) => {
            tracing::debug!(path = %path.display(), "config file event without change");
        }
        Err(e) => {
            tracing::error!(event = "config_reload", result = "failure", path = %path.display(), error = %e, "config reload failed; the previous config keeps serving");
            ctrl.record_reload(Err(e));
        }
    }
}

/// How long an empty config file is given to be written before it is judged.
const EMPTY_GRACE: Duration = Duration::from_secs(1);

/// Watches the directory of `path` (when fusebox serves a file) and listens for SIGHUP
/// until `ctrl` is dropped. Without a file, SIGHUP is logged and ignored (there is
/// nothing to reload), never fatal. Returns the watcher, which must be kept alive.
pub fn spawn(
    ctrl: Arc<Control>,
    path: Option<PathBuf>,
) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    // `true`: SIGHUP (rebuild even an unchanged text); `false`: a file event.
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let watcher = match &path {
        Some(path) => Some(watch_dir(path, tx.clone())?),
        None => None,
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before returning: once fusebox is up, SIGHUP is never fatal.
        let mut hup = signal(SignalKind::hangup())?;
        let htx = tx.clone();
        let has_file = path.is_some();

        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if !has_file {
                    tracing::info!(
                        event = "config_reload",
                        "SIGHUP: fusebox serves a config without a file (the embedded default or one given in-process); nothing to reload"
                    );
                    continue;
                }
                tracing::info!("SIGHUP: reloading config");
                if htx.send(true).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let Some(path) = path else {
        return Ok(None);
    };
    let weak = Arc::downgrade(&ctrl);
    drop(ctrl);
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // Debounce: until events stop for DEBOUNCE, but no longer than
            // DEBOUNCE_MAX_WAIT from the first one. A SIGHUP in the burst rebuilds.
            let mut rebuild = first;
            let burst_end = tokio::time::Instant::now() + DEBOUNCE_MAX_WAIT;
            loop {
                let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(burst_end);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(hup)) => {
                        rebuild |= hup;
                        if tokio::time::Instant::now() >= burst_end {
                            break;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            // An empty file is most often a write in progress (truncated, not yet
            // written): the write's own event is awaited (a few times at most) before
            // it is judged, and refused.
            for _ in 0..3 {
                let empty = tokio::fs::read(&path)
                    .await
                    .is_ok_and(|b| b.iter().all(u8::is_ascii_whitespace));
                if !empty {
                    break;
                }
                match tokio::time::timeout(EMPTY_GRACE, rx.recv()).await {
                    Ok(Some(hup)) => rebuild |= hup,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(ctrl) = weak.upgrade() else { return };
            reload_and_report(&ctrl, &path, rebuild).await;
        }
    });
    Ok(watcher)
}

/// A watcher of the directory holding `path` that sends on `tx` for every event that
/// can change what the file reads.
fn watch_dir(
    path: &Path,
    tx: mpsc::UnboundedSender<bool>,
) -> anyhow::Result<notify::RecommendedWatcher> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_os_string());
    // Only events that can change what the file reads: the file's own name (edits and
    // an editor's rename over it) and Kubernetes' `..data` / `..<timestamp>` entries.
    // Other files in the directory (a log written beside the config) are ignored.
    let relevant = move |p: &std::path::Path| match p.file_name() {
        Some(n) => Some(n) == name.as_deref() || n.to_string_lossy().starts_with(".."),
        None => true,
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let wanted = !matches!(ev.kind, notify::EventKind::Access(_))
                && (ev.paths.is_empty() || ev.paths.iter().any(|p| relevant(p)));
            if wanted {
                let _ = tx.send(false);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, token: Option<&str>) -> crate::config::Config {
        crate::config::parse_with_env(text, "t.toml", None, &|name| {
            (name == "ADMIN_TOKEN")
                .then(|| token.map(str::to_owned))
                .flatten()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const ROUTES: &str = "[upstreams.a]\nendpoints = [\"127.0.0.1:9001\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n";

    /// A reload that moves the admin listener to loopback and drops its token keeps the
    /// running (non-loopback) address until a restart: the token rule is judged on
    /// that address, so the reload is refused rather than leaving the port open.
    #[test]
    fn the_admin_token_rule_is_judged_on_the_address_in_force() {
        let running = parse(
            &format!(
                "[admin]\naddress = \"0.0.0.0:9901\"\ntoken_env = \"ADMIN_TOKEN\"\n\n{ROUTES}"
            ),
            Some("tok"),
        );
        assert!(admin_token_in_force(&running).is_ok());
        let mut new = parse(
            &format!("[admin]\naddress = \"127.0.0.1:9901\"\n\n{ROUTES}"),
            None,
        );
        assert!(admin_token_in_force(&new).is_ok(), "valid on its own");
        let kept = keep_restart_only(&mut new, &running);
        assert_eq!(kept, vec!["admin.address".to_string()]);
        let e = admin_token_in_force(&new).expect_err("refused");
        assert!(e.contains("0.0.0.0:9901") && e.contains("token_env"), "{e}");
    }

    /// `unix_mode` is kept (and named) only for a Unix-socket listener, whose socket
    /// file it is; on TCP it has nothing to apply to.
    #[test]
    fn unix_mode_is_restart_only_for_a_unix_socket_listener() {
        let tcp = |mode: &str| {
            parse(
                &format!(
                    "[listener]\naddress = \"127.0.0.1:8080\"\nunix_mode = \"{mode}\"\n\n{ROUTES}"
                ),
                None,
            )
        };
        let mut new = tcp("0600");
        assert!(keep_restart_only(&mut new, &tcp("0660")).is_empty());
        let unix = |mode: &str| {
            parse(
                &format!(
                    "[listener]\naddress = \"unix:/tmp/fb.sock\"\nunix_mode = \"{mode}\"\n\n{ROUTES}"
                ),
                None,
            )
        };
        let mut new = unix("0600");
        let running = unix("0660");
        assert_eq!(
            keep_restart_only(&mut new, &running),
            vec!["listener.unix_mode".to_string()]
        );
        assert_eq!(
            new.listener.unix_mode, running.listener.unix_mode,
            "in force"
        );
    }
}
