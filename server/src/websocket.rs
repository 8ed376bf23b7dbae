//! The server side of RFC 6455: the answer to the opening handshake, a decoder for the frames
//! a client sends, and a socket over the upgraded connection that holds no buffer while idle.
//!
//! A general-purpose WebSocket stack keeps a read buffer and a write buffer for each
//! connection's whole life, and the write buffer keeps the capacity of the largest frame ever
//! written through it: every connection that once received a 1 MiB document keeps 1 MiB. Here
//! an idle connection holds a few dozen bytes of decoder state. Reads go through a buffer on the
//! stack, and only the bytes of a message not yet complete are kept on the heap; frames are
//! written straight from the room's shared buffers with vectored writes, never copied.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::{header, HeaderMap, HeaderValue};
use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frame opcodes (RFC 6455 §5.2).
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The longest payload of a control frame.
const CONTROL_PAYLOAD_MAX: usize = 125;
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

/// What a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A whole binary message.
    Binary(Bytes),
    /// The first frame of a text message (its content is not kept).
    Text,
    /// A ping, with its payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client closes, with its close code if it sent one.
    Close(Option<u16>),
}

/// A client's frames break RFC 6455, or a message is too large.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The bytes are not a valid frame sequence.
    #[error("{0}")]
    Protocol(&'static str),
    /// A message (all its fragments together) exceeds the size limit.
    #[error("message exceeds {0} bytes")]
    TooLarge(usize),
}

/// Decodes the frames a client sends, checking them as RFC 6455 requires of a server.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    /// The fragments of a binary message received so far.
    fragments: Option<BytesMut>,
    /// Inside a fragmented text message, whose continuations are skipped.
    in_text: bool,
}

impl Decoder {
    /// A decoder refusing messages over `message_bytes_max` bytes.
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder {
            message_bytes_max,
            fragments: None,
            in_text: false,
        }
    }

    /// Decodes the next message from the front of `buf`, consuming its bytes. Returns `None`
    /// when more bytes are needed, having reserved room for the whole frame in `buf`. A frame
    /// is refused as soon as its header is complete, before its payload arrives.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            if buf.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (buf[0], buf[1]);
            if b0 & 0x70 != 0 {
                return Err(FrameError::Protocol(
                    "reserved bits set without a negotiated extension",
                ));
            }
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0F;
            if b1 & 0x80 == 0 {
                return Err(FrameError::Protocol("a client frame must be masked"));
            }
            let (len, mask_at) = match b1 & 0x7F {
                126 => {
                    let Some(b) = buf.get(2..4) else {
                        return Ok(None);
                    };
                    (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
                }
                127 => {
                    let Some(b) = buf.get(2..10) else {
                        return Ok(None);
                    };
                    let mut be = [0; 8];
                    be.copy_from_slice(b);
                    let len = u64::from_be_bytes(be);
                    if len >> 63 != 0 {
                        return Err(FrameError::Protocol(
                            "the most significant bit of a 64-bit length must be 0",
                        ));
                    }
                    (len, 10)
                }
                n => (u64::from(n), 2),
            };
            self.check(fin, op, len)?;
            // `check` bounded `len` by the message limit (or 125), so it fits a usize.
            let len = usize::try_from(len).map_err(|_| FrameError::TooLarge(usize::MAX))?;
            let header = mask_at + 4;
            let total = header + len;
            if buf.len() < total {
                buf.reserve(total - buf.len());
                return Ok(None);
            }
            let mask = [
                buf[mask_at],
                buf[mask_at + 1],
                buf[mask_at + 2],
                buf[mask_at + 3],
            ];
            buf.advance(header);
            let mut payload = buf.split_to(len);
            unmask(&mut payload, mask);
            match op {
                opcode::CLOSE => {
                    return parse_close(&payload).map(|code| Some(Incoming::Close(code)))
                }
                opcode::PING => return Ok(Some(Incoming::Ping(payload.freeze()))),
                opcode::PONG => return Ok(Some(Incoming::Pong)),
                opcode::TEXT => {
                    self.in_text = !fin;
                    return Ok(Some(Incoming::Text));
                }
                opcode::BINARY if fin => return Ok(Some(Incoming::Binary(payload.freeze()))),
                opcode::BINARY => self.fragments = Some(payload),
                _ if self.in_text => self.in_text = !fin,
                _ => {
                    let Some(mut message) = self.fragments.take() else {
                        return Err(FrameError::Protocol("a continuation outside a message"));
                    };
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(Incoming::Binary(message.freeze())));
                    }
                    self.fragments = Some(message);
                }
            }
        }
    }

    /// Checks a frame header against the frames before it and the size limit.
    fn check(&self, fin: bool, op: u8, len: u64) -> Result<(), FrameError> {
        let in_message = self.fragments.is_some() || self.in_text;
        match op {
            opcode::CLOSE | opcode::PING | opcode::PONG => {
                if !fin {
                    return Err(FrameError::Protocol(
                        "a control frame must not be fragmented",
                    ));
                }
                if len > CONTROL_PAYLOAD_MAX as u64 {
                    return Err(FrameError::Protocol(
                        "a control frame's payload must be at most 125 bytes",
                    ));
                }
                return Ok(());
            }
            opcode::TEXT | opcode::BINARY if in_message => {
                return Err(FrameError::Protocol(
                    "a new message began before the last one ended",
                ));
            }
            opcode::CONTINUATION if !in_message => {
                return Err(FrameError::Protocol("a continuation outside a message"));
            }
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {}
            _ => return Err(FrameError::Protocol("an unknown opcode")),
        }
        let so_far = self.fragments.as_ref().map_or(0, BytesMut::len) as u64;
        if so_far.saturating_add(len) > self.message_bytes_max as u64 {
            return Err(FrameError::TooLarge(self.message_bytes_max));
        }
        Ok(())
    }
}

/// Removes a client's mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Reads a close frame's payload: nothing, or a valid code and a UTF-8 reason.
fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("a close payload of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("an invalid close code"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::Protocol("a close reason that is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// Writes the header of an unmasked server frame into `out`; returns its length.
fn frame_header(op: u8, len: usize, out: &mut [u8; 10]) -> usize {
    out[0] = 0x80 | op;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if let Ok(len) = u16::try_from(len) {
        out[1] = 126;
        out[2..4].copy_from_slice(&len.to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
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
                let decoded = self.decoder.decode(&mut self.pending)?;
                if self.pending.is_empty() && self.pending.capacity() > 0 {
                    // Whatever the last message shares stays with it; the socket lets go.
                    self.pending = BytesMut::new();
                }
                if let Some(message) = decoded {
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
                let n = buf.filled().len();
                self.pending.extend_from_slice(buf.filled());
                n
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

    /// A masked client frame.
    fn client_frame(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | op];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
    }

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

    #[test]
    fn messages_of_every_length_form_decode_byte_by_byte() {
        for len in [0, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 70_001] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let frame = client_frame(true, opcode::BINARY, &payload);
            let mut decoder = Decoder::new(1 << 20);
            let mut buf = BytesMut::new();
            let mut got = None;
            for (i, byte) in frame.iter().enumerate() {
                buf.extend_from_slice(&[*byte]);
                if let Some(m) = decoder.decode(&mut buf).unwrap() {
                    assert_eq!(i, frame.len() - 1, "complete before its last byte");
                    got = Some(m);
                }
            }
            assert_eq!(got, Some(Incoming::Binary(payload.into())), "length {len}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn fragments_join_and_control_frames_pass_between_them() {
        let mut bytes = client_frame(false, opcode::BINARY, b"hel");
        bytes.extend(client_frame(true, opcode::PING, b"p"));
        bytes.extend(client_frame(false, opcode::CONTINUATION, b"lo "));
        bytes.extend(client_frame(true, opcode::CONTINUATION, b"world"));
        bytes.extend(client_frame(true, opcode::PONG, b""));
        bytes.extend(client_frame(true, opcode::CLOSE, &[0x03, 0xE8, b'o', b'k']));
        let got = decode_all(&mut Decoder::new(64), &bytes).unwrap();
        assert_eq!(
            got,
            vec![
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Binary(Bytes::from_static(b"hello world")),
                Incoming::Pong,
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[test]
    fn a_text_message_is_reported_and_its_continuations_skipped() {
        let mut bytes = client_frame(false, opcode::TEXT, b"ab");
        bytes.extend(client_frame(true, opcode::CONTINUATION, b"cd"));
        bytes.extend(client_frame(true, opcode::BINARY, b"x"));
        let got = decode_all(&mut Decoder::new(64), &bytes).unwrap();
        assert_eq!(
            got,
            vec![Incoming::Text, Incoming::Binary(Bytes::from_static(b"x"))]
        );
    }

    #[test]
    fn frames_breaking_the_rfc_are_refused() {
        let refused = |bytes: Vec<u8>| decode_all(&mut Decoder::new(64), &bytes).unwrap_err();
        let mut unmasked = client_frame(true, opcode::BINARY, b"x");
        unmasked[1] &= 0x7F;
        assert!(matches!(refused(unmasked), FrameError::Protocol(_)));
        let mut rsv = client_frame(true, opcode::BINARY, b"x");
        rsv[0] |= 0x40;
        assert!(matches!(refused(rsv), FrameError::Protocol(_)));
        for op in [0x3, 0x7, 0xB, 0xF] {
            assert!(matches!(
                refused(client_frame(true, op, b"")),
                FrameError::Protocol(_)
            ));
        }
        assert!(matches!(
            refused(client_frame(false, opcode::PING, b"")),
            FrameError::Protocol(_)
        ));
        assert!(matches!(
            refused(client_frame(true, opcode::PONG, &[0; 126])),
            FrameError::Protocol(_)
        ));
        assert!(matches!(
            refused(client_frame(true, opcode::CONTINUATION, b"x")),
            FrameError::Protocol(_)
        ));
        let mut interleaved = client_frame(false, opcode::BINARY, b"a");
        interleaved.extend(client_frame(true, opcode::BINARY, b"b"));
        assert!(matches!(refused(interleaved), FrameError::Protocol(_)));
        for close in [&[0x03][..], &[0x03, 0xED], &[0x03, 0xE8, 0xFF]] {
            assert!(matches!(
                refused(client_frame(true, opcode::CLOSE, close)),
                FrameError::Protocol(_)
            ));
        }
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(refused(huge), FrameError::Protocol(_)));
    }

    #[test]
    fn a_message_over_the_limit_is_refused_from_its_header() {
        let mut decoder = Decoder::new(10);
        // Only the header: refused before any of the payload arrives.
        let header = &client_frame(true, opcode::BINARY, &[0; 11])[..6];
        assert_eq!(
            decode_all(&mut decoder, header),
            Err(FrameError::TooLarge(10))
        );
        // Fragments that are small one by one but too large together.
        let mut bytes = client_frame(false, opcode::BINARY, &[0; 6]);
        bytes.extend(client_frame(true, opcode::CONTINUATION, &[0; 6]));
        assert_eq!(
            decode_all(&mut Decoder::new(10), &bytes),
            Err(FrameError::TooLarge(10))
        );
        assert_eq!(
            decode_all(
                &mut Decoder::new(10),
                &client_frame(true, opcode::BINARY, &[1; 10])
            ),
            Ok(vec![Incoming::Binary(vec![1; 10].into())])
        );
    }

    #[test]
    fn unmasking_matches_the_byte_by_byte_definition() {
        let mask = [1, 2, 3, 250];
        for len in 0..40 {
            let data: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            let mut fast = data.clone();
            unmask(&mut fast, mask);
            let slow: Vec<u8> = data
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow);
        }
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
