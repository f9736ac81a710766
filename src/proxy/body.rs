//! Body types of the request path. Request bodies stream to the upstream with the
//! listener's size cap enforced while they stream; small ones are kept for replay on a
//! retry. Response bodies stream back to the caller with the upstream's idle timeout, and
//! carry the [`Completion`] whose drop writes the access-log line once the last byte left
//! (or the caller went away). Concrete enums rather than boxed trait objects: no
//! allocation per frame and no dynamic dispatch on the hot path.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::access_log::Completion;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-request facts the body wrappers report back to the request path.
#[derive(Debug, Default)]
pub struct BodyShared {
    /// Request body bytes read from the caller.
    pub bytes_in: AtomicU64,
    /// Set when the caller's body passed `max_request_body` and the stream was cut.
    pub too_large: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("no body bytes for {0:?}")]
pub struct IdleTimeout(pub Duration);

/// The caller's body, counted and capped as it streams.
#[derive(Debug)]
pub struct LimitedIncoming {
    inner: Incoming,
    limit: u64,
    read: u64,
    shared: Arc<BodyShared>,
}

impl LimitedIncoming {
    pub fn new(inner: Incoming, limit: u64, shared: Arc<BodyShared>) -> Self {
        LimitedIncoming {
            inner,
            limit,
            read: 0,
            shared,
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    /// Next frame, with the cap applied.
    pub fn poll_frame_limited(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    self.shared
                        .bytes_in
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if self.read > self.limit {
                        self.shared.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(Box::new(e)))),
            None => Poll::Ready(None),
        }
    }
}

/// What is sent upstream as the request body.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    /// A body held whole (health checks, fixed bodies).
    Full(Option<Bytes>),
    /// The caller's body, kept for replay while it fits (see [`ReplaySource`]).
    Replay(ReplayBody),
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Replay(r) => r.poll(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Replay(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Replay(r) => match r.src.declared {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::new(),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a newer attempt")]
pub struct Superseded;

/// The caller's body, shared by every attempt of one request. It streams to the first
/// attempt as it arrives (no store-and-forward delay) while the chunks are kept, up to
/// `max_replay_body`; a retry replays the kept chunks and then continues reading the
/// caller's stream. Once more than the cap has been read the chunks are dropped and the
/// request can no longer be retried; a body that was never read (a connect failure) can
/// always be. One lock per request, never contended across requests.
#[derive(Debug)]
pub struct ReplaySource {
    state: std::sync::Mutex<ReplayState>,
    /// The declared `Content-Length`, so each attempt announces the same length.
    declared: Option<u64>,
}

#[derive(Debug)]
struct ReplayState {
    chunks: Vec<Bytes>,
    kept: u64,
    cap: u64,
    /// Bytes were read and not kept: no replay possible.
    overflowed: bool,
    rest: Option<LimitedIncoming>,
    trailers: Option<http::HeaderMap>,
    failed: bool,
    /// Bodies of older attempts stop at once (a late read by an abandoned attempt must
    /// not steal the stream's waker from the current one).
    generation: u64,
}

impl ReplaySource {
    pub fn new(rest: LimitedIncoming, cap: u64, declared: Option<u64>) -> Arc<ReplaySource> {
        Arc::new(ReplaySource {
            state: std::sync::Mutex::new(ReplayState {
                chunks: Vec::new(),
                kept: 0,
                // A declared body over the cap is not kept at all.
                cap: if declared.is_some_and(|n| n > cap) {
                    0
                } else {
                    cap
                },
                overflowed: false,
                rest: Some(rest),
                trailers: None,
                failed: false,
                generation: 0,
            }),
            declared,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether another attempt can send the whole body again.
    pub fn can_replay(&self) -> bool {
        let s = self.lock();
        !s.overflowed && !s.failed
    }

    /// A body for the next attempt (older attempts' bodies stop).
    pub fn attempt(self: &Arc<Self>) -> ReplayBody {
        let mut s = self.lock();
        s.generation += 1;
        ReplayBody {
            src: self.clone(),
            pos: 0,
            generation: s.generation,
            trailers_sent: false,
        }
    }
}

/// One attempt's view of a [`ReplaySource`].
#[derive(Debug)]
pub struct ReplayBody {
    src: Arc<ReplaySource>,
    pos: usize,
    generation: u64,
    trailers_sent: bool,
}

impl ReplayBody {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut s = self.src.lock();
        if s.generation != self.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(c) = s.chunks.get(self.pos) {
            let c = c.clone();
            self.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(c))));
        }
        let Some(rest) = s.rest.as_mut() else {
            if !self.trailers_sent {
                self.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        };
        match ready!(rest.poll_frame_limited(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    if !s.overflowed && s.kept + n <= s.cap {
                        s.kept += n;
                        s.chunks.push(data.clone());
                        self.pos += 1;
                    } else {
                        s.overflowed = true;
                        s.chunks = Vec::new();
                        self.pos = 0;
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                s.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                s.rest = None;
                Poll::Ready(None)
            }
        }
    }
}

enum RespKind {
    Empty,
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        /// The HTTP/1 connection, returned to its pool when the body ends.
        lease: Option<crate::upstream::pool::Lease>,
        idle: Duration,
        /// Armed on the first `Pending` only: most small bodies arrive in one poll.
        timer: Option<Pin<Box<Sleep>>>,
    },
}

/// What is sent back to the caller.
pub struct RespBody {
    kind: RespKind,
    /// Written to the access log (and the connection's in-flight count released) on drop.
    completion: Option<Box<Completion>>,
}

impl std::fmt::Debug for RespBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RespBody")
    }
}

impl RespBody {
    pub fn empty() -> Self {
        RespBody {
            kind: RespKind::Empty,
            completion: None,
        }
    }

    pub fn full(b: Bytes) -> Self {
        RespBody {
            kind: RespKind::Full(Some(b)),
            completion: None,
        }
    }

    /// The upstream's body; errors with [`IdleTimeout`] when no frame arrives for `idle`.
    pub fn upstream(
        inner: Incoming,
        lease: Option<crate::upstream::pool::Lease>,
        idle: Duration,
    ) -> Self {
        let lease = match lease {
            // Nothing to read: the connection is free now.
            Some(l) if inner.is_end_stream() => {
                l.release();
                None
            }
            l => l,
        };
        RespBody {
            kind: RespKind::Upstream {
                inner,
                lease,
                idle,
                timer: None,
            },
            completion: None,
        }
    }

    pub fn set_completion(&mut self, c: Box<Completion>) {
        self.completion = Some(c);
    }

    pub fn completion_mut(&mut self) -> Option<&mut Completion> {
        self.completion.as_deref_mut()
    }

    fn count(&mut self, n: usize) {
        if let Some(c) = self.completion.as_deref_mut() {
            c.bytes_out += n as u64;
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        if let RespKind::Upstream { inner, lease, .. } = &mut self.kind {
            if inner.is_end_stream() {
                if let Some(l) = lease.take() {
                    l.release();
                }
            }
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let res = match &mut this.kind {
            RespKind::Empty => Poll::Ready(None),
            RespKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream {
                inner,
                lease,
                idle,
                timer,
            } => match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(t) = timer.as_mut() {
                        t.as_mut().reset(Instant::now() + *idle);
                    }
                    // hyper stops polling once a sized body is complete, so the
                    // connection goes back as soon as the last byte is in.
                    if inner.is_end_stream() {
                        if let Some(l) = lease.take() {
                            l.release();
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e) as BoxError))),
                Poll::Ready(None) => {
                    if let Some(l) = lease.take() {
                        l.release();
                    }
                    Poll::Ready(None)
                }
                Poll::Pending => match timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)))
                    .as_mut()
                    .poll(cx)
                {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(IdleTimeout(*idle)) as BoxError)))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len();
                    this.count(n);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(c) = this.completion.as_deref_mut() {
                    c.body_error = true;
                }
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RespKind::Empty => true,
            RespKind::Full(b) => b.is_none(),
            RespKind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RespKind::Empty => SizeHint::with_exact(0),
            RespKind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RespKind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
