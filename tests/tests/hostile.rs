//! Hostile input: each bad frame closes only the offending connection with a documented code,
//! while the server stays healthy and honest clients keep their document.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::SinkExt;
use roomd::Config;
use roomd_sync::websocket::opcode;
use roomd_sync::{awareness, CloseCode, Message as YMessage, SyncMessage};
use roomd_tests::{
    connect, expect_close, raw_upgrade, read_server_frame, TestServer, YClient, WAIT,
};
use tokio_tungstenite::tungstenite::Message;

/// Two honest clients sharing "base" in room `r`, document `d`.
async fn honest_pair(server: &TestServer) -> (YClient, YClient) {
    let url = server.doc_url("r", "d");
    let mut a = YClient::connect(&url, 1).await;
    let mut b = YClient::connect(&url, 2).await;
    a.insert("t", 0, "base").await;
    b.until_text("t", "base").await;
    (a, b)
}

/// After an attack: the server is healthy, and the honest clients still sync from the same state.
async fn assert_unharmed(server: &TestServer, a: &mut YClient, b: &mut YClient, round: usize) {
    assert_eq!(server.get("/healthz").await.0, 200);
    let before = a.text("t");
    let mark = format!("+{round}");
    a.insert("t", before.len() as u32, &mark).await;
    let want = format!("{before}{mark}");
    b.until_text("t", &want).await;
    let fresh = YClient::connect(&server.doc_url("r", "d"), 500 + round as u32).await;
    assert_eq!(fresh.text("t"), want);
}

fn frame(msg: YMessage<'_>) -> Vec<u8> {
    msg.to_vec()
}

fn awareness_frame(json: &str) -> Vec<u8> {
    awareness_frame_at(1, json)
}

fn awareness_frame_at(clock: u64, json: &str) -> Vec<u8> {
    let mut u = Vec::new();
    awareness::encode(
        [awareness::Entry {
            client_id: 77,
            clock,
            state_json: json,
        }]
        .into_iter(),
        &mut u,
    );
    frame(YMessage::Awareness(&u))
}

#[tokio::test]
async fn each_bad_frame_closes_only_its_sender_with_a_documented_code() {
    let server = TestServer::start().await;
    let (mut a, mut b) = honest_pair(&server).await;
    let billions = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let mut huge_update = billions.to_vec();
    huge_update.extend_from_slice(&[1, 1, 1, 1]);
    let mut huge_sv = billions.to_vec();
    huge_sv.extend_from_slice(&[1, 1]);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let subdoc = {
        use yrs::{Doc, Map, Transact, WriteTxn};
        let doc = Doc::with_client_id(66);
        let mut txn = doc.transact_mut();
        let m = txn.get_or_insert_map("m");
        m.insert(&mut txn, "sub", Doc::new());
        txn.encode_update_v1()
    };
    let cases: Vec<(&str, Message, CloseCode)> = vec![
        (
            "text frame",
            Message::Text("hello".into()),
            CloseCode::ProtocolError,
        ),
        (
            "empty frame",
            Message::Binary(Vec::new().into()),
            CloseCode::ProtocolError,
        ),
        (
            "unknown tag",
            Message::Binary(vec![9].into()),
            CloseCode::ProtocolError,
        ),
        (
            "unknown sync type",
            Message::Binary(vec![0, 7, 0].into()),
            CloseCode::ProtocolError,
        ),
        (
            "truncated varint",
            Message::Binary(vec![0, 2, 0x80].into()),
            CloseCode::ProtocolError,
        ),
        (
            "length beyond frame",
            Message::Binary(vec![0, 2, 10, 1, 2].into()),
            CloseCode::ProtocolError,
        ),
        (
            "absurd length",
            Message::Binary(vec![0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f].into()),
            CloseCode::TooLarge,
        ),
        (
            "garbage update",
            Message::Binary(frame(YMessage::Sync(SyncMessage::Update(&[0xff; 9]))).into()),
            CloseCode::ProtocolError,
        ),
        (
            "a subdocument",
            Message::Binary(frame(YMessage::Sync(SyncMessage::Update(&subdoc))).into()),
            CloseCode::ProtocolError,
        ),
        (
            "update claiming 2^32 structs",
            Message::Binary(frame(YMessage::Sync(SyncMessage::Update(&huge_update))).into()),
            CloseCode::ProtocolError,
        ),
        (
            "state vector claiming 2^32 entries",
            Message::Binary(frame(YMessage::Sync(SyncMessage::Step1(&huge_sv))).into()),
            CloseCode::ProtocolError,
        ),
        (
            "bad awareness JSON",
            Message::Binary(awareness_frame("{not json").into()),
            CloseCode::ProtocolError,
        ),
        (
            "deeply nested awareness JSON",
            Message::Binary(awareness_frame(&deep).into()),
            CloseCode::ProtocolError,
        ),
        (
            "awareness clock no Yjs client can decode",
            Message::Binary(awareness_frame_at(u64::MAX, "{}").into()),
            CloseCode::ProtocolError,
        ),
        (
            "awareness count lie",
            Message::Binary(frame(YMessage::Awareness(&[0xff, 0xff, 0xff, 0x0f, 1])).into()),
            CloseCode::ProtocolError,
        ),
        (
            "auth from a client",
            Message::Binary(frame(YMessage::AuthDenied("x")).into()),
            CloseCode::ProtocolError,
        ),
        (
            "trailing garbage after a message",
            Message::Binary(vec![3, 0xff].into()),
            CloseCode::ProtocolError,
        ),
    ];
    for (round, (name, msg, want)) in cases.into_iter().enumerate() {
        let mut evil = connect(&server.doc_url("r", "d")).await;
        evil.send(msg).await.unwrap();
        let (code, reason) = expect_close(&mut evil).await;
        assert_eq!(code, want.code(), "{name}: closed with {code} ({reason})");
        assert!(!reason.is_empty(), "{name}: close reason is empty");
        assert_unharmed(&server, &mut a, &mut b, round).await;
    }
    assert_eq!(server.metrics().closes(CloseCode::ProtocolError), 16);
    server.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_size_limit_is_refused() {
    let server =
        TestServer::start_with(|c: &mut Config| c.limits.message_bytes_max = 64 * 1024).await;
    let (mut a, mut b) = honest_pair(&server).await;
    let mut evil = connect(&server.doc_url("r", "d")).await;
    evil.send(Message::Binary(vec![0u8; 100 * 1024].into()))
        .await
        .unwrap();
    let (code, _) = expect_close(&mut evil).await;
    assert_eq!(code, CloseCode::TooLarge.code());
    // An update that fits the frame but not the document limit is refused the same way.
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_document_over_its_size_limit_refuses_the_update() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.message_bytes_max = 64 * 1024;
        c.limits.doc_bytes_max = 100 * 1024;
    })
    .await;
    let (mut a, mut b) = honest_pair(&server).await;
    let mut evil = YClient::connect(&server.doc_url("r", "d"), 66).await;
    let chunk = "x".repeat(40 * 1024);
    for i in 0..3 {
        evil.insert("other", 0, &chunk).await;
        if i < 2 {
            b.until(|c| c.text("other").len() >= (i + 1) * chunk.len())
                .await;
        }
    }
    let (code, _) = expect_close(evil.ws()).await;
    assert_eq!(code, CloseCode::TooLarge.code());
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.conn_messages_per_sec_max = 100;
        c.limits.conn_messages_burst_max = 200;
        // 800 messages over the burst take 8 s at the rate: a flood, not a fast writer.
        c.limits.conn_throttled_max = Duration::from_millis(300);
    })
    .await;
    let (mut a, mut b) = honest_pair(&server).await;
    let mut evil = connect(&server.doc_url("r", "d")).await;
    for _ in 0..1_000 {
        if evil.send(Message::Binary(vec![3].into())).await.is_err() {
            break;
        }
    }
    let (code, _) = expect_close(&mut evil).await;
    assert_eq!(code, CloseCode::RateLimited.code());
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_fast_writer_is_throttled_not_closed() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.conn_messages_per_sec_max = 1_000;
        c.limits.conn_messages_burst_max = 100;
    })
    .await;
    let (mut a, mut b) = honest_pair(&server).await;
    let mut fast = YClient::connect(&server.doc_url("r", "d"), 77).await;
    let started = std::time::Instant::now();
    // 1,500 updates without waiting for any: 1,400 over the burst at 1,000 a second.
    for i in 0..1_500 {
        fast.insert("fast", i, "x").await;
    }
    b.until(|c| c.text("fast").len() == 1_500).await;
    // Throttled: the last update cannot have been read before the rate allowed it...
    assert!(
        started.elapsed() >= Duration::from_millis(1_350),
        "1,500 messages read in {:?}",
        started.elapsed()
    );
    // ...but the writer was not closed: it still round-trips, and nothing was lost.
    fast.round_trip().await;
    assert_eq!(fast.text("fast").len(), 1_500);
    let throttled = server.metrics().reads_throttled_total.get();
    assert!(throttled > 0, "never throttled");
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn too_many_awareness_states_from_one_connection_are_refused() {
    let server = TestServer::start().await;
    let (mut a, mut b) = honest_pair(&server).await;
    let mut evil = connect(&server.doc_url("r", "d")).await;
    let json: Vec<String> = (0..100).map(|i| format!("{{\"n\":{i}}}")).collect();
    let mut u = Vec::new();
    awareness::encode(
        json.iter().enumerate().map(|(i, j)| awareness::Entry {
            client_id: 1000 + i as u64,
            clock: 1,
            state_json: j,
        }),
        &mut u,
    );
    evil.send(Message::Binary(frame(YMessage::Awareness(&u)).into()))
        .await
        .unwrap();
    let (code, _) = expect_close(&mut evil).await;
    assert_eq!(code, CloseCode::TooLarge.code());
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_disconnected_not_skipped() {
    let server = TestServer::start_with(|c: &mut Config| {
        c.limits.outbox_messages_max = 16;
        c.limits.message_bytes_max = 64 * 1024;
        c.limits.outbox_bytes_max = 64 * 1024;
        c.close_timeout = Duration::from_secs(20);
    })
    .await;
    let url = server.doc_url("r", "d");
    let mut slow = connect(&url).await; // never reads until the end
    let mut writer = YClient::connect(&url, 1).await;
    let chunk = "y".repeat(4096);
    let mut sent = 0usize;
    while server.metrics().closes(CloseCode::TooSlow) == 0 {
        assert!(sent < 20_000, "the slow reader was never disconnected");
        writer.insert("t", 0, &chunk).await;
        sent += 1;
        // The writer reads what comes back now and then (a room echoes merged updates to
        // their senders): only the slow reader may let its outbox fill.
        if sent % 8 == 0 {
            writer.round_trip().await;
        }
    }
    let (code, _) = expect_close(&mut slow).await;
    assert_eq!(code, CloseCode::TooSlow.code());
    // Reconnecting resyncs everything.
    let mut again = YClient::connect(&url, 2).await;
    let want = chunk.len() * sent;
    again.until(|c| c.text("t").len() == want).await;
    server.stop().await;
}

/// A client frame written byte for byte, bypassing the client library's checks.
fn raw_frame(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    let mut out = vec![first, (u8::from(masked) << 7) | payload.len() as u8];
    if masked {
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

#[tokio::test]
async fn frames_breaking_the_websocket_rfc_close_their_sender_with_4400() {
    use tokio::io::AsyncWriteExt;
    let server = TestServer::start().await;
    let url = server.doc_url("r", "d");
    let mut other = YClient::connect(&url, 1).await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", raw_frame(0x82, false, &[0, 0, 0])),
        ("reserved bit", raw_frame(0xC2, true, &[0, 0, 0])),
        ("unknown opcode", raw_frame(0x83, true, &[])),
        ("fragmented ping", raw_frame(0x09, true, b"p")),
        ("continuation first", raw_frame(0x80, true, &[0])),
        ("close code 1005", raw_frame(0x88, true, &[0x03, 0xED])),
    ];
    for (what, bytes) in cases {
        let mut ws = connect(&url).await;
        let tcp = match ws.get_mut() {
            tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
            _ => unreachable!("plain TCP"),
        };
        tcp.write_all(&bytes).await.unwrap();
        let (code, reason) = expect_close(&mut ws).await;
        assert_eq!(code, CloseCode::ProtocolError.code(), "{what}: {reason}");
        assert!(reason.starts_with("invalid frame"), "{what}: {reason}");
    }
    // Nobody else noticed.
    other.insert("t", 0, "still here").await;
    other.round_trip().await;
    assert_eq!(server.metrics().closes(CloseCode::ProtocolError), 6);
    server.stop().await;
}

/// The header of a masked client frame announcing `len` payload bytes in the 64-bit form.
fn raw_header(first: u8, len: u64, mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&mask);
    out
}

/// The resident memory of this process (server and clients), where `/proc` tells it.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Streams `frames` (first byte, payload length; the payload is masked zeros) after the
/// upgrade, in writes of 64 KiB, while reading what the server sends, then answers its close
/// frame. The frames must be refused as too large: the test checks that the close frame (4413,
/// with a reason) comes while the payload is still being written, that the server reads all of
/// it without a reset, and then ends the connection cleanly once the client's close arrives.
async fn stream_past_the_limit(server: &TestServer, frames: &[(u8, u64)]) {
    use tokio::io::AsyncWriteExt;
    const CHUNK: usize = 64 << 10;
    let tcp = raw_upgrade(server.addr(), "/v1/rooms/r/yjs/d").await;
    let (mut rd, mut wr) = tcp.into_split();
    let mask = [0x5a, 0xc3, 0x0f, 0x96];
    // Masked zeros are the mask repeated; a chunk is a multiple of 4 bytes, so all are alike.
    let chunk: Vec<u8> = (0..CHUNK).map(|i| mask[i % 4]).collect();
    let (seen_tx, mut seen_rx) = tokio::sync::oneshot::channel();
    // The client reads while it writes, as a client library does.
    let reader = tokio::spawn(async move {
        // The server's first frames (its sync step 1), then its close frame.
        let close = loop {
            match read_server_frame(&mut rd).await {
                Ok(Some((opcode::CLOSE, payload))) => break payload,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the connection ended without a close frame"),
                Err(e) => panic!("the connection failed before a close frame: {e}"),
            }
        };
        let _ = seen_tx.send(());
        // Nothing follows the close frame but the end of the stream.
        let end = read_server_frame(&mut rd).await;
        (close, end)
    });
    let resident_before = resident_bytes();
    let total: u64 = frames.iter().map(|&(_, len)| len).sum();
    let mut written = 0;
    for &(first, len) in frames {
        wr.write_all(&raw_header(first, len, mask)).await.unwrap();
        let mut left = len;
        while left > 0 {
            let n = CHUNK.min(usize::try_from(left).unwrap());
            if let Err(e) = wr.write_all(&chunk[..n]).await {
                panic!("the connection failed after {written} of {total} payload bytes: {e}");
            }
            left -= n as u64;
            written += n as u64;
        }
    }
    let resident_after = resident_bytes();
    // The close frame came at once, while the payload was still being written.
    assert!(
        seen_rx.try_recv().is_ok(),
        "no close frame before the payload ended"
    );
    // Having finished its message, the client answers the close with the server's code.
    let close_answer = raw_frame(0x88, true, &CloseCode::TooLarge.code().to_be_bytes());
    wr.write_all(&close_answer).await.unwrap();
    let (close, end) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the server never ended the connection")
        .unwrap();
    let (code, reason) = close.split_at(2);
    assert_eq!(code, CloseCode::TooLarge.code().to_be_bytes());
    let reason = std::str::from_utf8(reason).unwrap();
    assert!(!reason.is_empty(), "the close frame has no reason");
    match end {
        Ok(None) => {}
        Ok(Some((op, _))) => panic!("a frame of opcode {op} after the close frame"),
        Err(e) => panic!("the connection was reset instead of closed: {e}"),
    }
    if let (Some(before), Some(after)) = (resident_before, resident_after) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < total / 2,
            "memory grew by {grown} bytes while {total} were discarded"
        );
    }
}

#[tokio::test]
async fn a_frame_announced_far_over_the_limit_gets_its_close_frame_not_a_reset() {
    // The defaults: messages of at most 8 MiB, and 5 s for the closing handshake.
    let server = TestServer::start().await;
    let (mut a, mut b) = honest_pair(&server).await;
    stream_past_the_limit(&server, &[(0x82, 200 << 20)]).await;
    // A message over the limit by its fragments: the fragment that crosses the limit and the
    // ones after it are discarded alike.
    stream_past_the_limit(
        &server,
        &[(0x02, 4 << 20), (0x00, 200 << 20), (0x80, 1 << 20)],
    )
    .await;
    assert_eq!(server.metrics().closes(CloseCode::TooLarge), 2);
    assert_unharmed(&server, &mut a, &mut b, 0).await;
    server.stop().await;
}
