//! What an update changes, in terms a rule can judge: which items it inserts where (under which
//! parent, at which map key, holding what) and which items it deletes, read from the update's
//! bytes before the document sees it.
//!
//! A v1 update names an item's parent only when the item has no origins; otherwise the parent
//! is its left origin's (else its right origin's), which may be an item of the document or of
//! the same update. yrs keeps no public way to find an item's parent by id without walking its
//! siblings, so a [`Structure`] keeps its own index: every item range of the document with its
//! parent, its key and whether it holds an element. Resolving an update then costs a lookup per
//! struct and per deleted range, whatever the size of the document.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::v1::{self, Decoded, Named};
pub use crate::v1::{AnyValue, StructContent};

/// An item's parent: a root type by name, or the item holding a nested type, by id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Parent {
    /// A root type.
    Root(Arc<str>),
    /// A nested type, by the (client, clock) of the item holding it.
    Item(u64, u32),
}

/// What a range of the document's items is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// An XML element (a range of length one), with its tag.
    Element(Arc<str>),
    /// Any other shared type (length one).
    Type,
    /// Content: text, values, embeds; or deleted content.
    Content,
}

impl Kind {
    /// The kind of an item holding `content`.
    fn of(content: &StructContent) -> Kind {
        match content {
            StructContent::Element(tag) => Kind::Element(tag.as_str().into()),
            StructContent::XmlText | StructContent::Type(_) => Kind::Type,
            _ => Kind::Content,
        }
    }
}

/// A range of items with one parent and one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The clock after the last item.
    pub end: u32,
    /// Its parent; `None` when it has none (garbage-collected, or its origin was).
    pub parent: Option<Parent>,
    /// Its map key (an XML element's attribute name).
    pub key: Option<Arc<str>>,
    /// What it holds.
    pub kind: Kind,
}

/// An item an update inserts.
#[derive(Debug, Clone, PartialEq)]
pub struct Inserted {
    /// Its client.
    pub client: u64,
    /// Its first clock.
    pub clock: u32,
    /// Its length in clock units.
    pub len: u32,
    /// Its parent; `None` when it has none (the document drops it as garbage).
    pub parent: Option<Parent>,
    /// Its map key.
    pub key: Option<Arc<str>>,
    /// What it holds.
    pub content: StructContent,
}

/// A range of items an update deletes, split where the document's ranges change parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The client.
    pub client: u64,
    /// The first clock.
    pub clock: u32,
    /// The length.
    pub len: u32,
    /// The items' parent, when known.
    pub parent: Option<Parent>,
    /// Their key.
    pub key: Option<Arc<str>>,
    /// What they hold.
    pub kind: Kind,
}

/// What an update changes: the items it inserts (those the document does not hold yet) and the
/// ranges it deletes (those the document or the update holds).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// New items, in the update's order.
    pub inserted: Vec<Inserted>,
    /// Deleted ranges.
    pub deleted: Vec<Deleted>,
    /// Structs that continue no client's clock in the document (earlier ones are missing), or
    /// whose origin is an item neither holds: they cannot be judged yet.
    pub unresolved: usize,
}

/// The index of a document's items by id: for each client, ranges of items with one parent,
/// key and kind.
#[derive(Debug, Clone, Default)]
pub struct Structure {
    spans: BTreeMap<(u64, u32), Span>,
    /// Each client's next clock.
    ends: HashMap<u64, u32>,
    /// Ranges the document has deleted, by client: `[start, end)`, sorted and disjoint. A
    /// deletion of what is deleted already changes nothing, and is not reported (a client's
    /// sync step 2 carries its whole delete set).
    deleted: HashMap<u64, Vec<(u32, u32)>>,
}

impl Structure {
    /// An empty index (an empty document).
    pub fn new() -> Structure {
        Structure::default()
    }

    /// The index of the document a snapshot (a v1 update of its whole state) encodes.
    pub fn from_snapshot(snapshot: &[u8]) -> Result<Structure, String> {
        let mut s = Structure::new();
        s.record(snapshot)?;
        Ok(s)
    }

    /// The number of ranges indexed.
    pub fn spans(&self) -> usize {
        self.spans.len()
    }

    /// The range holding (client, clock), with its first clock.
    pub fn span_at(&self, client: u64, clock: u32) -> Option<(u32, &Span)> {
        let ((c, start), span) = self.spans.range(..=(client, clock)).next_back()?;
        (*c == client && clock < span.end).then_some((*start, span))
    }

    /// The element at (client, clock), as its tag, parent and key.
    pub fn element(&self, client: u64, clock: u32) -> Option<(&Arc<str>, Option<&Parent>)> {
        match self.span_at(client, clock)? {
            (
                _,
                Span {
                    kind: Kind::Element(tag),
                    parent,
                    ..
                },
            ) => Some((tag, parent.as_ref())),
            _ => None,
        }
    }

    /// What `update` changes in the document this index describes. Reads the update only.
    pub fn changes(&self, update: &[u8]) -> Result<Changes, String> {
        let scan = v1::scan(update)?;
        let (structs, deleted) = v1::decode_structs(&scan)?;
        Ok(self.resolve(&structs, &deleted))
    }

    /// Records an update the document accepted (or a snapshot it loaded): the items it holds
    /// that the index does not.
    pub fn record(&mut self, update: &[u8]) -> Result<(), String> {
        let scan = v1::scan(update)?;
        let (structs, deleted) = v1::decode_structs(&scan)?;
        let changes = self.resolve(&structs, &[]);
        for item in changes.inserted {
            self.insert(item);
        }
        for (client, clock, len) in deleted {
            self.mark_deleted(client, clock, clock.saturating_add(len));
        }
        Ok(())
    }

    /// Notes `[from, to)` of `client` deleted, merging it with the ranges it meets.
    fn mark_deleted(&mut self, client: u64, from: u32, to: u32) {
        if from >= to {
            return;
        }
        let ranges = self.deleted.entry(client).or_default();
        // The first range ending at or after `from`, and the first starting after `to`.
        let first = ranges.partition_point(|&(_, end)| end < from);
        let last = ranges.partition_point(|&(start, _)| start <= to);
        let (mut start, mut end) = (from, to);
        if first < last {
            start = start.min(ranges[first].0);
            end = end.max(ranges[last - 1].1);
        }
        ranges.splice(first..last, [(start, end)]);
    }

    /// The parts of `[from, to)` of `client` not deleted already.
    fn not_deleted(&self, client: u64, from: u32, to: u32) -> Vec<(u32, u32)> {
        let Some(ranges) = self.deleted.get(&client) else {
            return vec![(from, to)];
        };
        let mut out = Vec::new();
        let mut at = from;
        let first = ranges.partition_point(|&(_, end)| end <= from);
        for &(start, end) in &ranges[first..] {
            if start >= to {
                break;
            }
            if start > at {
                out.push((at, start));
            }
            at = at.max(end);
        }
        if at < to {
            out.push((at, to));
        }
        out
    }

    fn insert(&mut self, item: Inserted) {
        let end = item.clock.saturating_add(item.len);
        let next = self.ends.entry(item.client).or_insert(0);
        if end <= *next {
            return;
        }
        *next = end;
        let kind = Kind::of(&item.content);
        // Content continuing the previous range of its client, under the same parent and key,
        // extends it.
        if kind == Kind::Content {
            if let Some((_, prev)) = self
                .spans
                .range_mut(..(item.client, item.clock))
                .next_back()
                .filter(|((c, _), s)| *c == item.client && s.end == item.clock)
            {
                if prev.kind == Kind::Content && prev.parent == item.parent && prev.key == item.key
                {
                    prev.end = end;
                    return;
                }
            }
        }
        self.spans.insert(
            (item.client, item.clock),
            Span {
                end,
                parent: item.parent,
                key: item.key,
                kind,
            },
        );
    }

    /// Resolves each struct's parent (through origins in the update or the index) and splits
    /// deleted ranges along the index's.
    fn resolve(&self, structs: &[Decoded], deleted: &[(u64, u32, u32)]) -> Changes {
        let mut changes = Changes::default();
        // The update's own items by id, to resolve origins among them.
        let mut order: Vec<usize> = (0..structs.len()).collect();
        order.sort_unstable_by_key(|&i| (structs[i].client, structs[i].clock));
        let find = |client: u64, clock: u32| -> Option<usize> {
            let at = order
                .partition_point(|&i| (structs[i].client, structs[i].clock) <= (client, clock));
            let i = *order.get(at.checked_sub(1)?)?;
            let s = &structs[i];
            (s.client == client && clock < s.clock.saturating_add(s.len)).then_some(i)
        };
        // Resolution of each struct: None = not yet, Some(None) = unresolvable.
        type Resolved = Option<(Option<Parent>, Option<Arc<str>>)>;
        let mut resolved: Vec<Option<Resolved>> = vec![None; structs.len()];
        for start in 0..structs.len() {
            // Follow origins until a struct whose parent is known, then assign back.
            let mut chain = Vec::new();
            let mut at = start;
            let answer: Resolved = loop {
                if let Some(r) = &resolved[at] {
                    break r.clone();
                }
                if chain.len() > structs.len() {
                    break None;
                }
                let s = &structs[at];
                let origin = match &s.named {
                    Named::Nothing => break Some((None, None)),
                    Named::Root(name) => {
                        break Some((
                            Some(Parent::Root(name.as_str().into())),
                            s.key.as_deref().map(Into::into),
                        ))
                    }
                    Named::Item((c, k)) => {
                        break Some((Some(Parent::Item(*c, *k)), s.key.as_deref().map(Into::into)))
                    }
                    Named::Origins(left, right) => left.or(*right),
                };
                let Some((c, k)) = origin else { break None };
                chain.push(at);
                if let Some(i) = find(c, k) {
                    at = i;
                    continue;
                }
                match self.span_at(c, k) {
                    Some((_, span)) => break Some((span.parent.clone(), span.key.clone())),
                    None => break None,
                }
            };
            for i in chain {
                resolved[i] = Some(answer.clone());
            }
            resolved[start] = Some(answer);
        }
        // A struct past a gap in its client's clocks (between the document's and the update's
        // structs) cannot be integrated yet.
        let mut gap = vec![false; structs.len()];
        let mut current: Option<(u64, u32, bool)> = None;
        for &i in &order {
            let s = &structs[i];
            let (next, broken) = match current {
                Some((c, next, broken)) if c == s.client => (next, broken),
                _ => (self.ends.get(&s.client).copied().unwrap_or(0), false),
            };
            let broken = broken || s.clock > next;
            gap[i] = broken;
            current = Some((s.client, next.max(s.clock.saturating_add(s.len)), broken));
        }
        for ((s, r), gap) in structs.iter().zip(resolved).zip(gap) {
            let known = self.ends.get(&s.client).copied().unwrap_or(0);
            if s.clock.saturating_add(s.len) <= known {
                continue;
            }
            match r.flatten() {
                Some((parent, key)) if !gap => {
                    // The part of a struct the document already holds is not new.
                    let (clock, len) = if s.clock < known {
                        (known, s.len - (known - s.clock))
                    } else {
                        (s.clock, s.len)
                    };
                    changes.inserted.push(Inserted {
                        client: s.client,
                        clock,
                        len,
                        parent,
                        key,
                        content: s.content.clone(),
                    });
                }
                _ => changes.unresolved += 1,
            }
        }
        let mut mine: Vec<usize> = (0..changes.inserted.len()).collect();
        mine.sort_unstable_by_key(|&i| (changes.inserted[i].client, changes.inserted[i].clock));
        let mut own = Vec::new();
        let fresh: Vec<(u64, u32, u32)> = deleted
            .iter()
            .flat_map(|&(client, clock, len)| {
                self.not_deleted(client, clock, clock.saturating_add(len))
                    .into_iter()
                    .map(move |(from, to)| (client, from, to - from))
            })
            .collect();
        for &(client, clock, len) in &fresh {
            let end = clock.saturating_add(len);
            let mut at = clock;
            // Ranges of the document first, then the update's own items.
            let first = self
                .span_at(client, clock)
                .map_or(clock, |(start, _)| start);
            for ((_, start), span) in self.spans.range((client, first)..(client, end)) {
                let from = (*start).max(at);
                let to = span.end.min(end);
                if from < to {
                    changes.deleted.push(Deleted {
                        client,
                        clock: from,
                        len: to - from,
                        parent: span.parent.clone(),
                        key: span.key.clone(),
                        kind: span.kind.clone(),
                    });
                    at = to;
                }
            }
            // The update's own items of that client from the first one ending past `clock`;
            // they are disjoint, so in clock order they also end in order.
            let mut i = mine.partition_point(|&i| {
                let item = &changes.inserted[i];
                (item.client, item.clock.saturating_add(item.len)) <= (client, clock)
            });
            while let Some(item) = mine.get(i).map(|&i| &changes.inserted[i]) {
                if item.client != client || item.clock >= end {
                    break;
                }
                let (from, to) = (
                    item.clock.max(clock),
                    item.clock.saturating_add(item.len).min(end),
                );
                if from < to {
                    own.push(Deleted {
                        client,
                        clock: from,
                        len: to - from,
                        parent: item.parent.clone(),
                        key: item.key.clone(),
                        kind: Kind::of(&item.content),
                    });
                }
                i += 1;
            }
        }
        changes.deleted.append(&mut own);
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{
        BranchID, Doc, GetString, Options, ReadTxn, StateVector, Text, Transact, Update, Xml,
        XmlElementPrelim, XmlElementRef, XmlFragment, XmlTextPrelim,
    };

    fn doc(client: u64) -> Doc {
        Doc::with_options(Options {
            client_id: yrs::ClientID::new(client),
            ..Options::default()
        })
    }

    fn id_of(e: &XmlElementRef) -> (u64, u32) {
        let branch: &yrs::branch::Branch = e.as_ref();
        match branch.id() {
            BranchID::Nested(id) => (id.client.get(), id.clock),
            BranchID::Root(_) => unreachable!(),
        }
    }

    #[test]
    fn a_deletion_already_made_is_no_change() {
        let server = doc(1);
        let xml = server.get_or_insert_xml_fragment("xml");
        let mut index = Structure::new();
        let made = change(&server, |txn| {
            let e = xml.push_back(txn, XmlElementPrelim::empty("a"));
            e.insert_attribute(txn, "k", "1");
            xml.push_back(txn, XmlElementPrelim::empty("b"));
        });
        index.record(&made).unwrap();
        let overwrite = change(&server, |txn| {
            if let Some(yrs::XmlOut::Element(e)) = xml.get(txn, 0) {
                e.insert_attribute(txn, "k", "2");
            }
        });
        let c = index.changes(&overwrite).unwrap();
        assert_eq!(c.deleted.len(), 1, "the old value goes");
        index.record(&overwrite).unwrap();
        // A client's sync step 2: what the server lacks (nothing) and the whole delete set.
        let client = doc(2);
        let full = server
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        client
            .transact_mut()
            .apply_update(Update::decode_v1(&full).unwrap())
            .unwrap();
        let sv = server.transact().state_vector();
        let step2 = client.transact().encode_state_as_update_v1(&sv);
        let c = index.changes(&step2).unwrap();
        assert!(c.deleted.is_empty(), "{:?}", c.deleted);
        // A new deletion next to the old one is still seen, and only it.
        let removal = change(&server, |txn| xml.remove_range(txn, 1, 1));
        let c = index.changes(&removal).unwrap();
        assert_eq!(c.deleted.len(), 1, "{:?}", c.deleted);
        assert_eq!(c.deleted[0].kind, Kind::Element("b".into()));
    }

    /// Makes a change on `doc` and returns its update.
    fn change(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut)) -> Vec<u8> {
        let before = doc.transact().state_vector();
        let mut txn = doc.transact_mut();
        f(&mut txn);
        drop(txn);
        doc.transact().encode_state_as_update_v1(&before)
    }

    fn apply(doc: &Doc, update: &[u8]) {
        doc.transact_mut()
            .apply_update(Update::decode_v1(update).unwrap())
            .unwrap();
    }

    fn snapshot(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// A thread with `n` messages written by client 1, and its `messages` element.
    fn thread(n: usize) -> (Doc, XmlElementRef) {
        let d = doc(1);
        let xml = d.get_or_insert_xml_fragment("xml");
        let mut txn = d.transact_mut();
        xml.insert(&mut txn, 0, XmlElementPrelim::empty("members"));
        let messages = xml.insert(&mut txn, 1, XmlElementPrelim::empty("messages"));
        for i in 0..n {
            let m = messages.insert(&mut txn, i as u32, XmlElementPrelim::empty("message"));
            m.insert_attribute(&mut txn, "author_name", "alice");
            m.insert_attribute(&mut txn, "text", format!("message {i}"));
        }
        drop(txn);
        (d, messages)
    }

    fn post(d: &Doc, messages: &XmlElementRef, author: &str) -> (Vec<u8>, (u64, u32)) {
        let mut at = (0, 0);
        let u = change(d, |txn| {
            let len = messages.len(txn);
            let m = messages.insert(txn, len, XmlElementPrelim::empty("message"));
            m.insert_attribute(txn, "author_name", author);
            at = id_of(&m);
        });
        (u, at)
    }

    #[test]
    fn a_posted_message_is_read_with_its_parent_and_attributes() {
        for n in [0, 1, 50] {
            let (server, messages) = thread(n);
            let index = Structure::from_snapshot(&snapshot(&server)).unwrap();
            let bob = doc(2);
            apply(&bob, &snapshot(&server));
            let messages_b: XmlElementRef = bob
                .get_or_insert_xml_fragment("xml")
                .get(&bob.transact(), 1)
                .unwrap()
                .into_xml_element()
                .unwrap();
            let (u, id) = post(&bob, &messages_b, "bob");
            let c = index.changes(&u).unwrap();
            assert_eq!(c.unresolved, 0);
            assert!(c.deleted.is_empty());
            let (mc, mk) = id_of(&messages);
            let element = &c.inserted[0];
            assert_eq!(element.content, StructContent::Element("message".into()));
            assert_eq!(element.parent, Some(Parent::Item(mc, mk)), "n = {n}");
            assert_eq!((element.client, element.clock), id);
            let attr = &c.inserted[1];
            assert_eq!(attr.parent, Some(Parent::Item(id.0, id.1)));
            assert_eq!(attr.key.as_deref(), Some("author_name"));
            assert_eq!(
                attr.content,
                StructContent::Values(vec![AnyValue::String("bob".into())])
            );
        }
    }

    #[test]
    fn edits_and_deletions_of_a_message_name_it() {
        let (server, messages) = thread(3);
        let mut index = Structure::from_snapshot(&snapshot(&server)).unwrap();
        let second = messages
            .get(&server.transact(), 1)
            .unwrap()
            .into_xml_element()
            .unwrap();
        let target = id_of(&second);
        // Another client sets an attribute of the second message.
        let bob = doc(2);
        apply(&bob, &snapshot(&server));
        let m_b = bob
            .get_or_insert_xml_fragment("xml")
            .get(&bob.transact(), 1)
            .unwrap()
            .into_xml_element()
            .unwrap()
            .get(&bob.transact(), 1)
            .unwrap()
            .into_xml_element()
            .unwrap();
        let u = change(&bob, |txn| {
            m_b.insert_attribute(txn, "text", "changed");
        });
        let c = index.changes(&u).unwrap();
        assert_eq!(c.inserted.len(), 1);
        assert_eq!(c.inserted[0].parent, Some(Parent::Item(target.0, target.1)));
        assert_eq!(c.inserted[0].key.as_deref(), Some("text"));
        // The overwritten value is deleted, under the same parent and key.
        assert_eq!(c.deleted.len(), 1);
        assert_eq!(c.deleted[0].parent, Some(Parent::Item(target.0, target.1)));
        apply(&server, &u);
        index.record(&u).unwrap();
        // Deleting the message names the element and its parent.
        let messages_b = bob
            .get_or_insert_xml_fragment("xml")
            .get(&bob.transact(), 1)
            .unwrap()
            .into_xml_element()
            .unwrap();
        let u = change(&bob, |txn| messages_b.remove_range(txn, 1, 1));
        let c = index.changes(&u).unwrap();
        assert!(c.inserted.is_empty());
        let (mc, mk) = id_of(&messages);
        assert!(c
            .deleted
            .iter()
            .any(|d| d.kind == Kind::Element("message".into())
                && (d.client, d.clock) == target
                && d.parent == Some(Parent::Item(mc, mk))));
    }

    #[test]
    fn recording_updates_indexes_what_a_snapshot_does() {
        let (server, messages) = thread(2);
        let mut index = Structure::from_snapshot(&snapshot(&server)).unwrap();
        for author in ["a", "b", "c"] {
            let (u, _) = post(&server, &messages, author);
            index.record(&u).unwrap();
        }
        let text_update = change(&server, |txn| {
            let m = messages.get(txn, 0).unwrap().into_xml_element().unwrap();
            let t = m.insert(txn, 0, XmlTextPrelim::new(""));
            for (i, ch) in "typed one at a time".chars().enumerate() {
                t.insert(txn, i as u32, &ch.to_string());
            }
        });
        index.record(&text_update).unwrap();
        let fresh = Structure::from_snapshot(&snapshot(&server)).unwrap();
        for (&(client, clock), span) in &fresh.spans {
            for k in clock..span.end {
                let (_, mine) = index.span_at(client, k).unwrap();
                assert_eq!(
                    (&mine.parent, &mine.key, &mine.kind),
                    (&span.parent, &span.key, &span.kind)
                );
            }
        }
        // Text typed character by character is one range.
        let t = messages
            .get(&server.transact(), 0)
            .unwrap()
            .into_xml_element()
            .unwrap()
            .get(&server.transact(), 0)
            .unwrap()
            .into_xml_text()
            .unwrap();
        assert_eq!(t.get_string(&server.transact()), "typed one at a time");
        let spans_of_text = fresh
            .spans
            .values()
            .filter(|s| s.kind == Kind::Content && s.key.is_none())
            .count();
        assert_eq!(spans_of_text, 1);
    }

    #[test]
    fn structs_past_a_gap_or_with_unknown_origins_are_unresolved() {
        let (server, messages) = thread(1);
        let index = Structure::from_snapshot(&snapshot(&server)).unwrap();
        let bob = doc(2);
        apply(&bob, &snapshot(&server));
        let messages_b = bob
            .get_or_insert_xml_fragment("xml")
            .get(&bob.transact(), 1)
            .unwrap()
            .into_xml_element()
            .unwrap();
        let (_first, _) = post(&bob, &messages_b, "bob");
        let (second, _) = post(&bob, &messages_b, "bob");
        // The second post without the first: its clocks start past what the server holds.
        let c = index.changes(&second).unwrap();
        assert!(c.inserted.is_empty());
        assert!(c.unresolved > 0);
        let _ = messages;
    }

    #[test]
    fn an_update_deleting_what_it_inserts_names_its_own_items() {
        let (server, messages) = thread(2);
        let index = Structure::from_snapshot(&snapshot(&server)).unwrap();
        let mut removed = (0, 0);
        let u = change(&server, |txn| {
            for _ in 0..3 {
                let m = messages.insert(txn, 0, XmlElementPrelim::empty("message"));
                removed = id_of(&m);
            }
            // The last one inserted, now first, is deleted in the same transaction.
            messages.remove_range(txn, 0, 1);
        });
        let c = index.changes(&u).unwrap();
        let (mc, mk) = id_of(&messages);
        assert_eq!(c.deleted.len(), 1, "{:?}", c.deleted);
        let d = &c.deleted[0];
        assert_eq!((d.client, d.clock, d.len), (removed.0, removed.1, 1));
        // An item deleted in the transaction that made it travels as deleted content.
        assert_eq!(c.inserted[2].content, StructContent::Gone);
        assert_eq!(d.kind, Kind::Content);
        assert_eq!(d.parent, Some(Parent::Item(mc, mk)));
    }

    #[test]
    fn origins_in_a_cycle_resolve_to_nothing() {
        // Two structs of client 5, each naming the other as its origin.
        let mut u = Vec::new();
        u.extend([2]); // two clients
        for (client, origin) in [(5u8, 6u8), (6, 5)] {
            u.extend([1, client, 0]); // one struct at clock 0
            u.extend([0x80 | 4, origin, 0]); // origin (origin, 0), string content
            u.extend([1, b'x']);
        }
        u.push(0); // no deletions
        let c = Structure::new().changes(&u).unwrap();
        assert!(c.inserted.is_empty());
        assert_eq!(c.unresolved, 2);
    }
}
