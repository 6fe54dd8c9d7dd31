//! Experiment (`--sketch T,K`, not the service's method): pooled 96-bit
//! cylinder sketches scanned over the whole gallery.

use cotejo::finger::mcc;

/// Experiment: a pooled 96-bit sketch per cylinder (4x4 blocks of cells x 6 layers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sketch {
    pub(crate) bits: Vec<u128>,
    pub(crate) angles: Vec<u8>,
    pub(crate) norms: Vec<f32>,
}

pub(crate) fn sketch_of(t: &mcc::Template, threshold: u32) -> Sketch {
    let mut s = Sketch::default();
    for (_, _, angle, bits, _) in t.cylinders() {
        let mut out = 0_u128;
        for k in 0..6 {
            for bi in 0..4 {
                for bj in 0..4 {
                    let mut n = 0;
                    for i in bi * 4..bi * 4 + 4 {
                        for j in bj * 4..bj * 4 + 4 {
                            let b = k * 256 + i * 16 + j;
                            n += (bits[b / 64] >> (b % 64)) as u32 & 1;
                        }
                    }
                    if n >= threshold {
                        out |= 1 << (k * 16 + bi * 4 + bj);
                    }
                }
            }
        }
        s.bits.push(out);
        s.angles.push(((angle / std::f32::consts::TAU * 256.0).round() as i64).rem_euclid(256) as u8);
        s.norms.push((out.count_ones() as f32).sqrt());
    }
    s
}

pub(crate) fn sketch_score(p: &Sketch, g: &Sketch, top: usize, best: &mut Vec<f32>) -> f32 {
    best.clear();
    for ((&pb, &pa), &pn) in p.bits.iter().zip(&p.angles).zip(&p.norms) {
        let mut m = 0.0_f32;
        for ((&gb, &ga), &gn) in g.bits.iter().zip(&g.angles).zip(&g.norms) {
            let d = ga.wrapping_sub(pa);
            if d > 64 && d < 192 {
                continue;
            }
            let den = pn + gn;
            if den > 0.0 {
                let s = 1.0 - ((pb ^ gb).count_ones() as f32).sqrt() / den;
                m = m.max(s);
            }
        }
        best.push(m);
    }
    let k = top.min(best.len()).min(g.bits.len());
    if k == 0 {
        return 0.0;
    }
    best.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    best[..k].iter().sum::<f32>() / k as f32
}
