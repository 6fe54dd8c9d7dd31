// Tests index their own fixtures: a panic is a failed test.
#![allow(clippy::indexing_slicing)]

use super::*;
use crate::finger::mcc::{Template, random_minutiae};

/// The minutiae rotated by `phi` about (150, 200), shifted, with every 5th dropped.
fn rotated_copy(ms: &[mcc::Minutia], phi: f32, (tx, ty): (f32, f32)) -> Vec<mcc::Minutia> {
    let (s, c) = phi.sin_cos();
    ms.iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % 5 != 0)
        .map(|(_, m)| {
            let (x, y) = (m.x - 150.0, -(m.y - 200.0));
            let (rx, ry) = (x * c - y * s, x * s + y * c);
            mcc::Minutia { x: rx + 150.0 + tx, y: -ry + 200.0 + ty, angle: (m.angle + phi).rem_euclid(TAU) }
        })
        .collect()
}

#[test]
fn pooling_sets_a_block_when_two_of_its_four_cells_are_set() {
    let template = Template::new(&random_minutiae(7, 40));
    let mut checked = 0;
    for (_, _, _, bits, _) in template.cylinders() {
        let pooled = pool(bits);
        for (k, layer) in pooled.iter().enumerate() {
            for bi in 0..NS / 2 {
                for bj in 0..NS / 2 {
                    let mut n = 0;
                    for i in 2 * bi..2 * bi + 2 {
                        for j in 2 * bj..2 * bj + 2 {
                            let b = k * NS * NS + i * NS + j;
                            n += (bits[b / 64] >> (b % 64)) & 1;
                        }
                    }
                    assert_eq!((layer >> (bi * 8 + bj)) & 1, u64::from(n >= 2), "layer {k} block {bi},{bj}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 1_000, "{checked}");
}

#[test]
fn a_rotated_copy_outscores_unrelated_prints() {
    let ms = random_minutiae(11, 35);
    let probe = ProbeSketch::new(&Template::new(&rotated_copy(&ms, 0.6, (20.0, -15.0))));
    let mut scanner = Scanner::new();
    let mate = scanner.score(&probe, &Sketch::new(&Template::new(&ms)));
    let best_other = (100..200)
        .map(|seed| scanner.score(&probe, &Sketch::new(&Template::new(&random_minutiae(seed, 35)))))
        .fold(0.0_f32, f32::max);
    assert!(mate > best_other + 0.05, "mate {mate}, best unrelated {best_other}");
    assert!((0.0..=1.0).contains(&mate), "{mate}");
}

#[test]
fn every_kernel_gives_the_same_scores_to_the_bit() {
    let kernels: Vec<Kernel> =
        [Kernel::Portable, Kernel::Popcnt, Kernel::Avx512].into_iter().filter(|k| k.is_supported()).collect();
    let probe = ProbeSketch::new(&Template::new(&rotated_copy(&random_minutiae(3, 45), -0.3, (5.0, 9.0))));
    for seed in 0..60 {
        // 1 to 60 minutiae: groups full and partly padded.
        let enrolled = Sketch::new(&Template::new(&random_minutiae(seed, 1 + seed as usize)));
        let scores: Vec<u32> =
            kernels.iter().map(|&k| Scanner::with_kernel(k).score(&probe, &enrolled).to_bits()).collect();
        assert!(scores.windows(2).all(|w| w[0] == w[1]), "seed {seed}: {scores:?} for {kernels:?}");
    }
}

#[test]
fn empty_templates_score_zero() {
    let empty = Template::new(&[]);
    let some = Template::new(&random_minutiae(5, 30));
    let mut scanner = Scanner::new();
    assert!(Sketch::new(&empty).is_empty());
    assert_eq!(scanner.score(&ProbeSketch::new(&empty), &Sketch::new(&some)), 0.0);
    assert_eq!(scanner.score(&ProbeSketch::new(&some), &Sketch::new(&empty)), 0.0);
    assert_eq!(Sketch::new(&some).len(), some.cylinders().count());
}

#[test]
fn the_shortlist_holds_the_mate_whatever_the_threads() {
    let ms = random_minutiae(21, 35);
    let mut gallery: Vec<Sketch> =
        (300..700).map(|seed| Sketch::new(&Template::new(&random_minutiae(seed, 35)))).collect();
    gallery.insert(123, Sketch::new(&Template::new(&ms)));
    let probe = Template::new(&rotated_copy(&ms, -0.4, (-10.0, 25.0)));
    let one = shortlist(&probe, &gallery, |s| s, 10, 1);
    assert_eq!(one.len(), 10);
    assert_eq!(one[0], 123, "{one:?}");
    assert_eq!(shortlist(&probe, &gallery, |s| s, 10, 3), one);
    assert_eq!(shortlist(&probe, &gallery, |s| s, 1_000, 2).len(), gallery.len());
    assert!(shortlist(&probe, &gallery, |s| s, 0, 2).is_empty());
}

#[test]
fn a_kernel_the_cpu_lacks_is_never_run() {
    for kernel in [Kernel::Portable, Kernel::Popcnt, Kernel::Avx512] {
        let chosen = Scanner::with_kernel(kernel).kernel;
        assert!(chosen.is_supported(), "{kernel:?} -> {chosen:?}");
        if kernel.is_supported() {
            assert_eq!(chosen, kernel);
        }
    }
}
