//! ISO/IEC 19794-2:2005 finger minutiae records ("FMR\0", version " 20\0"):
//! a strict, panic-free parser and a validating writer.
//!
//! This is the template format most commercial fingerprint SDKs export. Only the
//! 2005 edition is handled (the 2011 edition, version "030\0", has a different
//! layout and is rejected with [`IsoError::UnsupportedVersion`]).
//!
//! # Layout
//!
//! All multi-byte integers are big-endian.
//!
//! | offset | size | field                                                                 |
//! |-------:|-----:|-----------------------------------------------------------------------|
//! | 0      | 4    | format identifier `"FMR\0"`                                           |
//! | 4      | 4    | version `" 20\0"`                                                     |
//! | 8      | 4    | record length in bytes, header included                               |
//! | 12     | 2    | capture equipment (4 bits certification flags + 12 bits device type) |
//! | 14     | 2    | image width (pixels)                                                  |
//! | 16     | 2    | image height (pixels)                                                 |
//! | 18     | 2    | horizontal resolution (pixels per centimetre; 197 ≈ 500 dpi)          |
//! | 20     | 2    | vertical resolution (pixels per centimetre)                           |
//! | 22     | 1    | number of finger views                                                |
//! | 23     | 1    | reserved (ignored when read, written as 0)                            |
//!
//! Then, for each finger view, a 4-byte view header — finger position (0..=10),
//! view number (high nibble) and impression type (low nibble: 0..=9, the
//! codes of ISO/IEC 19794-4 — live-scan or not, plain, rolled, latent, swipe;
//! 10-15 are refused as reserved), finger quality
//! (0..=100), number of minutiae — followed by 6 bytes per minutia:
//!
//! | size    | field                                                            |
//! |--------:|------------------------------------------------------------------|
//! | 2 bits  | type: `00` other, `01` ridge ending, `10` bifurcation, `11` invalid |
//! | 14 bits | x (pixels, origin at the upper-left corner of the image)          |
//! | 2 bits  | reserved (ignored when read, written as 0)                        |
//! | 14 bits | y (pixels, increasing downwards)                                  |
//! | 1 byte  | angle in units of 360/256 = 1.40625 degrees (see [`angle_radians`]) |
//! | 1 byte  | minutia quality 0..=100                                           |
//!
//! and finally a 2-byte extended data length plus that many bytes of extended
//! data (ridge counts, cores and deltas, vendor areas), kept as opaque bytes in
//! [`FingerView::extended`].
//!
//! # Strictness
//!
//! The parser accepts exactly one record: the record-length field must equal the
//! number of bytes supplied, and the finger views must consume them exactly.
//! Trailing zero padding is **not** tolerated. All 320 FVC2002 `DB*_B/*.iso`
//! templates (written by SecuGen's extractor via openafis) declare their exact
//! file length and have no padding, so there is no real-world evidence that
//! padding needs tolerating, while accepting it would hide framing bugs (a
//! wrong minutiae count can look like padding). A caller holding a padded
//! buffer can read the length at bytes 8..12 and slice before parsing.
//!
//! Reserved bits and bytes are ignored rather than rejected (as the standard asks
//! of receivers) and written as zero, so a record with non-zero reserved bits
//! parses but does not re-encode byte-identically. Minutiae outside the declared
//! image, qualities above 100, finger positions above 10 and the invalid type
//! code `11` are rejected with [`IsoError::ValueOutOfRange`].
//!
//! Observed in the FVC2002 templates: one view per record, finger position 0
//! (unknown), view 0, impression type 0 (live-scan plain), finger and minutia
//! quality always 0, capture equipment 0, no extended data, 13..=69 minutiae
//! (mean ≈ 32), resolution 197×197 px/cm, and a declared image size of 300×400
//! for every database even though the TIFFs are 388×374, 296×560, 300×300 and
//! 288×384 — the extractor works in its own 300×400 frame, so those minutia
//! coordinates are not TIFF pixel coordinates.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::f32::consts::TAU;

/// Format identifier at the start of every record.
pub const MAGIC: [u8; 4] = *b"FMR\0";
/// Version field of the 2005 edition.
pub const VERSION_2005: [u8; 4] = *b" 20\0";
/// Size of the record header in bytes.
pub const HEADER_LEN: usize = 24;
/// Size of a finger view header in bytes.
pub const VIEW_HEADER_LEN: usize = 4;
/// Size of one encoded minutia in bytes.
pub const MINUTIA_LEN: usize = 6;
/// Largest finger position code (10 = left little finger; 0 = unknown).
pub const MAX_FINGER_POSITION: u8 = 10;
/// Largest finger or minutia quality value.
pub const MAX_QUALITY: u8 = 100;
/// Largest minutia coordinate representable in the 14-bit x and y fields.
pub const MAX_COORDINATE: u16 = 0x3FFF;
/// One angle unit (360/256 = 1.40625 degrees) in radians.
pub const ANGLE_UNIT_RADIANS: f32 = TAU / 256.0;

/// Largest view number (stored in a nibble).
const MAX_NIBBLE: u8 = 0x0F;
/// Largest impression type with a meaning (the nibble's 10-15 are reserved).
const MAX_IMPRESSION_TYPE: u8 = 9;
/// Mask for the 14-bit coordinate part of a minutia word.
const COORD_MASK: u16 = 0x3FFF;

/// A parsed ISO/IEC 19794-2:2005 finger minutiae record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoRecord {
    /// Width of the image the minutiae were extracted from, in pixels (at least 1).
    pub width: u16,
    /// Height of the image the minutiae were extracted from, in pixels (at least 1).
    pub height: u16,
    /// Horizontal resolution in pixels per centimetre (197 ≈ 500 dpi).
    pub resolution_x: u16,
    /// Vertical resolution in pixels per centimetre (197 ≈ 500 dpi).
    pub resolution_y: u16,
    /// Capture equipment: top 4 bits certification flags, low 12 bits device type id.
    pub capture_equipment: u16,
    /// The finger views, at least one and at most 255.
    pub views: Vec<FingerView>,
}

/// One finger view (one impression of one finger) inside a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerView {
    /// Finger position: 0 unknown, 1..=5 right thumb..little, 6..=10 left thumb..little.
    pub position: u8,
    /// View number distinguishing several views of the same finger (0..=15).
    pub view_number: u8,
    /// Impression type (0..=15; 0/1 live-scan plain/rolled, 2/3 non-live plain/rolled, 8 swipe).
    pub impression_type: u8,
    /// Finger quality 0..=100.
    pub quality: u8,
    /// The minutiae, at most 255.
    pub minutiae: Vec<IsoMinutia>,
    /// Extended data block (ridge counts, cores/deltas, vendor data) as opaque bytes, at most 65535.
    pub extended: Vec<u8>,
}

/// One minutia of a finger view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IsoMinutia {
    /// Ridge ending, bifurcation or other.
    pub kind: MinutiaKind,
    /// Column in pixels from the left edge; less than the image width and at most 16383.
    pub x: u16,
    /// Row in pixels from the top edge; less than the image height and at most 16383.
    pub y: u16,
    /// Direction in units of 1.40625 degrees, counter-clockwise from the +x axis (see [`angle_radians`]).
    pub angle: u8,
    /// Minutia quality 0..=100.
    pub quality: u8,
}

/// The type of a minutia (the top two bits of its x word).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MinutiaKind {
    /// Type code `00`: neither a ridge ending nor a bifurcation.
    Other,
    /// Type code `01`: a ridge ending.
    RidgeEnding,
    /// Type code `10`: a ridge bifurcation.
    Bifurcation,
}

impl MinutiaKind {
    /// The 2-bit type code.
    fn code(self) -> u16 {
        match self {
            Self::Other => 0,
            Self::RidgeEnding => 1,
            Self::Bifurcation => 2,
        }
    }

    /// The kind for a 2-bit type code; `None` for the invalid code 3.
    fn from_code(code: u16) -> Option<Self> {
        match code {
            0 => Some(Self::Other),
            1 => Some(Self::RidgeEnding),
            2 => Some(Self::Bifurcation),
            _ => None,
        }
    }
}

/// Why bytes could not be parsed as, or a record could not be written as, an ISO/IEC 19794-2:2005 record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsoError {
    /// Fewer bytes than the 24-byte record header.
    #[error("record is only {len} bytes; an ISO/IEC 19794-2 finger minutiae record has a 24-byte header")]
    TooShort {
        /// Number of bytes supplied.
        len: usize,
    },
    /// The first four bytes are not `FMR\0`.
    #[error("not an ISO/IEC 19794-2 finger minutiae record: format identifier is \"{}\", expected \"FMR\\0\"", .found.escape_ascii())]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The version field is not `" 20\0"`.
    #[error("unsupported record version \"{}\": only the 2005 edition (\" 20\\0\") is supported", .found.escape_ascii())]
    UnsupportedVersion {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The record-length field disagrees with the number of bytes supplied.
    #[error(
        "record length field says {declared} bytes but {actual} bytes were supplied; pass exactly one record, without padding"
    )]
    LengthMismatch {
        /// Length stored in the record header.
        declared: u32,
        /// Number of bytes supplied.
        actual: usize,
    },
    /// The record has no finger views.
    #[error("record has no finger views; at least one is required")]
    NoViews,
    /// A field holds a value outside its allowed range.
    #[error("{field} is {value}, outside the allowed range {min}..={max}")]
    ValueOutOfRange {
        /// Which field (e.g. "minutia x", "finger quality").
        field: &'static str,
        /// The offending value.
        value: u32,
        /// Smallest allowed value.
        min: u32,
        /// Largest allowed value.
        max: u32,
    },
    /// The data ends in the middle of a structure (a count promises more bytes than remain).
    #[error("record truncated in {what} at byte {offset}: {needed} bytes needed, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Byte offset where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes that remain.
        available: usize,
    },
    /// Bytes remain after the last finger view although the record length covers them.
    #[error(
        "{count} unexpected bytes after the last finger view at byte {offset}; the view count or a minutiae count is wrong"
    )]
    TrailingBytes {
        /// Byte offset where the unexpected bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// Converts an ISO angle to radians in `[0, 2π)`.
///
/// ISO/IEC 19794-2:2005 measures a minutia direction counter-clockwise from
/// the horizontal axis pointing right (+x), in units of 360/256 = 1.40625
/// degrees. Because the image origin is the upper-left corner and y grows
/// downwards, "counter-clockwise" is as the image is viewed: direction θ is
/// the pixel-space vector `(cos θ, -sin θ)`, so 64 (90°) points up the image.
pub fn angle_radians(a: u8) -> f32 {
    f32::from(a) * ANGLE_UNIT_RADIANS
}

/// Converts radians (any value, same convention as [`angle_radians`]) to the nearest ISO angle unit.
///
/// The input is wrapped into `[0, 2π)` first, so `-π/2` gives 192 and values
/// that round up to a full turn give 0. NaN and infinities give 0.
pub fn angle_from_radians(radians: f32) -> u8 {
    if !radians.is_finite() {
        return 0;
    }
    let units = (radians.rem_euclid(TAU) / ANGLE_UNIT_RADIANS).round();
    // `units` is in 0.0..=256.0 here; 256 is a full turn, i.e. 0.
    if (0.0..256.0).contains(&units) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked just above
        let unit = units as u8;
        unit
    } else {
        0
    }
}

/// Parses exactly one ISO/IEC 19794-2:2005 finger minutiae record.
///
/// `bytes` must be the whole record and nothing else. Never panics.
pub fn parse(bytes: &[u8]) -> Result<IsoRecord, IsoError> {
    // Identify the format from whatever prefix is there, so that a short
    // non-ISO input is reported as such rather than as merely short.
    if let Some(found) = bytes.first_chunk::<4>()
        && *found != MAGIC
    {
        return Err(IsoError::BadMagic { found: *found });
    }
    if let Some(found) = bytes.get(4..).and_then(<[u8]>::first_chunk::<4>)
        && *found != VERSION_2005
    {
        return Err(IsoError::UnsupportedVersion { found: *found });
    }
    if bytes.len() < HEADER_LEN {
        return Err(IsoError::TooShort { len: bytes.len() });
    }

    let mut r = Reader { bytes, pos: 8 };
    let declared = u32::from_be_bytes(r.array("record length")?);
    if usize::try_from(declared).ok() != Some(bytes.len()) {
        return Err(IsoError::LengthMismatch { declared, actual: bytes.len() });
    }
    let capture_equipment = r.u16("capture equipment")?;
    let width = r.u16("image width")?;
    let height = r.u16("image height")?;
    let resolution_x = r.u16("horizontal resolution")?;
    let resolution_y = r.u16("vertical resolution")?;
    let view_count = r.u8("finger view count")?;
    let _reserved = r.u8("reserved header byte")?;

    check_range("image width", width, 1, u16::MAX)?;
    check_range("image height", height, 1, u16::MAX)?;
    if view_count == 0 {
        return Err(IsoError::NoViews);
    }

    let mut views = Vec::with_capacity(usize::from(view_count));
    for _ in 0..view_count {
        views.push(parse_view(&mut r, width, height)?);
    }
    let trailing = r.remaining();
    if trailing != 0 {
        return Err(IsoError::TrailingBytes { offset: r.pos, count: trailing });
    }
    Ok(IsoRecord { width, height, resolution_x, resolution_y, capture_equipment, views })
}

/// Encodes a record, validating every field so that the output always parses back to an equal record.
pub fn write(record: &IsoRecord) -> Result<Vec<u8>, IsoError> {
    check_range("image width", record.width, 1, u16::MAX)?;
    check_range("image height", record.height, 1, u16::MAX)?;
    if record.views.is_empty() {
        return Err(IsoError::NoViews);
    }
    let view_count = count_u8("finger view count", record.views.len())?;

    let mut out = Vec::with_capacity(encoded_len_hint(record));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION_2005);
    out.extend_from_slice(&[0; 4]); // record length, patched below
    out.extend_from_slice(&record.capture_equipment.to_be_bytes());
    out.extend_from_slice(&record.width.to_be_bytes());
    out.extend_from_slice(&record.height.to_be_bytes());
    out.extend_from_slice(&record.resolution_x.to_be_bytes());
    out.extend_from_slice(&record.resolution_y.to_be_bytes());
    out.push(view_count);
    out.push(0); // reserved

    for view in &record.views {
        write_view(&mut out, view, record.width, record.height)?;
    }

    let len = u32::try_from(out.len()).map_err(|_| IsoError::ValueOutOfRange {
        field: "record length",
        value: u32::MAX,
        min: 0,
        max: u32::MAX,
    })?;
    if let Some(slot) = out.get_mut(8..12) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
    Ok(out)
}

/// Parses one finger view at the reader's position.
fn parse_view(r: &mut Reader<'_>, width: u16, height: u16) -> Result<FingerView, IsoError> {
    let position = r.u8("finger position")?;
    check_range("finger position", position, 0, MAX_FINGER_POSITION)?;
    let packed = r.u8("view number and impression type")?;
    check_range("impression type", packed & MAX_NIBBLE, 0, MAX_IMPRESSION_TYPE)?;
    let quality = r.u8("finger quality")?;
    check_range("finger quality", quality, 0, MAX_QUALITY)?;
    let count = r.u8("minutiae count")?;

    let block_len = usize::from(count).saturating_mul(MINUTIA_LEN);
    let block = r.take(block_len, "minutiae")?;
    let (chunks, _) = block.as_chunks::<MINUTIA_LEN>();
    let mut minutiae = Vec::with_capacity(chunks.len());
    for &[x_hi, x_lo, y_hi, y_lo, angle, quality] in chunks {
        let x_word = u16::from_be_bytes([x_hi, x_lo]);
        let y_word = u16::from_be_bytes([y_hi, y_lo]);
        let code = x_word >> 14;
        let kind = MinutiaKind::from_code(code).ok_or(IsoError::ValueOutOfRange {
            field: "minutia type",
            value: u32::from(code),
            min: 0,
            max: 2,
        })?;
        let x = x_word & COORD_MASK;
        let y = y_word & COORD_MASK; // the top two bits are reserved
        check_range("minutia x", x, 0, coordinate_max(width))?;
        check_range("minutia y", y, 0, coordinate_max(height))?;
        check_range("minutia quality", quality, 0, MAX_QUALITY)?;
        minutiae.push(IsoMinutia { kind, x, y, angle, quality });
    }

    let extended_len = r.u16("extended data length")?;
    let extended = r.take(usize::from(extended_len), "extended data")?.to_vec();
    Ok(FingerView {
        position,
        view_number: packed >> 4,
        impression_type: packed & MAX_NIBBLE,
        quality,
        minutiae,
        extended,
    })
}

/// Appends one validated finger view.
fn write_view(out: &mut Vec<u8>, view: &FingerView, width: u16, height: u16) -> Result<(), IsoError> {
    check_range("finger position", view.position, 0, MAX_FINGER_POSITION)?;
    check_range("view number", view.view_number, 0, MAX_NIBBLE)?;
    check_range("impression type", view.impression_type, 0, MAX_IMPRESSION_TYPE)?;
    check_range("finger quality", view.quality, 0, MAX_QUALITY)?;
    let count = count_u8("minutiae count", view.minutiae.len())?;
    let extended_len = u16::try_from(view.extended.len()).map_err(|_| IsoError::ValueOutOfRange {
        field: "extended data length",
        value: u32::try_from(view.extended.len()).unwrap_or(u32::MAX),
        min: 0,
        max: u32::from(u16::MAX),
    })?;

    out.push(view.position);
    out.push((view.view_number << 4) | view.impression_type);
    out.push(view.quality);
    out.push(count);
    for m in &view.minutiae {
        check_range("minutia x", m.x, 0, coordinate_max(width))?;
        check_range("minutia y", m.y, 0, coordinate_max(height))?;
        check_range("minutia quality", m.quality, 0, MAX_QUALITY)?;
        out.extend_from_slice(&((m.kind.code() << 14) | m.x).to_be_bytes());
        out.extend_from_slice(&m.y.to_be_bytes());
        out.push(m.angle);
        out.push(m.quality);
    }
    out.extend_from_slice(&extended_len.to_be_bytes());
    out.extend_from_slice(&view.extended);
    Ok(())
}

/// Largest valid coordinate for an image dimension: inside the image and within 14 bits.
fn coordinate_max(dimension: u16) -> u16 {
    dimension.saturating_sub(1).min(MAX_COORDINATE)
}

/// Fails with [`IsoError::ValueOutOfRange`] unless `min <= value <= max`.
fn check_range<T: Into<u32> + Copy>(field: &'static str, value: T, min: T, max: T) -> Result<(), IsoError> {
    let (value, min, max) = (value.into(), min.into(), max.into());
    if (min..=max).contains(&value) { Ok(()) } else { Err(IsoError::ValueOutOfRange { field, value, min, max }) }
}

/// Converts a collection length to the u8 count field, failing if above 255.
fn count_u8(field: &'static str, len: usize) -> Result<u8, IsoError> {
    u8::try_from(len).map_err(|_| IsoError::ValueOutOfRange {
        field,
        value: u32::try_from(len).unwrap_or(u32::MAX),
        min: 0,
        max: u32::from(u8::MAX),
    })
}

/// Encoded size of a record, for preallocation only (saturating, never exact-checked).
fn encoded_len_hint(record: &IsoRecord) -> usize {
    record.views.iter().fold(HEADER_LEN, |acc, v| {
        let minutiae = v.minutiae.len().saturating_mul(MINUTIA_LEN);
        acc.saturating_add(VIEW_HEADER_LEN).saturating_add(minutiae).saturating_add(2).saturating_add(v.extended.len())
    })
}

/// A bounds-checked big-endian cursor over the input.
struct Reader<'a> {
    /// The whole record.
    bytes: &'a [u8],
    /// Offset of the next unread byte.
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Bytes not yet read.
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The truncation error for a read of `needed` bytes at the current position.
    fn truncated(&self, what: &'static str, needed: usize) -> IsoError {
        IsoError::Truncated { what, offset: self.pos, needed, available: self.remaining() }
    }

    /// Reads the next `n` bytes.
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IsoError> {
        let slice = self.pos.checked_add(n).and_then(|end| Some((end, self.bytes.get(self.pos..end)?)));
        let Some((end, slice)) = slice else {
            return Err(self.truncated(what, n));
        };
        self.pos = end;
        Ok(slice)
    }

    /// Reads the next `N` bytes as an array.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], IsoError> {
        let bytes: &'a [u8] = self.bytes;
        match bytes.get(self.pos..).and_then(<[u8]>::first_chunk::<N>) {
            Some(chunk) => {
                self.pos = self.pos.saturating_add(N);
                Ok(*chunk)
            }
            None => Err(self.truncated(what, N)),
        }
    }

    /// Reads one byte.
    fn u8(&mut self, what: &'static str) -> Result<u8, IsoError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    /// Reads a big-endian u16.
    fn u16(&mut self, what: &'static str) -> Result<u16, IsoError> {
        self.array::<2>(what).map(u16::from_be_bytes)
    }
}

#[cfg(test)]
#[allow(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests;
