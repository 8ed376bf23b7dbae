//! `YjsDocSession`: the state machine of one Yjs document and the connections syncing it.
//!
//! The server feeds it connection opens, frames and closes; it answers with [`Output`]s
//! (frames to send, updates to append to storage, connections to close) and never blocks.

use std::sync::Arc;

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

/// Who a connection is, as far as one document needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The participant the connection belongs to. Connections of one participant may take over
    /// each other's awareness client ids; another participant's ids are not theirs to set.
    pub participant: u64,
    /// The connection may read the document and send awareness, but not change the document.
    pub read_only: bool,
    /// Who the participant is, for a document's [`UpdateRules`].
    pub principal: Arc<Principal>,
}

/// Who makes a change, as a document's rules judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The participant's name, as its token gives it.
    pub name: Arc<str>,
    /// An operator of the project (its API key, or a token with the `admin` grant).
    pub admin: bool,
}

impl Principal {
    /// A participant named `name`.
    pub fn new(name: impl Into<Arc<str>>, admin: bool) -> Principal {
        Principal {
            name: name.into(),
            admin,
        }
    }
}

/// Server-side rules of one document: every change a participant makes is judged before the
/// document sees it, and every change the document takes (the server's own included) is noted,
/// so that judging costs what the update holds, not what the document does.
pub trait UpdateRules: Send + Sync + std::fmt::Debug {
    /// Judges `update` from `who` against the document as noted so far. `Err` refuses it
    /// whole, with the rule it breaks.
    fn check(&self, who: &Principal, update: &[u8]) -> Result<(), String>;
    /// Notes an update the document took, from `who` (`None`: the server's own edit).
    fn accepted(&mut self, who: Option<&Principal>, update: &[u8]);
    /// Forgets what was noted and notes the whole state of a document rebuilt from storage.
    fn reset(&mut self, snapshot: &[u8]);
}

/// The reason sent with the y-protocols permission-denied message to a participant whose
/// update was refused.
pub const PERMISSION_DENIED: &str = "permission-denied";

#[derive(Debug, Clone)]
struct Conn {
    id: ConnId,
    peer: Peer,
    /// The connection was told once that its updates are refused.
    told_denied: bool,
}

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
    /// Who sent the update of the [`Output::Append`] just before: the sends that follow
    /// forward it (or, merged, the updates of several connections). Not emitted for updates
    /// that came from no connection (the REST API, the server's own edits).
    Authors {
        /// The sender (the first, when merged).
        first: ConnId,
        /// The other senders of a merged update, in order, without repeats.
        more: Vec<ConnId>,
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
    /// An update from `conn` that would have changed the document was refused, because the
    /// connection may only read it (`rule` is `None`) or because it breaks a rule of the
    /// document; the document is unchanged. For the owner to log and count.
    Refused {
        /// The sender.
        conn: ConnId,
        /// The rule broken, if that was why.
        rule: Option<String>,
    },
    /// `conn` sent awareness entries for client ids another participant owns, which would have
    /// changed that participant's state; they were dropped. For the owner to log and count.
    Spoofed {
        /// The sender.
        conn: ConnId,
        /// Entries dropped as spoofing.
        entries: usize,
    },
}

/// One Yjs document with its connections and awareness states.
#[derive(Debug)]
pub struct YjsDocSession {
    doc: YDoc,
    conns: Vec<Conn>,
    awareness: AwarenessTable,
    limits: SessionLimits,
    /// Only the server changes the document: every connection may only read it.
    authored: bool,
    /// What participants' updates must keep to.
    rules: Option<Box<dyn UpdateRules>>,
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
            authored: false,
            rules: None,
        }
    }

    /// A session over `doc` whose participants' updates are judged by `rules` (which has
    /// noted `doc`'s state) before they are applied.
    pub fn ruled(doc: YDoc, limits: SessionLimits, rules: Box<dyn UpdateRules>) -> Self {
        YjsDocSession {
            rules: Some(rules),
            ..YjsDocSession::new(doc, limits)
        }
    }

    /// True when the document has rules.
    pub fn is_ruled(&self) -> bool {
        self.rules.is_some()
    }

    /// A session over a document only the server writes (see [`YjsDocSession::publish`]):
    /// connections read it and may send awareness; their updates that would change it are
    /// refused.
    pub fn authored(doc: YDoc, limits: SessionLimits) -> Self {
        YjsDocSession {
            authored: true,
            ..YjsDocSession::new(doc, limits)
        }
    }

    fn conn(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.iter().find(|c| c.id == conn)
    }

    fn is_open(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some()
    }

    /// True when `conn` may only read: its updates go through [`YDoc::would_change`].
    fn reads_only(&self, conn: ConnId) -> bool {
        self.authored || self.conn(conn).is_some_and(|c| c.peer.read_only)
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
        if let Some(r) = self.rules.as_mut() {
            r.reset(&doc.snapshot());
        }
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

    /// Opens `conn` as a writer that is a participant of its own (see
    /// [`YjsDocSession::open_as`]).
    pub fn open(&mut self, conn: ConnId, out: &mut Vec<Output>) -> Result<(), CloseCode> {
        let peer = Peer {
            participant: conn.0,
            read_only: false,
            principal: Arc::new(Principal::new(format!("conn-{}", conn.0), false)),
        };
        self.open_as(conn, peer, out)
    }

    /// Opens `conn` for `peer`: sends it sync step 1, then the known awareness states, each in
    /// its own frame. Refuses with [`CloseCode::TryAgain`] when the document is full.
    pub fn open_as(
        &mut self,
        conn: ConnId,
        peer: Peer,
        out: &mut Vec<Output>,
    ) -> Result<(), CloseCode> {
        debug_assert!(!self.is_open(conn), "{conn:?} opened twice");
        if self.conns.len() >= self.limits.conns_max {
            return Err(CloseCode::TryAgain);
        }
        self.conns.push(Conn {
            id: conn,
            peer,
            told_denied: false,
        });
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
        let Some(i) = self.conns.iter().position(|c| c.id == conn) else {
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
        if !self.is_open(conn) {
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
                    if self.reads_only(conn) {
                        self.refuse_if_changing(conn, update, out)?;
                        continue;
                    }
                    if let Err(rule) = self.judge(conn, update) {
                        // Invalid bytes close the connection as they would anywhere.
                        self.doc.would_change(update).map_err(apply_error)?;
                        self.refuse(conn, rule, out);
                        continue;
                    }
                    let who = self.principal(conn);
                    let applied = self.apply(who.as_deref(), update)?;
                    if !applied.changed {
                        continue;
                    }
                    out.push(Output::Append {
                        update: frame.slice_ref(update),
                    });
                    out.push(Output::Authors {
                        first: conn,
                        more: Vec::new(),
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
                    let participant = self.conn(conn).map_or(conn.0, |c| c.peer.participant);
                    let applied = self.awareness.apply(conn, participant, &entries);
                    if applied.spoofed > 0 {
                        out.push(Output::Spoofed {
                            conn,
                            entries: applied.spoofed,
                        });
                    }
                    if applied.changed.is_empty() {
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
                    let forward = if applied.dropped > 0 {
                        // Only what was applied goes on: never another participant's ids.
                        let mut kept = Vec::with_capacity(update.len());
                        awareness::encode(applied.changed.iter().map(|&i| entries[i]), &mut kept);
                        frame_of(Message::Awareness(&kept))
                    } else if single {
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
            if !self.is_open(conn) {
                continue;
            }
            // A ruled document judges each update alone.
            let single = single_update(frame, self.limits.message).filter(|_| self.rules.is_none());
            let Some(update) = single.filter(|_| !self.reads_only(conn)) else {
                self.forward_run(&mut run, out);
                self.receive(conn, frame, out);
                continue;
            };
            let who = self.principal(conn);
            match self.apply(who.as_deref(), &update) {
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
                let first = run[0].0;
                let mut more: Vec<ConnId> = Vec::new();
                for (c, _, _) in run.iter().skip(1) {
                    if *c != first && !more.contains(c) {
                        more.push(*c);
                    }
                }
                let authors = Output::Authors { first, more };
                self.append_and_send_to_all(Bytes::from(merged), Some(authors), out);
                run.clear();
                return;
            }
        }
        for (conn, frame, update) in run.drain(..) {
            out.push(Output::Append { update });
            out.push(Output::Authors {
                first: conn,
                more: Vec::new(),
            });
            self.broadcast(conn, frame.clone(), out);
        }
    }

    /// Applies an update from `who` (`None`: no one the rules know) and has the rules note it.
    fn apply(
        &mut self,
        who: Option<&Principal>,
        update: &[u8],
    ) -> Result<Applied, (CloseCode, String)> {
        let applied = self.doc.apply_update(update).map_err(apply_error)?;
        if applied.changed {
            if let Some(r) = self.rules.as_mut() {
                r.accepted(who, update);
            }
        }
        Ok(applied)
    }

    /// The principal `conn` writes as.
    fn principal(&self, conn: ConnId) -> Option<Arc<Principal>> {
        self.conn(conn).map(|c| c.peer.principal.clone())
    }

    /// Judges an update from `conn` by the document's rules, if it has any.
    fn judge(&self, conn: ConnId, update: &[u8]) -> Result<(), String> {
        let (Some(rules), Some(c)) = (self.rules.as_ref(), self.conn(conn)) else {
            return Ok(());
        };
        rules.check(&c.peer.principal, update)
    }

    /// Refuses an update from `conn` that breaks `rule`: the document is untouched and the
    /// connection is told, each time, with the y-protocols permission-denied message.
    fn refuse(&mut self, conn: ConnId, rule: String, out: &mut Vec<Output>) {
        let reason = format!("{PERMISSION_DENIED}: {rule}");
        out.push(Output::Send {
            conn,
            frame: frame_of(Message::AuthDenied(&reason)),
        });
        out.push(Output::Refused {
            conn,
            rule: Some(rule),
        });
    }

    fn broadcast(&self, from: ConnId, frame: Bytes, out: &mut Vec<Output>) {
        for c in &self.conns {
            if c.id != from {
                out.push(Output::Send {
                    conn: c.id,
                    frame: frame.clone(),
                });
            }
        }
    }

    /// An update from a connection that may only read: nothing happens if it changes nothing
    /// (a fresh client's empty step 2, or what it received and sends back); otherwise it is
    /// refused, the document untouched, and the connection told once with the y-protocols
    /// permission-denied message. Invalid bytes close it as they would any writer.
    fn refuse_if_changing(
        &mut self,
        conn: ConnId,
        update: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<(), (CloseCode, String)> {
        let changes = self.doc.would_change(update).map_err(apply_error)?;
        if !changes {
            return Ok(());
        }
        out.push(Output::Refused { conn, rule: None });
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == conn) {
            if !c.told_denied {
                c.told_denied = true;
                out.push(Output::Send {
                    conn,
                    frame: frame_of(Message::AuthDenied(PERMISSION_DENIED)),
                });
            }
        }
        Ok(())
    }

    /// Applies an update that arrived outside any connection (the REST API, or a toolkit's
    /// edit on a participant's behalf) from `who`: validated and limited as a connection's,
    /// judged by the document's rules, and if it changes the document, appended and sent to
    /// every connection. Returns whether it changed anything. A refusal by a rule is
    /// [`CloseCode::Forbidden`] with the rule.
    pub fn apply_external(
        &mut self,
        who: &Principal,
        update: &[u8],
        out: &mut Vec<Output>,
    ) -> Result<bool, (CloseCode, String)> {
        if self.authored {
            return Err((
                CloseCode::Forbidden,
                "only the server writes this document".into(),
            ));
        }
        if let Some(rules) = self.rules.as_ref() {
            if let Err(rule) = rules.check(who, update) {
                self.doc.would_change(update).map_err(apply_error)?;
                return Err((CloseCode::Forbidden, rule));
            }
        }
        let applied = self.apply(Some(who), update)?;
        if !applied.changed {
            return Ok(false);
        }
        self.append_and_send_to_all(Bytes::copy_from_slice(update), None, out);
        Ok(true)
    }

    /// Appends an update the document holds to the log (with who sent it, if connections did)
    /// and sends it to every connection.
    fn append_and_send_to_all(
        &self,
        update: Bytes,
        authors: Option<Output>,
        out: &mut Vec<Output>,
    ) {
        let frame = frame_of(Message::Sync(SyncMessage::Update(&update)));
        out.push(Output::Append { update });
        out.extend(authors);
        for c in &self.conns {
            out.push(Output::Send {
                conn: c.id,
                frame: frame.clone(),
            });
        }
    }

    /// The connections open on the document.
    pub fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.iter().map(|c| c.id).collect()
    }

    /// Sends an edit the server made itself (already applied to the document, see
    /// [`YDoc::author_map`]) to every connection, and appends it to the log.
    pub fn publish(&mut self, update: Vec<u8>, out: &mut Vec<Output>) {
        if let Some(r) = self.rules.as_mut() {
            r.accepted(None, &update);
        }
        self.append_and_send_to_all(Bytes::from(update), None, out);
    }
}

/// The close code and reason for an update that was not applied.
fn apply_error(e: ApplyError) -> (CloseCode, String) {
    let code = match e {
        ApplyError::UpdateTooLarge { .. } | ApplyError::DocTooLarge { .. } => CloseCode::TooLarge,
        ApplyError::Malformed(_) | ApplyError::Rejected(_) => CloseCode::ProtocolError,
        ApplyError::Panicked => CloseCode::Internal,
    };
    (code, e.to_string())
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
