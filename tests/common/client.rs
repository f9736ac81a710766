//! Downstream helpers: hyper-util's pooled client over HTTP/1.1 or HTTP/2 prior
//! knowledge (h2c), and a raw TCP connection for malformed, slow or hand-written requests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::TestBody;
use super::{within, WAIT};

pub type TestClient = Client<HttpConnector, TestBody>;

/// An HTTP/1.1 client with keep-alive pooling.
pub fn http1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A request builder for `url`.
pub fn request(method: Method, url: &str) -> http::request::Builder {
    Request::builder().method(method).uri(url)
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Sends and returns the response head (body still streaming); panics on error or
/// when no head arrives within [`WAIT`].
pub async fn send_head(client: &TestClient, req: Request<TestBody>) -> Response<Incoming> {
    within(WAIT, "response head", client.request(req))
        .await
        .unwrap_or_else(|e| panic!("request failed: {e:?}"))
}

/// Sends and reads the whole response; `Err` holds the client error text.
pub async fn try_send(client: &TestClient, req: Request<TestBody>) -> Result<Reply, String> {
    let fut = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    };
    within(WAIT, "whole response", fut).await
}

/// Sends and reads the whole response; panics on a client error.
pub async fn send(client: &TestClient, req: Request<TestBody>) -> Reply {
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"))
}

/// GET `url` with no extra headers.
pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(
        client,
        request(Method::GET, url)
            .body(super::body::empty())
            .expect("request"),
    )
    .await
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How a raw connection ended while the test waited on it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed (EOF or reset) after sending these bytes (maybe none).
    Closed(Vec<u8>),
    /// Still open when the wait ended.
    Open,
}

/// A raw TCP connection with a read buffer that keeps bytes between responses.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = within(WAIT, "raw connect", TcpStream::connect(addr))
            .await
            .expect("raw connect");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `data`; `Err` when the peer already closed.
    pub async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data).await?;
        self.stream.flush().await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one response (Content-Length, chunked, or until close), waiting at most
    /// [`WAIT`]; panics when none arrives.
    pub async fn read_response(&mut self) -> RawResponse {
        within(WAIT, "raw response", self.read_response_inner())
            .await
            .unwrap_or_else(|e| panic!("reading a response failed: {e}"))
    }

    /// One response if it arrives within `d`, else `None` (the connection stays usable
    /// only if nothing was read; callers use this to show a request is not served).
    pub async fn response_within(&mut self, d: Duration) -> Option<RawResponse> {
        tokio::time::timeout(d, self.read_response_inner())
            .await
            .ok()
            .map(|r| r.unwrap_or_else(|e| panic!("reading a response failed: {e}")))
    }

    async fn read_response_inner(&mut self) -> std::io::Result<RawResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.fill().await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "closed before a response head: {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let body = if status < 200 || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = get("content-length") {
            let len: usize = len.parse().expect("numeric content-length");
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            self.buf.drain(..len).collect()
        } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            self.read_chunked().await?
        } else {
            while self.fill().await? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if self.fill().await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            };
            let size_text = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected) end with an empty line.
                loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        let empty = i == 0;
                        self.buf.drain(..i + 2);
                        if empty {
                            return Ok(body);
                        }
                    } else if self.fill().await? == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Waits up to `d` for the peer to close; returns what it sent before closing.
    pub async fn wait_closed(&mut self, d: Duration) -> Ending {
        let fut = async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => return std::mem::take(&mut self.buf),
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout(d, fut).await {
            Ok(data) => Ending::Closed(data),
            Err(_) => Ending::Open,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
