//! The straightforward cylinder construction: every cell tests every
//! neighbour and the hull, as the paper describes it. [`super::Template::new`]
//! computes the same cylinders faster; this one is the oracle of its unit
//! test and the baseline of `benches/finger_template.rs`.

#![allow(clippy::indexing_slicing)] // kept as it was written, for reference

use std::f32::consts::TAU;

use super::{
    CELLS_XY, CellLayout, MASK_WORDS, MAX_MINUTIAE, MIN_NEIGHBOURS, MIN_VALID_CELLS, MU_PSI, Minutia, ND, OMEGA, Point,
    RADIUS, SIGMA_S, Template, WORDS, angle_diff, directional_contribution, gaussian, hull::Hull, hull::convex_hull,
    set_bit,
};

/// The cylinders of `minutiae`, built cell by cell (same result as [`Template::new`]).
pub fn template(minutiae: &[Minutia]) -> Template {
    let points: Vec<Point> = minutiae
        .iter()
        .take(MAX_MINUTIAE)
        .filter(|m| m.x.is_finite() && m.y.is_finite() && m.angle.is_finite())
        .map(|m| Point { x: m.x, y: -m.y, angle: m.angle.rem_euclid(TAU) })
        .collect();
    let hull = convex_hull(&points);
    let layout = CellLayout::new();
    let mut template = Template::default();
    let mut neighbours: Vec<(f32, f32, [f32; ND])> = Vec::new();
    for (index, m) in points.iter().enumerate() {
        let (sin, cos) = m.angle.sin_cos();
        neighbours.clear();
        for (other, t) in points.iter().enumerate() {
            let (dx, dy) = (t.x - m.x, t.y - m.y);
            if other == index || dx.hypot(dy) > RADIUS + 3.0 * SIGMA_S {
                continue;
            }
            // Neighbour position in the frame of m, and its direction contributions.
            let (lx, ly) = (dx * cos + dy * sin, -dx * sin + dy * cos);
            let dtheta = angle_diff(m.angle, t.angle);
            let mut contributions = [0.0; ND];
            for (k, c) in contributions.iter_mut().enumerate() {
                let alpha = angle_diff(layout.bin_angles.get(k).copied().unwrap_or(0.0), dtheta);
                *c = directional_contribution(alpha);
            }
            neighbours.push((lx, ly, contributions));
        }
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
        #[allow(clippy::cast_precision_loss)] // cell counts are at most 256
        let enough = valid_cells as f32 >= MIN_VALID_CELLS * layout.in_radius as f32;
        if enough {
            template.points.push(*m);
            template.bits.push(bits);
            template.masks.push(mask);
        }
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
