//! `YDoc`: a Yjs document that validates every update before it changes any state.

use std::panic::{catch_unwind, AssertUnwindSafe};

use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Transact, Update};

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
}

/// A Yjs document under roomd's limits.
pub struct YDoc {
    doc: Doc,
    limits: DocLimits,
    /// Encoded size of the last snapshot plus every update applied since: an upper bound on
    /// the document's encoded size, re-based at each [`YDoc::rebase_size`].
    bytes_estimate: usize,
    poisoned: bool,
}

impl std::fmt::Debug for YDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YDoc")
            .field("limits", &self.limits)
            .field("bytes_estimate", &self.bytes_estimate)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl YDoc {
    /// An empty document.
    pub fn new(limits: DocLimits) -> YDoc {
        // The server never edits, so its own client id is irrelevant; skip_gc stays false so
        // deleted content is collected as in Yjs.
        YDoc {
            doc: Doc::with_client_id(0),
            limits,
            bytes_estimate: 0,
            poisoned: false,
        }
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
        // Decoding touches no document state, so a panic here leaves the document intact.
        let decoded = catch_unwind(|| Update::decode_v1(update))
            .map_err(|_| ApplyError::Malformed("update decoding failed".into()))?
            .map_err(|e| ApplyError::Malformed(e.to_string()))?;
        let doc = &self.doc;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            txn.apply_update(decoded)
                .map_err(|e| ApplyError::Rejected(e.to_string()))?;
            let changed = !txn.insert_set().is_empty()
                || !txn.delete_set().is_empty()
                || txn.store().pending_update().is_some()
                || txn.store().pending_ds().is_some();
            Ok(Applied { changed })
        }));
        match outcome {
            Ok(Ok(applied)) => {
                if applied.changed {
                    self.bytes_estimate = grown;
                }
                Ok(applied)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.poisoned = true;
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
        let sv = catch_unwind(|| StateVector::decode_v1(state_vector))
            .map_err(|_| DecodeError::Panicked)?
            .map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(self.doc.transact().encode_state_as_update_v1(&sv))
    }

    /// The whole document as one v1 update, pending structs included.
    pub fn snapshot(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Checks that `update` decodes as a v1 update without applying it anywhere (used to
    /// verify a snapshot before it is written).
    pub fn check_update(update: &[u8]) -> Result<(), ApplyError> {
        catch_unwind(|| Update::decode_v1(update))
            .map_err(|_| ApplyError::Malformed("update decoding failed".into()))?
            .map(|_| ())
            .map_err(|e| ApplyError::Malformed(e.to_string()))
    }

    /// The content of the root-level text `name` (empty when absent).
    pub fn text(&self, name: &str) -> String {
        let txn = self.doc.transact();
        txn.get_text(name)
            .map(|t| t.get_string(&txn))
            .unwrap_or_default()
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
        assert_eq!(doc.apply_update(&u), Ok(Applied { changed: true }));
        assert_eq!(doc.apply_update(&u), Ok(Applied { changed: false }));
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
    fn huge_claimed_counts_do_not_allocate() {
        // A state vector claiming 2^32 entries, and an update claiming 2^32 clients.
        let mut doc = YDoc::new(DocLimits::DEFAULT);
        assert!(doc.diff(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1]).is_err());
        assert!(doc
            .apply_update(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1])
            .is_err());
    }
}
