//! `cotejo eval latency`: identify from image files against a gallery of a
//! given size, in process (no gRPC), with the share of each stage.

use std::{collections::HashMap, path::Path, time::Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{metrics::median_p99, read_labels};
use crate::{
    biometric::{Modality, Sample, SampleData},
    config::Config,
    engine::{DedupRequest, Engine, EnrollRequest, IdentifyRequest},
    jobs::Scope,
};

fn image_sample(bytes: Vec<u8>) -> Sample {
    Sample { modality: Modality::Face, finger_position: 0, data: SampleData::Image(bytes), ppi: 0 }
}

/// Enrolls `mates` real identities (first image) plus random unit vectors up
/// to `gallery` templates, then identifies the mates' second images.
pub async fn latency(
    config: &Config,
    data: &Path,
    gallery: usize,
    mates: usize,
    with_dedup_job: bool,
) -> anyhow::Result<()> {
    let (_dir, config, engine) = scratch_engine(config).await?;
    let images = read_labels(data)?;
    let mut by_id: HashMap<&str, Vec<&Path>> = HashMap::new();
    for img in &images {
        by_id.entry(img.identity.as_str()).or_default().push(&img.path);
    }
    let mut pairs: Vec<(&str, &Path, &Path)> =
        by_id.iter().filter(|(_, v)| v.len() >= 2).map(|(k, v)| (*k, v[0], v[1])).collect();
    pairs.sort_by_key(|p| p.0);
    pairs.truncate(mates);

    let t = Instant::now();
    let mut enrolled_mates = 0;
    for (id, first, _) in &pairs {
        let req = EnrollRequest {
            subject_id: (*id).to_owned(),
            samples: vec![image_sample(std::fs::read(first)?)],
            add_encounter: false,
            use_main_face: true,
            watchlists: Vec::new(),
            request_id: String::new(),
        };
        if engine.enroll(req, &crate::store::Actor::system("eval")).await.is_ok() {
            enrolled_mates += 1;
        }
    }
    // Synthetic identities: random directions on the unit sphere. The cost
    // of exact search does not depend on the vectors' content.
    enroll_synthetic(&engine, enrolled_mates..gallery, 7).await?;
    let enroll_secs = t.elapsed().as_secs_f64();

    let run = measure(&engine, &pairs, false).await?;
    let beside_job = if with_dedup_job { Some(measure(&engine, &pairs, true).await?) } else { None };
    let Measured { mut total, hits, stage, jobs_run: _ } = run;
    let n = total.len().max(1) as f64;
    let mean_total = total.iter().sum::<f64>() / n;
    let (median, p99) = median_p99(&mut total);
    let names = ["decode", "detect", "align", "embed", "search"];
    let shares: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(stage)
        .map(|(k, v)| ((*k).to_owned(), json!({"mean_ms": v / n, "share": v / n / mean_total})))
        .collect();
    let out = json!({
        "gallery_templates": gallery,
        "real_mates_enrolled": enrolled_mates,
        "queries": total.len(),
        "rank1_hits": hits,
        "median_ms": median,
        "p99_ms": p99,
        "mean_ms": mean_total,
        "stages": shares,
        "flip_average": config.face.flip_average,
        "inference_threads": config.inference.threads,
        "enroll_seconds": enroll_secs,
        "beside_a_running_dedup_job": beside_job.map(|mut m| {
            let (median, p99) = median_p99(&mut m.total);
            json!({"queries": m.total.len(), "median_ms": median, "p99_ms": p99, "rank1_hits": m.hits,
                   "dedup_jobs_completed_meanwhile": m.jobs_run,
                   "note": "a face dedup job over the whole gallery ran (restarted whenever it finished) during every query"})
        }),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

struct Measured {
    total: Vec<f64>,
    hits: usize,
    stage: [f64; 5],
    jobs_run: usize,
}

/// Identifies every pair's second image; with `job`, keeps a face dedup job
/// over the gallery running the whole time.
async fn measure(engine: &Engine, pairs: &[(&str, &Path, &Path)], job: bool) -> anyhow::Result<Measured> {
    let mut current: Option<String> = None;
    let mut jobs_run = 0usize;
    let (mut total, mut hits) = (Vec::new(), 0usize);
    let mut stage = [0f64; 5]; // decode, detect, align, embed, search
    for (round, (id, _, second)) in pairs.iter().enumerate() {
        if job {
            let running = match &current {
                Some(id) => {
                    let s = engine.job(id.clone()).await?;
                    s.record.state.active()
                }
                None => false,
            };
            if !running {
                jobs_run += usize::from(current.is_some());
                let req = DedupRequest { scope: Scope::All, modalities: vec![Modality::Face], target_fmr: 0.0 };
                current = Some(engine.start_dedup(req).await?.record.job_id.to_string());
            }
        }
        let bytes = std::fs::read(second)?;
        let req = IdentifyRequest {
            samples: vec![image_sample(bytes)],
            max_candidates: 10,
            target_fpir: 0.0,
            subject_ids: Vec::new(),
            watchlist: String::new(),
        };
        let t = Instant::now();
        let Ok(out) = engine.identify(req).await else { continue };
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if round == 0 {
            continue; // warm-up
        }
        total.push(ms);
        hits += usize::from(out.candidates.first().is_some_and(|c| c.subject_id == *id));
        let x = out.times.extract;
        for (slot, d) in stage.iter_mut().zip([x.decode, x.detect, x.align, x.embed, out.times.search]) {
            *slot += d.as_secs_f64() * 1e3;
        }
    }
    if let Some(id) = current {
        let _ = engine.cancel_job(id).await;
    }
    Ok(Measured { total, hits, stage, jobs_run })
}

/// `cotejo eval dedup-time`: a face dedup job over `gallery` synthetic
/// subjects, end to end in process (store reads, blocks, commits), timed.
pub async fn dedup_time(config: &Config, gallery: usize) -> anyhow::Result<()> {
    let (_dir, config, engine) = scratch_engine(config).await?;
    let t = Instant::now();
    enroll_synthetic(&engine, 0..gallery, 9).await?;
    let enroll_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (_, status) = run_dedup(&engine, Modality::Face, 200).await?;
    let job_secs = t.elapsed().as_secs_f64();
    let out = json!({
        "subjects": gallery,
        "state": status.record.state.name(),
        "blocks": status.record.total,
        "pairs": status.pairs,
        "job_seconds": job_secs,
        "job_threads": config.jobs.threads,
        "enroll_seconds": enroll_secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Starts a dedup job of the whole gallery for one modality and polls it
/// every `poll_ms` until it ends; its id and final status.
pub(super) async fn run_dedup(
    engine: &Engine,
    modality: Modality,
    poll_ms: u64,
) -> anyhow::Result<(String, crate::engine::JobStatus)> {
    let req = DedupRequest { scope: Scope::All, modalities: vec![modality], target_fmr: 0.0 };
    let id = engine.start_dedup(req).await?.record.job_id.to_string();
    loop {
        let s = engine.job(id.clone()).await?;
        if !s.record.state.active() {
            return Ok((id, s));
        }
        tokio::time::sleep(std::time::Duration::from_millis(poll_ms)).await;
    }
}

/// Enrolls subjects `synthetic-<n>` for every n of `range`, each with one
/// random face embedding (seeded).
pub(super) async fn enroll_synthetic(engine: &Engine, range: std::ops::Range<usize>, seed: u64) -> anyhow::Result<()> {
    let model = engine.face_model().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    for n in range {
        let v: Vec<f32> = (0..model.dim).map(|_| rng.random::<f32>() - 0.5).collect();
        let sample = Sample {
            modality: Modality::Face,
            finger_position: 0,
            data: SampleData::FaceEmbedding { model_id: model.id.clone(), values: v },
            ppi: 0,
        };
        enroll_one(engine, format!("synthetic-{n:07}"), sample).await?;
    }
    Ok(())
}

/// Enrolls a new subject with one sample.
pub(super) async fn enroll_one(engine: &Engine, subject: String, sample: Sample) -> anyhow::Result<()> {
    let req = EnrollRequest {
        subject_id: subject,
        samples: vec![sample],
        add_encounter: false,
        use_main_face: false,
        watchlists: Vec::new(),
        request_id: String::new(),
    };
    engine.enroll(req, &crate::store::Actor::system("eval")).await?;
    Ok(())
}

/// An engine on a temporary data directory (dropped with the returned guard),
/// and the configuration it runs with.
pub(super) async fn scratch_engine(config: &Config) -> anyhow::Result<(tempfile::TempDir, Config, Engine)> {
    let dir = tempfile::tempdir()?;
    let mut config = config.clone();
    config.store.data_dir = dir.path().to_owned();
    let c = config.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::start(&c)).await??;
    Ok((dir, config, engine))
}
