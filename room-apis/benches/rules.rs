//! What the rule check of a thread costs per update, on a thread of 10 messages and on one of
//! 10,000: `changes` is the read a check starts from (`Structure::changes`: each new item
//! placed under its parent), `rule_check` the whole check (`UpdateRules::check` of
//! `DocumentRules::thread`: that read, then the schema and ownership rules). The updates: a
//! reply posted at the end, an edit of its author's first message, and another's edit of it,
//! refused. The figures stay flat as the thread grows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use roomd_crdt::structure::Structure;
use roomd_room_apis::rules::DocumentRules;
use roomd_sync::{Principal, UpdateRules};
use yrs::updates::decoder::Decode;
use yrs::{
    Doc, Options, ReadTxn, StateVector, Transact, Update, Xml, XmlElementPrelim, XmlFragment,
};

fn thread(n: u32) -> Doc {
    let d = Doc::with_options(Options {
        client_id: yrs::ClientID::new(1),
        ..Options::default()
    });
    let xml = d.get_or_insert_xml_fragment("xml");
    let mut txn = d.transact_mut();
    xml.insert(&mut txn, 0, XmlElementPrelim::empty("members"));
    let messages = xml.insert(&mut txn, 1, XmlElementPrelim::empty("messages"));
    for i in 0..n {
        let m = messages.insert(&mut txn, i, XmlElementPrelim::empty("message"));
        m.insert_attribute(&mut txn, "$id", format!("m{i}"));
        m.insert_attribute(&mut txn, "author_name", "alice");
        m.insert_attribute(&mut txn, "text", format!("message {i}"));
    }
    drop(txn);
    d
}

/// An update made by a second client on a copy of `server`.
fn edit(server: &Doc, f: impl FnOnce(&mut yrs::TransactionMut, yrs::XmlElementRef)) -> Vec<u8> {
    let state = server
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let other = Doc::with_options(Options {
        client_id: yrs::ClientID::new(2),
        ..Options::default()
    });
    let xml = other.get_or_insert_xml_fragment("xml");
    other
        .transact_mut()
        .apply_update(Update::decode_v1(&state).unwrap())
        .unwrap();
    let messages = xml
        .get(&other.transact(), 1)
        .unwrap()
        .into_xml_element()
        .unwrap();
    let before = other.transact().state_vector();
    let mut txn = other.transact_mut();
    f(&mut txn, messages);
    drop(txn);
    let update = other.transact().encode_state_as_update_v1(&before);
    update
}

fn bench(c: &mut Criterion) {
    let (alice, bob) = (Principal::new("alice", false), Principal::new("bob", false));
    let mut changes = c.benchmark_group("changes");
    let mut cases = Vec::new();
    for n in [10u32, 10_000] {
        let server = thread(n);
        let snapshot = server
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let rules = DocumentRules::thread(&snapshot);
        let post = edit(&server, |txn, messages| {
            let at = messages.len(txn);
            let m = messages.insert(txn, at, XmlElementPrelim::empty("message"));
            m.insert_attribute(txn, "$id", "reply");
            m.insert_attribute(txn, "author_name", "bob");
            m.insert_attribute(txn, "text", "a reply");
        });
        let retouch = edit(&server, |txn, messages| {
            let first = messages.get(txn, 0).unwrap().into_xml_element().unwrap();
            first.insert_attribute(txn, "text", "edited");
        });
        rules.check(&bob, &post).unwrap();
        rules.check(&alice, &retouch).unwrap();
        rules.check(&bob, &retouch).unwrap_err();
        let index = Structure::from_snapshot(&snapshot).unwrap();
        changes.bench_with_input(BenchmarkId::new("post", n), &post, |b, u| {
            b.iter(|| index.changes(u).unwrap())
        });
        changes.bench_with_input(BenchmarkId::new("edit_first", n), &retouch, |b, u| {
            b.iter(|| index.changes(u).unwrap())
        });
        cases.push((n, rules, post, retouch));
    }
    changes.finish();
    let mut group = c.benchmark_group("rule_check");
    for (n, rules, post, retouch) in &cases {
        let n = *n;
        group.bench_with_input(BenchmarkId::new("post", n), post, |b, u| {
            b.iter(|| rules.check(&bob, u))
        });
        group.bench_with_input(BenchmarkId::new("edit_own", n), retouch, |b, u| {
            b.iter(|| rules.check(&alice, u))
        });
        group.bench_with_input(BenchmarkId::new("edit_refused", n), retouch, |b, u| {
            b.iter(|| rules.check(&bob, u))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
