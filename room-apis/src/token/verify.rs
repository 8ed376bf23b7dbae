//! Verifying a participant token: who signed it, whether it is in its time window, and what it
//! claims.
//!
//! The header's `alg` is pinned before anything else is read: `HS256` for tokens signed with a
//! project's API key, and `EdDSA` or `RS256` only when an external issuer with that algorithm
//! is configured. A key-signed token names its key in the payload (`kid`, where the SDK puts
//! it), so the payload is read once unverified for `kid` and `sub` alone, to find the key; the
//! claims are parsed, and believed, only from the payload jsonwebtoken returns once the
//! signature checks. jsonwebtoken's own time checks are off, because they read the system
//! clock: times are checked here against the caller's `now`.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::claims::Claims;
use crate::ids::{KeyId, ProjectId};

/// The longest token read, in bytes; a longer one is refused before anything is decoded.
pub const TOKEN_BYTES_MAX: usize = 16 * 1024;

/// The longest participant name, in characters.
pub const NAME_CHARS_MAX: usize = 128;

/// How far in the future `nbf` and `iat` may be, for clocks that disagree a little.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// What the verifier needs to know about the store's keys and projects.
pub trait KeyLookup {
    /// The key with this id, revoked or not; `None` when there is no such key.
    fn key(&self, id: KeyId) -> Option<KeyRecord<'_>>;
    /// Whether the project accepts tokens that never expire.
    fn allows_no_expiry(&self, project: ProjectId) -> bool;
    /// Whether the project exists (checked for tokens from an external issuer).
    fn project_exists(&self, project: ProjectId) -> bool;
}

/// A stored API key, as the verifier needs it.
#[derive(Clone, Copy)]
pub struct KeyRecord<'a> {
    /// The project the key belongs to.
    pub project: ProjectId,
    /// The key's secret, as text: its UTF-8 bytes are the HMAC key.
    pub secret: &'a str,
    /// The key was revoked: tokens it signed are refused.
    pub revoked: bool,
}

impl fmt::Debug for KeyRecord<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("project", &self.project)
            .field("secret", &"<redacted>")
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// Why an external issuer cannot be configured.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Only EdDSA and RS256 are accepted from an external issuer.
    #[error("an external issuer signs with EdDSA or RS256")]
    UnsupportedAlgorithm,
    /// The key is for another family of algorithms than the one configured.
    #[error("the issuer's key does not fit its algorithm")]
    KeyMismatch,
    /// The public key could not be read.
    #[error("the issuer's public key could not be read")]
    BadKey(#[source] jsonwebtoken::errors::Error),
}

/// A service outside roomd that signs participant tokens with its own private key; roomd
/// holds the public key.
#[derive(Clone)]
pub struct ExternalIssuer {
    algorithm: Algorithm,
    /// The `alg` a token from this issuer carries in its header.
    alg_name: &'static str,
    key: DecodingKey,
}

impl ExternalIssuer {
    /// An issuer that signs with `algorithm` (EdDSA or RS256), checked with `key`.
    pub fn new(algorithm: Algorithm, key: DecodingKey) -> Result<Self, IssuerError> {
        let alg_name = match algorithm {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            _ => return Err(IssuerError::UnsupportedAlgorithm),
        };
        if key.family() != algorithm.family() {
            return Err(IssuerError::KeyMismatch);
        }
        Ok(Self {
            algorithm,
            alg_name,
            key,
        })
    }

    /// An EdDSA (Ed25519) issuer from its public key in PEM (`BEGIN PUBLIC KEY`).
    pub fn from_ed_pem(pem: &[u8]) -> Result<Self, IssuerError> {
        let key = DecodingKey::from_ed_pem(pem).map_err(IssuerError::BadKey)?;
        Self::new(Algorithm::EdDSA, key)
    }

    /// An RS256 issuer from its RSA public key in PEM (`BEGIN PUBLIC KEY` or
    /// `BEGIN RSA PUBLIC KEY`).
    pub fn from_rsa_pem(pem: &[u8]) -> Result<Self, IssuerError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(IssuerError::BadKey)?;
        Self::new(Algorithm::RS256, key)
    }

    /// The algorithm the issuer signs with.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Who signed a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The project's API key with this id.
    Key(KeyId),
    /// The configured external issuer.
    Issuer,
}

/// A token whose signature, signer and time window checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The token's claims. Their room and API grants are still to be checked for each request.
    pub claims: Claims,
    /// The project the token is for.
    pub project: ProjectId,
    /// Who signed it.
    pub signer: Signer,
}

/// Why a token does not authenticate anyone. Messages never include the token or a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// The token is not a well-formed participant token (or is longer than
    /// [`TOKEN_BYTES_MAX`]).
    #[error("the token is malformed")]
    Malformed,
    /// The header's `alg` is `none`.
    #[error("unsigned tokens are refused")]
    AlgNone,
    /// The header's `alg` is not one roomd accepts here.
    #[error("the token's algorithm is not accepted")]
    WrongAlgorithm,
    /// No key has the token's `kid`.
    #[error("the token's key is unknown")]
    UnknownKey,
    /// The token's key was revoked.
    #[error("the token's key was revoked")]
    RevokedKey,
    /// The token's key belongs to another project than its `sub`.
    #[error("the token's key is not its project's")]
    WrongProject,
    /// No project has the externally issued token's `sub`.
    #[error("the token's project is unknown")]
    UnknownProject,
    /// The signature does not check.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The token carries an audience (`aud`), and roomd is no audience a token may name.
    #[error("the token is meant for another audience")]
    UnexpectedAudience,
    /// The token has no `exp` and its project wants one.
    #[error("the token does not expire")]
    NoExpiry,
    /// The token's `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// The token's `nbf` or `iat` is further in the future than [`CLOCK_SKEW_SECS`].
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The participant's name is empty or blank.
    #[error("the participant's name is empty")]
    EmptyName,
    /// The participant's name is longer than [`NAME_CHARS_MAX`] characters.
    #[error("the participant's name is too long")]
    NameTooLong,
}

impl Unauthenticated {
    /// A short stable name for the reason, used as a metrics label.
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgNone => "alg_none",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::UnknownKey => "unknown_key",
            Self::RevokedKey => "revoked_key",
            Self::WrongProject => "wrong_project",
            Self::UnknownProject => "unknown_project",
            Self::BadSignature => "bad_signature",
            Self::UnexpectedAudience => "unexpected_audience",
            Self::NoExpiry => "no_expiry",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::EmptyName => "empty_name",
            Self::NameTooLong => "name_too_long",
        }
    }
}

/// Verifies a participant token at `now_secs` (seconds since the Unix epoch).
///
/// The checks, in order: length; header and `alg`; the signer (for HS256: `kid` and `sub`
/// present as UUID text, a known key, its signature, not revoked, of the project `sub` names;
/// for an external issuer: its signature, then a `sub` naming an existing project); the
/// claims' shape; `exp` (required unless the project allows tokens that never expire, and in
/// the future); `nbf` and `iat` (at most [`CLOCK_SKEW_SECS`] ahead); the name. A revoked key or
/// a wrong project is only reported for a token whose signature checked, so that only the
/// key's holder learns of them.
pub fn verify<K: KeyLookup + ?Sized>(
    token: &str,
    now_secs: i64,
    keys: &K,
    issuer: Option<&ExternalIssuer>,
) -> Result<Verified, Unauthenticated> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(Unauthenticated::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(Unauthenticated::Malformed);
    };
    let alg = header_alg(header)?;
    let (claims, project, signer) = match alg.as_str() {
        "HS256" => verify_key_signed(token, payload, keys)?,
        alg if alg.eq_ignore_ascii_case("none") => return Err(Unauthenticated::AlgNone),
        alg => match issuer {
            Some(issuer) if issuer.alg_name == alg => verify_issued(token, issuer, keys)?,
            _ => return Err(Unauthenticated::WrongAlgorithm),
        },
    };
    check_times(&claims, project, now_secs, keys)?;
    check_name(&claims.name)?;
    Ok(Verified {
        claims,
        project,
        signer,
    })
}

/// The header's `alg`, read before jsonwebtoken sees the token: jsonwebtoken cannot parse a
/// header whose `alg` it does not know (`none` among them), and roomd reports those apart.
fn header_alg(segment: &str) -> Result<String, Unauthenticated> {
    match decode_segment(segment)? {
        Value::Object(mut header) => match header.remove("alg") {
            Some(Value::String(alg)) => Ok(alg),
            _ => Err(Unauthenticated::Malformed),
        },
        _ => Err(Unauthenticated::Malformed),
    }
}

/// A JWT segment's JSON: URL-safe base64 without padding, as jsonwebtoken reads it too.
fn decode_segment(segment: &str) -> Result<Value, Unauthenticated> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Unauthenticated::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| Unauthenticated::Malformed)
}

/// An id claim read from the unverified payload, only to find the key to check it with.
fn unverified_id<T: std::str::FromStr>(payload: &Value, claim: &str) -> Result<T, Unauthenticated> {
    payload
        .get(claim)
        .and_then(Value::as_str)
        .and_then(|text| text.parse().ok())
        .ok_or(Unauthenticated::Malformed)
}

fn verify_key_signed<K: KeyLookup + ?Sized>(
    token: &str,
    payload: &str,
    keys: &K,
) -> Result<(Claims, ProjectId, Signer), Unauthenticated> {
    let unverified = decode_segment(payload)?;
    let key_id: KeyId = unverified_id(&unverified, "kid")?;
    let project: ProjectId = unverified_id(&unverified, "sub")?;
    let record = keys.key(key_id).ok_or(Unauthenticated::UnknownKey)?;
    // An empty stored secret checks no signature.
    let key = DecodingKey::from_secret(record.secret.as_bytes())
        .map_err(|_| Unauthenticated::BadSignature)?;
    let verified = decode_verified(token, &key, Algorithm::HS256)?;
    // From here on the payload is the key holder's word.
    if record.revoked {
        return Err(Unauthenticated::RevokedKey);
    }
    if record.project != project {
        return Err(Unauthenticated::WrongProject);
    }
    let claims = Claims::from_value(verified).map_err(|_| Unauthenticated::Malformed)?;
    // Both reads parse the same bytes the same way, so they agree; if they ever did not, the
    // key would have been chosen by claims other than the signed ones.
    if claims.key != Some(key_id) || claims.project != Some(project) {
        return Err(Unauthenticated::Malformed);
    }
    Ok((claims, project, Signer::Key(key_id)))
}

fn verify_issued<K: KeyLookup + ?Sized>(
    token: &str,
    issuer: &ExternalIssuer,
    keys: &K,
) -> Result<(Claims, ProjectId, Signer), Unauthenticated> {
    let verified = decode_verified(token, &issuer.key, issuer.algorithm)?;
    let claims = Claims::from_value(verified).map_err(|_| Unauthenticated::Malformed)?;
    let project = claims.project.ok_or(Unauthenticated::Malformed)?;
    if !keys.project_exists(project) {
        return Err(Unauthenticated::UnknownProject);
    }
    Ok((claims, project, Signer::Issuer))
}

/// Checks the signature with jsonwebtoken and returns the payload it vouches for.
fn decode_verified(
    token: &str,
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<Value, Unauthenticated> {
    let mut validation = Validation::new(algorithm);
    // jsonwebtoken's time checks read the system clock; `check_times` uses the caller's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    // Which claims are required is decided by `Claims` and `check_times`.
    validation.required_spec_claims.clear();
    // With no audience of its own, a verifier must refuse a token that names one (RFC 7519
    // section 4.1.3), as the SDK's PyJWT does.
    validation.validate_aud = true;
    validation.aud = None;

    super::ensure_crypto_provider();
    jsonwebtoken::decode::<Value>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|error| match error.kind() {
            ErrorKind::InvalidSignature => Unauthenticated::BadSignature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::UnsupportedAlgorithm => Unauthenticated::WrongAlgorithm,
            // A key that cannot check this signature is a signature that does not check.
            ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_) => Unauthenticated::BadSignature,
            ErrorKind::InvalidAudience => Unauthenticated::UnexpectedAudience,
            _ => Unauthenticated::Malformed,
        })
}

fn check_times<K: KeyLookup + ?Sized>(
    claims: &Claims,
    project: ProjectId,
    now_secs: i64,
    keys: &K,
) -> Result<(), Unauthenticated> {
    match claims.exp {
        None if !keys.allows_no_expiry(project) => return Err(Unauthenticated::NoExpiry),
        Some(exp) if now_secs >= exp => return Err(Unauthenticated::Expired),
        _ => {}
    }
    let latest_start = now_secs.saturating_add(CLOCK_SKEW_SECS);
    if claims.nbf.is_some_and(|nbf| nbf > latest_start)
        || claims.iat.is_some_and(|iat| iat > latest_start)
    {
        return Err(Unauthenticated::NotYetValid);
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), Unauthenticated> {
    // The SDK refuses a blank name too (`name.strip() == ""`).
    if name.trim().is_empty() {
        return Err(Unauthenticated::EmptyName);
    }
    if name.chars().count() > NAME_CHARS_MAX {
        return Err(Unauthenticated::NameTooLong);
    }
    Ok(())
}
