//! Replays the fuzz targets' inputs through the checks the targets run
//! (`roomd_sync::fuzzing`): every crash input saved in `fuzz/regressions/<target>/` and every
//! seed in `fuzz/seeds/<target>/`. A crash found by fuzzing, once copied there, stays fixed.
//!
//! The seeds are generated here; after a change of the generator, rewrite them with
//! `FUZZ_WRITE_SEEDS=1 cargo test -p roomd-sync --test fuzz_regressions -- seeds_are_current`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use roomd_sync::fuzzing::{
    check_apply, check_codec, check_frames, check_room_protocol, client_frame,
};
use roomd_sync::room_protocol::{encode_message, Payload};
use roomd_sync::websocket::opcode;
use roomd_sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, Transact};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The input files of a directory (not the README), sorted by name.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("{} is missing", dir.display());
    };
    let mut out: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name != "README.md" && !name.starts_with('.')
        })
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

/// Runs `check` on every input of the target's seeds and regressions; fails naming each input
/// that panics.
fn replay(target: &str, check: fn(&[u8])) -> usize {
    let mut failed = Vec::new();
    let mut count = 0;
    for kind in ["seeds", "regressions"] {
        for (path, bytes) in inputs(&fuzz_dir().join(kind).join(target)) {
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&bytes))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{target} fails on {} input(s) (see the panics above):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );
    count
}

#[test]
fn codec_inputs_pass() {
    assert!(replay("codec", check_codec) > 0);
}

#[test]
fn apply_inputs_pass() {
    assert!(replay("apply", check_apply) > 0);
}

#[test]
fn frames_inputs_pass() {
    assert!(replay("frames", check_frames) > 0);
}

#[test]
fn room_protocol_inputs_pass() {
    assert!(replay("room_protocol", check_room_protocol) > 0);
}

/// A `room_protocol` input: every packet of each message, each prefixed by its length.
fn packets_input(messages: &[(u64, &str, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, kind, data) in messages {
        for p in encode_message(*id, kind, data) {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(&p);
        }
    }
    out
}

fn payload(header: serde_json::Value, trailer: &[u8]) -> Vec<u8> {
    Payload::encode(&header, trailer)
}

/// A `frames` input: bytes split in chunks of `chunk`, then the frames.
fn frames_input(chunk: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![chunk];
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

fn frame(msg: Message<'_>) -> Vec<u8> {
    msg.to_vec()
}

/// One text insert and one map set by client `id`, and a later delete, as separate updates.
fn edits(id: u64) -> [Vec<u8>; 3] {
    let doc = Doc::with_client_id(id);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let insert = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "hello world");
        txn.encode_update_v1()
    };
    let set = {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "k", 42i64);
        map.insert(&mut txn, "s", "v");
        txn.encode_update_v1()
    };
    let delete = {
        let mut txn = doc.transact_mut();
        text.remove_range(&mut txn, 2, 5);
        text.insert(&mut txn, 1, "é");
        txn.encode_update_v1()
    };
    [insert, set, delete]
}

fn full_state(id: u64) -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(id);
    let [a, b, c] = edits(id);
    for u in [a, b, c] {
        let u = yrs::Update::decode_v1(&u).unwrap();
        doc.transact_mut().apply_update(u).unwrap();
    }
    let txn = doc.transact();
    (
        txn.encode_state_as_update_v1(&StateVector::default()),
        txn.state_vector().encode_v1(),
    )
}

fn awareness(entries: &[(u64, u64, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    roomd_sync::awareness::encode(
        entries.iter().map(
            |&(client_id, clock, state_json)| roomd_sync::awareness::Entry {
                client_id,
                clock,
                state_json,
            },
        ),
        &mut out,
    );
    out
}

/// A step of a session script (see `roomd_sync::fuzzing::drive_session`): a frame from `slot`.
fn send(script: &mut Vec<u8>, slot: u8, frame: &[u8]) {
    assert!(frame.len() < 255);
    script.push(slot);
    script.push(frame.len() as u8);
    script.extend_from_slice(frame);
}

/// The seeds, by target and file name.
fn seeds() -> BTreeMap<(&'static str, &'static str), Vec<u8>> {
    let [insert, set, delete] = edits(7);
    let (state, sv) = full_state(9);
    let presence = awareness(&[(7, 1, r##"{"user":{"name":"ada","color":"#f0a"}}"##)]);
    let leave = awareness(&[(7, 2, "null")]);
    let step1 = frame(Message::Sync(SyncMessage::Step1(&sv)));
    let empty_step1 = frame(Message::Sync(SyncMessage::Step1(&[0])));
    let step2 = frame(Message::Sync(SyncMessage::Step2(&state)));
    let update = frame(Message::Sync(SyncMessage::Update(&insert)));
    let aware = frame(Message::Awareness(&presence));
    let mut batch = Vec::new();
    for m in [
        Message::Sync(SyncMessage::Update(&set)),
        Message::Awareness(&leave),
        Message::QueryAwareness,
    ] {
        m.encode(&mut batch);
    }

    let mut seeds = BTreeMap::new();
    seeds.insert(("codec", "sync-step1"), step1.clone());
    seeds.insert(("codec", "sync-step2"), step2.clone());
    seeds.insert(("codec", "sync-update"), update.clone());
    seeds.insert(("codec", "awareness"), aware.clone());
    seeds.insert(("codec", "awareness-update"), presence.clone());
    seeds.insert(("codec", "query-awareness"), frame(Message::QueryAwareness));
    seeds.insert(
        ("codec", "auth-denied"),
        frame(Message::AuthDenied("no access")),
    );
    seeds.insert(("codec", "batch"), batch.clone());

    seeds.insert(("apply", "update-insert"), insert.clone());
    seeds.insert(("apply", "update-map"), set.clone());
    seeds.insert(("apply", "update-state"), state.clone());

    // Both connections sync, edit, announce presence, reconnect and survive a restart.
    let mut sync = Vec::new();
    send(&mut sync, 0, &empty_step1);
    send(&mut sync, 0, &update);
    send(&mut sync, 1, &step1);
    send(&mut sync, 1, &aware);
    send(&mut sync, 0, &batch);
    sync.push(2 << 1); // slot 0 closes
    sync.push(2 << 1); // and reconnects
    send(
        &mut sync,
        0,
        &frame(Message::Sync(SyncMessage::Update(&delete))),
    );
    sync.push(3 << 1); // restart
    send(&mut sync, 1, &step2);
    seeds.insert(("apply", "script-sync"), sync);

    // Updates out of order: the delete and the map set before the insert they depend on.
    let mut pending = Vec::new();
    send(
        &mut pending,
        1,
        &frame(Message::Sync(SyncMessage::Update(&delete))),
    );
    send(
        &mut pending,
        0,
        &frame(Message::Sync(SyncMessage::Update(&set))),
    );
    send(&mut pending, 0, &empty_step1);
    pending.push(3 << 1);
    send(&mut pending, 1, &update);
    send(&mut pending, 0, &empty_step1);
    seeds.insert(("apply", "script-pending"), pending);

    let big = vec![b'x'; 300];
    seeds.insert(
        ("frames", "fragments-around-a-ping"),
        frames_input(
            3,
            &[
                client_frame(false, opcode::BINARY, &update),
                client_frame(true, opcode::PING, b"p"),
                client_frame(true, opcode::CONTINUATION, &aware),
                client_frame(true, opcode::CLOSE, &[0x03, 0xE8, b'o', b'k']),
            ],
        ),
    );
    seeds.insert(
        ("frames", "every-length-form"),
        frames_input(
            1,
            &[
                client_frame(true, opcode::BINARY, &big[..125]),
                client_frame(true, opcode::BINARY, &big[..126]),
                client_frame(true, opcode::BINARY, &big),
                client_frame(true, opcode::PONG, b""),
            ],
        ),
    );
    seeds.insert(
        ("frames", "text-then-binary"),
        frames_input(
            7,
            &[
                client_frame(false, opcode::TEXT, b"he"),
                client_frame(true, opcode::CONTINUATION, b"llo"),
                client_frame(true, opcode::BINARY, &step1),
            ],
        ),
    );
    seeds.insert(
        ("frames", "over-the-limit"),
        frames_input(5, &[client_frame(true, opcode::BINARY, &[0; 2000])]),
    );
    seeds.insert(
        ("frames", "refused-then-close"),
        frames_input(
            9,
            &[
                client_frame(false, opcode::BINARY, &big),
                client_frame(false, opcode::CONTINUATION, &[0; 1000]),
                client_frame(true, opcode::PING, b"p"),
                client_frame(true, opcode::CONTINUATION, &[0; 2000]),
                client_frame(true, opcode::BINARY, &step1),
                client_frame(true, opcode::CLOSE, &[0x03, 0xE8]),
            ],
        ),
    );
    let meta = serde_json::json!({"v": 1, "otel": {}});
    seeds.insert(
        ("room_protocol", "invoke-sync-open"),
        packets_input(&[
            (
                1,
                "room.invoke_tool",
                payload(
                    serde_json::json!({"toolkit": "sync", "tool": "open", "participant_id": null,
                        "on_behalf_of_id": null, "arguments": {"type": "control", "method": "open"},
                        "tool_call_id": "a1", "__meshagent__": meta}),
                    b"",
                ),
            ),
            (
                2,
                "room.tool_call_request_chunk",
                payload(
                    serde_json::json!({"tool_call_id": "a1", "chunk": {"type": "binary",
                        "headers": {"kind": "start", "path": "notes/plan.doc", "create": true,
                        "vector": null, "schema": null}}, "__meshagent__": meta}),
                    b"",
                ),
            ),
            (
                3,
                "room.tool_call_request_chunk",
                payload(
                    serde_json::json!({"tool_call_id": "a1", "chunk": {"type": "binary",
                        "headers": {"kind": "sync"}}}),
                    &vec![b'A'; 2500],
                ),
            ),
        ]),
    );
    seeds.insert(
        ("room_protocol", "every-content"),
        packets_input(&[
            (
                4,
                "__response__",
                payload(
                    serde_json::json!({"type": "json", "json": {"a": [1, 2]}}),
                    b"",
                ),
            ),
            (
                5,
                "__response__",
                payload(serde_json::json!({"type": "text", "text": "hi"}), b""),
            ),
            (
                6,
                "__response__",
                payload(
                    serde_json::json!({"type": "file", "name": "f", "mime_type": "text/plain"}),
                    b"data",
                ),
            ),
            (
                7,
                "__response__",
                payload(
                    serde_json::json!({"type": "link", "name": "n", "url": "u"}),
                    b"",
                ),
            ),
            (
                8,
                "__response__",
                payload(serde_json::json!({"type": "empty"}), b""),
            ),
            (
                9,
                "__response__",
                payload(
                    serde_json::json!({"type": "error", "text": "no", "code": 1003}),
                    b"",
                ),
            ),
            (
                10,
                "__response__",
                payload(
                    serde_json::json!({"type": "control", "method": "close", "status_code": 1000}),
                    b"",
                ),
            ),
            (
                11,
                "__response__",
                payload(serde_json::json!({"type": "raw", "outputs": []}), b""),
            ),
            (
                12,
                "set_attributes",
                payload(serde_json::json!({"color": "red"}), b""),
            ),
            (13, "messaging.enable", Vec::new()),
        ]),
    );
    seeds
}

#[test]
fn seeds_are_current() {
    let write = std::env::var_os("FUZZ_WRITE_SEEDS").is_some();
    for ((target, name), bytes) in seeds() {
        let path = fuzz_dir().join("seeds").join(target).join(name);
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else {
            let stored = std::fs::read(&path).unwrap_or_default();
            assert!(
                stored == bytes,
                "{} is stale; rewrite the seeds with FUZZ_WRITE_SEEDS=1",
                path.display()
            );
        }
    }
}
