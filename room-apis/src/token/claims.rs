//! A participant token's payload: who the participant is and what it was granted.
//!
//! The JSON form is the SDK's `ParticipantToken.to_json`/`from_json`: `name`, `grants` (a
//! list of `{"name", "scope"}`), `sub` (project), `kid` (key), `version`, the registered time
//! claims, and any other claim, which is kept.

use std::fmt;

use serde::de::Error as _;
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::forbidden::Forbidden;
use crate::ids::{KeyId, ProjectId};
use crate::scope::{matches_pattern, ApiScope};

/// What kind of participant a token is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A person.
    #[default]
    User,
    /// An agent.
    Agent,
    /// A tool host.
    Tool,
}

impl Role {
    /// The role's name in tokens.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Agent => "agent",
            Self::Tool => "tool",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a token's `grants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `room`: the room's exact name, or a prefix of room names when it ends in `*`.
    Room(String),
    /// `role`: the participant's role.
    Role(Role),
    /// `api`: what the participant may do with each room API.
    Api(ApiScope),
    /// Any other grant (`site`, `agent`, `tunnel_ports`, ...), kept as given.
    Other {
        /// The grant's name.
        name: String,
        /// The grant's scope.
        scope: Value,
    },
}

impl Grant {
    /// The grant's name in tokens.
    pub fn name(&self) -> &str {
        match self {
            Self::Room(_) => "room",
            Self::Role(_) => "role",
            Self::Api(_) => "api",
            Self::Other { name, .. } => name,
        }
    }

    fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        let Value::Object(mut object) = value else {
            return Err(serde_json::Error::custom("a grant is not an object"));
        };
        let name = match object.remove("name") {
            Some(Value::String(name)) => name,
            Some(_) => return Err(serde_json::Error::custom("a grant's name is not a string")),
            None => return Err(serde_json::Error::custom("a grant has no name")),
        };
        // Like the SDK, a grant must have a scope, even when it is null.
        let scope = object
            .remove("scope")
            .ok_or_else(|| serde_json::Error::custom("a grant has no scope"))?;
        Ok(match name.as_str() {
            "room" => match scope {
                Value::String(room) => Self::Room(room),
                _ => return Err(serde_json::Error::custom("a room grant is not a string")),
            },
            "role" => Self::Role(serde_json::from_value(scope)?),
            "api" => Self::Api(serde_json::from_value(scope)?),
            _ => Self::Other { name, scope },
        })
    }
}

impl Serialize for Grant {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("name", self.name())?;
        match self {
            Self::Room(room) => map.serialize_entry("scope", room)?,
            Self::Role(role) => map.serialize_entry("scope", role)?,
            Self::Api(scope) => map.serialize_entry("scope", scope)?,
            Self::Other { scope, .. } => map.serialize_entry("scope", scope)?,
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Grant {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

/// Claims with a field of their own in [`Claims`], never kept in [`Claims::extra`].
const TYPED_CLAIMS: [&str; 8] = [
    "name", "grants", "sub", "kid", "exp", "nbf", "iat", "version",
];

/// The JWT claims registered by RFC 7519, which are not participant attributes.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// A participant token's payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The participant's name.
    pub name: String,
    /// What the participant was granted, in the token's order.
    pub grants: Vec<Grant>,
    /// The project the token is for (`sub`).
    pub project: Option<ProjectId>,
    /// The key that signed the token (`kid`, in the payload as the SDK writes it).
    pub key: Option<KeyId>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: Option<i64>,
    /// Not valid before, in seconds since the Unix epoch.
    pub nbf: Option<i64>,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: Option<i64>,
    /// The version of the SDK that minted the token.
    pub version: Option<String>,
    /// Every other claim, kept as given.
    pub extra: Map<String, Value>,
}

impl Claims {
    /// Claims for a participant named `name`, with no grants and no other claim.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Whether a room grant names `room`, exactly or as a prefix ending in `*`. A token with
    /// no room grant is for no room.
    pub fn room_matches(&self, room: &str) -> bool {
        self.grants.iter().any(|grant| match grant {
            Grant::Room(pattern) => matches_pattern(pattern, room),
            _ => false,
        })
    }

    /// The participant's role: the first role grant other than `user`, else `user`, as the
    /// SDK's `ParticipantToken.role` reads it.
    pub fn role(&self) -> Role {
        self.grants
            .iter()
            .find_map(|grant| match grant {
                Grant::Role(role) if *role != Role::User => Some(*role),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The first `api` grant, as the SDK's `get_api_grant` reads it.
    pub fn api(&self) -> Option<&ApiScope> {
        self.grants.iter().find_map(|grant| match grant {
            Grant::Api(scope) => Some(scope),
            _ => None,
        })
    }

    /// The participant's attributes: its `name` and every extra claim that is not a
    /// registered JWT claim.
    pub fn attributes(&self) -> Map<String, Value> {
        let mut attributes: Map<String, Value> = self
            .extra
            .iter()
            .filter(|(name, _)| !REGISTERED_CLAIMS.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        attributes.insert("name".to_owned(), Value::String(self.name.clone()));
        attributes
    }

    /// The API scope the token allows in `room`, or why it allows nothing there.
    pub fn authorize_room(&self, room: &str) -> Result<&ApiScope, Forbidden> {
        if !self.room_matches(room) {
            return Err(Forbidden::WrongRoom);
        }
        self.api().ok_or(Forbidden::NoApiGrant)
    }

    /// Reads claims from a JSON payload.
    pub fn from_value(value: Value) -> Result<Self, serde_json::Error> {
        match value {
            Value::Object(map) => Self::from_map(map),
            _ => Err(serde_json::Error::custom("the claims are not an object")),
        }
    }

    fn from_map(mut map: Map<String, Value>) -> Result<Self, serde_json::Error> {
        let name = match map.remove("name") {
            Some(Value::String(name)) => name,
            Some(_) => return Err(serde_json::Error::custom("name is not a string")),
            None => return Err(serde_json::Error::custom("name is missing")),
        };
        let grants = match map.remove("grants") {
            Some(Value::Array(grants)) => grants
                .into_iter()
                .map(Grant::from_value)
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(serde_json::Error::custom("grants is not a list")),
            None => return Err(serde_json::Error::custom("grants is missing")),
        };
        let project = map.remove("sub").map(serde_json::from_value).transpose()?;
        let key = map.remove("kid").map(serde_json::from_value).transpose()?;
        let version = map
            .remove("version")
            .map(serde_json::from_value)
            .transpose()?;
        // Rounding keeps the token's window inside what it says: expiry earlier, start later.
        let exp = numeric_date(map.remove("exp"), "exp", f64::floor)?;
        let nbf = numeric_date(map.remove("nbf"), "nbf", f64::ceil)?;
        let iat = numeric_date(map.remove("iat"), "iat", f64::ceil)?;
        Ok(Self {
            name,
            grants,
            project,
            key,
            exp,
            nbf,
            iat,
            version,
            extra: map,
        })
    }
}

/// Reads a JWT NumericDate: whole seconds, or (RFC 7519 allows it) a fraction, which `round`
/// turns into whole seconds.
fn numeric_date(
    value: Option<Value>,
    name: &str,
    round: fn(f64) -> f64,
) -> Result<Option<i64>, serde_json::Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Some(seconds) = value.as_i64() {
        return Ok(Some(seconds));
    }
    // Within 2^53 every whole float is exact, and far beyond any real date; an integer above
    // `i64::MAX` is refused like any other value out of range.
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    match value.as_f64() {
        Some(seconds) if value.is_f64() && round(seconds).abs() <= LIMIT => {
            // The range check above makes the cast exact.
            #[allow(clippy::cast_possible_truncation)]
            Ok(Some(round(seconds) as i64))
        }
        _ => Err(serde_json::Error::custom(format_args!(
            "{name} is not a NumericDate"
        ))),
    }
}

impl Serialize for Claims {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in &self.extra {
            // The typed fields own these names; writing them twice would make invalid JSON.
            if !TYPED_CLAIMS.contains(&name.as_str()) {
                map.serialize_entry(name, value)?;
            }
        }
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("grants", &self.grants)?;
        if let Some(project) = &self.project {
            map.serialize_entry("sub", project)?;
        }
        if let Some(key) = &self.key {
            map.serialize_entry("kid", key)?;
        }
        if let Some(version) = &self.version {
            map.serialize_entry("version", version)?;
        }
        if let Some(exp) = self.exp {
            map.serialize_entry("exp", &exp)?;
        }
        if let Some(nbf) = self.nbf {
            map.serialize_entry("nbf", &nbf)?;
        }
        if let Some(iat) = self.iat {
            map.serialize_entry("iat", &iat)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_map(Map::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn claims(value: Value) -> Result<Claims, serde_json::Error> {
        Claims::from_value(value)
    }

    #[test]
    fn claims_round_trip_with_extra_claims() {
        let input = json!({
            "name": "alice",
            "grants": [
                { "name": "room", "scope": "team-*" },
                { "name": "role", "scope": "tool" },
                { "name": "api", "scope": { "sync": {}, "livekit": {} } },
                { "name": "site", "scope": null },
                { "name": "tunnel_ports", "scope": "80,443" }
            ],
            "sub": "a1b2c3d4-e5f6-4789-8abc-def012345678",
            "kid": "3f2a9c1e-7b4d-4e8a-9c6f-0d1e2f3a4b5c",
            "exp": 4102444800i64,
            "nbf": 1,
            "iat": 2,
            "version": "0.56.0",
            "meshagent_bootstrap": true,
            "aud": "roomd"
        });
        let parsed = claims(input.clone()).unwrap();
        assert_eq!(parsed.name, "alice");
        assert_eq!(parsed.role(), Role::Tool);
        assert!(parsed.room_matches("team-blue"));
        assert!(parsed.api().unwrap().sync.is_some());
        assert_eq!(parsed.extra.len(), 2);
        assert_eq!(
            parsed.grants[3],
            Grant::Other {
                name: "site".into(),
                scope: Value::Null
            }
        );
        assert_eq!(serde_json::to_value(&parsed).unwrap(), input);
        let attributes = parsed.attributes();
        assert_eq!(
            Value::Object(attributes),
            json!({ "name": "alice", "meshagent_bootstrap": true })
        );
    }

    #[test]
    fn the_role_is_the_first_that_is_not_user() {
        let role = |grants: Value| {
            claims(json!({ "name": "a", "grants": grants }))
                .unwrap()
                .role()
        };
        assert_eq!(role(json!([])), Role::User);
        assert_eq!(
            role(
                json!([{ "name": "role", "scope": "user" }, { "name": "role", "scope": "agent" }])
            ),
            Role::Agent
        );
        assert_eq!(
            role(
                json!([{ "name": "role", "scope": "tool" }, { "name": "role", "scope": "agent" }])
            ),
            Role::Tool
        );
    }

    #[test]
    fn malformed_claims_are_refused() {
        for bad in [
            json!({ "grants": [] }),
            json!({ "name": "a" }),
            json!({ "name": 1, "grants": [] }),
            json!({ "name": "a", "grants": {} }),
            json!({ "name": "a", "grants": [{ "name": "role", "scope": "admin" }] }),
            json!({ "name": "a", "grants": [{ "name": "role" }] }),
            json!({ "name": "a", "grants": [{ "scope": "x" }] }),
            json!({ "name": "a", "grants": [["room", "x"]] }),
            json!({ "name": "a", "grants": [{ "name": "room", "scope": 3 }] }),
            json!({ "name": "a", "grants": [{ "name": "api", "scope": null }] }),
            json!({ "name": "a", "grants": [{ "name": "api", "scope": { "sync": { "paths": 1 } } }] }),
            json!({ "name": "a", "grants": [], "sub": "project-1" }),
            json!({ "name": "a", "grants": [], "kid": 5 }),
            json!({ "name": "a", "grants": [], "exp": "soon" }),
            json!({ "name": "a", "grants": [], "exp": null }),
            json!({ "name": "a", "grants": [], "exp": 1e300 }),
            json!({ "name": "a", "grants": [], "exp": 18446744073709551615u64 }),
            json!({ "name": "a", "grants": [], "version": 1 }),
            json!([]),
        ] {
            assert!(claims(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn fractional_times_are_rounded_inwards() {
        let parsed =
            claims(json!({ "name": "a", "grants": [], "exp": 10.5, "nbf": 3.2, "iat": 3.2 }))
                .unwrap();
        assert_eq!(parsed.exp, Some(10));
        assert_eq!(parsed.nbf, Some(4));
        assert_eq!(parsed.iat, Some(4));
    }

    #[test]
    fn rooms_match_exactly_or_by_prefix() {
        let parsed = claims(json!({
            "name": "a",
            "grants": [{ "name": "room", "scope": "team-*" }, { "name": "room", "scope": "lobby" }]
        }))
        .unwrap();
        assert!(parsed.room_matches("team-blue"));
        assert!(parsed.room_matches("team-"));
        assert!(parsed.room_matches("lobby"));
        assert!(!parsed.room_matches("lobby2"));
        assert!(!parsed.room_matches("team"));
        assert!(!Claims::new("a").room_matches("lobby"));
    }

    #[test]
    fn typed_claims_win_over_extra_ones() {
        let mut parsed = Claims::new("alice");
        parsed.extra.insert("name".into(), json!("mallory"));
        parsed.extra.insert("custom".into(), json!(1));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            json!({ "name": "alice", "grants": [], "custom": 1 })
        );
    }
}
