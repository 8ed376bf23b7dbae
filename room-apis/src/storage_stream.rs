//! The storage toolkit's two streamed calls, `upload` and `download`, as the MeshAgent SDK
//! speaks them: the chunks each side sends, in what order, and what the server makes of
//! them. Sans-IO: the server feeds in each request chunk's content and carries out what comes
//! back (write these bytes, send this chunk, commit, fail).
//!
//! **Upload.** The client opens the call (`control open` as its arguments) and sends a `start`
//! chunk, binary with empty data and headers `{kind: "start", path, overwrite, name,
//! mime_type, size}` (`size` may be null). The server answers the call `open` (or an error)
//! and then drives: each **pull** it sends (binary, empty data, headers `{kind: "pull",
//! chunk_size}`) is answered by one `data` chunk of at most that many bytes, or, when the
//! client has nothing left, by its `control close`. The server pulls again only once it has
//! written what it got, so an upload holds one chunk in memory whatever its size. The server
//! ends the call with `control close` once the file is stored, or an `error` chunk (then a
//! close) if not.
//!
//! **Download.** After `open`, the client's `start` chunk is `{kind: "start", path,
//! chunk_size}`; the server sends a binary `start` with headers exactly `{kind, name,
//! mime_type, size}`, then one `data` chunk for each pull the client sends (`{kind: "pull"}`):
//! one after the start unless the file is empty, and one after each chunk but the last. No pull
//! follows the last chunk: the server sends `control close` right after it.

use bytes::Bytes;
use roomd_sync::room_protocol::{Content, Control, ErrorCode};
use serde_json::{json, Map, Value};

use crate::storage::{self, PathError};

/// The SDK's storage error codes.
pub mod codes {
    /// Nothing at the path.
    pub const NOT_FOUND: i64 = 3001;
    /// A folder with something in it, deleted without `recursive`.
    pub const RECURSIVE_REQUIRED: i64 = 3002;
    /// Not a storage path.
    pub const INVALID_PATH: i64 = 3004;
    /// Something at the path already.
    pub const ALREADY_EXISTS: i64 = 3005;
}

/// The largest chunk roomd pulls or sends.
pub const CHUNK_MAX: u32 = 1 << 20;
/// The chunk a download sends when the client names none (the SDK's default).
pub const CHUNK_DEFAULT: u32 = 64 * 1024;

/// An `error` content with one of the SDK's codes.
pub fn error(code: i64, text: impl Into<String>) -> Content {
    Content::Error {
        text: text.into(),
        code: Some(code),
    }
}

fn invalid(text: impl Into<String>) -> Content {
    Content::error(ErrorCode::InvalidRequest, text)
}

/// The error for a refused path.
pub fn path_error(e: &PathError) -> Content {
    error(codes::INVALID_PATH, e.to_string())
}

/// The normal end of a stream.
pub fn close() -> Content {
    Content::Control(Control::Close {
        status_code: Some(1000),
        message: None,
    })
}

/// Binary content; `headers` is an object (built with `json!` here).
fn binary(headers: Value, data: Bytes) -> Content {
    let headers = match headers {
        Value::Object(h) => h,
        _ => Map::new(),
    };
    Content::Binary { headers, data }
}

/// The headers of a `start` chunk, with `kind` checked.
fn start_headers<'a>(c: &'a Content, call: &str) -> Result<&'a Map<String, Value>, Content> {
    match c {
        Content::Binary { headers, .. } if headers.get("kind") == Some(&json!("start")) => {
            Ok(headers)
        }
        _ => Err(invalid(format!(
            "a storage {call} starts with a binary chunk of kind start"
        ))),
    }
}

fn string<'a>(h: &'a Map<String, Value>, key: &str) -> Result<&'a str, Content> {
    h.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("the start chunk needs a string {key}")))
}

fn path_of(h: &Map<String, Value>) -> Result<String, Content> {
    storage::request_path(string(h, "path")?).map_err(|e| path_error(&e))
}

/// What an upload's `start` chunk asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStart {
    /// Where the file goes (canonical).
    pub path: String,
    /// Whether a file there is replaced.
    pub overwrite: bool,
    /// Its media type.
    pub mime_type: String,
    /// Its size, when the client knows it.
    pub size: Option<u64>,
}

/// The longest media type kept.
const MIME_MAX: usize = 255;

impl UploadStart {
    /// Reads an upload's first chunk.
    pub fn parse(c: &Content) -> Result<UploadStart, Content> {
        let h = start_headers(c, "upload")?;
        let path = path_of(h)?;
        let overwrite = match h.get("overwrite") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(invalid("overwrite is a boolean")),
        };
        let mime_type = match h.get("mime_type") {
            None | Some(Value::Null) => "application/octet-stream".to_owned(),
            Some(Value::String(m)) if m.len() <= MIME_MAX && !m.chars().any(char::is_control) => {
                m.clone()
            }
            Some(_) => {
                return Err(invalid(format!(
                    "mime_type is a string of at most {MIME_MAX} bytes"
                )))
            }
        };
        let size = match h.get("size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| invalid("size is a non-negative integer or null"))?,
            ),
        };
        Ok(UploadStart {
            path,
            overwrite,
            mime_type,
            size,
        })
    }
}

/// What an upload's next request chunk means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEvent {
    /// Bytes to write; pull again ([`Upload::pull`]) once written.
    Data(Bytes),
    /// The client has sent everything: `size` bytes in all. Store the file, then close.
    End {
        /// The bytes received.
        size: u64,
    },
    /// The client gave up: store nothing.
    Cancelled,
}

/// An upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    declared: Option<u64>,
    received: u64,
    max: u64,
    chunk: u32,
    pulled: bool,
}

impl Upload {
    /// An upload of `start` that may take at most `max` bytes (the room's room for it),
    /// pulled `chunk` bytes at a time. Refused at once when its declared size is over `max`.
    pub fn new(start: &UploadStart, max: u64, chunk: u32) -> Result<Upload, Content> {
        if start.size.is_some_and(|s| s > max) {
            return Err(too_big(max));
        }
        Ok(Upload {
            declared: start.size,
            received: 0,
            max,
            chunk: chunk.clamp(1, CHUNK_MAX),
            pulled: false,
        })
    }

    /// The next pull, to send once what came before is written.
    pub fn pull(&mut self) -> Content {
        self.pulled = true;
        binary(
            json!({"kind": "pull", "chunk_size": self.chunk}),
            Bytes::new(),
        )
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Reads the client's next chunk. An error is the call's end: send it, then close.
    pub fn on_chunk(&mut self, c: Content) -> Result<UploadEvent, Content> {
        match c {
            Content::Binary { headers, data } if headers.get("kind") == Some(&json!("data")) => {
                if !std::mem::take(&mut self.pulled) {
                    return Err(invalid("a data chunk that was not pulled"));
                }
                if data.len() > self.chunk as usize {
                    return Err(invalid(format!(
                        "a data chunk of {} bytes, more than the {} pulled",
                        data.len(),
                        self.chunk
                    )));
                }
                let received = self.received + data.len() as u64;
                if received > self.max {
                    return Err(too_big(self.max));
                }
                if self.declared.is_some_and(|d| received > d) {
                    return Err(invalid("more bytes than the upload's size"));
                }
                self.received = received;
                Ok(UploadEvent::Data(data))
            }
            Content::Control(Control::Close { status_code, .. }) => {
                if status_code.is_some_and(|s| s != 1000) {
                    return Ok(UploadEvent::Cancelled);
                }
                if let Some(d) = self.declared.filter(|&d| d != self.received) {
                    return Err(invalid(format!(
                        "the upload ended after {} of its {d} bytes",
                        self.received
                    )));
                }
                Ok(UploadEvent::End {
                    size: self.received,
                })
            }
            _ => Err(invalid(
                "an upload sends binary data chunks, then control close",
            )),
        }
    }
}

fn too_big(max: u64) -> Content {
    Content::error(
        ErrorCode::InvalidRequest,
        format!("the file does not fit: the room's storage has room for {max} more bytes there"),
    )
}

/// What a download's `start` chunk asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadStart {
    /// The file (canonical).
    pub path: String,
    /// The largest chunk to send.
    pub chunk_size: u32,
}

impl DownloadStart {
    /// Reads a download's first chunk.
    pub fn parse(c: &Content) -> Result<DownloadStart, Content> {
        let h = start_headers(c, "download")?;
        let path = path_of(h)?;
        let chunk_size = match h.get("chunk_size") {
            None | Some(Value::Null) => CHUNK_DEFAULT,
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => u32::try_from(n).unwrap_or(CHUNK_MAX).min(CHUNK_MAX),
                _ => return Err(invalid("chunk_size is a positive integer")),
            },
        };
        Ok(DownloadStart { path, chunk_size })
    }
}

/// What a download's next request chunk means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadEvent {
    /// Send the next `len` bytes, from `offset`, with [`Download::data`].
    Send {
        /// Where they start.
        offset: u64,
        /// How many.
        len: u32,
    },
    /// The client is done (or gave up): nothing more to send.
    Closed,
}

/// A download in progress.
#[derive(Debug, Clone)]
pub struct Download {
    size: u64,
    offered: u64,
    chunk: u32,
}

impl Download {
    /// A download of a file of `size` bytes, and its `start` chunk. When the file is empty,
    /// [`Download::done`] is true at once: send [`close`] after the start.
    pub fn new(
        start: &DownloadStart,
        name: &str,
        mime_type: &str,
        size: u64,
    ) -> (Download, Content) {
        let chunk = binary(
            json!({"kind": "start", "name": name, "mime_type": mime_type, "size": size}),
            Bytes::new(),
        );
        (
            Download {
                size,
                offered: 0,
                chunk: start.chunk_size,
            },
            chunk,
        )
    }

    /// Whether every byte has been sent: then close.
    pub fn done(&self) -> bool {
        self.offered >= self.size
    }

    /// Reads the client's next chunk.
    pub fn on_chunk(&mut self, c: Content) -> Result<DownloadEvent, Content> {
        match c {
            Content::Binary { headers, .. } if headers.get("kind") == Some(&json!("pull")) => {
                if self.done() {
                    return Err(invalid("a pull after the last byte"));
                }
                let len = (self.size - self.offered).min(u64::from(self.chunk)) as u32;
                let offset = self.offered;
                self.offered += u64::from(len);
                Ok(DownloadEvent::Send { offset, len })
            }
            Content::Control(Control::Close { .. }) => Ok(DownloadEvent::Closed),
            _ => Err(invalid("a download sends pulls, then control close")),
        }
    }

    /// A data chunk of `bytes`.
    pub fn data(bytes: Bytes) -> Content {
        binary(json!({"kind": "data"}), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(headers: Value, data: &'static [u8]) -> Content {
        binary(headers, Bytes::from_static(data))
    }

    fn upload_start(size: Value) -> Content {
        chunk(
            json!({"kind": "start", "path": "/dir/f.txt", "overwrite": false, "name": "f.txt",
                   "mime_type": "text/plain", "size": size}),
            b"",
        )
    }

    fn code(c: &Content) -> Option<i64> {
        match c {
            Content::Error { code, .. } => *code,
            _ => None,
        }
    }

    #[test]
    fn an_upload_pulls_a_chunk_at_a_time_and_ends_at_the_clients_close() {
        let start = UploadStart::parse(&upload_start(json!(12))).unwrap();
        assert_eq!(start.path, "dir/f.txt");
        assert_eq!(start.size, Some(12));
        let mut up = Upload::new(&start, 100, 5).unwrap();
        let pull = up.pull();
        let Content::Binary { headers, data } = &pull else {
            panic!("{pull:?}")
        };
        assert_eq!(
            Value::Object(headers.clone()),
            json!({"kind": "pull", "chunk_size": 5})
        );
        assert!(data.is_empty());
        for part in [&b"hello"[..], b" worl", b"d!"] {
            let got = up.on_chunk(binary(
                json!({"kind": "data"}),
                Bytes::copy_from_slice(part),
            ));
            assert_eq!(got, Ok(UploadEvent::Data(Bytes::copy_from_slice(part))));
            up.pull();
        }
        assert_eq!(up.on_chunk(close()), Ok(UploadEvent::End { size: 12 }));
    }

    #[test]
    fn an_upload_refuses_what_it_did_not_pull_what_does_not_fit_and_a_short_end() {
        let start = UploadStart::parse(&upload_start(json!(null))).unwrap();
        assert_eq!(start.size, None);
        let mut up = Upload::new(&start, 6, 4).unwrap();
        let data = |b: &'static [u8]| chunk(json!({"kind": "data"}), b);
        assert!(up.on_chunk(data(b"x")).is_err());
        up.pull();
        assert!(up.on_chunk(data(b"12345")).is_err());
        let mut up = Upload::new(&start, 6, 4).unwrap();
        up.pull();
        up.on_chunk(data(b"1234")).unwrap();
        up.pull();
        assert!(up.on_chunk(data(b"567")).is_err());
        // Declared and over the room's room: refused before a byte moves.
        let big = UploadStart::parse(&upload_start(json!(7))).unwrap();
        assert!(Upload::new(&big, 6, 4).is_err());
        let mut up = Upload::new(&big, 100, 4).unwrap();
        up.pull();
        up.on_chunk(data(b"1234")).unwrap();
        assert!(up.on_chunk(close()).is_err());
        let cancelled = Content::Control(Control::Close {
            status_code: Some(1007),
            message: None,
        });
        assert_eq!(up.on_chunk(cancelled), Ok(UploadEvent::Cancelled));
        assert!(up.on_chunk(Content::Empty).is_err());
    }

    #[test]
    fn starts_are_checked_and_their_paths_made_canonical() {
        for (bad, want) in [
            (
                chunk(json!({"kind": "start", "path": "a/../b"}), b""),
                Some(codes::INVALID_PATH),
            ),
            (chunk(json!({"kind": "start"}), b""), Some(1002)),
            (chunk(json!({"kind": "data", "path": "a"}), b""), Some(1002)),
            (
                chunk(json!({"kind": "start", "path": "a", "size": -1}), b""),
                Some(1002),
            ),
            (
                chunk(
                    json!({"kind": "start", "path": "a", "overwrite": "yes"}),
                    b"",
                ),
                Some(1002),
            ),
            (
                Content::Json(json!({"kind": "start", "path": "a"})),
                Some(1002),
            ),
        ] {
            assert_eq!(
                code(&UploadStart::parse(&bad).unwrap_err()),
                want,
                "{bad:?}"
            );
        }
        let d = DownloadStart::parse(&chunk(json!({"kind": "start", "path": "./x"}), b"")).unwrap();
        assert_eq!((d.path.as_str(), d.chunk_size), ("x", CHUNK_DEFAULT));
        let huge = chunk(
            json!({"kind": "start", "path": "x", "chunk_size": 1u64 << 40}),
            b"",
        );
        assert_eq!(DownloadStart::parse(&huge).unwrap().chunk_size, CHUNK_MAX);
        let zero = chunk(json!({"kind": "start", "path": "x", "chunk_size": 0}), b"");
        assert!(DownloadStart::parse(&zero).is_err());
    }

    #[test]
    fn a_download_sends_a_chunk_per_pull_and_is_done_after_the_last() {
        let start = DownloadStart {
            path: "x".into(),
            chunk_size: 5,
        };
        let (mut down, first) = Download::new(&start, "x", "text/plain", 12);
        let Content::Binary { headers, .. } = first else {
            panic!()
        };
        assert_eq!(
            Value::Object(headers),
            json!({"kind": "start", "name": "x", "mime_type": "text/plain", "size": 12})
        );
        let pull = || chunk(json!({"kind": "pull"}), b"");
        let mut sent = Vec::new();
        while !down.done() {
            sent.push(down.on_chunk(pull()).unwrap());
        }
        assert_eq!(
            sent,
            [(0, 5), (5, 5), (10, 2)].map(|(offset, len)| DownloadEvent::Send { offset, len })
        );
        assert!(down.on_chunk(pull()).is_err());
        assert_eq!(down.on_chunk(close()), Ok(DownloadEvent::Closed));
        let (empty, _) = Download::new(&start, "e", "text/plain", 0);
        assert!(empty.done());
    }
}
