//! Body types shared by the test client and the test upstream: a boxed body for
//! requests and responses, and a channel-fed body that lets a test decide when each
//! chunk is sent (for streaming checks).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every request the tests send and every response the upstream sends.
pub type TestBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A whole body known up front (sent with a `Content-Length`).
pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into())
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed()
}

/// No body.
pub fn empty() -> TestBody {
    Empty::<Bytes>::new()
        .map_err(|e: Infallible| -> BoxError { match e {} })
        .boxed()
}

/// A body of unknown length (sent chunked) whose chunks the caller pushes through the
/// returned sender; the body ends when the sender is dropped.
pub fn channel_body(capacity: usize) -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChanBody { rx }.boxed())
}

struct ChanBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a reordered or dropped chunk shows.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The byte at `offset` of the upstream's streamed responses.
pub fn pattern_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// `len` bytes of the streamed-response pattern starting at `offset`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(pattern_byte).collect()
}
