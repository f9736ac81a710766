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

/// Why a reload changed nothing.
#[derive(Debug)]
pub enum ReloadOutcome {
    Applied(String),
    Unchanged,
}

/// Reads `path` and swaps in its config when it is valid and differs from the active
/// one. The error string names file, line and column.
pub async fn reload_from(ctrl: &Control, path: &Path) -> Result<ReloadOutcome, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let version = config::content_hash(&text);
    let old = ctrl.snapshot();
    // Reading the file makes events of its own; the same text is judged only once.
    if version == old.version {
        ctrl.set_failed(None);
        return Ok(ReloadOutcome::Unchanged);
    }
    if ctrl.failed_before(&version) {
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
    if cfg.listener.address != old.config.listener.address
        || cfg.admin.address != old.config.admin.address
    {
        tracing::warn!(
            event = "config_reload",
            "listener or admin address changed: addresses are bound at start; the new ones take effect after a restart, everything else now"
        );
    }
    let snap = Snapshot::build(cfg, version.clone(), Some(&old), &ctrl.shared)
        .map_err(|e| e.to_string())?;
    // DNS answers of the old build serve until the background refresh replaces them.
    snap.start_background(true);
    let new = Arc::new(snap);
    ctrl.state.store(new.clone());
    remove_stale_series(&old, &new);
    Ok(ReloadOutcome::Applied(version))
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

/// Runs one reload and reports it (log line, metric, `/config`).
pub async fn reload_and_report(ctrl: &Control, path: &Path) {
    match reload_from(ctrl, path).await {
        Ok(ReloadOutcome::Applied(version)) => {
            ctrl.record_reload(Ok(()));
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

/// Watches the directory of `path` and listens for SIGHUP until `ctrl` is dropped.
/// Returns the watcher, which must be kept alive.
pub fn spawn(ctrl: Arc<Control>, path: PathBuf) -> anyhow::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let ftx = tx.clone();
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
                let _ = ftx.send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    #[cfg(unix)]
    {
        let htx = tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading config");
                if htx.send(()).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let weak = Arc::downgrade(&ctrl);
    drop(ctrl);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // debounce: wait until events stop for DEBOUNCE
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Some(ctrl) = weak.upgrade() else { return };
            reload_and_report(&ctrl, &path).await;
        }
    });
    Ok(watcher)
}
