//! The storage path every accepted update takes: appending it to its document's log in sled
//! (the room does this before forwarding, so it is part of every edit's latency), the group
//! commit that makes a batch durable, folding a log into a snapshot, and loading a document
//! after a restart.
//!
//! `cargo bench -p roomd --bench store`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomd::{DocKey, RoomKey, Store};

/// About the size of one typed character as a Yjs v1 update.
const KEYSTROKE: [u8; 25] = [
    1, 1, 215, 198, 174, 234, 14, 17, 132, 215, 198, 174, 234, 14, 16, 1, 120, 0, 0, 0, 0, 0, 0, 0,
    0,
];

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 64 * 1024 * 1024).unwrap();
    (dir, store)
}

fn store(c: &mut Criterion) {
    let mut g = c.benchmark_group("store");
    let (_dir, s) = open();
    let key = DocKey::new(&RoomKey::new([0; 16], "bench"), "doc");
    let mut seq = 0u64;
    g.throughput(Throughput::Elements(1));
    g.bench_function("append one keystroke", |b| {
        b.iter(|| {
            s.append(&key, seq, &KEYSTROKE).unwrap();
            seq += 1;
        })
    });
    // What a busy document writes between two group commits (20 ms), then the commit.
    g.throughput(Throughput::Elements(100));
    g.bench_function("append 100 keystrokes and flush", |b| {
        b.iter(|| {
            for _ in 0..100 {
                s.append(&key, seq, &KEYSTROKE).unwrap();
                seq += 1;
            }
            s.flush().unwrap();
        })
    });
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("compact 1,000 log entries", |b| {
        b.iter_batched(
            || {
                let key = DocKey::new(&RoomKey::new([0; 16], "bench"), &format!("compact-{seq}"));
                for i in 0..1_000 {
                    s.append(&key, i, &KEYSTROKE).unwrap();
                }
                seq += 1;
                key
            },
            |key| s.compact(&key, &[0u8; 4_096], 999).unwrap(),
            BatchSize::PerIteration,
        )
    });
    // A restart: a 200 KiB snapshot (the automerge-paper document is 218 KiB) and the log
    // written after it.
    let loaded = DocKey::new(&RoomKey::new([0; 16], "bench"), "loaded");
    s.compact(&loaded, &vec![7u8; 200 * 1024], 0).unwrap();
    for i in 1..=1_000 {
        s.append(&loaded, i, &KEYSTROKE).unwrap();
    }
    g.throughput(Throughput::Elements(1));
    g.bench_function("load a snapshot and 1,000 log entries", |b| {
        b.iter(|| {
            let doc = s.load(&loaded).unwrap();
            assert_eq!(doc.log.len(), 1_000);
            doc
        })
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
