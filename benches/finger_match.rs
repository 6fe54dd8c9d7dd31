//! Raw 1:1 fingerprint comparison rate of the MCC matcher on one core:
//! a template against a rotated, shifted, partly different impression of
//! itself (mated) and against an unrelated template (non-mated), with each
//! bit-counting kernel this CPU runs: AVX-512 VPOPCNTDQ (what `Matcher::new`
//! uses where the CPU has it) and, as the baselines in the same run, scalar
//! `popcnt` and the portable shifts and masks.
//!
//! Group `aspect_rescore`: what the service's re-rank adds per candidate
//! template for the aspect hypotheses (`finger::aspect`): building the stored
//! template's two stretched templates from its minutiae and comparing them
//! with the probe's, against the declared-frame comparison alone.

#[path = "support/prints.rs"]
mod prints;

use std::hint::black_box;

use cotejo::finger::{
    aspect::{Hypotheses, Stretched},
    mcc::{Kernel, Matcher, Minutia, Template},
};
use criterion::{Criterion, criterion_group, criterion_main};
use prints::print;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Another impression: rotated by 0.2 rad, shifted, 20% of minutiae lost.
fn impression(rng: &mut StdRng, m: &[Minutia]) -> Vec<Minutia> {
    let (s, c) = 0.2f32.sin_cos();
    let mut out = Vec::new();
    for p in m {
        if rng.random::<f32>() < 0.2 {
            continue;
        }
        let (x, y) = (p.x - 150.0, p.y - 200.0);
        out.push(Minutia {
            x: c * x - s * y + 160.0 + rng.random_range(-2.0..2.0),
            y: s * x + c * y + 190.0 + rng.random_range(-2.0..2.0),
            angle: (p.angle - 0.2).rem_euclid(std::f32::consts::TAU),
        });
    }
    out
}

fn compare(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let a = print(&mut rng, 35);
    let mated = Template::new(&impression(&mut rng, &a));
    let other = Template::new(&print(&mut rng, 35));
    let a = Template::new(&a);
    let mut g = c.benchmark_group("mcc_1to1");
    let want = Matcher::portable().similarity(&a, &mated).to_bits();
    for kernel in [Kernel::Avx512, Kernel::Popcnt, Kernel::Portable] {
        if !kernel.is_supported() {
            eprintln!("{kernel:?}: not supported by this CPU, skipped");
            continue;
        }
        let mut m = Matcher::with_kernel(kernel);
        assert_eq!(m.similarity(&a, &mated).to_bits(), want, "{kernel:?} scores differently");
        let name = format!("{kernel:?}").to_lowercase();
        g.bench_function(format!("mated_{name}"), |b| b.iter(|| black_box(m.similarity(&a, &mated))));
        g.bench_function(format!("non_mated_{name}"), |b| b.iter(|| black_box(m.similarity(&a, &other))));
    }
    g.finish();
}

fn aspect_rescore(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(3);
    let a = print(&mut rng, 35);
    let stored = impression(&mut rng, &a);
    let probe = Hypotheses::new(&a);
    let declared = Template::new(&stored);
    let mut m = Matcher::new();
    let mut g = c.benchmark_group("aspect_rescore");
    g.bench_function("declared_only", |b| b.iter(|| black_box(m.similarity(&probe.declared, &declared))));
    g.bench_function("declared_and_hypotheses", |b| {
        b.iter(|| {
            let s = m.similarity(&probe.declared, &declared);
            black_box(s.max(probe.stretched.best(&Stretched::new(black_box(&stored)), &mut m)))
        })
    });
    g.finish();
}

criterion_group!(benches, compare, aspect_rescore);
criterion_main!(benches);
