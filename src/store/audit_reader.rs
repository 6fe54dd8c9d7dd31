//! The audit chain's check against a signed checkpoint, and a read-only
//! view of a data directory's audit log for the offline tools.

use std::path::Path;

use rusqlite::Connection;

use super::{AuditEntry, ChainCheck, Checkpoint, StoreError, audit};

/// A read-only view of a data directory's audit log, usable while a server
/// runs on it (no lock taken, nothing written).
#[derive(Debug)]
pub struct AuditReader {
    conn: Connection,
}

impl AuditReader {
    /// Opens `<data_dir>/cotejo.db` read-only.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let db = data_dir.join("cotejo.db");
        if !db.is_file() {
            return Err(StoreError::DataDir {
                path: data_dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no cotejo.db here"),
            });
        }
        let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self { conn })
    }

    /// As [`Store::verify_audit`].
    pub fn verify(&self, checkpoint: Option<&Checkpoint>, from_checkpoint: bool) -> Result<ChainCheck, StoreError> {
        check_chain(&self.conn, checkpoint, from_checkpoint)
    }

    /// As [`Store::audit_entries`].
    pub fn entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        audit::read(&self.conn, from_seq, limit)
    }
}

pub(super) fn check_chain(
    conn: &Connection,
    checkpoint: Option<&Checkpoint>,
    from_checkpoint: bool,
) -> Result<ChainCheck, StoreError> {
    // One read transaction: the head does not move under the walk.
    let tx = conn.unchecked_transaction()?;
    let anchor = match checkpoint {
        Some(cp) => {
            let signed = hex::decode(&cp.hash).map_err(|_| StoreError::Checkpoint("hash is not hex".into()))?;
            match audit::hash_at(&tx, cp.seq)? {
                Some(h) if h == signed => Some((cp.seq, signed)),
                Some(_) => {
                    return Err(StoreError::AuditBroken {
                        seq: cp.seq,
                        problem: "it differs from the signed checkpoint: the chain was rewritten".into(),
                    });
                }
                None if cp.seq == 0 => None,
                None => {
                    let (head, _) = audit::head(&tx)?;
                    return Err(StoreError::AuditBroken {
                        seq: head + 1,
                        problem: format!(
                            "missing: the log ends at entry {head} but a signed checkpoint vouches for {} entries",
                            cp.seq
                        ),
                    });
                }
            }
        }
        None => None,
    };
    let check = match (&anchor, from_checkpoint) {
        (Some((seq, hash)), true) => audit::verify_from(&tx, Some((*seq, hash)))?,
        _ => audit::verify_from(&tx, None)?,
    };
    tx.finish()?;
    Ok(check)
}
