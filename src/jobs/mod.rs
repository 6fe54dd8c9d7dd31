//! Batch re-identification (de-duplication) computations, free of storage
//! and transport: the job's parameters, face comparisons by blocks of
//! matrix products, and the clusters candidate pairs form.

use std::collections::{BTreeMap, HashMap};

use ndarray::{Array2, ArrayView2, s};
use serde::{Deserialize, Serialize};

use crate::biometric::Modality;

/// Which subjects a job covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Every enrolled subject.
    All,
    /// These subjects.
    Subjects(Vec<String>),
    /// Subjects created in `[from_ms, to_ms)` (0: unbounded).
    Enrolled {
        /// Start, Unix ms.
        from_ms: i64,
        /// End (exclusive), Unix ms.
        to_ms: i64,
    },
}

/// A de-duplication job's parameters, stored with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DedupParams {
    /// Subjects covered.
    pub scope: Scope,
    /// Faces compared.
    pub faces: bool,
    /// Fingers compared.
    pub fingers: bool,
    /// Target false-match rate per pair.
    pub target_fmr: f64,
}

/// A job's unit of work: a block of face rows or of finger templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    /// Face rows `start..end` against every later row.
    Faces {
        /// First row.
        start: usize,
        /// End row (exclusive).
        end: usize,
    },
    /// Finger templates `start..end` searched in the finger index.
    Fingers {
        /// First template.
        start: usize,
        /// End (exclusive).
        end: usize,
    },
}

/// Splits `faces` rows and `fingers` templates into numbered blocks.
pub fn plan(faces: usize, fingers: usize, face_rows: usize, finger_rows: usize) -> Vec<Block> {
    let mut out = Vec::new();
    let step = face_rows.max(1);
    for start in (0..faces).step_by(step) {
        out.push(Block::Faces { start, end: (start + step).min(faces) });
    }
    let step = finger_rows.max(1);
    for start in (0..fingers).step_by(step) {
        out.push(Block::Fingers { start, end: (start + step).min(fingers) });
    }
    out
}

/// Columns per tile of a block's product (keeps the score tile near the cache).
const TILE: usize = 4096;

/// Pairs `(i, j, cosine)` with `start <= i < end`, `i < j`, cosine >= `threshold`,
/// from matrix products of the block's rows with the rows from `start` on, tile
/// by tile, on up to `threads` threads; sorted by `(i, j)`.
pub fn face_block(
    vectors: ArrayView2<'_, f32>,
    start: usize,
    end: usize,
    threshold: f32,
    threads: usize,
) -> Vec<(usize, usize, f32)> {
    let n = vectors.nrows();
    let rows = vectors.slice(s![start..end, ..]);
    let tiles: Vec<usize> = (start..n).step_by(TILE).collect();
    let work = |k: usize, step: usize| -> Vec<(usize, usize, f32)> {
        let mut out = Vec::new();
        for &t in tiles.iter().skip(k).step_by(step) {
            let cols = vectors.slice(s![t..(t + TILE).min(n), ..]);
            let scores: Array2<f32> = rows.dot(&cols.t());
            for (bi, row) in scores.outer_iter().enumerate() {
                let i = start + bi;
                for (cj, &v) in row.iter().enumerate() {
                    let j = t + cj;
                    if j > i && v >= threshold {
                        out.push((i, j, v));
                    }
                }
            }
        }
        out
    };
    let threads = threads.clamp(1, tiles.len().max(1));
    let mut out = if threads == 1 {
        work(0, 1)
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|k| s.spawn(move || work(k, threads))).collect();
            handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
        })
    };
    out.sort_by_key(|p| (p.0, p.1));
    out
}

/// The component name of a modality score in stored pairs.
pub fn component_name(modality: Modality, finger_position: u8) -> String {
    match modality {
        Modality::Face => "face".to_owned(),
        Modality::Finger => format!("finger:{finger_position}"),
    }
}

/// The modality and position of a stored component name.
pub fn parse_component(name: &str) -> Option<(Modality, u8)> {
    match name {
        "face" => Some((Modality::Face, 0)),
        _ => name.strip_prefix("finger:")?.parse().ok().map(|p| (Modality::Finger, p)),
    }
}

/// Connected components of the pairs' graph, each sorted, largest first
/// (ties by first member).
pub fn clusters<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<Vec<String>> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut names: Vec<&str> = Vec::new();
    let mut id = |n: &'a str, parent: &mut Vec<usize>, names: &mut Vec<&'a str>| {
        *index.entry(n).or_insert_with(|| {
            parent.push(parent.len());
            names.push(n);
            parent.len() - 1
        })
    };
    for (a, b) in pairs {
        let (x, y) = (id(a, &mut parent, &mut names), id(b, &mut parent, &mut names));
        let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
        if rx != ry {
            parent[rx.max(ry)] = rx.min(ry);
        }
    }
    let mut groups: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let r = find(&mut parent, i);
        groups.entry(r).or_default().push((*n).to_owned());
    }
    let mut out: Vec<Vec<String>> = groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    out.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn face_blocks_cover_the_upper_triangle_once() {
        let v = Array2::from_shape_fn((7, 3), |(i, k)| if k == i % 3 { 1.0 } else { 0.0 });
        let mut all = Vec::new();
        for b in plan(7, 0, 3, 1) {
            let Block::Faces { start, end } = b else { panic!("face block expected") };
            all.extend(face_block(v.view(), start, end, 0.5, 2));
        }
        all.sort_by_key(|p| (p.0, p.1));
        // Rows with the same i % 3 are identical: pairs (0,3), (0,6), (3,6), (1,4), (2,5).
        let pairs: Vec<(usize, usize)> = all.iter().map(|p| (p.0, p.1)).collect();
        assert_eq!(pairs, vec![(0, 3), (0, 6), (1, 4), (2, 5), (3, 6)]);
        assert_eq!(plan(5, 3, 2, 2).len(), 5);
    }

    #[test]
    fn clusters_are_connected_components() {
        let c = clusters([("a", "b"), ("c", "d"), ("b", "e")]);
        assert_eq!(c, vec![vec!["a".to_owned(), "b".into(), "e".into()], vec!["c".into(), "d".into()]]);
        assert_eq!(parse_component(&component_name(Modality::Finger, 7)), Some((Modality::Finger, 7)));
        assert_eq!(parse_component("face"), Some((Modality::Face, 0)));
        assert_eq!(parse_component("nose"), None);
    }
}
