//! `cotejo eval identification`: open-set 1:N on a labelled face set
//! (ISO/IEC 19795-1 style, as in the data README): the gallery is the first
//! image of every identity that has at least two; mated probes are their
//! other images; non-mated probes are the identities with a single image.
//!
//! Besides rank-1 and FNIR at empirical FPIR thresholds, it checks the
//! service's calibrated decisions: asked for a target FPIR, the service
//! thresholds at FMR = FPIR / N; the observed FPIR must come out close to the
//! target. Checked twice: with the stored calibration (made on this same
//! set, so in-sample) and with a calibration made on half of the identities
//! and applied to the protocol on the other half (held out).

use std::{collections::HashMap, path::Path};

use serde_json::{Value, json};

use super::{embed_all, pipeline, read_labels};
use crate::{calibration::Calibration, config::Config, engine::FaceModel, face::embed::cosine};

type Embedded<'a> = (&'a str, &'a Vec<f32>);

/// The open-set protocol's scores.
struct OpenSet {
    gallery: usize,
    mated: usize,
    non_mated: usize,
    /// Per mated probe: (score of the mate, mate is at rank 1).
    mated_results: Vec<(f32, bool)>,
    /// Per non-mated probe: its best score, descending.
    non_mated_top: Vec<f32>,
}

impl OpenSet {
    fn run(kept: &[Embedded<'_>]) -> Self {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for (id, _) in kept {
            *count.entry(id).or_default() += 1;
        }
        let (mut gallery, mut mated, mut non_mated) = (Vec::new(), Vec::new(), Vec::new());
        let mut in_gallery: HashMap<&str, usize> = HashMap::new();
        for (id, v) in kept {
            if count[id] < 2 {
                non_mated.push(*v);
            } else if in_gallery.contains_key(id) {
                mated.push((*id, *v));
            } else {
                in_gallery.insert(id, gallery.len());
                gallery.push((*id, *v));
            }
        }
        let mated_results = mated
            .iter()
            .map(|(id, p)| {
                let mate = cosine(p, gallery[in_gallery[id]].1);
                let best_other = gallery
                    .iter()
                    .filter(|(g, _)| g != id)
                    .map(|(_, g)| cosine(p, g))
                    .fold(f32::NEG_INFINITY, f32::max);
                (mate, mate > best_other)
            })
            .collect();
        let mut non_mated_top: Vec<f32> = non_mated
            .iter()
            .map(|p| gallery.iter().map(|(_, g)| cosine(p, g)).fold(f32::NEG_INFINITY, f32::max))
            .collect();
        non_mated_top.sort_by(|a, b| b.total_cmp(a));
        Self { gallery: gallery.len(), mated: mated.len(), non_mated: non_mated.len(), mated_results, non_mated_top }
    }

    fn rank1(&self) -> f64 {
        self.mated_results.iter().filter(|r| r.1).count() as f64 / self.mated_results.len().max(1) as f64
    }

    /// (observed FPIR, FNIR) at a cosine threshold.
    fn at(&self, t: f32) -> (f64, f64) {
        let fpir = self.non_mated_top.iter().filter(|&&s| s >= t).count() as f64 / self.non_mated.max(1) as f64;
        // A mated search fails when its mate is not at rank 1 with a score >= t.
        let misses = self.mated_results.iter().filter(|(s, r1)| !r1 || *s < t).count();
        (fpir, misses as f64 / self.mated_results.len().max(1) as f64)
    }

    /// The service's decisions from a calibration, for targets 1% and 0.1%.
    fn calibrated(&self, cal: &Calibration) -> Vec<Value> {
        [0.01, 0.001]
            .iter()
            .map(|&fpir| {
                let fmr = fpir / self.gallery.max(1) as f64;
                let t = cal.raw_for_fmr(fmr) as f32;
                let (observed, fnir) = self.at(t);
                json!({"asked_fpir": fpir, "per_comparison_fmr": fmr, "threshold_db": -10.0 * fmr.log10(),
                       "threshold_cosine": t, "observed_fpir": observed, "fnir": fnir})
            })
            .collect()
    }
}

/// Runs the protocol and prints one JSON object.
pub fn identification(config: &Config, data: &Path, threads: usize) -> anyhow::Result<()> {
    let (manifest, settings) = pipeline(config)?;
    let images = read_labels(data)?;
    let embedded = embed_all(&manifest, settings, &images, false, threads)?;
    let failures = embedded.iter().filter(|e| e.is_err()).count();
    let kept: Vec<Embedded<'_>> =
        images.iter().zip(&embedded).filter_map(|(i, e)| e.as_ref().ok().map(|v| (i.identity.as_str(), v))).collect();
    let all = OpenSet::run(&kept);
    let at_fpir: Vec<_> = [0.01, 0.001]
        .iter()
        .map(|&fpir| {
            // Smallest threshold at which at most `fpir` of non-mated searches
            // return any candidate.
            let allowed = (fpir * all.non_mated_top.len() as f64).floor() as usize;
            let t = all.non_mated_top.get(allowed).map_or(f32::NEG_INFINITY, |s| s.next_up());
            let (observed, fnir) = all.at(t);
            json!({"target_fpir": fpir, "threshold": t, "observed_fpir": observed, "fnir": fnir})
        })
        .collect();
    let model = FaceModel::new(&manifest, settings.flip_average);
    let cal_path = config.models.calibration_dir.join(Calibration::file_name(&model.id));
    let in_sample = match Calibration::load(&cal_path) {
        Ok(cal) => json!({"calibration": cal_path.display().to_string(), "source": cal.source,
                          "decisions": all.calibrated(&cal)}),
        Err(e) => json!({"error": e.to_string()}),
    };
    let held_out = held_out(&kept, &model.id)?;
    let out = json!({
        "data": data.display().to_string(),
        "model": manifest.face_embedder.id,
        "flip_average": settings.flip_average,
        "images": images.len(),
        "detection_failures": failures,
        "gallery": all.gallery,
        "mated_probes": all.mated,
        "non_mated_probes": all.non_mated,
        "rank1": all.rank1(),
        "at_fpir": at_fpir,
        "service_decisions_stored_calibration_in_sample": in_sample,
        "service_decisions_held_out_calibration": held_out,
        "fnir_definition": "mate not at rank 1 or its score below the threshold",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Calibrates on the identities of one half (by a stable hash of the name)
/// and runs the protocol on the other half with those thresholds.
fn held_out(kept: &[Embedded<'_>], model_id: &str) -> anyhow::Result<Value> {
    let half = |id: &str| {
        id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)) % 2
    };
    let (a, b): (Vec<Embedded<'_>>, Vec<Embedded<'_>>) = kept.iter().partition(|(id, _)| half(id) == 0);
    let mut impostors = Vec::new();
    for (i, (ia, va)) in a.iter().enumerate() {
        for (ib, vb) in &a[i + 1..] {
            if ia != ib {
                impostors.push(f64::from(cosine(va, vb)));
            }
        }
    }
    let cal = Calibration::from_scores(model_id, "face", "cosine", "half A of the identities", &impostors, 0)?;
    let b_set = OpenSet::run(&b);
    Ok(json!({"calibrated_on": {"images": a.len(), "impostor_pairs": impostors.len()},
              "evaluated_on": {"gallery": b_set.gallery, "mated_probes": b_set.mated, "non_mated_probes": b_set.non_mated,
                               "rank1": b_set.rank1()},
              "decisions": b_set.calibrated(&cal)}))
}
