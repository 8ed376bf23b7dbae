//! A queue is also a document, `.queues/<name>`: its items and their states live to whoever
//! syncs it, sends a client appends to its inbox (offline too) taken into the queue once, and
//! nothing else written by a client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_client::{DocEvent, Document, RoomClient};
use roomd_room_apis::scope::QueuesGrant;
use roomd_room_apis::{ApiKey, ApiScope};
use roomd_tests::{YClient, WAIT};
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{
    ReadTxn, StateVector, Transact, Update, Xml, XmlElementPrelim, XmlElementRef, XmlFragment,
    XmlOut,
};

const ROOM: &str = "queue-docs";

fn token(key: &ApiKey, name: &str) -> String {
    roomd_tests::agent_token(key, name, ROOM, ApiScope::agent_default())
}

/// A stock y-websocket editor (real yjs) on `.queues/jobs` beside a stock TypeScript SDK
/// consumer: the item's states live, a send appended offline taken once, an edit of an item
/// refused (tests/interop/queue.mjs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_editor_sees_a_queue_live_and_its_offline_send_is_taken_once() {
    let (server, key) = roomd_tests::server_with_key().await;
    roomd_tests::run_node(
        "queue.mjs",
        &[
            &server.yjs_base(ROOM),
            &format!("ws://{}", server.addr()),
            ROOM,
            &token(&key, "consumer"),
            &token(&key, "editor"),
        ],
    )
    .await;
    server.stop().await;
}

async fn rust_client(base: &str, token: String) -> RoomClient {
    roomd_tests::rust_client(base, ROOM, token).await
}

/// The root's element `tag` of a queue document.
fn root_child(doc: &Document, tag: &str) -> Option<XmlElementRef> {
    let xml = doc.doc().get_or_insert_xml_fragment("xml");
    let txn = doc.doc().transact();
    let found = xml.children(&txn).find_map(|n| match n {
        XmlOut::Element(e) if &**e.tag() == tag => Some(e),
        _ => None,
    });
    found
}

/// The `taken` attribute of each send in the inbox, in order.
fn taken(doc: &Document) -> Vec<Option<String>> {
    let Some(inbox) = root_child(doc, "inbox") else {
        return Vec::new();
    };
    let txn = doc.doc().transact();
    let out = inbox
        .children(&txn)
        .filter_map(|n| match n {
            XmlOut::Element(e) => Some(e.get_attribute(&txn, "taken").map(|v| v.to_string(&txn))),
            _ => None,
        })
        .collect();
    out
}

/// Waits, following the document's changes, until `done` holds.
async fn until(doc: &Document, what: &str, done: impl Fn(&Document) -> bool) {
    let mut changes = doc.changes();
    tokio::time::timeout(WAIT, async {
        while !done(doc) {
            changes.next().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Appends sends with messages `{"n": i}` for `ns` to the inbox, in one change.
fn append_sends(doc: &Document, ns: std::ops::Range<u32>) {
    let inbox = root_child(doc, "inbox").expect("an inbox");
    let mut txn = doc.doc().transact_mut();
    for n in ns {
        let send = inbox.push_back(&mut txn, XmlElementPrelim::empty("send"));
        send.insert_attribute(&mut txn, "$id", format!("send-{n}"));
        send.insert_attribute(&mut txn, "message", json!({ "n": n }).to_string());
    }
}

/// Every message a queue holds, received in order (without a lease), until it is empty.
async fn drain_in_order(client: &RoomClient, queue: &str) -> Vec<Value> {
    let mut got = Vec::new();
    while let Some(m) = client.queue(queue).receive(false).await.unwrap() {
        got.push(m);
    }
    got
}

/// Sends appended to a queue's document while the server is down are taken once it is back,
/// in order, once, across `kill -9` right after they were acknowledged and a second restart;
/// a participant that may not send to the queue cannot append to its inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_appended_to_a_queues_document_are_taken_once_across_kill_9() {
    let mut server = roomd_tests::KillableServer::start().await;
    let (base, key) = (server.base(), server.key.clone());
    let producer = rust_client(&base, token(&key, "producer")).await;
    let doc = producer.open(".queues/jobs").await.unwrap();
    until(&doc, "the inbox", |d| root_child(d, "inbox").is_some()).await;

    // Taken while the server runs.
    append_sends(&doc, 0..3);
    doc.durable().await.unwrap();
    until(&doc, "three sends taken", |d| {
        taken(d).len() == 3 && taken(d).iter().all(Option::is_some)
    })
    .await;

    // Appended, acknowledged, and the server killed at once; then appended offline.
    append_sends(&doc, 3..10);
    doc.durable().await.unwrap();
    server.kill().await;
    append_sends(&doc, 10..20);
    server.restart().await;
    until(&doc, "twenty sends taken", |d| {
        taken(d).len() == 20 && taken(d).iter().all(Option::is_some)
    })
    .await;
    let seqs: Vec<String> = taken(&doc).into_iter().flatten().collect();
    let want: Vec<String> = (0..20).map(|n| n.to_string()).collect();
    assert_eq!(seqs, want, "each send became the next item, in order");

    // Restarted again: nothing is taken twice.
    server.restart().await;
    let consumer = rust_client(&base, token(&key, "consumer")).await;
    let got = drain_in_order(&consumer, "jobs").await;
    let want: Vec<Value> = (0..20).map(|n| json!({ "n": n })).collect();
    assert_eq!(got, want);

    // Without the send grant, the inbox is read-only.
    let mut scope = ApiScope::agent_default();
    scope.queues = Some(QueuesGrant {
        send: Some(vec!["other".into()]),
        ..QueuesGrant::default()
    });
    let reader = rust_client(&base, roomd_tests::agent_token(&key, "reader", ROOM, scope)).await;
    let theirs = reader.open(".queues/jobs").await.unwrap();
    until(&theirs, "the inbox", |d| root_child(d, "inbox").is_some()).await;
    let mut changes = theirs.changes();
    append_sends(&theirs, 100..101);
    let refused = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(DocEvent::Refused { message })) = changes.next().await {
                return message;
            }
        }
    })
    .await
    .expect("the send refused");
    assert!(refused.contains("permission-denied"), "{refused}");
    assert!(drain_in_order(&consumer, "jobs").await.is_empty());
    for c in [&producer, &consumer, &reader] {
        c.close().await;
    }
    server.kill().await;
}

/// A send appended to the inbox over REST is taken like one that arrives over a socket; one
/// from a participant without the send grant is refused on every path that writes the
/// document (y-websocket, REST; the room protocol in the test above), and the queue stays
/// empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_takes_sends_over_rest_and_refuses_them_without_the_send_grant() {
    let (server, key) = roomd_tests::server_with_key().await;
    let base = format!("ws://{}", server.addr());
    let owner = rust_client(&base, token(&key, "owner")).await;
    let doc = owner.open(".queues/jobs").await.unwrap();
    until(&doc, "the inbox", |d| root_child(d, "inbox").is_some()).await;
    let state = doc
        .doc()
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    // A send made on a copy of the document, as an offline client would.
    let send_of = |client: u64, n: u32| {
        let copy = yrs::Doc::with_client_id(client);
        copy.transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
        let xml = copy.get_or_insert_xml_fragment("xml");
        let mut txn = copy.transact_mut();
        let inbox = xml
            .children(&txn)
            .find_map(|c| match c {
                XmlOut::Element(e) if &**e.tag() == "inbox" => Some(e),
                _ => None,
            })
            .unwrap();
        let send = inbox.push_back(&mut txn, XmlElementPrelim::empty("send"));
        send.insert_attribute(&mut txn, "$id", format!("rest-{n}"));
        send.insert_attribute(&mut txn, "message", json!({ "n": n }).to_string());
        txn.encode_update_v1()
    };
    let path = format!("/v1/rooms/{ROOM}/docs/.queues/jobs/update");

    let mut scope = ApiScope::agent_default();
    scope.queues = Some(QueuesGrant {
        send: Some(vec!["other".into()]),
        ..QueuesGrant::default()
    });
    let reader = roomd_tests::agent_token(&key, "reader", ROOM, scope);
    let refused = send_of(71, 1);
    let (status, body) = server.http("POST", &path, Some(&reader), &refused).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let mut socket =
        YClient::connect_authorized(&server.doc_url(ROOM, ".queues/jobs"), &reader, 72).await;
    socket
        .send_raw(roomd_sync::Message::Sync(roomd_sync::SyncMessage::Update(&refused)).to_vec())
        .await;
    socket.until_permission_denied().await;
    assert!(drain_in_order(&owner, "jobs").await.is_empty());

    let writer = token(&key, "writer");
    let (status, body) = server
        .http("POST", &path, Some(&writer), &send_of(73, 2))
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    until(&doc, "the REST send taken", |d| {
        taken(d) == [Some("0".to_string())]
    })
    .await;
    assert_eq!(drain_in_order(&owner, "jobs").await, [json!({ "n": 2 })]);
    owner.close().await;
    server.stop().await;
}
