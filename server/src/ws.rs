//! One task per WebSocket connection: it reads frames into its room's inbox and writes the
//! room's frames from its outbox, under a rate limit, with keep-alives.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use roomd_sync::{keepalive_frame, CloseCode, ConnId};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::outbox::{Outbox, OutboxRx, Wake};
use crate::room::{JoinError, RoomCmd};
use crate::store::RoomKey;
use crate::websocket::{RecvError, Socket};
use crate::App;
use roomd_sync::websocket::{opcode, FrameError, Incoming};

/// A client's WebSocket.
type WebSocket = Socket<TokioIo<Upgraded>>;

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

/// What a connection speaks: how the frames it reads become commands for its room, and how the
/// items the room queues for it become frames. The y-websocket endpoint and the room protocol
/// share everything else: the socket, the rate limit, keep-alives, closing.
pub trait Wire: Send {
    /// Takes a binary frame from the peer: a command for the room when it completes one, or
    /// the close the peer gets for invalid input.
    fn frame(&mut self, conn: ConnId, frame: Bytes)
        -> Result<Option<RoomCmd>, (CloseCode, String)>;
    /// The command that tells the room the connection has gone.
    fn leave(&self, conn: ConnId, closed: Option<(CloseCode, String)>) -> RoomCmd;
    /// Turns what the room queued into the frames to write (as they are, by default).
    fn outgoing(&mut self, _batch: &mut VecDeque<Bytes>) {}
    /// A message sent with each keep-alive ping, for clients that ignore pings.
    fn keepalive(&self) -> Option<Bytes> {
        Some(keepalive_frame())
    }
}

/// The y-websocket protocol: every frame is a message for the connection's document.
#[derive(Debug)]
pub struct YjsWire {
    doc: Arc<str>,
}

impl Wire for YjsWire {
    fn frame(
        &mut self,
        conn: ConnId,
        frame: Bytes,
    ) -> Result<Option<RoomCmd>, (CloseCode, String)> {
        Ok(Some(RoomCmd::Frame {
            doc: self.doc.clone(),
            conn,
            frame,
        }))
    }

    fn leave(&self, conn: ConnId, closed: Option<(CloseCode, String)>) -> RoomCmd {
        RoomCmd::Leave {
            doc: self.doc.clone(),
            conn,
            closed,
        }
    }
}

/// Serves one WebSocket for document `doc` of room `room`, once the connection is upgraded.
pub fn serve_socket(
    upgrade: OnUpgrade,
    app: Arc<App>,
    joining: Arc<Joining>,
) -> impl std::future::Future<Output = ()> + Send {
    let wire = YjsWire {
        doc: joining.doc.clone(),
    };
    serve(upgrade, app, joining, wire)
}

/// Serves one WebSocket speaking `wire`, once the connection is upgraded.
///
/// Written as a function returning an `async move` block rather than an `async fn`: an async
/// fn copies its arguments into locals, and they would take their space twice in the future
/// every connection holds for its whole life.
#[allow(clippy::manual_async_fn)]
pub fn serve<W: Wire>(
    upgrade: OnUpgrade,
    app: Arc<App>,
    joining: Arc<Joining>,
    mut wire: W,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut socket = Socket::new(
            TokioIo::new(upgraded),
            app.ctx.config.limits.message_bytes_max,
        );
        let metrics = &app.ctx.metrics;
        metrics.connections_open.inc();
        metrics.connections_total.inc();
        let exit = join_and_run(&mut socket, &app, joining, &mut wire).await;
        if let Exit::Close(code, reason) = exit {
            close(&mut socket, &app, code, &reason).await;
        }
        metrics.connections_open.dec();
    }
}

/// Completes the upgrade of a refused connection, then closes it at once with `code`, before any
/// document data: a stock y-websocket provider stops reconnecting on a 44xx close and tells the
/// application why, where an HTTP refusal would leave it retrying for ever.
///
/// Refused sockets count against the process's connection limit while they close; past it, and
/// for at most [`REFUSED_CLOSE_TIMEOUT`] otherwise, the server does not wait for the client's
/// answering close: unauthenticated clients must not hold sockets for long.
pub async fn refuse_socket(upgrade: OnUpgrade, app: Arc<App>, code: CloseCode, reason: String) {
    let Ok(upgraded) = upgrade.await else {
        return;
    };
    let mut socket = Socket::new(
        TokioIo::new(upgraded),
        app.ctx.config.limits.message_bytes_max,
    );
    let metrics = &app.ctx.metrics;
    metrics.connections_open.inc();
    let full = metrics.connections_open.get() > app.ctx.config.limits.connections_max as i64;
    let timeout = if full {
        Duration::ZERO
    } else {
        app.ctx.config.close_timeout.min(REFUSED_CLOSE_TIMEOUT)
    };
    close_within(&mut socket, &app, code, &reason, timeout).await;
    metrics.connections_open.dec();
}

/// How long a refused connection's closing handshake may take, at most.
const REFUSED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a connection that passed authentication is about to join.
#[derive(Debug)]
pub struct Joining {
    /// The room.
    pub room: RoomKey,
    /// The document; empty for a room-protocol connection, which opens documents as it goes.
    pub doc: Arc<str>,
    /// The participant it is.
    pub who: Arc<roomd_room_apis::participants::Identity>,
    /// It may read the document but not change it.
    pub read_only: bool,
    /// Who it is to the rules of the documents it writes.
    pub principal: Arc<roomd_sync::Principal>,
    /// What a room-protocol connection may do in the room (a y-websocket connection's access
    /// is settled before it joins).
    pub scope: Option<Box<roomd_room_apis::ApiScope>>,
    /// The URL a room-protocol client connected to, as `room_ready` tells it.
    pub url: String,
}

/// Joins the connection to its room and runs it until it ends; then leaves the room, saying why
/// the server closes it, if it does. What it joined as is let go once joined: an idle connection
/// keeps no copy of its identity.
async fn join_and_run<W: Wire>(
    socket: &mut WebSocket,
    app: &App,
    joining: Arc<Joining>,
    wire: &mut W,
) -> Exit {
    let room = &joining.room;
    let limits = &app.ctx.config.limits;
    if app.ctx.metrics.connections_open.get() > limits.connections_max as i64 {
        return Exit::Close(
            CloseCode::TryAgain,
            "server connection limit reached".into(),
        );
    }
    let conn = ConnId(app.next_conn.fetch_add(1, Ordering::Relaxed));
    let (outbox, rx) = Outbox::new(limits.outbox_messages_max, limits.outbox_bytes_max);
    // Boxed: joining happens once, and its future would otherwise take space in every idle
    // connection's.
    let joined = Box::pin(app.rooms.join(room, joining.clone(), conn, outbox)).await;
    drop(joining);
    let handle = match joined {
        Ok(handle) => handle,
        Err(JoinError::Refused(code, reason)) => return Exit::Close(code, reason),
        Err(JoinError::Unloading) => {
            return Exit::Close(CloseCode::TryAgain, "room unavailable".into())
        }
    };
    let exit = run(socket, app, &handle.tx, wire, conn, rx).await;
    let leave = wire.leave(
        conn,
        match &exit {
            Exit::Close(code, reason) => Some((*code, reason.clone())),
            Exit::Gone => None,
        },
    );
    if let Err(mpsc::error::TrySendError::Full(leave)) = handle.tx.try_send(leave) {
        let _ = Box::pin(handle.tx.send(leave)).await;
    }
    exit
}

/// What woke the connection loop. The loop's `select!` only picks an event; the event is
/// handled after the select's futures are dropped, so the connection's future (which every idle
/// connection holds) is as large as the largest single step, not their sum.
enum Event {
    Room(Wake),
    Resume,
    Read(Result<Option<Incoming>, RecvError>),
}

/// Runs `step` unless the room asks the connection to close first: a reader that stopped
/// reading blocks a write once the socket buffers fill, and the room's decision to close it
/// must still get through.
async fn unless_closed<T>(
    rx: &OutboxRx,
    step: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, Exit> {
    tokio::select! {
        biased;
        (code, reason) = rx.closed() => Err(Exit::Close(code, reason)),
        done = step => done.map_err(|_| Exit::Gone),
    }
}

async fn run<W: Wire>(
    socket: &mut WebSocket,
    app: &App,
    room_tx: &mpsc::Sender<RoomCmd>,
    wire: &mut W,
    conn: ConnId,
    mut rx: OutboxRx,
) -> Exit {
    let limits = &app.ctx.config.limits;
    let mut rate = RateLimit::new(
        limits.conn_messages_per_sec_max,
        limits.conn_messages_burst_max,
        limits.conn_throttled_max,
        Instant::now(),
    );
    // Whether the peer was heard since the room's last keep-alive tick.
    let mut heard = true;
    // Set while the rate limit holds reading back; allocated only then.
    let mut resume: Option<Pin<Box<Sleep>>> = None;
    loop {
        let event = tokio::select! {
            biased;
            wake = rx.next(WRITE_BATCH_MAX) => Event::Room(wake),
            () = async { if let Some(s) = resume.as_mut() { s.await } }, if resume.is_some() => Event::Resume,
            msg = socket.recv(), if resume.is_none() => Event::Read(msg),
        };
        let frame = match event {
            Event::Room(Wake::Close(code, reason)) => return Exit::Close(code, reason),
            Event::Room(Wake::Frames(mut batch)) => {
                wire.outgoing(&mut batch);
                if let Err(exit) = unless_closed(&rx, socket.send(opcode::BINARY, &mut batch)).await
                {
                    return exit;
                }
                continue;
            }
            Event::Room(Wake::Ping) => {
                if !heard {
                    tracing::debug!(
                        conn = conn.0,
                        "peer silent for a whole keep-alive interval; dropping"
                    );
                    return Exit::Gone;
                }
                heard = false;
                // Boxed, like every step taken at most once a keep-alive interval: the space
                // is taken only while it runs, not in every idle connection's future.
                let keepalive = wire.keepalive();
                if let Err(exit) = Box::pin(unless_closed(&rx, ping(socket, keepalive))).await {
                    return exit;
                }
                continue;
            }
            Event::Resume => {
                resume = None;
                // Held back, not silent: the peer was sending.
                heard = true;
                continue;
            }
            Event::Read(msg) => {
                heard = true;
                match msg {
                    Ok(Some(Incoming::Binary(frame))) => Some(frame),
                    Ok(Some(Incoming::Text)) => {
                        return Exit::Close(
                            CloseCode::ProtocolError,
                            "text frames are not part of the protocol".into(),
                        );
                    }
                    Ok(Some(Incoming::Ping(payload))) => {
                        let pong = unless_closed(&rx, socket.send_one(opcode::PONG, payload));
                        if let Err(exit) = Box::pin(pong).await {
                            return exit;
                        }
                        None
                    }
                    Ok(Some(Incoming::Pong)) => None,
                    Ok(Some(Incoming::Close(code))) => {
                        // Answer the client's close with its own code, then go.
                        let code = code.unwrap_or(CloseCode::Normal.code());
                        let timeout = app.ctx.config.close_timeout;
                        let _ =
                            Box::pin(tokio::time::timeout(timeout, socket.send_close(code, "")))
                                .await;
                        return Exit::Gone;
                    }
                    Ok(None) => return Exit::Gone,
                    Err(e) => return read_error(e),
                }
            }
        };
        // Every frame counts against the rate, pings and pongs too.
        match rate.admit(Instant::now()) {
            Admit::Go => {}
            Admit::WaitUntil(t) => {
                app.ctx.metrics.reads_throttled_total.inc();
                resume = Some(Box::pin(tokio::time::sleep_until(t)));
            }
            Admit::Close => {
                return Exit::Close(CloseCode::RateLimited, "message rate limit exceeded".into());
            }
        }
        let Some(frame) = frame else { continue };
        app.ctx.metrics.frames_received_total.inc();
        let cmd = match wire.frame(conn, frame) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => continue,
            Err((code, reason)) => return Exit::Close(code, reason),
        };
        let sent = match room_tx.try_send(cmd) {
            Ok(()) => Ok(()),
            // A busy room: wait for space, in a future of its own so that every idle
            // connection does not carry room for it.
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                Box::pin(room_tx.send(cmd)).await.map_err(drop)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
        };
        if sent.is_err() {
            return Exit::Close(CloseCode::TryAgain, "room unavailable".into());
        }
    }
}

/// A WebSocket ping and a keep-alive message (clients that ignore pings still see traffic).
async fn ping(socket: &mut WebSocket, keepalive: Option<Bytes>) -> std::io::Result<()> {
    socket.send_one(opcode::PING, Bytes::new()).await?;
    match keepalive {
        Some(frame) => socket.send_one(opcode::BINARY, frame).await,
        None => Ok(()),
    }
}

/// Maps a read error to an exit: frames that break RFC 6455 and oversized messages get a close
/// code, a failed connection ends quietly.
fn read_error(e: RecvError) -> Exit {
    match e {
        RecvError::Frame(FrameError::TooLarge(max)) => {
            tracing::info!(max, "message over the size limit");
            Exit::Close(CloseCode::TooLarge, format!("message exceeds {max} bytes"))
        }
        RecvError::Frame(FrameError::Protocol(what)) => {
            tracing::debug!(what, "invalid WebSocket frame");
            Exit::Close(CloseCode::ProtocolError, format!("invalid frame: {what}"))
        }
        RecvError::Io(e) => {
            tracing::debug!(error = %e, "websocket read failed");
            Exit::Gone
        }
    }
}

/// Sends a close frame and completes the closing handshake (except when shutting down), waiting
/// at most the configured close timeout for a slow or silent peer.
async fn close(socket: &mut WebSocket, app: &App, code: CloseCode, reason: &str) {
    close_within(socket, app, code, reason, app.ctx.config.close_timeout).await;
}

/// [`close`], with the closing handshake bounded by `timeout` (zero: the close frame is sent,
/// and nothing is waited for).
async fn close_within(
    socket: &mut WebSocket,
    app: &App,
    code: CloseCode,
    reason: &str,
    timeout: Duration,
) {
    app.ctx.metrics.count_close(code);
    if timeout.is_zero() {
        let _ = tokio::time::timeout(
            REFUSED_CLOSE_TIMEOUT,
            socket.send_close(code.code(), reason),
        )
        .await;
        return;
    }
    let handshake = async {
        socket.send_close(code.code(), reason).await?;
        // The closing handshake: wait for the peer's close, discarding whatever it still
        // sends. Closing the socket with unread data would reset the connection, and the peer
        // could lose the close frame and its reason. A shutting-down server does not wait.
        if code == CloseCode::GoingAway {
            return Ok(());
        }
        loop {
            match socket.recv().await {
                Ok(Some(Incoming::Close(_)) | None) => return Ok(()),
                // A message over the limit (the one this close refuses, or another) is
                // discarded by the socket as it arrives, and the frames after it still decode.
                Ok(Some(_)) | Err(RecvError::Frame(FrameError::TooLarge(_))) => {}
                Err(e) => return Err(e),
            }
        }
    };
    let _ = tokio::time::timeout(timeout, handshake).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, F: std::future::Future>(_: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds this future for its whole life: 10,000 connections hold
    /// 10,000 of them. It was 1,792 bytes before the loop handled events outside its select
    /// and the WebSocket stopped being stored twice, and 1,256 before the WebSocket layer of
    /// its own, the room's keep-alive timer and boxing the steps taken at most once an
    /// interval.
    #[test]
    fn the_connection_future_stays_small() {
        let size =
            future_size(|(u, a, j): (OnUpgrade, Arc<App>, Arc<Joining>)| serve_socket(u, a, j));
        assert!(size <= 1_000, "the connection future takes {size} bytes");
    }

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
