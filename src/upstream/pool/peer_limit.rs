//! Learns an HTTP/2 peer's `SETTINGS_MAX_CONCURRENT_STREAMS` from the frames it sends.
//!
//! hyper does not tell when the peer's SETTINGS arrive: its `http2::Connection` has a
//! `current_max_send_streams` accessor, but hyper drives the h2 connection in a task of
//! its own, so nothing wakes the owner of that handle when the value changes, and the
//! pool needs to know the moment the first SETTINGS frame is in (before then a new
//! connection cannot be shared: its limit is unknown). So the connection's plaintext
//! byte stream (TCP for h2c, the TLS stream for h2) is wrapped in [`Sniffed`], whose
//! reads follow the frame boundaries (a 9-byte header: 24-bit length, 8-bit type,
//! 8-bit flags, 31-bit stream id) across reads, and pick parameter 0x3 out of every
//! SETTINGS frame (type 0x4, no ACK flag, stream 0) into [`PeerLimit`]. Other frames'
//! payloads are skipped by counting; no byte is copied but the 9 of a header and the 6
//! of a SETTINGS entry, which may be split across reads. Writes pass through untouched.
//!
//! h2 reads the same bytes right after and enforces the limit itself; the pool only
//! uses it to decide where a request goes.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// Streams counted per connection while its peer sets no limit (RFC 9113 §5.1.2 makes
/// that unbounded), and for the largest one, 2^32-1. The RFC asks peers not to set a
/// limit below 100, so 100 parallel streams is what every conformant peer is prepared
/// for; past that a further connection spreads the load (one connection's flow-control
/// window and TCP head-of-line blocking cap what it carries, and an inference server
/// often serves each connection from one task).
pub const DEFAULT_MAX_STREAMS: u32 = 100;

const FRAME_HEADER: usize = 9;
const SETTINGS_ENTRY: usize = 6;
const TYPE_SETTINGS: u8 = 0x4;
const FLAG_ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// What one connection's peer allows, as its SETTINGS frames said so far.
#[derive(Debug)]
pub struct PeerLimit {
    /// Streams the pool lets the connection carry ([`DEFAULT_MAX_STREAMS`] until a
    /// SETTINGS frame sets a limit).
    max_streams: AtomicU32,
    /// The first SETTINGS frame has been read whole (the peer must send one first).
    settled: AtomicBool,
    /// The connection ended (before or after settling).
    closed: AtomicBool,
    settled_signal: Notify,
}

impl Default for PeerLimit {
    fn default() -> Self {
        PeerLimit {
            max_streams: AtomicU32::new(DEFAULT_MAX_STREAMS),
            settled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            settled_signal: Notify::new(),
        }
    }
}

impl PeerLimit {
    pub fn max_streams(&self) -> u32 {
        self.max_streams.load(Ordering::Relaxed)
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Resolves once the peer's first SETTINGS frame has been read, or the connection
    /// ended (then `is_settled` says which).
    pub async fn settled(&self) {
        loop {
            let notified = self.settled_signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_settled() || self.closed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// The connection ended: whoever waits for its SETTINGS stops waiting.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.settled_signal.notify_waiters();
    }

    fn set(&self, value: u32) {
        let n = if value == u32::MAX {
            DEFAULT_MAX_STREAMS
        } else {
            value
        };
        self.max_streams.store(n, Ordering::Relaxed);
    }

    fn settings_done(&self) {
        if !self.settled.swap(true, Ordering::AcqRel) {
            self.settled_signal.notify_waiters();
        }
    }
}

/// Where the reader is in the peer's frame stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header; `have` bytes of it so far.
    Header { buf: [u8; FRAME_HEADER], have: u8 },
    /// Skipping the rest of a payload.
    Skip(u32),
    /// Inside a SETTINGS payload: `left` bytes to go, `have` bytes of the current entry.
    Settings {
        left: u32,
        entry: [u8; SETTINGS_ENTRY],
        have: u8,
    },
}

const AT_HEADER: State = State::Header {
    buf: [0; FRAME_HEADER],
    have: 0,
};

/// Follows frame boundaries over the bytes read from the peer.
#[derive(Debug)]
struct Frames {
    state: State,
}

impl Frames {
    fn new() -> Self {
        Frames { state: AT_HEADER }
    }

    fn feed(&mut self, mut bytes: &[u8], peer: &PeerLimit) {
        while !bytes.is_empty() {
            self.state = match self.state {
                State::Skip(left) => {
                    let n = bytes.len().min(left as usize);
                    bytes = &bytes[n..];
                    match left - n as u32 {
                        0 => AT_HEADER,
                        rest => State::Skip(rest),
                    }
                }
                State::Header { mut buf, have } => {
                    let have = usize::from(have);
                    let n = bytes.len().min(FRAME_HEADER - have);
                    buf[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < FRAME_HEADER {
                        State::Header {
                            buf,
                            have: (have + n) as u8,
                        }
                    } else {
                        Self::after_header(&buf, peer)
                    }
                }
                State::Settings {
                    left,
                    mut entry,
                    have,
                } => {
                    let have = usize::from(have);
                    let n = bytes.len().min(SETTINGS_ENTRY - have).min(left as usize);
                    entry[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    let (left, have) = (left - n as u32, have + n);
                    if have == SETTINGS_ENTRY {
                        let id = u16::from_be_bytes([entry[0], entry[1]]);
                        if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                            peer.set(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                        }
                    }
                    if left == 0 {
                        // A trailing partial entry is a framing error h2 answers; ignored.
                        peer.settings_done();
                        AT_HEADER
                    } else {
                        State::Settings {
                            left,
                            entry,
                            have: (have % SETTINGS_ENTRY) as u8,
                        }
                    }
                }
            };
        }
    }

    fn after_header(h: &[u8; FRAME_HEADER], peer: &PeerLimit) -> State {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        if kind == TYPE_SETTINGS && flags & FLAG_ACK == 0 && stream == 0 {
            if len == 0 {
                peer.settings_done();
                return AT_HEADER;
            }
            return State::Settings {
                left: len,
                entry: [0; SETTINGS_ENTRY],
                have: 0,
            };
        }
        match len {
            0 => AT_HEADER,
            n => State::Skip(n),
        }
    }
}

/// The plaintext HTTP/2 byte stream of one upstream connection, read through a
/// [`Frames`] follower that keeps `peer` up to date.
#[derive(Debug)]
pub struct Sniffed<I> {
    io: I,
    frames: Frames,
    peer: Arc<PeerLimit>,
}

impl<I> Sniffed<I> {
    pub fn new(io: I, peer: Arc<PeerLimit>) -> Self {
        Sniffed {
            io,
            frames: Frames::new(),
            peer,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Sniffed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        this.frames.feed(&buf.filled()[before..], &this.peer);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Sniffed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn settings(entries: &[(u16, u32)]) -> Vec<u8> {
        let mut p = Vec::new();
        for (id, v) in entries {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        frame(TYPE_SETTINGS, 0, 0, &p)
    }

    /// What a peer sends: its SETTINGS (header table size, then the stream limit, then
    /// the window size), a WINDOW_UPDATE, our SETTINGS acknowledged, a response's
    /// HEADERS and a DATA frame whose payload looks like a SETTINGS frame, a PING, then
    /// a later SETTINGS lowering the limit.
    fn conversation(first: u32, later: u32) -> Vec<u8> {
        let mut b = settings(&[(0x1, 4096), (0x3, first), (0x4, 65535)]);
        b.extend(frame(0x8, 0, 0, &[0, 0x0f, 0, 1]));
        b.extend(frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]));
        b.extend(frame(0x1, 0x4, 1, &[0x88]));
        b.extend(frame(0x0, 0x1, 1, &settings(&[(0x3, 999)])));
        b.extend(frame(0x6, 0, 0, &[7; 8]));
        b.extend(settings(&[(0x3, later)]));
        b
    }

    fn feed_in(pieces: &[&[u8]]) -> (PeerLimit, Frames) {
        let peer = PeerLimit::default();
        let mut frames = Frames::new();
        for p in pieces {
            frames.feed(p, &peer);
        }
        (peer, frames)
    }

    #[test]
    fn the_limit_is_read_whatever_the_split() {
        let bytes = conversation(4, 2);
        // The first SETTINGS frame ends at 27; its limit entry at 21.
        let (first_end, limit_end) = (9 + 18, 9 + 12);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            let peer = PeerLimit::default();
            let mut frames = Frames::new();
            frames.feed(a, &peer);
            assert_eq!(peer.is_settled(), cut >= first_end, "cut {cut}");
            if cut < bytes.len() {
                let want = if cut >= limit_end {
                    4
                } else {
                    DEFAULT_MAX_STREAMS
                };
                assert_eq!(peer.max_streams(), want, "cut {cut}");
            }
            frames.feed(b, &peer);
            assert_eq!(peer.max_streams(), 2, "cut {cut}");
            assert!(peer.is_settled());
            assert_eq!(frames.state, AT_HEADER, "cut {cut}: ends on a boundary");
        }
    }

    #[test]
    fn every_byte_on_its_own_read_and_every_pair_of_cuts() {
        let bytes = conversation(16, 32);
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        let (peer, frames) = feed_in(&singles);
        assert_eq!((peer.max_streams(), frames.state), (32, AT_HEADER));
        for i in 0..bytes.len() {
            for j in i..bytes.len() {
                let (peer, frames) = feed_in(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(peer.max_streams(), 32, "cuts {i} {j}");
                assert_eq!(frames.state, AT_HEADER);
            }
        }
    }

    #[test]
    fn settings_without_the_limit_settle_on_the_default() {
        let (peer, _) = feed_in(&[&settings(&[(0x4, 1 << 20)])]);
        assert!(peer.is_settled());
        assert_eq!(peer.max_streams(), DEFAULT_MAX_STREAMS);
        // An empty SETTINGS frame counts as the first one too.
        let (peer, _) = feed_in(&[&frame(TYPE_SETTINGS, 0, 0, &[])]);
        assert!(peer.is_settled());
        // The largest value means no limit: the default.
        let (peer, _) = feed_in(&[&settings(&[(0x3, u32::MAX)])]);
        assert_eq!(peer.max_streams(), DEFAULT_MAX_STREAMS);
        let (peer, _) = feed_in(&[&settings(&[(0x3, 0)])]);
        assert_eq!(peer.max_streams(), 0, "no new streams for now");
    }

    #[test]
    fn acks_and_other_streams_are_not_settings() {
        let mut b = frame(TYPE_SETTINGS, FLAG_ACK, 0, &[]);
        b.extend(frame(TYPE_SETTINGS, 0, 3, &settings(&[(0x3, 5)])[9..]));
        let (peer, frames) = feed_in(&[&b]);
        assert!(!peer.is_settled());
        assert_eq!(peer.max_streams(), DEFAULT_MAX_STREAMS);
        assert_eq!(frames.state, AT_HEADER);
    }

    #[test]
    fn a_large_data_frame_is_skipped_by_counting() {
        let mut b = settings(&[(0x3, 8)]);
        b.extend(frame(0x0, 0, 1, &vec![0x04; 70_000]));
        b.extend(settings(&[(0x3, 9)]));
        let pieces: Vec<&[u8]> = b.chunks(8192).collect();
        let (peer, frames) = feed_in(&pieces);
        assert_eq!((peer.max_streams(), frames.state), (9, AT_HEADER));
    }

    #[tokio::test]
    async fn sniffed_io_reads_through_and_signals_the_first_settings() {
        let (mut peer_side, ours) = tokio::io::duplex(64);
        let limit = Arc::new(PeerLimit::default());
        let mut io = Sniffed::new(ours, limit.clone());
        let bytes = conversation(4, 3);
        let waiter = tokio::spawn({
            let limit = limit.clone();
            async move { limit.settled().await }
        });
        let send = bytes.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            peer_side.write_all(&send).await.unwrap();
            peer_side
        });
        let mut got = vec![0; bytes.len()];
        tokio::io::AsyncReadExt::read_exact(&mut io, &mut got)
            .await
            .unwrap();
        assert_eq!(got, bytes, "bytes pass through unchanged");
        waiter.await.unwrap();
        assert_eq!(limit.max_streams(), 3);
        drop(writer.await.unwrap());
    }
}
