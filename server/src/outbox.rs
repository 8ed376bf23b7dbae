//! The bounded queue from a room task to one connection, and the way a room closes it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use roomd_sync::CloseCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// State shared by a connection task and the room that feeds it.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// Bytes queued in the outbox and not yet written to the socket.
    pub queued_bytes: AtomicUsize,
    /// Cancelled when the server decides to close the connection.
    pub closing: CancellationToken,
    /// Why the server closes it (the first reason wins).
    pub close_reason: OnceLock<(CloseCode, String)>,
}

impl ConnShared {
    /// Asks the connection task to close with `code`; the first request wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let _ = self.close_reason.set((code, reason.into()));
        self.closing.cancel();
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The connection reads too slowly: its outbox is full.
    Full,
    /// The connection task has gone.
    Gone,
}

/// The sending half of a connection's outbox, held by its room.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<ConnShared>,
    bytes_max: usize,
}

impl Outbox {
    /// A new outbox bounded by `messages_max` frames and `bytes_max` bytes.
    pub fn new(
        messages_max: usize,
        bytes_max: usize,
    ) -> (Outbox, mpsc::Receiver<Bytes>, Arc<ConnShared>) {
        let (tx, rx) = mpsc::channel(messages_max);
        let shared = Arc::new(ConnShared::default());
        (
            Outbox {
                tx,
                shared: shared.clone(),
                bytes_max,
            },
            rx,
            shared,
        )
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let len = frame.len();
        let queued = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // A frame larger than the whole budget (a big document's step 2) still goes through
        // when nothing else is queued; the budget bounds the backlog, not single frames.
        if queued > 0 && queued + len > self.bytes_max {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Full);
        }
        self.tx.try_send(frame).map_err(|e| {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Gone,
            }
        })
    }

    /// Closes the connection with `code`.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        self.shared.close(code, reason);
    }
}
