//! rustls configurations: the listener's (certificate and key reloaded when the files
//! change, optional client certificates required by a CA) and the upstreams' (private CA
//! or system roots, server name, optional client certificate for mTLS).
//!
//! Built at startup and on reload, never per request; the listener's only per-connection
//! touch is [`ServerTls::acceptor`], one atomic load.
//!
//! Every config here uses the `ring` provider explicitly rather than the process default,
//! so a second rustls provider pulled in by some other crate cannot make a builder panic.

use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::{ListenerTls, UpstreamTls};

/// How often the listener's certificate, key and client CA files are checked (seconds
/// matter little: cert-manager renews days before expiry). Polling rather than `notify`:
/// cert-manager and the kubelet publish a new certificate by swapping a `..data`
/// symlink, after which a watch on the file itself goes deaf; and reading three small
/// files once a second costs nothing.
pub const CERT_POLL: Duration = Duration::from_secs(1);

/// ALPN protocols the listener offers, preferred first. hyper-util's auto builder reads
/// the HTTP/2 preface itself, so the negotiated value only steers the client.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a TLS configuration could not be built; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} file {} is not valid PEM: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no certificate in {what} file {} (expected PEM `BEGIN CERTIFICATE` blocks)", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error(
        "no private key in {} (expected PEM `BEGIN PRIVATE KEY` (PKCS#8), \
         `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` (SEC1))",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    #[error("invalid CA certificate in {}: {reason}", path.display())]
    InvalidCa { path: PathBuf, reason: String },
    #[error("certificate {} and key {} cannot be used together: {source}", cert.display(), key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("client certificate verifier for CA {}: {source}", path.display())]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error(
        "no usable system root certificates{detail}; set `ca` in the upstream's \
         `tls` table to a PEM bundle"
    )]
    NoSystemRoots { detail: String },
    #[error("`client_cert` and `client_key` go together: give both or neither")]
    ClientCertPair,
    #[error("invalid TLS server name {name:?}")]
    ServerName { name: String },
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

/// The listener's TLS: the acceptor of the files last loaded, swapped whole when they
/// change. A connection keeps the config it was accepted with; only new handshakes see
/// a new certificate. Read per connection ([`Self::acceptor`]); written on reload.
pub struct ServerTls {
    /// Where the certificate, key and client CA are read from (the same paths on
    /// every reload: rotation replaces the files' content).
    files: ListenerTls,
    acceptor: ArcSwap<TlsAcceptor>,
    /// The files' modification times and content hashes at the last load attempt, so
    /// the watcher retries only when something changed again. Also serialises reloads.
    stamp: Mutex<Stamp>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the certificate chain, private key and optional client CA and builds the
    /// acceptor (ALPN `h2`, `http/1.1`; a client certificate signed by `client_ca` is
    /// required when one is set).
    pub fn load(cfg: &ListenerTls) -> Result<Arc<ServerTls>, TlsError> {
        let (stamp, files) = read_listener_files(cfg);
        let acceptor = server_acceptor(cfg, &files?)?;
        Ok(Arc::new(ServerTls {
            files: cfg.clone(),
            acceptor: ArcSwap::from_pointee(acceptor),
            stamp: Mutex::new(stamp),
        }))
    }

    /// The acceptor for a new connection (one atomic load).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::clone(&self.acceptor.load())
    }

    /// Re-reads the files and swaps the new config in; on error the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reload_inner(true).map(|_| ())
    }

    /// Reloads when a file's modification time or content differs from the last load
    /// attempt; `Ok(true)` when a new config was swapped in. A failed attempt is not
    /// retried until the files change again, so a broken file is reported once, and a
    /// pair caught half-written is retried when the second file lands.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.reload_inner(false)
    }

    fn reload_inner(&self, force: bool) -> Result<bool, TlsError> {
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        let (stamp, files) = read_listener_files(&self.files);
        if !force && stamp == *last {
            return Ok(false);
        }
        *last = stamp;
        let acceptor = server_acceptor(&self.files, &files?)?;
        self.acceptor.store(Arc::new(acceptor));
        Ok(true)
    }

    /// Checks the files every [`CERT_POLL`] and reloads them when they change, logging
    /// the outcome. Stops once every other holder of this `Arc` has dropped it.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CERT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await; // the first tick is immediate; the files were just read
            loop {
                tick.tick().await;
                let Some(tls) = weak.upgrade() else { break };
                let cert = tls.files.cert.clone();
                // File reads block: keep them off the runtime's worker threads.
                match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!(
                        event = "tls_reload",
                        cert = %cert.display(),
                        "listener certificate reloaded"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::warn!(
                        event = "tls_reload",
                        cert = %cert.display(),
                        error = %e,
                        "listener certificate reload failed; keeping the previous one"
                    ),
                    Err(e) => tracing::warn!(error = %e, "listener certificate check failed"),
                }
            }
        });
    }
}

/// Each listener file's modification time and content hash (`None`: unreadable).
#[derive(Debug, Default, PartialEq, Eq)]
struct Stamp(Vec<Option<(Option<SystemTime>, u64)>>);

/// The listener files' bytes, read once so the stamp and the config agree.
struct ListenerFiles {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

fn read_listener_files(cfg: &ListenerTls) -> (Stamp, Result<ListenerFiles, TlsError>) {
    let mut stamp = Stamp::default();
    let mut read = |what, path: &Path| {
        // Time first: a write racing the read then shows up as a change next poll.
        let modified = fs::metadata(path).and_then(|m| m.modified()).ok();
        let bytes = read_file(what, path);
        stamp.0.push(bytes.as_ref().ok().map(|b| {
            let mut h = DefaultHasher::new();
            h.write(b);
            (modified, h.finish())
        }));
        bytes
    };
    let cert = read("certificate", &cfg.cert);
    let key = read("private key", &cfg.key);
    let client_ca = cfg.client_ca.as_deref().map(|p| read("client CA", p));
    let files = (|| {
        Ok(ListenerFiles {
            cert: cert?,
            key: key?,
            client_ca: client_ca.transpose()?,
        })
    })();
    (stamp, files)
}

fn server_acceptor(cfg: &ListenerTls, files: &ListenerFiles) -> Result<TlsAcceptor, TlsError> {
    let chain = parse_certs("certificate", &cfg.cert, &files.cert)?;
    let key = parse_key(&cfg.key, &files.key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?;
    let builder = match (&cfg.client_ca, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let roots = parse_roots(path, pem)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: path.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::CertKey {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        })?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client config of an upstream with protocol `https` (`h2` false) or `h2`: roots
/// from `ca` or the system's, the client certificate when set, ALPN `h2` or
/// `http/1.1`. Built once per upstream per config build.
pub fn client_config(tls: Option<&UpstreamTls>, h2: bool) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match tls.and_then(|t| t.ca.as_deref()) {
        Some(ca) => parse_roots(ca, &read_file("CA", ca)?)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots);
    let cert = tls.and_then(|t| t.client_cert.as_deref());
    let key = tls.and_then(|t| t.client_key.as_deref());
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = parse_certs(
                "client certificate",
                cert,
                &read_file("client certificate", cert)?,
            )?;
            let der = parse_key(key, &read_file("client key", key)?)?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|source| TlsError::CertKey {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    source,
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(TlsError::ClientCertPair),
    };
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(Arc::new(config))
}

/// What an upstream's client config is made of: its TLS settings, the protocol and the
/// contents of the files it reads (CA, client certificate and key). Equal fingerprints
/// mean an equal config, so a reload that changes neither keeps the upstream's TLS
/// connections; a rotated file at the same path makes a new config (and new pools).
pub fn client_fingerprint(tls: Option<&UpstreamTls>, h2: bool) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u8(u8::from(h2));
    if let Some(t) = tls {
        for path in [&t.ca, &t.client_cert, &t.client_key] {
            match path {
                Some(p) => {
                    h.write(p.as_os_str().as_encoded_bytes());
                    // An unreadable file hashes as empty; building the config reports it.
                    h.write(&fs::read(p).unwrap_or_default());
                }
                None => h.write_u8(0),
            }
        }
        h.write(t.server_name.as_deref().unwrap_or("").as_bytes());
    }
    h.finish()
}

/// The name an upstream's certificate is checked against (and sent as SNI): the
/// configured `server_name`, else the endpoint's host name or IP address (brackets
/// around an IPv6 address are removed).
pub fn server_name(
    tls: Option<&UpstreamTls>,
    endpoint_host: &str,
) -> Result<ServerName<'static>, TlsError> {
    let name = tls
        .and_then(|t| t.server_name.as_deref())
        .unwrap_or(endpoint_host);
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::ServerName {
        name: name.to_owned(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in the file: PKCS#8, PKCS#1 (RSA) or SEC1.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|source| TlsError::Pem {
            what: "private key",
            path: path.to_path_buf(),
            source,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

fn parse_roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs("CA", path, pem)? {
        roots.add(cert).map_err(|e| TlsError::InvalidCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The platform's trust store (on Linux the usual bundle paths, or `SSL_CERT_FILE` /
/// `SSL_CERT_DIR`). Unparsable entries are skipped, as every TLS client does.
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = match found.errors.first() {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        };
        return Err(TlsError::NoSystemRoots { detail });
    }
    Ok(roots)
}

#[cfg(test)]
mod tests;
