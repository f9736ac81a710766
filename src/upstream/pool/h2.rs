//! The HTTP/2 connections of one endpoint (`h2c`, `h2`): as many multiplexed
//! connections as the load needs, up to `max_connections_per_host`, each carrying at
//! most the streams its peer allows.
//!
//! A request takes a stream on the open connection with the fewest streams in flight
//! that is below its peer's `SETTINGS_MAX_CONCURRENT_STREAMS`; when every connection is
//! at its limit it opens another one while under the cap, and at the cap it waits for a
//! stream to free, within the connect timeout, as a request waits for an HTTP/1.1
//! connection: past it the attempt fails as pool exhaustion, fusebox's own cap, which
//! is retried and counts on no breaker. (Crowding onto a full connection would queue
//! the stream inside h2 until the attempt's timeout, then charge the endpoint for a
//! request it was never sent.) A stream counts until its response body has ended or
//! been dropped ([`Stream`], carried in the request's [`Lease`]); giving one back wakes
//! the waiters.
//!
//! The limit comes from [`peer_limit`], which reads the peer's SETTINGS frames off
//! the connection's byte stream. A new connection is *published* to other requests only
//! once its first SETTINGS frame is in: before it, nothing says how many streams it may
//! carry, and a burst piled onto it would stay queued inside h2 while other connections
//! could have served it. Its opener waits for that frame too, within the connect
//! timeout (a peer that sends none is no HTTP/2 server: a connect failure, and the
//! connection is closed), and requests that find every published connection full wait for the
//! connects in progress, as many as those connections are expected to carry (the
//! endpoint's known limit, [`DEFAULT_MAX_STREAMS`] before any), rather than each
//! opening a connection of its own.
//!
//! A peer that sets no limit allows unbounded streams (RFC 9113 §5.1.2); fusebox then
//! counts [`DEFAULT_MAX_STREAMS`] per connection.
//!
//! Closed connections leave the list when their task ends (or at the next sweep);
//! connections that carried no stream for `idle_timeout` are closed by the sweeper.
//!
//! Touched per request: one short lock to pick a connection (a scan of the endpoint's
//! few connections, an atomic increment, two reference-count increments; no
//! allocation), one atomic decrement when the response body ends.

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::peer_limit::{PeerLimit, Sniffed, DEFAULT_MAX_STREAMS};
use super::{Lease, Leased, Pool, SendError};
use crate::body::ReqBody;

/// One HTTP/2 connection.
pub(super) struct H2Conn {
    tx: http2::SendRequest<ReqBody>,
    /// Streams in flight: taken when a request picks the connection, given back when
    /// its response body ends or is dropped.
    streams: AtomicU32,
    /// The peer's current stream limit (it may change it at any time).
    peer: Arc<PeerLimit>,
    /// The pool's waiters, woken when a stream is given back.
    wake: Arc<Wake>,
}

/// Requests waiting for a connection or a stream of one endpoint, and their signal.
#[derive(Default)]
pub(super) struct Wake {
    /// Signalled when a connection is published, fails to open, or closes, and when a
    /// stream is given back while someone waits: waiting requests look again.
    changed: Notify,
    /// Requests waiting now (the lock-free twin of [`State::waiting`], read when a
    /// stream is given back).
    waiting: std::sync::atomic::AtomicUsize,
}

impl H2Conn {
    fn limit(&self) -> u32 {
        self.peer.max_streams()
    }

    fn load(&self) -> u32 {
        self.streams.load(Ordering::Relaxed)
    }
}

/// A stream in flight on an HTTP/2 connection; gives it back when dropped.
pub struct Stream(Arc<H2Conn>);

impl Drop for Stream {
    fn drop(&mut self) {
        // SeqCst with the waiter's count and its re-check (`pick_h2`): either it sees
        // this stream free, or this sees it waiting.
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
        let wake = &self.0.wake;
        if wake.waiting.load(Ordering::SeqCst) > 0 {
            wake.changed.notify_waiters();
        }
    }
}

/// The HTTP/2 part of a [`Pool`].
#[derive(Default)]
pub(super) struct H2Conns {
    state: Mutex<State>,
    wake: Arc<Wake>,
}

#[derive(Default)]
struct State {
    /// Published connections (their peer's limit is known).
    conns: Vec<Slot>,
    /// Connects in progress: opened, SETTINGS not yet seen.
    connecting: usize,
    /// Requests waiting for those connects.
    waiting: usize,
}

struct Slot {
    conn: Arc<H2Conn>,
    /// Requests that picked it, and that count at the last sweep: a connection picked
    /// since is not idle, however short its streams were.
    picks: u64,
    swept_picks: u64,
    /// When a sweep first found it without streams and unpicked.
    idle_since: Option<Instant>,
}

/// What a request does next, decided from the published connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    /// Take a stream on this connection (index into the list).
    Use(usize),
    /// Wait for a connect in progress (or a connection to close, at the cap).
    Wait,
    /// Open a connection: a slot under the cap was taken.
    Open,
}

/// The pool's rule. `conns` yields (index, streams in flight, limit) of every open
/// connection; `assumed` is the limit expected of a connection still connecting;
/// `open` takes a slot under the cap and says whether it got one.
fn choose(
    conns: impl Iterator<Item = (usize, u32, u32)>,
    assumed: u32,
    connecting: usize,
    waiting: usize,
    open: impl FnOnce() -> bool,
) -> Choice {
    let mut free: Option<(usize, u32)> = None;
    for (i, load, limit) in conns {
        if load < limit && free.is_none_or(|(_, l)| load < l) {
            free = Some((i, load));
        }
    }
    if let Some((i, _)) = free {
        return Choice::Use(i);
    }
    // Every open connection is at its limit. The connects in progress will each carry
    // `assumed` streams, one of them their opener's: wait for them while they have room.
    let room = connecting.saturating_mul(assumed.saturating_sub(1) as usize);
    if waiting < room {
        return Choice::Wait;
    }
    if open() {
        return Choice::Open;
    }
    // At the cap: wait for a stream to free (or a connection still connecting).
    Choice::Wait
}

enum Pick {
    Ready(http2::SendRequest<ReqBody>, Stream),
    Wait,
    Open(OwnedSemaphorePermit, Connecting),
}

/// A connect in progress, counted in [`State::connecting`] until its connection is
/// published; dropped unpublished (the connect failed, or the connection ended before
/// its SETTINGS), it uncounts itself and wakes the waiters.
struct Connecting {
    pool: Weak<Pool>,
    published: bool,
}

impl Connecting {
    fn publish(mut self, conn: Arc<H2Conn>) {
        self.published = true;
        if let Some(pool) = self.pool.upgrade() {
            {
                let mut st = pool.h2.lock();
                st.connecting -= 1;
                st.conns.push(Slot {
                    conn,
                    picks: 0,
                    swept_picks: 0,
                    idle_since: None,
                });
            }
            pool.h2.wake.changed.notify_waiters();
        }
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if self.published {
            return;
        }
        if let Some(pool) = self.pool.upgrade() {
            pool.h2.lock().connecting -= 1;
            pool.h2.wake.changed.notify_waiters();
        }
    }
}

/// A request counted in [`State::waiting`] while it waits.
struct Waiting<'a>(&'a H2Conns);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
        self.0.wake.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl H2Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open connections carrying at least one stream.
    pub(super) fn busy(&self) -> usize {
        self.lock()
            .conns
            .iter()
            .filter(|s| s.conn.load() > 0)
            .count()
    }

    /// Drops closed connections, and closes those that carried no stream for
    /// `idle_timeout` (as seen by sweeps: a connection picked between two sweeps
    /// starts over).
    pub(super) fn sweep(&self, now: Instant, idle_timeout: Duration) {
        let mut st = self.lock();
        st.conns.retain_mut(|s| {
            if s.conn.tx.is_closed() {
                return false;
            }
            if s.conn.load() > 0 || s.picks != s.swept_picks {
                s.swept_picks = s.picks;
                s.idle_since = None;
                return true;
            }
            let since = *s.idle_since.get_or_insert(now);
            // Dropping the last sender closes the connection.
            now.saturating_duration_since(since) < idle_timeout
        });
    }

    fn remove(&self, conn: &Weak<H2Conn>) {
        self.lock()
            .conns
            .retain(|s| !std::ptr::eq(Arc::as_ptr(&s.conn), conn.as_ptr()));
    }
}

impl Pool {
    /// Sends one request over HTTP/2; the [`Lease`] holds its stream until the
    /// response body ends.
    pub(super) async fn send_h2(
        self: &Arc<Self>,
        req: Request<ReqBody>,
        mark: &super::LeaseMark,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        let (mut tx, stream, waited) = self.checkout_h2().await?;
        mark.mark(waited);
        match tx.try_send_request(req).await {
            Ok(resp) => Ok((resp, Some(Lease(Leased::Http2(stream))))),
            // Handed back unsent: the connection closed under it, nothing reached the
            // upstream. It takes no more requests.
            Err(e) if e.message().is_some() => {
                self.h2.remove(&Arc::downgrade(&stream.0));
                Err(SendError::Connect(
                    self.addr,
                    io::Error::new(io::ErrorKind::ConnectionReset, e.into_error().to_string()),
                ))
            }
            Err(e) => {
                let err = super::sent_error(e.into_error());
                if err.is_draining() {
                    // The upstream is going away on this connection: no new stream
                    // may go there (a retry would be refused the same way).
                    self.h2.remove(&Arc::downgrade(&stream.0));
                }
                Err(err)
            }
        }
    }

    /// A stream on a published connection, on a new one, or on one that finishes
    /// connecting; waiting is bounded by the connect timeout.
    /// With `true` when the stream was not had at once.
    async fn checkout_h2(
        self: &Arc<Self>,
    ) -> Result<(http2::SendRequest<ReqBody>, Stream, bool), SendError> {
        let mut started: Option<Instant> = None;
        loop {
            let notified = self.h2.wake.changed.notified();
            tokio::pin!(notified);
            match self.pick_h2(notified.as_mut()) {
                Pick::Ready(tx, stream) => {
                    self.observe_wait(started.map_or(Duration::ZERO, |t| t.elapsed()));
                    return Ok((tx, stream, started.is_some()));
                }
                Pick::Open(permit, connecting) => {
                    let t = *started.get_or_insert_with(Instant::now);
                    // Boxed: the connect path (TCP, TLS, handshake) is cold and large;
                    // inline it would grow every request's future (see `connect_h1`).
                    let got = Box::pin(self.open_h2(
                        permit,
                        connecting,
                        t + self.settings.connect_timeout,
                    ))
                    .await;
                    self.observe_wait(t.elapsed());
                    return got.map(|(tx, stream)| (tx, stream, true));
                }
                Pick::Wait => {
                    let _waiting = Waiting(&self.h2);
                    let t = *started.get_or_insert_with(Instant::now);
                    let deadline = t + self.settings.connect_timeout;
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        self.observe_wait(t.elapsed());
                        return Err(if self.slots.available_permits() == 0 {
                            SendError::PoolExhausted(self.addr, self.settings.connect_timeout)
                        } else {
                            SendError::ConnectTimeout(self.addr, self.settings.connect_timeout)
                        });
                    }
                }
            }
        }
    }

    /// One decision under one short lock; a waiter is registered (`notified` enabled)
    /// before the lock is released, so no publication between the two is missed.
    fn pick_h2(
        self: &Arc<Self>,
        notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ) -> Pick {
        let mut st = self.h2.lock();
        let assumed = st
            .conns
            .first()
            .map_or(DEFAULT_MAX_STREAMS, |s| s.conn.limit());
        let mut permit = None;
        let choice = choose(
            st.conns
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.conn.tx.is_closed())
                .map(|(i, s)| (i, s.conn.load(), s.conn.limit())),
            assumed,
            st.connecting,
            st.waiting,
            || {
                permit = self.slots.clone().try_acquire_owned().ok();
                permit.is_some()
            },
        );
        match (choice, permit) {
            (Choice::Use(i), _) => {
                let slot = &mut st.conns[i];
                slot.picks += 1;
                slot.conn.streams.fetch_add(1, Ordering::Relaxed);
                Pick::Ready(slot.conn.tx.clone(), Stream(slot.conn.clone()))
            }
            (Choice::Open, Some(permit)) => {
                st.connecting += 1;
                let connecting = Connecting {
                    pool: Arc::downgrade(self),
                    published: false,
                };
                Pick::Open(permit, connecting)
            }
            _ => {
                notified.enable();
                st.waiting += 1;
                self.h2.wake.waiting.fetch_add(1, Ordering::SeqCst);
                // A stream given back between the scan and the count above did not
                // see this waiter: look once more (see `Stream`'s drop).
                let free = st.conns.iter().position(|s| {
                    !s.conn.tx.is_closed() && s.conn.streams.load(Ordering::SeqCst) < s.conn.limit()
                });
                if let Some(i) = free {
                    st.waiting -= 1;
                    self.h2.wake.waiting.fetch_sub(1, Ordering::SeqCst);
                    let slot = &mut st.conns[i];
                    slot.picks += 1;
                    slot.conn.streams.fetch_add(1, Ordering::Relaxed);
                    return Pick::Ready(slot.conn.tx.clone(), Stream(slot.conn.clone()));
                }
                Pick::Wait
            }
        }
    }

    async fn open_h2(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        connecting: Connecting,
        deadline: Instant,
    ) -> Result<(http2::SendRequest<ReqBody>, Stream), SendError> {
        let tcp = self.tcp(deadline).await?;
        match &self.settings.tls {
            None => self.h2_over(permit, connecting, tcp, deadline).await,
            Some(tls) => {
                let stream = self.tls(tls, tcp, deadline).await?;
                self.h2_over(permit, connecting, stream, deadline).await
            }
        }
    }

    /// The HTTP/2 handshake over `io` (TCP for h2c, TLS for h2): the connection is
    /// usable, for its opener and then for others, once its peer's SETTINGS are in, by
    /// `deadline` (the connect timeout). A peer that sends none by then is no HTTP/2
    /// server (or a hung one): the connection is closed and the opener's attempt fails
    /// as a connect failure, retried elsewhere, since nothing was sent on it.
    async fn h2_over<I>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        connecting: Connecting,
        io: I,
        deadline: Instant,
    ) -> Result<(http2::SendRequest<ReqBody>, Stream), SendError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = Arc::new(PeerLimit::default());
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(Sniffed::new(io, peer.clone())))
            .await
            .map_err(|e| SendError::Handshake(self.addr, e))?;
        let h2 = Arc::new(H2Conn {
            tx: tx.clone(),
            streams: AtomicU32::new(1),
            peer,
            wake: self.h2.wake.clone(),
        });
        self.spawn_h2(permit, connecting, conn, h2.clone(), deadline);
        let stream = Stream(h2);
        let waited = tokio::time::timeout_at(deadline, stream.0.peer.settled()).await;
        if waited.is_err() || !stream.0.peer.is_settled() {
            // No SETTINGS by the connect timeout, or the connection ended first.
            return Err(SendError::Connect(
                self.addr,
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no HTTP/2 SETTINGS from the upstream within {:?} (or it closed the connection first)",
                        self.settings.connect_timeout
                    ),
                ),
            ));
        }
        Ok((tx, stream))
    }

    /// Drives the connection; publishes it once its peer's first SETTINGS are in (by
    /// `deadline`, else it is closed unpublished), and takes it out of the list when it
    /// ends.
    fn spawn_h2<I>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        connecting: Connecting,
        conn: http2::Connection<TokioIo<Sniffed<I>>, ReqBody, TokioExecutor>,
        h2: Arc<H2Conn>,
        deadline: Instant,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::downgrade(self);
        let id = Arc::downgrade(&h2);
        tokio::spawn(async move {
            tokio::pin!(conn);
            let peer = h2.peer.clone();
            let settled = tokio::time::timeout_at(deadline, peer.settled());
            let settled = tokio::select! {
                biased;
                _ = &mut conn => false,
                r = settled => r.is_ok(),
            };
            // The task keeps no sender once the connection is published: the sweeper
            // closes an idle connection by dropping the pool's. A connection that
            // ended, or sent no SETTINGS in time, is dropped (closed) unpublished.
            if settled {
                connecting.publish(h2);
                let _ = conn.await;
            } else {
                drop((connecting, h2));
            }
            peer.close();
            open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            if let Some(p) = pool.upgrade() {
                p.h2.remove(&id);
                p.h2.wake.changed.notify_waiters();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(conns: &[(u32, u32)], connecting: usize, waiting: usize, can_open: bool) -> Choice {
        choose(
            conns.iter().enumerate().map(|(i, &(l, m))| (i, l, m)),
            conns.first().map_or(DEFAULT_MAX_STREAMS, |c| c.1),
            connecting,
            waiting,
            || can_open,
        )
    }

    #[test]
    fn the_least_loaded_connection_below_its_limit_is_used() {
        assert_eq!(pick(&[(3, 4), (1, 4), (2, 4)], 0, 0, true), Choice::Use(1));
        // The least loaded is full (a lower limit): the next below its own.
        assert_eq!(pick(&[(2, 2), (3, 8)], 0, 0, true), Choice::Use(1));
        // Ties go to the first.
        assert_eq!(pick(&[(1, 4), (1, 4)], 0, 0, true), Choice::Use(0));
    }

    #[test]
    fn a_connection_is_opened_only_when_all_are_full() {
        assert_eq!(pick(&[], 0, 0, true), Choice::Open);
        assert_eq!(pick(&[(4, 4), (4, 4)], 0, 0, true), Choice::Open);
        // A limit of zero (the peer allows no new stream for now) counts as full.
        assert_eq!(pick(&[(0, 0)], 0, 0, true), Choice::Open);
    }

    #[test]
    fn requests_wait_for_connects_in_progress_while_they_have_room() {
        // Nothing known yet: a connect in progress is expected to carry 100 streams,
        // one of them its opener's.
        assert_eq!(pick(&[], 1, 0, true), Choice::Wait);
        assert_eq!(pick(&[], 1, 98, true), Choice::Wait);
        assert_eq!(pick(&[], 1, 99, true), Choice::Open);
        // Limit 4 known: each connect in progress has room for 3 waiters.
        assert_eq!(pick(&[(4, 4)], 1, 2, true), Choice::Wait);
        assert_eq!(pick(&[(4, 4)], 1, 3, true), Choice::Open);
        assert_eq!(pick(&[(4, 4)], 2, 5, true), Choice::Wait);
        // Limit 1: nobody can share a connect, each opens its own.
        assert_eq!(pick(&[(1, 1)], 3, 0, true), Choice::Open);
    }

    #[test]
    fn at_the_cap_requests_wait_for_a_stream_or_a_connect() {
        // Every connection full and no room to open one: wait for a stream to free
        // (crowding would queue inside h2 until the attempt timed out).
        assert_eq!(pick(&[(6, 4), (5, 4), (7, 4)], 0, 0, false), Choice::Wait);
        assert_eq!(pick(&[(4, 4)], 0, 3, false), Choice::Wait);
        // A connection still connecting will have room: wait for it.
        assert_eq!(pick(&[(4, 4), (4, 4)], 1, 9, false), Choice::Wait);
        // Nothing open, nothing to open: wait for one to close.
        assert_eq!(pick(&[], 0, 0, false), Choice::Wait);
    }
}
