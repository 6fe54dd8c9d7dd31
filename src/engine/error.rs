//! The engine's error: every variant says which field or thing was wrong,
//! so the transport can map it to a status code and a field violation.

use crate::{
    calibration::CalibrationError, face::FaceError, finger::FingerError, index::IndexError, inference::ModelError,
    store::StoreError,
};

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A request field is missing or malformed; `code` is the ErrorInfo
    /// reason that names what (e.g. `INVALID_SUBJECT_ID`).
    #[error("{field}: {reason}")]
    InvalidArgument { code: &'static str, field: String, reason: String },
    /// A face sample could not be processed.
    #[error("{field}: {source}")]
    Face { field: String, source: FaceError },
    /// A finger sample could not be processed.
    #[error("{field}: {source}")]
    Finger { field: String, source: FingerError },
    /// Finger images cannot be processed: no finger extractor is installed.
    #[error(
        "{field}: finger images need the LEADER extractor, which is not installed (run models/fetch.sh); ISO/IEC 19794-2 templates are accepted"
    )]
    FingerprintsNotEnabled { field: String },
    /// A template from a model this service does not run.
    #[error("{field}: unknown model {model_id:?}; this service embeds faces with {expected:?}")]
    UnknownModel { field: String, model_id: String, expected: String },
    /// A template of the wrong size.
    #[error("{field}: embedding has {got} values, model expects {expected}")]
    Dimension { field: String, expected: usize, got: usize },
    /// A request option this version does not offer yet.
    #[error("{field}: {what} is not supported by this version of cotejo")]
    NotSupported { field: String, what: String },
    /// A write sent to a node of a read-only replica.
    #[error("this node serves a read-only replica of the records; send writes to the primary: {primary}")]
    ReadOnly { primary: String },
    /// Enroll of an existing subject without `add_encounter`.
    #[error("subject {0:?} already exists")]
    SubjectExists(String),
    /// No such subject.
    #[error("subject {0:?} not found")]
    SubjectNotFound(String),
    /// No such job.
    #[error("job {0:?} not found")]
    JobNotFound(String),
    /// A watchlist nobody was enrolled into.
    #[error("watchlist {0:?} has no members")]
    WatchlistNotFound(String),
    /// The subject has no template the probe can be compared with.
    #[error("subject {subject_id:?} has no template to compare with the probe ({what})")]
    NothingToCompare { subject_id: String, what: String },
    /// Still loading models or rebuilding the index.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The index failed.
    #[error("index: {0}")]
    Index(#[from] IndexError),
    /// Models could not be loaded.
    #[error("models: {0}")]
    Model(#[from] ModelError),
    /// Score calibrations could not be loaded.
    #[error("calibration: {0}")]
    Calibration(#[from] CalibrationError),
    /// The call could not start in time (a search place, within the wait
    /// allowed and the caller's deadline).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A bug or a dead task.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SubjectExists(id) => EngineError::SubjectExists(id),
            StoreError::SubjectNotFound(id) => EngineError::SubjectNotFound(id),
            other => EngineError::Store(other),
        }
    }
}

impl From<tokio::task::JoinError> for EngineError {
    fn from(e: tokio::task::JoinError) -> Self {
        EngineError::Internal(format!("blocking task failed: {e}"))
    }
}

impl EngineError {
    /// A missing or malformed field, with the ErrorInfo reason `code`.
    pub fn invalid(code: &'static str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        EngineError::InvalidArgument { code, field: field.into(), reason: reason.into() }
    }
}
