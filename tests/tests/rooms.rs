//! A room's participants (`.room/participants` and REST), awareness ownership, sessions across
//! an idle unload, documents over REST, deleting documents and rooms, and the developer event
//! log paged and streamed, resumed across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_room_apis::{ApiKey, ApiScope, Claims, Grant};
use roomd_sync::{CloseCode, Message as YMessage};
use roomd_tests::{eventually, expect_close, SseClient, TestServer, YClient};
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{GetString, ReadTxn, Text, Transact};

const ROOM: &str = "lobby";

fn token(key: &ApiKey, name: &str) -> String {
    let mut c = roomd_tests::agent_claims(key, name, ROOM, ApiScope::full());
    c.extra.insert("team".into(), serde_json::json!("blue"));
    roomd_room_apis::mint(&c, &key.secret).unwrap()
}

async fn secured(adjust: impl FnOnce(&mut roomd::Config)) -> (TestServer, ApiKey) {
    let server = TestServer::start_with(adjust).await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

/// The participants shown in a replica of `.room/participants`: name → connections.
fn shown(c: &YClient) -> Vec<(String, usize)> {
    let txn = c.doc.transact();
    let Some(map) = txn.get_map("participants") else {
        return Vec::new();
    };
    let json = serde_json::to_value(map.to_json(&txn)).unwrap();
    let mut out: Vec<(String, usize)> = json
        .as_object()
        .unwrap()
        .values()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["connections"].as_array().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participants_are_shown_live_in_their_document_and_over_rest() {
    let (server, key) = secured(|_| {}).await;
    let (alice, bob) = (token(&key, "alice"), token(&key, "bob"));
    let watcher_token = token(&key, "watcher");
    let mut watcher = YClient::connect_authorized(
        &server.doc_url(ROOM, ".room/participants"),
        &watcher_token,
        1,
    )
    .await;
    let a1 = YClient::connect_authorized(&server.doc_url(ROOM, "a"), &alice, 2).await;
    let a2 = YClient::connect_authorized(&server.doc_url(ROOM, "b"), &alice, 3).await;
    let b1 = YClient::connect_authorized(&server.doc_url(ROOM, "a"), &bob, 4).await;
    let want = vec![
        ("alice".to_string(), 2),
        ("bob".to_string(), 1),
        ("watcher".to_string(), 1),
    ];
    watcher.until(|c| shown(c) == want).await;
    let (status, rest) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/participants"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let participants = rest["participants"].as_array().unwrap();
    assert_eq!(participants.len(), 3);
    let a = participants.iter().find(|p| p["name"] == "alice").unwrap();
    assert_eq!(a["role"], "agent");
    assert_eq!(a["attributes"]["team"], "blue");
    assert_eq!(a["connections"].as_array().unwrap().len(), 2);
    assert!(a["since"].as_str().unwrap().ends_with('Z'));
    // Bob leaves with his only connection; Alice stays with one of two.
    b1.close().await;
    a1.close().await;
    let want = vec![("alice".to_string(), 1), ("watcher".to_string(), 1)];
    watcher.until(|c| shown(c) == want).await;
    drop(a2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_for_another_participants_client_id_is_dropped() {
    let (server, key) = secured(|_| {}).await;
    let url = server.doc_url(ROOM, "doc");
    let mut alice = YClient::connect_authorized(&url, &token(&key, "alice"), 1).await;
    let mut bob = YClient::connect_authorized(&url, &token(&key, "bob"), 2).await;
    let mut mallory = YClient::connect_authorized(&url, &token(&key, "mallory"), 3).await;
    let entry = |client: u64, clock: u64, json: &str| {
        let mut update = Vec::new();
        roomd_sync::awareness::encode(
            std::iter::once(roomd_sync::awareness::Entry {
                client_id: client,
                clock,
                state_json: json,
            }),
            &mut update,
        );
        update
    };
    alice
        .send(YMessage::Awareness(&entry(1, 1, r#"{"user":"alice"}"#)))
        .await;
    bob.until(|c| !c.awareness.is_empty()).await;
    // Mallory claims Alice's client id with a newer clock: dropped, counted, nobody sees it.
    mallory
        .send(YMessage::Awareness(&entry(1, 9, r#"{"user":"mallory"}"#)))
        .await;
    mallory.round_trip().await;
    eventually(|| server.metrics().awareness_spoofed_total.get() == 1).await;
    // Mallory's own id goes through, and Bob sees no other state for id 1.
    mallory
        .send(YMessage::Awareness(&entry(3, 1, r#"{"user":"mallory"}"#)))
        .await;
    bob.until(|c| c.awareness.len() >= 2).await;
    for a in &bob.awareness {
        let entries = roomd_sync::awareness::parse(a).unwrap();
        assert!(
            entries
                .iter()
                .all(|e| !e.state_json.contains("mallory") || e.client_id == 3),
            "a spoofed state reached bob: {entries:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_unload_ends_the_session_and_the_next_use_starts_a_new_one() {
    let (server, key) = secured(|c| {
        c.room_idle_timeout = std::time::Duration::from_millis(50);
    })
    .await;
    let alice = token(&key, "alice");
    let url = server.doc_url(ROOM, "doc");
    let session_of = |room: serde_json::Value| room["session"]["id"].as_str().unwrap().to_string();
    let c = YClient::connect_authorized(&url, &alice, 1).await;
    let (_, room) = server
        .json("GET", &format!("/v1/rooms/{ROOM}"), Some(&alice), None)
        .await;
    let first = session_of(room);
    c.close().await;
    eventually(|| server.metrics().rooms_active.get() == 0).await;
    let (_, room) = server
        .json("GET", &format!("/v1/rooms/{ROOM}"), Some(&alice), None)
        .await;
    assert_eq!(room["active"], false);
    let _c = YClient::connect_authorized(&url, &alice, 2).await;
    let (_, room) = server
        .json("GET", &format!("/v1/rooms/{ROOM}"), Some(&alice), None)
        .await;
    let second = session_of(room);
    assert_ne!(first, second);
    let (_, sessions) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/sessions"),
            Some(&alice),
            None,
        )
        .await;
    let sessions = sessions["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["id"], first.as_str());
    assert!(sessions[0]["ended"].is_string());
    assert_eq!(sessions[0]["participants"][0]["name"], "alice");
    assert!(sessions[0]["participants"][0]["left"].is_string());
    assert!(sessions[1]["ended"].is_null());
    let (_, rooms) = server
        .json("GET", "/v1/rooms", Some(&key.to_string()), None)
        .await;
    assert_eq!(rooms["rooms"][0]["name"], ROOM);
    assert_eq!(rooms["rooms"][0]["active"], true);
    server.stop().await;
}

fn typed(text: &str, client: u64) -> Vec<u8> {
    let doc = yrs::Doc::with_client_id(client);
    let t = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    t.insert(&mut txn, 0, text);
    txn.encode_update_v1()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_over_rest_are_the_documents_editors_hold() {
    let (server, key) = secured(|_| {}).await;
    let alice = token(&key, "alice");
    let url = server.doc_url(ROOM, "notes/plan");
    let mut editor = YClient::connect_authorized(&url, &alice, 1).await;
    editor.insert("t", 0, "from the editor").await;
    editor.round_trip().await;
    // A REST write reaches the editor live, and is durable when answered.
    let (status, body) = server
        .http(
            "POST",
            &format!("/v1/rooms/{ROOM}/docs/notes/plan/update"),
            Some(&alice),
            &typed("rest: ", 77),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    editor.until(|c| c.text("t").contains("rest: ")).await;
    // Read back as JSON, and as an update.
    let (status, json) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/docs/notes/plan"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(json["t"].as_str().unwrap(), editor.text("t"));
    let (status, update) = roomd_tests::http_request(
        server.addr(),
        "GET",
        &format!("/v1/rooms/{ROOM}/docs/notes/plan"),
        Some(&alice),
        &[("accept", "application/octet-stream")],
        &[],
    )
    .await;
    assert_eq!(status, 200);
    let replica = yrs::Doc::new();
    replica
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&update).unwrap())
        .unwrap();
    assert_eq!(
        replica
            .get_or_insert_text("t")
            .get_string(&replica.transact()),
        editor.text("t")
    );
    // The difference from a state vector is smaller than the whole.
    let sv = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        editor.doc.transact().state_vector().encode_v1(),
    );
    let (status, diff) = roomd_tests::http_request(
        server.addr(),
        "GET",
        &format!("/v1/rooms/{ROOM}/docs/notes/plan?sv={sv}"),
        Some(&alice),
        &[("accept", "application/octet-stream")],
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert!(diff.len() < update.len());
    // The listing has it; garbage is refused with 400 and changes nothing.
    let (_, docs) = server
        .json("GET", &format!("/v1/rooms/{ROOM}/docs"), Some(&alice), None)
        .await;
    let names: Vec<&str> = docs["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"notes/plan"), "{names:?}");
    let (status, _) = server
        .http(
            "POST",
            &format!("/v1/rooms/{ROOM}/docs/notes/plan/update"),
            Some(&alice),
            &[0xff, 0xff, 0x01],
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/docs/missing"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 404);
    // Deleting the document closes its editor with 4410 and removes it.
    let (status, _) = server
        .json(
            "DELETE",
            &format!("/v1/rooms/{ROOM}/docs/notes/plan"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (code, _) = expect_close(editor.ws()).await;
    assert_eq!(code, CloseCode::Deleted.code());
    let (status, _) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/docs/notes/plan"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = server
        .json(
            "DELETE",
            &format!("/v1/rooms/{ROOM}/docs/never"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_closes_its_connections_and_removes_its_data() {
    let (server, key) = secured(|_| {}).await;
    let alice = token(&key, "alice");
    let url = server.doc_url(ROOM, "doc");
    let mut editor = YClient::connect_authorized(&url, &alice, 1).await;
    editor.insert("t", 0, "gone soon").await;
    editor.round_trip().await;
    let no_admin = {
        let mut c = Claims::new("bob");
        c.grants = vec![
            Grant::Room(ROOM.into()),
            Grant::Api(ApiScope::user_default()),
        ];
        c.project = Some(key.project);
        c.key = Some(key.id);
        c.exp = Some(i64::MAX / 4);
        roomd_room_apis::mint(&c, &key.secret).unwrap()
    };
    let (status, _) = server
        .json(
            "DELETE",
            &format!("/v1/rooms/{ROOM}"),
            Some(&no_admin),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = server
        .json("DELETE", &format!("/v1/rooms/{ROOM}"), Some(&alice), None)
        .await;
    assert_eq!(status, 200);
    let (code, _) = expect_close(editor.ws()).await;
    assert_eq!(code, CloseCode::Deleted.code());
    let fresh = YClient::connect_authorized(&url, &alice, 2).await;
    assert_eq!(fresh.text("t"), "");
    let (_, sessions) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/sessions"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_across_a_restart_with_no_gap_and_no_duplicate() {
    let (mut server, key) = secured(|_| {}).await;
    let alice = token(&key, "alice");
    let url = server.doc_url(ROOM, "doc");
    let path = format!("/v1/rooms/{ROOM}/events/stream");
    let c = YClient::connect_authorized(&url, &alice, 1).await;
    let mut stream = SseClient::open(server.addr(), &path, &alice, None).await;
    let mut seen: Vec<(u64, String)> = Vec::new();
    let next = |seen: &mut Vec<(u64, String)>, e: roomd_tests::SseEvent| {
        let id: u64 = e.id.unwrap().parse().unwrap();
        seen.push((id, e.event.unwrap()));
    };
    next(&mut seen, stream.next_event().await);
    next(&mut seen, stream.next_event().await);
    assert_eq!(seen[0].1, "session.started");
    assert_eq!(seen[1].1, "participant.joined");
    c.close().await;
    next(&mut seen, stream.next_event().await);
    assert_eq!(seen[2].1, "participant.left");
    drop(stream);
    // Across a restart: the session ends, another starts, and the stream goes on from the last
    // id seen.
    server.restart().await;
    let _c = YClient::connect_authorized(&server.doc_url(ROOM, "doc"), &alice, 2).await;
    let last = seen.last().unwrap().0;
    let mut stream = SseClient::open(server.addr(), &path, &alice, Some(last)).await;
    for _ in 0..3 {
        next(&mut seen, stream.next_event().await);
    }
    let kinds: Vec<&str> = seen[3..].iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["session.ended", "session.started", "participant.joined"]
    );
    let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, (1..=6).collect::<Vec<u64>>(), "a gap or a duplicate");
    // Pages give the same events.
    let (status, page) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/events?after=2&limit=2"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let got: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(got, [3, 4]);
    assert_eq!(page["next"], 4);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_behind_the_retained_log_is_told_and_closed() {
    let (server, key) = secured(|c| c.events_per_room_max = 3).await;
    let alice = token(&key, "alice");
    let url = server.doc_url(ROOM, "doc");
    for i in 0..4 {
        YClient::connect_authorized(&url, &alice, 10 + i)
            .await
            .close()
            .await;
    }
    // Wait until the newest events are visible: the log then holds the last three only.
    let path = format!("/v1/rooms/{ROOM}/events/stream");
    let mut probe = SseClient::open(server.addr(), &path, &alice, None).await;
    let first = probe.next_event().await;
    assert!(first.id.unwrap().parse::<u64>().unwrap() > 1);
    let mut behind = SseClient::open(server.addr(), &path, &alice, Some(1)).await;
    let e = behind.next_event().await;
    assert_eq!(e.event.as_deref(), Some("error"));
    assert!(e.data.contains("lagged"), "{e:?}");
    server.stop().await;
}
