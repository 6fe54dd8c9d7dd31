//! Cylinder comparison (MCC-16b local similarity) and the LSS-R global score.

#![cfg_attr(
    target_arch = "x86_64",
    expect(unsafe_code, reason = "popcnt / AVX-512 dispatch and vector loads; each unsafe block has a SAFETY note")
)]

use std::f32::consts::PI;

use super::{IN_RADIUS_CELLS, MASK_WORDS, MAX_ANGLE_DIFF, MIN_MATCHABLE_CELLS, Point, Template, WORDS, angle_diff};

/// Fewest pairs averaged into the global score (min_nP).
const MIN_NP: usize = 4;
/// Most pairs averaged into the global score (max_nP).
const MAX_NP: usize = 12;
/// Sigmoid centre of the pair-count rule (μ_P).
const MU_P: f32 = 20.0;
/// Sigmoid slope of the pair-count rule (τ_P).
const TAU_P: f32 = 2.0 / 5.0;
/// Weight of a pair's own similarity in each relaxation step (w_R).
const W_R: f32 = 0.5;
/// Number of relaxation iterations (n_rel).
const N_REL: usize = 5;
/// Distance-consistency sigmoid (μ_1, τ_1), pixels.
const MU_1: f32 = 5.0;
const TAU_1: f32 = -8.0 / 5.0;
/// Direction-difference-consistency sigmoid (μ_2, τ_2), radians.
const MU_2: f32 = PI / 12.0;
const TAU_2: f32 = -30.0;
/// Radial-angle-consistency sigmoid (μ_3, τ_3), radians.
const MU_3: f32 = PI / 12.0;
const TAU_3: f32 = -30.0;
/// Beyond these differences a compatibility factor is below 1/(1+e^10) ≈ 4.5e-5 and is taken as 0.
const D1_CUTOFF: f32 = MU_1 - 10.0 / TAU_1;
const D2_CUTOFF: f32 = MU_2 - 10.0 / TAU_2;
const D3_CUTOFF: f32 = MU_3 - 10.0 / TAU_3;

/// Bits in a cylinder (the largest popcount).
const CYLINDER_BITS: usize = WORDS * 64;

/// Fewest spatial cells valid in both cylinders for a comparison (min_ME).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)]
const MIN_MATCHABLE: u32 = (MIN_MATCHABLE_CELLS * IN_RADIUS_CELLS as f32) as u32;

/// Similarity of two templates in `[0, 1]`, with fresh scratch buffers.
///
/// Prefer [`Matcher::similarity`] in loops: it reuses its buffers.
pub fn similarity(a: &Template, b: &Template) -> f32 {
    Matcher::new().similarity(a, b)
}

/// One candidate minutia pair: local similarity and the two cylinder indices.
#[derive(Debug, Clone, Copy)]
struct Pair {
    score: f32,
    a: usize,
    b: usize,
}

/// How the cylinder comparisons count bits (chosen at run time from what the CPU has).
///
/// Every kernel gives the same integer counts, so the same scores to the bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Shifts and masks (the default x86-64 target has no `popcnt` instruction).
    Portable,
    /// One `popcnt` instruction per 64-bit word: 76 counts per cylinder pair.
    Popcnt,
    /// AVX-512 `vpopcntq` over 512 bits at a time: 9 vector counts per cylinder pair.
    Avx512,
}

impl Kernel {
    /// The kernel [`Matcher::new`] uses: the fastest this CPU runs, unless the
    /// environment variable `COTEJO_MCC_KERNEL` names a slower one
    /// (`popcnt`, `portable`), to measure or rule out a kernel. Read once.
    pub fn best() -> Self {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let asked = match std::env::var("COTEJO_MCC_KERNEL").ok().as_deref() {
                Some("portable") => Some(Self::Portable),
                Some("popcnt") => Some(Self::Popcnt),
                _ => None,
            };
            asked.filter(|k| k.is_supported()).unwrap_or_else(Self::fastest)
        })
    }

    /// The fastest kernel this CPU runs.
    fn fastest() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
            {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("popcnt") {
                return Self::Popcnt;
            }
        }
        Self::Portable
    }

    /// Whether this CPU can run the kernel.
    pub fn is_supported(self) -> bool {
        match (self, Self::fastest()) {
            (Self::Portable, _) | (Self::Popcnt, Self::Popcnt | Self::Avx512) | (Self::Avx512, Self::Avx512) => true,
            (Self::Popcnt | Self::Avx512, _) => false,
        }
    }
}

/// Reusable scratch space for comparing templates (one per thread).
#[derive(Debug)]
pub struct Matcher {
    /// How bits are counted; see [`Matcher::local_similarities`].
    kernel: Kernel,
    pairs: Vec<Pair>,
    lambda: Vec<f32>,
    next: Vec<f32>,
    rho: Vec<f32>,
    ranked: Vec<(f32, f32)>,
    used_a: Vec<bool>,
    used_b: Vec<bool>,
    keys: Vec<u64>,
    /// `sqrt[n] = √n` for every possible popcount of a cylinder.
    sqrt: Vec<f32>,
}

impl Default for Matcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Matcher {
    /// A matcher with empty buffers (they grow to the largest templates compared).
    pub fn new() -> Self {
        Self::with_kernel(Kernel::best())
    }

    /// A matcher that counts bits without the `popcnt` instruction, whatever the
    /// CPU. Same scores.
    #[doc(hidden)]
    pub fn portable() -> Self {
        Self::with_kernel(Kernel::Portable)
    }

    /// A matcher with the given kernel, or the best one this CPU runs if it
    /// cannot run that one (the baselines of `benches/finger_match.rs`).
    pub fn with_kernel(kernel: Kernel) -> Self {
        let kernel = if kernel.is_supported() { kernel } else { Kernel::fastest() };
        Self {
            kernel,
            pairs: Vec::new(),
            lambda: Vec::new(),
            next: Vec::new(),
            rho: Vec::new(),
            ranked: Vec::new(),
            used_a: Vec::new(),
            used_b: Vec::new(),
            keys: Vec::new(),
            sqrt: Vec::new(),
        }
    }

    /// Similarity of two templates in `[0, 1]` (MCC-16b local similarities, LSS-R).
    ///
    /// Templates without valid cylinders score 0. Does not allocate once the
    /// buffers have grown to the template sizes seen.
    pub fn similarity(&mut self, a: &Template, b: &Template) -> f32 {
        let n_r = a.len().min(b.len());
        if n_r == 0 {
            return 0.0;
        }
        self.local_similarities(a, b);
        // LSS: the n_R best pairs (the rest of the top n_R would have similarity 0).
        // Greedy one-to-one selection in decreasing similarity. Positive f32 scores
        // order like their bit patterns, so pairs sort as plain u64 keys.
        self.keys.clear();
        self.keys.extend(
            self.pairs
                .iter()
                .map(|p| (u64::from(p.score.to_bits()) << 32) | ((p.a as u64 & 0xFFFF) << 16) | (p.b as u64 & 0xFFFF)),
        );
        // Greedy selection rarely looks past the first few n_R keys: order those
        // first and the rest only when needed (keys are distinct, so the result
        // is the same as with a full sort).
        let head = (4 * n_r).min(self.keys.len());
        if head < self.keys.len() && head > 0 {
            self.keys.select_nth_unstable_by(head - 1, |x, y| y.cmp(x));
        }
        let (first, rest) = self.keys.split_at_mut(head);
        first.sort_unstable_by(|x, y| y.cmp(x));
        self.used_a.clear();
        self.used_a.resize(a.len(), false);
        self.used_b.clear();
        self.used_b.resize(b.len(), false);
        self.pairs.clear();
        greedy_one_to_one(first, &mut self.used_a, &mut self.used_b, &mut self.pairs, n_r);
        if self.pairs.len() < n_r && !rest.is_empty() {
            rest.sort_unstable_by(|x, y| y.cmp(x));
            greedy_one_to_one(rest, &mut self.used_a, &mut self.used_b, &mut self.pairs, n_r);
        }
        if self.pairs.is_empty() {
            return 0.0;
        }
        self.relax(a, b, n_r);
        // Keep the n_P pairs whose similarity the relaxation preserved best.
        let n_p = pairs_to_average(n_r);
        self.ranked.clear();
        self.ranked.extend(
            self.pairs.iter().zip(&self.lambda).map(|(p, &l)| (if p.score > 0.0 { l / p.score } else { 0.0 }, l)),
        );
        let by_efficiency_desc = |x: &(f32, f32), y: &(f32, f32)| y.0.total_cmp(&x.0);
        if self.ranked.len() > n_p {
            self.ranked.select_nth_unstable_by(n_p - 1, by_efficiency_desc);
            self.ranked.truncate(n_p);
        }
        let sum: f32 = self.ranked.iter().map(|&(_, l)| l).sum();
        #[allow(clippy::cast_precision_loss)] // n_p is at most 12
        let score = sum / n_p as f32;
        if score.is_finite() { score.clamp(0.0, 1.0) } else { 0.0 }
    }

    /// The kernel this matcher counts bits with.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Fills `pairs` with every cylinder pair of positive local similarity.
    ///
    /// Each cylinder pair takes 76 population counts of 64-bit words. The
    /// default x86-64 target has no `popcnt` instruction, so without it each
    /// count is a dozen shifts and masks; with it (checked at run time) the
    /// same loop is compiled to use it: 1.2-1.4x per comparison. With AVX-512
    /// VPOPCNTDQ the 1,536 cell bits are counted 512 at a time
    /// (BENCHMARKS.md).
    fn local_similarities(&mut self, a: &Template, b: &Template) {
        if self.sqrt.len() != CYLINDER_BITS + 1 {
            self.sqrt = (0..=CYLINDER_BITS).map(|n| f32::from(u16::try_from(n).unwrap_or(u16::MAX)).sqrt()).collect();
        }
        self.pairs.clear();
        #[cfg(target_arch = "x86_64")]
        match self.kernel {
            // SAFETY: the kernel is only chosen when the CPU reported its features (`Kernel::is_supported`).
            Kernel::Avx512 => unsafe { avx512::local_similarities(a, b, &self.sqrt, &mut self.pairs) },
            // SAFETY: as above.
            Kernel::Popcnt => unsafe { local_similarities_popcnt(a, b, &self.sqrt, &mut self.pairs) },
            Kernel::Portable => collect_local_similarities(a, b, &self.sqrt, &mut self.pairs),
        }
        #[cfg(not(target_arch = "x86_64"))]
        collect_local_similarities(a, b, &self.sqrt, &mut self.pairs);
    }

    /// Runs the relaxation over `pairs`, leaving the final similarities in `lambda`.
    fn relax(&mut self, a: &Template, b: &Template, n_r: usize) {
        let n = self.pairs.len();
        self.lambda.clear();
        self.lambda.extend(self.pairs.iter().map(|p| p.score));
        self.rho.clear();
        self.rho.resize(n * n, 0.0);
        for (t, pt) in self.pairs.iter().enumerate() {
            for (k, pk) in self.pairs.iter().enumerate().skip(t + 1) {
                let r = compatibility(a, b, pt, pk);
                if let Some(x) = self.rho.get_mut(t * n + k) {
                    *x = r;
                }
                if let Some(x) = self.rho.get_mut(k * n + t) {
                    *x = r;
                }
            }
        }
        #[allow(clippy::cast_precision_loss)] // at most a few hundred pairs
        let others = n_r.saturating_sub(1).max(1) as f32;
        for _ in 0..N_REL {
            self.next.clear();
            for (t, &own) in self.lambda.iter().enumerate() {
                let row = self.rho.get(t * n..(t + 1) * n).unwrap_or(&[]);
                // rho[t][t] is 0, so the sum runs over k != t.
                let support: f32 = row.iter().zip(&self.lambda).map(|(r, l)| r * l).sum();
                self.next.push(W_R * own + (1.0 - W_R) * support / others);
            }
            std::mem::swap(&mut self.lambda, &mut self.next);
        }
    }
}

/// [`collect_local_similarities`] compiled with the `popcnt` instruction.
///
/// # Safety
/// The CPU must support `popcnt`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn local_similarities_popcnt(a: &Template, b: &Template, sqrt: &[f32], pairs: &mut Vec<Pair>) {
    collect_local_similarities(a, b, sqrt, pairs);
}

/// Appends to `pairs` every cylinder pair of `a` and `b` with positive local similarity.
#[inline(always)]
fn collect_local_similarities(a: &Template, b: &Template, sqrt: &[f32], pairs: &mut Vec<Pair>) {
    for (ia, (pa, (bits_a, mask_a))) in a.points.iter().zip(a.bits.iter().zip(&a.masks)).enumerate() {
        for (ib, (pb, (bits_b, mask_b))) in b.points.iter().zip(b.bits.iter().zip(&b.masks)).enumerate() {
            if angle_diff(pa.angle, pb.angle).abs() > MAX_ANGLE_DIFF {
                continue;
            }
            let score = cylinder_similarity(bits_a, mask_a, bits_b, mask_b, sqrt);
            if score > 0.0 {
                pairs.push(Pair { score, a: ia, b: ib });
            }
        }
    }
}

/// Appends to `pairs`, in key order, the pairs whose minutiae are both still unused, up to `limit` pairs.
fn greedy_one_to_one(keys: &[u64], used_a: &mut [bool], used_b: &mut [bool], pairs: &mut Vec<Pair>, limit: usize) {
    for &key in keys {
        if pairs.len() >= limit {
            break;
        }
        #[allow(clippy::cast_possible_truncation)] // unpacking the fields packed by `similarity`
        let (score, ia, ib) =
            (f32::from_bits((key >> 32) as u32), ((key >> 16) & 0xFFFF) as usize, (key & 0xFFFF) as usize);
        let (Some(ua), Some(ub)) = (used_a.get_mut(ia), used_b.get_mut(ib)) else {
            continue;
        };
        if *ua || *ub {
            continue;
        }
        *ua = true;
        *ub = true;
        pairs.push(Pair { score, a: ia, b: ib });
    }
}

/// MCC-16b local similarity of two cylinders: `1 - ‖a⊕b‖ / (‖a‖ + ‖b‖)` over the cells valid in both.
#[inline(always)]
fn cylinder_similarity(
    bits_a: &[u64; WORDS],
    mask_a: &[u64; MASK_WORDS],
    bits_b: &[u64; WORDS],
    mask_b: &[u64; MASK_WORDS],
    sqrt: &[f32],
) -> f32 {
    let matchable: u32 = mask_a.iter().zip(mask_b).map(|(ma, mb)| (ma & mb).count_ones()).sum();
    if matchable < MIN_MATCHABLE {
        return 0.0;
    }
    // Cell bits are only set in valid cells, so a ∧ b already lies in the common
    // cells and ‖(a ⊕ b) restricted‖² = na + nb - 2·pop(a ∧ b).
    let (mut na, mut nb, mut nab) = (0, 0, 0);
    for (layer_a, layer_b) in bits_a.chunks_exact(MASK_WORDS).zip(bits_b.chunks_exact(MASK_WORDS)) {
        for (((wa, wb), ma), mb) in layer_a.iter().zip(layer_b).zip(mask_a).zip(mask_b) {
            na += (wa & mb).count_ones();
            nb += (wb & ma).count_ones();
            nab += (wa & wb).count_ones();
        }
    }
    similarity_from_counts(na, nb, nab, sqrt)
}

/// `1 - √‖a⊕b‖ / (√‖a‖ + √‖b‖)` from the counts over the common cells.
#[inline(always)]
fn similarity_from_counts(na: u32, nb: u32, nab: u32, sqrt: &[f32]) -> f32 {
    let nx = na + nb - 2 * nab;
    let root = |n: u32| usize::try_from(n).ok().and_then(|n| sqrt.get(n)).copied().unwrap_or(0.0);
    let (na, nb, nx) = (root(na), root(nb), root(nx));
    let denominator = na + nb;
    if denominator > 0.0 { 1.0 - nx / denominator } else { 0.0 }
}

/// The local similarities with AVX-512: a cylinder's 1,536 cell bits are three
/// 512-bit vectors (two direction layers each), and its 256-bit validity mask
/// is broadcast to both halves of a vector.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m256i, __m512i, _mm256_loadu_si256, _mm512_add_epi64, _mm512_and_si512, _mm512_broadcast_i64x4,
        _mm512_loadu_epi64, _mm512_popcnt_epi64, _mm512_reduce_add_epi64, _mm512_setzero_si512, _mm512_slli_epi64,
    };

    use super::super::{MASK_WORDS, WORDS};
    use super::{MAX_ANGLE_DIFF, MIN_MATCHABLE, Pair, Template, angle_diff, similarity_from_counts};

    const _: () = assert!(WORDS == 3 * 8 && MASK_WORDS == 4, "a cylinder is three 512-bit vectors");

    /// The three vectors of a cylinder's bits.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load_bits(bits: &[u64; WORDS]) -> [__m512i; 3] {
        let p = bits.as_ptr().cast::<i64>();
        // SAFETY: `bits` holds 24 words, so offsets 0, 8 and 16 each start 8
        // readable words; the loads are unaligned.
        unsafe { [_mm512_loadu_epi64(p), _mm512_loadu_epi64(p.add(8)), _mm512_loadu_epi64(p.add(16))] }
    }

    /// A validity mask in both 256-bit halves of a vector.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn load_mask(mask: &[u64; MASK_WORDS]) -> __m512i {
        // SAFETY: `mask` holds 4 words (32 bytes), one unaligned 256-bit load.
        unsafe { _mm512_broadcast_i64x4(_mm256_loadu_si256(mask.as_ptr().cast::<__m256i>())) }
    }

    /// Same pairs and scores as `collect_local_similarities`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F and AVX-512 VPOPCNTDQ.
    #[target_feature(enable = "avx512f,avx512vpopcntdq,popcnt")]
    pub(super) unsafe fn local_similarities(a: &Template, b: &Template, sqrt: &[f32], pairs: &mut Vec<Pair>) {
        for (ia, (pa, (bits_a, mask_a))) in a.points.iter().zip(a.bits.iter().zip(&a.masks)).enumerate() {
            let va = load_bits(bits_a);
            let ma = load_mask(mask_a);
            for (ib, (pb, (bits_b, mask_b))) in b.points.iter().zip(b.bits.iter().zip(&b.masks)).enumerate() {
                if angle_diff(pa.angle, pb.angle).abs() > MAX_ANGLE_DIFF {
                    continue;
                }
                let matchable: u32 = mask_a.iter().zip(mask_b).map(|(x, y)| (x & y).count_ones()).sum();
                if matchable < MIN_MATCHABLE {
                    continue;
                }
                let vb = load_bits(bits_b);
                let mb = load_mask(mask_b);
                // Per 64-bit lane, ‖a ∧ mask_b‖ + ‖b ∧ mask_a‖·2¹⁶ + ‖a ∧ b‖·2³²: each
                // total is at most 1,536, so one sum over the lanes holds all three.
                let (mut acc, mut acc_b, mut acc_ab) =
                    (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
                for (&xa, &xb) in va.iter().zip(&vb) {
                    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(xa, mb)));
                    acc_b = _mm512_add_epi64(acc_b, _mm512_popcnt_epi64(_mm512_and_si512(xb, ma)));
                    acc_ab = _mm512_add_epi64(acc_ab, _mm512_popcnt_epi64(_mm512_and_si512(xa, xb)));
                }
                let packed = _mm512_add_epi64(
                    acc,
                    _mm512_add_epi64(_mm512_slli_epi64::<16>(acc_b), _mm512_slli_epi64::<32>(acc_ab)),
                );
                #[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // the packed fields are 16 bits
                let total = _mm512_reduce_add_epi64(packed) as u64;
                #[allow(clippy::cast_possible_truncation)]
                let (na, nb, nab) = ((total & 0xFFFF) as u32, ((total >> 16) & 0xFFFF) as u32, (total >> 32) as u32);
                let score = similarity_from_counts(na, nb, nab, sqrt);
                if score > 0.0 {
                    pairs.push(Pair { score, a: ia, b: ib });
                }
            }
        }
    }
}

/// How well two minutia pairs agree geometrically (ρ in the paper), in `[0, 1]`.
fn compatibility(a: &Template, b: &Template, t: &Pair, k: &Pair) -> f32 {
    let (Some(at), Some(ak), Some(bt), Some(bk)) =
        (a.points.get(t.a), a.points.get(k.a), b.points.get(t.b), b.points.get(k.b))
    else {
        return 0.0;
    };
    let d1 = (distance(at, ak) - distance(bt, bk)).abs();
    if d1 > D1_CUTOFF {
        return 0.0;
    }
    let d2 = angle_diff(angle_diff(at.angle, ak.angle), angle_diff(bt.angle, bk.angle)).abs();
    if d2 > D2_CUTOFF {
        return 0.0;
    }
    // d_R(t, k) in A minus d_R(t, k) in B, with one atan2: the difference of
    // the two segments' directions is the angle between them.
    let (ax, ay, bx, by) = (at.x - ak.x, at.y - ak.y, bt.x - bk.x, bt.y - bk.y);
    let between = (bx * ay - by * ax).atan2(bx * ax + by * ay);
    let d3 = angle_diff(angle_diff(at.angle, bt.angle), between).abs();
    if d3 > D3_CUTOFF {
        return 0.0;
    }
    sigmoid(d1, MU_1, TAU_1) * sigmoid(d2, MU_2, TAU_2) * sigmoid(d3, MU_3, TAU_3)
}

fn distance(p: &Point, q: &Point) -> f32 {
    let (dx, dy) = (p.x - q.x, p.y - q.y);
    (dx * dx + dy * dy).sqrt()
}

/// `Z(v, μ, τ) = 1 / (1 + e^{-τ(v-μ)})`.
fn sigmoid(v: f32, mu: f32, tau: f32) -> f32 {
    1.0 / (1.0 + (-tau * (v - mu)).exp())
}

/// Number of pairs averaged into the score for templates of `n` cylinders (n_P).
fn pairs_to_average(n: usize) -> usize {
    #[allow(clippy::cast_precision_loss)] // template sizes are small
    let z = sigmoid(n as f32, MU_P, TAU_P);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss)] // z in [0, 1]
    let extra = (z * (MAX_NP - MIN_NP) as f32).round() as usize;
    MIN_NP + extra.min(MAX_NP - MIN_NP)
}
