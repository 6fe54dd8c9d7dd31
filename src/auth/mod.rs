//! Who may call, and for what. A caller is a name with roles, identified by
//! a bearer token (the callers file keeps only its SHA-256) or by the common
//! name of a client certificate that mutual TLS verified. Every RPC needs one
//! role; health is open. No transport types here: the gRPC layer hands in
//! the presented token and certificate name.

mod callers;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use callers::{CallerEntry, Callers, CallersError, add_certificate, add_token, new_token, revoke, token_sha256};

/// A permission an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Identify (1:N) and Verify (1:1).
    Identify,
    /// Enroll.
    Enroll,
    /// Delete, GetSubject, ExportTemplates, Stats and the Jobs service.
    Admin,
    /// Reading and verifying the audit log.
    Audit,
}

impl Role {
    /// Every role, for a caller that needs no configuration (loopback).
    pub const ALL: [Role; 4] = [Role::Identify, Role::Enroll, Role::Admin, Role::Audit];

    /// The name used in files, flags and errors.
    pub fn name(self) -> &'static str {
        match self {
            Role::Identify => "identify",
            Role::Enroll => "enroll",
            Role::Admin => "admin",
            Role::Audit => "audit",
        }
    }

    /// The role of a name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name.trim())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every RPC of the public API, with the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `BiometricsService/Enroll`.
    Enroll,
    /// `BiometricsService/Identify`.
    Identify,
    /// `BiometricsService/Verify`.
    Verify,
    /// `BiometricsService/Delete`.
    Delete,
    /// `BiometricsService/GetSubject`.
    GetSubject,
    /// `BiometricsService/Stats`.
    Stats,
    /// `BiometricsService/ListSubjects`.
    ListSubjects,
    /// `BiometricsService/ExportTemplates`.
    ExportTemplates,
    /// `JobsService/StartDedup`.
    StartDedup,
    /// `JobsService/GetJob`.
    GetJob,
    /// `JobsService/ListJobs`.
    ListJobs,
    /// `JobsService/StreamResults`.
    StreamResults,
    /// `JobsService/CancelJob`.
    CancelJob,
    /// `AuditService/VerifyLog`.
    VerifyAuditLog,
    /// `AuditService/ReadLog`.
    ReadAuditLog,
}

impl Method {
    /// The role a caller needs for this RPC.
    pub fn role(self) -> Role {
        match self {
            Method::Identify | Method::Verify => Role::Identify,
            Method::Enroll => Role::Enroll,
            Method::Delete
            | Method::GetSubject
            | Method::ListSubjects
            | Method::Stats
            | Method::ExportTemplates
            | Method::StartDedup
            | Method::GetJob
            | Method::ListJobs
            | Method::StreamResults
            | Method::CancelJob => Role::Admin,
            Method::VerifyAuditLog | Method::ReadAuditLog => Role::Audit,
        }
    }

    /// The RPC's name as the audit log records it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Enroll => "Enroll",
            Method::Identify => "Identify",
            Method::Verify => "Verify",
            Method::Delete => "Delete",
            Method::GetSubject => "GetSubject",
            Method::ListSubjects => "ListSubjects",
            Method::Stats => "Stats",
            Method::ExportTemplates => "ExportTemplates",
            Method::StartDedup => "StartDedup",
            Method::GetJob => "GetJob",
            Method::ListJobs => "ListJobs",
            Method::StreamResults => "StreamResults",
            Method::CancelJob => "CancelJob",
            Method::VerifyAuditLog => "VerifyAuditLog",
            Method::ReadAuditLog => "ReadAuditLog",
        }
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A bearer token found in the callers file.
    Token,
    /// A client certificate verified by mutual TLS.
    Certificate,
    /// Nothing: no caller authentication is configured (loopback or `insecure`).
    Unauthenticated,
}

/// An identified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Name recorded in the audit log.
    pub name: String,
    /// What it may do.
    pub roles: Vec<Role>,
    /// How it was identified.
    pub via: Via,
}

impl Caller {
    /// Whether the caller holds `role`.
    pub fn may(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a call was refused before it reached the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No credentials, or credentials nobody issued (UNAUTHENTICATED).
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller without the role the RPC needs (PERMISSION_DENIED).
    #[error("caller {caller:?} lacks the role `{role}` that {method} needs")]
    MissingRole { caller: String, role: Role, method: &'static str },
}

impl Refusal {
    /// The ErrorInfo reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "UNAUTHENTICATED",
            Refusal::MissingRole { .. } => "MISSING_ROLE",
        }
    }
}

/// What a call presented: a bearer token and the common name of a verified
/// client certificate, either or both.
#[derive(Debug, Clone, Default)]
pub struct Credentials<'a> {
    /// The `authorization: Bearer` value, if any.
    pub token: Option<&'a str>,
    /// The verified client certificate's name, if mutual TLS gave one.
    pub certificate: Option<&'a str>,
}

/// The authentication policy of a running server.
#[derive(Debug)]
pub struct Authenticator {
    callers: Option<Callers>,
    mutual_tls: bool,
}

impl Authenticator {
    /// `callers` from the configured file (if any); `mutual_tls` when the
    /// server verifies client certificates.
    pub fn new(callers: Option<Callers>, mutual_tls: bool) -> Self {
        Self { callers, mutual_tls }
    }

    /// Whether calls must identify a caller (a callers file or mutual TLS).
    pub fn required(&self) -> bool {
        self.callers.is_some() || self.mutual_tls
    }

    /// The callers file, when one is configured.
    pub fn callers(&self) -> Option<&Callers> {
        self.callers.as_ref()
    }

    /// The caller behind `creds`, allowed to call `method`.
    pub fn admit(&self, creds: &Credentials<'_>, method: Method) -> Result<Caller, Refusal> {
        let caller = self.identify(creds)?;
        let role = method.role();
        if caller.may(role) {
            Ok(caller)
        } else {
            Err(Refusal::MissingRole { caller: caller.name, role, method: method.name() })
        }
    }

    fn identify(&self, creds: &Credentials<'_>) -> Result<Caller, Refusal> {
        if let Some(token) = creds.token {
            let Some(callers) = &self.callers else {
                return Err(Refusal::Unauthenticated(
                    "a bearer token was sent but this server has no callers file (auth.tokens_file)".into(),
                ));
            };
            return callers
                .by_token(token)
                .map(|e| Caller { name: e.name, roles: e.roles, via: Via::Token })
                .ok_or_else(|| Refusal::Unauthenticated("the bearer token is not known (revoked or mistyped)".into()));
        }
        if let Some(name) = creds.certificate {
            // The CA vouched for the name; the callers file, when there is
            // one, says what it may do (nothing if it is not listed).
            let roles = match &self.callers {
                Some(c) => c.certificate_roles(name),
                None => Role::ALL.to_vec(),
            };
            return Ok(Caller { name: name.to_owned(), roles, via: Via::Certificate });
        }
        if self.required() {
            return Err(Refusal::Unauthenticated(
                "this server needs a caller: send `authorization: Bearer <token>` or a client certificate".into(),
            ));
        }
        Ok(Caller { name: "anonymous".into(), roles: Role::ALL.to_vec(), via: Via::Unauthenticated })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method() {
        assert_eq!(Method::Identify.role(), Role::Identify);
        assert_eq!(Method::Verify.role(), Role::Identify);
        assert_eq!(Method::Enroll.role(), Role::Enroll);
        for m in [Method::Delete, Method::GetSubject, Method::ExportTemplates, Method::StartDedup, Method::GetJob] {
            assert_eq!(m.role(), Role::Admin, "{m:?}");
        }
        assert_eq!(Method::ReadAuditLog.role(), Role::Audit);
        assert_eq!(Role::parse("enroll"), Some(Role::Enroll));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn open_server_admits_anyone_and_closed_one_nobody_unknown() {
        let open = Authenticator::new(None, false);
        let c = open.admit(&Credentials::default(), Method::Delete).expect("open");
        assert_eq!(c.via, Via::Unauthenticated);
        let closed = Authenticator::new(None, true);
        assert!(matches!(closed.admit(&Credentials::default(), Method::Stats), Err(Refusal::Unauthenticated(_))));
        let by_cert = Credentials { token: None, certificate: Some("consulate-wa") };
        assert_eq!(closed.admit(&by_cert, Method::Enroll).expect("cert").name, "consulate-wa");
        // A token needs a callers file to be checked against.
        let token = Credentials { token: Some("ctj_x"), certificate: None };
        assert!(matches!(closed.admit(&token, Method::Stats), Err(Refusal::Unauthenticated(_))));
    }

    #[test]
    fn tokens_and_roles_from_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("callers.toml");
        let token = callers::add_token(&path, "desk-12", &[Role::Enroll, Role::Identify]).expect("add");
        callers::add_certificate(&path, "consulate-wa", &[Role::Identify]).expect("add cert");
        let auth = Authenticator::new(Some(Callers::open(&path).expect("open")), false);
        let creds = Credentials { token: Some(&token), certificate: None };
        let c = auth.admit(&creds, Method::Enroll).expect("enroll");
        assert_eq!((c.name.as_str(), c.via), ("desk-12", Via::Token));
        let denied = auth.admit(&creds, Method::Delete).expect_err("no admin");
        assert!(matches!(denied, Refusal::MissingRole { role: Role::Admin, .. }), "{denied:?}");
        let wrong = Credentials { token: Some("ctj_0000"), certificate: None };
        assert!(matches!(auth.admit(&wrong, Method::Identify), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(auth.admit(&Credentials::default(), Method::Identify), Err(Refusal::Unauthenticated(_))));
        let cert = Credentials { token: None, certificate: Some("consulate-wa") };
        assert!(auth.admit(&cert, Method::Verify).is_ok());
        assert!(matches!(auth.admit(&cert, Method::Enroll), Err(Refusal::MissingRole { .. })));
        let stranger = Credentials { token: None, certificate: Some("someone-else") };
        assert!(matches!(auth.admit(&stranger, Method::Identify), Err(Refusal::MissingRole { .. })));
    }
}
