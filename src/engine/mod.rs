//! The domain entry point: enroll, identify, verify, delete, stats. No
//! transport types here; blocking work (SQLite, faiss) runs on the blocking
//! pool and inference on the face workers.

mod audit;
mod derived;
mod enroll;
mod error;
mod face_index;
mod finger_index;
mod follow;
mod health;
mod jobs;
mod keys;
mod listing;
mod matching;
mod open;
mod probe;
mod types;

mod scoring;

use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicU64, Ordering},
};

use tracing::warn;

use crate::{
    admission::SearchGate,
    biometric::{Modality, TemplateData},
    config::{Config, DecisionConfig, FingerConfig, JobsConfig},
    face::FaceSettings,
    finger::{FingerSettings, index::FingerIndex, template},
    index::VectorIndex,
    inference,
    shard::Shard,
    store::{Actor, Checkpoints, JobStore, ReadPool, Records, Store, StoreError, SubjectRecord},
    workers::{Admission, Workers},
};
use derived::{DerivedIndex, Snapshots, lower_priority};
pub use error::EngineError;
use face_index::FaceIndexSpec;
use finger_index::FingerIndexSpec;
pub use jobs::{DedupRequest, DuplicatePair, JobStatus, ResultItem};
pub use listing::{Page, PageRequest};
use open::{Loaded, Opened, open_records};
pub use scoring::Calibrations;
pub use types::*;

/// Everything the engine needs to know about the face model in use.
#[derive(Debug, Clone)]
pub struct FaceModel {
    /// Model id.
    pub id: String,
    /// Embedding dimension.
    pub dim: usize,
    /// sha256 of the model file.
    pub sha256: String,
}

impl FaceModel {
    /// The model of a manifest. The id a template records names the exact
    /// file and the embedding recipe, so a re-converted model or a flip
    /// change is never mixed in silently with templates made before it.
    pub fn new(manifest: &inference::Manifest, flip_average: bool) -> Self {
        let spec = &manifest.face_embedder;
        let recipe = if flip_average { "+flip" } else { "" };
        let short = spec.file.sha256.get(..12).unwrap_or(&spec.file.sha256);
        Self {
            id: format!("{}@{short}{recipe}", spec.id),
            dim: spec.output.dimension as usize,
            sha256: spec.file.sha256.clone(),
        }
    }
}

/// A derived structure the engine snapshots.
#[derive(Debug, Clone, Copy)]
enum Derived {
    Faces,
    Fingers,
}

/// The biometric engine.
#[derive(Debug)]
pub struct Engine {
    /// Subjects' records, in SQLite or PostgreSQL.
    records: Arc<dyn Records>,
    /// The embedded store's read connections (none on PostgreSQL).
    local_reads: Option<Arc<ReadPool>>,
    /// Batch jobs, stored beside the records.
    job_store: Arc<dyn JobStore>,
    /// This node's job runner.
    jobs: jobs::JobRunner,
    /// On a read-only replica: where writes go (`store.primary`).
    read_only: Option<String>,
    /// Held from an enroll's or a deletion's commit to its index update
    /// (embedded store): a concurrent deletion cannot slip between them.
    writes: Arc<Mutex<()>>,
    /// On PostgreSQL: the change log this node's indexes follow.
    following: Option<follow::Following>,
    /// How long a write waits for this node's indexes to take it.
    follow_wait: std::time::Duration,
    faces: Arc<RwLock<VectorIndex>>,
    face_spec: Arc<FaceIndexSpec>,
    snapshots: Snapshots,
    /// The finger index's snapshots (`None`: `finger.snapshot_every = 0`).
    finger_snapshots: Option<Snapshots>,
    fingers: Arc<RwLock<FingerIndex>>,
    finger_spec: Arc<FingerIndexSpec>,
    workers: Workers,
    /// Places for gallery searches.
    searches: SearchGate,
    face_model: FaceModel,
    /// Id finger templates extracted here record, and the model file's sha256.
    finger_model_id: String,
    finger_model_sha256: String,
    calibrations: Calibrations,
    decision: DecisionConfig,
    finger: FingerConfig,
    /// Enrolled subjects (the N of a gallery search), every shard.
    subjects: Arc<AtomicU64>,
    jobs_settings: JobsConfig,
    max_samples: usize,
    max_candidates: usize,
    max_subject_ids: usize,
    /// Signed audit checkpoints outside the data directory, when configured.
    checkpoints: Option<Checkpoints>,
    /// Why the audit log is not trusted (start-up found it broken).
    audit_problem: Option<String>,
    /// Free space under which the engine reports itself unhealthy.
    min_free_bytes: u64,
    /// Days a subject is kept after its latest encounter, per watchlist.
    retention_days: std::collections::BTreeMap<String, u32>,
    data_dir: std::path::PathBuf,
}

impl Engine {
    /// Loads models, opens the store and loads the derived indexes from
    /// their snapshots and the store. Blocking: call from a blocking context.
    pub fn start(config: &Config) -> Result<Self, EngineError> {
        let manifest = inference::load_models(&config.models)?;
        let workers = start_workers(config, &manifest)?;
        let face_model = FaceModel::new(&manifest, config.face.flip_average);
        let (finger_model_id, finger_model_sha256) = match &manifest.finger_extractor {
            Some(x) => {
                (format!("{}@{}", x.id, x.file.sha256.get(..12).unwrap_or(&x.file.sha256)), x.file.sha256.clone())
            }
            None => (template::IMPORTED_MODEL_ID.to_owned(), String::new()),
        };
        let calibrations = Calibrations::load(&config.models.calibration_dir, &face_model.id)?;
        let Opened { records, job_store, sqlite, postgres, replica, loaded, checkpoints, audit_problem } =
            open_records(config, &face_model)?;
        let read_only = replica.then(|| match config.store.primary.as_str() {
            "" => "the primary's nodes (store.primary is not set on this node)".to_owned(),
            p => p.to_owned(),
        });
        // A replica's node computes no job blocks (they are writes).
        let job_settings = JobsConfig { worker: config.jobs.worker && !replica, ..config.jobs.clone() };
        let Loaded {
            face_spec,
            faces,
            face_file,
            faces_stale,
            finger_spec,
            fingers,
            finger_file,
            fingers_stale,
            subjects,
        } = loaded;
        let fingers = Arc::new(RwLock::new(fingers));
        let faces = Arc::new(RwLock::new(faces));
        let subjects = Arc::new(AtomicU64::new(subjects));
        let jobs = jobs::JobRunner::start(
            job_store.clone(),
            fingers.clone(),
            postgres.as_ref().is_none_or(|(_, shard, _)| *shard == Shard::WHOLE),
            calibrations.clone(),
            face_model.id.clone(),
            job_settings,
        )?;
        let local_reads = sqlite.map(|sqlite| sqlite.reads);
        let snapshots = Snapshots::new(face_file, config.index.snapshot_every.max(1));
        let finger_snapshots = finger_file.map(|f| Snapshots::new(f, config.finger.snapshot_every));
        let following = match postgres {
            Some((pg, shard, seq)) => Some(follow::start(
                pg,
                &config.store.url,
                shard,
                seq,
                std::time::Duration::from_secs(config.cluster.poll_secs.max(1)),
                follow::Targets {
                    faces: faces.clone(),
                    fingers: fingers.clone(),
                    face_model: face_model.clone(),
                    subjects: subjects.clone(),
                    saves: follow::Saves {
                        faces: (snapshots.clone(), face_spec.clone()),
                        fingers: finger_snapshots.clone().map(|s| (s, finger_spec.clone())),
                    },
                    deletions: jobs.deletions.clone(),
                },
            )?),
            None => None,
        };
        let engine = Self {
            records,
            local_reads,
            job_store,
            jobs,
            read_only,
            writes: Arc::new(Mutex::new(())),
            following,
            follow_wait: std::time::Duration::from_millis(config.cluster.follow_wait_ms),
            faces,
            face_spec,
            snapshots,
            finger_snapshots,
            fingers,
            finger_spec,
            jobs_settings: config.jobs.clone(),
            workers,
            searches: SearchGate::new(
                match config.search.max_concurrent {
                    0 => std::thread::available_parallelism().map_or(1, usize::from),
                    n => n,
                },
                std::time::Duration::from_millis(config.search.max_wait_ms),
            ),
            face_model,
            finger_model_id,
            finger_model_sha256,
            calibrations,
            decision: config.decision.clone(),
            finger: config.finger.clone(),
            subjects,
            max_samples: config.limits.max_samples,
            max_candidates: config.limits.max_candidates,
            max_subject_ids: config.limits.max_subject_ids,
            checkpoints,
            audit_problem,
            min_free_bytes: config.store.min_free_mb.saturating_mul(1 << 20),
            data_dir: config.store.data_dir.clone(),
            retention_days: config.retention.watchlists.clone(),
        };
        if faces_stale {
            engine.snapshot_in_background(Derived::Faces);
        }
        if fingers_stale {
            engine.snapshot_in_background(Derived::Fingers);
        }
        Ok(engine)
    }

    /// Writes the snapshots now (blocking; at shutdown): the face index's,
    /// and the finger index's when it changed since the last one.
    pub fn save_snapshot(&self) -> Result<(), EngineError> {
        let faces = {
            let _one_writer =
                self.snapshots.writing.lock().map_err(|_| EngineError::Internal("snapshot lock".into()))?;
            self.face_spec.write_snapshot(&self.faces, &self.snapshots.file)
        };
        // The finger index's is written even when the face index's failed.
        if let Some(s) = &self.finger_snapshots {
            let _one_writer = s.writing.lock().map_err(|_| EngineError::Internal("snapshot lock".into()))?;
            // A follower changes the index without counting: always written then.
            if s.changes.swap(0, Ordering::Relaxed) > 0 || self.following.is_some() {
                self.finger_spec.write_snapshot(&self.fingers, &s.file)?;
            }
        }
        faces
    }

    fn snapshots(&self, which: Derived) -> Option<&Snapshots> {
        match which {
            Derived::Faces => Some(&self.snapshots),
            Derived::Fingers => self.finger_snapshots.as_ref(),
        }
    }

    /// Counts `n` changes to the face index or the finger index; past
    /// their `snapshot_every`, a snapshot is written on a background thread
    /// (one at a time for each).
    fn note_changes(&self, which: Derived, n: u64) {
        match (which, self.snapshots(which)) {
            (Derived::Faces, Some(s)) => s.changed(n, &self.face_spec, &self.faces),
            (Derived::Fingers, Some(s)) => s.changed(n, &self.finger_spec, &self.fingers),
            (_, None) => {}
        }
    }

    /// A deletion took `n` templates out of an index: its snapshot is written again.
    fn note_erased(&self, which: Derived, n: u64) {
        match (which, self.snapshots(which)) {
            (Derived::Faces, Some(s)) => s.erased(n, &self.face_spec, &self.faces),
            (Derived::Fingers, Some(s)) => s.erased(n, &self.finger_spec, &self.fingers),
            (_, None) => {}
        }
    }

    fn snapshot_in_background(&self, which: Derived) {
        let Some(s) = self.snapshots(which) else { return };
        match which {
            Derived::Faces => s.write_in_background(self.face_spec.clone(), self.faces.clone()),
            Derived::Fingers => s.write_in_background(self.finger_spec.clone(), self.fingers.clone()),
        }
    }

    /// The face model in use.
    pub fn face_model(&self) -> &FaceModel {
        &self.face_model
    }

    /// Deletes a subject for good; returns the number of templates removed.
    /// The audit log's entry names `actor`, in the same transaction.
    pub async fn delete(&self, subject_id: String, actor: &Actor) -> Result<usize, EngineError> {
        validate_subject_id(&subject_id)?;
        self.writable()?;
        let removed = self.delete_unless_seen(subject_id.clone(), i64::MAX, actor).await?;
        removed.ok_or(EngineError::SubjectNotFound(subject_id))
    }

    /// Deletes a subject as [`Engine::delete`] does, unless it has an
    /// encounter from `since_ms` on; `None` when kept.
    async fn delete_unless_seen(
        &self,
        subject_id: String,
        since_ms: i64,
        actor: &Actor,
    ) -> Result<Option<usize>, EngineError> {
        let actor = actor.clone();
        let (records, writes) = (self.records.clone(), self.writes.clone());
        let gallery = self.faces.clone();
        let fingers = self.fingers.clone();
        let subjects = self.subjects.clone();
        let following = self.following.is_some();
        let sid = subject_id.clone();
        let removed =
            tokio::task::spawn_blocking(move || -> Result<Option<(usize, usize, usize, i64)>, EngineError> {
                if following {
                    // The indexes follow the change log.
                    let removed = records.delete_unless_seen(&sid, since_ms, &actor)?;
                    return Ok(removed.map(|r| (r.template_ids.len(), 0, 0, r.seq)));
                }
                let _ordered = writes.lock().map_err(|_| EngineError::Internal("write lock poisoned".into()))?;
                let Some(removed) = records.delete_unless_seen(&sid, since_ms, &actor)? else {
                    return Ok(None);
                };
                let ids = removed.template_ids;
                subjects.fetch_sub(1, Ordering::Relaxed);
                let mut g = gallery.write().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
                let faces = g.remove(&ids)?;
                let finger_count =
                    fingers.write().map_err(|_| EngineError::Internal("finger lock poisoned".into()))?.remove(&ids);
                Ok(Some((ids.len(), faces, finger_count, removed.seq)))
            })
            .await??;
        let Some((removed, faces, finger_count, seq)) = removed else { return Ok(None) };
        self.wait_for_own(&subject_id, seq).await;
        if self.following.is_none() {
            // (A node that follows the log counts the deletion as it applies it.)
            self.jobs.deletions.fetch_add(1, Ordering::AcqRel);
        }
        // The snapshots still hold the subject: rewritten now, in the background.
        self.note_erased(Derived::Faces, faces as u64);
        self.note_erased(Derived::Fingers, finger_count as u64);
        Ok(Some(removed))
    }

    /// Deletes the subjects past their watchlists' `[retention]`, each as a
    /// Delete by `cotejo` (method `RetentionPurge`) recorded in the audit
    /// log, with the same erasure; the subjects purged.
    pub async fn purge_expired(&self) -> Result<Vec<String>, EngineError> {
        // A replica's node leaves the purge to the primary's.
        if self.retention_days.is_empty() || self.read_only.is_some() {
            return Ok(Vec::new());
        }
        let days = self.retention_days.clone();
        let expired = read(&self.records, move |r| r.expired_subjects(&days, crate::store::now_ms())).await?;
        let actor = Actor::system("RetentionPurge");
        let mut purged = Vec::new();
        for (subject, cutoff) in expired {
            match self.delete_unless_seen(subject.clone(), cutoff, &actor).await {
                Ok(Some(_)) => purged.push(subject),
                // Enrolled again, or deleted, since the listing: kept or gone.
                Ok(None) | Err(EngineError::SubjectNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// A subject's encounters.
    pub async fn subject(&self, subject_id: String) -> Result<SubjectRecord, EngineError> {
        validate_subject_id(&subject_id)?;
        read(&self.records, move |r| r.subject(&subject_id)).await
    }

    /// A subject's finger templates as stored (ISO/IEC 19794-2 records), oldest first.
    pub async fn export_fingers(&self, subject_id: String) -> Result<Vec<ExportedTemplate>, EngineError> {
        validate_subject_id(&subject_id)?;
        let templates = read(&self.records, move |r| r.subject_templates(&subject_id)).await?;
        Ok(templates
            .into_iter()
            .filter_map(|t| match t.template.data {
                TemplateData::Minutiae(iso) => Some(ExportedTemplate {
                    encounter_id: t.encounter_id,
                    finger_position: t.template.finger_position,
                    model_id: t.template.model_id,
                    quality: t.template.quality,
                    iso_19794_2: iso,
                }),
                TemplateData::Embedding(_) => None,
            })
            .collect())
    }

    /// Gallery counts and models.
    pub async fn stats(&self) -> Result<Stats, EngineError> {
        let s = read(&self.records, |r| r.stats()).await?;
        let m = &self.face_model;
        let mut models = vec![(m.id.clone(), Modality::Face, m.dim as u32, m.sha256.clone())];
        if self.workers.fingers() {
            models.push((self.finger_model_id.clone(), Modality::Finger, 0, self.finger_model_sha256.clone()));
        }
        let face_index = {
            let g = self.faces.read().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
            let kind = &g.settings().kind;
            (kind.name().to_owned(), kind.approximate(), g.describe())
        };
        Ok(Stats { subjects: s.subjects, encounters: s.encounters, templates: s.templates, models, face_index })
    }
}

/// Runs `f` on the records, off the async runtime.
async fn read<T: Send + 'static>(
    records: &Arc<dyn Records>,
    f: impl FnOnce(&dyn Records) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, EngineError> {
    let records = records.clone();
    tokio::task::spawn_blocking(move || Ok(f(&*records)?)).await?
}

impl Engine {
    /// Refuses a write on a node of a read-only replica, naming the primary.
    pub(in crate::engine) fn writable(&self) -> Result<(), EngineError> {
        match &self.read_only {
            Some(primary) => Err(EngineError::ReadOnly { primary: primary.clone() }),
            None => Ok(()),
        }
    }

    /// On PostgreSQL, waits (at most `cluster.follow_wait_ms`) until this
    /// node's indexes took the change `seq` when the subject is in its
    /// shard, so that what it acknowledged it also finds.
    async fn wait_for_own(&self, subject_id: &str, seq: i64) {
        let Some(f) = &self.following else { return };
        if seq == 0 || !f.shard.owns(subject_id) {
            return;
        }
        if !f.applied(seq, self.follow_wait).await {
            warn!(seq, applied = f.position(), "the change is stored but this node's index has not taken it yet");
        }
    }
}

fn lock(store: &Mutex<Store>) -> Result<std::sync::MutexGuard<'_, Store>, EngineError> {
    store.lock().map_err(|_| EngineError::Internal("store lock poisoned".into()))
}

/// The inference workers: face and finger pipelines from the configuration.
fn start_workers(config: &Config, manifest: &inference::Manifest) -> Result<Workers, EngineError> {
    let face = FaceSettings::from_config(config);
    let finger = FingerSettings {
        threads: match config.finger.extract_threads {
            0 => config.inference.threads,
            n => n,
        },
        limits: face.limits,
        min_minutiae: config.finger.min_minutiae,
    };
    let admission = Admission {
        queue: config.inference.queue,
        max_wait: std::time::Duration::from_millis(config.inference.max_queue_wait_ms),
    };
    Ok(Workers::start(manifest, face, finger, config.inference.workers, admission)?)
}

/// Most watchlists one enroll may name.
const MAX_WATCHLISTS: usize = 64;

/// Subject ids are opaque to cotejo but must be printable and bounded.
fn validate_subject_id(id: &str) -> Result<(), EngineError> {
    validate_name(id).map_err(|reason| EngineError::invalid("INVALID_SUBJECT_ID", "subject_id", reason))
}

/// Subject ids and watchlist names: 1..=128 bytes, no control characters.
pub(crate) fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is required");
    }
    if name.len() > 128 {
        return Err("is longer than 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("contains control characters");
    }
    Ok(())
}
