//! Process metrics, kept with `prometheus-client` and rendered in the Prometheus text format at
//! `GET /metrics`. No label value is ever a room, document or participant name: labels are
//! close codes and refusal reasons, fixed sets of short names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use roomd_sync::CloseCode;

use crate::store::Store;

/// The labels of a close: its numeric code and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CloseLabels {
    code: u16,
    reason: &'static str,
}

/// The label of an authentication or authorization refusal: a short stable reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Counters, gauges and histograms shared by every task. Each metric is a cheap handle;
/// updating one is an atomic operation.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket connections open now.
    pub connections_open: Gauge,
    /// WebSocket connections accepted since start.
    pub connections_total: Counter,
    closes: Family<CloseLabels, Counter>,
    /// Rooms loaded now.
    pub rooms_active: Gauge,
    /// Documents loaded now.
    pub docs_loaded: Gauge,
    /// Binary frames received from clients.
    pub frames_received_total: Counter,
    /// Frames queued to clients.
    pub frames_sent_total: Counter,
    /// Times a connection stopped reading because it sent faster than its message rate.
    pub reads_throttled_total: Counter,
    /// Updates accepted and appended to a log.
    pub updates_appended_total: Counter,
    /// Log compactions completed.
    pub compactions_total: Counter,
    /// Storage errors.
    pub storage_errors_total: Counter,
    /// Updates refused because their sender may only read the document.
    pub updates_refused_total: Counter,
    /// Awareness entries dropped as spoofing another participant's state.
    pub awareness_spoofed_total: Counter,
    auth_refusals: Family<ReasonLabels, Counter>,
    /// Participants connected now, over every room.
    pub participants: Gauge,
    /// Sessions started (room activations).
    pub sessions_total: Counter,
    /// Developer events written.
    pub events_written_total: Counter,
    /// Seconds a room took to decode, validate and apply what one document received at once.
    pub update_apply_seconds: Histogram,
    /// Seconds a group commit (one flush of the store) took.
    pub flush_seconds: Histogram,
}

/// Reads the store's group-commit counters at each scrape.
#[derive(Debug)]
struct StoreCollector(Store);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            (
                "roomd_store_writes",
                "Storage writes issued.",
                self.0.written(),
            ),
            (
                "roomd_store_durable_writes",
                "Storage writes covered by a completed flush.",
                self.0.durable(),
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Every metric, registered; the store's counters are read from `store` at each scrape.
    pub fn new(store: &Store) -> Metrics {
        let mut registry = Registry::default();
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        // From 50 µs to about 3.3 s, doubling.
        let seconds = || Histogram::new(exponential_buckets(0.000_05, 2.0, 17));
        let connections_open = gauge(
            &mut registry,
            "roomd_connections_open",
            "WebSocket connections open.",
        );
        let connections_total = counter(
            &mut registry,
            "roomd_connections",
            "WebSocket connections accepted.",
        );
        let closes = Family::<CloseLabels, Counter>::default();
        registry.register(
            "roomd_closes",
            "Connections closed by the server, by close code.",
            closes.clone(),
        );
        let rooms_active = gauge(&mut registry, "roomd_rooms_active", "Rooms loaded.");
        let docs_loaded = gauge(&mut registry, "roomd_docs_loaded", "Documents loaded.");
        let frames_received_total = counter(
            &mut registry,
            "roomd_frames_received",
            "Binary frames received.",
        );
        let frames_sent_total = counter(
            &mut registry,
            "roomd_frames_sent",
            "Frames queued to clients.",
        );
        let reads_throttled_total = counter(
            &mut registry,
            "roomd_reads_throttled",
            "Times a connection stopped reading because it sent faster than its message rate.",
        );
        let updates_appended_total = counter(
            &mut registry,
            "roomd_updates_appended",
            "Accepted updates appended to a log.",
        );
        let compactions_total = counter(
            &mut registry,
            "roomd_compactions",
            "Log compactions completed.",
        );
        let storage_errors_total =
            counter(&mut registry, "roomd_storage_errors", "Storage errors.");
        let updates_refused_total = counter(
            &mut registry,
            "roomd_updates_refused",
            "Updates refused because their sender may only read the document.",
        );
        let awareness_spoofed_total = counter(
            &mut registry,
            "roomd_awareness_spoofed",
            "Awareness entries dropped for setting another participant's state.",
        );
        let auth_refusals = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "roomd_auth_refusals",
            "Requests and connections refused for their credentials, by reason.",
            auth_refusals.clone(),
        );
        let participants = gauge(
            &mut registry,
            "roomd_participants",
            "Participants connected, over every room.",
        );
        let sessions_total = counter(
            &mut registry,
            "roomd_sessions",
            "Sessions started (room activations).",
        );
        let events_written_total = counter(
            &mut registry,
            "roomd_events_written",
            "Developer events written.",
        );
        let update_apply_seconds = seconds();
        registry.register(
            "roomd_update_apply_seconds",
            "Time a room took to decode, validate and apply the frames one document received at once.",
            update_apply_seconds.clone(),
        );
        let flush_seconds = seconds();
        registry.register(
            "roomd_store_flush_seconds",
            "Time one group commit (a flush of the store) took.",
            flush_seconds.clone(),
        );
        registry.register_collector(Box::new(StoreCollector(store.clone())));
        let metrics = Metrics {
            registry,
            connections_open,
            connections_total,
            closes,
            rooms_active,
            docs_loaded,
            frames_received_total,
            frames_sent_total,
            reads_throttled_total,
            updates_appended_total,
            compactions_total,
            storage_errors_total,
            updates_refused_total,
            awareness_spoofed_total,
            auth_refusals,
            participants,
            sessions_total,
            events_written_total,
            update_apply_seconds,
            flush_seconds,
        };
        // Every close code is listed from the start, at zero, so that a dashboard sees each.
        for code in CloseCode::ALL {
            let _ = metrics.closes.get_or_create(&close_labels(code));
        }
        metrics
    }

    /// Counts a close sent by the server.
    pub fn count_close(&self, code: CloseCode) {
        self.closes.get_or_create(&close_labels(code)).inc();
    }

    /// Counts a refusal for its credentials, by a short stable reason.
    pub fn count_refusal(&self, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Refusals counted with `reason` so far.
    pub fn refusals(&self, reason: &'static str) -> u64 {
        self.auth_refusals
            .get_or_create(&ReasonLabels { reason })
            .get()
    }

    /// Closes sent with `code` so far.
    pub fn closes(&self, code: CloseCode) -> u64 {
        self.closes.get_or_create(&close_labels(code)).get()
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn close_labels(code: CloseCode) -> CloseLabels {
    CloseLabels {
        code: code.code(),
        reason: code.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_histograms_and_the_store() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(dir.path(), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let m = Metrics::new(&store);
        m.connections_open.inc();
        m.count_close(CloseCode::TooSlow);
        m.update_apply_seconds.observe(0.001);
        let text = m.render();
        for line in [
            "roomd_connections_open 1",
            "roomd_closes_total{code=\"4508\",reason=\"too_slow\"} 1",
            "roomd_closes_total{code=\"4400\",reason=\"protocol_error\"} 0",
            &format!("roomd_store_writes_total {}", store.written()),
            &format!("roomd_store_durable_writes_total {}", store.durable()),
            "roomd_update_apply_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert_eq!(m.closes(CloseCode::TooSlow), 1);
    }
}
