//! Work queues over the room protocol: competing consumers complete each item exactly once,
//! leases end and deliver their items again, nack and dead-lettering count attempts, long
//! polls wake and time out, `kill -9` loses nothing acknowledged, grants refuse, and hostile
//! arguments are errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use roomd_room_apis::scope::QueuesGrant;
use roomd_room_apis::{ApiKey, ApiScope};
use roomd_tests::{free_port, RoomProtoClient, TestServer};
use serde_json::{json, Map, Value};

const ROOM: &str = "work";

type Answer = Map<String, Value>;

fn room_url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/rooms/{ROOM}")
}

/// A server in open development mode that flushes every 2 ms, so that answers given once
/// durable come quickly.
async fn quick_server() -> TestServer {
    TestServer::start_with(|c| c.flush_interval = Duration::from_millis(2)).await
}

async fn connect(server: &TestServer) -> RoomProtoClient {
    RoomProtoClient::connect(&room_url(server.addr()), None).await
}

/// One call of the `queues` toolkit with JSON arguments; its answer's content header.
async fn call(c: &mut RoomProtoClient, tool: &str, args: Value) -> Answer {
    c.invoke(
        "queues",
        tool,
        &format!("q-{tool}"),
        json!({"type": "json", "json": args}),
    )
    .await
}

/// Sends a call without waiting for its answer; returns the request's id.
async fn start(c: &mut RoomProtoClient, tool: &str, args: Value) -> u64 {
    c.send(
        "room.invoke_tool",
        json!({"toolkit": "queues", "tool": tool, "tool_call_id": format!("q-{tool}"),
            "participant_id": null, "on_behalf_of_id": null,
            "arguments": {"type": "json", "json": args}}),
        b"",
    )
    .await
}

/// The answer to request `id`, skipping other messages.
async fn answer_to(c: &mut RoomProtoClient, id: u64) -> Answer {
    loop {
        let m = c.next().await;
        if m.kind == "__response__" && m.id == id {
            return m.header;
        }
    }
}

/// The answers to requests `ids`, in whatever order they come, skipping other messages.
async fn answers_to(c: &mut RoomProtoClient, ids: &[u64]) -> BTreeMap<u64, Answer> {
    let mut answers = BTreeMap::new();
    while answers.len() < ids.len() {
        let m = c.next().await;
        if m.kind == "__response__" && ids.contains(&m.id) {
            answers.insert(m.id, m.header);
        }
    }
    answers
}

fn assert_empty(a: &Answer) {
    assert_eq!(a["type"], "empty", "{a:?}");
}

fn assert_error(a: &Answer, code: u64) {
    assert_eq!(a["type"], "error", "{a:?}");
    assert_eq!(a["code"], code, "{a:?}");
}

/// The JSON of a `json` answer.
fn json_of(a: &Answer) -> &Value {
    assert_eq!(a["type"], "json", "{a:?}");
    &a["json"]
}

async fn send(c: &mut RoomProtoClient, queue: &str, message: Value) {
    let a = call(
        c,
        "send",
        json!({"name": queue, "create": true, "message": message}),
    )
    .await;
    assert_empty(&a);
}

/// A leased receive that does not wait: the JSON `{queue, seq, message, receipt, attempts}`,
/// or `None` when nothing waits.
async fn lease(c: &mut RoomProtoClient, queue: &str, lease_ms: u64) -> Option<Value> {
    let a = call(
        c,
        "receive",
        json!({"name": queue, "wait": false, "lease_ms": lease_ms}),
    )
    .await;
    match a["type"].as_str() {
        Some("empty") => None,
        _ => Some(json_of(&a).clone()),
    }
}

fn sizes(list: &Answer) -> BTreeMap<String, u64> {
    json_of(list)["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            (
                q["name"].as_str().unwrap().to_string(),
                q["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_competing_consumers_complete_every_item_exactly_once() {
    const ITEMS: usize = 10_000;
    const WINDOW: usize = 16;
    let server = quick_server().await;
    let mut producer = connect(&server).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let mut c = connect(&server).await;
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            // Receives in flight, and acks in flight; what this consumer got, in order.
            let mut receives = BTreeSet::new();
            let mut acks = BTreeSet::new();
            let mut got: Vec<(u64, u64)> = Vec::new();
            loop {
                let done = acked.load(Ordering::SeqCst) >= ITEMS;
                while !done && receives.len() < WINDOW {
                    let args = json!({"name": "jobs", "create": true, "wait": true,
                        "wait_ms": 500, "lease_ms": 30_000});
                    receives.insert(start(&mut c, "receive", args).await);
                }
                if receives.is_empty() && acks.is_empty() {
                    return got;
                }
                let m = c.next().await;
                if m.kind != "__response__" {
                    continue;
                }
                if acks.remove(&m.id) {
                    assert_empty(&m.header);
                    acked.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                assert!(receives.remove(&m.id), "an answer to no request: {m:?}");
                if m.header["type"] == "empty" {
                    continue;
                }
                let j = json_of(&m.header).clone();
                assert_eq!(j["attempts"], 1, "{j}");
                got.push((
                    j["seq"].as_u64().unwrap(),
                    j["message"]["n"].as_u64().unwrap(),
                ));
                acks.insert(start(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
            }
        }));
    }
    // The producer keeps a window of sends in flight, each answered once durable.
    let mut in_flight = BTreeSet::new();
    let mut next = 0;
    while next < ITEMS || !in_flight.is_empty() {
        while next < ITEMS && in_flight.len() < 64 {
            let args = json!({"name": "jobs", "create": true, "message": {"n": next}});
            in_flight.insert(start(&mut producer, "send", args).await);
            next += 1;
        }
        let m = producer.next().await;
        if m.kind == "__response__" {
            assert!(in_flight.remove(&m.id));
            assert_empty(&m.header);
        }
    }
    let mut all = BTreeSet::new();
    for c in consumers {
        let got = c.await.unwrap();
        // FIFO per consumer: each got its items in the order they were sent.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "out of order");
        for (seq, n) in got {
            assert_eq!(seq, n);
            assert!(all.insert(n), "item {n} completed twice");
        }
    }
    assert_eq!(all.len(), ITEMS);
    assert_eq!(acked.load(Ordering::SeqCst), ITEMS);
    assert_eq!(
        sizes(&call(&mut producer, "list", json!({})).await)["jobs"],
        0
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_dropped_mid_lease_lose_nothing() {
    const ITEMS: u64 = 200;
    let server = quick_server().await;
    let mut producer = connect(&server).await;
    for n in 0..ITEMS {
        send(&mut producer, "jobs", json!({"n": n})).await;
    }
    // Two consumers lease items and vanish without acknowledging them.
    let mut abandoned = BTreeSet::new();
    for _ in 0..2 {
        let mut c = connect(&server).await;
        for _ in 0..25 {
            // Long enough that neither's leases end while the other leases.
            let j = lease(&mut c, "jobs", 2_000).await.unwrap();
            abandoned.insert(j["message"]["n"].as_u64().unwrap());
        }
        drop(c);
    }
    assert_eq!(abandoned.len(), 50);
    // A third takes everything, the abandoned items once their leases end.
    let mut c = connect(&server).await;
    let mut done = BTreeSet::new();
    let mut again = BTreeSet::new();
    while done.len() < ITEMS as usize {
        let a = call(
            &mut c,
            "receive",
            json!({"name": "jobs", "wait": true, "wait_ms": 5000, "lease_ms": 30_000}),
        )
        .await;
        let j = json_of(&a).clone();
        let n = j["message"]["n"].as_u64().unwrap();
        if j["attempts"] == 2 {
            again.insert(n);
        } else {
            assert_eq!(j["attempts"], 1);
        }
        assert_empty(&call(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
        assert!(done.insert(n), "item {n} completed twice");
    }
    assert_eq!(again, abandoned);
    assert_eq!(lease(&mut c, "jobs", 100).await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ends_delivers_its_item_again() {
    let server = quick_server().await;
    let mut c = connect(&server).await;
    send(&mut c, "jobs", json!({"task": "resize"})).await;
    let first = lease(&mut c, "jobs", 2_000).await.unwrap();
    assert_eq!(first["queue"], "jobs");
    assert_eq!(first["seq"], 0);
    assert_eq!(first["attempts"], 1);
    assert_eq!(first["message"], json!({"task": "resize"}));
    // Leased: nobody else gets it meanwhile, and it still counts in the queue's size.
    assert_eq!(lease(&mut c, "jobs", 2_000).await, None);
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 1);
    let (status, room) = server
        .json("GET", &format!("/v1/rooms/{ROOM}"), None, None)
        .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(
        room["queues"],
        json!([{"name": "jobs", "depth": 0, "leased": 1, "dead": 0, "oldest_age_ms": null}])
    );
    // Extended, the lease outlives its first end; shortened, it ends soon.
    let extend = |ms: u64| json!({"receipt": first["receipt"], "lease_ms": ms});
    let extended = call(&mut c, "extend", extend(60_000)).await;
    assert!(json_of(&extended)["until_ms"].as_u64().unwrap() > 60_000);
    let shortened = call(&mut c, "extend", extend(300)).await;
    assert!(json_of(&shortened)["until_ms"].is_u64());
    // The lease ends on the room's timer and wakes the receiver waiting for it.
    let started = std::time::Instant::now();
    let a = call(
        &mut c,
        "receive",
        json!({"name": "jobs", "wait": true, "wait_ms": 5000, "lease": true}),
    )
    .await;
    let again = json_of(&a).clone();
    assert_eq!(again["seq"], 0);
    assert_eq!(again["attempts"], 2);
    assert_ne!(again["receipt"], first["receipt"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The first receipt settles nothing any more; the second does.
    assert_error(
        &call(&mut c, "ack", json!({"receipt": first["receipt"]})).await,
        1003,
    );
    assert_empty(&call(&mut c, "ack", json!({"receipt": again["receipt"]})).await);
    assert_error(
        &call(&mut c, "nack", json!({"receipt": again["receipt"]})).await,
        1003,
    );
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_returns_in_place_and_dead_letters_after_the_attempts() {
    let server = quick_server().await;
    let mut c = connect(&server).await;
    send(&mut c, "jobs", json!({"poison": true})).await;
    send(&mut c, "jobs", json!({"fine": true})).await;
    for attempt in 1..=5 {
        let j = lease(&mut c, "jobs", 30_000).await.unwrap();
        // Returned in place: the poison comes first every time.
        assert_eq!(j["message"], json!({"poison": true}));
        assert_eq!(j["attempts"], attempt);
        let a = call(&mut c, "nack", json!({"receipt": j["receipt"]})).await;
        if attempt < 5 {
            assert_eq!(json_of(&a), &json!({"returned": "waiting"}));
        } else {
            assert_eq!(
                json_of(&a),
                &json!({"returned": "dead_lettered", "dead_letter_queue": "jobs.dead",
                    "dead_letter_seq": 0})
            );
        }
    }
    let list = call(&mut c, "list", json!({})).await;
    assert_eq!(
        json_of(&list),
        &json!({"queues": [{"name": "jobs", "size": 1}, {"name": "jobs.dead", "size": 1}]})
    );
    let (_, room) = server
        .json("GET", &format!("/v1/rooms/{ROOM}"), None, None)
        .await;
    let queues = room["queues"].as_array().unwrap();
    assert_eq!(queues[0]["name"], "jobs");
    assert_eq!(queues[0]["depth"], 1);
    assert_eq!(queues[0]["dead"], 1);
    assert!(queues[0]["oldest_age_ms"].is_u64());
    assert_eq!(queues[1]["name"], "jobs.dead");
    assert_eq!(queues[1]["depth"], 1);
    let metrics = server.metrics().render();
    assert!(
        metrics
            .lines()
            .any(|l| l == "roomd_queue_items_waiting 2.0"),
        "{metrics}"
    );
    // The dead letter keeps its attempts (this delivery is its sixth); returned there, it
    // waits again rather than dying twice; received without a lease, as the stock SDK does,
    // the answer is the message itself.
    let dead = lease(&mut c, "jobs.dead", 30_000).await.unwrap();
    assert_eq!(dead["attempts"], 6);
    assert_eq!(
        call(&mut c, "nack", json!({"receipt": dead["receipt"]})).await["json"]["returned"],
        "waiting"
    );
    let a = call(
        &mut c,
        "receive",
        json!({"name": "jobs.dead", "create": false, "wait": false}),
    )
    .await;
    assert_eq!(json_of(&a), &json!({"poison": true}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_wake_in_order_time_out_empty_and_leave_with_their_connection() {
    let server = quick_server().await;
    let mut first = connect(&server).await;
    let mut second = connect(&server).await;
    let mut gone = connect(&server).await;
    let mut producer = connect(&server).await;
    let wait = json!({"name": "jobs", "create": true, "wait": true, "wait_ms": 20_000});
    // Each parks; an answered call after it on the same connection shows it has.
    start(&mut gone, "receive", wait.clone()).await;
    call(&mut gone, "list", json!({})).await;
    drop(gone);
    let a = start(&mut first, "receive", wait.clone()).await;
    call(&mut first, "list", json!({})).await;
    let b = start(&mut second, "receive", wait.clone()).await;
    call(&mut second, "list", json!({})).await;
    // The dropped connection's receiver is gone: the first item goes to the first receiver
    // still there, the second to the next.
    send(&mut producer, "jobs", json!({"n": 1})).await;
    send(&mut producer, "jobs", json!({"n": 2})).await;
    assert_eq!(json_of(&answer_to(&mut first, a).await), &json!({"n": 1}));
    assert_eq!(json_of(&answer_to(&mut second, b).await), &json!({"n": 2}));
    // A wait that ends is answered empty; no wait is answered at once.
    let started = std::time::Instant::now();
    let a = call(
        &mut first,
        "receive",
        json!({"name": "jobs", "wait": true, "wait_ms": 300}),
    )
    .await;
    assert_empty(&a);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_empty(
        &call(
            &mut first,
            "receive",
            json!({"name": "jobs", "wait": false}),
        )
        .await,
    );
    // Closing the queue answers its receivers empty.
    let c = start(&mut first, "receive", wait.clone()).await;
    call(&mut first, "list", json!({})).await;
    assert_empty(&call(&mut producer, "close", json!({"name": "jobs"})).await);
    assert_empty(&answer_to(&mut first, c).await);
    assert!(sizes(&call(&mut first, "list", json!({})).await).is_empty());
    // 64 receivers parked on one connection at most.
    let mut parked = Vec::new();
    for _ in 0..64 {
        parked.push(start(&mut second, "receive", wait.clone()).await);
    }
    assert_error(&call(&mut second, "receive", wait.clone()).await, 1006);
    send(&mut producer, "jobs", json!({"n": 3})).await;
    assert_eq!(
        json_of(&answer_to(&mut second, parked[0]).await),
        &json!({"n": 3})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_item_and_keeps_outstanding_leases() {
    const LEASE_MS: u64 = 6_000;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = roomd_tests::spawn_roomd(dir.path(), port, &[]).await;
    let mut c = RoomProtoClient::connect(&room_url(addr), None).await;
    for n in 0..100 {
        send(&mut c, "jobs", json!({"n": n})).await;
    }
    // Ten leased: five acknowledged, five outstanding when the server dies.
    let mut acked = BTreeSet::new();
    let mut outstanding = Vec::new();
    for i in 0..10 {
        let j = lease(&mut c, "jobs", LEASE_MS).await.unwrap();
        if i % 2 == 0 {
            assert_empty(&call(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
            acked.insert(j["message"]["n"].as_u64().unwrap());
        } else {
            outstanding.push(j);
        }
    }
    let leased_at = std::time::Instant::now();
    // Leases are answered before their flush (a lost one only delivers an item again); once
    // it has run, they survive the kill.
    roomd_tests::wait_durable(port).await;
    child.kill().await.unwrap();
    drop(c);
    let mut child = roomd_tests::spawn_roomd(dir.path(), port, &[]).await;
    let mut c = RoomProtoClient::connect(&room_url(addr), None).await;
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 95);
    // The outstanding leases survived: one is acknowledged with its old receipt.
    let settled = outstanding.remove(0);
    assert_empty(&call(&mut c, "ack", json!({"receipt": settled["receipt"]})).await);
    acked.insert(settled["message"]["n"].as_u64().unwrap());
    // What waited is there, in order, and the leased items are not, until their leases end
    // (the receives go at once, so that they are answered well within the leases).
    let mut ids = Vec::new();
    for _ in 0..91 {
        ids.push(start(&mut c, "receive", json!({"name": "jobs", "wait": false})).await);
    }
    let seen: Vec<u64> = answers_to(&mut c, &ids)
        .await
        .values()
        .filter(|a| a["type"] != "empty")
        .map(|a| json_of(a)["n"].as_u64().unwrap())
        .collect();
    assert!(
        leased_at.elapsed() < Duration::from_millis(LEASE_MS),
        "too slow to see the leases outstanding"
    );
    assert_eq!(seen, (10..100).collect::<Vec<u64>>());
    let mut again = BTreeSet::new();
    for _ in 0..4 {
        let a = call(
            &mut c,
            "receive",
            json!({"name": "jobs", "wait": true, "wait_ms": 20_000, "lease": true}),
        )
        .await;
        let j = json_of(&a).clone();
        assert_eq!(j["attempts"], 2);
        again.insert(j["message"]["n"].as_u64().unwrap());
        assert_empty(&call(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
    }
    let expected: BTreeSet<u64> = outstanding
        .iter()
        .map(|j| j["message"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(again, expected);
    assert!(acked.is_disjoint(&again));
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 0);
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_after_the_room_unloads_and_its_journal_folds_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let idle = ["--room-idle-timeout-ms", "100"];
    let mut child = roomd_tests::spawn_roomd(dir.path(), port, &idle).await;
    let mut c = RoomProtoClient::connect(&room_url(addr), None).await;
    for n in 0..30 {
        send(&mut c, "jobs", json!({"n": n})).await;
    }
    let mut outstanding = Vec::new();
    for i in 0..6 {
        let j = lease(&mut c, "jobs", 60_000).await.unwrap();
        if i % 2 == 0 {
            assert_empty(&call(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
        } else {
            outstanding.push(j);
        }
    }
    drop(c);
    // The room unloads, and the store folds its queues' journal into their records.
    let deadline = tokio::time::Instant::now() + roomd_tests::WAIT;
    loop {
        let (_, body) = roomd_tests::http_get(addr, "/metrics").await;
        if roomd_tests::metric(&body, "roomd_store_queue_compactions_total ") >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queues' journal was never compacted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the metric
    }
    roomd_tests::wait_durable(port).await;
    child.kill().await.unwrap();
    let mut child = roomd_tests::spawn_roomd(dir.path(), port, &idle).await;
    let mut c = RoomProtoClient::connect(&room_url(addr), None).await;
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 27);
    let mut seen = Vec::new();
    for _ in 0..24 {
        let j = lease(&mut c, "jobs", 60_000).await.unwrap();
        seen.push(j["message"]["n"].as_u64().unwrap());
    }
    assert_eq!(seen, (6..30).collect::<Vec<u64>>());
    assert_eq!(lease(&mut c, "jobs", 60_000).await, None);
    // The leases outstanding before the fold and the kill settle with their receipts.
    for j in outstanding {
        assert_empty(&call(&mut c, "ack", json!({"receipt": j["receipt"]})).await);
    }
    child.kill().await.unwrap();
}

fn scope_with(queues: Option<QueuesGrant>) -> ApiScope {
    let mut scope = ApiScope::agent_default();
    scope.queues = queues;
    scope
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_refuse_each_call_they_do_not_allow() {
    let server = TestServer::start_with(|c| c.flush_interval = Duration::from_millis(2)).await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let url = room_url(server.addr());
    let token = |name: &str, grant| roomd_tests::agent_token(&key, name, ROOM, scope_with(grant));
    let mut admin =
        RoomProtoClient::connect(&url, Some(&token("admin", Some(QueuesGrant::default())))).await;
    send(&mut admin, "a", json!(1)).await;
    send(&mut admin, "b", json!(2)).await;
    let leased_a = lease(&mut admin, "a", 30_000).await.unwrap();
    let mut none = RoomProtoClient::connect(&url, Some(&token("none", None))).await;
    for (tool, args) in [
        ("list", json!({})),
        ("open", json!({"name": "a"})),
        ("send", json!({"name": "a", "message": {}})),
        ("receive", json!({"name": "a", "wait": false})),
        ("ack", json!({"receipt": leased_a["receipt"]})),
        ("nack", json!({"receipt": leased_a["receipt"]})),
        (
            "extend",
            json!({"receipt": leased_a["receipt"], "lease_ms": 10}),
        ),
        ("drain", json!({"name": "a"})),
        ("close", json!({"name": "a"})),
    ] {
        assert_error(&call(&mut none, tool, args).await, 1001);
    }
    let limited = QueuesGrant {
        send: Some(vec!["a".into()]),
        receive: Some(vec!["b".into()]),
        list: false,
    };
    let mut some = RoomProtoClient::connect(&url, Some(&token("some", Some(limited)))).await;
    assert_error(&call(&mut some, "list", json!({})).await, 1001);
    assert_empty(&call(&mut some, "send", json!({"name": "a", "message": {}})).await);
    assert_error(
        &call(&mut some, "send", json!({"name": "b", "message": {}})).await,
        1001,
    );
    assert_error(
        &call(&mut some, "receive", json!({"name": "a", "wait": false})).await,
        1001,
    );
    assert_empty(&call(&mut some, "open", json!({"name": "a"})).await);
    assert_empty(&call(&mut some, "open", json!({"name": "b"})).await);
    assert_error(&call(&mut some, "open", json!({"name": "c"})).await, 1001);
    assert_error(&call(&mut some, "drain", json!({"name": "a"})).await, 1001);
    assert_empty(&call(&mut some, "drain", json!({"name": "b"})).await);
    assert_error(&call(&mut some, "close", json!({"name": "a"})).await, 1001);
    assert_error(&call(&mut some, "close", json!({"name": "b"})).await, 1001);
    // A receipt of a queue the token may not receive from settles nothing.
    assert_error(
        &call(&mut some, "ack", json!({"receipt": leased_a["receipt"]})).await,
        1001,
    );
    assert_error(
        &call(&mut some, "nack", json!({"receipt": leased_a["receipt"]})).await,
        1001,
    );
    let extend_a = json!({"receipt": leased_a["receipt"], "lease_ms": 10});
    assert_error(&call(&mut some, "extend", extend_a).await, 1001);
    send(&mut admin, "b", json!(3)).await;
    let leased_b = lease(&mut some, "b", 30_000).await.unwrap();
    assert_eq!(leased_b["message"], 3);
    assert_empty(&call(&mut some, "ack", json!({"receipt": leased_b["receipt"]})).await);
    // The refusals changed nothing.
    let list = call(&mut admin, "list", json!({})).await;
    assert_eq!(
        sizes(&list),
        BTreeMap::from([("a".into(), 2), ("b".into(), 0)])
    );
    assert_empty(&call(&mut admin, "ack", json!({"receipt": leased_a["receipt"]})).await);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_arguments_are_answered_with_errors() {
    let server = quick_server().await;
    let mut c = connect(&server).await;
    let long = "x".repeat(257);
    for (tool, args) in [
        ("send", json!({"name": "", "message": {}})),
        ("send", json!({"name": long, "message": {}})),
        ("send", json!({"name": "a\nb", "message": {}})),
        ("send", json!({"name": 7, "message": {}})),
        ("send", json!({"message": {}})),
        ("send", json!({"name": "a"})),
        ("send", json!({"name": "a", "message": null})),
        ("send", json!({"name": "a", "create": "yes", "message": {}})),
        (
            "send",
            json!({"name": "a", "message": "x".repeat(300 << 10)}),
        ),
        ("receive", json!({"name": "a", "lease_ms": -1})),
        ("receive", json!({"name": "a", "lease_ms": 0})),
        (
            "receive",
            json!({"name": "a", "lease_ms": 13 * 3600 * 1000}),
        ),
        ("receive", json!({"name": "a", "lease_ms": "soon"})),
        ("receive", json!({"name": "a", "lease": "yes"})),
        ("receive", json!({"name": "a", "wait": 1})),
        ("receive", json!({"name": "a", "wait_ms": 60_000})),
        ("ack", json!({"receipt": "x"})),
        ("ack", json!({})),
        ("nack", json!({"receipt": -3})),
        ("extend", json!({"receipt": 1})),
        ("extend", json!({"receipt": 1, "lease_ms": 0})),
        ("open", json!({"name": null})),
    ] {
        assert_error(&call(&mut c, tool, args.clone()).await, 1002);
    }
    // Text instead of JSON; an unknown tool; a receipt never issued; a queue that is not there.
    let a = c
        .invoke(
            "queues",
            "send",
            "q-text",
            json!({"type": "text", "text": "hi"}),
        )
        .await;
    assert_error(&a, 1002);
    assert_error(&call(&mut c, "explode", json!({})).await, 1003);
    assert_error(
        &call(&mut c, "ack", json!({"receipt": 123_456})).await,
        1003,
    );
    assert_error(
        &call(&mut c, "receive", json!({"name": "nope", "create": false})).await,
        1003,
    );
    assert_error(&call(&mut c, "drain", json!({"name": "nope"})).await, 1003);
    assert_error(
        &call(
            &mut c,
            "send",
            json!({"name": "nope", "create": false, "message": 1}),
        )
        .await,
        1003,
    );
    // 256 queues in a room at most.
    for i in 0..256 {
        assert_empty(&call(&mut c, "open", json!({"name": format!("q{i}")})).await);
    }
    assert_error(
        &call(&mut c, "open", json!({"name": "one-more"})).await,
        1006,
    );
    // Nothing of it harmed the connection or the queues.
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await).len(), 256);
    send(&mut c, "q0", json!({"still": "working"})).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stock_python_sdk_sends_receives_lists_drains_and_closes() {
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let producer = roomd_tests::agent_token(&key, "producer", ROOM, ApiScope::agent_default());
    // The consumer may receive from any queue and send to none.
    let receive_only = QueuesGrant {
        send: Some(Vec::new()),
        ..QueuesGrant::default()
    };
    let consumer = roomd_tests::agent_token(&key, "consumer", ROOM, scope_with(Some(receive_only)));
    let base = format!("ws://{}", server.addr());
    let out = roomd_tests::run_python("room_queues.py", &[&base, ROOM, &producer, &consumer]).await;
    assert_eq!(out.trim(), "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_outlive_the_room_unloading_and_go_with_its_deletion() {
    let server = TestServer::start_with(|c| {
        c.flush_interval = Duration::from_millis(2);
        c.room_idle_timeout = Duration::from_millis(100);
    })
    .await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let admin = roomd_tests::agent_token(&key, "admin", ROOM, ApiScope::full());
    let url = room_url(server.addr());
    let mut c = RoomProtoClient::connect(&url, Some(&admin)).await;
    for n in 0..3 {
        send(&mut c, "jobs", json!({"n": n})).await;
    }
    let leased = lease(&mut c, "jobs", 60_000).await.unwrap();
    drop(c);
    // Unloaded, the room shows its queues as the store holds them.
    let path = format!("/v1/rooms/{ROOM}");
    let deadline = std::time::Instant::now() + roomd_tests::WAIT;
    let room = loop {
        let (status, room) = server.json("GET", &path, Some(&admin), None).await;
        assert_eq!(status, 200, "{room}");
        if room["active"] == false {
            break room;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room never unloaded"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling the room's state
    };
    assert_eq!(room["queues"][0]["depth"], 2, "{room}");
    assert_eq!(room["queues"][0]["leased"], 1, "{room}");
    // Loaded again, the lease is still outstanding and settles.
    let mut c = RoomProtoClient::connect(&url, Some(&admin)).await;
    assert_eq!(sizes(&call(&mut c, "list", json!({})).await)["jobs"], 3);
    assert_empty(&call(&mut c, "ack", json!({"receipt": leased["receipt"]})).await);
    drop(c);
    let (status, body) = server.json("DELETE", &path, Some(&admin), None).await;
    assert_eq!(status, 200, "{body}");
    let mut c = RoomProtoClient::connect(&url, Some(&admin)).await;
    assert!(sizes(&call(&mut c, "list", json!({})).await).is_empty());
    assert_eq!(lease(&mut c, "jobs", 1000).await, None);
    server.stop().await;
}
