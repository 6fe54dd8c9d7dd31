//! `cotejo eval dedup-time --fingers N`: what the aspect rescoring of a
//! finger dedup job costs and finds, against the same job scoring the
//! declared frame only, on the same store in the same process.

use std::time::Instant;

use rand::{SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{
    latency::{run_dedup, scratch_engine},
    startup::{another_impression, enroll_finger, random_record, start},
};
use crate::{biometric::Modality, config::Config};

/// Enrolls `fingers` synthetic one-finger subjects (random ISO records) and,
/// for every tenth, a second subject holding another impression of it
/// (shifted, a tenth of its minutiae left out). Then runs one finger dedup
/// job with `jobs.finger_rescored = 0` and one with the configured value,
/// timed, and counts the planted pairs each finds. Prints one JSON object.
/// (Scanner-stretched pairs, what the rescoring is for, are in
/// `scripts/dedup-fvc.sh`; these synthetic pairs measure the cost.)
pub async fn dedup_time_fingers(config: &Config, fingers: usize) -> anyhow::Result<()> {
    let (_dir, config, engine) = scratch_engine(config).await?;
    let mut rng = StdRng::seed_from_u64(17);
    let t = Instant::now();
    let mut planted = 0;
    for n in 0..fingers {
        let record = random_record(&mut rng)?;
        if n % 10 == 0 {
            enroll_finger(&engine, format!("f-{n:07}-b"), another_impression(&record)?).await?;
            planted += 1;
        }
        enroll_finger(&engine, format!("f-{n:07}"), record).await?;
    }
    let enroll_secs = t.elapsed().as_secs_f64();
    drop(engine);
    let mut runs = Vec::new();
    for rescored in [0, config.jobs.finger_rescored] {
        let mut c = config.clone();
        c.jobs.finger_rescored = rescored;
        let (engine, _) = start(&c).await?;
        let t = Instant::now();
        let (id, status) = run_dedup(&engine, Modality::Finger, 100).await?;
        let secs = t.elapsed().as_secs_f64();
        let (pairs, _) = engine.job_results(id).await?;
        // Pairs are ordered by subject id, so a planted pair is `f-N`, `f-N-b`.
        let found = pairs.iter().filter(|p| p.candidate.subject_id.strip_suffix("-b") == Some(p.a.as_str())).count();
        runs.push(json!({
            "finger_rescored": rescored,
            "state": status.record.state.name(),
            "job_seconds": secs,
            "pairs": pairs.len(),
            "planted_pairs_found": found,
            "other_pairs": pairs.len() - found,
        }));
    }
    let seconds = |i: usize| runs.get(i).and_then(|r| r["job_seconds"].as_f64()).unwrap_or(0.0);
    let out = json!({
        "finger_subjects": fingers + planted,
        "planted_pairs": planted,
        "job_threads": config.jobs.threads,
        "enroll_seconds": enroll_secs,
        "runs": runs,
        "time_ratio_rescored_over_declared": seconds(1) / seconds(0).max(1e-9),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
