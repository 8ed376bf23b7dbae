//! The participants of a room's session: who is connected, through which connections, since
//! when. Sans-IO: ids and times are given by the caller.
//!
//! A participant is the identity of a token within the room: connections whose tokens carry the
//! same name and role are one participant (the same person editing three documents has three
//! y-websocket connections), and it leaves when its last connection closes. Connections without
//! a token (open development mode) have no identity to tell them apart: they are one participant,
//! `anonymous`.

use std::collections::{BTreeMap, HashMap};

use crate::token::Role;

/// What makes two connections the same participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ParticipantKey {
    /// A token's participant: its name and role.
    Named {
        /// The token's `name` (shared: every connection of the participant holds its key).
        name: std::sync::Arc<str>,
        /// The token's role.
        role: Role,
    },
    /// Connections without a token.
    Anonymous,
}

/// One of a participant's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The document it syncs (or the protocol's own name for a room-wide connection).
    pub doc: std::sync::Arc<str>,
    /// When it opened, in ms since the epoch.
    pub since_ms: u64,
}

/// A participant of the session.
#[derive(Debug, Clone, PartialEq)]
pub struct Participant {
    /// Its id, unique within the session.
    pub id: String,
    /// A small number for it, unique within the session, that document sessions use to tell
    /// participants apart (`roomd_sync::Peer::participant`). The anonymous participant is number
    /// 0: in open development mode no one's awareness is protected from anyone.
    pub number: u64,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Attributes from its token.
    pub attributes: serde_json::Map<String, serde_json::Value>,
    /// Its connections, by connection id.
    pub connections: BTreeMap<u64, Connection>,
    /// When its first connection opened, in ms since the epoch.
    pub since_ms: u64,
}

/// Connections listed for one participant in `.room/participants`, at most: each change of a
/// participant rewrites its entry, so the entry stays small however many connections it has.
pub const SHOWN_CONNECTIONS_MAX: usize = 32;

impl Participant {
    /// The participant as REST shows it: name, role, attributes, every connection, and since.
    pub fn to_json(&self) -> serde_json::Value {
        self.json(usize::MAX)
    }

    /// The participant as `.room/participants` shows it: as [`Participant::to_json`], with its
    /// first [`SHOWN_CONNECTIONS_MAX`] connections, and `connections_omitted` counting the rest
    /// when there are more.
    pub fn to_shown_json(&self) -> serde_json::Value {
        self.json(SHOWN_CONNECTIONS_MAX)
    }

    fn json(&self, connections_max: usize) -> serde_json::Value {
        let connections: Vec<serde_json::Value> = self
            .connections
            .iter()
            .take(connections_max)
            .map(|(id, c)| {
                serde_json::json!({
                    "id": id.to_string(),
                    "document": &*c.doc,
                    "since": rfc3339(c.since_ms),
                })
            })
            .collect();
        let mut json = serde_json::json!({
            "id": self.id,
            "name": self.name,
            "role": self.role.as_str(),
            "attributes": self.attributes,
            "connections": connections,
            "since": rfc3339(self.since_ms),
        });
        let omitted = self.connections.len().saturating_sub(connections_max);
        if omitted > 0 {
            json["connections_omitted"] = serde_json::Value::from(omitted);
        }
        json
    }
}

/// A time in ms since the epoch as RFC 3339 text, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

/// What a connection or disconnection did to the table. The participant concerned is read with
/// [`Participants::of_conn`] (or comes with [`Change::Left`]): nothing is copied for a change,
/// however many connections a participant has.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new participant joined with this connection.
    Joined,
    /// An existing participant's connections changed; its id.
    Updated(String),
    /// The participant's last connection closed: it left.
    Left(Participant),
}

/// Everyone connected to a room in its session.
#[derive(Debug, Default)]
pub struct Participants {
    by_key: HashMap<ParticipantKey, Participant>,
    by_conn: HashMap<u64, ParticipantKey>,
    by_id: HashMap<String, ParticipantKey>,
    next_number: u64,
}

/// Who a connection says it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// What makes it the same participant as another connection.
    pub key: ParticipantKey,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Attributes from its token.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl Participants {
    /// Adds connection `conn` of `who`, syncing `doc`, at `now_ms`. A new participant takes the
    /// id `new_id` gives. The newest connection's attributes are the participant's.
    pub fn connect(
        &mut self,
        who: &Identity,
        conn: u64,
        doc: &std::sync::Arc<str>,
        now_ms: u64,
        new_id: impl FnOnce() -> String,
    ) -> Change {
        let connection = Connection {
            doc: doc.clone(),
            since_ms: now_ms,
        };
        // The key the table holds already, when the participant is here: a connection then
        // costs no copy of its name, however many it has.
        let key = self
            .by_key
            .get_key_value(&who.key)
            .map_or_else(|| who.key.clone(), |(k, _)| k.clone());
        self.by_conn.insert(conn, key);
        if let Some(p) = self.by_key.get_mut(&who.key) {
            p.connections.insert(conn, connection);
            p.attributes = who.attributes.clone();
            return Change::Updated(p.id.clone());
        }
        let number = match who.key {
            ParticipantKey::Anonymous => 0,
            ParticipantKey::Named { .. } => {
                self.next_number += 1;
                self.next_number
            }
        };
        let p = Participant {
            id: new_id(),
            number,
            name: who.name.clone(),
            role: who.role,
            attributes: who.attributes.clone(),
            connections: BTreeMap::from([(conn, connection)]),
            since_ms: now_ms,
        };
        self.by_id.insert(p.id.clone(), who.key.clone());
        self.by_key.insert(who.key.clone(), p);
        Change::Joined
    }

    /// Removes connection `conn`; its participant leaves with its last connection.
    pub fn disconnect(&mut self, conn: u64) -> Option<Change> {
        let key = self.by_conn.remove(&conn)?;
        let p = self.by_key.get_mut(&key)?;
        p.connections.remove(&conn);
        if !p.connections.is_empty() {
            return Some(Change::Updated(p.id.clone()));
        }
        let p = self.by_key.remove(&key)?;
        self.by_id.remove(&p.id);
        Some(Change::Left(p))
    }

    /// Sets attributes of the participant of connection `conn` (a participant's own
    /// `set_attributes`); returns its id. Its `name` stays the token's.
    pub fn set_attributes(
        &mut self,
        conn: u64,
        attributes: &serde_json::Map<String, serde_json::Value>,
    ) -> Option<String> {
        let p = self.by_key.get_mut(self.by_conn.get(&conn)?)?;
        for (k, v) in attributes {
            if k != "name" {
                p.attributes.insert(k.clone(), v.clone());
            }
        }
        Some(p.id.clone())
    }

    /// The participant with id `id`.
    pub fn get(&self, id: &str) -> Option<&Participant> {
        self.by_key.get(self.by_id.get(id)?)
    }

    /// The participant connection `conn` belongs to.
    pub fn of_conn(&self, conn: u64) -> Option<&Participant> {
        self.by_key.get(self.by_conn.get(&conn)?)
    }

    /// Every participant, in order of joining.
    pub fn all(&self) -> Vec<&Participant> {
        let mut all: Vec<&Participant> = self.by_key.values().collect();
        all.sort_by(|a, b| (a.since_ms, &a.id).cmp(&(b.since_ms, &b.id)));
        all
    }

    /// How many participants are connected.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// True when nobody is connected.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Identity {
        Identity {
            key: ParticipantKey::Named {
                name: name.into(),
                role: Role::User,
            },
            name: name.into(),
            role: Role::User,
            attributes: serde_json::Map::new(),
        }
    }

    #[test]
    fn connections_of_one_identity_are_one_participant_that_leaves_with_the_last() {
        let mut t = Participants::default();
        let mut ids = 0;
        let mut next = || {
            ids += 1;
            format!("p{ids}")
        };
        assert_eq!(
            t.connect(&named("alice"), 1, &"a.doc".into(), 10, &mut next),
            Change::Joined
        );
        let alice = t
            .of_conn(1)
            .cloned()
            .unwrap_or_else(|| panic!("alice is not there"));
        assert!(matches!(
            t.connect(&named("alice"), 2, &"b.doc".into(), 11, &mut next),
            Change::Updated(id) if id == alice.id
        ));
        assert_eq!(t.of_conn(2).map(|p| p.connections.len()), Some(2));
        assert_eq!(
            t.connect(&named("bob"), 3, &"a.doc".into(), 12, &mut next),
            Change::Joined
        );
        let bob = t
            .of_conn(3)
            .cloned()
            .unwrap_or_else(|| panic!("bob is not there"));
        assert_ne!(alice.number, bob.number);
        assert_eq!(t.of_conn(2).map(|p| p.id.as_str()), Some(alice.id.as_str()));
        assert!(matches!(t.disconnect(1), Some(Change::Updated(_))));
        assert!(matches!(t.disconnect(2), Some(Change::Left(p)) if p.id == alice.id));
        assert_eq!(t.disconnect(2), None);
        assert_eq!(t.len(), 1);
        let json = t.all()[0].to_json();
        assert_eq!(json["name"], "bob");
        assert_eq!(json["role"], "user");
        assert_eq!(json["connections"][0]["document"], "a.doc");
        assert_eq!(json["since"], "1970-01-01T00:00:00.012Z");
        // However many connections a participant has, its shown entry stays bounded.
        for c in 100..200 {
            t.connect(&named("bob"), c, &"many".into(), 14, &mut next);
        }
        let bob = t
            .of_conn(150)
            .map(Participant::to_shown_json)
            .unwrap_or_default();
        assert_eq!(
            bob["connections"].as_array().map(Vec::len),
            Some(SHOWN_CONNECTIONS_MAX)
        );
        assert_eq!(bob["connections_omitted"], 101 - SHOWN_CONNECTIONS_MAX);
        assert!(t.of_conn(150).map(Participant::to_json).unwrap_or_default()
            ["connections_omitted"]
            .is_null());
        // Connections without a token are one participant, numbered 0.
        let anon = Identity {
            key: ParticipantKey::Anonymous,
            ..named("anonymous")
        };
        assert_eq!(
            t.connect(&anon, 8, &"x".into(), 13, &mut next),
            Change::Joined
        );
        assert!(matches!(
            t.connect(&anon, 9, &"x".into(), 13, &mut next),
            Change::Updated(_)
        ));
        let a = t.of_conn(9).cloned().unwrap_or_else(|| panic!());
        assert_eq!((a.number, a.connections.len()), (0, 2));
    }
}
