//! Each work queue is also a document, `.queues/<name>`: its items and their states, written by
//! the server, and an inbox to which a client that may send to the queue appends sends, even
//! offline; the server takes each send into the queue once, in order, and marks it taken.
//!
//! The document is a view the room keeps while it is loaded (someone syncs it, or reads it over
//! REST). When it loads, it is brought up to the queue's state: every item the queue holds is
//! shown as it is, and items it shows that the queue no longer holds (finished while no one had
//! it loaded) are removed. While it is loaded, the queue's changes reach it through
//! [`Room::queue_docs_note`], which the queues' one funnel ([`Room::queue_effects`]) calls, and
//! are written at most every [`FLUSH_DELAY`], in one update for all of them. A queue whose
//! document no one has loaded costs nothing here.
//!
//! A client's update to the document passes its rules first (`room_apis::rules::InboxRules`:
//! only sends, appended to the inbox). Then [`Room::queue_doc_intake`] takes every send not yet
//! taken, in the inbox's order: its message (JSON text) is sent to the queue as any `send` is,
//! remembering the send's Yjs item id, and the document marks the send `taken` with the item's
//! sequence number at once, in the same turn, before any later call can complete the item. So
//! a send is taken once: an update that carries it again changes nothing (the document holds
//! the send already), and if the server stopped between taking a send and storing the mark,
//! the send is found not taken when the document loads again, and the item it became (which the
//! queue holds, since the mark's write precedes any acknowledgement of it) is found by the id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use roomd_crdt::queue_doc::{ItemView, QueueChange, QueueDoc, Retention};
use roomd_room_apis::queue::{self, Item, ItemState, Key, Record, Stored};
use tokio::time::{Duration, Instant};

use super::Room;
use crate::store::now_ms;

/// The prefix of a queue's document.
pub const QUEUE_DOC_PREFIX: &str = ".queues/";
/// The longest a loaded document waits to show its queue's changes.
pub const FLUSH_DELAY: Duration = Duration::from_millis(50);
/// Finished items and taken sends a document keeps, each.
pub const RETENTION: Retention = Retention {
    finished: 1000,
    taken: 1000,
};
/// Changes a queue's document waits to show, at most; past it they are written at once.
const PENDING_MAX: usize = 4096;

/// The queue whose document `doc` is, if it is one.
pub fn queue_of_doc(doc: &str) -> Option<&str> {
    let name = doc.strip_prefix(QUEUE_DOC_PREFIX)?;
    queue::validate_name(name).ok()?;
    Some(name)
}

/// The queues whose documents are loaded, and what each is yet to show.
#[derive(Debug, Default)]
pub(super) struct QueueDocs {
    /// Queues whose document is loaded with its view (a document dropped without telling is
    /// found gone at the next flush).
    loaded: HashSet<String>,
    pending: HashMap<String, Vec<QueueChange>>,
    /// When the pending changes are to be written.
    pub(super) due: Option<Instant>,
}

/// How the document shows `item`.
fn view_of(item: &Item) -> ItemView {
    let (consumer, state) = match &item.state {
        ItemState::Leased { consumer, .. } => (Some(consumer.clone()), "leased"),
        other => (None, other.name()),
    };
    ItemView {
        seq: item.seq,
        state,
        attempts: item.attempts,
        message: item.message.to_string(),
        consumer,
        from: item.origin.as_ref().map(|o| o.queue.clone()),
    }
}

impl QueueDocs {
    /// The changes `records` (and the queues `drained` emptied) make to the loaded documents.
    fn note(&mut self, records: &[Record], drained: &[String]) -> bool {
        if self.loaded.is_empty() {
            return false;
        }
        // Items moved to a dead-letter queue: their deletion from their queue is a death.
        let moved: HashSet<(&str, u64)> = records
            .iter()
            .filter_map(|r| match r {
                Record::Put(Stored::Item { item, .. }) => {
                    item.origin.as_ref().map(|o| (o.queue.as_str(), o.seq))
                }
                _ => None,
            })
            .collect();
        let mut noted = false;
        for record in records {
            let (queue, change) = match record {
                Record::Put(Stored::Item { queue, item }) => {
                    (queue.as_str(), QueueChange::Item(view_of(item)))
                }
                Record::Delete(Key::Item { queue, seq }) => {
                    let change = if moved.contains(&(queue.as_str(), *seq)) {
                        QueueChange::Finished {
                            seq: *seq,
                            state: "dead",
                        }
                    } else if drained.iter().any(|d| d == queue) {
                        QueueChange::Removed(*seq)
                    } else {
                        QueueChange::Finished {
                            seq: *seq,
                            state: "done",
                        }
                    };
                    (queue.as_str(), change)
                }
                Record::Delete(Key::Queue(queue)) => (queue.as_str(), QueueChange::Cleared),
                _ => continue,
            };
            if self.loaded.contains(queue) {
                self.pending
                    .entry(queue.to_string())
                    .or_default()
                    .push(change);
                noted = true;
            }
        }
        noted
    }

    fn pending_len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }
}

impl Room {
    /// Has the queue documents that are loaded show what `records` change (the queues'
    /// funnel calls it for every write; `drained` names the queues a drain emptied).
    pub(super) fn queue_docs_note(&mut self, records: &[Record], drained: &[String]) {
        if !self.queue_docs.note(records, drained) {
            return;
        }
        if self.queue_docs.pending_len() >= PENDING_MAX {
            self.flush_queue_docs();
        } else if self.queue_docs.due.is_none() {
            self.queue_docs.due = Some(Instant::now() + FLUSH_DELAY);
        }
    }

    /// Writes every pending change into its document.
    pub(super) fn flush_queue_docs(&mut self) {
        self.queue_docs.due = None;
        let pending = std::mem::take(&mut self.queue_docs.pending);
        for (queue, changes) in pending {
            self.write_queue_doc(&queue, &changes);
        }
    }

    /// Writes `changes` into the document of `queue`, if it is loaded with its view.
    fn write_queue_doc(&mut self, queue: &str, changes: &[QueueChange]) {
        let doc: Arc<str> = format!("{QUEUE_DOC_PREFIX}{queue}").into();
        let Some(d) = self.docs.get_mut(&doc) else {
            self.queue_docs.loaded.remove(queue);
            return;
        };
        let Some(view) = d.queue_view.as_mut() else {
            self.queue_docs.loaded.remove(queue);
            return;
        };
        let Some(update) = view.apply(d.session.doc_mut(), changes) else {
            return;
        };
        let mut out = Vec::new();
        d.session.publish(update, &mut out);
        self.show_when_durable(&doc, out);
    }

    /// Carries out the outputs of the server's own edits of a queue's document, sending them
    /// to its connections only once they are durable, with what the queue wrote before them: a
    /// client must never hold an edit of the server's that a crash could take back, since its
    /// resync would then carry that edit, which the document's rules refuse from a client, and
    /// with it the client's own sends. The flush is made here, in the room task: these edits
    /// come at most every [`FLUSH_DELAY`] per document, and when a client's sends arrive.
    fn show_when_durable(&mut self, doc: &Arc<str>, out: Vec<roomd_sync::Output>) {
        let (appends, rest): (Vec<_>, Vec<_>) = out
            .into_iter()
            .partition(|o| matches!(o, roomd_sync::Output::Append { .. }));
        self.carry_out(doc, appends);
        match self.ctx.store.flush() {
            Ok(durable) => self.ctx.durable_to(durable),
            Err(e) => {
                // Not shown: the connections resync from the document when they reconnect.
                self.ctx.metrics.storage_errors_total.inc();
                tracing::error!(room = %self.name, %doc, error = %e, "flushing a queue's document failed");
                return;
            }
        }
        self.carry_out(doc, rest);
    }

    /// Gives a queue's document, once loaded, its view: brought up to the queue's state, and
    /// its untaken sends taken. Nothing for another document, or one that has its view.
    pub(super) async fn queue_doc_attach(&mut self, doc: &Arc<str>) {
        let Some(queue) = queue_of_doc(doc).map(str::to_string) else {
            return;
        };
        if self.docs.get(doc).is_none_or(|d| d.queue_view.is_some()) {
            return;
        }
        if self.load_queues().await.is_err() {
            return;
        }
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let (mut view, init) = QueueDoc::open(d.session.doc_mut(), RETENTION);
        let mut changes = Vec::new();
        let mut held = HashSet::new();
        if let Ok(engine) = self.engine() {
            for item in engine.items(&queue) {
                held.insert(item.seq);
                changes.push(QueueChange::Item(view_of(item)));
            }
        }
        changes.extend(
            view.shown()
                .filter(|seq| !held.contains(seq) && !view.is_finished(*seq))
                .map(QueueChange::Removed)
                .collect::<Vec<_>>(),
        );
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let update = view.apply(d.session.doc_mut(), &changes);
        let mut out = Vec::new();
        for u in init.into_iter().chain(update) {
            d.session.publish(u, &mut out);
        }
        d.queue_view = Some(view);
        self.show_when_durable(doc, out);
        self.queue_docs.loaded.insert(queue);
        self.queue_doc_intake(doc).await;
    }

    /// Takes the sends of a queue's document that are not taken yet into its queue, in order,
    /// and shows them taken (see the module's notes). Call it after a client's update to the
    /// document is applied.
    pub(super) async fn queue_doc_intake(&mut self, doc: &Arc<str>) {
        let Some(queue) = queue_of_doc(doc).map(str::to_string) else {
            return;
        };
        if self.docs.get(doc).is_some_and(|d| d.queue_view.is_none()) {
            // Not attached yet: attaching takes the sends.
            Box::pin(self.queue_doc_attach(doc)).await;
            return;
        }
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        let Some(view) = d.queue_view.as_mut() else {
            return;
        };
        let pending = view.pending_sends(d.session.doc());
        if pending.is_empty() {
            return;
        }
        let mut marks = Vec::new();
        for send in pending {
            let key = send.key.to_string();
            let Ok(engine) = self.engine() else {
                return;
            };
            if let Some(seq) = engine.find_send(&queue, &key) {
                marks.push(QueueChange::Taken {
                    send: send.key,
                    seq,
                });
                continue;
            }
            let message: serde_json::Value = match serde_json::from_str(&send.message) {
                Ok(m) => m,
                Err(_) => {
                    marks.push(QueueChange::Refused {
                        send: send.key,
                        reason: "the message is not JSON".into(),
                    });
                    continue;
                }
            };
            match engine.send_from(&queue, message, true, now_ms(), &key) {
                Ok(sent) => {
                    let seq = sent.value;
                    if self.queue_effects(sent.effects) == super::queues::Persisted::Failed {
                        // Not stored: the send stays untaken, to be taken when the document
                        // loads again (or the client's next update arrives).
                        break;
                    }
                    marks.push(QueueChange::Taken {
                        send: send.key,
                        seq,
                    });
                }
                Err(e) => marks.push(QueueChange::Refused {
                    send: send.key,
                    reason: e.to_string(),
                }),
            }
        }
        // The items' changes the funnel noted go first, then the marks, all now: the marks'
        // write precedes any later call's.
        let mut changes = self.queue_docs.pending.remove(&queue).unwrap_or_default();
        changes.extend(marks);
        self.write_queue_doc(&queue, &changes);
    }

    /// A queue's document was dropped from memory.
    pub(super) fn queue_doc_unloaded(&mut self, doc: &str) {
        if let Some(queue) = queue_of_doc(doc) {
            self.queue_docs.loaded.remove(queue);
            self.queue_docs.pending.remove(queue);
        }
    }
}
