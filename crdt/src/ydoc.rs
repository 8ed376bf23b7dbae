//! `YDoc`: a Yjs document that validates every update before it changes any state.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    BranchID, ClientID, Doc, GetString, Options, ReadTxn, StateVector, Transact, TransactionMut,
    Update, WriteTxn, ID,
};

use crate::v1::{self, Run, Scan};
use crate::DocLimits;

/// Why bytes could not be read as a state vector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a valid v1-encoded state vector.
    #[error("malformed state vector: {0}")]
    Malformed(String),
    /// Decoding panicked inside yrs; the input was rejected.
    #[error("state vector decoding failed")]
    Panicked,
}

/// Why an update was not applied. In every case the document is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The update is larger than `update_bytes_max`.
    #[error("update of {bytes} bytes exceeds the limit of {limit} bytes")]
    UpdateTooLarge {
        /// Size of the rejected update.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// Applying the update would grow the document past `doc_bytes_max`.
    #[error("document would grow to {bytes} bytes, over the limit of {limit} bytes")]
    DocTooLarge {
        /// Size the document would have reached.
        bytes: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The bytes are not a valid v1-encoded update.
    #[error("malformed update: {0}")]
    Malformed(String),
    /// The update decoded but yrs refused to integrate it.
    #[error("update rejected: {0}")]
    Rejected(String),
    /// yrs panicked while integrating the update. The document is poisoned: its owner must
    /// rebuild it from storage before using it again (see [`YDoc::is_poisoned`]).
    #[error("update integration failed")]
    Panicked,
}

/// What applying an accepted update did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// False when every struct and deletion in the update was already known: such an update
    /// need be neither stored nor forwarded.
    pub changed: bool,
    /// True when, after this update, nothing waits for missing structs: the document holds
    /// everything it was given, integrated.
    pub complete: bool,
}

/// A Yjs document under roomd's limits.
pub struct YDoc {
    pub(crate) doc: Doc,
    limits: DocLimits,
    /// Encoded size of the last snapshot plus every update applied since: an upper bound on
    /// the document's encoded size, re-based at each [`YDoc::rebase_size`].
    pub(crate) bytes_estimate: usize,
    poisoned: bool,
    /// What cannot be integrated yet, as v1 updates: runs of structs that do not continue the
    /// document (earlier structs of their client are missing), structs whose dependencies are
    /// missing, and deletions of unknown items. yrs 0.28 mishandles both cases itself: it
    /// integrates structs past a gap (and then leaves them out of diffs), and when it merges a
    /// new remainder into its pending update it can shift the clocks of pending structs, which
    /// then integrate, and encode in diffs and snapshots, as the wrong items. So yrs is only
    /// handed runs that continue the document, and whatever it leaves pending is taken back.
    waiting: Vec<Vec<u8>>,
    /// The snapshot this document was loaded from, while nothing has changed since: the
    /// answer to a diff against an empty state vector (a newcomer's step 1), served without
    /// encoding the document again.
    pub(crate) loaded_from: Option<Vec<u8>>,
}

impl std::fmt::Debug for YDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YDoc")
            .field("limits", &self.limits)
            .field("bytes_estimate", &self.bytes_estimate)
            .field("poisoned", &self.poisoned)
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl YDoc {
    /// An empty document.
    pub fn new(limits: DocLimits) -> YDoc {
        YDoc {
            doc: Doc::with_options(server_options()),
            limits,
            bytes_estimate: 0,
            poisoned: false,
            waiting: Vec::new(),
            loaded_from: None,
        }
    }

    /// A document loaded from a snapshot (one v1 update holding a whole document). Until the
    /// document changes, a diff against an empty state vector is the snapshot itself.
    pub fn from_snapshot(limits: DocLimits, snapshot: &[u8]) -> Result<YDoc, ApplyError> {
        let mut doc = YDoc::new(DocLimits::LOADING);
        doc.apply_update(snapshot)?;
        doc.rebase_size(snapshot.len());
        doc.loaded_from = Some(snapshot.to_vec());
        doc.limits = limits;
        Ok(doc)
    }

    /// Replaces the limits the document enforces from now on. A document rebuilt from storage
    /// is loaded under [`DocLimits::LOADING`] (what was accepted once must load, even a snapshot
    /// larger than one update may be), then given its limits.
    pub fn set_limits(&mut self, limits: DocLimits) {
        self.limits = limits;
    }

    /// The limits this document enforces.
    pub fn limits(&self) -> DocLimits {
        self.limits
    }

    /// True after yrs panicked inside [`YDoc::apply_update`]; the document must be rebuilt.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Upper bound on the encoded size of the document, in bytes.
    pub fn bytes_estimate(&self) -> usize {
        self.bytes_estimate
    }

    /// Resets the size estimate to an exact encoded size (after a snapshot was taken).
    pub fn rebase_size(&mut self, snapshot_bytes: usize) {
        self.bytes_estimate = snapshot_bytes;
    }

    /// Decodes and integrates a v1 update, all or nothing, under the document's limits.
    pub fn apply_update(&mut self, update: &[u8]) -> Result<Applied, ApplyError> {
        if update.len() > self.limits.update_bytes_max {
            return Err(ApplyError::UpdateTooLarge {
                bytes: update.len(),
                limit: self.limits.update_bytes_max,
            });
        }
        let grown = self.bytes_estimate.saturating_add(update.len());
        if grown > self.limits.doc_bytes_max {
            return Err(ApplyError::DocTooLarge {
                bytes: grown,
                limit: self.limits.doc_bytes_max,
            });
        }
        let (scan, decoded) = Self::validate(update)?;
        let doc = &self.doc;
        let waiting = &mut self.waiting;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let Outcome {
                integrated,
                waits,
                reshaped,
            } = apply_ready(doc, waiting, &scan, Some(decoded)).map_err(ApplyError::Rejected)?;
            if (integrated || reshaped) && !waiting.is_empty() {
                retry_waiting(doc, waiting);
            }
            Ok(Applied {
                changed: integrated || waits,
                complete: waiting.is_empty(),
            })
        }));
        match outcome {
            Ok(Ok(applied)) => {
                if applied.changed {
                    self.bytes_estimate = grown;
                    self.loaded_from = None;
                }
                Ok(applied)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.poisoned = true;
                self.loaded_from = None;
                Err(ApplyError::Panicked)
            }
        }
    }

    /// The document's state vector, v1-encoded (the payload of sync step 1).
    pub fn state_vector(&self) -> Vec<u8> {
        use yrs::updates::encoder::Encode;
        self.doc.transact().state_vector().encode_v1()
    }

    /// Everything the holder of `state_vector` lacks, as a v1 update (the payload of sync
    /// step 2). Pending structs and the whole delete set are included.
    pub fn diff(&self, state_vector: &[u8]) -> Result<Vec<u8>, DecodeError> {
        v1::check_state_vector(state_vector).map_err(DecodeError::Malformed)?;
        let sv = catch_unwind(|| StateVector::decode_v1(state_vector))
            .map_err(|_| DecodeError::Panicked)?
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        if let (true, Some(snapshot)) = (sv.is_empty(), &self.loaded_from) {
            return Ok(snapshot.clone());
        }
        Ok(self.with_waiting(self.doc.transact().encode_state_as_update_v1(&sv)))
    }

    /// The whole document as one v1 update, pending structs included as long as the result
    /// loads: a waiting struct that can never integrate (one naming a parent that is not a
    /// shared type, say) would make the whole snapshot fail to load, and with it the document
    /// after a restart. Then the snapshot holds only what the document integrated; the waiting
    /// structs stay waiting here, and their senders send them again on their next sync.
    pub fn snapshot(&self) -> Vec<u8> {
        if let Some(snapshot) = &self.loaded_from {
            return snapshot.clone();
        }
        let whole = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        if self.waiting.is_empty() {
            return whole;
        }
        let merged = self.with_waiting(whole.clone());
        // `with_waiting` hands back `whole` itself when the merge fails: nothing to check then.
        if merged == whole || YDoc::new(DocLimits::LOADING).apply_update(&merged).is_ok() {
            merged
        } else {
            whole
        }
    }

    /// Updates that wait for missing structs before they can be integrated.
    pub fn pending_updates(&self) -> usize {
        self.waiting.len()
    }

    fn with_waiting(&self, update: Vec<u8>) -> Vec<u8> {
        with_waiting(update, &self.waiting)
    }

    /// Checks that `update` decodes as a v1 update without applying it anywhere (used to
    /// verify a snapshot before it is written).
    pub fn check_update(update: &[u8]) -> Result<(), ApplyError> {
        Self::validate(update).map(|_| ())
    }

    /// Merges v1 updates that this document has integrated completely (see
    /// [`Applied::complete`]) into one, or `None` when yrs cannot.
    pub fn merge_updates(updates: &[&[u8]]) -> Option<Vec<u8>> {
        catch_unwind(|| yrs::merge_updates_v1(updates).ok())
            .ok()
            .flatten()
    }

    /// Scans `update` for what yrs mishandles, then lets yrs decode it: what passes both can be
    /// handed to yrs in parts.
    pub(crate) fn validate(update: &[u8]) -> Result<(Scan<'_>, Update), ApplyError> {
        let scan = v1::scan(update).map_err(ApplyError::Malformed)?;
        // Decoding touches no document state, so a panic here leaves the document intact.
        let decoded = catch_unwind(|| Update::decode_v1(update))
            .map_err(|_| ApplyError::Malformed("update decoding failed".into()))?
            .map_err(|e| ApplyError::Malformed(e.to_string()))?;
        Ok((scan, decoded))
    }

    /// The content of the root-level text `name` (empty when absent).
    pub fn text(&self, name: &str) -> String {
        let txn = self.doc.transact();
        txn.get_text(name)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
    }
}

/// The options of every document the server holds. The server never edits, so its own client id
/// is irrelevant; `skip_gc` stays false so deleted content is collected as in Yjs (collection
/// changes how a deleted item is stored, never what any replica sees). `cleanup_formatting` is
/// off: with it, yrs deletes formatting markers that a remote change left dangling, in the
/// transaction that applies the change. Those deletions are an edit of the server's own, which
/// no client is sent; each client's Yjs then makes the same cleanup and sends it, the server
/// finds it already known and forwards it to no one, and a client that made no cleanup of its own
/// (the one whose change caused it, say) never hears of it. Cleanup is the clients' business: the
/// server holds exactly what they sent.
pub(crate) fn server_options() -> Options {
    Options {
        cleanup_formatting: false,
        ..Options::with_client_id(ClientID::new(0))
    }
}

/// `update` merged with every waiting update. Should the merge fail, `update` alone: the waiting
/// structs still reach their receivers when they are integrated or sent again.
fn with_waiting(update: Vec<u8>, waiting: &[Vec<u8>]) -> Vec<u8> {
    if waiting.is_empty() {
        return update;
    }
    catch_unwind(|| {
        let parts = std::iter::once(&update)
            .chain(waiting)
            .map(|u| Update::decode_v1(u))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        Some(Update::merge_updates(parts).encode_v1())
    })
    .ok()
    .flatten()
    .unwrap_or(update)
}

/// [`YDoc`]'s way of applying updates, for a bare `yrs::Doc` that also makes local edits: the
/// simulations drive such documents as clients, and they need the same protection from yrs's
/// handling of out-of-order updates (Yjs clients have their own, correct one).
#[doc(hidden)]
pub mod bare {
    use super::*;

    /// Validates `update` and integrates what continues `doc`; the rest waits in `waiting`.
    /// Returns whether the document or `waiting` changed.
    pub fn apply(doc: &Doc, waiting: &mut Vec<Vec<u8>>, update: &[u8]) -> Result<bool, ApplyError> {
        let (scan, decoded) = YDoc::validate(update)?;
        let Outcome {
            integrated,
            waits,
            reshaped,
        } = apply_ready(doc, waiting, &scan, Some(decoded)).map_err(ApplyError::Rejected)?;
        if integrated || reshaped {
            retry_waiting(doc, waiting);
        }
        Ok(integrated || waits)
    }

    /// `update` merged with the waiting updates, as in [`YDoc::diff`].
    pub fn with_waiting(update: Vec<u8>, waiting: &[Vec<u8>]) -> Vec<u8> {
        super::with_waiting(update, waiting)
    }
}

/// Takes what the last application left pending out of yrs, as v1 updates: the pending structs,
/// and the deletions of items not yet known.
fn take_pending(txn: &mut TransactionMut<'_>) -> Vec<Vec<u8>> {
    let mut rest = Vec::new();
    if let Some(pending) = txn.store().pending_update() {
        rest.push(pending.update.encode_v1());
    }
    if let Some(ds) = txn.store().pending_ds() {
        // A v1 update with no structs: a zero client count, then the delete set.
        let mut update = vec![0];
        update.extend(ds.encode_v1());
        rest.push(update);
    }
    txn.prune_pending();
    rest
}

/// Adds `update` to the waiting ones unless it is there already; true when added.
fn wait(waiting: &mut Vec<Vec<u8>>, update: Vec<u8>) -> bool {
    if waiting.contains(&update) {
        return false;
    }
    waiting.push(update);
    true
}

/// Hands yrs, in one transaction, the runs of `scan` that continue the document (at most one per
/// client, a struct yrs would cut inconsistently rewritten: see `v1::with_origin_at`) and its
/// deletions; the other runs, and whatever yrs leaves pending, wait. Returns
/// whether anything was integrated, and whether anything new waits. `decoded`, the whole update
/// as yrs decoded it, is handed over as it is when every run is ready (the common case), which
/// saves encoding and decoding the ready runs again.
fn apply_ready(
    doc: &Doc,
    waiting: &mut Vec<Vec<u8>>,
    scan: &Scan<'_>,
    decoded: Option<Update>,
) -> Result<Outcome, String> {
    let mut txn = doc.transact_mut();
    let sv = txn.state_vector();
    let mut ready: Vec<Run<'_>> = Vec::new();
    let mut later: Vec<Run<'_>> = Vec::new();
    let mut sliced = false;
    for run in &scan.runs {
        let local = sv.get(&ClientID::new(run.client));
        if run.end <= local {
            continue;
        }
        if run.clock <= local && !ready.iter().any(|r| r.client == run.client) {
            // yrs integrates only the part past what it knows.
            sliced |= run.clock < local;
            ready.push(*run);
        } else {
            later.push(*run);
        }
    }
    // A run that starts before its client's clock may need its cut struct rewritten so that
    // yrs places the rest consistently (see `v1::with_origin_at`). Only sliced runs can.
    let rewritten: Vec<Option<(u32, u32, Vec<u8>)>> = if sliced {
        ready
            .iter()
            .map(|run| {
                let local = sv.get(&ClientID::new(run.client));
                (run.clock < local)
                    .then(|| v1::with_origin_at(run, local))
                    .flatten()
            })
            .collect()
    } else {
        Vec::new()
    };
    let rewrites = rewritten.iter().any(Option::is_some);
    let handed: Cow<'_, [Run<'_>]> = if rewrites {
        ready
            .iter()
            .zip(&rewritten)
            .map(|(run, rewrite)| match rewrite {
                Some((clock, structs, bytes)) => Run {
                    clock: *clock,
                    structs: *structs,
                    bytes,
                    ..*run
                },
                None => *run,
            })
            .collect()
    } else {
        Cow::Borrowed(&ready)
    };
    // yrs refuses a struct whose parent is no shared type only once it has integrated what came
    // before it: such an update is refused here, before anything changes.
    if scan.parents_by_id {
        // The document's deletions, gathered once, the first time a parent is no live type:
        // an update naming many deleted parents must not walk the document for each.
        let deleted = std::cell::OnceCell::new();
        let document = |client: u64, clock: u32| {
            let id = ID::new(ClientID::new(client), clock);
            (clock < sv.get(&ClientID::new(client))).then(|| {
                BranchID::get_nested(&txn, &id).is_some()
                    || deleted
                        .get_or_init(|| txn.snapshot().delete_set)
                        .contains(&id)
            })
        };
        if let Some((client, clock)) = v1::non_type_parent(&handed, document) {
            return Err(format!(
                "a struct names clock {clock} of client {client} as its parent, which is no shared type"
            ));
        }
    }
    let mut integrated = false;
    let mut waits = false;
    let mut reshaped = false;
    if !handed.is_empty() || scan.deletes {
        let decoded = match decoded {
            Some(whole) if later.is_empty() && !rewrites => whole,
            _ => Update::decode_v1(&v1::encode(&handed, Some(scan.delete_set)))
                .map_err(|e| e.to_string())?,
        };
        txn.apply_update(decoded).map_err(|e| e.to_string())?;
        integrated = !txn.insert_set().is_empty() || !txn.delete_set().is_empty();
        for rest in take_pending(&mut txn) {
            let added = wait(waiting, rest);
            waits |= added;
            // The rest of a sliced struct comes back in a new form (see `retry_waiting`).
            reshaped |= added && sliced;
        }
    }
    drop(txn);
    for run in later {
        waits |= wait(waiting, v1::encode(&[run], None));
    }
    Ok(Outcome {
        integrated,
        waits,
        reshaped,
    })
}

/// What one application did.
struct Outcome {
    /// Structs or deletions were integrated.
    integrated: bool,
    /// Something new waits.
    waits: bool,
    /// yrs handed back part of a struct it had sliced (the known part cut off): the rest may
    /// integrate in its new form.
    reshaped: bool,
}

/// Rounds without integration in which yrs handed back part of a sliced struct, at most: each
/// is retried once more, and this bound keeps a pair of forms from alternating for ever.
const RESHAPED_ROUNDS_MAX: usize = 4;

/// Applies the waiting updates again until a round integrates nothing more. A round goes on
/// after integrating structs or deletions, or (a bounded number of times) when yrs handed back
/// the rest of a struct it sliced: with the known part cut off, the rest comes back with that
/// part as its origin (and no longer names a missing parent of its own, which only a client
/// reusing its ids with other content can make differ), and may integrate at once. Left
/// waiting, it would integrate only in a document loaded from a snapshot, and the two would
/// disagree.
fn retry_waiting(doc: &Doc, waiting: &mut Vec<Vec<u8>>) {
    let mut reshaped_rounds = 0;
    loop {
        let mut progress = false;
        let mut reshaped = false;
        for update in std::mem::take(waiting) {
            let Ok(scan) = v1::scan(&update) else {
                continue;
            };
            match apply_ready(doc, waiting, &scan, None) {
                Ok(outcome) => {
                    progress |= outcome.integrated;
                    reshaped |= outcome.reshaped;
                }
                Err(_) => {
                    wait(waiting, update);
                }
            }
        }
        if !progress {
            if !reshaped || reshaped_rounds == RESHAPED_ROUNDS_MAX {
                return;
            }
            reshaped_rounds += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::encoder::Encode;
    use yrs::{Text, WriteTxn};

    fn edit(client_id: u64, text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(client_id);
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        t.insert(&mut txn, 0, text);
        txn.encode_update_v1()
    }

    #[test]
    fn applies_and_reports_change_once() {
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        let u = edit(7, "hello");
        assert_eq!(
            doc.apply_update(&u),
            Ok(Applied {
                changed: true,
                complete: true
            })
        );
        assert_eq!(
            doc.apply_update(&u),
            Ok(Applied {
                changed: false,
                complete: true
            })
        );
        assert_eq!(doc.text("t"), "hello");
    }

    #[test]
    fn garbage_is_rejected_and_leaves_the_document_unchanged() {
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        doc.apply_update(&edit(1, "keep")).unwrap();
        let before = doc.snapshot();
        for bad in [
            &[0xff_u8; 12][..],
            &[1, 200, 1],
            &[255, 255, 255, 255, 15],
            &[],
        ] {
            assert!(doc.apply_update(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(doc.snapshot(), before);
        assert!(!doc.is_poisoned());
    }

    #[test]
    fn limits_are_enforced() {
        let limits = DocLimits {
            update_bytes_max: 64,
            doc_bytes_max: 100,
        };
        let mut doc = YDoc::new(limits);
        assert!(matches!(
            doc.apply_update(&edit(1, &"x".repeat(100))),
            Err(ApplyError::UpdateTooLarge { .. })
        ));
        doc.apply_update(&edit(1, &"x".repeat(30))).unwrap();
        doc.apply_update(&edit(2, &"y".repeat(30))).unwrap();
        assert!(matches!(
            doc.apply_update(&edit(3, &"z".repeat(30))),
            Err(ApplyError::DocTooLarge { .. })
        ));
    }

    #[test]
    fn diff_answers_a_state_vector() {
        let mut server = YDoc::new(DocLimits::DEFAULT);
        server.apply_update(&edit(1, "abc")).unwrap();
        let empty = StateVector::default().encode_v1();
        let mut other = YDoc::new(DocLimits::DEFAULT);
        other.apply_update(&server.diff(&empty).unwrap()).unwrap();
        assert_eq!(other.text("t"), "abc");
        assert_eq!(other.state_vector(), server.state_vector());
        assert!(server.diff(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn a_loaded_snapshot_answers_newcomers_until_the_document_changes() {
        let mut source = YDoc::new(DocLimits::DEFAULT);
        source.apply_update(&edit(1, "abc")).unwrap();
        let snapshot = source.snapshot();
        let mut loaded = YDoc::from_snapshot(DocLimits::DEFAULT, &snapshot).unwrap();
        let empty = StateVector::default().encode_v1();
        assert_eq!(loaded.diff(&empty).unwrap(), snapshot);
        assert_eq!(loaded.snapshot(), snapshot);
        // A known state vector still gets a real diff.
        assert!(loaded.diff(&loaded.state_vector()).unwrap().len() < snapshot.len());
        // A duplicate changes nothing; a new edit ends the shortcut.
        loaded.apply_update(&edit(1, "abc")).unwrap();
        assert_eq!(loaded.diff(&empty).unwrap(), snapshot);
        loaded.apply_update(&edit(2, "xyz")).unwrap();
        let mut newcomer = YDoc::new(DocLimits::DEFAULT);
        newcomer
            .apply_update(&loaded.diff(&empty).unwrap())
            .unwrap();
        assert_eq!(newcomer.text("t"), loaded.text("t"));
        assert_eq!(newcomer.text("t").len(), 6);
        assert_eq!(newcomer.snapshot(), loaded.snapshot());
        assert!(YDoc::from_snapshot(DocLimits::DEFAULT, &[0xff, 0xff]).is_err());
    }

    #[test]
    fn a_snapshot_larger_than_one_update_still_loads() {
        // A document that grew by small updates past the size of one update.
        let limits = DocLimits {
            update_bytes_max: 1024,
            doc_bytes_max: 1 << 20,
        };
        let mut doc = YDoc::new(limits);
        for i in 0..40u64 {
            doc.apply_update(&edit(100 + i, &"x".repeat(100))).unwrap();
        }
        let snapshot = doc.snapshot();
        assert!(snapshot.len() > limits.update_bytes_max);
        let mut loaded = YDoc::from_snapshot(limits, &snapshot).unwrap();
        assert_eq!(loaded.text("t"), doc.text("t"));
        // The limits hold again for what comes next.
        assert!(matches!(
            loaded.apply_update(&edit(7, &"y".repeat(2000))),
            Err(ApplyError::UpdateTooLarge { .. })
        ));
    }

    #[test]
    fn clocks_sent_again_under_another_parent_keep_the_lengths_consistent() {
        // Client 7 writes clock 0 in root "x"...
        let x = [1, 1, 7, 0, 4, 1, 1, b'x', 1, 1, 0];
        // ...then clocks 0..11 as "hello world" in root "t": yrs kept clock 0 and linked the
        // rest after it, in "x", but counted the rest in the length of "t"...
        let mut t = vec![1, 1, 7, 0, 4, 1, 1, b't', 11];
        t.extend_from_slice(b"hello world");
        t.push(0);
        // ...so that deleting clocks 2..45 of client 7 underflowed the length of "x".
        let delete = [0, 1, 7, 1, 2, 43];
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        for update in [&x[..], &t, &delete] {
            doc.apply_update(update).unwrap();
        }
        assert!(!doc.is_poisoned());
        assert_eq!(doc.text("x"), "\u{1}e");
        assert_eq!(doc.text("t"), "");
        let loaded = YDoc::from_snapshot(DocLimits::DEFAULT, &doc.snapshot()).unwrap();
        assert_eq!(loaded.text("x"), "\u{1}e");
        assert_eq!(loaded.state_vector(), doc.state_vector());
    }

    #[test]
    fn a_struct_sent_again_from_its_start_continues_the_text() {
        // A client types "h", sends it, types "ello", then sends its whole state: one struct
        // "hello" naming its parent, of which the document holds the first clock.
        let client = Doc::with_client_id(7);
        let text = client.get_or_insert_text("t");
        let first = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 0, "h");
            txn.encode_update_v1()
        };
        text.insert(&mut client.transact_mut(), 1, "ello");
        let whole = client
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        doc.apply_update(&first).unwrap();
        doc.apply_update(&whole).unwrap();
        assert_eq!(doc.text("t"), "hello");
        let mut direct = YDoc::new(DocLimits::DEFAULT);
        direct.apply_update(&whole).unwrap();
        assert_eq!(doc.snapshot(), direct.snapshot());
        // Typing on goes after it.
        let more = {
            let mut txn = client.transact_mut();
            text.insert(&mut txn, 5, "!");
            txn.encode_update_v1()
        };
        doc.apply_update(&more).unwrap();
        assert_eq!(doc.text("t"), "hello!");
    }

    #[test]
    fn a_struct_under_a_parent_that_is_no_type_is_refused_before_anything_changes() {
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        doc.apply_update(&edit(1, "abc")).unwrap();
        let before = doc.snapshot();
        let sv = doc.state_vector();
        // Client 2 writes "x" in root "t"; client 3 writes "y" under clock 0 of client 1, the
        // text "abc".
        let in_document = [
            2, 1, 2, 0, 0x04, 1, 1, b't', 1, b'x', 1, 3, 0, 0x04, 0, 1, 0, 1, b'y', 0,
        ];
        // Client 9 writes "h" in root "t", then "y" under its own "h".
        let in_update = [
            1, 2, 9, 0, 0x04, 1, 1, b't', 1, b'h', 0x04, 0, 9, 0, 1, b'y', 0,
        ];
        for update in [&in_document[..], &in_update] {
            assert!(matches!(
                doc.apply_update(update),
                Err(ApplyError::Rejected(_))
            ));
            assert_eq!(doc.snapshot(), before);
            assert_eq!(doc.state_vector(), sv);
            assert_eq!(doc.text("t"), "abc");
        }
        assert!(!doc.is_poisoned());
    }

    #[test]
    fn a_struct_under_a_nested_type_applies_even_once_the_type_is_deleted() {
        use yrs::{Map, MapPrelim, MapRef};
        let a = Doc::with_client_id(1);
        let root = a.get_or_insert_map("m");
        let created = {
            let mut txn = a.transact_mut();
            root.insert(&mut txn, "inner", MapPrelim::default());
            txn.encode_update_v1()
        };
        let b = Doc::with_client_id(2);
        b.transact_mut()
            .apply_update(Update::decode_v1(&created).unwrap())
            .unwrap();
        // B writes into the nested map: a struct without origins naming its parent by id.
        let b_root = b.get_or_insert_map("m");
        let written = {
            let mut txn = b.transact_mut();
            let inner: MapRef = b_root.get(&txn, "inner").unwrap().cast().unwrap();
            inner.insert(&mut txn, "k", 1);
            txn.encode_update_v1()
        };
        assert!(v1::scan(&written).unwrap().parents_by_id);
        let deleted = {
            let mut txn = a.transact_mut();
            root.remove(&mut txn, "inner");
            txn.encode_update_v1()
        };
        let mut live = YDoc::new(DocLimits::DEFAULT);
        live.apply_update(&created).unwrap();
        assert!(live.apply_update(&written).unwrap().changed);
        let mut gone = YDoc::new(DocLimits::DEFAULT);
        gone.apply_update(&created).unwrap();
        gone.apply_update(&deleted).unwrap();
        assert!(gone.apply_update(&written).unwrap().changed);
        assert!(gone.apply_update(&written).is_ok());
    }

    #[test]
    fn the_document_makes_no_edit_of_its_own_when_formatting_is_left_dangling() {
        use std::collections::HashMap;
        use yrs::types::Attrs;
        use yrs::updates::decoder::Decode;
        // A writes "hello world"; B formats "world" bold; C, not having seen the format,
        // deletes "world". B's two markers then enclose deleted text only: a Yjs client that
        // applies both cleans them up and sends that deletion itself.
        let a = Doc::with_client_id(1);
        let text = a.get_or_insert_text("t");
        let written = {
            let mut txn = a.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            txn.encode_update_v1()
        };
        let replica = |id: u64| {
            let doc = Doc::with_client_id(id);
            doc.transact_mut()
                .apply_update(Update::decode_v1(&written).unwrap())
                .unwrap();
            doc
        };
        let b = replica(2);
        let formatted = {
            let t = b.get_or_insert_text("t");
            let mut txn = b.transact_mut();
            let bold: Attrs = HashMap::from([("bold".into(), true.into())]);
            t.format(&mut txn, 6, 5, bold);
            txn.encode_update_v1()
        };
        let c = replica(3);
        let deleted = {
            let t = c.get_or_insert_text("t");
            let mut txn = c.transact_mut();
            t.remove_range(&mut txn, 6, 5);
            txn.encode_update_v1()
        };
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        for update in [&written, &formatted, &deleted] {
            doc.apply_update(update).unwrap();
        }
        // The document deleted exactly what C deleted: none of B's markers.
        let snapshot = Update::decode_v1(&doc.snapshot()).unwrap();
        let ds = snapshot.delete_set();
        assert!(ds.contains(&ID::new(ClientID::new(1), 6)));
        assert!(!ds.contains(&ID::new(ClientID::new(2), 0)));
        assert!(!ds.contains(&ID::new(ClientID::new(2), 1)));
    }

    #[test]
    fn huge_claimed_counts_do_not_allocate() {
        // A state vector claiming 2^32 entries, and an update claiming 2^32 clients.
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        assert!(doc.diff(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1]).is_err());
        assert!(doc
            .apply_update(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1])
            .is_err());
    }
}
