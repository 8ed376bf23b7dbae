//! Interop with the real npm packages: each test starts the server and runs a Node script from
//! `tests/interop` that drives stock `yjs` documents through the `y-websocket` providers (v3 and
//! v2) against it. The scripts check the content themselves and exit non-zero on any mismatch.
//!
//! Needs Node.js and the packages installed with `npm ci` in `tests/interop`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_tests::{run_node, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_from_v2_and_v3_providers_converge() {
    let server = TestServer::start().await;
    run_node("converge.mjs", &[&server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_whole_state() {
    let server = TestServer::start().await;
    run_node("late-joiner.mjs", &[&server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_is_relayed_and_removed_when_a_client_leaves_or_vanishes() {
    let server = TestServer::start().await;
    run_node("awareness.mjs", &[&server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_merge_on_reconnect() {
    let server = TestServer::start().await;
    run_node("offline.mjs", &[&server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_insert_syncs() {
    let server = TestServer::start().await;
    run_node("big-insert.mjs", &[&server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_documents_in_two_rooms_stay_isolated() {
    let server = TestServer::start().await;
    run_node(
        "isolation.mjs",
        &[&server.yjs_base("room-x"), &server.yjs_base("room-y")],
    )
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_survives_a_restart() {
    let mut server = TestServer::start().await;
    run_node("restart.mjs", &["write", &server.yjs_base("room-x")]).await;
    server.restart().await;
    run_node("restart.mjs", &["check", &server.yjs_base("room-x")]).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_delete_that_meets_a_format_and_is_undone_converges_and_survives_a_restart() {
    let mut server = TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    run_node(
        "format-undo.mjs",
        &[&server.yjs_base("room-x"), "record", state],
    )
    .await;
    server.restart().await;
    run_node(
        "format-undo.mjs",
        &[&server.yjs_base("room-x"), "check", state],
    )
    .await;
    server.stop().await;
}

/// Seeds 0..400 of `rich-seeds.mjs`; `node rich-seeds.mjs URL FIRST COUNT` runs others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_rich_text_runs_with_offline_periods_and_undo_converge() {
    let server = TestServer::start().await;
    run_node("rich-seeds.mjs", &[&server.yjs_base("room-x"), "0", "400"]).await;
    server.stop().await;
}

fn stock_token(
    key: &roomd_room_apis::ApiKey,
    name: &str,
    api: roomd_room_apis::ApiScope,
) -> String {
    let request = roomd::auth::TokenRequest {
        room: "room-x".into(),
        name: name.into(),
        role: roomd_room_apis::Role::User,
        api,
        ttl: Some(std::time::Duration::from_secs(600)),
    };
    roomd::auth::mint_token(key, &request).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_providers_with_tokens_sync_and_a_refused_one_stops() {
    use roomd_room_apis::{ApiKey, ApiScope, SyncGrant, SyncPathGrant};
    let server = TestServer::start().await;
    let key = ApiKey::parse(&server.create_key("default").await).unwrap();
    let read_only = ApiScope {
        sync: Some(SyncGrant {
            paths: Some(vec![SyncPathGrant::new("notes/*", true)]),
        }),
        ..ApiScope::default()
    };
    let mut refused_claims = roomd_room_apis::Claims::new("mallory");
    refused_claims.grants = vec![roomd_room_apis::Grant::Room("room-x".into())];
    refused_claims.project = Some(key.project);
    refused_claims.key = Some(key.id);
    refused_claims.exp = Some(1);
    let expired = roomd_room_apis::mint(&refused_claims, &key.secret).unwrap();
    run_node(
        "auth.mjs",
        &[
            &server.yjs_base("room-x"),
            &stock_token(&key, "alice", ApiScope::full()),
            &stock_token(&key, "bob", ApiScope::full()),
            &expired,
            &stock_token(&key, "reader", read_only),
        ],
    )
    .await;
    // Stock providers re-broadcast each other's awareness: none of that is spoofing.
    assert_eq!(server.metrics().awareness_spoofed_total.get(), 0);
    assert!(server.metrics().updates_refused_total.get() >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_provider_closed_as_a_slow_reader_reconnects_and_resyncs() {
    // A small outbox: the reader that stops reading fills it soon after its kernel buffers.
    let server = TestServer::start_with(|c| {
        c.limits.message_bytes_max = 256 << 10;
        c.limits.outbox_bytes_max = 256 << 10;
        // The writer reads whatever it is sent at once, and stays well below this.
        c.limits.outbox_messages_max = 64;
        // Time enough for the reader to read what its kernel buffers hold, then the close.
        c.close_timeout = std::time::Duration::from_secs(30);
    })
    .await;
    let key = roomd_room_apis::ApiKey::parse(&server.create_key("default").await).unwrap();
    let full = roomd_room_apis::ApiScope::full();
    let participants = format!("http://{}/v1/rooms/room-x/participants", server.addr());
    roomd_tests::run_node_for(
        "slow-reader.mjs",
        &[
            &server.yjs_base("room-x"),
            &participants,
            &stock_token(&key, "reader", full.clone()),
            &stock_token(&key, "writer", full),
        ],
        std::time::Duration::from_secs(120),
    )
    .await;
    assert_eq!(
        server.metrics().closes(roomd_sync::CloseCode::TooSlow),
        1,
        "the reader, and only the reader, was closed as slow"
    );
    server.stop().await;
}
