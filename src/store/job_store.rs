//! Batch jobs as the engine stores them, on either backend: created, read,
//! listed and stopped; a job's plan of blocks (template id ranges, fixed
//! when the job first starts); its blocks claimed one at a time and each
//! committed with the pairs it found. On the embedded store one runner
//! thread claims them in order; on PostgreSQL any number of nodes do, each
//! claim a row lock (`FOR UPDATE SKIP LOCKED`) held until the block commits,
//! so a node that dies mid-block loses its claim with its connection.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
};

use super::{JobRecord, JobState, PairComponent, SqliteRecords, StoreError};
use crate::biometric::{Modality, StoredTemplate};

/// One block of a job: the face rows or the finger templates whose
/// template ids are in `[lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockBounds {
    /// Face rows (`true`) or finger templates.
    pub faces: bool,
    /// First template id (inclusive).
    pub lo: i64,
    /// End template id (exclusive).
    pub hi: i64,
}

/// A block this worker holds until it commits it (or drops it, giving it back).
pub trait BlockClaim: Send {
    /// The block's number in the job's plan.
    fn block(&self) -> u64;

    /// Commits the block as done with the pairs it found (each kept once,
    /// with its best score), atomically.
    fn finish(self: Box<Self>, pairs: &[PairComponent]) -> Result<(), StoreError>;
}

/// The stored side of batch jobs.
pub trait JobStore: Send + Sync + std::fmt::Debug {
    /// Records a new queued job over the templates stored now.
    fn create_job(&self, kind: &str, params: &str) -> Result<JobRecord, StoreError>;

    /// A job, if it exists.
    fn job(&self, job_id: i64) -> Result<Option<JobRecord>, StoreError>;

    /// Up to `limit` jobs with ids below `before`, newest first.
    fn list_jobs(&self, before: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError>;

    /// Queued or running jobs, oldest first.
    fn unfinished_jobs(&self) -> Result<Vec<i64>, StoreError>;

    /// Sets a queued or running job's state (and error); a finished one keeps its own.
    fn set_job_state(&self, job_id: i64, state: JobState, error: &str) -> Result<(), StoreError>;

    /// Cancels a queued or running job; whether it was.
    fn cancel_job(&self, job_id: i64) -> Result<bool, StoreError>;

    /// Whether a worker could claim one of the job's blocks now (a job not
    /// yet planned counts as claimable): a worker asks before it loads the
    /// job's templates.
    fn claimable(&self, job_id: i64) -> Result<bool, StoreError>;

    /// Marks a queued job running and stores `plan` unless a plan is stored
    /// already (by another worker, or before a restart); the plan in force.
    fn begin_job(&self, job_id: i64, plan: Vec<BlockBounds>) -> Result<Vec<BlockBounds>, StoreError>;

    /// Claims the next block not done and not held by another worker.
    fn claim_block(&self, job_id: i64) -> Result<Option<Box<dyn BlockClaim>>, StoreError>;

    /// Marks a running job done once every block is; whether it is done.
    fn finish_job(&self, job_id: i64) -> Result<bool, StoreError>;

    /// Up to `limit` of a job's pair components after `after` in (a, b, component) order.
    fn job_pairs_after(
        &self,
        job_id: i64,
        after: Option<&PairComponent>,
        limit: usize,
    ) -> Result<Vec<PairComponent>, StoreError>;

    /// Subject ids created in `[from_ms, to_ms)` (0: unbounded).
    fn subjects_created(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, StoreError>;

    /// Every template of a modality with an id up to `max_id`, opened, in id order.
    fn templates_up_to(&self, modality: Modality, max_id: i64) -> Result<Vec<StoredTemplate>, StoreError>;
}

/// Pairs found twice in one block (two rows of one subject, or a finger
/// pair seen from both sides) kept once each, with the best score.
pub fn best_once(pairs: &[PairComponent]) -> Vec<PairComponent> {
    let mut best: HashMap<(&str, &str, &str), f64> = HashMap::new();
    for p in pairs {
        let e = best.entry((p.a.as_str(), p.b.as_str(), p.component.as_str())).or_insert(p.raw);
        *e = e.max(p.raw);
    }
    let mut out: Vec<PairComponent> = best
        .into_iter()
        .map(|((a, b, c), raw)| PairComponent { a: a.to_owned(), b: b.to_owned(), component: c.to_owned(), raw })
        .collect();
    out.sort_by(|x, y| (&x.a, &x.b, &x.component).cmp(&(&y.a, &y.b, &y.component)));
    out
}

/// The embedded store's claims: its one runner takes the blocks in order,
/// skipping those committed before a restart.
#[derive(Debug, Default)]
pub(super) struct SqliteClaims {
    /// Per job since its (re)start: the next block to hand out.
    places: Mutex<HashMap<i64, Place>>,
}

/// Where the runner is in one job: the next block, the plan's length and
/// the blocks committed before the (re)start (read once, when it begins).
#[derive(Debug)]
struct Place {
    next: u64,
    total: u64,
    done_before: HashSet<u64>,
}

impl SqliteClaims {
    fn places(&self) -> Result<std::sync::MutexGuard<'_, HashMap<i64, Place>>, StoreError> {
        self.places.lock().map_err(|_| StoreError::Corrupt("claims lock poisoned".into()))
    }
}

struct SqliteClaim {
    records: SqliteRecords,
    job_id: i64,
    block: u64,
}

impl BlockClaim for SqliteClaim {
    fn block(&self) -> u64 {
        self.block
    }

    fn finish(self: Box<Self>, pairs: &[PairComponent]) -> Result<(), StoreError> {
        self.records.writer()?.finish_block(self.job_id, self.block, pairs)
    }
}

impl JobStore for SqliteRecords {
    fn create_job(&self, kind: &str, params: &str) -> Result<JobRecord, StoreError> {
        self.writer()?.create_job(kind, params)
    }

    fn job(&self, job_id: i64) -> Result<Option<JobRecord>, StoreError> {
        self.reads.get()?.job(job_id)
    }

    fn list_jobs(&self, before: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        self.reads.get()?.list_jobs(before, limit)
    }

    fn unfinished_jobs(&self) -> Result<Vec<i64>, StoreError> {
        self.reads.get()?.unfinished_jobs()
    }

    fn set_job_state(&self, job_id: i64, state: JobState, error: &str) -> Result<(), StoreError> {
        self.writer()?.set_job_state(job_id, state, error)
    }

    fn cancel_job(&self, job_id: i64) -> Result<bool, StoreError> {
        self.writer()?.cancel_job(job_id)
    }

    fn claimable(&self, _job_id: i64) -> Result<bool, StoreError> {
        Ok(true)
    }

    fn begin_job(&self, job_id: i64, plan: Vec<BlockBounds>) -> Result<Vec<BlockBounds>, StoreError> {
        // One runner: the plan is made again from the same templates at
        // each (re)start, and the blocks committed before are skipped.
        let mut w = self.writer()?;
        if w.job(job_id)?.is_some_and(|j| j.state.active()) {
            w.set_job_state(job_id, JobState::Running, "")?;
        }
        w.set_job_total(job_id, plan.len() as u64)?;
        let done_before = w.finished_blocks(job_id)?;
        self.claims.places()?.insert(job_id, Place { next: 0, total: plan.len() as u64, done_before });
        Ok(plan)
    }

    fn claim_block(&self, job_id: i64) -> Result<Option<Box<dyn BlockClaim>>, StoreError> {
        let mut places = self.claims.places()?;
        let Some(place) = places.get_mut(&job_id) else { return Ok(None) };
        while place.next < place.total && place.done_before.contains(&place.next) {
            place.next += 1;
        }
        if place.next >= place.total {
            places.remove(&job_id);
            return Ok(None);
        }
        let block = place.next;
        place.next += 1;
        Ok(Some(Box::new(SqliteClaim { records: self.clone(), job_id, block })))
    }

    fn finish_job(&self, job_id: i64) -> Result<bool, StoreError> {
        let Some(j) = self.job(job_id)? else { return Ok(false) };
        if j.state == JobState::Running && j.done >= j.total {
            self.set_job_state(job_id, JobState::Done, "")?;
            return Ok(true);
        }
        Ok(j.state == JobState::Done)
    }

    fn job_pairs_after(
        &self,
        job_id: i64,
        after: Option<&PairComponent>,
        limit: usize,
    ) -> Result<Vec<PairComponent>, StoreError> {
        self.reads.get()?.job_pairs_after(job_id, after, limit)
    }

    fn subjects_created(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, StoreError> {
        self.reads.get()?.subjects_created(from_ms, to_ms)
    }

    fn templates_up_to(&self, modality: Modality, max_id: i64) -> Result<Vec<StoredTemplate>, StoreError> {
        self.reads.get()?.templates_up_to(modality, max_id)
    }
}
