//! proto <-> domain conversions. Incoming messages are destructured field by
//! field so a new proto field fails to compile until someone decides what it
//! means.

use super::pb;
use crate::{
    biometric::{Modality, Sample, SampleData},
    engine::{
        Candidate, Decision, EngineError, EnrollOutcome, EnrollRequest, ExportedTemplate, IdentifyOutcome,
        IdentifyRequest, ModalityScore, SampleReport, Stats, VerifyOutcome, VerifyRequest,
    },
    store::{SubjectRecord, SubjectSummary},
};

/// A time in milliseconds since the Unix epoch as a protobuf Timestamp.
pub(crate) fn timestamp(unix_ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: i32::try_from(unix_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// A protobuf Timestamp as milliseconds since the Unix epoch (unset: 0);
/// one out of range is INVALID_TIMESTAMP.
pub(super) fn unix_ms(t: Option<prost_types::Timestamp>, field: &str) -> Result<i64, EngineError> {
    let Some(t) = t else { return Ok(0) };
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(EngineError::invalid("INVALID_TIMESTAMP", field, "nanos must be in [0, 1e9)"));
    }
    t.seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(t.nanos / 1_000_000)))
        .ok_or_else(|| EngineError::invalid("INVALID_TIMESTAMP", field, "out of range"))
}

/// A duration in seconds as a protobuf Duration.
pub(super) fn duration(seconds: f64) -> prost_types::Duration {
    let whole = seconds.trunc();
    prost_types::Duration { seconds: whole as i64, nanos: ((seconds - whole) * 1e9) as i32 }
}

pub(super) fn modality_from_pb(raw: i32, field: &str) -> Result<Modality, EngineError> {
    match pb::Modality::try_from(raw) {
        Ok(pb::Modality::Face) => Ok(Modality::Face),
        Ok(pb::Modality::Finger) => Ok(Modality::Finger),
        Ok(pb::Modality::Unspecified) => {
            Err(EngineError::invalid("INVALID_MODALITY", field, "is required (FACE or FINGER)"))
        }
        Err(_) => Err(EngineError::invalid("INVALID_MODALITY", field, format!("unknown modality {raw}"))),
    }
}

fn modality_to_pb(m: Modality) -> i32 {
    match m {
        Modality::Face => pb::Modality::Face as i32,
        Modality::Finger => pb::Modality::Finger as i32,
    }
}

/// A template sample as the wire carries it (a routing node's extracted probe).
pub(super) fn sample_to_pb(s: Sample) -> pb::Sample {
    let data = match s.data {
        SampleData::Image(b) => pb::sample::Data::Image(b),
        SampleData::FaceEmbedding { model_id, values } => {
            pb::sample::Data::FaceEmbedding(pb::FaceEmbedding { model_id, values })
        }
        SampleData::IsoTemplate(b) => pb::sample::Data::Iso197942(b),
    };
    pb::Sample {
        modality: modality_to_pb(s.modality),
        finger_position: u32::from(s.finger_position),
        data: Some(data),
        ppi: s.ppi,
    }
}

fn samples_from_pb(samples: Vec<pb::Sample>) -> Result<Vec<Sample>, EngineError> {
    samples
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let pb::Sample { modality, finger_position, data, ppi } = s;
            let modality = modality_from_pb(modality, &format!("samples[{i}].modality"))?;
            let finger_position = u8::try_from(finger_position).ok().filter(|p| *p <= 10).ok_or_else(|| {
                EngineError::invalid(
                    "INVALID_FINGER_POSITION",
                    format!("samples[{i}].finger_position"),
                    format!("{finger_position} is not an ISO finger position (0 for faces, 1..10 for fingers)"),
                )
            })?;
            let data = match data {
                Some(pb::sample::Data::Image(b)) => SampleData::Image(b),
                Some(pb::sample::Data::FaceEmbedding(pb::FaceEmbedding { model_id, values })) => {
                    SampleData::FaceEmbedding { model_id, values }
                }
                Some(pb::sample::Data::Iso197942(b)) => SampleData::IsoTemplate(b),
                None => {
                    return Err(EngineError::invalid(
                        "MISSING_SAMPLE_DATA",
                        format!("samples[{i}].data"),
                        "is required: image, face_embedding or iso_19794_2",
                    ));
                }
            };
            Ok(Sample { modality, finger_position, data, ppi })
        })
        .collect()
}

impl TryFrom<pb::EnrollRequest> for EnrollRequest {
    type Error = EngineError;
    fn try_from(r: pb::EnrollRequest) -> Result<Self, EngineError> {
        let pb::EnrollRequest { subject_id, samples, add_encounter, use_main_face, watchlists, request_id } = r;
        Ok(Self {
            subject_id,
            samples: samples_from_pb(samples)?,
            add_encounter,
            use_main_face,
            watchlists,
            request_id,
        })
    }
}

impl TryFrom<pb::IdentifyRequest> for IdentifyRequest {
    type Error = EngineError;
    fn try_from(r: pb::IdentifyRequest) -> Result<Self, EngineError> {
        let pb::IdentifyRequest { samples, max_candidates, target_fpir, subject_ids, watchlist, allow_partial: _ } = r;
        if !(0.0..1.0).contains(&target_fpir) {
            return Err(EngineError::invalid("INVALID_TARGET_RATE", "target_fpir", "must be in [0, 1)"));
        }
        Ok(Self {
            samples: samples_from_pb(samples)?,
            max_candidates: max_candidates as usize,
            target_fpir,
            subject_ids,
            watchlist,
        })
    }
}

impl TryFrom<pb::VerifyRequest> for VerifyRequest {
    type Error = EngineError;
    fn try_from(r: pb::VerifyRequest) -> Result<Self, EngineError> {
        let pb::VerifyRequest { subject_id, samples, target_fmr } = r;
        if !(0.0..1.0).contains(&target_fmr) {
            return Err(EngineError::invalid("INVALID_TARGET_RATE", "target_fmr", "must be in [0, 1)"));
        }
        Ok(Self { subject_id, samples: samples_from_pb(samples)?, target_fmr })
    }
}

impl From<SampleReport> for pb::SampleResult {
    fn from(r: SampleReport) -> Self {
        Self {
            modality: r.modality.map_or(0, modality_to_pb),
            finger_position: u32::from(r.finger_position),
            model_id: r.model_id,
            quality: r.quality,
            faces_found: u32::try_from(r.faces_found).unwrap_or(u32::MAX),
            main_face_used: r.main_face_used,
            face_box: r.bbox.map(|[x1, y1, x2, y2]| pb::BoundingBox { x1, y1, x2, y2 }),
            minutiae: u32::try_from(r.minutiae).unwrap_or(u32::MAX),
        }
    }
}

impl From<EnrollOutcome> for pb::EnrollResponse {
    fn from(o: EnrollOutcome) -> Self {
        Self {
            subject_id: o.subject_id,
            encounter_id: o.encounter_id.to_string(),
            samples: o.samples.into_iter().map(Into::into).collect(),
            replayed: o.replayed,
        }
    }
}

impl From<ModalityScore> for pb::ModalityScore {
    fn from(s: ModalityScore) -> Self {
        Self {
            modality: modality_to_pb(s.modality),
            finger_position: u32::from(s.finger_position),
            model_id: s.model_id,
            raw_score: s.raw_score,
            calibrated_score: s.calibrated_score,
        }
    }
}

impl From<Candidate> for pb::Candidate {
    fn from(c: Candidate) -> Self {
        Self { subject_id: c.subject_id, score: c.score, scores: c.scores.into_iter().map(Into::into).collect() }
    }
}

impl From<Decision> for pb::Decision {
    fn from(d: Decision) -> Self {
        Self {
            is_match: d.is_match,
            threshold: d.threshold,
            threshold_basis: d.basis,
            subject_id: d.subject_id.unwrap_or_default(),
            threshold_fmr: d.threshold_fmr,
        }
    }
}

impl From<IdentifyOutcome> for pb::IdentifyResponse {
    fn from(o: IdentifyOutcome) -> Self {
        Self {
            candidates: o.candidates.into_iter().map(Into::into).collect(),
            decision: Some(o.decision.into()),
            probes: o.probes.into_iter().map(Into::into).collect(),
            missing_shards: Vec::new(),
        }
    }
}

impl From<VerifyOutcome> for pb::VerifyResponse {
    fn from(o: VerifyOutcome) -> Self {
        Self {
            decision: Some(o.decision.into()),
            score: o.score,
            scores: o.scores.into_iter().map(Into::into).collect(),
            probes: o.probes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<SubjectSummary> for pb::SubjectSummary {
    fn from(s: SubjectSummary) -> Self {
        Self {
            subject_id: s.subject_id,
            create_time: Some(timestamp(s.created_ms)),
            encounters: u32::try_from(s.encounters).unwrap_or(u32::MAX),
            templates: u32::try_from(s.templates).unwrap_or(u32::MAX),
            watchlists: s.watchlists,
        }
    }
}

impl From<SubjectRecord> for pb::Subject {
    fn from(s: SubjectRecord) -> Self {
        Self {
            subject_id: s.subject_id,
            create_time: Some(timestamp(s.created_ms)),
            watchlists: s.watchlists,
            encounters: s
                .encounters
                .into_iter()
                .map(|e| pb::Encounter {
                    encounter_id: e.encounter_id.to_string(),
                    create_time: Some(timestamp(e.created_ms)),
                    templates: e
                        .templates
                        .into_iter()
                        .map(|(m, pos, model_id, quality)| pb::TemplateSummary {
                            modality: modality_to_pb(m),
                            finger_position: u32::from(pos),
                            model_id,
                            quality,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl From<Stats> for pb::StatsResponse {
    fn from(s: Stats) -> Self {
        Self {
            subjects: s.subjects,
            encounters: s.encounters,
            templates: s
                .templates
                .into_iter()
                .map(|(m, model_id, count)| pb::TemplateCount { modality: modality_to_pb(m), model_id, count })
                .collect(),
            models: s
                .models
                .into_iter()
                .map(|(model_id, m, dimension, sha256)| pb::ModelInfo {
                    model_id,
                    modality: modality_to_pb(m),
                    dimension,
                    sha256,
                })
                .collect(),
            face_index: Some(pb::FaceIndex {
                kind: s.face_index.0,
                approximate: s.face_index.1,
                state: s.face_index.2,
            }),
        }
    }
}

impl From<ExportedTemplate> for pb::ExportedTemplate {
    fn from(t: ExportedTemplate) -> Self {
        Self {
            encounter_id: t.encounter_id.to_string(),
            finger_position: u32::from(t.finger_position),
            model_id: t.model_id,
            quality: t.quality,
            iso_19794_2: t.iso_19794_2,
        }
    }
}
