//! The servers under test and their dialects: where a document lives and how messages are
//! framed for it.

use roomd_sync::lib0::{write_var_bytes, write_var_u64, Reader};

/// Which server is under test.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// roomd: `ws://HOST/v1/rooms/bench/yjs/DOC`.
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
}

impl Target {
    /// The WebSocket URL of document `doc`.
    pub fn doc_url(&self, doc: &str) -> String {
        match self.kind {
            Kind::Roomd => format!("ws://{}/v1/rooms/bench/yjs/{doc}", self.addr),
            Kind::YWebsocket | Kind::Hocuspocus => format!("ws://{}/{doc}", self.addr),
            Kind::YSweet => format!("ws://{}/d/{doc}/ws/{doc}", self.addr),
        }
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
        let mut s = tokio::net::TcpStream::connect(&self.addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await?;
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
