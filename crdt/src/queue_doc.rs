//! A work queue's document (`.queues/<name>`): what the server writes into it, and the sends
//! clients append to it.
//!
//! The document's `xml` root holds two elements. `items` holds one `item` per item of the
//! queue, in the queue's order, each with `$id` and `seq` (its sequence number, as text),
//! `state` (`waiting`, `leased`, `done` or `dead`), `attempts`, `message` (its JSON text) and,
//! when there is one, `consumer` (who holds its lease) or `from` (the queue a dead item came
//! from). Finished items (`done`, `dead`) stay up to a bound, oldest removed first. `inbox` holds the
//! `send`s clients append (each with `$id` and `message`, its JSON text); the server takes each
//! once, and sets its `taken` attribute to the sequence number of the item it became (or to
//! `refused: …` when the queue would not take it). Taken sends stay, up to a bound, oldest
//! removed first.
//!
//! Only the server writes items and `taken`: the document's rules
//! (`room_apis::rules::InboxRules`) let a client append sends and nothing else. A send is known
//! by its Yjs item id, which no other element ever has, so a send is taken once whatever
//! updates carry it again.

use std::collections::{HashMap, HashSet, VecDeque};

use yrs::branch::{Branch, BranchID};
use yrs::{
    ReadTxn, Transact, TransactionMut, WriteTxn, Xml, XmlElementPrelim, XmlElementRef, XmlFragment,
    XmlOut,
};

use crate::YDoc;

const ROOT: &str = "xml";
const ITEMS: &str = "items";
const INBOX: &str = "inbox";

/// An item as the document shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemView {
    /// Its sequence number in its queue.
    pub seq: u64,
    /// `waiting`, `leased`, `done` or `dead` (its attempts spent: held dead, or moved to the
    /// dead-letter queue, whose own document shows it there).
    pub state: &'static str,
    /// Deliveries so far.
    pub attempts: u32,
    /// The message's JSON text.
    pub message: String,
    /// Who holds its lease, while leased.
    pub consumer: Option<String>,
    /// The queue a dead-lettered item came from.
    pub from: Option<String>,
}

/// A change of the queue the document is to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueChange {
    /// The item is new, or its state changed.
    Item(ItemView),
    /// The item the document shows finished: `done`, or `dead` (moved to the dead-letter
    /// queue). Nothing when it does not show the item.
    Finished {
        /// The item.
        seq: u64,
        /// `done` or `dead`.
        state: &'static str,
    },
    /// The item is gone (drained, or the queue closed).
    Removed(u64),
    /// Every item is gone (the queue was closed).
    Cleared,
    /// The send became the item `seq`.
    Taken {
        /// The send ([`PendingSend::key`]).
        send: SendKey,
        /// The item it became.
        seq: u64,
    },
    /// The queue refused the send.
    Refused {
        /// The send ([`PendingSend::key`]).
        send: SendKey,
        /// Why.
        reason: String,
    },
}

/// The Yjs item id of a send: unique to it, for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SendKey {
    /// The Yjs client that inserted it.
    pub client: u64,
    /// Its clock.
    pub clock: u32,
}

impl std::fmt::Display for SendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.client, self.clock)
    }
}

/// A send not taken yet, in the inbox's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSend {
    /// The send.
    pub key: SendKey,
    /// Its message's JSON text, as the client wrote it (not checked here).
    pub message: String,
}

/// How many finished entries a queue's document keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Finished items (`done` or `dead`), at most.
    pub finished: usize,
    /// Taken sends, at most.
    pub taken: usize,
}

/// The server's hold on a queue's document: where each item's element is, so that a change
/// costs what it changes, not the queue's length.
#[derive(Debug)]
pub struct QueueDoc {
    items: XmlElementRef,
    inbox: XmlElementRef,
    by_seq: HashMap<u64, XmlElementRef>,
    /// Finished items (`done` or `dead`), oldest first.
    finished: VecDeque<u64>,
    /// Taken sends, oldest first.
    taken: VecDeque<XmlElementRef>,
    /// Sends not yet taken, by key.
    pending: HashMap<SendKey, XmlElementRef>,
    retention: Retention,
}

fn key_of(e: &XmlElementRef) -> Option<SendKey> {
    match AsRef::<Branch>::as_ref(e).id() {
        BranchID::Nested(id) => Some(SendKey {
            client: id.client.get(),
            clock: id.clock,
        }),
        BranchID::Root(_) => None,
    }
}

fn branch_id(e: &XmlElementRef) -> BranchID {
    AsRef::<Branch>::as_ref(e).id()
}

fn attr<T: ReadTxn>(txn: &T, e: &XmlElementRef, name: &str) -> Option<String> {
    e.get_attribute(txn, name).map(|v| v.to_string(txn))
}

fn child<T: ReadTxn>(txn: &T, xml: &yrs::XmlFragmentRef, tag: &str) -> Option<XmlElementRef> {
    xml.children(txn).find_map(|n| match n {
        XmlOut::Element(e) if &**e.tag() == tag => Some(e),
        _ => None,
    })
}

fn elements<T: ReadTxn>(txn: &T, of: &XmlElementRef) -> Vec<XmlElementRef> {
    of.children(txn)
        .filter_map(|n| match n {
            XmlOut::Element(e) => Some(e),
            _ => None,
        })
        .collect()
}

impl QueueDoc {
    /// Takes hold of a queue's document, giving it `items` and `inbox` if it lacks them (the
    /// update that does, as an edit of the server's own, comes back with it). The document must
    /// be one the server authors ([`YDoc::authored_by`]).
    pub fn open(doc: &mut YDoc, retention: Retention) -> (QueueDoc, Option<Vec<u8>>) {
        let (items, inbox, update) = {
            let mut txn = doc.doc.transact_mut();
            let xml = txn.get_or_insert_xml_fragment(ROOT);
            let items = match child(&txn, &xml, ITEMS) {
                Some(e) => e,
                None => xml.push_back(&mut txn, XmlElementPrelim::empty(ITEMS)),
            };
            let inbox = match child(&txn, &xml, INBOX) {
                Some(e) => e,
                None => xml.push_back(&mut txn, XmlElementPrelim::empty(INBOX)),
            };
            (items, inbox, txn.encode_update_v1())
        };
        let mut view = QueueDoc {
            items,
            inbox,
            by_seq: HashMap::new(),
            finished: VecDeque::new(),
            taken: VecDeque::new(),
            pending: HashMap::new(),
            retention,
        };
        {
            let txn = doc.doc.transact();
            for e in elements(&txn, &view.items) {
                let Some(seq) = attr(&txn, &e, "seq").and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if matches!(attr(&txn, &e, "state").as_deref(), Some("done" | "dead")) {
                    view.finished.push_back(seq);
                }
                view.by_seq.insert(seq, e);
            }
            for e in elements(&txn, &view.inbox) {
                if attr(&txn, &e, "taken").is_some() {
                    view.taken.push_back(e);
                } else if let Some(key) = key_of(&e) {
                    view.pending.insert(key, e);
                }
            }
        }
        (view, doc.authored(update))
    }

    /// The sends not taken yet, in the inbox's order. After a client's update, the new ones
    /// are among them; call it then, and after loading the document.
    pub fn pending_sends(&mut self, doc: &YDoc) -> Vec<PendingSend> {
        let txn = doc.doc.transact();
        let mut out = Vec::new();
        // The inbox holds the taken sends it keeps (bounded) and what clients appended since.
        for e in elements(&txn, &self.inbox) {
            if attr(&txn, &e, "taken").is_some() {
                continue;
            }
            let Some(key) = key_of(&e) else { continue };
            out.push(PendingSend {
                key,
                message: attr(&txn, &e, "message").unwrap_or_default(),
            });
            self.pending.insert(key, e);
        }
        out
    }

    /// Writes `changes` in one edit of the server's own; `None` when nothing changed.
    pub fn apply(&mut self, doc: &mut YDoc, changes: &[QueueChange]) -> Option<Vec<u8>> {
        let update = {
            let mut txn = doc.doc.transact_mut();
            let mut gone = Vec::new();
            for change in changes {
                match change {
                    QueueChange::Item(item) => self.write_item(&mut txn, item),
                    QueueChange::Finished { seq, state } => {
                        if let Some(e) = self.by_seq.get(seq).cloned() {
                            if attr(&txn, &e, "state").as_deref() != Some(state) {
                                e.insert_attribute(&mut txn, "state", state.to_string());
                            }
                            if attr(&txn, &e, "consumer").is_some() {
                                e.remove_attribute(&mut txn, &"consumer");
                            }
                            if !self.finished.contains(seq) {
                                self.finished.push_back(*seq);
                            }
                        }
                    }
                    QueueChange::Removed(seq) => {
                        if let Some(e) = self.by_seq.remove(seq) {
                            self.finished.retain(|s| s != seq);
                            gone.push(e);
                        }
                    }
                    QueueChange::Cleared => {
                        self.finished.clear();
                        gone.extend(self.by_seq.drain().map(|(_, e)| e));
                    }
                    QueueChange::Taken { send, seq } => {
                        self.take(&mut txn, send, &seq.to_string());
                    }
                    QueueChange::Refused { send, reason } => {
                        self.take(&mut txn, send, &format!("refused: {reason}"));
                    }
                }
            }
            self.prune(&mut txn, gone);
            txn.encode_update_v1()
        };
        doc.authored(update)
    }

    fn write_item(&mut self, txn: &mut TransactionMut, item: &ItemView) {
        let e = match self.by_seq.get(&item.seq) {
            Some(e) => e.clone(),
            None => {
                let at = self.items.len(txn);
                let e = self.items.insert(txn, at, XmlElementPrelim::empty("item"));
                e.insert_attribute(txn, "$id", item.seq.to_string());
                e.insert_attribute(txn, "seq", item.seq.to_string());
                e.insert_attribute(txn, "message", item.message.clone());
                self.by_seq.insert(item.seq, e.clone());
                e
            }
        };
        let set = |txn: &mut TransactionMut, name: &str, value: String| {
            if attr(txn, &e, name).as_deref() != Some(value.as_str()) {
                e.insert_attribute(txn, name, value);
            }
        };
        set(txn, "state", item.state.to_string());
        set(txn, "attempts", item.attempts.to_string());
        for (name, value) in [("consumer", &item.consumer), ("from", &item.from)] {
            match value {
                Some(v) => set(txn, name, v.clone()),
                None if attr(txn, &e, name).is_some() => e.remove_attribute(txn, &name),
                None => {}
            }
        }
        if matches!(item.state, "done" | "dead") && !self.finished.contains(&item.seq) {
            self.finished.push_back(item.seq);
        }
    }

    fn take(&mut self, txn: &mut TransactionMut, send: &SendKey, taken: &str) {
        if let Some(e) = self.pending.remove(send) {
            e.insert_attribute(txn, "taken", taken.to_string());
            self.taken.push_back(e);
        }
    }

    /// Removes `gone`, and finished items and taken sends past the retention, oldest first.
    fn prune(&mut self, txn: &mut TransactionMut, mut gone: Vec<XmlElementRef>) {
        while self.finished.len() > self.retention.finished {
            let Some(seq) = self.finished.pop_front() else {
                break;
            };
            if let Some(e) = self.by_seq.remove(&seq) {
                gone.push(e);
            }
        }
        remove_all(txn, &self.items, gone);
        let mut taken = Vec::new();
        while self.taken.len() > self.retention.taken {
            let Some(e) = self.taken.pop_front() else {
                break;
            };
            taken.push(e);
        }
        remove_all(txn, &self.inbox, taken);
    }

    /// Items the document shows.
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    /// The sequence numbers of the items the document shows, unordered.
    pub fn shown(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_seq.keys().copied()
    }

    /// Whether the document shows item `seq` finished (`done` or `dead`).
    pub fn is_finished(&self, seq: u64) -> bool {
        self.finished.contains(&seq)
    }

    /// Whether the document shows no item.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

/// Removes the elements `gone` from `parent`, in one walk of its children that stops once it
/// has found them all: the elements removed are mostly the oldest, at the front.
fn remove_all(txn: &mut TransactionMut, parent: &XmlElementRef, gone: Vec<XmlElementRef>) {
    if gone.is_empty() {
        return;
    }
    let mut want: HashSet<BranchID> = gone.iter().map(branch_id).collect();
    let mut at = Vec::new();
    for (i, n) in parent.children(txn).enumerate() {
        if want.is_empty() {
            break;
        }
        if let XmlOut::Element(c) = &n {
            if want.remove(&branch_id(c)) {
                at.push(i as u32);
            }
        }
    }
    // Consecutive elements go in one range, from the back, so that the indices ahead stay.
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for i in at {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == i => *len += 1,
            _ => runs.push((i, 1)),
        }
    }
    for (start, len) in runs.into_iter().rev() {
        parent.remove_range(txn, start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DocLimits;
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Update};

    const KEEP: Retention = Retention {
        finished: 2,
        taken: 2,
    };

    /// A client's copy of the server's document.
    fn client_of(server: &YDoc, client_id: u64) -> Doc {
        let doc = Doc::with_client_id(client_id);
        let state = server.snapshot();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        doc
    }

    /// A client's update appending sends with `messages` to the inbox.
    fn sends(client: &Doc, messages: &[&str]) -> Vec<u8> {
        let xml = client.get_or_insert_xml_fragment(ROOT);
        let mut txn = client.transact_mut();
        let inbox = child(&txn, &xml, INBOX).unwrap();
        for (i, m) in messages.iter().enumerate() {
            let e = inbox.push_back(&mut txn, XmlElementPrelim::empty("send"));
            e.insert_attribute(&mut txn, "$id", format!("s{i}"));
            e.insert_attribute(&mut txn, "message", m.to_string());
        }
        txn.encode_update_v1()
    }

    /// `(tag, attributes)` of the children of the root's element `of`, attributes sorted.
    fn shown(doc: &Doc, of: &str) -> Vec<Vec<(String, String)>> {
        let xml = doc.get_or_insert_xml_fragment(ROOT);
        let txn = doc.transact();
        let e = child(&txn, &xml, of).unwrap();
        elements(&txn, &e)
            .iter()
            .map(|c| {
                let mut a: Vec<(String, String)> = c
                    .attributes(&txn)
                    .map(|(k, v)| (k.to_string(), v.to_string(&txn)))
                    .filter(|(k, _)| k != "$id")
                    .collect();
                a.sort();
                a
            })
            .collect()
    }

    fn item(seq: u64, state: &'static str, attempts: u32) -> QueueChange {
        QueueChange::Item(ItemView {
            seq,
            state,
            attempts,
            message: format!("{{\"n\":{seq}}}"),
            consumer: (state == "leased").then(|| "worker".to_string()),
            from: None,
        })
    }

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn sends_are_taken_once_and_items_show_their_states() {
        let mut server = YDoc::new(DocLimits::DEFAULT).authored_by(1);
        let (mut view, init) = QueueDoc::open(&mut server, KEEP);
        assert!(init.is_some());
        assert!(QueueDoc::open(&mut server, KEEP).1.is_none(), "opened once");

        // A client offline appends two sends; its update arrives, and arrives again.
        let client = client_of(&server, 50);
        let update = sends(&client, &[r#"{"n":1}"#, r#"{"n":2}"#]);
        server.apply_update(&update).unwrap();
        let pending = view.pending_sends(&server);
        assert_eq!(
            pending
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>(),
            [r#"{"n":1}"#, r#"{"n":2}"#]
        );
        let mut changes = Vec::new();
        for (p, seq) in pending.iter().zip([1, 2]) {
            changes.push(QueueChange::Taken { send: p.key, seq });
            changes.push(item(seq, "waiting", 0));
        }
        let written = view.apply(&mut server, &changes).unwrap();
        server.apply_update(&update).unwrap();
        assert!(view.pending_sends(&server).is_empty(), "taken once");

        // The client sees its sends taken and the items waiting.
        client
            .transact_mut()
            .apply_update(Update::decode_v1(&written).unwrap())
            .unwrap();
        let inbox = shown(&client, INBOX);
        assert_eq!(
            inbox[0],
            [pair("message", r#"{"n":1}"#), pair("taken", "1")]
        );
        assert_eq!(
            inbox[1],
            [pair("message", r#"{"n":2}"#), pair("taken", "2")]
        );

        let leased = view.apply(&mut server, &[item(1, "leased", 1)]).unwrap();
        assert!(
            leased.len() < 80,
            "a state change is small: {} bytes",
            leased.len()
        );
        assert!(view.apply(&mut server, &[item(1, "leased", 1)]).is_none());
        let local = client_of(&server, 51);
        assert_eq!(
            shown(&local, ITEMS)[0],
            [
                pair("attempts", "1"),
                pair("consumer", "worker"),
                pair("message", r#"{"n":1}"#),
                pair("seq", "1"),
                pair("state", "leased"),
            ]
        );
        let done = QueueChange::Finished {
            seq: 1,
            state: "done",
        };
        view.apply(&mut server, &[done]).unwrap();
        assert!(!shown(&client_of(&server, 52), ITEMS)[0].contains(&pair("consumer", "worker")));

        // A refused send says why.
        let more = sends(&client_of(&server, 53), &["not json"]);
        server.apply_update(&more).unwrap();
        let p = view.pending_sends(&server);
        assert_eq!(p.len(), 1);
        let reason = "the message is not JSON".to_string();
        view.apply(
            &mut server,
            &[QueueChange::Refused {
                send: p[0].key,
                reason,
            }],
        );
        assert!(view.pending_sends(&server).is_empty());
    }

    #[test]
    fn finished_items_and_taken_sends_are_kept_up_to_a_bound() {
        let mut server = YDoc::new(DocLimits::DEFAULT).authored_by(1);
        let (mut view, _) = QueueDoc::open(&mut server, KEEP);
        for seq in 1..=5 {
            view.apply(&mut server, &[item(seq, "waiting", 0)]);
        }
        view.apply(
            &mut server,
            &[item(1, "done", 1), item(2, "dead", 5), item(4, "done", 1)],
        );
        let seqs = |doc: &YDoc| -> Vec<String> {
            shown(&client_of(doc, 60), ITEMS)
                .iter()
                .filter_map(|a| a.iter().find(|(k, _)| k == "seq").map(|(_, v)| v.clone()))
                .collect()
        };
        assert_eq!(
            seqs(&server),
            ["2", "3", "4", "5"],
            "the oldest finished goes"
        );
        view.apply(&mut server, &[QueueChange::Removed(3)]);
        assert_eq!(seqs(&server), ["2", "4", "5"]);

        let client = client_of(&server, 61);
        server
            .apply_update(&sends(&client, &["1", "2", "3"]))
            .unwrap();
        let taken: Vec<QueueChange> = view
            .pending_sends(&server)
            .iter()
            .zip(6..)
            .map(|(p, seq)| QueueChange::Taken { send: p.key, seq })
            .collect();
        view.apply(&mut server, &taken);
        let inbox = shown(&client_of(&server, 62), INBOX);
        assert_eq!(inbox.len(), 2, "{inbox:?}");
        assert!(inbox[0].contains(&pair("taken", "7")));

        // Reopened from what was stored, the view knows its elements again.
        let stored = YDoc::from_snapshot(DocLimits::DEFAULT, &server.snapshot()).unwrap();
        let mut again = stored.authored_by(2);
        let (mut view, init) = QueueDoc::open(&mut again, KEEP);
        assert!(init.is_none());
        assert_eq!(view.len(), 3);
        assert!(view.pending_sends(&again).is_empty());
        view.apply(&mut again, &[item(5, "done", 1)]);
        assert_eq!(seqs(&again), ["4", "5"]);
        view.apply(&mut again, &[QueueChange::Cleared]);
        assert!(seqs(&again).is_empty());
        assert!(view.is_empty());
    }
}
