//! Sealing at rest: AES-256-GCM with a random nonce per record and the
//! record's identity as associated data, so a ciphertext moved to another
//! row or file does not open.
//!
//! Every sealed record names its key: `CT2 || key id (8 bytes) || nonce ||
//! ciphertext`. Records written before key ids existed (`nonce ||
//! ciphertext`) are opened by trying each key. The keys come from:
//! - `store.key_dir`: every `*.key` file there (64 hex digits, mode 600),
//!   the one named by its `ACTIVE` file sealing; re-read while serving, so
//!   a rotation adds a key without a restart;
//! - or `store.encryption_key` (the environment), one key;
//! - or, for a development store, `<data_dir>/template.key`, made on first use.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::StoreError;

const NONCE_LEN: usize = 12;
const MAGIC: &[u8; 3] = b"CT2";
/// Bytes before the nonce of a record that names its key.
pub(crate) const HEADER_LEN: usize = MAGIC.len() + 8;
/// Bytes a sealed record adds to its plaintext (header, nonce, tag).
pub(crate) const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + 16;
/// The same for a record written before key ids.
pub(crate) const LEGACY_OVERHEAD: usize = NONCE_LEN + 16;
/// The file in a key directory that names the sealing key.
pub(crate) const ACTIVE_FILE: &str = "ACTIVE";

/// A key's public name: the first 8 bytes of a SHA-256 of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl KeyId {
    fn of(key: &[u8]) -> Self {
        let h = Sha256::new().chain_update(b"cotejo key id\0").chain_update(key).finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&h[..8]);
        Self(id)
    }

    /// The id as 16 hex digits.
    pub fn hex(self) -> String {
        hex::encode(self.0)
    }

    fn parse(text: &str) -> Option<Self> {
        hex::decode(text.trim()).ok().and_then(|b| b.try_into().ok()).map(Self)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The key that seals and every key that may open.
struct Keyring {
    active: KeyId,
    keys: HashMap<KeyId, Aes256Gcm>,
}

/// Where the keys come from.
#[derive(Debug, Clone)]
enum Source {
    Dir(PathBuf),
    Fixed,
}

/// Encrypts and decrypts records and files.
pub(crate) struct Sealer {
    ring: RwLock<Arc<Keyring>>,
    source: Source,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

fn cipher(key: &[u8]) -> Result<Aes256Gcm, StoreError> {
    Aes256Gcm::new_from_slice(key).map_err(|_| StoreError::Key("bad key length".into()))
}

/// The keys of a key directory and the id its `ACTIVE` file names.
fn read_dir_ring(dir: &Path, data_dir: &Path) -> Result<Keyring, StoreError> {
    let err = |m: String| StoreError::Key(format!("{}: {m}", dir.display()));
    let abs = fs::canonicalize(dir).map_err(|e| err(e.to_string()))?;
    let data = fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    // No data directory (PostgreSQL): nothing to keep the keys apart from.
    if !data_dir.as_os_str().is_empty() && abs.starts_with(&data) {
        return Err(err(format!("lies inside the data directory {}; keep keys apart from the data", data.display())));
    }
    let mut keys = HashMap::new();
    for entry in fs::read_dir(dir).map_err(|e| err(e.to_string()))? {
        let path = entry.map_err(|e| err(e.to_string()))?.path();
        if path.extension().is_some_and(|e| e == "key") {
            let key = super::read_secret_file(&path).map_err(StoreError::Key)?;
            keys.insert(KeyId::of(&key), cipher(&key)?);
        }
    }
    let active = fs::read_to_string(dir.join(ACTIVE_FILE))
        .map_err(|e| err(format!("{ACTIVE_FILE}: {e} (cotejo keys new makes one)")))?;
    let active = KeyId::parse(&active).ok_or_else(|| err(format!("{ACTIVE_FILE} does not hold a key id")))?;
    if !keys.contains_key(&active) {
        return Err(err(format!("the active key {active} has no file here")));
    }
    Ok(Keyring { active, keys })
}

impl Sealer {
    /// The keys of `key_dir` if set, else of a hex key, else of
    /// `<data_dir>/template.key` (made on first use).
    pub(crate) fn open(key_dir: &Path, hex_key: &str, data_dir: &Path) -> Result<Self, StoreError> {
        if !key_dir.as_os_str().is_empty() {
            let ring = read_dir_ring(key_dir, data_dir)?;
            return Ok(Self { ring: RwLock::new(Arc::new(ring)), source: Source::Dir(key_dir.to_owned()) });
        }
        let key = if hex_key.is_empty() { key_file(data_dir)? } else { decode(hex_key)? };
        let id = KeyId::of(&key);
        let ring = Keyring { active: id, keys: HashMap::from([(id, cipher(&key)?)]) };
        Ok(Self { ring: RwLock::new(Arc::new(ring)), source: Source::Fixed })
    }

    fn ring(&self) -> Arc<Keyring> {
        // A poisoned lock still holds a whole ring (it is replaced whole).
        self.ring.read().map_or_else(|p| p.into_inner().clone(), |r| r.clone())
    }

    /// Reads the key directory again (a new key, a new active one); the
    /// active key id after. A directory that no longer makes a ring keeps
    /// the current one.
    pub(crate) fn reload(&self, data_dir: &Path) -> Result<KeyId, StoreError> {
        if let Source::Dir(dir) = &self.source {
            let ring = read_dir_ring(dir, data_dir)?;
            let mut slot = self.ring.write().map_err(|_| StoreError::Key("key ring lock poisoned".into()))?;
            *slot = Arc::new(ring);
        }
        Ok(self.active())
    }

    /// The key new records are sealed with.
    pub(crate) fn active(&self) -> KeyId {
        self.ring().active
    }

    /// `CT2 || key id || nonce || ciphertext` of `plain`, bound to `aad`.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let ring = self.ring();
        let cipher = ring.keys.get(&ring.active).ok_or_else(|| StoreError::Key("no active key".into()))?;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct =
            cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).map_err(|_| StoreError::Crypto)?;
        let mut out = Vec::with_capacity(HEADER_LEN + NONCE_LEN + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&ring.active.0);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The key a record names, or `None` for a record written before key ids.
    pub(crate) fn key_of(sealed: &[u8]) -> Option<KeyId> {
        let id = sealed.strip_prefix(MAGIC.as_slice())?.get(..8)?;
        id.try_into().ok().map(KeyId)
    }

    /// The plaintext of a record; fails on a missing key or tampering.
    /// `aad` gives the associated data for a record that names its key
    /// (true) or one written before key ids (false).
    pub(crate) fn open_sealed_with(&self, sealed: &[u8], aad: impl Fn(bool) -> Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let ring = self.ring();
        if let Some(id) = Self::key_of(sealed)
            && let Some(cipher) = ring.keys.get(&id)
            && let Some(rest) = sealed.get(HEADER_LEN..)
            && let Ok(plain) = open(cipher, rest, &aad(true))
        {
            return Ok(plain);
        }
        // Written before key ids (or a record whose first bytes happen to
        // look like a header): any key of the ring may open it.
        let legacy = aad(false);
        ring.keys.values().find_map(|c| open(c, sealed, &legacy).ok()).ok_or(StoreError::Crypto)
    }

    /// As [`Sealer::open_sealed_with`] with the same associated data for both formats.
    pub(crate) fn open_sealed(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        self.open_sealed_with(sealed, |_| aad.to_vec())
    }
}

fn open(cipher: &Aes256Gcm, nonce_ct: &[u8], aad: &[u8]) -> Result<Vec<u8>, ()> {
    if nonce_ct.len() < NONCE_LEN {
        return Err(());
    }
    let (nonce, ct) = nonce_ct.split_at(NONCE_LEN);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| ())
}

fn decode(hex_key: &str) -> Result<Vec<u8>, StoreError> {
    let key = hex::decode(hex_key.trim()).map_err(|e| StoreError::Key(e.to_string()))?;
    if key.len() != 32 {
        return Err(StoreError::Key(format!("key has {} bytes, expected 32", key.len())));
    }
    Ok(key)
}

fn key_file(dir: &Path) -> Result<Vec<u8>, StoreError> {
    let path = dir.join("template.key");
    if path.exists() {
        return super::read_secret_file(&path).map_err(StoreError::Key);
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    // Synced, with its directory: the key must be on disk before any
    // template sealed with it.
    super::replace_file(&path, hex::encode(key).as_bytes(), true)
        .map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))?;
    Ok(key.to_vec())
}

/// Makes a new random key in `dir` (`<id>.key`, mode 600) and, when
/// `activate`, names it in `ACTIVE` (written atomically); its id.
pub fn new_key(dir: &Path, activate: bool) -> Result<KeyId, StoreError> {
    let err = |e: std::io::Error| StoreError::Key(format!("{}: {e}", dir.display()));
    fs::create_dir_all(dir).map_err(err)?;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let id = KeyId::of(&key);
    super::write_secret_file(&dir.join(format!("{id}.key")), &key).map_err(err)?;
    if activate {
        super::replace_file(&dir.join(ACTIVE_FILE), id.hex().as_bytes(), false).map_err(err)?;
    } else {
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sealer::open(Path::new(""), "", dir.path()).expect("sealer");
        let sealed = s.seal(b"template", b"a").expect("seal");
        assert_eq!(Sealer::key_of(&sealed), Some(s.active()));
        assert_eq!(s.open_sealed(&sealed, b"a").expect("open"), b"template");
        assert!(s.open_sealed(&sealed, b"b").is_err());
        // The same key file is read back.
        let s2 = Sealer::open(Path::new(""), "", dir.path()).expect("sealer");
        assert_eq!(s2.open_sealed(&sealed, b"a").expect("open"), b"template");
    }

    #[test]
    fn a_key_directory_rotates_and_opens_old_and_legacy_records() {
        let keys = tempfile::tempdir().expect("tempdir");
        let data = tempfile::tempdir().expect("tempdir");
        let first = new_key(keys.path(), true).expect("key");
        let s = Sealer::open(keys.path(), "", data.path()).expect("sealer");
        let old = s.seal(b"old", b"x").expect("seal");
        // A record of the format before key ids, under the first key.
        let key = crate::store::read_secret_file(&keys.path().join(format!("{first}.key"))).expect("key");
        let legacy = {
            let mut nonce_ct = vec![7u8; NONCE_LEN];
            let ct = cipher(&key)
                .expect("cipher")
                .encrypt(Nonce::from_slice(&[7u8; NONCE_LEN]), Payload { msg: b"legacy".as_slice(), aad: b"y" })
                .expect("encrypt");
            nonce_ct.extend_from_slice(&ct);
            nonce_ct
        };
        let second = new_key(keys.path(), true).expect("key");
        assert_eq!(s.reload(data.path()).expect("reload"), second);
        let new = s.seal(b"new", b"x").expect("seal");
        assert_eq!((Sealer::key_of(&old), Sealer::key_of(&new)), (Some(first), Some(second)));
        assert_eq!(s.open_sealed(&old, b"x").expect("old key still opens"), b"old");
        assert_eq!(s.open_sealed(&legacy, b"y").expect("legacy opens"), b"legacy");
        // The first key's file gone: its records no longer open.
        fs::remove_file(keys.path().join(format!("{first}.key"))).expect("rm");
        s.reload(data.path()).expect("reload");
        assert!(s.open_sealed(&old, b"x").is_err());
        assert_eq!(s.open_sealed(&new, b"x").expect("open"), b"new");
        // A key readable by others is refused.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = keys.path().join(format!("{second}.key"));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(Sealer::open(keys.path(), "", data.path()), Err(StoreError::Key(_))));
        }
        // Keys inside the data directory are refused.
        assert!(Sealer::open(data.path(), "", data.path()).is_err());
    }
}
