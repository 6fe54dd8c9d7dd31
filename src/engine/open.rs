//! Start-up's store side: the configured store opened (SQLite in the data
//! directory, PostgreSQL at `store.url`, or a read-only replica of it), the
//! audit chain checked, and this node's indexes loaded from their
//! snapshots and the store.

use std::sync::Arc;

use tracing::warn;

use super::{
    EngineError, FaceModel, audit,
    derived::DerivedIndex,
    face_index::{FaceIndexSpec, index_settings},
    finger_index::{FingerIndexSpec, finger_index_settings},
    lock,
};
use crate::{
    biometric::Modality,
    config::Config,
    finger::index::FingerIndex,
    index::VectorIndex,
    shard::Shard,
    store::{
        Checkpoints, JobStore, Records, SealedFile, SqliteRecords, Store, StoreError, StoreStats, TemplateSource,
        postgres::{PgRecords, PgSource},
    },
};

/// The records opened and the indexes loaded from them.
pub(super) struct Opened {
    pub(super) records: Arc<dyn Records>,
    pub(super) job_store: Arc<dyn JobStore>,
    /// The embedded store's writer and readers.
    pub(super) sqlite: Option<SqliteRecords>,
    /// PostgreSQL, this node's shard and the change the indexes reflect.
    pub(super) postgres: Option<(PgRecords, Shard, i64)>,
    /// Whether `store.url` is a read-only streaming replica.
    pub(super) replica: bool,
    pub(super) loaded: Loaded,
    pub(super) checkpoints: Option<Checkpoints>,
    pub(super) audit_problem: Option<String>,
}

/// Opens the configured store (SQLite in the data directory, or
/// PostgreSQL at `store.url`), checks the audit chain and loads this
/// node's indexes.
pub(super) fn open_records(config: &Config, face_model: &FaceModel) -> Result<Opened, EngineError> {
    let s = &config.store;
    if s.url.is_empty() {
        let store = Store::open_with_keys(&s.data_dir, &s.key_dir, &s.encryption_key)?;
        let sqlite = SqliteRecords::new(store);
        let (checkpoints, audit_problem) = audit::check_at_start(&sqlite, &config.audit, &s.data_dir)?;
        let loaded = {
            let store = lock(&sqlite.writer)?;
            Loaded::from_source(&**store, store.stats()?, |name| store.sealed_file(name), config, face_model)?
        };
        let records: Arc<dyn Records> = Arc::new(sqlite.clone());
        let job_store: Arc<dyn JobStore> = Arc::new(sqlite.clone());
        return Ok(Opened {
            records,
            job_store,
            sqlite: Some(sqlite),
            postgres: None,
            replica: false,
            loaded,
            checkpoints,
            audit_problem,
        });
    }
    let shard: Shard = match config.cluster.shards.is_empty() {
        true => config.cluster.shard.parse().map_err(EngineError::Internal)?,
        // A routing node searches through the shards' nodes.
        false => Shard::NONE,
    };
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| EngineError::Internal("a PostgreSQL store is opened inside the tokio runtime".into()))?;
    let pg = handle.block_on(PgRecords::open(&s.url, &s.key_dir, &s.encryption_key, s.max_connections))?;
    std::fs::create_dir_all(&s.data_dir)
        .map_err(|source| StoreError::DataDir { path: s.data_dir.display().to_string(), source })?;
    let replica = pg.is_replica();
    let pg = if replica {
        // The shared chain is the primary's: this node audits in its data directory.
        let local = Store::open_with_keys(&s.data_dir, &s.key_dir, &s.encryption_key)?;
        tracing::info!(primary = %s.primary, "store.url is a read-only replica: serving reads, refusing writes");
        pg.audit_locally(SqliteRecords::new(local))
    } else {
        pg
    };
    let (checkpoints, audit_problem) = audit::check_at_start(&pg, &config.audit, &s.data_dir)?;
    let (seq, subjects) = handle.block_on(pg.high_water())?;
    let stats = StoreStats { subjects, ..pg.stats()? };
    let source = PgSource::new(pg.clone(), shard);
    let loaded = Loaded::from_source(&source, stats, |name| pg.sealed_file(&s.data_dir, name), config, face_model)?;
    tracing::info!(%shard, seq, subjects, "indexes loaded from PostgreSQL; following its changes");
    let records: Arc<dyn Records> = Arc::new(pg.clone());
    let job_store: Arc<dyn JobStore> = Arc::new(pg.clone());
    Ok(Opened {
        records,
        job_store,
        sqlite: None,
        postgres: Some((pg, shard, seq)),
        replica,
        loaded,
        checkpoints,
        audit_problem,
    })
}

/// The derived indexes as start-up loads them from the store.
pub(super) struct Loaded {
    pub(super) face_spec: Arc<FaceIndexSpec>,
    pub(super) faces: VectorIndex,
    pub(super) face_file: SealedFile,
    pub(super) faces_stale: bool,
    pub(super) finger_spec: Arc<FingerIndexSpec>,
    pub(super) fingers: FingerIndex,
    /// `None`: finger snapshots are off.
    pub(super) finger_file: Option<SealedFile>,
    pub(super) fingers_stale: bool,
    pub(super) subjects: u64,
}

impl Loaded {
    /// Both indexes, each from its snapshot and the store's changes since
    /// or rebuilt; `stored` gives the enrolled subjects.
    pub(super) fn from_source(
        store: &dyn TemplateSource,
        stored: StoreStats,
        sealed_file: impl Fn(&str) -> SealedFile,
        config: &Config,
        face_model: &FaceModel,
    ) -> Result<Self, EngineError> {
        let face_spec = Arc::new(FaceIndexSpec { model: face_model.clone(), settings: index_settings(&config.index) });
        let face_file = sealed_file(FaceIndexSpec::SNAPSHOT_FILE);
        let (faces, faces_stale) = face_spec.load(store, Some(&face_file))?;
        let foreign_templates: u64 = stored
            .templates
            .iter()
            .filter(|(m, model, _)| *m == Modality::Face && *model != face_model.id)
            .map(|t| t.2)
            .sum();
        if foreign_templates > 0 {
            warn!(foreign_templates, "face templates of other models are not searchable until re-embedded");
        }
        let finger_spec = Arc::new(FingerIndexSpec {
            settings: finger_index_settings(&config.finger),
            threads: config.finger.rebuild_threads,
        });
        let finger_file = sealed_file(FingerIndexSpec::SNAPSHOT_FILE);
        let finger_file = if config.finger.snapshot_every > 0 {
            Some(finger_file)
        } else {
            // A snapshot left from an earlier configuration would go stale unseen.
            finger_file.remove()?;
            None
        };
        let (fingers, fingers_stale) = finger_spec.load(store, finger_file.as_ref())?;
        Ok(Self {
            face_spec,
            faces,
            face_file,
            faces_stale,
            finger_spec,
            fingers,
            finger_file,
            fingers_stale,
            subjects: stored.subjects,
        })
    }
}
