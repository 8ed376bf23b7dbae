//! API keys in the MeshAgent format: `ma-<compact key id>-<compact project id>-<secret>`.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::ids::{IdError, KeyId, ProjectId};

/// What every API key starts with.
const PREFIX: &str = "ma-";

/// Why a text is not an API key. Messages never quote the key, which holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text does not start with `ma-`.
    #[error("an API key starts with \"ma-\"")]
    NoPrefix,
    /// The text has fewer than three `-`-separated segments after the prefix.
    #[error("an API key has a key id, a project id and a secret")]
    MissingSegment,
    /// The key id segment is not a compact UUID.
    #[error("the API key's key id is not a compact UUID")]
    BadKeyId(#[source] IdError),
    /// The project id segment is not a compact UUID.
    #[error("the API key's project id is not a compact UUID")]
    BadProjectId(#[source] IdError),
    /// The secret segment is empty.
    #[error("the API key's secret is empty")]
    EmptySecret,
}

/// A project's API key. Its secret signs participant tokens (HS256, the secret's text as the
/// HMAC key), so `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// The key's id: the `kid` claim of the tokens it signs.
    pub id: KeyId,
    /// The project the key belongs to: the `sub` claim of the tokens it signs.
    pub project: ProjectId,
    /// The secret, as text. It may contain `-`: only the first two `-` after the prefix
    /// separate segments.
    pub secret: String,
}

impl ApiKey {
    /// Reads a key in the MeshAgent format, as the SDK's `parse_api_key` does, but strictly:
    /// both ids must be canonical compact UUIDs and the secret must not be empty.
    pub fn parse(text: &str) -> Result<Self, KeyParseError> {
        let rest = text.strip_prefix(PREFIX).ok_or(KeyParseError::NoPrefix)?;
        let mut segments = rest.splitn(3, '-');
        let (Some(id), Some(project), Some(secret)) =
            (segments.next(), segments.next(), segments.next())
        else {
            return Err(KeyParseError::MissingSegment);
        };
        let id = KeyId::from_compact(id).map_err(KeyParseError::BadKeyId)?;
        let project = ProjectId::from_compact(project).map_err(KeyParseError::BadProjectId)?;
        if secret.is_empty() {
            return Err(KeyParseError::EmptySecret);
        }
        Ok(Self {
            id,
            project,
            secret: secret.to_owned(),
        })
    }

    /// A new key whose secret is 32 random bytes the caller drew, written in URL-safe base64
    /// without padding (43 characters, which may include `-`).
    pub fn generate(id: KeyId, project: ProjectId, secret_bytes: [u8; 32]) -> Self {
        Self {
            id,
            project,
            secret: URL_SAFE_NO_PAD.encode(secret_bytes),
        }
    }
}

impl FromStr for ApiKey {
    type Err = KeyParseError;

    fn from_str(text: &str) -> Result<Self, KeyParseError> {
        Self::parse(text)
    }
}

/// The key in its shareable form, secret included: shown once, when the key is made.
impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}-{}-{}",
            self.id.to_compact(),
            self.project.to_compact(),
            self.secret
        )
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("project", &self.project)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn key() -> ApiKey {
        ApiKey::generate(
            KeyId::from_random([1; 16]),
            ProjectId::from_random([2; 16]),
            [0xfb; 32],
        )
    }

    #[test]
    fn a_generated_secret_is_43_url_safe_characters() {
        let key = key();
        assert_eq!(key.secret.len(), 43);
        // 0xfb bytes encode to `-` and `_`, both of which a secret may hold.
        assert!(key.secret.contains('-'));
        assert_eq!(ApiKey::parse(&key.to_string()).unwrap(), key);
    }

    #[test]
    fn debug_redacts_the_secret() {
        let key = key();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&key.secret), "{debug}");
        assert!(debug.contains("<redacted>"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = key().to_string();
        let rest = good.strip_prefix("ma-").unwrap();
        let (id, rest) = rest.split_once('-').unwrap();
        let (project, _) = rest.split_once('-').unwrap();
        assert_eq!(
            ApiKey::parse(&format!("mb-{rest}")),
            Err(KeyParseError::NoPrefix)
        );
        assert_eq!(
            ApiKey::parse(&format!("ma-{id}-{project}")),
            Err(KeyParseError::MissingSegment)
        );
        assert_eq!(
            ApiKey::parse(&format!("ma-{id}-{project}-")),
            Err(KeyParseError::EmptySecret)
        );
        assert_eq!(
            ApiKey::parse(&format!("ma-x{id}-{project}-s")),
            Err(KeyParseError::BadKeyId(IdError::NotCompact))
        );
        assert_eq!(
            ApiKey::parse(&format!("ma-{id}-{project}x-s")),
            Err(KeyParseError::BadProjectId(IdError::NotCompact))
        );
        assert_eq!(ApiKey::parse(""), Err(KeyParseError::NoPrefix));
        assert_eq!(ApiKey::parse("ma-"), Err(KeyParseError::MissingSegment));
    }

    #[test]
    fn errors_never_quote_the_key() {
        let secret = "topsecret";
        let text = format!("ma-AAAA-BBBB-{secret}");
        let err = ApiKey::parse(&text).unwrap_err();
        assert!(!err.to_string().contains(secret));
        assert!(!format!("{err:?}").contains(secret));
    }
}
