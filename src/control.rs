//! What the admin API and the reloader share with the proxy: the snapshot cell, the
//! metric families, readiness, and the history of config loads. One per process.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::metrics::Metrics;
use crate::snapshot::{Shared, Snapshot, SnapshotCell};

/// The outcome of the last reload attempt, as `/config` shows it.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    /// `success` or `failure`.
    pub result: &'static str,
    pub error: Option<String>,
    /// Settings the reload changed that take effect only after a restart.
    pub not_applied: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LoadHistory {
    /// When the active config was loaded.
    pub loaded_at: SystemTime,
    pub last_reload: Option<ReloadRecord>,
}

#[derive(Debug)]
pub struct Control {
    pub state: Arc<SnapshotCell>,
    pub metrics: Arc<Metrics>,
    /// What every snapshot build needs (registry, replay budget).
    pub shared: Arc<Shared>,
    /// The config file being served and watched (`None`: embedded or in-memory config).
    pub config_path: Option<PathBuf>,
    /// Listeners bound and not draining.
    ready: AtomicBool,
    history: Mutex<LoadHistory>,
    /// Content hash of the last file text that failed to load: the same text is not
    /// tried (and reported) again until it changes.
    last_failed: Mutex<Option<String>>,
    /// What the reload being applied could not apply (see `reload::keep_restart_only`).
    not_applied: Mutex<Vec<String>>,
}

impl Control {
    pub fn new(
        state: Arc<SnapshotCell>,
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
    ) -> Arc<Control> {
        // Both series exist from the start, so an alert on failures has one to read.
        for result in ["success", "failure"] {
            let _ = shared.metrics.reloads.with_label_values(&[result]);
        }
        Arc::new(Control {
            state,
            metrics: shared.metrics.clone(),
            shared,
            config_path,
            ready: AtomicBool::new(false),
            last_failed: Mutex::new(None),
            not_applied: Mutex::new(Vec::new()),
            history: Mutex::new(LoadHistory {
                loaded_at: SystemTime::now(),
                last_reload: None,
            }),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn history(&self) -> LoadHistory {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `version` is the text that failed last time.
    pub fn failed_before(&self, version: &str) -> bool {
        self.last_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_deref()
            == Some(version)
    }

    /// Remembers (`Some`) or forgets (`None`) the text that failed to load.
    pub fn set_failed(&self, version: Option<String>) {
        *self.last_failed.lock().unwrap_or_else(|p| p.into_inner()) = version;
    }

    /// The settings the reload in progress keeps at their running values.
    pub fn set_not_applied(&self, keys: Vec<String>) {
        *self.not_applied.lock().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Records a reload attempt (and, on success, the new load time).
    pub fn record_reload(&self, result: Result<(), String>) {
        let now = SystemTime::now();
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["success"]).inc();
                h.loaded_at = now;
                let not_applied = std::mem::take(
                    &mut *self.not_applied.lock().unwrap_or_else(|p| p.into_inner()),
                );
                h.last_reload = Some(ReloadRecord {
                    at: now,
                    result: "success",
                    error: None,
                    not_applied,
                });
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                h.last_reload = Some(ReloadRecord {
                    at: now,
                    result: "failure",
                    error: Some(e),
                    not_applied: Vec::new(),
                });
            }
        }
    }
}
