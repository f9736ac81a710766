//! The response body sent back to the caller: an upstream's body streamed with the
//! upstream's idle timeout (its pooled connection returned when the last byte is in),
//! or a body fusebox made itself. It carries the request's [`RequestCtx`], whose drop
//! writes the access-log line once the last byte left (or the caller went away) and
//! releases the request's guards.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::ctx::RequestCtx;
use crate::body::{BoxError, IdleTimeout, StallTimer};

enum RespKind {
    Empty,
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        /// The HTTP/1 connection, returned to its pool when the body ends.
        lease: Option<crate::upstream::pool::Lease>,
        stall: StallTimer,
    },
}

/// What is sent back to the caller.
pub struct RespBody {
    kind: RespKind,
    /// Written to the access log (and its guards released) on drop.
    ctx: Option<Box<RequestCtx>>,
    /// The last frame went out (a chunked body's end is known only then).
    finished: bool,
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
            ctx: None,
            finished: false,
        }
    }

    pub fn full(b: Bytes) -> Self {
        RespBody {
            kind: RespKind::Full(Some(b)),
            ctx: None,
            finished: false,
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
                stall: StallTimer::new(idle),
            },
            ctx: None,
            finished: false,
        }
    }

    /// A body fusebox made itself, taken off for an answer to `HEAD` (RFC 9110 9.3.2:
    /// no content); returns its length, for the `content-length` the GET would have.
    /// hyper's HTTP/1 server drops such a body itself, its HTTP/2 server would send it
    /// (a stream error for the caller). An upstream's body is left: its answer to
    /// `HEAD` has none.
    pub fn take_for_head(&mut self) -> Option<u64> {
        match &self.kind {
            RespKind::Full(b) => {
                let n = b.as_ref().map_or(0, |b| b.len() as u64);
                self.kind = RespKind::Empty;
                Some(n)
            }
            _ => None,
        }
    }

    /// Hands the request's context to the body: it lives until the body is done.
    pub fn set_ctx(&mut self, ctx: Box<RequestCtx>) {
        self.ctx = Some(ctx);
    }

    /// The upstream's body ended (`failed`: it broke off, reset or stalled): settles
    /// the provisional success its headers recorded on the endpoint's breaker.
    fn settle(&mut self, failed: bool) {
        let Some(c) = self.ctx.as_deref_mut() else {
            return;
        };
        let (Some((slot, settle)), Some(f)) = (c.breaker_pending.take(), &c.in_flight) else {
            return;
        };
        // A body cut by the caller's own fault (its upload over the limit, stalled or
        // broken) says nothing about the endpoint.
        if !failed || c.body.caller_fault().is_some() {
            return;
        }
        let ep = f.endpoint();
        let breaker = ep.breakers(slot).main();
        if let Some(t) = breaker.late_failure(settle, tokio::time::Instant::now()) {
            ep.on_transition(slot, t, None);
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(c) = self.ctx.as_deref_mut() {
            c.bytes_out += n as u64;
            c.body
                .bytes_out
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Drop for RespBody {
    fn drop(&mut self) {
        let done = self.finished || self.is_end_stream();
        if let (false, Some(c)) = (done, self.ctx.as_deref_mut()) {
            // Dropped before its end, not by a failure of its own: the caller left (a
            // HEAD, 204 or 304 answer has no body to send).
            let bodiless = c.method == http::Method::HEAD || matches!(c.status, 204 | 304);
            if !c.body_error && !bodiless {
                c.cancelled = true;
            }
        }
        if let RespKind::Upstream { inner, lease, .. } = &mut self.kind {
            if inner.is_end_stream() {
                if let Some(l) = lease.take() {
                    l.release();
                }
            }
        }
    }
}

/// The upstream body's next frame; the stall timer first notes that it was asked.
fn poll_upstream(
    inner: &mut Incoming,
    stall: &mut StallTimer,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    stall.polled();
    Pin::new(inner).poll_frame(cx)
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        // The upstream's body is over: cleanly (`Some(false)`) or not.
        let mut ended: Option<bool> = None;
        let res = match &mut this.kind {
            RespKind::Empty => Poll::Ready(None),
            RespKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RespKind::Upstream {
                inner,
                lease,
                stall,
            } => match poll_upstream(inner, stall, cx) {
                Poll::Ready(Some(Ok(mut frame))) => {
                    stall.progress();
                    if let Some(t) = frame.trailers_mut() {
                        if let Some(c) = this.ctx.as_deref_mut() {
                            // A load report in the trailers (gRPC servers report per
                            // call there) goes to the endpoint that answered.
                            if let Some(ep) = c.in_flight.as_ref() {
                                ep.endpoint().trailer_report(t);
                            }
                            if c.grpc {
                                c.grpc_status = super::attempt::grpc_status_of(t);
                                // A failure code in the trailers fails the answer, as
                                // in a trailers-only answer's headers (DEADLINE_EXCEEDED
                                // of the caller's own deadline aside).
                                let failed = c.grpc_status.is_some_and(|g| {
                                    g < 32
                                        && c.grpc_failure_mask & (1u32 << g) != 0
                                        && !(c.caller_deadline && g == 4)
                                });
                                if failed {
                                    ended = Some(true);
                                }
                            }
                        }
                    }
                    // hyper stops polling once a sized body is complete, so the
                    // connection goes back as soon as the last byte is in.
                    if inner.is_end_stream() {
                        if let Some(l) = lease.take() {
                            l.release();
                        }
                        ended.get_or_insert(false);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    ended = Some(true);
                    Poll::Ready(Some(Err(Box::new(e) as BoxError)))
                }
                Poll::Ready(None) => {
                    if let Some(l) = lease.take() {
                        l.release();
                    }
                    ended = Some(false);
                    Poll::Ready(None)
                }
                Poll::Pending => match stall
                    .poll_stalled_both(cx, this.ctx.as_deref().map(|c| &c.body.bytes_in))
                {
                    Poll::Ready(()) => {
                        ended = Some(true);
                        Poll::Ready(Some(Err(Box::new(IdleTimeout(stall.idle())) as BoxError)))
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
                if let Some(c) = this.ctx.as_deref_mut() {
                    c.body_error = true;
                }
            }
            _ => {}
        }
        if let Some(failed) = ended {
            this.settle(failed);
        }
        if matches!(res, Poll::Ready(None)) {
            this.finished = true;
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
