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
        // sled releases its lock on the directory once its background threads have stopped:
        // poll for that, as a restarted process would find it released.
        let deadline = tokio::time::Instant::now() + WAIT;
        self.server = Some(loop {
            match Server::start(config.clone()).await {
                Ok(server) => break server,
                Err(e)
                    if tokio::time::Instant::now() < deadline
                        && format!("{e:#}").contains("lock") =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await; // polling sled's lock
                }
                Err(e) => panic!("restarting: {e:#}"),
            }
        });
    }

    /// Stops gracefully.
    pub async fn stop(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    /// GETs `path` over plain HTTP/1.1 and returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr(), path).await
    }

    /// Sends an HTTP request with optional bearer token and body; returns (status, body).
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        http_request(self.addr(), method, path, bearer, &[], body).await
    }

    /// Like [`TestServer::http`], with the body read as JSON (`null` when it is not).
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let (status, answer) = self.http(method, path, bearer, body.as_bytes()).await;
        (
            status,
            serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
        )
    }

    /// An admin request through the server's control socket, as the `roomd` command sends it.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let answer = roomd::control::request(&self.config, method, path, body)
            .await
            .unwrap();
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
        answer.body
    }

    /// Creates a project; returns its id.
    pub async fn create_project(&self, name: &str) -> String {
        let p = self
            .admin(
                "POST",
                "/v1/projects",
                Some(serde_json::json!({ "name": name })),
            )
            .await;
        p["id"].as_str().unwrap().to_string()
    }

    /// Creates an API key for a project (id or name); returns it whole (`ma-…`). Once a key
    /// exists the server requires tokens.
    pub async fn create_key(&self, project: &str) -> String {
        let k = self
            .admin("POST", &format!("/v1/projects/{project}/keys"), None)
            .await;
        k["key"].as_str().unwrap().to_string()
    }
}

/// Waits until `cond` holds, polling it (for gauges and counters that no event announces);
/// fails after [`WAIT`].
pub async fn eventually(mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await; // polling a gauge
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Its `id:`.
    pub id: Option<String>,
    /// Its `event:`.
    pub event: Option<String>,
    /// Its `data:`.
    pub data: String,
}

/// A client of a Server-Sent Events stream, over a bare HTTP/1.1 connection.
#[derive(Debug)]
pub struct SseClient {
    tcp: TcpStream,
    /// Bytes of the body read, chunk framing removed, not yet parsed.
    text: String,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
}

impl SseClient {
    /// Opens `path` with a bearer token and, to resume, a `Last-Event-ID`; fails unless the
    /// answer is 200.
    pub async fn open(
        addr: std::net::SocketAddr,
        path: &str,
        bearer: &str,
        last_event_id: Option<u64>,
    ) -> SseClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {bearer}\r\n"
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            assert!(head.len() < 8192, "the answer's head never ended");
            head.push(
                tokio::time::timeout(WAIT, tcp.read_u8())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "the stream was refused: {head}"
        );
        SseClient {
            tcp,
            text: String::new(),
            raw: Vec::new(),
        }
    }

    /// The next event (keep-alive comments are skipped); fails after [`WAIT`].
    pub async fn next_event(&mut self) -> SseEvent {
        use tokio::io::AsyncReadExt;
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut event = SseEvent {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        event.id = Some(v.trim().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event.event = Some(v.trim().to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data:") {
                        event.data.push_str(v.trim_start());
                        any = true;
                    }
                }
                if any {
                    return event;
                }
                continue;
            }
            // De-chunk what has arrived.
            while let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.raw[..eol]).trim(), 16)
                        .expect("a chunk size");
                if self.raw.len() < eol + 2 + size + 2 {
                    break;
                }
                let chunk = self.raw[eol + 2..eol + 2 + size].to_vec();
                self.raw.drain(..eol + 2 + size + 2);
                self.text.push_str(&String::from_utf8_lossy(&chunk));
            }
            if self.text.contains("\n\n") {
                continue;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
                .await
                .expect("no event in time")
                .unwrap();
            assert!(n > 0, "the stream ended");
            self.raw.extend_from_slice(&buf[..n]);
        }
    }
}

/// A minimal HTTP/1.1 request: method, path, optional bearer token, extra headers, body.
/// Returns the status and the body (chunked bodies are decoded).
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = bearer {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("no answer in time")
        .unwrap();
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an answer with a head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let mut rest = buf[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(eol) = rest[at..].windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&rest[at..at + eol]).trim(), 16)
                    .unwrap_or(0);
            if size == 0 {
                break;
            }
            let start = at + eol + 2;
            out.extend_from_slice(&rest[start..start + size]);
            at = start + size + 2;
        }
        rest = out;
    }
    (status, rest)
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
    connect_with_headers(url, &[]).await.0
}

/// Opens a raw WebSocket to `url` with extra request headers (`Authorization`,
/// `Sec-WebSocket-Protocol`); returns it with the server's answer to the upgrade.
pub async fn connect_with_headers(
    url: &str,
    headers: &[(&str, &str)],
) -> (
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let connecting = tokio_tungstenite::connect_async_with_config(request, None, true);
    tokio::time::timeout(WAIT, connecting)
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
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
    /// Reasons of the permission-denied messages received.
    pub denied: Vec<String>,
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
        YClient::connect_as(url, &[], doc).await
    }

    /// Connects with extra request headers (a token), with a fresh document.
    pub async fn connect_authorized(url: &str, token: &str, client_id: u32) -> YClient {
        let bearer = format!("Bearer {token}");
        YClient::connect_as(
            url,
            &[("authorization", &bearer)],
            Doc::with_client_id(u64::from(client_id)),
        )
        .await
    }

    /// Connects with extra request headers and an existing replica.
    pub async fn connect_as(url: &str, headers: &[(&str, &str)], doc: Doc) -> YClient {
        let (ws, _) = connect_with_headers(url, headers).await;
        let mut c = YClient {
            doc,
            ws,
            awareness: Vec::new(),
            denied: Vec::new(),
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
                YMessage::AuthDenied(reason) => self.denied.push(reason.to_string()),
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

    /// Appends a MeshDocument `paragraph` element (`$id` `id`, `text` `text`) to the `xml`
    /// root, as an editor sharing content with room-protocol clients does, and sends it.
    pub async fn push_paragraph(&mut self, id: &str, text: &str) {
        use yrs::{Xml, XmlElementPrelim, XmlFragment};
        let update = {
            let xml = self.doc.get_or_insert_xml_fragment("xml");
            let mut txn = self.doc.transact_mut();
            let p = xml.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.insert_attribute(&mut txn, "$id", id);
            p.insert_attribute(&mut txn, "text", text);
            txn.encode_update_v1()
        };
        self.send(YMessage::Sync(SyncMessage::Update(&update)))
            .await;
    }

    /// Processes frames until a permission-denied message arrives; returns its reason.
    pub async fn until_permission_denied(&mut self) -> String {
        self.until(|c| !c.denied.is_empty()).await;
        self.denied[0].clone()
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
    run_node_for(script, args, Duration::from_secs(60)).await;
}

/// [`run_node`] with a longer time limit, for scripts that move a lot of data.
pub async fn run_node_for(script: &str, args: &[&str], limit: Duration) {
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
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("node {script} timed out after {} s", limit.as_secs()))
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

/// A counter of `/metrics` text (`name` with its trailing space).
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// Waits until every storage write of the server on `port` so far is covered by a completed
/// flush.
pub async fn wait_durable(port: u16) {
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

/// A port free on 127.0.0.1 now, for a server process that must come back on the same one.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the `roomd` binary on `127.0.0.1:port` over `data_dir` (flushing every 20 ms, with
/// `extra` arguments) and waits until it is ready.
pub async fn spawn_roomd(data_dir: &Path, port: u16, extra: &[&str]) -> tokio::process::Child {
    let child = tokio::process::Command::new(roomd_bin())
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
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
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

/// `roomd ARGS…` on `data_dir`; returns its standard output, failing if it fails.
pub fn roomd_command(data_dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(roomd_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "roomd {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

/// The example agent of `clients/rust` (`target/<profile>/examples/agent`, which `cargo test`
/// builds, as does `cargo build -p roomd-client --examples`).
pub fn example_agent_bin() -> PathBuf {
    example_bin("agent")
}

/// The example `name` of `clients/rust` (`target/<profile>/examples/<name>`, which `cargo
/// test` builds, as does `cargo build -p roomd-client --examples`).
pub fn example_bin(name: &str) -> PathBuf {
    let dir = roomd_bin()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let exe = dir.join("examples").join(name);
    assert!(
        exe.is_file(),
        "the example {name} is missing: run `cargo build -p roomd-client --examples` (scripts/test does it)"
    );
    exe
}

/// The Python of the MeshAgent SDK's environment (`tests/python/.venv`).
pub fn sdk_python() -> PathBuf {
    let python = repo_root().join("tests/python/.venv/bin/python");
    assert!(
        python.is_file(),
        "the Python environment is missing: run scripts/test, which creates {} from tests/python/requirements.txt",
        python.display()
    );
    python
}

/// Runs `tests/python/<script> <args...>` with the virtual environment's Python (the MeshAgent
/// SDK, pinned; `scripts/test` creates it) and returns its standard output; panics with its
/// output if it fails.
pub async fn run_python(script: &str, args: &[&str]) -> String {
    let dir = repo_root().join("tests/python");
    let python = sdk_python();
    let mut cmd = tokio::process::Command::new(&python);
    cmd.current_dir(&dir)
        .arg(script)
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("python {script} timed out after 60 s"))
        .unwrap_or_else(|e| panic!("could not run {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "python {script} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A room-protocol client on a raw socket, speaking the wire format as the MeshAgent SDKs do:
/// for tests that need what the stock SDK does not give (acknowledgements, exact frames).
pub struct RoomProtoClient {
    ws: Ws,
    assembler: roomd_sync::room_protocol::Assembler,
    next_id: u64,
    /// Its participant's id, from `connected`.
    pub participant_id: String,
    /// The room's session, from `room_ready`.
    pub session_id: String,
}

impl std::fmt::Debug for RoomProtoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomProtoClient")
            .field("participant_id", &self.participant_id)
            .finish_non_exhaustive()
    }
}

/// A whole message a [`RoomProtoClient`] received.
#[derive(Debug)]
pub struct ProtoMessage {
    /// Its id.
    pub id: u64,
    /// Its type.
    pub kind: String,
    /// Its header, without `__meshagent__`.
    pub header: serde_json::Map<String, serde_json::Value>,
    /// Its trailer.
    pub trailer: bytes::Bytes,
}

impl RoomProtoClient {
    /// Connects to `ws://…/rooms/{room}` (with a bearer token, if any) and reads the
    /// handshake: `room_ready`, then `connected`.
    pub async fn connect(url: &str, token: Option<&str>) -> RoomProtoClient {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        let (ws, _) = connect_with_headers(url, &headers).await;
        let mut c = RoomProtoClient {
            ws,
            assembler: roomd_sync::room_protocol::Assembler::new(Default::default()),
            next_id: 0,
            participant_id: String::new(),
            session_id: String::new(),
        };
        let ready = c.next().await;
        assert_eq!(ready.kind, "room_ready");
        c.session_id = ready.header["session_id"].as_str().unwrap().to_string();
        let connected = c.next().await;
        assert_eq!(connected.kind, "connected");
        assert_eq!(connected.header["type"], "init");
        c.participant_id = connected.header["participantId"]
            .as_str()
            .unwrap()
            .to_string();
        c
    }

    /// Sends a message; returns its id.
    pub async fn send(&mut self, kind: &str, header: serde_json::Value, trailer: &[u8]) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let data = roomd_sync::room_protocol::Payload::encode(&header, trailer);
        for p in roomd_sync::room_protocol::encode_message(id, kind, &data) {
            self.ws
                .send(Message::Binary(p.to_vec().into()))
                .await
                .unwrap();
        }
        id
    }

    /// The next whole message (fails after [`WAIT`], or if the server closes).
    pub async fn next(&mut self) -> ProtoMessage {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no message in time")
                .expect("connection ended")
                .expect("connection failed");
            let Message::Binary(packet) = msg else {
                if let Message::Close(f) = msg {
                    panic!("server closed the connection: {f:?}");
                }
                continue;
            };
            if let Some(m) = self.assembler.push(&packet).expect("a valid packet") {
                let p = roomd_sync::room_protocol::Payload::decode(&m.data, &Default::default())
                    .expect("a valid payload");
                return ProtoMessage {
                    id: m.id,
                    kind: m.kind,
                    header: p.header,
                    trailer: p.trailer,
                };
            }
        }
    }

    /// Reads (and drops) whatever comes until the server closes the connection; returns the
    /// close code.
    pub async fn until_closed(&mut self) -> u16 {
        expect_close(&mut self.ws).await.0
    }

    /// Invokes a tool with JSON arguments (or a stream, for `control{open}`); returns the
    /// answer's content header. Other messages meanwhile are skipped.
    pub async fn invoke(
        &mut self,
        toolkit: &str,
        tool: &str,
        tool_call_id: &str,
        arguments: serde_json::Value,
    ) -> serde_json::Map<String, serde_json::Value> {
        let id = self
            .send(
                "room.invoke_tool",
                serde_json::json!({"toolkit": toolkit, "tool": tool, "tool_call_id": tool_call_id,
                    "participant_id": null, "on_behalf_of_id": null, "arguments": arguments}),
                b"",
            )
            .await;
        loop {
            let m = self.next().await;
            if m.kind == "__response__" && m.id == id {
                return m.header;
            }
        }
    }

    /// Opens document `path` with `sync.open` (asking for acknowledgements if `ack`); returns
    /// the call's id and the state the server sent, decoded from base64.
    pub async fn open_doc(&mut self, path: &str, ack: bool) -> (String, Vec<u8>) {
        self.open_doc_from(path, None, ack).await
    }

    /// [`RoomProtoClient::open_doc`] for a client that holds the state `vector` (a v1 state
    /// vector) already: the server sends what it lacks.
    pub async fn open_doc_from(
        &mut self,
        path: &str,
        vector: Option<&[u8]>,
        ack: bool,
    ) -> (String, Vec<u8>) {
        use base64::Engine as _;
        let vector = vector.map(|v| base64::engine::general_purpose::STANDARD.encode(v));
        let call = format!("open-{path}-{}", self.next_id + 1);
        let answer = self
            .invoke(
                "sync",
                "open",
                &call,
                serde_json::json!({"type": "control", "method": "open"}),
            )
            .await;
        assert_eq!(answer["type"], "control", "{answer:?}");
        self.send(
            "room.tool_call_request_chunk",
            serde_json::json!({"tool_call_id": call, "chunk": {"type": "binary", "headers": {
                "kind": "start", "path": path, "create": true, "vector": vector, "schema": null,
                "schema_path": null, "initial_json": null, "ack": ack}}}),
            b"",
        )
        .await;
        let state = self.next_chunk(&call).await;
        assert_eq!(state.0["headers"]["kind"], "state", "{state:?}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&state.1)
            .unwrap();
        (call, bytes)
    }

    /// Sends a v1 update on an open document.
    pub async fn sync(&mut self, call: &str, update: &[u8]) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(update);
        self.send(
            "room.tool_call_request_chunk",
            serde_json::json!({"tool_call_id": call, "chunk": {"type": "binary", "headers": {"kind": "sync"}}}),
            b64.as_bytes(),
        )
        .await;
    }

    /// The next chunk of call `call`: its content header and trailer.
    pub async fn next_chunk(&mut self, call: &str) -> (serde_json::Value, bytes::Bytes) {
        loop {
            let m = self.next().await;
            if m.kind == "room.tool_call_response_chunk" && m.header["tool_call_id"] == call {
                return (m.header["chunk"].clone(), m.trailer);
            }
        }
    }
}

/// Claims for a participant named `name` of `room`, an agent with `api`, signed by `key`,
/// valid for an hour: what most tests present.
pub fn agent_claims(
    key: &roomd_room_apis::ApiKey,
    name: &str,
    room: &str,
    api: roomd_room_apis::ApiScope,
) -> roomd_room_apis::Claims {
    use roomd_room_apis::{Claims, Grant, Role};
    let mut c = Claims::new(name);
    c.grants = vec![
        Grant::Room(room.into()),
        Grant::Role(Role::Agent),
        Grant::Api(api),
    ];
    c.project = Some(key.project);
    c.key = Some(key.id);
    c.exp = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
            + 3600,
    );
    c
}

/// [`agent_claims`], minted.
pub fn agent_token(
    key: &roomd_room_apis::ApiKey,
    name: &str,
    room: &str,
    api: roomd_room_apis::ApiScope,
) -> String {
    roomd_room_apis::mint(&agent_claims(key, name, room, api), &key.secret).unwrap()
}

/// A server with an API key of project `default`, and the key.
pub async fn server_with_key() -> (TestServer, roomd_room_apis::ApiKey) {
    let server = TestServer::start().await;
    let key = roomd_room_apis::ApiKey::parse(&server.create_key("default").await).unwrap();
    (server, key)
}

/// A Rust client of `room` at `base` with `token`, reconnecting quickly, connected.
pub async fn rust_client(base: &str, room: &str, token: String) -> roomd_client::RoomClient {
    let mut config = roomd_client::Config::new(base, room, Some(token));
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    tokio::time::timeout(WAIT, roomd_client::RoomClient::connect(config))
        .await
        .expect("connecting timed out")
        .expect("connecting")
}

/// A `roomd` process over a data directory of its own, with an API key of project `default`:
/// what a test kills (`kill -9`) and starts again over the same data.
pub struct KillableServer {
    _dir: tempfile::TempDir,
    data: PathBuf,
    /// The project's API key.
    pub key: roomd_room_apis::ApiKey,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl std::fmt::Debug for KillableServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KillableServer")
            .field("data", &self.data)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl KillableServer {
    /// Creates the data directory and its key, and starts the server.
    pub async fn start() -> KillableServer {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let secret = roomd_command(&data, &["key", "create", "--project", "default"]);
        let key = roomd_room_apis::ApiKey::parse(secret.trim()).unwrap();
        let port = free_port();
        let child = spawn_roomd(&data, port, &[]).await;
        KillableServer {
            _dir: dir,
            data,
            key,
            port,
            child: Some(child),
        }
    }

    /// Its WebSocket base URL, `ws://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL) and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the process again over the same data and port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.child = Some(spawn_roomd(&self.data, self.port, &[]).await);
    }
}
