//! Replays the automerge-paper editing trace (259,778 patches) into a roomd document one
//! update per patch, and times snapshot encoding and loading of the result.
//!
//! `cargo bench -p roomd-crdt --features trace --bench replay`; the trace is read from
//! `$ROOMD_TRACE` or `../shared/data/editing-traces/automerge-paper.json.gz` next to the
//! repository.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomd_crdt::trace::Trace;
use roomd_crdt::{DocLimits, YDoc};

fn trace_path() -> PathBuf {
    std::env::var_os("ROOMD_TRACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/data/editing-traces/automerge-paper.json.gz")
        })
}

fn replay(updates: &[Vec<u8>]) -> YDoc {
    let mut doc = YDoc::new(DocLimits::DEFAULT);
    for u in updates {
        doc.apply_update(u).unwrap();
    }
    doc
}

fn benches(c: &mut Criterion) {
    let path = trace_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading the trace {}: {e} (set ROOMD_TRACE)",
            path.display()
        )
    });
    let trace = Trace::from_gzip(&bytes).unwrap();
    let updates = trace.updates(1, "text");
    let doc = replay(&updates);
    assert_eq!(
        doc.text("text"),
        trace.end_content,
        "replay diverged from endContent"
    );
    let snapshot = doc.snapshot();
    println!(
        "automerge-paper: {} updates, {} bytes of updates, snapshot {} bytes, {} characters",
        updates.len(),
        updates.iter().map(Vec::len).sum::<usize>(),
        snapshot.len(),
        trace.end_content.chars().count()
    );

    let mut g = c.benchmark_group("automerge-paper");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(updates.len() as u64));
    g.bench_function("apply one update per patch", |b| {
        b.iter(|| replay(&updates))
    });
    g.finish();

    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Bytes(snapshot.len() as u64));
    g.bench_function("encode", |b| b.iter(|| doc.snapshot()));
    g.bench_function("load", |b| {
        b.iter_batched(
            || YDoc::new(DocLimits::DEFAULT),
            |mut fresh| {
                fresh.apply_update(&snapshot).unwrap();
                fresh
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("diff against empty state vector", |b| {
        let empty = YDoc::new(DocLimits::DEFAULT).state_vector();
        b.iter(|| doc.diff(&empty).unwrap())
    });
    g.finish();
}

criterion_group!(replay_benches, benches);
criterion_main!(replay_benches);
