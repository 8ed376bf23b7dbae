//! Process metrics, rendered in the Prometheus text format at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use roomd_sync::CloseCode;

use crate::store::Store;

/// Counters and gauges shared by every task.
#[derive(Debug, Default)]
pub struct Metrics {
    /// WebSocket connections open now.
    pub connections_open: AtomicU64,
    /// WebSocket connections accepted since start.
    pub connections_total: AtomicU64,
    /// Connections closed by the server, by close code (indexed like [`CloseCode::ALL`]).
    closes: [AtomicU64; CloseCode::ALL.len()],
    /// Rooms loaded now.
    pub rooms_active: AtomicU64,
    /// Documents loaded now.
    pub docs_loaded: AtomicU64,
    /// Binary frames received from clients.
    pub frames_received_total: AtomicU64,
    /// Frames queued to clients.
    pub frames_sent_total: AtomicU64,
    /// Times a connection stopped reading because it sent faster than its message rate.
    pub reads_throttled_total: AtomicU64,
    /// Updates accepted and appended to a log.
    pub updates_appended_total: AtomicU64,
    /// Log compactions completed.
    pub compactions_total: AtomicU64,
    /// Storage errors.
    pub storage_errors_total: AtomicU64,
}

impl Metrics {
    /// Counts a close sent by the server.
    pub fn count_close(&self, code: CloseCode) {
        if let Some(i) = CloseCode::ALL.iter().position(|&c| c == code) {
            self.closes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes sent with `code` so far.
    pub fn closes(&self, code: CloseCode) -> u64 {
        CloseCode::ALL
            .iter()
            .position(|&c| c == code)
            .map_or(0, |i| self.closes[i].load(Ordering::Relaxed))
    }

    /// The Prometheus exposition text.
    pub fn render(&self, store: &Store) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric(
            "roomd_connections_open",
            "gauge",
            "WebSocket connections open.",
            get(&self.connections_open),
        );
        metric(
            "roomd_connections_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.connections_total),
        );
        metric(
            "roomd_rooms_active",
            "gauge",
            "Rooms loaded.",
            get(&self.rooms_active),
        );
        metric(
            "roomd_docs_loaded",
            "gauge",
            "Documents loaded.",
            get(&self.docs_loaded),
        );
        metric(
            "roomd_frames_received_total",
            "counter",
            "Binary frames received.",
            get(&self.frames_received_total),
        );
        metric(
            "roomd_frames_sent_total",
            "counter",
            "Frames queued to clients.",
            get(&self.frames_sent_total),
        );
        metric(
            "roomd_reads_throttled_total",
            "counter",
            "Times a connection stopped reading because it sent faster than its message rate.",
            get(&self.reads_throttled_total),
        );
        metric(
            "roomd_updates_appended_total",
            "counter",
            "Accepted updates appended to a log.",
            get(&self.updates_appended_total),
        );
        metric(
            "roomd_compactions_total",
            "counter",
            "Log compactions completed.",
            get(&self.compactions_total),
        );
        metric(
            "roomd_storage_errors_total",
            "counter",
            "Storage errors.",
            get(&self.storage_errors_total),
        );
        metric(
            "roomd_store_writes_total",
            "counter",
            "Storage writes issued.",
            store.written(),
        );
        metric(
            "roomd_store_durable_writes_total",
            "counter",
            "Storage writes covered by a completed flush.",
            store.durable(),
        );
        let _ = writeln!(
            out,
            "# HELP roomd_closes_total Connections closed by the server, by close code.\n# TYPE roomd_closes_total counter"
        );
        for (i, code) in CloseCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "roomd_closes_total{{code=\"{}\",reason=\"{}\"}} {}",
                code.code(),
                code.name(),
                self.closes[i].load(Ordering::Relaxed)
            );
        }
        out
    }
}
