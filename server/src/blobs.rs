//! The bytes of stored files: one file of the data directory per blob (`storage/<xx>/<id>`,
//! `xx` the id's last byte, so that no folder holds every blob), the metadata that names them
//! in sled (`room_apis::files`).
//!
//! Files rather than chunks in sled: a file of a gigabyte streams in and out in pieces without
//! ever being one value, is written once (sled would write it to its log, then again when it
//! rewrites segments), and is read with plain `read`s that the kernel's page cache serves.
//!
//! A blob is written to `storage/tmp/<random>` and only becomes a blob when whole: its bytes
//! synced, then linked to its final name, whose folder is synced. So an interrupted upload
//! leaves only a temporary file, which the next start removes, and the previous version of the
//! file, another blob, is untouched. A blob the metadata no longer names (its file replaced or
//! deleted, with a crash before the blob was removed) is found by [`Blobs::sweep`].
//!
//! Everything here blocks: call it off the async threads.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use roomd_room_apis::files::BlobId;

/// The data directory's folder of blobs.
pub const BLOBS_DIR: &str = "storage";
const TMP_DIR: &str = "tmp";

/// The blobs of a data directory.
#[derive(Debug, Clone)]
pub struct Blobs {
    dir: PathBuf,
}

/// A blob being written; removed unless committed.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    size: u64,
    blobs: Blobs,
    committed: bool,
}

fn random_id() -> BlobId {
    let b = uuid::Uuid::new_v4().into_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[8], b[9]])
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Blobs {
    /// The blobs under `data_dir`, made if need be; temporary files left by uploads that
    /// did not finish are removed.
    pub fn open(data_dir: &Path) -> io::Result<Blobs> {
        let dir = data_dir.join(BLOBS_DIR);
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(Blobs { dir })
    }

    /// Where blob `id` is.
    pub fn path(&self, id: BlobId) -> PathBuf {
        self.dir
            .join(format!("{:02x}", id & 0xff))
            .join(format!("{id:016x}"))
    }

    /// Starts a blob.
    pub fn create(&self) -> io::Result<BlobWriter> {
        loop {
            let tmp = self.dir.join(TMP_DIR).join(format!("{:016x}", random_id()));
            match File::options().write(true).create_new(true).open(&tmp) {
                Ok(file) => {
                    return Ok(BlobWriter {
                        file,
                        tmp,
                        size: 0,
                        blobs: self.clone(),
                        committed: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Opens blob `id` to read, at byte `offset`.
    pub fn open_at(&self, id: BlobId, offset: u64) -> io::Result<File> {
        let mut f = File::open(self.path(id))?;
        if offset > 0 {
            f.seek(SeekFrom::Start(offset))?;
        }
        Ok(f)
    }

    /// Reads a whole blob (for small ones: schemas, tests).
    pub fn read(&self, id: BlobId) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_at(id, 0)?.read_to_end(&mut out)?;
        Ok(out)
    }

    /// Removes blob `id`; one already gone is no error.
    pub fn remove(&self, id: BlobId) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes every blob `keep` does not name; returns how many went.
    pub fn sweep(&self, keep: impl Fn(BlobId) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for shard in fs::read_dir(&self.dir)? {
            let shard = shard?;
            let name = shard.file_name();
            let Some(name) = name.to_str() else { continue };
            if name == TMP_DIR || !shard.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(shard.path())? {
                let entry = entry?;
                let id = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| u64::from_str_radix(n, 16).ok());
                if let Some(id) = id.filter(|&id| !keep(id)) {
                    self.remove(id)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

impl BlobWriter {
    /// Appends `bytes`.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Makes the blob whole and durable, under a fresh id: its bytes synced, then given its
    /// name, whose folder is synced. Returns the id and the size.
    pub fn commit(mut self) -> io::Result<(BlobId, u64)> {
        self.file.sync_all()?;
        loop {
            let id = random_id();
            let path = self.blobs.path(id);
            let shard = path.parent().unwrap_or(&self.blobs.dir).to_path_buf();
            fs::create_dir_all(&shard)?;
            // A link never replaces a blob that holds the id already.
            match fs::hard_link(&self.tmp, &path) {
                Ok(()) => {
                    sync_dir(&shard)?;
                    self.committed = true;
                    let _ = fs::remove_file(&self.tmp);
                    return Ok((id, self.size));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp_files(blobs: &Blobs) -> usize {
        fs::read_dir(blobs.dir.join(TMP_DIR)).unwrap().count()
    }

    #[test]
    fn a_blob_exists_once_whole_and_an_unfinished_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let mut w = blobs.create().unwrap();
        w.write(b"hello ").unwrap();
        w.write(b"world").unwrap();
        assert_eq!(w.size(), 11);
        assert_eq!(tmp_files(&blobs), 1);
        let (id, size) = w.commit().unwrap();
        assert_eq!((size, tmp_files(&blobs)), (11, 0));
        assert_eq!(blobs.read(id).unwrap(), b"hello world");
        let mut tail = String::new();
        blobs
            .open_at(id, 6)
            .unwrap()
            .read_to_string(&mut tail)
            .unwrap();
        assert_eq!(tail, "world");
        // Dropped before its commit: gone.
        let mut w = blobs.create().unwrap();
        w.write(b"partial").unwrap();
        drop(w);
        assert_eq!(tmp_files(&blobs), 0);
        blobs.remove(id).unwrap();
        blobs.remove(id).unwrap();
        assert!(blobs.read(id).is_err());
    }

    #[test]
    fn opening_removes_what_a_crash_left_and_a_sweep_what_nothing_names() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let mut w = blobs.create().unwrap();
        w.write(b"cut short").unwrap();
        // As a crash would: the temporary file stays behind.
        std::mem::forget(w);
        let keep = blobs.create().unwrap().commit().unwrap().0;
        let lose = blobs.create().unwrap().commit().unwrap().0;
        let blobs = Blobs::open(dir.path()).unwrap();
        assert_eq!(tmp_files(&blobs), 0);
        assert_eq!(blobs.sweep(|id| id == keep).unwrap(), 1);
        assert!(blobs.read(keep).is_ok());
        assert!(blobs.read(lose).is_err());
    }
}
