//! The re-rank of a 1:N candidate list by the full MCC matcher, in one pass
//! or in two.
//!
//! A comparison costs about `n_A · n_B` cylinder comparisons plus a
//! relaxation over `min(n_A, n_B)²` minutia pairs, so a probe with many
//! valid cylinders makes the re-rank of a 10,000-template shortlist several
//! times slower than a typical one, and such probes make the tail of a
//! search's latency. With [`RerankSettings::probe_cap`] set, a probe with more
//! cylinders, against more than 4 times [`RerankSettings::keep`] candidates,
//! is first compared with its most central ones only ([`Template::central`]),
//! and the [`RerankSettings::keep`] best candidates of that pass are compared
//! again with the whole probe: those scores (and only those candidates)
//! come back, so a score is always the full matcher's.
//! Probes within the cap get the single pass. What the first pass costs in
//! accuracy (a mate it ranks below `keep`) is measured by
//! `benches/finger_identify.rs` (BENCHMARKS.md): with the default 24:500, on
//! 10,000-template shortlists of 250,000 copies of FVC2002 templates, no mate
//! was lost that the single pass scored (136 probes from LEADER's templates,
//! 280 from the `.iso` ones), and the re-rank's p99 fell by a quarter to a half.

use super::{
    mcc::{Matcher, Template},
    parallel_chunks,
};

/// Two passes only for more than this many times `keep` candidates: below,
/// the first pass plus the `keep` full comparisons cost about as much as
/// one pass (20,000 LEADER templates, shortlist 800, keep 500: median 60 ms
/// with two passes against 52 ms with one, `benches/finger_identify.rs`).
const TWO_PASS_FROM: usize = 4;
/// Below this many comparisons a pass runs on the calling thread only.
const PARALLEL_FROM: usize = 128;

/// How a candidate list is re-ranked (default: cap 24 cylinders, keep 500).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RerankSettings {
    /// Probes with more valid cylinders than this get the two-pass re-rank
    /// (the first with this many cylinders); 0 turns it off.
    pub probe_cap: usize,
    /// Candidates the first pass keeps for the comparison with the whole probe.
    pub keep: usize,
}

impl Default for RerankSettings {
    fn default() -> Self {
        Self { probe_cap: 24, keep: 500 }
    }
}

impl RerankSettings {
    /// A single pass whatever the probe (every candidate gets the full matcher).
    pub const SINGLE_PASS: Self = Self { probe_cap: 0, keep: 0 };

    /// Whether `probe` against `candidates` candidates, of which at least
    /// `wanted` must come back, gets two passes (only where they save time).
    fn two_pass(&self, probe: &Template, candidates: usize, wanted: usize) -> bool {
        let keep = self.keep.max(wanted);
        // Keeping none would return nothing: such settings get the single pass.
        self.probe_cap > 0 && keep > 0 && probe.len() > self.probe_cap && candidates > TWO_PASS_FROM * keep
    }
}

/// The full matcher's similarity of `probe` with candidates, as
/// `(index in candidates, score)` in the candidates' order, on up to
/// `threads` threads.
///
/// With one pass every candidate comes back; with two (see the module
/// documentation) the `max(keep, wanted)` best of the first pass do.
pub fn rerank(
    probe: &Template,
    candidates: &[&Template],
    settings: RerankSettings,
    wanted: usize,
    threads: usize,
) -> Vec<(usize, f32)> {
    let all: Vec<(usize, &Template)> = candidates.iter().copied().enumerate().collect();
    if !settings.two_pass(probe, candidates.len(), wanted) {
        return score(probe, &all, threads);
    }
    let keep = settings.keep.max(wanted);
    let mut first = score(&probe.central(settings.probe_cap), &all, threads);
    first.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    first.truncate(keep);
    first.sort_unstable_by_key(|&(i, _)| i);
    let kept: Vec<(usize, &Template)> = first.iter().filter_map(|&(i, _)| candidates.get(i).map(|t| (i, *t))).collect();
    score(probe, &kept, threads)
}

/// The similarity of `probe` with every template, keeping each one's index.
fn score(probe: &Template, templates: &[(usize, &Template)], threads: usize) -> Vec<(usize, f32)> {
    let run = |part: &[(usize, &Template)]| {
        let mut matcher = Matcher::new();
        part.iter().map(|&(i, t)| (i, matcher.similarity(probe, t))).collect::<Vec<_>>()
    };
    let threads = if templates.len() < PARALLEL_FROM { 1 } else { threads.clamp(1, 64) };
    parallel_chunks(templates, threads, run)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finger::mcc::random_minutiae;

    #[test]
    fn a_small_probe_or_list_gets_one_pass_with_every_score() {
        let probe = Template::new(&random_minutiae(1, 30));
        let gallery: Vec<Template> = (0..300).map(|s| Template::new(&random_minutiae(10 + s, 35))).collect();
        let refs: Vec<&Template> = gallery.iter().collect();
        let settings = RerankSettings { probe_cap: 48, keep: 20 };
        assert!(probe.len() <= 48);
        let got = rerank(&probe, &refs, settings, 5, 2);
        let want = rerank(&probe, &refs, RerankSettings::SINGLE_PASS, 5, 1);
        assert_eq!(got, want);
        assert_eq!(got.len(), 300);
        let mut matcher = Matcher::new();
        for &(i, s) in &got {
            assert_eq!(s.to_bits(), matcher.similarity(&probe, &gallery[i]).to_bits());
        }
    }

    #[test]
    fn two_passes_keep_the_best_with_full_scores() {
        // A large probe; its mate is a copy with a third of the minutiae dropped.
        let minutiae = random_minutiae(2, 110);
        let probe = Template::new(&minutiae);
        assert!(probe.len() > 60, "{} cylinders", probe.len());
        let mate: Vec<_> = minutiae.iter().copied().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, m)| m).collect();
        let mut gallery: Vec<Template> = (0..400).map(|s| Template::new(&random_minutiae(100 + s, 60))).collect();
        gallery[237] = Template::new(&mate);
        let refs: Vec<&Template> = gallery.iter().collect();
        let settings = RerankSettings { probe_cap: 24, keep: 30 };
        for threads in [1, 2, 3] {
            let got = rerank(&probe, &refs, settings, 10, threads);
            assert_eq!(got.len(), 30, "keep");
            assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "in the candidates' order");
            let mut matcher = Matcher::new();
            for &(i, s) in &got {
                assert_eq!(s.to_bits(), matcher.similarity(&probe, &gallery[i]).to_bits(), "full score of {i}");
            }
            let best = got.iter().max_by(|a, b| a.1.total_cmp(&b.1)).map(|b| b.0);
            assert_eq!(best, Some(237));
            // `wanted` above `keep` keeps that many.
            assert_eq!(rerank(&probe, &refs, settings, 50, threads).len(), 50);
        }
        assert!(rerank(&probe, &[], settings, 10, 2).is_empty());
        // Keeping none (and wanting none) is a single pass, not an empty answer.
        let none = RerankSettings { probe_cap: 24, keep: 0 };
        assert_eq!(rerank(&probe, &refs, none, 0, 2), rerank(&probe, &refs, RerankSettings::SINGLE_PASS, 0, 2));
    }
}
