//! Convex hull of the minutiae, used to decide which cylinder cells are valid.

use super::Point;

/// Convex hull of a point set, vertices counter-clockwise (fewer than 3 when degenerate).
#[derive(Debug)]
pub(super) struct Hull {
    vertices: Vec<(f32, f32)>,
}

/// Andrew's monotone chain over the minutia positions.
pub(super) fn convex_hull(points: &[Point]) -> Hull {
    let mut pts: Vec<(f32, f32)> = points.iter().map(|p| (p.x, p.y)).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
    pts.dedup();
    if pts.len() < 3 {
        return Hull { vertices: pts };
    }
    let mut hull: Vec<(f32, f32)> = Vec::with_capacity(pts.len() + 1);
    let lower = chain(&mut hull, pts.iter().copied(), 0);
    chain(&mut hull, pts.iter().rev().copied(), lower);
    Hull { vertices: hull }
}

/// Appends one monotone chain (lower or upper) to `hull`, dropping its last
/// point (the first point of the next chain); returns the new length.
fn chain(hull: &mut Vec<(f32, f32)>, pts: impl Iterator<Item = (f32, f32)>, start: usize) -> usize {
    for p in pts {
        while hull.len() >= start + 2 {
            let (Some(&a), Some(&b)) = (hull.get(hull.len() - 2), hull.last()) else {
                break;
            };
            if cross(a, b, p) <= 0.0 {
                hull.pop();
            } else {
                break;
            }
        }
        hull.push(p);
    }
    hull.pop();
    hull.len()
}

/// z component of `(a - o) × (b - o)`: positive when o→a→b turns counter-clockwise.
fn cross(o: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    (a.0 - o.0) * (b.1 - o.1) - (a.1 - o.1) * (b.0 - o.0)
}

impl Hull {
    /// The vertices, counter-clockwise.
    pub(super) fn vertices(&self) -> &[(f32, f32)] {
        &self.vertices
    }

    /// Whether `p` lies inside the hull or within `offset` of its boundary.
    pub(super) fn contains_with_offset(&self, p: (f32, f32), offset: f32) -> bool {
        let n = self.vertices.len();
        if n == 0 {
            return false;
        }
        let edges = || {
            self.vertices.iter().zip(self.vertices.iter().cycle().skip(1)).map(|(&a, &b)| (a, (b.0 - a.0, b.1 - a.1)))
        };
        // Inside (most cells of a cylinder are): every edge has p on its left.
        if n >= 3 && edges().all(|(a, (ex, ey))| ex * (p.1 - a.1) - ey * (p.0 - a.0) >= 0.0) {
            return true;
        }
        let mut min_d2 = f32::INFINITY;
        for (a, (ex, ey)) in edges() {
            let (px, py) = (p.0 - a.0, p.1 - a.1);
            let len2 = ex * ex + ey * ey;
            let t = if len2 > 0.0 { ((px * ex + py * ey) / len2).clamp(0.0, 1.0) } else { 0.0 };
            let (dx, dy) = (px - t * ex, py - t * ey);
            min_d2 = min_d2.min(dx * dx + dy * dy);
        }
        min_d2 <= offset * offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(x: f32, y: f32) -> Point {
        Point { x, y, angle: 0.0 }
    }

    #[test]
    fn square_hull_with_interior_points() {
        let pts = [pt(0.0, 0.0), pt(10.0, 0.0), pt(10.0, 10.0), pt(0.0, 10.0), pt(5.0, 5.0), pt(2.0, 8.0)];
        let hull = convex_hull(&pts);
        assert_eq!(hull.vertices.len(), 4);
        assert!(hull.contains_with_offset((5.0, 5.0), 0.0));
        assert!(!hull.contains_with_offset((15.0, 5.0), 4.0));
        assert!(hull.contains_with_offset((15.0, 5.0), 5.5));
        assert!(hull.contains_with_offset((-3.0, -3.0), 5.0));
    }

    #[test]
    fn degenerate_hulls() {
        assert!(!convex_hull(&[]).contains_with_offset((0.0, 0.0), 100.0));
        let one = convex_hull(&[pt(1.0, 1.0)]);
        assert!(one.contains_with_offset((1.0, 2.0), 1.5));
        let line = convex_hull(&[pt(0.0, 0.0), pt(5.0, 0.0), pt(10.0, 0.0)]);
        assert!(line.contains_with_offset((5.0, 1.0), 2.0));
        assert!(!line.contains_with_offset((5.0, 3.0), 2.0));
    }
}
