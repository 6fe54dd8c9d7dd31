//! Image decoding with limits checked before any pixel is decoded, so a
//! small file claiming huge dimensions cannot exhaust memory.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, RgbImage};

use super::FaceError;

/// Size limits for one image.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest encoded size in bytes.
    pub max_bytes: usize,
    /// Largest width * height.
    pub max_pixels: u64,
}

/// Decodes JPEG, PNG, TIFF, BMP or PNM bytes, grayscale or colour, into RGB.
pub fn decode_rgb(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, FaceError> {
    if bytes.is_empty() {
        return Err(FaceError::EmptyImage);
    }
    if bytes.len() > limits.max_bytes {
        return Err(FaceError::ImageTooLarge(format!("{} bytes, limit {}", bytes.len(), limits.max_bytes)));
    }
    let format = image::guess_format(bytes).map_err(|_| FaceError::UnsupportedFormat)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Tiff | ImageFormat::Bmp | ImageFormat::Pnm)
    {
        return Err(FaceError::UnsupportedFormat);
    }
    if format == ImageFormat::Jpeg && !jpeg_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey and succeeds;
        // a half-grey face must not become a template.
        return Err(FaceError::Corrupt("the JPEG is truncated (no end-of-image marker)".into()));
    }
    let reader = ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader.into_dimensions().map_err(|e| FaceError::Corrupt(e.to_string()))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(FaceError::ImageTooLarge(format!("{w}x{h} pixels, limit {}", limits.max_pixels)));
    }
    if w == 0 || h == 0 {
        return Err(FaceError::Corrupt("zero-sized image".into()));
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(w);
    image_limits.max_image_height = Some(h);
    image_limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    reader.limits(image_limits);
    let img = reader.decode().map_err(|e| FaceError::Corrupt(e.to_string()))?;
    Ok(img.into_rgb8())
}

/// True when the JPEG ends with its EOI marker (after any zero or
/// whitespace padding that some writers append).
fn jpeg_complete(bytes: &[u8]) -> bool {
    let end = bytes.iter().rposition(|b| !matches!(b, 0 | b'\n' | b'\r' | b' ')).map_or(0, |i| i + 1);
    bytes[..end].ends_with(&[0xFF, 0xD9])
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ImageLimits = ImageLimits { max_bytes: 1 << 20, max_pixels: 1 << 20 };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::GrayImage::new(w, h).write_to(&mut Cursor::new(&mut out), ImageFormat::Png).expect("encode");
        out
    }

    #[test]
    fn decodes_gray_png_as_rgb() {
        let img = decode_rgb(&png(10, 7), LIMITS).expect("decode");
        assert_eq!((img.width(), img.height()), (10, 7));
    }

    #[test]
    fn typed_errors() {
        assert!(matches!(decode_rgb(&[], LIMITS), Err(FaceError::EmptyImage)));
        assert!(matches!(decode_rgb(b"hello, I am text", LIMITS), Err(FaceError::UnsupportedFormat)));
        let p = png(10, 7);
        assert!(matches!(decode_rgb(&p[..p.len() / 2], LIMITS), Err(FaceError::Corrupt(_))));
        let small = ImageLimits { max_bytes: 1 << 20, max_pixels: 50 };
        assert!(matches!(decode_rgb(&p, small), Err(FaceError::ImageTooLarge(_))));
        let mut jpeg = Vec::new();
        image::RgbImage::new(64, 64).write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).expect("encode");
        assert!(decode_rgb(&jpeg, LIMITS).is_ok());
        assert!(matches!(decode_rgb(&jpeg[..jpeg.len() - 40], LIMITS), Err(FaceError::Corrupt(_))));
        let tiny = ImageLimits { max_bytes: 10, max_pixels: 1 << 20 };
        assert!(matches!(decode_rgb(&p, tiny), Err(FaceError::ImageTooLarge(_))));
    }
}
