//! Domain vocabulary shared by every module: modalities, samples, templates.

use std::fmt;

/// Which biometric a sample or template carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Modality {
    /// A face image or face embedding.
    Face,
    /// A fingerprint image or minutiae template.
    Finger,
}

impl Modality {
    /// Stable code used in the store.
    pub fn code(self) -> i64 {
        match self {
            Modality::Face => 1,
            Modality::Finger => 2,
        }
    }

    /// The modality of a stored code.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Modality::Face),
            2 => Some(Modality::Finger),
            _ => None,
        }
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modality::Face => "face",
            Modality::Finger => "finger",
        })
    }
}

/// What a sample carries.
#[derive(Debug, Clone)]
pub enum SampleData {
    /// Encoded image bytes.
    Image(Vec<u8>),
    /// A face embedding and the id of the model that made it.
    FaceEmbedding {
        /// Model id as in the manifest.
        model_id: String,
        /// The vector.
        values: Vec<f32>,
    },
    /// An ISO/IEC 19794-2 minutiae record.
    IsoTemplate(Vec<u8>),
}

/// One biometric sample of a request.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Its modality.
    pub modality: Modality,
    /// ISO finger position 1..10 (0 for faces).
    pub finger_position: u8,
    /// Image or template.
    pub data: SampleData,
    /// Finger image resolution (0: default).
    pub ppi: u32,
}

/// A template ready to be stored: the output of a pipeline.
#[derive(Debug, Clone)]
pub struct NewTemplate {
    /// Its modality.
    pub modality: Modality,
    /// ISO finger position (0 for faces).
    pub finger_position: u8,
    /// Model that made it.
    pub model_id: String,
    /// Quality in [0, 1].
    pub quality: f32,
    /// The template itself.
    pub data: TemplateData,
}

/// The comparable part of a template, by modality.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateData {
    /// A face embedding (L2-normalised).
    Embedding(Vec<f32>),
    /// Finger minutiae as an ISO/IEC 19794-2:2005 record of one view, at 500 ppi.
    Minutiae(Vec<u8>),
}

impl TemplateData {
    /// The face embedding, if this is one.
    pub fn embedding(&self) -> Option<&[f32]> {
        match self {
            TemplateData::Embedding(v) => Some(v),
            TemplateData::Minutiae(_) => None,
        }
    }

    /// Bytes as stored (sealed): little-endian f32 values, or the ISO record.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            TemplateData::Embedding(v) => vector_to_bytes(v),
            TemplateData::Minutiae(iso) => iso.clone(),
        }
    }

    /// The template of stored bytes of a modality; `None` when malformed.
    pub fn from_bytes(modality: Modality, bytes: Vec<u8>) -> Option<Self> {
        match modality {
            Modality::Face => vector_from_bytes(&bytes).map(TemplateData::Embedding),
            Modality::Finger => Some(TemplateData::Minutiae(bytes)),
        }
    }
}

/// A template read back from the store.
#[derive(Debug, Clone)]
pub struct StoredTemplate {
    /// Row id, also the id in the search index.
    pub template_id: i64,
    /// Owner.
    pub subject_id: String,
    /// Encounter it was enrolled in.
    pub encounter_id: i64,
    /// The template.
    pub template: NewTemplate,
}

/// Bytes of a vector as stored (little-endian f32).
pub fn vector_to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The vector of stored bytes, or `None` when the length is not a multiple of 4.
pub fn vector_from_bytes(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
