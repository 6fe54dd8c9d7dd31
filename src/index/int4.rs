//! Int4-compressed gallery for approximate inner-product search: one 4-bit code per value (two per byte)
//! and one f32 scale per vector. Half the bytes of the int8 gallery, so a memory-bound scan reads half as
//! much; it is coarser, so callers take more candidates and re-rank them with the exact f32 vectors.
#![cfg_attr(target_arch = "x86_64", expect(unsafe_code, reason = "AVX2 kernel; each unsafe block has a SAFETY note"))]

use std::{fmt, ops::Range};

use super::scan::{TopR, quantize_i8, scale, split_search};

/// Rows scored per block. A block (dim 192: 48 KiB) stays in cache while every query of a batch is scored
/// against it, so the gallery streams from memory once per batch rather than once per query.
const BLOCK_ROWS: usize = 512;

/// Nibble of the value 0: codes are stored as `code + 8`, and padding holds this.
const ZERO: u8 = 8;

/// 4-bit codes of a gallery of vectors (two per byte), one scale per vector.
///
/// Layout: each row takes `stride` bytes, 32 per 64 dimensions (the last group padded with value 0).
/// Byte `j` of group `g` holds dimension `64g + j` in its low nibble and `64g + 32 + j` in its high one,
/// so splitting 32 bytes into low and high nibbles gives two vectors that line up with the query's codes.
#[derive(Clone)]
pub struct Int4Codes {
    dim: usize,
    /// Bytes per row: `32 * ceil(dim / 64)`.
    stride: usize,
    /// `len * stride` bytes; every nibble within `1..=15` (value `-7..=7`), padding `8` (value 0).
    codes: Vec<u8>,
    scales: Vec<f32>,
}

impl fmt::Debug for Int4Codes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Int4Codes").field("dim", &self.dim).field("len", &self.len()).finish_non_exhaustive()
    }
}

impl Int4Codes {
    /// An empty gallery of `dim`-dimensional vectors.
    /// Panics if `dim` is zero.
    pub fn new(dim: usize) -> Self {
        assert!(dim > 0, "Int4Codes: dimension must be positive");
        Self { dim, stride: dim.div_ceil(64) * 32, codes: Vec::new(), scales: Vec::new() }
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

    /// Appends vectors (row-major, n*dim values). Quantization: per vector, s = max|x_i| / 7 (s = 1 if the
    /// vector is all zero), code_i = round(x_i / s) clamped to [-7, 7], stored as the nibble code_i + 8.
    /// Panics if `vectors.len()` is not a multiple of the dimension.
    pub fn push(&mut self, vectors: &[f32]) {
        assert_eq!(vectors.len() % self.dim, 0, "Int4Codes::push: {} values for dimension {}", vectors.len(), self.dim);
        let n = vectors.len() / self.dim;
        self.codes.reserve(n * self.stride);
        self.scales.reserve(n);
        for v in vectors.chunks_exact(self.dim) {
            let s = scale(v, 7.0);
            let start = self.codes.len();
            self.codes.resize(start + self.stride, ZERO * 0x11);
            let row = &mut self.codes[start..];
            for (i, &x) in v.iter().enumerate() {
                // `as` maps NaN to 0.
                let nibble = ((x / s).round().clamp(-7.0, 7.0) as i8 + 8) as u8;
                let byte = &mut row[i / 64 * 32 + i % 32];
                *byte = if i % 64 < 32 { (*byte & 0xF0) | nibble } else { (*byte & 0x0F) | (nibble << 4) };
            }
            self.scales.push(s);
        }
    }

    /// Removes position `pos` by moving the last row into it (like `Vec::swap_remove`).
    /// Panics if `pos >= self.len()`.
    pub fn swap_remove(&mut self, pos: usize) {
        let len = self.len();
        assert!(pos < len, "Int4Codes::swap_remove: position {pos} out of {len}");
        let last = len - 1;
        if pos != last {
            self.codes.copy_within(last * self.stride..len * self.stride, pos * self.stride);
        }
        self.codes.truncate(last * self.stride);
        self.scales.swap_remove(pos);
    }

    /// Bytes held (codes with their row padding + scales).
    pub fn bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * size_of::<f32>()
    }

    /// The `r` positions with the highest approximate inner product with `query`, best first, as
    /// `(position, s_query * s_row * sum(code_q * code_row))`; ties go to the lower position. The query is
    /// quantized to int8 like `Int8Codes` does (s_q = max|q| / 127, codes within [-127, 127]). With at
    /// least 65 536 rows the scan is split over `threads` threads.
    /// Panics if `query.len()` is not the dimension.
    pub fn top(&self, query: &[f32], r: usize, threads: usize) -> Vec<(usize, f32)> {
        assert_eq!(query.len(), self.dim, "Int4Codes::top: query length is not the dimension");
        self.search(&Queries::new(query, self.dim, self.stride), r, threads).pop().unwrap_or_default()
    }

    /// [`Int4Codes::top`] for a batch of queries (`nq * dim` values, row-major): one list per query. The
    /// gallery is read once per batch, block by block, each block scored against every query.
    /// Panics if `queries.len()` is not a multiple of the dimension.
    pub fn top_batch(&self, queries: &[f32], r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
        assert_eq!(queries.len() % self.dim, 0, "Int4Codes::top_batch: length not a multiple of the dimension");
        self.search(&Queries::new(queries, self.dim, self.stride), r, threads)
    }

    fn search(&self, queries: &Queries, r: usize, threads: usize) -> Vec<Vec<(usize, f32)>> {
        let kernel = Kernel::detect();
        split_search(self.len(), queries.scales.len(), r, threads, |rows, r| self.scan(queries, rows, r, kernel))
    }

    /// Per query, the best `r` rows of `rows` (not yet sorted or truncated).
    fn scan(&self, queries: &Queries, rows: Range<usize>, r: usize, kernel: Kernel) -> Vec<TopR> {
        let stride = self.stride;
        let mut tops: Vec<TopR> = queries.scales.iter().map(|_| TopR::new(r)).collect();
        let mut dots = [0i32; BLOCK_ROWS];
        let mut start = rows.start;
        while start < rows.end {
            let end = (start + BLOCK_ROWS).min(rows.end);
            let block = &self.codes[start * stride..end * stride];
            let scales = &self.scales[start..end];
            let dots = &mut dots[..end - start];
            let per_query = queries.codes.chunks_exact(2 * stride).zip(&queries.bias).zip(&queries.scales);
            for (((q, &bias), &sq), top) in per_query.zip(&mut tops) {
                kernel.dots(block, q, bias, dots);
                for (i, (&d, &s)) in dots.iter().zip(scales).enumerate() {
                    top.offer(start + i, sq * s * d as f32);
                }
            }
            start = end;
        }
        tops
    }
}

/// Int8-quantized queries, each padded with zeros to `2 * stride` codes so it covers a whole row.
struct Queries {
    codes: Vec<i8>,
    /// `8 * sum(codes)`: the kernels sum `code_q * nibble` and subtract this to get `code_q * (nibble - 8)`.
    bias: Vec<i32>,
    scales: Vec<f32>,
}

impl Queries {
    fn new(queries: &[f32], dim: usize, stride: usize) -> Self {
        let nq = queries.len() / dim;
        let (mut codes, mut bias, mut scales) =
            (Vec::with_capacity(nq * 2 * stride), Vec::with_capacity(nq), Vec::new());
        for q in queries.chunks_exact(dim) {
            let start = codes.len();
            scales.push(quantize_i8(q, &mut codes));
            codes.resize(start + 2 * stride, 0);
            bias.push(8 * codes[start..].iter().map(|&c| i32::from(c)).sum::<i32>());
        }
        Self { codes, bias, scales }
    }
}

/// Which int4 x int8 dot-product implementation this CPU runs.
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

    /// `out[i] = sum_k q_k * (nibble_k(rows[i]) - 8)` for the `out.len()` rows of `rows` (`q.len() / 2`
    /// bytes each); `bias` is `8 * sum(q)`.
    fn dots(self, rows: &[u8], q: &[i8], bias: i32, out: &mut [i32]) {
        debug_assert_eq!(q.len() % 64, 0);
        debug_assert_eq!(rows.len() * 2, out.len() * q.len());
        match self {
            Self::Scalar => {
                for (row, o) in rows.chunks_exact(q.len() / 2).zip(out) {
                    *o = dot_scalar(row, q) - bias;
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx2` is only chosen after runtime detection of AVX2.
            Self::Avx2 => unsafe { avx2::dots(rows, q, bias, out) },
        }
    }
}

/// `sum_k q_k * nibble_k(row)`, with the nibble layout of [`Int4Codes`]; `q` has `2 * row.len()` codes.
fn dot_scalar(row: &[u8], q: &[i8]) -> i32 {
    let groups = row.chunks_exact(32).zip(q.chunks_exact(64));
    let group = |(b, q): (&[u8], &[i8])| -> i32 {
        let (lo, hi) = q.split_at(32);
        let pairs = b.iter().zip(lo).zip(hi);
        pairs.map(|((&b, &l), &h)| i32::from(l) * i32::from(b & 0x0F) + i32::from(h) * i32::from(b >> 4)).sum()
    };
    groups.map(group).sum()
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256i, _mm_add_epi32, _mm_extract_epi32, _mm256_add_epi16, _mm256_add_epi32, _mm256_and_si256,
        _mm256_castsi256_si128, _mm256_extracti128_si256, _mm256_hadd_epi32, _mm256_loadu_si256, _mm256_madd_epi16,
        _mm256_maddubs_epi16, _mm256_set1_epi8, _mm256_set1_epi16, _mm256_setzero_si256, _mm256_srli_epi16,
    };

    use super::dot_scalar;

    /// Rows scored together, sharing each query load and one horizontal reduction.
    const ROWS: usize = 4;

    /// `out[i] = sum(q * nibbles(rows[i])) - bias`. Per 32 bytes, the low and the high nibbles each go
    /// through `maddubs(nibbles, q)`: a pair is at most 2 * 15 * 127 = 3 810, the two added 7 620, so the
    /// i16 sums never saturate.
    #[target_feature(enable = "avx2")]
    pub(super) fn dots(rows: &[u8], q: &[i8], bias: i32, out: &mut [i32]) {
        let stride = q.len() / 2;
        let (q_halves, _) = q.as_chunks::<32>();
        let (q_groups, _) = q_halves.as_chunks::<2>();
        let mut quads = rows.chunks_exact(ROWS * stride);
        let mut outs = out.chunks_exact_mut(ROWS);
        for (quad, o) in (&mut quads).zip(&mut outs) {
            let (r0, rest) = quad.split_at(stride);
            let (r1, rest) = rest.split_at(stride);
            let (r2, r3) = rest.split_at(stride);
            let (c0, c1, c2, c3) = (chunks(r0), chunks(r1), chunks(r2), chunks(r3));
            let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_si256(); 4];
            for (((([lo, hi], x0), x1), x2), x3) in q_groups.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
                let (ql, qh) = (load(lo), load(hi));
                a0 = step(a0, ql, qh, load(x0));
                a1 = step(a1, ql, qh, load(x1));
                a2 = step(a2, ql, qh, load(x2));
                a3 = step(a3, ql, qh, load(x3));
            }
            for (o, s) in o.iter_mut().zip(hsum4([a0, a1, a2, a3])) {
                *o = s - bias;
            }
        }
        // At most three rows, at the end of a range: not worth a vector path of their own.
        for (row, o) in quads.remainder().chunks_exact(stride).zip(outs.into_remainder()) {
            *o = dot_scalar(row, q) - bias;
        }
    }

    /// `acc + q · nibbles(row)` over 32 bytes (64 codes), as eight i32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn step(acc: __m256i, q_lo: __m256i, q_hi: __m256i, row: __m256i) -> __m256i {
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(row, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(row), mask);
        let pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, q_lo), _mm256_maddubs_epi16(hi, q_hi));
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    fn chunks(row: &[u8]) -> &[[u8; 32]] {
        row.as_chunks().0
    }

    /// Loads 32 bytes (`u8` or `i8`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load<T>(chunk: &[T; 32]) -> __m256i {
        const { assert!(size_of::<T>() == 1) };
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

    scan_codes!(Int4Codes, |c| (c.codes.clone(), c.scales.clone()));

    /// The nibble of dimension `i` of a packed row, read independently of the kernels.
    fn nibble(row: &[u8], i: usize) -> u8 {
        let b = row[i / 64 * 32 + i % 32];
        if i % 64 < 32 { b & 0x0F } else { b >> 4 }
    }

    #[test]
    fn quantization_round_trips_within_half_a_step() {
        let (codes, vectors) = gallery::<Int4Codes>(1, 100, 77);
        assert_eq!((codes.stride, codes.bytes()), (64, 100 * (64 + 4)));
        for ((row, &s), v) in codes.codes.chunks_exact(64).zip(&codes.scales).zip(vectors.chunks_exact(77)) {
            let nibbles: Vec<u8> = (0..128).map(|i| nibble(row, i)).collect();
            assert!(nibbles[..77].iter().all(|n| (1..=15).contains(n)));
            assert!(nibbles[..77].iter().any(|&n| n == 1 || n == 15));
            assert!(nibbles[77..].iter().all(|&n| n == ZERO));
            for (&n, &x) in nibbles.iter().zip(v) {
                assert!((f32::from(n as i8 - 8) * s - x).abs() <= s * 0.5 + 1e-6, "{n} * {s} vs {x}");
            }
        }
        let mut zero = Int4Codes::new(4);
        zero.push(&[0.0; 4]);
        assert_eq!((zero.scales[0], &zero.codes[..]), (1.0, &[0x88u8; 32][..]));
        assert_eq!(zero.bytes(), 32 + 4);
    }

    #[test]
    fn avx2_and_scalar_dots_agree_exactly() {
        let mut rng = Rng(7);
        for dim in [192usize, 77, 64, 1, 200] {
            for n in [0, 1, 3, 4, 9, 64] {
                let stride = dim.div_ceil(64) * 32;
                // Any byte, padding included: the query's padding is zero, so it cannot matter.
                let rows: Vec<u8> = (0..n * stride).map(|_| rng.next() as u8).collect();
                let q_f32: Vec<f32> = (0..dim).map(|_| rng.normal()).collect();
                let queries = Queries::new(&q_f32, dim, stride);
                let (q, bias) = (&queries.codes[..], queries.bias[0]);
                let naive: Vec<i32> = rows
                    .chunks_exact(stride)
                    .map(|row| (0..dim).map(|i| i32::from(q[i]) * (i32::from(nibble(row, i)) - 8)).sum())
                    .collect();
                let (mut a, mut b) = (vec![0; n], vec![0; n]);
                Kernel::Scalar.dots(&rows, q, bias, &mut a);
                Kernel::detect().dots(&rows, q, bias, &mut b);
                assert_eq!((&a, &b), (&naive, &naive), "dim {dim}, n {n}");
            }
        }
        // The extremes: every nibble 15 or 0 against codes ±127.
        for (byte, code) in [(0xFFu8, 127i8), (0xFF, -127), (0x00, 127), (0x00, -127)] {
            let (rows, q) = ([byte; 4 * 96], [code; 192]);
            let bias = 8 * 192 * i32::from(code);
            let mut out = [0; 4];
            Kernel::detect().dots(&rows, &q, bias, &mut out);
            assert_eq!(out, [192 * i32::from(code) * (i32::from(byte & 0x0F) - 8); 4]);
        }
    }

    #[test]
    fn exact_best_is_among_int4_top_256() {
        exact_best_is_among_top::<Int4Codes>(256, 0.1);
    }

    #[test]
    fn threads_and_batches_agree_with_single_queries() {
        test_data::threads_and_batches_agree_with_single_queries::<Int4Codes>();
    }

    #[test]
    fn swap_remove_keeps_the_other_rows() {
        test_data::swap_remove_keeps_the_other_rows::<Int4Codes>(32 + 4);
    }

    #[test]
    fn empty_gallery_and_large_r() {
        test_data::empty_gallery_and_large_r::<Int4Codes>();
    }
}
