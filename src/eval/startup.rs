//! `cotejo eval startup`: how long a restart takes with a large face
//! gallery: rebuilt from the store (every template read and decrypted, the
//! index built), against the sealed index snapshot plus a replay of the
//! changes made after it.

use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;

use super::{
    latency::{enroll_one, enroll_synthetic, scratch_engine},
    metrics::median_p99,
};
use crate::{
    biometric::{Modality, Sample, SampleData},
    config::Config,
    engine::{Engine, IdentifyRequest},
    finger::{
        iso19794_2::{self, IsoMinutia, MinutiaKind},
        template,
    },
};

/// Enrolls `gallery` synthetic subjects, restarts without a snapshot, writes
/// one, makes `changes` enrollments and `changes / 10` deletions, restarts
/// from the snapshot. Prints one JSON object.
pub async fn startup(config: &Config, gallery: usize, changes: usize) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.index.snapshot_every = u64::MAX;
    let (dir, config, engine) = scratch_engine(&config).await?;
    let t = Instant::now();
    enroll_synthetic(&engine, 0..gallery, 11).await?;
    let enroll_secs = t.elapsed().as_secs_f64();
    drop(engine);
    // From here the engine's log (stderr) breaks each start down by phase.
    crate::telemetry::init(&config.log);
    let snapshot = dir.path().join("face-index.snap");
    // The snapshot written when the empty store started is useless now.
    std::fs::remove_file(&snapshot).ok();

    let (engine, rebuild_secs) = start(&config).await?;
    let t = Instant::now();
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.save_snapshot()).await??;
    let snapshot_secs = t.elapsed().as_secs_f64();
    let snapshot_bytes = std::fs::metadata(&snapshot)?.len();

    enroll_synthetic(&engine, gallery..gallery + changes, 12).await?;
    let deleted = changes / 10;
    for n in 0..deleted {
        engine.delete(format!("synthetic-{n:07}"), &crate::store::Actor::system("eval")).await?;
    }
    drop(engine);
    let (engine, restore_secs) = start(&config).await?;
    let stats = engine.stats().await?;
    let held: u64 = stats.templates.iter().map(|t| t.2).sum();
    anyhow::ensure!(held == (gallery + changes - deleted) as u64, "store holds {held} templates");

    // The same start with a store but no snapshot at all would be the
    // rebuild above; a start with neither gives the fixed cost (models).
    drop(engine);
    let empty = tempfile::tempdir()?;
    let mut bare = config.clone();
    bare.store.data_dir = empty.path().to_owned();
    let (_bare_engine, empty_secs) = start(&bare).await?;

    let out = json!({
        "templates": gallery,
        "index": config.index.kind.name(),
        "enroll_seconds": enroll_secs,
        "start_empty_store_seconds": empty_secs,
        "start_rebuild_from_store_seconds": rebuild_secs,
        // Includes waiting for the snapshot the rebuilt start-up writes in
        // the background (the log gives each write's own time).
        "save_snapshot_seconds": snapshot_secs,
        "snapshot_bytes": snapshot_bytes,
        "changes_after_snapshot": { "enrolled": changes, "deleted": deleted },
        "start_from_snapshot_plus_replay_seconds": restore_secs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `cotejo eval startup --fingers N`: enrolls `fingers` synthetic one-finger
/// subjects (ISO records of 30-45 random minutiae in a 300x400 frame, like
/// FVC2002's), then `rounds` times: a start with an empty store (the fixed
/// cost), a start that rebuilds the finger index from the store on every
/// core (no snapshot file), the wait for the snapshot that start writes in
/// the background, `changes` more enrollments and `changes / 10` deletions,
/// and a start from the snapshot plus the store's changes since. On the last
/// start it times `identifies` one-finger Identify calls (ISO probes: shifted
/// copies of enrolled records missing a tenth of their minutiae), in process,
/// with the share spent rescoring the candidates from the store. Prints one
/// JSON object.
pub async fn startup_fingers(
    config: &Config,
    fingers: usize,
    changes: usize,
    rounds: usize,
    identifies: usize,
) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.finger.snapshot_every = u64::MAX;
    let (dir, config, engine) = scratch_engine(&config).await?;
    let t = Instant::now();
    let mut rng = StdRng::seed_from_u64(13);
    let mut probes = Vec::new();
    for n in 0..fingers {
        let record = random_record(&mut rng)?;
        if probes.len() < identifies {
            probes.push((format!("synthetic-finger-{n:07}"), another_impression(&record)?));
        }
        enroll_finger(&engine, format!("synthetic-finger-{n:07}"), record).await?;
    }
    let enroll_secs = t.elapsed().as_secs_f64();
    drop(engine);
    crate::telemetry::init(&config.log);
    let snapshot = dir.path().join("finger-index.snap");
    let (mut empty, mut rebuilt, mut written, mut restored, mut bytes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), 0);
    let mut deletes = Vec::new();
    let bare_dir = tempfile::tempdir()?;
    let (mut held_now, mut next, mut oldest) = (fingers, fingers, 0);
    let mut last = None;
    for _ in 0..rounds.max(1) {
        let mut bare = config.clone();
        bare.store.data_dir = bare_dir.path().to_owned();
        empty.push(start(&bare).await?.1);
        // Without a snapshot file the start rebuilds, then writes one in the background.
        std::fs::remove_file(&snapshot).ok();
        let (engine, secs) = start(&config).await?;
        rebuilt.push(secs);
        let t = Instant::now();
        let e = engine.clone();
        // Waits for the background write (one writer at a time); nothing changed since.
        tokio::task::spawn_blocking(move || e.save_snapshot()).await??;
        written.push(t.elapsed().as_secs_f64());
        bytes = std::fs::metadata(&snapshot)?.len();
        for _ in 0..changes {
            enroll_finger(&engine, format!("synthetic-finger-{next:07}"), random_record(&mut rng)?).await?;
            next += 1;
        }
        // The oldest enrolled subjects go, except those the probes look for.
        let deleted = changes / 10;
        for _ in 0..deleted {
            let t = Instant::now();
            engine
                .delete(format!("synthetic-finger-{:07}", fingers - 1 - oldest), &crate::store::Actor::system("eval"))
                .await?;
            deletes.push(t.elapsed().as_secs_f64() * 1e3);
            oldest += 1;
        }
        held_now += changes - deleted;
        // No shutdown snapshot: the next start replays the changes from the store.
        drop(engine);
        drop(last.take());
        let (engine, secs) = start(&config).await?;
        restored.push(secs);
        // That start replayed changes, so it writes a new snapshot in the
        // background: let it finish before timing searches or starting again.
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.save_snapshot()).await??;
        let stats = engine.stats().await?;
        let held: u64 = stats.templates.iter().filter(|t| t.0 == Modality::Finger).map(|t| t.2).sum();
        anyhow::ensure!(held == held_now as u64, "store holds {held} finger templates, {held_now} expected");
        last = Some(engine);
    }
    let (mut search, mut rescore, mut rank1) = (Vec::new(), Vec::new(), 0);
    if let Some(engine) = last {
        for (mate, probe) in probes {
            let out = engine
                .identify(IdentifyRequest {
                    samples: vec![Sample {
                        modality: Modality::Finger,
                        finger_position: 1,
                        data: SampleData::IsoTemplate(probe),
                        ppi: 0,
                    }],
                    max_candidates: 10,
                    target_fpir: 0.0,
                    subject_ids: Vec::new(),
                    watchlist: String::new(),
                })
                .await?;
            rank1 += usize::from(out.candidates.first().is_some_and(|c| c.subject_id == mate));
            search.push(out.times.search.as_secs_f64() * 1e3);
            rescore.push(out.times.rescore.as_secs_f64() * 1e3);
        }
    }
    let (search_median, search_p99) = median_p99(&mut search);
    let (rescore_median, rescore_p99) = median_p99(&mut rescore);
    let (delete_median, delete_p99) = median_p99(&mut deletes);
    let median = |v: &[f64]| median_p99(&mut v.to_vec()).0;
    let fixed = median(&empty);
    let out = json!({
        "finger_templates": fingers,
        "data_dir_removed_after": dir.path().display().to_string(),
        "enroll_seconds": enroll_secs,
        "cores": std::thread::available_parallelism().map_or(1, usize::from),
        "start_empty_store_seconds": empty,
        "start_rebuild_from_store_seconds": rebuilt,
        "snapshot_write_wait_seconds": written,
        "snapshot_bytes": bytes,
        "changes_after_snapshot": { "enrolled": changes, "deleted": changes / 10 },
        "delete_ms_median": delete_median, "delete_ms_p99": delete_p99,
        "start_from_snapshot_plus_replay_seconds": restored,
        "speed_up_median": (median(&rebuilt) - fixed) / (median(&restored) - fixed).max(1e-9),
        "note": "each start includes the fixed cost of an empty store's start (models); the speed-up is of the starts less that median fixed cost",
        "identify": {
            "calls": search.len(),
            "rank1_mates": rank1,
            "search_ms_median": search_median, "search_ms_p99": search_p99,
            "of_which_rescore_ms_median": rescore_median, "of_which_rescore_ms_p99": rescore_p99,
            "note": "on the last start (from the snapshot); search = gallery search plus the candidates' rescoring from the store (aspect hypotheses); no extraction (ISO probes)",
        },
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Enrolls a new subject with one ISO record at finger position 1.
pub(super) async fn enroll_finger(engine: &Engine, subject: String, record: Vec<u8>) -> anyhow::Result<()> {
    let sample =
        Sample { modality: Modality::Finger, finger_position: 1, data: SampleData::IsoTemplate(record), ppi: 0 };
    enroll_one(engine, subject, sample).await
}

/// The record shifted by (6, -4) px with every tenth minutia left out.
pub(super) fn another_impression(record: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut rec = iso19794_2::parse(record)?;
    for view in &mut rec.views {
        view.minutiae = view
            .minutiae
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 != 9)
            .map(|(_, m)| IsoMinutia { x: m.x + 6, y: m.y.saturating_sub(4), ..*m })
            .collect();
    }
    Ok(iso19794_2::write(&rec)?)
}

/// An ISO/IEC 19794-2 record of 30-45 random minutiae in a 300x400 frame.
pub(super) fn random_record(rng: &mut StdRng) -> anyhow::Result<Vec<u8>> {
    let n = rng.random_range(30..=45);
    let minutiae = (0..n)
        .map(|_| IsoMinutia {
            kind: if rng.random::<bool>() { MinutiaKind::RidgeEnding } else { MinutiaKind::Bifurcation },
            x: rng.random_range(20..280),
            y: rng.random_range(20..380),
            angle: rng.random(),
            quality: rng.random_range(40..=100),
        })
        .collect();
    Ok(iso19794_2::write(&template::one_view_record(1, 300, 400, 80, minutiae))?)
}

/// Starts an engine (waiting for the previous one's job thread to let go of
/// the store) and times `Engine::start`.
pub(super) async fn start(config: &Config) -> anyhow::Result<(std::sync::Arc<Engine>, f64)> {
    for _ in 0..100 {
        let c = config.clone();
        let t = Instant::now();
        match tokio::task::spawn_blocking(move || Engine::start(&c)).await? {
            Ok(e) => return Ok((std::sync::Arc::new(e), t.elapsed().as_secs_f64())),
            Err(e) if e.to_string().contains("in use") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the store stayed locked")
}
