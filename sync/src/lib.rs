//! roomd's sans-IO protocol code: bytes in, messages and effects out.
//!
//! Nothing here touches tokio, sockets, the clock or OS randomness. The server feeds frames into
//! a [`YjsDocSession`] and carries out the [`Output`]s it returns; tests and simulations drive
//! the very same state machine without a runtime.

pub mod awareness;
mod close;
#[doc(hidden)]
pub mod fuzzing;
pub mod lib0;
mod message;
pub mod room_protocol;
mod session;
pub mod websocket;

pub use close::CloseCode;
pub use message::{
    decode_frame, DecodeError, Invalid, Message, MessageLimits, SyncMessage, MSG_AUTH,
    MSG_AWARENESS, MSG_QUERY_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE,
};
pub use session::{
    keepalive_frame, ConnId, Output, Peer, Principal, SessionLimits, UpdateRules, YjsDocSession,
    PERMISSION_DENIED,
};
