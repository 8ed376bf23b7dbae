//! Awareness (presence) updates: parsing, validation, and the table of known states.
//!
//! An awareness update is `varUint count` followed by `count` entries of
//! `varUint clientID, varUint clock, varString stateJSON`, where the JSON `null` removes a state.

use std::collections::HashMap;

use crate::lib0::{write_var_bytes, write_var_u64, ReadError, Reader};
use crate::ConnId;

/// One entry of an awareness update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The Yjs client id the state belongs to.
    pub client_id: u64,
    /// The state's clock; a higher clock replaces a lower one.
    pub clock: u64,
    /// The state as JSON text; `null` means the client left.
    pub state_json: &'a str,
}

impl Entry<'_> {
    /// True when the entry removes the client's state.
    pub fn is_removal(&self) -> bool {
        self.state_json == "null"
    }
}

/// Why an awareness update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwarenessError {
    /// The bytes end early or a field is malformed.
    #[error("malformed awareness update: {0}")]
    Malformed(ReadError),
    /// The entry count cannot fit in the bytes that follow.
    #[error("awareness update claims {0} entries, more than its bytes can hold")]
    CountTooLarge(u64),
    /// Bytes follow the last entry.
    #[error("awareness update has trailing bytes")]
    TrailingBytes,
    /// A client id or clock is larger than a Yjs client can decode.
    #[error("awareness {field} {value} exceeds 2^53 - 1, the largest a Yjs client decodes")]
    OutOfRange {
        /// `client id` or `clock`.
        field: &'static str,
        /// The value sent.
        value: u64,
    },
    /// A state is not valid JSON, or is nested too deeply.
    #[error("awareness state of client {client_id} is not valid JSON: {reason}")]
    BadJson {
        /// The client whose state is invalid.
        client_id: u64,
        /// What the JSON parser said.
        reason: String,
    },
}

/// Deepest nesting of arrays and objects accepted in an awareness state. Real states (a user's
/// name, colour and cursor) nest two or three levels; the limit keeps peers' parsers safe.
pub const JSON_DEPTH_MAX: usize = 32;

/// The largest client id or clock accepted ([`roomd_crdt::JS_INTEGER_MAX`]): forwarding a larger
/// one would break the other participants' decoders.
pub const INTEGER_MAX: u64 = roomd_crdt::JS_INTEGER_MAX;

/// Nesting depth of valid JSON text, counting brackets outside strings.
fn json_depth(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in json.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses and validates an awareness update without copying it. Every state must be valid
/// JSON nested no deeper than [`JSON_DEPTH_MAX`].
pub fn parse(update: &[u8]) -> Result<Vec<Entry<'_>>, AwarenessError> {
    let mut r = Reader::new(update);
    let count = r.read_var_u64().map_err(AwarenessError::Malformed)?;
    // Each entry takes at least three bytes, so a larger count is a lie; never trust it for
    // an allocation.
    if count > (r.remaining() / 3) as u64 {
        return Err(AwarenessError::CountTooLarge(count));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client_id = r.read_var_u64().map_err(AwarenessError::Malformed)?;
        let clock = r.read_var_u64().map_err(AwarenessError::Malformed)?;
        let state_json = r.read_var_str().map_err(AwarenessError::Malformed)?;
        for (field, value) in [("client id", client_id), ("clock", clock)] {
            if value > INTEGER_MAX {
                return Err(AwarenessError::OutOfRange { field, value });
            }
        }
        serde_json::from_str::<serde::de::IgnoredAny>(state_json).map_err(|e| {
            AwarenessError::BadJson {
                client_id,
                reason: e.to_string(),
            }
        })?;
        if json_depth(state_json) > JSON_DEPTH_MAX {
            return Err(AwarenessError::BadJson {
                client_id,
                reason: format!("nested deeper than {JSON_DEPTH_MAX} levels"),
            });
        }
        entries.push(Entry {
            client_id,
            clock,
            state_json,
        });
    }
    if r.remaining() != 0 {
        return Err(AwarenessError::TrailingBytes);
    }
    Ok(entries)
}

/// Encodes entries as one awareness update.
pub fn encode<'a>(entries: impl ExactSizeIterator<Item = Entry<'a>>, out: &mut Vec<u8>) {
    write_var_u64(out, entries.len() as u64);
    for e in entries {
        write_var_u64(out, e.client_id);
        write_var_u64(out, e.clock);
        write_var_bytes(out, e.state_json.as_bytes());
    }
}

#[derive(Debug, Clone)]
struct Known {
    clock: u64,
    /// `None` once removed: the clock is kept so that stale updates stay ignored.
    state_json: Option<Box<str>>,
    /// The connection that announced the live state, and its participant.
    owner: Option<(ConnId, u64)>,
}

/// What applying one awareness update did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries that changed the table, by index in the update.
    pub changed: Vec<usize>,
    /// Entries dropped because another participant owns their client id, and that would have
    /// changed its state (a newer clock, or a removal): spoofing. Stale copies of another
    /// participant's state, which stock providers re-broadcast, are dropped without counting.
    pub spoofed: usize,
    /// Entries dropped for another participant's client id, spoofing or not.
    pub dropped: usize,
}

/// The awareness states known for one document, and which connection of which participant
/// announced each.
///
/// Ownership: a connection owns the client ids it announces that no live connection of another
/// participant owns. An entry for a client id another participant owns is dropped and the rest of
/// the update applies. A connection of the same participant may take over an id from an older
/// one that has not closed yet (a provider reconnecting over a dead socket). Ownership ends when
/// the owner removes its state or its connection closes.
#[derive(Debug, Default)]
pub struct AwarenessTable {
    known: HashMap<u64, Known>,
}

impl AwarenessTable {
    /// Applies entries from `conn` of `participant`, with the y-protocols rule (a higher clock
    /// wins, and an equal clock wins only to remove a state) and the ownership rule above.
    pub fn apply(&mut self, conn: ConnId, participant: u64, entries: &[Entry<'_>]) -> Applied {
        let mut applied = Applied::default();
        for (i, e) in entries.iter().enumerate() {
            let known = self.known.get(&e.client_id);
            let newer = match known {
                None => true,
                Some(k) => {
                    k.clock < e.clock
                        || (k.clock == e.clock && e.is_removal() && k.state_json.is_some())
                }
            };
            if let Some((_, owner)) = known.and_then(|k| k.owner) {
                if owner != participant {
                    applied.dropped += 1;
                    applied.spoofed += usize::from(newer);
                    continue;
                }
            }
            if !newer {
                continue;
            }
            applied.changed.push(i);
            self.known.insert(
                e.client_id,
                Known {
                    clock: e.clock,
                    state_json: (!e.is_removal()).then(|| e.state_json.into()),
                    owner: (!e.is_removal()).then_some((conn, participant)),
                },
            );
        }
        applied
    }

    /// Number of clients announced by `conn` that still have a state.
    pub fn owned_by(&self, conn: ConnId) -> usize {
        self.known
            .values()
            .filter(|k| k.owner.is_some_and(|(c, _)| c == conn) && k.state_json.is_some())
            .count()
    }

    /// Number of live states.
    pub fn len(&self) -> usize {
        self.known
            .values()
            .filter(|k| k.state_json.is_some())
            .count()
    }

    /// True when no state is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live state as one awareness update, or `None` when there is none.
    pub fn encode_all(&self) -> Option<Vec<u8>> {
        let live: Vec<Entry<'_>> = self
            .known
            .iter()
            .filter_map(|(&client_id, k)| {
                k.state_json.as_deref().map(|state_json| Entry {
                    client_id,
                    clock: k.clock,
                    state_json,
                })
            })
            .collect();
        if live.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        encode(live.into_iter(), &mut out);
        Some(out)
    }

    /// Removes every state `conn` announced, returning the awareness update that tells the
    /// others (clock + 1, state `null`), or `None` when it announced nothing.
    pub fn remove_conn(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        let mut removed = Vec::new();
        for (&client_id, k) in self.known.iter_mut() {
            if k.owner.is_some_and(|(c, _)| c == conn) && k.state_json.is_some() {
                // A state at the largest clock is still removed: an equal clock wins to remove.
                k.clock = k.clock.saturating_add(1).min(INTEGER_MAX);
                k.state_json = None;
                k.owner = None;
                removed.push((client_id, k.clock));
            }
        }
        if removed.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        encode(
            removed.into_iter().map(|(client_id, clock)| Entry {
                client_id,
                clock,
                state_json: "null",
            }),
            &mut out,
        );
        Some(out)
    }

    /// Forgets removed states whose tombstones nobody needs any more (called when the document
    /// has no connection left).
    pub fn clear(&mut self) {
        self.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            entries.iter().map(|&(client_id, clock, state_json)| Entry {
                client_id,
                clock,
                state_json,
            }),
            &mut out,
        );
        out
    }

    #[test]
    fn parses_and_rejects() {
        let u = update(&[(1, 2, r#"{"user":{"name":"a"}}"#), (3, 4, "null")]);
        let e = parse(&u).unwrap();
        assert_eq!(e.len(), 2);
        assert!(e[1].is_removal());
        assert!(matches!(
            parse(&update(&[(1, 1, "{nope")])),
            Err(AwarenessError::BadJson { .. })
        ));
        let ok = format!(
            "{}{}",
            "[".repeat(JSON_DEPTH_MAX),
            "]".repeat(JSON_DEPTH_MAX)
        );
        assert!(parse(&update(&[(1, 1, &ok)])).is_ok());
        assert_eq!(json_depth(r#"{"a":"[[[\"{{"}"#), 1);
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(
            parse(&update(&[(1, 1, &deep)])),
            Err(AwarenessError::BadJson { .. })
        ));
        assert!(matches!(
            parse(&[0xff, 0xff, 0xff, 0x7f, 1]),
            Err(AwarenessError::CountTooLarge(_))
        ));
        let mut trailing = u.clone();
        trailing.push(0);
        assert_eq!(parse(&trailing), Err(AwarenessError::TrailingBytes));
        assert!(matches!(
            parse(&u[..u.len() - 1]),
            Err(AwarenessError::Malformed(_))
        ));
        // What a Yjs client can decode passes; one more is refused, as a client id or a clock.
        assert!(parse(&update(&[(INTEGER_MAX, INTEGER_MAX, "{}")])).is_ok());
        for (id, clock, field) in [(INTEGER_MAX + 1, 0, "client id"), (1, u64::MAX, "clock")] {
            assert_eq!(
                parse(&update(&[(id, clock, "{}")])),
                Err(AwarenessError::OutOfRange {
                    field,
                    value: id.max(clock)
                })
            );
        }
    }

    #[test]
    fn a_state_at_the_largest_clock_is_still_removed() {
        let mut t = AwarenessTable::default();
        let conn = ConnId(1);
        t.apply(conn, 1, &parse(&update(&[(7, INTEGER_MAX, "{}")])).unwrap());
        let removal = t.remove_conn(conn).unwrap();
        let removed = parse(&removal).unwrap();
        assert_eq!(removed[0].clock, INTEGER_MAX);
        assert!(removed[0].is_removal());
        // A client holding the state at that clock applies the removal: an equal clock wins
        // to remove.
        let mut other = AwarenessTable::default();
        other.apply(
            ConnId(2),
            2,
            &parse(&update(&[(7, INTEGER_MAX, "{}")])).unwrap(),
        );
        assert_eq!(other.apply(ConnId(2), 2, &removed).changed, [0]);
        assert!(other.is_empty());
    }

    #[test]
    fn table_follows_clock_rules_and_removes_by_connection() {
        let mut t = AwarenessTable::default();
        let (a, b) = (ConnId(1), ConnId(2));
        assert_eq!(
            t.apply(a, 1, &parse(&update(&[(10, 1, "{}")])).unwrap())
                .changed,
            [0]
        );
        assert!(t
            .apply(b, 2, &parse(&update(&[(10, 1, r#"{"x":1}"#)])).unwrap())
            .changed
            .is_empty());
        assert_eq!(
            t.apply(b, 2, &parse(&update(&[(20, 5, "{}")])).unwrap())
                .changed,
            [0]
        );
        assert_eq!(t.len(), 2);
        let removal = t.remove_conn(a).unwrap();
        let e = parse(&removal).unwrap();
        assert_eq!(
            e,
            vec![Entry {
                client_id: 10,
                clock: 2,
                state_json: "null"
            }]
        );
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove_conn(a), None);
        assert_eq!(parse(&t.encode_all().unwrap()).unwrap()[0].client_id, 20);
    }

    #[test]
    fn another_participants_client_ids_are_not_taken() {
        let mut t = AwarenessTable::default();
        let (alice, bob, alice_again) = (ConnId(1), ConnId(2), ConnId(3));
        t.apply(
            alice,
            100,
            &parse(&update(&[(10, 3, r#"{"n":"a"}"#)])).unwrap(),
        );
        // Bob re-broadcasts Alice's state as it is (stock providers do): dropped, not spoofing.
        let echo = t.apply(
            bob,
            200,
            &parse(&update(&[(10, 3, r#"{"n":"a"}"#), (20, 1, "{}")])).unwrap(),
        );
        assert_eq!((echo.changed, echo.spoofed, echo.dropped), (vec![1], 0, 1));
        // Bob claims Alice's id with a newer clock, or removes her: spoofing, dropped.
        for claim in [(10, 4, r#"{"n":"mallory"}"#), (10, 3, "null")] {
            let spoof = t.apply(bob, 200, &parse(&update(&[claim])).unwrap());
            assert_eq!((spoof.changed.len(), spoof.spoofed), (0, 1));
        }
        assert_eq!(t.owned_by(alice), 1);
        // Another connection of Alice's takes the id over; closing the old one keeps it.
        let take = t.apply(
            alice_again,
            100,
            &parse(&update(&[(10, 5, r#"{"n":"a2"}"#)])).unwrap(),
        );
        assert_eq!(take.changed, [0]);
        assert_eq!(t.remove_conn(alice), None);
        assert_eq!(t.owned_by(alice_again), 1);
        // Once Alice's last connection is gone the id is free again.
        assert!(t.remove_conn(alice_again).is_some());
        let free = t.apply(bob, 200, &parse(&update(&[(10, 9, "{}")])).unwrap());
        assert_eq!((free.changed, free.spoofed), (vec![0], 0));
    }
}
