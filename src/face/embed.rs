//! Face embedding: an aligned crop in, an L2-normalised vector out, fed as
//! the manifest describes so any ArcFace-style model plugs in unchanged.

use image::RgbImage;
use ndarray::Array4;
use ort::{session::Session, value::TensorRef};

use crate::inference::{
    self, EmbedderSpec, ModelError,
    manifest::{Layout, Manifest},
};

/// An embedding model session.
pub struct Embedder {
    session: Session,
    spec: EmbedderSpec,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder").field("model", &self.spec.id).finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the manifest's face embedder.
    pub fn load(manifest: &Manifest, threads: usize) -> Result<Self, ModelError> {
        let spec = manifest.face_embedder.clone();
        let session = inference::session(&manifest.path(&spec.file), threads)?;
        Ok(Self { session, spec })
    }

    /// The model's description.
    pub fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    /// Crop size the model expects.
    pub fn input_size(&self) -> (u32, u32) {
        (self.spec.input.width, self.spec.input.height)
    }

    /// One normalised embedding per crop (all crops must have the input size).
    pub fn embed(&mut self, crops: &[&RgbImage]) -> ort::Result<Vec<Vec<f32>>> {
        let (w, h) = (self.spec.input.width as usize, self.spec.input.height as usize);
        let n = crops.len();
        let input = &self.spec.input;
        let bgr = input.channels == "BGR";
        let mut t = match input.layout {
            Layout::NHWC => Array4::<f32>::zeros((n, h, w, 3)),
            Layout::NCHW => Array4::<f32>::zeros((n, 3, h, w)),
        };
        for (i, crop) in crops.iter().enumerate() {
            if crop.width() as usize != w || crop.height() as usize != h {
                return Err(ort::Error::new(format!(
                    "crop is {}x{}, model wants {w}x{h}",
                    crop.width(),
                    crop.height()
                )));
            }
            for (x, y, p) in crop.enumerate_pixels() {
                for c in 0..3 {
                    let src = if bgr { 2 - c } else { c };
                    let v = (f32::from(p.0[src]) - input.mean) * input.scale;
                    match input.layout {
                        Layout::NHWC => t[[i, y as usize, x as usize, c]] = v,
                        Layout::NCHW => t[[i, c, y as usize, x as usize]] = v,
                    }
                }
            }
        }
        let dim = self.spec.output.dimension as usize;
        let outputs = self.session.run(ort::inputs![input.name.as_str() => TensorRef::from_array_view(&t)?])?;
        let out = outputs[self.spec.output.name.as_str()].try_extract_array::<f32>()?;
        if out.len() != n * dim {
            return Err(ort::Error::new(format!("model returned {} values, expected {n} x {dim}", out.len())));
        }
        let flat: Vec<f32> = out.iter().copied().collect();
        Ok(flat.chunks_exact(dim).map(normalized).collect())
    }
}

/// Cosine similarity of two L2-normalised embeddings (their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `v / |v|` (zero stays zero, a unit vector stays as it is).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    // A unit vector is kept as it is: normalising it again (a routing node's
    // extracted probe, at the shard) would move its last bits.
    if norm > 0.0 && (norm - 1.0).abs() > 1e-6 { v.iter().map(|x| x / norm).collect() } else { v.to_vec() }
}
