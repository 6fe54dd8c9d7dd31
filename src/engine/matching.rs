//! Identify (1:N) and verify (1:1) on face embeddings. Scores are cosine
//! similarities; a subject's score is its best template's.

use std::{collections::HashSet, time::Instant};

use super::{
    Candidate, Decision, Engine, EngineError, IdentifyOutcome, IdentifyRequest, IdentifyTimes, ModalityScore,
    VerifyOutcome, VerifyRequest, lock, probe::Probe, validate_subject_id,
};
use crate::{
    biometric::Modality,
    index::{Hit, best_per_subject},
};

const DEFAULT_CANDIDATES: usize = 10;

impl Engine {
    /// Searches the gallery for the probe's owner.
    pub async fn identify(&self, req: IdentifyRequest) -> Result<IdentifyOutcome, EngineError> {
        let IdentifyRequest { samples, max_candidates, target_fpir, subject_ids, gallery } = req;
        if target_fpir != 0.0 {
            return Err(EngineError::NotSupported {
                field: "target_fpir".into(),
                what: "a target FPIR (calibrated decisions are not available yet; the fixed threshold applies)".into(),
            });
        }
        if !gallery.is_empty() {
            return Err(EngineError::NotSupported { field: "gallery".into(), what: "named galleries".into() });
        }
        let k = match max_candidates {
            0 => DEFAULT_CANDIDATES,
            k if k > self.max_candidates => {
                return Err(EngineError::invalid("max_candidates", format!("at most {}", self.max_candidates)));
            }
            k => k,
        };
        if subject_ids.len() > self.max_subject_ids {
            return Err(EngineError::invalid("subject_ids", format!("at most {} subject ids", self.max_subject_ids)));
        }
        for (i, s) in subject_ids.iter().enumerate() {
            validate_subject_id(s)
                .map_err(|_| EngineError::invalid(format!("subject_ids[{i}]"), "not a valid subject id"))?;
        }
        let probes = self.extract_all(&samples, true).await?;
        let t = Instant::now();
        let candidates = if subject_ids.is_empty() {
            self.search_gallery(&probes, k).await?
        } else {
            self.search_subjects(&probes, subject_ids, k).await?
        };
        let search = t.elapsed();
        let mut times = IdentifyTimes { search, ..IdentifyTimes::default() };
        for p in &probes {
            times.extract.decode += p.times.decode;
            times.extract.detect += p.times.detect;
            times.extract.align += p.times.align;
            times.extract.embed += p.times.embed;
        }
        let best = candidates.first();
        let is_match = best.is_some_and(|c| c.score >= self.thresholds.face);
        let decision = Decision {
            is_match,
            threshold: self.thresholds.face,
            basis: self.thresholds.basis.clone(),
            subject_id: best.filter(|_| is_match).map(|c| c.subject_id.clone()),
        };
        let detail = format!(
            "probes={} candidates={} match={} threshold={}",
            probes.len(),
            candidates.len(),
            decision.is_match,
            decision.threshold
        );
        self.audit("identify", decision.subject_id.clone().unwrap_or_default(), detail).await?;
        Ok(IdentifyOutcome { candidates, decision, probes: probes.into_iter().map(|p| p.report).collect(), times })
    }

    /// Compares the probe with one subject's templates.
    pub async fn verify(&self, req: VerifyRequest) -> Result<VerifyOutcome, EngineError> {
        let VerifyRequest { subject_id, samples, target_fmr } = req;
        validate_subject_id(&subject_id)?;
        if target_fmr != 0.0 {
            return Err(EngineError::NotSupported {
                field: "target_fmr".into(),
                what: "a target FMR (calibrated decisions are not available yet; the fixed threshold applies)".into(),
            });
        }
        // Unknown subject first: cheaper than running the models.
        let store = self.store.clone();
        let sid = subject_id.clone();
        let templates =
            tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.subject_templates(&sid)?)).await??;
        let probes = self.extract_all(&samples, true).await?;
        let model = &self.face_model;
        let mine: Vec<&[f32]> = templates
            .iter()
            .filter(|t| t.template.modality == Modality::Face && t.template.model_id == model.id)
            .map(|t| t.template.vector.as_slice())
            .collect();
        if mine.is_empty() {
            return Err(EngineError::NothingToCompare {
                subject_id,
                modality: "face".into(),
                model_id: model.id.clone(),
            });
        }
        let score = probes
            .iter()
            .flat_map(|p| mine.iter().map(move |t| f64::from(dot(&p.template.vector, t))))
            .fold(f64::NEG_INFINITY, f64::max);
        let is_match = score >= self.thresholds.face;
        let detail =
            format!("probes={} match={is_match} score={score:.4} threshold={}", probes.len(), self.thresholds.face);
        self.audit("verify", subject_id.clone(), detail).await?;
        Ok(VerifyOutcome {
            decision: Decision {
                is_match,
                threshold: self.thresholds.face,
                basis: self.thresholds.basis.clone(),
                subject_id: is_match.then_some(subject_id),
            },
            score,
            scores: vec![self.face_score(score)],
            probes: probes.into_iter().map(|p| p.report).collect(),
        })
    }

    /// Exact search of the whole face index; several probes keep each
    /// subject's best score.
    async fn search_gallery(&self, probes: &[Probe], k: usize) -> Result<Vec<Candidate>, EngineError> {
        let gallery = self.gallery.clone();
        let queries: Vec<Vec<f32>> = probes.iter().map(|p| p.template.vector.clone()).collect();
        // Subjects may own several templates: fetch extra hits so that k
        // distinct subjects usually remain after grouping.
        let hits_wanted = k.saturating_mul(4).max(k + 32);
        let hits = tokio::task::spawn_blocking(move || -> Result<Vec<Hit>, EngineError> {
            let g = gallery.read().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
            let mut all = Vec::new();
            for q in &queries {
                all.extend(g.search(q, hits_wanted)?);
            }
            Ok(all)
        })
        .await??;
        Ok(best_per_subject(&hits, k)
            .into_iter()
            .map(|(s, score)| self.candidate(s.to_string(), f64::from(score)))
            .collect())
    }

    /// Exact comparison with the templates of the listed subjects only
    /// (unknown ids are skipped: a restriction, not a lookup).
    async fn search_subjects(
        &self,
        probes: &[Probe],
        subject_ids: Vec<String>,
        k: usize,
    ) -> Result<Vec<Candidate>, EngineError> {
        let store = self.store.clone();
        let unique: HashSet<String> = subject_ids.into_iter().collect();
        let templates = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let store = lock(&store)?;
            let mut all = Vec::new();
            for s in &unique {
                match store.subject_templates(s) {
                    Ok(ts) => all.extend(ts),
                    Err(crate::store::StoreError::SubjectNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(all)
        })
        .await??;
        let model = &self.face_model;
        let hits: Vec<Hit> = templates
            .iter()
            .filter(|t| t.template.modality == Modality::Face && t.template.model_id == model.id)
            .flat_map(|t| {
                probes.iter().map(move |p| Hit {
                    template_id: t.template_id,
                    subject_id: t.subject_id.as_str().into(),
                    score: dot(&p.template.vector, &t.template.vector),
                })
            })
            .collect();
        Ok(best_per_subject(&hits, k)
            .into_iter()
            .map(|(s, score)| self.candidate(s.to_string(), f64::from(score)))
            .collect())
    }

    /// Records a search in the audit log (who was matched, never biometric
    /// data): officers' searches must be accountable too.
    async fn audit(&self, action: &'static str, subject_id: String, detail: String) -> Result<(), EngineError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || Ok(lock(&store)?.audit(action, &subject_id, &detail)?)).await?
    }

    fn candidate(&self, subject_id: String, score: f64) -> Candidate {
        Candidate { subject_id, score, scores: vec![self.face_score(score)] }
    }

    fn face_score(&self, raw: f64) -> ModalityScore {
        ModalityScore {
            modality: Modality::Face,
            finger_position: 0,
            model_id: self.face_model.id.clone(),
            raw_score: raw,
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
