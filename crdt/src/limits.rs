//! Size limits a document enforces on the updates it accepts.

/// Bounds applied to every update a [`crate::YDoc`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// Largest single encoded update accepted, in bytes.
    pub update_bytes_max: usize,
    /// Largest encoded document (snapshot plus updates since) accepted, in bytes.
    pub doc_bytes_max: usize,
}

impl DocLimits {
    /// Defaults: 16 MiB per update, 256 MiB per document.
    pub const DEFAULT: DocLimits = DocLimits {
        update_bytes_max: 16 * 1024 * 1024,
        doc_bytes_max: 256 * 1024 * 1024,
    };

    /// No bound: for rebuilding a document from storage, where everything was accepted once
    /// under the limits then in force. A document's snapshot is one update, and larger than any
    /// single update a client may send once the document has grown.
    pub const LOADING: DocLimits = DocLimits {
        update_bytes_max: usize::MAX,
        doc_bytes_max: usize::MAX,
    };
}

impl Default for DocLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

const _: () = assert!(DocLimits::DEFAULT.update_bytes_max <= DocLimits::DEFAULT.doc_bytes_max);
