//! The client's errors.

use roomd_sync::room_protocol::ErrorCode;

/// What can go wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The configuration is incomplete or malformed (a missing environment variable, a URL
    /// that is not `ws://` or `wss://`).
    #[error("configuration: {0}")]
    Config(String),
    /// The server refused the connection before the upgrade, with an HTTP status and its JSON
    /// error (`401` no valid token, `403` a token for another room or without the grant,
    /// `429` too many failed attempts).
    #[error("refused with HTTP {status}: {code}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error's code (`unauthorized`, `forbidden`, …), or empty.
        code: String,
        /// The error's message.
        message: String,
    },
    /// The connection could not be made or was lost (the server is down, the network broke).
    #[error("connection: {0}")]
    Connection(String),
    /// The connection is down: a request made now is not sent. Documents stay usable and
    /// synchronise when the client reconnects.
    #[error("not connected")]
    Disconnected,
    /// The client was closed, or gave up reconnecting.
    #[error("the client is closed")]
    Closed,
    /// The server answered a request with an error.
    #[error("{}: {text}", code.map(|c| c.to_string()).unwrap_or_else(|| "error".into()))]
    Remote {
        /// The SDK's error code, when the answer carries one.
        code: Option<i64>,
        /// What went wrong.
        text: String,
    },
    /// The server sent something this client cannot read.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A value did not (de)serialise as the call expects.
    #[error("json: {0}")]
    Json(String),
    /// A stream's consumer fell behind and missed this many items.
    #[error("lagged behind by {0} items")]
    Lagged(u64),
}

impl Error {
    /// The SDK error code of a [`Error::Remote`] answer, when it is one roomd names.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Remote { code: Some(c), .. } => code_of(*c),
            _ => None,
        }
    }

    /// True for a refusal that retrying with the same token cannot fix (`403`, `404`, `423`),
    /// on which the client stops reconnecting, as the stock SDKs do.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Refused { status, .. } if matches!(status, 403 | 404 | 423))
    }
}

fn code_of(c: i64) -> Option<ErrorCode> {
    use ErrorCode::*;
    [
        PermissionDenied,
        InvalidRequest,
        NotFound,
        AlreadyExists,
        Conflict,
        InvalidState,
        OperationFailed,
        Timeout,
        SyncNotConnected,
        SyncAlreadyConnected,
    ]
    .into_iter()
    .find(|e| *e as i64 == c)
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Json(e.to_string())
    }
}

/// The client's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
