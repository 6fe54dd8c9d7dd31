//! Batch jobs in PostgreSQL, worked on by any number of nodes: the first
//! node to start a job stores its plan as rows of `job_blocks`; every node
//! claims a block by locking its row with `FOR UPDATE SKIP LOCKED` in a
//! transaction that stays open while the block is computed and commits the
//! block's pairs with its completion. A node that dies mid-block drops its
//! connection, its transaction rolls back and the block is free again.

use tokio_postgres::Row;

use super::{PgRecords, pg};
use crate::{
    biometric::{Modality, StoredTemplate},
    store::{BlockBounds, BlockClaim, JobRecord, JobState, JobStore, PairComponent, StoreError, best_once, now_ms},
};

/// Template rows read at once by [`JobStore::templates_up_to`].
const PAGE: i64 = 4096;

const JOB_COLUMNS: &str =
    "SELECT job_id, kind, params, state, max_template_id, total, done, error, created_ms FROM jobs";

fn job_row(r: &Row) -> Result<JobRecord, StoreError> {
    let name: String = r.get(3);
    let state = JobState::parse(&name).ok_or_else(|| StoreError::Corrupt(format!("unknown job state {name:?}")))?;
    Ok(JobRecord {
        job_id: r.get(0),
        kind: r.get(1),
        params: r.get(2),
        state,
        max_template_id: r.get(4),
        total: r.get::<_, i64>(5) as u64,
        done: r.get::<_, i64>(6) as u64,
        error: r.get(7),
        created_ms: r.get(8),
    })
}

/// This process, as `job_blocks.done_by` names it: host and process id.
fn worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{}", host.trim(), std::process::id())
}

/// A claimed block: its connection holds the row lock in an open transaction.
struct PgClaim {
    records: PgRecords,
    client: Option<deadpool_postgres::Object>,
    job_id: i64,
    block: u64,
}

impl BlockClaim for PgClaim {
    fn block(&self) -> u64 {
        self.block
    }

    fn finish(mut self: Box<Self>, pairs: &[PairComponent]) -> Result<(), StoreError> {
        let client = self.client.take().ok_or_else(|| StoreError::Corrupt("block claim used twice".into()))?;
        let pairs = best_once(pairs);
        let (job_id, block) = (self.job_id, self.block as i64);
        self.records.block(async move {
            let done = commit_block(&client, job_id, block, &pairs).await;
            if done.is_err() {
                // Never back to the pool inside a failed transaction.
                let _ = client.batch_execute("ROLLBACK").await;
            }
            done
        })
    }
}

/// A claimed block's pairs (those whose subjects both still exist) and its
/// completion, committed in the claim's transaction.
async fn commit_block(
    client: &tokio_postgres::Client,
    job_id: i64,
    block: i64,
    pairs: &[PairComponent],
) -> Result<(), StoreError> {
    // Subjects deleted since the job loaded its templates are not paired
    // again: their rows are locked against a deletion in progress, which
    // takes them FOR UPDATE first and then removes their pairs.
    let mut named: Vec<&str> = pairs.iter().flat_map(|p| [p.a.as_str(), p.b.as_str()]).collect();
    named.sort_unstable();
    named.dedup();
    let live: std::collections::HashSet<String> = client
        .query(
            "SELECT subject_id FROM subjects WHERE subject_id = ANY($1) ORDER BY subject_id FOR KEY SHARE",
            &[&named],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let kept: Vec<&PairComponent> = pairs.iter().filter(|p| live.contains(&p.a) && live.contains(&p.b)).collect();
    let a: Vec<&str> = kept.iter().map(|p| p.a.as_str()).collect();
    let b: Vec<&str> = kept.iter().map(|p| p.b.as_str()).collect();
    let c: Vec<&str> = kept.iter().map(|p| p.component.as_str()).collect();
    let raw: Vec<f64> = kept.iter().map(|p| p.raw).collect();
    client
        .execute(
            "INSERT INTO job_pairs (job_id, a, b, component, raw)
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::float8[])
             ON CONFLICT (job_id, a, b, component) DO UPDATE SET raw = GREATEST(job_pairs.raw, EXCLUDED.raw)",
            &[&job_id, &a, &b, &c, &raw],
        )
        .await
        .map_err(pg)?;
    client
        .execute(
            "UPDATE job_blocks SET done = TRUE, done_by = $3 WHERE job_id = $1 AND block = $2",
            &[&job_id, &block, &worker_name()],
        )
        .await
        .map_err(pg)?;
    client
        .execute("UPDATE jobs SET done = done + 1, updated_ms = $2 WHERE job_id = $1", &[&job_id, &now_ms()])
        .await
        .map_err(pg)?;
    client.batch_execute("COMMIT").await.map_err(pg)
}

impl Drop for PgClaim {
    fn drop(&mut self) {
        // Given back unfinished: the transaction ends and the block is free.
        if let Some(client) = self.client.take() {
            let _ = self.records.block(async move { client.batch_execute("ROLLBACK").await.map_err(pg) });
        }
    }
}

impl JobStore for PgRecords {
    fn create_job(&self, kind: &str, params: &str) -> Result<JobRecord, StoreError> {
        let rows = self.query_blocking(
            &format!(
                "WITH made AS (
                     INSERT INTO jobs (kind, params, state, max_template_id, created_ms, updated_ms)
                     SELECT $1, $2, 'queued', COALESCE(MAX(template_id), 0), $3, $3 FROM templates
                     RETURNING *)
                 {} ",
                JOB_COLUMNS.replace("FROM jobs", "FROM made")
            ),
            &[&kind, &params, &now_ms()],
        )?;
        rows.first().map(job_row).ok_or_else(|| StoreError::Corrupt("job vanished".into()))?
    }

    fn job(&self, job_id: i64) -> Result<Option<JobRecord>, StoreError> {
        let rows = self.query_blocking(&format!("{JOB_COLUMNS} WHERE job_id = $1"), &[&job_id])?;
        rows.first().map(job_row).transpose()
    }

    fn list_jobs(&self, before: i64, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query_blocking(
            &format!("{JOB_COLUMNS} WHERE job_id < $1 ORDER BY job_id DESC LIMIT $2"),
            &[&before, &limit],
        )?;
        rows.iter().map(job_row).collect()
    }

    fn unfinished_jobs(&self) -> Result<Vec<i64>, StoreError> {
        let rows =
            self.query_blocking("SELECT job_id FROM jobs WHERE state IN ('queued', 'running') ORDER BY job_id", &[])?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn set_job_state(&self, job_id: i64, state: JobState, error: &str) -> Result<(), StoreError> {
        self.query_blocking(
            "UPDATE jobs SET state = $2, error = $3, updated_ms = $4
             WHERE job_id = $1 AND state IN ('queued', 'running')",
            &[&job_id, &state.name(), &error, &now_ms()],
        )?;
        Ok(())
    }

    fn cancel_job(&self, job_id: i64) -> Result<bool, StoreError> {
        let rows = self.query_blocking(
            "UPDATE jobs SET state = 'cancelled', updated_ms = $2
             WHERE job_id = $1 AND state IN ('queued', 'running') RETURNING job_id",
            &[&job_id, &now_ms()],
        )?;
        Ok(!rows.is_empty())
    }

    fn claimable(&self, job_id: i64) -> Result<bool, StoreError> {
        let unplanned = self.query_blocking(
            "SELECT 1 FROM jobs WHERE job_id = $1 AND total = 0 AND state IN ('queued', 'running')",
            &[&job_id],
        )?;
        // A lock taken in autocommit ends with the statement: a look, not a claim.
        let free = || {
            self.query_blocking(
                "SELECT 1 FROM job_blocks WHERE job_id = $1 AND NOT done LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[&job_id],
            )
        };
        Ok(!unplanned.is_empty() || !free()?.is_empty())
    }

    fn begin_job(&self, job_id: i64, plan: Vec<BlockBounds>) -> Result<Vec<BlockBounds>, StoreError> {
        self.block(async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            // The job row's lock makes workers starting together store one plan.
            let total: i64 = tx
                .query_one("SELECT total FROM jobs WHERE job_id = $1 FOR UPDATE", &[&job_id])
                .await
                .map_err(pg)?
                .get(0);
            tx.execute(
                "UPDATE jobs SET state = 'running', updated_ms = $2 WHERE job_id = $1 AND state = 'queued'",
                &[&job_id, &now_ms()],
            )
            .await
            .map_err(pg)?;
            if total == 0 && !plan.is_empty() {
                let blocks: Vec<i64> = (0..plan.len() as i64).collect();
                let faces: Vec<bool> = plan.iter().map(|b| b.faces).collect();
                let lo: Vec<i64> = plan.iter().map(|b| b.lo).collect();
                let hi: Vec<i64> = plan.iter().map(|b| b.hi).collect();
                tx.execute(
                    "INSERT INTO job_blocks (job_id, block, faces, lo, hi)
                     SELECT $1, * FROM UNNEST($2::bigint[], $3::boolean[], $4::bigint[], $5::bigint[])",
                    &[&job_id, &blocks, &faces, &lo, &hi],
                )
                .await
                .map_err(pg)?;
                tx.execute("UPDATE jobs SET total = $2 WHERE job_id = $1", &[&job_id, &(plan.len() as i64)])
                    .await
                    .map_err(pg)?;
            }
            let rows = tx
                .query("SELECT faces, lo, hi FROM job_blocks WHERE job_id = $1 ORDER BY block", &[&job_id])
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
            Ok(rows.iter().map(|r| BlockBounds { faces: r.get(0), lo: r.get(1), hi: r.get(2) }).collect())
        })
    }

    fn claim_block(&self, job_id: i64) -> Result<Option<Box<dyn BlockClaim>>, StoreError> {
        let claimed = self.block(async {
            let client = self.client().await?;
            client.batch_execute("BEGIN").await.map_err(pg)?;
            let row = client
                .query_opt(
                    "SELECT block FROM job_blocks WHERE job_id = $1 AND NOT done
                     ORDER BY block LIMIT 1 FOR UPDATE SKIP LOCKED",
                    &[&job_id],
                )
                .await
                .map_err(pg);
            match row {
                Ok(Some(r)) => Ok(Some((client, r.get::<_, i64>(0)))),
                Ok(None) => {
                    client.batch_execute("ROLLBACK").await.map_err(pg)?;
                    Ok(None)
                }
                Err(e) => {
                    let _ = client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })?;
        Ok(claimed.map(|(client, block)| {
            Box::new(PgClaim { records: self.clone(), client: Some(client), job_id, block: block as u64 })
                as Box<dyn BlockClaim>
        }))
    }

    fn finish_job(&self, job_id: i64) -> Result<bool, StoreError> {
        // Asked after each worker's last commit: the last to commit sees every block done.
        let rows = self.query_blocking(
            "UPDATE jobs SET state = 'done', updated_ms = $2
             WHERE job_id = $1 AND state = 'running'
               AND NOT EXISTS (SELECT 1 FROM job_blocks WHERE job_id = $1 AND NOT done)
             RETURNING job_id",
            &[&job_id, &now_ms()],
        )?;
        Ok(!rows.is_empty() || self.job(job_id)?.is_some_and(|j| j.state == JobState::Done))
    }

    fn job_pairs_after(
        &self,
        job_id: i64,
        after: Option<&PairComponent>,
        limit: usize,
    ) -> Result<Vec<PairComponent>, StoreError> {
        let (a, b, c) = after.map_or(("", "", ""), |p| (p.a.as_str(), p.b.as_str(), p.component.as_str()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.query_blocking(
            "SELECT a, b, component, raw FROM job_pairs
             WHERE job_id = $1 AND (a, b, component) > ($2, $3, $4)
             ORDER BY a, b, component LIMIT $5",
            &[&job_id, &a, &b, &c, &limit],
        )?;
        Ok(rows
            .iter()
            .map(|r| PairComponent { a: r.get(0), b: r.get(1), component: r.get(2), raw: r.get(3) })
            .collect())
    }

    fn subjects_created(&self, from_ms: i64, to_ms: i64) -> Result<Vec<String>, StoreError> {
        let to = if to_ms == 0 { i64::MAX } else { to_ms };
        let rows = self.query_blocking(
            "SELECT subject_id FROM subjects WHERE created_ms >= $1 AND created_ms < $2 ORDER BY subject_id",
            &[&from_ms, &to],
        )?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn templates_up_to(&self, modality: Modality, max_id: i64) -> Result<Vec<StoredTemplate>, StoreError> {
        let code = modality.code() as i16;
        let mut out = Vec::new();
        let mut after = 0i64;
        loop {
            let rows = self.query_blocking(
                "SELECT template_id, subject_id, encounter_id, modality, finger_position, model_id, quality, sealed
                 FROM templates WHERE modality = $1 AND template_id > $2 AND template_id <= $3
                 ORDER BY template_id LIMIT $4",
                &[&code, &after, &max_id, &PAGE],
            )?;
            let Some(last) = rows.last() else { return Ok(out) };
            after = last.get(0);
            for r in &rows {
                out.push(self.open_row(r.get(0), r.get(1), r, 2)?);
            }
        }
    }
}
