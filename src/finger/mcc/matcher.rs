//! Cylinder comparison (MCC-16b local similarity) and the LSS-R global score.

#![cfg_attr(target_arch = "x86_64", expect(unsafe_code, reason = "popcnt dispatch; the unsafe call has a SAFETY note"))]

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

/// Reusable scratch space for comparing templates (one per thread).
#[derive(Debug)]
pub struct Matcher {
    /// Whether the CPU counts bits in one instruction (`popcnt`); see [`Matcher::local_similarities`].
    popcnt: bool,
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
        #[cfg(target_arch = "x86_64")]
        let popcnt = std::arch::is_x86_feature_detected!("popcnt");
        #[cfg(not(target_arch = "x86_64"))]
        let popcnt = false;
        Self::with_popcnt(popcnt)
    }

    /// A matcher that counts bits without the `popcnt` instruction, whatever the
    /// CPU: the baseline of `benches/finger_match.rs`. Same scores.
    #[doc(hidden)]
    pub fn portable() -> Self {
        Self::with_popcnt(false)
    }

    fn with_popcnt(popcnt: bool) -> Self {
        Self {
            popcnt,
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

    /// Fills `pairs` with every cylinder pair of positive local similarity.
    ///
    /// Each cylinder pair takes 76 population counts. The default x86-64
    /// target has no `popcnt` instruction, so without it each count is a
    /// dozen shifts and masks; with it (checked at run time) the same loop is
    /// compiled to use it: 1.2-1.4x per comparison (BENCHMARKS.md).
    fn local_similarities(&mut self, a: &Template, b: &Template) {
        if self.sqrt.len() != CYLINDER_BITS + 1 {
            self.sqrt = (0..=CYLINDER_BITS).map(|n| f32::from(u16::try_from(n).unwrap_or(u16::MAX)).sqrt()).collect();
        }
        self.pairs.clear();
        #[cfg(target_arch = "x86_64")]
        if self.popcnt {
            // SAFETY: `popcnt` is only set when the CPU reported the feature.
            unsafe { local_similarities_popcnt(a, b, &self.sqrt, &mut self.pairs) };
            return;
        }
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
    let nx = na + nb - 2 * nab;
    let root = |n: u32| usize::try_from(n).ok().and_then(|n| sqrt.get(n)).copied().unwrap_or(0.0);
    let (na, nb, nx) = (root(na), root(nb), root(nx));
    let denominator = na + nb;
    if denominator > 0.0 { 1.0 - nx / denominator } else { 0.0 }
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
    let d3 = angle_diff(radial_angle(at, ak), radial_angle(bt, bk)).abs();
    if d3 > D3_CUTOFF {
        return 0.0;
    }
    sigmoid(d1, MU_1, TAU_1) * sigmoid(d2, MU_2, TAU_2) * sigmoid(d3, MU_3, TAU_3)
}

fn distance(p: &Point, q: &Point) -> f32 {
    let (dx, dy) = (p.x - q.x, p.y - q.y);
    (dx * dx + dy * dy).sqrt()
}

/// Angle between the direction of `p` and the segment from `q` to `p` (d_R in the paper).
fn radial_angle(p: &Point, q: &Point) -> f32 {
    angle_diff(p.angle, (p.y - q.y).atan2(p.x - q.x))
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
