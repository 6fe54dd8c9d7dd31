//! Online backup and restore of a data directory, beside a running server.
//!
//! A backup holds the database, copied with SQLite's online backup API in
//! one step (one read transaction: a consistent state, every enroll
//! acknowledged before it began and nothing half-written; under WAL the
//! server's writers go on), the sealed snapshots (copied first, so they are
//! never ahead of the database: start-up replays the rest), and
//! `backup.json`, which names the keys the records are sealed with and the
//! sha256 of every file. Never a key: the keys are restored from where
//! they are kept (`store.key_dir`), or the development key file by hand.

use std::{collections::BTreeMap, path::Path};

use rusqlite::{
    Connection, OpenFlags,
    backup::{Backup, StepResult},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{SEALED_FILES, StoreError, now_ms, replace_file, sealed_file::file_key};

/// The manifest's file name in a backup folder.
pub const MANIFEST: &str = "backup.json";
/// The database's file name in a data directory and a backup.
const DB: &str = "cotejo.db";

/// What a backup holds, as written to `backup.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Layout version of this manifest.
    pub format: u32,
    /// When the database copy was taken (Unix ms).
    pub created_ms: i64,
    /// The data directory it was taken from.
    pub source: String,
    /// Subjects and templates in the copy.
    pub subjects: u64,
    pub templates: u64,
    /// The last audit entry in the copy.
    pub audit_head: i64,
    /// Template records per key id (hex; "none" for records sealed before key ids).
    pub template_keys: BTreeMap<String, u64>,
    /// The key id each copied snapshot is sealed with.
    pub snapshot_keys: BTreeMap<String, String>,
    /// sha256 (hex) of every file in the backup but the manifest.
    pub files: BTreeMap<String, String>,
}

fn io_at(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::DataDir { path: path.display().to_string(), source }
}

/// Refuses a target that exists and holds anything.
/// A backup inside the data directory would keep deleted subjects where
/// the erasure promise covers every file: refused.
fn refuse_inside(data_dir: &Path, out: &Path) -> Result<(), StoreError> {
    let data = std::fs::canonicalize(data_dir).map_err(io_at(data_dir))?;
    // The nearest existing ancestor of `out`, resolved (`out` itself may not exist yet).
    let mut probe = std::path::absolute(out).map_err(io_at(out))?;
    let mut rest = Vec::new();
    while !probe.exists() {
        match (probe.file_name().map(ToOwned::to_owned), probe.parent().map(Path::to_path_buf)) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                probe = parent;
            }
            _ => break,
        }
    }
    let mut resolved = std::fs::canonicalize(&probe).map_err(io_at(&probe))?;
    resolved.extend(rest.into_iter().rev());
    if resolved.starts_with(&data) {
        return Err(StoreError::DataDir {
            path: out.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "inside the data directory; a backup there would keep deleted subjects beside the live data",
            ),
        });
    }
    Ok(())
}

fn require_empty(dir: &Path) -> Result<(), StoreError> {
    match std::fs::read_dir(dir).map(|mut entries| entries.next().is_some()) {
        Ok(true) => Err(StoreError::DataDir {
            path: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty; name a new or empty folder"),
        }),
        Ok(false) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir).map_err(io_at(dir)),
        Err(e) => Err(io_at(dir)(e)),
    }
}

/// Copies `from` to `to` through a temporary file, synced, then renamed.
fn copy_durably(from: &Path, to: &Path) -> Result<(), StoreError> {
    let tmp = to.with_extension("partial");
    std::fs::copy(from, &tmp).map_err(io_at(from))?;
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, to).map_err(io_at(to))
}

fn sha256_file(path: &Path) -> Result<String, StoreError> {
    let mut f = std::fs::File::open(path).map_err(io_at(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io_at(path))?;
    Ok(hex::encode(h.finalize()))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_at(dir))
}

/// Backs `data_dir` up into `out` (new or empty), beside a running server.
pub fn backup(data_dir: &Path, out: &Path) -> Result<Manifest, StoreError> {
    let db = data_dir.join(DB);
    if !db.is_file() {
        return Err(io_at(data_dir)(std::io::Error::new(std::io::ErrorKind::NotFound, "no cotejo.db here")));
    }
    refuse_inside(data_dir, out)?;
    require_empty(out)?;
    // Snapshots first: never ahead of the database copy.
    let mut snapshot_keys = BTreeMap::new();
    for name in SEALED_FILES {
        let from = data_dir.join(name);
        // A snapshot is replaced by an atomic rename: a copy reads the old
        // file or the new one whole. One missing is rebuilt at start-up.
        if let Some(key) = file_key(&from)? {
            copy_durably(&from, &out.join(name))?;
            snapshot_keys.insert(name.to_owned(), key.map_or_else(|| "none".to_owned(), |k| k.hex()));
        }
    }
    let src = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    src.busy_timeout(std::time::Duration::from_secs(30))?;
    let partial = out.join(format!("{DB}.partial"));
    let created_ms = now_ms();
    {
        let mut dst = Connection::open(&partial)?;
        // One step (-1: every page) under one read transaction; busy only
        // while another connection holds an exclusive lock, which WAL
        // writers do not.
        {
            let copy = Backup::new(&src, &mut dst)?;
            let started = std::time::Instant::now();
            while copy.step(-1)? != StepResult::Done {
                if started.elapsed() > std::time::Duration::from_secs(60) {
                    return Err(StoreError::Corrupt("backup: the database stayed locked for 60 s".into()));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        check_integrity(&dst)?;
    }
    std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(io_at(&partial))?;
    std::fs::rename(&partial, out.join(DB)).map_err(io_at(out))?;
    let mut manifest = describe(&out.join(DB), created_ms, data_dir)?;
    manifest.snapshot_keys = snapshot_keys;
    for name in std::iter::once(DB).chain(SEALED_FILES) {
        let path = out.join(name);
        if path.is_file() {
            manifest.files.insert(name.to_owned(), sha256_file(&path)?);
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    replace_file(&out.join(MANIFEST), &json, false).map_err(io_at(out))?;
    sync_dir(out)?;
    Ok(manifest)
}

/// Restores the backup in `from` into `data_dir`, which must be new or
/// empty; every file is checked against the manifest first.
pub fn restore(from: &Path, data_dir: &Path) -> Result<Manifest, StoreError> {
    let path = from.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io_at(&path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("{}: not a cotejo backup manifest ({e})", path.display())))?;
    if manifest.format != 1 || !manifest.files.contains_key(DB) {
        return Err(StoreError::Corrupt(format!("{}: unknown backup format", path.display())));
    }
    for (name, sha) in &manifest.files {
        if Path::new(name).file_name().and_then(|n| n.to_str()) != Some(name.as_str()) {
            return Err(StoreError::Corrupt(format!("backup names a file outside it: {name:?}")));
        }
        let got = sha256_file(&from.join(name))?;
        if &got != sha {
            return Err(StoreError::Corrupt(format!("{name}: sha256 {got} differs from the manifest's {sha}")));
        }
    }
    require_empty(data_dir)?;
    for name in manifest.files.keys() {
        copy_durably(&from.join(name), &data_dir.join(name))?;
    }
    check_integrity(&Connection::open_with_flags(data_dir.join(DB), OpenFlags::SQLITE_OPEN_READ_ONLY)?)?;
    sync_dir(data_dir)?;
    Ok(manifest)
}

fn check_integrity(conn: &Connection) -> Result<(), StoreError> {
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if verdict == "ok" { Ok(()) } else { Err(StoreError::Corrupt(format!("integrity check: {verdict}"))) }
}

/// Counts and key ids of the database copy at `db`.
fn describe(db: &Path, created_ms: i64, source: &Path) -> Result<Manifest, StoreError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    let subjects = count("SELECT COUNT(*) FROM subjects")? as u64;
    let templates = count("SELECT COUNT(*) FROM templates")? as u64;
    let audit_head = count("SELECT COALESCE(MAX(seq), 0) FROM audit")?;
    let template_keys = super::rotation::census(&conn)?
        .into_iter()
        .map(|(key, n)| (key.map_or_else(|| "none".to_owned(), |k| k.hex()), n))
        .collect();
    Ok(Manifest {
        format: 1,
        created_ms,
        source: source.display().to_string(),
        subjects,
        templates,
        audit_head,
        template_keys,
        snapshot_keys: BTreeMap::new(),
        files: BTreeMap::new(),
    })
}

/// The key ids a restored store needs, for people.
pub fn describe_keys(m: &Manifest) -> String {
    m.template_keys.iter().map(|(k, n)| format!("{n} templates under key {k}")).collect::<Vec<_>>().join(", ")
}
