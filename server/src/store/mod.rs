//! Durable storage in sled: documents (one append-only log and one snapshot each), projects and
//! their API keys, rooms, sessions and developer events, all group-committed.
//!
//! Records are versioned byte layouts of their own (first byte = record version):
//! - document log key `doc_key ++ seq (u64 BE)` → `[1] ++ v1 update`
//! - document snapshot key `doc_key` → `[1] ++ covered_seq (u64 BE) ++ v1 update`
//! - projects, keys, rooms, sessions and events → `[1] ++ JSON` of their record structs
//!   (`records`), which are storage types of their own, never the core's.
//! - a room's work queues (tree `queues`): base records, key `room_key ++ Record::key()`
//!   (`queue/<name>`, `item/<queue>\0<seq BE>`, `receipts`) → `[1] ++ JSON` of the queue
//!   engine's stored value (`room_apis::queue::Stored`, a versioned storage type of the
//!   engine's own), and journal entries over them, key `room_key ++ "journal/" ++ seq (u64
//!   BE)`, each the changes to base records of one group commit (`journal`).
//!
//! Keys: a room is `project id (16 bytes) ++ u16 BE length ++ name`, a document is its room's key
//! `++ u16 BE length ++ name`, so every document of a room shares the room's prefix and no key is a
//! prefix of another room's or document's. A snapshot covers every log entry up to
//! `covered_seq`; loading ignores such entries even if a crash left them behind, so compaction
//! needs no cross-tree transaction.
//!
//! The layout has a schema version in the `meta` tree. A store written before projects existed
//! (schema 0: documents keyed by room and name alone, in `yjs_log` and `yjs_snapshot`) is
//! migrated on open: its documents move under the `default` project.

mod journal;
mod records;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

pub use records::{EventRecord, KeyRecord, ProjectRecord, SessionParticipant, SessionRecord};
use roomd_room_apis::queue::Record as QueueRecord;

const RECORD_V1: u8 = 1;
/// The layout this code writes.
const SCHEMA: u32 = 1;
const SCHEMA_KEY: &[u8] = b"schema";
/// The name of the project that exists from the start, and serves open development mode.
pub const DEFAULT_PROJECT: &str = "default";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage engine: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record has an unknown version or is truncated.
    #[error("corrupt record for {0}")]
    Corrupt(String),
    /// The store was written by a newer roomd.
    #[error("the store has schema {0}, newer than this roomd understands ({SCHEMA})")]
    TooNew(u32),
}

/// A project's id in storage: a UUID's 16 bytes.
pub type ProjectKey = [u8; 16];

/// A room's identity in storage: its project and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey(Arc<[u8]>);

impl RoomKey {
    /// The key of room `room` of `project`. The name is at most 65,535 bytes (the router enforces
    /// far smaller limits).
    pub fn new(project: ProjectKey, room: &str) -> RoomKey {
        let mut k = Vec::with_capacity(18 + room.len());
        k.extend_from_slice(&project);
        push_part(&mut k, room);
        RoomKey(k.into())
    }

    /// The room's project.
    pub fn project(&self) -> ProjectKey {
        let mut p = [0; 16];
        p.copy_from_slice(&self.0[..16]);
        p
    }

    /// The room's name.
    pub fn name(&self) -> &str {
        // Built from a `&str` by `new`, so the bytes after the length are UTF-8.
        std::str::from_utf8(&self.0[18..]).unwrap_or_default()
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads a room key back from the front of a stored key; returns it and the rest.
    fn split(key: &[u8]) -> Option<(RoomKey, &[u8])> {
        let len = usize::from(u16::from_be_bytes(key.get(16..18)?.try_into().ok()?));
        let end = 18 + len;
        std::str::from_utf8(key.get(18..end)?).ok()?;
        Some((RoomKey(key[..end].into()), &key[end..]))
    }
}

fn push_part(k: &mut Vec<u8>, part: &str) {
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
}

/// A document's identity in storage: its room and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey(Arc<[u8]>);

impl DocKey {
    /// The key of document `doc` in `room`.
    pub fn new(room: &RoomKey, doc: &str) -> DocKey {
        let mut k = Vec::with_capacity(room.0.len() + 2 + doc.len());
        k.extend_from_slice(room.bytes());
        push_part(&mut k, doc);
        DocKey(k.into())
    }

    fn log_key(&self, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 8);
        k.extend_from_slice(&self.0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn describe(&self) -> String {
        String::from_utf8_lossy(&self.0[16..]).into_owned()
    }

    /// The document's name, read back after its room's key.
    fn name_after(rest: &[u8]) -> Option<(&str, &[u8])> {
        let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
        let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        Some((name, &rest[2 + len..]))
    }
}

/// What storage holds for one document.
#[derive(Debug, Default)]
pub struct StoredDoc {
    /// The latest snapshot, if any.
    pub snapshot: Option<Bytes>,
    /// Log entries after the snapshot, in order.
    pub log: Vec<Bytes>,
    /// Total bytes of `log`.
    pub log_bytes: usize,
    /// The sequence number the next append must use.
    pub next_seq: u64,
}

impl StoredDoc {
    /// True when nothing was ever stored for the document.
    pub fn is_new(&self) -> bool {
        self.snapshot.is_none() && self.log.is_empty() && self.next_seq == 0
    }
}

/// A stored document's name and the bytes it takes (snapshot and log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocSize {
    /// The document's name.
    pub name: String,
    /// Bytes of its snapshot and log entries.
    pub bytes: u64,
}

/// The number of a write: it is durable once [`Store::durable`] reaches it.
pub type WriteSeq = u64;

/// The sled database and its group-commit counters.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    snapshots: sled::Tree,
    pub(crate) projects: sled::Tree,
    pub(crate) keys: sled::Tree,
    pub(crate) rooms: sled::Tree,
    pub(crate) sessions: sled::Tree,
    pub(crate) events: sled::Tree,
    queues: sled::Tree,
    /// Queue records written and not yet in sled, and the rooms' journals.
    journal: Arc<journal::Journal>,
    /// Writes issued so far.
    written: Arc<AtomicU64>,
    /// Writes covered by a completed flush.
    durable: Arc<AtomicU64>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating an older layout. A new store, and one
    /// migrated from before projects existed, holds a project named [`DEFAULT_PROJECT`] with a
    /// random id.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let store = Store {
            log: db.open_tree("doc_log")?,
            snapshots: db.open_tree("doc_snapshot")?,
            projects: db.open_tree("projects")?,
            keys: db.open_tree("keys")?,
            rooms: db.open_tree("rooms")?,
            sessions: db.open_tree("sessions")?,
            events: db.open_tree("events")?,
            queues: db.open_tree("queues")?,
            journal: Arc::default(),
            db,
            written: Arc::new(AtomicU64::new(0)),
            durable: Arc::new(AtomicU64::new(0)),
        };
        store.upgrade()?;
        Ok(store)
    }

    /// Brings the layout to [`SCHEMA`]. Idempotent: a crash half-way leaves the old trees in
    /// place and the schema unset, and the next open starts again.
    fn upgrade(&self) -> Result<(), StoreError> {
        let meta = self.db.open_tree("meta")?;
        let schema = match meta.get(SCHEMA_KEY)? {
            Some(v) => u32::from_be_bytes(
                v.as_ref()
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("schema".into()))?,
            ),
            None => 0,
        };
        if schema > SCHEMA {
            return Err(StoreError::TooNew(schema));
        }
        if schema == SCHEMA {
            return Ok(());
        }
        // Schema 0, or a new store: a default project, then every document moved under it.
        let default = match self.project_by_name(DEFAULT_PROJECT)? {
            Some(p) => p,
            None => {
                let p = ProjectRecord {
                    id: *uuid::Uuid::new_v4().as_bytes(),
                    name: DEFAULT_PROJECT.into(),
                    created_ms: now_ms(),
                    allow_no_expiry: false,
                };
                self.put_project(&p)?;
                p
            }
        };
        let names = self.db.tree_names();
        for (old, new) in [("yjs_log", &self.log), ("yjs_snapshot", &self.snapshots)] {
            if !names.iter().any(|n| n.as_ref() == old.as_bytes()) {
                continue;
            }
            let old_tree = self.db.open_tree(old)?;
            // A migration cut short left some entries copied: start again from nothing.
            new.clear()?;
            for item in old_tree.iter() {
                let (k, v) = item?;
                let mut key = Vec::with_capacity(16 + k.len());
                key.extend_from_slice(&default.id);
                key.extend_from_slice(&k);
                new.insert(key, v)?;
            }
        }
        meta.insert(SCHEMA_KEY, &SCHEMA.to_be_bytes())?;
        self.db.flush()?;
        for old in ["yjs_log", "yjs_snapshot"] {
            self.db.drop_tree(old)?;
        }
        self.db.flush()?;
        Ok(())
    }

    /// Before any write to sled: the queue records written before it go first, so that sled
    /// holds what was written in the order it was written.
    fn in_order(&self) -> Result<(), StoreError> {
        self.journal.drain(&self.queues)
    }

    /// Counts a write; it is durable once a flush started after it completes.
    fn wrote(&self) -> WriteSeq {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Reads a document's snapshot and the log entries after it. The log is read first, so a
    /// compaction racing with the read can only make the result a superset.
    pub fn load(&self, key: &DocKey) -> Result<StoredDoc, StoreError> {
        let mut entries = Vec::new();
        for item in self.log.scan_prefix(&key.0[..]) {
            let (k, v) = item?;
            let seq_bytes: [u8; 8] = k
                .get(key.0.len()..)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| StoreError::Corrupt(key.describe()))?;
            entries.push((u64::from_be_bytes(seq_bytes), v));
        }
        let mut out = StoredDoc::default();
        let mut covered = None;
        if let Some(v) = self.snapshots.get(&key.0[..])? {
            let (version, rest) = v
                .split_first()
                .ok_or_else(|| StoreError::Corrupt(key.describe()))?;
            if *version != RECORD_V1 || rest.len() < 8 {
                return Err(StoreError::Corrupt(key.describe()));
            }
            let (seq, update) = rest.split_at(8);
            let seq = u64::from_be_bytes(
                seq.try_into()
                    .map_err(|_| StoreError::Corrupt(key.describe()))?,
            );
            covered = Some(seq);
            out.next_seq = seq + 1;
            out.snapshot = Some(Bytes::copy_from_slice(update));
        }
        for (seq, v) in entries {
            if covered.is_some_and(|c| seq <= c) {
                continue;
            }
            match v.split_first() {
                Some((&RECORD_V1, update)) => {
                    out.log_bytes += update.len();
                    out.log.push(Bytes::copy_from_slice(update));
                }
                _ => return Err(StoreError::Corrupt(key.describe())),
            }
            out.next_seq = out.next_seq.max(seq + 1);
        }
        Ok(out)
    }

    /// Appends an accepted update as log entry `seq`. It is durable after the next flush.
    pub fn append(&self, key: &DocKey, seq: u64, update: &[u8]) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        let mut v = Vec::with_capacity(1 + update.len());
        v.push(RECORD_V1);
        v.extend_from_slice(update);
        self.log.insert(key.log_key(seq), v)?;
        Ok(self.wrote())
    }

    /// Replaces the document's snapshot with `snapshot`, which covers log entries up to and
    /// including `covered_seq`, then removes those entries.
    pub fn compact(
        &self,
        key: &DocKey,
        snapshot: &[u8],
        covered_seq: u64,
    ) -> Result<(), StoreError> {
        self.in_order()?;
        let mut v = Vec::with_capacity(9 + snapshot.len());
        v.push(RECORD_V1);
        v.extend_from_slice(&covered_seq.to_be_bytes());
        v.extend_from_slice(snapshot);
        self.snapshots.insert(&key.0[..], v)?;
        // One by one, not in a batch: removals need no atomicity (loading ignores the entries a
        // snapshot covers), and sled serialises a batch against every operation of the process.
        for item in self
            .log
            .range(key.log_key(0)..=key.log_key(covered_seq))
            .keys()
        {
            self.log.remove(item?)?;
        }
        self.wrote();
        Ok(())
    }

    /// Removes a document: its snapshot and its log.
    pub fn delete_doc(&self, key: &DocKey) -> Result<WriteSeq, StoreError> {
        self.in_order()?;
        self.snapshots.remove(&key.0[..])?;
        for item in self.log.scan_prefix(&key.0[..]).keys() {
            let k = item?;
            // Only this document's entries: a key continuing with 8 bytes of sequence.
            if k.len() == key.0.len() + 8 {
                self.log.remove(k)?;
            }
        }
        Ok(self.wrote())
    }

    /// The documents stored in `room`, with their sizes, by name.
    pub fn docs(&self, room: &RoomKey) -> Result<Vec<DocSize>, StoreError> {
        let mut sizes: std::collections::BTreeMap<String, u64> = Default::default();
        for tree in [&self.snapshots, &self.log] {
            for item in tree.scan_prefix(room.bytes()) {
                let (k, v) = item?;
                let rest = &k[room.bytes().len()..];
                let Some((name, _)) = DocKey::name_after(rest) else {
                    return Err(StoreError::Corrupt(room.name().into()));
                };
                *sizes.entry(name.to_string()).or_default() += v.len() as u64;
            }
        }
        Ok(sizes
            .into_iter()
            .map(|(name, bytes)| DocSize { name, bytes })
            .collect())
    }

    /// Everything stored of `room`'s work queues, as the records that wrote it, for
    /// `Queues::restore`: its base records with its journal folded over them.
    pub fn queue_records(&self, room: &RoomKey) -> Result<Vec<QueueRecord>, StoreError> {
        let corrupt = || StoreError::Corrupt(format!("queues of {}", room.name()));
        let mut records = Vec::new();
        for (key, v) in self.journal.read(&self.queues, room)? {
            let json = match v.split_first() {
                Some((&RECORD_V1, json)) => json,
                _ => return Err(corrupt()),
            };
            records.push(QueueRecord::decode(&key, json).map_err(|_| corrupt())?);
        }
        Ok(records)
    }

    /// Writes what a mutation of `room`'s work queues changed. The records join the room's
    /// next journal entry, made before the next flush or the next other write, whichever comes
    /// first (see `journal`): a crash keeps all of a call's records or none, and those of the
    /// calls before it. Durable after the next flush.
    pub fn write_queue_records(
        &self,
        room: &RoomKey,
        records: &[QueueRecord],
    ) -> Result<WriteSeq, StoreError> {
        if records.is_empty() {
            return Ok(self.written());
        }
        let changes = records
            .iter()
            .map(|r| {
                let value = r.encode().map(|json| {
                    let mut v = Vec::with_capacity(1 + json.len());
                    v.push(RECORD_V1);
                    v.extend_from_slice(&json);
                    v
                });
                (r.key(), value)
            })
            .collect();
        let mut seq = 0;
        let over = self.journal.push(room, changes, || seq = self.wrote());
        if over {
            self.in_order()?;
        }
        Ok(seq)
    }

    /// Whether the queues' journal wants compacting and no compaction runs; if true, the
    /// caller runs [`Store::compact_queues`] (off the async threads).
    pub fn queue_compaction_due(&self) -> bool {
        self.journal.start_compaction()
    }

    /// Folds the journals that have grown, or whose rooms unloaded, into their base records.
    /// Each room's fold counts as a write, durable at the next flush (until then its journal
    /// entries are on disk).
    pub fn compact_queues(&self) -> Result<(), StoreError> {
        self.journal.compact(&self.queues, || {
            self.wrote();
        })
    }

    /// Rooms' queue journals compacted since the process started.
    pub fn queue_compactions(&self) -> u64 {
        self.journal.compactions()
    }

    /// `room` unloaded: its queues' journal is compacted soon, and forgotten.
    pub fn queues_unloaded(&self, room: &RoomKey) {
        self.journal.unloaded(room);
    }

    /// Removes everything stored for `room`: documents, work queues, sessions, events and its
    /// record.
    pub fn delete_room(&self, room: &RoomKey) -> Result<WriteSeq, StoreError> {
        let _quiet = self.journal.quiet();
        self.in_order()?;
        self.journal.forget(room);
        for tree in [
            &self.snapshots,
            &self.log,
            &self.queues,
            &self.sessions,
            &self.events,
        ] {
            for k in tree.scan_prefix(room.bytes()).keys() {
                tree.remove(k?)?;
            }
        }
        self.rooms.remove(room.bytes())?;
        Ok(self.wrote())
    }

    /// Makes every write issued so far durable (blocking; call off the async threads).
    pub fn flush(&self) -> Result<WriteSeq, StoreError> {
        let target = self.written.load(Ordering::Acquire);
        if self.durable.load(Ordering::Acquire) >= target {
            return Ok(target);
        }
        self.in_order()?;
        self.db.flush()?;
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(target)
    }

    /// Writes issued so far.
    pub fn written(&self) -> WriteSeq {
        self.written.load(Ordering::Acquire)
    }

    /// Writes known to be durable.
    pub fn durable(&self) -> WriteSeq {
        self.durable.load(Ordering::Acquire)
    }

    /// True when the engine answers (for readiness).
    pub fn is_ready(&self) -> bool {
        self.db.size_on_disk().is_ok()
    }
}

/// Encodes a record: its version byte, then its JSON.
fn encode_record<T: serde::Serialize>(record: &T) -> Vec<u8> {
    let mut v = vec![RECORD_V1];
    // Serialising a plain record struct into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut v, record);
    v
}

/// Decodes a record written by [`encode_record`].
fn decode_record<T: serde::de::DeserializeOwned>(
    what: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_V1, json)) => {
            serde_json::from_slice(json).map_err(|_| StoreError::Corrupt(what.into()))
        }
        _ => Err(StoreError::Corrupt(what.into())),
    }
}

/// Opens the store in `dir` as a test that has just closed it does: sled releases its lock on
/// the directory once its background threads have stopped, so a reopen polls for that, for at
/// most a few seconds.
#[cfg(test)]
pub(crate) fn reopen(dir: &std::path::Path) -> Store {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match Store::open(dir, 1 << 20) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10)); // polling sled's lock
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: ProjectKey = [7; 16];

    #[test]
    fn keys_of_different_docs_and_rooms_never_share_a_prefix() {
        let room = RoomKey::new(P, "r");
        let a = DocKey::new(&room, "a");
        let ab = DocKey::new(&room, "a/b");
        assert!(!ab.log_key(0).starts_with(&a.0));
        assert_ne!(
            DocKey::new(&RoomKey::new(P, "ra"), ""),
            DocKey::new(&room, "a")
        );
        assert!(!RoomKey::new(P, "rr").0.starts_with(&room.0));
        assert_ne!(RoomKey::new([8; 16], "r"), room);
        assert_eq!(room.name(), "r");
        assert_eq!(room.project(), P);
    }

    #[test]
    fn append_compact_load_list_delete() {
        let dir = tempdir();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let room = RoomKey::new(P, "room");
        let k = DocKey::new(&room, "doc");
        let other = DocKey::new(&room, "doc2");
        let elsewhere = DocKey::new(&RoomKey::new([9; 16], "room"), "doc");
        assert!(store.load(&k).unwrap().is_new());
        store.append(&k, 0, b"a").unwrap();
        store.append(&k, 1, b"b").unwrap();
        store.append(&other, 0, b"x").unwrap();
        store.append(&elsewhere, 0, b"y").unwrap();
        let d = store.load(&k).unwrap();
        assert_eq!(
            d.log,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        assert_eq!(d.next_seq, 2);
        store.compact(&k, b"ab", 1).unwrap();
        store.append(&k, 2, b"c").unwrap();
        let d = store.load(&k).unwrap();
        assert_eq!(d.snapshot.as_deref(), Some(&b"ab"[..]));
        assert_eq!(d.log, vec![Bytes::from_static(b"c")]);
        assert_eq!(d.next_seq, 3);
        let docs = store.docs(&room).unwrap();
        assert_eq!(
            docs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["doc", "doc2"]
        );
        store.delete_doc(&k).unwrap();
        assert!(store.load(&k).unwrap().is_new());
        assert_eq!(store.load(&other).unwrap().log.len(), 1);
        store.delete_room(&room).unwrap();
        assert!(store.load(&other).unwrap().is_new());
        assert_eq!(store.load(&elsewhere).unwrap().log.len(), 1);
        let seq = store.flush().unwrap();
        assert_eq!(store.durable(), store.written());
        assert_eq!(seq, store.written());
    }

    #[test]
    fn queue_records_are_kept_per_room_and_go_with_it() {
        use roomd_room_apis::queue::{Config, Queues};
        let dir = tempdir();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let (room, other) = (RoomKey::new(P, "r"), RoomKey::new(P, "r2"));
        let mut q = Queues::new(Config::default());
        for n in 0..3 {
            let sent = q.send("jobs", serde_json::json!(n), true, n).unwrap();
            store
                .write_queue_records(&room, &sent.effects.records)
                .unwrap();
        }
        let got = q.receive("jobs", "w", Some(1000), 5).unwrap();
        store
            .write_queue_records(&room, &got.effects.records)
            .unwrap();
        let mut elsewhere = Queues::new(Config::default());
        let sent = elsewhere
            .send("elsewhere", serde_json::json!(0), true, 0)
            .unwrap();
        store
            .write_queue_records(&other, &sent.effects.records)
            .unwrap();
        let records = store.queue_records(&room).unwrap();
        let back = Queues::restore(Config::default(), records).unwrap();
        assert_eq!(back.records(), q.records());
        assert_eq!(back.next_deadline(), Some(1005));
        store.delete_room(&room).unwrap();
        assert!(store.queue_records(&room).unwrap().is_empty());
        assert_eq!(store.queue_records(&other).unwrap().len(), 2);
    }

    /// Step `n` of a queue's traffic at `now`, its records written to `store`: a send; every
    /// other step a receive with a lease; every third an acknowledgement of a lease held.
    fn queue_step(
        store: &Store,
        room: &RoomKey,
        q: &mut roomd_room_apis::queue::Queues,
        held: &mut Vec<u64>,
        n: u64,
        now: u64,
    ) {
        let sent = q.send("jobs", serde_json::json!(n), true, now).unwrap();
        store
            .write_queue_records(room, &sent.effects.records)
            .unwrap();
        if n % 2 == 0 {
            let got = q.receive("jobs", "w", Some(60_000), now).unwrap();
            store
                .write_queue_records(room, &got.effects.records)
                .unwrap();
            held.extend(got.value.and_then(|d| d.receipt));
        }
        if n % 3 == 0 {
            if let Some(receipt) = held.pop() {
                let acked = q.ack(receipt, now).unwrap();
                store
                    .write_queue_records(room, &acked.effects.records)
                    .unwrap();
            }
        }
    }

    #[test]
    fn queue_journals_fold_over_their_base_across_compactions_reopens_and_deletes() {
        use roomd_room_apis::queue::{Config, Queues};
        let dir = tempdir();
        let (room, other) = (RoomKey::new(P, "r"), RoomKey::new(P, "r2"));
        let mut q = Queues::new(Config::default());
        let mut store = Store::open(dir.path(), 1 << 20).unwrap();
        let mut receipts = Vec::new();
        for round in 0..6u64 {
            for n in 0..50u64 {
                let now = round * 1000 + n;
                queue_step(&store, &room, &mut q, &mut receipts, n, now);
                if n % 7 == 0 {
                    // Another room's writes go in between, and make entries of what is pending.
                    let mut o = Queues::new(Config::default());
                    let sent = o.send("other", serde_json::json!(n), true, now).unwrap();
                    store
                        .write_queue_records(&other, &sent.effects.records)
                        .unwrap();
                    store.flush().unwrap();
                }
            }
            // What is pending, in entries, and whatever compacted, reads back the same.
            let back = Queues::restore(Config::default(), store.queue_records(&room).unwrap());
            assert_eq!(back.unwrap().records(), q.records(), "round {round}");
            match round % 3 {
                0 => {
                    store.queues_unloaded(&room);
                    assert!(store.queue_compaction_due());
                    store.compact_queues().unwrap();
                }
                1 => {
                    // Reopened with entries left in the journal: new entries follow them, and a
                    // compaction folds both.
                    store.flush().unwrap();
                    drop(store);
                    store = reopen(dir.path());
                }
                _ => {}
            }
        }
        store.queues_unloaded(&room);
        store.compact_queues().unwrap();
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        let back = Queues::restore(Config::default(), store.queue_records(&room).unwrap());
        assert_eq!(back.unwrap().records(), q.records());
        // A deleted room leaves nothing, and a compaction after it brings nothing back.
        let sent = q.send("jobs", serde_json::json!("late"), true, 9).unwrap();
        store
            .write_queue_records(&room, &sent.effects.records)
            .unwrap();
        store.flush().unwrap();
        store.queues_unloaded(&room);
        store.delete_room(&room).unwrap();
        store.compact_queues().unwrap();
        assert!(store.queue_records(&room).unwrap().is_empty());
        assert!(!store.queue_records(&other).unwrap().is_empty());
        let left = store.queues.scan_prefix(room.bytes()).count();
        assert_eq!(left, 0);
    }

    #[test]
    fn queue_records_written_from_several_threads_while_flushes_and_compactions_run_all_stay() {
        use roomd_room_apis::queue::{Config, Queues};
        use std::sync::atomic::AtomicBool;
        let dir = tempdir();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flusher = {
            let (store, stop) = (store.clone(), stop.clone());
            let rooms: Vec<RoomKey> = (0..3).map(|r| RoomKey::new(P, &format!("r{r}"))).collect();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    store.flush().unwrap();
                    n += 1;
                    if n % 7 == 0 {
                        store.queues_unloaded(&rooms[(n as usize / 7) % rooms.len()]);
                    }
                    if store.queue_compaction_due() {
                        store.compact_queues().unwrap();
                    }
                }
            })
        };
        let writers: Vec<_> = (0..3)
            .map(|r| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let room = RoomKey::new(P, &format!("r{r}"));
                    let doc = DocKey::new(&room, "d");
                    let mut q = Queues::new(Config::default());
                    let mut held = Vec::new();
                    for n in 0..400u64 {
                        queue_step(&store, &room, &mut q, &mut held, n, n);
                        if n % 5 == 0 {
                            store.append(&doc, n, &[0, 0]).unwrap();
                        }
                    }
                    (room, q)
                })
            })
            .collect();
        let written: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        stop.store(true, Ordering::Release);
        flusher.join().unwrap();
        store.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        for (room, q) in written {
            let back = Queues::restore(Config::default(), store.queue_records(&room).unwrap());
            assert_eq!(back.unwrap().records(), q.records(), "{}", room.name());
            let doc = store.load(&DocKey::new(&room, "d")).unwrap();
            assert_eq!(doc.log.len(), 80);
        }
    }

    #[test]
    fn a_store_from_before_projects_moves_under_the_default_project() {
        let dir = tempdir();
        {
            let db = sled::open(dir.path()).unwrap();
            let log = db.open_tree("yjs_log").unwrap();
            let snapshots = db.open_tree("yjs_snapshot").unwrap();
            // The old layout: u16 length ++ room ++ u16 length ++ doc (++ seq for the log).
            let mut key = Vec::new();
            push_part(&mut key, "room");
            push_part(&mut key, "doc");
            let mut entry = key.clone();
            entry.extend_from_slice(&1u64.to_be_bytes());
            log.insert(entry, &[RECORD_V1, 42][..]).unwrap();
            let mut snap = vec![RECORD_V1];
            snap.extend_from_slice(&0u64.to_be_bytes());
            snap.push(41);
            snapshots.insert(key, snap).unwrap();
            db.flush().unwrap();
        }
        let store = reopen(dir.path());
        let default = store.project_by_name(DEFAULT_PROJECT).unwrap().unwrap();
        let d = store
            .load(&DocKey::new(&RoomKey::new(default.id, "room"), "doc"))
            .unwrap();
        assert_eq!(d.snapshot.as_deref(), Some(&[41][..]));
        assert_eq!(d.log, vec![Bytes::from_static(&[42])]);
        drop(store);
        // Opening again changes nothing.
        let store = reopen(dir.path());
        assert_eq!(store.projects().unwrap().len(), 1);
        let d = store
            .load(&DocKey::new(&RoomKey::new(default.id, "room"), "doc"))
            .unwrap();
        assert_eq!(d.log.len(), 1);
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
