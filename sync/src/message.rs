//! The y-websocket wire format: y-sync and awareness messages, decoded without copying.

use crate::lib0::{write_var_bytes, write_var_u64, ReadError, Reader, Short};

/// Outer message type: a y-sync message.
pub const MSG_SYNC: u64 = 0;
/// Outer message type: an awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Outer message type: an auth message (server to client: permission denied).
pub const MSG_AUTH: u64 = 2;
/// Outer message type: a request for every known awareness state.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Sync sub-type: step 1, carrying the sender's state vector.
pub const SYNC_STEP1: u64 = 0;
/// Sync sub-type: step 2, carrying what the receiver of step 1 lacked.
pub const SYNC_STEP2: u64 = 1;
/// Sync sub-type: an incremental update.
pub const SYNC_UPDATE: u64 = 2;

/// One y-websocket message, borrowing its payload from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A y-sync message.
    Sync(SyncMessage<'a>),
    /// An encoded awareness update.
    Awareness(&'a [u8]),
    /// Permission denied, with a reason (only servers send it).
    AuthDenied(&'a str),
    /// A request for every known awareness state.
    QueryAwareness,
}

/// The three y-sync messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMessage<'a> {
    /// The sender's v1 state vector.
    Step1(&'a [u8]),
    /// A v1 update answering a step 1.
    Step2(&'a [u8]),
    /// An incremental v1 update.
    Update(&'a [u8]),
}

/// Bounds checked while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageLimits {
    /// A length prefix above this is invalid even before its bytes arrive.
    pub payload_bytes_max: usize,
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ends early; `needed` more bytes at least would be required.
    #[error("message is truncated ({needed} more bytes expected)")]
    Incomplete {
        /// Bytes missing, at least.
        needed: usize,
    },
    /// The input can never become a valid message.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// The ways input is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A frame with no bytes.
    #[error("empty frame")]
    EmptyFrame,
    /// An outer message type that is not 0..=3.
    #[error("unknown message type {0}")]
    UnknownMessageType(u64),
    /// A sync sub-type that is not 0..=2.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An auth sub-type other than 0 (permission denied).
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    /// A variable-length integer longer than 64 bits.
    #[error("variable-length integer overflows 64 bits")]
    VarIntOverflow,
    /// A string that is not UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
    /// A length prefix above the payload limit.
    #[error("length prefix {len} exceeds the limit of {limit} bytes")]
    LengthOverLimit {
        /// The claimed length.
        len: u64,
        /// The limit.
        limit: usize,
    },
}

impl From<ReadError> for DecodeError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Short(Short { needed }) => DecodeError::Incomplete { needed },
            ReadError::VarIntOverflow => DecodeError::Invalid(Invalid::VarIntOverflow),
            ReadError::NotUtf8 => DecodeError::Invalid(Invalid::NotUtf8),
        }
    }
}

fn read_payload<'a>(r: &mut Reader<'a>, limits: MessageLimits) -> Result<&'a [u8], DecodeError> {
    let mut peek = r.clone();
    let len = peek.read_var_u64()?;
    if len > limits.payload_bytes_max as u64 {
        return Err(Invalid::LengthOverLimit {
            len,
            limit: limits.payload_bytes_max,
        }
        .into());
    }
    Ok(r.read_var_bytes()?)
}

impl<'a> Message<'a> {
    /// Decodes one message from the front of `buf`, returning it and the bytes it used.
    pub fn decode(
        buf: &'a [u8],
        limits: MessageLimits,
    ) -> Result<(Message<'a>, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.read_var_u64()? {
            MSG_SYNC => {
                let sub = r.read_var_u64()?;
                let payload = match sub {
                    SYNC_STEP1 | SYNC_STEP2 | SYNC_UPDATE => read_payload(&mut r, limits)?,
                    other => return Err(Invalid::UnknownSyncType(other).into()),
                };
                Message::Sync(match sub {
                    SYNC_STEP1 => SyncMessage::Step1(payload),
                    SYNC_STEP2 => SyncMessage::Step2(payload),
                    _ => SyncMessage::Update(payload),
                })
            }
            MSG_AWARENESS => Message::Awareness(read_payload(&mut r, limits)?),
            MSG_AUTH => match r.read_var_u64()? {
                0 => {
                    let reason = read_payload(&mut r, limits)?;
                    Message::AuthDenied(std::str::from_utf8(reason).map_err(|_| Invalid::NotUtf8)?)
                }
                other => return Err(Invalid::UnknownAuthType(other).into()),
            },
            MSG_QUERY_AWARENESS => Message::QueryAwareness,
            other => return Err(Invalid::UnknownMessageType(other).into()),
        };
        Ok((msg, r.position()))
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Sync(sync) => {
                write_var_u64(out, MSG_SYNC);
                let (sub, payload) = match sync {
                    SyncMessage::Step1(p) => (SYNC_STEP1, p),
                    SyncMessage::Step2(p) => (SYNC_STEP2, p),
                    SyncMessage::Update(p) => (SYNC_UPDATE, p),
                };
                write_var_u64(out, sub);
                write_var_bytes(out, payload);
            }
            Message::Awareness(p) => {
                write_var_u64(out, MSG_AWARENESS);
                write_var_bytes(out, p);
            }
            Message::AuthDenied(reason) => {
                write_var_u64(out, MSG_AUTH);
                write_var_u64(out, 0);
                write_var_bytes(out, reason.as_bytes());
            }
            Message::QueryAwareness => write_var_u64(out, MSG_QUERY_AWARENESS),
        }
    }

    /// The message encoded into a fresh buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Decodes every message of one WebSocket frame. A frame is complete by definition, so a
/// message cut short at its end is reported as [`DecodeError::Incomplete`] for the caller to
/// treat as a protocol error.
pub fn decode_frame(frame: &[u8], limits: MessageLimits) -> Result<Vec<Message<'_>>, DecodeError> {
    if frame.is_empty() {
        return Err(Invalid::EmptyFrame.into());
    }
    let mut messages = Vec::with_capacity(1);
    let mut rest = frame;
    while !rest.is_empty() {
        let (msg, used) = Message::decode(rest, limits)?;
        messages.push(msg);
        rest = &rest[used..];
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: MessageLimits = MessageLimits {
        payload_bytes_max: 1 << 20,
    };

    fn arb_message() -> impl Strategy<Value = (u8, Vec<u8>, String)> {
        (
            0u8..6,
            proptest::collection::vec(any::<u8>(), 0..200),
            ".{0,20}",
        )
    }

    fn build<'a>(kind: u8, bytes: &'a [u8], text: &'a str) -> Message<'a> {
        match kind {
            0 => Message::Sync(SyncMessage::Step1(bytes)),
            1 => Message::Sync(SyncMessage::Step2(bytes)),
            2 => Message::Sync(SyncMessage::Update(bytes)),
            3 => Message::Awareness(bytes),
            4 => Message::AuthDenied(text),
            _ => Message::QueryAwareness,
        }
    }

    proptest! {
        #[test]
        fn messages_round_trip(msgs in proptest::collection::vec(arb_message(), 1..5)) {
            let built: Vec<Message<'_>> = msgs.iter().map(|(k, b, t)| build(*k, b, t)).collect();
            let mut frame = Vec::new();
            for m in &built {
                m.encode(&mut frame);
            }
            prop_assert_eq!(decode_frame(&frame, LIMITS), Ok(built));
        }

        #[test]
        fn any_prefix_is_incomplete_not_invalid((k, b, t) in arb_message()) {
            let frame = build(k, &b, &t).to_vec();
            for cut in 0..frame.len() {
                match Message::decode(&frame[..cut], LIMITS) {
                    Err(DecodeError::Incomplete { .. }) => {}
                    other => prop_assert!(false, "prefix {} of {:?} gave {:?}", cut, frame, other),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame(&bytes, LIMITS);
        }
    }

    #[test]
    fn invalid_inputs_are_named() {
        let cases: [(&[u8], DecodeError); 6] = [
            (&[], Invalid::EmptyFrame.into()),
            (&[9], Invalid::UnknownMessageType(9).into()),
            (&[0, 3, 0], Invalid::UnknownSyncType(3).into()),
            (&[2, 1], Invalid::UnknownAuthType(1).into()),
            (&[0xff; 12], Invalid::VarIntOverflow.into()),
            (
                &[0, 2, 0xff, 0xff, 0xff, 0xff, 0x0f],
                Invalid::LengthOverLimit {
                    len: 0xffff_ffff,
                    limit: 1 << 20,
                }
                .into(),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(decode_frame(input, LIMITS), Err(want), "input {input:?}");
        }
        assert_eq!(
            decode_frame(&[0, 2, 5, 1, 2], LIMITS),
            Err(DecodeError::Incomplete { needed: 3 })
        );
    }
}
