//! The bench's timing experiments beside the measured search (see
//! `finger_identify.rs` for the options): the one-pass baseline of the
//! candidate stage, vote-counting block sizes, the probe-cylinder cap and
//! `--long-lists`.

use std::time::{Duration, Instant};

use cotejo::finger::shortlist;

use super::gallery::Run;
use super::identify::probe_descriptor;
use super::options::Options;
use super::percentile;

/// Experiment (`--long-lists R,...`): the candidate stage of every probe of the
/// run without the probe buckets longer than `R` times the mean, against the
/// search with every bucket, interleaved, on the largest thread count: the
/// share of postings left out, the times and the shortlist's mate recall.
fn long_lists(index: &shortlist::ShortlistIndex, run: &Run, o: &Options) {
    let threads = o.threads.iter().copied().max().unwrap_or(1);
    let ratios: Vec<f64> = std::iter::once(f64::INFINITY).chain(o.long_lists.iter().copied()).collect();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); ratios.len()];
    let mut found = vec![0_usize; ratios.len()];
    let mut read = vec![0_usize; ratios.len()];
    for (probe, mate) in &run.probes {
        let d = probe_descriptor(probe);
        let (mean, lengths) = index.probe_list_lengths(&d);
        for (r, &ratio) in ratios.iter().enumerate() {
            read[r] += lengths.iter().filter(|&&l| l as f64 <= ratio * mean).sum::<usize>();
            let start = Instant::now();
            let keys = index.search_without_long_lists(&d, o.shortlist, threads, ratio);
            times[r].push(start.elapsed());
            found[r] += usize::from(keys.contains(mate));
        }
    }
    for (r, ratio) in ratios.iter().enumerate() {
        times[r].sort_unstable();
        println!(
            "# long lists over {ratio} x mean left out: {:.1}% of the postings read, candidate stage ({threads} threads) median {:.1} ms, p99 {:.1} ms, mate recall @{} {:.4} ({} probes)",
            100.0 * read[r] as f64 / read[0].max(1) as f64,
            percentile(&times[r], 0.5),
            percentile(&times[r], 0.99),
            o.shortlist,
            found[r] as f64 / run.probes.len() as f64,
            run.probes.len()
        );
    }
}

/// The experiments the options ask for, on the run's single index: the
/// one-pass baseline (its and the blocked search's times pushed onto
/// `one_pass` and `blocked`), `--blocks`, `--long-lists` and the probe cap.
pub(crate) fn run(
    index: &shortlist::ShortlistIndex,
    run: &Run,
    o: &Options,
    one_pass: &mut Vec<Duration>,
    blocked: &mut Vec<Duration>,
) {
    // Baseline of the candidate stage: the same index counted in one pass
    // over a vote array for all slots (the method before blocking), one thread,
    // interleaved with the blocked search on the same probes.
    {
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
    if !o.blocks.is_empty() {
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
    if !o.long_lists.is_empty() {
        long_lists(index, run, o);
    }
    let cap = super::identify::PROBE_CAP.load(std::sync::atomic::Ordering::Relaxed);
    if o.one_pass_probes > 0 {
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
}
