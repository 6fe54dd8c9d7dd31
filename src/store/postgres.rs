//! PostgreSQL as the system of record, for more than one machine: a pool of
//! connections (deadpool over tokio-postgres) and the versioned schema,
//! migrated under an advisory lock so that nodes starting together apply
//! each version once. The tables mirror the embedded store's, plus the
//! change log shard nodes follow and the claims of cluster job blocks.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use std::{path::Path, sync::Arc};

use super::{
    Actor, AuditRecord, ChainCheck, EnrollReplay, Enrolled, RequestKey, StoreError,
    audit::{check_link, next_entry, subjects_json},
    crypto::Sealer,
    modality, now_ms, template_aad, unsealed,
};
use crate::biometric::{NewTemplate, StoredTemplate, TemplateData};

/// The schema, one entry per version, applied in order and never edited
/// once released (a change is a new version).
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r"
CREATE TABLE subjects (
    subject_id TEXT PRIMARY KEY,
    created_ms BIGINT NOT NULL
);
CREATE TABLE encounters (
    encounter_id BIGSERIAL PRIMARY KEY,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    created_ms BIGINT NOT NULL
);
CREATE INDEX encounters_subject ON encounters(subject_id);
CREATE TABLE templates (
    template_id BIGSERIAL PRIMARY KEY,
    encounter_id BIGINT NOT NULL REFERENCES encounters(encounter_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL,
    modality SMALLINT NOT NULL,
    finger_position SMALLINT NOT NULL,
    model_id TEXT NOT NULL,
    quality REAL NOT NULL,
    sealed BYTEA NOT NULL
);
CREATE INDEX templates_subject ON templates(subject_id);
CREATE INDEX templates_encounter ON templates(encounter_id);
CREATE INDEX templates_owner ON templates(modality, model_id, subject_id);
CREATE TABLE watchlist_members (
    watchlist TEXT NOT NULL,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    PRIMARY KEY (watchlist, subject_id)
);
CREATE INDEX watchlist_members_subject ON watchlist_members(subject_id);
CREATE TABLE enroll_requests (
    request_id TEXT PRIMARY KEY,
    subject_id TEXT NOT NULL,
    encounter_id BIGINT NOT NULL,
    samples TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX enroll_requests_subject ON enroll_requests(subject_id);
-- What shard nodes follow: one row per enroll or deletion, in sequence.
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    subject_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('enroll', 'delete')),
    at_ms BIGINT NOT NULL
);
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    format INTEGER NOT NULL,
    method TEXT NOT NULL,
    caller TEXT NOT NULL,
    role TEXT NOT NULL,
    request_id TEXT NOT NULL,
    subjects TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    hash BYTEA NOT NULL
);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only';
END
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TABLE jobs (
    job_id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    max_template_id BIGINT NOT NULL,
    total BIGINT NOT NULL DEFAULT 0,
    done BIGINT NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
-- A block is claimed by a worker node (FOR UPDATE SKIP LOCKED) and done once.
CREATE TABLE job_blocks (
    job_id BIGINT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    block BIGINT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT FALSE,
    claimed_by TEXT NOT NULL DEFAULT '',
    claimed_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, block)
);
CREATE TABLE job_pairs (
    job_id BIGINT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    component TEXT NOT NULL,
    raw DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, a, b, component)
);
CREATE INDEX job_pairs_a ON job_pairs(a);
CREATE INDEX job_pairs_b ON job_pairs(b);
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY,
    at_ms BIGINT NOT NULL
);
",
)];

/// The advisory lock the migrations take (any fixed key: "cotejo" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_7465_6a6f;

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Postgres(e.to_string())
}

/// A pool of connections to `url` (`postgres://user@host:port/db`), the
/// schema migrated to the latest version.
pub async fn open(url: &str, max_connections: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url.parse().map_err(pg)?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(max_connections.max(1)).build().map_err(pg)?;
    let mut client = pool.get().await.map_err(pg)?;
    migrate(&mut client).await?;
    Ok(pool)
}

/// Applies the versions not applied yet, in one transaction under the
/// advisory lock; the version the database is at. A database at a version
/// this build does not know (a newer cotejo wrote it) is refused.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )
    .await
    .map_err(pg)?;
    let current: i32 =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[]).await.map_err(pg)?.get(0);
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        return Err(StoreError::Postgres(format!(
            "the database is at schema version {current}, this cotejo knows up to {latest}: a newer cotejo wrote it"
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| StoreError::Postgres(format!("migration {version}: {e}")))?;
        tx.execute("INSERT INTO schema_migrations (version, applied_ms) VALUES ($1, $2)", &[version, &now_ms()])
            .await
            .map_err(pg)?;
    }
    tx.commit().await.map_err(pg)?;
    Ok(latest)
}

/// The advisory lock audit appends take ("audit" in ASCII): one chain,
/// whichever node appends.
const AUDIT_LOCK: i64 = 0x0061_7564_6974;

/// Appends one entry to the audit chain inside the caller's transaction
/// (it commits with what it records). Appends from every node are
/// serialised by a transaction-scoped advisory lock, so each follows the
/// head it read.
pub async fn append_audit(tx: &tokio_postgres::Transaction<'_>, ts_ms: i64, r: &AuditRecord) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK]).await.map_err(pg)?;
    let head = tx.query_opt("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &[]).await.map_err(pg)?;
    let (prev_seq, prev_hash): (i64, Vec<u8>) = head.map_or((0, Vec::new()), |row| (row.get(0), row.get(1)));
    let (e, hash) = next_entry(prev_seq, &prev_hash, ts_ms, r);
    tx.execute(
        "INSERT INTO audit (seq, ts_ms, format, method, caller, role, request_id, subjects, outcome, detail, hash)
         VALUES ($1, $2, 2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &e.seq,
            &e.ts_ms,
            &e.method,
            &e.caller,
            &e.role,
            &e.request_id,
            &subjects_json(&e.subjects),
            &e.outcome,
            &e.detail,
            &hash,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

/// Walks the whole chain in one repeatable-read snapshot; the first entry
/// missing or whose hash does not match its content is named.
pub async fn verify_audit(client: &mut tokio_postgres::Client) -> Result<ChainCheck, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)?;
    let rows = tx
        .query(
            "SELECT seq, ts_ms, format, method, caller, role, request_id, subjects, outcome, detail, hash
             FROM audit ORDER BY seq",
            &[],
        )
        .await
        .map_err(pg)?;
    let (mut seq, mut prev, mut n) = (0i64, Vec::new(), 0u64);
    for row in rows {
        let json: String = row.get(7);
        let e = super::AuditEntry {
            seq: row.get(0),
            ts_ms: row.get(1),
            format: i64::from(row.get::<_, i32>(2)),
            method: row.get(3),
            caller: row.get(4),
            role: row.get(5),
            request_id: row.get(6),
            // A list that does not parse cannot match its hash either.
            subjects: serde_json::from_str(&json).unwrap_or_else(|_| vec![json]),
            outcome: row.get(8),
            detail: row.get(9),
            hash: String::new(),
        };
        let hash: Vec<u8> = row.get(10);
        check_link(seq, &prev, &e, &hash)?;
        (seq, prev, n) = (e.seq, hash, n + 1);
    }
    tx.commit().await.map_err(pg)?;
    Ok(ChainCheck { entries: n, head_seq: seq, head_hash: prev })
}

/// Subjects and their sealed templates in PostgreSQL: the pool and the keys
/// that seal and open templates (from `key_dir`, or a hex key; never the
/// database).
#[derive(Debug, Clone)]
pub struct PgRecords {
    pool: Pool,
    sealer: Arc<Sealer>,
}

impl PgRecords {
    /// Opens (and migrates) the database at `url`, with the keys in
    /// `key_dir` or the hex key.
    pub async fn open(url: &str, key_dir: &Path, hex_key: &str, max_connections: usize) -> Result<Self, StoreError> {
        if key_dir.as_os_str().is_empty() && hex_key.is_empty() {
            return Err(StoreError::Key("a PostgreSQL store needs store.key_dir or store.encryption_key".into()));
        }
        let sealer = Arc::new(Sealer::open(key_dir, hex_key, Path::new(""))?);
        Ok(Self { pool: open(url, max_connections).await?, sealer })
    }

    /// Stores a new encounter with `templates`, sealed: a new subject unless
    /// `add_encounter`, which needs an existing one. In one transaction with
    /// its watchlist memberships, its change row (for the shards) and its
    /// audit entry; durable when this returns. A request id used before gets
    /// the first answer and writes nothing (retries of one id are serialised
    /// by an advisory lock on it).
    pub async fn enroll(
        &self,
        subject_id: &str,
        add_encounter: bool,
        templates: &[NewTemplate],
        watchlists: &[String],
        actor: &Actor,
        key: Option<RequestKey<'_>>,
    ) -> Result<Enrolled, StoreError> {
        let mut c = self.pool.get().await.map_err(pg)?;
        let tx = c.transaction().await.map_err(pg)?;
        let now = now_ms();
        if let Some(k) = key {
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&k.request_id]).await.map_err(pg)?;
            let first = tx
                .query_opt(
                    "SELECT subject_id, encounter_id, samples FROM enroll_requests WHERE request_id = $1",
                    &[&k.request_id],
                )
                .await
                .map_err(pg)?;
            if let Some(r) = first {
                let replay = EnrollReplay { subject_id: r.get(0), encounter_id: r.get(1), samples: r.get(2) };
                return Ok(Enrolled {
                    encounter_id: replay.encounter_id,
                    template_ids: Vec::new(),
                    replay: Some(replay),
                });
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
        let mut ids = Vec::with_capacity(templates.len());
        for t in templates {
            // The row id is part of the associated data: taken first, then sealed.
            let id: i64 = tx.query_one("SELECT nextval('templates_template_id_seq')", &[]).await.map_err(pg)?.get(0);
            let sealed = self.sealer.seal(&t.data.to_bytes(), &template_aad(id, subject_id, t))?;
            let (modality, position) = (t.modality.code() as i16, i16::from(t.finger_position));
            tx.execute(
                "INSERT INTO templates (template_id, encounter_id, subject_id, modality, finger_position, model_id, quality, sealed)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&id, &encounter_id, &subject_id, &modality, &position, &t.model_id, &t.quality, &sealed],
            )
            .await
            .map_err(pg)?;
            ids.push(id);
        }
        for w in watchlists {
            tx.execute(
                "INSERT INTO watchlist_members (watchlist, subject_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[w, &subject_id],
            )
            .await
            .map_err(pg)?;
        }
        tx.execute("INSERT INTO changes (subject_id, kind, at_ms) VALUES ($1, 'enroll', $2)", &[&subject_id, &now])
            .await
            .map_err(pg)?;
        let record = AuditRecord::enrolled(actor, subject_id, encounter_id, templates.len(), watchlists);
        append_audit(&tx, now, &record).await?;
        if let Some(k) = key {
            tx.execute(
                "INSERT INTO enroll_requests (request_id, subject_id, encounter_id, samples, created_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&k.request_id, &subject_id, &encounter_id, &k.samples, &now],
            )
            .await
            .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(Enrolled { encounter_id, template_ids: ids, replay: None })
    }

    /// The members of a watchlist, in id order.
    pub async fn watchlist_members(&self, watchlist: &str) -> Result<Vec<String>, StoreError> {
        let c = self.pool.get().await.map_err(pg)?;
        let rows = c
            .query("SELECT subject_id FROM watchlist_members WHERE watchlist = $1 ORDER BY subject_id", &[&watchlist])
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every template of one subject, opened, oldest first.
    pub async fn subject_templates(&self, subject_id: &str) -> Result<Vec<StoredTemplate>, StoreError> {
        let c = self.pool.get().await.map_err(pg)?;
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
            let position =
                u8::try_from(r.get::<_, i16>(3)).map_err(|_| StoreError::Corrupt("finger position".into()))?;
            let row = NewTemplate {
                modality: modality(i64::from(r.get::<_, i16>(2)))?,
                finger_position: position,
                model_id: r.get(4),
                quality: r.get(5),
                data: TemplateData::Minutiae(Vec::new()),
            };
            let sealed: Vec<u8> = r.get(6);
            let template = unsealed(&self.sealer, &sealed, template_id, subject_id, row)?;
            out.push(StoredTemplate {
                template_id,
                subject_id: subject_id.to_owned(),
                encounter_id: r.get(1),
                template,
            });
        }
        Ok(out)
    }

    /// Deletes a subject with everything it owns, its change row and audit
    /// entry in the same transaction; the template ids removed.
    pub async fn delete_subject(&self, subject_id: &str, actor: &Actor) -> Result<Vec<i64>, StoreError> {
        let mut c = self.pool.get().await.map_err(pg)?;
        let tx = c.transaction().await.map_err(pg)?;
        let ids: Vec<i64> = tx
            .query("DELETE FROM templates WHERE subject_id = $1 RETURNING template_id", &[&subject_id])
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute("DELETE FROM job_pairs WHERE a = $1 OR b = $1", &[&subject_id]).await.map_err(pg)?;
        tx.execute("DELETE FROM enroll_requests WHERE subject_id = $1", &[&subject_id]).await.map_err(pg)?;
        if tx.execute("DELETE FROM subjects WHERE subject_id = $1", &[&subject_id]).await.map_err(pg)? == 0 {
            return Err(StoreError::SubjectNotFound(subject_id.to_owned()));
        }
        let now = now_ms();
        tx.execute("INSERT INTO changes (subject_id, kind, at_ms) VALUES ($1, 'delete', $2)", &[&subject_id, &now])
            .await
            .map_err(pg)?;
        let record = AuditRecord::deleted(actor, subject_id, ids.len());
        append_audit(&tx, now, &record).await?;
        tx.commit().await.map_err(pg)?;
        Ok(ids)
    }

    /// The changes after `after`, in sequence: (seq, subject, "enroll" or "delete").
    pub async fn changes_after(&self, after: i64) -> Result<Vec<(i64, String, String)>, StoreError> {
        let c = self.pool.get().await.map_err(pg)?;
        let rows = c
            .query("SELECT seq, subject_id, kind FROM changes WHERE seq > $1 ORDER BY seq", &[&after])
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// The pool (for the audit walk and the tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}
