//! PostgreSQL as the system of record, for more than one machine: a pool of
//! connections (deadpool over tokio-postgres) and the versioned schema,
//! migrated under an advisory lock so that nodes starting together apply
//! each version once. The tables mirror the embedded store's, plus the
//! change log shard nodes follow and the claims of cluster job blocks.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

mod jobs;
mod records;
mod source;

pub use records::{CHANGES_CHANNEL, Change, PgRecords};
pub use source::PgSource;

use super::{
    AuditEntry, AuditRecord, ChainCheck, StoreError,
    audit::{check_link, next_entry, subjects_json},
    now_ms,
};

/// The schema, one entry per version, applied in order and never edited
/// once released (a change is a new version).
pub const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE TABLE subjects (
    subject_id TEXT COLLATE "C" PRIMARY KEY,
    created_ms BIGINT NOT NULL
);
CREATE TABLE encounters (
    encounter_id BIGSERIAL PRIMARY KEY,
    subject_id TEXT COLLATE "C" NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    created_ms BIGINT NOT NULL
);
CREATE INDEX encounters_subject ON encounters(subject_id);
CREATE TABLE templates (
    template_id BIGSERIAL PRIMARY KEY,
    encounter_id BIGINT NOT NULL REFERENCES encounters(encounter_id) ON DELETE CASCADE,
    subject_id TEXT COLLATE "C" NOT NULL,
    shard_key BIGINT NOT NULL,
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
    watchlist TEXT COLLATE "C" NOT NULL,
    subject_id TEXT COLLATE "C" NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    PRIMARY KEY (watchlist, subject_id)
);
CREATE INDEX watchlist_members_subject ON watchlist_members(subject_id);
CREATE TABLE enroll_requests (
    request_id TEXT PRIMARY KEY,
    subject_id TEXT COLLATE "C" NOT NULL,
    encounter_id BIGINT NOT NULL,
    samples TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX enroll_requests_subject ON enroll_requests(subject_id);
-- What shard nodes follow: one row per enroll or deletion, in sequence
-- (a row takes its number under the audit lock, so rows commit in order).
CREATE TABLE changes (
    seq BIGSERIAL PRIMARY KEY,
    subject_id TEXT COLLATE "C" NOT NULL,
    shard_key BIGINT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('enroll', 'delete')),
    template_ids BIGINT[] NOT NULL,
    subjects_delta SMALLINT NOT NULL,
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
-- A job's plan: blocks of face rows or finger templates by template id
-- range [lo, hi). A worker node claims a block by locking its row (FOR
-- UPDATE SKIP LOCKED) until the block commits; done once.
CREATE TABLE job_blocks (
    job_id BIGINT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    block BIGINT NOT NULL,
    faces BOOLEAN NOT NULL,
    lo BIGINT NOT NULL,
    hi BIGINT NOT NULL,
    done BOOLEAN NOT NULL DEFAULT FALSE,
    done_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, block)
);
CREATE TABLE job_pairs (
    job_id BIGINT NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    a TEXT COLLATE "C" NOT NULL,
    b TEXT COLLATE "C" NOT NULL,
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
"#,
)];

/// The advisory lock the migrations take (any fixed key: "cotejo" in ASCII).
const MIGRATION_LOCK: i64 = 0x636f_7465_6a6f;

/// A PostgreSQL error with its cause (tokio-postgres says only "db error"
/// at the top; the server's message is its source).
fn pg(e: impl std::error::Error) -> StoreError {
    match e.source() {
        Some(cause) => StoreError::Postgres(format!("{e}: {cause}")),
        None => StoreError::Postgres(e.to_string()),
    }
}

/// A pool of connections to `url` (`postgres://user@host:port/db`), the
/// schema migrated to the latest version; on a read-only streaming replica
/// (a hot standby) the schema is checked instead, as its primary migrated it.
pub async fn open(url: &str, max_connections: usize) -> Result<Pool, StoreError> {
    let config: tokio_postgres::Config = url.parse().map_err(pg)?;
    let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool = Pool::builder(manager).max_size(max_connections.max(1)).build().map_err(pg)?;
    let mut client = pool.get().await.map_err(pg)?;
    if is_replica(&client).await? {
        check_version(&client).await?;
    } else {
        migrate(&mut client).await?;
    }
    Ok(pool)
}

/// Whether the server is a standby replaying its primary's log (read-only).
pub async fn is_replica(client: &tokio_postgres::Client) -> Result<bool, StoreError> {
    Ok(client.query_one("SELECT pg_is_in_recovery()", &[]).await.map_err(pg)?.get(0))
}

/// On a replica: the schema must be the one this build knows (the primary's
/// nodes migrate it; the replica receives it).
async fn check_version(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    let current: i32 = client
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
        .await
        .map_err(|e| {
            StoreError::Postgres(format!(
                "read-only replica without cotejo's schema ({e}): start a node on the primary first"
            ))
        })?
        .get(0);
    if current != latest {
        return Err(StoreError::Postgres(format!(
            "the read-only replica is at schema version {current}, this cotejo needs {latest}: \
             migrate the primary (start this version's node on it) first"
        )));
    }
    Ok(())
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

/// The columns of an audit entry, in the order [`audit_entry`] reads them.
const AUDIT_COLUMNS: &str = "seq, ts_ms, format, method, caller, role, request_id, subjects, outcome, detail, hash";

/// An audit row as an entry, and its hash.
fn audit_entry(row: &tokio_postgres::Row) -> (AuditEntry, Vec<u8>) {
    let json: String = row.get(7);
    let hash: Vec<u8> = row.get(10);
    let e = AuditEntry {
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
        hash: hex::encode(&hash),
    };
    (e, hash)
}

/// Up to `limit` audit entries from `from_seq` on, oldest first.
pub async fn audit_entries(
    client: &tokio_postgres::Client,
    from_seq: i64,
    limit: usize,
) -> Result<Vec<AuditEntry>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            &format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2"),
            &[&from_seq, &limit],
        )
        .await
        .map_err(pg)?;
    Ok(rows.iter().map(|r| audit_entry(r).0).collect())
}

/// A read-only transaction whose reads all see one snapshot.
async fn read_only_snapshot(
    client: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Walks the whole chain in one repeatable-read snapshot; the first entry
/// missing or whose hash does not match its content is named.
pub async fn verify_audit(client: &mut tokio_postgres::Client) -> Result<ChainCheck, StoreError> {
    let tx = read_only_snapshot(client).await?;
    let rows = tx.query(&format!("SELECT {AUDIT_COLUMNS} FROM audit ORDER BY seq"), &[]).await.map_err(pg)?;
    let (mut seq, mut prev, mut n) = (0i64, Vec::new(), 0u64);
    for row in rows {
        let (e, hash) = audit_entry(&row);
        check_link(seq, &prev, &e, &hash)?;
        (seq, prev, n) = (e.seq, hash, n + 1);
    }
    tx.commit().await.map_err(pg)?;
    Ok(ChainCheck { entries: n, head_seq: seq, head_hash: prev })
}
