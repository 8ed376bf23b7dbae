//! A room's file tree: which files and folders its storage holds, what each file's bytes are
//! (a blob the server keeps, named by a [`BlobId`]), and the bounds on both. Sans-IO like the
//! work queues: the time is a parameter, and every mutation returns the [`Record`]s the server
//! is to persist and the blobs it may free once they are, from which [`Files::restore`]
//! rebuilds the tree.
//!
//! Folders exist explicitly: an upload creates the folders on its path that are missing, and
//! a folder stays when its last file goes, until it is deleted itself. A file never has
//! anything under it, and nothing is ever both a file and a folder. The root (`""`) is a folder
//! that always exists and cannot be removed or moved. Paths are canonical
//! ([`crate::storage::validate`]); the calls check them again.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::storage::{self, PathError};

/// A blob: the bytes of one version of a file, kept by the server.
pub type BlobId = u64;

/// A file's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Its bytes.
    pub size: u64,
    /// Its media type, as uploaded.
    pub mime_type: String,
    /// When the first version at this path was written, ms since the epoch.
    pub created_ms: u64,
    /// When this version was written.
    pub updated_ms: u64,
    /// Where its bytes are.
    pub blob: BlobId,
}

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A file.
    File(FileMeta),
    /// A folder.
    Folder {
        /// When it was made.
        created_ms: u64,
    },
}

impl Entry {
    /// Whether it is a folder.
    pub fn is_folder(&self) -> bool {
        matches!(self, Entry::Folder { .. })
    }
}

/// A change to persist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `path` now holds `entry`.
    Put(String, Entry),
    /// Nothing is at `path` any more.
    Delete(String),
}

/// What a mutation did: the records to persist, in order, and the blobs no file names any
/// more, to free once the records are durable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// The records.
    pub records: Vec<Record>,
    /// Blobs to free.
    pub freed: Vec<BlobId>,
}

/// The bounds of a room's storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files and folders, in all.
    pub entries: usize,
    /// Bytes of every file's current version, in all.
    pub bytes: u64,
    /// Bytes of one file.
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            entries: 100_000,
            bytes: 10 << 30,
            file_bytes: 5 << 30,
        }
    }
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilesError {
    /// The path is not a storage path.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Nothing is there.
    #[error("{0}: no such file or folder")]
    NotFound(String),
    /// Something is there and the call does not replace it.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// A folder is in the way of a file, or a file in the way of a folder.
    #[error("{0}: is a folder")]
    IsAFolder(String),
    /// A file where a folder is needed (a parent of the path, or the folder to list).
    #[error("{0}: is a file, not a folder")]
    NotAFolder(String),
    /// A folder with something in it, and the call is not recursive.
    #[error("{0}: the folder is not empty (delete it recursively)")]
    NotEmpty(String),
    /// The root, which cannot be removed, replaced or moved.
    #[error("the root folder cannot be removed, replaced or moved")]
    Root,
    /// Into itself.
    #[error("{0} cannot be moved into itself")]
    IntoItself(String),
    /// Past a bound.
    #[error("the room's storage is full: {0}")]
    Quota(String),
}

/// A path's details, as `stat` answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat<'a> {
    /// The last segment of the path (`""` for the root).
    pub name: &'a str,
    /// What is there; `None` for the root.
    pub entry: Option<&'a Entry>,
}

/// A room's file tree.
#[derive(Debug, Clone, Default)]
pub struct Files {
    limits: Limits,
    entries: BTreeMap<String, Entry>,
    bytes: u64,
}

/// The first key after every key under `folder` (`0` follows `/`); `None` for the root, under
/// which everything is.
fn past_subtree(folder: &str) -> Option<String> {
    (!folder.is_empty()).then(|| format!("{folder}0"))
}

fn under_prefix(folder: &str) -> String {
    if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    }
}

impl Files {
    /// An empty tree under `limits`.
    pub fn new(limits: Limits) -> Files {
        Files {
            limits,
            ..Files::default()
        }
    }

    /// The tree the records wrote (in any order: one record per path survives compaction).
    pub fn restore(limits: Limits, records: impl IntoIterator<Item = Record>) -> Files {
        let mut files = Files::new(limits);
        for r in records {
            match r {
                Record::Put(path, entry) => {
                    files.insert(path, entry);
                }
                Record::Delete(path) => {
                    files.remove(&path);
                }
            }
        }
        files
    }

    /// The whole tree as records.
    pub fn records(&self) -> Vec<Record> {
        self.entries
            .iter()
            .map(|(p, e)| Record::Put(p.clone(), e.clone()))
            .collect()
    }

    fn insert(&mut self, path: String, entry: Entry) -> Option<Entry> {
        if let Entry::File(m) = &entry {
            self.bytes += m.size;
        }
        let old = self.entries.insert(path, entry);
        if let Some(Entry::File(m)) = &old {
            self.bytes -= m.size;
        }
        old
    }

    fn remove(&mut self, path: &str) -> Option<Entry> {
        let old = self.entries.remove(path);
        if let Some(Entry::File(m)) = &old {
            self.bytes -= m.size;
        }
        old
    }

    /// Files and folders held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of every file's current version.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// What is at `path`: `None` if nothing is; the root is always there.
    pub fn stat<'a>(&'a self, path: &'a str) -> Option<Stat<'a>> {
        if path.is_empty() {
            return Some(Stat {
                name: "",
                entry: None,
            });
        }
        let (key, entry) = self.entries.get_key_value(path)?;
        Some(Stat {
            name: storage::file_name(key),
            entry: Some(entry),
        })
    }

    /// The file at `path`.
    pub fn file(&self, path: &str) -> Result<&FileMeta, FilesError> {
        match self.entries.get(path) {
            Some(Entry::File(m)) => Ok(m),
            Some(Entry::Folder { .. }) => Err(FilesError::IsAFolder(path.into())),
            None if path.is_empty() => Err(FilesError::IsAFolder(path.into())),
            None => Err(FilesError::NotFound(path.into())),
        }
    }

    /// The direct children of the folder `path`, by name, each with its full path.
    pub fn list(&self, path: &str) -> Result<Vec<(&str, &Entry)>, FilesError> {
        storage::validate(path)?;
        match self.entries.get(path) {
            Some(Entry::File(_)) => return Err(FilesError::NotAFolder(path.into())),
            None if !path.is_empty() => return Err(FilesError::NotFound(path.into())),
            _ => {}
        }
        let prefix = under_prefix(path);
        let mut out: Vec<(&str, &Entry)> = Vec::new();
        let mut from = if path.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(prefix.clone())
        };
        while let Some((key, entry)) = self
            .entries
            .range::<String, _>((from.clone(), Bound::Unbounded))
            .next()
        {
            if !key.starts_with(&prefix) {
                break;
            }
            match key[prefix.len()..].find('/') {
                // Under a child (listed already: it sorts before its subtree): past its
                // subtree (`0` follows `/`).
                Some(end) => {
                    from = Bound::Included(format!("{}0", &key[..prefix.len() + end]));
                }
                None => {
                    out.push((key.as_str(), entry));
                    from = Bound::Excluded(key.clone());
                }
            }
        }
        Ok(out)
    }

    /// Checks that a file may be written at `path` (`size` bytes, if known): the call to make
    /// before receiving its bytes. [`Files::commit_upload`] checks again.
    pub fn check_upload(
        &self,
        path: &str,
        overwrite: bool,
        size: Option<u64>,
    ) -> Result<(), FilesError> {
        storage::validate(path)?;
        if path.is_empty() {
            return Err(FilesError::Root);
        }
        let replaced = match self.entries.get(path) {
            Some(Entry::Folder { .. }) => return Err(FilesError::IsAFolder(path.into())),
            Some(Entry::File(_)) if !overwrite => {
                return Err(FilesError::AlreadyExists(path.into()))
            }
            Some(Entry::File(m)) => m.size,
            None => 0,
        };
        let mut missing = 0;
        let mut folder = storage::parent(path);
        while let Some(f) = folder.filter(|f| !f.is_empty()) {
            match self.entries.get(f) {
                Some(Entry::File(_)) => return Err(FilesError::NotAFolder(f.into())),
                Some(Entry::Folder { .. }) => break,
                None => missing += 1,
            }
            folder = storage::parent(f);
        }
        let new = usize::from(!self.entries.contains_key(path));
        if self.entries.len() + missing + new > self.limits.entries {
            return Err(FilesError::Quota(format!(
                "at most {} files and folders",
                self.limits.entries
            )));
        }
        if let Some(size) = size {
            self.check_bytes(size, replaced)?;
        }
        Ok(())
    }

    /// Whether `size` more bytes fit, `replaced` of them freed.
    pub fn check_bytes(&self, size: u64, replaced: u64) -> Result<(), FilesError> {
        if size > self.limits.file_bytes {
            return Err(FilesError::Quota(format!(
                "a file is at most {} bytes",
                self.limits.file_bytes
            )));
        }
        if self.bytes - replaced + size > self.limits.bytes {
            return Err(FilesError::Quota(format!(
                "the room holds at most {} bytes",
                self.limits.bytes
            )));
        }
        Ok(())
    }

    /// Bytes a room may still take for a file written at `path` (what it holds there now is
    /// freed by the write): the most an upload there may receive.
    pub fn room_for(&self, path: &str) -> u64 {
        let replaced = match self.entries.get(path) {
            Some(Entry::File(m)) => m.size,
            _ => 0,
        };
        self.limits
            .file_bytes
            .min((self.limits.bytes + replaced).saturating_sub(self.bytes))
    }

    /// Writes the file whose bytes are blob `blob` at `path`, making the folders on the way.
    pub fn commit_upload(
        &mut self,
        path: &str,
        overwrite: bool,
        size: u64,
        mime_type: &str,
        blob: BlobId,
        now_ms: u64,
    ) -> Result<Change, FilesError> {
        self.check_upload(path, overwrite, Some(size))?;
        let mut change = Change::default();
        let mut folders = Vec::new();
        let mut folder = storage::parent(path);
        while let Some(f) = folder.filter(|f| !f.is_empty() && !self.entries.contains_key(*f)) {
            folders.push(f.to_owned());
            folder = storage::parent(f);
        }
        for f in folders.into_iter().rev() {
            let entry = Entry::Folder { created_ms: now_ms };
            self.insert(f.clone(), entry.clone());
            change.records.push(Record::Put(f, entry));
        }
        let created_ms = match self.entries.get(path) {
            Some(Entry::File(m)) => m.created_ms,
            _ => now_ms,
        };
        let entry = Entry::File(FileMeta {
            size,
            mime_type: mime_type.to_owned(),
            created_ms,
            updated_ms: now_ms,
            blob,
        });
        if let Some(Entry::File(old)) = self.insert(path.to_owned(), entry.clone()) {
            change.freed.push(old.blob);
        }
        change.records.push(Record::Put(path.to_owned(), entry));
        Ok(change)
    }

    /// The paths under `path` (not `path` itself), in order.
    fn subtree(&self, path: &str) -> Vec<String> {
        let prefix = under_prefix(path);
        let range = match past_subtree(path) {
            Some(end) => self
                .entries
                .range::<String, _>((Bound::Excluded(prefix.clone()), Bound::Excluded(end))),
            None => self
                .entries
                .range::<String, (Bound<String>, Bound<String>)>((
                    Bound::Unbounded,
                    Bound::Unbounded,
                )),
        };
        range
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    /// Removes the file or folder at `path` (a folder with anything in it only when
    /// `recursive`).
    pub fn delete(&mut self, path: &str, recursive: bool) -> Result<Change, FilesError> {
        storage::validate(path)?;
        if path.is_empty() {
            return Err(FilesError::Root);
        }
        let Some(entry) = self.entries.get(path) else {
            return Err(FilesError::NotFound(path.into()));
        };
        let under = if entry.is_folder() {
            self.subtree(path)
        } else {
            Vec::new()
        };
        if !under.is_empty() && !recursive {
            return Err(FilesError::NotEmpty(path.into()));
        }
        let mut change = Change::default();
        for p in under
            .into_iter()
            .rev()
            .chain(std::iter::once(path.to_owned()))
        {
            if let Some(Entry::File(m)) = self.remove(&p) {
                change.freed.push(m.blob);
            }
            change.records.push(Record::Delete(p));
        }
        Ok(change)
    }

    /// Moves the file or folder at `from` to `to` (replacing what is there, of the same kind,
    /// only when `overwrite`), making the folders on the way.
    pub fn rename(
        &mut self,
        from: &str,
        to: &str,
        overwrite: bool,
        now_ms: u64,
    ) -> Result<Change, FilesError> {
        storage::validate(from)?;
        storage::validate(to)?;
        if from.is_empty() || to.is_empty() {
            return Err(FilesError::Root);
        }
        let Some(entry) = self.entries.get(from) else {
            return Err(FilesError::NotFound(from.into()));
        };
        let is_folder = entry.is_folder();
        if storage::covers(from, to) {
            if from == to {
                return Ok(Change::default());
            }
            return Err(FilesError::IntoItself(from.into()));
        }
        // The folders on the way to `to` are folders, or are made.
        let mut missing = Vec::new();
        let mut folder = storage::parent(to);
        while let Some(f) = folder.filter(|f| !f.is_empty()) {
            match self.entries.get(f) {
                Some(Entry::File(_)) => return Err(FilesError::NotAFolder(f.into())),
                Some(Entry::Folder { .. }) => break,
                None => missing.push(f.to_owned()),
            }
            folder = storage::parent(f);
        }
        let mut change = Change::default();
        match self.entries.get(to) {
            Some(_) if !overwrite => return Err(FilesError::AlreadyExists(to.into())),
            Some(e) if e.is_folder() != is_folder => {
                return Err(if e.is_folder() {
                    FilesError::IsAFolder(to.into())
                } else {
                    FilesError::NotAFolder(to.into())
                })
            }
            Some(_) => {
                let replaced = self.delete(to, true)?;
                change.records.extend(replaced.records);
                change.freed.extend(replaced.freed);
            }
            None => {
                if self.entries.len() + missing.len() > self.limits.entries {
                    return Err(FilesError::Quota(format!(
                        "at most {} files and folders",
                        self.limits.entries
                    )));
                }
            }
        }
        for f in missing.into_iter().rev() {
            let entry = Entry::Folder { created_ms: now_ms };
            self.insert(f.clone(), entry.clone());
            change.records.push(Record::Put(f, entry));
        }
        let moved: Vec<String> = std::iter::once(from.to_owned())
            .chain(self.subtree(from))
            .collect();
        for old in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(entry) = self.remove(&old) {
                self.insert(new.clone(), entry.clone());
                change.records.push(Record::Put(new, entry));
                change.records.push(Record::Delete(old));
            }
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            entries: 10,
            bytes: 100,
            file_bytes: 60,
        }
    }

    fn up(f: &mut Files, path: &str, size: u64, blob: BlobId) -> Result<Change, FilesError> {
        f.commit_upload(path, true, size, "text/plain", blob, 7)
    }

    fn names(f: &Files, path: &str) -> Vec<String> {
        f.list(path)
            .unwrap()
            .into_iter()
            .map(|(p, e)| format!("{p}{}", if e.is_folder() { "/" } else { "" }))
            .collect()
    }

    #[test]
    fn an_upload_makes_its_folders_and_a_listing_shows_direct_children_only() {
        let mut f = Files::new(limits());
        let c = up(&mut f, "a/b/c.txt", 5, 1).unwrap();
        assert_eq!(c.records.len(), 3);
        up(&mut f, "a/d.txt", 1, 2).unwrap();
        up(&mut f, "a.txt", 1, 3).unwrap();
        up(&mut f, "a0", 1, 4).unwrap();
        up(&mut f, "a-1", 1, 5).unwrap();
        assert_eq!(names(&f, ""), ["a/", "a-1", "a.txt", "a0"]);
        assert_eq!(names(&f, "a"), ["a/b/", "a/d.txt"]);
        assert_eq!(names(&f, "a/b"), ["a/b/c.txt"]);
        assert_eq!(f.list("a.txt"), Err(FilesError::NotAFolder("a.txt".into())));
        assert_eq!(f.list("zz"), Err(FilesError::NotFound("zz".into())));
        assert_eq!(f.stat("a/b/c.txt").unwrap().name, "c.txt");
        assert!(f.stat("").unwrap().entry.is_none());
        assert_eq!(f.bytes(), 9);
    }

    #[test]
    fn uploads_refuse_what_is_in_the_way_and_what_does_not_fit() {
        let mut f = Files::new(limits());
        up(&mut f, "a/b.txt", 5, 1).unwrap();
        let no = |f: &Files, p: &str, o: bool, s: u64| f.check_upload(p, o, Some(s)).unwrap_err();
        assert_eq!(no(&f, "a", true, 1), FilesError::IsAFolder("a".into()));
        assert_eq!(
            no(&f, "a/b.txt/c", true, 1),
            FilesError::NotAFolder("a/b.txt".into())
        );
        assert_eq!(
            no(&f, "a/b.txt", false, 1),
            FilesError::AlreadyExists("a/b.txt".into())
        );
        assert_eq!(no(&f, "", true, 1), FilesError::Root);
        assert!(matches!(no(&f, "big", true, 61), FilesError::Quota(_)));
        up(&mut f, "x", 60, 2).unwrap();
        assert!(matches!(no(&f, "y", true, 36), FilesError::Quota(_)));
        // Replacing a file frees its bytes for its new version.
        assert!(f.check_upload("x", true, Some(60)).is_ok());
        assert_eq!(f.room_for("x"), 60);
        assert_eq!(f.room_for("y"), 35);
        let c = up(&mut f, "x", 10, 3).unwrap();
        assert_eq!(c.freed, [2]);
        assert_eq!(f.bytes(), 15);
        for n in 0..6 {
            up(&mut f, &format!("n{n}"), 0, 10 + n).unwrap();
        }
        assert!(matches!(no(&f, "one/more", true, 0), FilesError::Quota(_)));
    }

    #[test]
    fn deletes_need_recursive_for_a_folder_that_holds_anything_and_free_its_blobs() {
        let mut f = Files::new(limits());
        up(&mut f, "a/b/c", 1, 1).unwrap();
        up(&mut f, "a/d", 1, 2).unwrap();
        up(&mut f, "ab", 1, 3).unwrap();
        assert_eq!(f.delete("a", false), Err(FilesError::NotEmpty("a".into())));
        assert_eq!(f.delete("", true), Err(FilesError::Root));
        assert_eq!(f.delete("q", true), Err(FilesError::NotFound("q".into())));
        let c = f.delete("a", true).unwrap();
        assert_eq!(c.freed, [2, 1]);
        assert_eq!(names(&f, ""), ["ab"]);
        up(&mut f, "e/f", 1, 4).unwrap();
        f.delete("e/f", false).unwrap();
        // An emptied folder stays until it is deleted, without recursive.
        assert_eq!(names(&f, ""), ["ab", "e/"]);
        f.delete("e", false).unwrap();
        assert_eq!(f.bytes(), 1);
    }

    #[test]
    fn moves_carry_subtrees_and_replace_only_like_with_like_when_asked() {
        let mut f = Files::new(limits());
        up(&mut f, "a/b/c", 1, 1).unwrap();
        up(&mut f, "a/d", 1, 2).unwrap();
        up(&mut f, "z", 1, 3).unwrap();
        assert_eq!(
            f.rename("a", "a/b/x", false, 9),
            Err(FilesError::IntoItself("a".into()))
        );
        assert_eq!(
            f.rename("z", "a/d", false, 9),
            Err(FilesError::AlreadyExists("a/d".into()))
        );
        assert_eq!(
            f.rename("z", "a", true, 9),
            Err(FilesError::IsAFolder("a".into()))
        );
        f.rename("a", "m/n", false, 9).unwrap();
        assert_eq!(names(&f, ""), ["m/", "z"]);
        assert_eq!(names(&f, "m/n"), ["m/n/b/", "m/n/d"]);
        assert_eq!(names(&f, "m/n/b"), ["m/n/b/c"]);
        let c = f.rename("z", "m/n/d", true, 9).unwrap();
        assert_eq!(c.freed, [2]);
        assert_eq!(f.file("m/n/d").unwrap().blob, 3);
        // What the records say is what the tree is.
        let back = Files::restore(limits(), f.records());
        assert_eq!(back.records(), f.records());
        assert_eq!(back.bytes(), f.bytes());
        let mut replayed = Files::new(limits());
        let mut g = Files::new(limits());
        for c in [
            up(&mut g, "p/q", 2, 1).unwrap(),
            g.rename("p", "r", false, 1).unwrap(),
            g.delete("r/q", false).unwrap(),
        ] {
            replayed = Files::restore(limits(), replayed.records().into_iter().chain(c.records));
        }
        assert_eq!(replayed.records(), g.records());
    }
}
