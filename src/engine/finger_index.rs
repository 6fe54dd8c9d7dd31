//! The finger index as the engine keeps it: loaded from its sealed
//! snapshot plus the store's changes since (or rebuilt from every stored
//! finger template), and saved again.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Instant,
};

use tracing::{info, warn};

use super::{
    EngineError,
    derived::{self, DerivedIndex},
    face_index::intern,
};
use crate::{
    biometric::{Modality, TemplateData},
    config::FingerConfig,
    finger::{
        index::{FingerIndex, FingerIndexSettings, Prepared, parallel_map, snapshot},
        rerank::RerankSettings,
        template,
    },
    store::{SealedFile, TemplateSource},
};

/// Templates prepared on the threads at a time (bounds the transient memory).
const BATCH: usize = 8_192;

/// The finger index's settings from the configuration.
pub(super) fn finger_index_settings(c: &FingerConfig) -> FingerIndexSettings {
    FingerIndexSettings {
        shortlist_from: c.shortlist_from,
        shortlist_fraction: c.shortlist_fraction,
        shortlist_min: c.shortlist_min,
        shortlist_max: c.shortlist_max,
        rerank: RerankSettings { probe_cap: c.rerank_probe_cap, keep: c.rerank_keep },
    }
}

/// Threads for a start-up's work (0: every core).
fn threads_or_all(threads: usize) -> usize {
    if threads == 0 { std::thread::available_parallelism().map_or(1, usize::from) } else { threads }
}

/// The finger index with its settings, built on `threads` threads (0: every core).
#[derive(Debug, Clone, Copy)]
pub(super) struct FingerIndexSpec {
    pub(super) settings: FingerIndexSettings,
    pub(super) threads: usize,
}

impl FingerIndexSpec {
    fn threads(&self) -> usize {
        threads_or_all(self.threads)
    }
}

impl DerivedIndex for FingerIndexSpec {
    type Index = FingerIndex;
    const NAME: &'static str = "finger index";
    const SNAPSHOT_FILE: &'static str = "finger-index.snap";

    fn restore(
        &self,
        store: &dyn TemplateSource,
        file: &SealedFile,
    ) -> Result<Option<(FingerIndex, bool)>, EngineError> {
        let t = Instant::now();
        let Some(mut reader) = file.reader()? else { return Ok(None) };
        let mut owners: HashMap<String, Arc<str>> = HashMap::new();
        let live: HashMap<i64, (Arc<str>, u8)> = store
            .template_positions(Modality::Finger)?
            .into_iter()
            .map(|(id, subject, position)| (id, (intern(&mut owners, &subject), position)))
            .collect();
        let listed_ms = t.elapsed().as_millis() as u64;
        let restored = snapshot::read(&mut reader, self.settings, |id, position| {
            live.get(&id).filter(|l| l.1 == position).map(|l| l.0.clone())
        })
        .map_err(|e| EngineError::Internal(format!("finger index snapshot: {e}")))?;
        let read_ms = t.elapsed().as_millis() as u64;
        let mut index = restored.index;
        let kept = index.len();
        let mut missing: Vec<i64> = live.keys().copied().filter(|&id| index.template(id).is_none()).collect();
        missing.sort_unstable();
        let mut records: Vec<Record> = store
            .templates_with_ids(&missing)?
            .into_iter()
            .filter_map(|t| match (t.template.data, live.get(&t.template_id)) {
                (TemplateData::Minutiae(iso), Some((owner, _))) => {
                    Some((t.template_id, owner.clone(), t.template.finger_position, iso))
                }
                _ => None,
            })
            .collect();
        let unreadable = add_records(&mut index, &mut records, self.threads());
        let added = index.len() - kept;
        if unreadable > 0 {
            warn!(unreadable, "stored finger templates that do not parse are not searchable");
        }
        info!(
            kept,
            added,
            removed = restored.dropped,
            listed_ms,
            read_ms,
            ms = t.elapsed().as_millis() as u64,
            "finger index snapshot read, with the store's changes since"
        );
        Ok(Some((index, added > 0 || restored.dropped > 0)))
    }

    fn rebuild(&self, store: &dyn TemplateSource) -> Result<FingerIndex, EngineError> {
        rebuild_fingers(store, self.settings, self.threads())
    }

    fn write_snapshot(&self, index: &RwLock<FingerIndex>, file: &SealedFile) -> Result<(), EngineError> {
        write_finger_snapshot(index, file)
    }

    fn describe(index: &FingerIndex) -> String {
        format!("{} templates", index.len())
    }
}

/// A stored finger template: id, owner, finger position, ISO/IEC 19794-2 record.
type Record = (i64, Arc<str>, u8, Vec<u8>);

/// Builds the MCC templates and shortlist keys of `records` on `threads`
/// threads ([`Prepared::new`]) and adds them in order, in one batch, emptying `records`.
/// Returns how many did not parse (they are left out).
fn add_records(index: &mut FingerIndex, records: &mut Vec<Record>, threads: usize) -> usize {
    let prepared =
        parallel_map(records, threads, |(_, _, _, iso)| template::matcher_template(iso).map(Prepared::new).ok());
    let mut unreadable = 0;
    let mut batch = Vec::with_capacity(records.len());
    for ((template_id, owner, position, _), p) in records.drain(..).zip(prepared) {
        match p {
            Some(p) => batch.push((template_id, owner, position, p)),
            None => unreadable += 1,
        }
    }
    index.add_prepared_batch(batch);
    unreadable
}

/// The finger index from every stored finger template, read in batches of
/// [`BATCH`] templates, each built on `threads` threads ([`add_records`]),
/// added in store order.
fn rebuild_fingers(
    store: &dyn TemplateSource,
    settings: FingerIndexSettings,
    threads: usize,
) -> Result<FingerIndex, EngineError> {
    let mut index = FingerIndex::new(settings);
    let mut owners: HashMap<String, Arc<str>> = HashMap::new();
    let mut unreadable = 0;
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    store.each_template(Modality::Finger, &mut |t| {
        let TemplateData::Minutiae(iso) = t.template.data else { return Ok(()) };
        batch.push((t.template_id, intern(&mut owners, &t.subject_id), t.template.finger_position, iso));
        if batch.len() >= BATCH {
            unreadable += add_records(&mut index, &mut batch, threads);
        }
        Ok(())
    })?;
    unreadable += add_records(&mut index, &mut batch, threads);
    if unreadable > 0 {
        warn!(unreadable, "stored finger templates that do not parse are not searchable");
    }
    Ok(index)
}

/// Seals the finger index into its snapshot file. The index is
/// read-locked only while its state is taken (templates and the shortlist
/// indexes' buckets shared, the buckets copy-on-write: searches go on,
/// enrollments wait for that moment only); it is written chunk by chunk after
/// the lock is released.
fn write_finger_snapshot(fingers: &RwLock<FingerIndex>, file: &SealedFile) -> Result<(), EngineError> {
    let t = Instant::now();
    let frozen = fingers.read().map_err(|_| EngineError::Internal("finger lock poisoned".into()))?.freeze();
    let locked_ms = t.elapsed().as_millis() as u64;
    derived::at_low_priority(|| {
        let mut out = file.writer()?;
        let io = |e: std::io::Error| EngineError::Internal(format!("finger index snapshot: {e}"));
        // The writer seals 4 MiB at a time: it is its own buffer.
        snapshot::write(&frozen, &mut out).map_err(io)?;
        out.finish()?;
        Ok::<_, EngineError>(())
    })?;
    info!(templates = frozen.len(), locked_ms, ms = t.elapsed().as_millis() as u64, "finger index snapshot written");
    Ok(())
}
