//! Minting a participant token with an API key's secret, as the SDK's `to_jwt` does.

use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::claims::Claims;

/// Why a token could not be minted. Messages never include the secret.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The secret is empty, and an empty HMAC key signs nothing.
    #[error("the signing secret is empty")]
    EmptySecret,
    /// jsonwebtoken could not encode or sign the claims.
    #[error("the token could not be signed")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// Signs `claims` with HS256, using the secret's text as the HMAC key exactly as the SDK does
/// (`jwt.encode(payload, key=secret, algorithm="HS256")`, the secret being the API key's last
/// segment). The header is `{"alg":"HS256","typ":"JWT"}`, with no `kid`: the key's id travels
/// in the payload. `mint` signs whatever it is given; the rules live in [`super::verify`].
pub fn mint(claims: &Claims, secret: &str) -> Result<String, MintError> {
    super::ensure_crypto_provider();
    let key = EncodingKey::from_secret(secret.as_bytes()).map_err(|_| MintError::EmptySecret)?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).map_err(MintError::Sign)
}
