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

/// A token bucket: `rate` messages per second, with bursts of up to `burst`.
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn new(rate: u32, burst: u32, now: Instant) -> RateLimit {
        RateLimit {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
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
    let mut rate = RateLimit::new(
        config.limits.conn_messages_per_sec_max,
        config.limits.conn_messages_burst_max,
        Instant::now(),
    );
    let period = config.keepalive_interval;
    let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = true;
    loop {
        // Allocated only when frames are waiting, and released after they are written.
        let mut batch = Vec::new();
        tokio::select! {
            biased;
            exit = stopped(app, shared) => return exit,
            () = rx.next_batch(&mut batch, WRITE_BATCH_MAX) => {
                // A reader that stopped reading blocks this write once the socket buffers
                // fill; the room's decision to close it must still get through (so with
                // every write below).
                tokio::select! {
                    biased;
                    exit = stopped(app, shared) => return exit,
                    written = write_batch(socket, &mut batch) => {
                        if written.is_err() {
                            return Exit::Gone;
                        }
                    }
                }
            }
            msg = socket.recv() => {
                heard = true;
                match msg {
                    Some(Ok(Message::Binary(frame))) => {
                        if !rate.allow(Instant::now()) {
                            return Exit::Close(CloseCode::RateLimited, "message rate limit exceeded".into());
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
                    exit = stopped(app, shared) => return exit,
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
