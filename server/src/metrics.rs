//! Process metrics, kept with `prometheus-client` and rendered in the Prometheus text format at
//! `GET /metrics`. No label value is ever a room, document or participant name: labels are
//! close codes and refusal reasons, fixed sets of short names.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
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
    /// The work queues of the rooms loaded, as each room task last published them.
    pub queues: QueueGauges,
}

/// One room's work queues, as its task last published them (after every mutation): atomics
/// the room writes and the scrape reads, so no lock is shared with the room.
#[derive(Debug)]
pub struct RoomQueueGauge {
    waiting: AtomicU64,
    leased: AtomicU64,
    dead: AtomicU64,
    /// When the room's oldest waiting item entered its queue (ms since the epoch); `u64::MAX`
    /// when none waits.
    oldest_enqueued_ms: AtomicU64,
}

impl RoomQueueGauge {
    /// Publishes the room's counts.
    pub fn set(&self, totals: &roomd_room_apis::queue::Totals) {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.waiting.store(n(totals.waiting), Ordering::Relaxed);
        self.leased.store(n(totals.leased), Ordering::Relaxed);
        self.dead.store(n(totals.dead), Ordering::Relaxed);
        self.oldest_enqueued_ms.store(
            totals.oldest_enqueued_ms.unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// The rooms whose queues are loaded, each with its [`RoomQueueGauge`]; a room's gauge goes
/// when the room drops it. Rendered as sums over rooms, the deepest room's depth and the age of
/// the oldest waiting item of any room: no label names a room.
#[derive(Debug, Clone, Default)]
pub struct QueueGauges(Arc<Mutex<Vec<Weak<RoomQueueGauge>>>>);

impl QueueGauges {
    /// A gauge for a room whose queues were just loaded.
    pub fn register(&self) -> Arc<RoomQueueGauge> {
        let gauge = Arc::new(RoomQueueGauge {
            waiting: AtomicU64::new(0),
            leased: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            oldest_enqueued_ms: AtomicU64::new(u64::MAX),
        });
        let mut rooms = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rooms.retain(|w| w.strong_count() > 0);
        rooms.push(Arc::downgrade(&gauge));
        gauge
    }

    /// Sums over the rooms: waiting, leased, dead, the deepest room's waiting items, and the
    /// oldest waiting item's entry time.
    fn read(&self) -> [u64; 5] {
        let rooms = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = [0, 0, 0, 0, u64::MAX];
        for g in rooms.iter().filter_map(Weak::upgrade) {
            let waiting = g.waiting.load(Ordering::Relaxed);
            out[0] = out[0].saturating_add(waiting);
            out[1] = out[1].saturating_add(g.leased.load(Ordering::Relaxed));
            out[2] = out[2].saturating_add(g.dead.load(Ordering::Relaxed));
            out[3] = out[3].max(waiting);
            out[4] = out[4].min(g.oldest_enqueued_ms.load(Ordering::Relaxed));
        }
        out
    }
}

impl Collector for QueueGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let [waiting, leased, dead, deepest, oldest] = self.read();
        let age_s = match oldest {
            u64::MAX => 0.0,
            at => crate::store::now_ms().saturating_sub(at) as f64 / 1e3,
        };
        let to_f = |v: u64| v as f64;
        for (name, help, value) in [
            (
                "roomd_queue_items_waiting",
                "Work-queue items waiting to be received, over the rooms whose queues are loaded.",
                to_f(waiting),
            ),
            (
                "roomd_queue_items_leased",
                "Work-queue items leased to a consumer and not yet acknowledged.",
                to_f(leased),
            ),
            (
                "roomd_queue_items_dead",
                "Work-queue items held dead in their queue (their dead-letter queue could not take them).",
                to_f(dead),
            ),
            (
                "roomd_queue_room_depth_max",
                "Waiting items of the room with the most waiting (the per-room depth, without naming the room).",
                to_f(deepest),
            ),
            (
                "roomd_queue_oldest_waiting_age_seconds",
                "How long the oldest waiting work-queue item of any room has waited (0 when none waits).",
                age_s,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
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
            (
                "roomd_store_queue_compactions",
                "Rooms' work-queue journals folded into their records.",
                self.0.queue_compactions(),
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
        let queues = QueueGauges::default();
        registry.register_collector(Box::new(queues.clone()));
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
            queues,
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
        let room = m.queues.register();
        room.set(&roomd_room_apis::queue::Totals {
            queues: 2,
            waiting: 3,
            leased: 1,
            dead: 2,
            oldest_enqueued_ms: Some(crate::store::now_ms()),
            bytes: 10,
        });
        let other = m.queues.register();
        other.set(&roomd_room_apis::queue::Totals {
            waiting: 5,
            ..Default::default()
        });
        let gone = m.queues.register();
        gone.set(&roomd_room_apis::queue::Totals {
            waiting: 100,
            ..Default::default()
        });
        drop(gone);
        let text = m.render();
        for line in [
            "roomd_connections_open 1",
            "roomd_closes_total{code=\"4508\",reason=\"too_slow\"} 1",
            "roomd_closes_total{code=\"4400\",reason=\"protocol_error\"} 0",
            &format!("roomd_store_writes_total {}", store.written()),
            &format!("roomd_store_durable_writes_total {}", store.durable()),
            "roomd_store_queue_compactions_total 0",
            "roomd_update_apply_seconds_count 1",
            "roomd_queue_items_waiting 8.0",
            "roomd_queue_items_leased 1.0",
            "roomd_queue_items_dead 2.0",
            "roomd_queue_room_depth_max 5.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in\n{text}"
            );
        }
        assert_eq!(m.closes(CloseCode::TooSlow), 1);
    }
}
