//! `cotejo eval identification`: open-set 1:N on a labelled face set
//! (ISO/IEC 19795-1 style, as in the data README): the gallery is the first
//! image of every identity that has at least two; mated probes are their
//! other images; non-mated probes are the identities with a single image.

use std::{collections::HashMap, path::Path};

use serde_json::json;

use super::{embed_all, pipeline, read_labels};
use crate::config::Config;

/// Runs the protocol and prints one JSON object.
pub fn identification(config: &Config, data: &Path, threads: usize) -> anyhow::Result<()> {
    let (manifest, settings) = pipeline(config)?;
    let images = read_labels(data)?;
    let embedded = embed_all(&manifest, settings, &images, false, threads)?;
    let failures = embedded.iter().filter(|e| e.is_err()).count();
    let kept: Vec<(&str, &Vec<f32>)> =
        images.iter().zip(&embedded).filter_map(|(i, e)| e.as_ref().ok().map(|v| (i.identity.as_str(), v))).collect();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &kept {
        *count.entry(id).or_default() += 1;
    }
    let (mut gallery, mut mated, mut non_mated) = (Vec::new(), Vec::new(), Vec::new());
    let mut in_gallery: HashMap<&str, usize> = HashMap::new();
    for (id, v) in &kept {
        if count[id] < 2 {
            non_mated.push(*v);
        } else if in_gallery.contains_key(id) {
            mated.push((*id, *v));
        } else {
            in_gallery.insert(id, gallery.len());
            gallery.push((*id, *v));
        }
    }
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    // Per mated probe: (score of the mate, mate is at rank 1).
    let mated_results: Vec<(f32, bool)> = mated
        .iter()
        .map(|(id, p)| {
            let mate = dot(p, gallery[in_gallery[id]].1);
            let best_other =
                gallery.iter().filter(|(g, _)| g != id).map(|(_, g)| dot(p, g)).fold(f32::NEG_INFINITY, f32::max);
            (mate, mate > best_other)
        })
        .collect();
    let mut non_mated_top: Vec<f32> =
        non_mated.iter().map(|p| gallery.iter().map(|(_, g)| dot(p, g)).fold(f32::NEG_INFINITY, f32::max)).collect();
    non_mated_top.sort_by(|a, b| b.total_cmp(a));
    let rank1 = mated_results.iter().filter(|r| r.1).count() as f64 / mated_results.len().max(1) as f64;
    let at_fpir: Vec<_> = [0.01, 0.001]
        .iter()
        .map(|&fpir| {
            // Smallest threshold at which at most `fpir` of non-mated searches
            // return any candidate.
            let allowed = (fpir * non_mated_top.len() as f64).floor() as usize;
            let t = non_mated_top.get(allowed).map_or(f32::NEG_INFINITY, |s| s.next_up());
            let observed = non_mated_top.iter().filter(|&&s| s >= t).count() as f64 / non_mated_top.len().max(1) as f64;
            // A mated search fails when its mate is not at rank 1 with a score >= t.
            let misses = mated_results.iter().filter(|(s, r1)| !r1 || *s < t).count();
            json!({"target_fpir": fpir, "threshold": t, "observed_fpir": observed,
                   "fnir": misses as f64 / mated_results.len().max(1) as f64})
        })
        .collect();
    let out = json!({
        "data": data.display().to_string(),
        "model": manifest.face_embedder.id,
        "flip_average": settings.flip_average,
        "images": images.len(),
        "detection_failures": failures,
        "gallery": gallery.len(),
        "mated_probes": mated.len(),
        "non_mated_probes": non_mated.len(),
        "rank1": rank1,
        "at_fpir": at_fpir,
        "fnir_definition": "mate not at rank 1 or its score below the threshold",
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
