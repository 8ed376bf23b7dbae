//! The protocol's hot paths: decoding and encoding y-websocket frames, and the room core
//! receiving one typed character and fanning it out to a room of 100 connections, or a queued
//! batch of keystrokes merged into one update for them.
//!
//! `cargo bench -p roomd-sync --bench codec`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomd_crdt::{DocLimits, YDoc};
use roomd_sync::{
    decode_frame, ConnId, Message, MessageLimits, Output, SessionLimits, SyncMessage, YjsDocSession,
};
use yrs::{Doc, Text, Transact};

const LIMITS: MessageLimits = MessageLimits {
    payload_bytes_max: 8 * 1024 * 1024,
};

/// One keystroke as a y-websocket update frame, and a 100 KiB document as a step 2 frame.
fn frames() -> (Vec<u8>, Vec<u8>) {
    let doc = Doc::with_client_id(7);
    let text = doc.get_or_insert_text("text");
    let paragraph = "The quick brown fox jumps over the lazy dog. ".repeat(2300);
    let big = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &paragraph);
        txn.encode_update_v1()
    };
    let key = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 17, "x");
        txn.encode_update_v1()
    };
    (
        Message::Sync(SyncMessage::Update(&key)).to_vec(),
        Message::Sync(SyncMessage::Step2(&big)).to_vec(),
    )
}

fn codec(c: &mut Criterion) {
    let (key, big) = frames();
    let awareness = {
        let json =
            br##"{"user":{"name":"Ada","color":"#30bced"},"cursor":{"anchor":17,"head":17}}"##;
        let mut a = vec![1u8, 0x8e, 0x07, 12];
        a.push(json.len() as u8);
        a.extend_from_slice(json);
        Message::Awareness(&a).to_vec()
    };
    let mut g = c.benchmark_group("decode");
    for (name, frame) in [
        ("keystroke update", &key),
        ("awareness", &awareness),
        ("100 KiB step 2", &big),
    ] {
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| decode_frame(frame, LIMITS).unwrap().len())
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    for (name, frame) in [("keystroke update", &key), ("100 KiB step 2", &big)] {
        let msgs = decode_frame(frame, LIMITS).unwrap();
        let msg = msgs[0];
        g.throughput(Throughput::Bytes(frame.len() as u64));
        g.bench_function(name, |b| b.iter(|| msg.to_vec()));
    }
    g.finish();
}

fn room_core(c: &mut Criterion) {
    let limits = SessionLimits {
        message: LIMITS,
        conns_max: 2000,
        awareness_states_per_conn_max: 16,
    };
    let writer = Doc::with_client_id(9);
    let text = writer.get_or_insert_text("text");
    let mut typed = 0u32;
    // Each iteration applies a new keystroke, made (untimed) by a writer's own document.
    let mut keystroke = move || {
        let mut txn = writer.transact_mut();
        text.insert(&mut txn, typed, "a");
        typed += 1;
        let frame = Message::Sync(SyncMessage::Update(&txn.encode_update_v1())).to_vec();
        (Bytes::from(frame), Vec::with_capacity(128))
    };
    let mut g = c.benchmark_group("room core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("keystroke fanned out to 100 connections", |b| {
        let mut session = YjsDocSession::new(YDoc::new(DocLimits::DEFAULT), limits);
        let mut out = Vec::new();
        for i in 0..100 {
            session.open(ConnId(i), &mut out).unwrap();
        }
        b.iter_batched(
            &mut keystroke,
            |(frame, mut out): (Bytes, Vec<Output>)| {
                session.receive(ConnId(0), &frame, &mut out);
                assert_eq!(out.len(), 100);
                out
            },
            BatchSize::SmallInput,
        )
    });
    // What a busy document's room does with a queued inbox: 10 writers' keystrokes, 64 in all,
    // received as one batch, merged, appended once and fanned out as one frame.
    let writers: Vec<(Doc, yrs::TextRef)> = (0..10)
        .map(|i| {
            let doc = Doc::with_client_id(100 + i);
            let text = doc.get_or_insert_text(format!("text-{i}").as_str());
            (doc, text)
        })
        .collect();
    let mut typed = vec![0u32; writers.len()];
    let mut batch = move || {
        let frames: Vec<(ConnId, Bytes)> = (0..64)
            .map(|k| {
                let w = k % writers.len();
                let (doc, text) = &writers[w];
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, typed[w], "a");
                typed[w] += 1;
                let update = txn.encode_update_v1();
                let frame = Message::Sync(SyncMessage::Update(&update)).to_vec();
                (ConnId(w as u64), Bytes::from(frame))
            })
            .collect();
        (frames, Vec::with_capacity(128))
    };
    g.throughput(Throughput::Elements(64));
    g.bench_function(
        "64 keystrokes of 10 writers merged to 100 connections",
        |b| {
            let mut session = YjsDocSession::new(YDoc::new(DocLimits::DEFAULT), limits);
            let mut out = Vec::new();
            for i in 0..100 {
                session.open(ConnId(i), &mut out).unwrap();
            }
            b.iter_batched(
                &mut batch,
                |(frames, mut out): (Vec<(ConnId, Bytes)>, Vec<Output>)| {
                    session.receive_many(&frames, &mut out);
                    assert_eq!(out.len(), 101);
                    out
                },
                BatchSize::SmallInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, codec, room_core);
criterion_main!(benches);
