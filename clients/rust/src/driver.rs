//! The connection: one task that owns the socket (and makes it again after it is lost), the
//! requests waiting for answers, the documents' streams and the toolkits this client hosts.
//! The handles ([`crate::RoomClient`], [`Document`]) talk to it over a bounded channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use roomd_sync::room_protocol::{
    encode_message, Assembler, Content, Control, ErrorCode, Payload, WireLimits,
};
use serde_json::{json, Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, Transact, Update};

use crate::document::{Author, Change, DocEvent, DocShared, Document, REMOTE};
use crate::error::{Error, Result};
use crate::tools::{Handler, ToolCall, ToolStream, Toolkit};
use crate::{Config, MessagingEvent, OpenOptions, Participant, Status};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How many requests the handles may queue for the connection before they wait.
pub(crate) const COMMANDS: usize = 1024;
/// How many packets may wait for the socket.
const WRITE_QUEUE: usize = 4096;
/// Chunks of a streamed input to a hosted tool that wait for its handler.
const CHUNKS_IN: usize = 1024;
/// Local updates kept while offline before they are merged.
const UNSENT_MERGE: usize = 64;
/// The largest update the client makes by merging its own (the server's limit on an update
/// is 8 MiB by default; a single larger edit is sent as it is).
const MERGE_BYTES_MAX: usize = 256 * 1024;

static B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What the handles ask of the connection.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// A request answered by one piece of content.
    Request {
        kind: &'static str,
        header: Value,
        trailer: Bytes,
        reply: oneshot::Sender<Result<Content>>,
    },
    /// A message with no answer.
    Notice {
        kind: &'static str,
        header: Value,
    },
    /// A tool call whose answer may be a stream: its chunks go to `chunks`.
    Stream {
        header: Value,
        trailer: Bytes,
        input_open: bool,
        chunks: mpsc::Sender<Result<Content>>,
        reply: oneshot::Sender<Result<Content>>,
    },
    /// Ends the input stream of a call.
    EndInput(String),
    /// A chunk of a call's input stream.
    InputChunk(String, Content),
    Open {
        options: OpenOptions,
        reply: oneshot::Sender<Result<Document>>,
    },
    CloseDoc(String),
    Host {
        toolkit: Toolkit,
        reply: oneshot::Sender<Result<u64>>,
    },
    Unhost(u64),
    /// A hosted tool's answer to the call that came as message `id` on connection `session`.
    Respond {
        session: u64,
        id: u64,
        content: Content,
    },
    /// A chunk of a hosted tool's streamed answer.
    RespondChunk {
        session: u64,
        id: u64,
        tool_call_id: String,
        content: Content,
    },
    Messaging {
        enable: bool,
        reply: oneshot::Sender<Result<Content>>,
    },
    Shutdown,
}

/// What the handles and the connection share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) status: watch::Sender<Status>,
    pub(crate) notify: Arc<Notify>,
    pub(crate) messages: broadcast::Sender<MessagingEvent>,
    pub(crate) participants: Mutex<BTreeMap<String, Participant>>,
    /// This participant's name, as the server last said at connect.
    pub(crate) name: Mutex<String>,
}

/// A socket with its handshake read.
pub(crate) struct Connected {
    ws: Ws,
    assembler: Assembler,
    pub(crate) participant_id: String,
    pub(crate) session_id: String,
    /// The participant's name, from its attributes.
    pub(crate) name: String,
}

/// A document the connection keeps in sync.
struct Slot {
    shared: Arc<DocShared>,
    options: OpenOptions,
    /// The call id of its stream on the current connection, once opened there.
    call: Option<String>,
    /// The stream's state arrived: updates flow.
    live: bool,
    /// `sync` chunks sent on the current stream.
    sent: u64,
    /// Sent and not yet acknowledged: (chunk number, local count it covers, update).
    inflight: VecDeque<(u64, u64, Vec<u8>)>,
    /// Local updates not yet sent: (local count, update).
    unsent: Vec<(u64, Vec<u8>)>,
    waiter: Option<oneshot::Sender<Result<Document>>>,
}

enum Answer {
    Reply(oneshot::Sender<Result<Content>>),
    /// The answer to `sync.open` for the document at this path.
    Open(String),
    /// The answer to a call whose chunks are routed by its tool call id.
    Stream(String, oneshot::Sender<Result<Content>>),
    /// The answer to registering hosted toolkit `n`.
    Register(u64, Option<oneshot::Sender<Result<u64>>>),
    /// An answer nobody waits for.
    Ignore,
}

enum Route {
    Doc(String),
    Chunks(mpsc::Sender<Result<Content>>),
}

struct Hosted {
    toolkit: Arc<Toolkit>,
    /// Its registration id on the current connection.
    id: Option<String>,
}

pub(crate) struct Driver {
    config: Config,
    shared: Arc<Shared>,
    cmds: mpsc::Receiver<Cmd>,
    /// Weak, so that the connection ends once every handle (client, document, toolkit,
    /// stream) is dropped.
    sender: mpsc::WeakSender<Cmd>,
    docs: HashMap<String, Slot>,
    answers: HashMap<u64, Answer>,
    routes: HashMap<String, Route>,
    hosted: BTreeMap<u64, Hosted>,
    /// The input streams of hosted tools' calls, by tool call id.
    inputs: HashMap<String, mpsc::Sender<Content>>,
    next_hosted: u64,
    messaging: bool,
    next_id: u64,
    next_call: u64,
    /// The current connection's number; answers of hosted tools carry it.
    session: u64,
    writer: Option<mpsc::Sender<Message>>,
}

/// Opens a socket to the room and reads the handshake (`room_ready`, then `connected`).
pub(crate) async fn connect(config: &Config) -> Result<Connected> {
    let url = config.room_url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::Config(format!("the room URL {url}: {e}")))?;
    if let Some(token) = &config.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Config("the token is not a valid header value".into()))?;
        request.headers_mut().insert("authorization", value);
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    let (ws, _) = match tokio::time::timeout(config.handshake_timeout, connecting).await {
        Err(_) => return Err(Error::Connection("connecting timed out".into())),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            return Err(Error::Refused {
                status,
                code: body["error"]["code"].as_str().unwrap_or("").to_string(),
                message: body["error"]["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(Err(e)) => return Err(Error::Connection(e.to_string())),
        Ok(Ok(c)) => c,
    };
    let mut c = Connected {
        ws,
        assembler: Assembler::new(client_limits()),
        participant_id: String::new(),
        session_id: String::new(),
        name: String::new(),
    };
    let handshake = async {
        let ready = next_message(&mut c).await?;
        if ready.0 != "room_ready" {
            return Err(Error::Protocol(format!(
                "expected room_ready, got {}",
                ready.0
            )));
        }
        c.session_id = str_of(&ready.1.header, "session_id");
        let connected = next_message(&mut c).await?;
        if connected.0 != "connected" {
            return Err(Error::Protocol(format!(
                "expected connected, got {}",
                connected.0
            )));
        }
        c.participant_id = str_of(&connected.1.header, "participantId");
        c.name = connected.1.header["attributes"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Ok(())
    };
    match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Err(_) => Err(Error::Connection("the handshake timed out".into())),
        Ok(r) => r.map(|()| c),
    }
}

/// What the client accepts from the server: messages as large as a document's state may be.
fn client_limits() -> WireLimits {
    WireLimits {
        message_bytes_max: 512 << 20,
        assembling_bytes_max: 1 << 30,
        header_bytes_max: 64 << 20,
        ..WireLimits::default()
    }
}

fn str_of(h: &Map<String, Value>, key: &str) -> String {
    h.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

async fn next_message(c: &mut Connected) -> Result<(String, Payload)> {
    loop {
        match c.ws.next().await {
            None => return Err(Error::Connection("the server closed the connection".into())),
            Some(Err(e)) => return Err(Error::Connection(e.to_string())),
            Some(Ok(Message::Binary(packet))) => {
                if let Some((_, kind, p)) = assemble(&mut c.assembler, &packet)? {
                    return Ok((kind, p));
                }
            }
            Some(Ok(Message::Close(f))) => {
                return Err(Error::Connection(format!("closed by the server: {f:?}")))
            }
            Some(Ok(_)) => {}
        }
    }
}

fn assemble(a: &mut Assembler, packet: &[u8]) -> Result<Option<(u64, String, Payload)>> {
    let Some(m) = a.push(packet).map_err(|e| Error::Protocol(e.to_string()))? else {
        return Ok(None);
    };
    let p =
        Payload::decode(&m.data, &client_limits()).map_err(|e| Error::Protocol(e.to_string()))?;
    Ok(Some((m.id, m.kind, p)))
}

fn content_of(p: &Payload) -> Result<Content> {
    Content::from_parts(&p.header, p.trailer.clone()).map_err(|e| Error::Protocol(e.to_string()))
}

/// An answer's content as a result: `error` content is an error.
fn answer_result(c: Content) -> Result<Content> {
    match c {
        Content::Error { text, code } => Err(Error::Remote { code, text }),
        c => Ok(c),
    }
}

enum End {
    Lost(Error),
    Shutdown,
}

impl Driver {
    pub(crate) fn new(
        config: Config,
        shared: Arc<Shared>,
        cmds: mpsc::Receiver<Cmd>,
        sender: mpsc::WeakSender<Cmd>,
    ) -> Driver {
        Driver {
            config,
            shared,
            cmds,
            sender,
            docs: HashMap::new(),
            answers: HashMap::new(),
            routes: HashMap::new(),
            hosted: BTreeMap::new(),
            inputs: HashMap::new(),
            next_hosted: 0,
            messaging: false,
            next_id: 0,
            next_call: 0,
            session: 0,
            writer: None,
        }
    }

    /// Serves `first`, then reconnects whenever the connection is lost, until shut down or
    /// refused for good.
    pub(crate) async fn run(mut self, first: Connected) {
        let mut next = Some(first);
        loop {
            let Some(c) = next.take() else {
                break;
            };
            match self.serve(c).await {
                End::Shutdown => break,
                End::Lost(e) => {
                    tracing::info!(error = %e, "connection lost; reconnecting");
                    self.lost(&e);
                    next = self.reconnect(e).await;
                }
            }
        }
        self.finish();
    }

    /// Everything waiting on the connection that is gone fails, or waits for the next one.
    fn lost(&mut self, e: &Error) {
        self.writer = None;
        for (_, a) in self.answers.drain() {
            match a {
                Answer::Reply(r) | Answer::Stream(_, r) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                Answer::Register(_, Some(r)) => {
                    let _ = r.send(Err(Error::Disconnected));
                }
                _ => {}
            }
        }
        for (_, r) in self.routes.drain() {
            if let Route::Chunks(tx) = r {
                let _ = tx.try_send(Err(Error::Disconnected));
            }
        }
        for slot in self.docs.values_mut() {
            slot.call = None;
            slot.live = false;
        }
        for h in self.hosted.values_mut() {
            h.id = None;
        }
        // The calls of this client's streamed tools end with the connection: their handlers
        // read the end of their input.
        self.inputs.clear();
        self.shared.participants.lock().map(|mut p| p.clear()).ok();
        self.shared.status.send_replace(Status::Disconnected {
            error: e.to_string(),
        });
    }

    fn finish(&mut self) {
        self.lost(&Error::Closed);
        for (_, slot) in self.docs.drain() {
            slot.shared.closed.store(true, Ordering::Release);
            if let Some(w) = slot.waiter {
                let _ = w.send(Err(Error::Closed));
            }
            // Wakes whoever waits for durability: the client is closed.
            slot.shared.durable.send_modify(|_| {});
        }
        self.shared.status.send_replace(Status::Closed);
    }

    /// Waits and reconnects with exponential backoff; serves commands meanwhile (requests
    /// fail, documents keep their edits). `None` when shut down or refused for good.
    async fn reconnect(&mut self, mut error: Error) -> Option<Connected> {
        let mut delay = self.config.backoff_initial;
        loop {
            if error.is_permanent() {
                tracing::warn!(error = %error, "refused; not reconnecting");
                self.shared.status.send_replace(Status::Refused {
                    error: error.to_string(),
                });
                // Keep answering the handles until they close the client.
                while let Some(cmd) = self.cmds.recv().await {
                    if matches!(cmd, Cmd::Shutdown) {
                        break;
                    }
                    self.offline(cmd);
                }
                return None;
            }
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    cmd = self.cmds.recv() => match cmd {
                        None | Some(Cmd::Shutdown) => return None,
                        Some(cmd) => self.offline(cmd),
                    },
                    () = self.shared.notify.notified() => self.take_local(),
                }
            }
            self.shared.status.send_replace(Status::Connecting);
            match connect(&self.config).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "reconnecting failed");
                    self.shared.status.send_replace(Status::Disconnected {
                        error: e.to_string(),
                    });
                    error = e;
                    delay = (delay * 2).min(self.config.backoff_max);
                }
            }
        }
    }

    /// A command while there is no connection.
    fn offline(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Request { reply, .. } | Cmd::Stream { reply, .. } => {
                let _ = reply.send(Err(Error::Disconnected));
            }
            Cmd::Messaging { enable, reply } => {
                self.messaging = enable;
                let _ = reply.send(Ok(Content::Empty));
            }
            Cmd::Open { reply, .. } => {
                let _ = reply.send(Err(Error::Disconnected));
            }
            Cmd::CloseDoc(path) => self.close_doc(&path),
            Cmd::Host { toolkit, reply } => {
                let n = self.add_hosted(toolkit);
                let _ = reply.send(Ok(n));
            }
            Cmd::Unhost(n) => {
                self.hosted.remove(&n);
            }
            Cmd::Notice { .. }
            | Cmd::EndInput(_)
            | Cmd::InputChunk(..)
            | Cmd::Respond { .. }
            | Cmd::RespondChunk { .. }
            | Cmd::Shutdown => {}
        }
    }

    fn add_hosted(&mut self, toolkit: Toolkit) -> u64 {
        self.next_hosted += 1;
        self.hosted.insert(
            self.next_hosted,
            Hosted {
                toolkit: Arc::new(toolkit),
                id: None,
            },
        );
        self.next_hosted
    }

    async fn serve(&mut self, c: Connected) -> End {
        let Connected {
            ws,
            mut assembler,
            participant_id,
            session_id,
            name,
        } = c;
        if let Ok(mut n) = self.shared.name.lock() {
            *n = name;
        }
        self.session += 1;
        let (mut sink, mut stream): (_, SplitStream<Ws>) = ws.split();
        let (tx, mut rx) = mpsc::channel::<Message>(WRITE_QUEUE);
        let (dead_tx, mut dead) = oneshot::channel::<Error>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let mut r = sink.feed(m).await;
                while r.is_ok() {
                    match rx.try_recv() {
                        Ok(m) => r = sink.feed(m).await,
                        Err(_) => break,
                    }
                }
                if let Err(e) = r.and(sink.flush().await) {
                    let _ = dead_tx.send(Error::Connection(e.to_string()));
                    return;
                }
            }
            let _ = sink.close().await;
        });
        self.writer = Some(tx);
        self.shared.status.send_replace(Status::Connected {
            participant_id,
            session_id,
        });
        if let Err(e) = self.restore().await {
            return End::Lost(e);
        }
        let silence = self.config.silence_timeout;
        let quiet = tokio::time::sleep(silence);
        tokio::pin!(quiet);
        loop {
            let r = tokio::select! {
                packet = stream.next() => {
                    // Any frame, a ping included, shows the server is there.
                    quiet.as_mut().reset(tokio::time::Instant::now() + silence);
                    match packet {
                    None => Err(Error::Connection("the server closed the connection".into())),
                    Some(Err(e)) => Err(Error::Connection(e.to_string())),
                    Some(Ok(Message::Binary(p))) => match assemble(&mut assembler, &p) {
                        Ok(Some((id, kind, payload))) => self.incoming(id, &kind, payload).await,
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    },
                    Some(Ok(Message::Close(f))) => Err(Error::Connection(format!(
                        "closed by the server: {}",
                        f.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default()
                    ))),
                    Some(Ok(_)) => Ok(()),
                    }
                },
                () = &mut quiet => Err(Error::Connection(format!(
                    "nothing from the server for {} ms",
                    silence.as_millis()
                ))),
                cmd = self.cmds.recv() => match cmd {
                    None | Some(Cmd::Shutdown) => return End::Shutdown,
                    Some(cmd) => self.command(cmd).await,
                },
                () = self.shared.notify.notified() => self.flush_local().await,
                e = &mut dead => Err(e.unwrap_or(Error::Connection("the writer stopped".into()))),
            };
            if let Err(e) = r {
                return End::Lost(e);
            }
        }
    }

    /// After (re)connecting: the toolkits registered again, messaging enabled again, every
    /// document opened again from its state vector.
    async fn restore(&mut self) -> Result<()> {
        let hosted: Vec<(u64, Value)> = self
            .hosted
            .iter()
            .map(|(n, h)| (*n, h.toolkit.registration()))
            .collect();
        for (n, registration) in hosted {
            let id = self
                .send("room.register_toolkit", &registration, b"")
                .await?;
            self.answers.insert(id, Answer::Register(n, None));
        }
        if self.messaging {
            let id = self
                .send(
                    "room.invoke_tool",
                    &invoke("messaging", "enable", "", None),
                    b"",
                )
                .await?;
            self.answers.insert(id, Answer::Ignore);
        }
        let paths: Vec<String> = self.docs.keys().cloned().collect();
        for path in paths {
            self.open_stream(&path).await?;
        }
        Ok(())
    }

    fn call_id(&mut self, what: &str) -> String {
        self.next_call += 1;
        format!("{what}-{}-{}", self.session, self.next_call)
    }

    /// Sends one message; returns its id.
    async fn send(&mut self, kind: &str, header: &Value, trailer: &[u8]) -> Result<u64> {
        if self.writer.is_none() {
            return Err(Error::Disconnected);
        }
        self.next_id += 1;
        let id = self.next_id;
        self.send_as(id, kind, &Payload::encode(header, trailer))
            .await
            .map(|()| id)
    }

    /// Sends one message under the id `id` (an answer to a message of the server).
    async fn send_as(&mut self, id: u64, kind: &str, data: &[u8]) -> Result<()> {
        let Some(writer) = &self.writer else {
            return Err(Error::Disconnected);
        };
        for p in encode_message(id, kind, data) {
            writer
                .send(Message::Binary(p))
                .await
                .map_err(|_| Error::Disconnected)?;
        }
        Ok(())
    }

    /// Ends call `call`'s input stream with a normal `control{close}`.
    async fn close_input(&mut self, call: &str) -> Result<()> {
        let close = Content::Control(Control::Close {
            status_code: Some(1000),
            message: None,
        });
        self.chunk(call, &close).await
    }

    async fn chunk(&mut self, call: &str, chunk: &Content) -> Result<()> {
        let (header, trailer) = chunk.to_parts();
        self.send(
            "room.tool_call_request_chunk",
            &json!({"tool_call_id": call, "chunk": header}),
            &trailer,
        )
        .await
        .map(|_| ())
    }

    async fn command(&mut self, cmd: Cmd) -> Result<()> {
        match cmd {
            Cmd::Request {
                kind,
                header,
                trailer,
                reply,
            } => match self.send(kind, &header, &trailer).await {
                Ok(id) => {
                    self.answers.insert(id, Answer::Reply(reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.clone()));
                    return Err(e);
                }
            },
            Cmd::Notice { kind, header } => {
                self.send(kind, &header, b"").await?;
            }
            Cmd::Stream {
                header,
                trailer,
                input_open,
                chunks,
                reply,
            } => {
                let call = header["tool_call_id"].as_str().unwrap_or("").to_string();
                self.routes.insert(call.clone(), Route::Chunks(chunks));
                match self.send("room.invoke_tool", &header, &trailer).await {
                    // An open input stream stays open until its reader is dropped.
                    Ok(id) => {
                        let _ = input_open;
                        self.answers.insert(id, Answer::Stream(call.clone(), reply));
                    }
                    Err(e) => {
                        self.routes.remove(&call);
                        let _ = reply.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            Cmd::EndInput(call) => {
                if self.routes.contains_key(&call) {
                    self.close_input(&call).await?;
                }
            }
            Cmd::InputChunk(call, chunk) => {
                if self.routes.contains_key(&call) {
                    self.chunk(&call, &chunk).await?;
                }
            }
            Cmd::Open { options, reply } => {
                let path = options.path.clone();
                if let Some(slot) = self.docs.get(&path) {
                    let doc = self.sender.upgrade().map(|cmds| Document {
                        shared: slot.shared.clone(),
                        cmds,
                    });
                    let _ = reply.send(doc.ok_or(Error::Closed));
                    return Ok(());
                }
                let shared = match DocShared::new(path.clone(), self.shared.notify.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                self.docs.insert(
                    path.clone(),
                    Slot {
                        shared,
                        options,
                        call: None,
                        live: false,
                        sent: 0,
                        inflight: VecDeque::new(),
                        unsent: Vec::new(),
                        waiter: Some(reply),
                    },
                );
                self.open_stream(&path).await?;
            }
            Cmd::CloseDoc(path) => {
                let call = self.docs.get(&path).and_then(|s| s.call.clone());
                self.close_doc(&path);
                if let Some(call) = call {
                    self.routes.remove(&call);
                    self.close_input(&call).await?;
                }
            }
            Cmd::Host { toolkit, reply } => {
                let registration = toolkit.registration();
                let n = self.add_hosted(toolkit);
                let id = self
                    .send("room.register_toolkit", &registration, b"")
                    .await?;
                self.answers.insert(id, Answer::Register(n, Some(reply)));
            }
            Cmd::Unhost(n) => {
                if let Some(Hosted { id: Some(id), .. }) = self.hosted.remove(&n) {
                    let id = self
                        .send("room.unregister_toolkit", &json!({ "id": id }), b"")
                        .await?;
                    self.answers.insert(id, Answer::Ignore);
                }
            }
            Cmd::Respond {
                session,
                id,
                content,
            } => {
                if session == self.session {
                    self.send_as(id, "room.tool_call_response", &content.encode())
                        .await?;
                }
            }
            Cmd::RespondChunk {
                session,
                id,
                tool_call_id,
                content,
            } => {
                if session == self.session {
                    if matches!(content, Content::Control(Control::Close { .. })) {
                        // The handler is done: no more of its input is wanted.
                        self.inputs.remove(&tool_call_id);
                    }
                    let (chunk, trailer) = content.to_parts();
                    let header = json!({"tool_call_id": tool_call_id, "chunk": chunk});
                    let data = Payload::encode(&header, &trailer);
                    self.send_as(id, "room.tool_call_response_chunk", &data)
                        .await?;
                }
            }
            Cmd::Messaging { enable, reply } => {
                self.messaging = enable;
                let tool = if enable { "enable" } else { "disable" };
                let header = invoke("messaging", tool, &self.call_id("messaging"), None);
                match self.send("room.invoke_tool", &header, b"").await {
                    Ok(id) => {
                        self.answers.insert(id, Answer::Reply(reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.clone()));
                        return Err(e);
                    }
                }
            }
            Cmd::Shutdown => {}
        }
        Ok(())
    }

    fn close_doc(&mut self, path: &str) {
        if let Some(slot) = self.docs.remove(path) {
            slot.shared.closed.store(true, Ordering::Release);
            let _ = slot.shared.doc.unobserve_update_v1("roomd-client");
            slot.shared.durable.send_modify(|_| {});
            if let Some(w) = slot.waiter {
                let _ = w.send(Err(Error::Closed));
            }
        }
    }

    /// Opens document `path`'s stream on the current connection: `sync.open`, then the start
    /// chunk with the document's state vector.
    async fn open_stream(&mut self, path: &str) -> Result<()> {
        let call = self.call_id("sync");
        let Some(slot) = self.docs.get_mut(path) else {
            return Ok(());
        };
        slot.call = Some(call.clone());
        slot.live = false;
        slot.sent = 0;
        let vector = {
            let sv = slot.shared.doc.transact().state_vector();
            if sv.is_empty() {
                Value::Null
            } else {
                json!(B64.encode(yrs::updates::encoder::Encode::encode_v1(&sv)))
            }
        };
        let o = &slot.options;
        let start = Content::Binary {
            headers: json!({
                "kind": "start", "path": path, "create": o.create, "vector": vector,
                "schema": o.schema, "schema_path": null, "initial_json": o.initial_json,
                "ack": true,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            data: Bytes::new(),
        };
        self.routes
            .insert(call.clone(), Route::Doc(path.to_string()));
        let header = invoke("sync", "open", &call, Some(Content::Control(Control::Open)));
        let id = self.send("room.invoke_tool", &header, b"").await?;
        self.answers.insert(id, Answer::Open(path.to_string()));
        self.chunk(&call, &start).await
    }

    /// Moves what the documents' observers collected into each document's unsent list.
    /// A change over the update limit is never sent (the server would close the connection
    /// for it, and again after every reconnect): it stays in this client's document, its
    /// readers are told, and it counts as settled for [`Document::durable`].
    fn take_local(&mut self) {
        let max = self.config.update_bytes_max;
        for slot in self.docs.values_mut() {
            let taken = match slot.shared.pending.lock() {
                Ok(mut p) => std::mem::take(&mut *p),
                Err(_) => continue,
            };
            for (n, update) in taken {
                if update.len() <= max {
                    slot.unsent.push((n, update));
                    continue;
                }
                let _ = slot.shared.events.send(DocEvent::Refused {
                    message: format!(
                        "a change of {} bytes is over the update limit of {max} bytes: it was not sent",
                        update.len()
                    ),
                });
                if let Some(last) = slot.unsent.last_mut() {
                    last.0 = n;
                } else if let Some(last) = slot.inflight.back_mut() {
                    last.1 = n;
                } else {
                    slot.shared.durable.send_if_modified(|d| {
                        let moved = n > *d;
                        *d = (*d).max(n);
                        moved
                    });
                }
            }
            if slot.unsent.len() > UNSENT_MERGE {
                merge_unsent(&mut slot.unsent);
            }
        }
    }

    /// Sends each live document's local updates.
    async fn flush_local(&mut self) -> Result<()> {
        self.take_local();
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        for slot in self.docs.values_mut() {
            let Some(call) = slot.call.clone().filter(|_| slot.live) else {
                continue;
            };
            if slot.unsent.len() > 1 {
                merge_unsent(&mut slot.unsent);
            }
            for (n, update) in slot.unsent.drain(..) {
                slot.sent += 1;
                out.push((call.clone(), B64.encode(&update).into_bytes()));
                slot.inflight.push_back((slot.sent, n, update));
            }
        }
        for (call, b64) in out {
            let header = json!({"tool_call_id": call, "chunk": {"type": "binary", "headers": {"kind": "sync"}}});
            self.send("room.tool_call_request_chunk", &header, &b64)
                .await?;
        }
        Ok(())
    }

    async fn incoming(&mut self, id: u64, kind: &str, p: Payload) -> Result<()> {
        match kind {
            "__response__" => self.answer(id, &p).await,
            "room.tool_call_response_chunk" => self.response_chunk(&p).await,
            "messaging.send" => {
                self.messaging_push(p);
                Ok(())
            }
            k if k.starts_with("room.tool_call.") => {
                self.hosted_call(id, &k["room.tool_call.".len()..], p).await
            }
            k if k.starts_with("room.tool_call_request_chunk.") => {
                self.hosted_input(&p);
                Ok(())
            }
            other => {
                tracing::debug!(kind = other, "message ignored");
                Ok(())
            }
        }
    }

    async fn answer(&mut self, id: u64, p: &Payload) -> Result<()> {
        let Some(a) = self.answers.remove(&id) else {
            return Ok(());
        };
        let content = content_of(p);
        match a {
            Answer::Reply(r) => {
                let _ = r.send(content.and_then(answer_result));
            }
            Answer::Stream(call, r) => {
                let content = content.and_then(answer_result);
                let streamed = matches!(content, Ok(Content::Control(Control::Open)));
                if !streamed {
                    self.routes.remove(&call);
                }
                let _ = r.send(content);
            }
            Answer::Open(path) => {
                if let Err(e) = content.and_then(answer_result) {
                    self.open_failed(&path, e);
                }
            }
            Answer::Register(n, reply) => match content.and_then(answer_result) {
                Ok(Content::Json(v)) => {
                    let rid = v["id"]
                        .as_str()
                        .map(str::to_string)
                        .or_else(|| v["id"].as_u64().map(|i| i.to_string()));
                    if let Some(h) = self.hosted.get_mut(&n) {
                        h.id = rid;
                    }
                    if let Some(r) = reply {
                        let _ = r.send(Ok(n));
                    }
                }
                Ok(other) => {
                    self.hosted.remove(&n);
                    if let Some(r) = reply {
                        let _ = r.send(Err(Error::Protocol(format!(
                            "register_toolkit answered {other:?}"
                        ))));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registering a toolkit failed");
                    self.hosted.remove(&n);
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                }
            },
            Answer::Ignore => {}
        }
        Ok(())
    }

    /// A document that could not be opened: its opener is told, or, on a reopen, its
    /// readers.
    fn open_failed(&mut self, path: &str, e: Error) {
        let Some(slot) = self.docs.get_mut(path) else {
            return;
        };
        if let Some(w) = slot.waiter.take() {
            if let Some(call) = slot.call.take() {
                self.routes.remove(&call);
            }
            self.docs.remove(path);
            let _ = w.send(Err(e));
        } else {
            let _ = slot.shared.events.send(DocEvent::Refused {
                message: e.to_string(),
            });
        }
    }

    async fn response_chunk(&mut self, p: &Payload) -> Result<()> {
        let call = str_of(&p.header, "tool_call_id");
        let chunk = match p.header.get("chunk") {
            Some(Value::Object(c)) => Content::from_parts(c, p.trailer.clone())
                .map_err(|e| Error::Protocol(e.to_string()))?,
            _ => return Err(Error::Protocol("a chunk without content".into())),
        };
        let path = match self.routes.get(&call) {
            None => return Ok(()),
            Some(Route::Chunks(tx)) => {
                let closes = matches!(chunk, Content::Control(Control::Close { .. }));
                let full = tx.try_send(Ok(chunk)).is_err();
                if closes || full {
                    // A reader that falls behind loses its stream rather than have the
                    // connection hold what it does not read.
                    if full {
                        let _ = tx.try_send(Err(Error::Lagged(1)));
                    }
                    self.routes.remove(&call);
                    if full && !closes {
                        self.close_input(&call).await?;
                    }
                }
                return Ok(());
            }
            Some(Route::Doc(path)) => path.clone(),
        };
        let authors: Option<Vec<String>> = p.header.get("participants").and_then(|v| {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
        });
        match chunk {
            Content::Binary { headers, data } => {
                let kind = headers.get("kind").and_then(Value::as_str).unwrap_or("");
                match kind {
                    "state" => self.doc_state(&path, &data).await,
                    "sync" => {
                        let author = match authors {
                            Some(a) if !a.is_empty() => Author::Participants(a),
                            _ => Author::Server,
                        };
                        self.apply_remote(&path, &data, author);
                        Ok(())
                    }
                    "ack" => {
                        let n = headers.get("updates").and_then(Value::as_u64).unwrap_or(0);
                        self.acked(&path, n);
                        Ok(())
                    }
                    other => {
                        tracing::debug!(kind = other, "document chunk ignored");
                        Ok(())
                    }
                }
            }
            Content::Error { text, code } => {
                let e = Error::Remote { code, text };
                let opening = self.docs.get(&path).is_some_and(|s| s.waiter.is_some());
                if opening {
                    self.open_failed(&path, e);
                } else if let Some(slot) = self.docs.get(&path) {
                    let _ = slot.shared.events.send(DocEvent::Refused {
                        message: e.to_string(),
                    });
                }
                Ok(())
            }
            Content::Control(Control::Close { .. }) => {
                // The server ended the stream: opened again, as after a reconnect.
                self.routes.remove(&call);
                if self.docs.get(&path).is_some_and(|s| s.waiter.is_none()) {
                    self.open_stream(&path).await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The document's state arrived on its stream: applied, and what the room lacks sent.
    async fn doc_state(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.apply_remote(path, data, Author::Server);
        let doc = {
            let Some(slot) = self.docs.get_mut(path) else {
                return Ok(());
            };
            slot.live = true;
            // Whatever was sent on a lost stream and never acknowledged goes again, merged
            // with what waits to be sent: the room has the rest.
            let mut again: Vec<(u64, Vec<u8>)> =
                slot.inflight.drain(..).map(|(_, n, u)| (n, u)).collect();
            again.append(&mut slot.unsent);
            slot.unsent = again;
            let reopened = slot.waiter.is_none();
            if reopened {
                let _ = slot.shared.events.send(DocEvent::Resynced);
            }
            slot.waiter.take().map(|w| (w, slot.shared.clone()))
        };
        if let Some((w, shared)) = doc {
            let doc = self.sender.upgrade().map(|cmds| Document { shared, cmds });
            let _ = w.send(doc.ok_or(Error::Closed));
        }
        self.flush_local().await
    }

    /// Applies an update from the room (base64 of a v1 update) to the document.
    fn apply_remote(&mut self, path: &str, data: &[u8], author: Author) {
        let Some(slot) = self.docs.get(path) else {
            return;
        };
        let update = match B64.decode(data) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(path, error = %e, "an update that is not base64");
                return;
            }
        };
        let decoded = match Update::decode_v1(&update) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(path, error = %e, "an update that does not decode");
                return;
            }
        };
        {
            let mut txn = slot.shared.doc.transact_mut_with(REMOTE);
            if let Err(e) = txn.apply_update(decoded) {
                tracing::warn!(path, error = %e, "an update that does not apply");
                return;
            }
        }
        if update.len() > 2 || author != Author::Server {
            let _ = slot.shared.events.send(DocEvent::Changed(Change {
                update: Bytes::from(update),
                author,
            }));
        }
    }

    /// The first `n` updates of the document's current stream are durable.
    fn acked(&mut self, path: &str, n: u64) {
        let Some(slot) = self.docs.get_mut(path) else {
            return;
        };
        let mut covered = None;
        while slot.inflight.front().is_some_and(|(k, _, _)| *k <= n) {
            covered = slot.inflight.pop_front().map(|(_, c, _)| c);
        }
        if let Some(c) = covered {
            slot.shared.durable.send_if_modified(|d| {
                let moved = c > *d;
                *d = (*d).max(c);
                moved
            });
        }
    }

    fn messaging_push(&mut self, p: Payload) {
        let from = str_of(&p.header, "from_participant_id");
        let kind = str_of(&p.header, "type");
        let message = p.header.get("message").cloned().unwrap_or(Value::Null);
        let event = match kind.as_str() {
            "messaging.enabled" => {
                let list: Vec<Participant> = message["participants"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Participant::from_json).collect())
                    .unwrap_or_default();
                if let Ok(mut ps) = self.shared.participants.lock() {
                    ps.clear();
                    ps.extend(list.iter().map(|p| (p.id.clone(), p.clone())));
                }
                MessagingEvent::Enabled { participants: list }
            }
            "participant.enabled" => {
                let Some(who) = Participant::from_json(&message) else {
                    return;
                };
                if let Ok(mut ps) = self.shared.participants.lock() {
                    ps.insert(who.id.clone(), who.clone());
                }
                MessagingEvent::Joined(who)
            }
            "participant.disabled" => {
                let id = message["id"].as_str().unwrap_or("").to_string();
                if let Ok(mut ps) = self.shared.participants.lock() {
                    ps.remove(&id);
                }
                MessagingEvent::Left { id }
            }
            "participant.attributes" => {
                let attributes = message["attributes"].clone();
                if let Ok(mut ps) = self.shared.participants.lock() {
                    if let Some(p) = ps.get_mut(&from) {
                        p.attributes = attributes.clone();
                    }
                }
                MessagingEvent::Attributes {
                    id: from,
                    attributes,
                }
            }
            _ => MessagingEvent::Message {
                from,
                kind,
                message,
                attachment: p.trailer,
            },
        };
        let _ = self.shared.messages.send(event);
    }

    /// A call of one of the tools this client hosts: run in a task of its own, answered under
    /// the call's message id.
    async fn hosted_call(&mut self, id: u64, toolkit: &str, p: Payload) -> Result<()> {
        let h = &p.header;
        let tool_name = str_of(h, "name");
        let arguments = match h.get("arguments") {
            Some(Value::Object(a)) => Content::from_parts(a, p.trailer.clone()),
            _ => Ok(Content::Empty),
        };
        let tool = self
            .hosted
            .values()
            .find(|t| t.toolkit.name == toolkit)
            .and_then(|t| t.toolkit.tools.get(&tool_name))
            .map(|t| t.handler.clone());
        let (Some(handler), Ok(arguments)) = (tool, arguments) else {
            let content = Content::error(
                ErrorCode::NotFound,
                format!("no tool {tool_name} in toolkit {toolkit}"),
            );
            return self
                .send_as(id, "room.tool_call_response", &content.encode())
                .await;
        };
        // No handle left: the client is going away, and the call goes unanswered.
        let Some(sender) = self.sender.upgrade() else {
            return Ok(());
        };
        let session = self.session;
        let tool_call_id = str_of(h, "tool_call_id");
        let streamed_input = matches!(arguments, Content::Control(Control::Open));
        let call = ToolCall {
            tool: tool_name,
            tool_call_id: tool_call_id.clone(),
            arguments,
            caller_id: h
                .get("caller_id")
                .and_then(Value::as_str)
                .map(str::to_string),
            on_behalf_of_id: h
                .get("on_behalf_of_id")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        match handler {
            Handler::Plain(handler) => {
                tokio::spawn(async move {
                    let content = handler(call).await.unwrap_or_else(error_content);
                    let _ = sender
                        .send(Cmd::Respond {
                            session,
                            id,
                            content,
                        })
                        .await;
                });
            }
            Handler::Streaming(handler) => {
                let input = streamed_input.then(|| {
                    let (tx, rx) = mpsc::channel(CHUNKS_IN);
                    self.inputs.insert(tool_call_id.clone(), tx);
                    rx
                });
                let stream = ToolStream {
                    input,
                    out: sender.clone(),
                    session,
                    id,
                    tool_call_id: tool_call_id.clone(),
                };
                tokio::spawn(async move {
                    let open = Cmd::Respond {
                        session,
                        id,
                        content: Content::Control(Control::Open),
                    };
                    if sender.send(open).await.is_err() {
                        return;
                    }
                    let chunk = |content| Cmd::RespondChunk {
                        session,
                        id,
                        tool_call_id: tool_call_id.clone(),
                        content,
                    };
                    if let Err(e) = handler(call, stream).await {
                        let _ = sender.send(chunk(error_content(e))).await;
                    }
                    let close = Content::Control(Control::Close {
                        status_code: Some(1000),
                        message: None,
                    });
                    let _ = sender.send(chunk(close)).await;
                });
            }
        }
        Ok(())
    }

    /// A chunk of a streamed input to one of this client's tools: to its handler. An input
    /// its handler does not keep up with is ended.
    fn hosted_input(&mut self, p: &Payload) {
        let call = str_of(&p.header, "tool_call_id");
        let chunk = match p.header.get("chunk") {
            Some(Value::Object(c)) => Content::from_parts(c, p.trailer.clone()),
            _ => return,
        };
        let Some(tx) = self.inputs.get(&call) else {
            return;
        };
        let Ok(chunk) = chunk else {
            self.inputs.remove(&call);
            return;
        };
        let closes = matches!(chunk, Content::Control(Control::Close { .. }));
        if tx.try_send(chunk).is_err() || closes {
            self.inputs.remove(&call);
        }
    }
}

/// A tool's failure as the `error` content it is answered with.
fn error_content(e: crate::tools::ToolError) -> Content {
    Content::Error {
        text: e.message,
        code: e.code.map(|c| c as i64),
    }
}

/// Merges runs of a document's unsent updates into single updates of at most
/// [`MERGE_BYTES_MAX`] each (what a merged update covers is its last part's count), so that
/// fewer chunks travel and none grows past what the server accepts.
fn merge_unsent(unsent: &mut Vec<(u64, Vec<u8>)>) {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::with_capacity(1);
    let mut run: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut run_bytes = 0;
    let flush = |run: &mut Vec<(u64, Vec<u8>)>, out: &mut Vec<(u64, Vec<u8>)>| match run.len() {
        0 => {}
        1 => out.append(run),
        _ => {
            let last = run.last().map(|(n, _)| *n).unwrap_or(0);
            let parts: Vec<&[u8]> = run.iter().map(|(_, u)| u.as_slice()).collect();
            match yrs::merge_updates_v1(parts) {
                Ok(merged) => {
                    out.push((last, merged));
                    run.clear();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "merging local updates failed; sending them apart");
                    out.append(run);
                }
            }
        }
    };
    for (n, u) in unsent.drain(..) {
        if run_bytes + u.len() > MERGE_BYTES_MAX && !run.is_empty() {
            flush(&mut run, &mut out);
            run_bytes = 0;
        }
        run_bytes += u.len();
        run.push((n, u));
    }
    flush(&mut run, &mut out);
    *unsent = out;
}

/// A `room.invoke_tool` header.
pub(crate) fn invoke(toolkit: &str, tool: &str, call: &str, input: Option<Content>) -> Value {
    let arguments = input
        .map(|c| c.to_parts().0)
        .unwrap_or(json!({"type": "json", "json": {}}));
    json!({
        "toolkit": toolkit, "tool": tool, "tool_call_id": call, "arguments": arguments,
        "participant_id": null, "on_behalf_of_id": null,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use yrs::{GetString, Text};

    fn edits(n: usize, size: usize) -> (yrs::Doc, Vec<(u64, Vec<u8>)>) {
        let doc = yrs::Doc::with_client_id(1);
        let text = doc.get_or_insert_text("t");
        let mut out = Vec::new();
        for i in 0..n {
            let mut txn = doc.transact_mut();
            let at = text.len(&txn);
            text.insert(&mut txn, at, &"x".repeat(size));
            out.push((i as u64 + 1, txn.encode_update_v1()));
        }
        (doc, out)
    }

    fn applied(updates: &[(u64, Vec<u8>)]) -> String {
        let doc = yrs::Doc::with_client_id(2);
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        for (_, u) in updates {
            txn.apply_update(Update::decode_v1(u).unwrap()).unwrap();
        }
        text.get_string(&txn)
    }

    #[test]
    fn small_updates_merge_into_one_covering_the_last() {
        let (doc, mut unsent) = edits(10, 3);
        merge_unsent(&mut unsent);
        assert_eq!(unsent.len(), 1);
        assert_eq!(unsent[0].0, 10);
        let want = doc.get_or_insert_text("t").get_string(&doc.transact());
        assert_eq!(applied(&unsent), want);
    }

    #[test]
    fn merged_updates_stay_under_the_bound() {
        let (doc, mut unsent) = edits(20, 64 * 1024);
        merge_unsent(&mut unsent);
        assert!(unsent.len() > 1, "{}", unsent.len());
        assert!(unsent.iter().all(|(_, u)| u.len() <= MERGE_BYTES_MAX));
        let counts: Vec<u64> = unsent.iter().map(|(n, _)| *n).collect();
        assert!(counts.windows(2).all(|w| w[0] < w[1]) && counts.last() == Some(&20));
        let want = doc.get_or_insert_text("t").get_string(&doc.transact());
        assert_eq!(applied(&unsent), want);
        // One update larger than the bound is kept as it is.
        let (_, mut big) = edits(1, MERGE_BYTES_MAX + 1);
        merge_unsent(&mut big);
        assert_eq!(big.len(), 1);
    }

    #[test]
    fn the_room_url_is_the_sdks() {
        let c = Config::new("ws://127.0.0.1:8787/", "demo", None);
        assert_eq!(c.room_url(), "ws://127.0.0.1:8787/rooms/demo");
    }
}
