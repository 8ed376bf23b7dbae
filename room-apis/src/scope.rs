//! What a participant may do with each room API: a token's `api` grant, the SDK's `ApiScope`.
//!
//! Each room API has an optional sub-grant. An absent sub-grant denies that API; inside one, an
//! absent list means "all". The structs mirror the SDK's pydantic models field for field, with
//! the same defaults, and serialise as its `model_dump(mode="json", exclude_none=True,
//! exclude_defaults=True)` does: a field equal to its default is left out, so a default grant
//! is `{}`. Sub-grants roomd does not interpret are kept as raw JSON so that a scope survives a
//! round trip through roomd unchanged.

use serde::de::{DeserializeOwned, Error as _};
use serde::ser::SerializeMap as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::forbidden::Forbidden;

const fn yes() -> bool {
    true
}

// `skip_serializing_if` hands these a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
const fn is_true(value: &bool) -> bool {
    *value
}

#[allow(clippy::trivially_copy_pass_by_ref)]
const fn is_false(value: &bool) -> bool {
    !*value
}

/// Whether `value` matches a grant pattern: exactly, or by prefix when the pattern ends in `*`.
pub(crate) fn matches_pattern(pattern: &str, value: &str) -> bool {
    pattern == value
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| value.starts_with(prefix))
}

/// A document path as the SDK's sync client sends it: leading `./` and `/` removed, and `.`
/// read as the empty path. Grants and requests are compared in this form, and a server should
/// open the document under the same form it checked.
pub fn normalize_doc_path(path: &str) -> &str {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let path = path.trim_start_matches('/');
    if path == "." {
        ""
    } else {
        path
    }
}

/// How a participant may open a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocAccess {
    /// The participant may read the document but not change it.
    pub read_only: bool,
}

impl DocAccess {
    /// Whether the participant may change the document.
    pub const fn can_write(self) -> bool {
        !self.read_only
    }
}

/// The `sync` grant: which documents a participant may open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncGrant {
    /// The documents granted; absent means every document, writable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<SyncPathGrant>>,
}

/// One entry of a `sync` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPathGrant {
    /// A document path, or a prefix when it ends in `*`.
    pub path: String,
    /// The document may be read but not changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

impl SyncPathGrant {
    /// An entry for `path` (a prefix when it ends in `*`).
    pub fn new(path: impl Into<String>, read_only: bool) -> Self {
        Self {
            path: path.into(),
            read_only,
        }
    }
}

impl SyncGrant {
    /// How the grant lets a participant open the document at `path`, or `None` when it does
    /// not. As in the SDK's `can_read`/`can_write`, the first entry that matches decides, so
    /// a read-only entry listed first wins over a writable one listed after it. Both the entry
    /// and the path are compared in their [`normalize_doc_path`] form.
    pub fn access(&self, path: &str) -> Option<DocAccess> {
        let Some(entries) = &self.paths else {
            return Some(DocAccess { read_only: false });
        };
        let path = normalize_doc_path(path);
        entries
            .iter()
            .find(|entry| matches_pattern(normalize_doc_path(&entry.path), path))
            .map(|entry| DocAccess {
                read_only: entry.read_only,
            })
    }
}

/// The `messaging` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagingGrant {
    /// May broadcast to every participant.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub broadcast: bool,
    /// May list the participants that can be messaged.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub list: bool,
    /// May send to one participant.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub send: bool,
}

impl Default for MessagingGrant {
    fn default() -> Self {
        Self {
            broadcast: true,
            list: true,
            send: true,
        }
    }
}

/// The `queues` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuesGrant {
    /// The queues that may be sent to; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<Vec<String>>,
    /// The queues that may be received from; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Vec<String>>,
    /// May list the queues.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub list: bool,
}

impl Default for QueuesGrant {
    fn default() -> Self {
        Self {
            send: None,
            receive: None,
            list: true,
        }
    }
}

impl QueuesGrant {
    /// Whether `queue` may be sent to (names match exactly, as in the SDK).
    pub fn can_send(&self, queue: &str) -> bool {
        self.send
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == queue))
    }

    /// Whether `queue` may be received from (names match exactly, as in the SDK).
    pub fn can_receive(&self, queue: &str) -> bool {
        self.receive
            .as_ref()
            .is_none_or(|names| names.iter().any(|name| name == queue))
    }
}

/// The `storage` grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageGrant {
    /// The storage paths granted; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<StoragePathGrant>>,
    /// The SDK's file policy, which takes precedence over `paths` there, kept as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Value>,
}

/// One entry of a `storage` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePathGrant {
    /// A storage path.
    pub path: String,
    /// The files there may be read but not changed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
}

/// The `developer` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeveloperGrant {
    /// May read the room's developer logs.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub logs: bool,
}

impl Default for DeveloperGrant {
    fn default() -> Self {
        Self { logs: true }
    }
}

/// The `agents` grant: toolkits and calls between participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentsGrant {
    /// May register as an agent.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub register_agent: bool,
    /// May register a toolkit every participant can use.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub register_public_toolkit: bool,
    /// May register a toolkit only some participants can use.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub register_private_toolkit: bool,
    /// May call agents.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub call: bool,
    /// May use agents.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub use_agents: bool,
    /// May use tools.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub use_tools: bool,
    /// The toolkits that may be used; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_toolkits: Option<Vec<String>>,
}

impl Default for AgentsGrant {
    fn default() -> Self {
        Self {
            register_agent: true,
            register_public_toolkit: true,
            register_private_toolkit: true,
            call: true,
            use_agents: true,
            use_tools: true,
            allowed_toolkits: None,
        }
    }
}

/// The `admin` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminGrant {
    /// May read and change the room's configuration.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub config: bool,
}

impl Default for AdminGrant {
    fn default() -> Self {
        Self { config: true }
    }
}

/// The `secrets` grant. It has no fields, and like the SDK it refuses any key (older SDKs
/// wrote fields here that no longer mean anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsGrant {}

/// The `dataset` grant (read from `dataset`, or the older `database` and `datasets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetGrant {
    /// The tables granted; absent means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Vec<TableGrant>>,
    /// May list the tables.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub list_tables: bool,
}

impl Default for DatasetGrant {
    fn default() -> Self {
        Self {
            tables: None,
            list_tables: true,
        }
    }
}

/// One table of a `dataset` grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableGrant {
    /// The table's name.
    pub name: String,
    /// The table's namespace; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Vec<String>>,
    /// May write rows.
    #[serde(default, skip_serializing_if = "is_false")]
    pub write: bool,
    /// May read rows.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub read: bool,
    /// May change the table's schema.
    #[serde(default, skip_serializing_if = "is_false")]
    pub alter: bool,
}

/// The names under which the SDK reads the `dataset` grant, in the order it tries them.
const DATASET_KEYS: [&str; 3] = ["dataset", "database", "datasets"];

/// The sub-grants roomd reads into typed fields (besides `dataset`).
const TYPED_KEYS: [&str; 8] = [
    "sync",
    "messaging",
    "queues",
    "storage",
    "developer",
    "agents",
    "admin",
    "secrets",
];

/// The SDK's other sub-grants: roomd keeps them raw, but like the SDK it wants an object.
const RAW_SDK_KEYS: [&str; 7] = [
    "livekit",
    "sqlite",
    "memory",
    "containers",
    "llm",
    "tunnels",
    "services",
];

/// A token's `api` grant: one optional sub-grant per room API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiScope {
    /// Document sync.
    pub sync: Option<SyncGrant>,
    /// Messages between participants.
    pub messaging: Option<MessagingGrant>,
    /// Work queues.
    pub queues: Option<QueuesGrant>,
    /// File storage.
    pub storage: Option<StorageGrant>,
    /// Developer logs and events.
    pub developer: Option<DeveloperGrant>,
    /// Agents, toolkits and tool calls.
    pub agents: Option<AgentsGrant>,
    /// Room configuration.
    pub admin: Option<AdminGrant>,
    /// Secrets.
    pub secrets: Option<SecretsGrant>,
    /// Tables.
    pub dataset: Option<DatasetGrant>,
    /// Every other sub-grant (`livekit`, `sqlite`, `memory`, `containers`, `llm`, `tunnels`,
    /// `services`, and any added later), kept as given.
    pub other: Map<String, Value>,
}

impl ApiScope {
    /// The SDK's `ApiScope.user_default()`: every API but `llm`, `admin`, `secrets` and
    /// `tunnels`.
    pub fn user_default() -> Self {
        let mut scope = Self {
            sync: Some(SyncGrant::default()),
            messaging: Some(MessagingGrant::default()),
            queues: Some(QueuesGrant::default()),
            storage: Some(StorageGrant::default()),
            developer: Some(DeveloperGrant::default()),
            agents: Some(AgentsGrant::default()),
            admin: None,
            secrets: None,
            dataset: Some(DatasetGrant::default()),
            other: Map::new(),
        };
        for name in ["livekit", "sqlite", "memory", "containers", "services"] {
            scope.grant_raw(name);
        }
        scope
    }

    /// The SDK's `ApiScope.agent_default()`: the user default plus `llm`.
    pub fn agent_default() -> Self {
        let mut scope = Self::user_default();
        scope.grant_raw("llm");
        scope
    }

    /// The SDK's `ApiScope.full()`: the agent default plus `admin` and `tunnels`. Like the
    /// SDK's, it does not include `secrets`.
    pub fn full() -> Self {
        let mut scope = Self::agent_default();
        scope.admin = Some(AdminGrant::default());
        scope.grant_raw("tunnels");
        scope
    }

    fn grant_raw(&mut self, name: &str) {
        self.other
            .insert(name.to_owned(), Value::Object(Map::new()));
    }

    /// How the participant may open the document at `path` (see [`SyncGrant::access`]).
    pub fn doc_access(&self, path: &str) -> Result<DocAccess, Forbidden> {
        self.sync
            .as_ref()
            .ok_or(Forbidden::NoSyncGrant)?
            .access(path)
            .ok_or(Forbidden::PathNotGranted)
    }

    /// The `developer` grant, or why there is none.
    pub fn require_developer(&self) -> Result<&DeveloperGrant, Forbidden> {
        self.developer.as_ref().ok_or(Forbidden::NoDeveloperGrant)
    }

    /// The `admin` grant, or why there is none.
    pub fn require_admin(&self) -> Result<&AdminGrant, Forbidden> {
        self.admin.as_ref().ok_or(Forbidden::NoAdminGrant)
    }

    fn from_map(mut map: Map<String, Value>) -> Result<Self, serde_json::Error> {
        let mut scope = Self {
            sync: take_grant(&mut map, "sync")?,
            messaging: take_grant(&mut map, "messaging")?,
            queues: take_grant(&mut map, "queues")?,
            storage: take_grant(&mut map, "storage")?,
            developer: take_grant(&mut map, "developer")?,
            agents: take_grant(&mut map, "agents")?,
            admin: take_grant(&mut map, "admin")?,
            secrets: take_grant(&mut map, "secrets")?,
            dataset: None,
            other: Map::new(),
        };
        // The SDK reads the first of the names that is present and ignores the others.
        let mut seen = false;
        for name in DATASET_KEYS {
            if let Some(value) = map.remove(name) {
                if !seen {
                    seen = true;
                    scope.dataset = grant_from(name, value)?;
                }
            }
        }
        for (name, value) in map {
            // A null sub-grant is an absent one, which is how the SDK writes it: not at all.
            if value.is_null() {
                continue;
            }
            if RAW_SDK_KEYS.contains(&name.as_str()) && !value.is_object() {
                return Err(serde_json::Error::custom(format_args!(
                    "the {name} grant is not an object"
                )));
            }
            scope.other.insert(name, value);
        }
        Ok(scope)
    }
}

fn take_grant<T: DeserializeOwned>(
    map: &mut Map<String, Value>,
    name: &str,
) -> Result<Option<T>, serde_json::Error> {
    match map.remove(name) {
        Some(value) => grant_from(name, value),
        None => Ok(None),
    }
}

fn grant_from<T: DeserializeOwned>(
    name: &str,
    value: Value,
) -> Result<Option<T>, serde_json::Error> {
    match value {
        Value::Null => Ok(None),
        // serde would also read a struct from an array of its fields; the SDK wants an object.
        Value::Object(_) => serde_json::from_value(value).map(Some),
        _ => Err(serde_json::Error::custom(format_args!(
            "the {name} grant is not an object"
        ))),
    }
}

impl<'de> Deserialize<'de> for ApiScope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::deserialize(deserializer)?;
        Self::from_map(map).map_err(D::Error::custom)
    }
}

impl Serialize for ApiScope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(grant) = &self.sync {
            map.serialize_entry("sync", grant)?;
        }
        if let Some(grant) = &self.messaging {
            map.serialize_entry("messaging", grant)?;
        }
        if let Some(grant) = &self.queues {
            map.serialize_entry("queues", grant)?;
        }
        if let Some(grant) = &self.storage {
            map.serialize_entry("storage", grant)?;
        }
        if let Some(grant) = &self.developer {
            map.serialize_entry("developer", grant)?;
        }
        if let Some(grant) = &self.agents {
            map.serialize_entry("agents", grant)?;
        }
        if let Some(grant) = &self.admin {
            map.serialize_entry("admin", grant)?;
        }
        if let Some(grant) = &self.secrets {
            map.serialize_entry("secrets", grant)?;
        }
        if let Some(grant) = &self.dataset {
            map.serialize_entry("dataset", grant)?;
        }
        for (name, value) in &self.other {
            // The typed fields own these names; writing them twice would make invalid JSON.
            let typed =
                TYPED_KEYS.contains(&name.as_str()) || DATASET_KEYS.contains(&name.as_str());
            if !typed && !value.is_null() {
                map.serialize_entry(name, value)?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    fn scope(value: Value) -> ApiScope {
        serde_json::from_value(value).unwrap()
    }

    fn sync(paths: Value) -> SyncGrant {
        serde_json::from_value(json!({ "paths": paths })).unwrap()
    }

    #[test]
    fn defaults_serialise_as_empty_objects() {
        assert_eq!(
            serde_json::to_value(SyncGrant::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(AgentsGrant::default()).unwrap(),
            json!({})
        );
        assert_eq!(
            serde_json::to_value(MessagingGrant {
                send: false,
                ..MessagingGrant::default()
            })
            .unwrap(),
            json!({ "send": false })
        );
        assert_eq!(
            serde_json::to_value(sync(json!([{ "path": "a", "read_only": false }]))).unwrap(),
            json!({ "paths": [{ "path": "a" }] })
        );
        // An empty list grants nothing, unlike an absent one, so it is kept.
        assert_eq!(
            serde_json::to_value(sync(json!([]))).unwrap(),
            json!({ "paths": [] })
        );
    }

    #[test]
    fn an_empty_object_gets_the_sdk_defaults() {
        let scope = scope(json!({
            "messaging": {}, "queues": {}, "developer": {}, "agents": {}, "admin": {},
            "dataset": {}, "secrets": {}, "sync": {}, "storage": {}
        }));
        assert_eq!(scope.messaging, Some(MessagingGrant::default()));
        assert!(scope.messaging.as_ref().unwrap().broadcast);
        assert!(scope.agents.as_ref().unwrap().use_tools);
        assert!(scope.queues.as_ref().unwrap().can_send("anything"));
        assert!(scope.developer.as_ref().unwrap().logs);
        assert!(scope.admin.as_ref().unwrap().config);
        assert!(scope.dataset.as_ref().unwrap().list_tables);
        assert_eq!(scope.sync.as_ref().unwrap().paths, None);
        assert!(scope.other.is_empty());
        let empty = ApiScope::default();
        assert_eq!(empty.doc_access("a"), Err(Forbidden::NoSyncGrant));
        assert_eq!(empty.require_admin().err(), Some(Forbidden::NoAdminGrant));
        assert_eq!(
            empty.require_developer().err(),
            Some(Forbidden::NoDeveloperGrant)
        );
    }

    #[test]
    fn unknown_sub_grants_survive_a_round_trip() {
        let input = json!({
            "livekit": { "breakout_rooms": ["a"] },
            "sqlite": {},
            "containers": { "pull": ["lib/*"] },
            "someday": [1, 2, 3],
            "sync": {}
        });
        let parsed = scope(input.clone());
        assert_eq!(parsed.other.len(), 4);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), input);
    }

    #[test]
    fn dataset_is_read_under_its_older_names() {
        for name in ["database", "datasets"] {
            let parsed = scope(json!({ name: { "list_tables": false } }));
            assert!(!parsed.dataset.as_ref().unwrap().list_tables);
            assert_eq!(
                serde_json::to_value(&parsed).unwrap(),
                json!({ "dataset": { "list_tables": false } })
            );
        }
        // The SDK tries `dataset`, then `database`, then `datasets`.
        let parsed = scope(json!({ "datasets": { "list_tables": false }, "database": {} }));
        assert_eq!(parsed.dataset, Some(DatasetGrant::default()));
        let parsed = scope(json!({ "database": { "list_tables": false }, "dataset": {} }));
        assert_eq!(parsed.dataset, Some(DatasetGrant::default()));
    }

    #[test]
    fn wrongly_typed_grants_are_refused() {
        for bad in [
            json!({ "sync": { "paths": [{ "path": 3 }] } }),
            json!({ "sync": { "paths": [{ "path": "a", "read_only": "yes" }] } }),
            json!({ "sync": { "paths": "a" } }),
            json!({ "sync": [null] }),
            json!({ "sync": true }),
            json!({ "messaging": { "send": null } }),
            json!({ "queues": { "send": "a" } }),
            json!({ "secrets": { "request_oauth_token": [] } }),
            json!({ "livekit": 5 }),
            json!({ "dataset": { "tables": [{ "read": true }] } }),
            json!([]),
            json!("api"),
        ] {
            assert!(
                serde_json::from_value::<ApiScope>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn null_sub_grants_are_absent() {
        let parsed = scope(json!({ "sync": null, "livekit": null }));
        assert_eq!(parsed, ApiScope::default());
    }

    #[test]
    fn sync_access_follows_the_first_matching_entry() {
        let all = SyncGrant::default();
        assert_eq!(all.access("x/y"), Some(DocAccess { read_only: false }));

        let grant = sync(json!([
            { "path": "a/*", "read_only": true },
            { "path": "a/b" },
            { "path": "/public/*" },
            { "path": "exact" }
        ]));
        assert_eq!(grant.access("a/b"), Some(DocAccess { read_only: true }));
        assert_eq!(grant.access("a/c"), Some(DocAccess { read_only: true }));
        assert_eq!(grant.access("a"), None);
        assert_eq!(
            grant.access("public/x"),
            Some(DocAccess { read_only: false })
        );
        assert_eq!(
            grant.access("/public/x"),
            Some(DocAccess { read_only: false })
        );
        assert_eq!(grant.access("exact"), Some(DocAccess { read_only: false }));
        assert_eq!(grant.access("/exact"), Some(DocAccess { read_only: false }));
        assert_eq!(grant.access("exact2"), None);
        assert_eq!(grant.access("other"), None);
        assert!(sync(json!([])).access("anything").is_none());
    }

    #[test]
    fn doc_paths_are_normalised_like_the_sdk() {
        assert_eq!(normalize_doc_path("/a/b"), "a/b");
        assert_eq!(normalize_doc_path("//a"), "a");
        assert_eq!(normalize_doc_path("./a"), "a");
        assert_eq!(normalize_doc_path("././/a"), "a");
        assert_eq!(normalize_doc_path("."), "");
        assert_eq!(normalize_doc_path("a/./b"), "a/./b");
        assert_eq!(normalize_doc_path(""), "");
    }

    #[test]
    fn full_has_admin_but_not_secrets() {
        let full = ApiScope::full();
        assert!(full.admin.is_some());
        assert!(full.secrets.is_none());
        assert!(full.other.contains_key("tunnels"));
        let agent = ApiScope::agent_default();
        assert!(agent.admin.is_none());
        assert!(agent.other.contains_key("llm"));
        assert!(!agent.other.contains_key("tunnels"));
        assert!(!ApiScope::user_default().other.contains_key("llm"));
    }
}
