//! Helpers for roomd's integration tests: the real server on 127.0.0.1:0, a y-websocket client
//! built on yrs, a raw WebSocket client for hostile input, and a runner for Node interop scripts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomd::{Config, Server};
use roomd_sync::{Message as YMessage, MessageLimits, SyncMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// How long any awaited condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The real server, in process, on a loopback port, with its own data directory.
#[derive(Debug)]
pub struct TestServer {
    server: Option<Server>,
    config: Config,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the default configuration and a fresh data directory.
    pub async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    /// A server with a fresh data directory and the configuration adjusted by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let server = Server::start(config.clone()).await.unwrap();
        TestServer {
            server: Some(server),
            config,
            _dir: Some(dir),
        }
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("server is running")
    }

    /// The listening address.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server().local_addr()
    }

    /// `ws://ADDR/v1/rooms`.
    pub fn rooms_base(&self) -> String {
        format!("ws://{}/v1/rooms", self.addr())
    }

    /// `ws://ADDR/v1/rooms/{room}/yjs`, the server URL a y-websocket provider uses.
    pub fn yjs_base(&self, room: &str) -> String {
        format!("{}/{room}/yjs", self.rooms_base())
    }

    /// The URL of one document.
    pub fn doc_url(&self, room: &str, doc: &str) -> String {
        format!("{}/{doc}", self.yjs_base(room))
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &roomd::Metrics {
        &self.server().ctx().metrics
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Stops gracefully and starts again on the same data directory (the port may change).
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        self.server = Some(Server::start(config).await.unwrap());
    }

    /// Stops gracefully.
    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    /// GETs `path` over plain HTTP/1.1 and returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr(), path).await
    }
}

/// A minimal HTTP/1.1 GET, enough for health and metrics endpoints.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A raw WebSocket connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a raw WebSocket to `url` (with Nagle's algorithm off, as browsers have it).
pub async fn connect(url: &str) -> Ws {
    let connecting = tokio_tungstenite::connect_async_with_config(url, None, true);
    let (ws, _) = tokio::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    ws
}

/// Opens a WebSocket to `path` on `addr` over a bare TCP stream, for tests that write frames
/// byte for byte and read the server's frames themselves. The answer is read a byte at a time,
/// so that no byte after it (the server's first frames) is taken from the stream.
pub async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upgrade = async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            assert!(answer.len() < 4096, "the upgrade's answer never ended");
            answer.push(tcp.read_u8().await.unwrap());
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 101"),
            "the upgrade was refused: {answer}"
        );
        tcp
    };
    tokio::time::timeout(WAIT, upgrade)
        .await
        .expect("upgrade timed out")
}

/// Reads one frame the server wrote (unmasked, as RFC 6455 requires of a server): its opcode
/// and payload. `None` when the stream ends cleanly before a frame begins.
pub async fn read_server_frame(
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    match rd.read(&mut head[..1]).await? {
        0 => return Ok(None),
        _ => rd.read_exact(&mut head[1..]).await?,
    };
    assert_eq!(head[0] & 0x70, 0, "a reserved bit is set");
    assert_eq!(head[1] & 0x80, 0, "a server frame is masked");
    let len = match head[1] & 0x7F {
        126 => u64::from(rd.read_u16().await?),
        127 => rd.read_u64().await?,
        n => u64::from(n),
    };
    assert!(len <= 1 << 30, "a server frame announces {len} bytes");
    let mut payload = vec![0; usize::try_from(len).unwrap()];
    rd.read_exact(&mut payload).await?;
    Ok(Some((head[0] & 0x0F, payload)))
}

/// Reads until the server closes, returning the close code and reason, and completes the
/// closing handshake. Binary frames before the close are skipped.
pub async fn expect_close(ws: &mut Ws) -> (u16, String) {
    let read = async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(Some(frame))) => {
                    return (u16::from(frame.code), frame.reason.to_string());
                }
                Ok(Message::Close(None)) => return (1005, String::new()),
                Ok(_) => continue,
                Err(e) => panic!("connection failed before a close frame: {e}"),
            }
        }
        panic!("connection ended without a close frame")
    };
    let close = tokio::time::timeout(WAIT, read)
        .await
        .expect("no close frame in time");
    // Reading on sends the answering close frame; the stream then ends.
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
    close
}

/// Sends a close frame (normal) and drains until the server answers.
pub async fn close_normally(ws: &mut Ws) {
    let _ = ws
        .send(Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: WsCloseCode::Normal,
                reason: "".into(),
            },
        )))
        .await;
    let _ = tokio::time::timeout(WAIT, async { while ws.next().await.is_some() {} }).await;
}

const LIMITS: MessageLimits = MessageLimits {
    payload_bytes_max: usize::MAX,
};

/// A y-websocket client built on yrs, speaking the protocol as stock providers do.
pub struct YClient {
    /// The client's replica.
    pub doc: Doc,
    ws: Ws,
    /// Awareness updates received, raw.
    pub awareness: Vec<Vec<u8>>,
}

impl std::fmt::Debug for YClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YClient").finish_non_exhaustive()
    }
}

impl YClient {
    /// Connects with a fresh document and completes the handshake: waits for the server's
    /// step 1, answers it, sends its own step 1 and waits for the step 2.
    pub async fn connect(url: &str, client_id: u32) -> YClient {
        YClient::connect_with(url, Doc::with_client_id(u64::from(client_id))).await
    }

    /// Connects with an existing replica (a reconnect after offline edits).
    pub async fn connect_with(url: &str, doc: Doc) -> YClient {
        let ws = connect(url).await;
        let mut c = YClient {
            doc,
            ws,
            awareness: Vec::new(),
        };
        let sv = c.doc.transact().state_vector().encode_v1();
        c.send(YMessage::Sync(SyncMessage::Step1(&sv))).await;
        let mut got_step1 = false;
        let mut got_step2 = false;
        while !(got_step1 && got_step2) {
            let frame = c.next_frame().await;
            for msg in roomd_sync::decode_frame(&frame, LIMITS).unwrap() {
                match msg {
                    YMessage::Sync(SyncMessage::Step1(_)) => got_step1 = true,
                    YMessage::Sync(SyncMessage::Step2(_)) => got_step2 = true,
                    _ => {}
                }
            }
            c.handle(&frame).await;
        }
        c
    }

    /// Sends one message in its own frame.
    pub async fn send(&mut self, msg: YMessage<'_>) {
        self.ws
            .send(Message::Binary(msg.to_vec().into()))
            .await
            .unwrap();
    }

    /// Sends raw bytes as one binary frame.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    async fn next_frame(&mut self) -> Vec<u8> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no message in time")
                .expect("connection ended")
                .expect("connection failed");
            match msg {
                Message::Binary(b) => return b.to_vec(),
                Message::Close(f) => panic!("server closed the connection: {f:?}"),
                _ => continue,
            }
        }
    }

    async fn handle(&mut self, frame: &[u8]) {
        for msg in roomd_sync::decode_frame(frame, LIMITS).unwrap() {
            match msg {
                YMessage::Sync(SyncMessage::Step1(sv)) => {
                    let sv = StateVector::decode_v1(sv).unwrap();
                    let diff = self.doc.transact().encode_state_as_update_v1(&sv);
                    self.send(YMessage::Sync(SyncMessage::Step2(&diff))).await;
                }
                YMessage::Sync(SyncMessage::Step2(u) | SyncMessage::Update(u)) => {
                    let u = Update::decode_v1(u).unwrap();
                    self.doc.transact_mut().apply_update(u).unwrap();
                }
                YMessage::Awareness(a) => self.awareness.push(a.to_vec()),
                _ => {}
            }
        }
    }

    /// Inserts `text` at the start of the text `name` and sends the update.
    pub async fn insert(&mut self, name: &str, index: u32, text: &str) {
        let update = {
            let t = self.doc.get_or_insert_text(name);
            let mut txn = self.doc.transact_mut();
            t.insert(&mut txn, index, text);
            txn.encode_update_v1()
        };
        self.send(YMessage::Sync(SyncMessage::Update(&update)))
            .await;
    }

    /// The content of text `name`.
    pub fn text(&self, name: &str) -> String {
        let t = self.doc.get_or_insert_text(name);
        let txn = self.doc.transact();
        t.get_string(&txn)
    }

    /// Processes incoming frames until `done` holds (fails after [`WAIT`]).
    pub async fn until(&mut self, mut done: impl FnMut(&YClient) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached in time"
            );
            let frame = self.next_frame().await;
            self.handle(&frame).await;
        }
    }

    /// Sends sync step 1 and processes frames until the step 2 answering it arrives. The room
    /// handles a connection's frames in order, so everything sent before has then been applied.
    pub async fn round_trip(&mut self) {
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(YMessage::Sync(SyncMessage::Step1(&sv))).await;
        loop {
            let frame = self.next_frame().await;
            let answered = roomd_sync::decode_frame(&frame, LIMITS)
                .unwrap()
                .iter()
                .any(|m| matches!(m, YMessage::Sync(SyncMessage::Step2(_))));
            self.handle(&frame).await;
            if answered {
                return;
            }
        }
    }

    /// Waits until text `name` equals `want`.
    pub async fn until_text(&mut self, name: &str, want: &str) {
        self.until(|c| c.text(name) == want).await;
    }

    /// The raw socket, for tests that misbehave after a proper handshake.
    pub fn ws(&mut self) -> &mut Ws {
        &mut self.ws
    }

    /// Closes the connection normally and returns the replica.
    pub async fn close(mut self) -> Doc {
        close_normally(&mut self.ws).await;
        self.doc
    }
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `node tests/interop/<script> <args...>` with a 60 s timeout and panics with its output
/// if it fails. Panics with instructions if the npm packages are not installed.
pub async fn run_node(script: &str, args: &[&str]) {
    let dir = repo_root().join("tests/interop");
    assert!(
        dir.join("node_modules").is_dir(),
        "the Node interop packages are missing: run `npm ci` in {} (scripts/test does it)",
        dir.display()
    );
    let mut cmd = tokio::process::Command::new("node");
    cmd.current_dir(&dir)
        .arg(script)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("node {script} timed out after 60 s"))
        .unwrap_or_else(|e| panic!("could not run node (is Node.js installed?): {e}"));
    if !out.status.success() {
        panic!(
            "node {script} {args:?} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `roomd` binary built next to the tests (`cargo build -p roomd` first; the test script
/// does), or `$ROOMD_BIN`.
pub fn roomd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ROOMD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let exe = std::env::current_exe().unwrap();
    // Tests run from target/<profile>/deps; the binary is in target/<profile>.
    let from_exe = exe.parent().and_then(Path::parent).map(|p| p.join("roomd"));
    let candidates = [from_exe, Some(target.join("debug/roomd"))];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    panic!("the roomd binary is missing: run `cargo build -p roomd` first (scripts/test does it)");
}
