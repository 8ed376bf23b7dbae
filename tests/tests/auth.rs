//! Identities on the y-websocket endpoint and the REST API: the token matrix (every refusal and
//! the happy paths), read-only participants, key rotation, project isolation, the limit on
//! failed attempts, and open development mode ending as soon as a key exists.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use roomd_room_apis::{ApiKey, ApiScope, Claims, Grant, Role, SyncGrant, SyncPathGrant};
use roomd_sync::{CloseCode, Message as YMessage, SyncMessage};
use roomd_tests::{connect_with_headers, TestServer, YClient};
use yrs::Transact;

const ROOM: &str = "room-a";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims a valid token for `ROOM` carries: every scope, an hour to live.
fn claims(key: &ApiKey) -> Claims {
    let mut c = Claims::new("alice");
    c.grants = vec![
        Grant::Room(ROOM.into()),
        Grant::Role(Role::User),
        Grant::Api(ApiScope::full()),
    ];
    c.project = Some(key.project);
    c.key = Some(key.id);
    c.exp = Some(now() + 3600);
    c.version = Some("0.56.0".into());
    c
}

fn sign(c: &Claims, secret: &str) -> String {
    roomd_room_apis::mint(c, secret).unwrap()
}

fn token(key: &ApiKey, edit: impl FnOnce(&mut Claims)) -> String {
    let mut c = claims(key);
    edit(&mut c);
    sign(&c, &key.secret)
}

fn with_api(key: &ApiKey, api: ApiScope) -> String {
    token(key, |c| {
        c.grants.retain(|g| !matches!(g, Grant::Api(_)));
        c.grants.push(Grant::Api(api));
    })
}

fn unsigned(c: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap());
    format!("{header}.{payload}.")
}

fn hs512(c: &Claims, secret: &str) -> String {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        c,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A server in auth mode: the default project has a key.
async fn secured() -> (TestServer, ApiKey) {
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

/// How a token is presented.
#[derive(Debug, Clone, Copy)]
enum Via {
    Bearer,
    Query,
    Subprotocol,
}

/// Connects to document `doc` of `room` with `token`; `None` when admitted (the handshake
/// completes), else the close code.
async fn attempt(
    server: &TestServer,
    room: &str,
    doc: &str,
    token: Option<&str>,
    via: Via,
) -> Option<u16> {
    let mut url = server.doc_url(room, doc);
    let bearer;
    let protocol;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(t) = token {
        match via {
            Via::Bearer => {
                bearer = format!("Bearer {t}");
                headers.push(("authorization", &bearer));
            }
            Via::Query => url = format!("{url}?token={t}"),
            Via::Subprotocol => {
                protocol = format!("meshagent-room.{t}");
                headers.push(("sec-websocket-protocol", &protocol));
            }
        }
    }
    let (mut ws, answer) = connect_with_headers(&url, &headers).await;
    if let Via::Subprotocol = via {
        // Echoed, or a browser would drop the connection.
        let echoed = answer
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(echoed, token.map(|t| format!("meshagent-room.{t}")));
    }
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // An admitted connection gets the server's sync step 1 first; a refused one its close.
    let first = tokio::time::timeout(roomd_tests::WAIT, ws.next())
        .await
        .expect("nothing from the server")
        .expect("the connection ended")
        .expect("the connection failed");
    match first {
        Message::Binary(frame) => {
            let msgs = roomd_sync::decode_frame(
                &frame,
                roomd_sync::MessageLimits {
                    payload_bytes_max: 1 << 20,
                },
            )
            .unwrap();
            assert!(matches!(msgs[0], YMessage::Sync(SyncMessage::Step1(_))));
            let _ = ws.close(None).await;
            None
        }
        Message::Close(Some(frame)) => {
            let _ = ws.send(Message::Close(None)).await;
            Some(u16::from(frame.code))
        }
        other => panic!("unexpected first message {other:?}"),
    }
}

/// Opens the room protocol's endpoint for `room` with `token`: the HTTP status of the answer to
/// the upgrade (101 when admitted: the first message is then `room_ready`).
async fn attempt_room(server: &TestServer, room: &str, token: Option<&str>, via: Via) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut url = format!("ws://{}/v1/rooms/{room}", server.addr());
    let mut request_headers: Vec<(&str, String)> = Vec::new();
    if let Some(t) = token {
        match via {
            Via::Bearer => request_headers.push(("authorization", format!("Bearer {t}"))),
            Via::Query => url = format!("{url}?token={t}"),
            Via::Subprotocol => {
                request_headers.push(("sec-websocket-protocol", format!("meshagent-room.{t}")))
            }
        }
    }
    let mut request = url.as_str().into_client_request().unwrap();
    for (k, v) in request_headers {
        request.headers_mut().insert(k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut ws, answer)) => {
            let first = tokio::time::timeout(roomd_tests::WAIT, ws.next())
                .await
                .expect("nothing from the server")
                .expect("the connection ended")
                .expect("the connection failed");
            let Message::Binary(header) = first else {
                panic!("expected room_ready, got {first:?}");
            };
            assert_eq!(&header[16..], b"room_ready");
            answer.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("connecting to the room protocol: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_matrix() {
    // Every refusal is tried on two endpoints: more than the default 30 failed attempts a minute
    // from one address, which would turn the later ones into 4429 / 429.
    let server = TestServer::start_with(|c| c.auth_failures_per_minute_max = 1_000).await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let other_project = server.create_project("other").await;
    let other_key = ApiKey::parse(&server.create_key(&other_project).await).unwrap();
    let revoked_key = ApiKey::parse(&server.create_key("default").await).unwrap();
    server
        .admin(
            "DELETE",
            &format!("/v1/projects/default/keys/{}", revoked_key.id),
            None,
        )
        .await;
    let lenient = server.create_project("lenient").await;
    server
        .admin(
            "PATCH",
            &format!("/v1/projects/{lenient}"),
            Some(serde_json::json!({ "allow_tokens_without_expiry": true })),
        )
        .await;
    let lenient_key = ApiKey::parse(&server.create_key(&lenient).await).unwrap();
    let unauthorized = Some(CloseCode::Unauthorized.code());
    let forbidden = Some(CloseCode::Forbidden.code());
    let valid = token(&key, |_| {});
    let mut forged = valid.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let read_only_docs = ApiScope {
        sync: Some(SyncGrant {
            paths: Some(vec![
                SyncPathGrant::new("shared/*", false),
                SyncPathGrant::new("notes/readme", true),
            ]),
        }),
        ..ApiScope::default()
    };
    // What, room, document, token, how it is presented, the close code expected (none: admitted).
    type Case<'a> = (&'a str, &'a str, &'a str, Option<String>, Via, Option<u16>);
    let cases: Vec<Case<'_>> = vec![
        (
            "valid, as a bearer",
            ROOM,
            "doc",
            Some(valid.clone()),
            Via::Bearer,
            None,
        ),
        (
            "valid, in ?token=",
            ROOM,
            "doc",
            Some(valid.clone()),
            Via::Query,
            None,
        ),
        (
            "valid, as the subprotocol",
            ROOM,
            "doc",
            Some(valid.clone()),
            Via::Subprotocol,
            None,
        ),
        ("missing", ROOM, "doc", None, Via::Bearer, unauthorized),
        (
            "malformed",
            ROOM,
            "doc",
            Some("not-a-jwt".into()),
            Via::Bearer,
            unauthorized,
        ),
        (
            "forged signature",
            ROOM,
            "doc",
            Some(forged),
            Via::Bearer,
            unauthorized,
        ),
        (
            "alg none",
            ROOM,
            "doc",
            Some(unsigned(&claims(&key))),
            Via::Bearer,
            unauthorized,
        ),
        (
            "HS512",
            ROOM,
            "doc",
            Some(hs512(&claims(&key), &key.secret)),
            Via::Bearer,
            unauthorized,
        ),
        (
            "another key's secret",
            ROOM,
            "doc",
            Some(sign(&claims(&key), &other_key.secret)),
            Via::Bearer,
            unauthorized,
        ),
        (
            "expired",
            ROOM,
            "doc",
            Some(token(&key, |c| c.exp = Some(now() - 5))),
            Via::Bearer,
            unauthorized,
        ),
        (
            "not yet valid",
            ROOM,
            "doc",
            Some(token(&key, |c| c.nbf = Some(now() + 600))),
            Via::Bearer,
            unauthorized,
        ),
        (
            "nbf within the leeway",
            ROOM,
            "doc",
            Some(token(&key, |c| c.nbf = Some(now() + 30))),
            Via::Bearer,
            None,
        ),
        (
            "revoked key",
            ROOM,
            "doc",
            Some(token(&revoked_key, |_| {})),
            Via::Bearer,
            unauthorized,
        ),
        (
            "unknown key",
            ROOM,
            "doc",
            Some(token(&key, |c| {
                c.key = Some(roomd_room_apis::KeyId::from_random([7; 16]))
            })),
            Via::Bearer,
            unauthorized,
        ),
        (
            "another project's sub",
            ROOM,
            "doc",
            Some(token(&key, |c| c.project = Some(other_key.project))),
            Via::Bearer,
            unauthorized,
        ),
        (
            "empty name",
            ROOM,
            "doc",
            Some(token(&key, |c| c.name = String::new())),
            Via::Bearer,
            unauthorized,
        ),
        (
            "name over 128 characters",
            ROOM,
            "doc",
            Some(token(&key, |c| c.name = "n".repeat(129))),
            Via::Bearer,
            unauthorized,
        ),
        (
            "no exp",
            ROOM,
            "doc",
            Some(token(&key, |c| c.exp = None)),
            Via::Bearer,
            unauthorized,
        ),
        (
            "no exp, allowed by its project",
            ROOM,
            "doc",
            Some(token(&lenient_key, |c| c.exp = None)),
            Via::Bearer,
            None,
        ),
        (
            "another room",
            "room-b",
            "doc",
            Some(valid.clone()),
            Via::Bearer,
            forbidden,
        ),
        (
            "prefix grant, matching",
            "team-blue",
            "doc",
            Some(token(&key, |c| c.grants[0] = Grant::Room("team-*".into()))),
            Via::Bearer,
            None,
        ),
        (
            "prefix grant, not matching",
            "other-blue",
            "doc",
            Some(token(&key, |c| c.grants[0] = Grant::Room("team-*".into()))),
            Via::Bearer,
            forbidden,
        ),
        (
            "no api grant",
            ROOM,
            "doc",
            Some(token(&key, |c| {
                c.grants.retain(|g| !matches!(g, Grant::Api(_)))
            })),
            Via::Bearer,
            forbidden,
        ),
        (
            "api without sync",
            ROOM,
            "doc",
            Some(with_api(
                &key,
                ApiScope {
                    sync: None,
                    ..ApiScope::full()
                },
            )),
            Via::Bearer,
            forbidden,
        ),
        (
            "a path outside the sync grant",
            ROOM,
            "private/doc",
            Some(with_api(&key, read_only_docs.clone())),
            Via::Bearer,
            forbidden,
        ),
        (
            "a path inside the sync grant",
            ROOM,
            "shared/doc",
            Some(with_api(&key, read_only_docs.clone())),
            Via::Bearer,
            None,
        ),
        (
            "a read-only path",
            ROOM,
            "notes/readme",
            Some(with_api(&key, read_only_docs)),
            Via::Bearer,
            None,
        ),
        (
            "the API key itself",
            ROOM,
            "doc",
            Some(key.to_string()),
            Via::Bearer,
            None,
        ),
    ];
    assert!(cases.len() >= 20);
    // Refusals that concern the document, not the room: the room protocol admits such a token
    // (its `sync.open` of that document is refused instead).
    let doc_level = ["api without sync", "a path outside the sync grant"];
    for (what, room, doc, token, via, want) in cases {
        let got = attempt(&server, room, doc, token.as_deref(), via).await;
        assert_eq!(got, want, "{what}");
        // The same token on the room protocol's endpoint: refused by HTTP status, before the
        // upgrade.
        let status = match want {
            _ if doc_level.contains(&what) => 101,
            None => 101,
            Some(c) if c == CloseCode::Unauthorized.code() => 401,
            Some(_) => 403,
        };
        let got = attempt_room(&server, room, token.as_deref(), via).await;
        assert_eq!(got, status, "{what}, on the room protocol");
    }
    // Every refusal was counted by reason.
    assert!(server.metrics().refusals("expired") >= 1);
    assert!(server.metrics().refusals("wrong_room") >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refusals_are_json_errors_without_detail() {
    let (server, key) = secured().await;
    let valid = token(&key, |_| {});
    let no_developer = with_api(
        &key,
        ApiScope {
            developer: None,
            ..ApiScope::full()
        },
    );
    let expired = token(&key, |c| c.exp = Some(now() - 5));
    let path = format!("/v1/rooms/{ROOM}/participants");
    for (what, path, token, status, code) in [
        ("missing", path.clone(), None, 401, "unauthorized"),
        (
            "expired",
            path.clone(),
            Some(expired.as_str()),
            401,
            "unauthorized",
        ),
        (
            "another room",
            "/v1/rooms/room-b/participants".to_string(),
            Some(valid.as_str()),
            403,
            "forbidden",
        ),
        (
            "events without the developer grant",
            format!("/v1/rooms/{ROOM}/events"),
            Some(no_developer.as_str()),
            403,
            "forbidden",
        ),
        ("valid", path.clone(), Some(valid.as_str()), 200, ""),
    ] {
        let (got, body) = server.json("GET", &path, token, None).await;
        assert_eq!(got, status, "{what}: {body}");
        if status != 200 {
            assert_eq!(body["error"]["code"], code, "{what}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.contains(&key.secret), "{what}");
            assert!(!message.contains("eyJ"), "{what}: a token in {message}");
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_ends_as_soon_as_a_key_exists_and_anonymous_connections_are_refused() {
    let server = TestServer::start().await;
    let url = server.doc_url(ROOM, "doc");
    let mut anonymous = YClient::connect(&url, 1).await;
    anonymous.insert("t", 0, "open").await;
    anonymous.round_trip().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    // At once, without a restart: a new connection without a token is refused...
    assert_eq!(
        attempt(&server, ROOM, "doc", None, Via::Bearer).await,
        Some(CloseCode::Unauthorized.code())
    );
    // ...and one with a token gets what the open server stored.
    let c = YClient::connect_authorized(&url, &token(&key, |_| {}), 2).await;
    assert_eq!(c.text("t"), "open");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_participant_syncs_but_cannot_change_the_document() {
    let (server, key) = secured().await;
    let url = server.doc_url(ROOM, "notes/readme");
    let writer_token = token(&key, |_| {});
    let reader_token = with_api(
        &key,
        ApiScope {
            sync: Some(SyncGrant {
                paths: Some(vec![SyncPathGrant::new("notes/*", true)]),
            }),
            ..ApiScope::default()
        },
    );
    let mut writer = YClient::connect_authorized(&url, &writer_token, 1).await;
    writer.insert("t", 0, "written").await;
    let mut reader = YClient::connect_authorized(&url, &reader_token, 2).await;
    reader.until_text("t", "written").await;
    // The reader's edit is refused: the writer never sees it, the server is unchanged, and the
    // reader is told with the permission-denied message.
    reader.insert("t", 0, "vandal ").await;
    let denied = reader.until_permission_denied().await;
    assert_eq!(denied, roomd_sync::PERMISSION_DENIED);
    writer.round_trip().await;
    assert_eq!(writer.text("t"), "written");
    let fresh = YClient::connect_authorized(&url, &writer_token, 3).await;
    assert_eq!(fresh.text("t"), "written");
    assert!(server.metrics().updates_refused_total.get() >= 1);
    // A REST write with the read-only token is refused too.
    let update = {
        let doc = yrs::Doc::with_client_id(9);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        yrs::Text::insert(&t, &mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let (status, _) = server
        .http(
            "POST",
            &format!("/v1/rooms/{ROOM}/docs/notes/readme/update"),
            Some(&reader_token),
            &update,
        )
        .await;
    assert_eq!(status, 403);
    // .room/participants is read-only for everyone.
    let participants_url = server.doc_url(ROOM, ".room/participants");
    let mut p = YClient::connect_authorized(&participants_url, &writer_token, 4).await;
    p.insert("t", 0, "nope").await;
    p.until_permission_denied().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_refuses_the_old_keys_tokens_on_reconnect() {
    let (server, old) = secured().await;
    let url = server.doc_url(ROOM, "doc");
    let old_token = token(&old, |_| {});
    let mut c = YClient::connect_authorized(&url, &old_token, 1).await;
    c.insert("t", 0, "before").await;
    let new = ApiKey::parse(&server.create_key("default").await).unwrap();
    server
        .admin(
            "DELETE",
            &format!("/v1/projects/default/keys/{}", old.id),
            None,
        )
        .await;
    let keys = server.admin("GET", "/v1/projects/default/keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    assert!(
        !keys.to_string().contains(&new.secret),
        "a listing shows a secret"
    );
    assert_eq!(
        attempt(&server, ROOM, "doc", Some(&old_token), Via::Bearer).await,
        Some(CloseCode::Unauthorized.code())
    );
    let fresh = YClient::connect_authorized(&url, &token(&new, |_| {}), 2).await;
    assert_eq!(fresh.text("t"), "before");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_room_name_in_two_projects_is_two_rooms() {
    let (server, a) = secured().await;
    let b_project = server.create_project("b").await;
    let b = ApiKey::parse(&server.create_key(&b_project).await).unwrap();
    let url = server.doc_url(ROOM, "doc");
    let mut in_a = YClient::connect_authorized(&url, &token(&a, |_| {}), 1).await;
    in_a.insert("t", 0, "project a").await;
    in_a.round_trip().await;
    let in_b = YClient::connect_authorized(&url, &token(&b, |_| {}), 2).await;
    assert_eq!(in_b.text("t"), "");
    // A token naming project a but signed with b's key is refused, not let into a's room.
    let crossed = sign(&claims(&a), &b.secret);
    assert_eq!(
        attempt(&server, ROOM, "doc", Some(&crossed), Via::Bearer).await,
        Some(CloseCode::Unauthorized.code())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_are_limited_per_address_but_a_valid_token_still_connects() {
    let server = TestServer::start_with(|c| c.auth_failures_per_minute_max = 3).await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let unauthorized = Some(CloseCode::Unauthorized.code());
    for _ in 0..3 {
        assert_eq!(
            attempt(&server, ROOM, "doc", Some("bad"), Via::Bearer).await,
            unauthorized
        );
    }
    assert_eq!(
        attempt(&server, ROOM, "doc", Some("bad"), Via::Bearer).await,
        Some(CloseCode::TooManyFailures.code())
    );
    let (status, body) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/participants"),
            Some("bad"),
            None,
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        attempt(
            &server,
            ROOM,
            "doc",
            Some(&token(&key, |_| {})),
            Via::Bearer
        )
        .await,
        None
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_minted_by_the_meshagent_python_sdk_is_accepted_as_it_is() {
    let server = TestServer::start().await;
    let key = server.create_key("default").await;
    let token = roomd_tests::run_python("mint_token.py", &[&key, ROOM, "sdk-agent"]).await;
    let token = token.trim();
    let url = server.doc_url(ROOM, "doc");
    let mut c = YClient::connect_authorized(&url, token, 1).await;
    c.insert("t", 0, "from an SDK token").await;
    c.round_trip().await;
    let (status, body) = server
        .json(
            "GET",
            &format!("/v1/rooms/{ROOM}/participants"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let p = &body["participants"][0];
    assert_eq!(p["name"], "sdk-agent");
    assert_eq!(p["role"], "agent");
    // The SDK's token is for this room only.
    assert_eq!(
        attempt(&server, "elsewhere", "doc", Some(token), Via::Bearer).await,
        Some(CloseCode::Forbidden.code())
    );
    server.stop().await;
}
