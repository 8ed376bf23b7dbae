//! Durability under `kill -9`: the real binary is killed after its group commit and restarted;
//! nothing that was flushed may be missing, for many cycles in a row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use roomd_tests::{free_port, roomd_bin, roomd_command, run_node, YClient, WAIT};
use tokio::process::Child;

const CYCLES: usize = 20;
const UPDATES_PER_CYCLE: usize = 25;

async fn spawn(data_dir: &std::path::Path, port: u16) -> Child {
    spawn_with(data_dir, port, &[]).await
}

async fn spawn_with(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    roomd_tests::spawn_roomd(data_dir, port, extra).await
}

async fn wait_durable(port: u16) {
    roomd_tests::wait_durable(port).await
}

#[tokio::test]
async fn nothing_flushed_is_lost_across_repeated_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut expected = String::new();
    for cycle in 0..CYCLES {
        let port = free_port();
        // Odd cycles fold the log into snapshots constantly, so kills also land mid-compaction.
        let extra: &[&str] = if cycle % 2 == 1 {
            &["--compact-log-bytes", "64"]
        } else {
            &[]
        };
        let mut child = spawn_with(&data, port, extra).await;
        let url = format!("ws://127.0.0.1:{port}/v1/rooms/crash/yjs/doc");
        let mut writer = YClient::connect(&url, 1_000 + cycle as u32).await;
        assert_eq!(
            writer.text("t"),
            expected,
            "cycle {cycle}: flushed state is missing after kill -9"
        );
        let mut reader = YClient::connect(&url, 2_000 + cycle as u32).await;
        for i in 0..UPDATES_PER_CYCLE {
            let piece = format!("[{cycle}.{i}]");
            let at = writer.text("t").len() as u32;
            writer.insert("t", at, &piece).await;
            expected.push_str(&piece);
        }
        reader.until_text("t", &expected).await;
        wait_durable(port).await;
        // More writes that race with the kill: they may or may not survive, and must not harm.
        for i in 0..10 {
            writer.insert("scratch", 0, &format!("{cycle}.{i}")).await;
        }
        child.kill().await.unwrap();
    }
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let c = YClient::connect(&format!("ws://127.0.0.1:{port}/v1/rooms/crash/yjs/doc"), 9).await;
    assert_eq!(c.text("t"), expected);
    child.kill().await.unwrap();
}

/// Rich-text history (an offline delete, a concurrent format, an undo, the clients' formatting
/// cleanups) comes back exactly after `kill -9`, from a log folded into snapshots as it grows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_text_history_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let port = free_port();
    let mut child = spawn_with(&data, port, &["--compact-log-bytes", "64"]).await;
    let base = format!("ws://127.0.0.1:{port}/v1/rooms/rich/yjs");
    run_node("format-undo.mjs", &[&base, "record", state]).await;
    wait_durable(port).await;
    child.kill().await.unwrap();
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let base = format!("ws://127.0.0.1:{port}/v1/rooms/rich/yjs");
    run_node("format-undo.mjs", &[&base, "check", state]).await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn sigterm_closes_sockets_with_going_away_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let child = spawn(&data, port).await;
    let url = format!("ws://127.0.0.1:{port}/v1/rooms/term/yjs/doc");
    let mut a = YClient::connect(&url, 1).await;
    let mut b = YClient::connect(&url, 2).await;
    a.insert("t", 0, "kept").await;
    b.until_text("t", "kept").await;
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, _) = roomd_tests::expect_close(a.ws()).await;
    assert_eq!(code, roomd_sync::CloseCode::GoingAway.code());
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "roomd exited with {}", out.status);
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let c = YClient::connect(&format!("ws://127.0.0.1:{port}/v1/rooms/term/yjs/doc"), 3).await;
    assert_eq!(c.text("t"), "kept");
    child.kill().await.unwrap();
}

/// The one line a command printed.
fn one_line(out: &str) -> &str {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line, got {out:?}");
    lines[0]
}

fn participant_token(key: &str, room: &str) -> String {
    let out = std::process::Command::new(roomd_bin())
        .args([
            "token", "--key", key, "--room", room, "--name", "cli", "--ttl", "10m",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    one_line(&String::from_utf8(out.stdout).unwrap()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_work_on_a_stopped_and_on_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Stopped: straight on the store.
    let project = roomd_command(&data, &["project", "create", "acme"]);
    let project = one_line(&project).to_string();
    assert_eq!(project.len(), 36, "a UUID: {project}");
    let first = roomd_command(&data, &["key", "create", "--project", "acme"]);
    let first = one_line(&first).to_string();
    assert!(first.starts_with("ma-"));
    // Running: through its control socket (the store is locked by the server).
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let second = roomd_command(&data, &["key", "create", "--project", &project]);
    let second = one_line(&second).to_string();
    assert_ne!(first, second);
    let listed = roomd_command(&data, &["key", "list"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // The secret is what follows the key's third `-` (it may hold `-` itself).
    let secret = roomd_room_apis::ApiKey::parse(&first).unwrap().secret;
    assert!(!listed.contains(&secret), "a secret listed");
    let url = format!("ws://127.0.0.1:{port}/v1/rooms/r/yjs/doc");
    let first_token = participant_token(&first, "r");
    let mut c = YClient::connect_authorized(&url, &first_token, 1).await;
    c.insert("t", 0, "hi").await;
    // Revoking the first key, live: its token no longer connects, the second key's does.
    let first_id = listed.lines().next().unwrap().split('\t').next().unwrap();
    roomd_command(&data, &["key", "revoke", first_id]);
    let (mut refused, _) = roomd_tests::connect_with_headers(
        &url,
        &[("authorization", &format!("Bearer {first_token}"))],
    )
    .await;
    let (code, _) = roomd_tests::expect_close(&mut refused).await;
    assert_eq!(code, roomd_sync::CloseCode::Unauthorized.code());
    let d = YClient::connect_authorized(&url, &participant_token(&second, "r"), 2).await;
    assert_eq!(d.text("t"), "hi");
    child.kill().await.unwrap();
    // Stopped again: the revocation is on the store.
    let listed = roomd_command(&data, &["key", "list"]);
    assert!(
        listed.lines().next().unwrap().ends_with("revoked"),
        "{listed}"
    );
    let projects = roomd_command(&data, &["project", "list"]);
    assert!(projects.contains("acme") && projects.contains("default"));
}

#[tokio::test]
async fn auth_required_refuses_to_start_open() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(roomd_bin())
        .args([
            "serve",
            "--auth",
            "required",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--auth required"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_update_reaches_an_editor_live_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let url = format!("ws://127.0.0.1:{port}/v1/rooms/rest/yjs/doc");
    let mut editor = YClient::connect(&url, 1).await;
    let update = {
        use yrs::{Text, Transact};
        let doc = yrs::Doc::with_client_id(77);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, "durable before answered");
        txn.encode_update_v1()
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (status, _) = roomd_tests::http_request(
        addr,
        "POST",
        "/v1/rooms/rest/docs/doc/update",
        None,
        &[],
        &update,
    )
    .await;
    assert_eq!(status, 200);
    // Killed the moment the answer came: the answer came after the flush.
    child.kill().await.unwrap();
    editor.until_text("t", "durable before answered").await;
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let c = YClient::connect(&format!("ws://127.0.0.1:{port}/v1/rooms/rest/yjs/doc"), 2).await;
    assert_eq!(c.text("t"), "durable before answered");
    child.kill().await.unwrap();
}

/// Over the room protocol, an update acknowledged as durable (the `ack` extension of
/// `sync.open`) is never lost, whenever the process is killed: 20 `kill -9` cycles, each killed
/// right after an acknowledgement with more updates racing the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_room_protocol_updates_survive_kill_9() {
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Text, Transact};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut acknowledged = String::new();
    for cycle in 0..CYCLES {
        let port = free_port();
        let extra: &[&str] = if cycle % 2 == 1 {
            &["--compact-log-bytes", "64"]
        } else {
            &[]
        };
        let mut child = spawn_with(&data, port, extra).await;
        let url = format!("ws://127.0.0.1:{port}/rooms/acks");
        let mut c = roomd_tests::RoomProtoClient::connect(&url, None).await;
        let (call, state) = c.open_doc("doc", true).await;
        let doc = yrs::Doc::with_client_id(5_000 + cycle as u64);
        let text = doc.get_or_insert_text("t");
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&state).unwrap())
            .unwrap();
        let now = text.get_string(&doc.transact());
        assert!(
            now.starts_with(&acknowledged),
            "cycle {cycle}: acknowledged updates are missing after kill -9:\n  had {acknowledged:?}\n  got {now:?}"
        );
        // Whatever raced the last kill and survived is the base now.
        let mut expected = now;
        for i in 0..UPDATES_PER_CYCLE {
            let piece = format!("[{cycle}.{i}]");
            let update = {
                let mut txn = doc.transact_mut();
                let at = text.len(&txn);
                text.insert(&mut txn, at, &piece);
                txn.encode_update_v1()
            };
            expected.push_str(&piece);
            c.sync(&call, &update).await;
        }
        loop {
            let (chunk, _) = c.next_chunk(&call).await;
            let headers = &chunk["headers"];
            if headers["kind"] == "ack" && headers["updates"] == UPDATES_PER_CYCLE as u64 {
                break;
            }
        }
        acknowledged = expected;
        // More updates that race with the kill: they may or may not survive, and must not harm.
        for i in 0..10 {
            let update = {
                let mut txn = doc.transact_mut();
                let at = text.len(&txn);
                text.insert(&mut txn, at, &format!("<{cycle}.{i}>"));
                txn.encode_update_v1()
            };
            c.sync(&call, &update).await;
        }
        child.kill().await.unwrap();
    }
    let port = free_port();
    let mut child = spawn(&data, port).await;
    let c = YClient::connect(&format!("ws://127.0.0.1:{port}/v1/rooms/acks/yjs/doc"), 9).await;
    assert!(c.text("t").starts_with(&acknowledged));
    child.kill().await.unwrap();
}
