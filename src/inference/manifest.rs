//! The model manifest written by `models/fetch.sh`: which file plays which
//! role, its pinned sha256, how to feed it and what it returns.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Why models could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The manifest is missing or malformed.
    #[error("model manifest {path}: {message}")]
    Manifest { path: String, message: String },
    /// A file does not match its pinned sum.
    #[error("{path}: sha256 {actual} differs from the pinned {expected}")]
    Checksum { path: String, expected: String, actual: String },
    /// ONNX Runtime could not be loaded.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
    /// A session could not be created.
    #[error("cannot load model {path}: {message}")]
    Session { path: String, message: String },
    /// A model's declared interface is not supported.
    #[error("model {id}: {message}")]
    Unsupported { id: String, message: String },
}

/// A file with its pinned sum.
#[derive(Debug, Clone, Deserialize)]
pub struct PinnedFile {
    /// Path relative to the manifest.
    pub file: String,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// The face detector cascade.
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorSpec {
    /// Model id.
    pub id: String,
    /// Proposal net.
    pub pnet: PinnedFile,
    /// Refinement net.
    pub rnet: PinnedFile,
    /// Output net (boxes and landmarks).
    pub onet: PinnedFile,
    /// Licence.
    pub licence: String,
    /// Where it came from.
    pub origin: String,
}

/// Tensor layout of an image input.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Layout {
    /// Batch, height, width, channels.
    NHWC,
    /// Batch, channels, height, width.
    NCHW,
}

/// How the embedder is fed.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderInput {
    /// Input tensor name.
    pub name: String,
    /// Tensor layout.
    pub layout: Layout,
    /// Crop width (112 for the ArcFace template).
    pub width: u32,
    /// Crop height.
    pub height: u32,
    /// `RGB` or `BGR`.
    pub channels: String,
    /// Pixel value subtracted first.
    pub mean: f32,
    /// Factor applied after the subtraction.
    pub scale: f32,
}

/// What the embedder returns.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderOutput {
    /// Output tensor name.
    pub name: String,
    /// Embedding dimension.
    pub dimension: u32,
}

/// A face embedding model.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbedderSpec {
    /// Model id recorded in every template it makes.
    pub id: String,
    /// The ONNX file.
    #[serde(flatten)]
    pub file: PinnedFile,
    /// Input description.
    pub input: EmbedderInput,
    /// Output description.
    pub output: EmbedderOutput,
    /// Licence.
    pub licence: String,
    /// Where it came from and how it was converted.
    pub origin: String,
}

/// The fingerprint minutiae extractor.
#[derive(Debug, Clone, Deserialize)]
pub struct FingerExtractorSpec {
    /// Model id recorded in every finger template it makes.
    pub id: String,
    /// The ONNX file.
    #[serde(flatten)]
    pub file: PinnedFile,
    /// Resolution the model expects.
    pub ppi: u32,
    /// Licence.
    pub licence: String,
    /// Where it came from.
    pub origin: String,
}

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// ONNX Runtime shared library.
    pub onnxruntime: PinnedFile,
    /// Face detector.
    pub face_detector: DetectorSpec,
    /// Face embedder.
    pub face_embedder: EmbedderSpec,
    /// Fingerprint minutiae extractor (absent in manifests older than it).
    #[serde(default)]
    pub finger_extractor: Option<FingerExtractorSpec>,
    /// Directory the manifest was read from.
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Manifest {
    /// Reads `<dir>/manifest.json` and checks every file's sha256.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let path = dir.join("manifest.json");
        let err = |message: String| ModelError::Manifest { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| err(format!("{e} (run models/fetch.sh)")))?;
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        m.dir = dir.to_owned();
        let d = &m.face_detector;
        for f in [&m.onnxruntime, &d.pnet, &d.rnet, &d.onet, &m.face_embedder.file] {
            check(&m.path(f), &f.sha256)?;
        }
        if let Some(x) = &m.finger_extractor {
            check(&m.path(&x.file), &x.file.sha256)?;
        }
        let e = &m.face_embedder;
        if !matches!(e.input.channels.as_str(), "RGB" | "BGR") || e.output.dimension == 0 {
            return Err(ModelError::Unsupported { id: e.id.clone(), message: "channels must be RGB or BGR".into() });
        }
        Ok(m)
    }

    /// Absolute path of a manifest file.
    pub fn path(&self, f: &PinnedFile) -> PathBuf {
        self.dir.join(&f.file)
    }
}

/// Fails unless the file's sha256 is `expected`.
pub fn check(path: &Path, expected: &str) -> Result<(), ModelError> {
    let actual = sha256_file(path)
        .map_err(|e| ModelError::Manifest { path: path.display().to_string(), message: e.to_string() })?;
    if actual != expected.to_ascii_lowercase() {
        return Err(ModelError::Checksum { path: path.display().to_string(), expected: expected.into(), actual });
    }
    Ok(())
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
