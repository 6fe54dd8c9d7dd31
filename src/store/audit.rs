//! Append-only, tamper-evident audit log: each entry carries the SHA-256 of
//! its content and of the previous entry's hash, and triggers refuse UPDATE
//! and DELETE, so any edit breaks the chain that `verify` walks. Truncation
//! and a rebuilt chain are caught by signed checkpoints kept outside the
//! database ([`super::checkpoint`]).
//!
//! Entries of format 2 record who called (caller, role), what (method,
//! request id, subjects touched) and the outcome; format 1 entries, written
//! before callers existed, keep their own digest.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::StoreError;

/// Who made a call, as the audit log records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Actor {
    /// Caller name (token or certificate name; `anonymous` without authentication).
    pub caller: String,
    /// The role the call needed.
    pub role: String,
    /// The RPC.
    pub method: String,
    /// The request id (the caller's `x-request-id`, or one made for it).
    pub request_id: String,
}

impl Actor {
    /// An actor for work the process does on its own (evaluations, tools).
    pub fn system(what: &str) -> Self {
        Self { caller: "cotejo".into(), role: String::new(), method: what.into(), request_id: String::new() }
    }
}

/// One thing to record: who, which subjects, the outcome and a detail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRecord {
    /// Who called.
    pub actor: Actor,
    /// Subjects the call touched (read, written or returned).
    pub subjects: Vec<String>,
    /// `OK`, or the status code and reason of a refusal or failure.
    pub outcome: String,
    /// Free detail: decision, counts, job id (never biometric data).
    pub detail: String,
}

impl AuditRecord {
    /// A store's record of an enroll (the same detail in every backend).
    pub(super) fn enrolled(
        actor: &Actor,
        subject_id: &str,
        encounter_id: i64,
        templates: usize,
        watchlists: &[String],
    ) -> Self {
        let detail = format!("encounter={encounter_id} templates={templates} watchlists={}", watchlists.join(","));
        Self { actor: actor.clone(), subjects: vec![subject_id.to_owned()], outcome: "OK".into(), detail }
    }

    /// A store's record of a subject's deletion.
    pub(super) fn deleted(actor: &Actor, subject_id: &str, templates: usize) -> Self {
        Self {
            actor: actor.clone(),
            subjects: vec![subject_id.to_owned()],
            outcome: "OK".into(),
            detail: format!("templates={templates}"),
        }
    }
}

/// One audit entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub seq: i64,
    /// Time in ms since the epoch.
    pub ts_ms: i64,
    /// Entry format (1: before callers were recorded).
    pub format: i64,
    /// The RPC (format 1: the action).
    pub method: String,
    /// Caller name.
    pub caller: String,
    /// Role the call needed.
    pub role: String,
    /// Request id.
    pub request_id: String,
    /// Subjects touched.
    pub subjects: Vec<String>,
    /// Outcome.
    pub outcome: String,
    /// Free detail.
    pub detail: String,
    /// Hex SHA-256 chain hash.
    pub hash: String,
}

const COLUMNS: [(&str, &str); 6] = [
    ("format", "INTEGER NOT NULL DEFAULT 1"),
    ("caller", "TEXT NOT NULL DEFAULT ''"),
    ("role", "TEXT NOT NULL DEFAULT ''"),
    ("request_id", "TEXT NOT NULL DEFAULT ''"),
    ("outcome", "TEXT NOT NULL DEFAULT ''"),
    ("subjects", "TEXT NOT NULL DEFAULT '[]'"),
];

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
    // Stores made before callers were recorded gain the columns; their rows
    // keep format 1 and the digest they were written with.
    let have: Vec<String> = {
        let mut st = conn.prepare("SELECT name FROM pragma_table_info('audit')")?;
        st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    for (name, decl) in COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE audit ADD COLUMN {name} {decl}"))?;
        }
    }
    Ok(())
}

fn digest(prev: &[u8], e: &AuditEntry) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(e.seq.to_le_bytes());
    h.update(e.ts_ms.to_le_bytes());
    let subjects = subjects_json(&e.subjects);
    let fields: Vec<&str> = if e.format == 1 {
        vec![&e.method, e.subjects.first().map_or("", String::as_str), &e.detail]
    } else {
        h.update(e.format.to_le_bytes());
        vec![&e.method, &e.caller, &e.role, &e.request_id, &subjects, &e.outcome, &e.detail]
    };
    for field in fields {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field.as_bytes());
    }
    h.finalize().to_vec()
}

pub(super) fn subjects_json(subjects: &[String]) -> String {
    serde_json::to_string(subjects).unwrap_or_else(|_| "[]".into())
}

/// The last entry's (seq, hash); `(0, [])` for an empty log.
pub(super) fn head(conn: &Connection) -> Result<(i64, Vec<u8>), StoreError> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(last.unwrap_or((0, Vec::new())))
}

/// The entry that follows `prev_seq` for `r`, and its chained hash.
pub(super) fn next_entry(prev_seq: i64, prev_hash: &[u8], ts_ms: i64, r: &AuditRecord) -> (AuditEntry, Vec<u8>) {
    let e = AuditEntry {
        seq: prev_seq + 1,
        ts_ms,
        format: 2,
        method: r.actor.method.clone(),
        caller: r.actor.caller.clone(),
        role: r.actor.role.clone(),
        request_id: r.actor.request_id.clone(),
        subjects: r.subjects.clone(),
        outcome: r.outcome.clone(),
        detail: r.detail.clone(),
        hash: String::new(),
    };
    let hash = digest(prev_hash, &e);
    (e, hash)
}

/// Checks one link of the chain: `e` (stored with `hash`) follows entry
/// `seq` whose hash is `prev`.
pub(super) fn check_link(seq: i64, prev: &[u8], e: &AuditEntry, hash: &[u8]) -> Result<(), StoreError> {
    if e.seq != seq + 1 {
        return Err(StoreError::AuditBroken { seq: seq + 1, problem: format!("missing (the next is {})", e.seq) });
    }
    if !(e.format == 1 || e.format == 2) || digest(prev, e) != hash {
        return Err(StoreError::AuditBroken { seq: e.seq, problem: "its hash does not match its content".into() });
    }
    Ok(())
}

/// Appends one entry inside the caller's transaction.
pub(super) fn append(conn: &Connection, ts_ms: i64, r: &AuditRecord) -> Result<(), StoreError> {
    let (prev_seq, prev_hash) = head(conn)?;
    let (e, hash) = next_entry(prev_seq, &prev_hash, ts_ms, r);
    conn.execute(
        "INSERT INTO audit (seq, ts_ms, action, subject_id, detail, hash, format, caller, role, request_id, outcome, subjects)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 2, ?7, ?8, ?9, ?10, ?11)",
        params![
            e.seq,
            e.ts_ms,
            e.method,
            e.subjects.first().map_or("", String::as_str),
            e.detail,
            hash,
            e.caller,
            e.role,
            e.request_id,
            e.outcome,
            subjects_json(&e.subjects)
        ],
    )?;
    Ok(())
}

const SELECT: &str = "SELECT seq, ts_ms, action, subject_id, detail, hash, format, caller, role, request_id, outcome, subjects FROM audit";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AuditEntry, Vec<u8>)> {
    let format: i64 = r.get(6)?;
    let subjects = if format == 1 {
        let s: String = r.get(3)?;
        vec![s]
    } else {
        let json: String = r.get(11)?;
        // A row whose list does not parse cannot match its hash either.
        serde_json::from_str(&json).unwrap_or_else(|_| vec![json])
    };
    let hash: Vec<u8> = r.get(5)?;
    Ok((
        AuditEntry {
            seq: r.get(0)?,
            ts_ms: r.get(1)?,
            format,
            method: r.get(2)?,
            caller: r.get(7)?,
            role: r.get(8)?,
            request_id: r.get(9)?,
            subjects,
            outcome: r.get(10)?,
            detail: r.get(4)?,
            hash: hex::encode(&hash),
        },
        hash,
    ))
}

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainCheck {
    /// Entries walked.
    pub entries: u64,
    /// The last entry's sequence number (0 for an empty log).
    pub head_seq: i64,
    /// The last entry's hash.
    pub head_hash: Vec<u8>,
}

/// Walks the chain from the entry after `from` (seq, hash), or from the
/// start; the first entry whose hash or sequence is wrong is named.
pub(super) fn verify_from(conn: &Connection, from: Option<(i64, &[u8])>) -> Result<ChainCheck, StoreError> {
    let (mut seq, mut prev) = from.map_or((0, Vec::new()), |(s, h)| (s, h.to_vec()));
    let mut st = conn.prepare(&format!("{SELECT} WHERE seq > ?1 ORDER BY seq"))?;
    let mut rows = st.query([seq])?;
    let mut n = 0u64;
    while let Some(r) = rows.next()? {
        let (e, hash) = entry(r)?;
        check_link(seq, &prev, &e, &hash)?;
        prev = hash;
        seq = e.seq;
        n += 1;
    }
    Ok(ChainCheck { entries: n, head_seq: seq, head_hash: prev })
}

/// The hash stored for entry `seq`, if it exists.
pub(super) fn hash_at(conn: &Connection, seq: i64) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(conn.query_row("SELECT hash FROM audit WHERE seq = ?1", [seq], |r| r.get(0)).optional()?)
}

/// Up to `limit` entries from `from_seq` on, oldest first.
pub(super) fn read(conn: &Connection, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let mut st = conn.prepare(&format!("{SELECT} WHERE seq >= ?1 ORDER BY seq LIMIT ?2"))?;
    let rows = st.query_map(params![from_seq, limit as i64], |r| entry(r).map(|e| e.0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The last `n` entries, oldest first.
pub(super) fn tail(conn: &Connection, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
    let (head, _) = head(conn)?;
    read(conn, (head - n as i64 + 1).max(1), n)
}
