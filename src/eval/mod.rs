//! The project's own evaluation commands on labelled data sets (e.g.
//! ../shared/data): verification accuracy of the face pipeline and
//! identify latency at a given gallery size.

pub mod calibrate;
pub mod dedup;
mod dedup_fingers;
mod fingers;
mod identification;
mod latency;
pub mod metrics;
mod startup;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, atomic::AtomicUsize, atomic::Ordering},
};

use anyhow::Context;
use serde_json::json;

use crate::{
    config::Config,
    face::{FaceError, FacePipeline, FaceSettings, MultipleFaces},
    inference::{self, Manifest},
};
pub use dedup_fingers::dedup_time_fingers;
pub use fingers::{FingerEval, FingerSource, fingers};
pub use identification::identification;
pub use latency::{dedup_time, latency};
pub use startup::{startup, startup_fingers};

/// One labelled image.
#[derive(Debug, Clone)]
pub struct LabelledImage {
    /// Absolute path.
    pub path: PathBuf,
    /// Identity label.
    pub identity: String,
}

/// Reads `LABELS.txt` (tab-separated `relative_path identity`, `#` comments).
pub fn read_labels(dir: &Path) -> anyhow::Result<Vec<LabelledImage>> {
    let file = dir.join("LABELS.txt");
    let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (p, id) = (cols.next()?, cols.next()?);
            Some(LabelledImage { path: dir.join(p), identity: id.trim().to_owned() })
        })
        .collect())
}

/// Loads the face pipeline as configured (for offline use, no server).
pub fn pipeline(config: &Config) -> anyhow::Result<(Manifest, FaceSettings)> {
    let manifest = inference::load_models(&config.models)?;
    // Evaluation runs one pipeline per thread, each single-threaded.
    let settings = FaceSettings { threads: 1, ..FaceSettings::from_config(config) };
    Ok((manifest, settings))
}

/// An embedding, or why the image gave none.
pub type Embedded = Result<Vec<f32>, FaceError>;

/// Runs `work` over every item on `threads` threads, each with its own
/// state from `init` (its model sessions); results come back in input order.
pub(crate) fn par_map<I: Sync, S, T: Send>(
    items: &[I],
    threads: usize,
    label: &str,
    init: impl Fn() -> anyhow::Result<S> + Sync,
    work: impl Fn(&mut S, &I) -> anyhow::Result<T> + Sync,
) -> anyhow::Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<T>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let mut state = init()?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { return Ok(()) };
                        let r = work(&mut state, item)?;
                        if let Ok(mut all) = results.lock() {
                            all[i] = Some(r);
                        }
                        if i.is_multiple_of(100) {
                            eprintln!("  {label} {i}/{}", items.len());
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("an evaluation thread panicked"))??;
        }
        Ok(())
    })?;
    let all = results.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    all.into_iter().map(|r| r.ok_or_else(|| anyhow::anyhow!("an item was not processed"))).collect()
}

/// Embeds every image on `threads` threads, each with its own pipeline.
/// `aligned`: the images are already 112x112 aligned crops (no detection).
/// Returns one embedding or error per image, in input order.
pub fn embed_all(
    manifest: &Manifest,
    settings: FaceSettings,
    images: &[LabelledImage],
    aligned: bool,
    threads: usize,
) -> anyhow::Result<Vec<Embedded>> {
    par_map(
        images,
        threads,
        "embedded",
        || Ok(FacePipeline::load(manifest, settings)?),
        |p, img| {
            let bytes = std::fs::read(&img.path).with_context(|| img.path.display().to_string())?;
            Ok(if aligned {
                crate::imaging::decode_rgb(&bytes, settings.limits)
                    .map_err(crate::face::FaceError::from)
                    .and_then(|rgb| p.embed_aligned(&rgb))
            } else {
                p.extract(&bytes, MultipleFaces::UseMain).map(|x| x.embedding)
            })
        },
    )
}

/// `cotejo eval verification`: EER and FNMR at FMR over all pairs of a
/// labelled face set. Prints one JSON object.
pub fn verification(config: &Config, data: &Path, aligned: bool, threads: usize, limit: usize) -> anyhow::Result<()> {
    let (manifest, settings) = pipeline(config)?;
    let mut images = read_labels(data)?;
    if limit > 0 {
        images.truncate(limit);
    }
    let started = std::time::Instant::now();
    let results = embed_all(&manifest, settings, &images, aligned, threads)?;
    let secs = started.elapsed().as_secs_f64();
    let mut failures = Vec::new();
    let mut kept: Vec<(&str, Vec<f32>)> = Vec::new();
    for (img, r) in images.iter().zip(results) {
        match r {
            Ok(v) => kept.push((img.identity.as_str(), v)),
            Err(e) => failures.push(json!({"image": img.path.display().to_string(), "error": e.to_string()})),
        }
    }
    let all = pair_scores(&kept, usize::MAX);
    // LFW's genuine pairs are dominated by a few people with hundreds of
    // photos; the balanced variant keeps at most 10 images per identity.
    let balanced = pair_scores(&kept, 10);
    let v = metrics::verification(&all.0, &all.1, &[0.01, 0.001, 0.0001]);
    let vb = metrics::verification(&balanced.0, &balanced.1, &[0.01, 0.001, 0.0001]);
    let at = |v: &metrics::Verification| {
        v.at_fmr
            .iter()
            .map(|(f, t, fnmr)| json!({"fmr": f, "threshold": t, "fnmr": fnmr, "tar": 1.0 - fnmr}))
            .collect::<Vec<_>>()
    };
    let out = json!({
        "data": data.display().to_string(),
        "mode": if aligned { "aligned crops: embed only" } else { "full pipeline: detect + align + embed" },
        "model": manifest.face_embedder.id,
        "flip_average": settings.flip_average,
        "images": images.len(),
        "detection_failures": failures.len(),
        "failures": failures,
        "genuine_pairs": v.genuine,
        "impostor_pairs": v.impostor,
        "eer": v.eer,
        "eer_threshold": v.eer_threshold,
        "at_fmr": at(&v),
        "balanced_max10_per_identity": {
            "genuine_pairs": vb.genuine, "impostor_pairs": vb.impostor, "eer": vb.eer,
            "eer_threshold": vb.eer_threshold, "at_fmr": at(&vb),
        },
        "seconds": secs,
        "threads": threads,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Genuine and impostor cosine scores over all pairs of the first
/// `per_identity` embeddings of each identity.
fn pair_scores(kept: &[(&str, Vec<f32>)], per_identity: usize) -> (Vec<f32>, Vec<f32>) {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let used: Vec<&(&str, Vec<f32>)> = kept
        .iter()
        .filter(|(id, _)| {
            let n = seen.entry(id).or_insert(0);
            *n += 1;
            *n <= per_identity
        })
        .collect();
    let (mut genuine, mut impostor) = (Vec::new(), Vec::new());
    for a in 0..used.len() {
        for b in a + 1..used.len() {
            let s = crate::face::embed::cosine(&used[a].1, &used[b].1);
            if used[a].0 == used[b].0 { genuine.push(s) } else { impostor.push(s) }
        }
    }
    (genuine, impostor)
}
