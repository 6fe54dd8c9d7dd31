//! `cotejo calibrate`: measures the map from raw score to -10 log10(FMR)
//! for the face model and the finger matcher from impostor comparisons on a
//! labelled set, and writes it beside the models (models.calibration_dir)
//! for the service's decisions.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{embed_all, par_map, pipeline, read_labels};
use crate::{
    calibration::Calibration,
    engine::FaceModel,
    face::{FaceSettings, embed::cosine},
    finger::{FingerPipeline, FingerSettings, aspect::Hypotheses, mcc, template},
    inference,
};

/// Calibrates the face model on all pairs of a labelled face set (full
/// pipeline, main face); returns the file written.
pub fn face(config: &crate::config::Config, data: &Path, threads: usize) -> anyhow::Result<PathBuf> {
    let (manifest, settings) = pipeline(config)?;
    let model = FaceModel::new(&manifest, settings.flip_average);
    let images = read_labels(data)?;
    let results = embed_all(&manifest, settings, &images, false, threads)?;
    let kept: Vec<(&str, Vec<f32>)> =
        images.iter().zip(results).filter_map(|(i, r)| r.ok().map(|v| (i.identity.as_str(), v))).collect();
    let (mut genuine, mut impostor) = (0usize, Vec::new());
    for (a, (ia, va)) in kept.iter().enumerate() {
        for (ib, vb) in &kept[a + 1..] {
            if ia == ib {
                genuine += 1;
            } else {
                impostor.push(f64::from(cosine(va, vb)));
            }
        }
    }
    let source = format!(
        "{}: all pairs of {} images ({} without a face skipped), full pipeline with the main face",
        data.display(),
        kept.len(),
        images.len() - kept.len()
    );
    let c = Calibration::from_scores(&model.id, "face", "cosine similarity", &source, &impostor, genuine)?;
    save(config, &c)
}

/// Calibrates the finger matcher on all pairs of an FVC-style set, pooling
/// the impostor scores of our extractor (the images through the service's
/// finger pipeline) and of the `.iso` templates beside them (another
/// vendor's extractor), since the service compares both kinds.
pub fn finger(config: &crate::config::Config, data: &Path, threads: usize) -> anyhow::Result<PathBuf> {
    let labels = read_labels(data)?;
    let manifest = inference::load_models(&config.models)?;
    let settings = FingerSettings {
        threads: 1,
        limits: FaceSettings::from_config(config).limits,
        min_minutiae: config.finger.min_minutiae,
    };
    let extracted = par_map(
        &labels,
        threads,
        "extracted",
        || FingerPipeline::load(&manifest, settings)?.context("the manifest has no finger extractor"),
        |p, l| {
            let bytes = std::fs::read(&l.path).with_context(|| l.path.display().to_string())?;
            Ok(match p.extract(&bytes, 0, 1) {
                Ok(x) => template::matcher_hypotheses(&x.template).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            })
        },
    )?;
    let extracted: Vec<Option<Hypotheses>> = labels
        .iter()
        .zip(extracted)
        .map(|(l, r)| r.map_err(|e| eprintln!("  refused {}: {e}", l.path.display())).ok())
        .collect();
    let imported: Vec<Option<Hypotheses>> = labels
        .iter()
        .map(|l| {
            let bytes = std::fs::read(l.path.with_extension("iso")).ok()?;
            let iso = template::import(&bytes, 1, config.finger.min_minutiae).ok()?;
            template::matcher_hypotheses(&iso).ok()
        })
        .collect();
    let mut matcher = mcc::Matcher::new();
    let (mut genuine, mut impostor) = (0usize, Vec::new());
    let mut used = Vec::new();
    for set in [&extracted, &imported] {
        let prints: Vec<(&str, &Hypotheses)> =
            labels.iter().zip(set.iter()).filter_map(|(l, t)| t.as_ref().map(|t| (l.identity.as_str(), t))).collect();
        used.push(prints.len());
        for (a, (ia, ta)) in prints.iter().enumerate() {
            for (ib, tb) in &prints[a + 1..] {
                if ia == ib {
                    genuine += 1;
                } else {
                    impostor.push(f64::from(ta.similarity(tb, &mut matcher)));
                }
            }
        }
    }
    let source = format!(
        "{}: all different-finger pairs within each of two template sets, pooled: {} of {} images through the \
         service's finger pipeline (LEADER) and {} .iso templates (the data set's own extractor)",
        data.display(),
        used[0],
        labels.len(),
        used[1]
    );
    let c = Calibration::from_scores(
        template::MATCHER_ID,
        "finger",
        "MCC-16b LSS-R similarity, best of the declared frame and the aspect hypotheses",
        &source,
        &impostor,
        genuine,
    )?;
    save(config, &c)
}

fn save(config: &crate::config::Config, c: &Calibration) -> anyhow::Result<PathBuf> {
    let dir = &config.models.calibration_dir;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let path = dir.join(Calibration::file_name(&c.model_id));
    c.save(&path).with_context(|| path.display().to_string())?;
    eprintln!(
        "{}: {} impostor comparisons; raw score at FMR 1e-3: {:.4}, 1e-4: {:.4}, 1e-5: {:.4}",
        path.display(),
        c.impostor_comparisons,
        c.raw_for_fmr(1e-3),
        c.raw_for_fmr(1e-4),
        c.raw_for_fmr(1e-5)
    );
    Ok(path)
}
