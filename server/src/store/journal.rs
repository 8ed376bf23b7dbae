//! The work queues' journal: how a room's queue records reach sled.
//!
//! A queue call changes a few records (an item, its queue's counters, the receipt counter), and
//! a busy queue makes thousands of calls a second, each answered once durable. Writing each
//! record as a key of its own cost a sled insert per record on the room's thread, most of the
//! time the queues took. So a write only queues the records in memory ([`Journal::push`]),
//! and counts as written; before the next flush (and before any other write of the store, so
//! that what sled holds is always a prefix of what was written, in the order written), every
//! room's pending records become **one journal entry per room**, a single sled value: key
//! `room_key ++ "journal/" ++ seq (u64 BE)` → `[1] ++ (u32 BE key length, key, 0 | 1 ++ u32 BE
//! value length, value)*`, a delete (`0`) or a put (`1`) of a base record, the latest per key.
//! One insert is atomic, so a crash keeps a prefix of entries and every entry whole: an item
//! that moves between queues (dead-lettering) is never lost nor doubled.
//!
//! The base records (key `room_key ++ Record::key()`) hold the state as of the last
//! compaction; reading a room's queues folds its journal entries over them, in order. Each room
//! keeps in memory the latest value of every base key its entries touched since the last
//! compaction; compaction writes those into the base and removes the entries it covers, in one
//! atomic batch, off the flush's path. It runs once a room's journal grows past
//! [`COMPACT_ENTRIES`] entries or [`COMPACT_KEYS`] keys, and when the room unloads, which bounds
//! the memory the journal holds and the entries a load folds. Items completed between two
//! compactions never reach the base at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::{RoomKey, StoreError, RECORD_V1};

/// A room's journal entries after which it is compacted.
pub const COMPACT_ENTRIES: u64 = 65536;
/// Base keys a room's entries may touch before it is compacted.
pub const COMPACT_KEYS: usize = 65536;
/// Bytes of pending records past which a write makes them an entry itself, rather than leave
/// them for the flush: the memory pending records hold, whatever the flushes do.
pub const PENDING_BYTES_MAX: usize = 8 << 20;

const JOURNAL: &[u8] = b"journal/";
const OP_DELETE: u8 = 0;
const OP_PUT: u8 = 1;

/// Base key (after the room's prefix) → the value a put writes (`[1] ++ JSON`), or `None`
/// for a delete.
type Changes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// A room's journal, as far as it is written.
#[derive(Debug, Default)]
struct RoomJournal {
    /// The seq of its next entry.
    next: u64,
    /// The seq of its first entry not compacted.
    first: u64,
    /// The latest value of each base key the entries since `first` touched.
    touched: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Whether it is to be compacted whatever its size (the room unloaded).
    unloaded: bool,
}

impl RoomJournal {
    fn entries(&self) -> u64 {
        self.next - self.first
    }

    fn wants_compaction(&self) -> bool {
        let any = self.entries() > 0;
        any && (self.unloaded
            || self.entries() >= COMPACT_ENTRIES
            || self.touched.len() >= COMPACT_KEYS)
    }
}

/// The journal of every room's queues.
#[derive(Debug, Default)]
pub struct Journal {
    /// Records written and not yet in an entry, per room, in the order written.
    pending: Mutex<Vec<(RoomKey, Changes)>>,
    pending_bytes: AtomicUsize,
    /// What is written of each room's journal; held while entries are inserted, so that a
    /// write that follows a queue write in one thread is inserted after its entry.
    rooms: Mutex<HashMap<RoomKey, RoomJournal>>,
    /// Held while a compaction, or a read of a room's queues, runs: one at a time.
    compacting: Mutex<()>,
    /// A compaction is due.
    due: AtomicBool,
    /// A compaction was started ([`Journal::start_compaction`]) and has not ended.
    running: AtomicBool,
    /// Rooms' journals folded into their base records so far.
    compacted: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn journal_key(room: &RoomKey, seq: u64) -> Vec<u8> {
    [room.bytes(), JOURNAL, &seq.to_be_bytes()].concat()
}

fn journal_prefix(room: &RoomKey) -> Vec<u8> {
    [room.bytes(), JOURNAL].concat()
}

/// Whether a key of the queues tree, after its room's prefix, is a journal entry's.
pub fn is_journal(rest: &[u8]) -> bool {
    rest.starts_with(JOURNAL)
}

fn encode_entry(changes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Vec<u8> {
    let len: usize = changes
        .iter()
        .map(|(k, v)| 9 + k.len() + v.as_ref().map_or(0, Vec::len))
        .sum();
    let mut out = Vec::with_capacity(1 + len);
    out.push(RECORD_V1);
    for (k, v) in changes {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        match v {
            None => out.push(OP_DELETE),
            Some(v) => {
                out.push(OP_PUT);
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// The changes of an entry, in order; `None` if it is not one.
fn decode_entry(entry: &[u8]) -> Option<Changes> {
    let (&version, mut rest) = entry.split_first()?;
    if version != RECORD_V1 {
        return None;
    }
    let mut take = |n: usize| -> Option<&[u8]> {
        if rest.len() < n {
            return None;
        }
        let (a, b) = rest.split_at(n);
        rest = b;
        Some(a)
    };
    let mut out = Vec::new();
    while let Some(len) = take(4) {
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let key = take(len)?.to_vec();
        let value = match take(1)? {
            [OP_DELETE] => None,
            [OP_PUT] => {
                let len = u32::from_be_bytes(take(4)?.try_into().ok()?) as usize;
                Some(take(len)?.to_vec())
            }
            _ => return None,
        };
        out.push((key, value));
    }
    Some(out)
}

/// Folds `changes` into `into`, the latest per key kept, in the order keys were first written.
fn fold(into: &mut Changes, changes: Changes) {
    let mut at: HashMap<Vec<u8>, usize> = into
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for (k, v) in changes {
        match at.get(&k) {
            Some(&i) => into[i].1 = v,
            None => {
                at.insert(k.clone(), into.len());
                into.push((k, v));
            }
        }
    }
}

/// What `tree` holds of `room`'s journal: its first and next seq, and the latest value of each
/// base key its entries touch (entries a previous run left uncompacted).
fn open_room(tree: &sled::Tree, room: &RoomKey) -> Result<RoomJournal, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("queue journal of {}", room.name()));
    let mut journal = RoomJournal::default();
    let mut first = None;
    for item in tree.scan_prefix(journal_prefix(room)) {
        let (k, v) = item?;
        let seq: [u8; 8] = k[k.len().saturating_sub(8)..]
            .try_into()
            .map_err(|_| corrupt())?;
        let seq = u64::from_be_bytes(seq);
        first.get_or_insert(seq);
        journal.next = seq + 1;
        journal
            .touched
            .extend(decode_entry(&v).ok_or_else(corrupt)?);
    }
    journal.first = first.unwrap_or(0);
    Ok(journal)
}

impl Journal {
    /// Queues `changes` of `room`'s base records, as the next ones written; `count` counts the
    /// write (under the same lock, so a flush that reads the count finds the records pending
    /// or in sled). True when the pending records have grown past [`PENDING_BYTES_MAX`].
    pub fn push(&self, room: &RoomKey, changes: Changes, count: impl FnOnce()) -> bool {
        let bytes: usize = changes
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        let mut pending = lock(&self.pending);
        match pending.iter_mut().find(|(r, _)| r == room) {
            Some((_, mine)) => mine.extend(changes),
            None => pending.push((room.clone(), changes)),
        }
        // Counted after the bytes: a flush that finds the write counted finds it pending.
        let over =
            self.pending_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > PENDING_BYTES_MAX;
        count();
        over
    }

    /// Makes every pending record part of an entry in `tree`. Returns with the rooms' lock
    /// released; any write made after it returns is inserted after those entries.
    pub fn drain(&self, tree: &sled::Tree) -> Result<(), StoreError> {
        if self.pending_bytes.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut rooms = lock(&self.rooms);
        // The bytes taken stay counted until their entries are in sled: a write that checks
        // for pending records meanwhile waits for this drain (on the rooms' lock) rather than
        // going to sled ahead of them.
        let (taken, taken_bytes) = {
            let mut pending = lock(&self.pending);
            let bytes = self.pending_bytes.load(Ordering::Acquire);
            (std::mem::take(&mut *pending), bytes)
        };
        let mut taken = taken.into_iter();
        while let Some((room, changes)) = taken.next() {
            let mut entry = Changes::new();
            fold(&mut entry, changes);
            if !rooms.contains_key(&room) {
                match open_room(tree, &room) {
                    Ok(j) => {
                        rooms.insert(room.clone(), j);
                    }
                    Err(e) => {
                        self.put_back((room, entry), taken);
                        return Err(e);
                    }
                }
            }
            let Some(journal) = rooms.get_mut(&room) else {
                continue;
            };
            if let Err(e) = tree.insert(journal_key(&room, journal.next), encode_entry(&entry)) {
                self.put_back((room, entry), taken);
                return Err(e.into());
            }
            journal.next += 1;
            journal.touched.extend(entry);
            if journal.wants_compaction() {
                self.due.store(true, Ordering::Release);
            }
        }
        self.pending_bytes.fetch_sub(taken_bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Records taken for an entry that could not be written: they, and the rest taken with
    /// them, wait for the next drain, before anything pushed since (their bytes are still
    /// counted as pending).
    fn put_back(&self, first: (RoomKey, Changes), rest: impl Iterator<Item = (RoomKey, Changes)>) {
        let mut pending = lock(&self.pending);
        let mut back: Vec<(RoomKey, Changes)> = std::iter::once(first).chain(rest).collect();
        for (room, newer) in std::mem::take(&mut *pending) {
            match back.iter_mut().find(|(r, _)| *r == room) {
                Some((_, older)) => older.extend(newer),
                None => back.push((room, newer)),
            }
        }
        *pending = back;
    }

    /// True if a compaction is due and none runs: the caller is to run [`Journal::compact`].
    pub fn start_compaction(&self) -> bool {
        self.due.load(Ordering::Acquire)
            && self
                .running
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// `room` unloaded: its journal is compacted at the next chance, and its memory freed.
    pub fn unloaded(&self, room: &RoomKey) {
        if let Some(j) = lock(&self.rooms).get_mut(room) {
            j.unloaded = true;
            if j.wants_compaction() {
                self.due.store(true, Ordering::Release);
            }
        }
    }

    /// Compacts every room whose journal wants it: its touched keys written to the base and its
    /// entries removed, in one batch per room. Queue writes go on meanwhile.
    /// `count` counts each room's batch as a write, before it is counted as a compaction.
    pub fn compact(&self, tree: &sled::Tree, count: impl Fn()) -> Result<(), StoreError> {
        let outcome = self.compact_due(tree, count);
        self.running.store(false, Ordering::Release);
        outcome
    }

    fn compact_due(&self, tree: &sled::Tree, count: impl Fn()) -> Result<(), StoreError> {
        let _one = lock(&self.compacting);
        self.due.store(false, Ordering::Release);
        let due: Vec<RoomKey> = lock(&self.rooms)
            .iter()
            .filter(|(_, j)| j.wants_compaction())
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            let (touched, first, next, unloaded) = {
                let mut rooms = lock(&self.rooms);
                let Some(j) = rooms.get_mut(&room) else {
                    continue;
                };
                let taken = std::mem::take(&mut j.touched);
                let span = (j.first, j.next);
                j.first = j.next;
                (taken, span.0, span.1, j.unloaded)
            };
            let mut batch = sled::Batch::default();
            for (k, v) in &touched {
                let key = [room.bytes(), k].concat();
                match v {
                    Some(v) => batch.insert(key, &v[..]),
                    // Most removed keys never reached the base (items completed between two
                    // compactions); only compactions write it, one at a time, so a read tells.
                    None if tree.contains_key(&key)? => batch.remove(key),
                    None => {}
                }
            }
            for seq in first..next {
                batch.remove(journal_key(&room, seq));
            }
            if let Err(e) = tree.apply_batch(batch) {
                // Not compacted: the entries stay, and so must what they touched.
                let mut rooms = lock(&self.rooms);
                if let Some(j) = rooms.get_mut(&room) {
                    let newer = std::mem::take(&mut j.touched);
                    j.touched = touched;
                    j.touched.extend(newer);
                    j.first = first;
                }
                return Err(e.into());
            }
            count();
            self.compacted.fetch_add(1, Ordering::Release);
            if unloaded {
                let mut rooms = lock(&self.rooms);
                // Forgotten, unless written again meanwhile (the room loaded again).
                match rooms.get_mut(&room) {
                    Some(j) if j.entries() == 0 => {
                        rooms.remove(&room);
                    }
                    Some(j) => j.unloaded = false,
                    None => {}
                }
            }
        }
        Ok(())
    }

    /// `room`'s queues as stored: its base records with its journal folded over them, by
    /// key. Pending records are drained first.
    pub fn read(
        &self,
        tree: &sled::Tree,
        room: &RoomKey,
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        self.drain(tree)?;
        let _one = lock(&self.compacting);
        let corrupt = || StoreError::Corrupt(format!("queues of {}", room.name()));
        let mut base = BTreeMap::new();
        let mut entries = Vec::new();
        for item in tree.scan_prefix(room.bytes()) {
            let (k, v) = item?;
            let rest = &k[room.bytes().len()..];
            if is_journal(rest) {
                entries.push(v);
            } else {
                base.insert(rest.to_vec(), v.to_vec());
            }
        }
        // Journal keys end in their seq, big-endian: the scan read them in order.
        for entry in entries {
            for (k, v) in decode_entry(&entry).ok_or_else(corrupt)? {
                match v {
                    Some(v) => base.insert(k, v),
                    None => base.remove(&k),
                };
            }
        }
        Ok(base)
    }

    /// `room` is deleted: what it had pending and what its journal touched go with it. Call it
    /// with the room's keys removed from the tree right after, under [`Journal::quiet`].
    pub fn forget(&self, room: &RoomKey) {
        lock(&self.pending).retain(|(r, _)| r != room);
        lock(&self.rooms).remove(room);
    }

    /// Rooms' journals folded into their base records since the process started.
    pub fn compactions(&self) -> u64 {
        self.compacted.load(Ordering::Acquire)
    }

    /// Holds off compactions (and reads) while the guard lives.
    pub fn quiet(&self) -> MutexGuard<'_, ()> {
        lock(&self.compacting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_refuse_what_is_cut() {
        let changes: Changes = vec![
            (b"item/a\0\0".to_vec(), Some(b"\x01{}".to_vec())),
            (b"receipts".to_vec(), None),
        ];
        let entry = encode_entry(&changes);
        assert_eq!(decode_entry(&entry), Some(changes));
        assert_eq!(decode_entry(&entry[..entry.len() - 1]), None);
        assert_eq!(decode_entry(&[2]), None);
        assert_eq!(decode_entry(&[RECORD_V1]), Some(Vec::new()));
    }

    #[test]
    fn folding_keeps_the_latest_value_of_each_key_in_first_written_order() {
        let mut into: Changes = vec![(b"a".to_vec(), Some(b"1".to_vec()))];
        fold(
            &mut into,
            vec![(b"b".to_vec(), Some(b"2".to_vec())), (b"a".to_vec(), None)],
        );
        assert_eq!(
            into,
            vec![(b"a".to_vec(), None), (b"b".to_vec(), Some(b"2".to_vec()))]
        );
    }
}
