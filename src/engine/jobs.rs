//! De-duplication jobs: started, queried and cancelled through the engine,
//! run by one background thread at the lowest CPU priority (SCHED_IDLE), so
//! online Identify traffic keeps the cores. A job is stored; a restarted
//! server resumes every queued or running job where it stopped.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ndarray::Array2;
use tracing::{error, info, warn};

use super::{Calibrations, Candidate, Engine, EngineError, lock, scoring::RawScores, validate_name};
use crate::{
    biometric::{Modality, TemplateData},
    config::JobsConfig,
    finger::{
        aspect::Stretched,
        index::{FingerIndex, parallel_map},
        mcc::{Matcher, Template},
        template,
    },
    jobs::{Block, DedupParams, Scope, clusters, component_name, face_block, parse_component, plan},
    store::{JobRecord, JobState, PairComponent, Store},
};

/// Largest subject list a job may name.
const MAX_SCOPE_SUBJECTS: usize = 1_000_000;
/// Finger hits kept per searched template.
const FINGER_HITS: usize = 64;

/// A job's state and progress.
#[derive(Debug, Clone)]
pub struct JobStatus {
    /// The stored record.
    pub record: JobRecord,
    /// Blocks per second since this server (re)started it.
    pub rate: f64,
    /// Estimated seconds left.
    pub eta: f64,
    /// Pairs above the threshold so far.
    pub pairs: u64,
    /// The threshold and its basis.
    pub threshold: f64,
    /// Why this threshold.
    pub basis: String,
    /// Subjects and templates in scope (0 until started).
    pub subjects: u64,
    /// Templates in scope.
    pub templates: u64,
}

/// A candidate duplicate: two subjects and their fused calibrated score.
#[derive(Debug, Clone)]
pub struct DuplicatePair {
    /// The pair as a candidate (subject id `b`, scores) of `a`.
    pub a: String,
    /// The other subject and the scores.
    pub candidate: Candidate,
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    started: Option<Instant>,
    blocks_since_start: u64,
    subjects: u64,
    templates: u64,
}

/// The engine's handle on the runner thread; dropping it lets the thread
/// end once its current job is done.
#[derive(Debug)]
pub(super) struct JobRunner {
    progress: Arc<Mutex<HashMap<i64, Progress>>>,
    wake: Sender<()>,
}

/// What the runner thread needs.
#[derive(Debug, Clone)]
struct Worker {
    store: Arc<Mutex<Store>>,
    fingers: Arc<RwLock<FingerIndex>>,
    calibrations: Calibrations,
    face_model_id: String,
    settings: JobsConfig,
    progress: Arc<Mutex<HashMap<i64, Progress>>>,
}

impl JobRunner {
    /// Starts the runner thread; it first resumes the stored unfinished jobs.
    pub(super) fn start(
        store: Arc<Mutex<Store>>,
        fingers: Arc<RwLock<FingerIndex>>,
        calibrations: Calibrations,
        face_model_id: String,
        settings: JobsConfig,
    ) -> Result<Self, EngineError> {
        let (wake, rx) = crossbeam_channel::bounded(16);
        let progress = Arc::new(Mutex::new(HashMap::new()));
        let worker = Worker { store, fingers, calibrations, face_model_id, settings, progress: progress.clone() };
        std::thread::Builder::new()
            .name("jobs-runner".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| EngineError::Internal(format!("cannot start the job runner: {e}")))?;
        Ok(Self { progress, wake })
    }
}

impl Worker {
    fn run(&self, rx: &Receiver<()>) {
        lower_priority();
        loop {
            let pending = match lock(&self.store).and_then(|s| Ok(s.unfinished_jobs()?)) {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "cannot list jobs");
                    Vec::new()
                }
            };
            for id in pending {
                if let Err(e) = self.run_job(id) {
                    error!(job = id, error = %e, "job failed");
                    if let Ok(mut s) = lock(&self.store) {
                        let _ = s.set_job_state(id, JobState::Failed, &e.to_string());
                    }
                }
            }
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn run_job(&self, id: i64) -> Result<(), EngineError> {
        let rec = lock(&self.store)?.job(id)?.ok_or_else(|| EngineError::Internal("job vanished".into()))?;
        let params: DedupParams = serde_json::from_str(&rec.params)
            .map_err(|e| EngineError::Internal(format!("job {id} parameters: {e}")))?;
        lock(&self.store)?.set_job_state(id, JobState::Running, "")?;
        let scope = self.scope_subjects(&params.scope)?;
        let in_scope = |s: &str| scope.as_ref().is_none_or(|set| set.contains(s));
        // The job's data: templates enrolled before it started, in scope.
        let (faces, fingers) = {
            let store = lock(&self.store)?;
            let faces = if params.faces { store.templates_up_to(Modality::Face, rec.max_template_id)? } else { vec![] };
            let fingers =
                if params.fingers { store.templates_up_to(Modality::Finger, rec.max_template_id)? } else { vec![] };
            (faces, fingers)
        };
        // Face owners by row, and the rows themselves, moved into one matrix.
        let (mut owners, mut rows): (Vec<String>, Vec<f32>) = (Vec::new(), Vec::new());
        for t in faces {
            if t.template.model_id != self.face_model_id || !in_scope(&t.subject_id) {
                continue;
            }
            if let TemplateData::Embedding(v) = t.template.data {
                owners.push(t.subject_id);
                rows.extend(v);
            }
        }
        let fingers: Vec<_> = fingers
            .into_iter()
            .filter(|t| in_scope(&t.subject_id))
            .filter_map(|t| match &t.template.data {
                TemplateData::Minutiae(iso) => template::matcher_template(iso.as_slice()).ok().map(|m| JobFinger {
                    id: t.template_id,
                    subject: t.subject_id.clone(),
                    position: t.template.finger_position,
                    template: m,
                    iso: iso.clone(),
                }),
                TemplateData::Embedding(_) => None,
            })
            .collect();
        let subjects: HashSet<&str> =
            owners.iter().map(String::as_str).chain(fingers.iter().map(|f| f.subject.as_str())).collect();
        let by_id: HashMap<i64, usize> = fingers.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        let mut stretched_cache: HashMap<usize, Stretched> = HashMap::new();
        let blocks = plan(owners.len(), fingers.len(), self.settings.face_block_rows, self.settings.finger_block_rows);
        lock(&self.store)?.set_job_total(id, blocks.len() as u64)?;
        let done = lock(&self.store)?.finished_blocks(id)?;
        if let Ok(mut p) = self.progress.lock() {
            p.insert(
                id,
                Progress {
                    started: Some(Instant::now()),
                    blocks_since_start: 0,
                    subjects: subjects.len() as u64,
                    templates: (owners.len() + fingers.len()) as u64,
                },
            );
        }
        info!(job = id, blocks = blocks.len(), already_done = done.len(), "dedup job running");
        // Pairs are stored from a lower bar than the decision's, so that
        // fusing modalities can lift a pair whose single scores fall short.
        let keep_fmr = (params.target_fmr * 10.0).min(0.01);
        let face_bar = self.calibrations.face.raw_for_fmr(keep_fmr) as f32;
        let finger_bar = self.calibrations.finger.raw_for_fmr(keep_fmr) as f32;
        let dim = if owners.is_empty() { 0 } else { rows.len() / owners.len() };
        let matrix = Array2::from_shape_vec((owners.len(), dim), rows)
            .map_err(|e| EngineError::Internal(format!("face matrix: {e}")))?;
        for (i, block) in blocks.iter().enumerate() {
            if done.contains(&(i as u64)) {
                continue;
            }
            if lock(&self.store)?.job(id)?.is_none_or(|j| j.state != JobState::Running) {
                info!(job = id, "job cancelled");
                return Ok(());
            }
            let mut pairs = Vec::new();
            match *block {
                Block::Faces { start, end } => {
                    for (a, b, score) in face_block(matrix.view(), start, end, face_bar, self.settings.threads) {
                        push_pair(&mut pairs, &owners[a], &owners[b], "face".into(), f64::from(score));
                    }
                }
                Block::Fingers { start, end } => {
                    let block = fingers.get(start..end).unwrap_or(&[]);
                    // Hits: (searched, hit) indexes into `fingers`, declared-frame score.
                    let mut hits: Vec<(usize, usize, f32)> = Vec::new();
                    {
                        let gallery = self.fingers.read().map_err(|_| EngineError::Internal("finger lock".into()))?;
                        for (i, f) in block.iter().enumerate() {
                            let found = gallery.search(f.position, &f.template, FINGER_HITS, 1);
                            hits.extend(
                                found
                                    .iter()
                                    .filter(|h| {
                                        h.template_id != f.id
                                            && h.template_id <= rec.max_template_id
                                            && in_scope(&h.subject)
                                    })
                                    .filter_map(|h| by_id.get(&h.template_id).map(|&j| (start + i, j, h.score))),
                            );
                        }
                    }
                    for (i, j, score) in rescore_hits(
                        &fingers,
                        hits,
                        self.settings.finger_rescored,
                        self.settings.threads,
                        &mut stretched_cache,
                    ) {
                        if score < finger_bar {
                            continue;
                        }
                        let (f, h) = (&fingers[i], &fingers[j]);
                        let component = component_name(Modality::Finger, f.position);
                        push_pair(&mut pairs, &f.subject, &h.subject, component, f64::from(score));
                    }
                }
            }
            lock(&self.store)?.finish_block(id, i as u64, &pairs)?;
            if let Ok(mut p) = self.progress.lock()
                && let Some(p) = p.get_mut(&id)
            {
                p.blocks_since_start += 1;
            }
            if self.settings.block_pause_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.settings.block_pause_ms));
            }
        }
        lock(&self.store)?.set_job_state(id, JobState::Done, "")?;
        info!(job = id, "dedup job done");
        Ok(())
    }

    fn scope_subjects(&self, scope: &Scope) -> Result<Option<HashSet<String>>, EngineError> {
        Ok(match scope {
            Scope::All => None,
            Scope::Subjects(ids) => Some(ids.iter().cloned().collect()),
            Scope::Enrolled { from_ms, to_ms } => {
                Some(lock(&self.store)?.subjects_created(*from_ms, *to_ms)?.into_iter().collect())
            }
        })
    }
}

/// Stretched templates a finger job keeps between blocks (about 12 KB each):
/// a gallery up to this size builds each template's once.
const STRETCHED_CACHE: usize = 8_192;

/// One finger template of a job: its stored record and declared-frame template.
struct JobFinger {
    id: i64,
    subject: String,
    position: u8,
    template: Template,
    iso: Vec<u8>,
}

/// Each hit's score under the matcher's aspect hypotheses (the best of the
/// declared and the stretched frames) for the `rescored` best hits of each
/// searched template (`jobs.finger_rescored`: the finger calibration is that
/// of the matcher with its hypotheses); the others keep their declared-frame
/// score. The stretched templates of a block are built once each, on
/// `threads` threads.
fn rescore_hits(
    fingers: &[JobFinger],
    mut hits: Vec<(usize, usize, f32)>,
    rescored: usize,
    threads: usize,
    cache: &mut HashMap<usize, Stretched>,
) -> Vec<(usize, usize, f32)> {
    hits.sort_by(|a, b| a.0.cmp(&b.0).then(b.2.total_cmp(&a.2)).then(a.1.cmp(&b.1)));
    let mut chosen = vec![false; hits.len()];
    let (mut searched, mut rank) = (usize::MAX, 0);
    for (c, h) in chosen.iter_mut().zip(&hits) {
        if h.0 != searched {
            (searched, rank) = (h.0, 0);
        }
        rank += 1;
        *c = rank <= rescored;
    }
    let mut needed: Vec<usize> = hits.iter().zip(&chosen).filter(|(_, c)| **c).flat_map(|(h, _)| [h.0, h.1]).collect();
    needed.sort_unstable();
    needed.dedup();
    let missing: Vec<usize> = needed.iter().copied().filter(|i| !cache.contains_key(i)).collect();
    if cache.len() + missing.len() > STRETCHED_CACHE {
        cache.retain(|i, _| needed.binary_search(i).is_ok());
    }
    let built = parallel_map(&missing, threads, |&i| {
        fingers.get(i).and_then(|f| template::matcher_stretched(&f.iso).ok()).unwrap_or_default()
    });
    cache.extend(missing.into_iter().zip(built));
    let stretched = &*cache;
    let pairs: Vec<(usize, usize, f32, bool)> =
        hits.into_iter().zip(chosen).map(|((i, j, s), c)| (i, j, s, c)).collect();
    parallel_map(&pairs, threads, |&(i, j, declared, chosen)| {
        let score = match (chosen, stretched.get(&i), stretched.get(&j)) {
            (true, Some(a), Some(b)) => a.best(b, &mut Matcher::new()).max(declared),
            _ => declared,
        };
        (i, j, score)
    })
}

/// Records a pair once, ordered `a < b`; same-subject pairs are not duplicates.
fn push_pair(out: &mut Vec<PairComponent>, x: &str, y: &str, component: String, raw: f64) {
    if x == y {
        return;
    }
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    out.push(PairComponent { a: a.to_owned(), b: b.to_owned(), component, raw });
}

/// SCHED_IDLE: the job only gets CPU time nothing else wants.
#[allow(unsafe_code)]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0: this thread) policy from a
    // valid sched_param; no memory is shared.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the job runner's priority; jobs run at normal priority"
        );
    }
}

/// A job request as the engine takes it.
#[derive(Debug, Clone)]
pub struct DedupRequest {
    /// Subjects covered.
    pub scope: Scope,
    /// Modalities compared (empty: all).
    pub modalities: Vec<Modality>,
    /// Target FMR (0: default).
    pub target_fmr: f64,
}

impl Engine {
    /// Queues a de-duplication job.
    pub async fn start_dedup(&self, req: DedupRequest) -> Result<JobStatus, EngineError> {
        let DedupRequest { scope, modalities, target_fmr } = req;
        let target_fmr = Self::target("target_fmr", target_fmr, self.jobs_settings.target_fmr)?;
        Self::decidable("target_fmr", &format!("target FMR {target_fmr:e} per pair"), target_fmr, 1)?;
        if let Scope::Subjects(ids) = &scope {
            if ids.is_empty() || ids.len() > MAX_SCOPE_SUBJECTS {
                return Err(EngineError::invalid(
                    "TOO_MANY_SUBJECT_IDS",
                    "subjects.subject_ids",
                    "1 to 1,000,000 subject ids",
                ));
            }
            for (i, s) in ids.iter().enumerate() {
                validate_name(s)
                    .map_err(|r| EngineError::invalid("INVALID_SUBJECT_ID", format!("subjects.subject_ids[{i}]"), r))?;
            }
        }
        if let Scope::Enrolled { from_ms, to_ms } = scope
            && to_ms != 0
            && to_ms <= from_ms
        {
            return Err(EngineError::invalid("INVALID_TIME_WINDOW", "enrolled", "end_time must be after start_time"));
        }
        let all = modalities.is_empty();
        let params = DedupParams {
            scope,
            faces: all || modalities.contains(&Modality::Face),
            fingers: all || modalities.contains(&Modality::Finger),
            target_fmr,
        };
        let json = serde_json::to_string(&params).map_err(|e| EngineError::Internal(e.to_string()))?;
        let store = self.store.clone();
        let rec = tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.create_job("dedup", &json)?))
            .await??;
        let _ = self.jobs.wake.try_send(());
        self.job_status(rec).await
    }

    /// A job's state.
    pub async fn job(&self, job_id: String) -> Result<JobStatus, EngineError> {
        let rec = self.job_record(&job_id).await?;
        self.job_status(rec).await
    }

    /// Cancels a queued or running job.
    pub async fn cancel_job(&self, job_id: String) -> Result<JobStatus, EngineError> {
        let rec = self.job_record(&job_id).await?;
        let store = self.store.clone();
        let id = rec.job_id;
        tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.cancel_job(id)?)).await??;
        self.job(job_id).await
    }

    /// A job's pairs above its threshold (best first) and the clusters they form.
    pub async fn job_results(&self, job_id: String) -> Result<(Vec<DuplicatePair>, Vec<Vec<String>>), EngineError> {
        let rec = self.job_record(&job_id).await?;
        let (pairs, _) = self.fused_pairs(&rec).await?;
        let groups = clusters(pairs.iter().map(|p| (p.a.as_str(), p.candidate.subject_id.as_str())));
        Ok((pairs, groups))
    }

    async fn job_record(&self, job_id: &str) -> Result<JobRecord, EngineError> {
        let id: i64 = job_id.parse().map_err(|_| EngineError::invalid("INVALID_JOB_ID", "job_id", "not a job id"))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.job(id)?))
            .await??
            .ok_or_else(|| EngineError::JobNotFound(job_id.to_owned()))
    }

    /// The stored pair components fused per pair, kept at or above the threshold.
    async fn fused_pairs(&self, rec: &JobRecord) -> Result<(Vec<DuplicatePair>, f64), EngineError> {
        let params: DedupParams =
            serde_json::from_str(&rec.params).map_err(|e| EngineError::Internal(format!("job parameters: {e}")))?;
        let threshold = super::scoring::threshold_db(params.target_fmr);
        let store = self.store.clone();
        let id = rec.job_id;
        let components =
            tokio::task::spawn_blocking(move || Ok::<_, EngineError>(lock(&store)?.job_pairs(id)?)).await??;
        let mut by_pair: BTreeMap<(String, String), RawScores> = BTreeMap::new();
        for c in components {
            if let Some(component) = parse_component(&c.component) {
                by_pair.entry((c.a, c.b)).or_default().insert(component, c.raw);
            }
        }
        let mut out: Vec<DuplicatePair> = by_pair
            .into_iter()
            .map(|((a, b), raw)| DuplicatePair { a, candidate: self.candidate(b, &raw) })
            .filter(|p| p.candidate.score >= threshold)
            .collect();
        out.sort_by(|x, y| {
            y.candidate
                .score
                .total_cmp(&x.candidate.score)
                .then_with(|| (&x.a, &x.candidate.subject_id).cmp(&(&y.a, &y.candidate.subject_id)))
        });
        Ok((out, threshold))
    }

    pub(super) async fn job_status(&self, record: JobRecord) -> Result<JobStatus, EngineError> {
        let (pairs, threshold) = self.fused_pairs(&record).await?;
        let params: DedupParams =
            serde_json::from_str(&record.params).map_err(|e| EngineError::Internal(format!("job parameters: {e}")))?;
        let p = self.jobs.progress.lock().ok().and_then(|p| p.get(&record.job_id).copied()).unwrap_or_default();
        let secs = p.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let rate = if secs > 0.0 { p.blocks_since_start as f64 / secs } else { 0.0 };
        let left = record.total.saturating_sub(record.done) as f64;
        let eta = if rate > 0.0 && record.state == JobState::Running { left / rate } else { 0.0 };
        let basis = format!(
            "target FMR {} per pair: threshold {threshold:.2} on the fused calibrated score -10*log10(FMR) \
             (faces and fingers fused with Fisher's method)",
            params.target_fmr
        );
        Ok(JobStatus {
            record,
            rate,
            eta,
            pairs: pairs.len() as u64,
            threshold,
            basis,
            subjects: p.subjects,
            templates: p.templates,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{JobFinger, rescore_hits};
    use crate::finger::{
        iso19794_2::{self, IsoMinutia, MinutiaKind},
        mcc::Matcher,
        template,
    };

    fn job_finger(id: i64, seed: u64) -> JobFinger {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let minutiae = (0..35)
            .map(|_| IsoMinutia {
                kind: MinutiaKind::RidgeEnding,
                x: 20 + next(260) as u16,
                y: 20 + next(360) as u16,
                angle: next(256) as u8,
                quality: 60,
            })
            .collect();
        let iso = iso19794_2::write(&template::one_view_record(1, 300, 400, 80, minutiae)).expect("record");
        let template = template::matcher_template(&iso).expect("template");
        JobFinger { id, subject: format!("s{id}"), position: 1, template, iso }
    }

    #[test]
    fn only_the_best_hits_of_each_template_are_rescored() {
        let fingers: Vec<JobFinger> = (0..4).map(|i| job_finger(i, 7 + i as u64)).collect();
        // Declared scores below what the hypotheses give these unrelated prints, so that
        // rescoring a hit shows (checked below).
        let hits = vec![(0, 1, 0.003), (0, 2, 0.002), (0, 3, 0.001), (1, 0, 0.0025), (1, 3, 0.0005)];
        let out = rescore_hits(&fingers, hits.clone(), 1, 2, &mut HashMap::new());
        let hypotheses = |i: usize, j: usize, declared: f32| {
            let a = template::matcher_stretched(&fingers[i].iso).expect("stretched");
            let b = template::matcher_stretched(&fingers[j].iso).expect("stretched");
            a.best(&b, &mut Matcher::new()).max(declared)
        };
        assert!(
            hits.iter()
                .filter(|h| (h.0, h.1) != (0, 1) && (h.0, h.1) != (1, 0))
                .any(|&(i, j, d)| hypotheses(i, j, d) > d),
            "the test needs a hit that rescoring would change"
        );
        for &(i, j, declared) in &hits {
            let (.., score) = *out.iter().find(|h| h.0 == i && h.1 == j).expect("every hit comes back");
            // The best hit of each searched template (0 -> 1, 1 -> 0) gets the hypotheses.
            let expected = if (i, j) == (0, 1) || (i, j) == (1, 0) { hypotheses(i, j, declared) } else { declared };
            assert_eq!(score.to_bits(), expected.to_bits(), "hit {i} -> {j}");
        }
        // Stretched templates kept from an earlier block give the same scores.
        let mut cache = HashMap::new();
        let first = rescore_hits(&fingers, hits.clone(), 1, 1, &mut cache);
        assert!(!cache.is_empty());
        assert_eq!(rescore_hits(&fingers, hits.clone(), 1, 2, &mut cache), first);
        assert_eq!(first, out);
        let none = rescore_hits(&fingers, vec![(0, 1, 0.003)], 0, 1, &mut HashMap::new());
        assert_eq!(none, vec![(0, 1, 0.003)], "rescored = 0 keeps the declared scores");
        assert!(hypotheses(0, 1, 0.003) > 0.003);
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_runner_thread_gets_the_idle_policy() {
        let policy = std::thread::spawn(|| {
            super::lower_priority();
            // SAFETY: reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
