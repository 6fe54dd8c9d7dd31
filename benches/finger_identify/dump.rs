//! `--dump FILE` (experiment): each probe's rescored finalists with the other
//! candidate stages' scores, for trying fused rankings offline.

use cotejo::finger::{mcc, shortlist, sketch as scan};

use super::gallery::Run;
use super::probe_descriptor;

/// Where `--dump` writes (set once in `main`).
pub(crate) static DUMP: std::sync::OnceLock<std::sync::Mutex<std::io::BufWriter<std::fs::File>>> =
    std::sync::OnceLock::new();

/// Experiment (`--dump`): one line per rescored finalist of a probe, and the
/// mate's if it was scored but not among them, with the declared and rescored
/// MCC scores, the vote score and the sketch score (if sketches were built),
/// for trying fused rankings offline.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finalists(
    out: &std::sync::Mutex<std::io::BufWriter<std::fs::File>>,
    index: &shortlist::ShortlistIndex,
    run: &Run,
    p: usize,
    mate: u64,
    (scan, n, threads): (bool, usize, usize),
    declared: &[(f32, u64)],
    finalists: &[(f32, u64)],
) {
    use std::io::Write;
    let declared: std::collections::HashMap<u64, f32> = declared.iter().map(|&(s, k)| (k, s)).collect();
    let mut rows: Vec<(f32, u64, bool)> = finalists.iter().map(|&(s, k)| (s, k, true)).collect();
    if let (false, Some(&s)) = (finalists.iter().any(|&(_, k)| k == mate), declared.get(&mate)) {
        rows.push((s, mate, false));
    }
    let keys: Vec<u64> = rows.iter().map(|r| r.1).collect();
    let probe = &run.probes[p].0;
    let votes = index.vote_scores(&probe_descriptor(probe), &keys);
    let probe_sketch = scan::ProbeSketch::new(probe);
    let mut scanner = scan::Scanner::new();
    let Ok(mut out) = out.lock() else { return };
    for ((rescored, key, finalist), vote) in rows.into_iter().zip(votes) {
        let sketch = run.sketches.get(key as usize).map_or(f32::NAN, |s| scanner.score(&probe_sketch, s));
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{n}\t{threads}\t{key}\t{}\t{}\t{}\t{}\t{rescored}\t{vote}\t{sketch}\t{}\t{}",
            run.copy_seed,
            run.probe_names[p],
            if scan { "sketch" } else { "votes" },
            u8::from(key == mate),
            run.source(key as usize),
            u8::from(finalist),
            declared.get(&key).copied().unwrap_or(f32::NAN),
            run.gallery.get(key as usize).map_or(0, mcc::Template::len),
            probe.len(),
        );
    }
}
