//! Stored batch jobs: parameters, state, finished blocks and the pairs each
//! block found. A block's pairs and its completion commit together, so a job
//! restarted after a crash redoes only unfinished blocks, and pairs are kept
//! once per (pair, component) with the best score (order-independent, so an
//! interrupted job ends with the same results as an uninterrupted one).

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Reader, Store, StoreError, commit, now_ms};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL,
    max_template_id INTEGER NOT NULL,
    total INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS job_blocks (
    job_id INTEGER NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    block INTEGER NOT NULL,
    PRIMARY KEY (job_id, block)
) STRICT;
CREATE TABLE IF NOT EXISTS job_pairs (
    job_id INTEGER NOT NULL REFERENCES jobs(job_id) ON DELETE CASCADE,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    component TEXT NOT NULL,
    raw REAL NOT NULL,
    PRIMARY KEY (job_id, a, b, component)
) STRICT;
-- A subject's deletion removes the pairs that name it, on either side.
CREATE INDEX IF NOT EXISTS job_pairs_a ON job_pairs(a);
CREATE INDEX IF NOT EXISTS job_pairs_b ON job_pairs(b);
";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for the runner.
    Queued,
    /// Blocks being computed.
    Running,
    /// Every block done.
    Done,
    /// Stopped by a caller (results so far stay readable).
    Cancelled,
    /// Stopped by an error (`JobRecord::error` says which).
    Failed,
}

impl JobState {
    /// The name stored in the `jobs` table.
    pub fn name(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
        }
    }

    pub(super) fn parse(name: &str) -> Option<Self> {
        [Self::Queued, Self::Running, Self::Done, Self::Cancelled, Self::Failed].into_iter().find(|s| s.name() == name)
    }

    /// Whether the job is still to run or running.
    pub fn active(self) -> bool {
        matches!(self, Self::Queued | Self::Running)
    }
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct JobRecord {
    /// Id.
    pub job_id: i64,
    /// Kind ("dedup").
    pub kind: String,
    /// Parameters (JSON).
    pub params: String,
    /// Where it is.
    pub state: JobState,
    /// Templates enrolled after the job started are not part of it.
    pub max_template_id: i64,
    /// Blocks in all (0 until the job has started).
    pub total: u64,
    /// Blocks finished.
    pub done: u64,
    /// Why it failed.
    pub error: String,
    /// Creation time.
    pub created_ms: i64,
}

/// One raw component score of a candidate pair: subjects `a < b`.
#[derive(Debug, Clone, PartialEq)]
pub struct PairComponent {
    /// First subject.
    pub a: String,
    /// Second subject.
    pub b: String,
    /// "face" or "finger:<position>".
    pub component: String,
    /// Best raw score.
    pub raw: f64,
}

/// The columns [`job_row`] reads.
const JOB_COLUMNS: &str =
    "SELECT job_id, kind, params, state, max_template_id, total, done, error, created_ms FROM jobs";

/// A [`JobRecord`] from a row of [`JOB_COLUMNS`].
fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRecord> {
    let name: String = r.get(3)?;
    let state = JobState::parse(&name).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown job state {name:?}").into(),
        )
    })?;
    Ok(JobRecord {
        job_id: r.get(0)?,
        kind: r.get(1)?,
        params: r.get(2)?,
        state,
        max_template_id: r.get(4)?,
        total: r.get::<_, i64>(5)? as u64,
        done: r.get::<_, i64>(6)? as u64,
        error: r.get(7)?,
        created_ms: r.get(8)?,
    })
}

impl Store {
    /// Records a new queued job.
    pub fn create_job(&mut self, kind: &str, params: &str) -> Result<JobRecord, StoreError> {
        let now = now_ms();
        let max_id: i64 =
            self.conn.query_row("SELECT COALESCE(MAX(template_id), 0) FROM templates", [], |r| r.get(0))?;
        self.conn.execute(
            "INSERT INTO jobs (kind, params, state, max_template_id, created_ms, updated_ms)
             VALUES (?1, ?2, 'queued', ?3, ?4, ?4)",
            params![kind, params, max_id, now],
        )?;
        let id = self.conn.last_insert_rowid();
        self.job(id)?.ok_or_else(|| StoreError::Corrupt("job vanished".into()))
    }

    /// Sets a queued or running job's state (and error); a finished one keeps its own.
    pub fn set_job_state(&mut self, job_id: i64, state: JobState, error: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE jobs SET state = ?2, error = ?3, updated_ms = ?4
             WHERE job_id = ?1 AND state IN ('queued', 'running')",
            params![job_id, state.name(), error, now_ms()],
        )?;
        Ok(())
    }

    /// Cancels a queued or running job; returns whether it was.
    pub fn cancel_job(&mut self, job_id: i64) -> Result<bool, StoreError> {
        let n = self.conn.execute(
            "UPDATE jobs SET state = 'cancelled', updated_ms = ?2 WHERE job_id = ?1 AND state IN ('queued', 'running')",
            params![job_id, now_ms()],
        )?;
        Ok(n > 0)
    }

    /// Records the number of blocks once the scope is known.
    pub fn set_job_total(&mut self, job_id: i64, total: u64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE jobs SET total = ?2 WHERE job_id = ?1", params![job_id, total as i64])?;
        Ok(())
    }

    /// Commits a finished block with the pairs it found, atomically.
    pub fn finish_block(&mut self, job_id: i64, block: u64, pairs: &[PairComponent]) -> Result<(), StoreError> {
        let tx = self.reader.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let new = tx.execute(
            "INSERT OR IGNORE INTO job_blocks (job_id, block) VALUES (?1, ?2)",
            params![job_id, block as i64],
        )?;
        if new == 1 {
            upsert_pairs(&tx, job_id, pairs)?;
            tx.execute(
                "UPDATE jobs SET done = done + 1, updated_ms = ?2 WHERE job_id = ?1",
                params![job_id, now_ms()],
            )?;
        }
        commit(tx)?;
        Ok(())
    }
}

impl Reader {
    /// A job, if it exists.
    pub fn job(&self, job_id: i64) -> Result<Option<JobRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(&format!("{JOB_COLUMNS} WHERE job_id = ?1"))?;
        Ok(st.query_row([job_id], job_row).optional()?)
    }

    /// Up to `limit` jobs with ids below `before`, newest first.
    pub fn list_jobs(&self, before: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let mut st =
            self.conn.prepare_cached(&format!("{JOB_COLUMNS} WHERE job_id < ?1 ORDER BY job_id DESC LIMIT ?2"))?;
        let jobs = st
            .query_map(params![before, i64::try_from(limit).unwrap_or(i64::MAX)], job_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(jobs)
    }

    /// Jobs a (re)started server must run, oldest first.
    pub fn unfinished_jobs(&self) -> Result<Vec<i64>, StoreError> {
        let mut st =
            self.conn.prepare("SELECT job_id FROM jobs WHERE state IN ('queued', 'running') ORDER BY job_id")?;
        let ids = st.query_map([], |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?;
        Ok(ids)
    }

    /// Blocks already finished.
    pub fn finished_blocks(&self, job_id: i64) -> Result<HashSet<u64>, StoreError> {
        let mut st = self.conn.prepare("SELECT block FROM job_blocks WHERE job_id = ?1")?;
        let blocks = st.query_map([job_id], |r| r.get::<_, i64>(0))?.collect::<Result<Vec<i64>, _>>()?;
        Ok(blocks.into_iter().map(|b| b as u64).collect())
    }

    /// Every pair component a job found so far, ordered.
    pub fn job_pairs(&self, job_id: i64) -> Result<Vec<PairComponent>, StoreError> {
        let mut all = Vec::new();
        loop {
            let page = self.job_pairs_after(job_id, all.last(), 4096)?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Up to `limit` of a job's pair components after `after` in (a, b,
    /// component) order: a walk over millions of pairs a page at a time,
    /// each page one short read along the primary key.
    pub fn job_pairs_after(
        &self,
        job_id: i64,
        after: Option<&PairComponent>,
        limit: usize,
    ) -> Result<Vec<PairComponent>, StoreError> {
        let (a, b, c) = after.map_or(("", "", ""), |p| (p.a.as_str(), p.b.as_str(), p.component.as_str()));
        let mut st = self.conn.prepare_cached(
            "SELECT a, b, component, raw FROM job_pairs
             WHERE job_id = ?1 AND (a, b, component) > (?2, ?3, ?4)
             ORDER BY a, b, component LIMIT ?5",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![job_id, a, b, c, limit], |r| {
                Ok(PairComponent { a: r.get(0)?, b: r.get(1)?, component: r.get(2)?, raw: r.get(3)? })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Subject ids created in `[from_ms, to_ms)` (0: unbounded).
    pub fn subjects_created(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, StoreError> {
        let to = if to_ms == 0 { i64::MAX } else { to_ms };
        let mut st = self.conn.prepare(
            "SELECT subject_id FROM subjects WHERE created_ms >= ?1 AND created_ms < ?2 ORDER BY subject_id",
        )?;
        let ids = st.query_map(params![from_ms, to], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        Ok(ids)
    }
}

fn upsert_pairs(conn: &Connection, job_id: i64, pairs: &[PairComponent]) -> Result<(), StoreError> {
    // A subject deleted since the job loaded its templates is not paired
    // again (the deletion removed its pairs; the writer orders the two).
    let mut st = conn.prepare_cached(
        "INSERT INTO job_pairs (job_id, a, b, component, raw) SELECT ?1, ?2, ?3, ?4, ?5
         WHERE EXISTS (SELECT 1 FROM subjects WHERE subject_id = ?2)
           AND EXISTS (SELECT 1 FROM subjects WHERE subject_id = ?3)
         ON CONFLICT (job_id, a, b, component) DO UPDATE SET raw = MAX(raw, excluded.raw)",
    )?;
    for p in pairs {
        st.execute(params![job_id, p.a, p.b, p.component, p.raw])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_commit_once_and_pairs_keep_their_best_score() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path(), "").expect("open");
        s.conn
            .execute("INSERT INTO subjects (subject_id, created_ms) VALUES ('a', 0), ('b', 0)", [])
            .expect("subjects");
        let j = s.create_job("dedup", "{}").expect("job");
        assert_eq!(j.state, JobState::Queued);
        s.set_job_total(j.job_id, 3).expect("total");
        let p = |raw| PairComponent { a: "a".into(), b: "b".into(), component: "face".into(), raw };
        s.finish_block(j.job_id, 0, &[p(0.7)]).expect("block");
        s.finish_block(j.job_id, 0, &[p(0.9)]).expect("again: ignored");
        s.finish_block(j.job_id, 1, &[p(0.8)]).expect("block");
        assert_eq!(s.job_pairs(j.job_id).expect("pairs"), vec![p(0.8)]);
        let j2 = s.job(j.job_id).expect("read").expect("exists");
        assert_eq!((j2.done, j2.total), (2, 3));
        assert_eq!(s.finished_blocks(j.job_id).expect("blocks"), HashSet::from([0, 1]));
        assert_eq!(s.unfinished_jobs().expect("unfinished"), vec![j.job_id]);
        assert!(s.cancel_job(j.job_id).expect("cancel"));
        assert!(!s.cancel_job(j.job_id).expect("cancel twice"));
        assert!(s.unfinished_jobs().expect("unfinished").is_empty());
    }

    #[test]
    fn pairs_are_read_a_page_at_a_time_in_key_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Store::open(dir.path(), "").expect("open");
        let j = s.create_job("dedup", "{}").expect("job");
        s.conn
            .execute("INSERT INTO subjects (subject_id, created_ms) VALUES ('a', 0), ('b', 0), ('c', 0)", [])
            .expect("subjects");
        let p = |a: &str, b: &str, c: &str| PairComponent { a: a.into(), b: b.into(), component: c.into(), raw: 0.5 };
        let stored = [p("b", "c", "face"), p("a", "c", "finger:2"), p("a", "b", "face"), p("a", "c", "face")];
        s.finish_block(j.job_id, 0, &stored).expect("block");
        let reads = s.read_pool();
        let r = reads.get().expect("reader");
        let mut walked = Vec::new();
        loop {
            let page = r.job_pairs_after(j.job_id, walked.last(), 3).expect("page");
            assert!(page.len() <= 3);
            if page.is_empty() {
                break;
            }
            walked.extend(page);
        }
        let order: Vec<_> = walked.iter().map(|c| (c.a.as_str(), c.b.as_str(), c.component.as_str())).collect();
        assert_eq!(order, [("a", "b", "face"), ("a", "c", "face"), ("a", "c", "finger:2"), ("b", "c", "face")]);
        assert_eq!(s.job_pairs(j.job_id).expect("all"), walked);
    }
}
