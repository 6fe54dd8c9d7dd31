//! The fingerprint side of cotejo: minutiae templates and the interchange
//! formats they arrive in (ISO/IEC 19794-2:2005 finger minutiae records).

pub mod iso19794_2;
pub mod mcc;
pub mod minutiae;
