//! The job calls as the API makes them: start a de-duplication job, its
//! state and progress, cancel it, and its results fused and clustered.

use std::sync::Arc;

use crate::{
    biometric::Modality,
    engine::{
        Calibrations, Candidate, Engine, EngineError,
        scoring::{RawScores, candidate},
        validate_name,
    },
    jobs::{DedupParams, Scope, clusters, parse_component},
    store::{JobRecord, JobState, JobStore, PairComponent, StoreError},
};

/// Largest subject list a job may name.
const MAX_SCOPE_SUBJECTS: usize = 1_000_000;

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
        self.writable()?;
        let rec = self.with_jobs(move |j| j.create_job("dedup", &json)).await?;
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
        self.writable()?;
        let rec = self.job_record(&job_id).await?;
        let id = rec.job_id;
        self.with_jobs(move |j| j.cancel_job(id)).await?;
        self.job(job_id).await
    }

    /// A job's pairs above its threshold (best first) and the clusters they
    /// form, all in memory (evaluations; the API streams [`Self::stream_job_results`]).
    pub async fn job_results(&self, job_id: String) -> Result<(Vec<DuplicatePair>, Vec<Vec<String>>), EngineError> {
        let walk = self.pair_walk(&self.job_record(&job_id).await?)?;
        let mut pairs = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk.run(|p| {
                out.push(p);
                true
            })?;
            Ok::<_, EngineError>(out)
        })
        .await??;
        pairs.sort_by(|x, y| {
            y.candidate
                .score
                .total_cmp(&x.candidate.score)
                .then_with(|| (&x.a, &x.candidate.subject_id).cmp(&(&y.a, &y.candidate.subject_id)))
        });
        let groups = clusters(pairs.iter().map(|p| (p.a.as_str(), p.candidate.subject_id.as_str())));
        Ok((pairs, groups))
    }

    /// Streams a job's results as the receiver takes them: its pairs at or
    /// above the threshold in subject id order, then the clusters they form.
    /// The store is read a page at a time, each page its own short read, so
    /// memory holds a page and the cluster edges, never the whole answer.
    pub async fn stream_job_results(
        &self,
        job_id: String,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<ResultItem, EngineError>>, EngineError> {
        let walk = self.pair_walk(&self.job_record(&job_id).await?)?;
        let (tx, rx) = tokio::sync::mpsc::channel(RESULT_BUFFER);
        tokio::task::spawn_blocking(move || {
            let mut edges: Vec<(String, String)> = Vec::new();
            let walked = walk.run(|p| {
                edges.push((p.a.clone(), p.candidate.subject_id.clone()));
                tx.blocking_send(Ok(ResultItem::Pair(p))).is_ok()
            });
            if let Err(e) = walked {
                let _ = tx.blocking_send(Err(e));
                return;
            }
            for group in clusters(edges.iter().map(|(a, b)| (a.as_str(), b.as_str()))) {
                if tx.blocking_send(Ok(ResultItem::Cluster(group))).is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// The pairs of a job at or above its threshold: counted by a walk over
    /// its stored pairs, or, for a finished job with no deletion since its
    /// last count, that count (a page of ListJobs costs no walk per job).
    async fn pair_count(&self, record: &JobRecord, walk: PairWalk) -> Result<u64, EngineError> {
        let finished = !record.state.active();
        let jobs = &self.jobs;
        let deletions = jobs.deletions.load(std::sync::atomic::Ordering::Acquire);
        let known = jobs.counted.lock().ok().and_then(|c| c.get(&record.job_id).copied());
        if finished && let Some((_, n)) = known.filter(|(seen, _)| *seen == deletions) {
            return Ok(n);
        }
        let n = tokio::task::spawn_blocking(move || {
            let mut n = 0u64;
            walk.run(|_| {
                n += 1;
                true
            })?;
            Ok::<_, EngineError>(n)
        })
        .await??;
        if finished && let Ok(mut c) = jobs.counted.lock() {
            c.insert(record.job_id, (deletions, n));
        }
        Ok(n)
    }

    async fn job_record(&self, job_id: &str) -> Result<JobRecord, EngineError> {
        let id: i64 = job_id.parse().map_err(|_| EngineError::invalid("INVALID_JOB_ID", "job_id", "not a job id"))?;
        self.with_jobs(move |j| j.job(id)).await?.ok_or_else(|| EngineError::JobNotFound(job_id.to_owned()))
    }

    /// Runs `f` on the job store, off the async runtime.
    pub(in crate::engine) async fn with_jobs<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, EngineError> {
        let jobs = self.job_store.clone();
        tokio::task::spawn_blocking(move || Ok(f(&*jobs)?)).await?
    }

    /// A walk over a job's stored pairs, fused and kept at or above its threshold.
    fn pair_walk(&self, rec: &JobRecord) -> Result<PairWalk, EngineError> {
        let params: DedupParams =
            serde_json::from_str(&rec.params).map_err(|e| EngineError::Internal(format!("job parameters: {e}")))?;
        Ok(PairWalk {
            jobs: self.job_store.clone(),
            job_id: rec.job_id,
            threshold: crate::engine::scoring::threshold_db(params.target_fmr),
            calibrations: self.calibrations.clone(),
            face_model_id: self.face_model.id.clone(),
        })
    }

    pub(in crate::engine) async fn job_status(&self, record: JobRecord) -> Result<JobStatus, EngineError> {
        let walk = self.pair_walk(&record)?;
        let threshold = walk.threshold;
        let pairs = self.pair_count(&record, walk).await?;
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
        Ok(JobStatus { record, rate, eta, pairs, threshold, basis, subjects: p.subjects, templates: p.templates })
    }
}

/// Pairs a streamed answer holds ready ahead of its reader.
const RESULT_BUFFER: usize = 256;

/// Pair components read from the store per page.
const PAIR_PAGE: usize = 4096;

/// One item of a job's streamed results.
#[derive(Debug)]
pub enum ResultItem {
    Pair(DuplicatePair),
    Cluster(Vec<String>),
}

/// A walk over one job's stored pair components, fusing each pair's.
#[derive(Debug)]
struct PairWalk {
    jobs: Arc<dyn JobStore>,
    job_id: i64,
    threshold: f64,
    calibrations: Calibrations,
    face_model_id: String,
}

impl PairWalk {
    /// Calls `f` with every fused pair at or above the threshold, in (a, b)
    /// order, until it returns false. Blocking.
    fn run(&self, mut f: impl FnMut(DuplicatePair) -> bool) -> Result<(), EngineError> {
        let mut after: Option<PairComponent> = None;
        let mut current: Option<(String, String, RawScores)> = None;
        loop {
            let page = self.jobs.job_pairs_after(self.job_id, after.as_ref(), PAIR_PAGE)?;
            let Some(last) = page.last().cloned() else { break };
            for c in page {
                let Some(component) = parse_component(&c.component) else { continue };
                if current.as_ref().is_none_or(|(a, b, _)| *a != c.a || *b != c.b) {
                    if let Some(done) = current.take()
                        && !self.emit(done, &mut f)
                    {
                        return Ok(());
                    }
                    current = Some((c.a, c.b, RawScores::new()));
                }
                if let Some((_, _, raw)) = current.as_mut() {
                    raw.insert(component, c.raw);
                }
            }
            after = Some(last);
        }
        if let Some(done) = current.take() {
            self.emit(done, &mut f);
        }
        Ok(())
    }

    fn emit(&self, (a, b, raw): (String, String, RawScores), f: &mut impl FnMut(DuplicatePair) -> bool) -> bool {
        let candidate = candidate(&self.calibrations, &self.face_model_id, b, &raw);
        candidate.score < self.threshold || f(DuplicatePair { a, candidate })
    }
}
