//! The bounded queue from a room task to one connection, and the way a room closes it.
//!
//! An idle connection must be cheap, so the queue holds no storage while it is empty: a
//! `VecDeque` that grows with a backlog and is released once drained, behind a mutex the room
//! and the connection each hold for a few instructions. One `Notify` wakes the connection for
//! everything the room asks of it: frames to write, a keep-alive ping, or closing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use roomd_sync::CloseCode;
use tokio::sync::Notify;

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
    /// Woken when frames are queued, a ping is due or the connection is to close (a permit is
    /// kept if the connection is busy).
    ready: Notify,
    /// Why the server closes it, once it has decided to (the first reason wins).
    close_reason: OnceLock<(CloseCode, String)>,
    /// The room's keep-alive tick came: the connection checks its peer and pings it.
    ping_due: AtomicBool,
}

impl ConnShared {
    /// Asks the connection task to close with `code`; the first request wins.
    pub fn close(&self, code: CloseCode, reason: impl Into<String>) {
        let _ = self.close_reason.set((code, reason.into()));
        self.ready.notify_one();
    }

    /// The close the server asked for, if it has.
    fn close_request(&self) -> Option<(CloseCode, String)> {
        self.close_reason.get().cloned()
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

/// What the room asks of its connection.
#[derive(Debug, PartialEq)]
pub enum Wake {
    /// Close with this code and reason.
    Close(CloseCode, String),
    /// Write these frames.
    Frames(VecDeque<Bytes>),
    /// A keep-alive tick: check the peer has been heard, and ping it.
    Ping,
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
    /// A new outbox bounded by `messages_max` frames and `bytes_max` bytes.
    pub fn new(messages_max: usize, bytes_max: usize) -> (Outbox, OutboxRx) {
        let shared = Arc::new(ConnShared::default());
        (
            Outbox {
                shared: shared.clone(),
                messages_max,
                bytes_max,
            },
            OutboxRx { shared, bytes_max },
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

    /// Asks the connection to ping its peer (and to give up on it if it has been silent since
    /// the last time).
    pub fn ping(&self) {
        self.shared.ping_due.store(true, Ordering::Release);
        self.shared.ready.notify_one();
    }
}

impl OutboxRx {
    /// Waits until the room asks something of the connection: closing comes first, then
    /// frames (up to `max`; when the whole queue fits, its storage moves with them and the
    /// queue is left holding none), then a ping. Cancel-safe: nothing is taken before the
    /// wait completes.
    pub async fn next(&mut self, max: usize) -> Wake {
        loop {
            if let Some((code, reason)) = self.shared.close_request() {
                return Wake::Close(code, reason);
            }
            {
                let mut q = self.shared.queue();
                if !q.frames.is_empty() {
                    let batch = if q.frames.len() <= max {
                        std::mem::take(&mut q.frames)
                    } else {
                        q.frames.drain(..max).collect()
                    };
                    for frame in &batch {
                        if frame.len() > self.bytes_max {
                            q.oversized = false;
                        } else {
                            q.bytes -= frame.len();
                        }
                    }
                    return Wake::Frames(batch);
                }
            }
            if self.shared.ping_due.swap(false, Ordering::AcqRel) {
                return Wake::Ping;
            }
            self.shared.ready.notified().await;
        }
    }

    /// Resolves once the room has asked the connection to close, with the code and reason.
    pub async fn closed(&self) -> (CloseCode, String) {
        loop {
            if let Some(request) = self.shared.close_request() {
                return request;
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

    fn frames(wake: Wake) -> VecDeque<Bytes> {
        match wake {
            Wake::Frames(frames) => frames,
            other => panic!("expected frames, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bounds_and_batches() {
        let (tx, mut rx) = Outbox::new(3, 10);
        // A frame larger than the budget goes through behind small ones, outside the budget,
        // but only one at a time.
        tx.push(Bytes::from_static(b"ab")).unwrap();
        tx.push(Bytes::from_static(b"0123456789abc")).unwrap();
        assert_eq!(
            tx.push(Bytes::from_static(b"0123456789xyz")),
            Err(PushError::Full)
        );
        assert_eq!(frames(rx.next(8).await).len(), 2);
        tx.push(Bytes::from_static(b"0123456789xyz")).unwrap();
        assert_eq!(frames(rx.next(8).await).len(), 1);
        for _ in 0..3 {
            tx.push(Bytes::from_static(b"ab")).unwrap();
        }
        assert_eq!(tx.push(Bytes::from_static(b"ab")), Err(PushError::Full));
        assert_eq!(frames(rx.next(2).await).len(), 2);
        assert_eq!(frames(rx.next(2).await).len(), 1);
        drop(rx);
        assert_eq!(tx.push(Bytes::from_static(b"ab")), Err(PushError::Gone));
    }

    #[tokio::test]
    async fn wakes_a_waiting_writer() {
        let (tx, mut rx) = Outbox::new(8, 1024);
        let writer = tokio::spawn(async move { rx.next(8).await });
        tokio::task::yield_now().await;
        tx.push(Bytes::from_static(b"hello")).unwrap();
        assert_eq!(
            writer.await.unwrap(),
            Wake::Frames(VecDeque::from([Bytes::from_static(b"hello")]))
        );
    }

    #[tokio::test]
    async fn closing_comes_before_frames_and_frames_before_a_ping() {
        let (tx, mut rx) = Outbox::new(8, 1024);
        tx.ping();
        tx.push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(frames(rx.next(8).await).len(), 1);
        assert_eq!(rx.next(8).await, Wake::Ping);
        let waiting = tokio::spawn(async move {
            let closed = rx.closed().await;
            (closed, rx)
        });
        tokio::task::yield_now().await;
        tx.push(Bytes::from_static(b"y")).unwrap();
        tx.close(CloseCode::TooSlow, "slow");
        tx.close(CloseCode::GoingAway, "later requests lose");
        let (closed, mut rx) = waiting.await.unwrap();
        assert_eq!(closed, (CloseCode::TooSlow, "slow".to_string()));
        assert_eq!(
            rx.next(8).await,
            Wake::Close(CloseCode::TooSlow, "slow".into())
        );
    }
}
