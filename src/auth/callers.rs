//! The callers file (`auth.tokens_file`): TOML, one `[[caller]]` table per
//! token or certificate name, with the token's SHA-256 (never the token).
//! A running server re-reads it when its size or modification time changes,
//! so `cotejo token add/revoke` take effect without a restart.
//!
//! ```toml
//! [[caller]]
//! name = "desk-12"
//! roles = ["enroll", "identify"]
//! token_sha256 = "9f86d0..."
//!
//! [[caller]]
//! name = "consulate-wa"      # a client certificate's common name
//! roles = ["identify"]
//! certificate = true
//! ```

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Role;

/// Why the callers file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    /// It could not be read or written.
    #[error("callers file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// It does not parse or holds a bad entry.
    #[error("callers file {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One entry of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerEntry {
    /// Caller name (the audit log's `caller`).
    pub name: String,
    /// Roles granted.
    pub roles: Vec<Role>,
    /// Hex SHA-256 of the bearer token, for a token caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// A client certificate with this common name, for a certificate caller.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub certificate: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "caller")]
    callers: Vec<CallerEntry>,
}

#[derive(Debug, Default)]
struct Table {
    by_hash: HashMap<[u8; 32], CallerEntry>,
    by_certificate: HashMap<String, Vec<Role>>,
}

/// The callers file as last read, re-read when it changes.
#[derive(Debug)]
pub struct Callers {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    seen: Mutex<Option<(SystemTime, u64)>>,
}

impl Callers {
    /// Reads the file (which must exist and parse).
    pub fn open(path: &Path) -> Result<Self, CallersError> {
        let callers =
            Self { path: path.to_owned(), table: RwLock::new(Arc::new(Table::default())), seen: Mutex::new(None) };
        callers.reload()?;
        Ok(callers)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again if its size or modification time changed;
    /// `Ok(true)` when it did. A file that fails to parse keeps the last
    /// good table in force.
    pub fn reload_if_changed(&self) -> Result<bool, CallersError> {
        let stamp = stamp(&self.path)?;
        if self.seen.lock().map(|s| *s == Some(stamp)).unwrap_or(false) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    fn reload(&self) -> Result<(), CallersError> {
        let stamp = stamp(&self.path)?;
        let table = table(&read(&self.path)?, &self.path)?;
        if let Ok(mut t) = self.table.write() {
            *t = Arc::new(table);
        }
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(stamp);
        }
        Ok(())
    }

    fn current(&self) -> Arc<Table> {
        self.table.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// The entry whose token hashes to `token`'s SHA-256.
    pub fn by_token(&self, token: &str) -> Option<CallerEntry> {
        self.current().by_hash.get(&token_sha256(token)).cloned()
    }

    /// Roles of a client certificate's name (none when it is not listed).
    pub fn certificate_roles(&self, name: &str) -> Vec<Role> {
        self.current().by_certificate.get(name).cloned().unwrap_or_default()
    }
}

/// SHA-256 of a token. Tokens carry 256 random bits, so a fast hash is
/// enough: nothing short of the token itself opens the file's entry.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// A new random token (`ctj_` and 64 hex digits).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("ctj_{}", hex::encode(bytes))
}

/// Adds a token caller named `name` with `roles` (the file is made if
/// missing); returns the token, which is stored nowhere.
pub fn add_token(path: &Path, name: &str, roles: &[Role]) -> Result<String, CallersError> {
    let token = new_token();
    let entry = CallerEntry {
        name: name.to_owned(),
        roles: roles.to_vec(),
        token_sha256: Some(hex::encode(token_sha256(&token))),
        certificate: false,
    };
    edit(path, |f| {
        f.callers.push(entry);
        Ok(())
    })?;
    Ok(token)
}

/// Grants `roles` to the client certificate named `name` (replacing its
/// earlier grant).
pub fn add_certificate(path: &Path, name: &str, roles: &[Role]) -> Result<(), CallersError> {
    let entry = CallerEntry { name: name.to_owned(), roles: roles.to_vec(), token_sha256: None, certificate: true };
    edit(path, |f| {
        f.callers.retain(|e| !(e.certificate && e.name == name));
        f.callers.push(entry);
        Ok(())
    })
}

/// Removes every token and certificate grant of `name`; the number removed.
pub fn revoke(path: &Path, name: &str) -> Result<usize, CallersError> {
    let mut removed = 0;
    edit(path, |f| {
        let before = f.callers.len();
        f.callers.retain(|e| e.name != name);
        removed = before - f.callers.len();
        if removed == 0 {
            return Err(format!("no caller named {name:?}"));
        }
        Ok(())
    })?;
    Ok(removed)
}

/// Reads, changes and atomically rewrites the file (0600, synced).
fn edit(path: &Path, change: impl FnOnce(&mut File) -> Result<(), String>) -> Result<(), CallersError> {
    let invalid = |message: String| CallersError::Invalid { path: path.display().to_string(), message };
    let mut file = if path.exists() { read(path)? } else { File::default() };
    change(&mut file).map_err(invalid)?;
    table(&file, path)?;
    let text = toml::to_string(&file).map_err(|e| invalid(e.to_string()))?;
    let header = "# cotejo callers: token hashes and certificate names with their roles (cotejo token add/revoke)\n";
    crate::store::replace_file(path, format!("{header}{text}").as_bytes(), true)
        .map_err(|source| CallersError::Io { path: path.display().to_string(), source })
}

fn read(path: &Path) -> Result<File, CallersError> {
    let text =
        fs::read_to_string(path).map_err(|source| CallersError::Io { path: path.display().to_string(), source })?;
    toml::from_str(&text)
        .map_err(|e| CallersError::Invalid { path: path.display().to_string(), message: e.to_string() })
}

fn stamp(path: &Path) -> Result<(SystemTime, u64), CallersError> {
    let m = fs::metadata(path).map_err(|source| CallersError::Io { path: path.display().to_string(), source })?;
    Ok((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
}

fn table(file: &File, path: &Path) -> Result<Table, CallersError> {
    let invalid = |message: String| CallersError::Invalid { path: path.display().to_string(), message };
    let mut t = Table::default();
    for (i, e) in file.callers.iter().enumerate() {
        crate::engine::validate_name(&e.name).map_err(|r| invalid(format!("caller {i}: name {r}")))?;
        match (&e.token_sha256, e.certificate) {
            (Some(h), false) => {
                let hash: [u8; 32] = hex::decode(h)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| invalid(format!("caller {:?}: token_sha256 is not 64 hex digits", e.name)))?;
                t.by_hash.insert(hash, e.clone());
            }
            (None, true) => {
                t.by_certificate.insert(e.name.clone(), e.roles.clone());
            }
            _ => {
                return Err(invalid(format!("caller {:?}: give either token_sha256 or certificate = true", e.name)));
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_revoke_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("callers.toml");
        let t1 = add_token(&path, "desk-1", &[Role::Identify]).expect("add");
        let callers = Callers::open(&path).expect("open");
        assert_eq!(callers.by_token(&t1).map(|e| e.name), Some("desk-1".to_owned()));
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&t1), "the token itself is never stored");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        }
        let t2 = add_token(&path, "desk-2", &[Role::Enroll]).expect("add");
        assert!(callers.reload_if_changed().expect("reload"));
        assert!(callers.by_token(&t2).is_some());
        assert_eq!(revoke(&path, "desk-1").expect("revoke"), 1);
        assert!(revoke(&path, "desk-1").is_err(), "nothing left to revoke");
        callers.reload_if_changed().expect("reload");
        assert!(callers.by_token(&t1).is_none());
        assert!(callers.by_token(&t2).is_some());
        // A broken file keeps the last good table.
        fs::write(&path, "[[caller]]\nname = 3\n").expect("write");
        assert!(callers.reload_if_changed().is_err());
        assert!(callers.by_token(&t2).is_some());
    }
}
