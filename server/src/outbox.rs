//! The bounded queue from a room task to one connection, and the way a room closes it.
//!
//! An idle connection must be cheap, so the queue holds no storage while it is empty: a
//! `VecDeque` that grows with a backlog and is released once drained, behind a mutex the room
//! and the connection each hold for a few instructions, and a `Notify` to wake the writer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use roomd_sync::CloseCode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// A frame larger than the whole byte budget is queued (it is not counted in `bytes`).
    oversized: bool,
    /// The connection task has ended: pushes fail with [`PushError::Gone`].
    gone: bool,
}

/// State shared by a connection task and the room that feeds it.
#[derive(Debug, Default)]
pub struct ConnShared {
    queue: Mutex<Queue>,
    /// Woken when frames are queued (a permit is kept if the writer is busy).
    ready: Notify,
    /// Cancelled when the server decides to close the connection, or shuts down (it is a
    /// child of the server's shutdown token, so one wait covers both).
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

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // The lock guards plain data and no code under it can panic halfway through an
        // update, so a poisoned lock still holds a consistent queue.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    shared: Arc<ConnShared>,
    messages_max: usize,
    bytes_max: usize,
}

/// The receiving half, held by the connection task. Dropping it makes later pushes fail
/// with [`PushError::Gone`].
#[derive(Debug)]
pub struct OutboxRx {
    shared: Arc<ConnShared>,
    bytes_max: usize,
}

impl Outbox {
    /// A new outbox bounded by `messages_max` frames and `bytes_max` bytes, whose closing
    /// token is cancelled with `parent`.
    pub fn new(
        messages_max: usize,
        bytes_max: usize,
        parent: &CancellationToken,
    ) -> (Outbox, OutboxRx, Arc<ConnShared>) {
        let shared = Arc::new(ConnShared {
            closing: parent.child_token(),
            ..ConnShared::default()
        });
        (
            Outbox {
                shared: shared.clone(),
                messages_max,
                bytes_max,
            },
            OutboxRx {
                shared: shared.clone(),
                bytes_max,
            },
            shared,
        )
    }

    /// Queues a frame without waiting.
    pub fn push(&self, frame: Bytes) -> Result<(), PushError> {
        {
            let mut q = self.shared.queue();
            if q.gone {
                return Err(PushError::Gone);
            }
            if q.frames.len() >= self.messages_max {
                return Err(PushError::Full);
            }
            // A frame larger than the whole budget (a big document's step 2) still goes
            // through, one at a time, outside the budget: the budget bounds the backlog, and
            // one such frame must not be refused because a few small ones wait before it.
            if frame.len() > self.bytes_max {
                if q.oversized {
                    return Err(PushError::Full);
                }
                q.oversized = true;
            } else if q.bytes + frame.len() > self.bytes_max {
                return Err(PushError::Full);
            } else {
                q.bytes += frame.len();
            }
            q.frames.push_back(frame);
        }
        self.shared.ready.notify_one();
        Ok(())
    }

    /// Closes the connection with `code`.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        self.shared.close(code, reason);
    }
}

impl OutboxRx {
    /// Waits until frames are queued, then moves up to `max` of them into `batch` (which
    /// should be empty). When the whole queue fits, its storage moves too, and the queue is
    /// left holding none. Cancel-safe: nothing is taken before the wait completes.
    pub async fn next_batch(&mut self, batch: &mut VecDeque<Bytes>, max: usize) {
        loop {
            {
                let mut q = self.shared.queue();
                if !q.frames.is_empty() {
                    let start = batch.len();
                    if batch.is_empty() && q.frames.len() <= max {
                        *batch = std::mem::take(&mut q.frames);
                    } else {
                        let n = q.frames.len().min(max);
                        batch.extend(q.frames.drain(..n));
                    }
                    for frame in batch.range(start..) {
                        if frame.len() > self.bytes_max {
                            q.oversized = false;
                        } else {
                            q.bytes -= frame.len();
                        }
                    }
                    return;
                }
            }
            self.shared.ready.notified().await;
        }
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut q = self.shared.queue();
        q.gone = true;
        q.frames = VecDeque::new();
        q.bytes = 0;
        q.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounds_and_batches() {
        let (tx, mut rx, _) = Outbox::new(3, 10, &CancellationToken::new());
        // A frame larger than the budget goes through behind small ones, outside the budget,
        // but only one at a time.
        tx.push(Bytes::from_static(b"ab")).unwrap();
        tx.push(Bytes::from_static(b"0123456789abc")).unwrap();
        assert_eq!(
            tx.push(Bytes::from_static(b"0123456789xyz")),
            Err(PushError::Full)
        );
        let mut batch = VecDeque::new();
        rx.next_batch(&mut batch, 8).await;
        assert_eq!(batch.len(), 2);
        batch.clear();
        tx.push(Bytes::from_static(b"0123456789xyz")).unwrap();
        rx.next_batch(&mut batch, 8).await;
        batch.clear();
        for _ in 0..3 {
            tx.push(Bytes::from_static(b"ab")).unwrap();
        }
        assert_eq!(tx.push(Bytes::from_static(b"ab")), Err(PushError::Full));
        rx.next_batch(&mut batch, 2).await;
        assert_eq!(batch.len(), 2);
        batch.clear();
        rx.next_batch(&mut batch, 2).await;
        assert_eq!(batch.len(), 1);
        drop(rx);
        assert_eq!(tx.push(Bytes::from_static(b"ab")), Err(PushError::Gone));
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let (tx, mut rx, _) = Outbox::new(8, 1024, &CancellationToken::new());
        let writer = tokio::spawn(async move {
            let mut batch = VecDeque::new();
            rx.next_batch(&mut batch, 8).await;
            batch
        });
        tokio::task::yield_now().await;
        tx.push(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(writer.await.unwrap(), vec![Bytes::from_static(b"hello")]);
    }
}
