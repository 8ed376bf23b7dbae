//! roomd's CRDT facade: documents that accept untrusted updates only under limits.
//!
//! This crate is pure: no I/O, no async, no clock. It wraps `yrs` so that the rest of roomd never
//! touches a `yrs::Doc` directly and never sees a panic from a malformed update.

mod limits;
#[cfg(feature = "trace")]
pub mod trace;
mod v1;
mod ydoc;

pub use limits::DocLimits;
pub use ydoc::{bare, Applied, ApplyError, DecodeError, YDoc};
