//! Reading the store without the writer: a [`Reader`] is one connection
//! and the keys that open templates; a [`ReadPool`] hands out readers on
//! connections of their own. Under WAL a reader sees the last commit
//! before its read began, never waits for a write and never holds one up,
//! so a long read (a job's pairs, the audit chain, a whole modality) does
//! not stall the calls behind it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use super::StoreError;
use super::crypto::Sealer;

/// Read access to the store: a connection and the keys that open templates.
#[derive(Debug)]
pub struct Reader {
    pub(super) conn: Connection,
    pub(super) sealer: Arc<Sealer>,
}

/// Readers kept open for reuse, each on its own connection.
#[derive(Debug)]
pub struct ReadPool {
    db: PathBuf,
    sealer: Arc<Sealer>,
    idle: Mutex<Vec<Reader>>,
}

/// Idle connections kept for reuse; more are opened while more are busy
/// (one per blocking read in flight) and closed when they come back.
const MAX_IDLE: usize = 8;

impl ReadPool {
    pub(super) fn new(db: PathBuf, sealer: Arc<Sealer>) -> Arc<Self> {
        Arc::new(Self { db, sealer, idle: Mutex::new(Vec::new()) })
    }

    /// A reader: an idle one, or a new connection when none is idle.
    pub fn get(self: &Arc<Self>) -> Result<PooledReader, StoreError> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let reader = match idle {
            Some(r) => r,
            None => self.open()?,
        };
        Ok(PooledReader { reader: Some(reader), pool: self.clone() })
    }

    fn open(&self) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A reader never writes: a bug that tried would fail, not commit.
        conn.pragma_update(None, "query_only", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Reader { conn, sealer: self.sealer.clone() })
    }

    /// Connections open and idle now.
    pub fn idle(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }
}

/// A reader borrowed from a [`ReadPool`], returned to it when dropped.
#[derive(Debug)]
pub struct PooledReader {
    reader: Option<Reader>,
    pool: Arc<ReadPool>,
}

impl std::ops::Deref for PooledReader {
    type Target = Reader;
    fn deref(&self) -> &Reader {
        // Set from construction until drop.
        self.reader.as_ref().unwrap_or_else(|| unreachable!("a pooled reader is present until dropped"))
    }
}

impl Drop for PooledReader {
    fn drop(&mut self) {
        let Some(reader) = self.reader.take() else { return };
        // A reader left inside a transaction (a panic mid-read) is closed, not reused.
        if !reader.conn.is_autocommit() {
            return;
        }
        if let Ok(mut idle) = self.pool.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(reader);
        }
    }
}
