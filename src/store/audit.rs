//! Append-only, tamper-evident audit log: each entry carries the SHA-256 of
//! its content and of the previous entry's hash, and triggers refuse UPDATE
//! and DELETE, so any edit breaks the chain that `verify` walks.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::StoreError;

/// One audit entry.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: i64,
    /// Time in ms since the epoch.
    pub ts_ms: i64,
    /// What happened (enroll, delete, identify, verify).
    pub action: String,
    /// Subject concerned (may be empty).
    pub subject_id: String,
    /// Free detail (never biometric data).
    pub detail: String,
}

pub(super) fn create(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY,
            ts_ms INTEGER NOT NULL,
            action TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            detail TEXT NOT NULL,
            hash BLOB NOT NULL
        ) STRICT;
        CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
            BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
        CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
            BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;",
    )?;
    Ok(())
}

fn digest(prev: &[u8], e: &AuditEntry) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(e.seq.to_le_bytes());
    h.update(e.ts_ms.to_le_bytes());
    for field in [&e.action, &e.subject_id, &e.detail] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().to_vec()
}

/// Appends one entry inside the caller's transaction.
pub(super) fn append(
    conn: &Connection,
    ts_ms: i64,
    action: &str,
    subject_id: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let (prev_seq, prev_hash) = last.unwrap_or((0, Vec::new()));
    let e = AuditEntry {
        seq: prev_seq + 1,
        ts_ms,
        action: action.to_owned(),
        subject_id: subject_id.to_owned(),
        detail: detail.to_owned(),
    };
    let hash = digest(&prev_hash, &e);
    conn.execute(
        "INSERT INTO audit (seq, ts_ms, action, subject_id, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![e.seq, e.ts_ms, e.action, e.subject_id, e.detail, hash],
    )?;
    Ok(())
}

/// Walks the chain from the start; the number of entries when intact.
pub(super) fn verify(conn: &Connection) -> Result<u64, StoreError> {
    let mut st = conn.prepare("SELECT seq, ts_ms, action, subject_id, detail, hash FROM audit ORDER BY seq")?;
    let mut rows = st.query([])?;
    let mut prev = Vec::new();
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let e = AuditEntry {
            seq: r.get(0)?,
            ts_ms: r.get(1)?,
            action: r.get(2)?,
            subject_id: r.get(3)?,
            detail: r.get(4)?,
        };
        let hash: Vec<u8> = r.get(5)?;
        if e.seq != n as i64 + 1 || digest(&prev, &e) != hash {
            return Err(StoreError::AuditBroken(e.seq));
        }
        prev = hash;
        n += 1;
    }
    Ok(n)
}

/// The last `n` entries, oldest first.
pub(super) fn tail(conn: &Connection, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let mut st = conn.prepare(
        "SELECT seq, ts_ms, action, subject_id, detail FROM
         (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq",
    )?;
    let rows = st.query_map([n as i64], |r| {
        Ok(AuditEntry { seq: r.get(0)?, ts_ms: r.get(1)?, action: r.get(2)?, subject_id: r.get(3)?, detail: r.get(4)? })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
