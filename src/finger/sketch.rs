//! A second candidate stage for fingerprints: every enrolled template scored
//! against the probe through pooled cylinder sketches, an exhaustive scan.
//!
//! A sketch pools each MCC cylinder's 16 x 16 x 6 cell bits into 8 x 8 blocks
//! of 2 x 2 cells per direction layer (384 bits: one 64-bit word a layer); a
//! block's bit is set when at least 2 of its 4 cells are. Two sketches compare
//! as MCC compares cylinders (`1 - sqrt|a xor b| / (sqrt|a| + sqrt|b|)`,
//! minutiae within 90 degrees of direction only); a template scores the mean
//! of the [`TOP`] best per-probe-cylinder maxima. No relaxation, no pairing:
//! it ranks, the full matcher then scores.
//!
//! Why a scan beside the hash votes ([`super::shortlist`]): on the FVC2002
//! `.iso` templates the votes leave some genuine mates at chance (their
//! cylinders share no bucket with the probe's more often than an unrelated
//! cylinder's do), while this denser, coarser comparison ranks them among the
//! best few percent (BENCHMARKS.md, "Sketch scan"). It reads every template,
//! so its cost grows with the gallery; the votes are cheaper on the largest
//! galleries ([`super::gallery::GallerySettings::sketch_below`]).
//!
//! Enrolled sketches are word-sliced in groups of [`LANES`] cylinders (word
//! `w` of 8 cylinders side by side), so one probe cylinder meets 8 enrolled
//! ones with the same instructions; padding lanes have no bits and no norm
//! and score 0. An AVX-512 kernel and a portable one give the same scores to
//! the bit (unit test).

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(
    target_arch = "x86_64",
    expect(unsafe_code, reason = "AVX-512 dispatch and vector loads; each unsafe block has a SAFETY note")
)]

use std::f32::consts::TAU;

use super::mcc::{self, Kernel, ND, NS};

/// Per-probe-cylinder maxima a template's score averages.
pub const TOP: usize = 16;
/// Enrolled cylinders side by side in one group.
pub const LANES: usize = 8;
/// Direction difference beyond which two cylinders are not compared, in
/// 1/256 turns (90 degrees, as [`mcc::MAX_ANGLE_DIFF`]).
const MAX_ANGLE_UNITS: u8 = 64;

const _: () = assert!(NS == 16 && ND == 6, "a sketch pools 16 x 16 cells into one 64-bit word per layer");

/// The sketch bits of one cylinder: a word per direction layer.
type Bits = [u64; ND];

/// Eight enrolled cylinders, word-sliced.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
struct Group {
    words: [[u64; LANES]; ND],
    norms: [f32; LANES],
    angles: [u8; LANES],
}

/// An enrolled template's sketches, ready to be scanned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sketch {
    count: usize,
    groups: Box<[Group]>,
}

/// A probe's sketches, one per cylinder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeSketch {
    bits: Vec<Bits>,
    angles: Vec<u8>,
    norms: Vec<f32>,
}

impl Sketch {
    /// Pools every cylinder of `template`.
    pub fn new(template: &mcc::Template) -> Self {
        let probe = ProbeSketch::new(template);
        let count = probe.bits.len();
        let mut groups =
            vec![Group { words: [[0; LANES]; ND], norms: [0.0; LANES], angles: [0; LANES] }; count.div_ceil(LANES)];
        for (c, ((bits, &angle), &norm)) in probe.bits.iter().zip(&probe.angles).zip(&probe.norms).enumerate() {
            let Some(g) = groups.get_mut(c / LANES) else { continue };
            let l = c % LANES;
            for (lanes, &word) in g.words.iter_mut().zip(bits) {
                if let Some(slot) = lanes.get_mut(l) {
                    *slot = word;
                }
            }
            if let (Some(a), Some(n)) = (g.angles.get_mut(l), g.norms.get_mut(l)) {
                (*a, *n) = (angle, norm);
            }
        }
        Self { count, groups: groups.into_boxed_slice() }
    }

    /// Cylinders sketched.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the template had no cylinder.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.groups)
    }
}

impl ProbeSketch {
    /// Pools every cylinder of `template`.
    pub fn new(template: &mcc::Template) -> Self {
        let mut s = Self::default();
        for (_, _, angle, bits, _) in template.cylinders() {
            let pooled = pool(bits);
            s.bits.push(pooled);
            s.angles.push(angle_units(angle));
            s.norms.push((pooled.iter().map(|w| w.count_ones()).sum::<u32>() as f32).sqrt());
        }
        s
    }
}

/// A direction in 1/256 turns.
fn angle_units(angle: f32) -> u8 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // rem_euclid(256) is in 0..256
    let u = ((angle / TAU * 256.0).round() as i64).rem_euclid(256) as u8;
    u
}

/// 2 x 2 blocks of a cylinder's cells, a block set when at least 2 of its 4 cells are.
fn pool(bits: &[u64]) -> Bits {
    let row = |k: usize, i: usize| -> u64 {
        let b = k * NS * NS + i * NS;
        bits.get(b / 64).map_or(0, |w| (w >> (b % 64)) & 0xFFFF)
    };
    let mut out = [0_u64; ND];
    for (k, word) in out.iter_mut().enumerate() {
        for bi in 0..NS / 2 {
            let (r0, r1) = (row(k, 2 * bi), row(k, 2 * bi + 1));
            let (e0, o0, e1, o1) = (r0 & 0x5555, (r0 >> 1) & 0x5555, r1 & 0x5555, (r1 >> 1) & 0x5555);
            // Two of four: both of one row, or one of each.
            let mut x = (e0 & o0) | (e1 & o1) | ((e0 | o0) & (e1 | o1));
            // Bits 0, 2, ..., 14 down to 0..8.
            x = (x | (x >> 1)) & 0x3333;
            x = (x | (x >> 2)) & 0x0F0F;
            x = (x | (x >> 4)) & 0x00FF;
            *word |= x << (bi * 8);
        }
    }
    out
}

/// Scores enrolled sketches against one probe; holds the scratch it needs.
#[derive(Debug)]
pub struct Scanner {
    kernel: Kernel,
    best: Vec<f32>,
}

impl Default for Scanner {
    fn default() -> Self {
        Self::new()
    }
}

impl Scanner {
    /// With the fastest kernel this CPU runs ([`Kernel::best`]).
    pub fn new() -> Self {
        Self::with_kernel(Kernel::best())
    }

    /// With a given kernel, or [`Kernel::best`] if this CPU cannot run that one.
    pub fn with_kernel(kernel: Kernel) -> Self {
        let kernel = if kernel.is_supported() { kernel } else { Kernel::best() };
        Self { kernel, best: Vec::new() }
    }

    /// How alike `probe` and `enrolled` look, in [0, 1]: the mean of the
    /// [`TOP`] best per-probe-cylinder maxima.
    pub fn score(&mut self, probe: &ProbeSketch, enrolled: &Sketch) -> f32 {
        self.best.clear();
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if avx512_extras() => {
                // SAFETY: `with_kernel` keeps `Kernel::Avx512` only where AVX-512F
                // and VPOPCNTDQ run, and `avx512_extras` checked VL and DQ.
                unsafe { avx512::maxima(probe, enrolled, &mut self.best) }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Popcnt => {
                // SAFETY: `with_kernel` keeps either kernel only where `popcnt` runs.
                unsafe { maxima_popcnt(probe, enrolled, &mut self.best) }
            }
            _ => maxima(probe, enrolled, &mut self.best),
        }
        let k = TOP.min(self.best.len()).min(enrolled.count);
        if k == 0 {
            return 0.0;
        }
        self.best.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        self.best.get(..k).map_or(0.0, |b| b.iter().sum::<f32>() / k as f32)
    }
}

/// Whether the CPU also has AVX-512 VL and DQ (the sketch kernel's 256-bit
/// float lanes and 64-bit conversions).
#[cfg(target_arch = "x86_64")]
fn avx512_extras() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("avx512dq")
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn maxima_popcnt(p: &ProbeSketch, g: &Sketch, best: &mut Vec<f32>) {
    maxima(p, g, best);
}

/// Each probe cylinder's best similarity among the enrolled ones, into `best`.
#[inline(always)]
fn maxima(p: &ProbeSketch, g: &Sketch, best: &mut Vec<f32>) {
    for ((pb, &pa), &pn) in p.bits.iter().zip(&p.angles).zip(&p.norms) {
        let mut m = 0.0_f32;
        for group in &*g.groups {
            for l in 0..LANES {
                let mut x = 0_u32;
                for (lanes, &w) in group.words.iter().zip(pb) {
                    x += (lanes.get(l).copied().unwrap_or(0) ^ w).count_ones();
                }
                let (ga, gn) = (group.angles.get(l).copied().unwrap_or(0), group.norms.get(l).copied().unwrap_or(0.0));
                let d = ga.wrapping_sub(pa);
                let den = pn + gn;
                if (d <= MAX_ANGLE_UNITS || d >= 0_u8.wrapping_sub(MAX_ANGLE_UNITS)) && den > 0.0 {
                    m = m.max(1.0 - (x as f32).sqrt() / den);
                }
            }
        }
        best.push(m);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m128i, _CMP_GT_OQ, _mm_loadl_epi64, _mm256_add_ps, _mm256_and_si256, _mm256_cmp_ps_mask,
        _mm256_cmpgt_epi32_mask, _mm256_cmplt_epi32_mask, _mm256_cvtepu8_epi32, _mm256_div_ps, _mm256_loadu_ps,
        _mm256_mask_max_ps, _mm256_set1_epi32, _mm256_set1_ps, _mm256_setzero_ps, _mm256_sqrt_ps, _mm256_storeu_ps,
        _mm256_sub_epi32, _mm256_sub_ps, _mm512_add_epi64, _mm512_cvtepu64_ps, _mm512_loadu_epi64, _mm512_popcnt_epi64,
        _mm512_set1_epi64, _mm512_setzero_si512, _mm512_xor_si512,
    };

    use super::{LANES, MAX_ANGLE_UNITS, ProbeSketch, Sketch};

    /// Same maxima as `super::maxima`, to the bit (sqrt and division are
    /// correctly rounded in both; counts convert exactly).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, VL, DQ and VPOPCNTDQ.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512vpopcntdq,popcnt")]
    pub(super) unsafe fn maxima(p: &ProbeSketch, g: &Sketch, best: &mut Vec<f32>) {
        let (one, zero) = (_mm256_set1_ps(1.0), _mm256_setzero_ps());
        let (low, high) =
            (_mm256_set1_epi32(i32::from(MAX_ANGLE_UNITS)), _mm256_set1_epi32(256 - i32::from(MAX_ANGLE_UNITS)));
        for ((pb, &pa), &pn) in p.bits.iter().zip(&p.angles).zip(&p.norms) {
            #[allow(clippy::cast_possible_wrap)] // the bits, reinterpreted
            let pw = pb.map(|w| _mm512_set1_epi64(w as i64));
            let (pa, pn) = (_mm256_set1_epi32(i32::from(pa)), _mm256_set1_ps(pn));
            let mut m = zero;
            for group in &*g.groups {
                let mut acc = _mm512_setzero_si512();
                for (lanes, &w) in group.words.iter().zip(&pw) {
                    // SAFETY: `lanes` is 8 words, one unaligned 512-bit load.
                    let v = unsafe { _mm512_loadu_epi64(lanes.as_ptr().cast::<i64>()) };
                    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(v, w)));
                }
                // SAFETY: `norms` is 8 floats, one unaligned 256-bit load.
                let den = _mm256_add_ps(pn, unsafe { _mm256_loadu_ps(group.norms.as_ptr()) });
                let s = _mm256_sub_ps(one, _mm256_div_ps(_mm256_sqrt_ps(_mm512_cvtepu64_ps(acc)), den));
                // SAFETY: `angles` is 8 bytes, one unaligned 64-bit load.
                let ga = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(group.angles.as_ptr().cast::<__m128i>()) });
                let d = _mm256_and_si256(_mm256_sub_epi32(ga, pa), _mm256_set1_epi32(255));
                let far = _mm256_cmpgt_epi32_mask(d, low) & _mm256_cmplt_epi32_mask(d, high);
                let ok = !far & _mm256_cmp_ps_mask::<_CMP_GT_OQ>(den, zero);
                m = _mm256_mask_max_ps(m, ok, m, s);
            }
            let mut lanes = [0.0_f32; LANES];
            // SAFETY: `lanes` is 8 floats, one unaligned 256-bit store.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), m) };
            best.push(lanes.iter().fold(0.0_f32, |a, &b| a.max(b)));
        }
    }
}

/// The positions in `items` of the `n` templates whose sketches score best
/// against `probe`, best first (ties by position), scanning every template
/// on up to `threads` threads.
pub fn shortlist<T: Sync>(
    probe: &mcc::Template,
    items: &[T],
    sketch: impl Fn(&T) -> &Sketch + Sync,
    n: usize,
    threads: usize,
) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let probe = ProbeSketch::new(probe);
    let scores: Vec<f32> = super::parallel_chunks(items, threads, |part| {
        let mut scanner = Scanner::new();
        part.iter().map(|item| scanner.score(&probe, sketch(item))).collect()
    });
    let mut ranked: Vec<(f32, usize)> = scores.into_iter().zip(0..).collect();
    let by_score = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
    if n < ranked.len() {
        ranked.select_nth_unstable_by(n - 1, by_score);
        ranked.truncate(n);
    }
    ranked.sort_unstable_by(by_score);
    ranked.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests;
