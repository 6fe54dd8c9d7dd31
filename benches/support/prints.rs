//! Synthetic minutiae shared by the finger benches.

use cotejo::finger::mcc::Minutia;
use rand::{Rng, rngs::StdRng};

/// `n` random minutiae over a 300x400 print, as in the FVC2002 templates (about 35).
pub(crate) fn print(rng: &mut StdRng, n: usize) -> Vec<Minutia> {
    (0..n)
        .map(|_| Minutia {
            x: rng.random_range(30.0..270.0),
            y: rng.random_range(30.0..370.0),
            angle: rng.random_range(0.0..std::f32::consts::TAU),
        })
        .collect()
}
