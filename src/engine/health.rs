//! Whether the engine can serve, checked while it runs: the inference
//! workers are there, the store commits, and the data directory's disk has
//! room. The server turns the answer into the health status.

use super::Engine;
use crate::{
    metrics::EngineGauges,
    store::{JobState, free_bytes},
};

impl Engine {
    /// Why the engine cannot serve now, or `None` when it can. Blocking:
    /// commits one small write to the store.
    pub fn health_problem(&self) -> Option<String> {
        if self.workers.alive() == 0 {
            return Some("no inference worker is running".into());
        }
        match free_bytes(&self.data_dir) {
            Ok(free) if free < self.min_free_bytes => {
                return Some(format!(
                    "the data directory's file system has {} MiB free, under store.min_free_mb = {}",
                    free >> 20,
                    self.min_free_bytes >> 20
                ));
            }
            Ok(_) => {}
            Err(e) => return Some(format!("cannot read the data directory's free space: {e}")),
        }
        self.records.probe().err().map(|e| format!("the store cannot commit: {e}"))
    }
}

impl Engine {
    /// The gauges a metrics scrape reports: inference queue and workers,
    /// free disk, snapshot ages, running jobs' progress. Blocking (reads
    /// the store).
    pub fn gauges(&self) -> EngineGauges {
        let mut g = EngineGauges {
            inference_queue: self.workers.queued() as u64,
            inference_workers: self.workers.alive() as u64,
            ..EngineGauges::default()
        };
        let age = |file: &crate::store::SealedFile| {
            let modified = std::fs::metadata(file.path()).and_then(|m| m.modified()).ok()?;
            Some(modified.elapsed().unwrap_or_default().as_secs_f64())
        };
        if let Some(a) = age(&self.snapshots.file) {
            g.snapshot_age.push(("face", a));
        }
        if let Some(a) = self.finger_snapshots.as_ref().and_then(|s| age(&s.file)) {
            g.snapshot_age.push(("finger", a));
        }
        g.free_bytes = free_bytes(&self.data_dir).unwrap_or(0);
        if let Ok(jobs) = self.job_store.list_jobs(i64::MAX, 100) {
            g.jobs = jobs
                .into_iter()
                .filter(|j| matches!(j.state, JobState::Queued | JobState::Running))
                .map(|j| (j.job_id.to_string(), j.done, j.total))
                .collect();
        }
        g
    }
}
