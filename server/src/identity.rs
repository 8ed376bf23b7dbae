//! Projects and API keys: the store's records kept in memory with their secrets opened, the
//! admin operations on them, and the lookup tokens are verified against.
//!
//! The same `Identity` serves the running server (admin REST and the control socket change it
//! live, and the next connection sees the change) and the CLI on a store no server holds. Every
//! change is flushed before it is answered: a key that was shown has been stored durably.

use std::collections::HashMap;
use std::sync::RwLock;

use roomd_room_apis::{
    ApiKey, KeyId, KeyLookup, KeyRecord as TokenKey, ProjectId, Unauthenticated,
};

use crate::master_key::{random_bytes, MasterKey, MasterKeyError};
use crate::store::{now_ms, KeyRecord, ProjectRecord, Store, StoreError};

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No project has that id or name.
    #[error("no project named or numbered {0:?}")]
    NoSuchProject(String),
    /// No key has that id.
    #[error("no API key {0}")]
    NoSuchKey(String),
    /// A project of that name exists already.
    #[error("a project named {0:?} exists already")]
    ProjectExists(String),
    /// A project name is empty, too long, or has control characters.
    #[error("a project name is 1 to 128 characters without control characters")]
    BadProjectName,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A key as the admin API shows it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's id.
    pub id: KeyId,
    /// Its project.
    pub project: ProjectId,
    /// When it was created, in ms since the epoch.
    pub created_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

struct LiveKey {
    info: KeyInfo,
    secret: String,
}

#[derive(Default)]
struct State {
    projects: HashMap<ProjectId, ProjectRecord>,
    keys: HashMap<KeyId, LiveKey>,
}

impl KeyLookup for State {
    fn key(&self, id: KeyId) -> Option<TokenKey<'_>> {
        self.keys.get(&id).map(|k| TokenKey {
            project: k.info.project,
            secret: &k.secret,
            revoked: k.info.revoked_ms.is_some(),
        })
    }

    fn allows_no_expiry(&self, project: ProjectId) -> bool {
        self.projects
            .get(&project)
            .is_some_and(|p| p.allow_no_expiry)
    }

    fn project_exists(&self, project: ProjectId) -> bool {
        self.projects.contains_key(&project)
    }
}

/// Projects and keys.
pub struct Identity {
    store: Store,
    master: MasterKey,
    state: RwLock<State>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.read();
        f.debug_struct("Identity")
            .field("projects", &state.projects.len())
            .field("keys", &state.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why the identity records could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key does not open with the master key given.
    #[error("API key {0} does not open with this master key: is it the one this data directory was created with?")]
    WrongMasterKey(KeyId),
    /// A record holds an id that is not one.
    #[error("a stored record is corrupt")]
    Corrupt,
}

/// Compares secrets without stopping at the first difference (their lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn seal_context(id: KeyId, project: ProjectId) -> Vec<u8> {
    let mut context = id.uuid().as_bytes().to_vec();
    context.extend_from_slice(project.uuid().as_bytes());
    context
}

fn project_id(p: &ProjectRecord) -> ProjectId {
    ProjectId::from_uuid(uuid::Uuid::from_bytes(p.id))
}

impl Identity {
    /// Reads every project and key, opening each secret with `master`.
    pub fn load(store: Store, master: MasterKey) -> Result<Identity, LoadError> {
        let mut state = State::default();
        for p in store.projects()? {
            state.projects.insert(project_id(&p), p);
        }
        for k in store.keys()? {
            let id = KeyId::from_uuid(uuid::Uuid::from_bytes(k.id));
            let project = ProjectId::from_uuid(uuid::Uuid::from_bytes(k.project));
            let secret = master
                .open(&k.sealed_secret, &seal_context(id, project))
                .map_err(|e| match e {
                    MasterKeyError::Unseal => LoadError::WrongMasterKey(id),
                    _ => LoadError::Corrupt,
                })?;
            let info = KeyInfo {
                id,
                project,
                created_ms: k.created_ms,
                revoked_ms: k.revoked_ms,
            };
            state.keys.insert(id, LiveKey { info, secret });
        }
        Ok(Identity {
            store,
            master,
            state: RwLock::new(state),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the key lookup tokens are verified against.
    pub fn with_keys<T>(&self, f: impl FnOnce(&dyn KeyLookup) -> T) -> T {
        f(&*self.read())
    }

    /// True while the store holds no API key, revoked or not: open development mode. Revoking
    /// every key does not open the server again.
    pub fn is_open(&self) -> bool {
        self.read().keys.is_empty()
    }

    /// The project of an API key presented whole, if it is a live key with that secret.
    pub fn check_api_key(&self, key: &ApiKey) -> Result<ProjectId, Unauthenticated> {
        let state = self.read();
        let live = state.keys.get(&key.id).ok_or(Unauthenticated::UnknownKey)?;
        if !constant_time_eq(live.secret.as_bytes(), key.secret.as_bytes()) {
            return Err(Unauthenticated::BadSignature);
        }
        if live.info.revoked_ms.is_some() {
            return Err(Unauthenticated::RevokedKey);
        }
        if live.info.project != key.project {
            return Err(Unauthenticated::WrongProject);
        }
        Ok(live.info.project)
    }

    /// A live key whole, secret included, to sign tokens with (for `POST /v1/tokens`).
    pub fn api_key(&self, id: KeyId) -> Option<ApiKey> {
        let state = self.read();
        let live = state.keys.get(&id)?;
        live.info.revoked_ms.is_none().then(|| ApiKey {
            id,
            project: live.info.project,
            secret: live.secret.clone(),
        })
    }

    /// Every project, by name.
    pub fn projects(&self) -> Vec<ProjectRecord> {
        let mut all: Vec<ProjectRecord> = self.read().projects.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The project with this id (UUID text) or name.
    pub fn project(&self, id_or_name: &str) -> Result<ProjectRecord, AdminError> {
        let state = self.read();
        let by_id = id_or_name
            .parse::<ProjectId>()
            .ok()
            .and_then(|id| state.projects.get(&id));
        by_id
            .or_else(|| state.projects.values().find(|p| p.name == id_or_name))
            .cloned()
            .ok_or_else(|| AdminError::NoSuchProject(id_or_name.to_string()))
    }

    /// Creates a project.
    pub fn create_project(
        &self,
        name: &str,
        allow_no_expiry: bool,
    ) -> Result<ProjectRecord, AdminError> {
        if name.is_empty() || name.chars().count() > 128 || name.chars().any(char::is_control) {
            return Err(AdminError::BadProjectName);
        }
        let mut state = self.write();
        if state.projects.values().any(|p| p.name == name) {
            return Err(AdminError::ProjectExists(name.to_string()));
        }
        let id = ProjectId::from_random(random_bytes());
        let record = ProjectRecord {
            id: *id.uuid().as_bytes(),
            name: name.to_string(),
            created_ms: now_ms(),
            allow_no_expiry,
        };
        self.store.put_project(&record)?;
        self.store.flush()?;
        state.projects.insert(id, record.clone());
        Ok(record)
    }

    /// Changes whether a project accepts tokens without expiry.
    pub fn set_allow_no_expiry(
        &self,
        id_or_name: &str,
        allow: bool,
    ) -> Result<ProjectRecord, AdminError> {
        let mut record = self.project(id_or_name)?;
        record.allow_no_expiry = allow;
        let mut state = self.write();
        self.store.put_project(&record)?;
        self.store.flush()?;
        state.projects.insert(project_id(&record), record.clone());
        Ok(record)
    }

    /// Creates an API key for a project and returns it whole, secret included: the only time
    /// the secret is shown.
    pub fn create_key(&self, project: &str) -> Result<(KeyInfo, ApiKey), AdminError> {
        let project = project_id(&self.project(project)?);
        let id = KeyId::from_random(random_bytes());
        let key = ApiKey::generate(id, project, random_bytes());
        let info = KeyInfo {
            id,
            project,
            created_ms: now_ms(),
            revoked_ms: None,
        };
        let record = KeyRecord {
            id: *id.uuid().as_bytes(),
            project: *project.uuid().as_bytes(),
            created_ms: info.created_ms,
            revoked_ms: None,
            sealed_secret: self.master.seal(&key.secret, &seal_context(id, project)),
        };
        let mut state = self.write();
        self.store.put_key(&record)?;
        self.store.flush()?;
        state.keys.insert(
            id,
            LiveKey {
                info: info.clone(),
                secret: key.secret.clone(),
            },
        );
        Ok((info, key))
    }

    /// Every key (of one project, when given), oldest first.
    pub fn keys(&self, project: Option<ProjectId>) -> Vec<KeyInfo> {
        let mut all: Vec<KeyInfo> = self
            .read()
            .keys
            .values()
            .map(|k| k.info.clone())
            .filter(|k| project.is_none_or(|p| k.project == p))
            .collect();
        all.sort_by_key(|k| (k.created_ms, k.id));
        all
    }

    /// Revokes a key: tokens it signed are refused from now on. Revoking twice keeps the first
    /// time.
    pub fn revoke_key(&self, id: KeyId) -> Result<KeyInfo, AdminError> {
        let mut state = self.write();
        let Some(live) = state.keys.get_mut(&id) else {
            return Err(AdminError::NoSuchKey(id.to_string()));
        };
        if live.info.revoked_ms.is_none() {
            let revoked = now_ms();
            let record = KeyRecord {
                id: *id.uuid().as_bytes(),
                project: *live.info.project.uuid().as_bytes(),
                created_ms: live.info.created_ms,
                revoked_ms: Some(revoked),
                sealed_secret: self
                    .master
                    .seal(&live.secret, &seal_context(id, live.info.project)),
            };
            self.store.put_key(&record)?;
            self.store.flush()?;
            live.info.revoked_ms = Some(revoked);
        }
        Ok(live.info.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomd_room_apis::{Claims, Grant};

    fn master(dir: &std::path::Path) -> MasterKey {
        MasterKey::load_or_create(dir, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Records are read back from the store by a fresh `Identity`; the store stays open (sled
    /// releases its lock on a directory only once its background threads have stopped).
    #[test]
    fn keys_are_created_verified_revoked_and_come_back_after_a_reload() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store =
            Store::open(&dir.path().join("data"), 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let load = |master: MasterKey| Identity::load(store.clone(), master);
        let (project, key) = {
            let id = load(master(dir.path())).unwrap_or_else(|e| panic!("{e}"));
            assert!(id.is_open());
            let p = id
                .create_project("acme", false)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(matches!(
                id.create_project("acme", false),
                Err(AdminError::ProjectExists(_))
            ));
            let (info, key) = id.create_key("acme").unwrap_or_else(|e| panic!("{e}"));
            assert!(!id.is_open());
            assert_eq!(info.project, project_id(&p));
            (p, key)
        };
        // The secret is not stored in the clear.
        let stored = std::fs::read_dir(dir.path().join("data"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .any(|bytes| {
                bytes
                    .windows(key.secret.len())
                    .any(|w| w == key.secret.as_bytes())
            });
        assert!(!stored, "the secret is stored in the clear");
        let id = load(master(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        let mut claims = Claims::new("alice");
        claims.grants.push(Grant::Room("r".into()));
        claims.project = Some(key.project);
        claims.key = Some(key.id);
        claims.exp = Some(i64::MAX / 2);
        let token = roomd_room_apis::mint(&claims, &key.secret).unwrap_or_default();
        let verified = id.with_keys(|keys| roomd_room_apis::verify(&token, 1_000, keys, None));
        assert_eq!(verified.map(|v| v.project).ok(), Some(project_id(&project)));
        id.revoke_key(key.id).unwrap_or_else(|e| panic!("{e}"));
        let refused = id.with_keys(|keys| roomd_room_apis::verify(&token, 1_000, keys, None));
        assert_eq!(
            refused.err(),
            Some(roomd_room_apis::Unauthenticated::RevokedKey)
        );
        assert!(!id.is_open(), "revoking every key does not open the server");
        assert!(id.keys(None)[0].revoked_ms.is_some());
        let again = load(master(dir.path())).unwrap_or_else(|e| panic!("{e}"));
        assert!(again.keys(None)[0].revoked_ms.is_some());
        // Another master key does not open the store's keys.
        let other = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            load(master(other.path())),
            Err(LoadError::WrongMasterKey(_))
        ));
    }
}
