//! The Rust client (`roomd-client`) against the real server: an agent following a stock
//! y-websocket editor, durable acknowledgements across `kill -9`, offline edits merging on
//! reconnect, many documents on one socket, a slow consumer, messaging, tools and logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use roomd_client::{
    Author, Config, Content, DocEvent, Document, Error, ErrorCode, MessagingEvent, RoomClient,
    Status, Tool, ToolError, Toolkit,
};
use roomd_room_apis::{ApiKey, ApiScope};
use roomd_tests::{free_port, spawn_roomd, TestServer, YClient, WAIT};
use serde_json::{json, Value};
use yrs::{Array, GetString, Map, Text, Transact};

const ROOM: &str = "client";

async fn secured() -> (TestServer, ApiKey) {
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

fn agent(key: &ApiKey, name: &str) -> String {
    roomd_tests::agent_token(key, name, ROOM, ApiScope::agent_default())
}

async fn client(base: &str, token: Option<String>) -> RoomClient {
    let mut config = Config::new(base, ROOM, token);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    tokio::time::timeout(WAIT, RoomClient::connect(config))
        .await
        .expect("connecting timed out")
        .expect("connecting")
}

/// The next event of a change stream, within [`WAIT`].
async fn next_event(changes: &mut roomd_client::Changes) -> DocEvent {
    tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("no document event in time")
        .expect("the change stream ended")
        .expect("the change stream lagged")
}

async fn next(m: &mut roomd_client::Messages) -> MessagingEvent {
    tokio::time::timeout(WAIT, m.next())
        .await
        .expect("no messaging event in time")
        .unwrap()
        .unwrap()
}

/// Waits until text `name` of `doc` satisfies `done`; returns it.
async fn until_text_is(doc: &Document, name: &str, done: impl Fn(&str) -> bool) -> String {
    // Subscribed before the first look, so no change between the two is missed.
    let mut changes = doc.changes();
    let text = doc.doc().get_or_insert_text(name);
    loop {
        let now = text.get_string(&doc.doc().transact());
        if done(&now) {
            return now;
        }
        next_event(&mut changes).await;
    }
}

async fn until_text(doc: &Document, name: &str, want: &str) {
    until_text_is(doc, name, |t| t == want).await;
}

fn push(doc: &Document, name: &str, s: &str) {
    let text = doc.doc().get_or_insert_text(name);
    let mut txn = doc.doc().transact_mut();
    let at = text.len(&txn);
    text.insert(&mut txn, at, s);
}

async fn until_connected_again(c: &RoomClient, before: &str) {
    let mut status = c.status();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Status::Connected { session_id, .. } = &*status.borrow_and_update() {
                if session_id != before {
                    return;
                }
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .expect("the client did not reconnect in time");
}

fn session_of(c: &RoomClient) -> String {
    match &*c.status().borrow() {
        Status::Connected { session_id, .. } => session_id.clone(),
        other => panic!("not connected: {other:?}"),
    }
}

/// An agent following a document that a stock y-websocket editor (the real `yjs` and
/// `y-websocket` packages) edits sees all 1,000 edits, none missed, none twice, in order,
/// each named as the editor's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_every_edit_of_a_stock_editor_once_and_in_order() {
    const EDITS: usize = 1_000;
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let a = client(&base, Some(agent(&key, "follower"))).await;
    let me = a.participant_id().unwrap();
    let doc = a.open("notes/edits.doc").await.unwrap();
    let mut changes = doc.changes();
    let editor = roomd_tests::agent_token(&key, "editor", ROOM, ApiScope::user_default());
    let yjs = server.yjs_base(ROOM);
    let node = tokio::spawn(async move {
        roomd_tests::run_node_for(
            "edits.mjs",
            &[&yjs, "notes/edits.doc", &editor, &EDITS.to_string()],
            Duration::from_secs(150),
        )
        .await
    });
    let edits = doc.doc().get_or_insert_array("edits");
    let mut seen = 0usize;
    let mut author: Option<String> = None;
    while seen < EDITS {
        let DocEvent::Changed(change) = next_event(&mut changes).await else {
            continue;
        };
        let Author::Participants(ids) = &change.author else {
            panic!("an edit of the editor not named as a participant's: {change:?}");
        };
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_ne!(ids[0], me);
        assert_eq!(
            author.get_or_insert_with(|| ids[0].clone()),
            &ids[0],
            "every edit is the editor's"
        );
        let now: Vec<i64> = edits
            .iter(&doc.doc().transact())
            .map(|v| v.cast::<i64>().unwrap())
            .collect();
        assert!(now.len() >= seen, "edits went missing");
        // In order: what the agent holds is always a prefix 0, 1, 2, … of the edits.
        assert!(
            now.iter().enumerate().all(|(i, v)| *v == i as i64),
            "edits out of order or repeated: {now:?}"
        );
        seen = now.len();
    }
    assert_eq!(seen, EDITS);
    doc.doc().get_or_insert_map("agent").insert(
        &mut doc.doc().transact_mut(),
        "seen",
        EDITS as i64,
    );
    node.await.unwrap();
    a.close().await;
    server.stop().await;
}

/// A change the client was told is durable survives `kill -9` of the server: 20 cycles, each
/// killed right after an acknowledgement with more changes racing the kill; the client
/// reconnects to each new process by itself and, at the end, the room holds all it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_changes_survive_kill_9_and_the_client_reconnects() {
    const CYCLES: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("ws://127.0.0.1:{port}");
    let mut child = spawn_roomd(&data, port, &[]).await;
    let c = client(&base, None).await;
    let doc = c.open("doc").await.unwrap();
    let mut acknowledged = Vec::new();
    for cycle in 0..CYCLES {
        for i in 0..25 {
            let piece = format!("[{cycle}.{i}]");
            push(&doc, "t", &piece);
            acknowledged.push(piece);
        }
        tokio::time::timeout(WAIT, doc.durable())
            .await
            .expect("no acknowledgement in time")
            .unwrap();
        for i in 0..10 {
            push(&doc, "t", &format!("<{cycle}.{i}>"));
        }
        let session = session_of(&c);
        child.kill().await.unwrap();
        child = spawn_roomd(&data, port, &[]).await;
        // A fresh editor reads what the new process loaded before anything else reaches it,
        // or after: either way every acknowledged piece is there, since the client never
        // sends an acknowledged change again.
        let fresh = YClient::connect(&format!("{base}/v1/rooms/{ROOM}/yjs/doc"), 9).await;
        let text = fresh.text("t");
        for piece in &acknowledged {
            assert!(
                text.contains(piece.as_str()),
                "cycle {cycle}: acknowledged {piece} missing after kill -9"
            );
        }
        until_connected_again(&c, &session).await;
    }
    // Everything the client holds, the racing changes included, reaches the room.
    tokio::time::timeout(WAIT, doc.durable())
        .await
        .expect("not durable in time")
        .unwrap();
    let mine = doc
        .doc()
        .get_or_insert_text("t")
        .get_string(&doc.doc().transact());
    let fresh = YClient::connect(&format!("{base}/v1/rooms/{ROOM}/yjs/doc"), 10).await;
    assert_eq!(fresh.text("t"), mine);
    c.close().await;
    child.kill().await.unwrap();
}

/// Two clients edit while the server is down; when it is back, both reconnect, send what
/// they made, and converge with each other and with a stock editor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_made_offline_merge_on_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("ws://127.0.0.1:{port}");
    let mut child = spawn_roomd(&data, port, &[]).await;
    let a = client(&base, None).await;
    let b = client(&base, None).await;
    let da = a.open("shared.doc").await.unwrap();
    let db = b.open("shared.doc").await.unwrap();
    push(&da, "t", "online;");
    da.durable().await.unwrap();
    until_text(&db, "t", "online;").await;
    let (sa, sb) = (session_of(&a), session_of(&b));
    child.kill().await.unwrap();
    // Offline: a request fails at once; documents take edits.
    let mut status = a.status();
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, Status::Disconnected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        a.invoke(
            "sync",
            "describe",
            Content::Json(json!({"path": "shared.doc"}))
        )
        .await,
        Err(Error::Disconnected)
    );
    for i in 0..5 {
        push(&da, "t", &format!("a{i};"));
        push(&db, "t", &format!("b{i};"));
    }
    child = spawn_roomd(&data, port, &[]).await;
    until_connected_again(&a, &sa).await;
    until_connected_again(&b, &sb).await;
    tokio::time::timeout(WAIT, async {
        da.durable().await.unwrap();
        db.durable().await.unwrap();
    })
    .await
    .expect("offline edits not durable in time");
    // Each holds its own edits and, once the other's arrive, all of them.
    let full = "online;".len() + 10 * 3;
    let want = until_text_is(&da, "t", |t| t.len() == full).await;
    assert_eq!(until_text_is(&db, "t", |t| t.len() == full).await, want);
    for i in 0..5 {
        assert!(want.contains(&format!("a{i};")) && want.contains(&format!("b{i};")));
    }
    let fresh = YClient::connect(&format!("{base}/v1/rooms/{ROOM}/yjs/shared.doc"), 11).await;
    assert_eq!(fresh.text("t"), want);
    a.close().await;
    b.close().await;
    child.kill().await.unwrap();
}

/// One client holds 100 documents on its one socket; another sees each of them change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_documents_share_one_socket() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let a = client(&base, Some(agent(&key, "writer"))).await;
    let b = client(&base, Some(agent(&key, "reader"))).await;
    let mut mine = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..100 {
        mine.push(a.open(&format!("many/{i}.doc")).await.unwrap());
        theirs.push(b.open(&format!("many/{i}.doc")).await.unwrap());
    }
    for (i, d) in mine.iter().enumerate() {
        push(d, "t", &format!("document {i}"));
    }
    a.durable(&mine).await.unwrap();
    for (i, d) in theirs.iter().enumerate() {
        until_text(d, "t", &format!("document {i}")).await;
    }
    // The room counts one connection per client, whatever the documents.
    let admin = server.create_key("default").await;
    let (status, room) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}"),
            Some(admin.as_str()),
            None,
        )
        .await;
    assert_eq!(status, 200, "{room}");
    assert_eq!(room["session"]["connections"], 2, "{room}");
    a.close().await;
    b.close().await;
    server.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn closes(port: u16, code: u16) -> u64 {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (_, text) = roomd_tests::http_get(addr, "/metrics").await;
    let prefix = format!("roomd_closes_total{{code=\"{code}\",");
    text.lines()
        .filter(|l| l.starts_with(&prefix))
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A consumer that stops reading its socket is disconnected (4508) once its bounded outbox
/// fills, while the server's memory stays flat and the honest clients go on; a client that
/// does not read its change stream is told it lagged, and its document still syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_memory_stays_flat() {
    const OUTBOX: usize = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let base = format!("ws://127.0.0.1:{port}");
    let outbox = OUTBOX.to_string();
    let child = spawn_roomd(
        &data,
        port,
        &[
            "--outbox-bytes-max",
            &outbox,
            "--message-bytes-max",
            "1048576",
        ],
    )
    .await;
    let pid = child.id().unwrap();
    let writer = client(&base, None).await;
    let reader = client(&base, None).await;
    let wd = writer.open("flood.doc").await.unwrap();
    let rd = reader.open("flood.doc").await.unwrap();
    let unread = wd.changes(); // never read
    let blob = |round: usize, i: usize| format!("{round}.{i}:{}", "x".repeat(64 * 1024));
    // Each update replaces the last: the document stays small whatever the traffic.
    let flood = |round: usize| {
        let wd = wd.clone();
        async move {
            for i in 0..320 {
                let m = wd.doc().get_or_insert_map("m");
                m.insert(&mut wd.doc().transact_mut(), "blob", blob(round, i));
                if i % 16 == 15 {
                    wd.durable().await.unwrap();
                }
            }
            wd.durable().await.unwrap();
        }
    };
    flood(0).await;
    let settled = rss_kib(pid);
    // A consumer that opens the document and then never reads.
    let url = format!("{base}/rooms/{ROOM}");
    let mut slow = roomd_tests::RoomProtoClient::connect(&url, None).await;
    slow.open_doc("flood.doc", false).await;
    let mut round = 1;
    while closes(port, 4508).await == 0 {
        assert!(round < 8, "the slow consumer was never disconnected");
        flood(round).await;
        round += 1;
    }
    assert_eq!(slow.until_closed().await, 4508);
    let after = rss_kib(pid);
    eprintln!("resident memory: {settled} KiB before the slow consumer, {after} KiB after");
    // Unbounded buffering would hold every round's 20 MiB (as base64) for the slow consumer.
    assert!(
        after.saturating_sub(settled) < (OUTBOX as u64 / 1024) + 16 * 1024,
        "resident memory grew from {settled} KiB to {after} KiB"
    );
    // The writer's change stream, never read, holds at most its buffer.
    for i in 0..roomd_client::CHANGES_BUFFER + 100 {
        let m = wd.doc().get_or_insert_map("m");
        m.insert(&mut wd.doc().transact_mut(), "small", i as i64);
    }
    // The honest reader has the last value.
    let want = blob(round - 1, 319);
    let m = rd.doc().get_or_insert_map("m");
    tokio::time::timeout(WAIT, async {
        let mut changes = rd.changes();
        loop {
            let now = m
                .get(&rd.doc().transact(), "blob")
                .map(|v| v.to_string(&rd.doc().transact()));
            if now.as_deref() == Some(want.as_str()) {
                break;
            }
            let _ = changes.next().await;
        }
    })
    .await
    .expect("the honest reader did not converge");
    let mut unread = unread;
    assert!(matches!(unread.next().await, Some(Err(Error::Lagged(_)))));
    writer.close().await;
    reader.close().await;
    drop(child);
}

/// Presence, messages, a hosted toolkit with typed handlers, and developer logs, between
/// two Rust clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messaging_tools_and_logs_between_two_clients() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let a = client(&base, Some(agent(&key, "alice"))).await;
    let b = client(&base, Some(agent(&key, "bob"))).await;
    let (ida, idb) = (a.participant_id().unwrap(), b.participant_id().unwrap());

    // Presence: a enables first, then b; each sees the other.
    let mut ma = a.enable_messaging().await.unwrap();
    let mut mb = b.enable_messaging().await.unwrap();
    loop {
        if let MessagingEvent::Enabled { participants } = next(&mut mb).await {
            assert_eq!(participants.len(), 1);
            assert_eq!(participants[0].id, ida);
            assert_eq!(participants[0].name(), Some("alice"));
            break;
        }
    }
    loop {
        if let MessagingEvent::Joined(p) = next(&mut ma).await {
            assert_eq!(p.id, idb);
            break;
        }
    }
    assert_eq!(a.participants().len(), 1);
    b.send_message(&ida, "greeting", json!({"hi": 1}), Some(b"attached"))
        .await
        .unwrap();
    loop {
        if let MessagingEvent::Message {
            from,
            kind,
            message,
            attachment,
        } = next(&mut ma).await
        {
            assert_eq!((from.as_str(), kind.as_str()), (idb.as_str(), "greeting"));
            assert_eq!(message, json!({"hi": 1}));
            assert_eq!(&attachment[..], b"attached");
            break;
        }
    }
    let err = a
        .send_message("nobody", "x", json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound), "{err}");

    // Tools: b hosts a typed toolkit; a calls it.
    #[derive(serde::Deserialize)]
    struct Input {
        text: String,
    }
    let toolkit = Toolkit::new("words")
        .description("counting words")
        .tool(
            Tool::typed("count", |input: Input| async move {
                Ok::<_, ToolError>(json!({ "words": input.text.split_whitespace().count() }))
            })
            .description("counts the words of a text")
            .input_schema(json!({"type": "object", "properties": {"text": {"type": "string"}}})),
        )
        .tool(Tool::new("fail", |_call| async move {
            Err(ToolError::with_code(ErrorCode::Conflict, "always fails"))
        }));
    let toolkit = toolkit
        .tool(Tool::streaming("shout", |_call, mut stream| async move {
            while let Some(chunk) = stream.next_input().await {
                let Content::Text(t) = chunk else {
                    return Err(ToolError::with_code(ErrorCode::InvalidRequest, "text only"));
                };
                stream.send(Content::Text(t.to_uppercase())).await?;
            }
            Ok(())
        }))
        .tool(Tool::streaming("count_to", |call, stream| async move {
            let Content::Json(v) = call.arguments else {
                return Err(ToolError::new("json input"));
            };
            for i in 1..=v["n"].as_i64().unwrap_or(0) {
                stream.send(Content::Json(json!(i))).await?;
            }
            Ok(())
        }));
    let hosted = b.host(toolkit).await.unwrap();
    // Streamed both ways: each input chunk answered in capitals, then the close.
    let mut shout = a
        .invoke_stream(
            "words",
            "shout",
            Content::Control(roomd_client::Control::Open),
        )
        .await
        .unwrap();
    for w in ["one", "two"] {
        shout.send_input(Content::Text(w.into())).await.unwrap();
    }
    shout.close_input().await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, shout.next()).await.unwrap() {
        got.push(chunk.unwrap());
    }
    assert_eq!(
        got,
        [
            Content::Text("ONE".into()),
            Content::Text("TWO".into()),
            Content::Control(roomd_client::Control::Close {
                status_code: Some(1000),
                message: None
            })
        ]
    );
    // A plain input, a streamed answer.
    let mut counted = a
        .invoke_stream("words", "count_to", Content::Json(json!({"n": 3})))
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(WAIT, counted.next()).await.unwrap() {
        got.push(chunk.unwrap());
    }
    assert_eq!(&got[..3], [json!(1), json!(2), json!(3)].map(Content::Json));
    assert!(matches!(
        got[3],
        Content::Control(roomd_client::Control::Close { .. })
    ));
    // The stock Python SDK reads the toolkit's description, streamed tools included.
    let sdk = agent(&key, "sdk");
    let out = roomd_tests::run_python(
        "room_call.py",
        &[&base, ROOM, &sdk, "words", "count", r#"{"text": "a b c"}"#],
    )
    .await;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            r#"["count", "count_to", "fail", "shout"]"#,
            r#"{"words": 3}"#
        ]
    );
    // A plain call of a streamed tool is refused on the caller's side.
    let streamed = a
        .invoke("words", "count_to", Content::Json(json!({"n": 1})))
        .await
        .unwrap_err();
    assert!(matches!(streamed, Error::Protocol(_)), "{streamed}");
    let listed = a.list_toolkits().await.unwrap();
    assert_eq!(listed["words"]["participant_id"], json!(idb), "{listed}");
    let out: Value = a
        .call("words", "count", &json!({"text": "one two three"}))
        .await
        .unwrap();
    assert_eq!(out, json!({"words": 3}));
    let bad = a
        .call::<_, Value>("words", "count", &json!({"nope": 1}))
        .await;
    assert_eq!(bad.unwrap_err().code(), Some(ErrorCode::InvalidRequest));
    let on_b = a
        .invoke_on(
            &idb,
            "words",
            "count",
            Content::Json(json!({"text": "one two"})),
        )
        .await
        .unwrap();
    assert_eq!(on_b, Content::Json(json!({"words": 2})));
    let on_a = a
        .invoke_on(&ida, "words", "count", Content::Json(json!({"text": "x"})))
        .await
        .unwrap_err();
    assert_eq!(on_a.code(), Some(ErrorCode::NotFound), "{on_a}");
    let failed = a.invoke("words", "fail", Content::Empty).await.unwrap_err();
    assert_eq!(failed.code(), Some(ErrorCode::Conflict), "{failed}");
    let missing = a.invoke("words", "nope", Content::Empty).await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound), "{missing}");
    hosted.unregister().await.unwrap();
    let gone = loop {
        let r = a
            .call::<_, Value>("words", "count", &json!({"text": "x"}))
            .await;
        if let Err(e) = r {
            break e;
        }
    };
    assert_eq!(gone.code(), Some(ErrorCode::NotFound), "{gone}");

    // Developer logs: what b writes reaches a's stream.
    let mut logs = a.logs().await.unwrap();
    b.log("progress", json!({"step": 1})).await.unwrap();
    b.info("done", json!({})).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 2 {
        let entry = tokio::time::timeout(WAIT, logs.next())
            .await
            .expect("no log entry in time")
            .unwrap()
            .unwrap();
        if entry.kind == "progress" {
            assert_eq!(entry.data, json!({"step": 1}));
            kinds.push(entry.kind);
        } else if entry.kind == "info" {
            assert_eq!(entry.data["message"], "done");
            kinds.push(entry.kind);
        }
    }
    // b leaves: a is told.
    b.close().await;
    loop {
        if let MessagingEvent::Left { id } = next(&mut ma).await {
            assert_eq!(id, idb);
            break;
        }
    }
    a.close().await;
    server.stop().await;
}

/// Refusals before the upgrade are typed errors: 401 for a token that authenticates no one,
/// 403 (permanent) for a token of another room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_typed_errors() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let bad = RoomClient::connect(Config::new(&base, ROOM, Some("not-a-token".into())))
        .await
        .unwrap_err();
    assert!(matches!(bad, Error::Refused { status: 401, .. }), "{bad}");
    assert!(!bad.is_permanent());
    let other = roomd_tests::agent_token(&key, "x", "elsewhere", ApiScope::agent_default());
    let wrong = RoomClient::connect(Config::new(&base, ROOM, Some(other)))
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, Error::Refused { status: 403, .. }),
        "{wrong}"
    );
    assert!(wrong.is_permanent());
    server.stop().await;
}

/// The `word-count` block an example agent keeps in `<path>.stats`: its `text`.
fn word_count(doc: &Document) -> Option<String> {
    use yrs::types::xml::XmlOut;
    use yrs::{ReadTxn, Xml, XmlFragment};
    let txn = doc.doc().transact();
    let xml = txn.get_xml_fragment("xml")?;
    let found = xml.children(&txn).find_map(|n| match n {
        XmlOut::Element(e)
            if e.get_attribute(&txn, "kind")
                .map(|v| v.to_string(&txn))
                .as_deref()
                == Some("word-count") =>
        {
            e.get_attribute(&txn, "text").map(|v| v.to_string(&txn))
        }
        _ => None,
    });
    found
}

async fn until_word_count(doc: &Document, want: &str) {
    let mut changes = doc.changes();
    tokio::time::timeout(WAIT, async {
        while word_count(doc).as_deref() != Some(want) {
            changes.next().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no word count {want:?} in time: {:?}", word_count(doc)));
}

/// The example agents, in Rust (`clients/rust/examples/agent.rs`) and with the stock Python
/// SDK (`examples/word_count_agent.py`), each follow a document a stock editor edits, keep its
/// word count in a derived document and answer calls of their `words` toolkit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agents_keep_word_counts_and_answer_calls() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    for (room, mut command) in [
        (
            "rust-agent",
            tokio::process::Command::new(roomd_tests::example_agent_bin()),
        ),
        ("python-agent", {
            let mut c = tokio::process::Command::new(roomd_tests::sdk_python());
            c.arg(roomd_tests::repo_root().join("examples/word_count_agent.py"));
            c
        }),
    ] {
        let token = roomd_tests::agent_token(&key, "counter", room, ApiScope::agent_default());
        let mut agent = command
            .arg("notes/plan.doc")
            .env("MESHAGENT_ROOM_URL", &base)
            .env("MESHAGENT_ROOM", room)
            .env("MESHAGENT_TOKEN", &token)
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut config = Config::new(&base, room, None);
        config.token = Some(roomd_tests::agent_token(
            &key,
            "caller",
            room,
            ApiScope::agent_default(),
        ));
        let caller = RoomClient::connect(config).await.unwrap();
        let stats = caller.open("notes/plan.doc.stats").await.unwrap();
        until_word_count(&stats, "0 words in 0 blocks").await;

        let editor_token = roomd_tests::agent_token(&key, "editor", room, ApiScope::user_default());
        let mut editor =
            YClient::connect_authorized(&server.doc_url(room, "notes/plan.doc"), &editor_token, 21)
                .await;
        for (id, text) in [("p1", "one two three"), ("p2", "four five")] {
            editor.push_paragraph(id, text).await;
        }
        until_word_count(&stats, "5 words in 2 blocks").await;

        let counted: Value = caller
            .call("words", "count", &json!({"text": "a b c d"}))
            .await
            .unwrap();
        assert_eq!(counted["words"], 4, "{room}: {counted}");
        let figures: Value = caller.call("words", "stats", &json!({})).await.unwrap();
        assert_eq!(figures["words"], 5, "{room}: {figures}");
        assert_eq!(figures["blocks"], 2, "{room}: {figures}");
        // A stock SDK client lists the toolkit, whichever client hosts it, and calls it.
        let sdk = roomd_tests::agent_token(&key, "sdk-caller", room, ApiScope::agent_default());
        let out = roomd_tests::run_python(
            "room_call.py",
            &[&base, room, &sdk, "words", "count", r#"{"text": "x y"}"#],
        )
        .await;
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(r#"["count", "stats"]"#), "{room}: {out}");
        let answer: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(answer["words"], 2, "{room}: {out}");
        caller.close().await;
        agent.kill().await.unwrap();
    }
    server.stop().await;
}

/// A change over the update limit is not sent (the server would close the connection for it,
/// and again on every reconnect): the document's readers are told, its durability settles, and
/// the connection goes on serving the client's other documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_over_the_update_limit_stays_local() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let mut config = Config::new(&base, ROOM, Some(agent(&key, "big")));
    config.update_bytes_max = 64 * 1024;
    let a = RoomClient::connect(config).await.unwrap();
    let b = client(&base, Some(agent(&key, "peer"))).await;
    let big = a.open("big.doc").await.unwrap();
    let mut changes = big.changes();
    push(&big, "t", &"x".repeat(100 * 1024));
    loop {
        match next_event(&mut changes).await {
            DocEvent::Refused { message } => {
                assert!(message.contains("update limit"), "{message}");
                break;
            }
            DocEvent::Changed(c) => assert_eq!(c.author, Author::Local),
            other => panic!("{other:?}"),
        }
    }
    tokio::time::timeout(WAIT, big.durable())
        .await
        .expect("durability did not settle")
        .unwrap();
    let other = a.open("small.doc").await.unwrap();
    push(&other, "t", "still connected");
    other.durable().await.unwrap();
    let seen = b.open("small.doc").await.unwrap();
    until_text(&seen, "t", "still connected").await;
    let untouched = b.open("big.doc").await.unwrap();
    assert_eq!(
        untouched
            .doc()
            .get_or_insert_text("t")
            .get_string(&untouched.doc().transact()),
        ""
    );
    a.close().await;
    b.close().await;
    server.stop().await;
}

/// Dropping the client and every handle it gave out ends its connection: the others see it
/// leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_ends_the_connection() {
    let (server, key) = secured().await;
    let base = format!("ws://{}", server.addr());
    let a = client(&base, Some(agent(&key, "stays"))).await;
    let mut ma = a.enable_messaging().await.unwrap();
    let b = client(&base, Some(agent(&key, "goes"))).await;
    let idb = b.participant_id().unwrap();
    let doc = b.open("kept.doc").await.unwrap();
    b.enable_messaging().await.unwrap();
    loop {
        if let MessagingEvent::Joined(p) = next(&mut ma).await {
            assert_eq!(p.id, idb);
            break;
        }
    }
    // The document alone keeps the connection.
    drop(b);
    push(&doc, "t", "still synced");
    doc.durable().await.unwrap();
    drop(doc);
    loop {
        if let MessagingEvent::Left { id } = next(&mut ma).await {
            assert_eq!(id, idb);
            break;
        }
    }
    a.close().await;
    server.stop().await;
}

/// A TCP proxy to `upstream` whose connections open before each `freeze` increment stop
/// carrying bytes without closing: a network that drops everything.
async fn freezing_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freeze, epochs) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut epochs = epochs.clone();
            let epoch = *epochs.borrow();
            tokio::spawn(async move {
                let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let frozen = tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    r = epochs.wait_for(|e| *e > epoch) => r.is_ok(),
                };
                if frozen {
                    // Both sockets stay open and carry nothing.
                    std::future::pending::<()>().await;
                }
            });
        }
    });
    (addr, freeze)
}

/// A connection on which the server falls silent (no frame, not even its pings) is taken for
/// lost after the silence timeout and made again; the document syncs over the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_taken_for_lost_and_made_again() {
    let server = TestServer::start_with(|c| {
        c.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let (addr, freeze) = freezing_proxy(server.addr()).await;
    let mut config = Config::new(format!("ws://{addr}"), ROOM, None);
    config.silence_timeout = Duration::from_secs(1);
    config.backoff_initial = Duration::from_millis(20);
    let c = RoomClient::connect(config).await.unwrap();
    let doc = c.open("quiet.doc").await.unwrap();
    let mut status = c.status();
    freeze.send_replace(1);
    let lost = tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, Status::Disconnected { .. })),
    )
    .await
    .expect("the silence was not noticed")
    .unwrap()
    .clone();
    assert!(
        matches!(&lost, Status::Disconnected { error } if error.contains("nothing from the server")),
        "{lost:?}"
    );
    tokio::time::timeout(WAIT, c.connected())
        .await
        .expect("not connected again")
        .unwrap();
    push(&doc, "t", "after the silence");
    tokio::time::timeout(WAIT, doc.durable())
        .await
        .expect("not durable over the new connection")
        .unwrap();
    let fresh = YClient::connect(&server.doc_url(ROOM, "quiet.doc"), 51).await;
    assert_eq!(fresh.text("t"), "after the silence");
    c.close().await;
    server.stop().await;
}

/// A streamed call this client hosts ends with the connection it came on: its handler reads
/// the end of its input instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hosted_streamed_call_ends_with_its_connection() {
    let server = TestServer::start_with(|c| {
        c.keepalive_interval = Duration::from_millis(100);
    })
    .await;
    let (addr, freeze) = freezing_proxy(server.addr()).await;
    let mut config = Config::new(format!("ws://{addr}"), ROOM, None);
    config.silence_timeout = Duration::from_secs(1);
    let host = RoomClient::connect(config).await.unwrap();
    let (first_tx, first) = tokio::sync::oneshot::channel();
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let slots = std::sync::Mutex::new(Some((first_tx, ended_tx)));
    let listen = Tool::streaming("listen", move |_call, mut stream| {
        let (first_tx, ended_tx) = slots.lock().unwrap().take().unwrap();
        async move {
            let got = stream.next_input().await;
            let _ = first_tx.send(got);
            let _ = ended_tx.send(stream.next_input().await);
            Ok(())
        }
    });
    let _hosted = host.host(Toolkit::new("ears").tool(listen)).await.unwrap();
    let caller = client(&format!("ws://{}", server.addr()), None).await;
    let call = caller
        .invoke_stream(
            "ears",
            "listen",
            Content::Control(roomd_client::Control::Open),
        )
        .await
        .unwrap();
    call.send_input(Content::Text("hello".into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, first).await.unwrap().unwrap();
    assert_eq!(got, Some(Content::Text("hello".into())));
    // The host's connection goes silent and is taken for lost: the call's input ends.
    freeze.send_replace(1);
    let after = tokio::time::timeout(WAIT, ended)
        .await
        .expect("the handler still waits for input of a lost call")
        .unwrap();
    assert_eq!(after, None);
    drop(call);
    caller.close().await;
    host.close().await;
    server.stop().await;
}
