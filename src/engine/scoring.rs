//! From raw comparison scores to calibrated, fused candidate scores and
//! decisions. A candidate has one score component per face and per finger
//! position: the best raw score of the probes of that kind against its
//! templates of that kind. Each component is calibrated to -10 log10(FMR)
//! and the components are fused as independent evidence (Fisher's method).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, RwLock},
};

use super::{Candidate, Decision, Engine, EngineError, ModalityScore, probe::Probe};
use crate::{
    biometric::{Modality, StoredTemplate, TemplateData},
    calibration::{Calibration, MAX_DB, MIN_FMR, fuse_db},
    face::embed::cosine,
    finger::{
        aspect::Hypotheses,
        index::{FingerIndex, parallel_map},
        mcc::{Matcher, Template},
        template,
    },
};

/// The calibrations decisions use: one per matcher.
#[derive(Debug, Clone)]
pub struct Calibrations {
    pub(super) face: Calibration,
    pub(super) finger: Calibration,
}

impl Calibrations {
    /// Loads the calibrations of the face model and the finger matcher from `dir`.
    pub fn load(dir: &Path, face_model_id: &str) -> Result<Self, EngineError> {
        let one = |id: &str| Calibration::load(&dir.join(Calibration::file_name(id)));
        Ok(Self { face: one(face_model_id)?, finger: one(template::MATCHER_ID)? })
    }

    fn of(&self, m: Modality) -> &Calibration {
        match m {
            Modality::Face => &self.face,
            Modality::Finger => &self.finger,
        }
    }
}

/// One score component of a candidate: a face, or one finger position.
pub(super) type Component = (Modality, u8);

/// A candidate's best raw score per component.
pub(super) type RawScores = BTreeMap<Component, f64>;

/// The probes of a request, ready to compare.
#[derive(Debug, Default)]
pub(super) struct ProbeSet {
    pub(super) faces: Vec<Vec<f32>>,
    pub(super) fingers: BTreeMap<u8, Vec<Hypotheses>>,
}

impl ProbeSet {
    pub(super) fn new(probes: &[Probe]) -> Result<Self, EngineError> {
        let mut set = Self::default();
        for p in probes {
            match &p.template.data {
                TemplateData::Embedding(v) => set.faces.push(v.clone()),
                TemplateData::Minutiae(iso) => {
                    let t = template::matcher_hypotheses(iso)
                        .map_err(|e| EngineError::Internal(format!("probe template does not parse: {e}")))?;
                    set.fingers.entry(p.template.finger_position).or_default().push(t);
                }
            }
        }
        Ok(set)
    }

    /// The components this probe set can score.
    pub(super) fn components(&self) -> Vec<Component> {
        let face = (!self.faces.is_empty()).then_some((Modality::Face, 0));
        face.into_iter().chain(self.fingers.keys().map(|p| (Modality::Finger, *p))).collect()
    }
}

/// The finger index's MCC templates for those of `templates` that the
/// probes can be compared with (same finger position), by template id.
///
/// Taken under the gallery's read lock, which is released before any
/// comparison; a template the gallery does not hold (one enrolled or deleted
/// meanwhile) is simply absent and [`score_stored`] builds it from its record.
pub(super) fn indexed_finger_templates(
    fingers: &RwLock<FingerIndex>,
    probes: &ProbeSet,
    templates: &[StoredTemplate],
) -> Result<HashMap<i64, Arc<Template>>, EngineError> {
    if probes.fingers.is_empty() {
        return Ok(HashMap::new());
    }
    let f = fingers.read().map_err(|_| EngineError::Internal("finger lock poisoned".into()))?;
    Ok(templates
        .iter()
        .filter(|t| {
            matches!(t.template.data, TemplateData::Minutiae(_))
                && probes.fingers.contains_key(&t.template.finger_position)
        })
        .filter_map(|t| f.template(t.template_id).map(|m| (t.template_id, m)))
        .collect())
}

/// Stored finger templates per probe position that are also compared under
/// the aspect hypotheses: the best by their declared-frame score. A verify or
/// a gallery search's candidates (see `matching`) stay well within it; a
/// search restricted to thousands of subjects does not rebuild thousands of
/// stretched templates.
pub(super) const HYPOTHESIS_TEMPLATES: usize = 128;

/// Raw scores of the probes against stored templates, per subject.
///
/// Finger templates are taken from `cached` (the gallery's, by template id:
/// see [`indexed_finger_templates`]) and otherwise built from their ISO record. The
/// [`HYPOTHESIS_TEMPLATES`] best of each position then get the matcher's
/// aspect hypotheses (`finger::aspect`), built from their records on up to
/// `threads` threads.
pub(super) fn score_stored(
    probes: &ProbeSet,
    templates: &[StoredTemplate],
    face_model_id: &str,
    cached: &HashMap<i64, Arc<Template>>,
    threads: usize,
) -> BTreeMap<String, RawScores> {
    let mut out: BTreeMap<String, RawScores> = BTreeMap::new();
    let mut keep = |subject: &str, component: Component, score: f64| {
        let slot = out.entry(subject.to_owned()).or_default().entry(component).or_insert(f64::NEG_INFINITY);
        *slot = slot.max(score);
    };
    let mut matcher = Matcher::new();
    // Finger templates with their best declared-frame score against the probes.
    let mut fingers: Vec<(&StoredTemplate, &[u8], &[Hypotheses], f32)> = Vec::new();
    for t in templates {
        match &t.template.data {
            TemplateData::Embedding(v) if t.template.model_id == face_model_id && !probes.faces.is_empty() => {
                let best = probes.faces.iter().map(|p| cosine(p, v)).fold(f32::NEG_INFINITY, f32::max);
                keep(&t.subject_id, (Modality::Face, 0), f64::from(best));
            }
            TemplateData::Minutiae(iso) => {
                let Some(ps) = probes.fingers.get(&t.template.finger_position) else { continue };
                let stored = match cached.get(&t.template_id) {
                    Some(m) => m.clone(),
                    None => match template::matcher_template(iso) {
                        Ok(m) => Arc::new(m),
                        Err(_) => continue,
                    },
                };
                let best = ps.iter().map(|p| matcher.similarity(&p.declared, &stored)).fold(0.0f32, f32::max);
                fingers.push((t, iso, ps, best));
            }
            TemplateData::Embedding(_) => {}
        }
    }
    fingers.sort_by(|a, b| b.3.total_cmp(&a.3).then(a.0.template_id.cmp(&b.0.template_id)));
    let mut hypothesised: BTreeMap<u8, usize> = BTreeMap::new();
    let (chosen, rest): (Vec<_>, Vec<_>) = fingers.into_iter().partition(|(t, ..)| {
        let n = hypothesised.entry(t.template.finger_position).or_default();
        *n += 1;
        *n <= HYPOTHESIS_TEMPLATES
    });
    // Building the stretched templates dominates (about 0.5 ms per stored template).
    let rescored = parallel_map(&chosen, threads, |&(_, iso, ps, declared)| match template::matcher_stretched(iso) {
        Ok(stretched) => {
            let mut matcher = Matcher::new();
            ps.iter().map(|p| p.stretched.best(&stretched, &mut matcher)).fold(declared, f32::max)
        }
        Err(_) => declared,
    });
    let rest = rest.into_iter().map(|(t, _, _, declared)| (t, declared));
    for (t, score) in chosen.iter().map(|c| c.0).zip(rescored).chain(rest) {
        keep(&t.subject_id, (Modality::Finger, t.template.finger_position), f64::from(score));
    }
    out
}

/// How far above [`MAX_DB`] a threshold may come from rounding alone
/// (`FPIR / N` for a target of `N * 1e-15`) and still be decided at the cap.
const THRESHOLD_SLACK_DB: f64 = 1e-9;

/// The threshold on the calibrated scale for a per-comparison FMR; one that
/// rounding alone put above the cap is the cap (any stricter is refused
/// beforehand by `Engine::decidable`).
pub(super) fn threshold_db(fmr: f64) -> f64 {
    let t = -10.0 * fmr.log10();
    if t <= MAX_DB + THRESHOLD_SLACK_DB { t.min(MAX_DB) } else { t }
}

/// A candidate with calibrated per-component scores and their fusion.
pub(super) fn candidate(
    calibrations: &Calibrations,
    face_model_id: &str,
    subject_id: String,
    raw: &RawScores,
) -> Candidate {
    let scores: Vec<ModalityScore> = raw
        .iter()
        .map(|(&(modality, finger_position), &raw_score)| ModalityScore {
            modality,
            finger_position,
            model_id: match modality {
                Modality::Face => face_model_id.to_owned(),
                Modality::Finger => template::MATCHER_ID.to_owned(),
            },
            raw_score,
            calibrated_score: calibrations.of(modality).db(raw_score),
        })
        .collect();
    let dbs: Vec<f64> = scores.iter().map(|s| s.calibrated_score).collect();
    Candidate { subject_id, score: fuse_db(&dbs), scores }
}

impl Engine {
    /// A candidate with calibrated per-component scores and their fusion.
    pub(super) fn candidate(&self, subject_id: String, raw: &RawScores) -> Candidate {
        candidate(&self.calibrations, &self.face_model.id, subject_id, raw)
    }

    /// The target of a request, or the default; must be a rate in (0, 1).
    pub(super) fn target(field: &str, asked: f64, default: f64) -> Result<f64, EngineError> {
        if asked == 0.0 {
            return Ok(default);
        }
        if !(asked > 0.0 && asked < 1.0) {
            return Err(EngineError::invalid(
                "INVALID_TARGET_RATE",
                field,
                "must be a rate in (0, 1), or 0 for the service default",
            ));
        }
        Ok(asked)
    }

    /// Refuses a per-comparison FMR whose threshold lies above [`MAX_DB`],
    /// where no score (fused ones neither) can reach it: a decision there
    /// would be "no match" whatever the evidence. `asked` names the request's
    /// target; `scale` is how many comparisons it is shared over (1 for a
    /// per-comparison target), to say what would be decidable.
    pub(super) fn decidable(field: &str, asked: &str, fmr: f64, scale: u64) -> Result<(), EngineError> {
        let threshold = -10.0 * fmr.log10();
        if threshold <= MAX_DB + THRESHOLD_SLACK_DB {
            return Ok(());
        }
        let least = MIN_FMR * scale.max(1) as f64;
        Err(EngineError::invalid(
            "UNDECIDABLE_TARGET",
            field,
            format!(
                "{asked} needs a threshold of {threshold:.2}, above {MAX_DB}, the top of the calibrated scale \
                 (FMR {MIN_FMR:e}): no comparison could match; ask for {least:.1e} or more"
            ),
        ))
    }

    /// The decision on the best candidate of a search over `n` subjects.
    pub(super) fn decide_identify(&self, best: Option<&Candidate>, target_fpir: f64, n: u64) -> Decision {
        let n = n.max(1);
        let fmr = target_fpir / n as f64;
        let threshold = threshold_db(fmr);
        let is_match = best.is_some_and(|c| c.score >= threshold);
        let basis = format!(
            "target FPIR {target_fpir} over {n} subject(s) searched: per-comparison FMR {fmr:.3e}, threshold {threshold:.2} \
             on the fused calibrated score -10*log10(FMR){}",
            self.provenance(best.map(|c| &c.scores[..]).unwrap_or_default())
        );
        Decision {
            is_match,
            threshold,
            threshold_fmr: fmr,
            basis,
            subject_id: best.filter(|_| is_match).map(|c| c.subject_id.clone()),
        }
    }

    /// The decision of a 1:1 comparison.
    pub(super) fn decide_verify(&self, c: &Candidate, target_fmr: f64) -> Decision {
        let threshold = threshold_db(target_fmr);
        let is_match = c.score >= threshold;
        let basis = format!(
            "target FMR {target_fmr}: threshold {threshold:.2} on the fused calibrated score -10*log10(FMR){}",
            self.provenance(&c.scores)
        );
        Decision {
            is_match,
            threshold,
            threshold_fmr: target_fmr,
            basis,
            subject_id: is_match.then(|| c.subject_id.clone()),
        }
    }

    /// Which calibrations the scores rest on, and whether any was extrapolated.
    fn provenance(&self, scores: &[ModalityScore]) -> String {
        let mut out = String::new();
        for m in [Modality::Face, Modality::Finger] {
            let of_m: Vec<&ModalityScore> = scores.iter().filter(|s| s.modality == m).collect();
            if of_m.is_empty() {
                continue;
            }
            let c = self.calibrations.of(m);
            let beyond = of_m.iter().any(|s| c.extrapolated(s.raw_score));
            out.push_str(&format!(
                "; {m} calibration: {} impostor comparisons ({}){}",
                c.impostor_comparisons,
                c.source,
                if beyond { ", score beyond the measured range (extrapolated tail)" } else { "" }
            ));
        }
        if scores.len() > 1 {
            out.push_str("; components fused with Fisher's method");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        biometric::NewTemplate,
        finger::{
            index::FingerIndexSettings,
            iso19794_2::{self, IsoMinutia, MinutiaKind},
        },
    };

    /// A stored one-view finger record of 36 pseudo-random minutiae.
    fn stored(template_id: i64, subject: &str, position: u8, seed: u64) -> StoredTemplate {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            u16::try_from(state % m).unwrap_or(0)
        };
        let minutiae = (0..36)
            .map(|_| IsoMinutia {
                kind: MinutiaKind::RidgeEnding,
                x: 20 + next(260),
                y: 20 + next(360),
                angle: u8::try_from(next(256)).unwrap_or(0),
                quality: 60,
            })
            .collect();
        let bytes = iso19794_2::write(&template::one_view_record(position, 300, 400, 80, minutiae)).unwrap_or_default();
        StoredTemplate {
            template_id,
            subject_id: subject.to_owned(),
            encounter_id: 1,
            template: NewTemplate {
                modality: Modality::Finger,
                finger_position: position,
                model_id: "test".to_owned(),
                quality: 0.8,
                data: TemplateData::Minutiae(bytes),
            },
        }
    }

    fn minutiae_of(t: &StoredTemplate) -> &[u8] {
        match &t.template.data {
            TemplateData::Minutiae(b) => b,
            TemplateData::Embedding(_) => &[],
        }
    }

    #[test]
    fn gallery_templates_score_as_the_stored_records_do() {
        let templates = vec![stored(1, "a", 2, 1), stored(2, "b", 2, 2), stored(3, "b", 7, 3)];
        let probe = template::matcher_hypotheses(minutiae_of(&templates[0])).unwrap_or_default();
        assert!(!probe.declared.is_empty());
        let probes = ProbeSet { faces: vec![], fingers: BTreeMap::from([(2, vec![probe])]) };
        let mut gallery = FingerIndex::new(FingerIndexSettings::default());
        for t in &templates[..2] {
            let m = template::matcher_template(minutiae_of(t)).unwrap_or_default();
            gallery.add(t.template_id, t.subject_id.as_str().into(), t.template.finger_position, m);
        }
        let gallery = RwLock::new(gallery);
        let cached = indexed_finger_templates(&gallery, &probes, &templates).unwrap_or_default();
        // Position 7 has no probe: not looked up.
        assert_eq!(cached.keys().copied().collect::<std::collections::BTreeSet<_>>(), [1, 2].into());
        let from_records = score_stored(&probes, &templates, "face", &HashMap::new(), 2);
        assert_eq!(score_stored(&probes, &templates, "face", &cached, 1), from_records);
        // A template the gallery lacks is built from its record.
        let partial: HashMap<i64, Arc<Template>> = cached.into_iter().filter(|(id, _)| *id == 1).collect();
        assert_eq!(score_stored(&probes, &templates, "face", &partial, 3), from_records);
        let a = from_records.get("a").and_then(|r| r.get(&(Modality::Finger, 2))).copied().unwrap_or(0.0);
        let b = from_records.get("b").and_then(|r| r.get(&(Modality::Finger, 2))).copied().unwrap_or(1.0);
        assert!(a > 0.5 && b < 0.3, "same record {a}, other record {b}");
    }

    #[test]
    fn the_best_stored_templates_get_the_aspect_hypotheses() {
        let templates: Vec<StoredTemplate> =
            (0..HYPOTHESIS_TEMPLATES as i64 + 20).map(|i| stored(i, &format!("s{i}"), 4, i as u64 + 100)).collect();
        let probe = template::matcher_hypotheses(minutiae_of(&templates[3])).unwrap_or_default();
        let probes = ProbeSet { faces: vec![], fingers: BTreeMap::from([(4, vec![probe.clone()])]) };
        let scores = score_stored(&probes, &templates, "face", &HashMap::new(), 2);
        let mut matcher = Matcher::new();
        let mut expected: Vec<(f32, i64, f32)> = templates
            .iter()
            .map(|t| {
                let h = template::matcher_hypotheses(minutiae_of(t)).unwrap_or_default();
                (matcher.similarity(&probe.declared, &h.declared), t.template_id, probe.similarity(&h, &mut matcher))
            })
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut raised = 0;
        for (rank, (declared, id, best)) in expected.into_iter().enumerate() {
            let got = scores.get(&format!("s{id}")).and_then(|r| r.get(&(Modality::Finger, 4))).copied();
            let want = if rank < HYPOTHESIS_TEMPLATES { best } else { declared };
            assert_eq!(got, Some(f64::from(want)), "template {id} at rank {rank}");
            raised += usize::from(rank < HYPOTHESIS_TEMPLATES && best > declared);
        }
        assert!(raised > 0, "no hypothesis scored above the declared frame");
    }
}
