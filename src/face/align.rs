//! Face image resampling: 5-point alignment onto the ArcFace 112x112 template, and the
//! OpenCV-compatible area resize the detector's crops need.
//!
//! Alignment matches InsightFace's `norm_crop` (similarity fitted with Umeyama's method, then
//! `cv2.warpAffine` with bilinear sampling and a black border), in exact floating point rather
//! than OpenCV's 1/32-pixel fixed point: on the same landmarks the crops differ by at most 1 level.

use image::{Rgb, RgbImage};

/// The standard 5-point ArcFace template for 112x112 crops.
pub const ARCFACE_112: [[f32; 2]; 5] =
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// Side of the aligned crop, in pixels.
const SIZE: u32 = 112;

/// Warps `img` so that `landmarks` land on the template (least-squares similarity transform, Umeyama), bilinear sampling, 112x112 RGB out.
pub fn align(img: &RgbImage, landmarks: &[[f32; 2]; 5]) -> RgbImage {
    let to_crop = Similarity::fit(landmarks, &ARCFACE_112);
    // Each output pixel pulls from where the inverse transform puts it in the source.
    let to_img = to_crop.inverse();
    RgbImage::from_fn(SIZE, SIZE, |u, v| {
        let [x, y] = to_img.apply([f64::from(u), f64::from(v)]);
        sample(img, x, y)
    })
}

/// `p -> c * p + t` on points taken as complex numbers: rotation and uniform scale `c = a + ib`,
/// translation `t`. No reflection, as in Umeyama's method with the determinant fixed to +1.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Similarity {
    a: f64,
    b: f64,
    tx: f64,
    ty: f64,
}

impl Similarity {
    /// Least-squares `dst ~ T(src)`. Umeyama's SVD solution reduces in 2-D to a closed form: with
    /// centred points z (src) and w (dst) as complex numbers, `c = sum(conj(z) w) / sum(|z|^2)`.
    fn fit(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Self {
        let n = src.len().min(dst.len()).max(1) as f64;
        let mean = |pts: &[[f32; 2]]| {
            let (sx, sy) = pts.iter().fold((0.0, 0.0), |(sx, sy), p| (sx + f64::from(p[0]), sy + f64::from(p[1])));
            [sx / n, sy / n]
        };
        let (ms, md) = (mean(src), mean(dst));
        let (mut num_re, mut num_im, mut den) = (0.0, 0.0, 0.0);
        for (s, d) in src.iter().zip(dst) {
            let (zx, zy) = (f64::from(s[0]) - ms[0], f64::from(s[1]) - ms[1]);
            let (wx, wy) = (f64::from(d[0]) - md[0], f64::from(d[1]) - md[1]);
            // conj(z) * w
            num_re += zx * wx + zy * wy;
            num_im += zx * wy - zy * wx;
            den += zx * zx + zy * zy;
        }
        // Coincident landmarks carry no scale or rotation: fall back to a pure translation.
        let (a, b) = if den > 1e-12 { (num_re / den, num_im / den) } else { (1.0, 0.0) };
        Self { a, b, tx: md[0] - (a * ms[0] - b * ms[1]), ty: md[1] - (b * ms[0] + a * ms[1]) }
    }

    fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [self.a * x - self.b * y + self.tx, self.b * x + self.a * y + self.ty]
    }

    /// `p -> (p - t) / c`; a degenerate `c` yields non-finite coordinates, which sample as black.
    fn inverse(&self) -> Self {
        let norm = self.a * self.a + self.b * self.b;
        let (a, b) = (self.a / norm, -self.b / norm);
        Self { a, b, tx: -(a * self.tx - b * self.ty), ty: -(b * self.tx + a * self.ty) }
    }
}

/// Bilinear sample with pixel centres at integer coordinates; outside pixels count as black.
fn sample(img: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    let (w, h) = (f64::from(img.width()), f64::from(img.height()));
    // Also rejects NaN, before any float-to-int cast.
    if !(x > -1.0 && y > -1.0 && x < w && y < h) {
        return Rgb([0, 0, 0]);
    }
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (x0, y0) = (x0 as i64, y0 as i64);
    let px = |xi: i64, yi: i64| -> [f64; 3] {
        match (u32::try_from(xi), u32::try_from(yi)) {
            (Ok(xi), Ok(yi)) if xi < img.width() && yi < img.height() => img.get_pixel(xi, yi).0.map(f64::from),
            _ => [0.0; 3],
        }
    };
    let (p00, p10, p01, p11) = (px(x0, y0), px(x0 + 1, y0), px(x0, y0 + 1), px(x0 + 1, y0 + 1));
    Rgb(std::array::from_fn(|c| {
        let top = p00[c] + (p10[c] - p00[c]) * fx;
        let bottom = p01[c] + (p11[c] - p01[c]) * fx;
        (top + (bottom - top) * fy).round().clamp(0.0, 255.0) as u8
    }))
}

/// Resizes the `size` ([w, h]) rectangle of `img` whose top-left pixel is `origin` ([x, y]) to
/// `out` ([w, h]) like OpenCV's INTER_AREA. The rectangle may extend past the image, whose outside
/// reads as black. Returns unrounded interleaved RGB rows.
pub(crate) fn resize_area(img: &RgbImage, origin: [i64; 2], size: [usize; 2], out: [usize; 2]) -> Vec<f32> {
    let ([x0, y0], [sw, sh], [dw, dh]) = (origin, size, out);
    if sw == 0 || sh == 0 {
        return vec![0.0; dw * dh * 3];
    }
    // OpenCV averages areas only when neither axis is enlarged; otherwise it interpolates.
    let area = sw >= dw && sh >= dh;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    // Column taps clipped to the image once, so the per-row loop reads plain slices.
    let col_taps = taps(sw, dw, area);
    let cols: Vec<(usize, &[f32])> = col_taps.iter().map(|t| t.clip(x0, iw)).collect();
    let raw = img.as_raw();
    // Horizontal pass, only over the source rows that lie inside the image.
    let lo = (-y0).clamp(0, sh as i64) as usize;
    let hi = (ih as i64 - y0).clamp(lo as i64, sh as i64) as usize;
    let mut tmp = vec![0f32; (hi - lo) * dw * 3];
    for (sy, out) in (lo..hi).zip(tmp.chunks_exact_mut(dw * 3)) {
        let row = &raw[(y0 + sy as i64) as usize * iw * 3..][..iw * 3];
        for (&(x, weights), o) in cols.iter().zip(out.chunks_exact_mut(3)) {
            for (&w, p) in weights.iter().zip(row[x * 3..].chunks_exact(3)) {
                o[0] += w * f32::from(p[0]);
                o[1] += w * f32::from(p[1]);
                o[2] += w * f32::from(p[2]);
            }
        }
    }
    let mut dst = vec![0f32; dw * dh * 3];
    for (t, out) in taps(sh, dh, area).iter().zip(dst.chunks_exact_mut(dw * 3)) {
        let (y, weights) = t.clip(-(lo as i64), hi - lo);
        for (&w, row) in weights.iter().zip(tmp[y * dw * 3..].chunks_exact(dw * 3)) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += w * v);
        }
    }
    dst
}

/// Weights of consecutive source pixels `first..first + weights.len()` for one output pixel.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    first: usize,
    weights: Vec<f32>,
}

impl Taps {
    /// The part that falls on `0..len` once the rectangle starts at `origin`, as (start, weights).
    fn clip(&self, origin: i64, len: usize) -> (usize, &[f32]) {
        let start = origin + self.first as i64;
        let skip = (-start).clamp(0, self.weights.len() as i64) as usize;
        let end = (start + self.weights.len() as i64).clamp(0, len as i64);
        let start = (start + skip as i64).clamp(0, end);
        (start as usize, &self.weights[skip..skip + (end - start) as usize])
    }
}

/// OpenCV's INTER_AREA source taps along one axis, per output index.
fn taps(src: usize, dst: usize, area: bool) -> Vec<Taps> {
    let inv_scale = dst as f64 / src as f64;
    let scale = 1.0 / inv_scale;
    (0..dst)
        .map(|d| {
            if area {
                // Exact overlap of the output cell [d*scale, (d+1)*scale) with each source pixel.
                let f1 = d as f64 * scale;
                let f2 = f1 + scale;
                let cell = scale.min(src as f64 - f1);
                let s2 = (f2.floor() as usize).min(src - 1);
                let s1 = (f1.ceil() as usize).min(s2);
                let head = s1 as f64 - f1 > 1e-3;
                let mut weights = Vec::with_capacity(s2 - s1 + 2);
                if head {
                    weights.push(((s1 as f64 - f1) / cell) as f32);
                }
                weights.extend((s1..s2).map(|_| (1.0 / cell) as f32));
                if f2 - s2 as f64 > 1e-3 {
                    weights.push(((f2 - s2 as f64).min(1.0).min(cell) / cell) as f32);
                }
                Taps { first: if head { s1 - 1 } else { s1 }, weights }
            } else {
                // OpenCV's enlarging variant of INTER_AREA: linear with cell-aligned fractions.
                let s = (d as f64 * scale).floor() as usize;
                let f = ((d + 1) as f64 - (s + 1) as f64 * inv_scale) as f32;
                let f = if f <= 0.0 { 0.0 } else { f - f.floor() };
                if s + 1 >= src {
                    Taps { first: src - 1, weights: vec![1.0] }
                } else {
                    Taps { first: s, weights: vec![1.0 - f, f] }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transform(t: &Similarity, pts: &[[f32; 2]; 5]) -> [[f32; 2]; 5] {
        pts.map(|[x, y]| t.apply([f64::from(x), f64::from(y)]).map(|v| v as f32))
    }

    #[test]
    fn fit_recovers_known_transform() {
        let (s, theta) = (1.7_f64, 0.35_f64);
        let truth = Similarity { a: s * theta.cos(), b: s * theta.sin(), tx: 12.5, ty: -40.0 };
        let moved = transform(&truth, &ARCFACE_112);
        let fit = Similarity::fit(&ARCFACE_112, &moved);
        for (got, want) in [(fit.a, truth.a), (fit.b, truth.b), (fit.tx, truth.tx), (fit.ty, truth.ty)] {
            assert!((got - want).abs() < 1e-3, "{fit:?} vs {truth:?}");
        }
        // Noise on the targets moves the least-squares fit only slightly.
        let mut noisy = moved;
        noisy[0][0] += 0.5;
        noisy[3][1] -= 0.5;
        let fit = Similarity::fit(&ARCFACE_112, &noisy);
        assert!((fit.a - truth.a).abs() < 0.02 && (fit.b - truth.b).abs() < 0.02);
    }

    #[test]
    fn inverse_round_trips() {
        let t = Similarity { a: 0.8, b: -0.3, tx: 5.0, ty: 7.0 };
        let [x, y] = t.inverse().apply(t.apply([13.0, -4.0]));
        assert!((x - 13.0).abs() < 1e-9 && (y + 4.0).abs() < 1e-9);
    }

    #[test]
    fn template_landmarks_give_identity_crop() {
        let img = RgbImage::from_fn(112, 112, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]));
        assert_eq!(align(&img, &ARCFACE_112), img);
    }

    #[test]
    fn scaled_face_is_shrunk_back() {
        // The image is the template scene at twice the size, shifted by (10, 20).
        let img = RgbImage::from_fn(300, 300, |x, y| Rgb([(x / 4) as u8, (y / 4) as u8, 0]));
        let marks = ARCFACE_112.map(|[x, y]| [2.0 * x + 10.0, 2.0 * y + 20.0]);
        let out = align(&img, &marks);
        // Crop pixel (u, v) samples image (2u + 10, 2v + 20).
        assert_eq!(out.get_pixel(50, 60).0, [((2 * 50 + 10) / 4) as u8, ((2 * 60 + 20) / 4) as u8, 0]);
    }

    #[test]
    fn degenerate_landmarks_do_not_panic() {
        let img = RgbImage::from_pixel(50, 50, Rgb([9, 9, 9]));
        let _ = align(&img, &[[25.0, 25.0]; 5]);
        let _ = align(&img, &[[f32::NAN, 0.0]; 5]);
    }

    #[test]
    fn area_taps_are_normalised() {
        for (src, dst) in [(250, 150), (250, 107), (37, 24), (13, 24), (100, 48), (48, 48)] {
            for t in taps(src, dst, src >= dst) {
                let sum: f32 = t.weights.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{src}->{dst}: {sum}");
                assert!(t.first + t.weights.len() <= src);
            }
        }
    }

    #[test]
    fn resize_reads_outside_as_black() {
        let img = RgbImage::from_pixel(10, 10, Rgb([200, 100, 50]));
        let inside = resize_area(&img, [0, 0], [10, 10], [4, 4]);
        assert!(inside.chunks(3).all(|p| { p.iter().zip([200.0, 100.0, 50.0]).all(|(a, b)| (a - b).abs() < 1e-3) }));
        // The left half of this rectangle, and all of the second, lie outside the image.
        assert_eq!(resize_area(&img, [-10, 0], [20, 10], [2, 1]), vec![0.0, 0.0, 0.0, 200.0, 100.0, 50.0]);
        assert_eq!(resize_area(&img, [-30, 40], [20, 10], [3, 3]), vec![0.0; 27]);
        assert_eq!(resize_area(&img, [0, 0], [0, 5], [2, 2]), vec![0.0; 12]);
    }
}
