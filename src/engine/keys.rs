//! The engine's side of key rotation: the store's key ring read again
//! while serving, so that a rotation's new key seals from then on.

use super::{Engine, EngineError};
use crate::store::KeyId;

impl Engine {
    /// Reads the key directory again; the active key's id.
    pub fn reload_keys(&self) -> Result<KeyId, EngineError> {
        Ok(self.records.reload_keys()?)
    }

    /// The key new records are sealed with.
    pub fn active_key(&self) -> Option<KeyId> {
        Some(self.records.active_key())
    }
}
