//! The approximate faiss indexes: IVF (inverted lists over k-means cells)
//! and HNSW (a navigable small-world graph). Both return the exact inner
//! product of what they find; what they may miss is measured as recall
//! against the exact index (BENCHMARKS.md).

use super::{IndexError, dot, faiss_ix::FaissIndex, merge_top};

/// IVF-Flat. It needs training: until a gallery has `train_from` vectors
/// they are kept in a staging area searched exactly; then k-means cells are
/// trained on all of them. Vectors added later go to the trained cells.
pub(super) struct Ivf {
    dim: usize,
    nlist: usize,
    nprobe: usize,
    train_from: usize,
    index: Option<FaissIndex>,
    trained_on: usize,
    staging_ids: Vec<i64>,
    staging: Vec<f32>,
    /// While bulk loading, training waits for [`Ivf::finish`].
    defer: bool,
}

impl Ivf {
    pub(super) fn new(dim: usize, nlist: usize, nprobe: usize, train_from: usize) -> Self {
        Self {
            dim,
            nlist,
            nprobe: nprobe.max(1),
            train_from: train_from.max(1),
            index: None,
            trained_on: 0,
            staging_ids: Vec::new(),
            staging: Vec::new(),
            defer: false,
        }
    }

    /// Puts back the state a snapshot held.
    pub(super) fn restore_state(
        &mut self,
        index: Option<FaissIndex>,
        trained_on: usize,
        staging_ids: Vec<i64>,
        staging: Vec<f32>,
    ) -> Result<(), IndexError> {
        if let Some(ix) = &index {
            ix.set("nprobe", self.nprobe as f64)?;
        }
        self.index = index;
        self.trained_on = trained_on;
        self.staging_ids = staging_ids;
        self.staging = staging;
        Ok(())
    }

    pub(super) fn set_nprobe(&mut self, nprobe: usize) -> Result<(), IndexError> {
        self.nprobe = nprobe.max(1);
        match &self.index {
            Some(ix) => ix.set("nprobe", self.nprobe as f64),
            None => Ok(()),
        }
    }

    pub(super) fn set_defer(&mut self, defer: bool) {
        self.defer = defer;
    }

    /// Vectors the cells were trained on (0: not trained yet).
    pub(super) fn trained_on(&self) -> usize {
        self.trained_on
    }

    pub(super) fn faiss(&self) -> Option<&FaissIndex> {
        self.index.as_ref()
    }

    pub(super) fn staging(&self) -> (&[i64], &[f32]) {
        (&self.staging_ids, &self.staging)
    }

    pub(super) fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        if let Some(ix) = &mut self.index {
            return ix.add(ids, vectors);
        }
        self.staging_ids.extend_from_slice(ids);
        self.staging.extend_from_slice(vectors);
        if !self.defer { self.finish() } else { Ok(()) }
    }

    /// Trains the cells once enough vectors are staged.
    pub(super) fn finish(&mut self) -> Result<(), IndexError> {
        self.defer = false;
        if self.index.is_some() || self.staging_ids.len() < self.train_from {
            return Ok(());
        }
        let n = self.staging_ids.len();
        let nlist = cells(self.nlist, n);
        let mut ix = FaissIndex::new(self.dim, &format!("IVF{nlist},Flat"))?;
        // k-means on an evenly strided sample of at most 64 vectors per cell.
        let sample_n = n.min(64 * nlist);
        let step = n / sample_n;
        let mut sample = Vec::with_capacity(sample_n * self.dim);
        for i in (0..n).step_by(step.max(1)).take(sample_n) {
            sample.extend_from_slice(&self.staging[i * self.dim..(i + 1) * self.dim]);
        }
        tracing::info!(vectors = n, cells = nlist, sample = sample_n, "training the IVF face index");
        ix.train(&sample)?;
        ix.add(&self.staging_ids, &self.staging)?;
        ix.set("nprobe", self.nprobe as f64)?;
        self.index = Some(ix);
        self.trained_on = n;
        self.staging_ids = Vec::new();
        self.staging = Vec::new();
        Ok(())
    }

    pub(super) fn remove(&mut self, ids: &[i64]) -> Result<(), IndexError> {
        if let Some(ix) = &mut self.index {
            ix.remove(ids)?;
        }
        if !self.staging_ids.is_empty() {
            let gone: std::collections::HashSet<i64> = ids.iter().copied().collect();
            let (mut keep_ids, mut keep) = (Vec::new(), Vec::new());
            for (i, id) in self.staging_ids.iter().enumerate() {
                if !gone.contains(id) {
                    keep_ids.push(*id);
                    keep.extend_from_slice(&self.staging[i * self.dim..(i + 1) * self.dim]);
                }
            }
            self.staging_ids = keep_ids;
            self.staging = keep;
        }
        Ok(())
    }

    pub(super) fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(i64, f32)>>, IndexError> {
        let mut out = match &self.index {
            Some(ix) => ix.search(queries, self.dim, k)?,
            None => vec![Vec::new(); queries.len() / self.dim],
        };
        if !self.staging_ids.is_empty() {
            for (q, hits) in queries.chunks_exact(self.dim).zip(&mut out) {
                let staged = self
                    .staging_ids
                    .iter()
                    .zip(self.staging.chunks_exact(self.dim))
                    .map(|(&id, row)| (id, dot(row, q)));
                *hits = merge_top(hits.drain(..).chain(staged), k);
            }
        }
        Ok(out)
    }
}

/// Cells for `n` vectors: the configured count, or about 4*sqrt(n); never
/// fewer than 39 training vectors per cell (faiss' floor).
fn cells(configured: usize, n: usize) -> usize {
    let want = if configured > 0 { configured } else { (4.0 * (n as f64).sqrt()) as usize };
    want.clamp(1, 65_536).min((n / 39).max(1))
}

/// HNSW over the flat vectors. The graph cannot drop a vector: a deleted
/// template stays in it as a tombstone that searches skip (its owner is gone)
/// and fetch past, until the index is rebuilt.
pub(super) struct Hnsw {
    dim: usize,
    index: FaissIndex,
    dead: usize,
}

impl Hnsw {
    pub(super) fn new(dim: usize, m: usize, ef_construction: usize, ef_search: usize) -> Result<Self, IndexError> {
        let index = FaissIndex::new(dim, &format!("IDMap,HNSW{},Flat", m.max(4)))?;
        index.set("efConstruction", ef_construction.max(8) as f64)?;
        index.set("efSearch", ef_search.max(1) as f64)?;
        Ok(Self { dim, index, dead: 0 })
    }

    pub(super) fn restored(dim: usize, index: FaissIndex, ef_search: usize, dead: usize) -> Result<Self, IndexError> {
        index.set("efSearch", ef_search.max(1) as f64)?;
        Ok(Self { dim, index, dead })
    }

    pub(super) fn faiss(&self) -> &FaissIndex {
        &self.index
    }

    pub(super) fn dead(&self) -> usize {
        self.dead
    }

    pub(super) fn add(&mut self, ids: &[i64], vectors: &[f32]) -> Result<(), IndexError> {
        self.index.add(ids, vectors)
    }

    /// Marks `n` held vectors deleted.
    pub(super) fn bury(&mut self, n: usize) {
        self.dead += n;
    }

    /// The `k` best per query; tombstones are fetched past (up to 4,096 of them).
    pub(super) fn search(&self, queries: &[f32], k: usize) -> Result<Vec<Vec<(i64, f32)>>, IndexError> {
        self.index.search(queries, self.dim, k + self.dead.min(4096))
    }
}
