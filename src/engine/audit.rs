//! The engine's side of the audit log: recording calls, reading and
//! checking the chain, and the signed checkpoints that anchor it outside
//! the data directory.

use tracing::{error, info, warn};

use super::{Engine, EngineError, read};
use crate::{
    config::{AuditConfig, OnBrokenAudit},
    store::{AuditEntry, AuditRecord, ChainCheck, Checkpoints, Records, StoreError},
};

/// Opens the configured checkpoints (none when `audit.checkpoint_dir` is
/// empty) and checks the chain from the last one on. A broken chain stops
/// the start-up, or (`on_broken = "not_serving"`) comes back as the problem
/// the server reports while it refuses every call but the audit role's.
pub(super) fn check_at_start(
    store: &dyn Records,
    config: &AuditConfig,
    data_dir: &std::path::Path,
) -> Result<(Option<Checkpoints>, Option<String>), EngineError> {
    let checkpoints = if store.backend() == "postgres" {
        if !config.checkpoint_dir.as_os_str().is_empty() {
            warn!("audit.checkpoint_dir is not used with store.url: the chain in PostgreSQL is checked whole");
        }
        None
    } else if config.checkpoint_dir.as_os_str().is_empty() {
        warn!("no audit checkpoints (audit.checkpoint_dir): truncating or rebuilding the audit log would go unseen");
        None
    } else {
        Some(Checkpoints::open(&config.checkpoint_dir, &config.checkpoint_key_file, data_dir)?)
    };
    let last = match &checkpoints {
        Some(c) => c.read()?,
        None => None,
    };
    let problem = match store.verify_audit(last.as_ref(), true) {
        Ok(check) => {
            info!(
                entries = check.entries,
                head = check.head_seq,
                since = last.as_ref().map(|c| c.seq),
                "audit chain checked"
            );
            None
        }
        Err(e @ StoreError::AuditBroken { .. }) => match config.on_broken {
            OnBrokenAudit::Refuse => return Err(e.into()),
            OnBrokenAudit::NotServing => {
                error!(error = %e, "audit log broken: NOT_SERVING, only the audit role is answered");
                Some(e.to_string())
            }
        },
        Err(e) => return Err(e.into()),
    };
    Ok((checkpoints, problem))
}

impl Engine {
    /// Records one call; durable when this returns.
    pub async fn record_audit(&self, record: AuditRecord) -> Result<(), EngineError> {
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || Ok(records.audit(&record)?)).await?
    }

    /// Walks the whole chain and checks it against the last signed checkpoint.
    pub async fn verify_audit(&self) -> Result<ChainCheck, EngineError> {
        let records = self.records.clone();
        let checkpoints = self.checkpoints.clone();
        tokio::task::spawn_blocking(move || {
            let last = match &checkpoints {
                Some(c) => c.read()?,
                None => None,
            };
            Ok(records.verify_audit(last.as_ref(), false)?)
        })
        .await?
    }

    /// Up to `limit` entries from `from_seq` on.
    pub async fn audit_entries(&self, from_seq: i64, limit: usize) -> Result<Vec<AuditEntry>, EngineError> {
        read(&self.records, move |r| r.audit_entries(from_seq, limit)).await
    }

    /// Why the audit log is not trusted (`on_broken = "not_serving"`), if it is not.
    pub fn audit_problem(&self) -> Option<&str> {
        self.audit_problem.as_deref()
    }

    /// Signs the chain's head into a checkpoint if it moved since the last
    /// one and chains from it (blocking; the server calls it periodically and at shutdown).
    pub fn write_checkpoint(&self) -> Result<(), EngineError> {
        let Some(checkpoints) = &self.checkpoints else { return Ok(()) };
        if self.audit_problem.is_some() {
            // Never vouch for a chain found broken.
            return Ok(());
        }
        let last = checkpoints.read()?;
        // Only entries that chain from the last checkpoint are vouched for:
        // a row edited since then is reported, not signed over.
        let check = self.records.verify_audit(last.as_ref(), true)?;
        if last.as_ref().is_some_and(|c| c.seq == check.head_seq) {
            return Ok(());
        }
        checkpoints.write(check.head_seq, &check.head_hash, crate::store::now_ms())?;
        Ok(())
    }
}
