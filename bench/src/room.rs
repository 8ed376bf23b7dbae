//! roomd's room protocol under load: typing peers that open their document with `sync.open`
//! (so the fan-out scenario runs over it beside the y-websocket endpoint), a tool call's round
//! trip between two participants beside a bare WebSocket echo (the floor), and messaging
//! broadcast to many participants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomd_sync::room_protocol::{
    queued_message, queued_packets, Assembler, Payload, RawMessage, WireLimits,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::peer::{ws_config, OnUpdate, Peer, WireStats, SEND_QUEUE_MAX};
use crate::scenarios::Report;
use crate::target::Target;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest any one step of these scenarios may take.
const STEP_MAX: Duration = Duration::from_secs(30);

/// Message ids of the messages this process sends (unique is all the server needs).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The tool call id every benchmark peer opens its document under.
const SYNC_CALL: &str = "bench-sync";

fn message(kind: &str, header: Value, trailer: &[u8]) -> Vec<u8> {
    queued_message(next_id(), kind, &Payload::encode(&header, trailer)).to_vec()
}

/// The message carrying a v1 update on the peer's document (a `sync` chunk, base64).
pub fn sync_message(update: &[u8]) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(update);
    message(
        "room.tool_call_request_chunk",
        json!({"tool_call_id": SYNC_CALL, "chunk": {"type": "binary", "headers": {"kind": "sync"}}}),
        b64.as_bytes(),
    )
}

async fn open_socket(target: &Target, room_url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        STEP_MAX,
        tokio_tungstenite::connect_async_with_config(
            target.request(room_url)?,
            Some(ws_config()),
            true,
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {} timed out", target.doc_url("")))??;
    Ok(ws)
}

/// Writes queued messages (as [`queued_message`] makes them) as their packets.
fn spawn_writer(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::Receiver<Vec<u8>>) {
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let mut ok = true;
            for p in queued_packets(&Bytes::from(m)) {
                ok &= sink.feed(Message::Binary(p)).await.is_ok();
            }
            while let Ok(m) = rx.try_recv() {
                for p in queued_packets(&Bytes::from(m)) {
                    ok &= sink.feed(Message::Binary(p)).await.is_ok();
                }
            }
            if !ok || sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
}

/// Reads whole messages from a socket.
struct Reader {
    stream: SplitStream<Ws>,
    assembler: Assembler,
}

impl Reader {
    fn new(stream: SplitStream<Ws>) -> Reader {
        Reader {
            stream,
            assembler: Assembler::new(WireLimits::default()),
        }
    }

    /// The next whole message and its payload; `None` when the connection ends.
    async fn next(&mut self) -> Option<(RawMessage, Payload)> {
        while let Some(Ok(msg)) = self.stream.next().await {
            let Message::Binary(packet) = msg else {
                continue;
            };
            match self.assembler.push(&packet) {
                Ok(Some(m)) => {
                    let p = Payload::decode(&m.data, &WireLimits::default()).ok()?;
                    return Some((m, p));
                }
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// Skips to the message after the handshake (`room_ready`, `connected`): returns the
    /// participant id.
    async fn handshake(&mut self) -> anyhow::Result<String> {
        loop {
            let (m, p) = self
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("connection ended during the handshake"))?;
            if m.kind == "connected" {
                return Ok(p.header["participantId"].as_str().unwrap_or("").to_string());
            }
        }
    }
}

/// A typing peer over the room protocol: opens `doc` with `sync.open`, hands every update the
/// server sends (the state, then each `sync` chunk) to `on_update`.
pub async fn connect_peer(
    target: &Target,
    doc: &str,
    stats: Arc<WireStats>,
    on_update: OnUpdate,
) -> anyhow::Result<Peer> {
    use base64::Engine as _;
    let ws = open_socket(target, doc).await?;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE_MAX);
    spawn_writer(sink, rx);
    let mut reader = Reader::new(stream);
    reader.handshake().await?;
    let open = message(
        "room.invoke_tool",
        json!({"toolkit": "sync", "tool": "open", "tool_call_id": SYNC_CALL,
            "participant_id": null, "on_behalf_of_id": null,
            "arguments": {"type": "control", "method": "open"}}),
        b"",
    );
    let start = message(
        "room.tool_call_request_chunk",
        json!({"tool_call_id": SYNC_CALL, "chunk": {"type": "binary", "headers": {
            "kind": "start", "path": doc, "create": true, "vector": null, "schema": null}}}),
        b"",
    );
    tx.send(open).await?;
    tx.send(start).await?;
    let (synced_tx, synced_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut synced = Some(synced_tx);
        let mut on_update = on_update;
        let b64 = base64::engine::general_purpose::STANDARD;
        while let Some((m, p)) = reader.next().await {
            if m.kind != "room.tool_call_response_chunk" {
                continue;
            }
            let kind = p.header["chunk"]["headers"]["kind"].as_str().unwrap_or("");
            if kind != "state" && kind != "sync" {
                continue;
            }
            let Ok(update) = b64.decode(&p.trailer) else {
                continue;
            };
            stats.update_messages.fetch_add(1, Ordering::Relaxed);
            on_update(&update);
            if kind == "state" {
                if let Some(s) = synced.take() {
                    let _ = s.send(());
                }
            }
        }
    });
    tokio::time::timeout(STEP_MAX, synced_rx)
        .await
        .map_err(|_| anyhow::anyhow!("no state chunk for {doc}"))?
        .map_err(|_| anyhow::anyhow!("connection ended before the state chunk"))?;
    Ok(Peer {
        tx,
        target: target.clone(),
        doc: doc.into(),
        reader,
    })
}

fn latency_report(report: &mut Report, prefix: &str, h: &Histogram<u64>) {
    let ms = |us: u64| us as f64 / 1000.0;
    for (q, name) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
        report
            .figures
            .push((format!("{prefix}_{name}_ms"), ms(h.value_at_quantile(q))));
    }
    report
        .figures
        .push((format!("{prefix}_max_ms"), ms(h.max())));
}

/// A connected room-protocol client with its reader and writer halves.
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    reader: Reader,
    participant: String,
}

async fn conn(target: &Target, token: Option<String>) -> anyhow::Result<Conn> {
    let t = Target {
        token,
        ..target.clone()
    };
    let ws = open_socket(&t, "").await?;
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(SEND_QUEUE_MAX);
    spawn_writer(sink, rx);
    let mut reader = Reader::new(stream);
    let participant = reader.handshake().await?;
    Ok(Conn {
        tx,
        reader,
        participant,
    })
}

/// Tool calls: one participant hosts an `echo` toolkit, another calls it `calls` times in a
/// row; the round trip of each, beside the round trip of a bare WebSocket echo on loopback of
/// the same size (the floor).
pub async fn tool_calls(
    target: &Target,
    host_token: Option<String>,
    caller_token: Option<String>,
    calls: usize,
) -> anyhow::Result<Report> {
    let mut report = Report {
        scenario: "tool-call".into(),
        server: "roomd".into(),
        ..Report::default()
    };
    let mut host = conn(target, host_token).await?;
    let register = message(
        "room.register_toolkit",
        json!({"name": "echo", "title": "echo", "description": "answers with its input",
            "tools": {"echo": {"title": "echo", "description": "echo", "input_spec": null,
                "output_spec": null, "defs": null, "strict": null}},
            "public": true, "annotations": {}}),
        b"",
    );
    host.tx.send(register).await?;
    loop {
        let (m, _) = host
            .reader
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("host connection ended"))?;
        if m.kind == "__response__" {
            break;
        }
    }
    let host_tx = host.tx.clone();
    let mut host_reader = host.reader;
    tokio::spawn(async move {
        while let Some((m, p)) = host_reader.next().await {
            if m.kind != "room.tool_call.echo" {
                continue;
            }
            let args = p
                .header
                .get("arguments")
                .cloned()
                .unwrap_or(json!({"type": "empty"}));
            let answer = queued_message(
                m.id,
                "room.tool_call_response",
                &Payload::encode(&args, b""),
            );
            if host_tx.send(answer.to_vec()).await.is_err() {
                break;
            }
        }
    });
    let mut caller = conn(target, caller_token).await?;
    let mut via_room = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..calls {
        let sent = Instant::now();
        let call = message(
            "room.invoke_tool",
            json!({"toolkit": "echo", "tool": "echo", "tool_call_id": format!("c{i}"),
                "participant_id": null, "on_behalf_of_id": null,
                "arguments": {"type": "json", "json": {"i": i}}}),
            b"",
        );
        caller.tx.send(call).await?;
        loop {
            let (m, p) = tokio::time::timeout(STEP_MAX, caller.reader.next())
                .await
                .map_err(|_| anyhow::anyhow!("a tool call was not answered"))?
                .ok_or_else(|| anyhow::anyhow!("caller connection ended"))?;
            if m.kind == "__response__" {
                anyhow::ensure!(
                    p.header["type"] == "json",
                    "the call failed: {:?}",
                    p.header
                );
                break;
            }
        }
        via_room.record(sent.elapsed().as_micros().max(1) as u64)?;
    }
    let floor = echo_floor(calls, 200).await?;
    latency_report(&mut report, "tool_call", &via_room);
    latency_report(&mut report, "echo_floor", &floor);
    let ratio =
        |q: f64| via_room.value_at_quantile(q) as f64 / floor.value_at_quantile(q).max(1) as f64;
    report.figures.push(("p50_vs_floor".into(), ratio(0.5)));
    report.figures.push(("p99_vs_floor".into(), ratio(0.99)));
    report.figures.push(("calls".into(), calls as f64));
    Ok(report)
}

/// The round trips of `n` messages of `bytes` bytes through a bare WebSocket echo server on
/// loopback, in this process: the floor under any request and answer over WebSocket.
async fn echo_floor(n: usize, bytes: usize) -> anyhow::Result<Histogram<u64>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/"), None, true).await?;
    let payload = Bytes::from(vec![7u8; bytes]);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for _ in 0..n {
        let sent = Instant::now();
        ws.send(Message::Binary(payload.clone())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(_))) => break,
                Some(Ok(_)) => continue,
                _ => anyhow::bail!("the echo connection ended"),
            }
        }
        h.record(sent.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(h)
}

/// Messaging broadcast: `tokens.len()` participants enable messaging; the first broadcasts
/// `messages` messages at `rate` per second; the latency of each to every other participant.
pub async fn broadcast(
    target: &Target,
    tokens: Vec<Option<String>>,
    messages: usize,
    rate: f64,
) -> anyhow::Result<Report> {
    let mut report = Report {
        scenario: "broadcast".into(),
        server: "roomd".into(),
        ..Report::default()
    };
    let participants = tokens.len();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(usize, u64)>();
    let mut sender = None;
    let epoch = Instant::now();
    for (i, token) in tokens.into_iter().enumerate() {
        let mut c = conn(target, token).await?;
        let enable = message(
            "room.invoke_tool",
            json!({"toolkit": "messaging", "tool": "enable", "tool_call_id": format!("e{i}"),
                "participant_id": null, "on_behalf_of_id": null,
                "arguments": {"type": "json", "json": {}}}),
            b"",
        );
        c.tx.send(enable).await?;
        // Enabled once the server has answered the enable.
        loop {
            let (m, _) = tokio::time::timeout(STEP_MAX, c.reader.next())
                .await
                .map_err(|_| anyhow::anyhow!("messaging.enable was not answered"))?
                .ok_or_else(|| anyhow::anyhow!("connection ended"))?;
            if m.kind == "__response__" {
                break;
            }
        }
        if i == 0 {
            sender = Some(c.tx.clone());
        }
        let done = done_tx.clone();
        let mut reader = c.reader;
        let _keep = c.participant;
        let tx = c.tx;
        tokio::spawn(async move {
            let _tx = tx;
            while let Some((m, p)) = reader.next().await {
                if m.kind != "messaging.send" || p.header["type"] != "bench" {
                    continue;
                }
                let sent_us = p.header["message"]["t"].as_u64().unwrap_or(0);
                let now_us = epoch.elapsed().as_micros() as u64;
                let _ = done.send((i, now_us.saturating_sub(sent_us)));
            }
        });
    }
    drop(done_tx);
    let sender = sender.ok_or_else(|| anyhow::anyhow!("no participants"))?;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(period);
    for n in 0..messages {
        tick.tick().await;
        let t = epoch.elapsed().as_micros() as u64;
        let b = message(
            "room.invoke_tool",
            json!({"toolkit": "messaging", "tool": "broadcast", "tool_call_id": format!("b{n}"),
                "participant_id": null, "on_behalf_of_id": null,
                "arguments": {"type": "json", "json": {"type": "bench",
                    "message_json": json!({"t": t, "n": n}).to_string()}}}),
            b"",
        );
        sender.send(b).await?;
    }
    let expected = messages * (participants - 1);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while (h.len() as usize) < expected {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some((_, us))) => h.record(us.max(1))?,
            _ => break,
        }
    }
    report
        .figures
        .push(("participants".into(), participants as f64));
    report.figures.push(("messages".into(), messages as f64));
    report
        .figures
        .push(("deliveries_expected".into(), expected as f64));
    report.figures.push(("deliveries".into(), h.len() as f64));
    latency_report(&mut report, "latency", &h);
    if (h.len() as usize) < expected {
        report.problems.push(format!(
            "{} of {expected} deliveries missing 10 s after the last message",
            expected - h.len() as usize
        ));
    }
    Ok(report)
}
