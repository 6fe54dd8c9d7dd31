//! Requests and outcomes of the engine, free of any transport type.

use std::time::Duration;

use crate::{
    biometric::{Modality, Sample},
    face::StageTimes,
};

/// Enroll a subject's samples.
#[derive(Debug, Clone)]
pub struct EnrollRequest {
    /// Caller-chosen id.
    pub subject_id: String,
    /// At least one sample.
    pub samples: Vec<Sample>,
    /// Add an encounter to an existing subject.
    pub add_encounter: bool,
    /// With several faces, use the main one instead of failing.
    pub use_main_face: bool,
    /// Watchlists the subject joins.
    pub watchlists: Vec<String>,
    /// Idempotency key (empty: none): a retry returns the first answer.
    pub request_id: String,
}

/// What the engine made of one sample.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SampleReport {
    /// Modality (face when unset).
    pub modality: Option<Modality>,
    /// Finger position (0 for faces).
    pub finger_position: u8,
    /// Model that made the template.
    pub model_id: String,
    /// Quality in [0, 1].
    pub quality: f32,
    /// Faces in the image (0 for templates).
    pub faces_found: usize,
    /// The main face was chosen among several.
    pub main_face_used: bool,
    /// Face box when detected.
    pub bbox: Option<[f32; 4]>,
    /// Minutiae in the finger template (0 for faces).
    pub minutiae: usize,
}

/// Result of an enroll.
#[derive(Debug, Clone)]
pub struct EnrollOutcome {
    /// The subject.
    pub subject_id: String,
    /// The new encounter.
    pub encounter_id: i64,
    /// One report per sample.
    pub samples: Vec<SampleReport>,
    /// The first answer to this request id, returned again (nothing stored).
    pub replayed: bool,
}

/// 1:N search.
#[derive(Debug, Clone)]
pub struct IdentifyRequest {
    /// Probe samples.
    pub samples: Vec<Sample>,
    /// Candidates wanted (0: 10).
    pub max_candidates: usize,
    /// Target FPIR (0: default threshold).
    pub target_fpir: f64,
    /// Restriction to these subjects (empty: all).
    pub subject_ids: Vec<String>,
    /// Restriction to a watchlist's members (empty: the whole gallery).
    pub watchlist: String,
}

/// One modality's score against a candidate.
#[derive(Debug, Clone)]
pub struct ModalityScore {
    /// Modality.
    pub modality: Modality,
    /// Finger position (0 for faces).
    pub finger_position: u8,
    /// Model.
    pub model_id: String,
    /// Raw similarity (cosine for faces, MCC in [0, 1] for fingers).
    pub raw_score: f64,
    /// Calibrated score, -10 log10(FMR).
    pub calibrated_score: f64,
}

/// A ranked candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Who.
    pub subject_id: String,
    /// Fused calibrated score used for ranking and deciding, -10 log10(FMR).
    pub score: f64,
    /// Per-modality scores.
    pub scores: Vec<ModalityScore>,
}

/// A decision with the rule that made it.
#[derive(Debug, Clone)]
pub struct Decision {
    /// Match or not.
    pub is_match: bool,
    /// Threshold applied to the fused calibrated score.
    pub threshold: f64,
    /// The per-comparison false-match rate the threshold stands for.
    pub threshold_fmr: f64,
    /// Why this threshold.
    pub basis: String,
    /// The matched subject (identify).
    pub subject_id: Option<String>,
}

/// Where the time of an identify went.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentifyTimes {
    /// Probe extraction stages (summed over probes).
    pub extract: StageTimes,
    /// Index search and ranking.
    pub search: Duration,
    /// The part of `search` spent rescoring the candidates from their stored
    /// templates (finger components with the aspect hypotheses, and the face
    /// of a candidate that only a finger found).
    pub rescore: Duration,
}

/// Result of an identify.
#[derive(Debug, Clone)]
pub struct IdentifyOutcome {
    /// Best first.
    pub candidates: Vec<Candidate>,
    /// The decision on the best candidate.
    pub decision: Decision,
    /// One report per probe.
    pub probes: Vec<SampleReport>,
    /// Stage timings.
    pub times: IdentifyTimes,
}

/// 1:1 comparison.
#[derive(Debug, Clone)]
pub struct VerifyRequest {
    /// Claimed identity.
    pub subject_id: String,
    /// Probe samples.
    pub samples: Vec<Sample>,
    /// Target FMR (0: default threshold).
    pub target_fmr: f64,
}

/// Result of a verify.
#[derive(Debug, Clone)]
pub struct VerifyOutcome {
    /// Decision.
    pub decision: Decision,
    /// Fused score.
    pub score: f64,
    /// Per-modality scores.
    pub scores: Vec<ModalityScore>,
    /// One report per probe.
    pub probes: Vec<SampleReport>,
}

/// A stored finger template, for export.
#[derive(Debug, Clone)]
pub struct ExportedTemplate {
    /// Encounter it was enrolled in.
    pub encounter_id: i64,
    /// ISO finger position.
    pub finger_position: u8,
    /// Extractor that made it.
    pub model_id: String,
    /// Quality in [0, 1].
    pub quality: f32,
    /// The ISO/IEC 19794-2:2005 record.
    pub iso_19794_2: Vec<u8>,
}

/// Gallery statistics.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Subjects.
    pub subjects: u64,
    /// Encounters.
    pub encounters: u64,
    /// Templates per modality and model.
    pub templates: Vec<(Modality, String, u64)>,
    /// Models loaded: (id, modality, dimension, sha256).
    pub models: Vec<(String, Modality, u32, String)>,
    /// Face index: (kind, approximate, state).
    pub face_index: (String, bool, String),
}
