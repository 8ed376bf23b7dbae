//! One task per WebSocket connection: it reads frames into its room's inbox and writes the
//! room's frames from its outbox, under a rate limit, with keep-alives.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::SinkExt;
use roomd_sync::{keepalive_frame, CloseCode, ConnId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::outbox::{ConnShared, Outbox, OutboxRx};
use crate::room::{JoinError, RoomCmd};
use crate::App;

/// Frames written to the socket before one flush, at most.
const WRITE_BATCH_MAX: usize = 64;

/// A token bucket that throttles a connection: `rate` messages per second, bursts of up to
/// `burst`. A message that empties the bucket makes the connection stop reading until a token
/// is back, so a fast writer is slowed by TCP backpressure rather than cut off; one that keeps
/// the bucket empty for longer than `throttled_max` is closed.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    throttled_max: Duration,
    /// When the current run of throttled reads began: every read since found the bucket
    /// without a spare token, so the peer has been sending faster than the rate.
    throttled_since: Option<Instant>,
}

/// What the connection does after a message.
#[derive(Debug, PartialEq)]
enum Admit {
    /// Read the next message at once.
    Go,
    /// Stop reading until this instant.
    WaitUntil(Instant),
    /// The peer has sent faster than the rate for longer than allowed.
    Close,
}

impl RateLimit {
    fn new(rate: u32, burst: u32, throttled_max: Duration, now: Instant) -> RateLimit {
        RateLimit {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
            throttled_max,
            throttled_since: None,
        }
    }

    /// Takes a token for a message read at `now`.
    fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 2.0 {
            // A spare token: the peer paused long enough to fall below the rate.
            self.throttled_since = None;
        }
        self.tokens -= 1.0;
        if self.tokens >= 1.0 {
            return Admit::Go;
        }
        let since = *self.throttled_since.get_or_insert(now);
        if now.saturating_duration_since(since) > self.throttled_max {
            return Admit::Close;
        }
        let wait = (1.0 - self.tokens) / self.rate;
        Admit::WaitUntil(now + Duration::from_secs_f64(wait))
    }
}

/// Why the connection loop ended.
enum Exit {
    /// The server closes with a code.
    Close(CloseCode, String),
    /// The peer left or the socket failed: nothing more to send.
    Gone,
}

/// Serves one upgraded WebSocket for document `doc` of room `room`.
pub async fn serve_socket(mut socket: WebSocket, app: Arc<App>, room: Arc<str>, doc: Arc<str>) {
    let metrics = &app.ctx.metrics;
    let open = metrics.connections_open.fetch_add(1, Ordering::AcqRel);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    if open >= app.ctx.config.limits.connections_max as u64 {
        close(
            &mut socket,
            &app,
            CloseCode::TryAgain,
            "server connection limit reached",
        )
        .await;
        metrics.connections_open.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let conn = ConnId(app.next_conn.fetch_add(1, Ordering::Relaxed));
    let limits = &app.ctx.config.limits;
    let (outbox, rx, shared) = Outbox::new(limits.outbox_messages_max, limits.outbox_bytes_max);
    match app.rooms.join(&room, doc.clone(), conn, outbox).await {
        Ok(handle) => {
            let exit = run(&mut socket, &app, &handle.tx, &doc, conn, rx, &shared).await;
            let _ = handle.tx.send(RoomCmd::Leave { doc, conn }).await;
            if let Exit::Close(code, reason) = exit {
                close(&mut socket, &app, code, &reason).await;
            }
        }
        Err(JoinError::Refused(code, reason)) => close(&mut socket, &app, code, &reason).await,
        Err(JoinError::Unloading) => {
            close(&mut socket, &app, CloseCode::TryAgain, "room unavailable").await
        }
    }
    metrics.connections_open.fetch_sub(1, Ordering::AcqRel);
}

async fn run(
    socket: &mut WebSocket,
    app: &App,
    room_tx: &mpsc::Sender<RoomCmd>,
    doc: &Arc<str>,
    conn: ConnId,
    mut rx: OutboxRx,
    shared: &ConnShared,
) -> Exit {
    let config = &app.ctx.config;
    let limits = &config.limits;
    let mut rate = RateLimit::new(
        limits.conn_messages_per_sec_max,
        limits.conn_messages_burst_max,
        limits.conn_throttled_max,
        Instant::now(),
    );
    let period = config.keepalive_interval;
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = true;
    // Set while the rate limit holds reading back.
    let mut resume_at: Option<Instant> = None;
    // One future for the connection's life, polled by every select below: the room's decision
    // to close it, or the server's shutdown.
    let stop = stopped(app, shared);
    tokio::pin!(stop);
    loop {
        // Allocated only when frames are waiting, and released after they are written.
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            exit = &mut stop => return exit,
            () = rx.next_batch(&mut batch, WRITE_BATCH_MAX) => {
                // A reader that stopped reading blocks this write once the socket buffers
                // fill; the room's decision to close it must still get through (so with
                // every write below).
                tokio::select! {
                    biased;
                    exit = &mut stop => return exit,
                    written = write_batch(socket, &mut batch) => {
                        if written.is_err() {
                            return Exit::Gone;
                        }
                    }
                }
            }
            () = sleep_until_some(resume_at), if resume_at.is_some() => {
                resume_at = None;
                // Held back, not silent: the peer was sending.
                heard = true;
            }
            msg = socket.recv(), if resume_at.is_none() => {
                heard = true;
                match msg {
                    Some(Ok(Message::Binary(frame))) => {
                        match rate.admit(Instant::now()) {
                            Admit::Go => {}
                            Admit::WaitUntil(t) => {
                                app.ctx.metrics.reads_throttled_total.fetch_add(1, Ordering::Relaxed);
                                resume_at = Some(t);
                            }
                            Admit::Close => {
                                return Exit::Close(CloseCode::RateLimited, "message rate limit exceeded".into());
                            }
                        }
                        app.ctx.metrics.frames_received_total.fetch_add(1, Ordering::Relaxed);
                        let cmd = RoomCmd::Frame { doc: doc.clone(), conn, frame };
                        if room_tx.send(cmd).await.is_err() {
                            return Exit::Close(CloseCode::TryAgain, "room unavailable".into());
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        return Exit::Close(CloseCode::ProtocolError, "text frames are not part of the protocol".into());
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => return Exit::Gone,
                    Some(Err(e)) => return read_error(e, app),
                }
            }
            _ = keepalive.tick() => {
                if !heard {
                    tracing::debug!(conn = conn.0, "peer silent for two keep-alive intervals; dropping");
                    return Exit::Gone;
                }
                heard = false;
                let ping = async {
                    socket.feed(Message::Ping(Bytes::new())).await?;
                    socket.send(Message::Binary(keepalive_frame())).await
                };
                tokio::select! {
                    biased;
                    exit = &mut stop => return exit,
                    sent = ping => {
                        if sent.is_err() {
                            return Exit::Gone;
                        }
                    }
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever when there is no instant.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the room closes the connection or the server shuts down, with the exit to take.
async fn stopped(app: &App, shared: &ConnShared) -> Exit {
    tokio::select! {
        biased;
        () = shared.closing.cancelled() => {
            let (code, reason) = shared
                .close_reason
                .get()
                .cloned()
                .unwrap_or((CloseCode::Internal, String::new()));
            Exit::Close(code, reason)
        }
        () = app.ctx.shutdown.cancelled() => {
            Exit::Close(CloseCode::GoingAway, "server shutting down".into())
        }
    }
}

/// Writes a batch of frames, then flushes once.
async fn write_batch(socket: &mut WebSocket, batch: &mut Vec<Bytes>) -> Result<(), axum::Error> {
    for frame in batch.drain(..) {
        socket.feed(Message::Binary(frame)).await?;
    }
    socket.flush().await
}

/// Maps a read error to an exit: oversized messages get a close code, the rest end quietly.
fn read_error(e: axum::Error, app: &App) -> Exit {
    let text = e.to_string();
    if text.contains("Space limit exceeded")
        || text.contains("too long")
        || text.contains("too big")
    {
        tracing::info!(error = %text, "message over the size limit");
        return Exit::Close(
            CloseCode::TooLarge,
            format!(
                "message exceeds {} bytes",
                app.ctx.config.limits.message_bytes_max
            ),
        );
    }
    tracing::debug!(error = %text, "websocket read failed");
    Exit::Gone
}

/// Sends a close frame and completes the closing handshake (except when shutting down), waiting
/// at most the configured close timeout for a slow or silent peer.
async fn close(socket: &mut WebSocket, app: &App, code: CloseCode, reason: &str) {
    app.ctx.metrics.count_close(code);
    let frame = CloseFrame {
        code: code.code(),
        reason: reason.into(),
    };
    let timeout: Duration = app.ctx.config.close_timeout;
    let handshake = async {
        socket.send(Message::Close(Some(frame))).await?;
        // The closing handshake: wait for the peer's close, discarding whatever it still
        // sends. Closing the socket with unread data would reset the connection, and the peer
        // could lose the close frame and its reason. A shutting-down server does not wait.
        if code == CloseCode::GoingAway {
            return Ok(());
        }
        while let Some(msg) = socket.recv().await {
            if let Message::Close(_) = msg? {
                break;
            }
        }
        Ok::<(), axum::Error>(())
    };
    let _ = tokio::time::timeout(timeout, handshake).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_reading_waits_for_the_rate() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(100, 3, Duration::from_secs(1), t0);
        assert_eq!(rate.admit(t0), Admit::Go);
        assert_eq!(rate.admit(t0), Admit::Go);
        // The third message empties the bucket: the next token is 10 ms away.
        assert_eq!(
            rate.admit(t0),
            Admit::WaitUntil(t0 + Duration::from_millis(10))
        );
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            rate.admit(t1),
            Admit::WaitUntil(t1 + Duration::from_millis(10))
        );
    }

    #[test]
    fn only_a_sustained_excess_closes() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(100, 1, Duration::from_millis(100), t0);
        let mut now = t0;
        let mut reads = 0;
        // Reading as soon as allowed, as a writer with a backlog does.
        loop {
            match rate.admit(now) {
                Admit::WaitUntil(t) => now = t,
                Admit::Go => unreachable!("a burst of one never passes a second message"),
                Admit::Close => break,
            }
            reads += 1;
            assert!(reads < 100, "never closed");
        }
        assert!(now - t0 > Duration::from_millis(100));
        // A pause long enough to refill a spare token starts the count again.
        let mut rate = RateLimit::new(100, 2, Duration::from_millis(100), t0);
        let mut now = t0;
        for _ in 0..50 {
            match rate.admit(now) {
                Admit::Close => panic!("a writer that pauses is not a flood"),
                Admit::Go | Admit::WaitUntil(_) => now += Duration::from_millis(25),
            }
        }
    }
}
