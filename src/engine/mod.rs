//! The domain entry point: enroll, identify, verify, delete, stats. No
//! transport types here; blocking work (SQLite, faiss) runs on the blocking
//! pool and inference on the face workers.

mod error;
mod matching;
mod probe;
mod types;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use tracing::{error, info, warn};

use crate::{
    biometric::Modality,
    config::Config,
    face::{FaceSettings, FaceWorkers},
    index::VectorIndex,
    inference,
    store::{Store, SubjectRecord},
};
pub use error::EngineError;
pub use types::*;

/// Decision settings until calibrated decisions exist: one fixed cosine
/// threshold measured on labelled data.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Face cosine threshold.
    pub face: f64,
    /// How it was chosen.
    pub basis: String,
}

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

/// The biometric engine.
#[derive(Debug)]
pub struct Engine {
    store: Arc<Mutex<Store>>,
    gallery: Arc<RwLock<VectorIndex>>,
    faces: FaceWorkers,
    face_model: FaceModel,
    thresholds: Thresholds,
    max_samples: usize,
    max_candidates: usize,
    max_subject_ids: usize,
}

impl Engine {
    /// Loads models, opens the store and rebuilds the index from it.
    /// Blocking: call from a blocking context.
    pub fn start(config: &Config) -> Result<Self, EngineError> {
        let manifest = inference::load_models(&config.models)?;
        let settings = FaceSettings::from_config(config);
        let faces = FaceWorkers::start(&manifest, settings, config.inference.workers, config.inference.queue)?;
        let spec = &manifest.face_embedder;
        // The id a template records names the exact file and the embedding
        // recipe, so a re-converted model or a flip change is never mixed in
        // silently with templates made before it.
        let recipe = if config.face.flip_average { "+flip" } else { "" };
        let short = spec.file.sha256.get(..12).unwrap_or(&spec.file.sha256);
        let face_model = FaceModel {
            id: format!("{}@{short}{recipe}", spec.id),
            dim: spec.output.dimension as usize,
            sha256: spec.file.sha256.clone(),
        };
        let store = Store::open(&config.store.data_dir, &config.store.encryption_key)?;
        let (gallery, foreign_templates) = rebuild(&store, &face_model)?;
        info!(model = %face_model.id, templates = gallery.len(), "face index rebuilt from the store");
        if foreign_templates > 0 {
            warn!(foreign_templates, "face templates of other models are not searchable until re-embedded");
        }
        Ok(Self {
            store: Arc::new(Mutex::new(store)),
            gallery: Arc::new(RwLock::new(gallery)),
            faces,
            face_model,
            thresholds: Thresholds { face: config.face.match_threshold, basis: config.face.threshold_basis.clone() },
            max_samples: config.limits.max_samples,
            max_candidates: config.limits.max_candidates,
            max_subject_ids: config.limits.max_subject_ids,
        })
    }

    /// The face model in use.
    pub fn face_model(&self) -> &FaceModel {
        &self.face_model
    }

    /// Stores a subject's samples; durable when this returns.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollOutcome, EngineError> {
        let EnrollRequest { subject_id, samples, add_encounter, use_main_face } = req;
        validate_subject_id(&subject_id)?;
        let probes = self.extract_all(&samples, use_main_face).await?;
        let templates: Vec<_> = probes.iter().map(|p| p.template.clone()).collect();
        let store = self.store.clone();
        let gallery = self.gallery.clone();
        let sid = subject_id.clone();
        let model = self.face_model.clone();
        let enrolled = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            // Store first, then index, both under the store lock so a
            // concurrent delete cannot slip between them.
            let mut store = lock(&store)?;
            let enrolled = store.enroll(&sid, add_encounter, &templates)?;
            let owners: Vec<Arc<str>> = vec![sid.as_str().into(); templates.len()];
            let vectors: Vec<f32> = templates.iter().flat_map(|t| t.vector.iter().copied()).collect();
            let mut g = gallery.write().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
            if let Err(e) = g.add(&enrolled.template_ids, &owners, &vectors) {
                // The enroll is durable and acknowledged; bring the derived
                // index back in line with the store rather than fail.
                error!(error = %e, "index update failed after commit; rebuilding the index from the store");
                *g = rebuild(&store, &model)?.0;
            }
            Ok(enrolled)
        })
        .await??;
        info!(templates = enrolled.template_ids.len(), encounter = enrolled.encounter_id, "enrolled");
        Ok(EnrollOutcome {
            subject_id,
            encounter_id: enrolled.encounter_id,
            samples: probes.into_iter().map(|p| p.report).collect(),
        })
    }

    /// Deletes a subject for good; returns the number of templates removed.
    pub async fn delete(&self, subject_id: String) -> Result<usize, EngineError> {
        validate_subject_id(&subject_id)?;
        let store = self.store.clone();
        let gallery = self.gallery.clone();
        tokio::task::spawn_blocking(move || -> Result<usize, EngineError> {
            let mut store = lock(&store)?;
            let ids = store.delete_subject(&subject_id)?;
            let mut g = gallery.write().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
            g.remove(&ids)?;
            Ok(ids.len())
        })
        .await?
    }

    /// A subject's encounters.
    pub async fn subject(&self, subject_id: String) -> Result<SubjectRecord, EngineError> {
        validate_subject_id(&subject_id)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || Ok(lock(&store)?.subject(&subject_id)?)).await?
    }

    /// Gallery counts and models.
    pub async fn stats(&self) -> Result<Stats, EngineError> {
        let store = self.store.clone();
        let s = tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.stats()?)).await??;
        let m = &self.face_model;
        Ok(Stats {
            subjects: s.subjects,
            encounters: s.encounters,
            templates: s.templates,
            models: vec![(m.id.clone(), Modality::Face, m.dim as u32, m.sha256.clone())],
        })
    }
}

fn lock(store: &Mutex<Store>) -> Result<std::sync::MutexGuard<'_, Store>, EngineError> {
    store.lock().map_err(|_| EngineError::Internal("store lock poisoned".into()))
}

/// Subject ids are opaque to cotejo but must be printable and bounded.
fn validate_subject_id(id: &str) -> Result<(), EngineError> {
    if id.is_empty() {
        return Err(EngineError::invalid("subject_id", "is required"));
    }
    if id.len() > 128 {
        return Err(EngineError::invalid("subject_id", "is longer than 128 bytes"));
    }
    if id.chars().any(char::is_control) {
        return Err(EngineError::invalid("subject_id", "contains control characters"));
    }
    Ok(())
}

/// The face index of the current model from every stored face template.
fn rebuild(store: &Store, model: &FaceModel) -> Result<(VectorIndex, u64), EngineError> {
    let mut index = VectorIndex::new(model.dim)?;
    let mut foreign = 0u64;
    let mut owners: HashMap<String, Arc<str>> = HashMap::new();
    let mut batch = Batch::default();
    let mut failure = None;
    store.for_each_template(Modality::Face, |t| {
        if t.template.model_id != model.id || t.template.vector.len() != model.dim {
            foreign += 1;
            return Ok(());
        }
        let owner = owners.entry(t.subject_id.clone()).or_insert_with(|| t.subject_id.as_str().into());
        batch.ids.push(t.template_id);
        batch.owners.push(owner.clone());
        batch.vectors.extend_from_slice(&t.template.vector);
        if batch.ids.len() >= 4096 && failure.is_none() {
            failure = batch.flush_into(&mut index).err();
        }
        Ok(())
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    batch.flush_into(&mut index)?;
    Ok((index, foreign))
}

/// Templates gathered for one `add` call.
#[derive(Debug, Default)]
struct Batch {
    ids: Vec<i64>,
    owners: Vec<Arc<str>>,
    vectors: Vec<f32>,
}

impl Batch {
    fn flush_into(&mut self, index: &mut VectorIndex) -> Result<(), crate::index::IndexError> {
        let r = index.add(&self.ids, &self.owners, &self.vectors);
        self.ids.clear();
        self.owners.clear();
        self.vectors.clear();
        r
    }
}
