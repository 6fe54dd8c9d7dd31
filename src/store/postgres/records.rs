//! Subjects, their sealed templates and the audit chain in PostgreSQL,
//! behind the engine's [`Records`] interface: every write is one
//! transaction with its audit entry and its change row, which takes its
//! number under the audit lock so change rows commit in sequence order, and
//! notifies the nodes that follow the log.

use std::{collections::BTreeMap, path::Path, sync::Arc};

use deadpool_postgres::Pool;
use tokio::runtime::Handle;
use tokio_postgres::{GenericClient, Row, Transaction, types::ToSql};

use super::{append_audit, audit_entries, open, pg, read_only_snapshot, verify_audit};
use crate::{
    biometric::{NewTemplate, StoredTemplate, TemplateData},
    shard::Shard,
    store::{
        Actor, AuditEntry, AuditRecord, ChainCheck, Checkpoint, EncounterRecord, EnrollReplay, Enrolled, KeyId,
        Records, Removed, RequestKey, SealedFile, StoreError, StoreStats, SubjectRecord, SubjectSummary,
        crypto::Sealer, modality, now_ms, subjects::expired, template_aad, unsealed,
    },
};

/// The channel change notifications go out on (the payload is the sequence number).
pub const CHANGES_CHANNEL: &str = "cotejo_changes";

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Its place in the log.
    pub seq: i64,
    /// The subject enrolled or deleted.
    pub subject_id: String,
    /// `true` for a deletion.
    pub deleted: bool,
    /// Templates added (enroll) or removed (deletion).
    pub template_ids: Vec<i64>,
    /// +1 for a new subject, -1 for a deletion, 0 for an encounter added.
    pub subjects_delta: i64,
}

/// Subjects and their sealed templates in PostgreSQL: the pool and the keys
/// that seal and open templates (from `key_dir`, or a hex key; never the
/// database).
#[derive(Debug, Clone)]
pub struct PgRecords {
    pub(super) pool: Pool,
    pub(super) sealer: Arc<Sealer>,
    /// The runtime the blocking [`Records`] calls run their queries on.
    handle: Handle,
    /// Whether the database is a read-only streaming replica.
    replica: bool,
    /// On a replica, the node's own audit chain (an embedded store in its
    /// data directory): the calls it serves are recorded where it can write.
    local_audit: Option<crate::store::SqliteRecords>,
}

impl PgRecords {
    /// Opens (and migrates) the database at `url`, with the keys in
    /// `key_dir` or the hex key. Called inside a tokio runtime, which the
    /// blocking [`Records`] calls then use.
    pub async fn open(url: &str, key_dir: &Path, hex_key: &str, max_connections: usize) -> Result<Self, StoreError> {
        if key_dir.as_os_str().is_empty() && hex_key.is_empty() {
            return Err(StoreError::Key("a PostgreSQL store needs store.key_dir or store.encryption_key".into()));
        }
        let sealer = Arc::new(Sealer::open(key_dir, hex_key, Path::new(""))?);
        let pool = open(url, max_connections).await?;
        let replica = super::is_replica(&*pool.get().await.map_err(pg)?).await?;
        Ok(Self { pool, sealer, handle: Handle::current(), replica, local_audit: None })
    }

    /// Whether `store.url` is a read-only streaming replica.
    pub fn is_replica(&self) -> bool {
        self.replica
    }

    /// Records the audit in `local` (a replica's node: it cannot write the
    /// shared chain).
    pub fn audit_locally(mut self, local: crate::store::SqliteRecords) -> Self {
        self.local_audit = Some(local);
        self
    }

    /// A sealed file of this node's derived data in `dir`, sealed with the store's keys.
    pub fn sealed_file(&self, dir: &Path, name: &str) -> SealedFile {
        SealedFile::new(self.sealer.clone(), dir, name)
    }

    /// The pool (for the audit walk and the tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs a query future to its end from a blocking thread.
    pub fn block<T>(&self, f: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        self.handle.block_on(f)
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pg)
    }

    /// One query's rows on a pooled connection, from a blocking thread.
    pub(super) fn query_blocking(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        self.block(async { self.client().await?.query(sql, params).await.map_err(pg) })
    }

    /// Stores a new encounter with `templates`, sealed: a new subject unless
    /// `add_encounter`, which needs an existing one. In one transaction with
    /// its watchlist memberships, its change row and its audit entry;
    /// durable when this returns. A request id used before gets the first
    /// answer and writes nothing (retries of one id are serialised by an
    /// advisory lock on it).
    pub async fn enroll_async(
        &self,
        subject_id: &str,
        add_encounter: bool,
        templates: &[NewTemplate],
        watchlists: &[String],
        actor: &Actor,
        key: Option<RequestKey<'_>>,
    ) -> Result<Enrolled, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let now = now_ms();
        if let Some(k) = key {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&k.request_id]).await.map_err(pg)?;
            if let Some(replay) = first_answer(&*tx, k.request_id).await? {
                return Ok(Enrolled::replayed(replay));
            }
        }
        if add_encounter {
            // Held to the end: a concurrent deletion waits, then takes the new encounter with it.
            let known = tx
                .query_opt("SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE", &[&subject_id])
                .await
                .map_err(pg)?;
            if known.is_none() {
                return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
            }
        } else {
            let inserted = tx
                .execute(
                    "INSERT INTO subjects (subject_id, created_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&subject_id, &now],
                )
                .await
                .map_err(pg)?;
            if inserted == 0 {
                return Err(StoreError::SubjectExists(subject_id.to_owned()));
            }
        }
        let encounter_id: i64 = tx
            .query_one(
                "INSERT INTO encounters (subject_id, created_ms) VALUES ($1, $2) RETURNING encounter_id",
                &[&subject_id, &now],
            )
            .await
            .map_err(pg)?
            .get(0);
        let ids = self.insert_templates(&tx, subject_id, encounter_id, templates).await?;
        for w in watchlists {
            tx.execute(
                "INSERT INTO watchlist_members (watchlist, subject_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[w, &subject_id],
            )
            .await
            .map_err(pg)?;
        }
        let record = AuditRecord::enrolled(actor, subject_id, encounter_id, templates.len(), watchlists);
        append_audit(&tx, now, &record).await?;
        let delta: i16 = if add_encounter { 0 } else { 1 };
        let seq = log_change(&tx, subject_id, "enroll", &ids, delta, now).await?;
        if let Some(k) = key {
            tx.execute(
                "INSERT INTO enroll_requests (request_id, subject_id, encounter_id, samples, created_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&k.request_id, &subject_id, &encounter_id, &k.samples, &now],
            )
            .await
            .map_err(pg)?;
        }
        commit(tx).await?;
        Ok(Enrolled { encounter_id, template_ids: ids, replay: None, seq })
    }

    /// Inserts the sealed templates of one encounter; their ids, in order.
    async fn insert_templates(
        &self,
        tx: &Transaction<'_>,
        subject_id: &str,
        encounter_id: i64,
        templates: &[NewTemplate],
    ) -> Result<Vec<i64>, StoreError> {
        let shard_key = Shard::key(subject_id);
        let mut ids = Vec::with_capacity(templates.len());
        for t in templates {
            // The row id is part of the associated data: taken first, then sealed.
            let id: i64 = tx.query_one("SELECT nextval('templates_template_id_seq')", &[]).await.map_err(pg)?.get(0);
            let sealed = self.sealer.seal(&t.data.to_bytes(), &template_aad(id, subject_id, t))?;
            let (modality, position) = (t.modality.code() as i16, i16::from(t.finger_position));
            tx.execute(
                "INSERT INTO templates (template_id, encounter_id, subject_id, shard_key, modality, finger_position, model_id, quality, sealed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[&id, &encounter_id, &subject_id, &shard_key, &modality, &position, &t.model_id, &t.quality, &sealed],
            )
            .await
            .map_err(pg)?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// Deletes a subject with everything it owns, unless it has an
    /// encounter from `since_ms` on (checked under the subject's row lock);
    /// its change row and audit entry in the same transaction.
    pub async fn delete_async(
        &self,
        subject_id: &str,
        since_ms: i64,
        actor: &Actor,
    ) -> Result<Option<Removed>, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let known = tx
            .query_opt("SELECT 1 FROM subjects WHERE subject_id = $1 FOR UPDATE", &[&subject_id])
            .await
            .map_err(pg)?;
        if known.is_none() {
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        let latest: i64 = tx
            .query_one("SELECT COALESCE(MAX(created_ms), 0) FROM encounters WHERE subject_id = $1", &[&subject_id])
            .await
            .map_err(pg)?
            .get(0);
        if latest >= since_ms {
            return Ok(None);
        }
        let rows = tx
            .query("DELETE FROM templates WHERE subject_id = $1 RETURNING template_id", &[&subject_id])
            .await
            .map_err(pg)?;
        let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        ids.sort_unstable();
        // Deletion is final: no job result names the subject any more either.
        tx.execute("DELETE FROM job_pairs WHERE a = $1 OR b = $1", &[&subject_id]).await.map_err(pg)?;
        tx.execute("DELETE FROM enroll_requests WHERE subject_id = $1", &[&subject_id]).await.map_err(pg)?;
        tx.execute("DELETE FROM subjects WHERE subject_id = $1", &[&subject_id]).await.map_err(pg)?;
        let now = now_ms();
        append_audit(&tx, now, &AuditRecord::deleted(actor, subject_id, ids.len())).await?;
        let seq = log_change(&tx, subject_id, "delete", &ids, -1, now).await?;
        commit(tx).await?;
        Ok(Some(Removed { template_ids: ids, seq }))
    }

    /// Every template of one subject, opened, oldest first.
    pub async fn subject_templates_async(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT t.template_id, t.encounter_id, t.modality, t.finger_position, t.model_id, t.quality, t.sealed
                 FROM subjects s LEFT JOIN templates t ON t.subject_id = s.subject_id
                 WHERE s.subject_id = $1 ORDER BY t.template_id",
                &[&subject_id],
            )
            .await
            .map_err(pg)?;
        if rows.is_empty() {
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let Some(template_id) = r.get::<_, Option<i64>>(0) else { continue };
            out.push(self.open_row(template_id, subject_id.to_owned(), &r, 1)?);
        }
        Ok(out)
    }

    /// A template row opened: `first` is the column of its encounter id,
    /// followed by modality, position, model, quality and the sealed bytes.
    pub(super) fn open_row(
        &self,
        template_id: i64,
        subject_id: String,
        r: &tokio_postgres::Row,
        first: usize,
    ) -> Result<StoredTemplate, StoreError> {
        let position =
            u8::try_from(r.get::<_, i16>(first + 2)).map_err(|_| StoreError::Corrupt("finger position".into()))?;
        let row = NewTemplate {
            modality: modality(i64::from(r.get::<_, i16>(first + 1)))?,
            finger_position: position,
            model_id: r.get(first + 3),
            quality: r.get(first + 4),
            data: TemplateData::Minutiae(Vec::new()),
        };
        let sealed: Vec<u8> = r.get(first + 5);
        let template = unsealed(&self.sealer, &sealed, template_id, &subject_id, row)?;
        Ok(StoredTemplate { template_id, subject_id, encounter_id: r.get(first), template })
    }

    async fn subject_async(&self, subject_id: &str) -> Result<SubjectRecord, StoreError> {
        let c = self.client().await?;
        let created_ms: i64 = c
            .query_opt("SELECT created_ms FROM subjects WHERE subject_id = $1", &[&subject_id])
            .await
            .map_err(pg)?
            .ok_or_else(|| StoreError::SubjectNotFound(subject_id.to_owned()))?
            .get(0);
        let rows = c
            .query(
                "SELECT e.encounter_id, e.created_ms, t.modality, t.finger_position, t.model_id, t.quality
                 FROM encounters e LEFT JOIN templates t ON t.encounter_id = e.encounter_id
                 WHERE e.subject_id = $1 ORDER BY e.encounter_id, t.template_id",
                &[&subject_id],
            )
            .await
            .map_err(pg)?;
        let mut encounters: Vec<EncounterRecord> = Vec::new();
        for r in rows {
            let encounter_id: i64 = r.get(0);
            if encounters.last().is_none_or(|e| e.encounter_id != encounter_id) {
                encounters.push(EncounterRecord { encounter_id, created_ms: r.get(1), templates: Vec::new() });
            }
            if let Some(code) = r.get::<_, Option<i16>>(2) {
                let position = u8::try_from(r.get::<_, i16>(3)).unwrap_or(0);
                let t = (modality(i64::from(code))?, position, r.get(4), r.get(5));
                if let Some(e) = encounters.last_mut() {
                    e.templates.push(t);
                }
            }
        }
        let watchlists = subject_watchlists(&c, subject_id).await?;
        Ok(SubjectRecord { subject_id: subject_id.to_owned(), created_ms, encounters, watchlists })
    }

    async fn list_subjects_async(
        &self,
        after: &str,
        limit: usize,
        watchlist: &str,
    ) -> Result<Vec<SubjectSummary>, StoreError> {
        let c = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = c
            .query(
                "SELECT s.subject_id, s.created_ms,
                    (SELECT COUNT(*) FROM encounters e WHERE e.subject_id = s.subject_id),
                    (SELECT COUNT(*) FROM templates t WHERE t.subject_id = s.subject_id)
                 FROM subjects s WHERE s.subject_id > $1
                   AND ($3 = '' OR s.subject_id IN (SELECT subject_id FROM watchlist_members WHERE watchlist = $3))
                 ORDER BY s.subject_id LIMIT $2",
                &[&after, &limit, &watchlist],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let subject_id: String = r.get(0);
            let watchlists = subject_watchlists(&c, &subject_id).await?;
            out.push(SubjectSummary {
                subject_id,
                created_ms: r.get(1),
                encounters: r.get::<_, i64>(2) as u64,
                templates: r.get::<_, i64>(3) as u64,
                watchlists,
            });
        }
        Ok(out)
    }

    async fn stats_async(&self) -> Result<StoreStats, StoreError> {
        let c = self.client().await?;
        let subjects: i64 = c.query_one("SELECT COUNT(*) FROM subjects", &[]).await.map_err(pg)?.get(0);
        let encounters: i64 = c.query_one("SELECT COUNT(*) FROM encounters", &[]).await.map_err(pg)?.get(0);
        let rows = c
            .query("SELECT modality, model_id, COUNT(*) FROM templates GROUP BY 1, 2 ORDER BY 1, 2", &[])
            .await
            .map_err(pg)?;
        let mut templates = Vec::with_capacity(rows.len());
        for r in rows {
            templates.push((modality(i64::from(r.get::<_, i16>(0)))?, r.get(1), r.get::<_, i64>(2) as u64));
        }
        Ok(StoreStats { subjects: subjects as u64, encounters: encounters as u64, templates })
    }

    /// The changes after `after`, in sequence, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<Change>, StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT seq, subject_id, kind, template_ids, subjects_delta FROM changes
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &limit],
            )
            .await
            .map_err(pg)?;
        Ok(rows
            .iter()
            .map(|r| Change {
                seq: r.get(0),
                subject_id: r.get(1),
                deleted: r.get::<_, String>(2) == "delete",
                template_ids: r.get(3),
                subjects_delta: i64::from(r.get::<_, i16>(4)),
            })
            .collect())
    }

    /// The last change's number and the subjects counted at it (one snapshot).
    pub async fn high_water(&self) -> Result<(i64, u64), StoreError> {
        let mut c = self.client().await?;
        let tx = read_only_snapshot(&mut c).await?;
        let seq: i64 = tx.query_one("SELECT COALESCE(MAX(seq), 0) FROM changes", &[]).await.map_err(pg)?.get(0);
        let subjects: i64 = tx.query_one("SELECT COUNT(*) FROM subjects", &[]).await.map_err(pg)?.get(0);
        tx.commit().await.map_err(pg)?;
        Ok((seq, subjects as u64))
    }
}

/// The first answer to a request id, if it was used.
async fn first_answer(c: &impl GenericClient, request_id: &str) -> Result<Option<EnrollReplay>, StoreError> {
    let row = c
        .query_opt(
            "SELECT subject_id, encounter_id, samples FROM enroll_requests WHERE request_id = $1",
            &[&request_id],
        )
        .await
        .map_err(pg)?;
    Ok(row.map(|r| EnrollReplay { subject_id: r.get(0), encounter_id: r.get(1), samples: r.get(2) }))
}

/// Writes the change row (after the audit append, under its lock) and its
/// notification, sent when the transaction commits; the row's number.
async fn log_change(
    tx: &Transaction<'_>,
    subject_id: &str,
    kind: &str,
    ids: &[i64],
    subjects_delta: i16,
    now: i64,
) -> Result<i64, StoreError> {
    let seq: i64 = tx
        .query_one(
            "INSERT INTO changes (subject_id, shard_key, kind, template_ids, subjects_delta, at_ms)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq",
            &[&subject_id, &Shard::key(subject_id), &kind, &ids, &subjects_delta, &now],
        )
        .await
        .map_err(pg)?
        .get(0);
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANGES_CHANNEL, &seq.to_string()]).await.map_err(pg)?;
    Ok(seq)
}

async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), StoreError> {
    let t = std::time::Instant::now();
    tx.commit().await.map_err(pg)?;
    crate::metrics::observed().commit(t.elapsed());
    Ok(())
}

async fn subject_watchlists(c: &tokio_postgres::Client, subject_id: &str) -> Result<Vec<String>, StoreError> {
    let rows = c
        .query("SELECT watchlist FROM watchlist_members WHERE subject_id = $1 ORDER BY watchlist", &[&subject_id])
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

impl Records for PgRecords {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn reload_keys(&self) -> Result<KeyId, StoreError> {
        self.sealer.reload(Path::new(""))
    }

    fn active_key(&self) -> KeyId {
        self.sealer.active()
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
        self.block(self.enroll_async(subject_id, add_encounter, templates, watchlists, actor, key))
    }

    fn delete_unless_seen(
        &self,
        subject_id: &str,
        since_ms: i64,
        actor: &Actor,
    ) -> Result<Option<Removed>, StoreError> {
        self.block(self.delete_async(subject_id, since_ms, actor))
    }

    fn enroll_request(&self, request_id: &str) -> Result<Option<EnrollReplay>, StoreError> {
        self.block(async { first_answer(&**self.client().await?, request_id).await })
    }

    fn subject(&self, subject_id: &str) -> Result<SubjectRecord, StoreError> {
        self.block(self.subject_async(subject_id))
    }

    fn subject_templates(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        self.block(self.subject_templates_async(subject_id))
    }

    fn watchlist_members(&self, watchlist: &str) -> Result<Vec<String>, StoreError> {
        let rows = self.query_blocking(
            "SELECT subject_id FROM watchlist_members WHERE watchlist = $1 ORDER BY subject_id",
            &[&watchlist],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn list_subjects(&self, after: &str, limit: usize, watchlist: &str) -> Result<Vec<SubjectSummary>, StoreError> {
        self.block(self.list_subjects_async(after, limit, watchlist))
    }

    fn expired_subjects(
        &self,
        retention_days: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self.query_blocking(
            "SELECT m.subject_id, m.watchlist,
                (SELECT MAX(e.created_ms) FROM encounters e WHERE e.subject_id = m.subject_id)
             FROM watchlist_members m ORDER BY m.subject_id",
            &[],
        )?;
        let memberships = rows.iter().map(|r| (r.get(0), r.get(1), r.get::<_, Option<i64>>(2).unwrap_or(0)));
        Ok(expired(memberships, retention_days, now_ms))
    }

    fn stats(&self) -> Result<StoreStats, StoreError> {
        self.block(self.stats_async())
    }

    fn audit(&self, record: &AuditRecord) -> Result<(), StoreError> {
        if let Some(local) = &self.local_audit {
            return local.audit(record);
        }
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await.map_err(pg)?;
            append_audit(&tx, now_ms(), record).await?;
            commit(tx).await
        })
    }

    fn audit_entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        if let Some(local) = &self.local_audit {
            return local.audit_entries(from_seq, limit);
        }
        self.block(async {
            let c = self.client().await?;
            audit_entries(&c, from_seq, limit).await
        })
    }

    fn verify_audit(&self, checkpoint: Option<&Checkpoint>, from_checkpoint: bool) -> Result<ChainCheck, StoreError> {
        if let Some(local) = &self.local_audit {
            return local.verify_audit(checkpoint, from_checkpoint);
        }
        if checkpoint.is_some() {
            return Err(StoreError::Checkpoint("signed checkpoints are kept for the embedded store only".into()));
        }
        self.block(async {
            let mut c = self.client().await?;
            verify_audit(&mut c).await
        })
    }

    fn probe(&self) -> Result<(), StoreError> {
        if let Some(local) = &self.local_audit {
            // A replica takes no writes: its reads and its own audit's commits.
            self.query_blocking("SELECT 1", &[])?;
            return local.probe();
        }
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO health_probe (id, at_ms) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at_ms = $1",
                &[&now_ms()],
            )
            .await
            .map_err(pg)?;
            Ok(())
        })
    }
}
