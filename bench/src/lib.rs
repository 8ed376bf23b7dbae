//! roomd-bench: one load generator for roomd and the servers users would pick instead
//! (the classic y-websocket server, Hocuspocus, y-sweet), and the `compare` run that puts
//! them side by side and writes `BENCHMARKS.md`.

pub mod book;
pub mod compare;
pub mod peer;
pub mod procstat;
pub mod queues;
pub mod relay;
pub mod render;
pub mod room;
pub mod scenarios;
pub mod target;

/// Loads a gzipped editing trace from a file.
pub fn load_trace(path: &std::path::Path) -> anyhow::Result<roomd_crdt::trace::Trace> {
    let bytes =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    Ok(roomd_crdt::trace::Trace::from_gzip(&bytes)?)
}
