//! The system of record: subjects, encounters, encrypted templates and the
//! audit log, in SQLite (WAL, synchronous=FULL: a committed enroll survives a
//! crash). The search index is derived from this and never the only copy.

mod audit;
mod audit_reader;
pub mod backup;
mod checkpoint;
mod crypto;
mod files;
mod job_store;
mod jobs;
pub mod postgres;
mod reader;
mod records;
mod rotation;
mod schema;
mod sealed_file;
mod subjects;
mod upkeep;

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::biometric::{Modality, NewTemplate, TemplateData};
pub use audit::{Actor, AuditEntry, AuditRecord, ChainCheck};
pub use audit_reader::AuditReader;
use audit_reader::check_chain;
pub use checkpoint::{Checkpoint, Checkpoints};
use crypto::Sealer;
pub use crypto::{KeyId, new_key};
pub(crate) use files::replace_file_via;
pub use files::{read_secret_file, replace_file, write_secret_file};
pub use job_store::{BlockBounds, BlockClaim, JobStore, best_once};
pub use jobs::{JobRecord, JobState, PairComponent};
pub use reader::{PooledReader, ReadPool, Reader};
pub use records::{Records, Removed, SqliteRecords, TemplateSource};
pub use rotation::{KeyCensus, Resealer};
pub use sealed_file::{SealedFile, SealedReader, SealedWriter};
pub use upkeep::free_bytes;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    /// The encryption key is missing or malformed.
    #[error("template encryption key: {0}")]
    Key(String),
    /// Sealed data did not decrypt (wrong key or tampering).
    #[error("sealed data failed to decrypt (wrong key or tampering)")]
    Crypto,
    /// A template row did not decrypt: sealed for another row, edited, or
    /// under a key that is not in the key ring.
    #[error("stored template {0} failed to decrypt (moved from another row, edited, or its key is missing)")]
    TemplateSeal(i64),
    /// A stored row has values the code does not know.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Enroll of an id that exists.
    #[error("subject {0:?} already exists")]
    SubjectExists(String),
    /// No such subject.
    #[error("subject {0:?} not found")]
    SubjectNotFound(String),
    /// The audit chain does not verify: the first broken entry and why.
    #[error("audit log broken at entry {seq}: {problem}")]
    AuditBroken { seq: i64, problem: String },
    /// Audit checkpoints cannot be read, written or trusted.
    #[error("audit checkpoint: {0}")]
    Checkpoint(String),
}

impl StoreError {
    /// The file system is full: nothing was written, and the same call
    /// passes once there is room again.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Sqlite(e) => e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            StoreError::DataDir { source, .. } => source.kind() == std::io::ErrorKind::StorageFull,
            _ => false,
        }
    }
}

/// A subject as stored.
#[derive(Debug, Clone)]
pub struct SubjectRecord {
    /// Caller's id.
    pub subject_id: String,
    /// Creation time.
    pub created_ms: i64,
    /// Encounters, oldest first.
    pub encounters: Vec<EncounterRecord>,
    /// Watchlists it belongs to.
    pub watchlists: Vec<String>,
}

/// One enrollment session of a subject.
#[derive(Debug, Clone)]
pub struct EncounterRecord {
    /// Row id.
    pub encounter_id: i64,
    /// Creation time.
    pub created_ms: i64,
    /// Template summaries (modality, position, model, quality).
    pub templates: Vec<(Modality, u8, String, f32)>,
}

/// A subject in a listing: its counts rather than its encounters.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectSummary {
    /// The subject's id.
    pub subject_id: String,
    /// When it was first enrolled.
    pub created_ms: i64,
    /// Its encounters.
    pub encounters: u64,
    /// Its templates, all encounters.
    pub templates: u64,
    /// The watchlists it belongs to.
    pub watchlists: Vec<String>,
}

/// Gallery counts.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Subjects.
    pub subjects: u64,
    /// Encounters.
    pub encounters: u64,
    /// Templates per modality and model.
    pub templates: Vec<(Modality, String, u64)>,
}

/// What an enroll wrote.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The new encounter.
    pub encounter_id: i64,
    /// Row ids of the new templates, in input order.
    pub template_ids: Vec<i64>,
    /// Set when the request id was already used: nothing was written, and
    /// this is the first enroll's answer.
    pub replay: Option<EnrollReplay>,
    /// The enroll's place in the change log (0 in the embedded store).
    pub seq: i64,
}

impl Enrolled {
    /// A retried request id's answer: the first enroll's, nothing written.
    pub fn replayed(first: EnrollReplay) -> Self {
        Self { encounter_id: first.encounter_id, template_ids: Vec::new(), replay: Some(first), seq: 0 }
    }
}

/// The first answer to an enroll request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollReplay {
    /// The subject it enrolled.
    pub subject_id: String,
    /// The encounter it made.
    pub encounter_id: i64,
    /// The per-sample reports, as the engine serialized them.
    pub samples: String,
}

/// An enroll's idempotency key and the answer to keep for its retries.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    /// The caller's request id.
    pub request_id: &'a str,
    /// The per-sample reports (serialized by the engine).
    pub samples: &'a str,
}

/// The SQLite store: the one writer. Its reads ([`Reader`], reached
/// through `Deref`) run on the writer's connection; [`Store::read_pool`]
/// gives connections of their own, which under WAL neither wait for the
/// writer nor hold it up.
#[derive(Debug)]
pub struct Store {
    reader: Reader,
    dir: std::path::PathBuf,
    /// Held for the store's lifetime: a second server on the same data
    /// directory would build its own index and miss this one's writes.
    _lock: std::fs::File,
}

/// The sealed files of a data directory besides the database: the face
/// index's and the finger index's snapshots.
pub const SEALED_FILES: [&str; 2] = ["face-index.snap", "finger-index.snap"];

/// How long an open waits for the data directory's lock.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The query reading templates that match `clause`, ordered by `order`.
fn templates_sql(clause: &str, order: &str) -> String {
    format!(
        "SELECT template_id, subject_id, encounter_id, modality, finger_position, model_id, quality, sealed
         FROM templates WHERE {clause} ORDER BY {order}"
    )
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, with a hex key or the
    /// key file kept in `dir` (a development store).
    pub fn open(dir: &Path, hex_key: &str) -> Result<Self, StoreError> {
        Self::open_with_keys(dir, Path::new(""), hex_key)
    }

    /// Opens (creating if needed) the store in `dir`, its keys from
    /// `key_dir` when set ([`crypto`]), else as [`Store::open`].
    pub fn open_with_keys(dir: &Path, key_dir: &Path, hex_key: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
        let lock = std::fs::File::create(dir.join("LOCK"))
            .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
        // A server stopping in this process (or a crashed one's lock being
        // released) may hold it a moment longer: wait a little, then refuse.
        let waited = std::time::Instant::now();
        while let Err(e) = lock.try_lock() {
            if waited.elapsed() > LOCK_WAIT {
                return Err(StoreError::DataDir {
                    path: dir.display().to_string(),
                    source: std::io::Error::other(format!("in use by another cotejo process ({e})")),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let db = dir.join("cotejo.db");
        if key_dir.as_os_str().is_empty() && hex_key.is_empty() && db.exists() && !dir.join("template.key").exists() {
            // A new key would make every stored template unreadable.
            return Err(StoreError::Key(format!(
                "{} exists but its key file template.key is missing; restore it or set store.encryption_key",
                db.display()
            )));
        }
        let sealer = std::sync::Arc::new(Sealer::open(key_dir, hex_key, dir)?);
        let conn = Connection::open(&db)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Deleted rows and freed pages are overwritten with zeros, not left
        // in the file (erasure: see `delete_subject`).
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&conn, dir)?;
        conn.execute_batch(schema::SCHEMA)?;
        conn.execute_batch(jobs::SCHEMA)?;
        audit::create(&conn)?;
        Ok(Self { reader: Reader { conn, sealer }, dir: dir.to_owned(), _lock: lock })
    }

    /// A pool of read connections to this store's database, opening
    /// templates with its keys.
    pub fn read_pool(&self) -> std::sync::Arc<ReadPool> {
        ReadPool::new(self.dir.join("cotejo.db"), self.sealer.clone())
    }

    /// Stores a new encounter with `templates`. A new subject unless
    /// `add_encounter`, which also accepts an existing one.
    pub fn enroll(
        &mut self,
        subject_id: &str,
        add_encounter: bool,
        templates: &[NewTemplate],
        watchlists: &[String],
        actor: &Actor,
        key: Option<RequestKey<'_>>,
    ) -> Result<Enrolled, StoreError> {
        let now = now_ms();
        let tx = self.reader.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if let Some(k) = key
            && let Some(replay) = enroll_request(&tx, k.request_id)?
        {
            return Ok(Enrolled::replayed(replay));
        }
        let exists = subject_exists(&tx, subject_id)?;
        if exists && !add_encounter {
            return Err(StoreError::SubjectExists(subject_id.to_owned()));
        }
        if !exists && add_encounter {
            // An encounter is added to someone known; never resurrect a
            // deleted subject by accident.
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        if !exists {
            tx.execute("INSERT INTO subjects (subject_id, created_ms) VALUES (?1, ?2)", params![subject_id, now])?;
        }
        tx.execute("INSERT INTO encounters (subject_id, created_ms) VALUES (?1, ?2)", params![subject_id, now])?;
        let encounter_id = tx.last_insert_rowid();
        let mut template_ids = Vec::with_capacity(templates.len());
        for t in templates {
            // The row id is part of the associated data: the row first, then its seal.
            tx.execute(
                "INSERT INTO templates (encounter_id, subject_id, modality, finger_position, model_id, quality, sealed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, x'')",
                params![encounter_id, subject_id, t.modality.code(), t.finger_position, t.model_id, t.quality],
            )?;
            let id = tx.last_insert_rowid();
            let sealed = self.reader.sealer.seal(&t.data.to_bytes(), &template_aad(id, subject_id, t))?;
            tx.execute("UPDATE templates SET sealed = ?1 WHERE template_id = ?2", params![sealed, id])?;
            template_ids.push(id);
        }
        for g in watchlists {
            tx.execute(
                "INSERT OR IGNORE INTO watchlist_members (watchlist, subject_id) VALUES (?1, ?2)",
                params![g, subject_id],
            )?;
        }
        let record = AuditRecord::enrolled(actor, subject_id, encounter_id, templates.len(), watchlists);
        audit::append(&tx, now, &record)?;
        if let Some(k) = key {
            tx.execute(
                "INSERT INTO enroll_requests (request_id, subject_id, encounter_id, samples, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.request_id, subject_id, encounter_id, k.samples, now],
            )?;
        }
        commit(tx)?;
        Ok(Enrolled { encounter_id, template_ids, replay: None, seq: 0 })
    }

    /// Deletes a subject with all its encounters and templates; returns the
    /// removed template ids.
    pub fn delete_subject(&mut self, subject_id: &str, actor: &Actor) -> Result<Vec<i64>, StoreError> {
        self.delete_subject_unless_seen(subject_id, i64::MAX, actor)?
            .ok_or_else(|| StoreError::SubjectNotFound(subject_id.to_owned()))
    }

    /// Deletes a subject as [`Store::delete_subject`] does, unless it has an
    /// encounter from `since_ms` on (checked in the same transaction: a
    /// subject enrolled again meanwhile is kept); `None` when kept.
    pub fn delete_subject_unless_seen(
        &mut self,
        subject_id: &str,
        since_ms: i64,
        actor: &Actor,
    ) -> Result<Option<Vec<i64>>, StoreError> {
        let tx = self.reader.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !subject_exists(&tx, subject_id)? {
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        let latest: i64 = tx.query_row(
            "SELECT COALESCE(MAX(created_ms), 0) FROM encounters WHERE subject_id = ?1",
            [subject_id],
            |r| r.get(0),
        )?;
        if latest >= since_ms {
            return Ok(None);
        }
        let ids = {
            let mut st = tx.prepare("SELECT template_id FROM templates WHERE subject_id = ?1")?;
            st.query_map([subject_id], |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?
        };
        tx.execute("DELETE FROM templates WHERE subject_id = ?1", [subject_id])?;
        // Deletion is final: no job result names the subject any more either.
        tx.execute("DELETE FROM job_pairs WHERE a = ?1 OR b = ?1", [subject_id])?;
        tx.execute("DELETE FROM enroll_requests WHERE subject_id = ?1", [subject_id])?;
        tx.execute("DELETE FROM subjects WHERE subject_id = ?1", [subject_id])?;
        let record = AuditRecord::deleted(actor, subject_id, ids.len());
        audit::append(&tx, now_ms(), &record)?;
        commit(tx)?;
        self.erase_wal();
        Ok(Some(ids))
    }

    /// A sealed file of derived data in the data directory (usable without
    /// holding the store).
    pub fn sealed_file(&self, name: &str) -> SealedFile {
        SealedFile::new(self.sealer.clone(), &self.dir, name)
    }
}

impl Store {
    /// Reads the key directory again (a key added or made active by a
    /// rotation); the active key's id.
    pub fn reload_keys(&self) -> Result<KeyId, StoreError> {
        self.sealer.reload(&self.dir)
    }

    /// The key new records are sealed with.
    pub fn active_key(&self) -> KeyId {
        self.sealer.active()
    }

    /// Records a call in the audit log (its own transaction, durable on return).
    pub fn audit(&mut self, record: &AuditRecord) -> Result<(), StoreError> {
        let tx = self.reader.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        audit::append(&tx, now_ms(), record)?;
        commit(tx)?;
        Ok(())
    }
}

/// Commits a write transaction, its time to durable observed.
fn commit(tx: rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let t = std::time::Instant::now();
    tx.commit()?;
    crate::metrics::observed().commit(t.elapsed());
    Ok(())
}

impl std::ops::Deref for Store {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        &self.reader
    }
}

impl std::ops::DerefMut for Store {
    fn deref_mut(&mut self) -> &mut Reader {
        &mut self.reader
    }
}

fn enroll_request(conn: &Connection, request_id: &str) -> Result<Option<EnrollReplay>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT subject_id, encounter_id, samples FROM enroll_requests WHERE request_id = ?1",
            [request_id],
            |r| Ok(EnrollReplay { subject_id: r.get(0)?, encounter_id: r.get(1)?, samples: r.get(2)? }),
        )
        .optional()?)
}

fn subject_exists(conn: &Connection, subject_id: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row("SELECT 1 FROM subjects WHERE subject_id = ?1", [subject_id], |_| Ok(())).optional()?.is_some())
}

/// Associated data binding a sealed template to its row, owner and kind
/// (records written before key ids: to its owner and kind only).
fn template_aad(template_id: i64, subject_id: &str, t: &NewTemplate) -> Vec<u8> {
    let mut aad = b"template\0".to_vec();
    aad.extend_from_slice(&template_id.to_le_bytes());
    aad.extend_from_slice(&legacy_aad(subject_id, t));
    aad
}

fn legacy_aad(subject_id: &str, t: &NewTemplate) -> Vec<u8> {
    format!("{subject_id}\u{0}{}\u{0}{}\u{0}{}", t.modality.code(), t.finger_position, t.model_id).into_bytes()
}

/// The plaintext of a template row; a row that does not open (another
/// row's seal, an edit, a missing key) is named.
fn open_template(
    sealer: &Sealer,
    sealed: &[u8],
    template_id: i64,
    subject_id: &str,
    t: &NewTemplate,
) -> Result<Vec<u8>, StoreError> {
    sealer
        .open_sealed_with(sealed, |named| {
            if named { template_aad(template_id, subject_id, t) } else { legacy_aad(subject_id, t) }
        })
        .map_err(|_| StoreError::TemplateSeal(template_id))
}

/// The modality stored as `code`.
fn modality(code: i64) -> Result<Modality, StoreError> {
    Modality::from_code(code).ok_or_else(|| StoreError::Corrupt(format!("modality {code}")))
}

/// `t` (read from its row, without data) with its data opened from `sealed`.
fn unsealed(
    sealer: &Sealer,
    sealed: &[u8],
    template_id: i64,
    subject_id: &str,
    mut t: NewTemplate,
) -> Result<NewTemplate, StoreError> {
    let plain = open_template(sealer, sealed, template_id, subject_id, &t)?;
    t.data =
        TemplateData::from_bytes(t.modality, plain).ok_or_else(|| StoreError::Corrupt("template length".into()))?;
    Ok(t)
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
