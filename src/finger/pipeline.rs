//! The finger image pipeline: decode -> check it is a grayscale print ->
//! rescale to 500 ppi -> LEADER minutiae -> stored template.

use std::time::{Duration, Instant};

use image::{DynamicImage, GrayImage, imageops::FilterType};

use super::{minutiae, ridges, template};
use crate::{
    imaging::{self, ImageError, ImageLimits},
    inference::{Manifest, ModelError},
};

/// Resolutions accepted for finger images, in pixels per inch.
pub const PPI_RANGE: std::ops::RangeInclusive<u32> = 250..=2000;
/// Resolution assumed when the request gives none.
pub const DEFAULT_PPI: u32 = 500;
/// Fewest foreground blocks (32x32 px at 500 ppi: 8 are about 21 mm²) for a print.
const MIN_FOREGROUND_BLOCKS: usize = 8;
/// Lowest ridge-band energy of a print's foreground: FVC2002 prints measured
/// 0.396 and above, face photos 0.354 at most (see [`ridges`]).
const MIN_RIDGE_ENERGY: f32 = 0.37;
/// A colour image whose channels differ by more than this on more than
/// [`MAX_COLOUR_FRACTION`] of its pixels is not a grayscale print.
const COLOUR_DELTA: u8 = 16;
const MAX_COLOUR_FRACTION: f32 = 0.02;

/// Why a finger sample could not be turned into a template.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FingerError {
    /// The bytes are not a usable image.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A colour picture.
    #[error("a finger image must be grayscale; this is a colour picture")]
    NotGrayscale,
    /// The resolution is outside [`PPI_RANGE`].
    #[error("resolution {0} ppi is outside 250..=2000")]
    Resolution(u32),
    /// No ridge pattern: blank, flat or not a fingerprint.
    #[error("no fingerprint found: {0}")]
    NoFingerprint(String),
    /// A print, but too few minutiae to match reliably.
    #[error("only {found} minutiae were found, at least {min} are needed (poor or partial print)")]
    TooFewMinutiae { found: usize, min: usize },
    /// A template problem.
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    /// ONNX Runtime failed.
    #[error("finger model inference failed: {0}")]
    Inference(String),
    /// Every worker is busy and the queue is full.
    #[error("workers overloaded: {0}")]
    Overloaded(String),
    /// The workers are stopped or have no finger model.
    #[error("finger extraction unavailable: {0}")]
    Unavailable(String),
}

impl From<ort::Error> for FingerError {
    fn from(e: ort::Error) -> Self {
        FingerError::Inference(e.to_string())
    }
}

/// Pipeline settings.
#[derive(Debug, Clone, Copy)]
pub struct FingerSettings {
    /// Intra-op threads per session.
    pub threads: usize,
    /// Image limits.
    pub limits: ImageLimits,
    /// Fewest minutiae a template must have.
    pub min_minutiae: usize,
}

/// A finger template with what was learnt on the way.
#[derive(Debug, Clone)]
pub struct FingerExtraction {
    /// The stored form (ISO/IEC 19794-2 record, one view, 500 ppi).
    pub template: Vec<u8>,
    /// Minutiae found.
    pub minutiae: usize,
    /// Heuristic quality in [0, 1] (ridge-band energy and minutiae count; not NFIQ 2).
    pub quality: f32,
    /// Time spent decoding and checking the image.
    pub decode: Duration,
    /// Time spent in the model and its decoding.
    pub extract: Duration,
}

/// One thread's LEADER session.
#[derive(Debug)]
pub struct FingerPipeline {
    extractor: minutiae::Extractor,
    settings: FingerSettings,
}

impl FingerPipeline {
    /// Loads the manifest's finger extractor; `None` when it has none.
    pub fn load(manifest: &Manifest, settings: FingerSettings) -> Result<Option<Self>, ModelError> {
        let Some(spec) = &manifest.finger_extractor else { return Ok(None) };
        let path = manifest.path(&spec.file);
        let env = crate::inference::runtime()?;
        let extractor = minutiae::Extractor::load(env, &path, settings.threads)
            .map_err(|e| ModelError::Session { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Some(Self { extractor, settings }))
    }

    /// Decodes a finger image at `ppi` (0: 500) and extracts its template
    /// for the finger at `position`.
    pub fn extract(&mut self, bytes: &[u8], ppi: u32, position: u8) -> Result<FingerExtraction, FingerError> {
        let t = Instant::now();
        let ppi = if ppi == 0 { DEFAULT_PPI } else { ppi };
        if !PPI_RANGE.contains(&ppi) {
            return Err(FingerError::Resolution(ppi));
        }
        let img = to_500ppi(&grayscale(imaging::decode(bytes, self.settings.limits)?)?, ppi)?;
        let stats = ridges::ridge_stats(&img);
        if stats.foreground_blocks < MIN_FOREGROUND_BLOCKS {
            return Err(FingerError::NoFingerprint("the image is blank or has no ridge area".into()));
        }
        if stats.ridge_energy < MIN_RIDGE_ENERGY {
            return Err(FingerError::NoFingerprint(format!(
                "no friction-ridge pattern (ridge-band energy {:.2}; prints have at least {MIN_RIDGE_ENERGY})",
                stats.ridge_energy
            )));
        }
        let decode = t.elapsed();
        let t = Instant::now();
        let found = self.extractor.extract(&img)?;
        let extract = t.elapsed();
        let min = self.settings.min_minutiae;
        if found.len() < min {
            return Err(FingerError::TooFewMinutiae { found: found.len(), min });
        }
        let quality = (stats.ridge_energy * (found.len() as f32 / (2 * min) as f32).min(1.0)).clamp(0.0, 1.0);
        let template = template::from_extraction(position, img.width(), img.height(), &found, quality)
            .map_err(template::TemplateError::from)?;
        Ok(FingerExtraction { template, minutiae: found.len(), quality, decode, extract })
    }
}

/// The grey levels of a grayscale image; colour pictures are refused
/// (a scanner's RGB output of a grey print passes).
fn grayscale(img: DynamicImage) -> Result<GrayImage, FingerError> {
    if !img.color().has_color() {
        return Ok(if img.color().has_alpha() {
            imaging::over_white_gray(&img.into_luma_alpha8())
        } else {
            img.into_luma8()
        });
    }
    let rgb = if img.color().has_alpha() { imaging::over_white(&img.into_rgba8()) } else { img.into_rgb8() };
    let coloured = rgb
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r.abs_diff(g) > COLOUR_DELTA || g.abs_diff(b) > COLOUR_DELTA || r.abs_diff(b) > COLOUR_DELTA
        })
        .count();
    if coloured as f32 > MAX_COLOUR_FRACTION * (rgb.width() * rgb.height()) as f32 {
        return Err(FingerError::NotGrayscale);
    }
    Ok(DynamicImage::ImageRgb8(rgb).into_luma8())
}

/// Rescales to the 500 ppi LEADER was trained at.
fn to_500ppi(img: &GrayImage, ppi: u32) -> Result<GrayImage, FingerError> {
    let s = DEFAULT_PPI as f32 / ppi as f32;
    let (w, h) = (((img.width() as f32 * s).round() as u32).max(1), ((img.height() as f32 * s).round() as u32).max(1));
    if w > minutiae::MAX_SIDE || h > minutiae::MAX_SIDE {
        return Err(ImageError::TooLarge(format!(
            "{w}x{h} pixels at 500 ppi; a finger image is at most {} pixels a side",
            minutiae::MAX_SIDE
        ))
        .into());
    }
    if ppi == DEFAULT_PPI {
        return Ok(img.clone());
    }
    Ok(image::imageops::resize(img, w, h, FilterType::Triangle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_pictures_are_refused_and_grey_rgb_passes() {
        let colour = image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([(x * 4) as u8, 0, 255]));
        assert!(matches!(grayscale(DynamicImage::ImageRgb8(colour)), Err(FingerError::NotGrayscale)));
        let grey = image::RgbImage::from_fn(64, 64, |x, _| image::Rgb([(x * 4) as u8; 3]));
        assert_eq!(grayscale(DynamicImage::ImageRgb8(grey)).expect("grey").get_pixel(10, 0).0, [40]);
    }

    #[test]
    fn rescaling_follows_the_resolution() {
        let img = GrayImage::new(1000, 800);
        let half = to_500ppi(&img, 1000).expect("rescale");
        assert_eq!(half.dimensions(), (500, 400));
        assert!(to_500ppi(&GrayImage::new(3000, 100), 500).is_err());
    }
}
