//! Participant tokens: JWTs in the MeshAgent format, minted with a key's secret or signed by an
//! external issuer.

mod claims;
mod mint;
mod verify;

pub use claims::{Claims, Grant, Role};
pub use mint::{mint, MintError};
pub use verify::{
    verify, ExternalIssuer, IssuerError, KeyLookup, KeyRecord, Signer, Unauthenticated, Verified,
    CLOCK_SKEW_SECS, NAME_CHARS_MAX, TOKEN_BYTES_MAX,
};

/// Makes sure jsonwebtoken has a crypto backend before it is used.
///
/// jsonwebtoken picks its backend from its crate features, and panics on first use when it
/// cannot: when a build enables both of its backends (another crate in the build may turn on
/// `aws_lc_rs`). Installing the pure-Rust backend this crate asks for keeps that from turning
/// a token into a panic; a backend installed earlier by the program stays in place.
fn ensure_crypto_provider() {
    use jsonwebtoken::crypto::{rust_crypto, CryptoProvider};
    if CryptoProvider::try_get_default().is_none() {
        // Losing a race to another thread that installed a backend is as good as winning it.
        let _ = rust_crypto::DEFAULT_PROVIDER.install_default();
    }
}
