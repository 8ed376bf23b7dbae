//! The y-websocket protocol against the real server, with a client built on yrs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_sync::{awareness, Message, SyncMessage};
use roomd_tests::{eventually, http_get, TestServer, YClient};

#[tokio::test]
async fn health_and_readiness_answer() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(server.get("/readyz").await, (200, "ready\n".into()));
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("roomd_connections_open 0"), "{body}");
    let (status, body) = server.get("/nope").await;
    assert_eq!(status, 404);
    assert!(body.contains(r#""code":"not_found""#), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn edits_reach_the_other_clients_and_late_joiners() {
    let server = TestServer::start().await;
    let url = server.doc_url("r1", "notes/today");
    let mut a = YClient::connect(&url, 1).await;
    let mut b = YClient::connect(&url, 2).await;
    a.insert("t", 0, "hello").await;
    b.until_text("t", "hello").await;
    b.insert("t", 5, " world").await;
    a.until_text("t", "hello world").await;
    let late = YClient::connect(&url, 3).await;
    assert_eq!(late.text("t"), "hello world");
    server.stop().await;
}

#[tokio::test]
async fn documents_and_rooms_are_isolated() {
    let server = TestServer::start().await;
    let names = [("r1", "a"), ("r1", "a/b"), ("r2", "a"), ("r1", "b")];
    for (i, (room, doc)) in names.iter().enumerate() {
        let mut c = YClient::connect(&server.doc_url(room, doc), 10 + i as u32).await;
        c.insert("t", 0, &format!("{room}:{doc}")).await;
        // A second client seeing it proves the server applied it.
        let mut w = YClient::connect(&server.doc_url(room, doc), 20 + i as u32).await;
        w.until_text("t", &format!("{room}:{doc}")).await;
    }
    for (room, doc) in names {
        let c = YClient::connect(&server.doc_url(room, doc), 99).await;
        assert_eq!(c.text("t"), format!("{room}:{doc}"));
    }
    server.stop().await;
}

#[tokio::test]
async fn awareness_is_relayed_sent_to_newcomers_and_removed_on_close() {
    let server = TestServer::start().await;
    let url = server.doc_url("r", "d");
    let mut a = YClient::connect(&url, 1).await;
    let mut b = YClient::connect(&url, 2).await;
    let mut state = Vec::new();
    awareness::encode(
        [awareness::Entry {
            client_id: 1,
            clock: 1,
            state_json: r#"{"user":"a"}"#,
        }]
        .into_iter(),
        &mut state,
    );
    a.send(Message::Awareness(&state)).await;
    let has = |c: &YClient, json: &str| {
        c.awareness.iter().any(|u| {
            awareness::parse(u)
                .unwrap()
                .iter()
                .any(|e| e.client_id == 1 && e.state_json == json)
        })
    };
    b.until(|c| has(c, r#"{"user":"a"}"#)).await;
    // A newcomer gets the known states right after step 1.
    let mut c = YClient::connect(&url, 3).await;
    c.until(|c| has(c, r#"{"user":"a"}"#)).await;
    // Query-awareness is answered.
    b.awareness.clear();
    b.send(Message::QueryAwareness).await;
    b.until(|c| has(c, r#"{"user":"a"}"#)).await;
    a.close().await;
    b.until(|c| has(c, "null")).await;
    c.until(|c| has(c, "null")).await;
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_graceful_restart_and_room_unload() {
    let mut server =
        TestServer::start_with(|c| c.room_idle_timeout = std::time::Duration::from_millis(50))
            .await;
    let url = server.doc_url("r", "d");
    let mut a = YClient::connect(&url, 1).await;
    a.insert("t", 0, "persisted").await;
    let mut b = YClient::connect(&url, 2).await;
    b.until_text("t", "persisted").await;
    a.close().await;
    b.close().await;
    server.restart().await;
    let c = YClient::connect(&server.doc_url("r", "d"), 3).await;
    assert_eq!(c.text("t"), "persisted");
    server.stop().await;
}

#[tokio::test]
async fn a_document_larger_than_one_message_survives_a_restart() {
    // Each insert is a small message; the document grows past the message limit, and its
    // snapshot, one update, is then larger than any message a client may send.
    let mut server = TestServer::start_with(|c| {
        c.limits.message_bytes_max = 4 * 1024;
        c.compact_log_bytes = 2 * 1024;
    })
    .await;
    let url = server.doc_url("r", "big");
    let mut a = YClient::connect(&url, 1).await;
    let piece = "0123456789".repeat(100);
    let mut want = String::new();
    for _ in 0..12 {
        a.insert("t", want.len() as u32, &piece).await;
        want.push_str(&piece);
    }
    let mut b = YClient::connect(&url, 2).await;
    b.until_text("t", &want).await;
    a.close().await;
    b.close().await;
    server.restart().await;
    let c = YClient::connect(&server.doc_url("r", "big"), 3).await;
    assert_eq!(c.text("t").len(), want.len());
    assert_eq!(c.text("t"), want);
    server.stop().await;
}

#[tokio::test]
async fn the_server_speaks_first_with_step1_in_its_own_frame() {
    let server = TestServer::start().await;
    let mut ws = roomd_tests::connect(&server.doc_url("r", "d")).await;
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_data();
    let msgs = roomd_sync::decode_frame(
        &first,
        roomd_sync::MessageLimits {
            payload_bytes_max: 1 << 20,
        },
    )
    .unwrap();
    assert!(
        matches!(msgs.as_slice(), [Message::Sync(SyncMessage::Step1(_))]),
        "{msgs:?}"
    );
    let (status, _) = http_get(server.addr(), "/healthz").await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// Polls `cond` until it holds, failing after the common wait.
#[tokio::test]
async fn an_idle_room_unloads_with_everything_flushed_and_loads_again() {
    let server = TestServer::start_with(|c| {
        c.room_idle_timeout = std::time::Duration::from_millis(30);
        c.compact_log_bytes = 16;
    })
    .await;
    let url = server.doc_url("r", "d");
    for round in 0..3 {
        let mut a = YClient::connect(&url, 10 + round).await;
        let want = format!("{}{round}", a.text("t"));
        a.insert("t", round, &round.to_string()).await;
        let mut b = YClient::connect(&url, 20 + round).await;
        b.until_text("t", &want).await;
        assert_eq!(server.metrics().rooms_active.get(), 1);
        a.close().await;
        b.close().await;
        eventually(|| server.metrics().rooms_active.get() == 0).await;
        assert_eq!(server.metrics().docs_loaded.get(), 0);
        let c = YClient::connect(&url, 30 + round).await;
        assert_eq!(c.text("t"), want, "round {round}");
        c.close().await;
    }
    assert!(server.metrics().compactions_total.get() >= 1);
    server.stop().await;
}

/// A document of `n` separate insertions by one client, as one update: many structs, so that
/// integrating it after a restart takes far longer than answering a step 1.
fn many_structs(n: u32) -> (Vec<u8>, String) {
    use yrs::{GetString, Text, Transact};
    let doc = yrs::Doc::with_client_id(77);
    let text = doc.get_or_insert_text("t");
    for i in 0..n {
        let mut txn = doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, (i * 7) % (len + 1), "ab");
    }
    let txn = doc.transact();
    let content = text.get_string(&txn);
    let update = {
        use yrs::ReadTxn;
        txn.encode_state_as_update_v1(&yrs::StateVector::default())
    };
    (update, content)
}

fn frame_of(msg: Message<'_>) -> tokio_tungstenite::tungstenite::Message {
    tokio_tungstenite::tungstenite::Message::Binary(msg.to_vec().into())
}

#[tokio::test]
async fn a_stored_document_is_served_while_it_loads() {
    use futures_util::{SinkExt, StreamExt};
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Transact};

    let mut server = TestServer::start().await;
    let url = server.doc_url("r", "big");
    let (update, content) = many_structs(20_000);
    let mut writer = YClient::connect(&url, 1).await;
    writer
        .send(Message::Sync(SyncMessage::Update(&update)))
        .await;
    writer.round_trip().await;
    writer.close().await;
    // A graceful restart folds the document into one snapshot.
    server.restart().await;
    let url = server.doc_url("r", "big");

    // A newcomer asks with an empty state vector as soon as it connects; a second client sends
    // an edit before the document can have loaded; a third leaves at once.
    let mut newcomer = roomd_tests::connect(&url).await;
    newcomer
        .send(frame_of(Message::Sync(SyncMessage::Step1(&[0]))))
        .await
        .unwrap();
    let mut editor = roomd_tests::connect(&url).await;
    let edit = {
        use yrs::Text;
        let doc = yrs::Doc::with_client_id(9);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "Z");
        txn.encode_update_v1()
    };
    editor
        .send(frame_of(Message::Sync(SyncMessage::Update(&edit))))
        .await
        .unwrap();
    let mut leaver = roomd_tests::connect(&url).await;
    leaver.close(None).await.unwrap();

    // The newcomer's first sync message is the whole document, answered from the stored
    // snapshot before the server's own step 1 (which needs the integrated document).
    let replica = yrs::Doc::with_client_id(2);
    let limits = roomd_sync::MessageLimits {
        payload_bytes_max: 64 << 20,
    };
    let mut first_sync = None;
    while first_sync.is_none() {
        let frame = tokio::time::timeout(roomd_tests::WAIT, newcomer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
            .into_data();
        for msg in roomd_sync::decode_frame(&frame, limits).unwrap() {
            match msg {
                Message::Sync(SyncMessage::Step2(u)) => {
                    replica
                        .transact_mut()
                        .apply_update(yrs::Update::decode_v1(u).unwrap())
                        .unwrap();
                    first_sync = Some("step 2");
                }
                Message::Sync(_) => first_sync = Some("other"),
                _ => {}
            }
        }
    }
    assert_eq!(first_sync, Some("step 2"));
    let text = replica.get_or_insert_text("t");
    assert_eq!(text.get_string(&replica.transact()), content);

    // The edit sent while the document loaded was applied, kept and forwarded.
    let mut check = YClient::connect(&url, 3).await;
    check
        .until(|c| c.text("t").len() == content.len() + 1)
        .await;
    let mut want = check.text("t");
    assert!(want.contains('Z'));
    drop(check);
    drop(newcomer);
    drop(editor);
    server.restart().await;
    let after = YClient::connect(&server.doc_url("r", "big"), 4).await;
    assert_eq!(after.text("t"), std::mem::take(&mut want));
    server.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_while_a_live_one_is_pinged() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let server = TestServer::start_with(|c| {
        c.keepalive_interval = std::time::Duration::from_millis(100);
    })
    .await;
    let url = server.doc_url("r", "d");
    // Connected, then never read from nor written to again.
    let mut silent = roomd_tests::connect(&url).await;
    let mut live = roomd_tests::connect(&url).await;
    // A ping from the client is answered.
    live.send(WsMessage::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    let mut pongs = 0;
    let mut pings = 0;
    // Reading answers the server's pings (the client library replies with pongs).
    while pings < 4 {
        let msg = tokio::time::timeout(roomd_tests::WAIT, live.next())
            .await
            .expect("the server kept quiet")
            .expect("the live connection ended")
            .expect("the live connection failed");
        match msg {
            WsMessage::Ping(_) => pings += 1,
            WsMessage::Pong(payload) => {
                assert_eq!(&payload[..], b"hi");
                pongs += 1;
            }
            _ => {}
        }
    }
    assert_eq!(pongs, 1);
    // Four ticks: the silent peer was dropped at the second, without a close frame.
    let ended = tokio::time::timeout(roomd_tests::WAIT, async {
        loop {
            match silent.next().await {
                Some(Ok(WsMessage::Close(_))) => panic!("a silent peer is dropped, not closed"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent peer was never dropped");
    assert_eq!(server.metrics().connections_open.get(), 1);
    server.stop().await;
}
