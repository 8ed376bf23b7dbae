//! Durability under `kill -9`: the real binary is killed after its group commit and restarted;
//! nothing that was flushed may be missing, for many cycles in a row.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use roomd_tests::{http_get, roomd_bin, run_node, YClient, WAIT};
use tokio::process::{Child, Command};

const CYCLES: usize = 20;
const UPDATES_PER_CYCLE: usize = 25;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn spawn(data_dir: &std::path::Path, port: u16) -> Child {
    spawn_with(data_dir, port, &[]).await
}

async fn spawn_with(data_dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    let child = Command::new(roomd_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .args(["--flush-interval-ms", "20"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
        {
            if http_get(addr, "/readyz").await.0 == 200 {
                return child;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "roomd did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(10)).await; // polling readiness, not a stand-in for it
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Waits until every storage write issued so far is covered by a completed flush.
async fn wait_durable(port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(addr, "/metrics").await;
        let written = metric(&body, "roomd_store_writes_total ");
        let durable = metric(&body, "roomd_store_durable_writes_total ");
        if written > 0 && durable >= written {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never became durable"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling the flush counter
    }
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
