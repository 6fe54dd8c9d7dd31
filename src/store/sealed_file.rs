//! Derived data kept beside the store (the face index snapshot), sealed with
//! the template key so that nothing biometric reaches the disk in the clear,
//! and replaced atomically so that a crash leaves the old file or the new one.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{StoreError, crypto::Sealer};

/// One sealed file in the data directory.
#[derive(Debug, Clone)]
pub struct SealedFile {
    sealer: Arc<Sealer>,
    path: PathBuf,
}

impl SealedFile {
    pub(super) fn new(sealer: Arc<Sealer>, dir: &Path, name: &str) -> Self {
        Self { sealer, path: dir.join(name) }
    }

    fn aad(&self) -> Vec<u8> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        format!("cotejo sealed file {name}").into_bytes()
    }

    /// Seals `plain` and replaces the file with it (write, fsync, rename, fsync).
    pub fn write(&self, plain: &[u8]) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(plain, &self.aad())?;
        let io = |source| StoreError::DataDir { path: self.path.display().to_string(), source };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&sealed).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }

    /// The plaintext, or `None` when there is no file. A file that does not
    /// open with this key (tampered, or another key) is an error.
    pub fn read(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(sealed) => Ok(Some(self.sealer.open_sealed(&sealed, &self.aad())?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::DataDir { path: self.path.display().to_string(), source }),
        }
    }
}
