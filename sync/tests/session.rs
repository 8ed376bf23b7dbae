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

fn awareness_frame(entries: &[(u64, u64, &str)]) -> Bytes {
    let mut update = Vec::new();
    roomd_sync::awareness::encode(
        entries.iter().map(
            |&(client_id, clock, state_json)| roomd_sync::awareness::Entry {
                client_id,
                clock,
                state_json,
            },
        ),
        &mut update,
    );
    Bytes::from(Message::Awareness(&update).to_vec())
}

fn refusals(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Refused { .. }))
        .count()
}

fn is_permission_denied(frame: &Bytes) -> bool {
    matches!(
        roomd_sync::decode_frame(frame, LIMITS.message).unwrap()[..],
        [Message::AuthDenied(roomd_sync::PERMISSION_DENIED)]
    )
}

#[test]
fn a_read_only_participant_reads_but_its_changes_are_refused_and_it_is_told_once() {
    let mut s = session(1);
    let reader = ConnId(7);
    let peer = roomd_sync::Peer {
        participant: 70,
        read_only: true,
        principal: std::sync::Arc::new(roomd_sync::Principal::new("p", false)),
    };
    let mut out = Vec::new();
    s.open_as(reader, peer, &mut out).unwrap();
    let writer = Typist::new(1);
    let written = writer.type_char("a");
    out.clear();
    s.receive(ConnId(0), &written, &mut out);
    assert_eq!(text_of(&sends_to(&out, 7)), "a");
    // A fresh client's empty step 2, and what it received sent back, are no refusal.
    out.clear();
    let empty_step2 = Bytes::from(Message::Sync(SyncMessage::Step2(&[0, 0])).to_vec());
    s.receive(reader, &empty_step2, &mut out);
    s.receive(reader, &written, &mut out);
    assert!(out.is_empty(), "{out:?}");
    // Its own edits are refused, the document unchanged, and it is told once.
    let typist = Typist::new(2);
    for (i, c) in ["x", "y"].into_iter().enumerate() {
        out.clear();
        s.receive_many(&[(reader, typist.type_char(c))], &mut out);
        assert_eq!(refusals(&out), 1, "{out:?}");
        assert!(appends(&out).is_empty());
        let told = sends_to(&out, 7);
        assert_eq!(told.len(), usize::from(i == 0), "{out:?}");
        assert!(told.iter().all(is_permission_denied));
        assert!(sends_to(&out, 0).is_empty());
    }
    assert_eq!(s.doc().text("t"), "a");
    // It may still send awareness.
    out.clear();
    s.receive(reader, &awareness_frame(&[(2, 1, "{}")]), &mut out);
    assert_eq!(sends_to(&out, 0).len(), 1);
}

#[test]
fn an_authored_document_takes_the_servers_edits_only() {
    let mut doc = YDoc::new(DocLimits::DEFAULT).authored_by(99);
    let value = serde_json::json!({ "name": "alice" });
    let update = doc
        .author_map("participants", &[("p1", Some(&value))])
        .unwrap();
    let mut s = YjsDocSession::authored(doc, LIMITS);
    let mut out = Vec::new();
    s.open(ConnId(0), &mut out).unwrap();
    s.open(ConnId(1), &mut out).unwrap();
    out.clear();
    s.publish(update, &mut out);
    assert_eq!(appends(&out).len(), 1);
    assert_eq!(sends_to(&out, 0).len(), 1);
    assert_eq!(sends_to(&out, 1).len(), 1);
    out.clear();
    s.receive(ConnId(0), &Typist::new(3).type_char("z"), &mut out);
    assert_eq!(refusals(&out), 1);
    assert!(appends(&out).is_empty());
    assert_eq!(s.doc().text("t"), "");
}

#[test]
fn awareness_for_another_participants_client_id_is_dropped_and_the_rest_forwarded() {
    let mut s = session(0);
    let mut out = Vec::new();
    for (conn, participant) in [(1, 100), (2, 200), (3, 300)] {
        let peer = roomd_sync::Peer {
            participant,
            read_only: false,
            principal: std::sync::Arc::new(roomd_sync::Principal::new("p", false)),
        };
        s.open_as(ConnId(conn), peer, &mut out).unwrap();
    }
    out.clear();
    s.receive(
        ConnId(1),
        &awareness_frame(&[(11, 1, r#"{"n":"a"}"#)]),
        &mut out,
    );
    out.clear();
    // Participant 200 re-broadcasts 11 as it is (not spoofing), claims it with a newer clock
    // (spoofing), and announces its own 22.
    let mixed = awareness_frame(&[
        (11, 1, r#"{"n":"a"}"#),
        (11, 2, r#"{"n":"evil"}"#),
        (22, 1, r#"{"n":"b"}"#),
    ]);
    s.receive(ConnId(2), &mixed, &mut out);
    let spoofed: usize = out
        .iter()
        .map(|o| match o {
            Output::Spoofed { entries, .. } => *entries,
            _ => 0,
        })
        .sum();
    assert_eq!(spoofed, 1);
    let to3 = sends_to(&out, 3);
    assert_eq!(to3.len(), 1);
    let msgs = roomd_sync::decode_frame(&to3[0], LIMITS.message).unwrap();
    let Message::Awareness(forwarded) = msgs[0] else {
        panic!("{msgs:?}")
    };
    let entries = roomd_sync::awareness::parse(forwarded).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].client_id, 22);
}

/// Rules that refuse every update holding the letter `x`, counting what they are told.
#[derive(Debug, Default)]
struct NoX {
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl roomd_sync::UpdateRules for NoX {
    fn check(&self, who: &roomd_sync::Principal, update: &[u8]) -> Result<(), String> {
        if update.contains(&b'x') {
            return Err(format!("{} may not write x", who.name));
        }
        Ok(())
    }
    fn accepted(&mut self, _who: Option<&roomd_sync::Principal>, _update: &[u8]) {
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    fn reset(&mut self, _snapshot: &[u8]) {}
}

#[test]
fn a_ruled_document_refuses_what_breaks_a_rule_and_tells_the_sender_each_time() {
    let rules = NoX::default();
    let accepted = rules.accepted.clone();
    let mut s = YjsDocSession::ruled(YDoc::new(DocLimits::DEFAULT), LIMITS, Box::new(rules));
    let mut out = Vec::new();
    s.open(ConnId(0), &mut out).unwrap();
    s.open(ConnId(1), &mut out).unwrap();
    let typist = Typist::new(3);
    for _ in 0..2 {
        out.clear();
        s.receive_many(&[(ConnId(0), typist.type_char("x"))], &mut out);
        assert_eq!(refusals(&out), 1, "{out:?}");
        assert!(appends(&out).is_empty());
        let told = sends_to(&out, 0);
        assert_eq!(told.len(), 1);
        assert!(matches!(
            roomd_sync::decode_frame(&told[0], LIMITS.message).unwrap()[..],
            [Message::AuthDenied(
                "permission-denied: conn-0 may not write x"
            )]
        ));
        assert!(sends_to(&out, 1).is_empty());
    }
    assert_eq!(s.doc().text("t"), "");
    // What keeps to the rules goes in, one update at a time, and the rules note it.
    let other = Typist::new(4);
    out.clear();
    s.receive_many(
        &[
            (ConnId(1), other.type_char("a")),
            (ConnId(1), other.type_char("b")),
        ],
        &mut out,
    );
    assert_eq!(appends(&out).len(), 2);
    assert_eq!(s.doc().text("t"), "ab");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    // The same holds for an update from outside a connection.
    let who = roomd_sync::Principal::new("rest", false);
    let frame = typist.type_char("x");
    let update = match roomd_sync::decode_frame(&frame, LIMITS.message).unwrap()[..] {
        [Message::Sync(SyncMessage::Update(u))] => u.to_vec(),
        _ => unreachable!(),
    };
    let refused = s.apply_external(&who, &update, &mut out);
    assert_eq!(
        refused,
        Err((
            roomd_sync::CloseCode::Forbidden,
            "rest may not write x".into()
        ))
    );
}
