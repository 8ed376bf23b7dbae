//! `YjsDocSession`: the state machine of one Yjs document and the connections syncing it.
//!
//! The server feeds it connection opens, frames and closes; it answers with [`Output`]s
//! (frames to send, updates to append to storage, connections to close) and never blocks.

use bytes::Bytes;
use roomd_crdt::{Applied, ApplyError, YDoc};

use crate::awareness::{self, AwarenessTable};
use crate::lib0::write_var_u64;
use crate::message::{
    decode_frame, DecodeError, Message, MessageLimits, SyncMessage, MSG_AWARENESS,
};
use crate::CloseCode;

/// A connection's id, unique within the process for its lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Limits of one document session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Decoder limits for incoming frames.
    pub message: MessageLimits,
    /// Connections syncing the document at once.
    pub conns_max: usize,
    /// Awareness states one connection may announce.
    pub awareness_states_per_conn_max: usize,
}

/// An effect for the server to carry out, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `frame` as one binary WebSocket message to `conn`.
    Send {
        /// The receiver.
        conn: ConnId,
        /// The whole frame.
        frame: Bytes,
    },
    /// Append an accepted update to the document's durable log.
    Append {
        /// The v1 update, exactly as accepted.
        update: Bytes,
    },
    /// Close `conn` with `code`; the session has already forgotten it.
    Disconnect {
        /// The connection to close.
        conn: ConnId,
        /// The close code.
        code: CloseCode,
        /// A short human-readable reason (at most 123 bytes, the close-frame limit).
        reason: String,
    },
}

/// One Yjs document with its connections and awareness states.
#[derive(Debug)]
pub struct YjsDocSession {
    doc: YDoc,
    conns: Vec<ConnId>,
    awareness: AwarenessTable,
    limits: SessionLimits,
}

fn frame_of(msg: Message<'_>) -> Bytes {
    Bytes::from(msg.to_vec())
}

/// Truncates a reason to the 123 bytes a close frame can carry, on a character boundary.
fn close_reason(reason: String) -> String {
    if reason.len() <= 123 {
        return reason;
    }
    let mut end = 123;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

impl YjsDocSession {
    /// A session over `doc` with no connection yet.
    pub fn new(doc: YDoc, limits: SessionLimits) -> Self {
        YjsDocSession {
            doc,
            conns: Vec::new(),
            awareness: AwarenessTable::default(),
            limits,
        }
    }

    /// The document.
    pub fn doc(&self) -> &YDoc {
        &self.doc
    }

    /// Mutable access to the document, for the owner's bookkeeping (size re-basing).
    pub fn doc_mut(&mut self) -> &mut YDoc {
        &mut self.doc
    }

    /// Gives up the session, keeping its document.
    pub fn into_doc(self) -> YDoc {
        self.doc
    }

    /// Replaces a poisoned document with one rebuilt from storage.
    pub fn replace_doc(&mut self, doc: YDoc) {
        self.doc = doc;
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Live awareness states.
    pub fn awareness_states(&self) -> usize {
        self.awareness.len()
    }

    /// Opens `conn`: sends it sync step 1, then the known awareness states, each in its own
    /// frame. Refuses with [`CloseCode::TryAgain`] when the document is full.
    pub fn open(&mut self, conn: ConnId, out: &mut Vec<Output>) -> Result<(), CloseCode> {
        debug_assert!(!self.conns.contains(&conn), "{conn:?} opened twice");
        if self.conns.len() >= self.limits.conns_max {
            return Err(CloseCode::TryAgain);
        }
        self.conns.push(conn);
        let sv = self.doc.state_vector();
        out.push(Output::Send {
            conn,
            frame: frame_of(Message::Sync(SyncMessage::Step1(&sv))),
        });
        if let Some(states) = self.awareness.encode_all() {
            out.push(Output::Send {
                conn,
                frame: frame_of(Message::Awareness(&states)),
            });
        }
        Ok(())
    }

    /// Closes `conn` (it left, or the server closed it): its awareness states are removed and
    /// the others are told.
    pub fn close(&mut self, conn: ConnId, out: &mut Vec<Output>) {
        let Some(i) = self.conns.iter().position(|&c| c == conn) else {
            return;
        };
        self.conns.swap_remove(i);
        if let Some(removal) = self.awareness.remove_conn(conn) {
            self.broadcast(conn, frame_of(Message::Awareness(&removal)), out);
        }
        if self.conns.is_empty() {
            self.awareness.clear();
        }
    }

    /// Handles one binary frame from `conn`. On invalid input the connection is closed (a
    /// [`Output::Disconnect`] is emitted) and nothing of the frame's remainder is applied.
    pub fn receive(&mut self, conn: ConnId, frame: &Bytes, out: &mut Vec<Output>) {
        if !self.conns.contains(&conn) {
            return;
        }
        if let Err((code, reason)) = self.receive_inner(conn, frame, out) {
            out.push(Output::Disconnect {
                conn,
                code,
                reason: close_reason(reason),
            });
            self.close(conn, out);
        }
    }

    fn receive_inner(
        &mut self,
        conn: ConnId,
        frame: &Bytes,
        out: &mut Vec<Output>,
    ) -> Result<(), (CloseCode, String)> {
        let messages = decode_frame(frame, self.limits.message).map_err(|e| match e {
            DecodeError::Incomplete { .. } => (CloseCode::ProtocolError, e.to_string()),
            DecodeError::Invalid(crate::Invalid::LengthOverLimit { .. }) => {
                (CloseCode::TooLarge, e.to_string())
            }
            DecodeError::Invalid(_) => (CloseCode::ProtocolError, e.to_string()),
        })?;
        let single = messages.len() == 1;
        for msg in messages {
            match msg {
                Message::Sync(SyncMessage::Step1(sv)) => {
                    let diff = self
                        .doc
                        .diff(sv)
                        .map_err(|e| (CloseCode::ProtocolError, e.to_string()))?;
                    out.push(Output::Send {
                        conn,
                        frame: frame_of(Message::Sync(SyncMessage::Step2(&diff))),
                    });
                }
                Message::Sync(SyncMessage::Step2(update) | SyncMessage::Update(update)) => {
                    let applied = self.apply(update)?;
                    if !applied.changed {
                        continue;
                    }
                    out.push(Output::Append {
                        update: frame.slice_ref(update),
                    });
                    let is_plain_update = matches!(msg, Message::Sync(SyncMessage::Update(_)));
                    let forward = if single && is_plain_update {
                        frame.clone()
                    } else {
                        frame_of(Message::Sync(SyncMessage::Update(update)))
                    };
                    self.broadcast(conn, forward, out);
                }
                Message::Awareness(update) => {
                    let entries = awareness::parse(update)
                        .map_err(|e| (CloseCode::ProtocolError, e.to_string()))?;
                    if self.awareness.apply(conn, &entries) == 0 {
                        continue;
                    }
                    if self.awareness.owned_by(conn) > self.limits.awareness_states_per_conn_max {
                        return Err((
                            CloseCode::TooLarge,
                            format!(
                                "more than {} awareness states from one connection",
                                self.limits.awareness_states_per_conn_max
                            ),
                        ));
                    }
                    let forward = if single {
                        frame.clone()
                    } else {
                        frame_of(Message::Awareness(update))
                    };
                    self.broadcast(conn, forward, out);
                }
                Message::QueryAwareness => {
                    let states = self.awareness.encode_all().unwrap_or_else(|| vec![0]);
                    out.push(Output::Send {
                        conn,
                        frame: frame_of(Message::Awareness(&states)),
                    });
                }
                Message::AuthDenied(_) => {
                    return Err((
                        CloseCode::ProtocolError,
                        "auth messages are sent by the server only".into(),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Handles frames that arrived together, in order, with the same effect as calling
    /// [`YjsDocSession::receive`] for each, except that a run of consecutive frames that each
    /// carry one update is forwarded as a single merged update and appended once. The merged
    /// update goes to every connection, its senders included (applying an update twice changes
    /// nothing), so a busy document costs one frame per connection per batch instead of one
    /// per update. An update that leaves structs waiting for missing ones ends the run and is
    /// forwarded alone, as are updates that yrs cannot merge.
    pub fn receive_many(&mut self, frames: &[(ConnId, Bytes)], out: &mut Vec<Output>) {
        let mut run: Vec<(ConnId, &Bytes, Bytes)> = Vec::new();
        for (conn, frame) in frames {
            let conn = *conn;
            if !self.conns.contains(&conn) {
                continue;
            }
            let Some(update) = single_update(frame, self.limits.message) else {
                self.forward_run(&mut run, out);
                self.receive(conn, frame, out);
                continue;
            };
            match self.apply(&update) {
                Ok(applied) if !applied.changed => {}
                Ok(applied) => {
                    run.push((conn, frame, update));
                    if !applied.complete {
                        self.forward_run(&mut run, out);
                    }
                }
                Err((code, reason)) => {
                    self.forward_run(&mut run, out);
                    out.push(Output::Disconnect {
                        conn,
                        code,
                        reason: close_reason(reason),
                    });
                    self.close(conn, out);
                }
            }
        }
        self.forward_run(&mut run, out);
    }

    /// Appends and forwards a run of applied updates (sender, frame, update), merged when there
    /// are several; empties `run`.
    fn forward_run(&mut self, run: &mut Vec<(ConnId, &Bytes, Bytes)>, out: &mut Vec<Output>) {
        if run.len() > 1 {
            let parts: Vec<&[u8]> = run.iter().map(|(_, _, u)| u.as_ref()).collect();
            if let Some(merged) = YDoc::merge_updates(&parts) {
                let frame = frame_of(Message::Sync(SyncMessage::Update(&merged)));
                out.push(Output::Append {
                    update: Bytes::from(merged),
                });
                for &conn in &self.conns {
                    out.push(Output::Send {
                        conn,
                        frame: frame.clone(),
                    });
                }
                run.clear();
                return;
            }
        }
        for (conn, frame, update) in run.drain(..) {
            out.push(Output::Append { update });
            self.broadcast(conn, frame.clone(), out);
        }
    }

    fn apply(&mut self, update: &[u8]) -> Result<Applied, (CloseCode, String)> {
        self.doc.apply_update(update).map_err(|e| {
            let code = match e {
                ApplyError::UpdateTooLarge { .. } | ApplyError::DocTooLarge { .. } => {
                    CloseCode::TooLarge
                }
                ApplyError::Malformed(_) | ApplyError::Rejected(_) => CloseCode::ProtocolError,
                ApplyError::Panicked => CloseCode::Internal,
            };
            (code, e.to_string())
        })
    }

    fn broadcast(&self, from: ConnId, frame: Bytes, out: &mut Vec<Output>) {
        for &conn in &self.conns {
            if conn != from {
                out.push(Output::Send {
                    conn,
                    frame: frame.clone(),
                });
            }
        }
    }
}

/// The update of a frame that holds exactly one message, a plain sync update.
fn single_update(frame: &Bytes, limits: MessageLimits) -> Option<Bytes> {
    match decode_frame(frame, limits).ok()?.as_slice() {
        [Message::Sync(SyncMessage::Update(update))] => Some(frame.slice_ref(update)),
        _ => None,
    }
}

/// An awareness message with no entries: harmless to every client, and enough to keep
/// providers that reconnect after a quiet period (y-websocket's 30 s) from doing so.
pub fn keepalive_frame() -> Bytes {
    let mut out = Vec::with_capacity(3);
    write_var_u64(&mut out, MSG_AWARENESS);
    write_var_u64(&mut out, 1);
    write_var_u64(&mut out, 0);
    Bytes::from(out)
}
