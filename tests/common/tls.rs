//! TLS helpers: a private CA whose certificates are generated at test time ([`Pki`]),
//! an upstream that speaks HTTP/1.1 and h2 over rustls ([`TlsUpstream`]), and a
//! downstream client that opens TLS connections with a chosen ALPN and sends requests
//! with hyper's connection-level API ([`TlsConn`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::body::{full, TestBody};
use super::{within, Reply, WAIT};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A leaf certificate as written to disk.
#[derive(Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DER of the certificate, to compare with what a peer presented.
    pub der: Vec<u8>,
}

/// A private CA in a temp dir; every certificate it issues names `localhost` and
/// 127.0.0.1.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate (PEM), for `ca = ...` and `client_ca = ...`.
    pub ca_path: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fusebox test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA cert");
        let ca_path = dir.path().join("ca.crt");
        std::fs::write(&ca_path, ca.pem()).expect("write CA");
        Pki {
            dir,
            ca,
            ca_key,
            ca_path,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Issues a server certificate into `<name>.crt` / `<name>.key` (overwriting: a
    /// rotation is issuing again under the same name).
    pub fn server(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client certificate into `<name>.crt` / `<name>.key`.
    pub fn client(&self, name: &str) -> Leaf {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let leaf = Leaf {
            cert: self.path(&format!("{name}.crt")),
            key: self.path(&format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        // Key first: a reader that sees the new certificate also finds its key.
        std::fs::write(&leaf.key, key.serialize_pem()).expect("write key");
        std::fs::write(&leaf.cert, cert.pem()).expect("write cert");
        leaf
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .expect("CA root");
        Arc::new(roots)
    }

    /// A client config trusting this CA, offering `alpn`, with `client` as its
    /// certificate when given.
    pub fn client_config(&self, alpn: &[&[u8]], client: Option<&Leaf>) -> Arc<ClientConfig> {
        self.client_config_versions(alpn, client, rustls::DEFAULT_VERSIONS)
    }

    /// [`Pki::client_config`] speaking only the given TLS versions.
    pub fn client_config_versions(
        &self,
        alpn: &[&[u8]],
        client: Option<&Leaf>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(self.roots());
        let mut config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(vec![leaf_cert(leaf)], leaf_key(leaf))
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server config for `leaf` offering h2 and http/1.1, requiring a client
    /// certificate from this CA when `require_client_cert`.
    pub fn server_config(&self, leaf: &Leaf, require_client_cert: bool) -> Arc<ServerConfig> {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = if require_client_cert {
            let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(vec![leaf_cert(leaf)], leaf_key(leaf))
            .expect("server cert");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn leaf_cert(leaf: &Leaf) -> CertificateDer<'static> {
    CertificateDer::from(leaf.der.clone())
}

fn leaf_key(leaf: &Leaf) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(&leaf.key).expect("read key");
    rustls_pemfile::private_key(&mut &pem[..])
        .expect("key PEM")
        .expect("a key")
}

/// What the TLS upstream saw of one request.
#[derive(Debug, Clone)]
pub struct TlsSeen {
    /// ALPN negotiated on the connection that carried it.
    pub alpn: Option<Vec<u8>>,
    pub version: Version,
    pub path: String,
    /// Whether the downstream presented a client certificate.
    pub client_cert: bool,
}

/// An upstream on 127.0.0.1 serving HTTP/1.1 and h2 (by ALPN) over rustls; answers
/// 200 "tls upstream" and records each request. Dropping it stops accepting.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<TlsSeen>>>,
    accept: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl TlsUpstream {
    pub async fn start(config: Arc<ServerConfig>) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS upstream");
        let addr = listener.local_addr().expect("upstream address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(config);
        let rec = seen.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let rec = rec.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return; // refused handshake (e.g. no client certificate)
                    };
                    let (_, session) = tls.get_ref();
                    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
                    let client_cert = session.peer_certificates().is_some();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        rec.lock().unwrap().push(TlsSeen {
                            alpn: alpn.clone(),
                            version: req.version(),
                            path: req.uri().path().to_string(),
                            client_cert,
                        });
                        async { Ok::<_, Infallible>(Response::new(full("tls upstream"))) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsUpstream { addr, seen, accept }
    }

    pub fn seen(&self) -> Vec<TlsSeen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A downstream TLS connection to fusebox carrying HTTP/1.1 or h2, whichever ALPN
/// chose.
pub struct TlsConn {
    /// ALPN the server selected.
    pub alpn: Option<Vec<u8>>,
    /// DER of the certificate the server presented.
    pub server_cert: Vec<u8>,
    sender: Sender,
    authority: String,
}

enum Sender {
    H1(http1::SendRequest<TestBody>),
    H2(http2::SendRequest<TestBody>),
}

/// Opens a TLS connection to `addr` (server name `localhost`) and performs the HTTP
/// handshake the negotiated ALPN calls for; `Err` holds the TLS or HTTP error text.
pub async fn tls_connect(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<TlsConn, String> {
    let fut = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let server_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let io = TokioIo::new(tls);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (tx, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H2(tx)
        } else {
            let (tx, conn) = http1::handshake(io)
                .await
                .map_err(|e| format!("http1 handshake: {e}"))?;
            tokio::spawn(conn);
            Sender::H1(tx)
        };
        Ok(TlsConn {
            alpn,
            server_cert,
            sender,
            authority: format!("localhost:{}", addr.port()),
        })
    };
    within(WAIT, "TLS connection", fut).await
}

impl TlsConn {
    /// GET `path` on this connection and read the whole response; `Err` holds the
    /// error text (e.g. a peer that refused the client certificate).
    pub async fn get(&mut self, path: &str) -> Result<Reply, String> {
        let authority = self.authority.clone();
        let fut = async {
            let resp = match &mut self.sender {
                Sender::H1(tx) => {
                    tx.ready().await.map_err(|e| e.to_string())?;
                    let req = Request::get(path)
                        .header(http::header::HOST, &authority)
                        .body(super::empty())
                        .map_err(|e| e.to_string())?;
                    tx.send_request(req).await
                }
                Sender::H2(tx) => {
                    tx.ready().await.map_err(|e| e.to_string())?;
                    let req = Request::get(format!("https://{authority}{path}"))
                        .body(super::empty())
                        .map_err(|e| e.to_string())?;
                    tx.send_request(req).await
                }
            }
            .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = resp.into_parts();
            let body: Bytes = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        within(WAIT, "response over TLS", fut).await
    }
}

/// The `[listener]` `tls` line for `leaf`, with `client_ca` when given.
pub fn listener_tls(leaf: &Leaf, client_ca: Option<&Path>) -> String {
    let ca = client_ca
        .map(|p| format!(", client_ca = \"{}\"", p.display()))
        .unwrap_or_default();
    format!(
        "tls = {{ cert = \"{}\", key = \"{}\"{ca} }}\n",
        leaf.cert.display(),
        leaf.key.display()
    )
}
