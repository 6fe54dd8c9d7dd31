//! A node on PostgreSQL keeps its indexes current by following the change
//! log: a LISTEN connection wakes it on every commit, and it reads the rows
//! after the last one it applied (also every `cluster.poll_secs`, and after
//! a reconnection), so a lost notification or a dropped link only delays a
//! change. Changes are applied in sequence: an enroll's templates are read
//! by id and added when the subject is in this node's shard, a deletion's
//! removed; every change moves the subjects count, whichever shard.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    EngineError, FaceModel,
    derived::Snapshots,
    face_index::{FaceIndexSpec, intern},
    finger_index::FingerIndexSpec,
};
use crate::{
    biometric::TemplateData,
    finger::{index::FingerIndex, template},
    index::VectorIndex,
    shard::Shard,
    store::{
        StoreError, TemplateSource,
        postgres::{CHANGES_CHANNEL, Change, PgRecords, PgSource},
    },
};

/// Changes read at once.
const PAGE: i64 = 1000;

/// The applied end of the change log, for those who wait for a change.
#[derive(Debug, Clone)]
pub(super) struct Following {
    pub(super) shard: Shard,
    applied: watch::Receiver<i64>,
}

impl Following {
    /// Waits until the change `seq` is applied here, at most `wait`; whether it was.
    pub(super) async fn applied(&self, seq: i64, wait: Duration) -> bool {
        let mut rx = self.applied.clone();
        matches!(tokio::time::timeout(wait, rx.wait_for(|s| *s >= seq)).await, Ok(Ok(_)))
    }

    /// The last change applied.
    pub(super) fn position(&self) -> i64 {
        *self.applied.borrow()
    }
}

/// The snapshots of the indexes the follower changes: counted as the
/// engine counts its own writes, so that a shard node saves its indexes
/// every `snapshot_every` changes and rewrites them after a deletion (a
/// deleted subject's templates leave the files too).
pub(super) struct Saves {
    pub(super) faces: (Snapshots, Arc<FaceIndexSpec>),
    pub(super) fingers: Option<(Snapshots, Arc<FingerIndexSpec>)>,
}

impl Saves {
    fn added(&self, faces: &Arc<RwLock<VectorIndex>>, fingers: &Arc<RwLock<FingerIndex>>, n: (usize, usize)) {
        self.faces.0.changed(n.0 as u64, &self.faces.1, faces);
        if let Some((s, spec)) = &self.fingers {
            s.changed(n.1 as u64, spec, fingers);
        }
    }

    fn erased(&self, faces: &Arc<RwLock<VectorIndex>>, fingers: &Arc<RwLock<FingerIndex>>, n: (usize, usize)) {
        self.faces.0.erased(n.0 as u64, &self.faces.1, faces);
        if let Some((s, spec)) = &self.fingers {
            s.erased(n.1 as u64, spec, fingers);
        }
    }
}

/// What the follower thread changes.
pub(super) struct Targets {
    pub(super) faces: Arc<RwLock<VectorIndex>>,
    pub(super) fingers: Arc<RwLock<FingerIndex>>,
    pub(super) face_model: FaceModel,
    pub(super) subjects: Arc<AtomicU64>,
    pub(super) saves: Saves,
    /// Deletions followed (the job runner's cached pair counts go stale).
    pub(super) deletions: Arc<AtomicU64>,
}

/// Starts following the change log after `from` (the sequence number the
/// loaded indexes reflect) on a thread of its own.
pub(super) fn start(
    records: PgRecords,
    url: &str,
    shard: Shard,
    from: i64,
    poll: Duration,
    targets: Targets,
) -> Result<Following, EngineError> {
    let (applied_tx, applied) = watch::channel(from);
    let (wake_tx, wake) = crossbeam_channel::bounded(1);
    if records.is_replica() {
        // A standby takes no LISTEN: its node reads the log every `poll`.
        drop(wake_tx);
    } else {
        tokio::runtime::Handle::current().spawn(listen(url.to_owned(), wake_tx));
    }
    let source = PgSource::new(records.clone(), shard);
    std::thread::Builder::new()
        .name("change-follower".into())
        .spawn(move || follow(&records, &source, shard, from, &wake, poll, &targets, &applied_tx))
        .map_err(|e| EngineError::Internal(format!("cannot start the change follower: {e}")))?;
    Ok(Following { shard, applied })
}

/// Holds a LISTEN connection, reconnecting after a failure; every
/// notification (and every reconnection) wakes the follower.
async fn listen(url: String, wake: Sender<()>) {
    let mut failures = 0u32;
    loop {
        match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async {
                    client.batch_execute(&format!("LISTEN {CHANGES_CHANNEL}")).await?;
                    Ok::<_, tokio_postgres::Error>(())
                };
                // The connection must be polled for LISTEN to complete.
                tokio::pin!(listening);
                let ok = loop {
                    tokio::select! {
                        r = &mut listening => break r.is_ok(),
                        m = messages.next() => if !matches!(m, Some(Ok(_))) { break false },
                    }
                };
                if ok {
                    failures = 0;
                    let _ = wake.try_send(());
                    while let Some(Ok(_)) = messages.next().await {
                        if let Err(crossbeam_channel::TrySendError::Disconnected(())) = wake.try_send(()) {
                            // The follower is gone: stop listening.
                            return;
                        }
                    }
                }
                warn!("change notifications lost; reconnecting");
            }
            Err(e) => warn!(error = %e, "cannot listen for changes; retrying"),
        }
        if let Err(crossbeam_channel::TrySendError::Disconnected(())) = wake.try_send(()) {
            // The follower is gone: stop listening.
            return;
        }
        failures = (failures + 1).min(5);
        tokio::time::sleep(Duration::from_millis(200 << failures)).await;
    }
}

#[allow(clippy::too_many_arguments)]
fn follow(
    records: &PgRecords,
    source: &PgSource,
    shard: Shard,
    from: i64,
    wake: &Receiver<()>,
    poll: Duration,
    targets: &Targets,
    applied: &watch::Sender<i64>,
) {
    let mut at = from;
    let mut owners: HashMap<String, Arc<str>> = HashMap::new();
    loop {
        // Pages of changes until the end of the log, or a failure (retried
        // after the next wake or poll, not at once).
        'catch_up: loop {
            let changes = match records.block(records.changes_after(at, PAGE)) {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, after = at, "cannot read the change log; retrying");
                    break;
                }
            };
            let last = changes.len() < PAGE as usize;
            for change in changes {
                if let Err(e) = apply(source, shard, &change, targets, &mut owners) {
                    warn!(error = %e, seq = change.seq, "cannot apply a change; retrying");
                    break 'catch_up;
                }
                at = change.seq;
                applied.send_replace(at);
            }
            if last {
                break;
            }
        }
        if applied.is_closed() {
            info!("change follower stopped");
            return;
        }
        match wake.recv_timeout(poll) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
        }
    }
}

/// Applies one change to this node's indexes and counts.
fn apply(
    source: &PgSource,
    shard: Shard,
    change: &Change,
    targets: &Targets,
    owners: &mut HashMap<String, Arc<str>>,
) -> Result<(), StoreError> {
    if shard.owns(&change.subject_id) {
        if change.deleted {
            let removed = remove(targets, &change.template_ids);
            owners.remove(&change.subject_id);
            targets.saves.erased(&targets.faces, &targets.fingers, removed);
            targets.deletions.fetch_add(1, Ordering::AcqRel);
        } else {
            let added = add(source, change, targets, owners)?;
            targets.saves.added(&targets.faces, &targets.fingers, added);
        }
    }
    let subjects = &targets.subjects;
    match change.subjects_delta {
        1 => subjects.fetch_add(1, Ordering::Relaxed),
        -1 => subjects.fetch_sub(1, Ordering::Relaxed),
        _ => 0,
    };
    Ok(())
}

/// Removes templates from the indexes; how many left each (faces, fingers).
fn remove(targets: &Targets, ids: &[i64]) -> (usize, usize) {
    let faces = match targets.faces.write().map(|mut g| g.remove(ids)) {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => {
            warn!(error = %e, "face index removal failed");
            0
        }
        Err(_) => 0,
    };
    let fingers = targets.fingers.write().map_or(0, |mut f| f.remove(ids));
    (faces, fingers)
}

/// Adds an enroll's templates (those still stored) not already indexed;
/// how many went into each index (faces, fingers).
fn add(
    source: &PgSource,
    change: &Change,
    targets: &Targets,
    owners: &mut HashMap<String, Arc<str>>,
) -> Result<(usize, usize), StoreError> {
    let templates = source.templates_with_ids(&change.template_ids)?;
    let owner = intern(owners, &change.subject_id);
    let model = &targets.face_model;
    let (mut ids, mut vectors) = (Vec::new(), Vec::new());
    let mut fingers = Vec::new();
    for t in templates {
        match &t.template.data {
            TemplateData::Embedding(v) if t.template.model_id == model.id && v.len() == model.dim => {
                if targets.faces.read().is_ok_and(|g| g.contains(t.template_id)) {
                    continue;
                }
                ids.push(t.template_id);
                vectors.extend_from_slice(v);
            }
            TemplateData::Minutiae(iso) => match template::matcher_template(iso) {
                Ok(m) => fingers.push((t.template_id, t.template.finger_position, m)),
                Err(e) => warn!(error = %e, template = t.template_id, "stored finger template does not parse"),
            },
            TemplateData::Embedding(_) => {}
        }
    }
    let mut added = (0, 0);
    if !ids.is_empty()
        && let Ok(mut g) = targets.faces.write()
    {
        let owners = vec![owner.clone(); ids.len()];
        match g.add(&ids, &owners, &vectors) {
            Ok(()) => added.0 = ids.len(),
            Err(e) => warn!(error = %e, "face index update failed"),
        }
    }
    if !fingers.is_empty()
        && let Ok(mut f) = targets.fingers.write()
    {
        for (id, position, m) in fingers {
            if f.template(id).is_none() {
                f.add(id, owner.clone(), position, m);
                added.1 += 1;
            }
        }
    }
    Ok(added)
}
