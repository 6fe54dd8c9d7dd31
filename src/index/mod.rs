//! 1:N candidate search: an exact inner-product faiss index per embedding
//! model, keyed by template id. Derived data: rebuilt from the store.

use std::{collections::HashMap, sync::Arc};

use faiss::{ConcurrentIndex, FlatIndex, IdMap, Idx, Index, index::flat::FlatIndexImpl, selector::IdSelector};

/// Why an index operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// faiss reported an error.
    #[error("faiss: {0}")]
    Faiss(#[from] faiss::error::Error),
    /// A vector of the wrong length.
    #[error("vector has {got} values, index dimension is {expected}")]
    Dimension { expected: usize, got: usize },
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

/// Exact inner-product search over unit vectors.
pub struct VectorIndex {
    dim: usize,
    index: IdMap<FlatIndexImpl>,
    owners: HashMap<i64, Arc<str>>,
}

impl std::fmt::Debug for VectorIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorIndex").field("dim", &self.dim).field("len", &self.owners.len()).finish()
    }
}

impl VectorIndex {
    /// An empty index of dimension `dim`.
    pub fn new(dim: usize) -> Result<Self, IndexError> {
        let flat = FlatIndex::new_ip(u32::try_from(dim).unwrap_or(u32::MAX))?;
        Ok(Self { dim, index: IdMap::new(flat)?, owners: HashMap::new() })
    }

    /// Dimension of the vectors.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Adds vectors (row-major, `ids.len() * dim` values) owned by `owners`.
    pub fn add(&mut self, ids: &[i64], owners: &[Arc<str>], vectors: &[f32]) -> Result<(), IndexError> {
        if vectors.len() != ids.len() * self.dim || owners.len() != ids.len() {
            return Err(IndexError::Dimension { expected: ids.len() * self.dim, got: vectors.len() });
        }
        let idx: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        self.index.add_with_ids(vectors, &idx)?;
        for (id, owner) in ids.iter().zip(owners) {
            self.owners.insert(*id, owner.clone());
        }
        Ok(())
    }

    /// Removes templates; returns how many were present.
    pub fn remove(&mut self, ids: &[i64]) -> Result<usize, IndexError> {
        // Owners first: a hit without an owner is never returned, so the
        // removal holds even if faiss fails below.
        for id in ids {
            self.owners.remove(id);
        }
        let idx: Vec<Idx> = ids.iter().map(|&i| Idx::new(i as u64)).collect();
        let sel = IdSelector::batch(&idx)?;
        Ok(self.index.remove_ids(&sel)?)
    }

    /// The `k` nearest templates, best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.dim {
            return Err(IndexError::Dimension { expected: self.dim, got: query.len() });
        }
        let k = k.min(self.len());
        if k == 0 {
            return Ok(Vec::new());
        }
        let r = ConcurrentIndex::search(&self.index, query, k)?;
        Ok(r.labels
            .iter()
            .zip(&r.distances)
            .filter_map(|(label, &score)| {
                let id = label.get()? as i64;
                let subject_id = self.owners.get(&id)?.clone();
                Some(Hit { template_id: id, subject_id, score })
            })
            .collect())
    }
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
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn add_search_remove() {
        let mut ix = VectorIndex::new(3).expect("index");
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let vs: Vec<f32> = [unit(&[1.0, 0.0, 0.0]), unit(&[0.0, 1.0, 0.0]), unit(&[0.9, 0.1, 0.0])].concat();
        ix.add(&[10, 20, 30], &[a.clone(), b.clone(), a.clone()], &vs).expect("add");
        let hits = ix.search(&unit(&[1.0, 0.05, 0.0]), 3).expect("search");
        assert_eq!(hits[0].subject_id, a);
        assert_eq!(hits.len(), 3);
        let per = best_per_subject(&hits, 10);
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].0, a);
        assert_eq!(ix.remove(&[10, 30]).expect("remove"), 2);
        let hits = ix.search(&unit(&[1.0, 0.0, 0.0]), 3).expect("search");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].subject_id, b);
        assert!(ix.search(&[1.0], 1).is_err());
    }
}
