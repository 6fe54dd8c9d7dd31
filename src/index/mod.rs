//! 1:N candidate search over face embeddings, keyed by template id. Derived
//! data: rebuilt from the store, or restored from an encrypted snapshot plus
//! a replay of the changes after it.
//!
//! Three kinds, chosen in configuration:
//! - `flat`: faiss `IndexFlatIP`, exact float32 (the default and the reference);
//! - `int8`: an int8 scan picks a shortlist that float32 re-ranks exactly;
//! - `int4`: the same with 4-bit codes (half the memory read per query).

mod compressed;
mod faiss_ix;
pub mod int4;
pub mod int8;
mod scan;
mod snapshot;

use std::{collections::HashMap, sync::Arc};

use compressed::Compressed;
use faiss_ix::FaissIndex;

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// faiss reported an error.
    #[error("faiss: {0}")]
    Faiss(#[from] faiss::error::Error),
    /// faiss' C API reported an error.
    #[error("faiss: {0}")]
    Native(String),
    /// A vector of the wrong length.
    #[error("vector has {got} values, index dimension is {expected}")]
    Dimension { expected: usize, got: usize },
    /// A snapshot that cannot be used (format, kind or model differ).
    #[error("index snapshot: {0}")]
    Snapshot(String),
}

/// Which index structure serves face searches.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexKind {
    /// Exact float32 (faiss `IndexFlatIP`).
    Flat,
    /// Exact float32 re-rank of the `rerank` best by an int8 scan.
    Int8 { rerank: usize },
    /// Exact float32 re-rank of the `rerank` best by a 4-bit scan.
    Int4 { rerank: usize },
}

impl IndexKind {
    /// Short name (`flat`, `int8`, `int4`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Int8 { .. } => "int8",
            Self::Int4 { .. } => "int4",
        }
    }

    /// Whether the candidates come from a compressed scan (re-ranked exactly).
    pub fn approximate(&self) -> bool {
        !matches!(self, Self::Flat)
    }

    /// What a snapshot must match to be reused: the structure, not the
    /// search-time parameters.
    fn build_key(&self) -> String {
        self.name().to_owned()
    }
}

/// How the face index is built and searched.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexSettings {
    /// The structure.
    pub kind: IndexKind,
    /// Threads one int8 or int4 scan uses.
    pub threads: usize,
}

impl Default for IndexSettings {
    fn default() -> Self {
        Self { kind: IndexKind::Flat, threads: 1 }
    }
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Template id.
    pub template_id: i64,
    /// Owner of the template.
    pub subject_id: Arc<str>,
    /// Inner product (cosine for unit vectors).
    pub score: f32,
}

enum Backend {
    Flat(FaissIndex),
    Compressed(Compressed),
}

/// Inner-product search over unit vectors.
pub struct VectorIndex {
    dim: usize,
    settings: IndexSettings,
    backend: Backend,
    /// Live templates and their owners: a hit without an owner (a tombstone)
    /// is never returned.
    owners: HashMap<i64, Arc<str>>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex")
            .field("dim", &self.dim)
            .field("kind", &self.settings.kind)
            .field("len", &self.owners.len())
            .finish()
    }
}

impl VectorIndex {
    /// An empty exact (flat) index of dimension `dim`.
    pub fn new(dim: usize) -> Result<Self, IndexError> {
        Self::with_settings(dim, IndexSettings::default())
    }

    /// An empty index of the configured kind.
    pub fn with_settings(dim: usize, settings: IndexSettings) -> Result<Self, IndexError> {
        let backend = match &settings.kind {
            IndexKind::Flat => Backend::Flat(FaissIndex::new(dim, "IDMap,Flat")?),
            IndexKind::Int8 { rerank } => Backend::Compressed(Compressed::new(dim, false, *rerank, settings.threads)),
            IndexKind::Int4 { rerank } => Backend::Compressed(Compressed::new(dim, true, *rerank, settings.threads)),
        };
        Ok(Self { dim, settings, backend, owners: HashMap::new() })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &IndexSettings {
        &self.settings
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of live vectors.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Whether the template is in the index.
    pub fn contains(&self, template_id: i64) -> bool {
        self.owners.contains_key(&template_id)
    }

    /// Sets the shortlist that int8 and int4 re-rank; no effect on `flat`.
    pub fn set_search_breadth(&mut self, breadth: usize) {
        let breadth = breadth.max(1);
        if let (Backend::Compressed(c), IndexKind::Int8 { rerank } | IndexKind::Int4 { rerank }) =
            (&mut self.backend, &mut self.settings.kind)
        {
            *rerank = breadth;
            c.set_rerank(breadth);
        }
    }

    /// What serves searches now, for logs and stats.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Flat(_) => "flat (exact float32)".to_owned(),
            Backend::Compressed(_) => format!("{} scan + exact float32 re-rank", self.settings.kind.name()),
        }
    }

    /// Adds vectors (row-major, `ids.len() * dim` values) owned by `owners`;
    /// an id already present is replaced.
    pub fn add(&mut self, ids: &[i64], owners: &[Arc<str>], vectors: &[f32]) -> Result<(), IndexError> {
        if vectors.len() != ids.len() * self.dim || owners.len() != ids.len() {
            return Err(IndexError::Dimension { expected: ids.len() * self.dim, got: vectors.len() });
        }
        if ids.is_empty() {
            return Ok(());
        }
        let present: Vec<i64> = ids.iter().copied().filter(|id| self.owners.contains_key(id)).collect();
        self.remove(&present)?;
        match &mut self.backend {
            Backend::Flat(f) => f.add(ids, vectors)?,
            Backend::Compressed(c) => c.add(ids, vectors),
        }
        for (id, owner) in ids.iter().zip(owners) {
            self.owners.insert(*id, owner.clone());
        }
        Ok(())
    }

    /// Removes templates; returns how many were present.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        // Owners first: a hit without an owner is never returned, so the
        // removal holds even if faiss fails below.
        let present: Vec<i64> = ids.iter().copied().filter(|id| self.owners.remove(id).is_some()).collect();
        self.drop_held(&present)?;
        Ok(present.len())
    }

    /// Drops vectors from the structure (their owners are already gone).
    fn drop_held(&mut self, ids: &[i64]) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        match &mut self.backend {
            Backend::Flat(f) => {
                f.remove(ids)?;
            }
            Backend::Compressed(c) => {
                c.remove(ids);
            }
        }
        Ok(())
    }

    /// The `k` nearest templates, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.dim {
            return Err(IndexError::Dimension { expected: self.dim, got: query.len() });
        }
        Ok(self.search_batch(query, k)?.pop().unwrap_or_default())
    }

    /// The `k` nearest templates for each query (row-major), best first.
    pub fn search_batch(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<Hit>>, IndexError> {
        if !queries.len().is_multiple_of(self.dim) {
            return Err(IndexError::Dimension { expected: self.dim, got: queries.len() % self.dim });
        }
        let nq = queries.len() / self.dim;
        let k = k.min(self.len());
        if k == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let raw = match &self.backend {
            Backend::Flat(f) => f.search(queries, self.dim, k)?,
            Backend::Compressed(c) => c.search(queries, k),
        };
        Ok(raw
            .into_iter()
            .map(|hits| {
                hits.into_iter()
                    .filter_map(|(id, score)| {
                        let subject_id = self.owners.get(&id)?.clone();
                        Some(Hit { template_id: id, subject_id, score })
                    })
                    .take(k)
                    .collect()
            })
            .collect())
    }

    /// The index as bytes (to be sealed by the store): see [`VectorIndex::restore`].
    /// `label` names what the vectors are (the embedding model).
    pub fn snapshot(&self, label: &str) -> Result<Vec<u8>, IndexError> {
        snapshot::encode(self, label)
    }

    /// An index from a snapshot made with the same kind, dimension and
    /// label, brought in line with `live` (every template the store holds
    /// for this label, with its owner): templates deleted after the snapshot
    /// are dropped (their count is returned), and the ids the store holds
    /// but the snapshot lacks are returned for the caller to add.
    pub fn restore(
        bytes: &[u8],
        dim: usize,
        settings: IndexSettings,
        label: &str,
        live: &[(i64, Arc<str>)],
    ) -> Result<(Self, Vec<i64>, usize), IndexError> {
        let (backend, held) = snapshot::decode(bytes, dim, &settings, label)?;
        let mut ix = Self { dim, settings, backend, owners: HashMap::with_capacity(live.len()) };
        let held: std::collections::HashSet<i64> = held.into_iter().collect();
        let mut missing = Vec::new();
        for (id, owner) in live {
            if held.contains(id) {
                ix.owners.insert(*id, owner.clone());
            } else {
                missing.push(*id);
            }
        }
        let gone: Vec<i64> = held.iter().copied().filter(|id| !ix.owners.contains_key(id)).collect();
        ix.drop_held(&gone)?;
        Ok((ix, missing, gone.len()))
    }
}

/// Inner product.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Best score per subject over `hits`, best first, at most `k` subjects.
pub fn best_per_subject(hits: &[Hit], k: usize) -> Vec<(Arc<str>, f32)> {
    let mut best: HashMap<Arc<str>, f32> = HashMap::new();
    for h in hits {
        let e = best.entry(h.subject_id.clone()).or_insert(f32::NEG_INFINITY);
        *e = e.max(h.score);
    }
    let mut v: Vec<(Arc<str>, f32)> = best.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(k);
    v
}

#[cfg(test)]
mod tests;
