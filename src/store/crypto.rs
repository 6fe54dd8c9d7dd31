//! Templates at rest: AES-256-GCM with a random nonce per template and the
//! template's identity as associated data, so a ciphertext moved to another
//! row does not decrypt.

use std::{fs, io::Write, path::Path};

use aes_gcm::{
    Aes256Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use rand::RngCore;

use super::StoreError;

const NONCE_LEN: usize = 12;

/// Encrypts and decrypts template payloads.
pub(crate) struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// A sealer from a hex key, or from `<dir>/template.key`, made on first use.
    pub(crate) fn open(hex_key: &str, dir: &Path) -> Result<Self, StoreError> {
        let key = if hex_key.is_empty() { key_file(dir)? } else { decode(hex_key)? };
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| StoreError::Key("bad key length".into()))?;
        Ok(Self { cipher })
    }

    /// `nonce || ciphertext` of `plain`, bound to `aad`.
    pub(crate) fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| StoreError::Crypto)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// The plaintext of a `seal` output; fails on a wrong key or tampering.
    pub(crate) fn open_sealed(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Crypto);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| StoreError::Crypto)
    }
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
        let text = fs::read_to_string(&path).map_err(|e| StoreError::Key(format!("{}: {e}", path.display())))?;
        return decode(&text);
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    // Written to a temporary name, synced, renamed and the directory synced:
    // the key must be on disk before any template sealed with it.
    let tmp = dir.join("template.key.tmp");
    let _ = fs::remove_file(&tmp);
    let err = |e: std::io::Error| StoreError::Key(format!("{}: {e}", path.display()));
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(hex::encode(key).as_bytes()).and_then(|()| f.sync_all()).map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(key.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Sealer::open("", dir.path()).expect("sealer");
        let sealed = s.seal(b"template", b"a").expect("seal");
        assert_eq!(s.open_sealed(&sealed, b"a").expect("open"), b"template");
        assert!(s.open_sealed(&sealed, b"b").is_err());
        // The same key file is read back.
        let s2 = Sealer::open("", dir.path()).expect("sealer");
        assert_eq!(s2.open_sealed(&sealed, b"a").expect("open"), b"template");
    }
}
