//! Printing responses: a few readable lines, or one JSON object.

use serde_json::{Value, json};

use crate::api::pb;

fn modality(m: i32) -> &'static str {
    match pb::Modality::try_from(m) {
        Ok(pb::Modality::Face) => "face",
        Ok(pb::Modality::Finger) => "finger",
        _ => "unspecified",
    }
}

fn emit(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn samples_json(s: &[pb::SampleResult]) -> Value {
    s.iter()
        .map(|r| {
            json!({
                "modality": modality(r.modality),
                "finger_position": r.finger_position,
                "model_id": r.model_id,
                "quality": r.quality,
                "faces_found": r.faces_found,
                "main_face_used": r.main_face_used,
                "face_box": r.face_box.as_ref().map(|b| [b.x1, b.y1, b.x2, b.y2]),
            })
        })
        .collect()
}

fn scores_json(s: &[pb::ModalityScore]) -> Value {
    s.iter()
        .map(|m| json!({"modality": modality(m.modality), "finger_position": m.finger_position, "model_id": m.model_id, "raw_score": m.raw_score, "calibrated_score": m.calibrated_score}))
        .collect()
}

fn decision_json(d: Option<&pb::Decision>) -> (bool, Value) {
    let d = d.cloned().unwrap_or_default();
    (
        d.is_match,
        json!({"match": d.is_match, "threshold": d.threshold, "threshold_fmr": d.threshold_fmr, "threshold_basis": d.threshold_basis, "subject_id": d.subject_id}),
    )
}

pub(super) fn enroll(as_json: bool, r: &pb::EnrollResponse) -> anyhow::Result<()> {
    if as_json {
        return emit(
            &json!({"subject_id": r.subject_id, "encounter_id": r.encounter_id, "samples": samples_json(&r.samples),
                "replayed": r.replayed}),
        );
    }
    let replayed = if r.replayed { "; already done: the first answer to this request id" } else { "" };
    println!("enrolled {} (encounter {}{replayed})", r.subject_id, r.encounter_id);
    for s in &r.samples {
        let note = if s.main_face_used { format!(", main face of {}", s.faces_found) } else { String::new() };
        let what = match s.finger_position {
            0 => modality(s.modality).to_owned(),
            p => format!("finger {p} ({} minutiae)", s.minutiae),
        };
        println!("  {what} quality {:.2} model {}{note}", s.quality, s.model_id);
    }
    Ok(())
}

pub(super) fn identify(as_json: bool, r: &pb::IdentifyResponse) -> anyhow::Result<()> {
    let (matched, decision) = decision_json(r.decision.as_ref());
    if as_json {
        let candidates: Vec<Value> = r
            .candidates
            .iter()
            .map(|c| json!({"subject_id": c.subject_id, "score": c.score, "scores": scores_json(&c.scores)}))
            .collect();
        return emit(
            &json!({"decision": matched, "decision_detail": decision, "candidates": candidates, "probes": samples_json(&r.probes)}),
        );
    }
    let d = r.decision.clone().unwrap_or_default();
    if matched {
        println!("MATCH: {} (score {:.3} >= threshold {:.3})", d.subject_id, r.candidates[0].score, d.threshold);
    } else {
        println!("NO MATCH (threshold {:.3})", d.threshold);
    }
    println!("  threshold: {}", d.threshold_basis);
    for p in r.probes.iter().filter(|p| p.main_face_used) {
        println!("  note: {} faces in the probe; the main face was used", p.faces_found);
    }
    for (i, c) in r.candidates.iter().enumerate() {
        let parts: Vec<String> = c
            .scores
            .iter()
            .map(|m| match m.finger_position {
                0 => format!("face {:.3} -> {:.1}", m.raw_score, m.calibrated_score),
                p => format!("finger {p} {:.3} -> {:.1}", m.raw_score, m.calibrated_score),
            })
            .collect();
        println!("  {:>3}. {:<32} {:6.2}  ({})", i + 1, c.subject_id, c.score, parts.join(", "));
    }
    Ok(())
}

pub(super) fn verify(as_json: bool, r: &pb::VerifyResponse) -> anyhow::Result<()> {
    let (matched, decision) = decision_json(r.decision.as_ref());
    if as_json {
        return emit(
            &json!({"decision": matched, "decision_detail": decision, "score": r.score, "scores": scores_json(&r.scores)}),
        );
    }
    let d = r.decision.clone().unwrap_or_default();
    let verdict = if matched { "MATCH" } else { "NO MATCH" };
    println!("{verdict}: score {:.4}, threshold {:.3} ({})", r.score, d.threshold, d.threshold_basis);
    Ok(())
}

pub(super) fn delete(as_json: bool, r: &pb::DeleteResponse) -> anyhow::Result<()> {
    if as_json {
        return emit(&json!({"subject_id": r.subject_id, "templates_removed": r.templates_removed}));
    }
    println!("deleted {} ({} templates)", r.subject_id, r.templates_removed);
    Ok(())
}

/// A Timestamp as milliseconds since the Unix epoch (unset: 0).
fn unix_ms(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
}

/// One page of `cotejo subjects`: a line (or a JSON line) per subject.
pub(super) fn subject_page(as_json: bool, subjects: &[pb::SubjectSummary]) -> anyhow::Result<()> {
    for s in subjects {
        if as_json {
            println!(
                "{}",
                json!({"subject_id": s.subject_id, "created_unix_ms": unix_ms(s.create_time.as_ref()),
                       "encounters": s.encounters, "templates": s.templates, "watchlists": s.watchlists})
            );
        } else {
            let lists = if s.watchlists.is_empty() { String::new() } else { format!(" [{}]", s.watchlists.join(", ")) };
            println!("{} {} encounters, {} templates{lists}", s.subject_id, s.encounters, s.templates);
        }
    }
    Ok(())
}

pub(super) fn subject(as_json: bool, r: &pb::Subject) -> anyhow::Result<()> {
    let encounters: Vec<Value> = r
        .encounters
        .iter()
        .map(|e| {
            let t: Vec<Value> = e
                .templates
                .iter()
                .map(|t| json!({"modality": modality(t.modality), "finger_position": t.finger_position, "model_id": t.model_id, "quality": t.quality}))
                .collect();
            json!({"encounter_id": e.encounter_id, "created_unix_ms": unix_ms(e.create_time.as_ref()), "templates": t})
        })
        .collect();
    if as_json {
        return emit(&json!({"subject_id": r.subject_id, "created_unix_ms": unix_ms(r.create_time.as_ref()),
                    "watchlists": r.watchlists, "encounters": encounters}));
    }
    println!("subject {} ({} encounters)", r.subject_id, r.encounters.len());
    for e in &r.encounters {
        println!("  encounter {}: {} templates", e.encounter_id, e.templates.len());
    }
    Ok(())
}

pub(super) fn stats(as_json: bool, r: &pb::StatsResponse) -> anyhow::Result<()> {
    let templates: Vec<Value> = r
        .templates
        .iter()
        .map(|t| json!({"modality": modality(t.modality), "model_id": t.model_id, "count": t.count}))
        .collect();
    let face: u64 = r.templates.iter().filter(|t| t.modality == pb::Modality::Face as i32).map(|t| t.count).sum();
    let finger: u64 = r.templates.iter().filter(|t| t.modality == pb::Modality::Finger as i32).map(|t| t.count).sum();
    if as_json {
        let models: Vec<Value> = r
            .models
            .iter()
            .map(|m| json!({"model_id": m.model_id, "modality": modality(m.modality), "dimension": m.dimension, "sha256": m.sha256}))
            .collect();
        return emit(
            &json!({"subjects": r.subjects, "encounters": r.encounters, "face_templates": face, "finger_templates": finger, "templates": templates, "models": models,
                "face_index": r.face_index.as_ref().map(|i| json!({"kind": i.kind, "approximate": i.approximate, "state": i.state}))}),
        );
    }
    println!("subjects {}  encounters {}  face templates {face}  finger templates {finger}", r.subjects, r.encounters);
    for m in &r.models {
        match m.dimension {
            0 => println!("  model {} ({} minutiae)", m.model_id, modality(m.modality)),
            d => println!("  model {} ({}, {d} dims)", m.model_id, modality(m.modality)),
        }
    }
    if let Some(i) = &r.face_index {
        println!("  face index: {}{}", i.state, if i.approximate { " (approximate)" } else { "" });
    }
    Ok(())
}

pub(super) fn export(
    as_json: bool,
    subject: &str,
    written: &[(std::path::PathBuf, &pb::ExportedTemplate)],
) -> anyhow::Result<()> {
    if as_json {
        let files: Vec<Value> = written
            .iter()
            .map(|(p, t)| {
                json!({"file": p.display().to_string(), "finger_position": t.finger_position,
                                 "encounter_id": t.encounter_id, "model_id": t.model_id, "quality": t.quality})
            })
            .collect();
        return emit(&json!({"subject_id": subject, "templates": files}));
    }
    println!("{} finger template(s) of {subject}", written.len());
    for (p, t) in written {
        println!("  finger {} encounter {} -> {}", t.finger_position, t.encounter_id, p.display());
    }
    Ok(())
}
