//! The records of projects, API keys, rooms, sessions and developer events, and the store's
//! operations on them. Each record is a storage struct of its own, written as a version byte
//! and JSON.

use serde::{Deserialize, Serialize};

use super::{decode_record, encode_record, ProjectKey, RoomKey, Store, StoreError, WriteSeq};

/// A project: the tenant that owns rooms and API keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// The project's id.
    #[serde(with = "uuid_bytes")]
    pub id: ProjectKey,
    /// Its name, unique in the store.
    pub name: String,
    /// When it was created, in ms since the epoch.
    pub created_ms: u64,
    /// Whether tokens without `exp` are accepted for it.
    #[serde(default)]
    pub allow_no_expiry: bool,
}

/// An API key. Its secret is sealed with the master key and never stored in the clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's id.
    #[serde(with = "uuid_bytes")]
    pub id: [u8; 16],
    /// The project it belongs to.
    #[serde(with = "uuid_bytes")]
    pub project: ProjectKey,
    /// When it was created, in ms since the epoch.
    pub created_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
    /// The secret, sealed: nonce then ciphertext and tag, base64.
    pub sealed_secret: String,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("id", &uuid::Uuid::from_bytes(self.id))
            .field("project", &uuid::Uuid::from_bytes(self.project))
            .field("created_ms", &self.created_ms)
            .field("revoked_ms", &self.revoked_ms)
            .finish_non_exhaustive()
    }
}

/// What is known of a room that was ever active.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    /// When it was first activated, in ms since the epoch.
    pub created_ms: u64,
}

/// A participant seen during a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParticipant {
    /// The participant's id within the session.
    pub id: String,
    /// Its name, from its token.
    pub name: String,
    /// Its role, from its token.
    pub role: String,
    /// When it joined, in ms since the epoch.
    pub joined_ms: u64,
    /// When it left, if it has.
    pub left_ms: Option<u64>,
}

/// One active run of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's id.
    #[serde(with = "uuid_bytes")]
    pub id: [u8; 16],
    /// When the room became active, in ms since the epoch.
    pub started_ms: u64,
    /// When it unloaded; `None` while it runs (or if the process died while it ran).
    pub ended_ms: Option<u64>,
    /// True when the session was found unfinished after the process had died.
    #[serde(default)]
    pub interrupted: bool,
    /// Participants seen, in order of joining (at most a bounded number). Each is a record of
    /// its own, after the session's, so that a join writes one small record.
    #[serde(default, skip_serializing)]
    pub participants: Vec<SessionParticipant>,
    /// Participants seen beyond the bound, counted only.
    #[serde(default)]
    pub participants_omitted: u64,
}

/// One developer event of a room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Its id, increasing within the room.
    pub id: u64,
    /// When it happened, in ms since the epoch.
    pub time_ms: u64,
    /// Its type (`session.started`, `participant.joined`, …).
    pub kind: String,
    /// The participant it concerns: id and name.
    pub participant: Option<(String, String)>,
    /// What else is known of it.
    pub body: serde_json::Value,
}

mod uuid_bytes {
    //! Ids written as UUID text in records, kept as 16 bytes in memory.
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&uuid::Uuid::from_bytes(*id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 16], D::Error> {
        let text = String::deserialize(d)?;
        uuid::Uuid::parse_str(&text)
            .map(|u| *u.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

fn session_key(room: &RoomKey, started_ms: u64, id: &[u8; 16]) -> Vec<u8> {
    let mut k = room.bytes().to_vec();
    k.extend_from_slice(&started_ms.to_be_bytes());
    k.extend_from_slice(id);
    k
}

fn event_key(room: &RoomKey, id: u64) -> Vec<u8> {
    let mut k = room.bytes().to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Writes a project.
    pub fn put_project(&self, p: &ProjectRecord) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        self.projects.insert(p.id, encode_record(p))?;
        Ok(self.wrote())
    }

    /// Every project, by id.
    pub fn projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        self.projects
            .iter()
            .values()
            .map(|v| decode_record("project", &v?))
            .collect()
    }

    /// The project named `name`.
    pub fn project_by_name(&self, name: &str) -> Result<Option<ProjectRecord>, StoreError> {
        Ok(self.projects()?.into_iter().find(|p| p.name == name))
    }

    /// The project with id `id`.
    pub fn project(&self, id: &ProjectKey) -> Result<Option<ProjectRecord>, StoreError> {
        self.projects
            .get(id)?
            .map(|v| decode_record("project", &v))
            .transpose()
    }

    /// Writes an API key.
    pub fn put_key(&self, k: &KeyRecord) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        self.keys.insert(k.id, encode_record(k))?;
        Ok(self.wrote())
    }

    /// Every API key, revoked ones included.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.keys
            .iter()
            .values()
            .map(|v| decode_record("key", &v?))
            .collect()
    }

    /// Records a room the first time it is activated.
    pub fn touch_room(&self, room: &RoomKey, now_ms: u64) -> Result<(), StoreError> {
        self.in_order()?;
        if self.rooms.get(room.bytes())?.is_none() {
            let record = RoomRecord { created_ms: now_ms };
            self.rooms.insert(room.bytes(), encode_record(&record))?;
            self.wrote();
        }
        Ok(())
    }

    /// The rooms of `project` that were ever active, by name.
    pub fn rooms(&self, project: &ProjectKey) -> Result<Vec<(RoomKey, RoomRecord)>, StoreError> {
        self.rooms
            .scan_prefix(project)
            .map(|item| {
                let (k, v) = item?;
                let (room, _) =
                    RoomKey::split(&k).ok_or_else(|| StoreError::Corrupt("room key".into()))?;
                Ok((room, decode_record("room", &v)?))
            })
            .collect()
    }

    /// The record of `room`, if it was ever active.
    pub fn room(&self, room: &RoomKey) -> Result<Option<RoomRecord>, StoreError> {
        self.rooms
            .get(room.bytes())?
            .map(|v| decode_record("room", &v))
            .transpose()
    }

    /// Writes (or rewrites) a session of `room`, without its participants.
    pub fn put_session(&self, room: &RoomKey, s: &SessionRecord) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        self.sessions
            .insert(session_key(room, s.started_ms, &s.id), encode_record(s))?;
        Ok(self.wrote())
    }

    /// Writes (or rewrites) participant number `index` of session `s` of `room`.
    pub fn put_session_participant(
        &self,
        room: &RoomKey,
        s: &SessionRecord,
        index: u32,
        p: &SessionParticipant,
    ) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        let mut key = session_key(room, s.started_ms, &s.id);
        key.extend_from_slice(&index.to_be_bytes());
        self.sessions.insert(key, encode_record(p))?;
        Ok(self.wrote())
    }

    /// The sessions of `room`, oldest first, each with its participants.
    pub fn sessions(&self, room: &RoomKey) -> Result<Vec<SessionRecord>, StoreError> {
        // A session's key is followed by its participants' keys (four bytes longer), before the
        // next session's.
        let session_len = room.bytes().len() + 8 + 16;
        let mut out: Vec<SessionRecord> = Vec::new();
        for item in self.sessions.scan_prefix(room.bytes()) {
            let (k, v) = item?;
            if k.len() == session_len {
                out.push(decode_record("session", &v)?);
            } else if let Some(session) = out.last_mut() {
                session
                    .participants
                    .push(decode_record("session participant", &v)?);
            }
        }
        Ok(out)
    }

    /// Appends a developer event of `room`.
    pub fn put_event(&self, room: &RoomKey, e: &EventRecord) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        self.events
            .insert(event_key(room, e.id), encode_record(e))?;
        Ok(self.wrote())
    }

    /// Up to `limit` events of `room` with an id above `after`, in order.
    pub fn events_after(
        &self,
        room: &RoomKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        self.events
            .range(event_key(room, start)..=event_key(room, u64::MAX))
            .values()
            .take(limit)
            .map(|v| decode_record("event", &v?))
            .collect()
    }

    /// The id of the newest and oldest events of `room`, and how many there are.
    pub fn event_bounds(&self, room: &RoomKey) -> Result<Option<(u64, u64, u64)>, StoreError> {
        let prefix = room.bytes();
        let id_of = |k: &[u8]| -> Result<u64, StoreError> {
            k.get(prefix.len()..)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt("event key".into()))
        };
        let mut keys = self.events.scan_prefix(prefix).keys();
        let Some(first) = keys.next() else {
            return Ok(None);
        };
        let first = id_of(&first?)?;
        let mut count = 1u64;
        let mut last = first;
        for k in keys {
            last = id_of(&k?)?;
            count += 1;
        }
        Ok(Some((first, last, count)))
    }

    /// Removes the oldest events of `room`: those with an id below `keep_from`, and those older
    /// than `older_than_ms`. Returns how many were removed.
    pub fn prune_events(
        &self,
        room: &RoomKey,
        keep_from: u64,
        older_than_ms: u64,
    ) -> Result<u64, StoreError> {
        self.in_order()?;
        let mut removed = 0;
        for item in self.events.scan_prefix(room.bytes()) {
            let (k, v) = item?;
            let e: EventRecord = decode_record("event", &v)?;
            if e.id >= keep_from && e.time_ms >= older_than_ms {
                break;
            }
            self.events.remove(k)?;
            removed += 1;
        }
        if removed > 0 {
            self.wrote();
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_keys_rooms_sessions_events_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let p = ProjectRecord {
            id: [3; 16],
            name: "acme".into(),
            created_ms: 5,
            allow_no_expiry: true,
        };
        store.put_project(&p).unwrap();
        assert_eq!(store.project_by_name("acme").unwrap(), Some(p.clone()));
        assert_eq!(store.project(&[3; 16]).unwrap(), Some(p));
        let k = KeyRecord {
            id: [4; 16],
            project: [3; 16],
            created_ms: 6,
            revoked_ms: None,
            sealed_secret: "sealed".into(),
        };
        store.put_key(&k).unwrap();
        assert_eq!(store.keys().unwrap(), vec![k.clone()]);
        assert!(!format!("{k:?}").contains("sealed"));
        let room = RoomKey::new([3; 16], "lobby");
        store.touch_room(&room, 7).unwrap();
        store.touch_room(&room, 8).unwrap();
        store
            .touch_room(&RoomKey::new([9; 16], "other"), 8)
            .unwrap();
        let rooms = store.rooms(&[3; 16]).unwrap();
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms[0].0.name(), "lobby");
        assert_eq!(rooms[0].1.created_ms, 7);
        let s = SessionRecord {
            id: [5; 16],
            started_ms: 10,
            ended_ms: None,
            interrupted: false,
            participants: vec![],
            participants_omitted: 0,
        };
        store.put_session(&room, &s).unwrap();
        let mut ended = s.clone();
        ended.ended_ms = Some(20);
        ended.participants.push(SessionParticipant {
            id: "p".into(),
            name: "alice".into(),
            role: "user".into(),
            joined_ms: 11,
            left_ms: None,
        });
        store.put_session(&room, &ended).unwrap();
        store
            .put_session_participant(&room, &ended, 0, &ended.participants[0])
            .unwrap();
        let later = SessionRecord {
            id: [6; 16],
            started_ms: 30,
            ..s.clone()
        };
        store.put_session(&room, &later).unwrap();
        assert_eq!(store.sessions(&room).unwrap(), vec![ended, later]);
        for id in 1..=5 {
            let e = EventRecord {
                id,
                time_ms: 100 * id,
                kind: "x".into(),
                participant: None,
                body: serde_json::json!({ "n": id }),
            };
            store.put_event(&room, &e).unwrap();
        }
        assert_eq!(store.event_bounds(&room).unwrap(), Some((1, 5, 5)));
        let page = store.events_after(&room, 2, 2).unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [3, 4]);
        // Keep ids from 3 on, and events not older than 450 ms: 1, 2, 3 and 4 go.
        assert_eq!(store.prune_events(&room, 3, 450).unwrap(), 4);
        assert_eq!(store.event_bounds(&room).unwrap(), Some((5, 5, 1)));
        assert!(store.events_after(&room, u64::MAX, 10).unwrap().is_empty());
    }
}
