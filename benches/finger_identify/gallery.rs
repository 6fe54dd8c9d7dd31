//! The bench's gallery: FVC2002 templates loaded from ISO/IEC 19794-2 files,
//! perturbed copies as distractors, and the shortlist index (one or several
//! shards) built over them. See the protocol in `finger_identify.rs`.

use std::path::Path;
use std::time::Instant;

use cotejo::finger::{aspect::Stretched, iso19794_2, mcc, shortlist};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Res;

/// One FVC impression.
#[derive(Debug, Clone)]
pub(crate) struct Print {
    /// Finger label and impression, e.g. `fvc2002_DB3_B_105_4`.
    pub(crate) name: String,
    pub(crate) finger: usize,
    pub(crate) impression: u32,
    pub(crate) minutiae: Vec<mcc::Minutia>,
    pub(crate) centre: (f32, f32),
}

pub(crate) fn load(data: &Path, templates: &Path) -> Res<(Vec<Print>, usize)> {
    let labels = std::fs::read_to_string(data.join("LABELS.txt"))?;
    let mut fingers: Vec<String> = Vec::new();
    let mut prints = Vec::new();
    for line in labels.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [path, label, impression, ..] = fields[..] else {
            return Err(format!("bad LABELS line {line:?}").into());
        };
        let iso = templates.join(Path::new(path).with_extension("iso"));
        let record = iso19794_2::parse(&std::fs::read(&iso)?).map_err(|e| format!("{}: {e}", iso.display()))?;
        let view = record.views.first().ok_or_else(|| format!("{}: no view", iso.display()))?;
        let finger = match fingers.iter().position(|f| f == label) {
            Some(f) => f,
            None => {
                fingers.push(label.to_owned());
                fingers.len() - 1
            }
        };
        prints.push(Print {
            name: format!("{label}_{impression}"),
            finger,
            impression: impression.parse()?,
            minutiae: view.minutiae.iter().map(mcc::Minutia::from).collect(),
            centre: (f32::from(record.width) / 2.0, f32::from(record.height) / 2.0),
        });
    }
    Ok((prints, fingers.len()))
}

/// A distractor copy: rotation about the image centre, translation, dropout, jitter.
fn perturb(print: &Print, rng: &mut StdRng) -> Vec<mcc::Minutia> {
    let phi = rng.random_range(-30.0_f32..=30.0).to_radians();
    let (tx, ty) = (rng.random_range(-40.0_f32..=40.0), rng.random_range(-40.0_f32..=40.0));
    let dropout = rng.random_range(0.10_f32..=0.30);
    let (s, c) = phi.sin_cos();
    let (cx, cy) = print.centre;
    let kept: Vec<mcc::Minutia> =
        print.minutiae.iter().copied().filter(|_| !rng.random_bool(f64::from(dropout))).collect();
    kept.iter()
        .map(|m| {
            // Rotate counter-clockwise as viewed: flip y to the right-handed frame and back.
            let (x, y) = (m.x - cx, -(m.y - cy));
            let (rx, ry) = (x * c - y * s, x * s + y * c);
            mcc::Minutia {
                x: rx + cx + tx + rng.random_range(-2.0_f32..=2.0),
                y: -ry + cy + ty + rng.random_range(-2.0_f32..=2.0),
                angle: (m.angle + phi + rng.random_range(-5.0_f32..=5.0).to_radians())
                    .rem_euclid(std::f32::consts::TAU),
            }
        })
        .collect()
}

/// One enrolled half: gallery templates (index = key), mate keys and probes.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) gallery: Vec<mcc::Template>,
    /// Probe template and the key of its mate.
    pub(crate) probes: Vec<(mcc::Template, u64)>,
    /// Each probe's stretched templates (the service's aspect hypotheses).
    pub(crate) probe_stretched: Vec<Stretched>,
    /// Each probe's print name.
    pub(crate) probe_names: Vec<String>,
    /// What the gallery was made of, to rebuild a key's minutiae (see [`Run::minutiae`]).
    pub(crate) mates: Vec<Print>,
    pub(crate) distractors: Vec<Print>,
    pub(crate) copy_seed: u64,
    /// Fewest minutiae of a distractor copy (the service's `finger.min_minutiae`, `--min-minutiae`).
    pub(crate) min_minutiae: usize,
}

impl Run {
    /// The print gallery key `key` was made from: a mate is its own, a
    /// distractor copy shares it with every other copy of the same print.
    pub(crate) fn source(&self, key: usize) -> usize {
        match key.checked_sub(self.mates.len()) {
            None => key,
            Some(i) => self.mates.len() + i % self.distractors.len().max(1),
        }
    }

    /// The minutiae of gallery key `key`: a mate, or distractor copy `key - mates`.
    pub(crate) fn minutiae(&self, key: usize) -> Vec<mcc::Minutia> {
        match key.checked_sub(self.mates.len()) {
            None => self.mates[key].minutiae.clone(),
            Some(i) => {
                // A copy the service would refuse (fewer than `--min-minutiae` left after the
                // dropout) is drawn again; the first draw is the one made before this rule.
                let print = &self.distractors[i % self.distractors.len()];
                let mut copy = Vec::new();
                for attempt in 0..16_u64 {
                    copy = perturb(print, &mut StdRng::seed_from_u64(self.copy_seed ^ i as u64 ^ (attempt << 48)));
                    if copy.len() >= self.min_minutiae {
                        break;
                    }
                }
                copy
            }
        }
    }
}

pub(crate) fn build_run(
    prints: &[Print],
    fingers: usize,
    enrolled_half: usize,
    n: usize,
    seed: u64,
    min_minutiae: usize,
    threads: usize,
) -> Run {
    let half = |finger: usize| (finger % 2 == enrolled_half) as usize;
    let _ = fingers;
    // A finger's first impression is its mate (its first kept one when `--min-minutiae` left some out).
    let first =
        |p: &Print| prints.iter().filter(|q| q.finger == p.finger).map(|q| q.impression).min() == Some(p.impression);
    let mates: Vec<Print> = prints.iter().filter(|p| half(p.finger) == 1 && first(p)).cloned().collect();
    let distractors: Vec<Print> = prints.iter().filter(|p| half(p.finger) == 0).cloned().collect();
    let (probes, (probe_stretched, probe_names)): (Vec<_>, (Vec<_>, Vec<_>)) = prints
        .iter()
        .filter(|p| half(p.finger) == 1 && !first(p))
        .filter_map(|p| {
            let mate = mates.iter().position(|m| m.finger == p.finger)?;
            Some(((mcc::Template::new(&p.minutiae), mate as u64), (Stretched::new(&p.minutiae), p.name.clone())))
        })
        .unzip();
    let mut run = Run {
        gallery: Vec::new(),
        probes,
        probe_stretched,
        probe_names,
        mates,
        distractors,
        copy_seed: seed ^ ((enrolled_half as u64) << 40),
        min_minutiae,
    };
    let total = n.max(run.mates.len());
    let chunk = total.div_ceil(threads.max(1)).max(1);
    let built: Vec<Vec<mcc::Template>> = std::thread::scope(|scope| {
        let run = &run;
        let handles: Vec<_> = (0..total)
            .step_by(chunk)
            .map(|start| {
                scope.spawn(move || {
                    (start..(start + chunk).min(total)).map(|key| mcc::Template::new(&run.minutiae(key))).collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    run.gallery = built.into_iter().flatten().collect();
    run
}

/// The gallery split into shards by key.
#[derive(Debug)]
pub(crate) struct Shards {
    pub(crate) indexes: Vec<shortlist::ShortlistIndex>,
}

/// Seconds one shard's index took to build: hashing, then inserting in
/// batches, and (with `--insert-baseline 1`) inserting the same descriptors
/// one by one into a second index, the baseline.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct IndexTimes {
    pub(crate) hashing: f64,
    pub(crate) batched: f64,
    pub(crate) one_by_one: Option<f64>,
}

/// Templates per insertion batch, as the service's start-up adds them.
const INSERT_BATCH: usize = 8_192;

impl Shards {
    pub(crate) fn build(gallery: &[mcc::Template], shards: usize, baseline: bool) -> (Self, Vec<IndexTimes>) {
        let built: Vec<(shortlist::ShortlistIndex, IndexTimes)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..shards)
                .map(|s| {
                    scope.spawn(move || {
                        let start = Instant::now();
                        let descriptors: Vec<(u64, shortlist::Descriptor)> = gallery
                            .iter()
                            .enumerate()
                            .skip(s)
                            .step_by(shards)
                            .map(|(key, t)| (key as u64, shortlist::Descriptor::new(t)))
                            .collect();
                        let mut times = IndexTimes { hashing: start.elapsed().as_secs_f64(), ..IndexTimes::default() };
                        if baseline {
                            let start = Instant::now();
                            let mut one = shortlist::ShortlistIndex::new();
                            for (key, d) in &descriptors {
                                if one.insert_descriptor(*key, d).is_err() {
                                    break;
                                }
                            }
                            times.one_by_one = Some(start.elapsed().as_secs_f64());
                            drop(one);
                        }
                        let start = Instant::now();
                        let mut index = shortlist::ShortlistIndex::new();
                        for chunk in descriptors.chunks(INSERT_BATCH) {
                            let items: Vec<(u64, &shortlist::Descriptor)> =
                                chunk.iter().map(|(k, d)| (*k, d)).collect();
                            if index.insert_batch(&items).is_err() {
                                break;
                            }
                        }
                        times.batched = start.elapsed().as_secs_f64();
                        (index, times)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
        });
        let (indexes, times) = built.into_iter().unzip();
        (Self { indexes }, times)
    }
}
