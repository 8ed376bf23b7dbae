//! The server side of RFC 6455: the answer to the opening handshake, and a socket over the
//! upgraded connection that holds no buffer while idle (the frame decoder is
//! `roomd_sync::websocket`).
//!
//! A general-purpose WebSocket stack keeps a read buffer and a write buffer for each
//! connection's whole life, and the write buffer keeps the capacity of the largest frame ever
//! written through it: every connection that once received a 1 MiB document keeps 1 MiB. Here
//! an idle connection holds a few dozen bytes of decoder state. Reads go through a buffer on the
//! stack, and only the bytes of a message not yet complete are kept on the heap (a message
//! refused as too large is discarded as it is read, whatever its length); frames are written
//! straight from the room's shared buffers with vectored writes, never copied.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use roomd_sync::websocket::{
    frame_header, header_len, opcode, Decoder, FrameError, Incoming, CONTROL_PAYLOAD_MAX,
};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read at a time through the stack.
const STACK_READ: usize = 4096;
/// Bytes read at a time straight into a large frame's reserved space.
const DIRECT_READ_MAX: usize = 64 * 1024;
/// Frames handed to one vectored write, at most (two slices each).
const WRITE_FRAMES_MAX: usize = 32;

/// Why an opening handshake is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandshakeError(pub &'static str);

/// Checks the headers of an opening handshake and returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, HandshakeError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err(HandshakeError(
            "a WebSocket request needs `Connection: upgrade`",
        ));
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err(HandshakeError(
            "a WebSocket request needs `Upgrade: websocket`",
        ));
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(HandshakeError("only WebSocket version 13 is supported"));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError("`Sec-WebSocket-Key` is missing"))?;
    let mut sha1 = Sha1::new();
    sha1.update(key.as_bytes());
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha1.finalize());
    HeaderValue::from_str(&accept).map_err(|_| HandshakeError("unreachable: base64 is ASCII"))
}

/// The error of a failed read: the peer broke the protocol, or the connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A server-side WebSocket over an upgraded connection.
#[derive(Debug)]
pub struct Socket<S> {
    io: S,
    decoder: Decoder,
    /// Bytes read and not yet decoded. Released whenever it is empty, so an idle connection
    /// holds no buffer.
    pending: BytesMut,
    /// A frame whose write was interrupted: the next write finishes it first.
    partial: Option<Partial>,
}

/// A frame written in part.
#[derive(Debug)]
struct Partial {
    op: u8,
    frame: Bytes,
    /// Bytes of its header and payload already written.
    sent: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// A socket refusing messages over `message_bytes_max` bytes.
    pub fn new(io: S, message_bytes_max: usize) -> Socket<S> {
        Socket {
            io,
            decoder: Decoder::new(message_bytes_max),
            pending: BytesMut::new(),
            partial: None,
        }
    }

    /// The next message from the client; `None` once it has closed the TCP connection.
    /// Cancel-safe: bytes read are kept until decoded.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, RecvError> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Incoming>, RecvError>> {
        loop {
            if !self.pending.is_empty() {
                let decoded = self.decoder.decode(&mut self.pending);
                if self.pending.is_empty() && self.pending.capacity() > 0 {
                    // Whatever the last message shares stays with it; the socket lets go.
                    self.pending = BytesMut::new();
                }
                if let Some(message) = decoded? {
                    return Poll::Ready(Ok(Some(message)));
                }
            }
            let spare = self.pending.capacity() - self.pending.len();
            let read = if spare > STACK_READ {
                // A large frame's space is reserved: read into it directly.
                let len = self.pending.len();
                self.pending.resize(len + spare.min(DIRECT_READ_MAX), 0);
                let mut buf = ReadBuf::new(&mut self.pending[len..]);
                let polled = Pin::new(&mut self.io).poll_read(cx, &mut buf);
                let n = buf.filled().len();
                self.pending.truncate(len + n);
                ready!(polled)?;
                n
            } else {
                let mut stack = [0u8; STACK_READ];
                let mut buf = ReadBuf::new(&mut stack);
                ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
                let read = buf.filled();
                // The bytes of a frame being discarded (the rest of a refused message, or a text
                // message's continuation) are counted off here and never copied: however long
                // the frame, the socket keeps none of it.
                let discarded = if self.pending.is_empty() {
                    self.decoder.discard(read.len())
                } else {
                    0
                };
                self.pending
                    .extend_from_slice(read.get(discarded..).unwrap_or_default());
                read.len()
            };
            if read == 0 {
                // The peer closed the connection (mid-frame or not): nothing more will come.
                self.pending = BytesMut::new();
                return Poll::Ready(Ok(None));
            }
        }
    }

    /// Writes `frames` as messages of type `op` (drained as they are written), then flushes.
    /// Consecutive frames go out in vectored writes, straight from their buffers. Cancel-safe:
    /// a frame left half written is finished by the next write, before anything else.
    pub async fn send(&mut self, op: u8, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
        poll_fn(|cx| self.poll_send(cx, op, frames)).await?;
        poll_fn(|cx| Pin::new(&mut self.io).poll_flush(cx)).await
    }

    /// Writes one frame of type `op`, then flushes.
    pub async fn send_one(&mut self, op: u8, payload: Bytes) -> io::Result<()> {
        let mut frames = VecDeque::from([payload]);
        self.send(op, &mut frames).await
    }

    /// Sends a close frame with `code` and `reason` (cut to fit a control frame).
    pub async fn send_close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut end = reason.len().min(CONTROL_PAYLOAD_MAX - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = Vec::with_capacity(2 + end);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.send_one(opcode::CLOSE, payload.into()).await
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        op: u8,
        frames: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<()>> {
        while self.partial.is_some() || !frames.is_empty() {
            let mut headers = [[0u8; 10]; WRITE_FRAMES_MAX];
            let mut slices = [IoSlice::new(&[]); 2 * WRITE_FRAMES_MAX];
            let mut used = 0;
            let partial = self.partial.as_ref().map(|p| (p.op, &p.frame, p.sent));
            let queued = frames.iter().map(|frame| (op, frame, 0));
            let next = partial.into_iter().chain(queued).take(WRITE_FRAMES_MAX);
            for ((op, frame, sent), header) in next.zip(headers.iter_mut()) {
                let len = frame_header(op, frame.len(), header);
                let skip_head = sent.min(len);
                for part in [&header[skip_head..len], &frame[sent - skip_head..]] {
                    if !part.is_empty() {
                        slices[used] = IoSlice::new(part);
                        used += 1;
                    }
                }
            }
            let mut n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..used]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if let Some(p) = &mut self.partial {
                let left = header_len(p.frame.len()) + p.frame.len() - p.sent;
                if n < left {
                    p.sent += n;
                    continue;
                }
                n -= left;
                self.partial = None;
            }
            while n > 0 {
                let Some(frame) = frames.pop_front() else {
                    break;
                };
                let total = header_len(frame.len()) + frame.len();
                if n < total {
                    self.partial = Some(Partial { op, frame, sent: n });
                    break;
                }
                n -= total;
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use roomd_sync::fuzzing::client_frame;

    #[test]
    fn the_accept_key_is_the_one_in_the_rfc() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert_eq!(
            accept_key(&headers).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        headers.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert!(accept_key(&headers).is_err());
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.remove(header::UPGRADE);
        assert!(accept_key(&headers).is_err());
    }

    /// Reads the frames a server wrote.
    fn server_frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let op = bytes[0] & 0x0F;
            assert_eq!(bytes[0] & 0xF0, 0x80);
            assert_eq!(bytes[1] & 0x80, 0, "server frames are not masked");
            let (len, at) = match bytes[1] {
                126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
                127 => {
                    let mut be = [0; 8];
                    be.copy_from_slice(&bytes[2..10]);
                    (u64::from_be_bytes(be) as usize, 10)
                }
                n => (usize::from(n), 2),
            };
            out.push((op, bytes[at..at + len].to_vec()));
            bytes = &bytes[at + len..];
        }
        out
    }

    /// Everything the server side writes, once it is dropped.
    fn read_all(mut client: tokio::io::DuplexStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut all)
                .await
                .unwrap();
            all
        })
    }

    #[tokio::test]
    async fn frames_are_written_whole_through_short_writes() {
        let (server, client) = tokio::io::duplex(7);
        let mut socket = Socket::new(server, 1 << 20);
        let frames: Vec<Bytes> = [0, 1, 125, 126, 300, 70_000, 3]
            .into_iter()
            .map(|len| {
                (0..len)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        let mut queue: VecDeque<Bytes> = (0..4).flat_map(|_| frames.clone()).collect();
        let expected: Vec<(u8, Vec<u8>)> =
            queue.iter().map(|f| (opcode::BINARY, f.to_vec())).collect();
        let reader = read_all(client);
        socket.send(opcode::BINARY, &mut queue).await.unwrap();
        socket.send_close(4400, &"é".repeat(100)).await.unwrap();
        assert!(queue.is_empty());
        drop(socket);
        let mut got = server_frames(&reader.await.unwrap());
        let (op, close) = got.pop().unwrap();
        assert_eq!(op, opcode::CLOSE);
        assert_eq!(&close[..2], &4400u16.to_be_bytes());
        assert!(close.len() <= 125 && std::str::from_utf8(&close[2..]).is_ok());
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_write_cut_short_is_finished_before_the_next_frame() {
        let (server, client) = tokio::io::duplex(100);
        let mut socket = Socket::new(server, 1 << 20);
        let big = Bytes::from(vec![7u8; 1000]);
        let mut queue = VecDeque::from([Bytes::from_static(b"a"), big.clone(), big.clone()]);
        // Nobody reads yet: the write stops inside the second frame and is abandoned.
        let cut = socket.send(opcode::BINARY, &mut queue).now_or_never();
        assert!(cut.is_none());
        assert!(socket.partial.is_some());
        let reader = read_all(client);
        socket.send_close(1000, "bye").await.unwrap();
        drop(socket);
        let got = server_frames(&reader.await.unwrap());
        let ops: Vec<u8> = got.iter().map(|(op, _)| *op).collect();
        assert_eq!(ops, [opcode::BINARY, opcode::BINARY, opcode::CLOSE]);
        assert_eq!(got[1].1, big.to_vec());
        // The frame never begun stays queued for the caller.
        assert_eq!(queue, [big]);
    }

    #[tokio::test]
    async fn a_socket_reads_messages_split_anywhere_and_holds_nothing_between_them() {
        let (server, mut client) = tokio::io::duplex(5);
        let mut socket = Socket::new(server, 1 << 20);
        let big: Vec<u8> = (0..100_000).map(|i| (i % 241) as u8).collect();
        let mut bytes = client_frame(true, opcode::BINARY, b"one");
        bytes.extend(client_frame(true, opcode::BINARY, &big));
        bytes.extend(client_frame(true, opcode::PING, b"?"));
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut client, &bytes)
                .await
                .unwrap();
            client
        });
        assert_eq!(
            socket.recv().await.unwrap(),
            Some(Incoming::Binary(Bytes::from_static(b"one")))
        );
        assert_eq!(
            socket.recv().await.unwrap(),
            Some(Incoming::Binary(big.into()))
        );
        assert_eq!(
            socket.recv().await.unwrap(),
            Some(Incoming::Ping(Bytes::from_static(b"?")))
        );
        assert_eq!(
            socket.pending.capacity(),
            0,
            "an idle socket keeps a buffer"
        );
        drop(writer.await.unwrap());
        assert_eq!(socket.recv().await.unwrap(), None);
    }
}
