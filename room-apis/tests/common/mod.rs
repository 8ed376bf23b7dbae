//! Helpers shared by the integration tests: an in-memory key store and token builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use roomd_room_apis::token::{KeyLookup, KeyRecord};
use roomd_room_apis::{KeyId, ProjectId};
use serde_json::Value;

/// One stored key.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: KeyId,
    pub project: ProjectId,
    pub secret: String,
    pub revoked: bool,
}

/// An in-memory store: the keys, the projects, and which of them accept tokens that never
/// expire.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub keys: Vec<StoredKey>,
    pub projects: Vec<ProjectId>,
    pub no_expiry: Vec<ProjectId>,
}

impl Store {
    pub fn with_key(mut self, id: KeyId, project: ProjectId, secret: &str, revoked: bool) -> Self {
        self.keys.push(StoredKey {
            id,
            project,
            secret: secret.to_owned(),
            revoked,
        });
        if !self.projects.contains(&project) {
            self.projects.push(project);
        }
        self
    }

    pub fn allowing_no_expiry(mut self, project: ProjectId) -> Self {
        self.no_expiry.push(project);
        self
    }
}

impl KeyLookup for Store {
    fn key(&self, id: KeyId) -> Option<KeyRecord<'_>> {
        self.keys
            .iter()
            .find(|key| key.id == id)
            .map(|key| KeyRecord {
                project: key.project,
                secret: &key.secret,
                revoked: key.revoked,
            })
    }

    fn allows_no_expiry(&self, project: ProjectId) -> bool {
        self.no_expiry.contains(&project)
    }

    fn project_exists(&self, project: ProjectId) -> bool {
        self.projects.contains(&project)
    }
}

/// Signs a payload with any algorithm jsonwebtoken knows.
pub fn sign(algorithm: Algorithm, payload: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), payload, key).unwrap()
}

/// A token put together by hand, for headers jsonwebtoken would never write.
pub fn raw_token(header: &Value, payload: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}
