//! The room protocol's wire format, as the MeshAgent SDKs define it (`meshagent/api/protocol.py`
//! and `messaging.py` of `meshagent-api` 0.56).
//!
//! Two layers, both sans-IO:
//!
//! - **Packets.** Every WebSocket binary frame is one packet. A message is a *header packet*
//!   `u64 message id | u32 0 | u32 packet count | type (UTF-8)` followed by `packet count` *data
//!   packets* `u64 message id | u32 index (1..=count) | at most 1024 bytes`, all integers
//!   big-endian. [`Assembler`] turns packets back into messages under [`WireLimits`];
//!   [`encode_message`] cuts a message into packets.
//! - **Payloads.** A message's data is `u64 header length | JSON header | binary trailer`. The
//!   SDK adds a `__meshagent__` entry (`{v, otel}`) to every header; [`Payload::decode`] reads
//!   and strips it. [`Content`] is the closed set of content types carried in headers (`json`,
//!   `text`, `binary`, `file`, `link`, `empty`, `error`, `control`, `raw`).
//!
//! Incomplete input (a message still missing packets) is told apart from invalid input (bytes
//! that can never become a message): the first is `Ok(None)`, the second an error that names
//! the close code the connection gets.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::CloseCode;

/// The most data bytes one data packet carries.
pub const PACKET_DATA_MAX: usize = 1024;
/// Bytes before the data of a data packet: message id and index.
pub const DATA_PACKET_PREFIX: usize = 12;
/// Bytes before the type of a header packet: message id, 0 and packet count.
pub const HEADER_PACKET_PREFIX: usize = 16;
/// The header key the SDK adds to every payload header.
pub const MESHAGENT_KEY: &str = "__meshagent__";

/// A big-endian integer from the first 8 bytes of `b` (which has them).
fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A big-endian integer from the first 4 bytes of `b` (which has them).
fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

/// Bounds on what one connection may make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// The largest message, in data bytes (sum of its packets).
    pub message_bytes_max: usize,
    /// The longest message type, in bytes.
    pub type_bytes_max: usize,
    /// The largest JSON header of a payload, in bytes.
    pub header_bytes_max: usize,
    /// The deepest nesting of arrays and objects in a JSON header.
    pub json_depth_max: usize,
    /// Messages whose header packet arrived but not yet every data packet.
    pub assembling_max: usize,
    /// Data bytes held for messages being assembled, all of them together.
    pub assembling_bytes_max: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            message_bytes_max: 16 << 20,
            type_bytes_max: 256,
            header_bytes_max: 1 << 20,
            json_depth_max: 64,
            assembling_max: 16,
            assembling_bytes_max: 32 << 20,
        }
    }
}

impl WireLimits {
    /// The most data packets a message may announce.
    pub fn packets_max(&self) -> u64 {
        self.message_bytes_max.div_ceil(PACKET_DATA_MAX) as u64
    }
}

/// Why packets or a payload are invalid. Each names the close code its sender gets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A packet shorter than its fixed prefix.
    #[error("packet of {len} bytes is shorter than its {needed}-byte prefix")]
    ShortPacket {
        /// The packet's length.
        len: usize,
        /// The prefix length it needs.
        needed: usize,
    },
    /// A header packet whose type is empty, not UTF-8 or too long.
    #[error("message type is empty, not UTF-8 or longer than {max} bytes")]
    BadType {
        /// The limit.
        max: usize,
    },
    /// A header packet announcing more packets than the message size limit allows.
    #[error("message announces {count} packets, more than the limit of {max}")]
    TooManyPackets {
        /// The announced count.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A header packet for a message id already being assembled.
    #[error("message {id} started twice")]
    DuplicateMessage {
        /// The message id.
        id: u64,
    },
    /// A header packet while the limit of messages being assembled is reached.
    #[error("more than {max} messages being assembled at once")]
    TooManyAssembling {
        /// The limit.
        max: usize,
    },
    /// A data packet for a message that is not being assembled.
    #[error("data packet for message {id}, which is not being assembled")]
    UnknownMessage {
        /// The message id.
        id: u64,
    },
    /// A data packet out of order.
    #[error("data packet {got} of message {id}, expected {expected}")]
    OutOfOrder {
        /// The message id.
        id: u64,
        /// The expected index.
        expected: u64,
        /// The index received.
        got: u64,
    },
    /// A data packet with more than [`PACKET_DATA_MAX`] data bytes.
    #[error("data packet carries {len} bytes, more than {PACKET_DATA_MAX}")]
    PacketTooLarge {
        /// Its data bytes.
        len: usize,
    },
    /// A message, or all messages being assembled together, over a size limit.
    #[error("message data exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// The limit.
        max: usize,
    },
    /// A payload shorter than its header length prefix says.
    #[error("payload header is truncated")]
    TruncatedPayload,
    /// A JSON header over the size limit.
    #[error("payload header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A JSON header nested deeper than the limit.
    #[error("payload header nests deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// A JSON header that does not parse or is not an object.
    #[error("payload header is not a JSON object: {0}")]
    BadHeader(String),
}

impl WireError {
    /// The close code the sender of this input gets.
    pub fn close_code(&self) -> CloseCode {
        match self {
            WireError::TooManyPackets { .. }
            | WireError::MessageTooLarge { .. }
            | WireError::HeaderTooLarge { .. }
            | WireError::PacketTooLarge { .. } => CloseCode::TooLarge,
            _ => CloseCode::ProtocolError,
        }
    }
}

/// A whole message: its id, type and data (a payload, see [`Payload`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    /// The sender's message id (a request's id, echoed by its `__response__`).
    pub id: u64,
    /// The message type, e.g. `room.invoke_tool`.
    pub kind: String,
    /// The message data.
    pub data: Bytes,
}

#[derive(Debug)]
struct Assembling {
    id: u64,
    kind: String,
    total: u64,
    next: u64,
    data: BytesMut,
}

/// Turns one connection's packets back into messages.
#[derive(Debug)]
pub struct Assembler {
    limits: WireLimits,
    open: VecDeque<Assembling>,
    held: usize,
}

impl Assembler {
    /// An assembler holding nothing.
    pub fn new(limits: WireLimits) -> Assembler {
        Assembler {
            limits,
            open: VecDeque::new(),
            held: 0,
        }
    }

    /// Messages whose header packet arrived and some data packet has not.
    pub fn assembling(&self) -> usize {
        self.open.len()
    }

    /// Data bytes held for messages being assembled.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Takes one packet: `Ok(Some(message))` when it completes one, `Ok(None)` when more
    /// packets are needed, an error when the input can never be valid.
    pub fn push(&mut self, packet: &[u8]) -> Result<Option<RawMessage>, WireError> {
        if packet.len() < DATA_PACKET_PREFIX {
            return Err(WireError::ShortPacket {
                len: packet.len(),
                needed: DATA_PACKET_PREFIX,
            });
        }
        let id = be_u64(&packet[0..8]);
        let index = be_u32(&packet[8..12]) as u64;
        if index == 0 {
            return self.start(id, packet);
        }
        let Some(pos) = self.open.iter().position(|m| m.id == id) else {
            return Err(WireError::UnknownMessage { id });
        };
        let data = &packet[DATA_PACKET_PREFIX..];
        if data.len() > PACKET_DATA_MAX {
            return Err(WireError::PacketTooLarge { len: data.len() });
        }
        let m = &mut self.open[pos];
        if index != m.next {
            return Err(WireError::OutOfOrder {
                id,
                expected: m.next,
                got: index,
            });
        }
        if m.data.len() + data.len() > self.limits.message_bytes_max
            || self.held + data.len() > self.limits.assembling_bytes_max
        {
            return Err(WireError::MessageTooLarge {
                max: self.limits.message_bytes_max,
            });
        }
        m.data.extend_from_slice(data);
        self.held += data.len();
        if m.next < m.total {
            m.next += 1;
            return Ok(None);
        }
        let Some(m) = self.open.remove(pos) else {
            return Ok(None);
        };
        self.held -= m.data.len();
        Ok(Some(RawMessage {
            id: m.id,
            kind: m.kind,
            data: m.data.freeze(),
        }))
    }

    fn start(&mut self, id: u64, packet: &[u8]) -> Result<Option<RawMessage>, WireError> {
        if packet.len() < HEADER_PACKET_PREFIX {
            return Err(WireError::ShortPacket {
                len: packet.len(),
                needed: HEADER_PACKET_PREFIX,
            });
        }
        let total = be_u32(&packet[12..16]) as u64;
        let raw_kind = &packet[HEADER_PACKET_PREFIX..];
        let kind = match std::str::from_utf8(raw_kind) {
            Ok(k) if !k.is_empty() && k.len() <= self.limits.type_bytes_max => k.to_owned(),
            _ => {
                return Err(WireError::BadType {
                    max: self.limits.type_bytes_max,
                })
            }
        };
        if total > self.limits.packets_max() {
            return Err(WireError::TooManyPackets {
                count: total,
                max: self.limits.packets_max(),
            });
        }
        if total == 0 {
            return Ok(Some(RawMessage {
                id,
                kind,
                data: Bytes::new(),
            }));
        }
        if self.open.iter().any(|m| m.id == id) {
            return Err(WireError::DuplicateMessage { id });
        }
        if self.open.len() >= self.limits.assembling_max {
            return Err(WireError::TooManyAssembling {
                max: self.limits.assembling_max,
            });
        }
        self.open.push_back(Assembling {
            id,
            kind,
            total,
            next: 1,
            data: BytesMut::new(),
        });
        Ok(None)
    }
}

/// Cuts a message into its packets: the header packet, then the data packets.
pub fn encode_message(id: u64, kind: &str, data: &[u8]) -> Vec<Bytes> {
    queued_packets(&queued_message(id, kind, data)).collect()
}

/// Writes a message's packets end to end behind the length of its type: the layout of a
/// queued message (see [`queued_message`]). The data is given in parts, cut into data packets
/// as it comes.
struct PacketWriter {
    b: BytesMut,
    id: u64,
    /// Data bytes written into the current data packet.
    in_packet: usize,
    /// Data packets begun.
    packets: u32,
}

impl PacketWriter {
    fn new(id: u64, kind: &str, data_len: usize) -> PacketWriter {
        let count = data_len.div_ceil(PACKET_DATA_MAX);
        let total = 4 + HEADER_PACKET_PREFIX + kind.len() + count * DATA_PACKET_PREFIX + data_len;
        let mut b = BytesMut::with_capacity(total);
        b.put_u32(kind.len() as u32);
        b.put_u64(id);
        b.put_u32(0);
        b.put_u32(count as u32);
        b.extend_from_slice(kind.as_bytes());
        PacketWriter {
            b,
            id,
            in_packet: PACKET_DATA_MAX,
            packets: 0,
        }
    }

    fn write(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.in_packet == PACKET_DATA_MAX {
                self.packets += 1;
                self.b.put_u64(self.id);
                self.b.put_u32(self.packets);
                self.in_packet = 0;
            }
            let n = data.len().min(PACKET_DATA_MAX - self.in_packet);
            self.b.extend_from_slice(&data[..n]);
            self.in_packet += n;
            data = &data[n..];
        }
    }

    fn finish(self) -> Bytes {
        self.b.freeze()
    }
}

/// A whole message as one buffer, for queues that count messages rather than packets: its
/// packets cut already and laid end to end behind the length of its type, `u32 type length |
/// header packet | data packets`. [`queued_packets`] slices them apart, copying nothing.
pub fn queued_message(id: u64, kind: &str, data: &[u8]) -> Bytes {
    let mut w = PacketWriter::new(id, kind, data.len());
    w.write(data);
    w.finish()
}

/// [`queued_message`] for a payload given as its parts, the JSON header already serialised:
/// written straight into one buffer, for messages sent to many connections.
pub fn queued_payload(id: u64, kind: &str, header_json: &[u8], trailer: &[u8]) -> Bytes {
    queued_payload_parts(id, kind, &[header_json], trailer)
}

/// [`queued_payload`] with the JSON header given as pieces laid end to end (a header
/// serialised once, with the few bytes that differ between recipients spliced in).
pub fn queued_payload_parts(id: u64, kind: &str, header_json: &[&[u8]], trailer: &[u8]) -> Bytes {
    let header_len: usize = header_json.iter().map(|p| p.len()).sum();
    let mut w = PacketWriter::new(id, kind, 8 + header_len + trailer.len());
    w.write(&(header_len as u64).to_be_bytes());
    for part in header_json {
        w.write(part);
    }
    w.write(trailer);
    w.finish()
}

/// Where the packets of a queued message lie in it: none if it is not one.
fn packet_ranges(queued: &[u8]) -> impl Iterator<Item = std::ops::Range<usize>> {
    let layout = (|| {
        let kind_len = be_u32(queued.get(..4)?) as usize;
        let header_end = 4usize
            .checked_add(HEADER_PACKET_PREFIX)?
            .checked_add(kind_len)?;
        let header = queued.get(4..header_end)?;
        let count = be_u32(&header[12..16]) as usize;
        let data = queued.len() - header_end;
        if count == 0 {
            return (data == 0).then_some((header_end, 0));
        }
        // Every data packet but the last is full; the last holds at least one byte.
        let full = (count - 1).checked_mul(DATA_PACKET_PREFIX + PACKET_DATA_MAX)?;
        let last = data.checked_sub(full + DATA_PACKET_PREFIX)?;
        (1..=PACKET_DATA_MAX)
            .contains(&last)
            .then_some((header_end, count))
    })();
    let (header_end, count) = layout.unwrap_or((0, 0));
    let header = (header_end > 0).then_some(4..header_end);
    let len = queued.len();
    let data = (0..count).map(move |i| {
        let start = header_end + i * (DATA_PACKET_PREFIX + PACKET_DATA_MAX);
        start..(start + DATA_PACKET_PREFIX + PACKET_DATA_MAX).min(len)
    });
    header.into_iter().chain(data)
}

/// The packets of a message made by [`queued_message`] (none if it is not one), as slices of
/// it.
pub fn queued_packets(queued: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    packet_ranges(queued).map(|r| queued.slice(r))
}

/// What the SDK's `__meshagent__` header entry says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Its `v`: the envelope version the sender speaks.
    pub version: Option<u64>,
    /// Its `otel`: the trace context (W3C `traceparent` and friends), kept as sent.
    pub trace: Option<Map<String, Value>>,
}

/// A decoded payload: the JSON header without `__meshagent__`, and the trailer.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The header object.
    pub header: Map<String, Value>,
    /// The bytes after the header.
    pub trailer: Bytes,
    /// The `__meshagent__` entry, when the sender added one.
    pub meta: Option<Meta>,
}

impl Payload {
    /// Decodes `u64 header length | JSON header | trailer` under the limits.
    pub fn decode(data: &Bytes, limits: &WireLimits) -> Result<Payload, WireError> {
        if data.len() < 8 {
            return Err(WireError::TruncatedPayload);
        }
        let len = be_u64(&data[0..8]);
        if len > limits.header_bytes_max as u64 {
            return Err(WireError::HeaderTooLarge {
                len,
                max: limits.header_bytes_max,
            });
        }
        let end = 8 + len as usize;
        if data.len() < end {
            return Err(WireError::TruncatedPayload);
        }
        let json = &data[8..end];
        check_depth(json, limits.json_depth_max)?;
        let value: Value =
            serde_json::from_slice(json).map_err(|e| WireError::BadHeader(e.to_string()))?;
        let Value::Object(mut header) = value else {
            return Err(WireError::BadHeader("not an object".into()));
        };
        let meta = header.remove(MESHAGENT_KEY).map(|m| Meta {
            version: m.get("v").and_then(Value::as_u64),
            trace: m.get("otel").and_then(Value::as_object).cloned(),
        });
        Ok(Payload {
            header,
            trailer: data.slice(end..),
            meta,
        })
    }

    /// Encodes a header (which must serialise to an object) and a trailer.
    pub fn encode(header: &Value, trailer: &[u8]) -> Vec<u8> {
        // Serialising a JSON value into a Vec cannot fail.
        let json = serde_json::to_vec(header).unwrap_or_default();
        let mut out = Vec::with_capacity(8 + json.len() + trailer.len());
        out.extend_from_slice(&(json.len() as u64).to_be_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(trailer);
        out
    }
}

/// Refuses JSON nested deeper than `max` before it is parsed (so a parser never recurses on
/// hostile input). Counts `[` and `{` outside strings; malformed JSON is left to the parser.
fn check_depth(json: &[u8], max: usize) -> Result<(), WireError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(WireError::TooDeep { max });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A stream's control content: `open` starts a stream, `close` ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The answer that makes a call a stream.
    Open,
    /// The end of a stream, with the SDK's status (1000 normal, 1007 invalid data).
    Close {
        /// Its status code.
        status_code: Option<u16>,
        /// Its message.
        message: Option<String>,
    },
}

/// The content types of the SDK, closed: an unknown `type` is invalid.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// `{type: "json", json}`.
    Json(Value),
    /// `{type: "text", text}`.
    Text(String),
    /// `{type: "binary", headers}` with the data in the trailer.
    Binary {
        /// Its headers.
        headers: Map<String, Value>,
        /// Its data.
        data: Bytes,
    },
    /// `{type: "file", name, mime_type}` with the file in the trailer.
    File {
        /// The file's name.
        name: String,
        /// Its MIME type.
        mime_type: String,
        /// Its bytes.
        data: Bytes,
    },
    /// `{type: "link", name, url}`.
    Link {
        /// The link's name.
        name: String,
        /// Its URL.
        url: String,
    },
    /// `{type: "empty"}`.
    Empty,
    /// `{type: "error", text, code?}`.
    Error {
        /// What went wrong.
        text: String,
        /// An SDK error code ([`ErrorCode`]).
        code: Option<i64>,
    },
    /// `{type: "control", method, status_code?, message?}`.
    Control(Control),
    /// `{type: "raw", outputs}`.
    Raw(Vec<Value>),
}

/// Why a header is not valid content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// No `type`, or not a string.
    #[error("content header is missing required 'type'")]
    MissingType,
    /// A `type` outside the closed set.
    #[error("unsupported content type: {0}")]
    UnknownType(String),
    /// A field missing or of the wrong type.
    #[error("{kind} content is missing required field '{field}'")]
    MissingField {
        /// The content type.
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
}

fn str_field(
    h: &Map<String, Value>,
    kind: &'static str,
    field: &'static str,
) -> Result<String, ContentError> {
    match h.get(field) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(ContentError::MissingField { kind, field }),
    }
}

impl Content {
    /// Reads content from a header object and the trailer that came with it.
    pub fn from_parts(
        header: &Map<String, Value>,
        trailer: Bytes,
    ) -> Result<Content, ContentError> {
        let Some(Value::String(kind)) = header.get("type") else {
            return Err(ContentError::MissingType);
        };
        Ok(match kind.as_str() {
            "json" => Content::Json(header.get("json").cloned().ok_or(
                ContentError::MissingField {
                    kind: "json",
                    field: "json",
                },
            )?),
            "text" => Content::Text(str_field(header, "text", "text")?),
            "binary" => Content::Binary {
                headers: match header.get("headers") {
                    Some(Value::Object(h)) => h.clone(),
                    _ => Map::new(),
                },
                data: trailer,
            },
            "file" => Content::File {
                name: str_field(header, "file", "name")?,
                mime_type: str_field(header, "file", "mime_type")?,
                data: trailer,
            },
            "link" => Content::Link {
                name: str_field(header, "link", "name")?,
                url: str_field(header, "link", "url")?,
            },
            "empty" => Content::Empty,
            "error" => Content::Error {
                text: str_field(header, "error", "text")?,
                code: header.get("code").and_then(Value::as_i64),
            },
            "control" => match header.get("method").and_then(Value::as_str) {
                Some("open") => Content::Control(Control::Open),
                Some("close") => Content::Control(Control::Close {
                    status_code: header
                        .get("status_code")
                        .and_then(Value::as_u64)
                        .and_then(|c| u16::try_from(c).ok()),
                    message: header
                        .get("message")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                }),
                _ => {
                    return Err(ContentError::MissingField {
                        kind: "control",
                        field: "method",
                    })
                }
            },
            "raw" => Content::Raw(match header.get("outputs") {
                Some(Value::Array(a)) => a.clone(),
                _ => {
                    return Err(ContentError::MissingField {
                        kind: "raw",
                        field: "outputs",
                    })
                }
            }),
            other => return Err(ContentError::UnknownType(other.to_owned())),
        })
    }

    /// The content's header object and trailer, as the SDK's `pack_request_parts` makes them.
    pub fn to_parts(&self) -> (Value, Bytes) {
        use serde_json::json;
        match self {
            Content::Json(v) => (json!({"type": "json", "json": v}), Bytes::new()),
            Content::Text(t) => (json!({"type": "text", "text": t}), Bytes::new()),
            Content::Binary { headers, data } => {
                (json!({"type": "binary", "headers": headers}), data.clone())
            }
            Content::File {
                name,
                mime_type,
                data,
            } => (
                json!({"type": "file", "name": name, "mime_type": mime_type}),
                data.clone(),
            ),
            Content::Link { name, url } => (
                json!({"type": "link", "name": name, "url": url}),
                Bytes::new(),
            ),
            Content::Empty => (json!({"type": "empty"}), Bytes::new()),
            Content::Error { text, code } => {
                let mut v = json!({"type": "error", "text": text});
                if let Some(c) = code {
                    v["code"] = json!(c);
                }
                (v, Bytes::new())
            }
            Content::Control(Control::Open) => {
                (json!({"type": "control", "method": "open"}), Bytes::new())
            }
            Content::Control(Control::Close {
                status_code,
                message,
            }) => {
                let mut v = json!({"type": "control", "method": "close",
                    "status_code": status_code.unwrap_or(1000)});
                if let Some(m) = message {
                    v["message"] = json!(m);
                }
                (v, Bytes::new())
            }
            Content::Raw(outputs) => (json!({"type": "raw", "outputs": outputs}), Bytes::new()),
        }
    }

    /// The content as a whole payload (a `__response__`'s data, say).
    pub fn encode(&self) -> Vec<u8> {
        let (header, trailer) = self.to_parts();
        Payload::encode(&header, &trailer)
    }

    /// An error answer with an SDK error code.
    pub fn error(code: ErrorCode, text: impl Into<String>) -> Content {
        Content::Error {
            text: text.into(),
            code: Some(code as i64),
        }
    }
}

/// The SDK's error codes (`meshagent/api/error_codes.py`) that roomd answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i64)]
pub enum ErrorCode {
    /// The token's grants do not allow the operation.
    PermissionDenied = 1001,
    /// The request is malformed.
    InvalidRequest = 1002,
    /// What the request names does not exist (a toolkit, a tool, a participant).
    NotFound = 1003,
    /// What the request would create exists already.
    AlreadyExists = 1004,
    /// The operation conflicts with the current state.
    Conflict = 1005,
    /// The operation is not valid in the current state.
    InvalidState = 1006,
    /// The operation failed on the server.
    OperationFailed = 1008,
    /// The operation did not finish in time.
    Timeout = 1009,
    /// A document stream is not open.
    SyncNotConnected = 4001,
    /// A document stream is open already.
    SyncAlreadyConnected = 4002,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> WireLimits {
        WireLimits {
            message_bytes_max: 8 * 1024,
            assembling_max: 2,
            assembling_bytes_max: 12 * 1024,
            ..WireLimits::default()
        }
    }

    fn assemble(packets: &[Bytes], a: &mut Assembler) -> Result<Vec<RawMessage>, WireError> {
        let mut out = Vec::new();
        for p in packets {
            if let Some(m) = a.push(p)? {
                out.push(m);
            }
        }
        Ok(out)
    }

    #[test]
    fn messages_round_trip_through_packets_of_every_size() {
        for len in [0usize, 1, 1023, 1024, 1025, 2048, 5000] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let packets = encode_message(7, "room.invoke_tool", &data);
            assert_eq!(packets.len(), 1 + len.div_ceil(1024));
            let mut a = Assembler::new(limits());
            let got = assemble(&packets, &mut a).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].id, 7);
            assert_eq!(got[0].kind, "room.invoke_tool");
            assert_eq!(&got[0].data[..], &data[..]);
            assert_eq!(a.assembling(), 0);
            assert_eq!(a.held_bytes(), 0);
        }
    }

    #[test]
    fn queued_messages_give_the_packets_of_the_message() {
        let data = vec![9u8; 2100];
        let q = queued_message(42, "__response__", &data);
        let packets: Vec<Bytes> = queued_packets(&q).collect();
        assert_eq!(packets.len(), 4);
        let mut a = Assembler::new(limits());
        let got = assemble(&packets, &mut a).unwrap();
        assert_eq!((got[0].id, &*got[0].kind), (42, "__response__"));
        assert_eq!(&got[0].data[..], &data[..]);
        assert_eq!(queued_packets(&q.slice(..3)).count(), 0);
        // Short of its last packet's data, or of the whole packet, it is not a message.
        assert_eq!(queued_packets(&q.slice(..q.len() - 52)).count(), 0);
        assert_eq!(queued_packets(&q.slice(..q.len() - 64)).count(), 0);
        // An empty message is its header packet alone.
        let e = queued_message(1, "x", b"");
        assert_eq!(queued_packets(&e).count(), 1);
        assert_eq!(
            queued_packets(&e).next().unwrap().len(),
            HEADER_PACKET_PREFIX + 1
        );
    }

    #[test]
    fn payloads_written_in_parts_are_the_payload_written_whole() {
        for len in [0usize, 10, 1000, 1010, 3000] {
            let trailer = vec![3u8; len];
            let whole = queued_payload(5, "k", br#"{"a":1,"b":[2]}"#, &trailer);
            let parts = [&br#"{"a":1,"#[..], &br#""b":"#[..], &b"[2]}"[..]];
            assert_eq!(queued_payload_parts(5, "k", &parts, &trailer), whole);
            let mut data = (15u64).to_be_bytes().to_vec();
            data.extend_from_slice(br#"{"a":1,"b":[2]}"#);
            data.extend_from_slice(&trailer);
            assert_eq!(whole, queued_message(5, "k", &data));
        }
    }

    #[test]
    fn incomplete_input_is_not_an_error() {
        let packets = encode_message(1, "t", &[0u8; 3000]);
        let mut a = Assembler::new(limits());
        for p in &packets[..packets.len() - 1] {
            assert_eq!(a.push(p), Ok(None));
        }
        assert_eq!(a.assembling(), 1);
        assert!(a.push(&packets[packets.len() - 1]).unwrap().is_some());
    }

    #[test]
    fn interleaved_messages_assemble_up_to_the_limit() {
        let a1 = encode_message(1, "a", &[1u8; 1500]);
        let b1 = encode_message(2, "b", &[2u8; 1500]);
        let mut a = Assembler::new(limits());
        assert_eq!(a.push(&a1[0]), Ok(None));
        assert_eq!(a.push(&b1[0]), Ok(None));
        assert_eq!(a.push(&a1[1]), Ok(None));
        assert_eq!(a.push(&b1[1]), Ok(None));
        assert_eq!(a.push(&b1[2]).unwrap().unwrap().kind, "b");
        assert_eq!(a.push(&a1[2]).unwrap().unwrap().kind, "a");
        let c = encode_message(3, "c", &[0u8; 10]);
        let d = encode_message(4, "d", &[0u8; 10]);
        let e = encode_message(5, "e", &[0u8; 10]);
        a.push(&c[0]).unwrap();
        a.push(&d[0]).unwrap();
        assert_eq!(a.push(&e[0]), Err(WireError::TooManyAssembling { max: 2 }));
    }

    #[test]
    fn hostile_packets_are_refused_with_their_codes() {
        let mut a = Assembler::new(limits());
        let err = a.push(&[0u8; 5]).unwrap_err();
        assert_eq!(err.close_code(), CloseCode::ProtocolError);

        // A data packet for no message.
        let p = encode_message(9, "x", &[1u8; 10]);
        assert_eq!(a.push(&p[1]), Err(WireError::UnknownMessage { id: 9 }));

        // Out of order.
        let p = encode_message(10, "x", &[1u8; 3000]);
        a.push(&p[0]).unwrap();
        assert!(matches!(a.push(&p[2]), Err(WireError::OutOfOrder { .. })));

        // Counts beyond the size limit are refused from the header packet alone.
        let mut a = Assembler::new(limits());
        let mut h = BytesMut::new();
        h.put_u64(1);
        h.put_u32(0);
        h.put_u32(u32::MAX);
        h.extend_from_slice(b"x");
        let err = a.push(&h).unwrap_err();
        assert!(matches!(err, WireError::TooManyPackets { .. }));
        assert_eq!(err.close_code(), CloseCode::TooLarge);

        // An empty or non-UTF-8 type.
        let mut h = BytesMut::new();
        h.put_u64(1);
        h.put_u32(0);
        h.put_u32(1);
        assert!(matches!(a.push(&h), Err(WireError::BadType { .. })));
        h.extend_from_slice(&[0xff, 0xfe]);
        assert!(matches!(a.push(&h), Err(WireError::BadType { .. })));

        // An oversized data packet.
        let mut a = Assembler::new(limits());
        let p = encode_message(2, "x", &[1u8; 10]);
        a.push(&p[0]).unwrap();
        let mut big = BytesMut::new();
        big.put_u64(2);
        big.put_u32(1);
        big.extend_from_slice(&[0u8; 1025]);
        assert_eq!(a.push(&big), Err(WireError::PacketTooLarge { len: 1025 }));

        // The same id twice.
        let mut a = Assembler::new(limits());
        let p = encode_message(3, "x", &[1u8; 10]);
        a.push(&p[0]).unwrap();
        assert_eq!(a.push(&p[0]), Err(WireError::DuplicateMessage { id: 3 }));
    }

    #[test]
    fn bytes_held_for_half_assembled_messages_are_bounded() {
        let mut a = Assembler::new(limits());
        let m1 = encode_message(1, "x", &[0u8; 8 * 1024]);
        let m2 = encode_message(2, "x", &[0u8; 8 * 1024]);
        for p in &m1[..8] {
            a.push(p).unwrap();
        }
        a.push(&m2[0]).unwrap();
        let mut refused = None;
        for p in &m2[1..] {
            if let Err(e) = a.push(p) {
                refused = Some(e);
                break;
            }
        }
        assert!(matches!(refused, Some(WireError::MessageTooLarge { .. })));
        assert!(a.held_bytes() <= 12 * 1024);
    }

    #[test]
    fn payloads_strip_the_meshagent_entry_and_keep_the_trailer() {
        let header = json!({"toolkit": "sync", "__meshagent__": {"v": 1, "otel": {"traceparent": "00-ab-cd-01"}}});
        let data = Bytes::from(Payload::encode(&header, b"tail"));
        let p = Payload::decode(&data, &WireLimits::default()).unwrap();
        assert_eq!(p.header.get("toolkit"), Some(&json!("sync")));
        assert!(!p.header.contains_key(MESHAGENT_KEY));
        assert_eq!(&p.trailer[..], b"tail");
        let meta = p.meta.unwrap();
        assert_eq!(meta.version, Some(1));
        assert_eq!(
            meta.trace.unwrap().get("traceparent"),
            Some(&json!("00-ab-cd-01"))
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        let l = WireLimits {
            header_bytes_max: 64,
            json_depth_max: 4,
            ..WireLimits::default()
        };
        let d = |b: Vec<u8>| Payload::decode(&Bytes::from(b), &l);
        assert_eq!(d(vec![0, 0, 0]), Err(WireError::TruncatedPayload));
        let mut short = 10u64.to_be_bytes().to_vec();
        short.extend_from_slice(b"{}");
        assert_eq!(d(short), Err(WireError::TruncatedPayload));
        let mut huge = u64::MAX.to_be_bytes().to_vec();
        huge.extend_from_slice(b"{}");
        assert!(matches!(d(huge), Err(WireError::HeaderTooLarge { .. })));
        assert!(matches!(
            d(Payload::encode(&json!({"a": [[[[[1]]]]]}), b"")),
            Err(WireError::TooDeep { max: 4 })
        ));
        // Brackets inside strings do not count.
        assert!(d(Payload::encode(&json!({"a": "[[[[[[[[[[{{{{"}), b"")).is_ok());
        let mut not_object = 2u64.to_be_bytes().to_vec();
        not_object.extend_from_slice(b"[]");
        assert!(matches!(d(not_object), Err(WireError::BadHeader(_))));
        let mut bad = 2u64.to_be_bytes().to_vec();
        bad.extend_from_slice(b"{x");
        assert!(matches!(d(bad), Err(WireError::BadHeader(_))));
    }

    #[test]
    fn every_content_type_round_trips() {
        let all = [
            Content::Json(json!({"a": 1})),
            Content::Text("hi".into()),
            Content::Binary {
                headers: json!({"kind": "sync", "path": "a.doc"})
                    .as_object()
                    .unwrap()
                    .clone(),
                data: Bytes::from_static(b"AAEC"),
            },
            Content::File {
                name: "f.txt".into(),
                mime_type: "text/plain".into(),
                data: Bytes::from_static(b"file"),
            },
            Content::Link {
                name: "n".into(),
                url: "https://example.com".into(),
            },
            Content::Empty,
            Content::error(ErrorCode::NotFound, "no such toolkit"),
            Content::Control(Control::Open),
            Content::Control(Control::Close {
                status_code: Some(1000),
                message: Some("done".into()),
            }),
            Content::Raw(vec![json!({"x": 1})]),
        ];
        for c in all {
            let p = Payload::decode(&Bytes::from(c.encode()), &WireLimits::default()).unwrap();
            assert_eq!(Content::from_parts(&p.header, p.trailer).unwrap(), c);
        }
        let unknown = json!({"type": "video"});
        assert_eq!(
            Content::from_parts(unknown.as_object().unwrap(), Bytes::new()),
            Err(ContentError::UnknownType("video".into()))
        );
        let missing = json!({"type": "text"});
        assert!(matches!(
            Content::from_parts(missing.as_object().unwrap(), Bytes::new()),
            Err(ContentError::MissingField { .. })
        ));
    }
}
