//! The HTTP client the OTLP exporter posts through: one keep-alive HTTP/1.1 connection
//! to the collector (TLS with the crate's rustls and the system roots for `https`),
//! replaced when it closes, with the configured export headers on every request.
//!
//! hyper's connection API rather than hyper-util's pooled client, as in
//! `upstream/pool.rs`: exports are sequential (one at a time from the export thread),
//! so one connection is all a pool would hold, and a TLS connector for the pooled
//! client would be more code than this. No reqwest, no second TLS stack.
//!
//! Used only on the export thread; never touched by requests.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest collector answer read (an OTLP answer is a few bytes; the limit the
/// exporter's own clients apply).
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where exports go: the collector's host and port, and TLS for `https`.
pub struct CollectorClient {
    host: String,
    port: u16,
    /// `host[:port]` as written in the endpoint, sent as `Host`.
    authority: HeaderValue,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `[tracing] headers`, set on every export (over any of the same name).
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Bound on one export: connect, TLS, request and answer.
    timeout: Duration,
    /// The open connection between exports.
    conn: tokio::sync::Mutex<Option<Sender>>,
}

impl fmt::Debug for CollectorClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be secrets: names only.
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("CollectorClient")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("headers", &names)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CollectorClient {
    pub fn new(
        uri: &Uri,
        tls: Option<(TlsConnector, ServerName<'static>)>,
        headers: Vec<(HeaderName, HeaderValue)>,
        timeout: Duration,
    ) -> Result<CollectorClient, String> {
        let authority = uri.authority().ok_or("the endpoint has no host")?;
        let port = authority
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        Ok(CollectorClient {
            host: host.to_owned(),
            port,
            authority: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            tls,
            headers,
            timeout,
            conn: tokio::sync::Mutex::new(None),
        })
    }

    async fn connect(&self) -> Result<Sender, HttpError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => handshake(tcp).await,
            Some((connector, name)) => handshake(connector.connect(name.clone(), tcp).await?).await,
        }
    }

    /// Sends on the open connection, or on a new one. A reused connection that the
    /// collector closed while idle fails before any answer: then once more on a new one.
    async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError> {
        let mut slot = self.conn.lock().await;
        let reused = slot.take().filter(|s| !s.is_closed());
        let retry = reused.is_some().then(|| clone_request(&req));
        let first = match reused {
            Some(sender) => exchange(sender, req).await,
            None => exchange(self.connect().await?, req).await,
        };
        let (sender, resp) = match (first, retry) {
            (Ok(done), _) => done,
            (Err(e), Some(req))
                if e.is_canceled() || e.is_closed() || e.is_incomplete_message() =>
            {
                exchange(self.connect().await?, req).await?
            }
            (Err(e), _) => return Err(e.into()),
        };
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await?
            .to_bytes();
        *slot = Some(sender);
        Ok(Response::from_parts(parts, body))
    }
}

#[async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        // Origin form on the wire; the connection already names the collector.
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse()?;
        parts.headers.insert(HOST, self.authority.clone());
        for (name, value) in &self.headers {
            parts.headers.insert(name.clone(), value.clone());
        }
        let req = Request::from_parts(parts, Full::new(body));
        tokio::time::timeout(self.timeout, self.send(req))
            .await
            .map_err(|_| format!("no answer from the collector within {:?}", self.timeout))?
    }
}

async fn handshake<IO>(io: IO) -> Result<Sender, HttpError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn exchange(
    mut sender: Sender,
    req: Request<Full<Bytes>>,
) -> Result<(Sender, Response<hyper::body::Incoming>), hyper::Error> {
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    Ok((sender, resp))
}

fn clone_request(req: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut out = Request::new(req.body().clone());
    *out.method_mut() = req.method().clone();
    *out.uri_mut() = req.uri().clone();
    *out.headers_mut() = req.headers().clone();
    out
}
