//! Turning request samples into templates: validation, face extraction on
//! the workers, checks on pre-extracted embeddings.

use super::{Engine, EngineError, SampleReport};
use crate::{
    biometric::{Modality, NewTemplate, Sample, SampleData},
    face::{MultipleFaces, StageTimes, embed::normalized},
};

/// A sample turned into a template.
#[derive(Debug, Clone)]
pub(super) struct Probe {
    pub(super) template: NewTemplate,
    pub(super) report: SampleReport,
    pub(super) times: StageTimes,
}

impl Engine {
    /// Validates and extracts every sample; fails on the first bad one.
    /// With several faces, `use_main_face` picks the main one (searches
    /// always ask for it; enrolls only when the caller does).
    pub(super) async fn extract_all(&self, samples: &[Sample], use_main_face: bool) -> Result<Vec<Probe>, EngineError> {
        if samples.is_empty() {
            return Err(EngineError::invalid("samples", "at least one sample is required"));
        }
        if samples.len() > self.max_samples {
            return Err(EngineError::invalid(
                "samples",
                format!("{} samples, at most {} per request", samples.len(), self.max_samples),
            ));
        }
        let multiple = if use_main_face { MultipleFaces::UseMain } else { MultipleFaces::Refuse };
        let mut out = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            out.push(self.extract_one(i, s, multiple).await?);
        }
        Ok(out)
    }

    async fn extract_one(&self, i: usize, s: &Sample, multiple: MultipleFaces) -> Result<Probe, EngineError> {
        let field = |name: &str| format!("samples[{i}].{name}");
        if s.modality == Modality::Finger {
            return Err(EngineError::FingerprintsNotEnabled { field: field("modality") });
        }
        if s.finger_position != 0 {
            return Err(EngineError::invalid(field("finger_position"), "must be 0 for a face sample"));
        }
        let model = &self.face_model;
        match &s.data {
            SampleData::Image(bytes) => {
                let x = self
                    .faces
                    .extract(bytes.clone(), multiple)
                    .await
                    .map_err(|source| EngineError::Face { field: field("image"), source })?;
                let report = SampleReport {
                    modality: Some(Modality::Face),
                    finger_position: 0,
                    model_id: model.id.clone(),
                    quality: x.quality,
                    faces_found: x.faces_found,
                    main_face_used: x.main_face_used,
                    bbox: Some(x.bbox),
                };
                Ok(Probe { template: face_template(model.id.clone(), x.quality, x.embedding), report, times: x.times })
            }
            SampleData::FaceEmbedding { model_id, values } => {
                let f = field("face_embedding");
                if *model_id != model.id {
                    return Err(EngineError::UnknownModel {
                        field: format!("{f}.model_id"),
                        model_id: model_id.clone(),
                        expected: model.id.clone(),
                    });
                }
                if values.len() != model.dim {
                    return Err(EngineError::Dimension {
                        field: format!("{f}.values"),
                        expected: model.dim,
                        got: values.len(),
                    });
                }
                if values.iter().any(|v| !v.is_finite()) || values.iter().all(|v| *v == 0.0) {
                    return Err(EngineError::invalid(format!("{f}.values"), "must be finite and not all zero"));
                }
                let report = SampleReport {
                    modality: Some(Modality::Face),
                    model_id: model.id.clone(),
                    quality: 1.0,
                    ..SampleReport::default()
                };
                Ok(Probe {
                    template: face_template(model.id.clone(), 1.0, normalized(values)),
                    report,
                    times: StageTimes::default(),
                })
            }
            SampleData::IsoTemplate(_) => Err(EngineError::invalid(
                field("iso_19794_2"),
                "an ISO/IEC 19794-2 template is a finger template, not a face",
            )),
        }
    }
}

fn face_template(model_id: String, quality: f32, vector: Vec<f32>) -> NewTemplate {
    NewTemplate { modality: Modality::Face, finger_position: 0, model_id, quality, vector }
}
