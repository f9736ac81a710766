//! Body types of the request path. Request bodies stream to the upstream with the
//! listener's size cap enforced while they stream; small ones are kept for replay on a
//! retry. Response bodies stream back to the caller with the upstream's idle timeout, and
//! carry the [`Completion`] whose drop writes the access-log line once the last byte left
//! (or the caller went away). Concrete enums rather than boxed trait objects: no
//! allocation per frame and no dynamic dispatch on the hot path.

use std::collections::VecDeque;
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
    /// A body held whole (replayable: cloning `Bytes` is a reference count).
    Full(Option<Bytes>),
    /// Frames already read (kept while deciding on replay) followed by the rest of the
    /// caller's stream.
    Stream {
        head: VecDeque<Bytes>,
        rest: Box<LimitedIncoming>,
    },
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
            ReqBody::Stream { head, rest } => {
                if let Some(b) = head.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                rest.poll_frame_limited(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { head, rest } => head.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream { head, rest } => {
                let h: u64 = head.iter().map(|b| b.len() as u64).sum();
                let inner = rest.inner.size_hint();
                let mut s = SizeHint::new();
                s.set_lower(inner.lower() + h);
                if let Some(u) = inner.upper() {
                    s.set_upper(u + h);
                }
                s
            }
        }
    }
}

enum RespKind {
    Empty,
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
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
    pub fn upstream(inner: Incoming, idle: Duration) -> Self {
        RespBody {
            kind: RespKind::Upstream {
                inner,
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
            RespKind::Upstream { inner, idle, timer } => {
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(t) = timer.as_mut() {
                            t.as_mut().reset(Instant::now() + *idle);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e) as BoxError))),
                    Poll::Ready(None) => Poll::Ready(None),
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
                }
            }
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
