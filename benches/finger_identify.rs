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
//! By default the gallery is one index, as in the service (`FingerIndex`):
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
//! `--candidates N1,N2,...` measures the hash votes with each shortlist size
//! (default: `--shortlist`), every probe under each in turn.
//!
//! `--templates DIR` reads the templates from `DIR` (same relative paths as
//! the images, `.iso`) instead of beside the images: e.g. our own extractor's,
//! written by `cotejo eval fingers --source images --export-iso DIR`.
//!
//! `--min-minutiae N` leaves out the prints with fewer than `N` minutiae, as
//! the service refuses them (`finger.min_minutiae`, default 12): they are
//! neither enrolled, copied nor searched, and a finger whose first impression
//! is left out is enrolled from its first kept one. A distractor copy left
//! with fewer after its dropout is drawn again (up to 16 times), as the
//! service would refuse it too.
//!
//! `--insert-baseline 1` also times inserting the gallery's shortlist keys
//! one template at a time (the baseline of the batched insertion the index is
//! built with, as the service's start-up builds it).
//!
//! `--probe-cap K` hashes at most `K` cylinders of each probe for the
//! candidate stage, those nearest its minutiae's centroid (default: the
//! service's `shortlist::PROBE_CYLINDERS`, 48; a large `K` hashes them all).
//!
//! `--rerank CAP:KEEP,...` re-ranks the shortlist with each of these settings
//! (`finger::rerank`: probes with more than `CAP` cylinders are compared first
//! with their `CAP` most central ones, then the best `KEEP` again in full;
//! `0:0` is one pass; default the service's, 24:500), every probe and thread
//! count under each in turn; the recall and rank-1 lines then come per
//! setting, and the first setting is the reference of the others.

use std::error::Error;
use std::time::{Duration, Instant};

use cotejo::finger::{mcc, rerank::RerankSettings, shortlist};
type Res<T> = Result<T, Box<dyn Error>>;

#[path = "finger_identify/gallery.rs"]
mod gallery;
#[path = "finger_identify/identify.rs"]
mod identify;
#[path = "finger_identify/options.rs"]
mod options;

use gallery::{Shards, build_run, load};
use identify::{Config, Outcome, identify, probe_descriptor};
use options::Options;

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
    let mut baseline = Baseline::default();
    // Every thread count with every re-rank; the first is the reference of the recall figures.
    let shortlist_sizes = if o.candidates.is_empty() { vec![o.shortlist] } else { o.candidates.clone() };
    let configs: Vec<Config> = o
        .threads
        .iter()
        .flat_map(|&threads| shortlist_sizes.iter().map(move |&n| (threads, n)))
        .flat_map(|(threads, n)| o.rerank.iter().map(move |&rerank| Config { threads, n, rerank }))
        .collect();
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); configs.len()];
    let mut probes_total = 0_usize;
    let mut missed: Vec<String> = Vec::new();
    let (mut index_bytes, mut index_templates, mut template_bytes, mut build_time) = (0_usize, 0_usize, 0_usize, 0.0);
    for enrolled in 0..o.runs {
        let start = Instant::now();
        let run = build_run(&prints, fingers, enrolled, o.gallery, o.seed, o.min_minutiae, build_threads);
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
        baseline.measure(&run, o.exhaustive);
        probes_total += run.probes.len();
        // Each probe under every configuration in turn (interleaved, so that the
        // machine's drift falls on all of them alike).
        for (p, ((probe, mate), name)) in run.probes.iter().zip(&run.probe_names).enumerate() {
            for (slot, &config) in configs.iter().enumerate() {
                let outcome = identify(&sharded, &run, p, config, o.rescore);
                if slot == 0 && outcome.shard_rank.is_none() {
                    let mate_cylinders = run.gallery.get(*mate as usize).map_or(0, mcc::Template::len);
                    let exhaustive = baseline.ranks.get(probes_total - run.probes.len() + p).copied();
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
    println!(
        "index memory: {:.0} bytes/template ({:.2} GB total); full MCC templates: {:.0} bytes/template; index build {:.1} s",
        index_bytes as f64 / index_templates as f64,
        index_bytes as f64 / 1e9 / o.runs as f64,
        template_bytes as f64 / index_templates as f64,
        build_time / o.runs as f64
    );
    let exhaustive_rate = print_accuracy(&o, &outcomes[0], &baseline, probes_total, &missed);
    print_speed(&o, &configs, &outcomes, exhaustive_rate);
    Ok(())
}

/// The exhaustive MCC baseline over a prefix of each run's gallery (mates
/// first), one thread: time, the scalar kernel's time on the same pairs,
/// and each probe's mate rank.
#[derive(Default)]
struct Baseline {
    time: Duration,
    scalar_time: Duration,
    comparisons: usize,
    ceiling_hits: usize,
    ranks: Vec<usize>,
}

impl Baseline {
    fn measure(&mut self, run: &gallery::Run, exhaustive: usize) {
        let subset = &run.gallery[..exhaustive.min(run.gallery.len())];
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
            self.scalar_time += start.elapsed();
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
            self.time += start.elapsed();
            self.comparisons += subset.len();
            // Same sums to the bit (started from 0.0 as `check` is: an empty `sum` is -0.0).
            let sum = scores.iter().fold(0.0_f32, |a, &s| a + s);
            assert_eq!(check.to_bits(), sum.to_bits(), "the kernels score differently");
            self.ceiling_hits += usize::from(best.1 == *mate);
            let mate_score = scores.get(*mate as usize).copied().unwrap_or(0.0);
            self.ranks.push(scores.iter().filter(|&&s| s > mate_score).count());
        }
    }
}

/// The recall and rank-1 lines, against the exhaustive baseline; returns
/// the baseline's templates per second per core.
fn print_accuracy(o: &Options, first: &[Outcome], base: &Baseline, probes_total: usize, missed: &[String]) -> f64 {
    let exhaustive_rate = base.comparisons as f64 / base.time.as_secs_f64().max(1e-9);
    let recall_at = |size: usize| {
        let per_shard = size.div_ceil(o.shards);
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
    let scalar_rate = base.comparisons as f64 / base.scalar_time.as_secs_f64().max(1e-9);
    println!(
        "exhaustive MCC, scalar popcnt kernel, same probes: {scalar_rate:.0} templates/s/core ({:.2}x)",
        exhaustive_rate / scalar_rate
    );
    println!(
        "exhaustive MCC rank-1 (ceiling, gallery {}): {:.4} ({}/{probes_total})",
        o.exhaustive,
        base.ceiling_hits as f64 / probes_total as f64,
        base.ceiling_hits
    );
    for fraction in [0.001, 0.005, 0.01, 0.02, 0.05] {
        let limit = (fraction * o.exhaustive as f64).ceil() as usize;
        let hits = base.ranks.iter().filter(|&&r| r < limit).count();
        println!(
            "exhaustive MCC mate recall in the top {:.1}% ({limit} of {}): {:.4}",
            fraction * 100.0,
            o.exhaustive,
            hits as f64 / base.ranks.len() as f64
        );
    }
    let sizes: Vec<usize> =
        [o.shortlist / 8, o.shortlist / 4, o.shortlist / 2, o.shortlist].into_iter().filter(|&s| s > 0).collect();
    for &s in &sizes {
        println!("shortlist mate recall @{s}: {:.4}", recall_at(s));
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
    exhaustive_rate
}

/// Per configuration: how often the mate is shortlisted and ranked first.
fn print_votes(configs: &[Config], outcomes: &[Vec<Outcome>]) {
    for (config, outcomes) in configs.iter().zip(outcomes).filter(|(c, _)| c.threads == configs[0].threads) {
        let RerankSettings { probe_cap, keep } = config.rerank;
        let large = outcomes.iter().filter(|x| probe_cap > 0 && x.probe_cylinders > probe_cap).count();
        let share = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|x| f(x)).count() as f64 / outcomes.len() as f64;
        println!(
            "votes {}, re-rank cap {probe_cap}, keep {keep} ({large} probes over the cap): mate shortlisted {:.4}, fully scored {}/{}, rank-1 {:.4}, after the aspect rescoring {:.4}, among its 10 best {:.4} (each print's copies once: {:.4})",
            config.n,
            share(|x| x.shard_rank.is_some()),
            outcomes.iter().filter(|x| x.mate_scored).count(),
            outcomes.len(),
            share(|x| x.rank1),
            share(|x| x.rank1_rescored),
            share(|x| x.top10_rescored),
            share(|x| x.top10_distinct)
        );
    }
}

/// The latency table and where each configuration's tail comes from.
fn print_speed(o: &Options, configs: &[Config], outcomes: &[Vec<Outcome>], exhaustive_rate: f64) {
    print_votes(configs, outcomes);
    println!(
        "threads  candidates  re-rank (cap:keep)  median_ms  p99_ms  candidate_median_ms  rescore_median_ms  without_rescore_median/p99_ms  templates/s/core  speed-up vs exhaustive"
    );
    for (slot, config) in configs.iter().enumerate() {
        let threads = config.threads;
        let rerank = format!("{}:{}", config.rerank.probe_cap, config.rerank.keep);
        let stage = format!("votes:{}", config.n);
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
            "{threads:>7}  {stage:>10}  {rerank:>18}  {:>9.1}  {:>6.1}  {:>19.1}  {:>17.1}  {:>22.1} / {:>6.1}  {per_core:>16.0}  {:>6.1}x",
            percentile(&totals, 0.5),
            percentile(&totals, 0.99),
            percentile(&candidates, 0.5),
            percentile(&rescores, 0.5),
            percentile(&without, 0.5),
            percentile(&without, 0.99),
            per_core / exhaustive_rate
        );
        // Where the tail comes from: each stage's p99, and the slowest probes.
        let mut reranks: Vec<Duration> = outcomes[slot].iter().map(Outcome::rerank_time).collect();
        reranks.sort_unstable();
        let mut slowest: Vec<&Outcome> = outcomes[slot].iter().collect();
        slowest.sort_by_key(|x| std::cmp::Reverse(x.total_time));
        let slow: Vec<String> = slowest
            .iter()
            .take(4)
            .map(|x| {
                format!(
                    "{:.0} ms ({} cylinders: candidates {:.0}, re-rank {:.0})",
                    x.total_time.as_secs_f64() * 1e3,
                    x.probe_cylinders,
                    x.candidate_time.as_secs_f64() * 1e3,
                    x.rerank_time().as_secs_f64() * 1e3
                )
            })
            .collect();
        println!(
            "# {threads} threads, {stage}, re-rank {rerank}: candidate stage p99 {:.1} ms; re-rank median {:.1} ms, p99 {:.1} ms; slowest: {}",
            percentile(&candidates, 0.99),
            percentile(&reranks, 0.5),
            percentile(&reranks, 0.99),
            slow.join(", ")
        );
    }
}
