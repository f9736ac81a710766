//! fusebox's span processor: the bounded queue between a span's end and its export, the
//! export thread that batches and exports, and the count of every span lost on the way
//! (`gateway_tracing_spans_dropped_total`).
//!
//! Written here rather than using the SDK's `BatchSpanProcessor`, which does the same
//! but keeps its drop count private. Spans are counted as dropped when the queue is full
//! (or shut) at the moment a span ends, when the export of their batch fails or times
//! out, and when a shutdown runs out of time before exporting them.
//!
//! Touched per sampled request: [`QueueProcessor::on_end`], one `try_send` that never
//! blocks or awaits. Everything else runs on the export thread (`fusebox-otel`, with a
//! single-threaded runtime of its own, so a slow collector never holds a request
//! worker).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Most spans in one export request (the OpenTelemetry SDK's default batch size).
pub const MAX_BATCH: usize = 512;

/// How long the first span of a partial batch waits for company before the batch is
/// sent: traces reach the backend within about a second, and a quiet sidecar sends at
/// most one request a second. A full batch goes at once.
pub const EXPORT_DELAY: Duration = Duration::from_secs(1);

/// Extra time a caller of flush or shutdown waits beyond the bound it gave the export
/// thread, for the thread's own reply to arrive.
const REPLY_GRACE: Duration = Duration::from_millis(100);

/// Called by the export thread when a flush or shutdown is done.
type Done = Box<dyn FnOnce() + Send>;

enum Control {
    Flush { bound: Duration, done: Done },
    Shutdown { bound: Duration, done: Done },
}

/// The way to ask the export thread to flush or stop. Cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    control: mpsc::UnboundedSender<Control>,
    /// Set by the first shutdown; later flushes and shutdowns return at once.
    shut: Arc<AtomicBool>,
}

impl QueueHandle {
    /// Exports everything queued, or stops the export thread after doing so (`stop`:
    /// what is left then is counted as dropped), spending at most `bound`; `true` if
    /// the thread answered in time.
    pub async fn call(&self, stop: bool, bound: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if !self.send(
            stop,
            bound,
            Box::new(move || {
                let _ = tx.send(());
            }),
        ) {
            return true;
        }
        matches!(
            tokio::time::timeout(bound + REPLY_GRACE, rx).await,
            Ok(Ok(()))
        )
    }

    /// Asks the export thread to export what is queued within `bound` and stop,
    /// without waiting for it.
    pub fn stop_in_background(&self, bound: Duration) {
        self.send(true, bound, Box::new(|| {}));
    }

    /// [`Self::call`] for the SDK's blocking processor interface.
    fn call_blocking(&self, stop: bool, bound: Duration) -> OTelSdkResult {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if !self.send(
            stop,
            bound,
            Box::new(move || {
                let _ = tx.send(());
            }),
        ) {
            return Ok(());
        }
        rx.recv_timeout(bound + REPLY_GRACE)
            .map_err(|_| OTelSdkError::Timeout(bound))
    }

    /// Sends the request; `false` when there is nothing to ask (already shut down, or
    /// the export thread is gone).
    fn send(&self, stop: bool, bound: Duration, done: Done) -> bool {
        if self.shut.load(Ordering::Acquire) {
            return false;
        }
        let msg = if stop {
            self.shut.store(true, Ordering::Release);
            Control::Shutdown { bound, done }
        } else {
            Control::Flush { bound, done }
        };
        self.control.send(msg).is_ok()
    }
}

/// The SDK-facing end of the queue: `on_end` puts a span on it or counts it dropped.
#[derive(Debug)]
pub struct QueueProcessor {
    spans: mpsc::Sender<SpanData>,
    dropped: IntCounter,
    handle: QueueHandle,
}

impl QueueProcessor {
    /// Starts the export thread around `exporter` with a queue of `max_queue` spans
    /// (at least one); each export gets at most `export_timeout`.
    pub fn start<E: SpanExporter + 'static>(
        exporter: E,
        max_queue: usize,
        export_timeout: Duration,
        dropped: IntCounter,
    ) -> io::Result<(QueueProcessor, QueueHandle)> {
        let (spans_tx, spans_rx) = mpsc::channel(max_queue.max(1));
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let export = ExportLoop {
            spans: spans_rx,
            control: control_rx,
            exporter,
            batch: Vec::new(),
            timeout: export_timeout,
            dropped: dropped.clone(),
            failing: false,
        };
        std::thread::Builder::new()
            .name("fusebox-otel".into())
            .spawn(move || runtime.block_on(export.run()))?;
        let handle = QueueHandle {
            control: control_tx,
            shut: Arc::new(AtomicBool::new(false)),
        };
        let processor = QueueProcessor {
            spans: spans_tx,
            dropped,
            handle: handle.clone(),
        };
        Ok((processor, handle))
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.spans.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.handle.call_blocking(false, Duration::from_secs(5))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.handle.call_blocking(true, timeout)
    }
}

/// What woke the export loop.
enum Wake {
    Control(Option<Control>),
    /// Spans received (0: every sender is gone).
    Spans(usize),
    Due,
}

/// The export thread's state.
struct ExportLoop<E> {
    spans: mpsc::Receiver<SpanData>,
    control: mpsc::UnboundedReceiver<Control>,
    exporter: E,
    /// Spans taken off the queue, not yet exported (at most [`MAX_BATCH`]).
    batch: Vec<SpanData>,
    timeout: Duration,
    dropped: IntCounter,
    /// The last export failed: logged once per outage, not once per batch.
    failing: bool,
}

impl<E: SpanExporter> ExportLoop<E> {
    async fn run(mut self) {
        let mut due: Option<Instant> = None;
        loop {
            if self.batch.len() >= MAX_BATCH {
                self.export(self.timeout).await;
            }
            // A partial batch (new, or left by a flush that ran out of time) goes
            // EXPORT_DELAY after it started.
            due = match due {
                _ if self.batch.is_empty() => None,
                Some(at) => Some(at),
                None => Some(Instant::now() + EXPORT_DELAY),
            };
            // At least 1: a full batch was exported above.
            let room = MAX_BATCH - self.batch.len();
            let wake = tokio::select! {
                biased;
                c = self.control.recv() => Wake::Control(c),
                n = self.spans.recv_many(&mut self.batch, room) => Wake::Spans(n),
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => Wake::Due,
            };
            match wake {
                Wake::Control(Some(Control::Flush { bound, done })) => {
                    self.drain(bound).await;
                    done();
                }
                Wake::Control(Some(Control::Shutdown { bound, done })) => {
                    self.finish(bound).await;
                    done();
                    return;
                }
                Wake::Control(None) | Wake::Spans(0) => {
                    let bound = self.timeout;
                    self.finish(bound).await;
                    return;
                }
                Wake::Spans(_) => {}
                Wake::Due => self.export(self.timeout).await,
            }
        }
    }

    /// Exports the batch and everything queued, in batches, until the queue is empty
    /// or `bound` has passed.
    async fn drain(&mut self, bound: Duration) {
        let deadline = Instant::now() + bound;
        loop {
            while self.batch.len() < MAX_BATCH {
                match self.spans.try_recv() {
                    Ok(span) => self.batch.push(span),
                    Err(_) => break,
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if self.batch.is_empty() || left.is_zero() {
                return;
            }
            self.export(left.min(self.timeout)).await;
        }
    }

    /// Drains within `bound`, counts whatever is left as dropped, shuts the exporter.
    async fn finish(&mut self, bound: Duration) {
        self.spans.close();
        self.drain(bound).await;
        let mut left = self.batch.len() as u64;
        self.batch.clear();
        while self.spans.try_recv().is_ok() {
            left += 1;
        }
        self.dropped.inc_by(left);
        let _ = self.exporter.shutdown_with_timeout(bound);
    }

    /// Exports the batch, waiting at most `limit`; on failure its spans are counted.
    async fn export(&mut self, limit: Duration) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let n = batch.len() as u64;
        let failure = match tokio::time::timeout(limit, self.exporter.export(batch)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {limit:?}")),
        };
        match failure {
            None if self.failing => {
                self.failing = false;
                tracing::info!("trace export recovered");
            }
            None => {}
            Some(error) => {
                self.dropped.inc_by(n);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(
                        %error,
                        spans = n,
                        "trace export failed; spans are dropped (and counted in \
                         gateway_tracing_spans_dropped_total) until it recovers"
                    );
                }
            }
        }
    }
}
