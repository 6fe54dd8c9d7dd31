//! What the face index and the finger index have in common: each is
//! derived data, held in memory, made from the store. It is loaded from its
//! sealed snapshot plus a replay of the store's changes since, or else
//! rebuilt from every stored template, and saved again now and then (on a
//! background thread, one writer at a time) and at shutdown.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tracing::{info, warn};

use super::EngineError;
use crate::store::{SealedFile, TemplateSource};

/// An index derived from the store, with how it is loaded, rebuilt and saved.
pub(super) trait DerivedIndex: Send + Sync + 'static {
    /// The structure searched.
    type Index: Send + Sync + 'static;
    /// What logs call it.
    const NAME: &'static str;
    /// Its snapshot's file name in the data directory.
    const SNAPSHOT_FILE: &'static str;

    /// The index from its snapshot and a replay of the store's changes
    /// since, and whether the snapshot was behind; `None` without a snapshot.
    fn restore(
        &self,
        store: &dyn TemplateSource,
        file: &SealedFile,
    ) -> Result<Option<(Self::Index, bool)>, EngineError>;

    /// The index from every stored template.
    fn rebuild(&self, store: &dyn TemplateSource) -> Result<Self::Index, EngineError>;

    /// Seals the index into its snapshot file, holding its read lock as
    /// briefly as the structure allows.
    fn write_snapshot(&self, index: &RwLock<Self::Index>, file: &SealedFile) -> Result<(), EngineError>;

    /// A line for the logs: what the index holds.
    fn describe(index: &Self::Index) -> String;

    /// The index from its snapshot (when `file` is given and usable) or else
    /// rebuilt; true when a new snapshot should be written.
    fn load(&self, store: &dyn TemplateSource, file: Option<&SealedFile>) -> Result<(Self::Index, bool), EngineError> {
        let t = Instant::now();
        if let Some(file) = file {
            match self.restore(store, file) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(e) => warn!(index = Self::NAME, error = %e, "snapshot not used; rebuilding from the store"),
            }
        }
        let index = self.rebuild(store)?;
        info!(
            index = Self::NAME,
            holds = %Self::describe(&index),
            ms = t.elapsed().as_millis() as u64,
            "rebuilt from the store"
        );
        Ok((index, true))
    }
}

/// When and where a derived index is saved (a clone shares the counters).
#[derive(Debug, Clone)]
pub(super) struct Snapshots {
    pub(super) file: SealedFile,
    /// Changes between two snapshots.
    pub(super) every: u64,
    /// Changes since the last one.
    pub(super) changes: Arc<AtomicU64>,
    /// Held by the one writer.
    pub(super) writing: Arc<Mutex<()>>,
    /// Deletions so far, and how many of them the file on disk reflects:
    /// while it lags, the file may still hold deleted templates.
    pub(super) erasures: Arc<AtomicU64>,
    pub(super) erased: Arc<AtomicU64>,
}

impl Snapshots {
    /// Snapshots into `file` every `every` changes.
    pub(super) fn new(file: SealedFile, every: u64) -> Self {
        Self {
            file,
            every,
            changes: Arc::new(AtomicU64::new(0)),
            writing: Arc::new(Mutex::new(())),
            erasures: Arc::new(AtomicU64::new(0)),
            erased: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Counts `n` changes to `index`; past `every` since the last snapshot,
    /// writes one in the background.
    pub(super) fn changed<D: DerivedIndex>(&self, n: u64, spec: &Arc<D>, index: &Arc<RwLock<D::Index>>) {
        if n > 0 && self.changes.fetch_add(n, Ordering::Relaxed) + n >= self.every {
            self.write_in_background(spec.clone(), index.clone());
        }
    }

    /// A deletion took `n` templates out of `index`: the file still holds
    /// them, so it is written again now, in the background.
    pub(super) fn erased<D: DerivedIndex>(&self, n: u64, spec: &Arc<D>, index: &Arc<RwLock<D::Index>>) {
        if n > 0 {
            self.erasures.fetch_add(1, Ordering::AcqRel);
            self.write_in_background(spec.clone(), index.clone());
        }
    }

    /// Writes a snapshot of `index` on a background thread, unless one is
    /// being written already. A deletion counted (`erasures`) while one was
    /// written is followed by another, so the file on disk never keeps a
    /// deleted template for longer than one write; if that write fails,
    /// the file is removed (the next start-up rebuilds from the store).
    pub(super) fn write_in_background<D: DerivedIndex>(&self, spec: Arc<D>, index: Arc<RwLock<D::Index>>) {
        self.changes.store(0, Ordering::Relaxed);
        let (file, writing) = (self.file.clone(), self.writing.clone());
        let (erasures, erased) = (self.erasures.clone(), self.erased.clone());
        let name = D::NAME.replace(' ', "-");
        let spawned = std::thread::Builder::new().name(format!("{name}-snapshot")).spawn(move || {
            loop {
                {
                    // One writer at a time; the one holding the lock looks again below.
                    let Ok(_one_writer) = writing.try_lock() else { return };
                    let seen = erasures.load(Ordering::Acquire);
                    if let Err(e) = spec.write_snapshot(&index, &file) {
                        warn!(index = D::NAME, error = %e, "snapshot failed; the next start-up reads the store instead");
                        if seen > erased.load(Ordering::Acquire) {
                            // It may hold a deleted subject's templates: gone rather than stale.
                            if let Err(e) = file.remove() {
                                warn!(index = D::NAME, error = %e, "cannot remove a snapshot holding deleted templates");
                            }
                            erased.fetch_max(seen, Ordering::Release);
                        }
                        return;
                    }
                    erased.fetch_max(seen, Ordering::Release);
                }
                if erasures.load(Ordering::Acquire) <= erased.load(Ordering::Acquire) {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "cannot start the snapshot thread");
        }
    }
}

/// SCHED_IDLE for the calling thread: it only gets CPU time nothing else
/// wants (dedup jobs, which may wait).
#[allow(unsafe_code)]
pub(super) fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0: this thread) policy from a
    // valid sched_param; no memory is shared.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower a background thread's priority; it runs at normal priority"
        );
    }
}

/// Nice 10 for the calling thread: about a tenth of a core's share against
/// calls at nice 0, never starved (a snapshot rewrite bounds erasure).
#[allow(unsafe_code)]
fn nice() {
    // SAFETY: gettid has no arguments; setpriority on this thread's id
    // (Linux: per thread) with a valid `which`; no memory is shared.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10)
    };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "cannot lower a snapshot writer's priority");
    }
}

/// Runs `f` on a thread of its own at nice 10: the sealing and writing of a
/// snapshot, once its index's lock is released, yields most of the cores
/// to calls but is never starved by them.
pub(super) fn at_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            nice();
            f()
        });
        match worker.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(unsafe_code)]
    fn snapshot_writers_run_at_nice_10_on_their_own_thread() {
        // SAFETY: reads this thread's nice value (errno is not needed: 0 and 10 are told apart).
        let own = || unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t) };
        let before = own();
        let inside = super::at_low_priority(own);
        assert_eq!(inside, (before + 10).min(19));
        assert_eq!(own(), before, "the caller's thread keeps its priority");
    }
}
