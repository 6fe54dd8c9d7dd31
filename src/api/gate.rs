//! Every call passes the gate twice: on the way in, the caller is
//! identified (bearer token or client certificate) and checked for the
//! role the RPC needs; on the way out, the call is written to the audit log
//! with its outcome. A refusal is recorded too. A call whose audit entry
//! cannot be written is answered INTERNAL: nobody looks at a record unseen.

use std::{collections::HashMap, sync::Arc};

use rand::RngCore;
use tonic::{Code, Request, Response, Status, metadata::MetadataMap};
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{error, warn};

use super::{DOMAIN, EngineSlot};
use crate::engine::EngineError;
use crate::{
    auth::{Authenticator, Credentials, Method, Refusal},
    metrics::Metrics,
    server::tls::Peer,
    store::{Actor, AuditRecord},
};

/// The metadata key of the request id (taken from the caller when it sends
/// a sane one, otherwise made here), echoed in every answer.
pub const REQUEST_ID: &str = "x-request-id";

/// What a finished call touched, for its audit entry.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Subjects read, written or returned.
    pub(super) subjects: Vec<String>,
    /// Decision, counts, job id; never biometric data.
    pub(super) detail: String,
    /// The engine already wrote the entry in the transaction that made the
    /// change (Enroll, Delete).
    pub(super) recorded: bool,
}

/// An admitted call on its way through.
#[derive(Debug)]
pub(super) struct Call {
    pub(super) actor: Actor,
    started: std::time::Instant,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub(super) deadline: Option<std::time::Instant>,
}

/// Authentication, authorization and the audit of every call.
#[derive(Debug, Clone)]
pub struct Gate {
    auth: Arc<Authenticator>,
    engine: Arc<EngineSlot>,
    metrics: Arc<Metrics>,
}

impl Gate {
    /// A gate over `auth`, recording through the engine once it is ready.
    pub fn new(auth: Arc<Authenticator>, engine: Arc<EngineSlot>, metrics: Arc<Metrics>) -> Self {
        Self { auth, engine, metrics }
    }

    /// The caller of `request`, allowed to call `method`; a refusal is
    /// recorded and answered UNAUTHENTICATED or PERMISSION_DENIED.
    pub(super) async fn admit<T>(&self, request: &Request<T>, method: Method) -> Result<Call, Status> {
        let started = std::time::Instant::now();
        let request_id = request_id(request.metadata());
        let peer = request.extensions().get::<Peer>();
        let certificate = peer.and_then(|p| p.certificate_name.as_deref());
        let admitted =
            bearer(request.metadata()).and_then(|token| self.auth.admit(&Credentials { token, certificate }, method));
        match admitted {
            Ok(caller) => {
                if let Some(problem) = self.engine.get().and_then(|e| e.audit_problem().map(str::to_owned))
                    && method.role() != crate::auth::Role::Audit
                {
                    let actor = Actor {
                        caller: caller.name,
                        role: method.role().name().into(),
                        method: method.name().into(),
                        request_id,
                    };
                    let mut details = ErrorDetails::new();
                    details.set_error_info("AUDIT_LOG_BROKEN", DOMAIN, HashMap::new());
                    let status = Status::with_error_details(
                        Code::Unavailable,
                        format!("the audit log failed its start-up check ({problem}); only the audit role is answered"),
                        details,
                    );
                    return Err(self.refuse(actor, "AUDIT_LOG_BROKEN", status, peer, started).await);
                }
                Ok(Call {
                    actor: Actor {
                        caller: caller.name,
                        role: method.role().name().into(),
                        method: method.name().into(),
                        request_id,
                    },
                    started,
                    deadline: request
                        .metadata()
                        .get("grpc-timeout")
                        .and_then(|v| v.to_str().ok())
                        .and_then(crate::admission::parse_grpc_timeout)
                        .map(|t| started + t),
                })
            }
            Err(refusal) => {
                let caller = match (&refusal, certificate) {
                    (Refusal::MissingRole { caller, .. }, _) => caller.clone(),
                    (_, Some(name)) => name.to_owned(),
                    _ => String::new(),
                };
                let actor =
                    Actor { caller, role: method.role().name().into(), method: method.name().into(), request_id };
                let (code, reason) = match &refusal {
                    Refusal::Unauthenticated(_) => (Code::Unauthenticated, refusal.reason()),
                    Refusal::MissingRole { .. } => (Code::PermissionDenied, refusal.reason()),
                };
                let mut details = ErrorDetails::new();
                let mut meta = HashMap::from([("required_role".to_owned(), method.role().name().to_owned())]);
                meta.insert("method".into(), method.name().into());
                details.set_error_info(reason, DOMAIN, meta);
                let status = Status::with_error_details(code, refusal.to_string(), details);
                Err(self.refuse(actor, reason, status, peer, started).await)
            }
        }
    }

    async fn refuse(
        &self,
        actor: Actor,
        reason: &str,
        status: Status,
        peer: Option<&Peer>,
        started: std::time::Instant,
    ) -> Status {
        self.metrics.observe(&actor.method, &code_name(status.code()), started.elapsed().as_secs_f64());
        let detail = peer.and_then(|p| p.addr).map(|a| format!("peer={a}")).unwrap_or_default();
        let record = AuditRecord {
            outcome: format!("{:?}: {reason}: {}", status.code(), status.message()),
            actor: actor.clone(),
            subjects: Vec::new(),
            detail,
        };
        let _ = self.record(record).await;
        with_request_id(status, &actor.request_id)
    }

    /// Records the call's outcome and answers it, the request id attached.
    /// `asked`: the subjects the request named, recorded whatever the outcome.
    pub(super) async fn finish<T>(
        &self,
        call: Call,
        asked: Vec<String>,
        result: Result<T, Status>,
        touched: impl FnOnce(&T) -> Touched,
    ) -> Result<Response<T>, Status> {
        let Call { actor, started, .. } = call;
        let code = result.as_ref().map_or_else(|s| code_name(s.code()), |_| "OK".to_owned());
        self.metrics.observe(&actor.method, &code, started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                let t = touched(&answer);
                if !t.recorded {
                    let mut subjects = asked;
                    for s in t.subjects {
                        if !subjects.contains(&s) {
                            subjects.push(s);
                        }
                    }
                    let record = AuditRecord { actor: actor.clone(), subjects, outcome: "OK".into(), detail: t.detail };
                    if let Err(e) = self.record(record).await {
                        return Err(with_request_id(unrecorded(&e), &actor.request_id));
                    }
                }
                let mut response = Response::new(answer);
                if let Ok(v) = actor.request_id.parse() {
                    response.metadata_mut().insert(REQUEST_ID, v);
                }
                Ok(response)
            }
            Err(status) => {
                let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_default();
                let record = AuditRecord {
                    outcome: format!("{:?}: {reason}: {}", status.code(), status.message()),
                    actor: actor.clone(),
                    subjects: asked,
                    detail: String::new(),
                };
                let _ = self.record(record).await;
                Err(with_request_id(status, &actor.request_id))
            }
        }
    }

    /// Writes one entry; the error (also logged) when it could not.
    async fn record(&self, record: AuditRecord) -> Result<(), EngineError> {
        let Some(engine) = self.engine.get() else {
            // Before start-up ends there is no store to write to; every
            // call is refused NOT_READY then and nothing is looked at.
            warn!(method = %record.actor.method, outcome = %record.outcome, "call before the store is open: not audited");
            return Ok(());
        };
        if engine.audit_problem().is_some() {
            // Appending would blur the evidence (the first broken entry
            // would move); the call goes to the server log instead.
            error!(
                method = %record.actor.method,
                caller = %record.actor.caller,
                request_id = %record.actor.request_id,
                outcome = %record.outcome,
                "audit log broken: entry not appended"
            );
            return Ok(());
        }
        let written = engine.record_audit(record).await;
        if let Err(e) = &written {
            error!(error = %e, "audit entry not written");
        }
        written
    }

    /// Records a refused TLS handshake (no caller could be named).
    pub async fn record_handshake_refusal(&self, addr: std::net::SocketAddr, error: &str) {
        let record = AuditRecord {
            actor: Actor { method: "TlsHandshake".into(), ..Actor::default() },
            subjects: Vec::new(),
            outcome: format!("Unauthenticated: TLS_HANDSHAKE_REFUSED: {error}"),
            detail: format!("peer={addr}"),
        };
        let _ = self.record(record).await;
    }
}

/// The answer to a call whose audit entry could not be written: never the
/// call's own answer. A full disk is said by name (it passes by waiting).
fn unrecorded(e: &EngineError) -> Status {
    let mut details = ErrorDetails::new();
    if matches!(e, EngineError::Store(s) if s.is_disk_full()) {
        details.set_error_info("STORAGE_FULL", DOMAIN, HashMap::new());
        details.set_retry_info(Some(std::time::Duration::from_secs(30)));
        let why = "the data directory's disk is full: the call could not be audited, so it is not answered";
        return Status::with_error_details(Code::ResourceExhausted, why, details);
    }
    details.set_error_info("AUDIT_WRITE_FAILED", DOMAIN, HashMap::new());
    Status::with_error_details(Code::Internal, "the call could not be written to the audit log; not answered", details)
}

/// The bearer token of `authorization`, if one was sent; a header that is
/// not `Bearer <token>` is refused rather than ignored.
fn bearer(meta: &MetadataMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = meta.get("authorization") else { return Ok(None) };
    let text = value.to_str().map_err(|_| Refusal::Unauthenticated("the authorization header is not text".into()))?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::Unauthenticated("authorization must be `Bearer <token>`".into()))?;
    Ok(Some(token))
}

/// The caller's request id if it is 1-64 visible ASCII characters, else a new one.
fn request_id(meta: &MetadataMap) -> String {
    meta.get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || {
                let mut b = [0u8; 12];
                rand::rng().fill_bytes(&mut b);
                hex::encode(b)
            },
            str::to_owned,
        )
}

/// The status with the request id in its metadata and in its ErrorInfo.
fn with_request_id(status: Status, request_id: &str) -> Status {
    let mut details = status.get_error_details();
    let info = details.error_info().cloned();
    let (reason, domain, mut meta) = match info {
        Some(i) => (i.reason, i.domain, i.metadata),
        None => (code_name(status.code()), DOMAIN.to_owned(), HashMap::new()),
    };
    meta.insert("request_id".into(), request_id.to_owned());
    details.set_error_info(reason, domain, meta);
    let mut out = Status::with_error_details(status.code(), status.message(), details);
    if let Ok(v) = request_id.parse() {
        out.metadata_mut().insert(REQUEST_ID, v);
    }
    out
}

/// A status code as the gRPC spec writes it (`InvalidArgument` -> `INVALID_ARGUMENT`).
fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().expect("value"));
        }
        m
    }

    #[test]
    fn bearer_tokens_and_request_ids() {
        assert_eq!(bearer(&meta(&[])), Ok(None));
        assert_eq!(bearer(&meta(&[("authorization", "Bearer ctj_1")])), Ok(Some("ctj_1")));
        assert!(bearer(&meta(&[("authorization", "Basic dXNlcg==")])).is_err(), "not silently anonymous");
        assert!(bearer(&meta(&[("authorization", "Bearer ")])).is_err());
        assert_eq!(request_id(&meta(&[(REQUEST_ID, "desk-12/0042")])), "desk-12/0042");
        let made = request_id(&meta(&[(REQUEST_ID, &"x".repeat(65))]));
        assert_eq!(made.len(), 24, "{made}");
        assert_eq!(code_name(Code::InvalidArgument), "INVALID_ARGUMENT");
        assert_eq!(code_name(Code::Internal), "INTERNAL");
    }
}
