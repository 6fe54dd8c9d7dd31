//! `cotejo eval fingers`: fingerprint verification accuracy on FVC-style
//! sets (folders `DB*/` with `NNN_I.tif` and `.iso` beside them), per DB,
//! with the FVC protocol and an all-pairs impostor variant.

use std::{collections::BTreeMap, path::Path, time::Instant};

use anyhow::Context;
use serde_json::json;

use super::{metrics, par_map, read_labels};
use crate::{
    config::Config,
    finger::{
        aspect::{self, Hypotheses, Stretched},
        iso19794_2, mcc,
        minutiae::Extractor,
        template,
    },
    inference,
};

/// Where the minutiae come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FingerSource {
    /// The `.iso` templates beside the images (the matcher alone).
    Iso,
    /// The `.iso` templates, each rescaled from the frame its header declares
    /// to the pixel size of the image beside it (a diagnostic: FVC2002's
    /// templates all declare 300×400 whatever the image size).
    IsoImageFrame,
    /// The images, through the LEADER extractor.
    Images,
}

struct Print {
    db: String,
    finger: String,
    impression: u32,
    /// The template as declared and with y scaled by each aspect factor (directions with it).
    hypotheses: Hypotheses,
}

/// What `cotejo eval fingers` runs.
#[derive(Debug, Clone)]
pub struct FingerEval<'a> {
    /// FVC-style folder with LABELS.txt.
    pub data: &'a Path,
    pub source: FingerSource,
    /// Extraction threads.
    pub threads: usize,
    /// Also write every comparison to this TSV file.
    pub scores_tsv: Option<&'a Path>,
    /// Other aspect factors than the service's (a diagnostic; empty: the service's).
    pub aspects: &'a [f32],
    /// Compare in the declared frame alone (the matcher without hypotheses).
    pub declared_only: bool,
    /// With [`FingerSource::Images`]: also write each print's LEADER minutiae
    /// as an ISO/IEC 19794-2 template under this folder, at the image's path
    /// relative to `data` with the extension `.iso` (as the service stores
    /// them; `benches/finger_identify.rs --templates` reads such a folder).
    pub export_iso: Option<&'a Path>,
}

/// Runs the evaluation and prints one JSON object.
///
/// Each pair is scored as the service scores it: the best over the declared
/// frame and both templates' y axis scaled by each of the matcher's aspect
/// factors ([`aspect::FACTORS`]). `aspects` replaces those factors (a
/// diagnostic); `declared_only` compares in the declared frame alone (the
/// matcher without hypotheses).
pub fn fingers(config: &Config, run: &FingerEval<'_>) -> anyhow::Result<()> {
    let FingerEval { data, source, threads, scores_tsv, aspects, declared_only, export_iso } = *run;
    if export_iso.is_some() && source != FingerSource::Images {
        anyhow::bail!("--export-iso needs --source images (it writes the extractor's minutiae)");
    }
    if let Some(bad) = aspects.iter().find(|a| !(a.is_finite() && **a > 0.0)) {
        anyhow::bail!("--aspects: {bad} is not a positive scale factor");
    }
    let aspects: &[f32] = match (declared_only, aspects.is_empty()) {
        (true, true) => &[],
        (true, false) => anyhow::bail!("--aspects and --declared-only exclude each other"),
        (false, true) => &aspect::FACTORS,
        (false, false) => aspects,
    };
    let labels = read_labels(data)?;
    let started = Instant::now();
    let minutiae = match source {
        FingerSource::Iso | FingerSource::IsoImageFrame => labels
            .iter()
            .map(|l| iso_minutiae(&l.path, source == FingerSource::IsoImageFrame))
            .collect::<anyhow::Result<Vec<Vec<mcc::Minutia>>>>()?,
        FingerSource::Images => extract_all(config, data, &labels, threads, export_iso)?,
    };
    let extract_secs = started.elapsed().as_secs_f64();
    let mut prints = Vec::new();
    for (l, m) in labels.iter().zip(&minutiae) {
        let rel = l.path.strip_prefix(data).unwrap_or(&l.path);
        let db = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let stem = l.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let impression = stem.rsplit('_').next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let hypotheses = Hypotheses { declared: mcc::Template::new(m), stretched: Stretched::with_factors(m, aspects) };
        prints.push(Print { db, finger: l.identity.clone(), impression, hypotheses });
    }
    let mut by_db: BTreeMap<&str, Vec<&Print>> = BTreeMap::new();
    for p in &prints {
        by_db.entry(p.db.as_str()).or_default().push(p);
    }
    let mut matcher = mcc::Matcher::new();
    let mut comparisons = 0usize;
    let t = Instant::now();
    let mut dbs = Vec::new();
    let mut tsv = String::from("db\tfinger_a\timpression_a\tfinger_b\timpression_b\tscore\n");
    for (db, ps) in &by_db {
        let (mut genuine, mut fvc_impostor, mut all_impostor) = (Vec::new(), Vec::new(), Vec::new());
        for (i, a) in ps.iter().enumerate() {
            for b in &ps[i + 1..] {
                let s = a.hypotheses.similarity(&b.hypotheses, &mut matcher);
                comparisons += 1 + a.hypotheses.stretched.len();
                if scores_tsv.is_some() {
                    tsv.push_str(&format!(
                        "{db}\t{}\t{}\t{}\t{}\t{s}\n",
                        a.finger, a.impression, b.finger, b.impression
                    ));
                }
                if a.finger == b.finger {
                    genuine.push(s);
                } else {
                    all_impostor.push(s);
                    if a.impression == 1 && b.impression == 1 {
                        fvc_impostor.push(s);
                    }
                }
            }
        }
        let row = |imp: &[f32]| {
            let v = metrics::verification(&genuine, imp, &[0.01, 0.001]);
            json!({"genuine": v.genuine, "impostor": v.impostor, "eer": v.eer,
                   "fmr100": v.at_fmr[0].2, "fmr1000": v.at_fmr[1].2, "threshold_fmr1000": v.at_fmr[1].1})
        };
        let minutiae_mean =
            ps.iter().map(|p| p.hypotheses.declared.len()).sum::<usize>() as f64 / ps.len().max(1) as f64;
        dbs.push(json!({"db": db, "prints": ps.len(), "mean_valid_cylinders": minutiae_mean,
                        "fvc_protocol": row(&fvc_impostor), "all_pairs_impostor": row(&all_impostor)}));
    }
    let match_secs = t.elapsed().as_secs_f64();
    if let Some(path) = scores_tsv {
        std::fs::write(path, tsv).with_context(|| path.display().to_string())?;
    }
    let out = json!({
        "data": data.display().to_string(),
        "source": format!("{source:?}").to_lowercase(),
        "matcher": if aspects.is_empty() {
            "MCC-16b, LSS-R with one-to-one pairing, declared frame only".to_owned()
        } else {
            format!("MCC-16b, LSS-R with one-to-one pairing, best of the declared frame and y scaled by {aspects:?}")
        },
        "aspects": aspects,
        "databases": dbs,
        "extraction_seconds": extract_secs,
        "comparisons": comparisons,
        "comparisons_per_second_one_core": comparisons as f64 / match_secs,
        "fmr100": "FNMR at FMR 1%", "fmr1000": "FNMR at FMR 0.1%",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The minutiae of the `.iso` template beside `image`, in the template's own
/// frame or (`image_frame`) scaled per axis to the image's pixel size.
///
/// Scaling both axes maps a direction `(cos θ, sin θ)` to `(sx cos θ, sy sin θ)`.
fn iso_minutiae(image: &Path, image_frame: bool) -> anyhow::Result<Vec<mcc::Minutia>> {
    let bytes = std::fs::read(image.with_extension("iso"))?;
    let rec = iso19794_2::parse(&bytes).with_context(|| image.display().to_string())?;
    let (sx, sy) = if image_frame {
        let (w, h) = image::image_dimensions(image).with_context(|| image.display().to_string())?;
        (w as f32 / f32::from(rec.width.max(1)), h as f32 / f32::from(rec.height.max(1)))
    } else {
        (1.0, 1.0)
    };
    let minutiae: Vec<mcc::Minutia> =
        rec.views.first().map(|v| v.minutiae.iter().map(mcc::Minutia::from).collect()).unwrap_or_default();
    Ok(aspect::scale_axes(&minutiae, sx, sy))
}

/// LEADER minutiae of every image, `threads` extractors in parallel; each
/// also written as a stored-form ISO template under `export` when given.
fn extract_all(
    config: &Config,
    data: &Path,
    labels: &[super::LabelledImage],
    threads: usize,
    export: Option<&Path>,
) -> anyhow::Result<Vec<Vec<mcc::Minutia>>> {
    let manifest = inference::load_models(&config.models)?;
    let spec =
        manifest.finger_extractor.clone().context("the manifest has no finger extractor (run models/fetch.sh)")?;
    let model = manifest.path(&spec.file);
    let env = inference::runtime()?;
    par_map(
        labels,
        threads,
        "extracted",
        || Ok(Extractor::load(env, &model, 1)?),
        |x, l| {
            let img = image::open(&l.path).with_context(|| l.path.display().to_string())?.into_luma8();
            let found = x.extract(&img)?;
            if let Some(dir) = export {
                let rel = l.path.strip_prefix(data).unwrap_or(&l.path).with_extension("iso");
                let out = dir.join(rel);
                // The view quality is the pipeline's (ridge energy); not assessed here.
                let iso = template::from_extraction(0, img.width(), img.height(), &found, 0.0)?;
                if let Some(parent) = out.parent() {
                    std::fs::create_dir_all(parent).with_context(|| parent.display().to_string())?;
                }
                std::fs::write(&out, iso).with_context(|| out.display().to_string())?;
            }
            Ok(found.iter().map(|m| mcc::Minutia { x: m.x, y: m.y, angle: m.angle }).collect())
        },
    )
}
