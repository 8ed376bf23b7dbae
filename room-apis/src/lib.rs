//! roomd's room core semantics, protocol-agnostic and sans-IO: API keys, participant tokens and
//! the scopes they grant, the participants of a room's session, the rules its documents keep
//! to, the room's work queues, and the paths of its file storage with what a grant allows on
//! them.
//!
//! Keys and tokens are in the MeshAgent format, so tokens minted by the MeshAgent SDKs work
//! unchanged. Nothing here does I/O, reads the clock or draws random numbers: the time is a
//! parameter of [`token::verify`], random bytes are parameters of [`ids::ProjectId::from_random`]
//! and [`keys::ApiKey::generate`], and stored keys are reached through [`token::KeyLookup`].
//! The work queues of [`queue::Queues`] take the time as a parameter too and return the records
//! the server is to persist from every mutation.

pub mod files;
pub mod forbidden;
pub mod ids;
pub mod keys;
pub mod participants;
pub mod queue;
pub mod rules;
pub mod schema;
pub mod scope;
pub mod storage;
pub mod storage_stream;
pub mod token;

pub use forbidden::Forbidden;
pub use ids::{KeyId, ProjectId};
pub use keys::ApiKey;
pub use scope::{normalize_doc_path, ApiScope, DocAccess, SyncGrant, SyncPathGrant};
pub use token::{
    mint, verify, Claims, ExternalIssuer, Grant, KeyLookup, KeyRecord, Role, Signer,
    Unauthenticated, Verified,
};
