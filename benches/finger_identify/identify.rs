//! One identification of a probe under one configuration: the candidate
//! stage, the full matcher's re-rank and the aspect rescoring, timed (see
//! `finger_identify.rs` for the protocol).

use std::time::{Duration, Instant};

use cotejo::finger::{
    aspect::Stretched,
    mcc, parallel_chunks,
    rerank::{self, RerankSettings},
    shortlist,
};

use super::gallery::{Run, Shards};

/// Threads, candidate stage and re-rank of one measured configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) threads: usize,
    /// The shortlist size.
    pub(crate) n: usize,
    /// The re-rank (one index only; shards re-rank their shortlists in one pass).
    pub(crate) rerank: RerankSettings,
}

/// Outcome of one identification.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcome {
    /// Rank of the mate within its shard's shortlist, if shortlisted.
    pub(crate) shard_rank: Option<usize>,
    /// Whether the best MCC score of the shortlist is the mate's.
    pub(crate) rank1: bool,
    /// Whether the mate is still best after the aspect rescoring of the top candidates.
    pub(crate) rank1_rescored: bool,
    /// Whether the mate is among the 10 best after the rescoring (an Identify's default k).
    pub(crate) top10_rescored: bool,
    /// The same, counting each distractor print once however many of its copies score
    /// (as if the gallery held each print once, one subject with many impressions).
    pub(crate) top10_distinct: bool,
    pub(crate) candidate_time: Duration,
    /// Time of the aspect rescoring (part of `total_time`).
    pub(crate) rescore_time: Duration,
    pub(crate) total_time: Duration,
    /// Valid cylinders of the probe (the re-rank's cost grows with them).
    pub(crate) probe_cylinders: usize,
    /// Whether the mate got the full matcher's score (shortlisted, and kept by a first re-rank pass).
    pub(crate) mate_scored: bool,
}

impl Outcome {
    /// Time of the full matcher's re-rank: what neither the candidate stage nor the rescoring took.
    pub(crate) fn rerank_time(&self) -> Duration {
        self.total_time.saturating_sub(self.candidate_time + self.rescore_time)
    }
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

/// The best of `(score, key)` pairs.
fn best_of(scored: &[(f32, u64)]) -> (f32, u64) {
    scored.iter().fold((f32::NEG_INFINITY, u64::MAX), |b, r| if r.0 > b.0 { *r } else { b })
}

/// Most cylinders of a probe the candidate stage hashes (`--probe-cap`; default the service's).
pub(crate) static PROBE_CAP: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(shortlist::PROBE_CYLINDERS);

/// A probe's shortlist keys, capped by [`PROBE_CAP`].
pub(crate) fn probe_descriptor(probe: &mcc::Template) -> shortlist::Descriptor {
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
    settings: RerankSettings,
) -> Outcome {
    let start = Instant::now();
    let keys: Vec<u64> = index.search_descriptor(&probe_descriptor(probe), n, threads);
    let candidate_time = start.elapsed();
    let templates: Vec<&mcc::Template> = keys.iter().filter_map(|&key| run.gallery.get(key as usize)).collect();
    let mut scored: Vec<(f32, u64)> = rerank::rerank(probe, &templates, settings, rescore.max(1), threads)
        .into_iter()
        .filter_map(|(i, s)| Some((s, *keys.get(i)?)))
        .collect();
    let best = best_of(&scored);
    let rescore_start = Instant::now();
    let mut rescored_best = best;
    let mut finalists = scored.clone();
    if rescore > 0 && !scored.is_empty() {
        let top = rescore.min(scored.len());
        scored.select_nth_unstable_by(top - 1, |a, b| b.0.total_cmp(&a.0));
        let rescored = parallel_chunks(&scored[..top], threads, |part| {
            let mut matcher = mcc::Matcher::new();
            part.iter()
                .map(|&(declared, key)| {
                    let theirs = Stretched::new(&run.minutiae(key as usize));
                    (declared.max(stretched.best(&theirs, &mut matcher)), key)
                })
                .collect()
        });
        rescored_best = best_of(&rescored);
        finalists = rescored;
    }
    finalists.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let rescore_time = rescore_start.elapsed();
    let total_time = start.elapsed();
    Outcome {
        shard_rank: keys.iter().position(|&k| k == mate),
        rank1: best.1 == mate,
        rank1_rescored: rescored_best.1 == mate,
        top10_rescored: finalists.iter().take(10).any(|&(_, k)| k == mate),
        top10_distinct: {
            let mut seen = std::collections::HashSet::new();
            finalists.iter().filter(|&&(_, k)| seen.insert(run.source(k as usize))).take(10).any(|&(_, k)| k == mate)
        },
        candidate_time,
        rescore_time,
        total_time,
        probe_cylinders: probe.len(),
        mate_scored: scored.iter().any(|&(_, k)| k == mate),
    }
}

/// One identification of probe `p` of the run; the aspect rescoring only with one index.
pub(crate) fn identify(shards: &Shards, run: &Run, p: usize, config: Config, rescore: usize) -> Outcome {
    let (probe, mate) = (&run.probes[p].0, run.probes[p].1);
    let Config { threads, n, rerank } = config;
    if let [index] = shards.indexes.as_slice() {
        return identify_one_index(index, run, probe, &run.probe_stretched[p], mate, n, threads, rescore, rerank);
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
        top10_rescored: false,
        top10_distinct: false,
        candidate_time: results.iter().map(|r| r.3).max().unwrap_or_default(),
        rescore_time: Duration::ZERO,
        total_time,
        probe_cylinders: probe.len(),
        mate_scored: results.iter().any(|r| r.2.is_some()),
    }
}
