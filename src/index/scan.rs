//! What the int8 and int4 scans share: the per-vector scale and the int8
//! quantization (of gallery rows and of queries), the running top-r of a
//! stream of scores, and the split of a gallery's rows over threads with the
//! merge of their answers.

use std::{cmp::Ordering, ops::Range, thread};

/// Galleries with at least this many rows are split across threads; below, spawning costs more than it saves.
pub(super) const PARALLEL_MIN_ROWS: usize = 65_536;

/// The scale mapping `x` onto integer codes in `[-levels, levels]`: `max|x_i| / levels`. An all-zero
/// vector (or one holding an infinity) gets scale 1 so codes stay finite and well defined.
pub(super) fn scale(x: &[f32], levels: f32) -> f32 {
    let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if max > 0.0 && max.is_finite() { max / levels } else { 1.0 }
}

/// Quantizes one vector to int8, appending its codes to `out`; returns its scale.
pub(super) fn quantize_i8(x: &[f32], out: &mut Vec<i8>) -> f32 {
    let s = scale(x, 127.0);
    // `as` maps NaN to 0; the clamp keeps -128 out, which the AVX2 kernels rely on.
    out.extend(x.iter().map(|&v| (v / s).round().clamp(-127.0, 127.0) as i8));
    s
}

/// Best first; equal scores order by position so every split of the rows gives the same answer.
pub(super) fn better(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best `r` of a stream of (position, score) offered in increasing position order. Candidates go to a
/// buffer of up to `2r`; when full it is cut back to the best `r`, whose worst becomes the bar to beat.
pub(super) struct TopR {
    r: usize,
    buf: Vec<(usize, f32)>,
    /// Scores at or below this cannot enter: `r` better ones (or equal with lower positions) are held.
    bar: f32,
}

impl TopR {
    pub(super) fn new(r: usize) -> Self {
        Self { r, buf: Vec::with_capacity(2 * r), bar: f32::NEG_INFINITY }
    }

    #[inline]
    pub(super) fn offer(&mut self, pos: usize, score: f32) {
        if score > self.bar {
            self.insert(pos, score);
        }
    }

    fn insert(&mut self, pos: usize, score: f32) {
        if self.buf.len() == 2 * self.r {
            self.buf.select_nth_unstable_by(self.r - 1, better);
            self.buf.truncate(self.r);
            self.bar = self.buf[self.r - 1].1;
            if score <= self.bar {
                return;
            }
        }
        self.buf.push((pos, score));
    }
}

/// The best `r` rows of `n` for each of `nq` queries, best first. `scan(rows, r)` scores a range of rows
/// for every query; from [`PARALLEL_MIN_ROWS`] rows on, `threads` contiguous ranges run at once (the
/// calling thread scans the first) and their answers are merged.
pub(super) fn split_search<F>(n: usize, nq: usize, r: usize, threads: usize, scan: F) -> Vec<Vec<(usize, f32)>>
where
    F: Fn(Range<usize>, usize) -> Vec<TopR> + Sync,
{
    if r == 0 || n == 0 {
        return vec![Vec::new(); nq];
    }
    // Buffers are sized from `r`; more than `n` could never be filled.
    let r = r.min(n);
    let threads = if n >= PARALLEL_MIN_ROWS { threads.clamp(1, n) } else { 1 };
    let chunk = n.div_ceil(threads);
    let range = |t: usize| (t * chunk).min(n)..((t + 1) * chunk).min(n);
    let scan = &scan;
    let mut parts = thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|t| s.spawn(move || scan(range(t), r))).collect();
        let mut parts = vec![scan(range(0), r)];
        // A panicking worker is a bug here; re-raise it on the caller's thread rather than hide it.
        parts.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        parts
    });
    (0..nq)
        .map(|q| {
            let mut merged: Vec<(usize, f32)> = parts.iter_mut().flat_map(|p| p[q].buf.drain(..)).collect();
            merged.sort_unstable_by(better);
            merged.truncate(r);
            merged
        })
        .collect()
}

/// Deterministic test data for the int8 and int4 tests.
#[cfg(test)]
pub(super) mod test_data {
    use std::cmp::Ordering;

    use super::{PARALLEL_MIN_ROWS, better};
    use crate::index::dot;

    /// xorshift64*: deterministic test data without a dependency.
    pub(in crate::index) struct Rng(pub(in crate::index) u64);

    impl Rng {
        pub(in crate::index) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Roughly normal: four uniforms on [0, 1), summed and centred.
        pub(in crate::index) fn normal(&mut self) -> f32 {
            (0..4).map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32).sum::<f32>() - 2.0
        }

        /// A uniform int8 code in [-127, 127].
        pub(in crate::index) fn code(&mut self) -> i8 {
            ((self.next() % 255) as i16 - 127) as i8
        }
    }

    pub(in crate::index) fn normalize(v: &mut [f32]) {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
    }

    /// `n` unit vectors of dimension `dim`, row-major.
    pub(in crate::index) fn unit_vectors(seed: u64, n: usize, dim: usize) -> Vec<f32> {
        let mut rng = Rng(seed);
        let mut v: Vec<f32> = (0..n * dim).map(|_| rng.normal()).collect();
        v.chunks_exact_mut(dim).for_each(normalize);
        v
    }

    /// What the int8 and int4 code tables share, for the tests both run.
    pub(in crate::index) trait ScanCodes: Sized {
        fn new(dim: usize) -> Self;
        fn push(&mut self, vectors: &[f32]);
        fn swap_remove(&mut self, pos: usize);
        fn len(&self) -> usize;
        fn is_empty(&self) -> bool;
        fn bytes(&self) -> usize;
        fn top(&self, query: &[f32], r: usize, threads: usize) -> Vec<(usize, f32)>;
        fn top_batch(&self, queries: &[f32], r: usize, threads: usize) -> Vec<Vec<(usize, f32)>>;
        /// The codes (as bytes) and the scales, to compare two tables.
        fn state(&self) -> (Vec<u8>, Vec<f32>);
    }

    /// A table of `n` random unit vectors, and the vectors.
    pub(in crate::index) fn gallery<C: ScanCodes>(seed: u64, n: usize, dim: usize) -> (C, Vec<f32>) {
        let vectors = unit_vectors(seed, n, dim);
        let mut codes = C::new(dim);
        codes.push(&vectors);
        (codes, vectors)
    }

    /// For noisy copies of gallery rows, the exact best row is among the `r`
    /// the scan picks, and the scan's best score is within `tolerance` of its exact one.
    pub(in crate::index) fn exact_best_is_among_top<C: ScanCodes>(r: usize, tolerance: f32) {
        let dim = 192;
        let (codes, vectors) = gallery::<C>(3, 20_000, dim);
        let mut rng = Rng(99);
        for i in 0..50 {
            let src = &vectors[(i * 397) * dim..][..dim];
            let mut q: Vec<f32> = src.iter().map(|&x| x + 0.1 * rng.normal()).collect();
            normalize(&mut q);
            let exact =
                vectors.chunks_exact(dim).map(|row| dot(row, &q)).enumerate().max_by(|a, b| a.1.total_cmp(&b.1));
            let top = codes.top(&q, r, 1);
            assert_eq!(top.len(), r);
            assert!(top.windows(2).all(|w| better(&w[0], &w[1]) == Ordering::Less));
            assert!(top.iter().any(|&(p, _)| Some(p) == exact.map(|e| e.0)), "query {i}");
            assert!((top[0].1 - dot(&vectors[top[0].0 * dim..][..dim], &q)).abs() < tolerance);
        }
    }

    pub(in crate::index) fn threads_and_batches_agree_with_single_queries<C: ScanCodes>() {
        let dim = 77;
        let (codes, _) = gallery::<C>(5, PARALLEL_MIN_ROWS + 1_001, dim);
        let queries = unit_vectors(11, 5, dim);
        let batch = codes.top_batch(&queries, 40, 3);
        assert_eq!(batch.len(), 5);
        for (q, from_batch) in queries.chunks_exact(dim).zip(&batch) {
            let one = codes.top(q, 40, 1);
            assert_eq!(one, codes.top(q, 40, 2));
            assert_eq!(&one, from_batch);
            assert_eq!(one, codes.top_batch(q, 40, 1)[0]);
        }
    }

    /// `row_bytes`: bytes a 40-dimensional row takes, code and scale.
    pub(in crate::index) fn swap_remove_keeps_the_other_rows<C: ScanCodes>(row_bytes: usize) {
        let dim = 40;
        let (mut codes, vectors) = gallery::<C>(13, 10, dim);
        codes.swap_remove(3);
        codes.swap_remove(8);
        codes.swap_remove(1);
        assert_eq!((codes.len(), codes.bytes()), (7, 7 * row_bytes));
        // 9 moves into 3, 8 is last when removed, then 7 (last) moves into 1.
        let expected = [0, 7, 2, 9, 4, 5, 6];
        let mut fresh = C::new(dim);
        expected.iter().for_each(|&i| fresh.push(&vectors[i * dim..][..dim]));
        assert_eq!(codes.state(), fresh.state());
        let top = codes.top(&vectors[9 * dim..][..dim], 1, 1);
        assert_eq!(top[0].0, 3);
    }

    pub(in crate::index) fn empty_gallery_and_large_r<C: ScanCodes>() {
        let mut codes = C::new(8);
        assert!(codes.is_empty());
        assert!(codes.top(&[1.0; 8], 5, 2).is_empty());
        assert_eq!(codes.top_batch(&[1.0; 16], 5, 1), vec![Vec::new(), Vec::new()]);
        assert!(codes.top_batch(&[], 5, 1).is_empty());
        codes.push(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let top = codes.top(&[1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 10, 1);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1]);
        assert!((top[0].1 - 1.0).abs() < 0.01 && (top[1].1 - 0.5).abs() < 0.01);
        assert!(codes.top(&[1.0; 8], 0, 1).is_empty());
        assert_eq!(codes.top_batch(&[1.0; 8], usize::MAX, 4)[0].len(), 2);
    }

    /// Implements [`ScanCodes`] for a code table by calling its own methods.
    macro_rules! scan_codes {
        ($t:ty, |$c:ident| $state:expr) => {
            impl $crate::index::scan::test_data::ScanCodes for $t {
                fn new(dim: usize) -> Self {
                    <$t>::new(dim)
                }
                fn push(&mut self, vectors: &[f32]) {
                    <$t>::push(self, vectors)
                }
                fn swap_remove(&mut self, pos: usize) {
                    <$t>::swap_remove(self, pos)
                }
                fn len(&self) -> usize {
                    <$t>::len(self)
                }
                fn is_empty(&self) -> bool {
                    <$t>::is_empty(self)
                }
                fn bytes(&self) -> usize {
                    <$t>::bytes(self)
                }
                fn top(&self, query: &[f32], r: usize, threads: usize) -> Vec<(usize, f32)> {
                    <$t>::top(self, query, r, threads)
                }
                fn top_batch(&self, queries: &[f32], r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
                    <$t>::top_batch(self, queries, r, threads)
                }
                fn state(&self) -> (Vec<u8>, Vec<f32>) {
                    let $c = self;
                    $state
                }
            }
        };
    }
    pub(in crate::index) use scan_codes;
}
