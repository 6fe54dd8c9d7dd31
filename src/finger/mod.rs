//! The fingerprint side of cotejo: minutiae extraction (LEADER), templates
//! in the ISO/IEC 19794-2:2005 interchange format, MCC matching and the
//! in-memory finger gallery.

pub mod aspect;
pub mod gallery;
pub mod iso19794_2;
pub mod mcc;
pub mod minutiae;
pub mod pipeline;
pub mod rerank;
pub mod ridges;
pub mod shortlist;
pub mod template;

pub use pipeline::{FingerError, FingerExtraction, FingerPipeline, FingerSettings};

/// Reads exactly `N` bytes (the snapshots' byte forms).
pub(crate) fn read_array<const N: usize>(input: &mut impl std::io::Read) -> std::io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

/// Reads a little-endian u64.
pub(crate) fn read_u64(input: &mut impl std::io::Read) -> std::io::Result<u64> {
    read_array(input).map(u64::from_le_bytes)
}
