//! Experiment (`--sketch T,K[,B]`, not the service's method): pooled
//! cylinder sketches (B x B-cell blocks, 4 by default: 96 bits; 2: 384 bits)
//! scanned over the whole gallery, plainly (the service's scan,
//! `finger::sketch`, is the 2 x 2 / T = 2 / K = 16 case, word-sliced).

use cotejo::finger::mcc;

/// Experiment: a pooled sketch per cylinder (B x B blocks of cells x 6 layers).
#[derive(Debug, Clone, Default)]
pub(crate) struct Sketch {
    pub(crate) bits: Vec<[u64; 6]>,
    pub(crate) angles: Vec<u8>,
    pub(crate) norms: Vec<f32>,
}

fn ones(b: &[u64; 6]) -> u32 {
    b.iter().map(|w| w.count_ones()).sum()
}

pub(crate) fn sketch_of(t: &mcc::Template, threshold: u32, block: usize) -> Sketch {
    let mut s = Sketch::default();
    let per_side = 16 / block;
    for (_, _, angle, bits, _) in t.cylinders() {
        let mut out = [0_u64; 6];
        let mut o = 0;
        for k in 0..6 {
            for bi in 0..per_side {
                for bj in 0..per_side {
                    let mut n = 0;
                    for i in bi * block..(bi + 1) * block {
                        for j in bj * block..(bj + 1) * block {
                            let b = k * 256 + i * 16 + j;
                            n += (bits[b / 64] >> (b % 64)) as u32 & 1;
                        }
                    }
                    if n >= threshold {
                        out[o / 64] |= 1 << (o % 64);
                    }
                    o += 1;
                }
            }
        }
        s.bits.push(out);
        s.angles.push(((angle / std::f32::consts::TAU * 256.0).round() as i64).rem_euclid(256) as u8);
        s.norms.push((ones(&out) as f32).sqrt());
    }
    s
}

pub(crate) fn sketch_score(p: &Sketch, g: &Sketch, top: usize, best: &mut Vec<f32>) -> f32 {
    best.clear();
    for ((pb, &pa), &pn) in p.bits.iter().zip(&p.angles).zip(&p.norms) {
        let mut m = 0.0_f32;
        for ((gb, &ga), &gn) in g.bits.iter().zip(&g.angles).zip(&g.norms) {
            let d = ga.wrapping_sub(pa);
            if d > 64 && d < 192 {
                continue;
            }
            let den = pn + gn;
            if den > 0.0 {
                let x: u32 = pb.iter().zip(gb).map(|(a, b)| (a ^ b).count_ones()).sum();
                let s = 1.0 - (x as f32).sqrt() / den;
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
