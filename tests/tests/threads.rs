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

    // y-websocket: each refused with permission-denied and the rule.
    let mut b = YClient::connect_authorized(&url, &bob, 2).await;
    for (update, rule) in [
        (
            &forged,
            "author_name of a message must name its author, bob",
        ),
        (&changed, "only its author changes a message"),
        (&deleted, "only its author deletes a message"),
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
    assert_eq!(refusals.len(), 5, "{body}");
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
