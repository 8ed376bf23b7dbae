//! roomd's CRDT facade: documents that accept untrusted updates only under limits.
//!
//! This crate is pure: no I/O, no async, no clock. It wraps `yrs` so that the rest of roomd never
//! touches a `yrs::Doc` directly and never sees a panic from a malformed update.

mod limits;
mod mesh;
pub mod queue_doc;
pub mod structure;
#[cfg(feature = "trace")]
pub mod trace;
mod v1;
mod views;
mod ydoc;

pub use limits::DocLimits;
pub use mesh::{MeshError, Replica};

/// The largest integer a Yjs client decodes exactly: JavaScript's `Number.MAX_SAFE_INTEGER`.
/// lib0 throws on larger ones or loses their precision, so no client id, clock or count above it
/// may be stored or forwarded.
pub const JS_INTEGER_MAX: u64 = (1 << 53) - 1;
pub use ydoc::{bare, Applied, ApplyError, DecodeError, YDoc};
