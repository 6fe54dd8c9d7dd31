//! Keeping the store healthy and its deletions final: the commit probe and
//! free-space reading behind the health check, and the WAL truncation
//! after a deletion.

use super::{Store, StoreError, commit, now_ms};

impl Store {
    /// Commits a write (one row of `health_probe`): fails while the store
    /// cannot commit (disk full, I/O errors, a read-only file system).
    pub fn probe_commit(&mut self) -> Result<(), StoreError> {
        let tx = self.reader.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("INSERT OR REPLACE INTO health_probe (id, at_ms) VALUES (1, ?1)", [now_ms()])?;
        commit(tx)?;
        Ok(())
    }

    /// Copies the WAL into the database and truncates it, so the frames
    /// that held deleted rows are gone when a deletion returns (the rows
    /// themselves were zeroed by `secure_delete`). The checkpoint waits
    /// (up to the busy timeout) for the pooled readers' short reads; a
    /// reader in another process (a backup, a key rotation) can hold frames
    /// back longer: then the next deletion or SQLite's own checkpoint
    /// finishes the work.
    pub(super) fn erase_wal(&self) {
        let busy = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))
            .map_err(|e| e.to_string());
        match busy {
            Ok(0) => {}
            Ok(_) => tracing::warn!("WAL not truncated after a deletion: another reader holds it; retried later"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint after a deletion failed"),
        }
    }
}

/// Free bytes for an unprivileged writer on the data directory's file system.
#[expect(unsafe_code, reason = "statvfs(3) through libc: one call with a checked path and an owned buffer")]
pub fn free_bytes(dir: &std::path::Path) -> std::io::Result<u64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs is plain old data; all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
