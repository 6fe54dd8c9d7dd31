//! `cotejo keys`: make, rotate and retire the keys that seal templates and
//! snapshots (a `store.key_dir`), beside a running server.

use std::{
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::store::{self, KeyCensus, KeyId, Resealer};

/// `cotejo keys rotate` settings.
#[derive(Debug, Clone)]
pub struct RotateArgs {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Key directory.
    pub key_dir: PathBuf,
    /// Finish an unfinished rotation instead of starting one.
    pub resume: bool,
    /// Rows per transaction.
    pub batch: usize,
    /// Pause between transactions (spares a busy server).
    pub pause: Duration,
    /// How long a running server takes to read the key directory again.
    pub server_reload: Duration,
}

/// What a rotation did.
#[derive(Debug, Clone, Copy)]
pub struct RotationReport {
    /// Template rows sealed again.
    pub resealed: u64,
    /// Seconds spent sealing again (after the wait for the server).
    pub secs: f64,
}

/// `cotejo keys new`: a new key, made active unless `inactive`.
pub fn new(key_dir: &Path, inactive: bool) -> anyhow::Result<()> {
    let id = store::new_key(key_dir, !inactive)?;
    println!("{id}");
    eprintln!("key {id} written to {}{}", key_dir.display(), if inactive { "" } else { " and made active" });
    Ok(())
}

fn census_text(c: &KeyCensus) -> String {
    c.iter()
        .map(|(k, n)| format!("{n} under {}", k.map_or_else(|| "a key without id (older format)".into(), |k| k.hex())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a server holds the data directory.
fn server_running(data_dir: &Path) -> bool {
    match std::fs::OpenOptions::new().write(true).open(data_dir.join("LOCK")) {
        Ok(f) => f.try_lock().is_err(),
        Err(_) => false,
    }
}

/// `cotejo keys rotate`: a new active key, then every template and
/// snapshot sealed again under it, with a progress line on stderr.
pub fn rotate(a: &RotateArgs) -> anyhow::Result<RotationReport> {
    let r = Resealer::open(&a.data_dir, &a.key_dir)?;
    let active = r.active();
    let census = r.census()?;
    let behind: u64 = census.iter().filter(|(k, _)| **k != Some(active)).map(|(_, n)| n).sum();
    drop(r);
    if !a.resume {
        if behind > 0 && census.len() > 1 {
            bail!(
                "a rotation is unfinished ({}; active {active}): finish it with `cotejo keys rotate --resume`",
                census_text(&census)
            );
        }
        let id = store::new_key(&a.key_dir, true)?;
        eprintln!("new active key {id}");
        if server_running(&a.data_dir) {
            eprintln!(
                "a server runs on {}: waiting {:?} for it to seal with the new key",
                a.data_dir.display(),
                a.server_reload
            );
            std::thread::sleep(a.server_reload);
        }
    }
    let mut r = Resealer::open(&a.data_dir, &a.key_dir)?;
    let active = r.active();
    let total = r.templates()?;
    let started = Instant::now();
    let mut all = 0;
    let mut err = std::io::stderr().lock();
    // Passes until no row is left under another key: a server that had not
    // yet read the new key may have sealed a few with the old one.
    for pass in 1..=10 {
        let (mut cursor, mut seen, mut resealed) = (0i64, 0u64, 0u64);
        loop {
            let (last, n) = r.reseal_batch(cursor, a.batch)?;
            let Some(last) = last else { break };
            cursor = last;
            seen += a.batch as u64;
            resealed += n;
            let rate = resealed as f64 / started.elapsed().as_secs_f64().max(1e-3);
            let _ = write!(
                err,
                "\rpass {pass}: {}/{total} templates looked at, {resealed} re-sealed ({rate:.0}/s)   ",
                seen.min(total)
            );
            std::thread::sleep(a.pause);
        }
        let _ = writeln!(err);
        all += resealed;
        let census = r.census()?;
        if census.keys().all(|k| *k == Some(active)) {
            break;
        }
        if pass == 10 {
            bail!(
                "rows still under other keys after 10 passes ({}); is the server reading store.key_dir?",
                census_text(&census)
            );
        }
        std::thread::sleep(a.server_reload);
    }
    let files = r.reseal_files()?;
    let census = r.census()?;
    eprintln!(
        "done in {:.1} s: templates {}; {files} snapshot(s) sealed again",
        started.elapsed().as_secs_f64(),
        if census.is_empty() { "none".into() } else { census_text(&census) }
    );
    eprintln!("keys no record needs any more can go: `cotejo keys retire`");
    Ok(RotationReport { resealed: all, secs: started.elapsed().as_secs_f64() })
}

/// The keys records and snapshots need (the active one always).
fn needed(r: &Resealer) -> anyhow::Result<Vec<Option<KeyId>>> {
    let mut keys: Vec<Option<KeyId>> = r.census()?.into_keys().collect();
    keys.extend(r.file_keys()?.into_iter().map(|(_, k)| k));
    keys.push(Some(r.active()));
    Ok(keys)
}

/// `cotejo keys retire`: removes the key files no template or snapshot needs.
pub fn retire(data_dir: &Path, key_dir: &Path) -> anyhow::Result<()> {
    let r = Resealer::open(data_dir, key_dir)?;
    let needed = needed(&r)?;
    if needed.contains(&None) {
        bail!(
            "some records were sealed before key ids and could need any key; run `cotejo keys rotate --resume` first"
        );
    }
    let mut removed = 0;
    for entry in std::fs::read_dir(key_dir).with_context(|| key_dir.display().to_string())? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().is_some_and(|e| e == "key") && !needed.iter().any(|k| k.is_some_and(|k| k.hex() == stem)) {
            std::fs::remove_file(&path).with_context(|| path.display().to_string())?;
            eprintln!("removed {}", path.display());
            removed += 1;
        }
    }
    eprintln!("{removed} key file(s) removed; a running server drops them within server.reload_secs");
    Ok(())
}

/// `cotejo keys status`: records per key.
pub fn status(data_dir: &Path, key_dir: &Path) -> anyhow::Result<()> {
    let r = Resealer::open(data_dir, key_dir)?;
    println!("active key: {}", r.active());
    println!("templates: {}", census_text(&r.census()?));
    for (name, k) in r.file_keys()? {
        println!("{name}: {}", k.map_or_else(|| "a key without id (older format)".into(), |k| k.hex()));
    }
    Ok(())
}
