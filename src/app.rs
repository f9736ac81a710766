//! Wiring: build the first snapshot, bind the listener, start the background tasks,
//! and shut down in order on SIGTERM/SIGINT (stop accepting, let in-flight requests
//! finish up to `shutdown_timeout`, close keep-alives, flush logs). [`start`] returns a
//! handle so tests drive a real proxy on port 0 in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::access_log::AccessLogger;
use crate::config::{Config, ListenAddr};
use crate::control::Control;
use crate::proxy::listener::{self, ConnLimits, DataListener, UnixSocketFile};
use crate::proxy::Proxy;
use crate::snapshot::{Shared, Snapshot, SnapshotCell};
use crate::{admin, reload};

/// How to start: where the config came from (watched for hot reload when set).
#[derive(Debug, Default, Clone)]
pub struct StartOptions {
    pub config_path: Option<PathBuf>,
    /// Where access-log lines go (default: a logger writing to stdout). Tests hand in
    /// one with a sink of their own.
    pub access_log: Option<Arc<AccessLogger>>,
}

/// A running proxy.
pub struct Running {
    /// Where the data listener is bound (port 0 in the config gives a free port); for
    /// a Unix-socket listener the unspecified address, and `data_path` is set.
    pub data_addr: SocketAddr,
    /// The socket path of a Unix-socket data listener.
    pub data_path: Option<PathBuf>,
    /// Where the admin listener is bound.
    pub admin_addr: SocketAddr,
    pub ctrl: Arc<Control>,
    pub state: Arc<SnapshotCell>,
    logger: Arc<AccessLogger>,
    shutdown: watch::Sender<bool>,
    /// Closes the connections still open when `shutdown_timeout` passed.
    cut: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    serve: JoinHandle<()>,
    admin: JoinHandle<()>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Running {
    /// Current snapshot (for tests and the admin API).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// The shutdown sequence: readiness fails first, then the data listener stops
    /// accepting and in-flight requests finish (up to `shutdown_timeout`), then the
    /// admin listener closes and buffered logs are written. Returns whether every
    /// connection drained in time.
    pub async fn shutdown(self) -> bool {
        self.ctrl.set_ready(false);
        let _ = self.shutdown.send(true);
        let mut serve = self.serve;
        // Read now: a reload may have changed it since the start.
        let shutdown_timeout = self.ctrl.snapshot().config.listener.shutdown_timeout;
        let drained = tokio::time::timeout(shutdown_timeout, &mut serve)
            .await
            .is_ok();
        if !drained {
            tracing::warn!(timeout = ?shutdown_timeout, "shutdown timeout passed with requests in flight; closing them");
            // Each connection drops its requests (their access-log lines are written
            // as they go) and returns its slot; bounded, then the rest is abandoned.
            let _ = self.cut.send(true);
            if tokio::time::timeout(CUT_GRACE, &mut serve).await.is_err() {
                serve.abort();
            }
        }
        let _ = self.admin_shutdown.send(true);
        let _ = self.admin.await;
        self.logger.flush_and_wait(Duration::from_secs(2));
        if let Some(t) = &self.ctrl.shared.tracing {
            t.shutdown().await;
        }
        drained
    }
}

/// Binds a TCP listener with `SO_REUSEADDR` (a restarted sidecar rebinds at once).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("cannot bind {addr}"))?;
    sock.listen(1024)?;
    let std: std::net::TcpListener = sock.into();
    Ok(TcpListener::from_std(std)?)
}

/// Binds the data listener: TCP, or a Unix socket (a stale socket file left by a
/// process that is gone is replaced; a live one, or any other file, is refused).
pub fn bind_data(config: &crate::config::ListenerConfig) -> anyhow::Result<DataListener> {
    let path = match &config.address {
        ListenAddr::Tcp(addr) => return Ok(DataListener::Tcp(bind(*addr)?)),
        ListenAddr::Unix(path) => path,
    };
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "cannot bind unix:{}: the path exists and is not a socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "cannot bind unix:{}: another process is listening on it",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind unix:{}", path.display()))?;
    let file = UnixSocketFile(path.clone());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.unix_mode))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(DataListener::Unix(listener, file))
}

/// Builds and starts a proxy for `config` (whose text hashed to `version`), without
/// watching a file.
pub async fn start(config: Config, version: String) -> anyhow::Result<Running> {
    start_with(config, version, StartOptions::default()).await
}

/// Builds and starts a proxy; with `config_path`, the file is watched for hot reload
/// (and SIGHUP reloads it).
pub async fn start_with(
    config: Config,
    version: String,
    opts: StartOptions,
) -> anyhow::Result<Running> {
    let limits = ConnLimits::from(&config.listener);
    let admin_addr = config.admin.address;
    // Listener TLS is read once at start; the certificate and key files are then
    // polled and reloaded on change (a config reload does not rebind the listener).
    let tls = match &config.listener.tls {
        Some(t) => Some(crate::tls::ServerTls::load(t)?),
        None => None,
    };
    let shared = Shared::with_tracing(config.tracing.as_ref())?;
    let config_listener = config.listener.clone();
    let snap = Snapshot::build(config, version, None, &shared)?;
    let listener = bind_data(&config_listener)?;
    let (data_addr, data_path) = match &listener {
        DataListener::Tcp(l) => (l.local_addr()?, None),
        DataListener::Unix(_, file) => (SocketAddr::from(([0, 0, 0, 0], 0)), Some(file.0.clone())),
    };
    let admin_listener = bind(admin_addr)?;
    let admin_addr = admin_listener.local_addr()?;
    // Bound first; then one bounded round of DNS before traffic is admitted.
    snap.resolve_all().await;
    snap.start_background(false);
    let state = Arc::new(ArcSwap::from_pointee(snap));
    let ctrl = Control::new(state.clone(), shared.clone(), opts.config_path.clone());
    let (admin_tx, admin_rx) = watch::channel(false);
    // The status page's per-second figures; the sampler stops with the admin listener.
    let timeline = admin::timeline::start(&ctrl, admin_rx.clone());
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        ctrl.clone(),
        timeline,
        admin_rx,
    ));
    let watcher = reload::spawn(ctrl.clone(), opts.config_path.clone())?;
    let logger = opts
        .access_log
        .clone()
        .unwrap_or_else(|| AccessLogger::new(shared.metrics.access_log_dropped.clone()));
    logger.spawn_flusher();
    let proxy = Arc::new(Proxy {
        state: state.clone(),
        logger: logger.clone(),
    });
    let (tx, rx) = watch::channel(false);
    if let Some(t) = &tls {
        t.spawn_watcher();
    }
    let (cut_tx, cut_rx) = watch::channel(false);
    let serve = tokio::spawn(listener::serve(listener, proxy, limits, tls, rx, cut_rx));
    ctrl.set_ready(true);
    let shown = match &data_path {
        Some(p) => format!("unix:{}", p.display()),
        None => data_addr.to_string(),
    };
    tracing::info!(address = %shown, admin = %admin_addr, "fusebox listening");
    Ok(Running {
        data_addr,
        data_path,
        admin_addr,
        ctrl,
        state,
        logger,
        shutdown: tx,
        cut: cut_tx,
        admin_shutdown: admin_tx,
        serve,
        admin,
        _watcher: watcher,
    })
}

/// Serves until SIGTERM or SIGINT, then shuts down gracefully.
/// How long connections cut at `shutdown_timeout` get to end (their requests' log
/// lines queued) before the rest is abandoned.
const CUT_GRACE: Duration = Duration::from_secs(1);

pub async fn run(config: Config, version: String, opts: StartOptions) -> anyhow::Result<()> {
    // Listen for the signals before starting: a SIGTERM that arrives while the
    // listeners bind (a pod deleted as it starts) is then a graceful stop once
    // fusebox is up, not the default disposition's kill.
    let mut signals = StopSignals::listen();
    let running = start_with(config, version, opts).await?;
    signals.recv().await;
    tracing::info!("shutdown signal received; draining");
    let drained = running.shutdown().await;
    tracing::info!(drained, "fusebox stopped");
    Ok(())
}

/// SIGTERM and SIGINT, listened for from the moment this is made: a signal that
/// arrives before [`StopSignals::recv`] is awaited is kept, not lost.
pub struct StopSignals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Installs the handlers. Must be called within the runtime.
    pub fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { unix }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the first SIGTERM or SIGINT since [`StopSignals::listen`].
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
