//! Certificates are generated per test (rcgen) into a temp dir; handshakes are real
//! tokio-rustls handshakes over 127.0.0.1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::*;

/// A private CA that signs leaf certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `localhost` and 127.0.0.1: (cert PEM, key PEM, cert DER).
    fn leaf(&self, usage: ExtendedKeyUsagePurpose) -> (String, String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    ca: Ca,
    cfg: ListenerTls,
    ca_path: PathBuf,
    /// DER of the server certificate written last.
    served: Vec<u8>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

impl Fixture {
    fn new(client_ca: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let ca_path = dir.path().join("ca.crt");
        write(&ca_path, &ca.cert.pem());
        let cfg = ListenerTls {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            client_ca: client_ca.then(|| ca_path.clone()),
        };
        let mut f = Fixture {
            _dir: dir,
            ca,
            cfg,
            ca_path,
            served: Vec::new(),
        };
        f.rotate();
        f
    }

    /// Writes a fresh server certificate and key (as cert-manager would).
    fn rotate(&mut self) {
        let (cert, key, der) = self.ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
        write(&self.cfg.cert, &cert);
        write(&self.cfg.key, &key);
        self.served = der;
    }

    fn path(&self, name: &str) -> PathBuf {
        self.ca_path.with_file_name(name)
    }

    /// An upstream-side TLS table trusting the CA, optionally with a client cert.
    fn upstream_tls(&self, client_cert: bool) -> UpstreamTls {
        let (cert, key) = if client_cert {
            let (c, k, _) = self.ca.leaf(ExtendedKeyUsagePurpose::ClientAuth);
            write(&self.path("client.crt"), &c);
            write(&self.path("client.key"), &k);
            (Some(self.path("client.crt")), Some(self.path("client.key")))
        } else {
            (None, None)
        };
        UpstreamTls {
            ca: Some(self.ca_path.clone()),
            server_name: Some("localhost".into()),
            client_cert: cert,
            client_key: key,
        }
    }
}

/// A TLS echo server on 127.0.0.1 accepting with whatever `tls` holds at accept time.
async fn echo_server(
    tls: Arc<ServerTls>,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Receiver<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (done, handshakes) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = tls.acceptor();
            let done = done.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(mut s) => {
                        let _ = done.send(true).await;
                        let mut buf = [0u8; 64];
                        while let Ok(n @ 1..) = s.read(&mut buf).await {
                            if s.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(_) => {
                        let _ = done.send(false).await;
                    }
                }
            });
        }
    });
    (addr, handshakes)
}

type Client = tokio_rustls::client::TlsStream<TcpStream>;

async fn connect(
    addr: std::net::SocketAddr,
    up: &UpstreamTls,
    h2: bool,
) -> std::io::Result<Client> {
    let config = client_config(Some(up), h2).unwrap();
    let name = server_name(Some(up), "127.0.0.1").unwrap();
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

fn served_cert(s: &Client) -> Vec<u8> {
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

async fn echo(s: &mut Client, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn serves_the_loaded_certificate_and_negotiates_alpn() {
    let f = Fixture::new(false);
    let tls = ServerTls::load(&f.cfg).unwrap();
    let (addr, _) = echo_server(tls).await;
    let up = f.upstream_tls(false);
    let mut s = connect(addr, &up, true).await.unwrap();
    assert_eq!(served_cert(&s), f.served);
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    echo(&mut s, b"ping").await;
    let s = connect(addr, &up, false).await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn reload_serves_the_new_certificate_and_keeps_open_sessions() {
    let mut f = Fixture::new(false);
    let tls = ServerTls::load(&f.cfg).unwrap();
    let (addr, _) = echo_server(tls.clone()).await;
    let up = f.upstream_tls(false);
    let mut before = connect(addr, &up, false).await.unwrap();
    let first = f.served.clone();
    assert_eq!(served_cert(&before), first);

    f.rotate();
    assert!(tls.reload_if_changed().unwrap(), "files changed: reloaded");
    let after = connect(addr, &up, false).await.unwrap();
    assert_eq!(served_cert(&after), f.served);
    assert_ne!(f.served, first);
    // The connection accepted before the rotation still works on its old session.
    echo(&mut before, b"still here").await;
    // Nothing changed since: no reload.
    assert!(!tls.reload_if_changed().unwrap());
}

#[tokio::test]
async fn watcher_picks_up_rotated_files() {
    let mut f = Fixture::new(false);
    let tls = ServerTls::load(&f.cfg).unwrap();
    tls.spawn_watcher();
    let (addr, _) = echo_server(tls.clone()).await;
    let up = f.upstream_tls(false);
    f.rotate();
    let deadline = tokio::time::Instant::now() + CERT_POLL * 10;
    loop {
        let s = connect(addr, &up, false).await.unwrap();
        if served_cert(&s) == f.served {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new cert not served within {:?}",
            CERT_POLL * 10
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failed_reload_keeps_the_old_certificate() {
    let f = Fixture::new(false);
    let tls = ServerTls::load(&f.cfg).unwrap();
    let (addr, _) = echo_server(tls.clone()).await;
    write(&f.cfg.cert, "not a certificate\n");
    let err = tls.reload().unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(err.to_string().contains("tls.crt"), "{err}");
    // Reported once: unchanged files are not retried.
    assert!(!tls.reload_if_changed().unwrap());
    let s = connect(addr, &f.upstream_tls(false), false).await.unwrap();
    assert_eq!(served_cert(&s), f.served);
}

#[tokio::test]
async fn client_ca_requires_a_client_certificate() {
    let f = Fixture::new(true);
    let tls = ServerTls::load(&f.cfg).unwrap();
    let (addr, mut handshakes) = echo_server(tls).await;

    let mut s = connect(addr, &f.upstream_tls(true), false).await.unwrap();
    assert_eq!(handshakes.recv().await, Some(true), "with a client cert");
    echo(&mut s, b"mtls").await;

    // TLS 1.3 lets the client finish first, so the refusal shows on the server side
    // (and as a failed read on the client).
    if let Ok(mut s) = connect(addr, &f.upstream_tls(false), false).await {
        let _ = s.write_all(b"x").await;
        let mut buf = [0u8; 1];
        assert!(
            !matches!(s.read(&mut buf).await, Ok(1..)),
            "no data without a client cert"
        );
    }
    assert_eq!(
        handshakes.recv().await,
        Some(false),
        "without a client cert"
    );
}

#[test]
fn load_errors_name_the_file() {
    let f = Fixture::new(false);
    let missing = ListenerTls {
        cert: f.path("nope.crt"),
        ..f.cfg.clone()
    };
    let err = ServerTls::load(&missing).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.crt"), "{err}");

    write(&f.path("garbage.key"), "-----BEGIN NOTHING-----\n");
    let garbage_key = ListenerTls {
        key: f.path("garbage.key"),
        ..f.cfg.clone()
    };
    let err = ServerTls::load(&garbage_key).unwrap_err();
    assert!(err.to_string().contains("garbage.key"), "{err}");

    write(&f.path("cert-only.key"), &f.ca.cert.pem());
    let no_key = ListenerTls {
        key: f.path("cert-only.key"),
        ..f.cfg.clone()
    };
    let err = ServerTls::load(&no_key).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");

    let (_, other_key, _) = f.ca.leaf(ExtendedKeyUsagePurpose::ServerAuth);
    write(&f.path("other.key"), &other_key);
    let mismatched = ListenerTls {
        key: f.path("other.key"),
        ..f.cfg.clone()
    };
    let err = ServerTls::load(&mismatched).unwrap_err();
    assert!(matches!(err, TlsError::CertKey { .. }), "{err}");

    write(
        &f.path("bad-ca.crt"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    let bad_ca = ListenerTls {
        client_ca: Some(f.path("bad-ca.crt")),
        ..f.cfg.clone()
    };
    let err = ServerTls::load(&bad_ca).unwrap_err();
    assert!(matches!(err, TlsError::InvalidCa { .. }), "{err}");
    assert!(err.to_string().contains("bad-ca.crt"), "{err}");
}

#[test]
fn client_config_errors() {
    let f = Fixture::new(false);
    let mut up = f.upstream_tls(false);
    up.ca = Some(f.path("missing-ca.crt"));
    let err = client_config(Some(&up), false).unwrap_err();
    assert!(err.to_string().contains("missing-ca.crt"), "{err}");

    write(&f.path("empty.crt"), "");
    up.ca = Some(f.path("empty.crt"));
    let err = client_config(Some(&up), false).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");

    let mut half = f.upstream_tls(true);
    half.client_key = None;
    assert!(matches!(
        client_config(Some(&half), true),
        Err(TlsError::ClientCertPair)
    ));
}

#[test]
fn server_name_prefers_the_configured_name() {
    let tls = UpstreamTls {
        ca: None,
        server_name: Some("yolo.internal".into()),
        client_cert: None,
        client_key: None,
    };
    let name = server_name(Some(&tls), "10.0.0.7").unwrap();
    assert_eq!(name.to_str(), "yolo.internal");
    assert_eq!(server_name(None, "yolo.svc").unwrap().to_str(), "yolo.svc");
    assert!(matches!(
        server_name(None, "10.0.0.7").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(matches!(
        server_name(None, "[::1]").unwrap(),
        ServerName::IpAddress(_)
    ));
    assert!(server_name(None, "not a name!").is_err());
}

#[test]
fn without_ca_the_system_roots_are_used_or_the_error_says_to_set_ca() {
    match client_config(None, false) {
        Ok(config) => assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]),
        Err(e) => {
            assert!(matches!(e, TlsError::NoSystemRoots { .. }), "{e}");
            assert!(e.to_string().contains("`ca`"), "{e}");
        }
    }
}
