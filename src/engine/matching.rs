//! Identify (1:N) and verify (1:1) over faces and fingers. Candidates come
//! from the face index and the finger index; every candidate is then
//! scored on each component the probes have (see `scoring`), so a person
//! found by one finger is also compared on the face and the other fingers.

use std::{
    collections::{BTreeMap, HashSet},
    sync::atomic::Ordering,
    time::Instant,
};

use super::{
    Candidate, Engine, EngineError, IdentifyOutcome, IdentifyRequest, IdentifyTimes, VerifyOutcome, VerifyRequest,
    read,
    scoring::{ProbeSet, RawScores, indexed_finger_templates, score_stored},
    validate_subject_id,
};
use crate::{biometric::Modality, index::best_per_subject, metrics::observed};

const DEFAULT_CANDIDATES: usize = 10;

impl Engine {
    /// Searches the gallery for the probe's owner.
    pub async fn identify(&self, req: IdentifyRequest) -> Result<IdentifyOutcome, EngineError> {
        let IdentifyRequest { samples, max_candidates, target_fpir, subject_ids, watchlist } = req;
        let target_fpir = Self::target("target_fpir", target_fpir, self.decision.target_fpir)?;
        if !watchlist.is_empty() {
            super::validate_name(&watchlist)
                .map_err(|reason| EngineError::invalid("INVALID_WATCHLIST_NAME", "watchlist", reason))?;
        }
        let k = match max_candidates {
            0 => DEFAULT_CANDIDATES,
            k if k > self.max_candidates => {
                return Err(EngineError::invalid(
                    "TOO_MANY_CANDIDATES",
                    "max_candidates",
                    format!("at most {}", self.max_candidates),
                ));
            }
            k => k,
        };
        if subject_ids.len() > self.max_subject_ids {
            return Err(EngineError::invalid(
                "TOO_MANY_SUBJECT_IDS",
                "subject_ids",
                format!("at most {} subject ids", self.max_subject_ids),
            ));
        }
        for (i, s) in subject_ids.iter().enumerate() {
            validate_subject_id(s).map_err(|_| {
                EngineError::invalid("INVALID_SUBJECT_ID", format!("subject_ids[{i}]"), "not a valid subject id")
            })?;
        }
        // A watchlist restricts the search to its members (and to the
        // listed subjects among them, when both are given).
        let restriction: Option<HashSet<String>> = if watchlist.is_empty() {
            (!subject_ids.is_empty()).then(|| subject_ids.into_iter().collect())
        } else {
            let name = watchlist.clone();
            let members = read(&self.records, move |r| r.watchlist_members(&name)).await?;
            if members.is_empty() {
                return Err(EngineError::WatchlistNotFound(watchlist));
            }
            let listed: HashSet<String> = subject_ids.into_iter().collect();
            Some(members.into_iter().filter(|m| listed.is_empty() || listed.contains(m)).collect())
        };
        // The threshold follows the subjects searched: refused before the
        // models run if no score could reach it.
        let searched = restriction.as_ref().map_or_else(|| self.subjects.load(Ordering::Relaxed), |s| s.len() as u64);
        let fmr = target_fpir / searched.max(1) as f64;
        let asked =
            format!("target FPIR {target_fpir:e} over {} subject(s) (per comparison {fmr:.1e})", searched.max(1));
        Self::decidable("target_fpir", &asked, fmr, searched)?;
        let probes = self.extract_all(&samples, true).await?;
        let set = ProbeSet::new(&probes)?;
        let _place = self.searches.enter().await.map_err(|r| EngineError::Overloaded(r.0))?;
        let t = Instant::now();
        let (raw, n, rescore) = match restriction {
            None => {
                let (raw, rescore) = self.search_gallery(set, k).await?;
                (raw, self.subjects.load(Ordering::Relaxed), rescore)
            }
            Some(subjects) => {
                let n = subjects.len() as u64;
                (self.score_subjects(set, subjects).await?, n, std::time::Duration::ZERO)
            }
        };
        let mut candidates: Vec<Candidate> = raw.iter().map(|(s, r)| self.candidate(s.clone(), r)).collect();
        candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.subject_id.cmp(&b.subject_id)));
        candidates.truncate(k);
        let search = t.elapsed();
        observed().stage("search", search.saturating_sub(rescore));
        if !rescore.is_zero() {
            observed().stage("rescore", rescore);
        }
        let mut times = IdentifyTimes { search, rescore, ..IdentifyTimes::default() };
        for p in &probes {
            times.extract.decode += p.times.decode;
            times.extract.detect += p.times.detect;
            times.extract.align += p.times.align;
            times.extract.embed += p.times.embed;
            times.extract.minutiae += p.times.minutiae;
        }
        let decision = self.decide_identify(candidates.first(), target_fpir, n);
        Ok(IdentifyOutcome { candidates, decision, probes: probes.into_iter().map(|p| p.report).collect(), times })
    }

    /// Compares the probe with one subject's templates.
    pub async fn verify(&self, req: VerifyRequest) -> Result<VerifyOutcome, EngineError> {
        let VerifyRequest { subject_id, samples, target_fmr } = req;
        validate_subject_id(&subject_id)?;
        let target_fmr = Self::target("target_fmr", target_fmr, self.decision.target_fmr)?;
        Self::decidable("target_fmr", &format!("target FMR {target_fmr:e}"), target_fmr, 1)?;
        // Unknown subject first: cheaper than running the models.
        let sid = subject_id.clone();
        let templates = read(&self.records, move |r| r.subject_templates(&sid)).await?;
        let probes = self.extract_all(&samples, true).await?;
        let set = ProbeSet::new(&probes)?;
        let wanted = set.components();
        let face_model = self.face_model.id.clone();
        let fingers = self.fingers.clone();
        let threads = self.finger.search_threads;
        let raw = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let cached = indexed_finger_templates(&fingers, &set, &templates)?;
            Ok(score_stored(&set, &templates, &face_model, &cached, threads))
        })
        .await??;
        let Some(scores) = raw.get(&subject_id).filter(|r| !r.is_empty()) else {
            let kinds: Vec<String> = wanted
                .iter()
                .map(|(m, p)| match m {
                    Modality::Face => format!("a face of model {}", self.face_model.id),
                    Modality::Finger => format!("finger position {p}"),
                })
                .collect();
            return Err(EngineError::NothingToCompare { subject_id, what: kinds.join(" or ") });
        };
        let candidate = self.candidate(subject_id.clone(), scores);
        let mut decision = self.decide_verify(&candidate, target_fmr);
        // A probe component the subject has nothing enrolled for is left out
        // of the score; the answer says so rather than passing over it.
        let compared: HashSet<(Modality, u8)> =
            candidate.scores.iter().map(|s| (s.modality, s.finger_position)).collect();
        let skipped: Vec<String> = wanted
            .iter()
            .filter(|c| !compared.contains(c))
            .map(|(m, p)| match m {
                Modality::Face => "the face".to_owned(),
                Modality::Finger => format!("finger position {p}"),
            })
            .collect();
        if !skipped.is_empty() {
            decision
                .basis
                .push_str(&format!("; not compared, the subject has nothing enrolled for it: {}", skipped.join(", ")));
        }
        Ok(VerifyOutcome {
            decision,
            score: candidate.score,
            scores: candidate.scores,
            probes: probes.into_iter().map(|p| p.report).collect(),
        })
    }

    /// Candidates from the face index and the finger index, each then
    /// scored on every component of the probe set; with the time the
    /// rescoring from the stored templates took.
    async fn search_gallery(
        &self,
        set: ProbeSet,
        k: usize,
    ) -> Result<(BTreeMap<String, RawScores>, std::time::Duration), EngineError> {
        let gallery = self.faces.clone();
        let fingers = self.fingers.clone();
        let threads = self.finger.search_threads;
        // Subjects may own several templates and a candidate may be found by
        // one component only: fetch extra hits per component.
        let wanted = k.saturating_mul(4).max(k + 32);
        let (set, mut raw) = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let mut raw: BTreeMap<String, RawScores> = BTreeMap::new();
            if !set.faces.is_empty() {
                let g = gallery.read().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
                let mut hits = Vec::new();
                for q in &set.faces {
                    hits.extend(g.search(q, wanted)?);
                }
                for (s, score) in best_per_subject(&hits, wanted) {
                    raw.entry(s.to_string()).or_default().insert((Modality::Face, 0), f64::from(score));
                }
            }
            let f = fingers.read().map_err(|_| EngineError::Internal("finger lock poisoned".into()))?;
            for (&position, probes) in &set.fingers {
                for p in probes {
                    for h in f.search(position, &p.declared, wanted, threads) {
                        let slot = raw
                            .entry(h.subject.to_string())
                            .or_default()
                            .entry((Modality::Finger, position))
                            .or_insert(f64::NEG_INFINITY);
                        *slot = slot.max(f64::from(h.score));
                    }
                }
            }
            Ok((set, raw))
        })
        .await??;
        // One read of the candidates' stored templates for two things: every
        // candidate's finger components, exactly (the positions it was not
        // found by, and the matcher's aspect hypotheses, which the gallery
        // search leaves out: see `scoring`), and the face component of a
        // finger-found candidate that lacks one (where the face index gave a
        // score, that score stays).
        let t = Instant::now();
        let lacks_face = |r: &RawScores| !set.faces.is_empty() && !r.contains_key(&(Modality::Face, 0));
        let rescored: HashSet<String> = if set.fingers.is_empty() {
            raw.iter().filter(|(_, r)| lacks_face(r)).map(|(s, _)| s.clone()).collect()
        } else {
            raw.keys().cloned().collect()
        };
        if !rescored.is_empty() {
            for (s, r) in self.score_subjects(set, rescored).await? {
                let entry = raw.entry(s).or_default();
                for (component, score) in r {
                    let slot = entry.entry(component).or_insert(score);
                    if component.0 == Modality::Finger {
                        *slot = slot.max(score);
                    }
                }
            }
        }
        let rescore = t.elapsed();
        Ok((raw, rescore))
    }

    /// Exact comparison with the stored templates of the listed subjects
    /// only (unknown ids are skipped: a restriction, not a lookup).
    async fn score_subjects(
        &self,
        set: ProbeSet,
        subjects: HashSet<String>,
    ) -> Result<BTreeMap<String, RawScores>, EngineError> {
        let records = self.records.clone();
        let face_model = self.face_model.id.clone();
        let fingers = self.fingers.clone();
        let threads = self.finger.search_threads;
        tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let mut all = Vec::new();
            for s in &subjects {
                match records.subject_templates(s) {
                    Ok(ts) => all.extend(ts),
                    Err(crate::store::StoreError::SubjectNotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let cached = indexed_finger_templates(&fingers, &set, &all)?;
            Ok(score_stored(&set, &all, &face_model, &cached, threads))
        })
        .await?
    }
}
