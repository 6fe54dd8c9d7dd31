//! Minutia Cylinder-Code (MCC) fingerprint matching.
//!
//! Implements the bit-based variant (MCC-16b) of R. Cappelli, M. Ferrara and
//! D. Maltoni, "Minutia Cylinder-Code: a new representation and matching
//! technique for fingerprint recognition", IEEE TPAMI 32(12), 2010, with the
//! global score "Local Similarity Sort with Relaxation" (LSS-R).
//!
//! Every minutia gets a *cylinder*: a 16×16 spatial grid (radius 70 px) times
//! 6 direction bins, rotated into the minutia's own frame, whose cells record
//! (as one bit each) whether neighbouring minutiae with a given relative
//! direction lie near the cell. Cylinders are rotation and translation
//! invariant, so two impressions are compared by comparing cylinders pairwise
//! (popcounts over 1,536-bit vectors) and consolidating the best pairs with a
//! relaxation step that rewards geometrically consistent pairs.
//!
//! A [`Template`] is built once per finger ([`Template::new`]); a [`Matcher`]
//! holds scratch buffers so that [`Matcher::similarity`] does not allocate
//! once its buffers have grown.
//!
//! Parameters (the paper's 500 dpi defaults): R = 70, N_S = 16, N_D = 6,
//! σ_S = 28/3, σ_D = 2π/9, μ_Ψ = 0.01 (binarisation threshold of the bit
//! variant), cell validity from the convex hull of the minutiae enlarged by
//! ω = 50, min_VC = 0.75 (of the cells inside the radius), min_M = 2,
//! min_ME = 0.60 (matchable cells, of the cells inside the radius),
//! δ_θ = π/2; LSS-R with min_nP = 4, max_nP = 12, μ_P = 20, τ_P = 2/5,
//! w_R = 0.5, n_rel = 5, μ_1 = 5, τ_1 = -8/5, μ_2 = μ_3 = π/12,
//! τ_2 = τ_3 = -30.
//!
//! One deviation from the paper: the n_R = min(n_A, n_B) pairs that enter the
//! relaxation are chosen greedily in decreasing local similarity with each
//! minutia used at most once (the paper's LSS sorts without that constraint).
//! On the FVC2002 DB1–DB4 ISO templates it lowered FNMR at FMR 0.1% on three
//! of the four databases.
//!
//! Scores are small after the relaxation: on the FVC2002 DB1–DB4 ISO templates
//! all 11,520 different-finger comparisons scored at most 0.033 (99.9% at most
//! 0.027, 99% at most 0.021), while same-finger medians were 0.06–0.14.
//!
//! Rotations beyond δ_θ = π/2 between the two impressions are not matched, by
//! design (every pair of minutiae whose directions differ more is skipped).

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bytes;
mod hull;
mod matcher;
#[doc(hidden)]
pub mod reference;

use std::f32::consts::{PI, TAU};

pub use matcher::{Kernel, Matcher, similarity};

use hull::convex_hull;

use super::iso19794_2::{IsoMinutia, angle_radians};

/// Cylinder radius in pixels (500 dpi).
pub const RADIUS: f32 = 70.0;
/// Number of cells along each spatial side of a cylinder.
pub const NS: usize = 16;
/// Number of direction bins (cylinder height).
pub const ND: usize = 6;
/// Standard deviation of the spatial Gaussian, in pixels.
pub const SIGMA_S: f32 = 28.0 / 3.0;
/// Standard deviation of the directional Gaussian, in radians.
pub const SIGMA_D: f32 = 2.0 * PI / 9.0;
/// Binarisation threshold of a cell's accumulated contribution (μ_Ψ).
pub const MU_PSI: f32 = 0.01;
/// Offset of the convex hull that bounds valid cells, in pixels (ω).
pub const OMEGA: f32 = 50.0;
/// Minimum fraction of a cylinder's in-radius cells that must be valid (min_VC).
pub const MIN_VALID_CELLS: f32 = 0.75;
/// Minimum number of other minutiae within `RADIUS + 3σ_S` for a valid cylinder (min_M).
pub const MIN_NEIGHBOURS: usize = 2;
/// Minimum fraction of in-radius cells valid in both cylinders for them to be compared (min_ME).
pub const MIN_MATCHABLE_CELLS: f32 = 0.60;
/// Largest direction difference of two minutiae whose cylinders are compared (δ_θ).
pub const MAX_ANGLE_DIFF: f32 = PI / 2.0;

/// Most minutiae a template uses; the rest are ignored.
pub const MAX_MINUTIAE: usize = 1024;

/// Spatial cells per direction layer.
const CELLS_XY: usize = NS * NS;
/// 64-bit words holding one spatial layer (or the validity mask).
const MASK_WORDS: usize = CELLS_XY / 64;
/// 64-bit words holding a whole cylinder.
const WORDS: usize = MASK_WORDS * ND;
/// Side of a spatial cell, in pixels (Δ_S).
const DELTA_S: f32 = 2.0 * RADIUS / NS as f32;
/// Height of a direction bin, in radians (Δ_D).
const DELTA_D: f32 = TAU / ND as f32;

/// One minutia: position in pixels and direction in radians.
///
/// Same conventions as ISO/IEC 19794-2: origin at the upper-left corner, y
/// growing downwards, direction counter-clockwise from +x as the image is
/// viewed (the pixel-space direction vector is `(cos θ, -sin θ)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minutia {
    /// Column in pixels.
    pub x: f32,
    /// Row in pixels (growing downwards).
    pub y: f32,
    /// Direction in radians, counter-clockwise from +x as viewed.
    pub angle: f32,
}

impl From<&IsoMinutia> for Minutia {
    fn from(m: &IsoMinutia) -> Self {
        Self { x: f32::from(m.x), y: f32::from(m.y), angle: angle_radians(m.angle) }
    }
}

/// A minutia in the internal right-handed frame (y up, angle counter-clockwise).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Point {
    x: f32,
    y: f32,
    angle: f32,
}

/// The cylinders of one finger impression, ready to be compared.
///
/// Only valid cylinders are kept (enough valid cells and contributing
/// neighbours); a template with fewer than two usable minutiae has none and
/// scores 0 against anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Template {
    /// Centre minutia of each kept cylinder, internal frame.
    points: Vec<Point>,
    /// Cell bits of each cylinder: bit `k * 256 + i * 16 + j` in word order.
    bits: Vec<[u64; WORDS]>,
    /// Spatial validity mask of each cylinder (bit `i * 16 + j`).
    masks: Vec<[u64; MASK_WORDS]>,
}

impl Template {
    /// Builds the cylinders of a set of minutiae.
    ///
    /// Non-finite minutiae are ignored, and so is everything after the first
    /// [`MAX_MINUTIAE`] (ISO/IEC 19794-2 records hold at most 255 per view).
    pub fn new(minutiae: &[Minutia]) -> Self {
        let points = internal_points(minutiae);
        let hull = convex_hull(&points);
        let layout = &*LAYOUT;
        let mut template = Self::default();
        let mut neighbours: Vec<Neighbour> = Vec::new();
        // Per cell, the direction sums of the neighbours' contributions.
        let mut sums = vec![[0.0_f32; ND]; CELLS_XY];
        for (index, m) in points.iter().enumerate() {
            let (sin, cos) = m.angle.sin_cos();
            neighbours_of(&points, index, (sin, cos), layout, &mut neighbours);
            if neighbours.len() < MIN_NEIGHBOURS {
                continue;
            }
            // Each neighbour reaches the cells within 3σ_S of it: visit those
            // (a box of cells around it) instead of testing every cell against
            // every neighbour. Each cell still sums its neighbours in order.
            sums.fill([0.0; ND]);
            for (lx, ly, contributions) in &neighbours {
                let (i_range, j_range) = (cells_near(*lx), cells_near(*ly));
                for i in i_range {
                    for j in j_range.clone() {
                        let cell = i * NS + j;
                        let (Some(&(u, v)), Some(row)) = (layout.centres.get(cell), sums.get_mut(cell)) else {
                            continue;
                        };
                        let d2 = (lx - u) * (lx - u) + (ly - v) * (ly - v);
                        if d2 > 9.0 * SIGMA_S * SIGMA_S {
                            continue;
                        }
                        let spatial = gaussian(d2.sqrt(), SIGMA_S);
                        for (s, c) in row.iter_mut().zip(contributions) {
                            *s += spatial * c;
                        }
                    }
                }
            }
            let mut bits = [0_u64; WORDS];
            let mut mask = [0_u64; MASK_WORDS];
            let mut valid_cells = 0_usize;
            for &(cell, near) in &layout.in_radius_cells {
                let Some(&(u, v)) = layout.centres.get(cell) else { continue };
                // A cell within ω of m (itself inside the hull) is valid without a test.
                if !near {
                    let world = (m.x + u * cos - v * sin, m.y + u * sin + v * cos);
                    if !hull.contains_with_offset(world, OMEGA) {
                        continue;
                    }
                }
                valid_cells += 1;
                set_bit(&mut mask, cell);
                for (k, s) in sums.get(cell).into_iter().flatten().enumerate() {
                    if *s >= MU_PSI {
                        set_bit(&mut bits, k * CELLS_XY + cell);
                    }
                }
            }
            template.keep_if_valid(*m, bits, mask, valid_cells);
        }
        template
    }

    /// Keeps a cylinder whose valid cells reach min_VC of those in the radius.
    fn keep_if_valid(&mut self, centre: Point, bits: [u64; WORDS], mask: [u64; MASK_WORDS], valid_cells: usize) {
        #[allow(clippy::cast_precision_loss)] // cell counts are at most 256
        let enough = valid_cells as f32 >= MIN_VALID_CELLS * IN_RADIUS_CELLS as f32;
        if enough {
            self.points.push(centre);
            self.bits.push(bits);
            self.masks.push(mask);
        }
    }

    /// Number of valid cylinders (minutiae that take part in matching).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the template has no valid cylinder (it then matches nothing).
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Indices of the (at most) `max` cylinders whose centres lie nearest the
    /// centroid of all the centres, in increasing order; every index when the
    /// template has at most `max` cylinders.
    ///
    /// A probe's central cylinders are the likeliest to overlap its mate's
    /// print: the candidate stage hashes only those ([`super::shortlist`]), and
    /// the first pass of the re-rank compares only those ([`super::rerank`]).
    pub fn central_indices(&self, max: usize) -> Vec<usize> {
        if self.len() <= max {
            return (0..self.len()).collect();
        }
        #[allow(clippy::cast_precision_loss)] // at most MAX_MINUTIAE points
        let n = self.len() as f32;
        let (cx, cy) = self.points.iter().fold((0.0, 0.0), |(a, b), p| (a + p.x / n, b + p.y / n));
        let mut order: Vec<usize> = (0..self.len()).collect();
        let distance = |i: &usize| self.points.get(*i).map_or(f32::INFINITY, |p| (p.x - cx).hypot(p.y - cy));
        order.sort_by(|a, b| distance(a).total_cmp(&distance(b)));
        order.truncate(max);
        order.sort_unstable();
        order
    }

    /// The template restricted to its [`Template::central_indices`] cylinders
    /// (a copy of the whole when it has at most `max`).
    pub fn central(&self, max: usize) -> Self {
        let keep = self.central_indices(max);
        let mut out = Self {
            points: Vec::with_capacity(keep.len()),
            bits: Vec::with_capacity(keep.len()),
            masks: Vec::with_capacity(keep.len()),
        };
        for i in keep {
            if let (Some(p), Some(b), Some(m)) = (self.points.get(i), self.bits.get(i), self.masks.get(i)) {
                out.points.push(*p);
                out.bits.push(*b);
                out.masks.push(*m);
            }
        }
        out
    }

    /// Each kept cylinder as (centre `x`, `y` (up), direction in radians, cell bits, validity mask).
    ///
    /// For the 1:N candidate stage (`shortlist`), which hashes cylinders, and
    /// the candidate-stage experiments of `benches/finger_identify.rs`.
    #[doc(hidden)]
    pub fn cylinders(&self) -> impl Iterator<Item = (f32, f32, f32, &[u64], &[u64])> + '_ {
        self.points.iter().zip(self.bits.iter().zip(&self.masks)).map(|(p, (b, m))| (p.x, p.y, p.angle, &b[..], &m[..]))
    }
}

/// The first [`MAX_MINUTIAE`] finite minutiae in the internal frame (y up, angle in `[0, 2π)`).
fn internal_points(minutiae: &[Minutia]) -> Vec<Point> {
    minutiae
        .iter()
        .take(MAX_MINUTIAE)
        .filter(|m| m.x.is_finite() && m.y.is_finite() && m.angle.is_finite())
        .map(|m| Point { x: m.x, y: -m.y, angle: m.angle.rem_euclid(TAU) })
        .collect()
}

/// A neighbour of a cylinder's centre minutia: its position in the centre's
/// frame and its contribution to each direction bin.
type Neighbour = (f32, f32, [f32; ND]);

/// Fills `out` with the minutiae within `RADIUS + 3σ_S` of `points[index]`
/// (whose direction has sine and cosine `sin_cos`), in their order.
fn neighbours_of(
    points: &[Point],
    index: usize,
    (sin, cos): (f32, f32),
    layout: &CellLayout,
    out: &mut Vec<Neighbour>,
) {
    out.clear();
    let Some(m) = points.get(index) else { return };
    for (other, t) in points.iter().enumerate() {
        let (dx, dy) = (t.x - m.x, t.y - m.y);
        if other == index || dx.hypot(dy) > RADIUS + 3.0 * SIGMA_S {
            continue;
        }
        let (lx, ly) = (dx * cos + dy * sin, -dx * sin + dy * cos);
        let dtheta = angle_diff(m.angle, t.angle);
        let mut contributions = [0.0; ND];
        for (k, c) in contributions.iter_mut().enumerate() {
            let alpha = angle_diff(layout.bin_angles.get(k).copied().unwrap_or(0.0), dtheta);
            *c = directional_contribution(alpha);
        }
        out.push((lx, ly, contributions));
    }
}

/// Precomputed geometry shared by all cylinders.
#[derive(Debug)]
struct CellLayout {
    /// Cell centres in the minutia's frame, index `i * NS + j`.
    centres: Vec<(f32, f32)>,
    /// The cells whose centre lies within the radius, each with whether it
    /// lies within ω of the centre (such a cell is always valid: the centre
    /// minutia is inside the hull).
    in_radius_cells: Vec<(usize, bool)>,
    /// Central angle of each direction bin.
    bin_angles: [f32; ND],
}

static LAYOUT: std::sync::LazyLock<CellLayout> = std::sync::LazyLock::new(CellLayout::new);

impl CellLayout {
    fn new() -> Self {
        let half = (NS as f32 - 1.0) / 2.0;
        let mut centres = Vec::with_capacity(CELLS_XY);
        let mut in_radius_cells = Vec::new();
        for i in 0..NS {
            for j in 0..NS {
                centres.push(((i as f32 - half) * DELTA_S, (j as f32 - half) * DELTA_S));
                let d2 = half_cells_from_centre2(i * NS + j);
                if d2 <= (NS * NS) as i64 {
                    in_radius_cells.push((i * NS + j, d2 <= NEAR_HALF_CELLS2));
                }
            }
        }
        let mut bin_angles = [0.0; ND];
        for (k, a) in bin_angles.iter_mut().enumerate() {
            *a = -PI + (k as f32 + 0.5) * DELTA_D;
        }
        Self { centres, in_radius_cells, bin_angles }
    }
}

/// Cells whose centre is within ω of the cylinder centre, as the largest
/// squared distance in half-cell units: `130 (Δ_S/2)² = 49.9² px²` (the next
/// value a cell reaches, 146, is 52.9 px, beyond ω = 50).
const NEAR_HALF_CELLS2: i64 = 130;
const _: () = assert!(OMEGA == 50.0 && DELTA_S == 8.75, "NEAR_HALF_CELLS2 is derived from ω = 50 and Δ_S = 8.75");

/// The cell indices along one axis whose centres may lie within 3σ_S of `t` (a superset).
fn cells_near(t: f32) -> std::ops::Range<usize> {
    let half = (NS as f32 - 1.0) / 2.0;
    let reach = 3.0 * SIGMA_S;
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=NS first
    let index = |x: f32| (x / DELTA_S + half).clamp(0.0, NS as f32) as usize;
    let (lo, hi) = (index(t - reach).saturating_sub(1), (index(t + reach) + 2).min(NS));
    if t.is_finite() { lo..hi.max(lo) } else { 0..0 }
}

/// Number of cells whose centre lies within the radius (the reference for min_VC and min_ME).
///
/// Centre offsets are `(i - 7.5) Δ_S` and the radius is `8 Δ_S`, so in half-cell
/// units the test is `(2i - 15)² + (2j - 15)² ≤ 256`, exact in integers.
const IN_RADIUS_CELLS: usize = {
    let mut count = 0;
    let mut c = 0;
    while c < CELLS_XY {
        if half_cells_from_centre2(c) <= (NS * NS) as i64 {
            count += 1;
        }
        c += 1;
    }
    count
};

/// Squared distance of a cell's centre from the cylinder's centre, in
/// half-cell units (exact): the centre of cell `i * NS + j` lies at
/// `((2i - 15), (2j - 15)) Δ_S / 2`, and the radius is 16 of those units.
const fn half_cells_from_centre2(cell: usize) -> i64 {
    #[allow(clippy::cast_possible_wrap)] // NS is 16
    let (di, dj) = (2 * (cell / NS) as i64 - (NS as i64 - 1), 2 * (cell % NS) as i64 - (NS as i64 - 1));
    di * di + dj * dj
}

fn set_bit<const N: usize>(words: &mut [u64; N], bit: usize) {
    if let Some(w) = words.get_mut(bit / 64) {
        *w |= 1 << (bit % 64);
    }
}

/// Difference `a - b` of two angles, wrapped into `[-π, π)`.
fn angle_diff(a: f32, b: f32) -> f32 {
    let mut d = a - b;
    // Fast path: the differences of angles in [0, 2π) or [-π, π] need at most two turns.
    for _ in 0..2 {
        if d >= PI {
            d -= TAU;
        } else if d < -PI {
            d += TAU;
        }
    }
    if (-PI..PI).contains(&d) { d } else { (d + PI).rem_euclid(TAU) - PI }
}

/// Normal density with mean 0.
fn gaussian(t: f32, sigma: f32) -> f32 {
    (-(t * t) / (2.0 * sigma * sigma)).exp() / (sigma * (TAU).sqrt())
}

/// Area of the directional Gaussian over the bin of width Δ_D centred at `alpha`.
fn directional_contribution(alpha: f32) -> f32 {
    let scale = 1.0 / (SIGMA_D * std::f32::consts::SQRT_2);
    0.5 * (erf((alpha + DELTA_D / 2.0) * scale) - erf((alpha - DELTA_D / 2.0) * scale))
}

/// Error function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
fn erf(x: f32) -> f32 {
    let sign = if x < 0.0 { -1.0 } else { 1.0 };
    let x = f64::from(x.abs());
    let t = 1.0 / (1.0 + 0.327_591_1 * x);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    #[allow(clippy::cast_possible_truncation)] // the result is in [0, 1]
    let y = (1.0 - poly * (-x * x).exp()) as f32;
    sign * y
}

/// Deterministic pseudo-random minutiae in a 300×400 frame (for the finger modules' tests).
#[cfg(test)]
pub(crate) fn random_minutiae(seed: u64, n: usize) -> Vec<Minutia> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let mut next = || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        #[allow(clippy::cast_precision_loss)]
        let v = (state >> 40) as f32 / (1_u64 << 24) as f32;
        v
    };
    (0..n).map(|_| Minutia { x: 40.0 + 220.0 * next(), y: 40.0 + 320.0 * next(), angle: TAU * next() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rotates by `phi` (counter-clockwise as viewed) about (150, 200), then translates.
    fn transform(ms: &[Minutia], phi: f32, tx: f32, ty: f32) -> Vec<Minutia> {
        let (s, c) = phi.sin_cos();
        ms.iter()
            .map(|m| {
                let (x, y) = (m.x - 150.0, -(m.y - 200.0));
                let (rx, ry) = (x * c - y * s, x * s + y * c);
                Minutia { x: rx + 150.0 + tx, y: -ry + 200.0 + ty, angle: (m.angle + phi).rem_euclid(TAU) }
            })
            .collect()
    }

    #[test]
    fn identical_template_scores_high() {
        let t = Template::new(&random_minutiae(1, 40));
        assert!(t.len() > 20, "only {} valid cylinders", t.len());
        let s = similarity(&t, &t);
        assert!(s > 0.9, "self similarity {s}");
    }

    #[test]
    fn rotation_and_translation_keep_a_high_score() {
        let ms = random_minutiae(7, 40);
        let a = Template::new(&ms);
        let mut matcher = Matcher::new();
        // Rotations stay within the direction gate δ_θ = π/2, as fingers on a sensor do.
        for (phi, tx, ty) in [(0.5, 20.0, -15.0), (-1.2, -30.0, 40.0), (1.3, 5.0, 5.0)] {
            let b = Template::new(&transform(&ms, phi, tx, ty));
            let s = matcher.similarity(&a, &b);
            assert!(s > 0.8, "phi {phi}: {s}");
            let back = matcher.similarity(&b, &a);
            assert!((s - back).abs() < 0.05, "asymmetric: {s} vs {back}");
        }
    }

    #[test]
    fn different_random_templates_score_low() {
        let mut matcher = Matcher::new();
        for seed in 0..10 {
            let a = Template::new(&random_minutiae(100 + seed, 35));
            let b = Template::new(&random_minutiae(200 + seed, 35));
            let s = matcher.similarity(&a, &b);
            assert!(s < 0.3, "seed {seed}: {s}");
        }
    }

    #[test]
    fn every_kernel_gives_the_same_scores() {
        let mut portable = Matcher::portable();
        let mut others: Vec<Matcher> = [Kernel::Popcnt, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.is_supported())
            .map(Matcher::with_kernel)
            .collect();
        assert_eq!(Matcher::new().kernel(), Kernel::best());
        for seed in 0..8 {
            let ms = random_minutiae(300 + seed, 30 + 2 * seed as usize);
            let a = Template::new(&ms);
            let b = Template::new(&transform(&ms, 0.3, 10.0, -12.0));
            let c = Template::new(&random_minutiae(400 + seed, 35));
            for (x, y) in [(&a, &b), (&a, &c), (&b, &c), (&a, &a)] {
                let want = portable.similarity(x, y).to_bits();
                for m in &mut others {
                    assert_eq!(m.similarity(x, y).to_bits(), want, "seed {seed}, {:?}", m.kernel());
                }
            }
        }
    }

    #[test]
    fn empty_and_tiny_inputs_score_zero() {
        let full = Template::new(&random_minutiae(3, 30));
        let empty = Template::new(&[]);
        let one = Template::new(&random_minutiae(4, 1));
        assert!(empty.is_empty());
        assert!(one.is_empty());
        for t in [&empty, &one] {
            assert!(similarity(t, &full).abs() < 1e-6);
            assert!(similarity(&full, t).abs() < 1e-6);
            assert!(similarity(t, t).abs() < 1e-6);
        }
    }

    #[test]
    fn non_finite_and_duplicate_minutiae_do_not_panic() {
        let mut ms = random_minutiae(5, 10);
        ms.push(Minutia { x: f32::NAN, y: 1.0, angle: 0.0 });
        ms.push(Minutia { x: 1.0, y: f32::INFINITY, angle: f32::NAN });
        let dup = vec![Minutia { x: 10.0, y: 10.0, angle: 1.0 }; 5];
        let t = Template::new(&ms);
        let d = Template::new(&dup);
        let s = similarity(&t, &d);
        assert!((0.0..=1.0).contains(&s));
        let far = [Minutia { x: 1e30, y: -1e30, angle: 1e30 }, Minutia { x: 0.0, y: 0.0, angle: 0.0 }];
        let f = Template::new(&far);
        assert!((0.0..=1.0).contains(&similarity(&f, &t)));
    }

    #[test]
    fn cylinders_are_those_of_the_cell_by_cell_construction() {
        let mut cases: Vec<Vec<Minutia>> = (0..40).map(|seed| random_minutiae(500 + seed, 5 + seed as usize)).collect();
        // Dense, sparse, collinear and clustered sets, and minutiae near the frame's edges.
        cases.push(random_minutiae(9, 120));
        cases.push((0..12).map(|i| Minutia { x: 20.0 * i as f32, y: 100.0, angle: 0.3 * i as f32 }).collect());
        cases.push(
            (0..30).map(|i| Minutia { x: 150.0 + (i % 5) as f32, y: 200.0 + (i / 5) as f32, angle: 1.0 }).collect(),
        );
        cases.push(transform(&random_minutiae(11, 40), 2.5, -140.0, 190.0));
        for (n, ms) in cases.iter().enumerate() {
            assert_eq!(Template::new(ms), reference::template(ms), "case {n}");
        }
    }

    #[test]
    fn layout_counts_match() {
        let layout = CellLayout::new();
        assert_eq!(layout.centres.iter().filter(|(u, v)| u.hypot(*v) <= RADIUS).count(), IN_RADIUS_CELLS);
        assert_eq!(layout.in_radius_cells.len(), IN_RADIUS_CELLS);
        for &(cell, near) in &layout.in_radius_cells {
            let (u, v) = layout.centres.get(cell).copied().unwrap_or((f32::NAN, f32::NAN));
            assert!(u.hypot(v) <= RADIUS);
            assert_eq!(near, u.hypot(v) <= OMEGA, "cell {cell}");
        }
        assert!((erf(0.5) - 0.520_499_9).abs() < 1e-5);
        assert!(
            (directional_contribution(0.0) - 0.5 * (erf(DELTA_D / 2.0 / (SIGMA_D * std::f32::consts::SQRT_2)) * 2.0))
                .abs()
                < 1e-6
        );
    }
}
