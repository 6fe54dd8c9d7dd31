//! Aspect hypotheses: comparing two finger templates also as if their frame
//! had been stretched along y.
//!
//! Scanner SDKs do not all keep the sensor's pixel grid: the FVC2002
//! templates beside `../shared/data` (SecuGen's extractor) put every print in
//! a 300×400 frame whatever the sensor's image size (388×374, 296×560,
//! 300×300), so the minutiae of one database are stretched along one axis
//! and squeezed along the other, while the header still declares square
//! 500 ppi pixels. MCC is not invariant to such a stretch once the finger is
//! rotated (the stretch then shears it), and genuine pairs lose most of their
//! score. A caller that sends only a template cannot say how it was made.
//!
//! So a comparison also tries both templates with y scaled by each of
//! [`FACTORS`] (3:4 and 4:3, the frames in question), the same factor for
//! both since templates of one finger position come from alike scanners,
//! and keeps the best of the three scores. The scores are calibrated under
//! that rule (`cotejo calibrate finger`), since the maximum of three raises
//! the impostor tail too.

use super::mcc::{Matcher, Minutia, Template};

/// The y scale factors tried beside the declared frame.
pub const FACTORS: [f32; 2] = [0.75, 4.0 / 3.0];

/// Minutiae with x scaled by `sx` and y by `sy`: a direction `(cos θ, sin θ)`
/// becomes `(sx cos θ, sy sin θ)`.
pub fn scale_axes(minutiae: &[Minutia], sx: f32, sy: f32) -> Vec<Minutia> {
    minutiae
        .iter()
        .map(|m| {
            let (sin, cos) = m.angle.sin_cos();
            Minutia { x: m.x * sx, y: m.y * sy, angle: (sin * sy).atan2(cos * sx) }
        })
        .collect()
}

/// The templates of one set of minutiae under each of [`FACTORS`] (the
/// declared frame's template is kept apart: the gallery caches it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stretched {
    templates: Vec<Template>,
}

impl Stretched {
    /// Builds the stretched templates of `minutiae`.
    pub fn new(minutiae: &[Minutia]) -> Self {
        Self::with_factors(minutiae, &FACTORS)
    }

    /// The same with other factors (evaluation diagnostics only).
    pub fn with_factors(minutiae: &[Minutia], factors: &[f32]) -> Self {
        Self { templates: factors.iter().map(|&sy| Template::new(&scale_axes(minutiae, 1.0, sy))).collect() }
    }

    /// The best score of `self` against `other` over the hypotheses both have.
    pub fn best(&self, other: &Self, matcher: &mut Matcher) -> f32 {
        self.templates.iter().zip(&other.templates).map(|(a, b)| matcher.similarity(a, b)).fold(0.0, f32::max)
    }

    /// Number of hypotheses.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

/// A template in its declared frame with its stretched hypotheses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hypotheses {
    /// As declared (what the gallery and the shortlist hold).
    pub declared: Template,
    /// Under each of [`FACTORS`].
    pub stretched: Stretched,
}

impl Hypotheses {
    /// Builds all the templates of `minutiae`.
    pub fn new(minutiae: &[Minutia]) -> Self {
        Self { declared: Template::new(minutiae), stretched: Stretched::new(minutiae) }
    }

    /// The score the service gives the pair: the best over the declared frame and the hypotheses.
    pub fn similarity(&self, other: &Self, matcher: &mut Matcher) -> f32 {
        matcher.similarity(&self.declared, &other.declared).max(self.stretched.best(&other.stretched, matcher))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finger::mcc::random_minutiae as print;

    /// The same finger rotated by `angle` about (150, 200), then squeezed along y by `sy`.
    fn rotated_then_squeezed(ms: &[Minutia], angle: f32, sy: f32) -> Vec<Minutia> {
        let (s, c) = angle.sin_cos();
        let turned: Vec<Minutia> = ms
            .iter()
            .map(|m| {
                let (dx, dy) = (m.x - 150.0, m.y - 200.0);
                // Counter-clockwise as viewed (y grows downwards): the direction grows by `angle`.
                Minutia { x: 150.0 + c * dx + s * dy, y: 200.0 - s * dx + c * dy, angle: m.angle + angle }
            })
            .collect();
        scale_axes(&turned, 1.0, sy)
    }

    #[test]
    fn scaling_keeps_a_direction_along_the_stretched_line() {
        let m = [Minutia { x: 10.0, y: 20.0, angle: std::f32::consts::FRAC_PI_4 }];
        let out = scale_axes(&m, 1.0, 0.5);
        assert_eq!((out[0].x, out[0].y), (10.0, 10.0));
        assert!((out[0].angle - 0.5f32.atan()).abs() < 1e-6, "{}", out[0].angle);
        assert_eq!(scale_axes(&m, 1.0, 1.0), m.to_vec());
    }

    #[test]
    fn a_hypothesis_recovers_a_pair_squeezed_into_another_frame() {
        // Two impressions of one finger, 35° apart, both then squeezed by 3/4 along y
        // (as a 300x300 sensor image put into a 300x400 frame is stretched the other way).
        let finger = print(7, 40);
        let a = scale_axes(&finger, 1.0, 4.0 / 3.0);
        let b = rotated_then_squeezed(&finger, 35f32.to_radians(), 4.0 / 3.0);
        let mut matcher = Matcher::new();
        let (ha, hb) = (Hypotheses::new(&a), Hypotheses::new(&b));
        let declared = matcher.similarity(&ha.declared, &hb.declared);
        let best = ha.similarity(&hb, &mut matcher);
        assert!(best >= declared);
        assert!(best > 2.0 * declared && best > 0.2, "declared {declared}, with hypotheses {best}");
        // Unrelated prints stay low under every hypothesis.
        let other = Hypotheses::new(&print(8, 40));
        assert!(ha.similarity(&other, &mut matcher) < 0.05);
        assert_eq!(ha.stretched.len(), FACTORS.len());
    }
}
