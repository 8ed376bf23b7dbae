//! Project and key ids: UUIDs, written as standard text in tokens and compactly in API keys.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Length of a UUID in its standard hyphenated text form (`8-4-4-4-12` hex digits).
const HYPHENATED_CHARS: usize = 36;

/// Length of a UUID's compact form: 16 bytes in base64 without padding.
const COMPACT_CHARS: usize = 22;

/// Why a text is not an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text is not a UUID in its standard hyphenated form.
    #[error("not a UUID in hyphenated form")]
    NotUuidText,
    /// The compact form is not 22 characters of URL-safe base64 (with `.` for `-`).
    #[error("not a compact UUID")]
    NotCompact,
}

/// Writes a UUID compactly, as MeshAgent API keys do: its 16 bytes in URL-safe base64 without
/// padding, with `-` written as `.` so that the key's `-` separators stay unambiguous.
pub fn compact(id: &Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes()).replace('-', ".")
}

/// Reads a UUID written by [`compact`].
///
/// Only the exact output of [`compact`] is accepted: 22 characters, no padding, no `-`, and no
/// stray bits in the last character, so that every id has one compact form.
pub fn from_compact(text: &str) -> Result<Uuid, IdError> {
    let text = text.as_bytes();
    if text.len() != COMPACT_CHARS {
        return Err(IdError::NotCompact);
    }
    let mut standard = [0u8; COMPACT_CHARS];
    for (out, &byte) in standard.iter_mut().zip(text) {
        *out = match byte {
            // A `-` would have been written as `.`; reading it too would give one id two forms.
            b'-' => return Err(IdError::NotCompact),
            b'.' => b'-',
            other => other,
        };
    }
    let mut bytes = [0u8; 16];
    match URL_SAFE_NO_PAD.decode_slice(standard, &mut bytes) {
        Ok(16) => Ok(Uuid::from_bytes(bytes)),
        _ => Err(IdError::NotCompact),
    }
}

/// Parses the standard hyphenated text of a UUID, the only form the SDK writes in tokens.
fn parse_hyphenated(text: &str) -> Result<Uuid, IdError> {
    // `Uuid::try_parse` also reads the simple, braced and URN forms, which differ in length.
    if text.len() != HYPHENATED_CHARS {
        return Err(IdError::NotUuidText);
    }
    Uuid::try_parse(text).map_err(|_| IdError::NotUuidText)
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            /// A fresh version-4 id from 16 random bytes the caller drew (the version and
            /// variant bits are overwritten).
            pub const fn from_random(bytes: [u8; 16]) -> Self {
                Self(uuid::Builder::from_random_bytes(bytes).into_uuid())
            }

            /// The UUID.
            pub const fn uuid(self) -> Uuid {
                self.0
            }

            /// The compact form used inside API keys (see [`compact`]).
            pub fn to_compact(self) -> String {
                compact(&self.0)
            }

            /// Reads the compact form used inside API keys (see [`from_compact`]).
            pub fn from_compact(text: &str) -> Result<Self, IdError> {
                from_compact(text).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                parse_hyphenated(text).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

uuid_id!(
    /// A project: the tenant that owns rooms and API keys. A token's `sub` claim.
    ProjectId
);

uuid_id!(
    /// An API key's id. A token's `kid` claim (in the payload, where the SDK puts it).
    KeyId
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn random_ids_are_version_4() {
        let id = ProjectId::from_random([0xff; 16]);
        assert_eq!(id.uuid().get_version_num(), 4);
        assert_eq!(id.uuid().get_variant(), uuid::Variant::RFC4122);
        assert_eq!(id.to_string(), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = KeyId::from_random([0; 16]);
        assert_eq!(id.to_string(), "00000000-0000-4000-8000-000000000000");
    }

    #[test]
    fn only_hyphenated_text_is_an_id() {
        let text = "a1b2c3d4-e5f6-4789-8abc-def012345678";
        let id: ProjectId = text.parse().unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(
            "A1B2C3D4-E5F6-4789-8ABC-DEF012345678"
                .parse::<ProjectId>()
                .unwrap(),
            id
        );
        for bad in [
            "a1b2c3d4e5f647898abcdef012345678",
            "{a1b2c3d4-e5f6-4789-8abc-def012345678}",
            "urn:uuid:a1b2c3d4-e5f6-4789-8abc-def012345678",
            "a1b2c3d4-e5f6-4789-8abc-def01234567g",
            "",
            "project-1",
        ] {
            assert_eq!(bad.parse::<ProjectId>(), Err(IdError::NotUuidText), "{bad}");
        }
    }

    #[test]
    fn compact_forms_are_canonical() {
        let id = Uuid::from_bytes([0xff; 16]);
        assert_eq!(compact(&id), "_____________________w");
        assert_eq!(from_compact("_____________________w"), Ok(id));
        // The last character carries four bits of padding, which must be zero.
        assert_eq!(
            from_compact("_____________________x"),
            Err(IdError::NotCompact)
        );
        for bad in [
            "",
            "_____________________",
            "_____________________w=",
            "_____________________w==",
            "-AAAAAAAQACAAAAAAAAD4A",
            "+AAAAAAAQACAAAAAAAAD4A",
            "/AAAAAAAQACAAAAAAAAD4A",
            "_____________________ww",
        ] {
            assert_eq!(from_compact(bad), Err(IdError::NotCompact), "{bad:?}");
        }
        assert!(from_compact(".AAAAAAAQACAAAAAAAAD4A").is_ok());
    }

    #[test]
    fn ids_are_json_strings() {
        let id: KeyId = "3f2a9c1e-7b4d-4e8a-9c6f-0d1e2f3a4b5c".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"3f2a9c1e-7b4d-4e8a-9c6f-0d1e2f3a4b5c\"");
        assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<KeyId>("\"3f2a9c1e7b4d4e8a9c6f0d1e2f3a4b5c\"").is_err());
        assert!(serde_json::from_str::<KeyId>("7").is_err());
    }
}
