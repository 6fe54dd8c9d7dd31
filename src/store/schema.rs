//! The store's tables, and the migration of a store an older cotejo wrote.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subjects (
    subject_id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS encounters (
    encounter_id INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS encounters_subject ON encounters(subject_id);
CREATE TABLE IF NOT EXISTS templates (
    template_id INTEGER PRIMARY KEY AUTOINCREMENT,
    encounter_id INTEGER NOT NULL REFERENCES encounters(encounter_id) ON DELETE CASCADE,
    subject_id TEXT NOT NULL,
    modality INTEGER NOT NULL,
    finger_position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    quality REAL NOT NULL,
    sealed BLOB NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS templates_subject ON templates(subject_id);
CREATE TABLE IF NOT EXISTS watchlist_members (
    watchlist TEXT NOT NULL,
    subject_id TEXT NOT NULL REFERENCES subjects(subject_id) ON DELETE CASCADE,
    PRIMARY KEY (watchlist, subject_id)
) STRICT;
CREATE INDEX IF NOT EXISTS watchlist_members_subject ON watchlist_members(subject_id);
CREATE INDEX IF NOT EXISTS templates_model ON templates(modality, model_id);
-- Covers the start-up listing of (template id, owner) per model, so that it
-- does not read the sealed rows (1.4 GB at 1,000,000 faces).
CREATE INDEX IF NOT EXISTS templates_owner ON templates(modality, model_id, subject_id);
-- Covers the start-up listing of the finger templates (id, owner, position),
-- checked against the finger index's snapshot.
CREATE INDEX IF NOT EXISTS templates_finger ON templates(modality, finger_position, subject_id);
-- Enroll idempotency keys: a retried request id gets the first answer.
CREATE TABLE IF NOT EXISTS enroll_requests (
    request_id TEXT PRIMARY KEY,
    subject_id TEXT NOT NULL,
    encounter_id INTEGER NOT NULL,
    samples TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS enroll_requests_subject ON enroll_requests(subject_id);
-- The child key of templates -> encounters: without it, deleting a subject's
-- encounters (ON DELETE CASCADE) and listing a subject's encounters scan the
-- whole templates table (sealed rows included: 0.29 s per deletion at 505,000).
CREATE INDEX IF NOT EXISTS templates_encounter ON templates(encounter_id);
-- One row rewritten by the health check: the store still commits.
CREATE TABLE IF NOT EXISTS health_probe (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL
) STRICT;
";

/// Brings a store written by an older cotejo up to [`SCHEMA`]: watchlist
/// memberships were kept as `gallery_members`, the finger index's snapshot
/// as `finger-gallery.snap`.
pub(super) fn migrate(conn: &Connection, dir: &Path) -> Result<(), StoreError> {
    let (old, new) = (dir.join("finger-gallery.snap"), dir.join("finger-index.snap"));
    if old.exists() && !new.exists() {
        std::fs::rename(&old, &new)
            .map_err(|source| StoreError::DataDir { path: old.display().to_string(), source })?;
    }
    let old: bool = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gallery_members'", [], |_| Ok(()))
        .optional()?
        .is_some();
    if old {
        conn.execute_batch(
            "BEGIN IMMEDIATE;
             DROP INDEX IF EXISTS gallery_members_subject;
             ALTER TABLE gallery_members RENAME COLUMN gallery TO watchlist;
             ALTER TABLE gallery_members RENAME TO watchlist_members;
             COMMIT;",
        )?;
    }
    Ok(())
}
