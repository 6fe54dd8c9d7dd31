//! Key rotation beside a running server: every template row and sealed
//! file is sealed again under the active key, in small transactions, so
//! enrollments and searches go on. The work is idempotent (a row already
//! under the active key is skipped; a row changed meanwhile is left to the
//! server, which seals with the active key), so a rotation cut short by a
//! crash is finished by running it again.

use std::{collections::BTreeMap, path::Path};

use rusqlite::{Connection, params};

use super::{
    StoreError,
    crypto::{KeyId, Sealer},
    open_template, template_aad,
};
use crate::biometric::{Modality, NewTemplate, TemplateData};

/// Records per key: `None` for records sealed before key ids.
pub type KeyCensus = BTreeMap<Option<KeyId>, u64>;

/// Template rows per key in the database of `conn` (the record headers
/// name their key; no key is needed to count them).
pub(super) fn census(conn: &Connection) -> Result<KeyCensus, StoreError> {
    let mut st = conn.prepare("SELECT substr(sealed, 1, 11) FROM templates")?;
    let mut rows = st.query([])?;
    let mut out = KeyCensus::new();
    while let Some(r) = rows.next()? {
        let head: Vec<u8> = r.get(0)?;
        *out.entry(Sealer::key_of(&head)).or_default() += 1;
    }
    Ok(out)
}

/// Re-seals a data directory's templates and sealed files; opened without
/// the directory's lock, beside a server.
#[derive(Debug)]
pub struct Resealer {
    conn: Connection,
    sealer: std::sync::Arc<Sealer>,
    dir: std::path::PathBuf,
}

impl Resealer {
    /// Opens `<data_dir>/cotejo.db` with the keys of `key_dir`.
    pub fn open(data_dir: &Path, key_dir: &Path) -> Result<Self, StoreError> {
        let db = data_dir.join("cotejo.db");
        if !db.is_file() {
            return Err(StoreError::DataDir {
                path: data_dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no cotejo.db here"),
            });
        }
        // Checked before opening: an empty key directory would fall back to
        // the development key file, which opening would make.
        if key_dir.as_os_str().is_empty() {
            return Err(StoreError::Key("rotation needs store.key_dir".into()));
        }
        let sealer = Sealer::open(key_dir, "", data_dir)?;
        let conn = Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Records sealed under a retiring key are overwritten, not left in free space.
        conn.pragma_update(None, "secure_delete", "ON")?;
        // The server holds write transactions for milliseconds; wait them out.
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        Ok(Self { conn, sealer: std::sync::Arc::new(sealer), dir: data_dir.to_owned() })
    }

    /// The key records are sealed with now.
    pub fn active(&self) -> KeyId {
        self.sealer.active()
    }

    /// Template rows per key.
    pub fn census(&self) -> Result<KeyCensus, StoreError> {
        census(&self.conn)
    }

    /// Template rows in all.
    pub fn templates(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM templates", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Seals again, under the active key, the rows after `after` (up to
    /// `limit` of them, in id order) that are not under it, in one
    /// transaction; the last id looked at (`None` past the end) and the
    /// number sealed again.
    pub fn reseal_batch(&mut self, after: i64, limit: usize) -> Result<(Option<i64>, u64), StoreError> {
        let active = self.sealer.active();
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String, i64, u8, String, Vec<u8>)> = {
            let mut st = tx.prepare(
                "SELECT template_id, subject_id, modality, finger_position, model_id, sealed FROM templates
                 WHERE template_id > ?1 ORDER BY template_id LIMIT ?2",
            )?;
            st.query_map(params![after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect::<Result<_, _>>()?
        };
        let mut done = 0;
        for (id, subject, code, position, model_id, sealed) in &rows {
            if Sealer::key_of(sealed) == Some(active) {
                continue;
            }
            let modality = Modality::from_code(*code).ok_or_else(|| StoreError::Corrupt(format!("modality {code}")))?;
            let t = NewTemplate {
                modality,
                finger_position: *position,
                model_id: model_id.clone(),
                quality: 0.0,
                data: TemplateData::Minutiae(Vec::new()),
            };
            let plain = open_template(&self.sealer, sealed, *id, subject, &t)?;
            let resealed = self.sealer.seal(&plain, &template_aad(*id, subject, &t))?;
            // Only if the row is as read: a concurrent change wins.
            done += tx.execute(
                "UPDATE templates SET sealed = ?1 WHERE template_id = ?2 AND sealed = ?3",
                params![resealed, id, sealed],
            )? as u64;
        }
        tx.commit()?;
        Ok((rows.last().map(|r| r.0), done))
    }

    /// Seals the snapshots again under the active key; how many were.
    pub fn reseal_files(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for name in super::SEALED_FILES {
            if super::SealedFile::new(self.sealer.clone(), &self.dir, name).reseal()? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// The keys the snapshots are sealed with (files that exist).
    pub fn file_keys(&self) -> Result<Vec<(&'static str, Option<KeyId>)>, StoreError> {
        let mut out = Vec::new();
        for name in super::SEALED_FILES {
            if let Some(k) = super::SealedFile::new(self.sealer.clone(), &self.dir, name).key()? {
                out.push((name, k));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_directory_is_refused_and_no_key_is_made() {
        let data = tempfile::tempdir().expect("tempdir");
        drop(super::super::Store::open(data.path(), &"11".repeat(32)).expect("store"));
        assert!(matches!(Resealer::open(data.path(), Path::new("")), Err(StoreError::Key(_))));
        assert!(!data.path().join("template.key").exists(), "a development key was made");
    }
}
