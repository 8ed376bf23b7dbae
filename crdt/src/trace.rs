//! Editing traces (the `{startContent, endContent, txns: [{patches: [[pos, del, ins]]}]}` format
//! of the public editing-trace collections) turned into yrs updates, for benchmarks and replay
//! tests. Only built with the `trace` feature.

use std::io::Read;

use yrs::{ClientID, Doc, GetString, OffsetKind, Options, Text, TextRef, Transact};

/// An editing trace. Positions are read as UTF-16 code units, which equal characters for text
/// within the Basic Multilingual Plane (the public traces are ASCII).
#[derive(Debug, serde::Deserialize)]
pub struct Trace {
    /// The text before the first patch.
    #[serde(rename = "startContent")]
    pub start_content: String,
    /// The text after the last patch.
    #[serde(rename = "endContent")]
    pub end_content: String,
    /// The transactions, each a list of `(position, deleted, inserted)` patches.
    pub txns: Vec<TraceTxn>,
}

/// One transaction of a trace.
#[derive(Debug, serde::Deserialize)]
pub struct TraceTxn {
    /// `(position, number of characters deleted, text inserted)`.
    pub patches: Vec<(u32, u32, String)>,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The gzip stream is damaged.
    #[error("gzip: {0}")]
    Gzip(#[from] std::io::Error),
    /// The JSON does not have the trace's shape.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Trace {
    /// Parses a gzipped JSON trace.
    pub fn from_gzip(bytes: &[u8]) -> Result<Trace, TraceError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut json)?;
        Ok(serde_json::from_slice(&json)?)
    }

    /// The number of patches.
    pub fn patches(&self) -> usize {
        self.txns.iter().map(|t| t.patches.len()).sum()
    }

    /// The first `patches` patches of this trace (whole transactions), with the end content
    /// they produce.
    pub fn prefix(&self, patches: usize) -> Trace {
        let mut txns = Vec::new();
        let mut taken = 0;
        for txn in &self.txns {
            if taken >= patches {
                break;
            }
            taken += txn.patches.len();
            txns.push(TraceTxn {
                patches: txn.patches.clone(),
            });
        }
        let mut prefix = Trace {
            start_content: self.start_content.clone(),
            end_content: String::new(),
            txns,
        };
        let doc = trace_doc(1);
        let text = doc.get_or_insert_text("t");
        prefix.edit(&doc, &text, |_| {});
        prefix.end_content = text.get_string(&doc.transact());
        prefix
    }

    /// One v1 update per patch (plus one for a non-empty start content), written to the text
    /// `name` by a writer with client id `client_id`. Applying them in order to an empty
    /// document yields [`Trace::end_content`].
    pub fn updates(&self, client_id: u64, name: &str) -> Vec<Vec<u8>> {
        let doc = trace_doc(client_id);
        let text = doc.get_or_insert_text(name);
        let mut out = Vec::with_capacity(self.patches() + 1);
        self.edit(&doc, &text, |update| out.push(update));
        debug_assert_eq!(text.get_string(&doc.transact()), self.end_content);
        out
    }

    /// Applies the trace to `text`, one transaction per patch, handing each transaction's
    /// update to `each`.
    fn edit(&self, doc: &Doc, text: &TextRef, mut each: impl FnMut(Vec<u8>)) {
        if !self.start_content.is_empty() {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, &self.start_content);
            each(txn.encode_update_v1());
        }
        for txn in &self.txns {
            for (pos, del, ins) in &txn.patches {
                let mut t = doc.transact_mut();
                if *del > 0 {
                    text.remove_range(&mut t, *pos, *del);
                }
                if !ins.is_empty() {
                    text.insert(&mut t, *pos, ins);
                }
                each(t.encode_update_v1());
            }
        }
    }
}

/// A document whose text offsets count UTF-16 code units, as trace positions are read.
fn trace_doc(client_id: u64) -> Doc {
    let mut options = Options::with_client_id(ClientID::new(client_id));
    options.offset_kind = OffsetKind::Utf16;
    Doc::with_options(options)
}
