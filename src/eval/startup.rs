//! `cotejo eval startup`: how long a restart takes with a large face
//! gallery: rebuilt from the store (every template read and decrypted, the
//! index built), against the sealed index snapshot plus a replay of the
//! changes made after it.

use std::time::Instant;

use serde_json::json;

use super::latency::{enroll_synthetic, scratch_engine};
use crate::{config::Config, engine::Engine};

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
        engine.delete(format!("synthetic-{n:07}")).await?;
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
        "index": config.index.kind,
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

/// Starts an engine (waiting for the previous one's job thread to let go of
/// the store) and times `Engine::start`.
async fn start(config: &Config) -> anyhow::Result<(std::sync::Arc<Engine>, f64)> {
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
