//! Measures the resident memory an idle connection costs the real server: starts `roomd` on a
//! fresh data directory, opens N connections that complete the sync handshake and then stay
//! idle, and reads the server's VmRSS from /proc before and after.
//!
//! `cargo run --release -p roomd-tests --example idle_memory -- [N...]` (default 1000 5000 10000;
//! build `cargo build --release -p roomd` first, or set ROOMD_BIN).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomd_sync::{Message, SyncMessage};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn measure(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = std::env::var_os("ROOMD_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| roomd_tests::repo_root().join("target/release/roomd"));
    let mut child = tokio::process::Command::new(bin)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while tokio::net::TcpStream::connect(addr).await.is_err()
        || roomd_tests::http_get(addr, "/readyz").await.0 != 200
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = child.id().unwrap();
    // Connections spread over documents of 1,000 (below the per-document limit); one warm-up
    // connection per document so that rooms and documents exist before the baseline.
    let docs = n.div_ceil(1_000);
    let url = |i: usize| format!("ws://127.0.0.1:{port}/v1/rooms/idle/yjs/doc-{}", i % docs);
    let mut warm = Vec::new();
    for i in 0..docs {
        warm.push(handshake(&url(i)).await);
    }
    let before = rss_kib(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        conns.push(handshake(&url(i)).await);
    }
    let after = rss_kib(pid);
    let per_conn = (after.saturating_sub(before)) as f64 / n as f64;
    println!(
        "idle connections: {n:>6}  server RSS before {before:>7} KiB, after {after:>7} KiB, \
         added {:>7.1} MiB, {per_conn:.2} KiB per connection",
        (after - before) as f64 / 1024.0
    );
    println!(
        "{{\"scenario\":\"idle\",\"connections\":{n},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"kib_per_connection\":{per_conn:.3}}}"
    );
    drop(conns);
    child.kill().await.unwrap();
}

/// Connects, reads the server's step 1, sends an empty step 1 and reads the step 2.
async fn handshake(url: &str) -> roomd_tests::Ws {
    let mut ws = roomd_tests::connect(url).await;
    let _step1 = ws.next().await.unwrap().unwrap();
    ws.send(WsMessage::Binary(
        Message::Sync(SyncMessage::Step1(&[0])).to_vec().into(),
    ))
    .await
    .unwrap();
    loop {
        if let WsMessage::Binary(b) = ws.next().await.unwrap().unwrap() {
            if b.starts_with(&[0, 1]) {
                return ws;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 5_000, 10_000]
    } else {
        sizes
    };
    for n in sizes {
        measure(n).await;
    }
}
