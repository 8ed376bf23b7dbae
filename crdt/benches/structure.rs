//! What resolving an update's changes costs (`Structure::changes`, the read a rule check starts
//! from) on a thread of 10 messages and on one of 10,000: one message posted at the end, and
//! an attribute of the first message edited. The figures stay flat as the thread grows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use roomd_crdt::structure::Structure;
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
    let mut group = c.benchmark_group("changes");
    for n in [10u32, 10_000] {
        let server = thread(n);
        let snapshot = server
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let index = Structure::from_snapshot(&snapshot).unwrap();
        let post = edit(&server, |txn, messages| {
            let at = messages.len(txn);
            let m = messages.insert(txn, at, XmlElementPrelim::empty("message"));
            m.insert_attribute(txn, "author_name", "bob");
            m.insert_attribute(txn, "text", "a reply");
        });
        let retouch = edit(&server, |txn, messages| {
            let first = messages.get(txn, 0).unwrap().into_xml_element().unwrap();
            first.insert_attribute(txn, "text", "edited");
        });
        group.bench_with_input(BenchmarkId::new("post", n), &post, |b, u| {
            b.iter(|| index.changes(u).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("edit_first", n), &retouch, |b, u| {
            b.iter(|| index.changes(u).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
