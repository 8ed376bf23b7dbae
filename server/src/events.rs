//! The developer event log of each room: append-only in sled, bounded by count and by age, read
//! in pages or followed live.
//!
//! Ids increase by one per event within a room. An event is shown to readers (pages and streams)
//! only once the flush that covers it has completed: a reader never sees an event that a crash
//! could take back, so after a restart the ids go on from the last one any reader could have
//! seen, and a stream resumed from `Last-Event-ID` has neither a gap nor a duplicate. Since ids
//! have no holes, a reader whose next id was pruned away (it fell behind the retained log) knows
//! it, and is told instead of skipping silently.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::store::{now_ms, EventRecord, RoomKey, Store, StoreError, WriteSeq};

/// What an event is about, with its stable type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The room became active.
    SessionStarted,
    /// The room unloaded.
    SessionEnded,
    /// A participant's first connection opened.
    ParticipantJoined,
    /// A participant's last connection closed.
    ParticipantLeft,
    /// A document received its first update.
    DocumentCreated,
    /// A document was deleted.
    DocumentDeleted,
    /// A token valid for the project was refused for this room or document.
    AuthRefused,
    /// A connection was closed for breaking the protocol or a limit.
    ProtocolError,
    /// A connection was closed because it read too slowly.
    SlowReaderClosed,
    /// A document was written over REST.
    RestWrite,
    /// A participant that may only read sent an update that would change a document.
    UpdateRefused,
    /// A participant wrote to the developer log (`developer.log`, `info`, `warning`, `error`
    /// over the room protocol); the body holds its `type` and `data`.
    DeveloperLog,
}

impl EventKind {
    /// The type name readers see.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SessionStarted => "session.started",
            EventKind::SessionEnded => "session.ended",
            EventKind::ParticipantJoined => "participant.joined",
            EventKind::ParticipantLeft => "participant.left",
            EventKind::DocumentCreated => "document.created",
            EventKind::DocumentDeleted => "document.deleted",
            EventKind::AuthRefused => "auth.refused",
            EventKind::ProtocolError => "protocol.error",
            EventKind::SlowReaderClosed => "connection.slow",
            EventKind::RestWrite => "rest.write",
            EventKind::UpdateRefused => "update.refused",
            EventKind::DeveloperLog => "developer.log",
        }
    }
}

/// The participant an event concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventParticipant {
    /// Its id within the session.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// Bounds of every room's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLimits {
    /// Events kept per room; older ones are pruned.
    pub per_room_max: u64,
    /// Age after which an event is pruned.
    pub age_max: Duration,
}

struct RoomLog {
    /// The id the next event takes, and ids appended but not yet durable with their writes.
    state: Mutex<LogState>,
    /// The newest id readers may see.
    durable: watch::Sender<u64>,
}

struct LogState {
    next_id: u64,
    pending: VecDeque<(u64, WriteSeq)>,
    /// The oldest id the log may still hold: pruning by count is due once `next_id` is
    /// `per_room_max` past it.
    oldest: u64,
    /// Appends since the age bound was last applied.
    since_age_check: u32,
}

/// Appends between two applications of the age bound: reading the oldest event on every append
/// would cost more than the append.
const AGE_CHECK_EVERY: u32 = 64;

/// Every room's event log.
pub struct EventLog {
    store: Store,
    limits: EventLimits,
    rooms: DashMap<RoomKey, Arc<RoomLog>>,
    /// Logs with events waiting for a flush.
    waiting: Mutex<Vec<Arc<RoomLog>>>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("limits", &self.limits)
            .field("rooms", &self.rooms.len())
            .finish()
    }
}

/// Why a reader cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The events after the reader's position were pruned: it fell behind the retained log.
    #[error("events after {after} are no longer kept (the oldest kept is {oldest})")]
    Lagged {
        /// The reader's position.
        after: u64,
        /// The oldest event kept.
        oldest: u64,
    },
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventLog {
    /// The logs kept in `store`, bounded by `limits`.
    pub fn new(store: Store, limits: EventLimits) -> EventLog {
        EventLog {
            store,
            limits,
            rooms: DashMap::new(),
            waiting: Mutex::new(Vec::new()),
        }
    }

    fn room(&self, room: &RoomKey) -> Result<Arc<RoomLog>, StoreError> {
        if let Some(log) = self.rooms.get(room) {
            return Ok(log.clone());
        }
        // Everything stored when the log is first opened has been read back from disk, so it is
        // all durable.
        let (oldest, last) = self
            .store
            .event_bounds(room)?
            .map_or((1, 0), |(first, last, _)| (first, last));
        Ok(self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| {
                Arc::new(RoomLog {
                    state: Mutex::new(LogState {
                        next_id: last + 1,
                        pending: VecDeque::new(),
                        oldest,
                        since_age_check: AGE_CHECK_EVERY,
                    }),
                    durable: watch::Sender::new(last),
                })
            })
            .clone())
    }

    /// Appends an event to `room`'s log and prunes what the bounds no longer keep. Returns its
    /// id; readers see it once the next flush completes.
    pub fn append(
        &self,
        room: &RoomKey,
        kind: EventKind,
        participant: Option<&EventParticipant>,
        body: serde_json::Value,
    ) -> Result<u64, StoreError> {
        let log = self.room(room)?;
        let now = now_ms();
        let (id, newly_waiting, prune) = {
            // Held while the record is inserted, so that ids reach the store in order.
            let mut state = log.state.lock().unwrap_or_else(|p| p.into_inner());
            let id = state.next_id;
            let record = EventRecord {
                id,
                time_ms: now,
                kind: kind.name().into(),
                participant: participant.map(|p| (p.id.clone(), p.name.clone())),
                body,
            };
            let write = self.store.put_event(room, &record)?;
            state.next_id += 1;
            state.pending.push_back((id, write));
            state.since_age_check += 1;
            let over_count = id >= state.oldest.saturating_add(self.limits.per_room_max);
            let age_due = state.since_age_check >= AGE_CHECK_EVERY;
            if over_count || age_due {
                state.since_age_check = 0;
                state.oldest = state
                    .oldest
                    .max((id + 1).saturating_sub(self.limits.per_room_max));
            }
            (id, state.pending.len() == 1, over_count || age_due)
        };
        if newly_waiting {
            self.waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(log);
        }
        if prune {
            let keep_from = (id + 1).saturating_sub(self.limits.per_room_max);
            let age_ms = u64::try_from(self.limits.age_max.as_millis()).unwrap_or(u64::MAX);
            self.store
                .prune_events(room, keep_from, now.saturating_sub(age_ms))?;
        }
        Ok(id)
    }

    /// Called after each flush that made every write up to `durable` durable: events covered by
    /// it become visible.
    pub fn flushed(&self, durable: WriteSeq) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        waiting.retain(|log| {
            let mut state = log.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut newest = None;
            while let Some(&(id, write)) = state.pending.front() {
                if write > durable {
                    break;
                }
                newest = Some(id);
                state.pending.pop_front();
            }
            if let Some(id) = newest {
                log.durable.send_if_modified(|d| {
                    let newer = id > *d;
                    *d = (*d).max(id);
                    newer
                });
            }
            !state.pending.is_empty()
        });
    }

    /// Up to `limit` visible events of `room` after id `after`. A reader that asks for events
    /// the log no longer keeps is told so.
    pub fn page(
        &self,
        room: &RoomKey,
        after: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, ReadError> {
        let log = self.room(room)?;
        let visible = *log.durable.borrow();
        if after >= visible {
            return Ok(Vec::new());
        }
        let mut events = self.store.events_after(room, after, limit)?;
        events.retain(|e| e.id <= visible);
        match events.first() {
            Some(first) if first.id > after + 1 && after > 0 => Err(ReadError::Lagged {
                after,
                oldest: first.id,
            }),
            _ => Ok(events),
        }
    }

    /// A receiver of the newest visible id of `room`, to follow the log live.
    pub fn watch(&self, room: &RoomKey) -> Result<watch::Receiver<u64>, StoreError> {
        Ok(self.room(room)?.durable.subscribe())
    }

    /// Forgets the in-memory state of `room`'s log when nothing waits on it (its room unloaded).
    pub fn release(&self, room: &RoomKey) {
        self.rooms.remove_if(room, |_, log| {
            Arc::strong_count(log) == 1
                && log.durable.receiver_count() == 0
                && log
                    .state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .pending
                    .is_empty()
        });
    }

    /// Forgets `room`'s log after its data was deleted: the next event starts again at 1.
    pub fn reset(&self, room: &RoomKey) {
        self.rooms.remove(room);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_in(dir: &std::path::Path, per_room_max: u64) -> (Store, EventLog) {
        let store = crate::store::reopen(dir);
        let log = EventLog::new(
            store.clone(),
            EventLimits {
                per_room_max,
                age_max: Duration::from_secs(3600),
            },
        );
        (store, log)
    }

    fn append(log: &EventLog, room: &RoomKey, n: u64) -> u64 {
        log.append(
            room,
            EventKind::RestWrite,
            None,
            serde_json::json!({ "n": n }),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn events_are_visible_once_durable_and_ids_go_on_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let room = RoomKey::new([1; 16], "r");
        {
            let (store, log) = log_in(dir.path(), 100);
            assert_eq!(append(&log, &room, 1), 1);
            assert_eq!(append(&log, &room, 2), 2);
            assert!(log.page(&room, 0, 10).unwrap_or_default().is_empty());
            let mut watch = log.watch(&room).unwrap_or_else(|e| panic!("{e}"));
            log.flushed(store.flush().unwrap_or_else(|e| panic!("{e}")));
            assert!(watch.has_changed().unwrap_or(false));
            assert_eq!(*watch.borrow_and_update(), 2);
            let page = log.page(&room, 0, 10).unwrap_or_default();
            assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
            assert_eq!(page[0].kind, "rest.write");
            assert_eq!(log.page(&room, 1, 10).unwrap_or_default().len(), 1);
        }
        let (_store, log) = log_in(dir.path(), 100);
        assert_eq!(log.page(&room, 0, 10).unwrap_or_default().len(), 2);
        assert_eq!(append(&log, &room, 3), 3);
    }

    #[test]
    fn the_log_is_bounded_and_a_reader_behind_it_is_told() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let room = RoomKey::new([1; 16], "r");
        let (store, log) = log_in(dir.path(), 3);
        for n in 1..=10 {
            append(&log, &room, n);
        }
        log.flushed(store.flush().unwrap_or_else(|e| panic!("{e}")));
        let page = log.page(&room, 0, 100).unwrap_or_default();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), [8, 9, 10]);
        assert!(matches!(
            log.page(&room, 2, 100),
            Err(ReadError::Lagged {
                after: 2,
                oldest: 8
            })
        ));
        assert_eq!(log.page(&room, 7, 100).unwrap_or_default().len(), 3);
        // Another room's log is its own.
        let other = RoomKey::new([1; 16], "s");
        assert_eq!(append(&log, &other, 1), 1);
    }
}
