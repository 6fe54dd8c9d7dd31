//! The fingerprint side of cotejo: minutiae extraction (LEADER), templates
//! in the ISO/IEC 19794-2:2005 interchange format, MCC matching and the
//! in-memory finger gallery.

pub mod aspect;
pub mod gallery;
pub mod iso19794_2;
pub mod mcc;
pub mod minutiae;
pub mod pipeline;
pub mod ridges;
pub mod shortlist;
pub mod template;

pub use pipeline::{FingerError, FingerExtraction, FingerPipeline, FingerSettings};
