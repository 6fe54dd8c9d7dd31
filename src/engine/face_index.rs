//! The face index as the engine keeps it (a [`DerivedIndex`]): built from
//! the configuration, loaded from its sealed snapshot plus the store's
//! changes since (or rebuilt from the store), and saved again.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Instant,
};

use tracing::info;

use super::{
    EngineError, FaceModel,
    derived::{self, DerivedIndex},
};
use crate::{
    biometric::Modality,
    config::{IndexConfig, IndexKindName},
    index::{IndexKind, IndexSettings, VectorIndex},
    store::{SealedFile, TemplateSource},
};

/// The face index of one embedding model, with the configured kind.
#[derive(Debug, Clone)]
pub(super) struct FaceIndexSpec {
    pub(super) model: FaceModel,
    pub(super) settings: IndexSettings,
}

/// The index settings from the configuration.
pub(super) fn index_settings(c: &IndexConfig) -> IndexSettings {
    let kind = match c.kind {
        IndexKindName::Flat => IndexKind::Flat,
        IndexKindName::Int8 => IndexKind::Int8 { rerank: c.int8_rerank },
        IndexKindName::Int4 => IndexKind::Int4 { rerank: c.int4_rerank },
    };
    IndexSettings { kind, threads: c.threads }
}

impl DerivedIndex for FaceIndexSpec {
    type Index = VectorIndex;
    const NAME: &'static str = "face index";
    const SNAPSHOT_FILE: &'static str = "face-index.snap";

    fn restore(
        &self,
        store: &dyn TemplateSource,
        file: &SealedFile,
    ) -> Result<Option<(VectorIndex, bool)>, EngineError> {
        let t = Instant::now();
        let Some(bytes) = file.read()? else { return Ok(None) };
        let read_ms = t.elapsed().as_millis() as u64;
        let model = &self.model;
        let mut interned: HashMap<String, Arc<str>> = HashMap::new();
        let live: Vec<(i64, Arc<str>)> = store
            .template_owners(Modality::Face, &model.id)?
            .into_iter()
            .map(|(id, s)| (id, intern(&mut interned, &s)))
            .collect();
        let listed_ms = t.elapsed().as_millis() as u64;
        let (mut index, missing, dropped) =
            VectorIndex::restore(&bytes, model.dim, self.settings.clone(), &model.id, &live)?;
        let restored_ms = t.elapsed().as_millis() as u64;
        let mut batch = Batch::default();
        for t in store.templates_with_ids(&missing)? {
            if let Some(v) = t.template.data.embedding() {
                batch.push(t.template_id, intern(&mut interned, &t.subject_id), v);
            }
        }
        batch.flush_into(&mut index)?;
        info!(
            model = %model.id, index = %index.describe(), templates = index.len(),
            added = missing.len(), removed = dropped, read_ms, listed_ms, restored_ms,
            ms = t.elapsed().as_millis() as u64,
            "face index restored from its snapshot and the store's changes since"
        );
        Ok(Some((index, !missing.is_empty() || dropped > 0)))
    }

    /// The face index of the current model from every stored face template.
    fn rebuild(&self, store: &dyn TemplateSource) -> Result<VectorIndex, EngineError> {
        let model = &self.model;
        let mut index = VectorIndex::with_settings(model.dim, self.settings.clone())?;
        let mut owners: HashMap<String, Arc<str>> = HashMap::new();
        let mut batch = Batch::default();
        let mut failure = None;
        store.each_template(Modality::Face, &mut |t| {
            let vector = match t.template.data.embedding() {
                Some(v) if t.template.model_id == model.id && v.len() == model.dim => v,
                _ => return Ok(()),
            };
            batch.push(t.template_id, intern(&mut owners, &t.subject_id), vector);
            if batch.ids.len() >= 4096 && failure.is_none() {
                failure = batch.flush_into(&mut index).err();
            }
            Ok(())
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        batch.flush_into(&mut index)?;
        Ok(index)
    }

    /// The index is read-locked while it is serialized (searches go on,
    /// enrollments wait).
    fn write_snapshot(&self, index: &RwLock<VectorIndex>, file: &SealedFile) -> Result<(), EngineError> {
        let t = Instant::now();
        let (bytes, templates) = {
            let g = index.read().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
            (g.snapshot(&self.model.id)?, g.len())
        };
        derived::at_low_priority(|| file.write(&bytes))?;
        info!(templates, bytes = bytes.len(), ms = t.elapsed().as_millis() as u64, "face index snapshot written");
        Ok(())
    }

    fn describe(index: &VectorIndex) -> String {
        format!("{} templates, {}", index.len(), index.describe())
    }
}

/// Templates gathered for one `add` call.
#[derive(Debug, Default)]
struct Batch {
    ids: Vec<i64>,
    owners: Vec<Arc<str>>,
    vectors: Vec<f32>,
}

impl Batch {
    fn push(&mut self, id: i64, owner: Arc<str>, vector: &[f32]) {
        self.ids.push(id);
        self.owners.push(owner);
        self.vectors.extend_from_slice(vector);
    }

    fn flush_into(&mut self, index: &mut VectorIndex) -> Result<(), crate::index::IndexError> {
        let r = index.add(&self.ids, &self.owners, &self.vectors);
        self.ids.clear();
        self.owners.clear();
        self.vectors.clear();
        r
    }
}

/// One shared `Arc<str>` per subject id (a subject's templates share their owner).
pub(super) fn intern(seen: &mut HashMap<String, Arc<str>>, subject_id: &str) -> Arc<str> {
    if let Some(owner) = seen.get(subject_id) {
        return owner.clone();
    }
    let owner: Arc<str> = subject_id.into();
    seen.insert(subject_id.to_owned(), owner.clone());
    owner
}
