//! The face pipeline: decode -> detect (MTCNN, 5 landmarks) -> align to the
//! 112x112 template -> embed -> L2-normalise.

pub mod align;
pub mod detect;
pub mod embed;

use std::time::{Duration, Instant};

use ::image::RgbImage;

pub use crate::imaging::ImageLimits;
use crate::imaging::{self, ImageError};
use crate::inference::{Manifest, ModelError};

/// Why a face sample could not be turned into a template.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FaceError {
    /// The bytes are not a usable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The detector found nothing.
    #[error("no face was found in the image")]
    NoFace,
    /// Several faces and the caller did not ask for the main one.
    #[error("{0} faces were found; ask for the main face to use the largest, most central one")]
    MultipleFaces(usize),
    /// ONNX Runtime failed.
    #[error("face model inference failed: {0}")]
    Inference(String),
    /// Every worker is busy and the queue is full.
    #[error("face workers overloaded: {0}")]
    Overloaded(String),
    /// The workers are stopped.
    #[error("face workers unavailable: {0}")]
    Unavailable(String),
}

impl From<ort::Error> for FaceError {
    fn from(e: ort::Error) -> Self {
        FaceError::Inference(e.to_string())
    }
}

/// Longest image side MTCNN searches; larger images are scaled down for
/// detection only.
pub const DETECT_MAX_SIDE: u32 = 1600;

/// What to do with several faces in one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MultipleFaces {
    /// Fail with [`FaceError::MultipleFaces`].
    Refuse,
    /// Use the main face (largest box, nearest the centre).
    UseMain,
}

/// Time spent in each stage of one extraction.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    /// Image decoding.
    pub decode: Duration,
    /// MTCNN.
    pub detect: Duration,
    /// Similarity warp.
    pub align: Duration,
    /// Embedding (both views when flip-averaging).
    pub embed: Duration,
    /// Finger minutiae extraction (finger samples).
    pub minutiae: Duration,
}

/// A face template with what was learnt on the way.
#[derive(Debug, Clone)]
pub struct FaceExtraction {
    /// Unit-length embedding.
    pub embedding: Vec<f32>,
    /// Detector confidence in [0, 1].
    pub quality: f32,
    /// Faces in the image.
    pub faces_found: usize,
    /// The main face was chosen among several.
    pub main_face_used: bool,
    /// Box of the face used (x1, y1, x2, y2).
    pub bbox: [f32; 4],
    /// Stage timings.
    pub times: StageTimes,
}

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct FaceSettings {
    /// Embed the mirrored crop too and average.
    pub flip_average: bool,
    /// Intra-op threads per session.
    pub threads: usize,
    /// Image limits.
    pub limits: ImageLimits,
}

impl FaceSettings {
    /// Settings from the service configuration.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            flip_average: config.face.flip_average,
            threads: config.inference.threads,
            limits: ImageLimits {
                max_bytes: config.limits.max_image_bytes,
                max_pixels: config.limits.max_image_pixels,
            },
        }
    }
}

/// One thread's detector and embedder sessions.
#[derive(Debug)]
pub struct FacePipeline {
    detector: detect::Mtcnn,
    embedder: embed::Embedder,
    settings: FaceSettings,
}

impl FacePipeline {
    /// Loads the manifest's face models.
    pub fn load(manifest: &Manifest, settings: FaceSettings) -> Result<Self, ModelError> {
        let dir = manifest.dir.clone();
        let env = crate::inference::runtime()?;
        let detector = detect::Mtcnn::load(env, &dir, settings.threads)
            .map_err(|e| ModelError::Session { path: dir.display().to_string(), message: e.to_string() })?;
        let embedder = embed::Embedder::load(manifest, settings.threads)?;
        let (w, h) = embedder.input_size();
        if (w, h) != (112, 112) {
            return Err(ModelError::Unsupported {
                id: embedder.spec().id.clone(),
                message: format!("input {w}x{h}; only 112x112 aligned crops are produced"),
            });
        }
        Ok(Self { detector, embedder, settings })
    }

    /// Decodes, detects, aligns and embeds the face of an encoded image.
    pub fn extract(&mut self, bytes: &[u8], multiple: MultipleFaces) -> Result<FaceExtraction, FaceError> {
        let mut times = StageTimes::default();
        let t = Instant::now();
        let img = imaging::decode_rgb(bytes, self.settings.limits)?;
        times.decode = t.elapsed();

        let t = Instant::now();
        let faces = self.detect(&img)?;
        times.detect = t.elapsed();
        let chosen = match (faces.len(), multiple) {
            (0, _) => return Err(FaceError::NoFace),
            (1, _) => 0,
            (n, MultipleFaces::Refuse) => return Err(FaceError::MultipleFaces(n)),
            (_, MultipleFaces::UseMain) => {
                detect::main_face(&faces, img.width(), img.height()).ok_or(FaceError::NoFace)?
            }
        };
        let face = &faces[chosen];

        let t = Instant::now();
        let crop = align::align(&img, &face.landmarks);
        times.align = t.elapsed();

        let t = Instant::now();
        let embedding = self.embed_aligned(&crop)?;
        times.embed = t.elapsed();
        Ok(FaceExtraction {
            embedding,
            quality: face.score.clamp(0.0, 1.0),
            faces_found: faces.len(),
            main_face_used: faces.len() > 1,
            bbox: face.bbox,
            times,
        })
    }

    /// Faces in image coordinates. Large images are searched on a copy whose
    /// longer side is [`DETECT_MAX_SIDE`]: MTCNN's cost grows with the pixel
    /// count, and faces in such photos are far above its 20-pixel minimum.
    /// Alignment then samples the full-resolution image.
    fn detect(&mut self, img: &RgbImage) -> Result<Vec<detect::Detection>, FaceError> {
        let side = img.width().max(img.height());
        if side <= DETECT_MAX_SIDE {
            return Ok(self.detector.detect(img)?);
        }
        let s = DETECT_MAX_SIDE as f32 / side as f32;
        let (w, h) =
            (((img.width() as f32 * s).round() as u32).max(1), ((img.height() as f32 * s).round() as u32).max(1));
        let small = ::image::imageops::resize(img, w, h, ::image::imageops::FilterType::Triangle);
        let mut faces = self.detector.detect(&small)?;
        for f in &mut faces {
            f.bbox.iter_mut().for_each(|v| *v /= s);
            f.landmarks.iter_mut().flatten().for_each(|v| *v /= s);
        }
        Ok(faces)
    }

    /// Embeds an already aligned 112x112 crop (flip-averaged if configured).
    pub fn embed_aligned(&mut self, crop: &RgbImage) -> Result<Vec<f32>, FaceError> {
        if !self.settings.flip_average {
            let mut v = self.embedder.embed(&[crop])?;
            return v.pop().ok_or_else(|| FaceError::Inference("no embedding returned".into()));
        }
        let mirrored = ::image::imageops::flip_horizontal(crop);
        let v = self.embedder.embed(&[crop, &mirrored])?;
        let [a, b] = v.as_slice() else {
            return Err(FaceError::Inference("expected two embeddings".into()));
        };
        let sum: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
        Ok(embed::normalized(&sum))
    }
}
