//! The frames of RFC 6455 as a server sees them: a decoder that checks what a client sends,
//! and the headers of the frames a server writes. The socket that carries them, and the
//! handshake, are the server's (`roomd::websocket`); nothing here does I/O.
//!
//! The decoder holds only the fragments of a message still arriving: bytes not yet decoded stay
//! with the caller, who can release its buffer whenever it is empty.

use bytes::{Buf, Bytes, BytesMut};

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
pub const CONTROL_PAYLOAD_MAX: usize = 125;
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
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
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
pub fn frame_header(op: u8, len: usize, out: &mut [u8; 10]) -> usize {
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

/// The length of a server frame's header for a payload of `len` bytes.
pub fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= usize::from(u16::MAX) {
        4
    } else {
        10
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::client_frame;

    fn decode_all(decoder: &mut Decoder, bytes: &[u8]) -> Result<Vec<Incoming>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf)? {
            out.push(m);
        }
        Ok(out)
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
}
