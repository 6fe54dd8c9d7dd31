//! Experiment (`--sketch T,K[,B]`, not the service's method): pooled
//! cylinder sketches (B x B-cell blocks, 4 by default: 96 bits; 2: 384 bits)
//! scanned over the whole gallery, plainly (the service's scan,
//! `finger::sketch`, is the 2 x 2 / T = 2 / K = 16 case, word-sliced).

use std::time::Instant;

use cotejo::finger::mcc;

use super::gallery::Run;

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

/// `--sketch T,K,B`: every probe of `run` scored against every gallery
/// template's sketches; pushes each mate's rank onto `ranks` and prints the
/// scan's rate and its mate recall at 0.5-8% of the gallery.
pub(crate) fn experiment(run: &Run, (threshold, top, block): (u32, usize, usize), ranks: &mut Vec<usize>) {
    let start = Instant::now();
    let sketches: Vec<Sketch> = run.gallery.iter().map(|t| sketch_of(t, threshold, block)).collect();
    println!(
        "# sketches built in {:.1} s, mean bits {:.1}",
        start.elapsed().as_secs_f64(),
        sketches
            .iter()
            .flat_map(|s| s.bits.iter().map(|b| b.iter().map(|w| w.count_ones()).sum::<u32>() as f64))
            .sum::<f64>()
            / sketches.iter().map(|s| s.bits.len() as f64).sum::<f64>()
    );
    let mut best = Vec::new();
    let first_probe = ranks.len();
    let start = Instant::now();
    for (probe, mate) in &run.probes {
        let ps = sketch_of(probe, threshold, block);
        let scores: Vec<f32> = sketches.iter().map(|g| sketch_score(&ps, g, top, &mut best)).collect();
        let ms = scores[*mate as usize];
        ranks.push(scores.iter().filter(|&&s| s > ms).count());
    }
    let el = start.elapsed().as_secs_f64();
    let n = run.gallery.len() as f64;
    let line: Vec<String> = [0.005, 0.01, 0.02, 0.04, 0.08]
        .iter()
        .map(|f| {
            let lim = (f * n).ceil() as usize;
            format!(
                "{:.1}%: {:.4}",
                f * 100.0,
                ranks[first_probe..].iter().filter(|&&r| r < lim).count() as f64 / (ranks.len() - first_probe) as f64
            )
        })
        .collect();
    println!(
        "# sketch T={threshold} top={top} block={block}: {:.0} templates/s; recall {}",
        n * run.probes.len() as f64 / el,
        line.join(", ")
    );
}
