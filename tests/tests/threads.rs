//! Threads: a message names the participant who posts it, and only its author changes it,
//! whichever way an update arrives (y-websocket, the room protocol, REST); a refused update
//! leaves the document unchanged and is an event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_room_apis::{ApiKey, ApiScope};
use roomd_tests::{RoomProtoClient, TestServer, YClient};
use yrs::updates::decoder::Decode;
use yrs::{
    Doc, ReadTxn, StateVector, Transact, Update, Xml, XmlElementPrelim, XmlElementRef, XmlFragment,
    XmlOut,
};

const ROOM: &str = "team";
const THREAD: &str = "chats/general.thread";

async fn secured() -> (TestServer, ApiKey) {
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

fn token(key: &ApiKey, name: &str) -> String {
    roomd_tests::agent_token(key, name, ROOM, ApiScope::agent_default())
}

/// An update made on a copy of `state` by Yjs client `client`: `edit` gets the thread's
/// `messages` list.
fn edit_of(
    state: &[u8],
    client: u64,
    edit: impl FnOnce(&mut yrs::TransactionMut, XmlElementRef),
) -> Vec<u8> {
    let copy = Doc::with_client_id(client);
    let xml = copy.get_or_insert_xml_fragment("xml");
    copy.transact_mut()
        .apply_update(Update::decode_v1(state).unwrap())
        .unwrap();
    let mut txn = copy.transact_mut();
    let messages = match xml.get(&txn, 1) {
        Some(XmlOut::Element(e)) => e,
        other => panic!("no messages list: {other:?}"),
    };
    edit(&mut txn, messages);
    txn.encode_update_v1()
}

fn post(txn: &mut yrs::TransactionMut, messages: &XmlElementRef, author: &str, text: &str) {
    let m = messages.push_back(txn, XmlElementPrelim::empty("message"));
    m.insert_attribute(txn, "$id", format!("id-{text}"));
    m.insert_attribute(txn, "text", text);
    m.insert_attribute(txn, "author_name", author);
}

fn first_message(txn: &yrs::TransactionMut, messages: &XmlElementRef) -> XmlElementRef {
    match messages.get(txn, 0) {
        Some(XmlOut::Element(e)) => e,
        other => panic!("no message: {other:?}"),
    }
}

/// The thread's messages as (author, text), as a replica holds them.
fn messages_of(doc: &Doc) -> Vec<(String, String)> {
    let xml = doc.get_or_insert_xml_fragment("xml");
    let txn = doc.transact();
    let Some(XmlOut::Element(list)) = xml.get(&txn, 1) else {
        return Vec::new();
    };
    list.children(&txn)
        .filter_map(|n| n.into_xml_element())
        .map(|m| {
            let attr = |k: &str| {
                m.get_attribute(&txn, k)
                    .map(|v| v.to_string(&txn))
                    .unwrap_or_default()
            };
            (attr("author_name"), attr("text"))
        })
        .collect()
}

fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_authorship_and_edits_of_anothers_message_are_refused_on_every_path() {
    let (server, key) = secured().await;
    let (alice, bob) = (token(&key, "alice"), token(&key, "bob"));
    let url = server.doc_url(ROOM, THREAD);

    // Alice starts the thread from a stock y-websocket client and posts in it.
    let mut a = YClient::connect_authorized(&url, &alice, 1).await;
    let update = {
        let xml = a.doc.get_or_insert_xml_fragment("xml");
        let mut txn = a.doc.transact_mut();
        xml.push_back(&mut txn, XmlElementPrelim::empty("members"));
        let messages = xml.push_back(&mut txn, XmlElementPrelim::empty("messages"));
        post(&mut txn, &messages, "alice", "hello");
        txn.encode_update_v1()
    };
    a.send_raw(sync_update(&update)).await;
    a.round_trip().await;
    assert!(a.denied.is_empty(), "{:?}", a.denied);
    let base = state(&a.doc);
    let forged = edit_of(&base, 20, |txn, m| post(txn, &m, "alice", "forged"));
    let changed = edit_of(&base, 21, |txn, m| {
        first_message(txn, &m).insert_attribute(txn, "text", "changed by bob");
    });
    let deleted = edit_of(&base, 22, |txn, m| m.remove_range(txn, 0, 1));
    let unschemed = edit_of(&base, 23, |txn, m| {
        m.push_back(txn, XmlElementPrelim::empty("paragraph"));
    });

    // y-websocket: each refused with permission-denied and the rule.
    let mut b = YClient::connect_authorized(&url, &bob, 2).await;
    for (update, rule) in [
        (
            &forged,
            "author_name of a message must name its author, bob",
        ),
        (&changed, "only its author changes a message"),
        (&deleted, "only its author deletes a message"),
        (&unschemed, "messages may not hold a paragraph"),
    ] {
        b.denied.clear();
        b.send_raw(sync_update(update)).await;
        let reason = b.until_permission_denied().await;
        assert_eq!(reason, format!("permission-denied: {rule}"));
    }

    // The room protocol: an error chunk on the document's stream.
    let room_url = format!("ws://{}/rooms/{ROOM}", server.addr());
    let mut p = RoomProtoClient::connect(&room_url, Some(&bob)).await;
    let (call, _) = p.open_doc(THREAD, false).await;
    p.sync(&call, &changed).await;
    let (chunk, _) = p.next_chunk(&call).await;
    assert_eq!(chunk["type"], "error", "{chunk}");
    assert_eq!(
        chunk["text"],
        "update refused: permission-denied: only its author changes a message"
    );

    // REST: 403 with the rule.
    let path = format!("/v1/rooms/{ROOM}/docs/{THREAD}/update");
    let (status, body) = server.http("POST", &path, Some(&bob), &forged).await;
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("must name its author, bob"));

    // Nothing of it reached the document; alice's view is what she wrote.
    let (status, body) = roomd_tests::http_request(
        server.addr(),
        "GET",
        &format!("/v1/rooms/{ROOM}/docs/{THREAD}"),
        Some(&alice),
        &[("accept", "application/octet-stream")],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    let stored = Doc::with_client_id(99);
    stored
        .transact_mut()
        .apply_update(Update::decode_v1(&body).unwrap())
        .unwrap();
    let only_hello = vec![("alice".to_string(), "hello".to_string())];
    assert_eq!(messages_of(&stored), only_hello);
    a.round_trip().await;
    assert_eq!(messages_of(&a.doc), only_hello);

    // What bob may do goes through every path: a post of his own, over REST.
    let his = edit_of(&base, 23, |txn, m| post(txn, &m, "bob", "mine"));
    let (status, _) = server.http("POST", &path, Some(&bob), &his).await;
    assert_eq!(status, 200);
    a.until(|c| messages_of(&c.doc).len() == 2).await;
    assert_eq!(
        messages_of(&a.doc)[1],
        ("bob".to_string(), "mine".to_string())
    );

    // Each refusal is an event naming the rule and who sent it.
    let (status, body) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/events?limit=256"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let refusals: Vec<&serde_json::Value> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "update.refused")
        .collect();
    assert_eq!(refusals.len(), 6, "{body}");
    for e in &refusals {
        assert_eq!(e["participant"]["name"], "bob", "{e}");
        assert_eq!(e["body"]["document"], THREAD, "{e}");
        assert!(e["body"]["rule"].as_str().is_some(), "{e}");
    }
    server.stop().await;
}

fn sync_update(update: &[u8]) -> Vec<u8> {
    roomd_sync::Message::Sync(roomd_sync::SyncMessage::Update(update)).to_vec()
}

/// Calls a `threads` tool over the room protocol; answers its JSON, or the error as
/// `{"error": code, "text": …}`.
async fn tool(c: &mut RoomProtoClient, name: &str, args: serde_json::Value) -> serde_json::Value {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = format!(
        "call-{}",
        CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let args = serde_json::json!({"type": "json", "json": args});
    let answer = c.invoke("threads", name, &call, args).await;
    match answer["type"].as_str() {
        Some("json") => answer["json"].clone(),
        Some("error") => serde_json::json!({"error": answer["code"], "text": answer["text"]}),
        _ => panic!("threads.{name}: {answer:?}"),
    }
}

/// The (author, text) of each message of a `read` page.
fn page_of(answer: &serde_json::Value) -> Vec<(String, String)> {
    answer["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|m| {
            let m = &m["message"];
            (
                m["author_name"].as_str().unwrap_or_default().to_string(),
                m["text"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_threads_toolkit_and_rest_keep_authorship_and_editors_see_it_live() {
    let (server, key) = secured().await;
    let (alice, bob) = (token(&key, "alice"), token(&key, "bob"));
    let room_url = format!("ws://{}/rooms/{ROOM}", server.addr());
    let mut a = RoomProtoClient::connect(&room_url, Some(&alice)).await;
    let mut b = RoomProtoClient::connect(&room_url, Some(&bob)).await;

    let made = tool(&mut a, "create", serde_json::json!({"path": THREAD})).await;
    assert_eq!(made, serde_json::json!({"path": THREAD}));
    let again = tool(&mut b, "create", serde_json::json!({"path": THREAD})).await;
    assert_eq!(again["error"], 1004, "{again}");
    // A stock y-websocket editor watches the thread, and another the directory's index.
    let mut editor = YClient::connect_authorized(&server.doc_url(ROOM, THREAD), &alice, 9).await;
    let index = ".threads/chats/index.thread_list";
    let mut lister = YClient::connect_authorized(&server.doc_url(ROOM, index), &alice, 10).await;
    let listed = tool(&mut b, "list", serde_json::json!({"directory": "chats"})).await;
    let entries = listed["threads"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{listed}");
    assert_eq!(entries[0]["path"], THREAD);
    assert_eq!(entries[0]["name"], "general");
    assert!(entries[0]["created_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    let posted = tool(
        &mut a,
        "post",
        serde_json::json!({"path": THREAD, "text": "hello"}),
    )
    .await;
    let hello = posted["id"].as_str().unwrap().to_string();
    editor.until(|c| messages_of(&c.doc).len() == 1).await;
    assert_eq!(
        messages_of(&editor.doc),
        [("alice".to_string(), "hello".to_string())]
    );
    // Over REST, bob posts as himself, whatever the arguments say.
    let (status, reply) = server
        .json(
            "POST",
            &format!("/v1/rooms/{ROOM}/threads/post"),
            Some(&bob),
            Some(serde_json::json!({"path": THREAD, "text": "hi", "author_name": "alice"})),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    editor.until(|c| messages_of(&c.doc).len() == 2).await;
    let read = tool(&mut b, "read", serde_json::json!({"path": THREAD})).await;
    assert_eq!(
        page_of(&read),
        [
            ("alice".into(), "hello".into()),
            ("bob".into(), "hi".into())
        ]
    );
    assert_eq!(read["total"], 2);
    let second = tool(
        &mut b,
        "read",
        serde_json::json!({"path": THREAD, "offset": 1, "limit": 1}),
    )
    .await;
    assert_eq!(page_of(&second), [("bob".into(), "hi".into())]);

    // Only the author edits or deletes, over the toolkit and REST alike.
    let edit = serde_json::json!({"path": THREAD, "id": hello, "text": "hijacked"});
    let refused = tool(&mut b, "edit", edit.clone()).await;
    assert_eq!(refused["error"], 1001, "{refused}");
    assert_eq!(refused["text"], "only its author changes a message");
    let (status, _) = server
        .json(
            "POST",
            &format!("/v1/rooms/{ROOM}/threads/delete"),
            Some(&bob),
            Some(serde_json::json!({"path": THREAD, "id": hello})),
        )
        .await;
    assert_eq!(status, 403);
    let mine = serde_json::json!({"path": THREAD, "id": hello, "text": "hello, all"});
    assert_eq!(
        tool(&mut a, "edit", mine).await,
        serde_json::json!({"id": hello})
    );
    editor
        .until(|c| {
            messages_of(&c.doc)
                .first()
                .is_some_and(|m| m.1 == "hello, all")
        })
        .await;
    // An admin (the project's key) deletes any message.
    let (status, body) = server
        .json(
            "POST",
            &format!("/v1/rooms/{ROOM}/threads/delete"),
            Some(&key.to_string()),
            Some(serde_json::json!({"path": THREAD, "id": hello})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    editor.until(|c| messages_of(&c.doc).len() == 1).await;
    assert_eq!(
        messages_of(&editor.doc),
        [("bob".to_string(), "hi".to_string())]
    );

    // The index shows the thread to a stock editor, modified since it was created.
    lister
        .until(|c| {
            let xml = c.doc.get_or_insert_xml_fragment("xml");
            let txn = c.doc.transact();
            xml.children(&txn)
                .filter_map(|n| n.into_xml_element())
                .any(|e| {
                    let attr = |k: &str| e.get_attribute(&txn, k).map(|v| v.to_string(&txn));
                    attr("path").as_deref() == Some(THREAD)
                        && attr("modified_at") != attr("created_at")
                })
        })
        .await;
    // Clients only read the index.
    let forged = {
        let xml = lister.doc.get_or_insert_xml_fragment("xml");
        let mut txn = lister.doc.transact_mut();
        xml.push_back(&mut txn, XmlElementPrelim::empty("thread"));
        txn.encode_update_v1()
    };
    lister.send_raw(sync_update(&forged)).await;
    lister.until_permission_denied().await;

    // What is not a thread, or not granted, is refused.
    let bad = tool(
        &mut a,
        "post",
        serde_json::json!({"path": "notes.doc", "text": "x"}),
    )
    .await;
    assert_eq!(bad["error"], 1002, "{bad}");
    let missing = tool(
        &mut a,
        "post",
        serde_json::json!({"path": "chats/none.thread", "text": "x"}),
    )
    .await;
    assert_eq!(missing["error"], 1003, "{missing}");
    server.stop().await;
}

async fn rust_client(base: &str, token: &str) -> roomd_client::RoomClient {
    let mut config = roomd_client::Config::new(base, ROOM, Some(token.to_string()));
    config.backoff_initial = std::time::Duration::from_millis(20);
    config.backoff_max = std::time::Duration::from_millis(200);
    tokio::time::timeout(roomd_tests::WAIT, roomd_client::RoomClient::connect(config))
        .await
        .expect("connecting timed out")
        .expect("connecting")
}

async fn next_message(stream: &mut roomd_client::NewMessages) -> roomd_client::Message {
    tokio::time::timeout(roomd_tests::WAIT, stream.next())
        .await
        .expect("no new message in time")
        .expect("the stream ended")
        .expect("the stream lagged")
}

async fn until_session_changes(c: &roomd_client::RoomClient, before: &str) {
    let mut status = c.status();
    tokio::time::timeout(roomd_tests::WAIT, async {
        loop {
            if let roomd_client::Status::Connected { session_id, .. } = &*status.borrow_and_update()
            {
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

fn session_of(c: &roomd_client::RoomClient) -> String {
    match &*c.status().borrow() {
        roomd_client::Status::Connected { session_id, .. } => session_id.clone(),
        other => panic!("not connected: {other:?}"),
    }
}

/// The Rust client's thread methods and its stream of new messages; a message posted offline
/// is merged once the server is back (after `kill -9`), and a forged one made offline is
/// refused then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_follows_a_thread_and_posts_to_it_offline() {
    let mut server = roomd_tests::KillableServer::start().await;
    let (base, key) = (server.base(), server.key.clone());
    let a = rust_client(&base, &token(&key, "alice")).await;
    let b = rust_client(&base, &token(&key, "bob")).await;
    assert_eq!(a.name(), "alice");

    a.create_thread(THREAD).await.unwrap();
    let ta = a.open_thread(THREAD).await.unwrap();
    let tb = b.open_thread(THREAD).await.unwrap();
    let mut seen_by_b = tb.new_messages().unwrap();
    let posted = a.post_message(THREAD, "hello").await.unwrap();
    let m = next_message(&mut seen_by_b).await;
    assert_eq!(
        (m.id.as_str(), m.author_name.as_str(), m.text.as_str()),
        (posted.id.as_str(), "alice", "hello")
    );
    let refused = b
        .edit_message(THREAD, &posted.id, "mine now")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(roomd_client::ErrorCode::PermissionDenied),
        "{refused:?}"
    );
    let listed = b.list_threads("chats").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, THREAD);

    // The server goes away; alice posts in her copy, bob forges a post as alice in his.
    let (sa, sb) = (session_of(&a), session_of(&b));
    server.kill().await;
    let mut status = a.status();
    tokio::time::timeout(
        roomd_tests::WAIT,
        status.wait_for(|s| matches!(s, roomd_client::Status::Disconnected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    let offline = ta.post("written offline").unwrap();
    let mut b_changes = tb.document().changes();
    {
        let xml = tb.document().doc().get_or_insert_xml_fragment("xml");
        let mut txn = tb.document().doc().transact_mut();
        let Some(XmlOut::Element(list)) = xml.get(&txn, 1) else {
            panic!("no messages list")
        };
        post(&mut txn, &list, "alice", "forged offline");
    }
    server.restart().await;
    until_session_changes(&a, &sa).await;
    until_session_changes(&b, &sb).await;
    tokio::time::timeout(roomd_tests::WAIT, ta.document().durable())
        .await
        .expect("the offline post was not durable in time")
        .unwrap();
    // Bob's forgery is refused when it arrives.
    let refusal = tokio::time::timeout(roomd_tests::WAIT, async {
        loop {
            if let Some(Ok(roomd_client::DocEvent::Refused { message })) = b_changes.next().await {
                return message;
            }
        }
    })
    .await
    .expect("no refusal in time");
    assert!(refusal.contains("must name its author, bob"), "{refusal}");
    // Alice's reaches bob once, and the room holds hers and not the forgery (which stays in
    // bob's copy alone: his stream showed it when he wrote it).
    let mut seen_by_a = ta.new_messages().unwrap();
    a.post_message(THREAD, "after").await.unwrap();
    assert_eq!(next_message(&mut seen_by_b).await.text, "forged offline");
    let arrived = next_message(&mut seen_by_b).await;
    assert_eq!(
        (arrived.id.as_str(), arrived.text.as_str()),
        (offline.as_str(), "written offline")
    );
    assert_eq!(next_message(&mut seen_by_b).await.text, "after");
    assert_eq!(next_message(&mut seen_by_a).await.text, "after");
    let page = a.read_messages(THREAD, 0, 10).await.unwrap();
    let texts: Vec<(&str, &str)> = page
        .messages
        .iter()
        .map(|m| (m.author_name.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts,
        [
            ("alice", "hello"),
            ("alice", "written offline"),
            ("alice", "after")
        ]
    );
    a.close().await;
    b.close().await;
    server.kill().await;
}

/// A stock y-websocket editor (the real `yjs` and `y-websocket`) on a thread: a message posted
/// over REST shows live, its own message reaches the room, its edit of another's is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_editor_follows_a_thread_and_its_forgery_is_refused() {
    let (server, key) = secured().await;
    let rest = format!("http://{}/v1/rooms/{ROOM}", server.addr());
    roomd_tests::run_node(
        "thread.mjs",
        &[
            &server.yjs_base(ROOM),
            &rest,
            &token(&key, "alice"),
            &token(&key, "bob"),
        ],
    )
    .await;
    server.stop().await;
}
