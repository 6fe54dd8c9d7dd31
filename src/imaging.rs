//! Image decoding shared by the face and finger pipelines, with limits
//! checked before any pixel is decoded, so a small file claiming huge
//! dimensions cannot exhaust memory.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage, metadata::Orientation};

/// Why bytes are not a usable image.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// Zero bytes.
    #[error("the image is empty")]
    Empty,
    /// Not one of the supported encodings.
    #[error("unsupported image format (JPEG, PNG, TIFF, BMP, PGM/PPM are accepted)")]
    UnsupportedFormat,
    /// A WSQ fingerprint image (FBI Wavelet Scalar Quantization), which is
    /// not decoded: no maintained Rust crate decodes it.
    #[error(
        "WSQ images are not supported: send PNG, TIFF, BMP or JPEG (or, for a finger, an ISO/IEC 19794-2 template)"
    )]
    Wsq,
    /// Truncated or corrupt data.
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
    /// Over a configured limit.
    #[error("the image is too large: {0}")]
    TooLarge(String),
}

/// Size limits for one image.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest encoded size in bytes.
    pub max_bytes: usize,
    /// Largest width * height.
    pub max_pixels: u64,
}

/// Decodes JPEG, PNG, TIFF, BMP or PNM bytes, grayscale or colour, into RGB
/// (transparent pixels over white).
pub fn decode_rgb(bytes: &[u8], limits: ImageLimits) -> Result<RgbImage, ImageError> {
    let img = decode(bytes, limits)?;
    Ok(if img.color().has_alpha() { over_white(&img.into_rgba8()) } else { img.into_rgb8() })
}

/// Decodes JPEG, PNG, TIFF, BMP or PNM bytes as they are, upright (EXIF
/// orientation applied).
pub fn decode(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge(format!("{} bytes, limit {}", bytes.len(), limits.max_bytes)));
    }
    if is_wsq(bytes) {
        return Err(ImageError::Wsq);
    }
    let format = image::guess_format(bytes).map_err(|_| ImageError::UnsupportedFormat)?;
    if !matches!(format, ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::Tiff | ImageFormat::Bmp | ImageFormat::Pnm)
    {
        return Err(ImageError::UnsupportedFormat);
    }
    if format == ImageFormat::Jpeg && !jpeg_complete(bytes) {
        // The JPEG decoder fills a truncated scan with grey and succeeds;
        // a half-grey face must not become a template.
        return Err(ImageError::Corrupt("the JPEG is truncated (no end-of-image marker)".into()));
    }
    let corrupt = |e: image::ImageError| ImageError::Corrupt(describe(&e));
    // One decoder: its header gives the size, checked before any pixel is decoded.
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format).into_decoder().map_err(corrupt)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge(format!("{w}x{h} pixels, limit {}", limits.max_pixels)));
    }
    if w == 0 || h == 0 {
        return Err(ImageError::Corrupt("zero-sized image".into()));
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(w);
    image_limits.max_image_height = Some(h);
    image_limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    decoder.set_limits(image_limits).map_err(corrupt)?;
    // Phone cameras store the sensor's orientation and an EXIF rotation;
    // MTCNN only finds upright faces.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Composites a transparent image over white (dropping alpha would expose
/// whatever colour the transparent pixels happen to store).
pub fn over_white(img: &image::RgbaImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let [r, g, b, a] = img.get_pixel(x, y).0;
        let blend = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

/// [`over_white`] for grey images with alpha.
pub fn over_white_gray(img: &image::GrayAlphaImage) -> image::GrayImage {
    image::GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let [v, a] = img.get_pixel(x, y).0;
        image::Luma([((u16::from(v) * u16::from(a) + 255 * (255 - u16::from(a))) / 255) as u8])
    })
}

/// True when the JPEG's segments and scans run up to an end-of-image
/// marker. Walks the marker structure (segments by their lengths, scans up
/// to the next marker), so an EXIF thumbnail's own EOI does not count and
/// data appended after the EOI (motion photos) is allowed.
fn jpeg_complete(b: &[u8]) -> bool {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let segment_len = |i: usize| -> Option<usize> {
        let hi = *b.get(i)?;
        let lo = *b.get(i + 1)?;
        Some(usize::from(u16::from_be_bytes([hi, lo])))
    };
    let mut i = 2;
    loop {
        while b.get(i).is_some_and(|&x| x != 0xFF) {
            i += 1;
        }
        while b.get(i) == Some(&0xFF) {
            i += 1; // fill bytes
        }
        let Some(&marker) = b.get(i) else { return false };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => {}
            0xDA => {
                let Some(len) = segment_len(i) else { return false };
                i += len;
                // Entropy-coded data: 0xFF is stuffed as FF 00; RSTn may occur.
                loop {
                    let (Some(&x), Some(&y)) = (b.get(i), b.get(i + 1)) else { return false };
                    if x == 0xFF && y != 0x00 && !(0xD0..=0xD7).contains(&y) {
                        break;
                    }
                    i += 1;
                }
            }
            _ => {
                let Some(len) = segment_len(i) else { return false };
                i += len;
            }
        }
    }
}

/// A decoder's error in words for the caller: data that ends early is said
/// to be truncated. The decoders' own text for it is the standard library's
/// "failed to fill whole buffer" (the TIFF decoder's error does not expose
/// the `io::Error` underneath, hence the text too).
fn describe(e: &image::ImageError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut eof = e.to_string().contains("failed to fill whole buffer");
    while let Some(s) = source {
        eof |= s.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof);
        source = s.source();
    }
    if eof { "the data ends before the image does (truncated file?)".to_owned() } else { e.to_string() }
}

/// Whether `bytes` start as a WSQ file does: its start-of-image marker
/// (`FF A0`) followed by another WSQ marker (`FF A2`-`FF A8`: frame, block,
/// tables or comment headers).
fn is_wsq(bytes: &[u8]) -> bool {
    matches!(bytes, [0xFF, 0xA0, 0xFF, 0xA2..=0xA8, ..])
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
        assert!(matches!(decode_rgb(&[], LIMITS), Err(ImageError::Empty)));
        assert!(matches!(decode_rgb(b"hello, I am text", LIMITS), Err(ImageError::UnsupportedFormat)));
        // A WSQ header (start of image, then a comment) is named as such.
        let wsq = [0xFF, 0xA0, 0xFF, 0xA8, 0x00, 0x05, b'N', b'I', b'S', b'T'];
        assert!(matches!(decode_rgb(&wsq, LIMITS), Err(ImageError::Wsq)));
        assert!(matches!(decode_rgb(&[0xFF, 0xA0, 0x00, 0x00], LIMITS), Err(ImageError::UnsupportedFormat)));
        let p = png(10, 7);
        assert!(matches!(decode_rgb(&p[..p.len() / 2], LIMITS), Err(ImageError::Corrupt(_))));
        let small = ImageLimits { max_bytes: 1 << 20, max_pixels: 50 };
        assert!(matches!(decode_rgb(&p, small), Err(ImageError::TooLarge(_))));
        let mut jpeg = Vec::new();
        image::RgbImage::new(64, 64).write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg).expect("encode");
        assert!(decode_rgb(&jpeg, LIMITS).is_ok());
        assert!(matches!(decode_rgb(&jpeg[..jpeg.len() - 40], LIMITS), Err(ImageError::Corrupt(_))));
        let mut trailer = jpeg.clone();
        trailer.extend_from_slice(b"ftypmp42 appended video");
        assert!(decode_rgb(&trailer, LIMITS).is_ok(), "data after the EOI is allowed");
        let tiny = ImageLimits { max_bytes: 10, max_pixels: 1 << 20 };
        assert!(matches!(decode_rgb(&p, tiny), Err(ImageError::TooLarge(_))));
    }
}
