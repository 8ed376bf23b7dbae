//! The room protocol, room side: a room-protocol connection's requests, answered by the room
//! task that owns the documents and the participants.
//!
//! A document opened with `sync.open` joins the document's session as a connection of its own
//! (a *stream*, with an id above [`STREAM_BASE`]) whose outbox is the socket's: the session
//! validates, stores and forwards its updates exactly as a y-websocket connection's, and what
//! the session sends to the stream is rewritten here into the SDK's chunks: its step 2 answer
//! becomes the `state` chunk, its updates `sync` chunks; its step 1 and awareness have no
//! equivalent and are dropped (an SDK client sends what the server lacks on reconnect itself).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use roomd_room_apis::{normalize_doc_path, ApiScope};
use roomd_sync::room_protocol::{
    queued_message, Content, Control, ErrorCode, Payload, RawMessage, WireLimits,
};
use roomd_sync::{decode_frame, CloseCode, ConnId, Message, MessageLimits, Peer, SyncMessage};
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::{JoinError, Room};
use crate::outbox::{Outbox, PushError};
use crate::ws::Joining;

/// Connection ids from here up are document streams of room-protocol connections, numbered by
/// the room (socket connections take theirs from the process, far below).
pub const STREAM_BASE: u64 = 1 << 63;

/// True for the id of a document stream.
pub fn is_stream(conn: ConnId) -> bool {
    conn.0 >= STREAM_BASE
}

/// The room protocol connections of a room and their document streams.
#[derive(Debug)]
pub struct Sockets {
    sockets: HashMap<ConnId, RoomSocket>,
    streams: HashMap<ConnId, DocStream>,
    next_stream: u64,
    /// Toolkits participants host, in order of registration.
    toolkits: Vec<Toolkit>,
    /// Calls to hosted tools waiting for their answer or streaming it, by the host's socket and
    /// the message id roomd sent the call under.
    hosted: HashMap<(ConnId, u64), Hosted>,
    /// The last update sent as base64, with the frame that holds it: one update forwarded to
    /// many streams is encoded once. Holding the frame keeps its bytes alive, so a frame at the
    /// same address with the same length is the same frame.
    last_b64: Option<LastUpdate>,
    /// Acknowledgements owed to document streams that asked for them: the write that must be
    /// durable first, the stream, and how many of its updates it acknowledges. In write order.
    acks: std::collections::VecDeque<(crate::store::WriteSeq, Owed)>,
}

impl Default for Sockets {
    fn default() -> Self {
        Sockets {
            sockets: HashMap::new(),
            streams: HashMap::new(),
            next_stream: STREAM_BASE,
            toolkits: Vec::new(),
            hosted: HashMap::new(),
            last_b64: None,
            acks: std::collections::VecDeque::new(),
        }
    }
}

/// The last update a document stream was sent, as base64.
#[derive(Debug)]
struct LastUpdate {
    /// The session's frame that holds it.
    frame: Bytes,
    b64: Bytes,
    /// The frame is this one update and nothing else: to every other stream it becomes one
    /// `sync` chunk, without decoding the frame again.
    whole: bool,
}

impl LastUpdate {
    fn of(&self, frame: &Bytes) -> bool {
        self.frame.as_ptr() == frame.as_ptr() && self.frame.len() == frame.len()
    }
}

/// A toolkit a participant hosts.
#[derive(Debug)]
struct Toolkit {
    id: String,
    name: String,
    socket: ConnId,
    participant: String,
    public: bool,
    /// `{title, description, annotations, tools}` as registered.
    description: Map<String, Value>,
}

/// A call to a hosted tool.
#[derive(Debug)]
struct Hosted {
    caller: ConnId,
    /// The id of the caller's `room.invoke_tool`, which its answer goes under.
    caller_id: u64,
    tool_call_id: String,
    /// The host answered `control{open}`: chunks follow until a `control{close}`.
    opened: bool,
    /// When an unanswered call fails.
    deadline: tokio::time::Instant,
}

/// One room-protocol connection.
#[derive(Debug)]
struct RoomSocket {
    outbox: Outbox,
    /// Its participant's id.
    participant: String,
    scope: ApiScope,
    /// Who it is to the rules of the documents it writes.
    principal: Arc<roomd_sync::Principal>,
    /// The id of the last message the server started on this connection (shared with the
    /// tasks that follow the developer log for it).
    next_id: Arc<AtomicU64>,
    messaging: bool,
    /// Calls still open, by tool call id.
    open: HashMap<String, Call>,
}

/// A streamed call still open.
#[derive(Debug)]
enum Call {
    /// `sync.open`, with its document stream once started.
    Sync(Option<ConnId>),
    /// `developer.logs`, followed by a task that stops when this is cancelled.
    Logs(CancellationToken),
    /// A call to a tool another participant hosts: the host's socket and the toolkit.
    Hosted(ConnId, String),
}

/// A document opened over the room protocol.
#[derive(Debug)]
struct DocStream {
    socket: ConnId,
    tool_call_id: String,
    path: Arc<str>,
    schema: Value,
    /// The `state` chunk has gone: updates follow as `sync` chunks.
    state_sent: bool,
    /// The client asked for an acknowledgement of each of its updates once durable (an
    /// extension: `ack: true` in the start chunk).
    ack: bool,
    /// The client's updates received so far.
    received: u64,
    /// The start of every `sync` chunk's header, serialised once:
    /// `{"tool_call_id":…,"chunk":{"type":"binary","headers":{"kind":"sync","path":…}}`.
    sync_header: Arc<str>,
}

/// What is owed once a write is durable.
#[derive(Debug)]
enum Owed {
    /// The acknowledgement of a document stream's first `n` updates.
    Ack(ConnId, u64),
    /// The answer to request `id` of a socket.
    Answer(ConnId, u64, Content),
}

/// What a frame for a document stream becomes.
enum Out {
    /// A chunk of its own.
    Chunk(Content),
    /// A `sync` chunk with this base64 update; `authored` when it carries connections'
    /// updates (the participants are named).
    Sync { data: Bytes, authored: bool },
}

/// A `send` or `broadcast`: its arguments, the message and the attachment.
type Outgoing = (Map<String, Value>, Value, Vec<u8>);

/// The JSON arguments of `what`, or the error that says they are missing.
fn json_args<'a>(arguments: &'a Content, what: &str) -> Result<&'a Map<String, Value>, Content> {
    match arguments {
        Content::Json(Value::Object(args)) => Ok(args),
        _ => Err(Content::error(
            ErrorCode::InvalidRequest,
            format!("{what} takes JSON arguments"),
        )),
    }
}

/// The document path among `what`'s arguments, normalised and checked as on every endpoint.
fn path_arg<'a>(args: &'a Map<String, Value>, what: &str) -> Result<&'a str, Content> {
    let invalid = |m: String| Content::error(ErrorCode::InvalidRequest, m);
    let path = args
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} needs a path")))?;
    let path = normalize_doc_path(path);
    crate::http::check_doc_name(path).map_err(invalid)?;
    Ok(path)
}

/// The schema a client gives (checked), or the one the document's path gets.
fn schema_arg(given: Option<&Value>, path: &str) -> Result<Value, Content> {
    match given {
        None | Some(Value::Null) => Ok(roomd_room_apis::schema::for_path(path).1),
        Some(s) => {
            roomd_room_apis::schema::check(s)
                .map_err(|e| Content::error(ErrorCode::InvalidRequest, e))?;
            Ok(s.clone())
        }
    }
}

/// Toolkits one connection may register, at most.
const TOOLKITS_PER_CONN_MAX: usize = 64;
/// Bytes of attributes (as JSON) a participant may hold, at most: they are shown in
/// `.room/participants` and sent to everyone messaging.
const ATTRIBUTES_BYTES_MAX: usize = 64 << 10;
/// Bytes (as JSON) of what one developer log entry may hold, at most: the event log keeps
/// thousands of them.
const LOG_BYTES_MAX: usize = 64 << 10;

/// Calls open at once on one connection, at most.
const OPEN_CALLS_MAX: usize = 256;

fn chunk(id: u64, tool_call_id: &str, content: &Content) -> Bytes {
    let (chunk, trailer) = content.to_parts();
    let header = json!({ "tool_call_id": tool_call_id, "chunk": chunk });
    queued_message(
        id,
        "room.tool_call_response_chunk",
        &Payload::encode(&header, &trailer),
    )
}

/// The start of a `sync` chunk's header for call `tool_call_id` on document `path`.
fn sync_header_of(tool_call_id: &str, path: &str) -> Arc<str> {
    let chunk = json!({ "type": "binary", "headers": { "kind": "sync", "path": path } });
    format!(
        "{{\"tool_call_id\":{},\"chunk\":{}",
        Value::from(tool_call_id),
        chunk
    )
    .into()
}

/// A `sync` chunk carrying base64 update `data`, its packets written straight into one buffer
/// from the stream's header start and the update's authors (one update goes to every stream of
/// its document). When `authors` are given, the chunk names the participants whose update it
/// carries: an extension the stock SDK ignores, at the top level of the header beside
/// `tool_call_id` and `chunk`.
fn sync_chunk(id: u64, header_start: &str, authors: Option<&str>, data: &[u8]) -> Bytes {
    let start = header_start.as_bytes();
    let parts: [&[u8]; 4] = match authors {
        Some(authors) => [start, b",\"participants\":", authors.as_bytes(), b"}"],
        None => [start, b"}", b"", b""],
    };
    roomd_sync::room_protocol::queued_payload_parts(
        id,
        "room.tool_call_response_chunk",
        &parts,
        data,
    )
}

fn binary(headers: Value, data: Bytes) -> Content {
    Content::Binary {
        headers: match headers {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        data,
    }
}

impl Sockets {
    fn next_id(&self, conn: ConnId) -> u64 {
        self.sockets
            .get(&conn)
            .map_or(0, |s| s.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Rewrites a y-websocket frame the session sent to document stream `stream` into
    /// messages for the stream's socket; returns the socket and them.
    pub fn translate(
        &mut self,
        stream: ConnId,
        frame: &Bytes,
        limits: MessageLimits,
        authors: Option<&str>,
    ) -> (ConnId, Vec<Bytes>) {
        let none = (stream, Vec::new());
        let Some(d) = self.streams.get(&stream) else {
            return none;
        };
        let socket = d.socket;
        // The frame the stream before it was sent, one update alone: the same chunk, under
        // this socket's message id and this stream's header.
        if let Some(last) = self.last_b64.as_ref().filter(|l| l.whole && l.of(frame)) {
            if d.state_sent {
                let id = self.next_id(socket);
                return (
                    socket,
                    vec![sync_chunk(id, &d.sync_header, authors, &last.b64)],
                );
            }
        }
        let Ok(messages) = decode_frame(frame, limits) else {
            return none;
        };
        let whole = matches!(messages[..], [Message::Sync(SyncMessage::Update(_))]);
        let b64 = base64::engine::general_purpose::STANDARD;
        let Some(d) = self.streams.get_mut(&stream) else {
            return none;
        };
        let last_b64 = &mut self.last_b64;
        let mut encode = |update: &[u8]| -> Bytes {
            if let Some(last) = last_b64.as_ref().filter(|l| l.of(frame)) {
                return last.b64.clone();
            }
            let b = Bytes::from(b64.encode(update).into_bytes());
            *last_b64 = Some(LastUpdate {
                frame: frame.clone(),
                b64: b.clone(),
                whole,
            });
            b
        };
        let mut out: Vec<Out> = Vec::new();
        for m in messages {
            match m {
                Message::Sync(SyncMessage::Step2(update)) if !d.state_sent => {
                    d.state_sent = true;
                    let state = binary(
                        json!({ "kind": "state", "path": &*d.path, "schema": d.schema }),
                        b64.encode(update).into_bytes().into(),
                    );
                    out.push(Out::Chunk(state));
                }
                // Whatever reached the document before its state was sent is in that state.
                Message::Sync(m @ (SyncMessage::Step2(update) | SyncMessage::Update(update)))
                    if d.state_sent =>
                {
                    out.push(Out::Sync {
                        data: encode(update),
                        authored: matches!(m, SyncMessage::Update(_)),
                    });
                }
                Message::AuthDenied(reason) => out.push(Out::Chunk(Content::error(
                    ErrorCode::PermissionDenied,
                    format!("update refused: {reason}"),
                ))),
                _ => {}
            }
        }
        let (tool_call_id, sync_header) = (d.tool_call_id.clone(), d.sync_header.clone());
        let messages = out
            .iter()
            .map(|o| {
                let id = self.next_id(socket);
                match o {
                    Out::Chunk(c) => chunk(id, &tool_call_id, c),
                    Out::Sync { data, authored } => {
                        let by = authors.filter(|_| *authored);
                        sync_chunk(id, &sync_header, by, data)
                    }
                }
            })
            .collect();
        (socket, messages)
    }

    /// True while some room-protocol connection has a document open.
    pub fn has_streams(&self) -> bool {
        !self.streams.is_empty()
    }

    /// The connection that stands for `conn` among participants: its socket for a document
    /// stream, itself otherwise.
    pub fn owner(&self, conn: ConnId) -> ConnId {
        self.streams.get(&conn).map_or(conn, |d| d.socket)
    }
}

impl Room {
    /// The ids of the participants of connections `first` and `more` (a document stream
    /// stands for its socket), without repeats, as a JSON array.
    pub(super) fn author_ids(&self, first: ConnId, more: &[ConnId]) -> String {
        let mut ids: Vec<String> = Vec::with_capacity(1 + more.len());
        for c in std::iter::once(first).chain(more.iter().copied()) {
            if let Some(p) = self.participants.of_conn(self.sockets.owner(c).0) {
                if !ids.contains(&p.id) {
                    ids.push(p.id.clone());
                }
            }
        }
        Value::from(ids).to_string()
    }

    /// Queues a message on a socket; a socket that cannot take it is closed as too slow.
    fn send_socket(&mut self, conn: ConnId, message: Bytes) {
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return;
        };
        match s.outbox.push(message) {
            Ok(()) => {
                self.ctx.metrics.frames_sent_total.inc();
            }
            Err(PushError::Full) => {
                tracing::info!(room = %self.name, conn = conn.0, "closing slow room-protocol reader");
                s.outbox
                    .close(CloseCode::TooSlow, "outbox full: read faster and reconnect");
            }
            Err(PushError::Gone) => {}
        }
    }

    /// Sends a message the server starts (a push) on a socket.
    fn push_socket(&mut self, conn: ConnId, kind: &str, header: Value, trailer: &[u8]) {
        let id = self.sockets.next_id(conn);
        let message = queued_message(id, kind, &Payload::encode(&header, trailer));
        self.send_socket(conn, message);
    }

    /// Answers request `id` of a socket.
    fn respond(&mut self, conn: ConnId, id: u64, content: Content) {
        let message = queued_message(id, "__response__", &content.encode());
        self.send_socket(conn, message);
    }

    fn send_chunk(&mut self, conn: ConnId, tool_call_id: &str, content: &Content) {
        let id = self.sockets.next_id(conn);
        let message = chunk(id, tool_call_id, content);
        self.send_socket(conn, message);
    }

    /// A room-protocol connection joins: it is a connection of its participant, and is told the
    /// room is ready and who it is.
    pub(super) fn join_socket(
        &mut self,
        joining: &Arc<Joining>,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<(), JoinError> {
        let scope = joining
            .scope
            .as_deref()
            .cloned()
            .ok_or_else(|| JoinError::Refused(CloseCode::Internal, "no scope".into()))?;
        self.participants_connect(joining, conn);
        let Some(p) = self.participants.of_conn(conn.0) else {
            return Err(JoinError::Refused(
                CloseCode::Internal,
                "participant not recorded".into(),
            ));
        };
        let (participant, attributes) = (p.id.clone(), p.attributes.clone());
        self.outboxes.insert(conn, outbox.clone());
        self.sockets.sockets.insert(
            conn,
            RoomSocket {
                outbox,
                participant: participant.clone(),
                scope,
                principal: joining.principal.clone(),
                next_id: Arc::new(AtomicU64::new(0)),
                messaging: false,
                open: HashMap::new(),
            },
        );
        self.participant_joined(conn);
        self.push_socket(
            conn,
            "room_ready",
            json!({
                "room_name": &*self.name,
                "room_url": joining.url,
                "session_id": self.session.id().to_string(),
            }),
            &[],
        );
        self.push_socket(
            conn,
            "connected",
            json!({ "type": "init", "participantId": participant, "attributes": attributes }),
            &[],
        );
        Ok(())
    }

    /// A room-protocol connection has gone: its documents close, its participant is told
    /// gone to those who message it, and it leaves the participants.
    pub(super) fn leave_socket(&mut self, conn: ConnId, closed: Option<&(CloseCode, String)>) {
        let Some(socket) = self.sockets.sockets.remove(&conn) else {
            return;
        };
        self.outboxes.remove(&conn);
        for call in socket.open.values() {
            match call {
                Call::Sync(Some(stream)) => self.close_stream(*stream),
                Call::Sync(None) | Call::Hosted(..) => {}
                Call::Logs(stop) => stop.cancel(),
            }
        }
        self.host_gone(conn);
        self.queue_conn_gone(conn);
        self.sockets.hosted.retain(|_, h| h.caller != conn);
        if socket.messaging {
            self.messaging_gone(&socket.participant);
        }
        self.participant_left("", conn, closed);
    }

    /// Closes a document stream: it leaves its document's session.
    fn close_stream(&mut self, stream: ConnId) {
        let Some(d) = self.sockets.streams.remove(&stream) else {
            return;
        };
        self.outboxes.remove(&stream);
        if let Some(l) = self.loading.get_mut(&d.path) {
            l.queued.push(super::RoomCmd::Leave {
                doc: d.path.clone(),
                conn: stream,
                closed: None,
            });
            return;
        }
        let mut out = Vec::new();
        if let Some(doc) = self.docs.get_mut(&d.path) {
            doc.session.close(stream, &mut out);
        }
        self.carry_out(&d.path, out);
    }

    /// Handles a whole message from a room-protocol connection.
    pub(super) async fn socket_message(&mut self, conn: ConnId, m: RawMessage, limits: WireLimits) {
        if !self.sockets.sockets.contains_key(&conn) {
            return;
        }
        let payload = match Payload::decode(&m.data, &limits) {
            Ok(p) => p,
            Err(e) => {
                tracing::info!(room = %self.name, conn = conn.0, error = %e, "invalid room-protocol payload");
                if let Some(s) = self.sockets.sockets.get(&conn) {
                    s.outbox.close(e.close_code(), e.to_string());
                }
                return;
            }
        };
        match m.kind.as_str() {
            "room.invoke_tool" => self.invoke_tool(conn, m.id, payload).await,
            "room.tool_call_request_chunk" => {
                // Each chunk is answered `empty`, as MeshAgent's servers do: the TypeScript SDK
                // awaits the answer before its next chunk; the Python SDK ignores it.
                self.respond(conn, m.id, Content::Empty);
                self.request_chunk(conn, payload).await
            }
            "set_attributes" => self.set_attributes(conn, payload.header),
            "room.register_toolkit" => {
                let answer = self.register_toolkit(conn, &payload.header);
                self.respond(conn, m.id, answer.unwrap_or_else(|e| e));
            }
            "room.unregister_toolkit" => {
                let answer = self.unregister_toolkit(conn, &payload.header);
                self.respond(conn, m.id, answer.unwrap_or_else(|e| e));
            }
            "room.list_toolkits" => {
                let answer = self.list_toolkits(conn, &payload.header);
                self.respond(conn, m.id, answer);
            }
            "room.tool_call_response" => self.hosted_response(conn, m.id, &m.data, &payload),
            "room.tool_call_response_chunk" => self.hosted_chunk(conn, m.id, &m.data, &payload),
            other => {
                let text = format!("unknown message type {other}");
                self.respond(conn, m.id, Content::error(ErrorCode::InvalidRequest, text));
            }
        }
    }

    async fn invoke_tool(&mut self, conn: ConnId, id: u64, p: Payload) {
        let h = &p.header;
        let field = |k: &str| h.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(toolkit), Some(tool)) = (field("toolkit"), field("tool")) else {
            let text = "room.invoke_tool needs toolkit and tool";
            return self.respond(conn, id, Content::error(ErrorCode::InvalidRequest, text));
        };
        // The TypeScript SDK sends none with a call whose input is not a stream: the call's
        // chunks, if it streams its answer, and a hosting participant, get one of the room's.
        let tool_call_id = field("tool_call_id").unwrap_or_else(|| format!("{}.{id}", conn.0));
        let arguments = match h.get("arguments") {
            Some(Value::Object(a)) => Content::from_parts(a, p.trailer.clone()),
            _ => Ok(Content::Empty),
        };
        let arguments = match arguments {
            Ok(a) => a,
            Err(e) => {
                return self.respond(
                    conn,
                    id,
                    Content::error(ErrorCode::InvalidRequest, e.to_string()),
                )
            }
        };
        let answer = match (toolkit.as_str(), tool.as_str()) {
            ("sync", "open") => self.sync_open(conn, &tool_call_id, &arguments),
            ("sync", "describe") => self.sync_describe(conn, &arguments).await,
            ("sync", "create") => self.sync_create(conn, id, &arguments).await,
            ("messaging", "enable") => self.messaging_enable(conn, id),
            ("messaging", "disable") => self.messaging_disable(conn),
            ("messaging", "send") => self.messaging_deliver(conn, &arguments, false),
            ("messaging", "broadcast") => self.messaging_deliver(conn, &arguments, true),
            ("developer", "log" | "info" | "warning" | "error") => {
                self.developer_log(conn, &tool, &arguments)
            }
            ("developer", "logs") => self.developer_logs(conn, id, &tool_call_id, &arguments),
            ("threads", _) => self.threads_tool(conn, id, &tool, &arguments).await,
            ("queues", _) => {
                let Some(s) = self.sockets.sockets.get(&conn) else {
                    return;
                };
                let (grant, consumer) = (s.scope.queues.clone(), s.participant.clone());
                self.queues_tool(conn, id, &tool, &arguments, grant, consumer)
                    .await
            }
            _ if !BUILTIN_TOOLKITS.contains(&toolkit.as_str()) => {
                let target = field("participant_id");
                let on_behalf_of = field("on_behalf_of_id");
                let call = HostedCall {
                    id,
                    toolkit: &toolkit,
                    tool: &tool,
                    tool_call_id: &tool_call_id,
                    target: target.as_deref(),
                    on_behalf_of: on_behalf_of.as_deref(),
                };
                self.call_hosted(conn, call, h, &p.trailer)
            }
            _ => Err(Content::error(
                ErrorCode::NotFound,
                format!("no tool {tool} in toolkit {toolkit}"),
            )),
        };
        match answer {
            Ok(Some(content)) => self.respond(conn, id, content),
            Ok(None) => {}
            Err(error) => self.respond(conn, id, error),
        }
    }

    /// `sync.open`: a stream whose first input chunk names the document.
    fn sync_open(
        &mut self,
        conn: ConnId,
        tool_call_id: &str,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        self.open_call(conn, tool_call_id, arguments, "sync.open", Call::Sync(None))?;
        Ok(Some(Content::Control(Control::Open)))
    }

    /// `sync.describe` with `{path}`: the document as the SDK's Document-JSON, read through its
    /// schema (the path's, as `sync.open` would serve it).
    async fn sync_describe(
        &mut self,
        conn: ConnId,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        let path = path_arg(json_args(arguments, "sync.describe")?, "sync.describe")?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        s.scope
            .doc_access(path)
            .map_err(|f| Content::error(ErrorCode::PermissionDenied, f.to_string()))?;
        let schema = roomd_room_apis::schema::for_path(path).1;
        let root = roomd_room_apis::schema::root_tag(&schema)
            .unwrap_or(roomd_room_apis::schema::DEFAULT_SCHEMA)
            .to_string();
        let doc: Arc<str> = path.into();
        let not_found = || Content::error(ErrorCode::NotFound, format!("no document at {path}"));
        let d = match self.doc_for_rest(&doc, false).await {
            Ok(Some(d)) if !d.new => d,
            Ok(_) => return Err(not_found()),
            Err(e) => return Err(Content::error(ErrorCode::OperationFailed, e.to_string())),
        };
        let children = |tag: &str| roomd_room_apis::schema::child_property(&schema, tag);
        Ok(Some(Content::Json(
            d.session.doc().mesh_json(&root, &children),
        )))
    }

    /// `sync.create` with `{path, json, schema}`: a new document holding Document-JSON `json`
    /// (`{root: {children: [...]}}`), answered once durable. An existing document is
    /// `ALREADY_EXISTS`.
    async fn sync_create(
        &mut self,
        conn: ConnId,
        id: u64,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        let args = json_args(arguments, "sync.create")?;
        let path = path_arg(args, "sync.create")?.to_string();
        let schema = schema_arg(args.get("schema"), &path)?;
        let json = args.get("json").cloned().unwrap_or(Value::Null);
        match self.fill_new_doc(conn, &path, &schema, &json, true).await? {
            Some(()) => {
                self.owe(Owed::Answer(conn, id, Content::Empty));
                Ok(None)
            }
            None => Err(Content::error(
                ErrorCode::AlreadyExists,
                format!("a document exists at {path}"),
            )),
        }
    }

    /// Writes Document-JSON `json` into the document at `path` if it holds nothing yet;
    /// `None` if it does. The participant's `sync` grant must let it write there.
    async fn fill_new_doc(
        &mut self,
        conn: ConnId,
        path: &str,
        schema: &Value,
        json: &Value,
        create: bool,
    ) -> Result<Option<()>, Content> {
        let invalid = |m: &str| Content::error(ErrorCode::InvalidRequest, m);
        crate::http::check_doc_name(path).map_err(|e| invalid(&e))?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        let access = s
            .scope
            .doc_access(path)
            .map_err(|f| Content::error(ErrorCode::PermissionDenied, f.to_string()))?;
        if access.read_only || crate::http::is_reserved(path) {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                format!("the participant may only read {path}"),
            ));
        }
        let principal = s.principal.clone();
        let root = roomd_room_apis::schema::root_tag(schema)
            .unwrap_or(roomd_room_apis::schema::DEFAULT_SCHEMA)
            .to_string();
        let children_of = |tag: &str| roomd_room_apis::schema::child_property(schema, tag);
        let children = match (json, children_of(&root)) {
            (Value::Null, _) | (_, None) => Vec::new(),
            (json, Some(prop)) => json
                .get(&root)
                .and_then(|r| r.get(&prop))
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| {
                    invalid(&format!(
                        "the JSON must be {{\"{root}\": {{\"{prop}\": [...]}}}}"
                    ))
                })?,
        };
        let doc: Arc<str> = path.into();
        let d = match self.doc_for_rest(&doc, create).await {
            Ok(Some(d)) if d.new => d,
            Ok(_) => return Ok(None),
            Err(e) => return Err(Content::error(ErrorCode::OperationFailed, e.to_string())),
        };
        if children.is_empty() {
            return Ok(Some(()));
        }
        let author = u64::from(u32::from_le_bytes(crate::master_key::random_bytes()));
        let update = d
            .session
            .doc()
            .mesh_insert(author, &children, &children_of, &mut || {
                uuid::Uuid::new_v4().to_string()
            })
            .ok_or_else(|| invalid("the JSON is not Document-JSON of elements"))?;
        let mut out = Vec::new();
        d.session
            .apply_external(&principal, &update, &mut out)
            .map_err(|(code, reason)| match code {
                CloseCode::Forbidden => Content::error(
                    ErrorCode::PermissionDenied,
                    format!("update refused: {reason}"),
                ),
                _ => Content::error(ErrorCode::InvalidRequest, reason),
            })?;
        self.carry_out(&doc, out);
        Ok(Some(()))
    }

    /// A call of the `threads` toolkit: the participant's `sync` grant must cover the document
    /// it reads or writes; it is answered once what it wrote is durable.
    async fn threads_tool(
        &mut self,
        conn: ConnId,
        id: u64,
        tool: &str,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        use super::threads::{needs, ThreadError};
        let error = |e: ThreadError| {
            let code = match e {
                ThreadError::Invalid(_) => ErrorCode::InvalidRequest,
                ThreadError::NotFound(_) => ErrorCode::NotFound,
                ThreadError::Exists(_) => ErrorCode::AlreadyExists,
                ThreadError::Forbidden(_) => ErrorCode::PermissionDenied,
                ThreadError::Unavailable(_) | ThreadError::Internal => ErrorCode::OperationFailed,
            };
            Content::error(code, e.to_string())
        };
        let what = format!("threads.{tool}");
        let args = json_args(arguments, &what)?.clone();
        let need = needs(tool, &args).map_err(error)?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        let access = s
            .scope
            .doc_access(&need.doc)
            .map_err(|f| Content::error(ErrorCode::PermissionDenied, f.to_string()))?;
        if need.writes && access.read_only {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                format!("the participant may only read {}", need.doc),
            ));
        }
        let principal = s.principal.clone();
        let (answer, written) = self
            .thread_call(&principal, tool, &args)
            .await
            .map_err(error)?;
        match written {
            Some(_) => {
                self.owe(Owed::Answer(conn, id, Content::Json(answer)));
                Ok(None)
            }
            None => Ok(Some(Content::Json(answer))),
        }
    }

    /// Opens streamed call `tool_call_id` (of tool `what`) on `conn`, if its input is a stream,
    /// its id is not open already and the connection is under its limit of open calls.
    fn open_call(
        &mut self,
        conn: ConnId,
        tool_call_id: &str,
        arguments: &Content,
        what: &str,
        call: Call,
    ) -> Result<(), Content> {
        if !matches!(arguments, Content::Control(Control::Open)) {
            return Err(Content::error(
                ErrorCode::InvalidRequest,
                format!("{what} takes a stream of chunks"),
            ));
        }
        let Some(s) = self.sockets.sockets.get_mut(&conn) else {
            return Err(Content::error(ErrorCode::InvalidState, "not connected"));
        };
        if s.open.contains_key(tool_call_id) {
            return Err(Content::error(
                ErrorCode::AlreadyExists,
                "tool_call_id is already open",
            ));
        }
        if s.open.len() >= OPEN_CALLS_MAX {
            return Err(Content::error(
                ErrorCode::InvalidState,
                format!("more than {OPEN_CALLS_MAX} calls open on this connection"),
            ));
        }
        s.open.insert(tool_call_id.to_string(), call);
        Ok(())
    }

    async fn request_chunk(&mut self, conn: ConnId, p: Payload) {
        let Some(tool_call_id) = p.header.get("tool_call_id").and_then(Value::as_str) else {
            return;
        };
        let tool_call_id = tool_call_id.to_string();
        let chunk = match p.header.get("chunk") {
            Some(Value::Object(c)) => Content::from_parts(c, p.trailer.clone()),
            _ => return,
        };
        let Some(call) = self
            .sockets
            .sockets
            .get(&conn)
            .and_then(|s| s.open.get(&tool_call_id))
        else {
            // A chunk for a call that is not open (closed already, or never opened): the SDK
            // awaits no answer to a chunk, so there is no one to tell.
            return;
        };
        let stream = match call {
            Call::Sync(stream) => *stream,
            Call::Hosted(host, toolkit) => {
                // Relayed to the host as it came, its close included (the call stays open for
                // the answer).
                let kind = format!("room.tool_call_request_chunk.{toolkit}");
                let host = *host;
                self.push_socket(host, &kind, Value::Object(p.header.clone()), &p.trailer);
                return;
            }
            Call::Logs(_) => {
                // The logs stream takes no input; its input ends with a close.
                if matches!(chunk, Ok(Content::Control(Control::Close { .. }))) {
                    self.end_call(conn, &tool_call_id);
                }
                return;
            }
        };
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let error = Content::error(ErrorCode::InvalidRequest, e.to_string());
                return self.send_chunk(conn, &tool_call_id, &error);
            }
        };
        match (stream, chunk) {
            (None, Content::Binary { headers, .. })
                if headers.get("kind").and_then(Value::as_str) == Some("start") =>
            {
                if let Err(error) = self.sync_start(conn, &tool_call_id, &headers).await {
                    self.end_call(conn, &tool_call_id);
                    self.send_chunk(conn, &tool_call_id, &error);
                }
            }
            (Some(stream), Content::Binary { headers, data })
                if headers.get("kind").and_then(Value::as_str) == Some("sync") =>
            {
                self.sync_input(conn, stream, &data).await;
            }
            (_, Content::Control(Control::Close { .. })) => {
                self.end_call(conn, &tool_call_id);
                let close = Content::Control(Control::Close {
                    status_code: Some(1000),
                    message: None,
                });
                self.send_chunk(conn, &tool_call_id, &close);
            }
            _ => {
                let error = Content::error(
                    ErrorCode::InvalidRequest,
                    "sync.open takes a start chunk, then sync chunks",
                );
                self.end_call(conn, &tool_call_id);
                self.send_chunk(conn, &tool_call_id, &error);
            }
        }
    }

    /// Ends an open call, closing its document stream or stopping its follower.
    fn end_call(&mut self, conn: ConnId, tool_call_id: &str) {
        let call = self
            .sockets
            .sockets
            .get_mut(&conn)
            .and_then(|s| s.open.remove(tool_call_id));
        match call {
            Some(Call::Sync(Some(stream))) => self.close_stream(stream),
            Some(Call::Logs(stop)) => stop.cancel(),
            _ => {}
        }
    }

    /// The start chunk of `sync.open`: the stream joins the document and asks it for what
    /// the client's state vector lacks.
    async fn sync_start(
        &mut self,
        conn: ConnId,
        tool_call_id: &str,
        headers: &Map<String, Value>,
    ) -> Result<(), Content> {
        let invalid = |m: &str| Content::error(ErrorCode::InvalidRequest, m);
        let path = headers
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the start chunk needs a path"))?;
        let path = normalize_doc_path(path);
        crate::http::check_doc_name(path).map_err(|e| invalid(&e))?;
        let vector = match headers.get("vector") {
            None | Some(Value::Null) => vec![0],
            Some(Value::String(v)) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| invalid("the vector is not base64"))?,
            Some(_) => return Err(invalid("the vector is not base64")),
        };
        let schema = schema_arg(headers.get("schema"), path)?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(());
        };
        let access = s
            .scope
            .doc_access(path)
            .map_err(|f| Content::error(ErrorCode::PermissionDenied, f.to_string()))?;
        let read_only = crate::http::reads_only(path, access, &s.scope);
        let create = headers
            .get("create")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let doc: Arc<str> = path.into();
        if !create && !self.doc_exists(&doc).await {
            return Err(Content::error(
                ErrorCode::NotFound,
                format!("no document at {path}"),
            ));
        }
        if let Some(json) = headers.get("initial_json").filter(|j| !j.is_null()) {
            // Only a document that holds nothing yet takes it.
            self.fill_new_doc(conn, path, &schema, json, create).await?;
        }
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(());
        };
        let outbox = s.outbox.clone();
        let principal = s.principal.clone();
        let number = self.participants.of_conn(conn.0).map_or(0, |p| p.number);
        let stream = ConnId(self.sockets.next_stream);
        self.sockets.next_stream += 1;
        self.sockets.streams.insert(
            stream,
            DocStream {
                socket: conn,
                tool_call_id: tool_call_id.to_string(),
                path: doc.clone(),
                schema,
                state_sent: false,
                ack: headers.get("ack").and_then(Value::as_bool).unwrap_or(false),
                received: 0,
                sync_header: sync_header_of(tool_call_id, &doc),
            },
        );
        if let Some(s) = self.sockets.sockets.get_mut(&conn) {
            s.open
                .insert(tool_call_id.to_string(), Call::Sync(Some(stream)));
        }
        let peer = Peer {
            participant: number,
            read_only,
            principal,
        };
        if let Err(e) = self.join(doc.clone(), stream, peer, outbox).await {
            self.sockets.streams.remove(&stream);
            if let Some(s) = self.sockets.sockets.get_mut(&conn) {
                s.open.insert(tool_call_id.to_string(), Call::Sync(None));
            }
            let text = match e {
                JoinError::Refused(_, reason) => reason,
                JoinError::Unloading => "room unavailable".into(),
            };
            return Err(Content::error(ErrorCode::OperationFailed, text));
        }
        let step1 = Message::Sync(SyncMessage::Step1(&vector)).to_vec();
        self.receive_frames(&doc, &[(stream, step1.into())]).await;
        Ok(())
    }

    /// True when the document is loaded, loading or stored.
    async fn doc_exists(&self, doc: &Arc<str>) -> bool {
        if self.docs.contains_key(doc) || self.loading.contains_key(doc) {
            return true;
        }
        let key = crate::store::DocKey::new(&self.key, doc);
        let store = self.ctx.store.clone();
        matches!(
            tokio::task::spawn_blocking(move || store.load(&key)).await,
            Ok(Ok(stored)) if !stored.is_new()
        )
    }

    /// A `sync` chunk: the client's update, as base64 text, for the stream's document.
    async fn sync_input(&mut self, conn: ConnId, stream: ConnId, data: &[u8]) {
        let Some(d) = self.sockets.streams.get_mut(&stream) else {
            return;
        };
        d.received += 1;
        let (doc, ack) = (d.path.clone(), d.ack.then_some(d.received));
        let Ok(update) = base64::engine::general_purpose::STANDARD.decode(data) else {
            tracing::info!(room = %self.name, conn = conn.0, "sync chunk is not base64");
            if let Some(s) = self.sockets.sockets.get(&conn) {
                s.outbox
                    .close(CloseCode::ProtocolError, "sync chunk is not base64");
            }
            return;
        };
        let frame = Message::Sync(SyncMessage::Update(&update)).to_vec();
        self.receive_frames(&doc, &[(stream, frame.into())]).await;
        if let Some(n) = ack {
            match self.loading.get_mut(&doc) {
                // The update waits for the document: so does its acknowledgement.
                Some(l) => l.queued.push(super::RoomCmd::Ack { stream, n }),
                None => self.owe_ack(stream, n),
            }
        }
    }

    /// Owes document stream `stream` the acknowledgement of its first `n` updates, all applied:
    /// sent once everything written so far is durable.
    pub(super) fn owe_ack(&mut self, stream: ConnId, n: u64) {
        self.owe(Owed::Ack(stream, n));
    }

    /// Answers request `id` of `conn` with `content` once everything written so far is durable.
    pub(super) fn answer_when_durable(&mut self, conn: ConnId, id: u64, content: Content) {
        self.owe(Owed::Answer(conn, id, content));
    }

    /// Answers request `id` of `conn` now.
    pub(super) fn respond_queue(&mut self, conn: ConnId, id: u64, content: Content) {
        self.respond(conn, id, content);
    }

    /// Sends `owed` once everything written so far is durable.
    fn owe(&mut self, owed: Owed) {
        self.sockets
            .acks
            .push_back((self.ctx.store.written(), owed));
        self.send_acks(self.ctx.store.durable());
        if self.acks_owed() {
            self.ctx.flush_soon();
        }
    }

    /// True while acknowledgements wait for a flush.
    pub(super) fn acks_owed(&self) -> bool {
        !self.sockets.acks.is_empty()
    }

    /// Sends the acknowledgements that writes up to `durable` cover.
    pub(super) fn send_acks(&mut self, durable: crate::store::WriteSeq) {
        while let Some(&(seq, _)) = self.sockets.acks.front() {
            if seq > durable {
                break;
            }
            let Some((_, owed)) = self.sockets.acks.pop_front() else {
                break;
            };
            match owed {
                Owed::Ack(stream, n) => {
                    let Some(d) = self.sockets.streams.get(&stream) else {
                        continue;
                    };
                    let (socket, tool_call_id) = (d.socket, d.tool_call_id.clone());
                    let ack = binary(
                        json!({ "kind": "ack", "path": &*d.path, "updates": n }),
                        Bytes::new(),
                    );
                    self.send_chunk(socket, &tool_call_id, &ack);
                }
                Owed::Answer(conn, id, content) => self.respond(conn, id, content),
            }
        }
    }

    fn participant_json(&self, id: &str) -> Option<Value> {
        let p = self.participants.get(id)?;
        Some(json!({ "id": p.id, "role": p.role.as_str(), "attributes": p.attributes }))
    }

    /// Sockets with messaging on, with their participant.
    fn messaging_sockets(&self) -> Vec<(ConnId, String)> {
        let mut v: Vec<(ConnId, String)> = self
            .sockets
            .sockets
            .iter()
            .filter(|(_, s)| s.messaging)
            .map(|(c, s)| (*c, s.participant.clone()))
            .collect();
        v.sort();
        v
    }

    /// True if socket `c`'s messaging grant lets it see who else is there (`list`): presence
    /// pushes go only to such sockets, and `messaging.enabled` lists no one to the others.
    fn may_list(&self, c: ConnId) -> bool {
        self.sockets
            .sockets
            .get(&c)
            .and_then(|s| s.scope.messaging.as_ref())
            .is_some_and(|m| m.list)
    }

    /// Sends a presence push (`participant.enabled`, `.disabled`, `.attributes`) to those of
    /// `targets` that may list participants.
    fn deliver_presence(&mut self, targets: &[ConnId], from: &str, kind: &str, message: &Value) {
        let targets: Vec<ConnId> = targets
            .iter()
            .copied()
            .filter(|c| self.may_list(*c))
            .collect();
        self.deliver(&targets, from, kind, message, &[]);
    }

    /// Sends `messaging.send` pushes to `targets`.
    fn deliver(
        &mut self,
        targets: &[ConnId],
        from: &str,
        kind: &str,
        message: &Value,
        attachment: &[u8],
    ) {
        let header = json!({ "from_participant_id": from, "type": kind, "message": message });
        for t in targets {
            self.push_socket(*t, "messaging.send", header.clone(), attachment);
        }
    }

    fn messaging_enable(&mut self, conn: ConnId, id: u64) -> Result<Option<Content>, Content> {
        let Some(s) = self.sockets.sockets.get_mut(&conn) else {
            return Ok(None);
        };
        if s.scope.messaging.is_none() {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                "the token has no messaging grant",
            ));
        }
        s.messaging = true;
        let me = s.participant.clone();
        self.respond(conn, id, Content::Empty);
        let mut seen = std::collections::BTreeSet::new();
        let mut others = Vec::new();
        let mut targets = Vec::new();
        let lists = self.may_list(conn);
        for (c, p) in self.messaging_sockets() {
            if p == me {
                continue;
            }
            targets.push(c);
            if lists && seen.insert(p.clone()) {
                others.extend(self.participant_json(&p));
            }
        }
        self.deliver(
            &[conn],
            &me,
            "messaging.enabled",
            &json!({ "participants": others }),
            &[],
        );
        if let Some(mine) = self.participant_json(&me) {
            self.deliver_presence(&targets, &me, "participant.enabled", &mine);
        }
        Ok(None)
    }

    fn messaging_disable(&mut self, conn: ConnId) -> Result<Option<Content>, Content> {
        let Some(s) = self.sockets.sockets.get_mut(&conn) else {
            return Ok(None);
        };
        let was = std::mem::replace(&mut s.messaging, false);
        let me = s.participant.clone();
        if was {
            self.messaging_gone(&me);
        }
        Ok(Some(Content::Empty))
    }

    /// A socket of participant `me` stopped messaging: unless another of its sockets still
    /// does, the others are told it is gone.
    fn messaging_gone(&mut self, me: &str) {
        let sockets = self.messaging_sockets();
        if sockets.iter().any(|(_, p)| p == me) {
            return;
        }
        let targets: Vec<ConnId> = sockets.into_iter().map(|(c, _)| c).collect();
        self.deliver_presence(&targets, me, "participant.disabled", &json!({ "id": me }));
    }

    /// The arguments, message and attachment of a `send` or `broadcast`.
    fn outgoing_message(arguments: &Content) -> Result<Outgoing, Content> {
        let invalid = |m: &str| Content::error(ErrorCode::InvalidRequest, m);
        let Content::Json(Value::Object(args)) = arguments else {
            return Err(invalid("messaging takes JSON arguments"));
        };
        let message = match args.get("message_json") {
            Some(Value::String(s)) => {
                serde_json::from_str(s).map_err(|_| invalid("message_json is not JSON"))?
            }
            _ => args.get("message").cloned().unwrap_or_else(|| json!({})),
        };
        let attachment = match args.get("attachment_base64") {
            Some(Value::String(s)) => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| invalid("attachment_base64 is not base64"))?,
            _ => Vec::new(),
        };
        Ok((args.clone(), message, attachment))
    }

    /// `send` (to one participant, `to` its id) or `broadcast` (`to` `None`: every other
    /// participant with messaging enabled).
    fn messaging_deliver(
        &mut self,
        conn: ConnId,
        arguments: &Content,
        broadcast: bool,
    ) -> Result<Option<Content>, Content> {
        let (args, message, attachment) = Self::outgoing_message(arguments)?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        let (allowed, what) = match s.scope.messaging.as_ref() {
            Some(m) if broadcast => (m.broadcast, "broadcast"),
            Some(m) => (m.send, "send"),
            None => (false, "messaging"),
        };
        if !allowed {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                format!("the token's messaging grant does not allow {what}"),
            ));
        }
        let me = s.participant.clone();
        let to = match args.get("to_participant_id").and_then(Value::as_str) {
            _ if broadcast => None,
            Some(to) => Some(to),
            None => {
                let text = "send needs to_participant_id";
                return Err(Content::error(ErrorCode::InvalidRequest, text));
            }
        };
        let kind = args
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        let targets: Vec<ConnId> = self
            .messaging_sockets()
            .into_iter()
            .filter(|(_, p)| to.map_or(*p != me, |to| p == to))
            .map(|(c, _)| c)
            .collect();
        if let (Some(to), true) = (to, targets.is_empty()) {
            return Err(Content::error(
                ErrorCode::NotFound,
                format!("participant {to} is not in the room with messaging enabled"),
            ));
        }
        self.deliver(&targets, &me, &kind, &message, &attachment);
        Ok(Some(Content::Empty))
    }

    /// `set_attributes`: the participant's attributes change; `.room/participants` and the
    /// participants messaging see it.
    fn set_attributes(&mut self, conn: ConnId, attributes: Map<String, Value>) {
        let merged_bytes = self.participants.of_conn(conn.0).map_or(0, |p| {
            let mut merged = p.attributes.clone();
            merged.extend(attributes.clone());
            Value::Object(merged).to_string().len()
        });
        if merged_bytes > ATTRIBUTES_BYTES_MAX {
            // `set_attributes` has no answer: the change is dropped, and the sender is told by
            // never seeing it come back in presence.
            tracing::info!(room = %self.name, conn = conn.0, bytes = merged_bytes, "attributes over the size limit dropped");
            return;
        }
        let Some(id) = self.participants.set_attributes(conn.0, &attributes) else {
            return;
        };
        self.publish_participant(&id);
        let targets: Vec<ConnId> = self
            .messaging_sockets()
            .into_iter()
            .filter(|(_, p)| *p != id)
            .map(|(c, _)| c)
            .collect();
        let mut attributes = attributes;
        attributes.remove("name");
        self.deliver_presence(
            &targets,
            &id,
            "participant.attributes",
            &json!({ "attributes": attributes }),
        );
    }
}

/// The events a `developer.logs` stream sends: what `developer.log` wrote comes back as it was
/// written (its `type` and `data`); the server's own events as their type and the event.
fn log_chunk(e: &crate::store::EventRecord) -> Content {
    let (kind, data) = if e.kind == crate::events::EventKind::DeveloperLog.name() {
        (
            e.body
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("log")
                .to_string(),
            e.body.get("data").cloned().unwrap_or_else(|| json!({})),
        )
    } else {
        (e.kind.clone(), crate::http::event_json(e))
    };
    let data = match data {
        Value::Object(_) => data,
        other => json!({ "value": other }),
    };
    binary(
        json!({ "type": kind }),
        data.to_string().into_bytes().into(),
    )
}

/// Events a `developer.logs` follower reads at once.
const LOG_BATCH_MAX: usize = 256;

/// Follows `key`'s event log for a `developer.logs` call, from the newest visible event on,
/// sending each event as a chunk until `stop`, the server's shutdown, or the socket's outbox
/// refusing (it is closed then). A follower that falls behind the retained log is sent an
/// error chunk and stops: events are never skipped silently.
#[allow(clippy::too_many_arguments)]
async fn follow_logs(
    ctx: Arc<crate::AppCtx>,
    key: crate::store::RoomKey,
    outbox: Outbox,
    ids: Arc<AtomicU64>,
    tool_call_id: String,
    mut watch: tokio::sync::watch::Receiver<u64>,
    stop: CancellationToken,
) {
    let mut after = *watch.borrow_and_update();
    let send = |content: &Content| {
        let id = ids.fetch_add(1, Ordering::Relaxed) + 1;
        match outbox.push(chunk(id, &tool_call_id, content)) {
            Ok(()) => true,
            Err(PushError::Full) => {
                outbox.close(CloseCode::TooSlow, "outbox full: read faster and reconnect");
                false
            }
            Err(PushError::Gone) => false,
        }
    };
    loop {
        watch.borrow_and_update();
        let (c, k) = (ctx.clone(), key.clone());
        let page =
            tokio::task::spawn_blocking(move || c.events.page(&k, after, LOG_BATCH_MAX)).await;
        match page {
            Ok(Ok(events)) if !events.is_empty() => {
                for e in &events {
                    after = e.id;
                    if !send(&log_chunk(e)) {
                        return;
                    }
                }
                continue;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                send(&Content::error(ErrorCode::OperationFailed, e.to_string()));
                return;
            }
            Err(_) => return,
        }
        tokio::select! {
            changed = watch.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
            () = ctx.shutdown.cancelled() => return,
        }
    }
}

impl Room {
    /// `developer.log`, `info`, `warning`, `error`: an event in the room's log.
    fn developer_log(
        &mut self,
        conn: ConnId,
        tool: &str,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        if s.scope.developer.is_none() {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                "the token has no developer grant",
            ));
        }
        let args = json_args(arguments, "a developer log")?;
        let (kind, data) = if tool == "log" {
            let kind = args
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| Content::error(ErrorCode::InvalidRequest, "log needs a type"))?;
            (
                kind.to_string(),
                args.get("data").cloned().unwrap_or_else(|| json!({})),
            )
        } else {
            let message = args.get("message").cloned().unwrap_or(Value::Null);
            let extra = args.get("extra").cloned().unwrap_or_else(|| json!({}));
            (
                tool.to_string(),
                json!({ "message": message, "extra": extra }),
            )
        };
        let body = json!({ "type": kind, "data": data });
        if body.to_string().len() > LOG_BYTES_MAX {
            return Err(Content::error(
                ErrorCode::InvalidRequest,
                format!("a developer log entry holds at most {LOG_BYTES_MAX} bytes of JSON"),
            ));
        }
        let who = self.event_participant(conn);
        self.ctx.emit(
            &self.key,
            crate::events::EventKind::DeveloperLog,
            who.as_ref(),
            body,
        );
        Ok(Some(Content::Empty))
    }

    /// `developer.logs`: a stream of the room's events from now on.
    fn developer_logs(
        &mut self,
        conn: ConnId,
        id: u64,
        tool_call_id: &str,
        arguments: &Content,
    ) -> Result<Option<Content>, Content> {
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        if s.scope.developer.is_none() {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                "the token has no developer grant",
            ));
        }
        let watch = self.ctx.events.watch(&self.key).map_err(|e| {
            tracing::error!(room = %self.name, error = %e, "opening the event log failed");
            Content::error(ErrorCode::OperationFailed, "the event log cannot be read")
        })?;
        let stop = CancellationToken::new();
        let logs = Call::Logs(stop.clone());
        self.open_call(conn, tool_call_id, arguments, "developer.logs", logs)?;
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        let (outbox, ids) = (s.outbox.clone(), s.next_id.clone());
        // The answer goes first: the follower's chunks must come after it.
        self.respond(conn, id, Content::Control(Control::Open));
        let follower = follow_logs(
            self.ctx.clone(),
            self.key.clone(),
            outbox,
            ids,
            tool_call_id.to_string(),
            watch,
            stop,
        );
        self.ctx.tracker.spawn(follower);
        Ok(None)
    }
}

/// The toolkits roomd serves itself; participants cannot register these names.
const BUILTIN_TOOLKITS: &[&str] = &["sync", "messaging", "developer", "threads", "queues"];

/// A `room.invoke_tool` for a hosted toolkit.
struct HostedCall<'a> {
    id: u64,
    toolkit: &'a str,
    tool: &'a str,
    tool_call_id: &'a str,
    target: Option<&'a str>,
    on_behalf_of: Option<&'a str>,
}

impl Room {
    fn agents_grant(&self, conn: ConnId) -> Option<&roomd_room_apis::scope::AgentsGrant> {
        self.sockets.sockets.get(&conn)?.scope.agents.as_ref()
    }

    /// `room.register_toolkit`: `{name, title, description, tools, public, annotations}`,
    /// answered `{id}`.
    fn register_toolkit(
        &mut self,
        conn: ConnId,
        h: &Map<String, Value>,
    ) -> Result<Content, Content> {
        let invalid = |m: String| Content::error(ErrorCode::InvalidRequest, m);
        let name = h
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty() && n.len() <= 128)
            .ok_or_else(|| invalid("a toolkit needs a name of 1 to 128 bytes".into()))?;
        if BUILTIN_TOOLKITS.contains(&name) {
            return Err(invalid(format!("{name} is a toolkit of the server")));
        }
        let public = h.get("public").and_then(Value::as_bool).unwrap_or(false);
        let allowed = self.agents_grant(conn).is_some_and(|a| {
            if public {
                a.register_public_toolkit
            } else {
                a.register_private_toolkit
            }
        });
        if !allowed {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                "the token's agents grant does not allow registering this toolkit",
            ));
        }
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Err(invalid("not connected".into()));
        };
        let participant = s.participant.clone();
        let mine = self
            .sockets
            .toolkits
            .iter()
            .filter(|t| t.socket == conn)
            .count();
        if mine >= TOOLKITS_PER_CONN_MAX {
            return Err(Content::error(
                ErrorCode::InvalidState,
                format!("more than {TOOLKITS_PER_CONN_MAX} toolkits registered by this connection"),
            ));
        }
        let taken = self
            .sockets
            .toolkits
            .iter()
            .any(|t| t.name == name && (t.socket == conn || (public && t.public)));
        if taken {
            return Err(Content::error(
                ErrorCode::AlreadyExists,
                format!("a toolkit named {name} is registered already"),
            ));
        }
        let mut description = Map::new();
        for k in ["title", "description", "annotations", "tools"] {
            if let Some(v) = h.get(k) {
                description.insert(k.into(), v.clone());
            }
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.sockets.toolkits.push(Toolkit {
            id: id.clone(),
            name: name.to_string(),
            socket: conn,
            participant,
            public,
            description,
        });
        Ok(Content::Json(json!({ "id": id })))
    }

    /// `room.unregister_toolkit`: `{id}` of one of the connection's own toolkits.
    fn unregister_toolkit(
        &mut self,
        conn: ConnId,
        h: &Map<String, Value>,
    ) -> Result<Content, Content> {
        let id = h.get("id").and_then(Value::as_str).unwrap_or_default();
        let before = self.sockets.toolkits.len();
        self.sockets
            .toolkits
            .retain(|t| !(t.id == id && t.socket == conn));
        if self.sockets.toolkits.len() == before {
            return Err(Content::error(
                ErrorCode::NotFound,
                format!("no toolkit {id} of this connection"),
            ));
        }
        Ok(Content::Empty)
    }

    /// Toolkits `conn` may see: public ones, and the private ones of a participant it names
    /// (or of its own participant).
    fn visible(&self, conn: ConnId, t: &Toolkit, target: Option<&str>) -> bool {
        let mine = self
            .sockets
            .sockets
            .get(&conn)
            .is_some_and(|s| s.participant == t.participant);
        let named = target == Some(t.participant.as_str());
        let in_target = target.is_none_or(|p| p == t.participant);
        in_target && (t.public || named || mine)
    }

    /// `room.list_toolkits`: `{tools: {<name>: {title, description, participant_id,
    /// annotations, tools}}}`, optionally of one participant (by id or name).
    fn list_toolkits(&self, conn: ConnId, h: &Map<String, Value>) -> Content {
        let by_name = h
            .get("participant_name")
            .and_then(Value::as_str)
            .and_then(|n| {
                self.participants
                    .all()
                    .into_iter()
                    .find(|p| p.name == n)
                    .map(|p| p.id.clone())
            });
        let target = h
            .get("participant_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(by_name);
        let allowed = self
            .agents_grant(conn)
            .and_then(|a| a.allowed_toolkits.clone());
        let mut tools = Map::new();
        for t in &self.sockets.toolkits {
            if !self.visible(conn, t, target.as_deref()) || tools.contains_key(&t.name) {
                continue;
            }
            if allowed.as_ref().is_some_and(|a| !a.contains(&t.name)) {
                continue;
            }
            let mut d = t.description.clone();
            d.insert("participant_id".into(), json!(t.participant));
            for (k, default) in [
                ("title", json!("")),
                ("description", json!("")),
                ("annotations", json!({})),
                ("tools", json!({})),
            ] {
                d.entry(k).or_insert(default);
            }
            tools.insert(t.name.clone(), Value::Object(d));
        }
        Content::Json(json!({ "tools": tools }))
    }

    /// A call to a hosted toolkit: sent to its host as `room.tool_call.<toolkit>`.
    fn call_hosted(
        &mut self,
        conn: ConnId,
        call: HostedCall<'_>,
        h: &Map<String, Value>,
        trailer: &Bytes,
    ) -> Result<Option<Content>, Content> {
        let grant = self.agents_grant(conn);
        if !grant.is_some_and(|a| a.use_tools) {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                "the token's agents grant does not allow using tools",
            ));
        }
        if grant
            .and_then(|a| a.allowed_toolkits.as_ref())
            .is_some_and(|a| !a.iter().any(|t| t == call.toolkit))
        {
            return Err(Content::error(
                ErrorCode::PermissionDenied,
                format!("the token does not allow the toolkit {}", call.toolkit),
            ));
        }
        let host = self
            .sockets
            .toolkits
            .iter()
            .find(|t| t.name == call.toolkit && self.visible(conn, t, call.target))
            .map(|t| (t.socket, t.participant.clone()));
        let Some((host, _)) = host else {
            return Err(Content::error(
                ErrorCode::NotFound,
                format!("no toolkit named {} in the room", call.toolkit),
            ));
        };
        let max = self.ctx.config.limits.tool_calls_per_conn_max;
        let waiting = self
            .sockets
            .hosted
            .values()
            .filter(|c| c.caller == conn)
            .count();
        if waiting >= max {
            return Err(Content::error(
                ErrorCode::InvalidState,
                format!("more than {max} tool calls waiting on this connection"),
            ));
        }
        let Some(s) = self.sockets.sockets.get(&conn) else {
            return Ok(None);
        };
        if s.open.contains_key(call.tool_call_id) {
            return Err(Content::error(
                ErrorCode::AlreadyExists,
                "tool_call_id is already open",
            ));
        }
        let caller_id = s.participant.clone();
        let host_id = self.sockets.next_id(host);
        let header = json!({
            "name": call.tool,
            "tool_call_id": call.tool_call_id,
            "arguments": h.get("arguments").cloned().unwrap_or_else(|| json!({"type": "empty"})),
            "caller_id": caller_id,
            "on_behalf_of_id": call.on_behalf_of,
        });
        let kind = format!("room.tool_call.{}", call.toolkit);
        let message = queued_message(host_id, &kind, &Payload::encode(&header, trailer));
        if let Some(s) = self.sockets.sockets.get_mut(&conn) {
            s.open.insert(
                call.tool_call_id.to_string(),
                Call::Hosted(host, call.toolkit.to_string()),
            );
        }
        self.sockets.hosted.insert(
            (host, host_id),
            Hosted {
                caller: conn,
                caller_id: call.id,
                tool_call_id: call.tool_call_id.to_string(),
                opened: false,
                deadline: tokio::time::Instant::now() + self.ctx.config.limits.tool_call_timeout,
            },
        );
        self.send_socket(host, message);
        Ok(None)
    }

    /// Ends a hosted call on the caller's side.
    fn finish_hosted(&mut self, key: (ConnId, u64)) -> Option<Hosted> {
        let call = self.sockets.hosted.remove(&key)?;
        if let Some(s) = self.sockets.sockets.get_mut(&call.caller) {
            s.open.remove(&call.tool_call_id);
        }
        Some(call)
    }

    /// A host's `room.tool_call_response` (under the id roomd sent the call with): the caller's
    /// answer. `control{open}` makes the call a stream.
    fn hosted_response(&mut self, host: ConnId, id: u64, data: &Bytes, p: &Payload) {
        // `control{open}` (read from the header as `Content::from_parts` reads it, without
        // building the answer's content: every other answer is relayed as its bytes).
        let field = |k: &str| p.header.get(k).and_then(Value::as_str);
        let opens = field("type") == Some("control") && field("method") == Some("open");
        let Some(call) = self.sockets.hosted.get_mut(&(host, id)) else {
            return;
        };
        if call.opened {
            return;
        }
        let (caller, caller_id) = (call.caller, call.caller_id);
        if opens {
            call.opened = true;
        } else {
            self.finish_hosted((host, id));
        }
        self.send_socket(caller, queued_message(caller_id, "__response__", data));
    }

    /// A host's `room.tool_call_response_chunk`: relayed to the caller; `control{close}` ends
    /// the call.
    fn hosted_chunk(&mut self, host: ConnId, id: u64, _data: &Bytes, p: &Payload) {
        let Some(call) = self.sockets.hosted.get(&(host, id)) else {
            return;
        };
        if !call.opened {
            return;
        }
        let caller = call.caller;
        let closes = match p.header.get("chunk") {
            Some(Value::Object(c)) => matches!(
                Content::from_parts(c, Bytes::new()),
                Ok(Content::Control(Control::Close { .. }))
            ),
            _ => false,
        };
        let mut header = p.header.clone();
        header.insert("tool_call_id".into(), json!(call.tool_call_id));
        if closes {
            self.finish_hosted((host, id));
        }
        self.push_socket(
            caller,
            "room.tool_call_response_chunk",
            Value::Object(header),
            &p.trailer,
        );
    }

    /// A host left: its toolkits go, and every call it had not finished fails at once.
    fn host_gone(&mut self, host: ConnId) {
        self.sockets.toolkits.retain(|t| t.socket != host);
        let keys: Vec<(ConnId, u64)> = self
            .sockets
            .hosted
            .keys()
            .filter(|(h, _)| *h == host)
            .copied()
            .collect();
        for key in keys {
            if let Some(call) = self.finish_hosted(key) {
                self.fail_hosted(call, "the participant hosting the toolkit left");
            }
        }
    }

    /// Fails a hosted call for its caller: an error answer, or, once streaming, an error chunk
    /// and the close.
    fn fail_hosted(&mut self, call: Hosted, text: &str) {
        let error = Content::error(ErrorCode::OperationFailed, text);
        if call.opened {
            self.send_chunk(call.caller, &call.tool_call_id, &error);
            let close = Content::Control(Control::Close {
                status_code: Some(1000),
                message: Some(text.into()),
            });
            self.send_chunk(call.caller, &call.tool_call_id, &close);
        } else {
            self.respond(call.caller, call.caller_id, error);
        }
    }

    /// When the next unanswered call times out.
    pub(super) fn next_call_deadline(&self) -> Option<tokio::time::Instant> {
        self.sockets
            .hosted
            .values()
            .filter(|c| !c.opened)
            .map(|c| c.deadline)
            .min()
    }

    /// Fails the unanswered calls whose time is up.
    pub(super) fn expire_calls(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<(ConnId, u64)> = self
            .sockets
            .hosted
            .iter()
            .filter(|(_, c)| !c.opened && c.deadline <= now)
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(call) = self.finish_hosted(key) {
                let secs = self.ctx.config.limits.tool_call_timeout.as_secs_f64();
                let error = Content::error(
                    ErrorCode::Timeout,
                    format!("the tool did not answer within {secs} s"),
                );
                self.respond(call.caller, call.caller_id, error);
            }
        }
    }
}
