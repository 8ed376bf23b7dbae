//! `YjsDocSession::receive_many`: runs of updates are applied, appended and forwarded as one
//! merged update; anything else keeps its order and its single-frame behaviour.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use roomd_crdt::{DocLimits, YDoc};
use roomd_sync::{
    ConnId, Message, MessageLimits, Output, SessionLimits, SyncMessage, YjsDocSession,
};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

const LIMITS: SessionLimits = SessionLimits {
    message: MessageLimits {
        payload_bytes_max: 1 << 20,
    },
    conns_max: 16,
    awareness_states_per_conn_max: 4,
};

fn session(conns: u64) -> YjsDocSession {
    let mut s = YjsDocSession::new(
        YDoc::new(DocLimits {
            update_bytes_max: 1 << 20,
            doc_bytes_max: 1 << 24,
        }),
        LIMITS,
    );
    let mut out = Vec::new();
    for c in 0..conns {
        s.open(ConnId(c), &mut out).unwrap();
    }
    s
}

/// A client typing: each call returns the update frame of one more character at the end.
struct Typist {
    doc: Doc,
}

impl Typist {
    fn new(id: u64) -> Typist {
        Typist {
            doc: Doc::with_client_id(id),
        }
    }

    fn type_char(&self, c: &str) -> Bytes {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, c);
        let update = txn.encode_update_v1();
        Bytes::from(Message::Sync(SyncMessage::Update(&update)).to_vec())
    }
}

fn sends_to(out: &[Output], conn: u64) -> Vec<Bytes> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { conn: c, frame } if c.0 == conn => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn appends(out: &[Output]) -> Vec<Bytes> {
    out.iter()
        .filter_map(|o| match o {
            Output::Append { update } => Some(update.clone()),
            _ => None,
        })
        .collect()
}

/// Applies sync frames to a fresh document and returns its text.
fn text_of(frames: &[Bytes]) -> String {
    let doc = Doc::new();
    for frame in frames {
        for msg in roomd_sync::decode_frame(frame, LIMITS.message).unwrap() {
            if let Message::Sync(SyncMessage::Update(u) | SyncMessage::Step2(u)) = msg {
                doc.transact_mut()
                    .apply_update(Update::decode_v1(u).unwrap())
                    .unwrap();
            }
        }
    }
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    assert!(txn.store().pending_update().is_none());
    text.get_string(&txn)
}

#[test]
fn a_run_of_updates_is_forwarded_and_appended_once_merged() {
    let mut s = session(3);
    let (a, b) = (Typist::new(1), Typist::new(2));
    let frames = vec![
        (ConnId(0), a.type_char("a")),
        (ConnId(1), b.type_char("b")),
        (ConnId(0), a.type_char("c")),
    ];
    let mut out = Vec::new();
    s.receive_many(&frames, &mut out);
    assert_eq!(appends(&out).len(), 1, "{out:?}");
    // Every connection, the senders included, gets the one merged frame.
    for conn in 0..3 {
        let got = sends_to(&out, conn);
        assert_eq!(got.len(), 1, "conn {conn}: {out:?}");
        assert_eq!(text_of(&got).len(), 3);
    }
    assert_eq!(s.doc().text("t").len(), 3);
    // The appended update rebuilds the document.
    let rebuilt = text_of(&[Bytes::from(
        Message::Sync(SyncMessage::Update(&appends(&out)[0])).to_vec(),
    )]);
    assert_eq!(rebuilt, s.doc().text("t"));
}

#[test]
fn a_single_update_goes_to_the_others_only_unchanged() {
    let mut s = session(3);
    let a = Typist::new(1);
    let frame = a.type_char("x");
    let mut out = Vec::new();
    s.receive_many(&[(ConnId(0), frame.clone())], &mut out);
    assert!(sends_to(&out, 0).is_empty());
    assert_eq!(sends_to(&out, 1), vec![frame.clone()]);
    assert_eq!(sends_to(&out, 2), vec![frame]);
}

#[test]
fn other_messages_split_runs_and_keep_their_order() {
    let mut s = session(2);
    let (a, b) = (Typist::new(1), Typist::new(2));
    let step1 = Bytes::from(Message::Sync(SyncMessage::Step1(&[0])).to_vec());
    let frames = vec![
        (ConnId(0), a.type_char("a")),
        (ConnId(0), a.type_char("b")),
        (ConnId(1), step1),
        (ConnId(1), b.type_char("c")),
    ];
    let mut out = Vec::new();
    s.receive_many(&frames, &mut out);
    // Run [a, b] merged, then the step 2 for conn 1, then c alone (to conn 0 only).
    assert_eq!(appends(&out).len(), 2);
    let to1 = sends_to(&out, 1);
    assert_eq!(to1.len(), 2, "{out:?}");
    let kinds: Vec<bool> = to1
        .iter()
        .map(|f| {
            matches!(
                roomd_sync::decode_frame(f, LIMITS.message).unwrap()[0],
                Message::Sync(SyncMessage::Step2(_))
            )
        })
        .collect();
    assert_eq!(kinds, vec![false, true]);
    assert_eq!(text_of(&to1), "ab");
    assert_eq!(text_of(&sends_to(&out, 0)), "abc");
}

#[test]
fn a_bad_frame_in_a_batch_closes_only_its_sender() {
    let mut s = session(3);
    let a = Typist::new(1);
    let bad = Bytes::from_static(&[0, 2, 5, 1, 2]);
    let frames = vec![
        (ConnId(0), a.type_char("a")),
        (ConnId(2), bad),
        (ConnId(0), a.type_char("b")),
    ];
    let mut out = Vec::new();
    s.receive_many(&frames, &mut out);
    let closed: Vec<u64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Disconnect { conn, .. } => Some(conn.0),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![2]);
    assert_eq!(s.doc().text("t"), "ab");
    assert_eq!(text_of(&sends_to(&out, 1)), "ab");
    assert_eq!(s.connections(), 2);
}

#[test]
fn updates_already_known_are_neither_forwarded_nor_appended() {
    let mut s = session(2);
    let a = Typist::new(1);
    let frame = a.type_char("a");
    let mut out = Vec::new();
    s.receive_many(&[(ConnId(0), frame.clone())], &mut out);
    out.clear();
    s.receive_many(&[(ConnId(1), frame.clone()), (ConnId(0), frame)], &mut out);
    assert!(out.is_empty(), "{out:?}");
    let sv = s.doc().state_vector();
    assert_eq!(
        yrs::StateVector::decode_v1(&sv).unwrap(),
        a.doc.transact().state_vector()
    );
}
