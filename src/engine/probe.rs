//! Turning request samples into templates: validation, face and finger
//! extraction on the workers, checks on pre-extracted embeddings and
//! imported ISO/IEC 19794-2 templates.

use super::{Engine, EngineError, SampleReport};
use crate::{
    biometric::{Modality, NewTemplate, Sample, SampleData, TemplateData},
    face::{MultipleFaces, StageTimes, embed::normalized},
    finger::{FingerError, template},
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
            return Err(EngineError::invalid("NO_SAMPLES", "samples", "at least one sample is required"));
        }
        if samples.len() > self.max_samples {
            return Err(EngineError::invalid(
                "TOO_MANY_SAMPLES",
                "samples",
                format!("{} samples, at most {} per request", samples.len(), self.max_samples),
            ));
        }
        let multiple = if use_main_face { MultipleFaces::UseMain } else { MultipleFaces::Refuse };
        let mut out = Vec::with_capacity(samples.len());
        for (i, s) in samples.iter().enumerate() {
            let probe = self.extract_one(i, s, multiple).await?;
            let t = &probe.times;
            for (stage, took) in [
                ("decode", t.decode),
                ("detect", t.detect),
                ("align", t.align),
                ("embed", t.embed),
                ("minutiae", t.minutiae),
            ] {
                if !took.is_zero() {
                    crate::metrics::observed().stage(stage, took);
                }
            }
            out.push(probe);
        }
        Ok(out)
    }

    /// The samples as templates, extracted here once, and what each
    /// extraction found: a routing node sends these to the shards, so that
    /// no shard extracts the probe again.
    pub async fn extracted(&self, samples: &[Sample]) -> Result<(Vec<Sample>, Vec<SampleReport>), EngineError> {
        let probes = self.extract_all(samples, true).await?;
        Ok(probes
            .into_iter()
            .map(|p| {
                let NewTemplate { modality, finger_position, model_id, data, .. } = p.template;
                let data = match data {
                    TemplateData::Embedding(values) => SampleData::FaceEmbedding { model_id, values },
                    TemplateData::Minutiae(iso) => SampleData::IsoTemplate(iso),
                };
                (Sample { modality, finger_position, data, ppi: 0 }, p.report)
            })
            .unzip())
    }

    async fn extract_one(&self, i: usize, s: &Sample, multiple: MultipleFaces) -> Result<Probe, EngineError> {
        let field = |name: &str| format!("samples[{i}].{name}");
        if s.modality == Modality::Finger {
            return self.extract_finger(i, s).await;
        }
        if s.finger_position != 0 {
            return Err(EngineError::invalid(
                "INVALID_FINGER_POSITION",
                field("finger_position"),
                "must be 0 for a face sample",
            ));
        }
        let model = &self.face_model;
        match &s.data {
            SampleData::Image(bytes) => {
                let x = self
                    .workers
                    .face(bytes.clone(), multiple)
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
                    minutiae: 0,
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
                    return Err(EngineError::invalid(
                        "INVALID_EMBEDDING",
                        format!("{f}.values"),
                        "must be finite and not all zero",
                    ));
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
                "WRONG_SAMPLE_KIND",
                field("iso_19794_2"),
                "an ISO/IEC 19794-2 template is a finger template, not a face",
            )),
        }
    }

    async fn extract_finger(&self, i: usize, s: &Sample) -> Result<Probe, EngineError> {
        let field = |name: &str| format!("samples[{i}].{name}");
        let position = s.finger_position;
        if !template::POSITIONS.contains(&position) {
            return Err(EngineError::invalid(
                "INVALID_FINGER_POSITION",
                field("finger_position"),
                format!("{position} is not an ISO finger position (1 right thumb .. 10 left little finger)"),
            ));
        }
        let finger_error = |name: &str, source: FingerError| EngineError::Finger { field: field(name), source };
        let (data, model_id, quality, minutiae, times) = match &s.data {
            SampleData::Image(bytes) => {
                if !self.workers.fingers() {
                    return Err(EngineError::FingerprintsNotEnabled { field: field("image") });
                }
                let x = self
                    .workers
                    .finger(bytes.clone(), s.ppi, position)
                    .await
                    .map_err(|source| finger_error("image", source))?;
                let times = StageTimes { decode: x.decode, minutiae: x.extract, ..StageTimes::default() };
                (x.template, self.finger_model_id.clone(), x.quality, x.minutiae, times)
            }
            SampleData::IsoTemplate(bytes) => {
                let iso = template::import(bytes, position, self.finger.min_minutiae)
                    .map_err(|e| finger_error("iso_19794_2", FingerError::Template(e)))?;
                let minutiae = template::matcher_minutiae(&iso).map(|m| m.len()).unwrap_or(0);
                let quality = crate::finger::iso19794_2::parse(&iso)
                    .ok()
                    .and_then(|r| r.views.first().map(|v| f32::from(v.quality) / 100.0))
                    .unwrap_or(0.0);
                (iso, template::IMPORTED_MODEL_ID.to_owned(), quality, minutiae, StageTimes::default())
            }
            SampleData::FaceEmbedding { .. } => {
                return Err(EngineError::invalid(
                    "WRONG_SAMPLE_KIND",
                    field("face_embedding"),
                    "a face embedding is not a finger sample",
                ));
            }
        };
        let report = SampleReport {
            modality: Some(Modality::Finger),
            finger_position: position,
            model_id: model_id.clone(),
            quality,
            minutiae,
            ..SampleReport::default()
        };
        let template = NewTemplate {
            modality: Modality::Finger,
            finger_position: position,
            model_id,
            quality,
            data: TemplateData::Minutiae(data),
        };
        Ok(Probe { template, report, times })
    }
}

fn face_template(model_id: String, quality: f32, vector: Vec<f32>) -> NewTemplate {
    NewTemplate {
        modality: Modality::Face,
        finger_position: 0,
        model_id,
        quality,
        data: TemplateData::Embedding(vector),
    }
}
