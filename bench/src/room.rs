//! roomd's room protocol under load: typing peers that open their document with `sync.open`
//! (so the fan-out scenario runs over it beside the y-websocket endpoint), a tool call's round
//! trip between two participants beside a bare WebSocket echo (the floor), and messaging
//! broadcast to many participants.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use roomd_sync::room_protocol::{
    queued_message, queued_packets, queued_payload, Assembler, Payload, RawMessage, WireLimits,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::peer::{ws_config, OnUpdate, Peer, WireStats, SEND_QUEUE_MAX};

/// The peers' WebSocket settings, with a write buffer: a message's packets are written to the
/// socket together when the writer flushes, as one write, where without it every packet
/// would be a write (and a TCP segment) of its own. A y-websocket peer writes each update as
/// one frame, so both endpoints make one write per update.
fn room_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    ws_config().write_buffer_size(16 * 1024)
}
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

fn message(kind: &str, header: Value, trailer: &[u8]) -> Bytes {
    queued_message(next_id(), kind, &Payload::encode(&header, trailer))
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
    .into()
}

async fn open_socket(target: &Target, room_url: &str) -> anyhow::Result<Ws> {
    let (ws, _) = tokio::time::timeout(
        STEP_MAX,
        tokio_tungstenite::connect_async_with_config(
            target.request(room_url)?,
            Some(room_ws_config()),
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
            let mut ok = feed(&mut sink, m.into()).await.is_ok();
            while let Ok(m) = rx.try_recv() {
                ok &= feed(&mut sink, m.into()).await.is_ok();
            }
            if !ok || sink.flush().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
}

/// Buffers the packets of a queued message for the next flush.
async fn feed<S>(sink: &mut S, queued: Bytes) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    for p in queued_packets(&queued) {
        sink.feed(Message::Binary(p)).await?;
    }
    Ok(())
}

/// Writes a queued message's packets at once, in this task.
pub(crate) async fn send_now<S>(sink: &mut S, queued: Bytes) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    feed(sink, queued).await?;
    sink.flush().await
}

/// Reads whole messages from a socket.
pub(crate) struct Reader {
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

    /// The next whole message, its payload not decoded; `None` when the connection ends.
    async fn next_raw(&mut self) -> Option<RawMessage> {
        while let Some(Ok(msg)) = self.stream.next().await {
            let Message::Binary(packet) = msg else {
                continue;
            };
            match self.assembler.push(&packet) {
                Ok(Some(m)) => return Some(m),
                Ok(None) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    /// The next whole message and its payload; `None` when the connection ends.
    pub(crate) async fn next(&mut self) -> Option<(RawMessage, Payload)> {
        let m = self.next_raw().await?;
        let p = Payload::decode(&m.data, &WireLimits::default()).ok()?;
        Some((m, p))
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

/// The split of a message's data into its JSON header and trailer.
fn payload_parts(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u64::from_be_bytes(data.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    Some((data.get(8..end)?, data.get(end..)?))
}

/// What a peer reads of a response chunk's header: its call and the chunk's type and kind,
/// borrowed from the message (a peer reads every delivery, and building the whole header as
/// JSON values would make the generator, not the server, the measure).
#[derive(serde::Deserialize)]
struct ChunkHeader<'a> {
    #[serde(borrow)]
    tool_call_id: &'a str,
    #[serde(borrow)]
    chunk: ChunkOf<'a>,
}

#[derive(serde::Deserialize)]
struct ChunkOf<'a> {
    #[serde(rename = "type", borrow)]
    type_: &'a str,
    #[serde(borrow)]
    headers: ChunkHeaders<'a>,
}

#[derive(serde::Deserialize)]
struct ChunkHeaders<'a> {
    #[serde(borrow)]
    kind: &'a str,
}

/// The two chunks that carry a document's updates.
#[derive(Debug, PartialEq, Eq)]
enum ChunkKind {
    /// The document's state, first.
    State,
    /// An update.
    Sync,
}

/// The kind and base64 update of a `state` or `sync` chunk of the peer's document call.
fn sync_chunk(m: &RawMessage) -> Option<(ChunkKind, &[u8])> {
    if m.kind != "room.tool_call_response_chunk" {
        return None;
    }
    let (header, trailer) = payload_parts(&m.data)?;
    let h: ChunkHeader<'_> = serde_json::from_slice(header).ok()?;
    if h.tool_call_id != SYNC_CALL || h.chunk.type_ != "binary" {
        return None;
    }
    let kind = match h.chunk.headers.kind {
        "state" => ChunkKind::State,
        "sync" => ChunkKind::Sync,
        _ => return None,
    };
    Some((kind, trailer))
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
    tx.send(open.into()).await?;
    tx.send(start.into()).await?;
    let (synced_tx, synced_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut synced = Some(synced_tx);
        let mut on_update = on_update;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut update = Vec::new();
        while let Some(m) = reader.next_raw().await {
            let Some((kind, data)) = sync_chunk(&m) else {
                continue;
            };
            update.clear();
            if b64.decode_vec(data, &mut update).is_err() {
                continue;
            }
            stats.update_messages.fetch_add(1, Ordering::Relaxed);
            on_update(&update);
            if kind == ChunkKind::State {
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

/// A connected room-protocol client: it writes its messages itself, in the task that sends
/// them (a request and its answer cross no task of the generator's on the way out).
pub(crate) struct Conn {
    pub(crate) sink: SplitSink<Ws, Message>,
    pub(crate) reader: Reader,
}

impl Conn {
    /// Sends a message (as [`queued_message`] makes them) at once.
    pub(crate) async fn send(&mut self, queued: Bytes) -> anyhow::Result<()> {
        send_now(&mut self.sink, queued).await?;
        Ok(())
    }

    /// Reads until the `__response__` to a request: its payload.
    pub(crate) async fn response(&mut self, what: &str) -> anyhow::Result<Payload> {
        loop {
            let (m, p) = tokio::time::timeout(STEP_MAX, self.reader.next())
                .await
                .map_err(|_| anyhow::anyhow!("{what} was not answered"))?
                .ok_or_else(|| anyhow::anyhow!("connection ended waiting for {what}"))?;
            if m.kind == "__response__" {
                return Ok(p);
            }
        }
    }
}

pub(crate) async fn conn(target: &Target, token: Option<String>) -> anyhow::Result<Conn> {
    let t = Target {
        token,
        ..target.clone()
    };
    let ws = open_socket(&t, "").await?;
    let (sink, stream) = ws.split();
    let mut reader = Reader::new(stream);
    reader.handshake().await?;
    Ok(Conn { sink, reader })
}

/// A `room.invoke_tool` of `toolkit.tool` with JSON `arguments`.
pub(crate) fn invoke_json(toolkit: &str, tool: &str, call: u64, arguments: Value) -> Bytes {
    message(
        "room.invoke_tool",
        json!({"toolkit": toolkit, "tool": tool, "tool_call_id": format!("q{call}"),
            "participant_id": null, "on_behalf_of_id": null,
            "arguments": {"type": "json", "json": arguments}}),
        b"",
    )
}

/// The `room.invoke_tool` of the benchmark's `i`th call to `toolkit.tool`.
fn invoke(toolkit: &str, tool: &str, i: usize) -> Bytes {
    message(
        "room.invoke_tool",
        json!({"toolkit": toolkit, "tool": tool, "tool_call_id": format!("c{i}"),
            "participant_id": null, "on_behalf_of_id": null,
            "arguments": {"type": "json", "json": {"i": i}}}),
        b"",
    )
}

/// Tool calls: one participant hosts an `echo` toolkit, another calls it `calls` times in a
/// row; the round trip of each, beside the round trip of a bare WebSocket echo on loopback
/// (the floor), measured with the same client: the same messages, written and read the same
/// way.
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
    host.send(register).await?;
    host.response("room.register_toolkit").await?;
    // The host answers each call from the task that reads it, with the call's arguments as
    // they came (read as raw JSON, not built into values and serialised again).
    tokio::spawn(async move {
        #[derive(serde::Deserialize)]
        struct Call<'a> {
            #[serde(borrow)]
            arguments: &'a serde_json::value::RawValue,
        }
        while let Some(m) = host.reader.next_raw().await {
            if m.kind != "room.tool_call.echo" {
                continue;
            }
            let Some((header, _)) = payload_parts(&m.data) else {
                break;
            };
            let Ok(call) = serde_json::from_slice::<Call<'_>>(header) else {
                break;
            };
            let args = call.arguments.get().as_bytes();
            let answer = queued_payload(m.id, "room.tool_call_response", args, b"");
            if send_now(&mut host.sink, answer).await.is_err() {
                break;
            }
        }
    });
    let mut caller = conn(target, caller_token).await?;
    let mut via_room = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..calls {
        let call = invoke("echo", "echo", i);
        let sent = Instant::now();
        caller.send(call).await?;
        let p = caller.response("a tool call").await?;
        via_room.record(sent.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            p.header["type"] == "json" && p.header["json"]["i"] == i,
            "the call failed: {:?}",
            p.header
        );
    }
    let floor = echo_floor(calls).await?;
    latency_report(&mut report, "tool_call", &via_room);
    latency_report(&mut report, "echo_floor", &floor);
    let ratio =
        |q: f64| via_room.value_at_quantile(q) as f64 / floor.value_at_quantile(q).max(1) as f64;
    report.figures.push(("p50_vs_floor".into(), ratio(0.5)));
    report.figures.push(("p99_vs_floor".into(), ratio(0.99)));
    report.figures.push(("calls".into(), calls as f64));
    Ok(report)
}

/// The round trips of `n` tool calls' messages through a bare WebSocket echo on loopback, in
/// this process: it sends every packet back as it came. The client is the tool call's:
/// the same `room.invoke_tool` written the same way, read back and decoded as the caller
/// reads its answer. The floor under any request and answer over WebSocket.
async fn echo_floor(n: usize) -> anyhow::Result<Histogram<u64>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            if let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tcp, Some(room_ws_config())).await
            {
                // Every packet goes back as it came; the packets read together (a message's)
                // are written back together, as roomd writes a message's packets.
                while let Some(Ok(m)) = ws.next().await {
                    let mut ok = !m.is_binary() || ws.feed(m).await.is_ok();
                    while let Some(Some(Ok(m))) = ws.next().now_or_never() {
                        ok &= !m.is_binary() || ws.feed(m).await.is_ok();
                    }
                    if !ok || ws.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        format!("ws://{addr}/"),
        Some(room_ws_config()),
        true,
    )
    .await?;
    let (sink, stream) = ws.split();
    let mut client = Conn {
        sink,
        reader: Reader::new(stream),
    };
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..n {
        let call = invoke("echo", "echo", i);
        let sent = Instant::now();
        client.send(call).await?;
        let (m, p) = tokio::time::timeout(STEP_MAX, client.reader.next())
            .await
            .map_err(|_| anyhow::anyhow!("the echo did not answer"))?
            .ok_or_else(|| anyhow::anyhow!("the echo connection ended"))?;
        h.record(sent.elapsed().as_micros().max(1) as u64)?;
        anyhow::ensure!(
            m.kind == "room.invoke_tool" && p.header["arguments"]["json"]["i"] == i,
            "the echo answered something else"
        );
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
        c.send(enable).await?;
        // Enabled once the server has answered the enable.
        c.response("messaging.enable").await?;
        let Conn { sink, mut reader } = c;
        // The first sends, from here; the others' writing halves stay open with their readers.
        let mut keep = None;
        if i == 0 {
            sender = Some(sink);
        } else {
            keep = Some(sink);
        }
        let done = done_tx.clone();
        tokio::spawn(async move {
            let _keep = keep;
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
    let mut sender = sender.ok_or_else(|| anyhow::anyhow!("no participants"))?;
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
        send_now(&mut sender, b).await?;
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
