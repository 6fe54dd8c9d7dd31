//! The one store interface the engine uses, with its two implementations:
//! the embedded SQLite store ([`SqliteRecords`]: one writer, pooled WAL
//! readers) and PostgreSQL ([`super::postgres::PgRecords`]). Calls block;
//! the engine makes them on the blocking pool. [`TemplateSource`] is what
//! the derived indexes are loaded from.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use super::{
    Actor, AuditEntry, AuditRecord, ChainCheck, Checkpoint, EnrollReplay, Enrolled, KeyId, ReadPool, Reader,
    RequestKey, Store, StoreError, StoreStats, SubjectRecord, SubjectSummary,
};
use crate::biometric::{Modality, NewTemplate, StoredTemplate};

/// What a deletion removed.
#[derive(Debug, Clone, Default)]
pub struct Removed {
    /// The subject's template ids.
    pub template_ids: Vec<i64>,
    /// The deletion's place in the change log (0 in the embedded store).
    pub seq: i64,
}

/// Subjects' records: enrolled, read, listed and deleted with the
/// semantics of the embedded store on either backend. Every write is
/// durable and audited in the same transaction when it returns.
pub trait Records: Send + Sync + std::fmt::Debug {
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// Stores a new encounter with `templates`: a new subject unless
    /// `add_encounter`, which needs an existing one. A request id used
    /// before gets the first answer and writes nothing.
    fn enroll(
        &self,
        subject_id: &str,
        add_encounter: bool,
        templates: &[NewTemplate],
        watchlists: &[String],
        actor: &Actor,
        key: Option<RequestKey<'_>>,
    ) -> Result<Enrolled, StoreError>;

    /// Deletes a subject with everything it owns, unless it has an
    /// encounter from `since_ms` on (`None`: kept).
    fn delete_unless_seen(&self, subject_id: &str, since_ms: i64, actor: &Actor)
    -> Result<Option<Removed>, StoreError>;

    /// The first answer to an enroll request id, if it was used.
    fn enroll_request(&self, request_id: &str) -> Result<Option<EnrollReplay>, StoreError>;

    /// A subject's encounters and watchlists.
    fn subject(&self, subject_id: &str) -> Result<SubjectRecord, StoreError>;

    /// Every template of one subject, opened, oldest first.
    fn subject_templates(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError>;

    /// The members of a watchlist, in id order.
    fn watchlist_members(&self, watchlist: &str) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` subjects after `after` in id order (of `watchlist` only when not empty).
    fn list_subjects(&self, after: &str, limit: usize, watchlist: &str) -> Result<Vec<SubjectSummary>, StoreError>;

    /// Subjects past their watchlists' retention at `now_ms`, with the cutoff each was judged by.
    fn expired_subjects(
        &self,
        retention_days: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError>;

    /// Gallery counts.
    fn stats(&self) -> Result<StoreStats, StoreError>;

    /// Appends one call's audit entry; durable when this returns.
    fn audit(&self, record: &AuditRecord) -> Result<(), StoreError>;

    /// Up to `limit` audit entries from `from_seq` on, oldest first.
    fn audit_entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// Checks the audit chain: from the start, or (`from_checkpoint`) from
    /// the signed checkpoint on.
    fn verify_audit(&self, checkpoint: Option<&Checkpoint>, from_checkpoint: bool) -> Result<ChainCheck, StoreError>;

    /// Commits one small write: fails while the store cannot commit.
    fn probe(&self) -> Result<(), StoreError>;

    /// Reads the key directory again (a key added or made active by a
    /// rotation); the active key's id.
    fn reload_keys(&self) -> Result<KeyId, StoreError>;

    /// The key new records are sealed with.
    fn active_key(&self) -> KeyId;
}

/// Where the derived indexes are loaded from: every live template of a
/// modality, or some by id.
pub trait TemplateSource {
    /// Every live template of a modality and model: (template id, owner), in id order.
    fn template_owners(&self, modality: Modality, model_id: &str) -> Result<Vec<(i64, String)>, StoreError>;

    /// Every live template of a modality: (template id, owner, finger position).
    fn template_positions(&self, modality: Modality) -> Result<Vec<(i64, String, u8)>, StoreError>;

    /// The templates with these ids (those that exist), opened, in id order.
    fn templates_with_ids(&self, ids: &[i64]) -> Result<Vec<StoredTemplate>, StoreError>;

    /// Streams every template of a modality to `sink`, opened.
    fn each_template(
        &self,
        modality: Modality,
        sink: &mut dyn FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
}

impl TemplateSource for Reader {
    fn template_owners(&self, modality: Modality, model_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        Reader::template_owners(self, modality, model_id)
    }

    fn template_positions(&self, modality: Modality) -> Result<Vec<(i64, String, u8)>, StoreError> {
        Reader::template_positions(self, modality)
    }

    fn templates_with_ids(&self, ids: &[i64]) -> Result<Vec<StoredTemplate>, StoreError> {
        Reader::templates_with_ids(self, ids)
    }

    fn each_template(
        &self,
        modality: Modality,
        sink: &mut dyn FnMut(StoredTemplate) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_template(modality, sink)
    }
}

/// The embedded store behind [`Records`]: writes on the one writer
/// connection, reads on pooled connections of their own.
#[derive(Debug, Clone)]
pub struct SqliteRecords {
    /// The one writer.
    pub writer: Arc<Mutex<Store>>,
    /// Read connections.
    pub reads: Arc<ReadPool>,
    /// The job runner's place in each job.
    pub(super) claims: Arc<super::job_store::SqliteClaims>,
}

impl SqliteRecords {
    /// The writer and a pool of readers on `store`.
    pub fn new(store: Store) -> Self {
        let reads = store.read_pool();
        Self { writer: Arc::new(Mutex::new(store)), reads, claims: Arc::default() }
    }

    pub(super) fn writer(&self) -> Result<std::sync::MutexGuard<'_, Store>, StoreError> {
        self.writer.lock().map_err(|_| StoreError::Corrupt("store lock poisoned".into()))
    }
}

impl Records for SqliteRecords {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn enroll(
        &self,
        subject_id: &str,
        add_encounter: bool,
        templates: &[NewTemplate],
        watchlists: &[String],
        actor: &Actor,
        key: Option<RequestKey<'_>>,
    ) -> Result<Enrolled, StoreError> {
        self.writer()?.enroll(subject_id, add_encounter, templates, watchlists, actor, key)
    }

    fn delete_unless_seen(
        &self,
        subject_id: &str,
        since_ms: i64,
        actor: &Actor,
    ) -> Result<Option<Removed>, StoreError> {
        let ids = self.writer()?.delete_subject_unless_seen(subject_id, since_ms, actor)?;
        Ok(ids.map(|template_ids| Removed { template_ids, seq: 0 }))
    }

    fn enroll_request(&self, request_id: &str) -> Result<Option<EnrollReplay>, StoreError> {
        self.reads.get()?.enroll_request(request_id)
    }

    fn subject(&self, subject_id: &str) -> Result<SubjectRecord, StoreError> {
        self.reads.get()?.subject(subject_id)
    }

    fn subject_templates(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        self.reads.get()?.subject_templates(subject_id)
    }

    fn watchlist_members(&self, watchlist: &str) -> Result<Vec<String>, StoreError> {
        self.reads.get()?.watchlist_members(watchlist)
    }

    fn list_subjects(&self, after: &str, limit: usize, watchlist: &str) -> Result<Vec<SubjectSummary>, StoreError> {
        self.reads.get()?.list_subjects(after, limit, watchlist)
    }

    fn expired_subjects(
        &self,
        retention_days: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        self.reads.get()?.expired_subjects(retention_days, now_ms)
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.reads.get()?.stats()
    }

    fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        self.writer()?.audit(record)
    }

    fn audit_entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.reads.get()?.audit_entries(from_seq, limit)
    }

    fn verify_audit(&self, checkpoint: Option<&Checkpoint>, from_checkpoint: bool) -> Result<ChainCheck, StoreError> {
        self.reads.get()?.verify_audit(checkpoint, from_checkpoint)
    }

    fn probe(&self) -> Result<(), StoreError> {
        self.writer()?.probe_commit()
    }

    fn reload_keys(&self) -> Result<KeyId, StoreError> {
        self.writer()?.reload_keys()
    }

    fn active_key(&self) -> KeyId {
        self.reads.active_key()
    }
}
