//! The servers under test and their dialects: where a document lives and how messages are
//! framed for it.

use roomd_sync::lib0::{write_var_bytes, write_var_u64, Reader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue};

/// The room of every roomd document the scenarios open, and of the tokens they present.
pub const ROOM: &str = "bench";

/// The longest creating a document may take.
const PREPARE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// Which server is under test.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// roomd: `ws://HOST/v1/rooms/bench/yjs/DOC` (the room is [`ROOM`]).
    Roomd,
    /// The classic y-websocket server (`bin/server.js` of y-websocket 1.5.4): `ws://HOST/DOC`.
    YWebsocket,
    /// `@hocuspocus/server`: one socket per document, the document name before every message.
    Hocuspocus,
    /// y-sweet: documents are created by `POST /doc/new`, then served at `ws://HOST/d/DOC/ws/DOC`.
    YSweet,
}

impl Kind {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Roomd => "roomd",
            Kind::YWebsocket => "y-websocket",
            Kind::Hocuspocus => "hocuspocus",
            Kind::YSweet => "y-sweet",
        }
    }
}

/// A server under test, reachable at `host:port`.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which server.
    pub kind: Kind,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The participant token every connection presents (`Authorization: Bearer`), for a
    /// roomd whose store holds an API key; `None` for a server that runs open.
    pub token: Option<String>,
    /// Peers speak roomd's room protocol (`ws://HOST/rooms/bench`, documents opened with
    /// `sync.open`) instead of the y-websocket protocol.
    pub room_protocol: bool,
}

impl Target {
    /// The WebSocket URL of document `doc`.
    pub fn doc_url(&self, doc: &str) -> String {
        if self.room_protocol {
            return format!("ws://{}/rooms/{ROOM}", self.addr);
        }
        match self.kind {
            Kind::Roomd => format!("ws://{}/v1/rooms/{ROOM}/yjs/{doc}", self.addr),
            Kind::YWebsocket | Kind::Hocuspocus => format!("ws://{}/{doc}", self.addr),
            Kind::YSweet => format!("ws://{}/d/{doc}/ws/{doc}", self.addr),
        }
    }

    /// The WebSocket upgrade request for document `doc`, carrying the token if there is one.
    pub fn request(&self, doc: &str) -> anyhow::Result<Request> {
        let mut request = self.doc_url(doc).into_client_request()?;
        if let Some(token) = &self.token {
            request.headers_mut().insert(
                header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        Ok(request)
    }

    /// Creates the document where the server needs that (y-sweet).
    pub async fn prepare_doc(&self, doc: &str) -> anyhow::Result<()> {
        if self.kind != Kind::YSweet {
            return Ok(());
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = format!("{{\"docId\":\"{doc}\"}}");
        let req = format!(
            "POST /doc/new HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let exchange = async {
            let mut s = tokio::net::TcpStream::connect(&self.addr).await?;
            s.write_all(req.as_bytes()).await?;
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            anyhow::Ok(resp)
        };
        // A server that stopped answering fails the run instead of stalling it.
        let resp = tokio::time::timeout(PREPARE_MAX, exchange)
            .await
            .map_err(|_| {
                anyhow::anyhow!("y-sweet did not create {doc} within {PREPARE_MAX:?}")
            })??;
        let text = String::from_utf8_lossy(&resp);
        anyhow::ensure!(
            text.starts_with("HTTP/1.1 200"),
            "y-sweet refused to create {doc}: {}",
            text.lines().next().unwrap_or("")
        );
        Ok(())
    }

    /// Wraps one y-protocol message for the wire (Hocuspocus prefixes the document name).
    pub fn frame(&self, doc: &str, message: &[u8]) -> Vec<u8> {
        if self.kind != Kind::Hocuspocus {
            return message.to_vec();
        }
        let mut out = Vec::with_capacity(doc.len() + 2 + message.len());
        write_var_bytes(&mut out, doc.as_bytes());
        out.extend_from_slice(message);
        out
    }

    /// The y-protocol message inside a frame (after Hocuspocus's document name).
    pub fn unframe<'a>(&self, frame: &'a [u8]) -> Option<&'a [u8]> {
        if self.kind != Kind::Hocuspocus {
            return Some(frame);
        }
        let mut r = Reader::new(frame);
        r.read_var_bytes().ok()?;
        frame.get(r.position()..)
    }

    /// The sync messages (sub-type, payload) of a frame, up to the first message that is no
    /// sync message (awareness, auth): what a peer reads of the frame.
    pub fn sync_messages<'a>(&self, frame: &'a [u8]) -> SyncMessages<'a> {
        SyncMessages {
            rest: self.unframe(frame).unwrap_or(&[]),
            // Hocuspocus puts one message in a frame, after the document name.
            one: self.kind == Kind::Hocuspocus,
        }
    }

    /// What a client sends before anything else (Hocuspocus's auth message, empty token).
    pub fn hello(&self, doc: &str) -> Option<Vec<u8>> {
        if self.kind != Kind::Hocuspocus {
            return None;
        }
        let mut msg = Vec::new();
        write_var_u64(&mut msg, 2); // auth
        write_var_u64(&mut msg, 0); // token
        write_var_bytes(&mut msg, b"");
        Some(self.frame(doc, &msg))
    }
}

/// The sync messages of one frame, in order (see [`Target::sync_messages`]).
#[derive(Debug)]
pub struct SyncMessages<'a> {
    rest: &'a [u8],
    one: bool,
}

impl<'a> Iterator for SyncMessages<'a> {
    type Item = (u64, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let mut r = Reader::new(self.rest);
        // A frame whose next message cannot be walked, or is no sync message, ends here.
        let message = match r.read_var_u64() {
            Ok(0) => r.read_var_u64().ok().zip(r.read_var_bytes().ok()),
            _ => None,
        };
        self.rest = if self.one || message.is_none() {
            &[]
        } else {
            self.rest.get(r.position()..).unwrap_or(&[])
        };
        message
    }
}
