//! Signed audit checkpoints: the chain head (sequence number and hash) with
//! an HMAC-SHA256 under a key that never enters the data directory, written
//! to a folder outside it. Whoever can rewrite the database can rebuild a
//! consistent hash chain, or cut its last entries; without the key they
//! cannot make a checkpoint that vouches for the result. A start-up checks
//! the chain from the last checkpoint on, and `verify` does the same.
//!
//! The bound: entries appended after the last checkpoint and then removed
//! are not detected; checkpoints are written every `audit.checkpoint_every_secs`
//! and at shutdown, so that window is one interval.

use std::{
    fs,
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::StoreError;

const FILE: &str = "audit-checkpoint.json";

/// A signed chain head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the last entry it covers.
    pub seq: i64,
    /// Hex hash of that entry.
    pub hash: String,
    /// When it was written (ms since the epoch).
    pub ts_ms: i64,
    /// Hex HMAC-SHA256 of the fields above.
    pub mac: String,
}

/// Where checkpoints go and the key that signs them.
#[derive(Clone)]
pub struct Checkpoints {
    dir: PathBuf,
    key: Vec<u8>,
}

impl std::fmt::Debug for Checkpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoints").field("dir", &self.dir).field("key", &"<redacted>").finish()
    }
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Checkpoint(what.to_string())
}

impl Checkpoints {
    /// Checkpoints in `dir` signed with the key in `key_file` (64 hex
    /// digits; readable by its owner only). Neither may lie inside `data_dir`.
    pub fn open(dir: &Path, key_file: &Path, data_dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|e| bad(format!("{}: {e}", dir.display())))?;
        let data = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
        for p in [dir, key_file] {
            let abs = fs::canonicalize(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
            if abs.starts_with(&data) {
                return Err(bad(format!(
                    "{} lies inside the data directory {}; whoever can rewrite the store could rewrite it too",
                    p.display(),
                    data.display()
                )));
            }
        }
        let key = crate::store::read_secret_file(key_file).map_err(StoreError::Checkpoint)?;
        Ok(Self { dir: dir.to_owned(), key })
    }

    fn mac(&self, seq: i64, hash: &str, ts_ms: i64) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(b"cotejo audit checkpoint v1\0");
        m.update(&seq.to_le_bytes());
        m.update(hash.as_bytes());
        m.update(&ts_ms.to_le_bytes());
        m
    }

    /// Writes a checkpoint for the head (seq, hash): temporary file, sync, rename.
    pub fn write(&self, seq: i64, hash: &[u8], ts_ms: i64) -> Result<Checkpoint, StoreError> {
        let hash = hex::encode(hash);
        let mac = hex::encode(self.mac(seq, &hash, ts_ms).finalize().into_bytes());
        let cp = Checkpoint { seq, hash, ts_ms, mac };
        let text = serde_json::to_string(&cp).map_err(bad)?;
        let path = self.dir.join(FILE);
        super::replace_file(&path, text.as_bytes(), false).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(cp)
    }

    /// The last checkpoint, its signature checked; `None` before the first.
    pub fn read(&self) -> Result<Option<Checkpoint>, StoreError> {
        let path = self.dir.join(FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(bad(format!("{}: {e}", path.display()))),
        };
        let cp: Checkpoint = serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let mac = hex::decode(&cp.mac).map_err(|_| bad("the checkpoint's signature is not hex"))?;
        self.mac(cp.seq, &cp.hash, cp.ts_ms).verify_slice(&mac).map_err(|_| {
            bad(format!("{}: the signature does not match (wrong key or a forged file)", path.display()))
        })?;
        Ok(Some(cp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_and_checked() {
        let outside = tempfile::tempdir().expect("tempdir");
        let data = tempfile::tempdir().expect("tempdir");
        let key = outside.path().join("audit.key");
        crate::store::write_secret_file(&key, &[7u8; 32]).expect("key");
        let cps = Checkpoints::open(&outside.path().join("cp"), &key, data.path()).expect("open");
        assert_eq!(cps.read().expect("read"), None);
        let cp = cps.write(12, &[1, 2, 3], 99).expect("write");
        assert_eq!(cps.read().expect("read"), Some(cp.clone()));
        // Moving the head forward without the key is caught.
        let forged = Checkpoint { seq: 5, ..cp };
        fs::write(outside.path().join("cp").join(FILE), serde_json::to_string(&forged).expect("json")).expect("w");
        assert!(matches!(cps.read(), Err(StoreError::Checkpoint(_))));
        // Inside the data directory: refused.
        assert!(Checkpoints::open(&data.path().join("cp"), &key, data.path()).is_err());
    }
}
