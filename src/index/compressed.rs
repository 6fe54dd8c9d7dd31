//! Exact search over compressed vectors: an int8 or 4-bit scan picks a
//! shortlist and the float32 vectors re-rank it, so the answer is the exact
//! one whenever the true best are inside the shortlist (recall measured in
//! BENCHMARKS.md).

use std::collections::HashMap;

use super::{int4::Int4Codes, int8::Int8Codes};

/// The compressed codes scanned first.
pub(super) enum Codes {
    Int8(Int8Codes),
    Int4(Int4Codes),
}

impl Codes {
    fn push(&mut self, v: &[f32]) {
        match self {
            Self::Int8(c) => c.push(v),
            Self::Int4(c) => c.push(v),
        }
    }

    fn swap_remove(&mut self, p: usize) {
        match self {
            Self::Int8(c) => c.swap_remove(p),
            Self::Int4(c) => c.swap_remove(p),
        }
    }

    fn top(&self, q: &[f32], r: usize, threads: usize) -> Vec<(usize, f32)> {
        match self {
            Self::Int8(c) => c.top(q, r, threads),
            Self::Int4(c) => c.top(q, r, threads),
        }
    }

    fn top_batch(&self, q: &[f32], r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
        match self {
            Self::Int8(c) => c.top_batch(q, r, threads),
            Self::Int4(c) => c.top_batch(q, r, threads),
        }
    }
}

/// Float32 vectors by position with their int8 codes.
pub(super) struct Compressed {
    dim: usize,
    ids: Vec<i64>,
    positions: HashMap<i64, usize>,
    vectors: Vec<f32>,
    codes: Codes,
    /// Shortlist size re-ranked in float32 (at least k).
    rerank: usize,
    threads: usize,
}

impl Compressed {
    /// `four_bit`: 4-bit codes instead of int8 (half the bytes scanned).
    pub(super) fn new(dim: usize, four_bit: bool, rerank: usize, threads: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            positions: HashMap::new(),
            vectors: Vec::new(),
            codes: if four_bit { Codes::Int4(Int4Codes::new(dim)) } else { Codes::Int8(Int8Codes::new(dim)) },
            rerank: rerank.max(1),
            threads: threads.max(1),
        }
    }

    pub(super) fn set_rerank(&mut self, rerank: usize) {
        self.rerank = rerank.max(1);
    }

    pub(super) fn ids(&self) -> &[i64] {
        &self.ids
    }

    pub(super) fn vectors(&self) -> &[f32] {
        &self.vectors
    }

    pub(super) fn add(&mut self, ids: &[i64], vectors: &[f32]) {
        // Re-adding an id replaces its vector.
        let present: Vec<i64> = ids.iter().copied().filter(|id| self.positions.contains_key(id)).collect();
        self.remove(&present);
        for &id in ids {
            self.positions.insert(id, self.ids.len());
            self.ids.push(id);
        }
        self.vectors.extend_from_slice(vectors);
        self.codes.push(vectors);
    }

    /// Moves the last position's vector into `p` (the codes and ids are
    /// swapped by their own swap_remove).
    fn move_last_to(&mut self, p: usize) {
        let last = self.ids.len() - 1;
        if p != last {
            let (d, tail) = (self.dim, last * self.dim);
            self.vectors.copy_within(tail..tail + d, p * d);
            self.positions.insert(self.ids[last], p);
        }
        self.vectors.truncate(last * self.dim);
    }

    pub(super) fn remove(&mut self, ids: &[i64]) -> usize {
        let mut n = 0;
        for id in ids {
            if let Some(p) = self.positions.remove(id) {
                self.codes.swap_remove(p);
                self.move_last_to(p);
                self.ids.swap_remove(p);
                n += 1;
            }
        }
        n
    }

    /// The `k` best (template id, exact inner product) per query, best first.
    pub(super) fn search(&self, queries: &[f32], k: usize) -> Vec<Vec<(i64, f32)>> {
        let r = self.rerank.max(k);
        let shortlists = if queries.len() == self.dim {
            vec![self.codes.top(queries, r, self.threads)]
        } else {
            self.codes.top_batch(queries, r, self.threads)
        };
        shortlists
            .into_iter()
            .zip(queries.chunks_exact(self.dim))
            .map(|(short, q)| {
                let mut exact: Vec<(i64, f32)> = short
                    .into_iter()
                    .map(|(p, _)| {
                        let row = &self.vectors[p * self.dim..(p + 1) * self.dim];
                        (self.ids[p], super::dot(row, q))
                    })
                    .collect();
                exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                exact.truncate(k);
                exact
            })
            .collect()
    }
}
