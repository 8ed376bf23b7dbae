//! Durable storage in sled: one append-only log and one snapshot per document, group-committed.
//!
//! Records are versioned byte layouts of their own (first byte = record version):
//! - log key `doc_key ++ seq (u64 BE)` → `[1] ++ v1 update`
//! - snapshot key `doc_key` → `[1] ++ covered_seq (u64 BE) ++ v1 update`
//!
//! A snapshot covers every log entry up to `covered_seq`; loading ignores such entries even if
//! a crash left them behind, so compaction needs no cross-tree transaction.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

const RECORD_V1: u8 = 1;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("storage engine: {0}")]
    Sled(#[from] sled::Error),
    /// A stored record has an unknown version or is truncated.
    #[error("corrupt record for {0}")]
    Corrupt(String),
}

/// A document's identity in storage: its room and name, length-prefixed so that no key is a
/// prefix of another document's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey(Arc<[u8]>);

impl DocKey {
    /// The key of document `doc` in room `room`. Both are at most 65,535 bytes (the router
    /// enforces far smaller limits).
    pub fn new(room: &str, doc: &str) -> DocKey {
        let mut k = Vec::with_capacity(4 + room.len() + doc.len());
        for part in [room, doc] {
            let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
            k.extend_from_slice(&len.to_be_bytes());
            k.extend_from_slice(&part.as_bytes()[..usize::from(len)]);
        }
        DocKey(k.into())
    }

    fn log_key(&self, seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.0.len() + 8);
        k.extend_from_slice(&self.0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    fn describe(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
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

/// The sled database and its group-commit counters.
#[derive(Debug, Clone)]
pub struct Store {
    db: sled::Db,
    log: sled::Tree,
    snapshots: sled::Tree,
    /// Writes issued so far.
    written: Arc<AtomicU64>,
    /// Writes covered by a completed flush.
    durable: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
            .open()?;
        let log = db.open_tree("yjs_log")?;
        let snapshots = db.open_tree("yjs_snapshot")?;
        Ok(Store {
            db,
            log,
            snapshots,
            written: Arc::new(AtomicU64::new(0)),
            durable: Arc::new(AtomicU64::new(0)),
        })
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
    pub fn append(&self, key: &DocKey, seq: u64, update: &[u8]) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(1 + update.len());
        v.push(RECORD_V1);
        v.extend_from_slice(update);
        self.log.insert(key.log_key(seq), v)?;
        self.written.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Replaces the document's snapshot with `snapshot`, which covers log entries up to and
    /// including `covered_seq`, then removes those entries.
    pub fn compact(
        &self,
        key: &DocKey,
        snapshot: &[u8],
        covered_seq: u64,
    ) -> Result<(), StoreError> {
        let mut v = Vec::with_capacity(9 + snapshot.len());
        v.push(RECORD_V1);
        v.extend_from_slice(&covered_seq.to_be_bytes());
        v.extend_from_slice(snapshot);
        self.snapshots.insert(&key.0[..], v)?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(key.log_key(0)..=key.log_key(covered_seq)) {
            let (k, _) = item?;
            batch.remove(k);
        }
        self.log.apply_batch(batch)?;
        self.written.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Makes every write issued so far durable (blocking; call off the async threads).
    pub fn flush(&self) -> Result<(), StoreError> {
        let target = self.written.load(Ordering::Acquire);
        if self.durable.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        self.db.flush()?;
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// Writes issued so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Writes known to be durable.
    pub fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// True when the engine answers (for readiness).
    pub fn is_ready(&self) -> bool {
        self.db.size_on_disk().is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_different_docs_never_share_a_prefix() {
        let a = DocKey::new("r", "a");
        let ab = DocKey::new("r", "a/b");
        assert!(!ab.log_key(0).starts_with(&a.0));
        assert_ne!(DocKey::new("ra", ""), DocKey::new("r", "a"));
    }

    #[test]
    fn append_compact_load() {
        let dir = tempdir();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let k = DocKey::new("room", "doc");
        let other = DocKey::new("room", "doc2");
        store.append(&k, 0, b"a").unwrap();
        store.append(&k, 1, b"b").unwrap();
        store.append(&other, 0, b"x").unwrap();
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
        store.flush().unwrap();
        assert_eq!(store.durable(), store.written());
        assert_eq!(store.load(&other).unwrap().log.len(), 1);
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
