//! The straightforward cylinder construction: every cell tests every
//! neighbour and the hull, as the paper describes it. [`super::Template::new`]
//! computes the same cylinders faster; this one is the oracle of its unit
//! test and the baseline of `benches/finger_template.rs`.

#![allow(clippy::indexing_slicing)] // kept as it was written, for reference

use super::{
    CELLS_XY, CellLayout, MASK_WORDS, MIN_NEIGHBOURS, MU_PSI, Minutia, ND, OMEGA, RADIUS, SIGMA_S, Template, WORDS,
    gaussian, hull::Hull, hull::convex_hull, internal_points, neighbours_of, set_bit,
};

/// The cylinders of `minutiae`, built cell by cell (same result as [`Template::new`]).
pub fn template(minutiae: &[Minutia]) -> Template {
    let points = internal_points(minutiae);
    let hull = convex_hull(&points);
    let layout = CellLayout::new();
    let mut template = Template::default();
    let mut neighbours = Vec::new();
    for (index, m) in points.iter().enumerate() {
        let (sin, cos) = m.angle.sin_cos();
        neighbours_of(&points, index, (sin, cos), &layout, &mut neighbours);
        if neighbours.len() < MIN_NEIGHBOURS {
            continue;
        }
        let mut bits = [0_u64; WORDS];
        let mut mask = [0_u64; MASK_WORDS];
        let mut valid_cells = 0_usize;
        for (cell, &(u, v)) in layout.centres.iter().enumerate() {
            if u.hypot(v) > RADIUS {
                continue;
            }
            let world = (m.x + u * cos - v * sin, m.y + u * sin + v * cos);
            if !contains_with_offset(&hull, world, OMEGA) {
                continue;
            }
            valid_cells += 1;
            set_bit(&mut mask, cell);
            let mut sums = [0.0_f32; ND];
            for (lx, ly, contributions) in &neighbours {
                let d2 = (lx - u) * (lx - u) + (ly - v) * (ly - v);
                if d2 > 9.0 * SIGMA_S * SIGMA_S {
                    continue;
                }
                let spatial = gaussian(d2.sqrt(), SIGMA_S);
                for (s, c) in sums.iter_mut().zip(contributions) {
                    *s += spatial * c;
                }
            }
            for (k, s) in sums.iter().enumerate() {
                if *s >= MU_PSI {
                    set_bit(&mut bits, k * CELLS_XY + cell);
                }
            }
        }
        template.keep_if_valid(*m, bits, mask, valid_cells);
    }
    template
}

/// Whether `p` lies inside the hull or within `offset` of its boundary, every edge visited.
fn contains_with_offset(hull: &Hull, p: (f32, f32), offset: f32) -> bool {
    let vertices = hull.vertices();
    let n = vertices.len();
    if n == 0 {
        return false;
    }
    let mut inside = n >= 3;
    let mut min_d2 = f32::INFINITY;
    for i in 0..n {
        let (a, b) = (vertices[i], vertices[(i + 1) % n]);
        let (ex, ey) = (b.0 - a.0, b.1 - a.1);
        let (px, py) = (p.0 - a.0, p.1 - a.1);
        if ex * py - ey * px < 0.0 {
            inside = false;
        }
        let len2 = ex * ex + ey * ey;
        let t = if len2 > 0.0 { ((px * ex + py * ey) / len2).clamp(0.0, 1.0) } else { 0.0 };
        let (dx, dy) = (px - t * ex, py - t * ey);
        min_d2 = min_d2.min(dx * dx + dy * dy);
    }
    inside || min_d2 <= offset * offset
}
