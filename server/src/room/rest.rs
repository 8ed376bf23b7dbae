//! What the REST API asks of a room: its session and participants, its documents read, written
//! and deleted, and the room deleted. Every request goes through the room task like a
//! connection's frames, so a document written over REST is the same document editors hold.

use std::sync::Arc;

use bytes::Bytes;
use roomd_sync::{CloseCode, ConnId};
use tokio::sync::oneshot;

use super::{DocState, Room};
use crate::events::{EventKind, EventParticipant};
use crate::store::{now_ms, WriteSeq};

/// How a document is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocFormat {
    /// As JSON, each root type by name.
    Json,
    /// As a v1 update: the whole state, or what the holder of this state vector lacks.
    Update(Option<Vec<u8>>),
}

/// A document as read.
#[derive(Debug, Clone, PartialEq)]
pub enum DocRead {
    /// JSON.
    Json(serde_json::Value),
    /// A v1 update.
    Update(Vec<u8>),
}

/// Why a room could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestError {
    /// The document does not exist.
    #[error("no such document")]
    NotFound,
    /// The request's bytes are invalid (an update or state vector that does not decode).
    #[error("{0}")]
    Invalid(String),
    /// The update is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The update is refused: the document is written by the server only, or the update
    /// breaks one of its rules.
    #[error("{0}")]
    Forbidden(String),
    /// A limit of the room is reached; try again later.
    #[error("{0}")]
    Unavailable(String),
    /// The server failed.
    #[error("the room could not complete the request")]
    Internal,
}

/// What is known of an active room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// The current session's id.
    pub session_id: String,
    /// When it started, in ms since the epoch.
    pub started_ms: u64,
    /// Participants connected.
    pub participants: usize,
    /// Connections open.
    pub connections: usize,
    /// Its work queues' counts.
    pub queues: Vec<roomd_room_apis::queue::QueueStats>,
}

/// A request for a room task.
#[derive(Debug)]
pub enum RestCmd {
    /// The current session.
    Info {
        /// With the counts of the room's work queues (loading them if need be).
        queues: bool,
        /// The answer.
        reply: oneshot::Sender<RoomInfo>,
    },
    /// Who is connected.
    Participants {
        /// The answer.
        reply: oneshot::Sender<Vec<serde_json::Value>>,
    },
    /// Read a document.
    ReadDoc {
        /// Its name.
        doc: Arc<str>,
        /// How.
        format: DocFormat,
        /// The answer.
        reply: oneshot::Sender<Result<DocRead, RestError>>,
    },
    /// Apply an update to a document (creating it if need be).
    WriteDoc {
        /// Its name.
        doc: Arc<str>,
        /// A v1 update.
        update: Bytes,
        /// Who writes, for the event log.
        who: EventParticipant,
        /// Who writes, to the document's rules.
        principal: roomd_sync::Principal,
        /// Whether it changed the document, and the write to wait for before answering.
        reply: oneshot::Sender<Result<Option<WriteSeq>, RestError>>,
    },
    /// A call of the `threads` toolkit (the caller's access checked).
    Thread {
        /// The tool.
        tool: String,
        /// Its JSON arguments.
        args: serde_json::Map<String, serde_json::Value>,
        /// Who calls.
        principal: roomd_sync::Principal,
        /// The answer, and the write to wait for before giving it.
        reply: oneshot::Sender<
            Result<(serde_json::Value, Option<WriteSeq>), super::threads::ThreadError>,
        >,
    },
    /// Delete a document.
    DeleteDoc {
        /// Its name.
        doc: Arc<str>,
        /// Who deletes, for the event log.
        who: EventParticipant,
        /// The write to wait for before answering.
        reply: oneshot::Sender<Result<WriteSeq, RestError>>,
    },
    /// Delete the room: close its connections, remove its data, and end.
    Delete {
        /// The write to wait for before answering.
        reply: oneshot::Sender<Result<WriteSeq, RestError>>,
    },
}

fn from_close(code: CloseCode, reason: String) -> RestError {
    match code {
        CloseCode::TooLarge => RestError::TooLarge(reason),
        CloseCode::Forbidden => RestError::Forbidden(reason),
        CloseCode::Internal => RestError::Internal,
        _ => RestError::Invalid(reason),
    }
}

impl Room {
    pub(super) async fn rest(&mut self, cmd: RestCmd) {
        match cmd {
            RestCmd::Info { queues, reply } => {
                let queues = if queues {
                    self.queue_stats().await
                } else {
                    Vec::new()
                };
                let _ = reply.send(RoomInfo {
                    session_id: self.session.id().to_string(),
                    started_ms: self.session.started_ms(),
                    participants: self.participants.len(),
                    // Sockets, not the document streams a room-protocol socket holds.
                    connections: self
                        .outboxes
                        .keys()
                        .filter(|c| !super::proto::is_stream(**c))
                        .count(),
                    queues,
                });
            }
            RestCmd::Participants { reply } => {
                let _ = reply.send(self.participants_json());
            }
            RestCmd::ReadDoc { doc, format, reply } => {
                let _ = reply.send(self.read_doc(&doc, format).await);
            }
            RestCmd::WriteDoc {
                doc,
                update,
                who,
                principal,
                reply,
            } => {
                let _ = reply.send(self.write_doc(&doc, &update, &who, &principal).await);
            }
            RestCmd::Thread {
                tool,
                args,
                principal,
                reply,
            } => {
                let _ = reply.send(self.thread_call(&principal, &tool, &args).await);
            }
            RestCmd::DeleteDoc { doc, who, reply } => {
                let _ = reply.send(self.delete_doc(&doc, &who).await);
            }
            RestCmd::Delete { reply } => {
                let _ = reply.send(self.delete_room().await);
            }
        }
    }

    /// The document, loaded (waiting for it if a connection is loading it). `None` when it
    /// does not exist and `create` is false.
    pub(super) async fn doc_for_rest(
        &mut self,
        doc: &Arc<str>,
        create: bool,
    ) -> Result<Option<&mut DocState>, RestError> {
        if self.loading.contains_key(doc) {
            self.finish_loading().await;
        }
        if !self.docs.contains_key(doc) {
            if self.docs.len() >= self.ctx.config.limits.room_docs_max {
                self.evict_unused_docs().await;
            }
            if self.docs.len() >= self.ctx.config.limits.room_docs_max {
                return Err(RestError::Unavailable(
                    "too many documents open in this room".into(),
                ));
            }
            let state = self.load_doc(doc).await.map_err(|e| {
                tracing::error!(room = %self.name, %doc, error = %e, "loading document failed");
                RestError::Internal
            })?;
            if state.new && !create {
                return Ok(None);
            }
            self.docs.insert(doc.clone(), state);
            self.ctx.metrics.docs_loaded.inc();
            self.queue_doc_attach(doc).await;
        }
        Ok(self.docs.get_mut(doc))
    }

    async fn read_doc(&mut self, doc: &Arc<str>, format: DocFormat) -> Result<DocRead, RestError> {
        let d = self
            .doc_for_rest(doc, false)
            .await?
            .ok_or(RestError::NotFound)?;
        if d.new {
            return Err(RestError::NotFound);
        }
        let ydoc = d.session.doc();
        match format {
            DocFormat::Json => Ok(DocRead::Json(ydoc.to_json())),
            DocFormat::Update(sv) => {
                let sv = sv.unwrap_or_else(|| vec![0]);
                ydoc.diff(&sv)
                    .map(DocRead::Update)
                    .map_err(|e| RestError::Invalid(e.to_string()))
            }
        }
    }

    async fn write_doc(
        &mut self,
        doc: &Arc<str>,
        update: &[u8],
        who: &EventParticipant,
        principal: &roomd_sync::Principal,
    ) -> Result<Option<WriteSeq>, RestError> {
        let d = self
            .doc_for_rest(doc, true)
            .await?
            .ok_or(RestError::Internal)?;
        let mut out = Vec::new();
        let applied = d.session.apply_external(principal, update, &mut out);
        let changed = match applied {
            Ok(changed) => changed,
            Err((CloseCode::Forbidden, rule)) => {
                self.refused(doc, Some(who), Some(&rule));
                return Err(RestError::Forbidden(rule));
            }
            Err((code, reason)) => return Err(from_close(code, reason)),
        };
        let written = self.carry_out(doc, out);
        self.heal_if_poisoned(doc).await;
        if changed {
            self.queue_doc_intake(doc).await;
            self.ctx.emit(
                &self.key,
                EventKind::RestWrite,
                Some(who),
                serde_json::json!({ "document": &**doc, "bytes": update.len() }),
            );
        }
        Ok(written)
    }

    async fn delete_doc(
        &mut self,
        doc: &Arc<str>,
        who: &EventParticipant,
    ) -> Result<WriteSeq, RestError> {
        match self.doc_for_rest(doc, false).await? {
            None => return Err(RestError::NotFound),
            Some(d) if d.authored => {
                return Err(RestError::Forbidden(
                    "only the server writes this document".into(),
                ))
            }
            Some(d) if d.new && d.session.connections() == 0 => return Err(RestError::NotFound),
            Some(_) => {}
        }
        if let Some(mut d) = self.docs.remove(doc) {
            self.ctx.metrics.docs_loaded.dec();
            if let Some(h) = d.compaction.take() {
                let _ = h.await;
            }
            let mut out = Vec::new();
            for conn in d.session.conn_ids() {
                self.close_deleted(conn, "document deleted");
                d.session.close(conn, &mut out);
            }
        }
        let key = crate::store::DocKey::new(&self.key, doc);
        let store = self.ctx.store.clone();
        let write = tokio::task::spawn_blocking(move || store.delete_doc(&key))
            .await
            .map_err(|_| RestError::Internal)?
            .map_err(|_| RestError::Internal)?;
        if super::threads::is_thread(doc) {
            self.thread_deleted(doc);
        }
        self.ctx.emit(
            &self.key,
            EventKind::DocumentDeleted,
            Some(who),
            serde_json::json!({ "document": &**doc }),
        );
        Ok(write)
    }

    fn close_deleted(&mut self, conn: ConnId, reason: &str) {
        if let Some(outbox) = self.outboxes.remove(&conn) {
            outbox.close(CloseCode::Deleted, reason);
        }
        self.participant_left("", conn, None);
    }

    /// Deletes the room: its connections are closed with 4410, its documents dropped unsaved,
    /// everything stored for it removed; the task then ends, and the room's next use starts it
    /// afresh.
    async fn delete_room(&mut self) -> Result<WriteSeq, RestError> {
        self.finish_loading().await;
        let conns: Vec<ConnId> = self.outboxes.keys().copied().collect();
        for conn in conns {
            self.close_deleted(conn, "room deleted");
        }
        for (_, mut d) in self.docs.drain() {
            if let Some(h) = d.compaction.take() {
                let _ = h.await;
            }
            self.ctx.metrics.docs_loaded.dec();
        }
        self.forget_queues();
        self.end_session();
        self.session.mark_deleted();
        let (store, key) = (self.ctx.store.clone(), self.key.clone());
        let write = tokio::task::spawn_blocking(move || store.delete_room(&key))
            .await
            .map_err(|_| RestError::Internal)?
            .map_err(|_| RestError::Internal)?;
        self.ctx.events.reset(&self.key);
        tracing::info!(room = %self.name, at = now_ms(), "room deleted");
        Ok(write)
    }
}
