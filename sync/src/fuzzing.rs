//! The checks run by the fuzz targets in `fuzz/` and by `tests/fuzz_regressions.rs`, which replays
//! their seeds and every crash input ever found. Each check takes arbitrary bytes and panics when
//! roomd misbehaves on them; an input it returns from is fine, whatever it contained.
//!
//! Not part of the public API.

use bytes::Bytes;
use roomd_crdt::{ApplyError, DocLimits, YDoc};

use crate::awareness::{self, AwarenessTable};
use crate::{
    decode_frame, CloseCode, ConnId, DecodeError, Message, MessageLimits, Output, SessionLimits,
    YjsDocSession,
};

/// The decoder limits of the server's defaults (8 MiB messages).
pub const CODEC_LIMITS: MessageLimits = MessageLimits {
    payload_bytes_max: 8 << 20,
};

/// Small document limits, so that inputs can reach them.
pub const DOC_LIMITS: DocLimits = DocLimits {
    update_bytes_max: 16 << 10,
    doc_bytes_max: 64 << 10,
};

/// Session limits small enough for inputs to reach.
pub const SESSION_LIMITS: SessionLimits = SessionLimits {
    message: MessageLimits {
        payload_bytes_max: 16 << 10,
    },
    conns_max: 4,
    awareness_states_per_conn_max: 4,
};

/// Decodes `data` as a frame: when it decodes, encoding the messages and decoding them again must
/// give the same messages, and the encoding must be canonical (a fixed point, never longer than
/// the input). `data`, and every awareness payload in it, is also parsed as an awareness update
/// and must round-trip likewise.
pub fn check_codec(data: &[u8]) {
    match decode_frame(data, CODEC_LIMITS) {
        Ok(messages) => {
            assert!(!messages.is_empty(), "a frame decoded to no message");
            let mut encoded = Vec::with_capacity(data.len());
            for m in &messages {
                m.encode(&mut encoded);
            }
            assert!(
                encoded.len() <= data.len(),
                "re-encoding grew the frame from {} to {} bytes",
                data.len(),
                encoded.len()
            );
            let again = match decode_frame(&encoded, CODEC_LIMITS) {
                Ok(again) => again,
                Err(e) => panic!("re-encoded frame {encoded:?} does not decode: {e}"),
            };
            assert_eq!(again, messages, "messages changed through encode + decode");
            let mut twice = Vec::with_capacity(encoded.len());
            for m in &again {
                m.encode(&mut twice);
            }
            assert_eq!(twice, encoded, "encoding is not a fixed point");
            for m in &messages {
                if let Message::Awareness(update) = m {
                    check_awareness(update);
                }
            }
        }
        Err(DecodeError::Incomplete { needed }) => {
            assert!(needed > 0, "an incomplete frame needs no more bytes")
        }
        Err(DecodeError::Invalid(_)) => {}
    }
    check_awareness(data);
}

fn check_awareness(update: &[u8]) {
    let Ok(entries) = awareness::parse(update) else {
        return;
    };
    let mut encoded = Vec::with_capacity(update.len());
    awareness::encode(entries.iter().copied(), &mut encoded);
    match awareness::parse(&encoded) {
        Ok(again) => assert_eq!(
            again, entries,
            "awareness entries changed through a round trip"
        ),
        Err(e) => panic!("re-encoded awareness update {encoded:?} does not parse: {e}"),
    }
    let conn = ConnId(1);
    let mut table = AwarenessTable::default();
    table.apply(conn, 1, &entries);
    let live = table.len();
    assert_eq!(table.owned_by(conn), live);
    if let Some(all) = table.encode_all() {
        match awareness::parse(&all) {
            Ok(states) => assert_eq!(states.len(), live, "encode_all lost states"),
            Err(e) => panic!("the table's own states do not parse: {e}"),
        }
    }
    if let Some(removal) = table.remove_conn(conn) {
        match awareness::parse(&removal) {
            Ok(removed) => {
                assert_eq!(removed.len(), live, "a removal lost states");
                assert!(removed.iter().all(|e| e.is_removal()));
            }
            Err(e) => panic!("the table's removal does not parse: {e}"),
        }
    }
    assert!(table.is_empty(), "states outlived their connection");
}

/// Feeds `data` to a document as one update, then interprets it as a script driving a
/// [`YjsDocSession`] from two connections (see [`drive_session`]). Nothing may panic, a refused
/// update must leave the document unchanged, and every snapshot must load into a fresh document.
pub fn check_apply(data: &[u8]) {
    let mut doc = YDoc::new(DOC_LIMITS);
    match doc.apply_update(data) {
        Ok(_) => {}
        Err(ApplyError::Panicked) => panic!("yrs panicked integrating {data:?}"),
        // roomd_crdt scans updates for what makes yrs panic before yrs decodes them.
        Err(ApplyError::Malformed(m)) if m == "update decoding failed" => {
            panic!("yrs panicked decoding {data:?}")
        }
        Err(_) => assert_eq!(
            clocks(&doc),
            clocks(&YDoc::new(DOC_LIMITS)),
            "a refused update changed the document"
        ),
    }
    check_snapshot(&doc);
    drive_session(data);
}

/// A document's state vector as sorted (client, clock) pairs: yrs writes the clients of a
/// state vector in hash order, so equal vectors can differ in bytes.
fn clocks(doc: &YDoc) -> Vec<(u64, u64)> {
    let sv = doc.state_vector();
    let mut r = crate::lib0::Reader::new(&sv);
    let mut read = || match r.read_var_u64() {
        Ok(v) => v,
        Err(e) => panic!("the document's own state vector does not decode: {e}"),
    };
    let count = read();
    let mut pairs: Vec<(u64, u64)> = (0..count).map(|_| (read(), read())).collect();
    pairs.sort_unstable();
    pairs
}

/// The document a snapshot loads into, or a panic.
fn load(snapshot: &[u8]) -> YDoc {
    if let Err(e) = YDoc::check_update(snapshot) {
        panic!("a snapshot does not decode: {e}");
    }
    let mut fresh = YDoc::new(DocLimits::DEFAULT);
    if let Err(e) = fresh.apply_update(snapshot) {
        panic!("a snapshot does not load into a fresh document: {e}");
    }
    fresh
}

/// The snapshot loads into a fresh document with the same state vector, and the snapshot of that
/// document loads again to the same document (the first load may drop empty entries of a delete
/// set; later snapshots may differ in bytes, never in content).
fn check_snapshot(doc: &YDoc) {
    let fresh = load(&doc.snapshot());
    assert_eq!(
        clocks(&fresh),
        clocks(doc),
        "a snapshot loads to another state vector"
    );
    let snapshot = fresh.snapshot();
    let reloaded = load(&snapshot);
    assert_eq!(
        clocks(&reloaded),
        clocks(&fresh),
        "a reloaded snapshot loads to another state vector"
    );
    let again = reloaded.snapshot();
    if again == snapshot {
        return;
    }
    // yrs may write the same document differently once it has been loaded (the entries of an
    // `Any` map in hash order, a run of text split or merged another way): then each snapshot
    // must add nothing to a document loaded from the other.
    for (base, other) in [(&snapshot, &again), (&again, &snapshot)] {
        let mut doc = load(base);
        match doc.apply_update(other) {
            Ok(applied) => assert!(
                !applied.changed,
                "a loaded snapshot holds something else: {again:?} against {snapshot:?}"
            ),
            Err(e) => panic!("a reloaded snapshot does not apply to the first: {e}"),
        }
    }
}

/// A byte script driving a session as the server would, with a log standing for storage.
///
/// Each step starts with an op byte: bit 0 picks connection slot 0 or 1; bits 1–2 say what to do.
/// `0` and `1`: a frame from that slot's connection follows, as one length byte then that many
/// bytes (length 255: the rest of the input). `2`: the slot's connection closes, or a new one
/// opens if it was closed. `3`: the room restarts from its log, folded into one snapshot (every
/// connection closes).
pub fn drive_session(script: &[u8]) {
    let mut room = Room::new();
    let mut rest = script;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        let slot = usize::from(op & 1);
        match (op >> 1) & 3 {
            0 | 1 => {
                let (frame, tail) = match rest.split_first() {
                    Some((&255, tail)) => (tail, &[][..]),
                    Some((&len, tail)) => tail.split_at(usize::from(len).min(tail.len())),
                    None => (&[][..], &[][..]),
                };
                rest = tail;
                room.receive(slot, frame);
            }
            2 => room.toggle(slot),
            _ => room.restart(),
        }
        room.check();
    }
    check_snapshot(room.session.doc());
    check_snapshot(&room.stored);
}

struct Room {
    session: YjsDocSession,
    /// Every appended update applied in order: what storage would load.
    stored: YDoc,
    slots: [Option<ConnId>; 2],
    next_conn: u64,
}

impl Room {
    fn new() -> Room {
        let mut room = Room {
            session: YjsDocSession::new(YDoc::new(DOC_LIMITS), SESSION_LIMITS),
            stored: YDoc::new(DocLimits::DEFAULT),
            slots: [None, None],
            next_conn: 1,
        };
        room.toggle(0);
        room.toggle(1);
        room
    }

    fn toggle(&mut self, slot: usize) {
        let mut out = Vec::new();
        match self.slots[slot].take() {
            Some(conn) => self.session.close(conn, &mut out),
            None => {
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                match self.session.open(conn, &mut out) {
                    Ok(()) => self.slots[slot] = Some(conn),
                    Err(code) => panic!("a session with {} connections refused one: {code:?}", {
                        self.session.connections()
                    }),
                }
            }
        }
        self.carry_out(out);
    }

    fn receive(&mut self, slot: usize, frame: &[u8]) {
        let Some(conn) = self.slots[slot] else {
            return;
        };
        let mut out = Vec::new();
        self.session
            .receive(conn, &Bytes::copy_from_slice(frame), &mut out);
        self.carry_out(out);
    }

    fn restart(&mut self) {
        self.slots = [None, None];
        let folded = self.stored.snapshot();
        self.stored = load(&folded);
        let mut doc = YDoc::new(DOC_LIMITS);
        if let Err(e) = doc.apply_update(&folded) {
            panic!("the folded log does not load under the document limits: {e}");
        }
        doc.rebase_size(folded.len());
        self.session = YjsDocSession::new(doc, SESSION_LIMITS);
        self.toggle(0);
        self.toggle(1);
    }

    fn carry_out(&mut self, out: Vec<Output>) {
        for o in out {
            match o {
                Output::Send { conn, frame } => {
                    assert!(
                        self.slots.contains(&Some(conn)),
                        "a frame for {conn:?}, which is not open"
                    );
                    match decode_frame(&frame, CODEC_LIMITS) {
                        Ok(messages) => assert_eq!(messages.len(), 1, "one message per frame"),
                        Err(e) => panic!("the session sent {frame:?}, which does not decode: {e}"),
                    }
                }
                Output::Append { update } => {
                    if let Err(e) = self.stored.apply_update(&update) {
                        panic!("an appended update does not apply to storage: {e}");
                    }
                }
                Output::Disconnect { conn, code, reason } => {
                    assert_ne!(code, CloseCode::Internal, "the document failed: {reason}");
                    assert!(reason.len() <= 123, "close reason too long");
                    let Some(slot) = self.slots.iter().position(|&s| s == Some(conn)) else {
                        panic!("{conn:?} disconnected, which is not open");
                    };
                    self.slots[slot] = None;
                }
                Output::Refused { conn, .. } | Output::Spoofed { conn, .. } => {
                    assert!(
                        self.slots.contains(&Some(conn)),
                        "a refusal for {conn:?}, which is not open"
                    );
                }
                Output::Authors { first, more } => {
                    assert!(!more.contains(&first), "an author named twice");
                }
            }
        }
    }

    fn check(&self) {
        let doc = self.session.doc();
        assert!(!doc.is_poisoned(), "the document is poisoned");
        assert_eq!(
            self.session.connections(),
            self.slots.iter().flatten().count(),
            "the session's connections differ from the open ones"
        );
        assert!(
            self.session.awareness_states() <= 2 * SESSION_LIMITS.awareness_states_per_conn_max
        );
        assert_eq!(
            clocks(&self.stored),
            clocks(doc),
            "storage does not reproduce the document"
        );
    }
}

/// A client's frame, masked as RFC 6455 requires (for tests and seeds).
pub fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// The message limit of the WebSocket check: small, so inputs can reach it.
pub const FRAME_MESSAGE_BYTES_MAX: usize = 1 << 10;

/// Decodes `data[1..]` as the bytes a client sends, once all at once and once in chunks of
/// `data[0]` bytes (as they might arrive from TCP), the chunks handing the bytes of a discarded
/// frame to `Decoder::discard` before they are buffered (as the server's socket does): both must
/// give the same messages and end the same way, no message may exceed the limit, decoding never
/// panics, and it goes on after a message refused as too large (as the server does to reach the
/// client's close frame) without ever keeping a byte of what it discards.
pub fn check_frames(data: &[u8]) {
    use crate::websocket::{Decoder, FrameError, Incoming};
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let run = |chunk: usize, scratch: bool| -> Vec<Result<Incoming, FrameError>> {
        let mut decoder = Decoder::new(FRAME_MESSAGE_BYTES_MAX);
        let mut buf = bytes::BytesMut::new();
        let mut out = Vec::new();
        for mut piece in bytes.chunks(chunk.max(1)) {
            if scratch && buf.is_empty() {
                let discarded = decoder.discard(piece.len());
                piece = piece.get(discarded..).unwrap_or_default();
            }
            buf.extend_from_slice(piece);
            loop {
                let decoded = decoder.decode(&mut buf);
                assert!(
                    decoder.discarding() == 0 || buf.is_empty(),
                    "bytes of a discarded frame are kept"
                );
                match decoded {
                    Ok(Some(message)) => out.push(Ok(message)),
                    Ok(None) => break,
                    Err(e @ FrameError::TooLarge(_)) => {
                        // Each refusal consumes at least the header of the frame it refuses.
                        assert!(
                            out.len() < bytes.len(),
                            "a frame is refused again and again"
                        );
                        out.push(Err(e));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    };
    let whole = run(bytes.len(), false);
    let pieces = run(usize::from(chunk), true);
    assert_eq!(whole, pieces, "chunks of {chunk} decode differently");
    for message in &whole {
        if let Ok(Incoming::Binary(payload)) = message {
            assert!(payload.len() <= FRAME_MESSAGE_BYTES_MAX);
        }
    }
}

/// Limits small enough for inputs to reach.
pub const WIRE_LIMITS: crate::room_protocol::WireLimits = crate::room_protocol::WireLimits {
    message_bytes_max: 8 << 10,
    type_bytes_max: 64,
    header_bytes_max: 4 << 10,
    json_depth_max: 8,
    assembling_max: 3,
    assembling_bytes_max: 12 << 10,
};

/// Splits `data` into room-protocol packets (each prefixed by its length, two bytes big-endian)
/// and feeds them to
/// an [`Assembler`](crate::room_protocol::Assembler) until the first error. Nothing may panic;
/// the assembler never holds more than its limits; every message it completes re-encodes into
/// packets that assemble to the same message; every payload that decodes re-encodes to one that
/// decodes to the same header and trailer, and content read from it round-trips.
pub fn check_room_protocol(data: &[u8]) {
    use crate::room_protocol::{encode_message, Assembler, Content, Payload};
    let limits = WIRE_LIMITS;
    let mut a = Assembler::new(limits);
    let mut rest = data;
    while rest.len() >= 2 {
        let len = (u16::from_be_bytes([rest[0], rest[1]]) as usize).min(rest.len() - 2);
        let (packet, tail) = rest[2..].split_at(len);
        rest = tail;
        let message = match a.push(packet) {
            Ok(Some(m)) => m,
            Ok(None) => {
                assert!(
                    a.assembling() <= limits.assembling_max,
                    "too many assembling"
                );
                assert!(
                    a.held_bytes() <= limits.assembling_bytes_max,
                    "too many bytes held"
                );
                continue;
            }
            Err(_) => return,
        };
        assert!(message.data.len() <= limits.message_bytes_max);
        let mut again = Assembler::new(limits);
        let mut out = None;
        for p in encode_message(message.id, &message.kind, &message.data) {
            out = match again.push(&p) {
                Ok(m) => m,
                Err(e) => panic!("re-encoded packets do not assemble: {e}"),
            };
        }
        assert_eq!(
            out.as_ref(),
            Some(&message),
            "message changed through packets"
        );
        let Ok(payload) = Payload::decode(&message.data, &limits) else {
            continue;
        };
        let header = serde_json::Value::Object(payload.header.clone());
        let encoded = Bytes::from(Payload::encode(&header, &payload.trailer));
        let decoded = match Payload::decode(&encoded, &limits) {
            Ok(d) => d,
            Err(e) => panic!("a re-encoded payload does not decode: {e}"),
        };
        assert_eq!(decoded.header, payload.header);
        assert_eq!(decoded.trailer, payload.trailer);
        if let Ok(content) = Content::from_parts(&payload.header, payload.trailer.clone()) {
            let back = match Payload::decode(&Bytes::from(content.encode()), &limits) {
                Ok(b) => b,
                Err(e) => panic!("encoded content does not decode: {e}"),
            };
            let again = match Content::from_parts(&back.header, back.trailer) {
                Ok(a) => a,
                Err(e) => panic!("encoded content does not parse: {e}"),
            };
            if !matches!(
                content,
                Content::Control(crate::room_protocol::Control::Close {
                    status_code: None,
                    ..
                })
            ) {
                assert_eq!(again, content, "content changed through a round trip");
            }
        }
    }
}
