//! The master key that seals API key secrets at rest, and the server's source of randomness.
//!
//! HS256 tokens are verified with the secret of the key that signed them, so roomd must keep
//! each secret, not a hash of it. Secrets are sealed with ChaCha20-Poly1305 under a 256-bit
//! master key kept outside the store: a file of its own (base64 text, mode 0600), created in
//! the data directory on first start unless `--master-key-file` names one. A copy of the store
//! alone reveals no secret. The key's id and project are the associated data of its seal, so a
//! sealed secret moved to another key record does not open.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// The file name of the master key in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

const NONCE_BYTES: usize = 12;

/// Why the master key could not be read or a secret not be opened.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    /// Reading or creating the key file failed.
    #[error("master key file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file does not hold 32 bytes in base64.
    #[error("master key file {0} does not hold a 32-byte key in base64")]
    Malformed(PathBuf),
    /// A sealed secret did not open: another master key sealed it, or it was altered.
    #[error("a sealed secret does not open with this master key")]
    Unseal,
}

/// The master key. Its bytes are never printed.
pub struct MasterKey {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

impl MasterKey {
    /// Reads the master key from `file`, or from the data directory's own file, which is
    /// created (mode 0600) when it does not exist yet. A file given explicitly must exist.
    pub fn load_or_create(
        data_dir: &Path,
        file: Option<&Path>,
    ) -> Result<MasterKey, MasterKeyError> {
        let path = match file {
            Some(f) => f.to_path_buf(),
            None => data_dir.join(MASTER_KEY_FILE),
        };
        let io = |error| MasterKeyError::Io {
            path: path.clone(),
            error,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && file.is_none() => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng);
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut f = options.open(&path).map_err(io)?;
                let text = format!("{}\n", STANDARD.encode(key));
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                text
            }
            Err(e) => return Err(io(e)),
        };
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| MasterKeyError::Malformed(path.clone()))?;
        if bytes.len() != 32 {
            return Err(MasterKeyError::Malformed(path));
        }
        Ok(MasterKey {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&bytes)),
        })
    }

    /// Seals `secret`, bound to `context` (the key's id and project): base64 of nonce, then
    /// ciphertext and tag.
    pub fn seal(&self, secret: &str, context: &[u8]) -> String {
        let nonce_bytes: [u8; NONCE_BYTES] = random_bytes();
        let nonce = Nonce::from_slice(&nonce_bytes);
        let payload = Payload {
            msg: secret.as_bytes(),
            aad: context,
        };
        // Encryption into a Vec fails only for messages beyond the cipher's 256 GiB bound.
        let sealed = self.cipher.encrypt(nonce, payload).unwrap_or_default();
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Opens a secret sealed by [`MasterKey::seal`] with the same `context`.
    pub fn open(&self, sealed: &str, context: &[u8]) -> Result<String, MasterKeyError> {
        let bytes = STANDARD
            .decode(sealed)
            .map_err(|_| MasterKeyError::Unseal)?;
        if bytes.len() < NONCE_BYTES {
            return Err(MasterKeyError::Unseal);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| MasterKeyError::Unseal)?;
        String::from_utf8(plain).map_err(|_| MasterKeyError::Unseal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_with_mode_0600_and_seals_and_opens() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let key = MasterKey::load_or_create(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join(MASTER_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = key.seal("s3cret-value", b"ctx");
        assert!(!sealed.contains("s3cret"));
        // The same file gives the same key.
        let again = MasterKey::load_or_create(dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.open(&sealed, b"ctx").ok().as_deref(),
            Some("s3cret-value")
        );
        // Another context, another key, or an altered seal does not open.
        assert!(again.open(&sealed, b"other").is_err());
        let other_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let other =
            MasterKey::load_or_create(other_dir.path(), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(other.open(&sealed, b"ctx").is_err());
        let mut altered = STANDARD.decode(&sealed).unwrap_or_default();
        if let Some(b) = altered.last_mut() {
            *b ^= 1;
        }
        assert!(again.open(&STANDARD.encode(altered), b"ctx").is_err());
        assert!(again.open("not base64!", b"ctx").is_err());
        // A file named explicitly must exist.
        assert!(MasterKey::load_or_create(dir.path(), Some(&dir.path().join("missing"))).is_err());
        assert!(!format!("{again:?}").contains(&STANDARD.encode([0u8; 4])));
    }
}
