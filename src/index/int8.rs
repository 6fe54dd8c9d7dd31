//! Int8-compressed gallery for approximate inner-product search: one i8 code per value and one f32
//! scale per vector. It finds candidates fast; the exact f32 vectors, kept elsewhere, re-rank them.
#![cfg_attr(target_arch = "x86_64", expect(unsafe_code, reason = "AVX2 kernel; each unsafe block has a SAFETY note"))]

use std::{fmt, ops::Range};

use super::scan::{TopR, quantize_i8, split_search};

/// Rows scored per block. A block (dim 192: 48 KiB) stays in cache while every query of a batch is scored
/// against it, so the gallery streams from memory once per batch rather than once per query.
const BLOCK_ROWS: usize = 256;

/// Int8 codes of a gallery of vectors, one scale per vector.
#[derive(Clone)]
pub struct Int8Codes {
    dim: usize,
    /// `len * dim` codes, row-major, each within `[-127, 127]`.
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl fmt::Debug for Int8Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Int8Codes").field("dim", &self.dim).field("len", &self.len()).finish_non_exhaustive()
    }
}

impl Int8Codes {
    /// An empty gallery of `dim`-dimensional vectors.
    /// Panics if `dim` is zero.
    pub fn new(dim: usize) -> Self {
        assert!(dim > 0, "Int8Codes: dimension must be positive");
        Self { dim, codes: Vec::new(), scales: Vec::new() }
    }

    /// Values per vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.scales.len()
    }

    /// Whether the gallery holds no vector.
    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Appends vectors (row-major, n*dim values).  Quantization: per vector, s = max|x_i| / 127 (s = 1 if
    /// the vector is all zero), code_i = round(x_i / s) clamped to [-127, 127] (never -128).
    /// Panics if `vectors.len()` is not a multiple of the dimension.
    pub fn push(&mut self, vectors: &[f32]) {
        assert_eq!(vectors.len() % self.dim, 0, "Int8Codes::push: {} values for dimension {}", vectors.len(), self.dim);
        self.codes.reserve(vectors.len());
        self.scales.reserve(vectors.len() / self.dim);
        for v in vectors.chunks_exact(self.dim) {
            let s = quantize_i8(v, &mut self.codes);
            self.scales.push(s);
        }
    }

    /// Removes position `pos` by moving the last row into it (like `Vec::swap_remove`).
    /// Panics if `pos >= self.len()`.
    pub fn swap_remove(&mut self, pos: usize) {
        let len = self.len();
        assert!(pos < len, "Int8Codes::swap_remove: position {pos} out of {len}");
        let last = len - 1;
        if pos != last {
            self.codes.copy_within(last * self.dim..len * self.dim, pos * self.dim);
        }
        self.codes.truncate(last * self.dim);
        self.scales.swap_remove(pos);
    }

    /// Bytes held (codes + scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * size_of::<f32>()
    }

    /// The `r` positions with the highest approximate inner product with `query`, best first, as
    /// `(position, s_query * s_row * sum(code_q * code_row))`; ties go to the lower position. The query is
    /// quantized like the gallery. With at least 65 536 rows the scan is split over `threads` threads.
    /// Panics if `query.len()` is not the dimension.
    pub fn top(&self, query: &[f32], r: usize, threads: usize) -> Vec<(usize, f32)> {
        assert_eq!(query.len(), self.dim, "Int8Codes::top: query length is not the dimension");
        self.search(&Queries::new(query, self.dim), r, threads).pop().unwrap_or_default()
    }

    /// [`Int8Codes::top`] for a batch of queries (`nq * dim` values, row-major): one list per query. The
    /// gallery is read once per batch, block by block, each block scored against every query.
    /// Panics if `queries.len()` is not a multiple of the dimension.
    pub fn top_batch(&self, queries: &[f32], r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
        assert_eq!(queries.len() % self.dim, 0, "Int8Codes::top_batch: length not a multiple of the dimension");
        self.search(&Queries::new(queries, self.dim), r, threads)
    }

    fn search(&self, queries: &Queries, r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
        let kernel = Kernel::detect();
        split_search(self.len(), queries.scales.len(), r, threads, |rows, r| self.scan(queries, rows, r, kernel))
    }

    /// Per query, the best `r` rows of `rows` (not yet sorted or truncated).
    fn scan(&self, queries: &Queries, rows: Range<usize>, r: usize, kernel: Kernel) -> Vec<TopR> {
        let dim = self.dim;
        let mut tops: Vec<TopR> = queries.scales.iter().map(|_| TopR::new(r)).collect();
        let mut dots = [0i32; BLOCK_ROWS];
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + BLOCK_ROWS).min(rows.end);
            let block = &self.codes[start * dim..end * dim];
            let scales = &self.scales[start..end];
            let dots = &mut dots[..end - start];
            let per_query = queries.codes.chunks_exact(dim).zip(queries.abs.chunks_exact(dim)).zip(&queries.scales);
            for (((q, q_abs), &sq), top) in per_query.zip(&mut tops) {
                kernel.dots(block, q, q_abs, dots);
                for (i, (&d, &s)) in dots.iter().zip(scales).enumerate() {
                    top.offer(start + i, sq * s * d as f32);
                }
            }
            start = end;
        }
        tops
    }
}

/// Quantized queries with the `|code|` copy the AVX2 kernel wants.
struct Queries {
    codes: Vec<i8>,
    /// `|code|`, at most 127, so it is the same byte read as signed or unsigned.
    abs: Vec<i8>,
    scales: Vec<f32>,
}

impl Queries {
    fn new(queries: &[f32], dim: usize) -> Self {
        let mut codes = Vec::with_capacity(queries.len());
        let scales = queries.chunks_exact(dim).map(|q| quantize_i8(q, &mut codes)).collect();
        let abs = codes.iter().map(|c: &i8| c.abs()).collect();
        Self { codes, abs, scales }
    }
}

/// Which i8 dot-product implementation this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Scalar
    }

    /// `out[i] = q · rows[i]` for the `out.len()` rows of `rows` (row-major, `q.len()` values each).
    #[cfg_attr(not(target_arch = "x86_64"), expect(unused_variables, reason = "only the AVX2 kernel reads `q_abs`"))]
    fn dots(self, rows: &[i8], q: &[i8], q_abs: &[i8], out: &mut [i32]) {
        debug_assert_eq!(rows.len(), out.len() * q.len());
        match self {
            Self::Scalar => {
                for (row, o) in rows.chunks_exact(q.len()).zip(out) {
                    *o = dot_scalar(row, q);
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only chosen after runtime detection of AVX2.
            Self::Avx2 => unsafe { avx2::dots(rows, q, q_abs, out) },
        }
    }
}

fn dot_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm_add_epi32, _mm_extract_epi32, _mm256_add_epi32, _mm256_castsi256_si128, _mm256_extracti128_si256,
        _mm256_hadd_epi32, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_set1_epi16,
        _mm256_setzero_si256, _mm256_sign_epi8,
    };

    use super::dot_scalar;

    /// Rows scored together, sharing each query load and one horizontal reduction.
    const ROWS: usize = 4;

    /// `out[i] = q · rows[i]`. Per 32 bytes, `maddubs(|q|, sign(row, q))` gives exact i16 pair sums:
    /// codes lie within ±127, so a pair is at most 2 * 127 * 127 = 32 258 and never saturates.
    #[target_feature(enable = "avx2")]
    pub(super) fn dots(rows: &[i8], q: &[i8], q_abs: &[i8], out: &mut [i32]) {
        let dim = q.len();
        let (q_body, q_tail) = q.as_chunks::<32>();
        let (a_body, _) = q_abs.as_chunks::<32>();
        let body = q_body.len() * 32;
        let mut quads = rows.chunks_exact(ROWS * dim);
        let mut outs = out.chunks_exact_mut(ROWS);
        for (quad, o) in (&mut quads).zip(&mut outs) {
            let (r0, rest) = quad.split_at(dim);
            let (r1, rest) = rest.split_at(dim);
            let (r2, r3) = rest.split_at(dim);
            let (c0, c1, c2, c3) = (r0.as_chunks().0, r1.as_chunks().0, r2.as_chunks().0, r3.as_chunks().0);
            let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_si256(); 4];
            let body_chunks = q_body.iter().zip(a_body).zip(c0).zip(c1).zip(c2).zip(c3);
            for (((((qc, ac), x0), x1), x2), x3) in body_chunks {
                let (qv, av) = (load(qc), load(ac));
                a0 = step(a0, av, qv, load(x0));
                a1 = step(a1, av, qv, load(x1));
                a2 = step(a2, av, qv, load(x2));
                a3 = step(a3, av, qv, load(x3));
            }
            let sums = hsum4([a0, a1, a2, a3]);
            for ((o, s), r) in o.iter_mut().zip(sums).zip([r0, r1, r2, r3]) {
                *o = s + dot_scalar(&r[body..], q_tail);
            }
        }
        // At most three rows, at the end of a range: not worth a vector path of their own.
        for (row, o) in quads.remainder().chunks_exact(dim).zip(outs.into_remainder()) {
            *o = dot_scalar(row, q);
        }
    }

    /// `acc + q · row` over 32 codes, as eight i32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn step(acc: __m256i, q_abs: __m256i, q: __m256i, row: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(q_abs, _mm256_sign_epi8(row, q));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(chunk: &[i8; 32]) -> __m256i {
        // SAFETY: `chunk` is 32 readable bytes and `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) }
    }

    /// The horizontal sums of four vectors of eight i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum4(v: [__m256i; 4]) -> [i32; 4] {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
        [_mm_extract_epi32::<0>(s), _mm_extract_epi32::<1>(s), _mm_extract_epi32::<2>(s), _mm_extract_epi32::<3>(s)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::scan::test_data::{self, *};

    scan_codes!(Int8Codes, |c| (c.codes.iter().map(|&x| x as u8).collect(), c.scales.clone()));

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let (codes, vectors) = gallery::<Int8Codes>(1, 100, 77);
        for ((row, &s), v) in codes.codes.chunks_exact(77).zip(&codes.scales).zip(vectors.chunks_exact(77)) {
            assert!(row.iter().all(|&c| c != -128));
            assert!(row.iter().any(|&c| c.abs() == 127));
            for (&c, &x) in row.iter().zip(v) {
                assert!((f32::from(c) * s - x).abs() <= s * 0.5 + 1e-6, "{c} * {s} vs {x}");
            }
        }
        let mut zero = Int8Codes::new(4);
        zero.push(&[0.0; 4]);
        assert_eq!((zero.scales[0], &zero.codes[..]), (1.0, &[0i8; 4][..]));
        assert_eq!(zero.bytes(), 4 + 4);
    }

    #[test]
    fn avx2_and_scalar_dots_agree_exactly() {
        let mut rng = Rng(7);
        for dim in [192, 77, 32, 31, 1, 200] {
            for n in [0, 1, 3, 4, 9, 64] {
                let rows: Vec<i8> = (0..n * dim).map(|_| rng.code()).collect();
                let mut q: Vec<i8> = (0..dim).map(|_| rng.code()).collect();
                q[0] = -127;
                let q_abs: Vec<i8> = q.iter().map(|c| c.abs()).collect();
                let (mut a, mut b) = (vec![0; n], vec![0; n]);
                Kernel::Scalar.dots(&rows, &q, &q_abs, &mut a);
                Kernel::detect().dots(&rows, &q, &q_abs, &mut b);
                assert_eq!(a, b, "dim {dim}, n {n}");
            }
        }
        // The extreme case: every pair at ±127 * ±127.
        let rows = [-127i8; 4 * 64];
        let (q, q_abs) = ([-127i8; 64], [127i8; 64]);
        let mut out = [0; 4];
        Kernel::detect().dots(&rows, &q, &q_abs, &mut out);
        assert_eq!(out, [64 * 127 * 127; 4]);
    }

    #[test]
    fn exact_best_is_among_int8_top_32() {
        exact_best_is_among_top::<Int8Codes>(32, 0.02);
    }

    #[test]
    fn threads_and_batches_agree_with_single_queries() {
        test_data::threads_and_batches_agree_with_single_queries::<Int8Codes>();
    }

    #[test]
    fn swap_remove_keeps_the_other_rows() {
        test_data::swap_remove_keeps_the_other_rows::<Int8Codes>(40 + 4);
    }

    #[test]
    fn empty_gallery_and_large_r() {
        test_data::empty_gallery_and_large_r::<Int8Codes>();
    }
}
