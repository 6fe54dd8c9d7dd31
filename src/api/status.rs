//! The one mapping from engine errors to gRPC statuses. Every variant picks
//! its code on purpose and carries a google.rpc.ErrorInfo reason; field
//! problems also carry a BadRequest violation naming the field.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    engine::EngineError,
    face::FaceError,
    finger::{FingerError, template::TemplateError},
    imaging::ImageError,
};

use super::DOMAIN;

impl From<EngineError> for Status {
    fn from(e: EngineError) -> Self {
        let (code, reason, field) = classify(&e);
        let message = if code == Code::Internal {
            // Store and index errors can name paths; the caller gets the
            // reason, the log gets the detail.
            tracing::error!(error = %e, "internal error");
            "internal error; the server log has the details".to_owned()
        } else {
            e.to_string()
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, DOMAIN, HashMap::new());
        if let Some(f) = field {
            details.add_bad_request_violation(f, message.clone());
        }
        if let Some(after) = retry_after(reason) {
            details.set_retry_info(Some(after));
        }
        Status::with_error_details(code, message, details)
    }
}

/// Gives a request refused for its size before any service saw it (tonic's
/// decoder answers `OUT_OF_RANGE` "decoded message length too large" with no
/// details) the typed form every other error has: `ErrorInfo` reason
/// `MESSAGE_TOO_LARGE` with the limit (`server.max_message_bytes` for the
/// Biometrics and Jobs services), so that a caller can tell it from a
/// transport failure. Other responses pass unchanged.
pub fn type_oversized_request<B: Default>(response: http::Response<B>, limit: usize) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else { return response };
    if status.code() != Code::OutOfRange
        || !status.details().is_empty()
        || !status.message().contains("decoded message length too large")
    {
        return response;
    }
    // Biometrics and Jobs decode up to `limit`; health and reflection keep
    // tonic's default, so the limit reported is the decoder's own when it says one.
    let said = status.message();
    let limit = said
        .split("the limit is: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(limit);
    let message = format!("the request is too large for this server ({limit} bytes at most per message; {said})");
    let mut details = ErrorDetails::new();
    details.set_error_info("MESSAGE_TOO_LARGE", DOMAIN, HashMap::from([("limit_bytes".to_owned(), limit.to_string())]));
    Status::with_error_details(Code::OutOfRange, message, details).into_http()
}

/// When a caller may try again, for the refusals that pass: a full queue
/// drains in a fraction of a second, a start-up takes seconds.
fn retry_after(reason: &str) -> Option<std::time::Duration> {
    match reason {
        "OVERLOADED" => Some(std::time::Duration::from_millis(200)),
        "NOT_READY" => Some(std::time::Duration::from_secs(2)),
        "STORAGE_FULL" => Some(std::time::Duration::from_secs(30)),
        _ => None,
    }
}

fn classify(e: &EngineError) -> (Code, &'static str, Option<String>) {
    use Code::{
        AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound, ResourceExhausted, Unavailable,
    };
    match e {
        EngineError::InvalidArgument { code, field, .. } => (InvalidArgument, *code, Some(field.clone())),
        EngineError::Face { field, source } => {
            let (code, reason) = match source {
                FaceError::Image(i) => (InvalidArgument, image_reason(i)),
                FaceError::NoFace => (InvalidArgument, "NO_FACE_FOUND"),
                FaceError::MultipleFaces(_) => (InvalidArgument, "MULTIPLE_FACES"),
                FaceError::Inference(_) => (Internal, "INFERENCE_FAILED"),
                FaceError::Overloaded(_) => (ResourceExhausted, "OVERLOADED"),
                FaceError::Unavailable(_) => (Unavailable, "WORKERS_UNAVAILABLE"),
            };
            (code, reason, Some(field.clone()))
        }
        EngineError::Finger { field, source } => {
            let (code, reason) = match source {
                FingerError::Image(i) => (InvalidArgument, image_reason(i)),
                FingerError::NotGrayscale => (InvalidArgument, "NOT_GRAYSCALE"),
                FingerError::Resolution(_) => (InvalidArgument, "BAD_RESOLUTION"),
                FingerError::NoFingerprint(_) => (InvalidArgument, "NO_FINGERPRINT_FOUND"),
                FingerError::TooFewMinutiae { .. } => (InvalidArgument, "TOO_FEW_MINUTIAE"),
                FingerError::Template(t) => (InvalidArgument, template_reason(t)),
                FingerError::Inference(_) => (Internal, "INFERENCE_FAILED"),
                FingerError::Overloaded(_) => (ResourceExhausted, "OVERLOADED"),
                FingerError::Unavailable(_) => (Unavailable, "WORKERS_UNAVAILABLE"),
            };
            (code, reason, Some(field.clone()))
        }
        EngineError::FingerprintsNotEnabled { field } => {
            (FailedPrecondition, "FINGERPRINTS_NOT_ENABLED", Some(field.clone()))
        }
        EngineError::UnknownModel { field, .. } => (InvalidArgument, "UNKNOWN_MODEL", Some(field.clone())),
        EngineError::Dimension { field, .. } => (InvalidArgument, "WRONG_DIMENSION", Some(field.clone())),
        EngineError::NotSupported { field, .. } => (FailedPrecondition, "NOT_SUPPORTED", Some(field.clone())),
        EngineError::ReadOnly { .. } => (FailedPrecondition, "READ_ONLY_REPLICA", None),
        EngineError::SubjectExists(_) => (AlreadyExists, "SUBJECT_EXISTS", Some("subject_id".into())),
        EngineError::SubjectNotFound(_) => (NotFound, "SUBJECT_NOT_FOUND", Some("subject_id".into())),
        EngineError::JobNotFound(_) => (NotFound, "JOB_NOT_FOUND", Some("job_id".into())),
        EngineError::WatchlistNotFound(_) => (NotFound, "WATCHLIST_NOT_FOUND", Some("watchlist".into())),
        EngineError::NothingToCompare { .. } => (FailedPrecondition, "NOTHING_TO_COMPARE", None),
        EngineError::NotReady(_) => (Unavailable, "NOT_READY", None),
        EngineError::Store(e) if e.is_disk_full() => (ResourceExhausted, "STORAGE_FULL", None),
        EngineError::Store(_) => (Internal, "STORE_FAILED", None),
        EngineError::Index(_) => (Internal, "INDEX_FAILED", None),
        EngineError::Model(_) => (Unavailable, "MODELS_UNAVAILABLE", None),
        EngineError::Calibration(_) => (Unavailable, "CALIBRATION_UNAVAILABLE", None),
        EngineError::Overloaded(_) => (ResourceExhausted, "OVERLOADED", None),
        EngineError::Internal(_) => (Internal, "INTERNAL", None),
    }
}

/// The reason an ISO template is refused: the same codes as for images where
/// the cause is the same (resolution, too few minutiae).
fn template_reason(e: &TemplateError) -> &'static str {
    match e {
        TemplateError::Iso(_) => "MALFORMED_TEMPLATE",
        TemplateError::Resolution { .. } => "BAD_RESOLUTION",
        TemplateError::TooFewMinutiae { .. } => "TOO_FEW_MINUTIAE",
        TemplateError::PositionMismatch { .. } | TemplateError::NoViewForPosition { .. } => "FINGER_POSITION_MISMATCH",
        TemplateError::TooLarge { .. } => "TEMPLATE_TOO_LARGE",
    }
}

/// The reason of an undecodable image, the same for faces and fingers.
fn image_reason(e: &ImageError) -> &'static str {
    match e {
        ImageError::Empty => "EMPTY_IMAGE",
        ImageError::UnsupportedFormat | ImageError::Wsq => "UNSUPPORTED_FORMAT",
        ImageError::Corrupt(_) => "CORRUPT_IMAGE",
        ImageError::TooLarge(_) => "IMAGE_TOO_LARGE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_that_pass_say_when_to_retry_and_field_errors_name_their_reason() {
        let s = Status::from(EngineError::NotReady("loading".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.get_details_retry_info().and_then(|r| r.retry_delay), Some(std::time::Duration::from_secs(2)));
        let s = Status::from(EngineError::Face {
            field: "samples[0].image".into(),
            source: FaceError::Overloaded("queue full".into()),
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.get_details_retry_info().is_some());
        let s = Status::from(EngineError::invalid("INVALID_SUBJECT_ID", "subject_id", "is required"));
        assert_eq!(s.get_details_error_info().map(|i| i.reason).as_deref(), Some("INVALID_SUBJECT_ID"));
        assert!(s.get_details_retry_info().is_none(), "a bad field does not pass by waiting");
    }
}
