//! The room protocol with the stock MeshAgent Python SDK (`meshagent-api` 0.56): SDK clients
//! share documents with each other and with y-websocket editors through one room core; refused
//! tokens get HTTP errors before the upgrade; hostile packets close only their sender.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use roomd_room_apis::{ApiKey, ApiScope};
use roomd_sync::room_protocol::{encode_message, Payload};
use roomd_sync::CloseCode;
use roomd_tests::{connect_with_headers, TestServer, YClient};
use tokio_tungstenite::tungstenite::Message;
use yrs::{Transact, Xml, XmlFragment};

const ROOM: &str = "agents";

fn token_for(key: &ApiKey, name: &str, room: &str, api: ApiScope) -> String {
    roomd_tests::agent_token(key, name, room, api)
}

async fn secured() -> (TestServer, ApiKey) {
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

/// The `text` attributes of the paragraphs of a Yjs document's `xml` root, in order.
fn paragraphs(c: &YClient) -> Vec<String> {
    let xml = c.doc.get_or_insert_xml_fragment("xml");
    let txn = c.doc.transact();
    xml.children(&txn)
        .filter_map(|n| n.into_xml_element())
        .filter_map(|e| e.get_attribute(&txn, "text").map(|v| v.to_string(&txn)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sdk_clients_and_a_yjs_editor_share_one_document() {
    let (server, key) = secured().await;
    let alice = token_for(&key, "alice", ROOM, ApiScope::agent_default());
    let bob = token_for(&key, "bob", ROOM, ApiScope::agent_default());
    let editor = token_for(&key, "editor", ROOM, ApiScope::user_default());
    let path = "notes/plan.doc";
    let mut y = YClient::connect_authorized(&server.doc_url(ROOM, path), &editor, 7).await;
    y.push_paragraph("from-the-editor", "editor 0").await;
    y.round_trip().await;

    let base = format!("ws://{}", server.addr());
    let out = roomd_tests::run_python(
        "room_sync.py",
        &[&base, ROOM, path, &alice, &bob, "20", "1"],
    )
    .await;
    let mut lines = out.lines();
    let seen: Vec<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
    // `sync.describe` gives the same paragraphs as the SDK's Document-JSON.
    let described: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let described: Vec<String> = described["document"]["children"]
        .as_array()
        .unwrap_or_else(|| panic!("{described}"))
        .iter()
        .map(|c| c["paragraph"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(described, seen);
    assert_eq!(seen.len(), 41, "{seen:?}");
    assert!(seen.contains(&"editor 0".to_string()));
    for i in 0..20 {
        assert!(seen.contains(&format!("alice {i}")));
        assert!(seen.contains(&format!("bob {i}")));
    }
    // The y-websocket editor converges with the SDK clients, in the same order.
    y.until(|c| paragraphs(c) == seen).await;
    // And the document is the room's: a fresh editor loads the same.
    let fresh = YClient::connect_authorized(&server.doc_url(ROOM, path), &editor, 8).await;
    assert_eq!(paragraphs(&fresh), seen);
    server.stop().await;
}

/// Sends one room-protocol message on a raw socket.
async fn send_message(ws: &mut roomd_tests::Ws, id: u64, kind: &str, data: &[u8]) {
    for p in encode_message(id, kind, data) {
        ws.send(Message::Binary(p.to_vec().into())).await.unwrap();
    }
}

/// Reads frames until the server closes; returns its close code.
async fn close_code(ws: &mut roomd_tests::Ws) -> u16 {
    roomd_tests::expect_close(ws).await.0
}

fn room_url(server: &TestServer, room: &str) -> String {
    format!("ws://{}/rooms/{room}", server.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_get_http_errors_before_the_upgrade() {
    let (server, key) = secured().await;
    let url = room_url(&server, ROOM);
    let expect_status = |status: u16| {
        move |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), status);
                let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert!(json["error"]["code"].is_string(), "{body}");
            }
            Err(e) => panic!("expected HTTP {status}, got {e}"),
            Ok(_) => panic!("expected HTTP {status}, the upgrade completed"),
        }
    };
    let attempt = |headers: Vec<(&'static str, String)>| {
        let url = url.clone();
        async move {
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                )
                .unwrap();
            for (k, v) in headers {
                req.headers_mut().insert(k, v.parse().unwrap());
            }
            tokio_tungstenite::connect_async(req).await.map(|_| ())
        }
    };
    // No token, a forged one, one for another room.
    expect_status(401)(attempt(vec![]).await);
    expect_status(401)(attempt(vec![("authorization", "Bearer not.a.jwt".into())]).await);
    let other = token_for(&key, "alice", "elsewhere", ApiScope::agent_default());
    expect_status(403)(attempt(vec![("authorization", format!("Bearer {other}"))]).await);
    // The right token upgrades.
    let good = token_for(&key, "alice", ROOM, ApiScope::agent_default());
    let (mut ws, _) =
        connect_with_headers(&url, &[("authorization", &format!("Bearer {good}"))]).await;
    // The first message is room_ready.
    let first = ws.next().await.unwrap().unwrap();
    let Message::Binary(header) = first else {
        panic!("expected a packet, got {first:?}")
    };
    assert_eq!(&header[8..12], &[0, 0, 0, 0]);
    assert_eq!(&header[16..], b"room_ready");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_close_only_their_sender() {
    let (server, key) = secured().await;
    let url = room_url(&server, ROOM);
    let good = token_for(&key, "alice", ROOM, ApiScope::agent_default());
    let bearer = format!("Bearer {good}");
    let headers = [("authorization", bearer.as_str())];

    // An honest editor on a document, to check it is unharmed.
    let editor = token_for(&key, "editor", ROOM, ApiScope::user_default());
    let mut y = YClient::connect_authorized(&server.doc_url(ROOM, "d"), &editor, 3).await;

    let cases: Vec<(&str, Vec<Vec<u8>>, CloseCode)> = vec![
        (
            "a data packet for no message",
            vec![[&7u64.to_be_bytes()[..], &1u32.to_be_bytes()[..], b"xx"].concat()],
            CloseCode::ProtocolError,
        ),
        (
            "a packet count beyond the size limit",
            vec![[
                &1u64.to_be_bytes()[..],
                &0u32.to_be_bytes()[..],
                &u32::MAX.to_be_bytes()[..],
                b"room.invoke_tool",
            ]
            .concat()],
            CloseCode::TooLarge,
        ),
        (
            "packets out of order",
            {
                let p = encode_message(2, "room.invoke_tool", &[0u8; 3000]);
                vec![p[0].to_vec(), p[2].to_vec()]
            },
            CloseCode::ProtocolError,
        ),
        (
            "a header that is not JSON",
            encode_message(
                3,
                "room.invoke_tool",
                &[&5u64.to_be_bytes()[..], b"{{{{{"].concat(),
            )
            .iter()
            .map(|p| p.to_vec())
            .collect(),
            CloseCode::ProtocolError,
        ),
        (
            "JSON nested too deep",
            {
                let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
                let json = format!("{{\"a\":{deep}}}");
                let data = [&(json.len() as u64).to_be_bytes()[..], json.as_bytes()].concat();
                encode_message(4, "room.invoke_tool", &data)
                    .iter()
                    .map(|p| p.to_vec())
                    .collect()
            },
            CloseCode::ProtocolError,
        ),
        (
            "a flood of half-assembled messages",
            (0..100u64)
                .map(|id| encode_message(id + 10, "x", &[0u8; 2000])[0].to_vec())
                .collect(),
            CloseCode::ProtocolError,
        ),
        (
            "an empty type",
            vec![[
                &1u64.to_be_bytes()[..],
                &0u32.to_be_bytes()[..],
                &0u32.to_be_bytes()[..],
            ]
            .concat()],
            CloseCode::ProtocolError,
        ),
    ];
    for (what, packets, code) in cases {
        let (mut ws, _) = connect_with_headers(&url, &headers).await;
        for p in packets {
            if ws.send(Message::Binary(p.into())).await.is_err() {
                break;
            }
        }
        assert_eq!(close_code(&mut ws).await, code.code(), "{what}");
    }
    // Unknown message types and tools are answered with errors, not closes.
    let (mut ws, _) = connect_with_headers(&url, &headers).await;
    let req = Payload::encode(
        &serde_json::json!({"toolkit": "nope", "tool": "x", "tool_call_id": "t",
            "arguments": {"type": "empty"}}),
        b"",
    );
    send_message(&mut ws, 1, "room.invoke_tool", &req).await;
    let mut assembler = roomd_sync::room_protocol::Assembler::new(Default::default());
    let answer = loop {
        let Message::Binary(b) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        if let Some(m) = assembler.push(&b).unwrap() {
            if m.kind == "__response__" {
                break m;
            }
        }
    };
    assert_eq!(answer.id, 1);
    let p = Payload::decode(&answer.data, &Default::default()).unwrap();
    assert_eq!(p.header["type"], "error");
    assert_eq!(p.header["code"], 1003);

    // The honest editor is unharmed and the server healthy.
    y.insert("t", 0, "still here").await;
    y.round_trip().await;
    assert_eq!(y.text("t"), "still here");
    assert_eq!(server.get("/healthz").await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_clients_message_each_other_see_presence_and_follow_the_developer_log() {
    let (server, key) = secured().await;
    let alice = token_for(&key, "alice", ROOM, ApiScope::agent_default());
    let bob = token_for(&key, "bob", ROOM, ApiScope::agent_default());
    let base = format!("ws://{}", server.addr());
    let out = roomd_tests::run_python("room_messaging.py", &[&base, ROOM, &alice, &bob]).await;
    assert_eq!(out.trim(), "ok");
    // What alice logged is in the room's event log, read over REST too.
    let (status, body) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/events?limit=256"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let logged = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "developer.log")
        .cloned()
        .unwrap_or_else(|| panic!("no developer.log event in {body}"));
    assert_eq!(logged["body"]["type"], "deploy");
    assert_eq!(logged["body"]["data"]["version"], 3);
    assert_eq!(logged["participant"]["name"], "alice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_client_hosts_a_toolkit_that_another_calls() {
    let (server, key) = secured().await;
    let host = token_for(&key, "calculator", ROOM, ApiScope::agent_default());
    let caller = token_for(&key, "caller", ROOM, ApiScope::agent_default());
    let base = format!("ws://{}", server.addr());
    let out = roomd_tests::run_python("room_tools.py", &[&base, ROOM, &host, &caller]).await;
    assert_eq!(out.trim(), "ok");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_chunks_name_the_participant_whose_update_they_carry() {
    let (server, key) = secured().await;
    let agent = token_for(&key, "agent", ROOM, ApiScope::agent_default());
    let editor = token_for(&key, "editor", ROOM, ApiScope::user_default());
    let mut c = roomd_tests::RoomProtoClient::connect(&room_url(&server, ROOM), Some(&agent)).await;
    let (call, _) = c.open_doc("shared", false).await;
    let mut y = YClient::connect_authorized(&server.doc_url(ROOM, "shared"), &editor, 4).await;
    y.insert("t", 0, "by the editor").await;
    let m = loop {
        let m = c.next().await;
        if m.kind == "room.tool_call_response_chunk" && m.header["tool_call_id"] == call.as_str() {
            break m;
        }
    };
    // The chunk's own headers are exactly what the stock SDK validates.
    let headers = m.header["chunk"]["headers"].as_object().unwrap();
    assert_eq!(headers.len(), 2, "{headers:?}");
    assert_eq!(headers["kind"], "sync");
    let (_, body) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/participants"),
            Some(&editor),
            None,
        )
        .await;
    let editor_id = body["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "editor")
        .unwrap()["id"]
        .clone();
    assert_eq!(m.header["participants"], serde_json::json!([editor_id]));
    assert_ne!(editor_id.as_str(), Some(c.participant_id.as_str()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopening_with_a_state_vector_sends_only_what_is_missing() {
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{GetString, ReadTxn, Text};
    let server = TestServer::start().await;
    let url = room_url(&server, ROOM);
    let mut a = roomd_tests::RoomProtoClient::connect(&url, None).await;
    let (call, _) = a.open_doc("big", true).await;
    let doc = yrs::Doc::with_client_id(11);
    let text = doc.get_or_insert_text("t");
    let big = "x".repeat(100_000);
    let update = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, &big);
        txn.encode_update_v1()
    };
    a.sync(&call, &update).await;
    loop {
        let (chunk, _) = a.next_chunk(&call).await;
        if chunk["headers"]["kind"] == "ack" {
            break;
        }
    }
    // Another writer adds a little while this client is away.
    let mut y = YClient::connect(&server.doc_url(ROOM, "big"), 12).await;
    y.insert("t", 0, "new ").await;
    y.round_trip().await;
    drop(a);
    let sv = doc.transact().state_vector().encode_v1();
    let mut b = roomd_tests::RoomProtoClient::connect(&url, None).await;
    let (_, state) = b.open_doc_from("big", Some(&sv), false).await;
    assert!(
        state.len() < 200,
        "a client holding 100 kB was sent {} bytes",
        state.len()
    );
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&state).unwrap())
        .unwrap();
    assert_eq!(text.get_string(&doc.transact()), format!("new {big}"));
    // Without a state vector, the whole document.
    let (_, whole) = b.open_doc("big", false).await;
    assert!(whole.len() > 100_000);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_created_from_json_and_described_as_json() {
    let (server, key) = secured().await;
    let token = token_for(&key, "author", ROOM, ApiScope::agent_default());
    let base = format!("ws://{}", server.addr());
    let out = roomd_tests::run_python("room_create.py", &[&base, ROOM, &token]).await;
    assert_eq!(out.trim(), "ok");
    // A y-websocket editor sees the created document's element in the `xml` root.
    let y = YClient::connect_authorized(&server.doc_url(ROOM, "made.doc"), &token, 5).await;
    assert_eq!(paragraphs(&y), ["one"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_connection_may_make_the_room_hold_is_bounded() {
    let (server, key) = secured().await;
    let agent = token_for(&key, "agent", ROOM, ApiScope::agent_default());
    let mut c = roomd_tests::RoomProtoClient::connect(&room_url(&server, ROOM), Some(&agent)).await;
    // Toolkits: 64 per connection.
    for i in 0..65 {
        let id = c
            .send(
                "room.register_toolkit",
                serde_json::json!({"name": format!("kit{i}"), "tools": {}, "public": true}),
                b"",
            )
            .await;
        let m = loop {
            let m = c.next().await;
            if m.kind == "__response__" && m.id == id {
                break m;
            }
        };
        if i < 64 {
            assert_eq!(m.header["type"], "json", "toolkit {i}: {:?}", m.header);
        } else {
            assert_eq!(m.header["code"], 1006, "{:?}", m.header);
        }
    }
    // A developer log entry: at most 64 KiB of JSON.
    let big = "x".repeat(70_000);
    let refused = c
        .invoke(
            "developer",
            "log",
            "l1",
            serde_json::json!({"type": "json", "json": {"type": "big", "data": {"blob": big}}}),
        )
        .await;
    assert_eq!(refused["code"], 1002, "{refused:?}");
    let fine = c
        .invoke(
            "developer",
            "log",
            "l2",
            serde_json::json!({"type": "json", "json": {"type": "small", "data": {"n": 1}}}),
        )
        .await;
    assert_eq!(fine["type"], "empty", "{fine:?}");
    // Attributes: at most 64 KiB of JSON; more is dropped, the rest of the participant kept.
    c.send(
        "set_attributes",
        serde_json::json!({"huge": "y".repeat(70_000)}),
        b"",
    )
    .await;
    c.send("set_attributes", serde_json::json!({"status": "busy"}), b"")
        .await;
    let shown = |body: &serde_json::Value| body["participants"][0]["attributes"].clone();
    let mut attributes = serde_json::Value::Null;
    for _ in 0..200 {
        let (_, body) = server
            .json(
                "GET",
                &format!("/v1/rooms/{ROOM}/participants"),
                Some(&agent),
                None,
            )
            .await;
        attributes = shown(&body);
        if attributes["status"] == "busy" {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(attributes["status"], "busy", "{attributes}");
    assert!(
        attributes.get("huge").is_none(),
        "oversized attributes were kept"
    );
    server.stop().await;
}

/// A stock SDK client across a `kill -9` and restart of the server (the real binary, back on
/// the same port): it reconnects by itself, its offline edit reaches an editor, and the
/// editor's edit made meanwhile reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_sdk_client_reconnects_across_a_server_restart() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = roomd_tests::free_port();
    let base = format!("ws://127.0.0.1:{port}");
    let mut server = roomd_tests::spawn_roomd(&data, port, &[]).await;
    let doc_url = format!("{base}/v1/rooms/{ROOM}/yjs/notes/restart.doc");
    let mut sdk = tokio::process::Command::new(roomd_tests::sdk_python())
        .current_dir(roomd_tests::repo_root().join("tests/python"))
        .args(["room_reconnect.py", &base, ROOM, "any", "notes/restart.doc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = sdk.stdin.take().unwrap();
    let mut lines = BufReader::new(sdk.stdout.take().unwrap()).lines();
    let mut expect = async |want: &str| {
        let got = tokio::time::timeout(roomd_tests::WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("the SDK client did not say {want:?} in time"))
            .unwrap();
        assert_eq!(got.as_deref(), Some(want));
    };
    expect("ready").await;
    let mut y = YClient::connect(&doc_url, 31).await;
    y.until(|c| paragraphs(c) == ["online"]).await;
    roomd_tests::wait_durable(port).await;
    server.kill().await.unwrap();
    stdin.write_all(b"down\n").await.unwrap();
    expect("edited").await;
    server = roomd_tests::spawn_roomd(&data, port, &[]).await;
    let mut y = YClient::connect(&doc_url, 32).await;
    assert_eq!(paragraphs(&y), ["online"], "the acknowledged edit survived");
    y.push_paragraph("from-the-editor", "from the editor").await;
    stdin.write_all(b"up\n").await.unwrap();
    expect("ok").await;
    y.until(|c| {
        let p = paragraphs(c);
        p.len() == 3 && p.contains(&"offline".to_string())
    })
    .await;
    stdin.write_all(b"done\n").await.unwrap();
    assert!(sdk.wait().await.unwrap().success());
    server.kill().await.unwrap();
}

/// The next `messaging.send` push a client receives: its `type` and `message`.
async fn next_push(c: &mut roomd_tests::RoomProtoClient) -> (String, serde_json::Value) {
    loop {
        let m = c.next().await;
        if m.kind == "messaging.send" {
            return (
                m.header["type"].as_str().unwrap().to_string(),
                m.header["message"].clone(),
            );
        }
    }
}

/// A messaging grant without `list` lets a participant message and be messaged, but it is
/// shown no one: `messaging.enabled` lists nobody and no presence push reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_list_grant_a_participant_is_shown_no_one() {
    use roomd_room_apis::scope::MessagingGrant;
    let (server, key) = secured().await;
    let url = format!("ws://{}/rooms/{ROOM}", server.addr());
    let mut scope = ApiScope::agent_default();
    scope.messaging = Some(MessagingGrant {
        list: false,
        ..Default::default()
    });
    let blind_token = token_for(&key, "blind", ROOM, scope);
    let seer_token = token_for(&key, "seer", ROOM, ApiScope::agent_default());
    let enable = serde_json::json!({"type": "json", "json": {}});
    let mut seer = roomd_tests::RoomProtoClient::connect(&url, Some(&seer_token)).await;
    seer.invoke("messaging", "enable", "m1", enable.clone())
        .await;
    assert_eq!(next_push(&mut seer).await.0, "messaging.enabled");
    let mut blind = roomd_tests::RoomProtoClient::connect(&url, Some(&blind_token)).await;
    blind.invoke("messaging", "enable", "m2", enable).await;
    let (kind, message) = next_push(&mut blind).await;
    assert_eq!(kind, "messaging.enabled");
    assert_eq!(message["participants"], serde_json::json!([]));
    // The seer is shown the blind participant.
    let (kind, message) = next_push(&mut seer).await;
    assert_eq!(kind, "participant.enabled");
    assert_eq!(message["id"], blind.participant_id.as_str());
    // The seer's attributes change, then it messages the blind one: the message is the first
    // push the blind one gets.
    seer.send("set_attributes", serde_json::json!({"mood": "fine"}), b"")
        .await;
    let to = blind.participant_id.clone();
    let answer = seer
        .invoke(
            "messaging",
            "send",
            "m3",
            serde_json::json!({"type": "json", "json": {"to_participant_id": to,
                "type": "hello", "message_json": "{}", "attachment_base64": null}}),
        )
        .await;
    assert_eq!(answer["type"], "empty", "{answer:?}");
    assert_eq!(next_push(&mut blind).await.0, "hello");
    server.stop().await;
}

/// The second witness, the MeshAgent TypeScript SDK (`@meshagent/meshagent`): it connects,
/// reads a document an editor wrote, adds to it and closes it; the editor sees its paragraph.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_sdk_shares_a_document_with_an_editor() {
    let (server, key) = secured().await;
    let path = "notes/ts.doc";
    let editor = token_for(&key, "editor", ROOM, ApiScope::user_default());
    let mut y = YClient::connect_authorized(&server.doc_url(ROOM, path), &editor, 41).await;
    y.push_paragraph("from-the-editor", "from the editor").await;
    y.round_trip().await;
    let agent = token_for(&key, "ts-agent", ROOM, ApiScope::agent_default());
    let dir = roomd_tests::repo_root().join("tests/interop");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(90),
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .args(["meshagent-ts.cjs", path])
            .env("MESHAGENT_ROOM_URL", format!("ws://{}", server.addr()))
            .env("MESHAGENT_ROOM", ROOM)
            .env("MESHAGENT_TOKEN", &agent)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the TypeScript SDK script timed out")
    .expect("running node");
    assert!(
        out.status.success(),
        "meshagent-ts.cjs failed\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Vec<String> =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(seen, ["from the editor", "from typescript"]);
    y.until(|c| paragraphs(c) == ["from the editor", "from typescript"])
        .await;
    server.stop().await;
}
