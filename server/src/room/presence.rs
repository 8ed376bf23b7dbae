//! A room's session and its participants: the session record and its events, who is connected,
//! and `.room/participants`, the document that shows them to any client that can sync it.

use std::sync::Arc;

use roomd_room_apis::participants::{Change, Participant};
use roomd_sync::{CloseCode, ConnId, YjsDocSession};

use super::{build_doc, DocState, Room};
use crate::events::{EventKind, EventParticipant};
use crate::store::{now_ms, DocKey, SessionParticipant, SessionRecord};
use crate::ws::Joining;

/// The document the server keeps of who is in the room.
pub const PARTICIPANTS_DOC: &str = ".room/participants";
/// The Yjs map of [`PARTICIPANTS_DOC`]: participant id → participant.
const PARTICIPANTS_MAP: &str = "participants";
/// Participants a session record lists, at most; later ones are counted only.
const SESSION_PARTICIPANTS_MAX: usize = 1_000;
/// How long a change of participants may wait before `.room/participants` shows it.
pub const PRESENCE_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Participants changed since `.room/participants` last showed them, and when it is due to.
#[derive(Debug, Default)]
pub struct PendingPresence {
    dirty: std::collections::BTreeSet<String>,
    /// When the changes must be shown; `None` while nothing changed.
    pub due: Option<tokio::time::Instant>,
}

/// This activation of a room.
#[derive(Debug)]
pub struct Session {
    record: SessionRecord,
    deleted: bool,
}

impl Session {
    /// A session that starts now.
    pub fn new() -> Session {
        Session {
            record: SessionRecord {
                id: *uuid::Uuid::new_v4().as_bytes(),
                started_ms: now_ms(),
                ended_ms: None,
                interrupted: false,
                participants: Vec::new(),
                participants_omitted: 0,
            },
            deleted: false,
        }
    }

    /// The session's id.
    pub fn id(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.record.id)
    }

    /// When it started, in ms since the epoch.
    pub fn started_ms(&self) -> u64 {
        self.record.started_ms
    }

    /// True once it has ended.
    pub fn ended(&self) -> bool {
        self.record.ended_ms.is_some() || self.deleted
    }

    /// True when the room was deleted: nothing is to be written for it any more.
    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// Marks the room deleted.
    pub fn mark_deleted(&mut self) {
        self.deleted = true;
    }
}

fn record_len(r: &SessionRecord) -> usize {
    r.participants.len()
}

fn event_participant(p: &Participant) -> EventParticipant {
    EventParticipant {
        id: p.id.clone(),
        name: p.name.clone(),
    }
}

impl Room {
    /// Starts the session: records it (and closes any the process left unfinished), announces
    /// it, and loads `.room/participants`, emptied of whoever a crash left in it.
    pub(super) async fn begin_session(&mut self) {
        let store = self.ctx.store.clone();
        let (key, record) = (self.key.clone(), self.session.record.clone());
        let recorded = tokio::task::spawn_blocking(move || {
            store.touch_room(&key, record.started_ms)?;
            for mut old in store.sessions(&key)? {
                if old.ended_ms.is_none() {
                    old.ended_ms = Some(record.started_ms);
                    old.interrupted = true;
                    store.put_session(&key, &old)?;
                }
            }
            store.put_session(&key, &record)
        })
        .await;
        if !matches!(recorded, Ok(Ok(_))) {
            self.ctx.metrics.storage_errors_total.inc();
            tracing::error!(room = %self.name, "recording the session failed");
        }
        self.ctx.metrics.sessions_total.inc();
        self.ctx.emit(
            &self.key,
            EventKind::SessionStarted,
            None,
            serde_json::json!({ "session": self.session.id().to_string() }),
        );
        self.load_participants_doc().await;
    }

    async fn load_participants_doc(&mut self) {
        let key = DocKey::new(&self.key, PARTICIPANTS_DOC);
        let store = self.ctx.store.clone();
        let k = key.clone();
        let (limits, session_limits) = (self.doc_limits(), self.session_limits());
        let (room, name) = (self.name.clone(), PARTICIPANTS_DOC);
        // A fresh author id per load: an edit a crash lost never has its clock used again.
        let author = u32::from_le_bytes(crate::master_key::random_bytes());
        let loaded = tokio::task::spawn_blocking(move || {
            let stored = store.load(&k)?;
            let doc = build_doc(&stored, limits, &room, name).authored_by(author);
            Ok::<_, crate::store::StoreError>((stored, doc))
        })
        .await;
        let Ok(Ok((stored, mut ydoc))) = loaded else {
            self.ctx.metrics.storage_errors_total.inc();
            tracing::error!(room = %self.name, "loading .room/participants failed");
            return;
        };
        let cleared = ydoc.author_clear_map(PARTICIPANTS_MAP);
        let mut state = DocState {
            session: YjsDocSession::authored(ydoc, session_limits),
            key,
            next_seq: stored.next_seq,
            log_bytes: stored.log_bytes,
            compaction: None,
            new: stored.is_new(),
            authored: true,
            replica: None,
            queue_view: None,
        };
        let mut out = Vec::new();
        if let Some(update) = cleared {
            state.session.publish(update, &mut out);
        }
        let doc: Arc<str> = PARTICIPANTS_DOC.into();
        self.docs.insert(doc.clone(), state);
        self.ctx.metrics.docs_loaded.inc();
        self.carry_out(&doc, out);
    }

    /// Marks participant `id` as changed: `.room/participants` shows it as it is (or no longer)
    /// at the next [`Room::publish_presence`], at most [`PRESENCE_DELAY`] from now.
    pub(super) fn publish_participant(&mut self, id: &str) {
        self.presence.dirty.insert(id.to_string());
        self.presence
            .due
            .get_or_insert_with(|| tokio::time::Instant::now() + PRESENCE_DELAY);
    }

    /// Writes every participant changed since the last time into `.room/participants`, in one
    /// edit: a connection storm costs one update per interval, not one per join and leave, and a
    /// participant that came and went meanwhile costs nothing.
    pub(super) fn publish_presence(&mut self) {
        self.presence.due = None;
        if self.presence.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.presence.dirty);
        let shown: Vec<(String, Option<serde_json::Value>)> = dirty
            .into_iter()
            .map(|id| {
                let value = self.participants.get(&id).map(Participant::to_shown_json);
                (id, value)
            })
            .collect();
        let doc: Arc<str> = PARTICIPANTS_DOC.into();
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let changes: Vec<(&str, Option<&serde_json::Value>)> = shown
            .iter()
            .map(|(id, value)| (id.as_str(), value.as_ref()))
            .collect();
        let Some(update) = d.session.doc_mut().author_map(PARTICIPANTS_MAP, &changes) else {
            return;
        };
        let mut out = Vec::new();
        d.session.publish(update, &mut out);
        self.carry_out(&doc, out);
    }

    /// Adds connection `conn` to its participant (before the document joins it); returns the
    /// participant's number for the document session.
    pub(super) fn participants_connect(&mut self, joining: &Joining, conn: ConnId) -> u64 {
        self.participants
            .connect(&joining.who, conn.0, &joining.doc, now_ms(), || {
                uuid::Uuid::new_v4().to_string()
            });
        self.participants.of_conn(conn.0).map_or(0, |p| p.number)
    }

    /// The connection joined its document: its participant is shown, and, if it is new,
    /// announced and recorded in the session.
    pub(super) fn participant_joined(&mut self, conn: ConnId) {
        let Some(p) = self.participants.of_conn(conn.0) else {
            return;
        };
        let (id, first) = (p.id.clone(), p.connections.len() == 1);
        self.publish_participant(&id);
        if !first {
            return;
        }
        let Some(p) = self.participants.of_conn(conn.0).cloned() else {
            return;
        };
        self.ctx.metrics.participants.inc();
        self.ctx.emit(
            &self.key,
            EventKind::ParticipantJoined,
            Some(&event_participant(&p)),
            serde_json::json!({
                "role": p.role.as_str(),
                "attributes": p.attributes,
            }),
        );
        let record = &mut self.session.record;
        if record.participants.len() < SESSION_PARTICIPANTS_MAX {
            record.participants.push(SessionParticipant {
                id: p.id.clone(),
                name: p.name.clone(),
                role: p.role.as_str().into(),
                joined_ms: p.since_ms,
                left_ms: None,
            });
            self.save_session_participant(record_len(&self.session.record) - 1);
        } else {
            record.participants_omitted += 1;
            self.save_session();
        }
    }

    /// A connection left, closed by the server with `closed` if it was: its participant is
    /// updated, or leaves with its last connection.
    pub(super) fn participant_left(
        &mut self,
        doc: &str,
        conn: ConnId,
        closed: Option<&(CloseCode, String)>,
    ) {
        let who = self.event_participant(conn);
        if let Some((code, reason)) = closed {
            let kind = match code {
                CloseCode::TooSlow => Some(EventKind::SlowReaderClosed),
                CloseCode::ProtocolError | CloseCode::TooLarge | CloseCode::RateLimited => {
                    Some(EventKind::ProtocolError)
                }
                _ => None,
            };
            if let Some(kind) = kind {
                self.ctx.emit(
                    &self.key,
                    kind,
                    who.as_ref(),
                    serde_json::json!({
                        "document": doc,
                        "code": code.code(),
                        "reason": reason,
                    }),
                );
            }
        }
        match self.participants.disconnect(conn.0) {
            Some(Change::Updated(id)) => self.publish_participant(&id),
            Some(Change::Left(p)) => {
                self.publish_participant(&p.id);
                self.ctx.metrics.participants.dec();
                self.ctx.emit(
                    &self.key,
                    EventKind::ParticipantLeft,
                    Some(&event_participant(&p)),
                    serde_json::json!({}),
                );
                let now = now_ms();
                let participants = &mut self.session.record.participants;
                if let Some(i) = participants.iter().rposition(|s| s.id == p.id) {
                    participants[i].left_ms = Some(now);
                    self.save_session_participant(i);
                }
            }
            _ => {}
        }
    }

    /// The participant of `conn`, as events name it.
    pub(super) fn event_participant(&self, conn: ConnId) -> Option<EventParticipant> {
        self.participants.of_conn(conn.0).map(event_participant)
    }

    /// The participants, as REST shows them.
    pub(super) fn participants_json(&self) -> Vec<serde_json::Value> {
        self.participants
            .all()
            .into_iter()
            .map(Participant::to_json)
            .collect()
    }

    fn save_session(&self) {
        if self.session.deleted {
            return;
        }
        if let Err(e) = self.ctx.store.put_session(&self.key, &self.session.record) {
            self.ctx.metrics.storage_errors_total.inc();
            tracing::error!(room = %self.name, error = %e, "recording the session failed");
        }
    }

    fn save_session_participant(&self, index: usize) {
        let record = &self.session.record;
        let (Some(p), Ok(i)) = (record.participants.get(index), u32::try_from(index)) else {
            return;
        };
        if self.session.deleted {
            return;
        }
        if let Err(e) = self
            .ctx
            .store
            .put_session_participant(&self.key, record, i, p)
        {
            self.ctx.metrics.storage_errors_total.inc();
            tracing::error!(room = %self.name, error = %e, "recording a participant failed");
        }
    }

    /// Ends the session: whoever is still connected leaves it, and it is recorded and announced.
    pub(super) fn end_session(&mut self) {
        if self.session.ended() {
            return;
        }
        self.publish_presence();
        let now = now_ms();
        let staying: Vec<usize> = (0..self.session.record.participants.len())
            .filter(|&i| self.session.record.participants[i].left_ms.is_none())
            .collect();
        for i in staying {
            self.session.record.participants[i].left_ms = Some(now);
            self.save_session_participant(i);
        }
        let left = self.participants.len() as i64;
        self.ctx.metrics.participants.dec_by(left);
        self.session.record.ended_ms = Some(now);
        self.save_session();
        self.ctx.emit(
            &self.key,
            EventKind::SessionEnded,
            None,
            serde_json::json!({ "session": self.session.id().to_string() }),
        );
    }
}
