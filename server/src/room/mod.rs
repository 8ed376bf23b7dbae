//! One task per active room: it owns the room's documents, its session and its participants,
//! and is reached only through a bounded channel of [`RoomCmd`]s.

mod presence;
mod proto;
mod queue_docs;
mod queues;
mod rest;
pub(crate) mod threads;

pub use queue_docs::queue_of_doc;
pub use queues::{stats_json as queue_stats_json, stored_stats as stored_queue_stats};
pub use rest::{DocFormat, DocRead, RestCmd, RestError};

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use roomd_crdt::{DocLimits, YDoc};
use roomd_room_apis::participants::Participants;
use roomd_sync::{
    CloseCode, ConnId, Message, MessageLimits, Output, Peer, SessionLimits, SyncMessage,
    YjsDocSession,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::events::{EventKind, EventParticipant};
use crate::outbox::{Outbox, PushError};
use crate::registry::Rooms;
use crate::store::{DocKey, RoomKey, StoreError, StoredDoc, WriteSeq};
use crate::ws::Joining;
use crate::AppCtx;

/// Commands a room task takes from its inbox at once, at most.
const INBOX_BATCH_MAX: usize = 256;

/// A command for a room task.
#[derive(Debug)]
pub enum RoomCmd {
    /// A connection wants to sync a document; the reply says whether it may.
    Join {
        /// The document, and who the connection is.
        joining: Arc<Joining>,
        /// The connection.
        conn: ConnId,
        /// Where the room queues frames for it.
        outbox: Outbox,
        /// The answer.
        reply: oneshot::Sender<Result<(), JoinError>>,
    },
    /// A binary frame from a joined connection.
    Frame {
        /// Document name.
        doc: Arc<str>,
        /// The sender.
        conn: ConnId,
        /// The frame as received.
        frame: Bytes,
    },
    /// A connection has gone.
    Leave {
        /// Document name.
        doc: Arc<str>,
        /// The connection.
        conn: ConnId,
        /// The code and reason the server closed it with, if it did.
        closed: Option<(CloseCode, String)>,
    },
    /// A whole message from a room-protocol connection.
    Message {
        /// The connection.
        conn: ConnId,
        /// The message (boxed: commands are small, and most are frames).
        message: Box<roomd_sync::room_protocol::RawMessage>,
    },
    /// Acknowledge the first `n` updates of a room-protocol document stream once durable
    /// (queued behind them while their document loads).
    Ack {
        /// The stream.
        stream: ConnId,
        /// Its updates acknowledged.
        n: u64,
    },
    /// A request of the REST API.
    Rest(RestCmd),
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room task is unloading; join a fresh one.
    #[error("room is unloading")]
    Unloading,
    /// A limit is reached, or the room cannot serve now.
    #[error("{1}")]
    Refused(CloseCode, String),
}

struct DocState {
    session: YjsDocSession,
    key: DocKey,
    next_seq: u64,
    log_bytes: usize,
    compaction: Option<JoinHandle<()>>,
    /// Nothing was ever stored for the document: its first append creates it.
    new: bool,
    /// The server writes the document itself (`.room/participants`): it stays loaded.
    authored: bool,
    /// The replica the server makes edits on participants' behalf on (a thread's toolkit
    /// calls), kept from the first such edit while the document is loaded.
    replica: Option<roomd_crdt::Replica>,
    /// For a queue's document (`.queues/<name>`), where its items are, once attached.
    queue_view: Option<roomd_crdt::queue_doc::QueueDoc>,
}

/// Sleeps until `due`, or for ever when there is nothing due: a timer of the run loop.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A document being integrated on a blocking thread. Its connections have joined already: a
/// newcomer's step 1 with an empty state vector is answered from the stored snapshot at once,
/// and everything else waits here, in order, until the document is ready.
struct Loading {
    /// The stored snapshot, when it is the whole document (nothing logged after it).
    snapshot: Option<Bytes>,
    /// Connections that joined while it loads, in order, with who they are.
    joined: Vec<(ConnId, Peer)>,
    /// Frames and leaves that arrived while it loads, in order.
    queued: Vec<RoomCmd>,
}

/// A room task's state.
pub struct Room {
    key: RoomKey,
    /// The room's name, for logs.
    name: Arc<str>,
    generation: u64,
    ctx: Arc<AppCtx>,
    rooms: Arc<Rooms>,
    docs: HashMap<Arc<str>, DocState>,
    loading: HashMap<Arc<str>, Loading>,
    /// Documents integrated by their blocking task, ready to serve. The channel holds at most
    /// one message per document loading, so at most `room_docs_max`.
    /// `None` when building it failed.
    loaded_tx: mpsc::Sender<(Arc<str>, Option<DocState>)>,
    loaded_rx: mpsc::Receiver<(Arc<str>, Option<DocState>)>,
    outboxes: HashMap<ConnId, Outbox>,
    /// This activation of the room.
    session: presence::Session,
    /// Who is connected.
    participants: Participants,
    /// Changes of participants not shown yet.
    presence: presence::PendingPresence,
    /// Room-protocol connections and the documents they opened.
    sockets: proto::Sockets,
    /// Threads changed since their indexes last showed them.
    threads: threads::ThreadIndex,
    /// The room's work queues and the receivers parked on them.
    queues: queues::RoomQueues,
    /// The queues' documents that are loaded, and what they are yet to show.
    queue_docs: queue_docs::QueueDocs,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("name", &self.name)
            .field("docs", &self.docs.len())
            .field("loading", &self.loading.len())
            .field("conns", &self.outboxes.len())
            .finish()
    }
}

impl Drop for Room {
    /// However the room task ends, even by a panic, no connection is left waiting on it.
    fn drop(&mut self) {
        for outbox in self.outboxes.values() {
            outbox.close(CloseCode::TryAgain, "room unavailable");
        }
    }
}

impl Room {
    /// A room with nothing loaded yet.
    pub fn new(key: RoomKey, generation: u64, ctx: Arc<AppCtx>, rooms: Arc<Rooms>) -> Room {
        let (loaded_tx, loaded_rx) = mpsc::channel(ctx.config.limits.room_docs_max.max(1));
        Room {
            name: key.name().into(),
            key,
            generation,
            ctx,
            rooms,
            docs: HashMap::new(),
            loading: HashMap::new(),
            loaded_tx,
            loaded_rx,
            outboxes: HashMap::new(),
            session: presence::Session::new(),
            participants: Participants::default(),
            presence: presence::PendingPresence::default(),
            sockets: proto::Sockets::default(),
            threads: threads::ThreadIndex::default(),
            queues: queues::RoomQueues::default(),
            queue_docs: queue_docs::QueueDocs::default(),
        }
    }

    fn doc_limits(&self) -> DocLimits {
        DocLimits {
            update_bytes_max: self.ctx.config.limits.message_bytes_max,
            doc_bytes_max: self.ctx.config.limits.doc_bytes_max,
        }
    }

    fn session_limits(&self) -> SessionLimits {
        let l = &self.ctx.config.limits;
        SessionLimits {
            message: MessageLimits {
                payload_bytes_max: l.message_bytes_max,
            },
            conns_max: l.doc_connections_max,
            awareness_states_per_conn_max: l.awareness_states_per_conn_max,
        }
    }

    /// Runs the room until it unloads (idle) or the server shuts down.
    pub async fn run(mut self, mut rx: mpsc::Receiver<RoomCmd>) {
        self.ctx.metrics.rooms_active.inc();
        tracing::debug!(room = %self.name, "room loaded");
        self.begin_session().await;
        let idle_timeout = self.ctx.config.room_idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        // One timer for every connection of the room: on each tick a connection checks that
        // its peer was heard since the last one, and pings it.
        let period = self.ctx.config.keepalive_interval;
        let mut keepalive = tokio::time::interval_at(Instant::now() + period, period);
        // Followed only while acknowledgements are owed.
        let mut durable = self.ctx.durable_watch();
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let no_conns = self.outboxes.is_empty();
            let presence = sleep_until_due(self.presence.due);
            let index = sleep_until_due(self.threads.due);
            let calls = sleep_until_due(self.next_call_deadline());
            let queue_docs = sleep_until_due(self.queue_docs.due);
            let queue_timer = sleep_until_due(self.next_queue_timer());
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    for outbox in self.outboxes.values() {
                        outbox.close(CloseCode::GoingAway, "server shutting down");
                    }
                    break;
                }
                _ = keepalive.tick() => {
                    for outbox in self.outboxes.values() {
                        outbox.ping();
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    // Whatever else is already queued is handled with it, so that a busy
                    // document forwards one merged update per batch.
                    let mut batch = vec![cmd];
                    while batch.len() < INBOX_BATCH_MAX {
                        match rx.try_recv() {
                            Ok(cmd) => batch.push(cmd),
                            Err(_) => break,
                        }
                    }
                    self.handle_batch(batch).await;
                    if self.session.deleted() {
                        self.leave_registry(&mut rx).await;
                        break;
                    }
                    if self.outboxes.is_empty() && !no_conns {
                        idle.as_mut().reset(Instant::now() + idle_timeout);
                    }
                }
                Some((doc, state)) = self.loaded_rx.recv() => {
                    self.install(doc, state).await;
                }
                () = presence => self.publish_presence(),
                () = index => self.flush_thread_index().await,
                () = calls => self.expire_calls(),
                () = queue_timer => self.queue_timer(),
                () = queue_docs => self.flush_queue_docs(),
                changed = durable.changed(), if self.acks_owed() => {
                    if changed.is_ok() {
                        let seq = *durable.borrow_and_update();
                        self.send_acks(seq);
                    }
                }
                _ = &mut idle, if no_conns => {
                    // Fold and flush everything while still registered, then leave the
                    // registry and turn away joins that raced with the unload.
                    self.end_session();
                    self.persist_all().await;
                    self.leave_registry(&mut rx).await;
                    break;
                }
            }
        }
        if !self.session.ended() {
            self.end_session();
        }
        if !self.session.deleted() {
            self.persist_all().await;
        }
        self.unload_queues();
        self.rooms.remove(&self.key, self.generation);
        self.ctx.events.release(&self.key);
        let docs = self.docs.len() as i64;
        self.ctx.metrics.docs_loaded.dec_by(docs);
        self.ctx.metrics.rooms_active.dec();
        tracing::debug!(room = %self.name, "room unloaded");
    }

    /// Leaves the registry, then turns away what raced with it: joins are told to join a fresh
    /// room, and requests dropped unanswered are retried on one.
    async fn leave_registry(&mut self, rx: &mut mpsc::Receiver<RoomCmd>) {
        self.rooms.remove(&self.key, self.generation);
        rx.close();
        while let Some(cmd) = rx.recv().await {
            if let RoomCmd::Join { reply, .. } = cmd {
                let _ = reply.send(Err(JoinError::Unloading));
            }
        }
    }

    /// Handles commands in order; consecutive frames for one document go to its session
    /// together.
    async fn handle_batch(&mut self, batch: Vec<RoomCmd>) {
        let mut frames: Vec<(ConnId, Bytes)> = Vec::new();
        let mut frames_doc: Option<Arc<str>> = None;
        for cmd in batch {
            match cmd {
                RoomCmd::Frame { doc, conn, frame }
                    if frames_doc.as_ref().is_none_or(|d| *d == doc) =>
                {
                    frames_doc = Some(doc);
                    frames.push((conn, frame));
                }
                cmd => {
                    if let Some(doc) = frames_doc.take() {
                        self.receive_frames(&doc, &frames).await;
                        frames.clear();
                    }
                    if let RoomCmd::Frame { doc, conn, frame } = cmd {
                        frames_doc = Some(doc);
                        frames.push((conn, frame));
                    } else {
                        self.handle(cmd).await;
                    }
                }
            }
        }
        if let Some(doc) = frames_doc {
            self.receive_frames(&doc, &frames).await;
        }
    }

    async fn receive_frames(&mut self, doc: &Arc<str>, frames: &[(ConnId, Bytes)]) {
        if self.loading.contains_key(doc) {
            for (conn, frame) in frames {
                self.defer_frame(doc, *conn, frame.clone());
            }
            return;
        }
        let mut out = Vec::new();
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let started = std::time::Instant::now();
        match frames {
            [(conn, frame)] => d.session.receive(*conn, frame, &mut out),
            _ => d.session.receive_many(frames, &mut out),
        }
        self.ctx
            .metrics
            .update_apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let changed = out.iter().any(|o| matches!(o, Output::Append { .. }));
        self.carry_out(doc, out);
        self.heal_if_poisoned(doc).await;
        if changed {
            self.queue_doc_intake(doc).await;
        }
    }

    async fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join {
                joining,
                conn,
                outbox,
                reply,
            } => {
                let result = if joining.doc.is_empty() {
                    self.join_socket(&joining, conn, outbox)
                } else {
                    self.join_participant(&joining, conn, outbox).await
                };
                let _ = reply.send(result);
            }
            RoomCmd::Ack { stream, n } => self.owe_ack(stream, n),
            RoomCmd::Message { conn, message } => {
                let limits = crate::room_socket::wire_limits(&self.ctx.config.limits);
                Box::pin(self.socket_message(conn, *message, limits)).await;
            }
            RoomCmd::Frame { doc, conn, frame } => {
                self.receive_frames(&doc, &[(conn, frame)]).await;
            }
            RoomCmd::Leave { doc, conn, closed } if doc.is_empty() => {
                self.leave_socket(conn, closed.as_ref());
            }
            RoomCmd::Leave { doc, conn, closed } => {
                if self.outboxes.remove(&conn).is_some() || closed.is_some() {
                    self.participant_left(&doc, conn, closed.as_ref());
                }
                if let Some(l) = self.loading.get_mut(&doc) {
                    // Its frames queued before it wait for the document, and so does its leave.
                    l.queued.push(RoomCmd::Leave {
                        doc,
                        conn,
                        closed: None,
                    });
                    return;
                }
                let mut out = Vec::new();
                if let Some(d) = self.docs.get_mut(&doc) {
                    d.session.close(conn, &mut out);
                }
                self.carry_out(&doc, out);
            }
            // Boxed: a request may wait for a document that loads, whose queued frames are
            // handled then, so the futures would otherwise contain each other.
            RoomCmd::Rest(cmd) => Box::pin(self.rest(cmd)).await,
        }
    }

    /// Joins `conn` to a document: the document first (it may refuse), then the participant.
    async fn join_participant(
        &mut self,
        joining: &Arc<Joining>,
        conn: ConnId,
        outbox: Outbox,
    ) -> Result<(), JoinError> {
        let number = self.participants_connect(joining, conn);
        let peer = Peer {
            participant: number,
            read_only: joining.read_only,
            principal: joining.principal.clone(),
        };
        match self.join(joining.doc.clone(), conn, peer, outbox).await {
            Ok(()) => {
                self.participant_joined(conn);
                Ok(())
            }
            Err(e) => {
                self.participants.disconnect(conn.0);
                Err(e)
            }
        }
    }

    async fn join(
        &mut self,
        doc: Arc<str>,
        conn: ConnId,
        peer: Peer,
        outbox: Outbox,
    ) -> Result<(), JoinError> {
        if let Some(l) = self.loading.get_mut(&doc) {
            l.joined.push((conn, peer));
            self.outboxes.insert(conn, outbox);
            return Ok(());
        }
        if !self.docs.contains_key(&doc) {
            if self.docs.len() + self.loading.len() >= self.ctx.config.limits.room_docs_max {
                self.evict_unused_docs().await;
            }
            if self.docs.len() + self.loading.len() >= self.ctx.config.limits.room_docs_max {
                return Err(JoinError::Refused(
                    CloseCode::TryAgain,
                    "too many documents open in this room".into(),
                ));
            }
            self.start_loading(&doc).await.map_err(|e| {
                tracing::error!(room = %self.name, %doc, error = %e, "loading document failed");
                JoinError::Refused(CloseCode::Internal, "document could not be loaded".into())
            })?;
            if let Some(l) = self.loading.get_mut(&doc) {
                l.joined.push((conn, peer));
                self.outboxes.insert(conn, outbox);
            }
            return Ok(());
        }
        let mut out = Vec::new();
        let Some(d) = self.docs.get_mut(&doc) else {
            return Err(JoinError::Refused(
                CloseCode::Internal,
                "document vanished".into(),
            ));
        };
        d.session.open_as(conn, peer, &mut out).map_err(|code| {
            JoinError::Refused(code, "too many connections to this document".into())
        })?;
        self.outboxes.insert(conn, outbox);
        self.carry_out(&doc, out);
        Ok(())
    }

    /// Reads a document from storage, then integrates it on a blocking thread while the room
    /// goes on; [`Room::install`] takes it when it is ready.
    async fn start_loading(&mut self, doc: &Arc<str>) -> Result<(), StoreError> {
        let key = DocKey::new(&self.key, doc);
        let store = self.ctx.store.clone();
        let k = key.clone();
        let stored = tokio::task::spawn_blocking(move || store.load(&k))
            .await
            .map_err(|_| StoreError::Corrupt("load task failed".into()))??;
        let snapshot = match (&stored.snapshot, stored.log.is_empty()) {
            (Some(snapshot), true) => Some(snapshot.clone()),
            _ => None,
        };
        self.loading.insert(
            doc.clone(),
            Loading {
                snapshot,
                joined: Vec::new(),
                queued: Vec::new(),
            },
        );
        let build = self.doc_builder(doc);
        let (name, tx) = (doc.clone(), self.loaded_tx.clone());
        tokio::task::spawn_blocking(move || {
            // yrs runs behind catch_unwind inside; should anything else panic, the room must
            // still hear of it, or the document would stay loading for ever.
            let state =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build(key, &stored))).ok();
            // The channel has room for every document loading; a room that has gone no
            // longer wants it.
            let _ = tx.try_send((name, state));
        });
        Ok(())
    }

    /// A frame for a document still loading: a newcomer's empty step 1 is answered from the
    /// stored snapshot now; anything else waits for the document.
    fn defer_frame(&mut self, doc: &Arc<str>, conn: ConnId, frame: Bytes) {
        let queue_max = self.ctx.config.limits.room_inbox_messages_max;
        let message_limits = self.session_limits().message;
        let Some(l) = self.loading.get_mut(doc) else {
            return;
        };
        if let Some(snapshot) = &l.snapshot {
            let empty_step1 = matches!(
                roomd_sync::decode_frame(&frame, message_limits).as_deref(),
                Ok([Message::Sync(SyncMessage::Step1(sv))]) if *sv == [0]
            );
            if empty_step1 {
                let reply = Message::Sync(SyncMessage::Step2(snapshot)).to_vec();
                self.carry_out(
                    doc,
                    vec![Output::Send {
                        conn,
                        frame: reply.into(),
                    }],
                );
                return;
            }
        }
        if l.queued.len() >= queue_max {
            tracing::info!(room = %self.name, %doc, conn = conn.0, "too much sent while the document loads");
            if let Some(outbox) = self.outboxes.remove(&conn) {
                outbox.close(CloseCode::TryAgain, "document still loading: retry");
            }
            return;
        }
        l.queued.push(RoomCmd::Frame {
            doc: doc.clone(),
            conn,
            frame,
        });
    }

    /// Takes a document its blocking task has integrated: opens the connections that joined
    /// meanwhile, then handles what they sent, in order.
    async fn install(&mut self, doc: Arc<str>, state: Option<DocState>) {
        let Some(loading) = self.loading.remove(&doc) else {
            return;
        };
        let Some(state) = state else {
            tracing::error!(room = %self.name, %doc, "building the document failed; closing its connections");
            for (conn, _) in loading.joined {
                if let Some(outbox) = self.outboxes.remove(&conn) {
                    outbox.close(CloseCode::Internal, "document could not be loaded");
                }
            }
            return;
        };
        self.docs.insert(doc.clone(), state);
        self.ctx.metrics.docs_loaded.inc();
        for (conn, peer) in loading.joined {
            if !self.outboxes.contains_key(&conn) {
                // Gone (or closed) before the document was ready; its leave is queued.
                continue;
            }
            let mut out = Vec::new();
            let Some(d) = self.docs.get_mut(&doc) else {
                return;
            };
            if let Err(code) = d.session.open_as(conn, peer, &mut out) {
                if let Some(outbox) = self.outboxes.remove(&conn) {
                    outbox.close(code, "too many connections to this document");
                }
                continue;
            }
            self.carry_out(&doc, out);
        }
        self.queue_doc_attach(&doc).await;
        self.handle_batch(loading.queued).await;
    }

    /// Waits for every document still loading and installs it.
    async fn finish_loading(&mut self) {
        while !self.loading.is_empty() {
            match self.loaded_rx.recv().await {
                Some((doc, state)) => self.install(doc, state).await,
                None => break,
            }
        }
    }

    /// Reads and integrates a document, both on a blocking thread (used to rebuild one).
    async fn load_doc(&self, doc: &str) -> Result<DocState, StoreError> {
        let key = DocKey::new(&self.key, doc);
        let store = self.ctx.store.clone();
        let build = self.doc_builder(doc);
        tokio::task::spawn_blocking(move || {
            let stored = store.load(&key)?;
            Ok(build(key, &stored))
        })
        .await
        .map_err(|_| StoreError::Corrupt("load task failed".into()))?
    }

    /// What turns a stored document into a served one, to run on a blocking thread.
    fn doc_builder(&self, doc: &str) -> impl FnOnce(DocKey, &StoredDoc) -> DocState + Send {
        let started = std::time::Instant::now();
        let (limits, session_limits) = (self.doc_limits(), self.session_limits());
        let (room, name) = (self.name.clone(), Arc::<str>::from(doc));
        move |key, stored| {
            let ydoc = build_doc(stored, limits, &room, &name);
            tracing::debug!(
                room = %room,
                doc = %name,
                snapshot_bytes = stored.snapshot.as_ref().map_or(0, Bytes::len),
                log_updates = stored.log.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "document loaded"
            );
            // A directory's thread index is the server's to write; a thread has rules.
            let authored = threads::is_index(&name);
            let session = if authored {
                let author = u32::from_le_bytes(crate::master_key::random_bytes());
                YjsDocSession::authored(ydoc.authored_by(author), session_limits)
            } else if queue_docs::queue_of_doc(&name).is_some() {
                // A queue's document: the server writes its items; clients append sends.
                let rules = roomd_room_apis::rules::InboxRules::new(&ydoc.snapshot());
                let author = u32::from_le_bytes(crate::master_key::random_bytes());
                let ydoc = ydoc.authored_by(author);
                YjsDocSession::ruled(ydoc, session_limits, Box::new(rules))
            } else {
                match roomd_room_apis::rules::for_path(&name, || ydoc.snapshot()) {
                    Some(rules) => YjsDocSession::ruled(ydoc, session_limits, Box::new(rules)),
                    None => YjsDocSession::new(ydoc, session_limits),
                }
            };
            DocState {
                session,
                key,
                next_seq: stored.next_seq,
                log_bytes: stored.log_bytes,
                compaction: None,
                new: stored.is_new(),
                authored,
                replica: None,
                queue_view: None,
            }
        }
    }

    /// Carries out a session's outputs in order. A connection that cannot take a frame is
    /// closed as too slow, which may produce more outputs (its awareness removal). Returns the
    /// last storage write issued, if any: what is stored is durable once it is.
    fn carry_out(&mut self, doc: &Arc<str>, out: Vec<Output>) -> Option<WriteSeq> {
        let mut queue: VecDeque<Output> = out.into();
        let message_limits = self.session_limits().message;
        // The participants whose update the sends that follow carry.
        let mut authors: Option<String> = None;
        let mut compact = false;
        let mut written = None;
        let mut created = false;
        while let Some(output) = queue.pop_front() {
            match output {
                Output::Send { conn, frame } if proto::is_stream(conn) => {
                    // A document stream of a room-protocol connection: what the session says
                    // becomes the socket's messages, sent next.
                    let (socket, messages) =
                        self.sockets
                            .translate(conn, &frame, message_limits, authors.as_deref());
                    for frame in messages.into_iter().rev() {
                        queue.push_front(Output::Send {
                            conn: socket,
                            frame,
                        });
                    }
                }
                Output::Send { conn, frame } => {
                    let Some(outbox) = self.outboxes.get(&conn) else {
                        continue;
                    };
                    match outbox.push(frame) {
                        Ok(()) => {
                            self.ctx.metrics.frames_sent_total.inc();
                        }
                        Err(PushError::Full) => {
                            tracing::info!(room = %self.name, %doc, conn = conn.0, "closing slow reader");
                            outbox.close(
                                CloseCode::TooSlow,
                                "outbox full: read faster and reconnect",
                            );
                            self.outboxes.remove(&conn);
                            if let Some(d) = self.docs.get_mut(doc) {
                                let mut more = Vec::new();
                                d.session.close(conn, &mut more);
                                queue.extend(more);
                            }
                        }
                        Err(PushError::Gone) => {}
                    }
                }
                Output::Authors { first, more } => {
                    // Named in the chunks that carry their update, to room-protocol streams.
                    if self.sockets.has_streams() {
                        authors = Some(self.author_ids(first, &more));
                    }
                }
                Output::Append { update } => {
                    authors = None;
                    let Some(d) = self.docs.get_mut(doc) else {
                        continue;
                    };
                    let seq = d.next_seq;
                    d.next_seq += 1;
                    match self.ctx.store.append(&d.key, seq, &update) {
                        Ok(write) => {
                            self.ctx.metrics.updates_appended_total.inc();
                            d.log_bytes += update.len();
                            compact |= d.log_bytes >= self.ctx.config.compact_log_bytes;
                            written = Some(write);
                            // Only documents clients write are announced as created.
                            created |= std::mem::take(&mut d.new) && !d.authored;
                        }
                        Err(e) => {
                            self.ctx.metrics.storage_errors_total.inc();
                            tracing::error!(room = %self.name, %doc, error = %e, "append failed");
                        }
                    }
                }
                Output::Refused { conn, rule } => {
                    let who = self.event_participant(self.sockets.owner(conn));
                    self.refused(doc, who.as_ref(), rule.as_deref());
                }
                Output::Spoofed { conn, entries } => {
                    self.ctx
                        .metrics
                        .awareness_spoofed_total
                        .inc_by(entries as u64);
                    tracing::info!(room = %self.name, %doc, conn = conn.0, entries, "awareness for another participant's client ids dropped");
                }
                Output::Disconnect { conn, code, reason } => {
                    tracing::info!(room = %self.name, %doc, conn = conn.0, code = code.code(), %reason, "closing connection");
                    if let Some(outbox) = self.outboxes.remove(&conn) {
                        outbox.close(code, reason);
                    }
                }
            }
        }
        if compact {
            if let Some(d) = self.docs.get_mut(doc) {
                start_compaction(&self.ctx, d);
            }
        }
        if written.is_some() && threads::is_thread(doc) {
            self.thread_touched(doc, created);
        }
        if created {
            self.ctx.emit(
                &self.key,
                EventKind::DocumentCreated,
                None,
                serde_json::json!({ "document": &**doc }),
            );
        }
        written
    }

    /// Counts, logs and records as an event an update refused because its sender may only read
    /// the document (`rule` is `None`) or because it breaks `rule`.
    fn refused(&self, doc: &str, who: Option<&EventParticipant>, rule: Option<&str>) {
        self.ctx.metrics.updates_refused_total.inc();
        let name = who.map_or("", |w| w.name.as_str());
        match rule {
            None => {
                tracing::info!(room = %self.name, %doc, participant = name, "update refused: the participant may only read this document");
            }
            Some(rule) => {
                tracing::info!(room = %self.name, %doc, participant = name, rule, "update refused: it breaks a rule of the document");
            }
        }
        let mut data = serde_json::json!({ "document": doc });
        if let Some(rule) = rule {
            data["rule"] = rule.into();
        }
        self.ctx
            .emit(&self.key, EventKind::UpdateRefused, who, data);
    }

    /// Rebuilds a document from storage after yrs panicked inside it. Storage holds every
    /// accepted update, so nothing is lost; the offending connection is already closed.
    async fn heal_if_poisoned(&mut self, doc: &Arc<str>) {
        if !self
            .docs
            .get(doc)
            .is_some_and(|d| d.session.doc().is_poisoned())
        {
            return;
        }
        tracing::error!(room = %self.name, %doc, "document poisoned by a panic; reloading from storage");
        if let Some(d) = self.docs.get_mut(doc) {
            if let Some(h) = d.compaction.take() {
                let _ = h.await;
            }
        }
        match self.load_doc(doc).await {
            Ok(fresh) => {
                if let Some(d) = self.docs.get_mut(doc) {
                    d.session.replace_doc(fresh.session.into_doc());
                    // A queue's view points into the document replaced: attached again.
                    d.queue_view = None;
                }
                Box::pin(self.queue_doc_attach(doc)).await;
            }
            Err(e) => {
                tracing::error!(room = %self.name, %doc, error = %e, "reload failed; closing the document");
                if let Some(d) = self.docs.remove(doc) {
                    self.ctx.metrics.docs_loaded.dec();
                    drop(d);
                }
            }
        }
    }

    async fn evict_unused_docs(&mut self) {
        let unused: Vec<Arc<str>> = self
            .docs
            .iter()
            // `.room/participants` stays for the room's life; the thread indexes load again.
            .filter(|(name, d)| {
                d.session.connections() == 0 && &***name != presence::PARTICIPANTS_DOC
            })
            .map(|(k, _)| k.clone())
            .collect();
        for name in unused {
            if let Some(mut d) = self.docs.remove(&name) {
                persist_doc(&self.ctx, &mut d).await;
                self.ctx.metrics.docs_loaded.dec();
                self.queue_doc_unloaded(&name);
            }
        }
    }

    /// Folds every document's log into its snapshot and flushes the store.
    async fn persist_all(&mut self) {
        self.finish_loading().await;
        for d in self.docs.values_mut() {
            persist_doc(&self.ctx, d).await;
        }
        let store = self.ctx.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(durable)) => self.ctx.durable_to(durable),
            Ok(Err(e)) => tracing::error!(room = %self.name, error = %e, "flush failed"),
            Err(e) => tracing::error!(room = %self.name, error = %e, "flush task failed"),
        }
    }
}

/// Rebuilds a document from its stored snapshot and log.
fn build_doc(stored: &StoredDoc, limits: DocLimits, room: &str, doc: &str) -> YDoc {
    let mut ydoc = match (&stored.snapshot, stored.log.is_empty()) {
        // The common case after a restart or an unload: one snapshot, nothing after it.
        (Some(snapshot), true) => YDoc::from_snapshot(limits, snapshot).unwrap_or_else(|e| {
            tracing::error!(room, doc, error = %e, "stored snapshot not applied");
            YDoc::new(limits)
        }),
        _ => {
            // Everything stored was accepted once: load it whole, then enforce the limits.
            let mut ydoc = YDoc::new(DocLimits::LOADING);
            let parts = stored.snapshot.iter().chain(stored.log.iter());
            for (i, update) in parts.enumerate() {
                if let Err(e) = ydoc.apply_update(update) {
                    // Stored updates were accepted once, and load without limits: this means
                    // storage was damaged. Serve what can be served and say so.
                    tracing::error!(room, doc, part = i, error = %e, "stored update not applied");
                }
            }
            ydoc.set_limits(limits);
            ydoc
        }
    };
    let snapshot_bytes = stored.snapshot.as_ref().map_or(0, Bytes::len);
    ydoc.rebase_size(snapshot_bytes + stored.log_bytes);
    ydoc
}

/// Starts folding the document's log into a snapshot in the background, unless a previous
/// compaction of the same document is still running (two must never overlap: the older one
/// could overwrite the newer snapshot).
fn start_compaction(ctx: &Arc<AppCtx>, d: &mut DocState) {
    if d.compaction.as_ref().is_some_and(|h| !h.is_finished()) {
        return;
    }
    if d.log_bytes == 0 || d.next_seq == 0 {
        return;
    }
    let snapshot = d.session.doc().snapshot();
    d.session.doc_mut().rebase_size(snapshot.len());
    let covered = d.next_seq - 1;
    d.log_bytes = 0;
    let tracker = ctx.tracker.clone();
    let (ctx, key) = (ctx.clone(), d.key.clone());
    // Tracked: a compaction still writing when the server shuts down is waited for, so that the
    // store is never dropped (and sled never flushed on drop) with a write in flight.
    d.compaction = Some(tracker.spawn_blocking(move || {
        if let Err(e) = YDoc::check_update(&snapshot) {
            tracing::error!(error = %e, "refusing to write a snapshot that does not decode");
            return;
        }
        match ctx.store.compact(&key, &snapshot, covered) {
            Ok(()) => {
                ctx.metrics.compactions_total.inc();
            }
            Err(e) => {
                ctx.metrics.storage_errors_total.inc();
                tracing::error!(error = %e, "compaction failed");
            }
        }
    }));
}

/// Waits for a running compaction, then folds whatever log remains.
async fn persist_doc(ctx: &Arc<AppCtx>, d: &mut DocState) {
    if let Some(h) = d.compaction.take() {
        let _ = h.await;
    }
    start_compaction(ctx, d);
    if let Some(h) = d.compaction.take() {
        let _ = h.await;
    }
}
