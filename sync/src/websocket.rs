//! The frames of RFC 6455 as a server sees them: a decoder that checks what a client sends,
//! and the headers of the frames a server writes. The socket that carries them, and the
//! handshake, are the server's (`roomd::websocket`); nothing here does I/O.
//!
//! The decoder holds only the fragments of a message still arriving: bytes not yet decoded stay
//! with the caller, who can release its buffer whenever it is empty. What it refuses as too large
//! it discards as it arrives, keeping only the count of bytes still to come.

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
    /// The bytes are not a valid frame sequence. Nothing after them can be decoded.
    #[error("{0}")]
    Protocol(&'static str),
    /// A message (all its fragments together) exceeds the size limit. The decoder discards the
    /// rest of it as it arrives, so the frames after it can still be decoded.
    #[error("message exceeds {0} bytes")]
    TooLarge(usize),
}

/// The message whose frames are arriving.
#[derive(Debug)]
enum Current {
    /// Between messages: the next data frame begins one.
    Between,
    /// A binary message, with its fragments so far.
    Binary(BytesMut),
    /// A message whose continuations are discarded: a text message, whose content is never
    /// kept, or one refused as too large.
    Discarded,
}

/// Decodes the frames a client sends, checking them as RFC 6455 requires of a server.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    message: Current,
    /// Bytes of the current frame still to be discarded unread, mask key included: the rest of
    /// a refused frame, or of a continuation of a discarded message.
    discarding: u64,
}

impl Decoder {
    /// A decoder refusing messages over `message_bytes_max` bytes.
    pub fn new(message_bytes_max: usize) -> Decoder {
        Decoder {
            message_bytes_max,
            message: Current::Between,
            discarding: 0,
        }
    }

    /// Decodes the next message from the front of `buf`, consuming its bytes. Returns `None`
    /// when more bytes are needed, having reserved room for the whole frame in `buf`, or having
    /// consumed all of `buf` while it discards a frame (see [`Decoder::discarding`]).
    ///
    /// A message over the limit is refused as soon as its length is known, before its payload
    /// arrives: the error is [`FrameError::TooLarge`], and decoding may go on. The refused frame
    /// and the rest of its message are then discarded as they arrive, without room ever being
    /// reserved for them, and the frames after them decode as usual (a client's close frame,
    /// say). After [`FrameError::Protocol`] nothing more can be decoded.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        loop {
            if self.discarding > 0 {
                buf.advance(self.discard(buf.len()));
                if self.discarding > 0 {
                    return Ok(None);
                }
            }
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
            let refused = match self.check(fin, op, len) {
                Ok(()) => false,
                Err(FrameError::TooLarge(_)) => true,
                Err(e) => return Err(e),
            };
            if refused || (op == opcode::CONTINUATION && matches!(self.message, Current::Discarded))
            {
                // A refused message is dropped, fragments and all, and neither its frames nor a
                // discarded message's continuations are waited for: the rest of the frame is
                // discarded as it arrives, whatever its length, the mask key too (discarded
                // bytes need no unmasking). A length is below 2^63, so adding the key cannot
                // overflow.
                buf.advance(mask_at);
                self.discarding = len + 4;
                buf.advance(self.discard(buf.len()));
                self.message = if fin {
                    Current::Between
                } else {
                    Current::Discarded
                };
                if refused {
                    return Err(FrameError::TooLarge(self.message_bytes_max));
                }
                continue;
            }
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
                    if !fin {
                        self.message = Current::Discarded;
                    }
                    return Ok(Some(Incoming::Text));
                }
                opcode::BINARY if fin => return Ok(Some(Incoming::Binary(payload.freeze()))),
                opcode::BINARY => self.message = Current::Binary(payload),
                _ => {
                    // `check` let a continuation through only inside a message, and the
                    // messages whose continuations are discarded were handled above.
                    let Current::Binary(mut message) =
                        std::mem::replace(&mut self.message, Current::Between)
                    else {
                        return Err(FrameError::Protocol("a continuation outside a message"));
                    };
                    message.extend_from_slice(&payload);
                    if fin {
                        return Ok(Some(Incoming::Binary(message.freeze())));
                    }
                    self.message = Current::Binary(message);
                }
            }
        }
    }

    /// Bytes still to be discarded, unread, before the next frame begins (the rest of a refused
    /// frame, say); 0 when the next byte belongs to a frame to decode. While it is not 0, the
    /// last call to [`Decoder::decode`] left its buffer empty.
    pub fn discarding(&self) -> u64 {
        self.discarding
    }

    /// Discards bytes the caller has, or is about to read, at the front of the input: of the
    /// `available` bytes there, returns how many belong to the frame being discarded. The caller
    /// drops them, and hands the rest to [`Decoder::decode`]. A caller reading into a scratch
    /// buffer thus keeps no byte of a discarded frame, not even a buffer's worth.
    pub fn discard(&mut self, available: usize) -> usize {
        let n = usize::try_from(self.discarding).map_or(available, |d| d.min(available));
        self.discarding -= n as u64;
        n
    }

    /// Checks a frame header against the frames before it and the size limit.
    fn check(&self, fin: bool, op: u8, len: u64) -> Result<(), FrameError> {
        let so_far = match &self.message {
            Current::Between => None,
            Current::Binary(fragments) => Some(fragments.len()),
            // Discarded whatever their length: none of it is kept.
            Current::Discarded if op == opcode::CONTINUATION => return Ok(()),
            Current::Discarded => Some(0),
        };
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
            opcode::TEXT | opcode::BINARY if so_far.is_some() => {
                return Err(FrameError::Protocol(
                    "a new message began before the last one ended",
                ));
            }
            opcode::CONTINUATION if so_far.is_none() => {
                return Err(FrameError::Protocol("a continuation outside a message"));
            }
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {}
            _ => return Err(FrameError::Protocol("an unknown opcode")),
        }
        let so_far = so_far.unwrap_or(0) as u64;
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

    /// Feeds `pieces` one after another, decoding after each and going on after a
    /// message refused as too large, as a server completing the closing handshake does. With
    /// `scratch`, the bytes of a discarded frame are handed to `discard` before they would be
    /// buffered, as a socket reading into a scratch buffer does. Checks at every step that a
    /// discarded frame's bytes are neither kept nor reserved room for.
    fn feed<'a>(
        decoder: &mut Decoder,
        pieces: impl IntoIterator<Item = &'a [u8]>,
        scratch: bool,
    ) -> Vec<Result<Incoming, FrameError>> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for mut piece in pieces {
            if scratch && buf.is_empty() {
                let (_, rest) = piece.split_at(decoder.discard(piece.len()));
                piece = rest;
            }
            buf.extend_from_slice(piece);
            loop {
                let capacity = buf.capacity();
                let decoded = decoder.decode(&mut buf);
                if decoder.discarding() > 0 {
                    assert!(buf.is_empty(), "bytes of a discarded frame are kept");
                }
                match decoded {
                    Ok(Some(message)) => out.push(Ok(message)),
                    Ok(None) => {
                        if decoder.discarding() > 0 {
                            assert!(buf.capacity() <= capacity, "room reserved to discard");
                        }
                        break;
                    }
                    Err(e @ FrameError::TooLarge(_)) => {
                        assert!(
                            buf.capacity() <= capacity,
                            "room reserved for a refused frame"
                        );
                        assert!(out.len() < 100, "the same frame is refused again and again");
                        out.push(Err(e));
                    }
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    /// Feeds `bytes` split every way that matters (in pieces of every size, and in two at every
    /// point), with and without a scratch buffer, and checks that each gives `want`.
    fn assert_decodes_split_anywhere(
        limit: usize,
        bytes: &[u8],
        want: &[Result<Incoming, FrameError>],
    ) {
        for scratch in [false, true] {
            for chunk in 1..=bytes.len() {
                let got = feed(&mut Decoder::new(limit), bytes.chunks(chunk), scratch);
                assert_eq!(got, want, "pieces of {chunk} (scratch: {scratch})");
            }
            for at in 0..=bytes.len() {
                let (front, back) = bytes.split_at(at);
                let got = feed(&mut Decoder::new(limit), [front, back], scratch);
                assert_eq!(got, want, "split at {at} (scratch: {scratch})");
            }
        }
    }

    #[test]
    fn a_refused_frame_is_discarded_however_it_arrives_and_the_next_frames_decode() {
        let payload: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        let mut bytes = client_frame(true, opcode::BINARY, &payload);
        bytes.extend(client_frame(true, opcode::BINARY, b"ok"));
        bytes.extend(client_frame(true, opcode::PING, b"p"));
        bytes.extend(client_frame(true, opcode::CLOSE, &[0x0F, 0xA0]));
        assert_decodes_split_anywhere(
            10,
            &bytes,
            &[
                Err(FrameError::TooLarge(10)),
                Ok(Incoming::Binary(Bytes::from_static(b"ok"))),
                Ok(Incoming::Ping(Bytes::from_static(b"p"))),
                Ok(Incoming::Close(Some(4000))),
            ],
        );
    }

    #[test]
    fn a_fragmented_message_over_the_limit_is_discarded_to_its_last_fragment() {
        let mut bytes = client_frame(false, opcode::BINARY, &[1; 6]);
        bytes.extend(client_frame(true, opcode::PING, b"1"));
        // Past the limit: the message is refused and its fragments dropped.
        bytes.extend(client_frame(false, opcode::CONTINUATION, &[2; 6]));
        // Its remaining fragments are discarded whatever their length; control frames between
        // them still decode.
        bytes.extend(client_frame(false, opcode::CONTINUATION, &[3; 300]));
        bytes.extend(client_frame(true, opcode::PONG, b""));
        bytes.extend(client_frame(true, opcode::CONTINUATION, &[4; 70_000]));
        bytes.extend(client_frame(true, opcode::BINARY, b"next"));
        let want = [
            Ok(Incoming::Ping(Bytes::from_static(b"1"))),
            Err(FrameError::TooLarge(10)),
            Ok(Incoming::Pong),
            Ok(Incoming::Binary(Bytes::from_static(b"next"))),
        ];
        for chunk in [1, 2, 3, 7, 64, 4096, bytes.len()] {
            for scratch in [false, true] {
                let got = feed(&mut Decoder::new(10), bytes.chunks(chunk), scratch);
                assert_eq!(got, want, "pieces of {chunk} (scratch: {scratch})");
            }
        }
        // A refused message still ends before the next one begins.
        let mut early = client_frame(false, opcode::BINARY, &[0; 11]);
        early.extend(client_frame(true, opcode::BINARY, b"x"));
        let got = feed(&mut Decoder::new(10), [&early[..]], false);
        assert!(matches!(
            got.as_slice(),
            [Err(FrameError::TooLarge(10)), Err(FrameError::Protocol(_))]
        ));
    }

    #[test]
    fn the_longest_announced_length_is_counted_down_without_a_buffer() {
        let mut decoder = Decoder::new(10);
        let longest = (1u64 << 63) - 1;
        let mut buf = BytesMut::from(&[0x82, 0xFF][..]);
        buf.extend_from_slice(&longest.to_be_bytes());
        buf.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(decoder.decode(&mut buf), Err(FrameError::TooLarge(10)));
        let zeros = [0u8; 4096];
        for _ in 0..256 {
            buf.extend_from_slice(&zeros);
            assert_eq!(decoder.decode(&mut buf), Ok(None));
            assert!(buf.is_empty());
            assert!(buf.capacity() <= zeros.len() + 14);
        }
        assert_eq!(decoder.discarding(), longest - 256 * 4096);
        // What is left, handed over at once, then a close frame.
        assert_eq!(decoder.discard(usize::MAX), (longest - 256 * 4096) as usize);
        assert_eq!(decoder.discarding(), 0);
        let close = client_frame(true, opcode::CLOSE, &[0x03, 0xE8]);
        assert_eq!(decoder.discard(close.len()), 0);
        assert_eq!(
            decode_all(&mut decoder, &close),
            Ok(vec![Incoming::Close(Some(1000))])
        );
    }

    #[test]
    fn text_continuations_are_discarded_without_waiting_for_them() {
        let mut bytes = client_frame(false, opcode::TEXT, b"ab");
        let mut decoder = Decoder::new(64);
        bytes.extend(&client_frame(true, opcode::CONTINUATION, &[0; 60])[..8]);
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(Some(Incoming::Text)));
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert_eq!(decoder.discarding(), 58);
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
