//! One-finger 1:N identification over a large gallery: the shortlist
//! (`finger::shortlist`) followed by the full MCC matcher, end to end.
//!
//! Run: `cargo bench --bench finger_identify -- --gallery 250000 --threads 1,2
//! --data ../shared/data/fingerprints/fvc2002` (options below).
//!
//! # Protocol
//!
//! The 40 FVC2002 DB1–DB4 set B fingers (ISO/IEC 19794-2 templates, the
//! matcher-alone setting) are split into halves A and B by alternating fingers
//! within each database. With half A enrolled, the gallery holds the original
//! impression-1 template of each A finger (the mates) plus distractors: copies
//! of all 8 impressions of every B finger, each copy with a random rotation
//! (±30° about the image centre), translation (±40 px), minutia dropout (10–30%)
//! and per-minutia jitter (±2 px, ±5°), until the gallery holds `--gallery`
//! templates. Probes are impressions 2–8 of the A fingers (140). Then B is
//! enrolled with A as distractors, and both runs pool into 280 probes
//! (`--runs 1` keeps the first run only, to save time at 1,000,000).
//!
//! By default the gallery is one index, as in the service (`FingerGallery`):
//! with T threads a query splits the index's slots into T ranges for the
//! candidate stage (`ShortlistIndex::search_descriptor`), then the
//! `--shortlist` shortlisted templates into T parts for the re-rank by
//! `mcc::Matcher`. With `--shards S` the gallery is instead split into S
//! indexes by key, each giving `--shortlist / S` keys, searched and re-ranked
//! on its own thread (T ≥ S) or one after another (T = 1). Either way a
//! query's latency is the wall time of one identification on T cores.
//!
//! Reported: the shortlist's mate recall (mate key among the shortlisted keys)
//! at the chosen and smaller sizes, the rank-1 accuracy after the re-rank, how
//! many shortlisted mates the full matcher ranks below a distractor,
//! per-query latency (median, p99) and throughput (gallery templates per second
//! per core) for each thread count, and the index memory per template. In the
//! same process, the exhaustive MCC scan over the first `--exhaustive` gallery
//! templates of each run gives the baseline rate (templates/s/core, one
//! thread) and the rank-1 ceiling that no shortlist can beat.
//!
//! `--templates DIR` reads the templates from `DIR` (same relative paths as
//! the images, `.iso`) instead of beside the images: e.g. our own extractor's,
//! written by `cotejo eval fingers --source images --export-iso DIR`.
//!
//! `--min-minutiae N` leaves out the prints with fewer than `N` minutiae, as
//! the service refuses them (`finger.min_minutiae`, default 12): they are
//! neither enrolled, copied nor searched, and a finger whose first impression
//! is left out is enrolled from its first kept one.
//!
//! `--insert-baseline 1` also times inserting the gallery's shortlist keys
//! one template at a time (the baseline of the batched insertion the index is
//! built with, as the service's start-up builds it).
//!
//! `--blocks B1,B2,...` times the candidate stage of the first
//! `--one-pass-probes` probes with each vote-counting block size (slots per
//! block; the service's is 16,384), one thread, interleaved.
//!
//! `--probe-cap K` hashes at most `K` cylinders of each probe for the
//! candidate stage, those nearest its minutiae's centroid (default: the
//! service's `shortlist::PROBE_CYLINDERS`, 48; a large `K` hashes them all).
//! With `--one-pass-probes N` the first `N` probes' candidate stage is also
//! timed with every cylinder and with the cap, interleaved.
//!
//! `--sketch T,K` (an experiment, not the service's method) also scans every
//! gallery template with pooled 96-bit cylinder sketches (a 4x4-cell block's
//! bit set when at least T of its cells are, per direction layer; a template
//! scores the mean of its K best per-probe-cylinder maxima) and reports that
//! scan's mate recall, alone and sharing the shortlist with the votes.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cotejo::finger::{aspect::Stretched, iso19794_2, mcc, shortlist};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Res<T> = Result<T, Box<dyn Error>>;

#[derive(Debug)]
struct Options {
    data: PathBuf,
    /// Where the `.iso` templates are (default: beside the images in `data`).
    templates: Option<PathBuf>,
    gallery: usize,
    threads: Vec<usize>,
    shortlist: usize,
    exhaustive: usize,
    runs: usize,
    seed: u64,
    shards: usize,
    one_pass_probes: usize,
    sketch: Option<(u32, usize)>,
    rescore: usize,
    min_minutiae: usize,
    insert_baseline: bool,
    blocks: Vec<usize>,
}

impl Options {
    fn parse() -> Res<Self> {
        let mut o = Self {
            data: PathBuf::from("../shared/data/fingerprints/fvc2002"),
            templates: None,
            gallery: 250_000,
            threads: vec![1, 2],
            shortlist: 2_000,
            exhaustive: 1_000,
            runs: 2,
            seed: 20_250_101,
            shards: 1,
            one_pass_probes: 40,
            sketch: None,
            rescore: 42,
            min_minutiae: 0,
            insert_baseline: false,
            blocks: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--bench" {
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--data" => o.data = PathBuf::from(value),
                "--templates" => o.templates = Some(PathBuf::from(value)),
                "--gallery" => o.gallery = value.parse()?,
                "--threads" => o.threads = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--shortlist" => o.shortlist = value.parse()?,
                "--exhaustive" => o.exhaustive = value.parse()?,
                "--seed" => o.seed = value.parse()?,
                "--runs" => o.runs = value.parse::<usize>()?.clamp(1, 2),
                "--shards" => o.shards = value.parse::<usize>()?.max(1),
                "--one-pass-probes" => o.one_pass_probes = value.parse()?,
                "--sketch" => {
                    let (t, k) = value.split_once(',').ok_or("--sketch wants THRESHOLD,TOP")?;
                    o.sketch = Some((t.parse()?, k.parse()?));
                }
                "--rescore" => o.rescore = value.parse()?,
                "--min-minutiae" => o.min_minutiae = value.parse()?,
                "--insert-baseline" => o.insert_baseline = value.parse::<u8>()? != 0,
                "--probe-cap" => PROBE_CAP.store(value.parse()?, std::sync::atomic::Ordering::Relaxed),
                "--blocks" => o.blocks = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                _ => return Err(format!("unknown option {flag}").into()),
            }
        }
        o.threads.retain(|&t| t > 0);
        if o.threads.is_empty() {
            o.threads.push(1);
        }
        Ok(o)
    }
}

/// One FVC impression.
#[derive(Debug, Clone)]
struct Print {
    /// Finger label and impression, e.g. `fvc2002_DB3_B_105_4`.
    name: String,
    finger: usize,
    impression: u32,
    minutiae: Vec<mcc::Minutia>,
    centre: (f32, f32),
}

fn load(data: &Path, templates: &Path) -> Res<(Vec<Print>, usize)> {
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
struct Run {
    gallery: Vec<mcc::Template>,
    /// Probe template and the key of its mate.
    probes: Vec<(mcc::Template, u64)>,
    /// Each probe's stretched templates (the service's aspect hypotheses).
    probe_stretched: Vec<Stretched>,
    /// Each probe's print name.
    probe_names: Vec<String>,
    /// What the gallery was made of, to rebuild a key's minutiae (see [`Run::minutiae`]).
    mates: Vec<Print>,
    distractors: Vec<Print>,
    copy_seed: u64,
}

impl Run {
    /// The minutiae of gallery key `key`: a mate, or distractor copy `key - mates`.
    fn minutiae(&self, key: usize) -> Vec<mcc::Minutia> {
        match key.checked_sub(self.mates.len()) {
            None => self.mates[key].minutiae.clone(),
            Some(i) => {
                let mut rng = StdRng::seed_from_u64(self.copy_seed ^ i as u64);
                perturb(&self.distractors[i % self.distractors.len()], &mut rng)
            }
        }
    }
}

fn build_run(prints: &[Print], fingers: usize, enrolled_half: usize, n: usize, seed: u64, threads: usize) -> Run {
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
struct Shards {
    indexes: Vec<shortlist::ShortlistIndex>,
}

/// Seconds one shard's index took to build: hashing, then inserting in
/// batches, and (with `--insert-baseline 1`) inserting the same descriptors
/// one by one into a second index, the baseline.
#[derive(Debug, Clone, Copy, Default)]
struct IndexTimes {
    hashing: f64,
    batched: f64,
    one_by_one: Option<f64>,
}

/// Templates per insertion batch, as the service's start-up adds them.
const INSERT_BATCH: usize = 8_192;

impl Shards {
    fn build(gallery: &[mcc::Template], shards: usize, baseline: bool) -> (Self, Vec<IndexTimes>) {
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

/// Outcome of one identification.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    /// Rank of the mate within its shard's shortlist, if shortlisted.
    shard_rank: Option<usize>,
    /// Whether the best MCC score of the shortlist is the mate's.
    rank1: bool,
    /// Whether the mate is still best after the aspect rescoring of the top candidates.
    rank1_rescored: bool,
    candidate_time: Duration,
    /// Time of the aspect rescoring (part of `total_time`).
    rescore_time: Duration,
    total_time: Duration,
}

/// Shortlist then re-rank on one shard; returns (best score, best key, mate rank, candidate time).
fn search_shard(
    index: &shortlist::ShortlistIndex,
    gallery: &[mcc::Template],
    probe: &mcc::Template,
    n: usize,
    mate: u64,
    matcher: &mut mcc::Matcher,
) -> (f32, u64, Option<usize>, Duration) {
    let start = Instant::now();
    let keys = index.search(probe, n);
    let candidate_time = start.elapsed();
    let mut best = (f32::NEG_INFINITY, u64::MAX);
    for &key in &keys {
        if let Some(t) = gallery.get(key as usize) {
            let s = matcher.similarity(probe, t);
            if s > best.0 {
                best = (s, key);
            }
        }
    }
    (best.0, best.1, keys.iter().position(|&k| k == mate), candidate_time)
}

/// Runs `work` over `items` split into `threads` contiguous parts, results in order.
fn on_threads<I: Sync, T: Send>(items: &[I], threads: usize, work: impl Fn(&[I]) -> Vec<T> + Sync) -> Vec<T> {
    if threads <= 1 || items.len() < 2 {
        return work(items);
    }
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = items.chunks(chunk).map(|c| scope.spawn(move || work(c))).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

/// The best of `(score, key)` pairs.
fn best_of(scored: &[(f32, u64)]) -> (f32, u64) {
    scored.iter().fold((f32::NEG_INFINITY, u64::MAX), |b, r| if r.0 > b.0 { *r } else { b })
}

/// Most cylinders of a probe the candidate stage hashes (`--probe-cap`; default the service's).
static PROBE_CAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(shortlist::PROBE_CYLINDERS);

/// A probe's shortlist keys, capped by [`PROBE_CAP`].
fn probe_descriptor(probe: &mcc::Template) -> shortlist::Descriptor {
    shortlist::Descriptor::new_capped(probe, PROBE_CAP.load(std::sync::atomic::Ordering::Relaxed))
}

/// One index searched and re-ranked on `threads` threads (the service's
/// layout), then the best `rescore` candidates rescored with the aspect
/// hypotheses, their stretched templates built from their minutiae as the
/// service builds them from the stored records (the store's reads are not in
/// this bench).
#[allow(clippy::too_many_arguments)]
fn identify_one_index(
    index: &shortlist::ShortlistIndex,
    run: &Run,
    probe: &mcc::Template,
    stretched: &Stretched,
    mate: u64,
    n: usize,
    threads: usize,
    rescore: usize,
) -> Outcome {
    let start = Instant::now();
    let keys = index.search_descriptor(&probe_descriptor(probe), n, threads);
    let candidate_time = start.elapsed();
    let mut scored = on_threads(&keys, threads, |part| {
        let mut matcher = mcc::Matcher::new();
        part.iter()
            .map(|&key| {
                (run.gallery.get(key as usize).map_or(f32::NEG_INFINITY, |t| matcher.similarity(probe, t)), key)
            })
            .collect()
    });
    let best = best_of(&scored);
    let rescore_start = Instant::now();
    let mut rescored_best = best;
    if rescore > 0 && !scored.is_empty() {
        let top = rescore.min(scored.len());
        scored.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
        let rescored = on_threads(&scored[..top], threads, |part| {
            let mut matcher = mcc::Matcher::new();
            part.iter()
                .map(|&(declared, key)| {
                    let theirs = Stretched::new(&run.minutiae(key as usize));
                    (declared.max(stretched.best(&theirs, &mut matcher)), key)
                })
                .collect()
        });
        rescored_best = best_of(&rescored);
    }
    let rescore_time = rescore_start.elapsed();
    Outcome {
        shard_rank: keys.iter().position(|&k| k == mate),
        rank1: best.1 == mate,
        rank1_rescored: rescored_best.1 == mate,
        candidate_time,
        rescore_time,
        total_time: start.elapsed(),
    }
}

/// One identification of probe `p` of the run; the aspect rescoring only with one index.
fn identify(shards: &Shards, run: &Run, p: usize, n: usize, threads: usize, rescore: usize) -> Outcome {
    let (probe, mate) = (&run.probes[p].0, run.probes[p].1);
    if let [index] = shards.indexes.as_slice() {
        return identify_one_index(index, run, probe, &run.probe_stretched[p], mate, n, threads, rescore);
    }
    let start = Instant::now();
    let per_shard = n.div_ceil(shards.indexes.len());
    let results: Vec<(f32, u64, Option<usize>, Duration)> = if threads == 1 {
        let mut matcher = mcc::Matcher::new();
        shards.indexes.iter().map(|i| search_shard(i, &run.gallery, probe, per_shard, mate, &mut matcher)).collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = shards
                .indexes
                .iter()
                .map(|i| {
                    scope.spawn(move || search_shard(i, &run.gallery, probe, per_shard, mate, &mut mcc::Matcher::new()))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        })
    };
    let total_time = start.elapsed();
    let best = results.iter().fold((f32::NEG_INFINITY, u64::MAX), |b, r| if r.0 > b.0 { (r.0, r.1) } else { b });
    Outcome {
        shard_rank: results.iter().find_map(|r| r.2),
        rank1: best.1 == mate,
        rank1_rescored: best.1 == mate,
        candidate_time: results.iter().map(|r| r.3).max().unwrap_or_default(),
        rescore_time: Duration::ZERO,
        total_time,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() -> Res<()> {
    let o = Options::parse()?;
    let templates = o.templates.clone().unwrap_or_else(|| o.data.clone());
    let (mut prints, fingers) = load(&o.data, &templates)?;
    // Prints the service refuses (`finger.min_minutiae`) are neither enrolled nor searched.
    let refused: Vec<String> = prints
        .iter()
        .filter(|p| p.minutiae.len() < o.min_minutiae)
        .map(|p| format!("{} ({})", p.name, p.minutiae.len()))
        .collect();
    prints.retain(|p| p.minutiae.len() >= o.min_minutiae);
    if o.min_minutiae > 0 {
        println!(
            "# {} prints with fewer than {} minutiae left out: {}",
            refused.len(),
            o.min_minutiae,
            refused.join(", ")
        );
    }
    let shards = o.shards;
    let build_threads = std::thread::available_parallelism().map_or(1, usize::from).max(shards);
    println!(
        "# {} prints, {fingers} fingers, templates from {}; gallery {}, shortlist {}, threads {:?}, shards {shards}",
        prints.len(),
        templates.display(),
        o.gallery,
        o.shortlist,
        o.threads
    );
    let mut exhaustive_ranks: Vec<usize> = Vec::new();
    // With `--sketch`: each probe's mate rank under the sketch score, all runs.
    let mut sketch_ranks: Vec<usize> = Vec::new();
    let (mut one_pass, mut blocked): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); o.threads.len()];
    let (mut exhaustive_time, mut exhaustive_comparisons, mut ceiling_hits, mut probes_total) =
        (Duration::ZERO, 0_usize, 0_usize, 0_usize);
    let mut scalar_time = Duration::ZERO;
    let mut missed: Vec<String> = Vec::new();
    let (mut index_bytes, mut index_templates, mut template_bytes, mut build_time) = (0_usize, 0_usize, 0_usize, 0.0);
    for enrolled in 0..o.runs {
        let start = Instant::now();
        let run = build_run(&prints, fingers, enrolled, o.gallery, o.seed, build_threads);
        let templates_time = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let (sharded, times) = Shards::build(&run.gallery, shards, o.insert_baseline);
        let index_time = start.elapsed().as_secs_f64();
        for (s, t) in times.iter().enumerate() {
            let baseline = t.one_by_one.map_or(String::new(), |o| {
                format!("; the same descriptors one by one {o:.2} s ({:.2}x)", o / t.batched.max(1e-9))
            });
            println!(
                "# run {enrolled}, shard {s}: hashing {:.2} s, inserting in batches {:.2} s{baseline}",
                t.hashing, t.batched
            );
        }
        build_time += index_time;
        index_bytes += sharded.indexes.iter().map(shortlist::ShortlistIndex::memory_bytes).sum::<usize>();
        index_templates += sharded.indexes.iter().map(shortlist::ShortlistIndex::len).sum::<usize>();
        template_bytes += run.gallery.iter().map(|t| t.len() * (192 + 32 + 12) + 72).sum::<usize>();
        println!(
            "# run {enrolled}: {} gallery templates built in {templates_time:.1} s, indexed in {index_time:.1} s, {} probes",
            run.gallery.len(),
            run.probes.len()
        );
        // Baseline: exhaustive MCC over a prefix of the same gallery (mates first), one thread.
        let subset = &run.gallery[..o.exhaustive.min(run.gallery.len())];
        let mut matcher = mcc::Matcher::new();
        let mut scalar = mcc::Matcher::with_kernel(mcc::Kernel::Popcnt);
        let mut scores = Vec::new();
        for (probe, mate) in &run.probes {
            // The scalar-popcnt kernel on the same probe and templates (the kernel before AVX-512).
            let start = Instant::now();
            let mut check = 0.0_f32;
            for t in subset {
                check += scalar.similarity(probe, t);
            }
            scalar_time += start.elapsed();
            let start = Instant::now();
            let mut best = (f32::NEG_INFINITY, u64::MAX);
            scores.clear();
            for (key, t) in subset.iter().enumerate() {
                let s = matcher.similarity(probe, t);
                scores.push(s);
                if s > best.0 {
                    best = (s, key as u64);
                }
            }
            exhaustive_time += start.elapsed();
            exhaustive_comparisons += subset.len();
            // Same sums to the bit (started from 0.0 as `check` is: an empty `sum` is -0.0).
            let sum = scores.iter().fold(0.0_f32, |a, &s| a + s);
            assert_eq!(check.to_bits(), sum.to_bits(), "the kernels score differently");
            ceiling_hits += usize::from(best.1 == *mate);
            let mate_score = scores.get(*mate as usize).copied().unwrap_or(0.0);
            exhaustive_ranks.push(scores.iter().filter(|&&s| s > mate_score).count());
        }
        probes_total += run.probes.len();
        if let Some((threshold, top)) = o.sketch {
            let start = Instant::now();
            let sketches: Vec<Sketch> = run.gallery.iter().map(|t| sketch_of(t, threshold)).collect();
            println!(
                "# sketches built in {:.1} s, mean bits {:.1}",
                start.elapsed().as_secs_f64(),
                sketches.iter().flat_map(|s| s.bits.iter().map(|b| b.count_ones() as f64)).sum::<f64>()
                    / sketches.iter().map(|s| s.bits.len() as f64).sum::<f64>()
            );
            let mut best = Vec::new();
            let ranks = &mut sketch_ranks;
            let first_probe = ranks.len();
            let start = Instant::now();
            for (probe, mate) in &run.probes {
                let ps = sketch_of(probe, threshold);
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
                        ranks[first_probe..].iter().filter(|&&r| r < lim).count() as f64
                            / (ranks.len() - first_probe) as f64
                    )
                })
                .collect();
            println!(
                "# sketch T={threshold} top={top}: {:.0} templates/s; recall {}",
                n * run.probes.len() as f64 / el,
                line.join(", ")
            );
        }
        // Baseline of the candidate stage: the same index counted in one pass
        // over a vote array for all slots (the method before blocking), one thread,
        // interleaved with the blocked search on the same probes.
        if let [index] = sharded.indexes.as_slice() {
            for (probe, _) in run.probes.iter().take(o.one_pass_probes) {
                let d = shortlist::Descriptor::new(probe);
                let start = Instant::now();
                let a = index.search_one_pass(&d, o.shortlist);
                one_pass.push(start.elapsed());
                let start = Instant::now();
                let b = index.search_descriptor(&d, o.shortlist, 1);
                blocked.push(start.elapsed());
                assert_eq!(a, b, "the blocked search disagrees with the one-pass search");
            }
        }
        if let ([index], false) = (sharded.indexes.as_slice(), o.blocks.is_empty()) {
            // Candidate stage with each block size, one thread, the same probes, interleaved.
            let mut times: Vec<Vec<Duration>> = vec![Vec::new(); o.blocks.len()];
            for (probe, _) in run.probes.iter().take(o.one_pass_probes.max(1)) {
                let d = shortlist::Descriptor::new(probe);
                let mut first: Option<Vec<u64>> = None;
                for (b, &block) in o.blocks.iter().enumerate() {
                    let start = Instant::now();
                    let keys = index.search_with_block(&d, o.shortlist, 1, block);
                    times[b].push(start.elapsed());
                    assert_eq!(first.get_or_insert_with(|| keys.clone()), &keys, "block size changed the result");
                }
            }
            for (block, t) in o.blocks.iter().zip(&mut times) {
                t.sort();
                println!(
                    "candidate stage, 1 thread, blocks of {block} slots: median {:.1} ms over {} probes",
                    percentile(t, 0.5),
                    t.len()
                );
            }
        }
        let cap = PROBE_CAP.load(std::sync::atomic::Ordering::Relaxed);
        if let ([index], true) = (sharded.indexes.as_slice(), o.one_pass_probes > 0) {
            // The candidate stage with every probe cylinder and with the cap, on the largest
            // thread count, the same probes, interleaved (hashing included).
            let threads = o.threads.iter().copied().max().unwrap_or(1);
            let (mut full, mut capped) = (Vec::new(), Vec::new());
            for (probe, _) in run.probes.iter().take(o.one_pass_probes) {
                let start = Instant::now();
                let _ = index.search_descriptor(&shortlist::Descriptor::new(probe), o.shortlist, threads);
                full.push(start.elapsed());
                let start = Instant::now();
                let _ = index.search_descriptor(&probe_descriptor(probe), o.shortlist, threads);
                capped.push(start.elapsed());
            }
            full.sort();
            capped.sort();
            println!(
                "candidate stage, {threads} threads, {} probes: every cylinder median {:.1} ms, p99 {:.1} ms; at most {cap} cylinders median {:.1} ms, p99 {:.1} ms",
                full.len(),
                percentile(&full, 0.5),
                percentile(&full, 0.99),
                percentile(&capped, 0.5),
                percentile(&capped, 0.99)
            );
        }
        for (slot, &threads) in o.threads.iter().enumerate() {
            for (p, ((probe, mate), name)) in run.probes.iter().zip(&run.probe_names).enumerate() {
                let outcome = identify(&sharded, &run, p, o.shortlist, threads, o.rescore);
                if slot == 0 && outcome.shard_rank.is_none() {
                    let mate_cylinders = run.gallery.get(*mate as usize).map_or(0, mcc::Template::len);
                    let exhaustive = exhaustive_ranks.get(probes_total - run.probes.len() + p).copied();
                    // Where the candidate stage ranks the mate among all voted templates.
                    if let [index] = sharded.indexes.as_slice() {
                        let all = index.search_descriptor(&probe_descriptor(probe), run.gallery.len(), 1);
                        let rank = all.iter().position(|k| k == mate);
                        println!("# missed {name}: the mate's vote rank {rank:?} of {} voted templates", all.len());
                    }
                    missed.push(format!(
                        "{name} ({} cylinders; mate {mate_cylinders}; exhaustive rank {exhaustive:?})",
                        probe.len()
                    ));
                }
                outcomes[slot].push(outcome);
            }
        }
    }
    let exhaustive_rate = exhaustive_comparisons as f64 / exhaustive_time.as_secs_f64().max(1e-9);
    let first = &outcomes[0];
    let recall_at = |size: usize| {
        let per_shard = size.div_ceil(shards);
        first.iter().filter(|x| x.shard_rank.is_some_and(|r| r < per_shard)).count() as f64 / first.len() as f64
    };
    let shortlisted = first.iter().filter(|x| x.shard_rank.is_some()).count();
    let rank1 = first.iter().filter(|x| x.rank1).count();
    let rank1_rescored = first.iter().filter(|x| x.rank1_rescored).count();
    println!(
        "exhaustive MCC baseline: {exhaustive_rate:.0} templates/s/core over {} templates ({:?} kernel)",
        o.exhaustive,
        mcc::Matcher::new().kernel()
    );
    let scalar_rate = exhaustive_comparisons as f64 / scalar_time.as_secs_f64().max(1e-9);
    println!(
        "exhaustive MCC, scalar popcnt kernel, same probes: {scalar_rate:.0} templates/s/core ({:.2}x)",
        exhaustive_rate / scalar_rate
    );
    println!(
        "exhaustive MCC rank-1 (ceiling, gallery {}): {:.4} ({ceiling_hits}/{probes_total})",
        o.exhaustive,
        ceiling_hits as f64 / probes_total as f64
    );
    for fraction in [0.001, 0.005, 0.01, 0.02, 0.05] {
        let limit = (fraction * o.exhaustive as f64).ceil() as usize;
        let hits = exhaustive_ranks.iter().filter(|&&r| r < limit).count();
        println!(
            "exhaustive MCC mate recall in the top {:.1}% ({limit} of {}): {:.4}",
            fraction * 100.0,
            o.exhaustive,
            hits as f64 / exhaustive_ranks.len() as f64
        );
    }
    let sizes: Vec<usize> =
        [o.shortlist / 8, o.shortlist / 4, o.shortlist / 2, o.shortlist].into_iter().filter(|&s| s > 0).collect();
    for &s in &sizes {
        println!("shortlist mate recall @{s}: {:.4}", recall_at(s));
    }
    if sketch_ranks.len() == first.len() {
        // Half the shortlist from the votes, half from the sketch scan.
        for &s in &sizes {
            let sketch = sketch_ranks.iter().filter(|&&r| r < s).count() as f64 / first.len() as f64;
            let union = first
                .iter()
                .zip(&sketch_ranks)
                .filter(|(x, r)| x.shard_rank.is_some_and(|k| k < s / 2) || **r < s / 2)
                .count() as f64
                / first.len() as f64;
            println!(
                "sketch mate recall @{s}: {sketch:.4}; votes' best {h} + sketch's best {h}: {union:.4}",
                h = s / 2
            );
        }
    }
    println!(
        "probes whose mate the shortlist missed: {}",
        if missed.is_empty() { "none".to_owned() } else { missed.join(", ") }
    );
    println!(
        "rank-1 after re-rank: {:.4} ({rank1}/{}); shortlisted mates the matcher ranks below a distractor: {}",
        rank1 as f64 / first.len() as f64,
        first.len(),
        shortlisted - rank1
    );
    println!(
        "rank-1 after the aspect rescoring of the best {} candidates: {:.4} ({rank1_rescored}/{})",
        o.rescore,
        rank1_rescored as f64 / first.len() as f64,
        first.len()
    );
    println!(
        "index memory: {:.0} bytes/template ({:.2} GB total); full MCC templates: {:.0} bytes/template; index build {:.1} s",
        index_bytes as f64 / index_templates as f64,
        index_bytes as f64 / 1e9 / o.runs as f64,
        template_bytes as f64 / index_templates as f64,
        build_time / o.runs as f64
    );
    if !one_pass.is_empty() {
        one_pass.sort_unstable();
        blocked.sort_unstable();
        let (a, b) = (percentile(&one_pass, 0.5), percentile(&blocked, 0.5));
        println!(
            "candidate stage, 1 thread, {} probes: one pass over all slots {a:.1} ms median, blocked {b:.1} ms ({:.2}x)",
            one_pass.len(),
            a / b.max(1e-9)
        );
    }
    println!(
        "threads  median_ms  p99_ms  candidate_median_ms  rescore_median_ms  without_rescore_median/p99_ms  templates/s/core  speed-up vs exhaustive"
    );
    for (slot, &threads) in o.threads.iter().enumerate() {
        let mut totals: Vec<Duration> = outcomes[slot].iter().map(|x| x.total_time).collect();
        let mut candidates: Vec<Duration> = outcomes[slot].iter().map(|x| x.candidate_time).collect();
        let mut rescores: Vec<Duration> = outcomes[slot].iter().map(|x| x.rescore_time).collect();
        let mut without: Vec<Duration> = outcomes[slot].iter().map(|x| x.total_time - x.rescore_time).collect();
        without.sort_unstable();
        totals.sort_unstable();
        candidates.sort_unstable();
        rescores.sort_unstable();
        let mean = totals.iter().map(Duration::as_secs_f64).sum::<f64>() / totals.len() as f64;
        let per_core = o.gallery as f64 / mean / threads as f64;
        println!(
            "{threads:>7}  {:>9.1}  {:>6.1}  {:>19.1}  {:>17.1}  {:>22.1} / {:>6.1}  {per_core:>16.0}  {:>6.1}x",
            percentile(&totals, 0.5),
            percentile(&totals, 0.99),
            percentile(&candidates, 0.5),
            percentile(&rescores, 0.5),
            percentile(&without, 0.5),
            percentile(&without, 0.99),
            per_core / exhaustive_rate
        );
    }
    Ok(())
}

/// Experiment: a pooled 96-bit sketch per cylinder (4x4 blocks of cells x 6 layers).
#[derive(Debug, Clone, Default)]
struct Sketch {
    bits: Vec<u128>,
    angles: Vec<u8>,
    norms: Vec<f32>,
}

fn sketch_of(t: &mcc::Template, threshold: u32) -> Sketch {
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

fn sketch_score(p: &Sketch, g: &Sketch, top: usize, best: &mut Vec<f32>) -> f32 {
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
