//! Whether the engine can serve, checked while it runs: the inference
//! workers are there, the store commits, and the data directory's disk has
//! room. The server turns the answer into the health status.

use super::{Engine, lock};

impl Engine {
    /// Why the engine cannot serve now, or `None` when it can. Blocking:
    /// commits one small write to the store.
    pub fn health_problem(&self) -> Option<String> {
        if self.workers.alive() == 0 {
            return Some("no inference worker is running".into());
        }
        let mut store = match lock(&self.store) {
            Ok(s) => s,
            Err(e) => return Some(format!("the store is unusable: {e}")),
        };
        match store.free_bytes() {
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
        store.probe_commit().err().map(|e| format!("the store cannot commit: {e}"))
    }
}
