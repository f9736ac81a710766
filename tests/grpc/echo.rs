//! The gRPC service the tests call through fusebox, written by hand the way
//! tonic-build's generated code is (prost messages, `tonic::server::Grpc` with a prost
//! codec, `tonic::client::Grpc`), so neither CI nor a developer needs protoc:
//!
//! ```proto
//! package fusebox.test;
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoReply);
//!   rpc ServerStream(EchoRequest) returns (stream EchoReply);
//!   rpc Chat(stream EchoRequest) returns (stream EchoReply);
//! }
//! ```
//!
//! [`EchoUpstream`] serves it over h2c from a plain hyper HTTP/2 server (not tonic's
//! transport server, which would enforce `grpc-timeout` itself and hide whether fusebox
//! did), records what it got and fails or stalls on the test's command.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use http::uri::PathAndQuery;
use http::HeaderMap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{mpsc, Notify};
use tonic::client::GrpcService;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    /// How many replies `ServerStream` sends.
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// The gRPC code `ServerStream` ends with after its replies (0: OK).
    #[prost(int32, tag = "3")]
    pub end_with: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
    /// The name of the upstream that answered.
    #[prost(string, tag = "3")]
    pub upstream: String,
}

pub const UNARY: &str = "/fusebox.test.Echo/Unary";
pub const SERVER_STREAM: &str = "/fusebox.test.Echo/ServerStream";
pub const CHAT: &str = "/fusebox.test.Echo/Chat";

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

/// A method body as a tower `Service`, which tonic's `UnaryService`,
/// `ServerStreamingService` and `StreamingService` are implemented for. (A plain `fn`,
/// not a closure: closures here trip rustc's higher-ranked `Send` check of `serve`.)
struct Method<Req, Resp> {
    st: Arc<State>,
    body: fn(Arc<State>, Request<Req>) -> BoxFuture<Response<Resp>>,
}

impl<Req, Resp> tower_service::Service<Request<Req>> for Method<Req, Resp> {
    type Response = Response<Resp>;
    type Error = Status;
    type Future = BoxFuture<Response<Resp>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Req>) -> Self::Future {
        (self.body)(self.st.clone(), req)
    }
}

/// What the upstream does with the next calls, set by the test.
#[derive(Default)]
struct Script {
    /// Answer the next `n` calls with this status (trailers-only), before any delay.
    fail: Option<(Code, String, usize)>,
    /// Wait this long before answering.
    delay: Duration,
}

struct State {
    name: String,
    script: Mutex<Script>,
    calls: AtomicUsize,
    /// Request headers of every call, in arrival order.
    seen: Mutex<Vec<HeaderMap>>,
    /// `ServerStream` waits here between its first and second reply.
    release: Notify,
    /// Notified when a `ServerStream` reply could not be sent: the caller went away.
    stream_cancelled: Notify,
}

/// A scriptable `fusebox.test.Echo` server on 127.0.0.1:0 (HTTP/2 prior knowledge).
pub struct EchoUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl EchoUpstream {
    pub async fn start(name: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            script: Mutex::default(),
            calls: AtomicUsize::new(0),
            seen: Mutex::default(),
            release: Notify::new(),
            stream_cancelled: Notify::new(),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let st = st.clone();
                let svc = hyper::service::service_fn(move |req| serve(st.clone(), req));
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        EchoUpstream {
            addr,
            state,
            accept,
        }
    }

    /// Answers the next `times` calls with `code` and `message` (`usize::MAX`: always).
    pub fn fail(&self, code: Code, message: &str, times: usize) {
        self.state.script.lock().unwrap().fail = Some((code, message.to_owned(), times));
    }

    pub fn delay(&self, d: Duration) {
        self.state.script.lock().unwrap().delay = d;
    }

    /// Lets a `ServerStream` call send its replies after the first.
    pub fn release_stream(&self) {
        self.state.release.notify_one();
    }

    /// Resolves once a `ServerStream` call found its caller gone (stream reset).
    pub async fn stream_cancelled(&self) {
        self.state.stream_cancelled.notified().await;
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Request headers of every call so far.
    pub fn seen(&self) -> Vec<HeaderMap> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Values of request header `name`, one per call (empty when absent).
    pub fn seen_header(&self, name: &str) -> Vec<String> {
        self.seen()
            .iter()
            .map(|h| {
                h.get(name)
                    .map(|v| v.to_str().unwrap_or("<non-ascii>").to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }
}

async fn serve(
    st: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    st.calls.fetch_add(1, Ordering::SeqCst);
    st.seen.lock().unwrap().push(req.headers().clone());
    let (fail, delay) = {
        let mut s = st.script.lock().unwrap();
        let fail = match &mut s.fail {
            Some((code, msg, n)) if *n > 0 => {
                *n = n.saturating_sub(usize::from(*n != usize::MAX));
                Some(Status::new(*code, msg.clone()))
            }
            _ => None,
        };
        (fail, s.delay)
    };
    if let Some(status) = fail {
        return Ok(status.into_http());
    }
    tokio::time::sleep(delay).await;
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<EchoReply, EchoRequest>::default());
    let path = req.uri().path().to_owned();
    Ok(match path.as_str() {
        UNARY => grpc.unary(Method { st, body: unary }, req).await,
        SERVER_STREAM => {
            grpc.server_streaming(Method { st, body: stream }, req)
                .await
        }
        CHAT => grpc.streaming(Method { st, body: chat }, req).await,
        _ => Status::unimplemented(format!("no method {path}")).into_http(),
    })
}

fn unary(st: Arc<State>, req: Request<EchoRequest>) -> BoxFuture<Response<EchoReply>> {
    let mut resp = Response::new(EchoReply {
        message: req.into_inner().message,
        seq: 0,
        upstream: st.name.clone(),
    });
    resp.metadata_mut()
        .insert("x-upstream-name", st.name.parse().unwrap());
    Box::pin(async move { Ok(resp) })
}

/// `count` replies, holding after the first until [`EchoUpstream::release_stream`];
/// then, when `end_with` is set, that status (with `x-detail` metadata) as trailers.
fn stream(st: Arc<State>, req: Request<EchoRequest>) -> BoxFuture<Response<ReplyStream>> {
    let m = req.into_inner();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for seq in 0..m.count {
            if seq == 1 {
                st.release.notified().await;
            }
            let reply = EchoReply {
                message: format!("{}-{seq}", m.message),
                seq,
                upstream: st.name.clone(),
            };
            if tx.send(Ok(reply)).await.is_err() {
                st.stream_cancelled.notify_one();
                return;
            }
        }
        if m.end_with != 0 {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("x-detail", "after-stream".parse().unwrap());
            let status = Status::with_metadata(m.end_with.into(), "stream ended badly", md);
            let _ = tx.send(Err(status)).await;
        }
    });
    Box::pin(async move { Ok(Response::new(receiver_stream(rx))) })
}

/// Answers each message as it arrives, numbering the replies.
fn chat(st: Arc<State>, req: Request<Streaming<EchoRequest>>) -> BoxFuture<Response<ReplyStream>> {
    let mut inbound = req.into_inner();
    let name = st.name.clone();
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut seq = 0;
        loop {
            let item = match inbound.message().await {
                Ok(Some(m)) => Ok(EchoReply {
                    message: m.message,
                    seq,
                    upstream: name.clone(),
                }),
                Ok(None) => return,
                Err(status) => Err(status),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
            seq += 1;
        }
    });
    Box::pin(async move { Ok(Response::new(receiver_stream(rx))) })
}

fn receiver_stream(rx: mpsc::Receiver<Result<EchoReply, Status>>) -> ReplyStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// An h2c transport without tonic's client-side `grpc-timeout` timer: a
/// DEADLINE_EXCEEDED seen through it was enforced by fusebox.
pub type PlainH2 = hyper_util::client::legacy::Client<HttpConnector, tonic::body::Body>;

/// A typed `fusebox.test.Echo` client, as tonic-build would generate it.
pub struct EchoClient<T> {
    grpc: tonic::client::Grpc<T>,
}

impl EchoClient<tonic::transport::Channel> {
    /// tonic's own channel to `addr` (HTTP/2 prior knowledge).
    pub async fn connect(addr: SocketAddr) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        }
    }
}

impl EchoClient<PlainH2> {
    /// Over a plain hyper h2c client (see [`PlainH2`]).
    pub fn plain(addr: SocketAddr) -> Self {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        let origin = format!("http://{addr}").parse().unwrap();
        EchoClient {
            grpc: tonic::client::Grpc::with_origin(client, origin),
        }
    }
}

impl<T> EchoClient<T>
where
    T: GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    async fn ready(&mut self) -> Result<(), Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("transport not ready: {}", e.into())))
    }

    pub async fn unary(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(UNARY);
        self.grpc.unary(req, path, ProstCodec::default()).await
    }

    pub async fn server_stream(
        &mut self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(SERVER_STREAM);
        self.grpc
            .server_streaming(req, path, ProstCodec::default())
            .await
    }

    pub async fn chat(
        &mut self,
        req: Request<impl Stream<Item = EchoRequest> + Send + 'static>,
    ) -> Result<Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(CHAT);
        self.grpc.streaming(req, path, ProstCodec::default()).await
    }

    /// Calls `path` (a method fusebox may have no route for) with an empty request.
    pub async fn unary_at(&mut self, path: &'static str) -> Result<Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(path);
        let req = Request::new(EchoRequest::default());
        self.grpc.unary(req, path, ProstCodec::default()).await
    }
}

/// Sends one `EchoRequest` to `path` as raw gRPC over h2c and returns the response
/// head, so a test can check the HTTP shape (tonic would turn a JSON 404 or 503 into
/// UNIMPLEMENTED or UNAVAILABLE on its own).
pub async fn raw_call(addr: SocketAddr, path: &str) -> http::response::Parts {
    use prost::Message as _;
    let msg = EchoRequest::default().encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&msg);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(frame.into())
        .unwrap();
    client.request(req).await.unwrap().into_parts().0
}

/// `x-fusebox-error` of a status (set only on errors fusebox answered itself).
pub fn fusebox_error(s: &Status) -> Option<&str> {
    s.metadata().get("x-fusebox-error")?.to_str().ok()
}
