//! `roomd-client`: a Rust client for roomd's room protocol (the protocol of the MeshAgent
//! SDKs, `docs/room-protocol.md`), over one WebSocket per participant.
//!
//! - **Documents** are yrs [`Doc`](yrs::Doc)s kept in sync both ways
//!   ([`RoomClient::open`]), with a stream of changes saying who made each
//!   ([`Document::changes`]) and a future that resolves once everything written is durable on
//!   the server ([`Document::durable`], roomd's acknowledgement extension).
//! - **Presence and messaging** ([`RoomClient::enable_messaging`], [`RoomClient::send_message`],
//!   [`RoomClient::broadcast`], [`RoomClient::participants`]).
//! - **Tools**: host a toolkit with typed handlers ([`RoomClient::host`]) and call other
//!   participants' tools ([`RoomClient::invoke`], [`RoomClient::call`]).
//! - **Developer logs** ([`RoomClient::log`], [`RoomClient::logs`]).
//! - **Threads** ([`RoomClient::post_message`], [`RoomClient::open_thread`]) and **work
//!   queues** ([`RoomClient::queue`]: send, receive, and leases acknowledged or handed back).
//!
//! The connection is made again with exponential backoff whenever it is lost: documents are
//! opened again from their state vectors (the server sends only what the client lacks) and
//! the client sends what it changed meanwhile, and was not acknowledged, so edits made
//! offline merge on reconnect. Toolkits are registered again and messaging enabled again.
//!
//! ```no_run
//! use roomd_client::{Config, RoomClient};
//! use yrs::{Text, Transact};
//!
//! # async fn example() -> Result<(), roomd_client::Error> {
//! // MESHAGENT_ROOM_URL=ws://127.0.0.1:8787 MESHAGENT_ROOM=demo MESHAGENT_TOKEN=…
//! let client = RoomClient::connect(Config::from_env()?).await?;
//! let doc = client.open("notes/plan.doc").await?;
//! let mut changes = doc.changes();
//! doc.doc()
//!     .get_or_insert_text("text")
//!     .push(&mut doc.doc().transact_mut(), "hello from Rust");
//! doc.durable().await?;
//! while let Some(event) = changes.next().await {
//!     println!("{:?}", event?);
//! }
//! # Ok(()) }
//! ```

mod document;
mod driver;
mod error;
mod queues;
mod threads;
mod tools;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};

pub use document::{Author, Change, Changes, DocEvent, Document, CHANGES_BUFFER};
pub use error::{Error, Result};
pub use queues::{Leased, Queue, QueueInfo, Returned};
pub use roomd_sync::room_protocol::{Content, Control, ErrorCode};
pub use threads::{Message, NewMessages, Page, Posted, Thread, ThreadEntry, NEW_MESSAGES_BUFFER};
pub use tools::{Tool, ToolCall, ToolError, ToolStream, Toolkit};

use driver::{Cmd, Driver, Shared};

/// Where to connect and how to reconnect.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's WebSocket base URL (`ws://HOST:PORT`); the client connects to
    /// `{url}/rooms/{room}`, as the SDKs do.
    pub url: String,
    /// The room.
    pub room: String,
    /// The participant token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// The first wait before reconnecting; each failed attempt doubles it.
    pub backoff_initial: Duration,
    /// The longest wait between attempts.
    pub backoff_max: Duration,
    /// How long connecting and the handshake may take.
    pub handshake_timeout: Duration,
    /// The largest change the client sends, in bytes of its v1 update: the server's update
    /// limit (`--message-bytes-max`, 8 MiB by default). A larger change stays local and its
    /// document's readers get [`DocEvent::Refused`].
    pub update_bytes_max: usize,
    /// How long the server may send nothing (roomd pings every keep-alive interval, 15 s by
    /// default) before the connection is taken for lost and made again: a network that drops
    /// packets without closing the connection is noticed.
    pub silence_timeout: Duration,
}

impl Config {
    /// A configuration for `room` at `url` (`ws://HOST:PORT`) with `token`.
    pub fn new(url: impl Into<String>, room: impl Into<String>, token: Option<String>) -> Config {
        Config {
            url: url.into(),
            room: room.into(),
            token,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(30),
            update_bytes_max: 8 << 20,
            silence_timeout: Duration::from_secs(45),
        }
    }

    /// The configuration the MeshAgent SDKs read from the environment: `MESHAGENT_ROOM_URL`
    /// (`ws://HOST:PORT`), `MESHAGENT_ROOM` and `MESHAGENT_TOKEN`.
    pub fn from_env() -> Result<Config> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| Error::Config(format!("{name} is not set")))
        };
        Ok(Config::new(
            var("MESHAGENT_ROOM_URL")?,
            var("MESHAGENT_ROOM")?,
            std::env::var("MESHAGENT_TOKEN").ok(),
        ))
    }

    /// The URL the client connects to.
    pub fn room_url(&self) -> String {
        format!("{}/rooms/{}", self.url.trim_end_matches('/'), self.room)
    }
}

/// The state of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Connecting (again).
    Connecting,
    /// Connected, as this participant of this session of the room.
    Connected {
        /// The participant's id.
        participant_id: String,
        /// The room's session.
        session_id: String,
    },
    /// The connection was lost; the client will try again.
    Disconnected {
        /// Why it was lost, or why the last attempt failed.
        error: String,
    },
    /// The server refused the token for good (`403`, `404`, `423`); the client does not
    /// try again.
    Refused {
        /// The refusal.
        error: String,
    },
    /// The client was closed.
    Closed,
}

/// How to open a document.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Its path in the room.
    pub path: String,
    /// Create it if it does not exist (else opening it is `NOT_FOUND`).
    pub create: bool,
    /// A MeshSchema for it, in the SDK's JSON form (else the server's choice for its path).
    pub schema: Option<Value>,
    /// Document-JSON to fill it with if it holds nothing yet.
    pub initial_json: Option<Value>,
}

impl OpenOptions {
    /// Options that open, creating if needed, the document at `path`.
    pub fn new(path: impl Into<String>) -> OpenOptions {
        OpenOptions {
            path: path.into().trim_start_matches('/').to_string(),
            create: true,
            schema: None,
            initial_json: None,
        }
    }
}

/// A participant with messaging enabled.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Its id.
    pub id: String,
    /// Its role (`user`, `agent`, …).
    pub role: String,
    /// Its attributes (`name` among them).
    pub attributes: Value,
}

impl Participant {
    fn from_json(v: &Value) -> Option<Participant> {
        Some(Participant {
            id: v["id"].as_str()?.to_string(),
            role: v["role"].as_str().unwrap_or("").to_string(),
            attributes: v["attributes"].clone(),
        })
    }

    /// Its name, from its attributes.
    pub fn name(&self) -> Option<&str> {
        self.attributes["name"].as_str()
    }
}

/// What messaging delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum MessagingEvent {
    /// A message from another participant.
    Message {
        /// The sender's participant id.
        from: String,
        /// The message's type.
        kind: String,
        /// The message.
        message: Value,
        /// Its attachment (empty if none).
        attachment: Bytes,
    },
    /// Messaging is enabled: these are the others with messaging enabled.
    Enabled {
        /// The participants.
        participants: Vec<Participant>,
    },
    /// A participant enabled messaging.
    Joined(Participant),
    /// A participant left, or disabled messaging.
    Left {
        /// Its id.
        id: String,
    },
    /// A participant's attributes changed.
    Attributes {
        /// Its id.
        id: String,
        /// Its attributes now.
        attributes: Value,
    },
}

/// How many messaging events wait for a slow reader before it misses some.
pub const MESSAGES_BUFFER: usize = 1024;
/// How many chunks of a streamed answer wait for a slow reader before the stream is ended.
pub const CHUNKS_BUFFER: usize = 1024;

/// Messaging events ([`RoomClient::enable_messaging`]).
#[derive(Debug)]
pub struct Messages {
    rx: broadcast::Receiver<MessagingEvent>,
}

impl Messages {
    /// The next event; `Err(Error::Lagged(n))` once if the reader fell more than
    /// [`MESSAGES_BUFFER`] events behind; `None` once the client is closed.
    pub async fn next(&mut self) -> Option<Result<MessagingEvent>> {
        match self.rx.recv().await {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some(Err(Error::Lagged(n))),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// The chunks of a streamed answer ([`RoomClient::invoke_stream`]).
#[derive(Debug)]
pub struct Chunks {
    rx: mpsc::Receiver<Result<Content>>,
    call: String,
    input_open: bool,
    cmds: mpsc::Sender<Cmd>,
}

impl Chunks {
    /// The next chunk (the closing `control` chunk included); `None` after it. A reader more
    /// than [`CHUNKS_BUFFER`] chunks behind gets `Err(Error::Lagged)` and the stream ends;
    /// a lost connection ends it with `Err(Error::Disconnected)`.
    pub async fn next(&mut self) -> Option<Result<Content>> {
        self.rx.recv().await
    }

    /// Sends a chunk of the call's input stream (opened by `Content::Control(Control::Open)`
    /// as its input).
    pub async fn send_input(&self, chunk: Content) -> Result<()> {
        if !self.input_open {
            return Err(Error::Protocol("the call's input is not a stream".into()));
        }
        self.cmds
            .send(Cmd::InputChunk(self.call.clone(), chunk))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Closes the call's input stream (dropping the [`Chunks`] does too).
    pub async fn close_input(&mut self) -> Result<()> {
        if !std::mem::replace(&mut self.input_open, false) {
            return Ok(());
        }
        self.cmds
            .send(Cmd::EndInput(self.call.clone()))
            .await
            .map_err(|_| Error::Closed)
    }
}

impl Drop for Chunks {
    fn drop(&mut self) {
        if self.input_open {
            let _ = self.cmds.try_send(Cmd::EndInput(self.call.clone()));
        }
    }
}

/// An entry of the room's developer log ([`RoomClient::logs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its type: the `type` a participant logged, or the server's event type.
    pub kind: String,
    /// Its data.
    pub data: Value,
}

/// The room's developer log from the moment it was asked for ([`RoomClient::logs`]).
#[derive(Debug)]
pub struct Logs {
    chunks: Chunks,
}

impl Logs {
    /// The next entry; `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Result<LogEntry>> {
        loop {
            match self.chunks.next().await? {
                Err(e) => return Some(Err(e)),
                Ok(Content::Binary { headers, data }) => {
                    let kind = headers["type"].as_str().unwrap_or("").to_string();
                    let data = serde_json::from_slice(&data).unwrap_or(Value::Null);
                    return Some(Ok(LogEntry { kind, data }));
                }
                Ok(Content::Error { text, code }) => {
                    return Some(Err(Error::Remote { code, text }))
                }
                Ok(Content::Control(Control::Close { .. })) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// A toolkit this client hosts ([`RoomClient::host`]).
#[derive(Debug)]
pub struct HostedToolkit {
    n: u64,
    cmds: mpsc::Sender<Cmd>,
}

impl HostedToolkit {
    /// Unregisters the toolkit.
    pub async fn unregister(self) -> Result<()> {
        self.cmds
            .send(Cmd::Unhost(self.n))
            .await
            .map_err(|_| Error::Closed)
    }
}

/// A participant's connection to a room. Cheap to clone: clones share the connection, which
/// ends once the client, its clones and every handle it gave out (documents, hosted toolkits,
/// streams) are dropped, or when [`RoomClient::close`] is called.
#[derive(Debug, Clone)]
pub struct RoomClient {
    shared: Arc<Shared>,
    cmds: mpsc::Sender<Cmd>,
}

impl RoomClient {
    /// Connects and reads the handshake; fails if the first attempt fails (a refused token
    /// is [`Error::Refused`]). Later losses of the connection are repaired in the background.
    pub async fn connect(config: Config) -> Result<RoomClient> {
        let first = driver::connect(&config).await?;
        let status = Status::Connected {
            participant_id: first.participant_id.clone(),
            session_id: first.session_id.clone(),
        };
        let shared = Arc::new(Shared {
            status: watch::channel(status).0,
            notify: Arc::new(Notify::new()),
            messages: broadcast::channel(MESSAGES_BUFFER).0,
            participants: Mutex::new(BTreeMap::new()),
            name: Mutex::new(first.name.clone()),
        });
        let (tx, rx) = mpsc::channel(driver::COMMANDS);
        let d = Driver::new(config, shared.clone(), rx, tx.downgrade());
        tokio::spawn(d.run(first));
        Ok(RoomClient { shared, cmds: tx })
    }

    /// The connection's state, as it changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// This participant's name (its token's), as the server said when the client connected.
    pub fn name(&self) -> String {
        self.shared
            .name
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// This participant's id on the current connection.
    pub fn participant_id(&self) -> Option<String> {
        match &*self.shared.status.borrow() {
            Status::Connected { participant_id, .. } => Some(participant_id.clone()),
            _ => None,
        }
    }

    /// Resolves when the client is connected (again); fails if it is closed or refused.
    pub async fn connected(&self) -> Result<()> {
        let mut rx = self.status();
        loop {
            match &*rx.borrow_and_update() {
                Status::Connected { .. } => return Ok(()),
                Status::Closed => return Err(Error::Closed),
                Status::Refused { error } => return Err(Error::Connection(error.clone())),
                _ => {}
            }
            rx.changed().await.map_err(|_| Error::Closed)?;
        }
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<Result<T>>) -> Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(cmd(tx)).await.map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Opens (creating it if needed) the document at `path` and waits for its state.
    pub async fn open(&self, path: &str) -> Result<Document> {
        self.open_with(OpenOptions::new(path)).await
    }

    /// Opens a document with options.
    pub async fn open_with(&self, options: OpenOptions) -> Result<Document> {
        self.ask(|reply| Cmd::Open { options, reply }).await
    }

    /// Invokes `tool` of `toolkit` (a server toolkit or one a participant hosts) with `input`
    /// and returns its answer. An `error` answer is [`Error::Remote`]; a streamed answer is
    /// refused here (use [`RoomClient::invoke_stream`]).
    pub async fn invoke(&self, toolkit: &str, tool: &str, input: Content) -> Result<Content> {
        self.invoke_as_call(toolkit, tool, input, None).await
    }

    /// [`RoomClient::invoke`] of the toolkit that participant `participant_id` hosts (a
    /// private toolkit, or one of several hosts of the same name).
    pub async fn invoke_on(
        &self,
        participant_id: &str,
        toolkit: &str,
        tool: &str,
        input: Content,
    ) -> Result<Content> {
        self.invoke_as_call(toolkit, tool, input, Some(participant_id))
            .await
    }

    async fn invoke_as_call(
        &self,
        toolkit: &str,
        tool: &str,
        input: Content,
        participant_id: Option<&str>,
    ) -> Result<Content> {
        let (mut header, trailer) = call_header(toolkit, tool, &input);
        if let Some(p) = participant_id {
            header["participant_id"] = json!(p);
        }
        let answer = self
            .ask(|reply| Cmd::Request {
                kind: "room.invoke_tool",
                header,
                trailer,
                reply,
            })
            .await?;
        if matches!(answer, Content::Control(Control::Open)) {
            return Err(Error::Protocol(format!(
                "{toolkit}.{tool} answers with a stream; use invoke_stream"
            )));
        }
        Ok(answer)
    }

    /// Invokes a tool with JSON input `I` and reads its JSON answer as `O`.
    pub async fn call<I: Serialize, O: DeserializeOwned>(
        &self,
        toolkit: &str,
        tool: &str,
        input: &I,
    ) -> Result<O> {
        let input = Content::Json(serde_json::to_value(input)?);
        match self.invoke(toolkit, tool, input).await? {
            Content::Json(v) => Ok(serde_json::from_value(v)?),
            Content::Empty => Ok(serde_json::from_value(Value::Null)?),
            other => Err(Error::Protocol(format!(
                "expected a json answer, got {other:?}"
            ))),
        }
    }

    /// Invokes a tool whose answer may be a stream: a plain answer comes as the one chunk;
    /// a streamed one as its chunks, up to the closing `control` chunk. `Content::Control(
    /// Control::Open)` as `input` opens the call's input stream, closed when the returned
    /// [`Chunks`] is dropped.
    pub async fn invoke_stream(&self, toolkit: &str, tool: &str, input: Content) -> Result<Chunks> {
        let input_open = matches!(input, Content::Control(Control::Open));
        let (header, trailer) = call_header(toolkit, tool, &input);
        let call = header["tool_call_id"].as_str().unwrap_or("").to_string();
        let (tx, rx) = mpsc::channel(CHUNKS_BUFFER);
        let chunks_tx = tx.clone();
        let answer = self
            .ask(|reply| Cmd::Stream {
                header,
                trailer,
                input_open,
                chunks: chunks_tx,
                reply,
            })
            .await?;
        if !matches!(answer, Content::Control(Control::Open)) {
            let _ = tx.try_send(Ok(answer));
        }
        drop(tx);
        Ok(Chunks {
            rx,
            call,
            input_open,
            cmds: self.cmds.clone(),
        })
    }

    /// Hosts `toolkit`: other participants' calls of its tools run its handlers. It stays
    /// registered, across reconnects, until unregistered or the client closes.
    pub async fn host(&self, toolkit: Toolkit) -> Result<HostedToolkit> {
        let n = self.ask(|reply| Cmd::Host { toolkit, reply }).await?;
        Ok(HostedToolkit {
            n,
            cmds: self.cmds.clone(),
        })
    }

    /// The toolkits this participant may call: `{<name>: {title, description,
    /// participant_id, annotations, tools}}`.
    pub async fn list_toolkits(&self) -> Result<Value> {
        let answer = self
            .ask(|reply| Cmd::Request {
                kind: "room.list_toolkits",
                header: json!({}),
                trailer: Bytes::new(),
                reply,
            })
            .await?;
        match answer {
            Content::Json(v) => Ok(v["tools"].clone()),
            other => Err(Error::Protocol(format!("list_toolkits answered {other:?}"))),
        }
    }

    /// Enables messaging (and keeps it enabled across reconnects): this participant receives
    /// messages and presence, and the others see it. Returns the events from now on.
    pub async fn enable_messaging(&self) -> Result<Messages> {
        let rx = self.shared.messages.subscribe();
        self.ask(|reply| Cmd::Messaging {
            enable: true,
            reply,
        })
        .await?;
        Ok(Messages { rx })
    }

    /// Disables messaging.
    pub async fn disable_messaging(&self) -> Result<()> {
        self.ask(|reply| Cmd::Messaging {
            enable: false,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// The other participants with messaging enabled, as last heard.
    pub fn participants(&self) -> Vec<Participant> {
        self.shared
            .participants
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends a message to participant `to` (`NOT_FOUND` if it has no connection with
    /// messaging enabled).
    pub async fn send_message(
        &self,
        to: &str,
        kind: &str,
        message: Value,
        attachment: Option<&[u8]>,
    ) -> Result<()> {
        let mut args = messaging_args(kind, message, attachment);
        args["to_participant_id"] = json!(to);
        self.invoke("messaging", "send", Content::Json(args))
            .await
            .map(|_| ())
    }

    /// Sends a message to every other participant with messaging enabled.
    pub async fn broadcast(
        &self,
        kind: &str,
        message: Value,
        attachment: Option<&[u8]>,
    ) -> Result<()> {
        let args = messaging_args(kind, message, attachment);
        self.invoke("messaging", "broadcast", Content::Json(args))
            .await
            .map(|_| ())
    }

    /// Sets attributes of this participant (its `name` stays the token's).
    pub async fn set_attributes(&self, attributes: Value) -> Result<()> {
        self.cmds
            .send(Cmd::Notice {
                kind: "set_attributes",
                header: attributes,
            })
            .await
            .map_err(|_| Error::Closed)
    }

    /// Writes `data` to the room's developer log as an entry of type `kind`.
    pub async fn log(&self, kind: &str, data: Value) -> Result<()> {
        let args = json!({"type": kind, "data": data});
        self.invoke("developer", "log", Content::Json(args))
            .await
            .map(|_| ())
    }

    /// Writes an `info` entry to the developer log.
    pub async fn info(&self, message: &str, extra: Value) -> Result<()> {
        let args = json!({"message": message, "extra": extra});
        self.invoke("developer", "info", Content::Json(args))
            .await
            .map(|_| ())
    }

    /// The room's developer log from now on (participants' entries and the server's events).
    pub async fn logs(&self) -> Result<Logs> {
        let chunks = self
            .invoke_stream("developer", "logs", Content::Control(Control::Open))
            .await?;
        Ok(Logs { chunks })
    }

    /// Resolves once everything this client wrote to its open documents so far is durable.
    pub async fn durable(&self, docs: &[Document]) -> Result<()> {
        for d in docs {
            d.durable().await?;
        }
        Ok(())
    }

    /// Closes the connection. Clones of this client stop working.
    pub async fn close(&self) {
        let _ = self.cmds.send(Cmd::Shutdown).await;
        let mut rx = self.status();
        while *rx.borrow_and_update() != Status::Closed {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}

static NEXT_CALL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn call_header(toolkit: &str, tool: &str, input: &Content) -> (Value, Bytes) {
    let n = NEXT_CALL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let call = format!("call-{}-{n}", std::process::id());
    let (_, trailer) = input.to_parts();
    (
        driver::invoke(toolkit, tool, &call, Some(input.clone())),
        trailer,
    )
}

fn messaging_args(kind: &str, message: Value, attachment: Option<&[u8]>) -> Value {
    use base64::Engine as _;
    json!({
        "type": kind,
        "message_json": message.to_string(),
        "attachment_base64": attachment.map(|a| base64::engine::general_purpose::STANDARD.encode(a)),
    })
}
