//! Reading the store: subjects' templates (opened with the keys), counts,
//! the audit chain. A [`Reader`] is one connection and the keys; the
//! writer reads through its own, and a [`ReadPool`] hands out readers on
//! connections of their own. Under WAL a reader sees the last commit
//! before its read began, never waits for a write and never holds one up,
//! so a long read (a job's pairs, the audit chain, a whole modality) does
//! not stall the calls behind it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::{
    AuditEntry, ChainCheck, Checkpoint, EnrollReplay, StoreError, StoreStats, audit, check_chain, crypto::Sealer,
    enroll_request, modality, subject_exists, templates_sql, unsealed,
};
use crate::biometric::{Modality, NewTemplate, StoredTemplate, TemplateData};

/// Read access to the store: a connection and the keys that open templates.
#[derive(Debug)]
pub struct Reader {
    pub(super) conn: Connection,
    pub(super) sealer: Arc<Sealer>,
}

/// Readers kept open for reuse, each on its own connection.
#[derive(Debug)]
pub struct ReadPool {
    db: PathBuf,
    sealer: Arc<Sealer>,
    idle: Mutex<Vec<Reader>>,
}

/// Idle connections kept for reuse; more are opened while more are busy
/// (one per blocking read in flight) and closed when they come back.
const MAX_IDLE: usize = 8;

impl ReadPool {
    pub(super) fn new(db: PathBuf, sealer: Arc<Sealer>) -> Arc<Self> {
        Arc::new(Self { db, sealer, idle: Mutex::new(Vec::new()) })
    }

    /// A reader: an idle one, or a new connection when none is idle.
    pub fn get(self: &Arc<Self>) -> Result<PooledReader, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let reader = match idle {
            Some(r) => r,
            None => self.open()?,
        };
        Ok(PooledReader { reader: Some(reader), pool: self.clone() })
    }

    fn open(&self) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A reader never writes: a bug that tried would fail, not commit.
        conn.pragma_update(None, "query_only", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader { conn, sealer: self.sealer.clone() })
    }

    /// The key new records are sealed with.
    pub fn active_key(&self) -> super::KeyId {
        self.sealer.active()
    }

    /// Connections open and idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// A reader borrowed from a [`ReadPool`], returned to it when dropped.
#[derive(Debug)]
pub struct PooledReader {
    reader: Option<Reader>,
    pool: Arc<ReadPool>,
}

impl std::ops::Deref for PooledReader {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        // Set from construction until drop.
        self.reader.as_ref().unwrap_or_else(|| unreachable!("a pooled reader is present until dropped"))
    }
}

impl Drop for PooledReader {
    fn drop(&mut self) {
        let Some(reader) = self.reader.take() else { return };
        // A reader left inside a transaction (a panic mid-read) is closed, not reused.
        if !reader.conn.is_autocommit() {
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(reader);
        }
    }
}

impl Reader {
    /// The first answer to an enroll request id, if it was used.
    pub fn enroll_request(&self, request_id: &str) -> Result<Option<EnrollReplay>, StoreError> {
        enroll_request(&self.conn, request_id)
    }

    /// Every template of one subject, decrypted.
    pub fn subject_templates(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        if !subject_exists(&self.conn, subject_id)? {
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        let mut out = Vec::new();
        self.templates_where("subject_id = ?1", [subject_id], |t| {
            out.push(t);
            Ok(())
        })?;
        Ok(out)
    }

    /// Every live template of a modality and model: (template id, owner), in id order.
    pub fn template_owners(&self, modality: Modality, model_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT template_id, subject_id FROM templates INDEXED BY templates_owner WHERE modality = ?1 AND model_id = ?2",
        )?;
        let rows = st.query_map(params![modality.code(), model_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let mut out: Vec<(i64, String)> = rows.collect::<Result<_, _>>()?;
        out.sort_unstable_by_key(|r| r.0);
        Ok(out)
    }

    /// Every live template of a modality, whatever its model: (template id, owner, finger position), in id order.
    pub fn template_positions(&self, modality: Modality) -> Result<Vec<(i64, String, u8)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT template_id, subject_id, finger_position FROM templates INDEXED BY templates_finger WHERE modality = ?1",
        )?;
        let rows = st.query_map(params![modality.code()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        let mut out: Vec<(i64, String, u8)> = rows.collect::<Result<_, _>>()?;
        out.sort_unstable_by_key(|r| r.0);
        Ok(out)
    }

    /// The templates with these ids (those that exist), decrypted, in id order.
    pub fn templates_with_ids(&self, ids: &[i64]) -> Result<Vec<StoredTemplate>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(512) {
            let list: Vec<String> = chunk.iter().map(i64::to_string).collect();
            self.templates_where(&format!("template_id IN ({})", list.join(",")), [], |t| {
                out.push(t);
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Every template of a modality with an id up to `max_id`, decrypted, in id order.
    pub fn templates_up_to(&self, modality: Modality, max_id: i64) -> Result<Vec<StoredTemplate>, StoreError> {
        let mut out = Vec::new();
        self.templates_where("modality = ?1 AND template_id <= ?2", params![modality.code(), max_id], |t| {
            out.push(t);
            Ok(())
        })?;
        Ok(out)
    }

    /// Streams every template of a modality to `sink`, decrypted, in id order within each model.
    pub fn for_each_template(
        &self,
        modality: Modality,
        sink: impl FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        // Ordered as the `templates_model` index is, so that SQLite reads that
        // index instead of sorting every row (sealed data included) by id.
        self.templates_where_ordered("modality = ?1", "modality, model_id, template_id", [modality.code()], sink)
    }

    fn templates_where<P: rusqlite::Params>(
        &self,
        clause: &str,
        p: P,
        sink: impl FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.templates_where_ordered(clause, "template_id", p, sink)
    }

    fn templates_where_ordered<P: rusqlite::Params>(
        &self,
        clause: &str,
        order: &str,
        p: P,
        mut sink: impl FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self.conn.prepare(&templates_sql(clause, order))?;
        let mut rows = st.query(p)?;
        while let Some(r) = rows.next()? {
            let subject_id: String = r.get(1)?;
            let row = NewTemplate {
                modality: modality(r.get(3)?)?,
                finger_position: r.get(4)?,
                model_id: r.get(5)?,
                quality: r.get::<_, f64>(6)? as f32,
                data: TemplateData::Minutiae(Vec::new()),
            };
            let sealed: Vec<u8> = r.get(7)?;
            let template_id: i64 = r.get(0)?;
            let template = unsealed(&self.sealer, &sealed, template_id, &subject_id, row)?;
            let t = StoredTemplate { template_id, subject_id, encounter_id: r.get(2)?, template };
            sink(t)?;
        }
        Ok(())
    }

    /// Gallery counts.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let subjects: i64 = self.conn.query_row("SELECT COUNT(*) FROM subjects", [], |r| r.get(0))?;
        let encounters: i64 = self.conn.query_row("SELECT COUNT(*) FROM encounters", [], |r| r.get(0))?;
        let mut st = self
            .conn
            .prepare("SELECT modality, model_id, COUNT(*) FROM templates GROUP BY modality, model_id ORDER BY 1, 2")?;
        let mut templates = Vec::new();
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let code: i64 = r.get(0)?;
            let m = Modality::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("modality {code}")))?;
            templates.push((m, r.get(1)?, r.get::<_, i64>(2)? as u64));
        }
        Ok(StoreStats { subjects: subjects as u64, encounters: encounters as u64, templates })
    }
}

impl Reader {
    /// Checks the audit chain: from the start, or (`from_checkpoint`) from
    /// the checkpoint on; a checkpoint that no longer matches the log means
    /// entries were removed or the chain rewritten.
    pub fn verify_audit(
        &self,
        checkpoint: Option<&Checkpoint>,
        from_checkpoint: bool,
    ) -> Result<ChainCheck, StoreError> {
        check_chain(&self.conn, checkpoint, from_checkpoint)
    }

    /// The audit chain's head: (sequence number, hash).
    pub fn audit_head(&self) -> Result<(i64, Vec<u8>), StoreError> {
        audit::head(&self.conn)
    }

    /// Up to `limit` audit entries from `from_seq` on, oldest first.
    pub fn audit_entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        audit::read(&self.conn, from_seq, limit)
    }

    /// The last `n` audit entries, newest last.
    pub fn audit_tail(&self, n: usize) -> Result<Vec<AuditEntry>, StoreError> {
        audit::tail(&self.conn, n)
    }
}
