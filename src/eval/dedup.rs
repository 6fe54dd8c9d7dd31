//! Offline de-duplication of face images (no server): every image is a
//! subject (its file stem, or its labelled path); pairs come from the same
//! block computation as the server's jobs, thresholded with the stored face
//! calibration. `cotejo dedup --offline DIR` prints them; `cotejo eval dedup`
//! scores them against identity labels (precision and recall of the pairs).

use std::{collections::HashSet, path::Path, time::Instant};

use anyhow::Context;
use ndarray::Array2;
use serde_json::json;

use super::{LabelledImage, embed_all, pipeline, read_labels};
use crate::{
    calibration::Calibration,
    config::Config,
    engine::FaceModel,
    jobs::{Block, clusters, face_block, plan},
};

/// Pairs of image indices at or above the target FMR, with their cosine and calibrated score.
struct Found {
    names: Vec<String>,
    labels: Vec<String>,
    pairs: Vec<(usize, usize, f32, f64)>,
    failures: Vec<(String, String)>,
    embed_secs: f64,
    match_secs: f64,
}

fn find(config: &Config, images: &[LabelledImage], target_fmr: f64, threads: usize) -> anyhow::Result<Found> {
    let (manifest, settings) = pipeline(config)?;
    let model = FaceModel::new(&manifest, settings.flip_average);
    let cal_path = config.models.calibration_dir.join(Calibration::file_name(&model.id));
    let cal = Calibration::load(&cal_path)?;
    let t = Instant::now();
    let embedded = embed_all(&manifest, settings, images, false, threads)?;
    let embed_secs = t.elapsed().as_secs_f64();
    let (mut names, mut labels, mut rows, mut failures) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (img, e) in images.iter().zip(embedded) {
        let name = img.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        match e {
            Ok(v) => {
                names.push(name);
                labels.push(img.identity.clone());
                rows.extend(v);
            }
            Err(e) => failures.push((img.path.display().to_string(), e.to_string())),
        }
    }
    let dim = if names.is_empty() { 0 } else { rows.len() / names.len() };
    let matrix = Array2::from_shape_vec((names.len(), dim), rows)?;
    let bar = cal.raw_for_fmr(target_fmr) as f32;
    let t = Instant::now();
    let mut pairs = Vec::new();
    for b in plan(names.len(), 0, 512, 1) {
        if let Block::Faces { start, end } = b {
            for (i, j, s) in face_block(matrix.view(), start, end, bar, threads) {
                pairs.push((i, j, s, cal.db(f64::from(s))));
            }
        }
    }
    pairs.sort_by(|x, y| y.3.total_cmp(&x.3).then((x.0, x.1).cmp(&(y.0, y.1))));
    Ok(Found { names, labels, pairs, failures, embed_secs, match_secs: t.elapsed().as_secs_f64() })
}

/// `cotejo dedup --offline DIR`: every image file of `dir` is one subject.
pub fn offline(
    config: &Config,
    dir: &Path,
    target_fmr: f64,
    threads: usize,
) -> anyhow::Result<(Vec<crate::cli::PairRow>, Vec<Vec<String>>)> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| dir.display().to_string())? {
        let path = entry?.path();
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        if ["jpg", "jpeg", "png", "tif", "tiff", "bmp", "pgm", "ppm"].contains(&ext.as_str()) {
            images.push(LabelledImage { identity: String::new(), path });
        }
    }
    images.sort_by(|a, b| a.path.cmp(&b.path));
    let f = find(config, &images, target_fmr, threads)?;
    for (p, e) in &f.failures {
        eprintln!("skipped {p}: {e}");
    }
    let rows: Vec<crate::cli::PairRow> = f
        .pairs
        .iter()
        .map(|&(i, j, s, db)| crate::cli::PairRow {
            a: f.names[i].clone(),
            b: f.names[j].clone(),
            score: db,
            detail: format!("face {s:.3}"),
        })
        .collect();
    let groups = clusters(rows.iter().map(|r| (r.a.as_str(), r.b.as_str())));
    Ok((rows, groups))
}

/// `cotejo eval dedup`: every image of a labelled set enrolled as its own
/// subject; pairs of the same identity are the truth. Prints one JSON object.
pub fn evaluate(config: &Config, data: &Path, threads: usize) -> anyhow::Result<()> {
    let images = read_labels(data)?;
    let mut rows = Vec::new();
    // One embedding pass; thresholds for several targets from the same scores.
    let f = find(config, &images, 1e-2, threads)?;
    let n = f.names.len();
    let mut per_label: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for l in &f.labels {
        *per_label.entry(l.as_str()).or_default() += 1;
    }
    let truth: usize = per_label.values().map(|k| k * (k - 1) / 2).sum();
    for target in [1e-3, 1e-4, 1e-5, 1e-6] {
        let bar = -10.0 * f64::log10(target);
        let found: Vec<&(usize, usize, f32, f64)> = f.pairs.iter().filter(|p| p.3 >= bar).collect();
        let right = found.iter().filter(|p| f.labels[p.0] == f.labels[p.1]).count();
        let subjects: HashSet<usize> = found.iter().flat_map(|p| [p.0, p.1]).collect();
        rows.push(json!({"target_fmr": target, "pairs_found": found.len(), "true_pairs_found": right,
                         "precision": if found.is_empty() { 1.0 } else { right as f64 / found.len() as f64 },
                         "recall": right as f64 / truth.max(1) as f64,
                         "expected_false_pairs": target * (n * (n - 1) / 2) as f64,
                         "images_in_pairs": subjects.len()}));
    }
    let out = json!({
        "data": data.display().to_string(),
        "images": images.len(),
        "embedded": n,
        "detection_failures": f.failures.len(),
        "true_pairs": truth,
        "comparisons": n * n.saturating_sub(1) / 2,
        "embed_seconds": f.embed_secs,
        "match_seconds": f.match_secs,
        "at_target_fmr": rows,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
