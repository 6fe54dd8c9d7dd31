//! De-duplication jobs: started, queried and cancelled through the engine,
//! run by one background thread at the lowest CPU priority (SCHED_IDLE), so
//! online Identify traffic keeps the cores. A job is stored with its plan of
//! blocks; a restarted server resumes every queued or running job where it
//! stopped, and on PostgreSQL every node's runner claims blocks of the
//! same job, so a cluster shares a job and a dead node's block is redone.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use ndarray::Array2;
use tracing::{error, info, warn};

use super::{Calibrations, EngineError};
use crate::{
    biometric::{Modality, TemplateData},
    config::JobsConfig,
    finger::{
        aspect::Stretched,
        index::{FingerIndex, parallel_map},
        mcc::{Matcher, Template},
        template,
    },
    jobs::{Block, DedupParams, Scope, component_name, face_block, plan},
    store::{BlockBounds, JobRecord, JobState, JobStore, PairComponent},
};

mod calls;

pub use calls::{DedupRequest, DuplicatePair, JobStatus, ResultItem};

/// Finger hits kept per searched template.
const FINGER_HITS: usize = 64;

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
    /// Pairs counted for finished jobs, with the deletions seen when
    /// counted: a finished job's pairs change only by a deletion.
    counted: Mutex<HashMap<i64, (u64, u64)>>,
    /// Subjects deleted since start-up (here, or followed from the change log).
    pub(super) deletions: Arc<std::sync::atomic::AtomicU64>,
}

/// What the runner thread needs.
#[derive(Debug, Clone)]
struct Worker {
    jobs: Arc<dyn JobStore>,
    fingers: Arc<RwLock<FingerIndex>>,
    /// Whether `fingers` holds the whole gallery (else a job builds its own).
    whole: bool,
    calibrations: Calibrations,
    face_model_id: String,
    settings: JobsConfig,
    progress: Arc<Mutex<HashMap<i64, Progress>>>,
}

impl JobRunner {
    /// Starts the runner thread; it first resumes the stored unfinished jobs.
    /// `whole`: whether `fingers` is the whole gallery's index (a shard
    /// node's is not: its jobs search an index of their own templates).
    /// A node with `jobs.worker = false` starts no thread.
    pub(super) fn start(
        jobs: Arc<dyn JobStore>,
        fingers: Arc<RwLock<FingerIndex>>,
        whole: bool,
        calibrations: Calibrations,
        face_model_id: String,
        settings: JobsConfig,
    ) -> Result<Self, EngineError> {
        let (wake, rx) = crossbeam_channel::bounded(16);
        let progress = Arc::new(Mutex::new(HashMap::new()));
        let runs = settings.worker;
        let worker = Worker { jobs, fingers, whole, calibrations, face_model_id, settings, progress: progress.clone() };
        let runner = Self { progress, wake, counted: Mutex::default(), deletions: Arc::default() };
        if !runs {
            return Ok(runner);
        }
        std::thread::Builder::new()
            .name("jobs-runner".into())
            .spawn(move || worker.run(&rx))
            .map_err(|e| EngineError::Internal(format!("cannot start the job runner: {e}")))?;
        Ok(runner)
    }
}

impl Worker {
    fn run(&self, rx: &Receiver<()>) {
        super::lower_priority();
        loop {
            let pending = match self.jobs.unfinished_jobs() {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "cannot list jobs");
                    Vec::new()
                }
            };
            for id in pending {
                // Another node may hold every block left: nothing to load then
                // (but if every block is done, the job is: its last node may
                // have died between its commit and saying so).
                match self.jobs.claimable(id) {
                    Ok(true) => {}
                    Ok(false) => {
                        if let Err(e) = self.jobs.finish_job(id) {
                            error!(job = id, error = %e, "cannot mark the job done");
                        }
                        continue;
                    }
                    Err(e) => {
                        error!(job = id, error = %e, "cannot look at the job's blocks");
                        continue;
                    }
                }
                match self.run_job(id) {
                    Ok(()) => {}
                    // The store failed this node (a lost link, a claim whose
                    // connection died): the block it held is free again, and
                    // this or another node takes the job up at its next look.
                    Err(e @ EngineError::Store(_)) => warn!(job = id, error = %e, "job interrupted; retried later"),
                    Err(e) => {
                        error!(job = id, error = %e, "job failed");
                        let _ = self.jobs.set_job_state(id, JobState::Failed, &e.to_string());
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
        let rec = self.jobs.job(id)?.ok_or_else(|| EngineError::Internal("job vanished".into()))?;
        if !rec.state.active() {
            return Ok(());
        }
        let params: DedupParams = serde_json::from_str(&rec.params)
            .map_err(|e| EngineError::Internal(format!("job {id} parameters: {e}")))?;
        let data = self.job_data(&rec, &params)?;
        let planned =
            plan(data.owners.len(), data.fingers.len(), self.settings.face_block_rows, self.settings.finger_block_rows);
        let blocks = self.jobs.begin_job(id, data.bounds(&planned))?;
        self.note_start(id, &data);
        info!(job = id, blocks = blocks.len(), done = rec.done, "dedup job running");
        // A shard node's index holds its shard only: the job searches its own.
        let own_fingers =
            if self.whole || blocks.iter().all(|b| b.faces) { None } else { Some(self.finger_index(&data)?) };
        // Pairs are stored from a lower bar than the decision's, so that
        // fusing modalities can lift a pair whose single scores fall short.
        let keep_fmr = (params.target_fmr * 10.0).min(0.01);
        let face_bar = self.calibrations.face.raw_for_fmr(keep_fmr) as f32;
        let finger_bar = self.calibrations.finger.raw_for_fmr(keep_fmr) as f32;
        let mut stretched_cache: HashMap<usize, Stretched> = HashMap::new();
        loop {
            if self.jobs.job(id)?.is_none_or(|j| j.state != JobState::Running) {
                info!(job = id, "job cancelled");
                return Ok(());
            }
            let Some(claim) = self.jobs.claim_block(id)? else { break };
            let bounds = *blocks.get(claim.block() as usize).ok_or_else(|| {
                EngineError::Internal(format!("job {id}: block {} is not in its plan", claim.block()))
            })?;
            let (start, end) = data.rows(bounds);
            let pairs = if bounds.faces {
                self.face_pairs(&data, start, end, face_bar)
            } else {
                let shared;
                let index: &FingerIndex = match &own_fingers {
                    Some(own) => own,
                    None => {
                        shared = self.shared_fingers()?;
                        &shared
                    }
                };
                self.finger_pairs(&data, index, start, end, finger_bar, &mut stretched_cache)
            };
            claim.finish(&pairs)?;
            if let Ok(mut p) = self.progress.lock()
                && let Some(p) = p.get_mut(&id)
            {
                p.blocks_since_start += 1;
            }
            if self.settings.block_pause_ms > 0 {
                std::thread::sleep(Duration::from_millis(self.settings.block_pause_ms));
            }
        }
        // Every block claimed: done once every block is also committed (the
        // node that commits the last one finds them all done).
        if self.jobs.finish_job(id)? {
            info!(job = id, "dedup job done");
        }
        Ok(())
    }

    fn shared_fingers(&self) -> Result<RwLockReadGuard<'_, FingerIndex>, EngineError> {
        self.fingers.read().map_err(|_| EngineError::Internal("finger lock".into()))
    }

    /// An index of the job's own finger templates, with the node's settings.
    fn finger_index(&self, data: &JobData) -> Result<FingerIndex, EngineError> {
        let mut index = FingerIndex::new(*self.shared_fingers()?.settings());
        for f in &data.fingers {
            index.add(f.id, Arc::from(f.subject.as_str()), f.position, f.template.clone());
        }
        Ok(index)
    }

    /// What a job compares: the templates in scope enrolled before it started.
    fn job_data(&self, rec: &JobRecord, params: &DedupParams) -> Result<JobData, EngineError> {
        let scope = self.scope_subjects(&params.scope)?;
        let in_scope = |s: &str| scope.as_ref().is_none_or(|set| set.contains(s));
        let faces = if params.faces { self.jobs.templates_up_to(Modality::Face, rec.max_template_id)? } else { vec![] };
        let fingers =
            if params.fingers { self.jobs.templates_up_to(Modality::Finger, rec.max_template_id)? } else { vec![] };
        // Face owners by row, and the rows themselves, moved into one matrix.
        let (mut owners, mut face_ids, mut rows): (Vec<String>, Vec<i64>, Vec<f32>) =
            (Vec::new(), Vec::new(), Vec::new());
        for t in faces {
            if t.template.model_id != self.face_model_id || !in_scope(&t.subject_id) {
                continue;
            }
            if let TemplateData::Embedding(v) = t.template.data {
                owners.push(t.subject_id);
                face_ids.push(t.template_id);
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
        let by_id = fingers.iter().enumerate().map(|(i, f)| (f.id, i)).collect();
        let dim = if owners.is_empty() { 0 } else { rows.len() / owners.len() };
        let matrix = Array2::from_shape_vec((owners.len(), dim), rows)
            .map_err(|e| EngineError::Internal(format!("face matrix: {e}")))?;
        Ok(JobData { owners, face_ids, matrix, fingers, by_id, max_template_id: rec.max_template_id, scope })
    }

    /// Records when a (re)started job began and what it covers, for its rate and eta.
    fn note_start(&self, id: i64, data: &JobData) {
        let subjects: HashSet<&str> =
            data.owners.iter().map(String::as_str).chain(data.fingers.iter().map(|f| f.subject.as_str())).collect();
        if let Ok(mut p) = self.progress.lock() {
            p.insert(
                id,
                Progress {
                    started: Some(Instant::now()),
                    blocks_since_start: 0,
                    subjects: subjects.len() as u64,
                    templates: (data.owners.len() + data.fingers.len()) as u64,
                },
            );
        }
    }

    /// Face pairs of rows `start..end` against every later row, at or above `bar`.
    fn face_pairs(&self, data: &JobData, start: usize, end: usize, bar: f32) -> Vec<PairComponent> {
        let mut pairs = Vec::new();
        for (a, b, score) in face_block(data.matrix.view(), start, end, bar, self.settings.threads) {
            push_pair(&mut pairs, &data.owners[a], &data.owners[b], "face".into(), f64::from(score));
        }
        pairs
    }

    /// Finger pairs of templates `start..end`: each searched in the finger
    /// index, its hits in scope rescored, those at or above `bar` kept.
    fn finger_pairs(
        &self,
        data: &JobData,
        index: &FingerIndex,
        start: usize,
        end: usize,
        bar: f32,
        stretched_cache: &mut HashMap<usize, Stretched>,
    ) -> Vec<PairComponent> {
        let block = data.fingers.get(start..end).unwrap_or(&[]);
        // Hits: (searched, hit) indexes into `fingers`, declared-frame score.
        let mut hits: Vec<(usize, usize, f32)> = Vec::new();
        {
            for (i, f) in block.iter().enumerate() {
                let found = index.search(f.position, &f.template, FINGER_HITS, 1);
                hits.extend(
                    found
                        .iter()
                        .filter(|h| {
                            h.template_id != f.id && h.template_id <= data.max_template_id && data.in_scope(&h.subject)
                        })
                        .filter_map(|h| data.by_id.get(&h.template_id).map(|&j| (start + i, j, h.score))),
                );
            }
        }
        let mut pairs = Vec::new();
        let rescored =
            rescore_hits(&data.fingers, hits, self.settings.finger_rescored, self.settings.threads, stretched_cache);
        for (i, j, score) in rescored {
            if score < bar {
                continue;
            }
            let (f, h) = (&data.fingers[i], &data.fingers[j]);
            let component = component_name(Modality::Finger, f.position);
            push_pair(&mut pairs, &f.subject, &h.subject, component, f64::from(score));
        }
        pairs
    }

    fn scope_subjects(&self, scope: &Scope) -> Result<Option<HashSet<String>>, EngineError> {
        Ok(match scope {
            Scope::All => None,
            Scope::Subjects(ids) => Some(ids.iter().cloned().collect()),
            Scope::Enrolled { from_ms, to_ms } => {
                Some(self.jobs.subjects_created(*from_ms, *to_ms)?.into_iter().collect())
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

/// What one job compares, loaded when it (re)starts.
struct JobData {
    /// Face owners by row, their template ids (ascending), and the rows
    /// (unit embeddings) as one matrix.
    owners: Vec<String>,
    face_ids: Vec<i64>,
    matrix: Array2<f32>,
    /// Finger templates in scope.
    fingers: Vec<JobFinger>,
    /// Index into `fingers` by template id.
    by_id: HashMap<i64, usize>,
    /// Templates enrolled after the job started are left out.
    max_template_id: i64,
    /// Subjects in scope (`None`: all).
    scope: Option<HashSet<String>>,
}

impl JobData {
    fn in_scope(&self, subject: &str) -> bool {
        self.scope.as_ref().is_none_or(|set| set.contains(subject))
    }

    /// A plan of row blocks as template id ranges, which keep their meaning
    /// for a node that loads the job later (after a deletion, say): the
    /// first block of a kind starts at 0, the last ends at `i64::MAX`.
    fn bounds(&self, planned: &[Block]) -> Vec<BlockBounds> {
        let finger_ids: Vec<i64> = self.fingers.iter().map(|f| f.id).collect();
        let range = |ids: &[i64], start: usize, end: usize| {
            let lo = if start == 0 { 0 } else { ids[start] };
            (lo, ids.get(end).copied().unwrap_or(i64::MAX))
        };
        planned
            .iter()
            .map(|b| match *b {
                Block::Faces { start, end } => {
                    let (lo, hi) = range(&self.face_ids, start, end);
                    BlockBounds { faces: true, lo, hi }
                }
                Block::Fingers { start, end } => {
                    let (lo, hi) = range(&finger_ids, start, end);
                    BlockBounds { faces: false, lo, hi }
                }
            })
            .collect()
    }

    /// The rows (faces) or templates (fingers) a block covers here.
    fn rows(&self, b: BlockBounds) -> (usize, usize) {
        let at = |id: i64| {
            if b.faces {
                self.face_ids.partition_point(|&t| t < id)
            } else {
                self.fingers.partition_point(|f| f.id < id)
            }
        };
        (at(b.lo), at(b.hi))
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
            crate::engine::lower_priority();
            // SAFETY: reads the calling thread's policy.
            unsafe { libc::sched_getscheduler(0) }
        })
        .join()
        .expect("thread");
        assert_eq!(policy, libc::SCHED_IDLE);
    }
}
