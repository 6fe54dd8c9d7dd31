//! The `cotejo.v1.AuditService` service: verify and read the audit log (role `audit`).

use std::{pin::Pin, sync::Arc};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{
    EngineSlot,
    gate::{Gate, Touched},
    pb::{self, audit_service_server::AuditService},
};
use crate::{
    auth::Method,
    engine::{Engine, EngineError},
    store::{AuditEntry, StoreError},
};

/// Most entries one ReadLog returns.
const MAX_ENTRIES: usize = 10_000;

/// gRPC front of the audit log.
#[derive(Debug, Clone)]
pub struct AuditApi {
    engine: Arc<EngineSlot>,
    gate: Gate,
}

impl AuditApi {
    /// A service that serves once `engine` is set, its calls passing `gate`.
    pub fn new(engine: Arc<EngineSlot>, gate: Gate) -> Self {
        Self { engine, gate }
    }

    fn engine(&self) -> Result<Arc<Engine>, Status> {
        super::ready(&self.engine)
    }
}

impl From<AuditEntry> for pb::AuditEntry {
    fn from(e: AuditEntry) -> Self {
        let AuditEntry { seq, ts_ms, format: _, method, caller, role, request_id, subjects, outcome, detail, hash } = e;
        Self {
            seq,
            time: Some(super::convert::timestamp(ts_ms)),
            method,
            caller,
            role,
            request_id,
            subject_ids: subjects,
            outcome,
            detail,
            hash,
        }
    }
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<pb::ReadLogResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AuditService for AuditApi {
    #[instrument(skip_all)]
    async fn verify_log(
        &self,
        request: Request<pb::VerifyLogRequest>,
    ) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let call = self.gate.admit(&request, Method::VerifyAuditLog).await?;
        let pb::VerifyLogRequest {} = request.into_inner();
        let result = async {
            Ok(match self.engine()?.verify_audit().await {
                Ok(c) => pb::VerifyLogResponse {
                    intact: true,
                    entries: c.entries,
                    first_broken_seq: 0,
                    problem: String::new(),
                    head_seq: c.head_seq,
                },
                Err(EngineError::Store(StoreError::AuditBroken { seq, problem })) => {
                    pb::VerifyLogResponse { intact: false, entries: 0, first_broken_seq: seq, problem, head_seq: 0 }
                }
                Err(e) => return Err(Status::from(e)),
            })
        }
        .await;
        self.gate
            .finish(call, Vec::new(), result, |r| Touched {
                detail: format!("intact={} first_broken={}", r.intact, r.first_broken_seq),
                ..Touched::default()
            })
            .await
    }

    type ReadLogStream = EntryStream;

    #[instrument(skip_all)]
    async fn read_log(&self, request: Request<pb::ReadLogRequest>) -> Result<Response<Self::ReadLogStream>, Status> {
        let call = self.gate.admit(&request, Method::ReadAuditLog).await?;
        let pb::ReadLogRequest { from_seq, limit } = request.into_inner();
        let limit = match limit as usize {
            0 => MAX_ENTRIES,
            n => n.min(MAX_ENTRIES),
        };
        let result = async { Ok(self.engine()?.audit_entries(from_seq.max(1), limit).await?) }.await;
        let touched = |v: &Vec<AuditEntry>| Touched {
            detail: format!("from={from_seq} entries={}", v.len()),
            ..Touched::default()
        };
        let (metadata, entries, _) = self.gate.finish(call, Vec::new(), result, touched).await?.into_parts();
        let items: Vec<Result<pb::ReadLogResponse, Status>> =
            entries.into_iter().map(|e| Ok(pb::ReadLogResponse { entry: Some(e.into()) })).collect();
        let mut response = Response::new(Box::pin(tokio_stream::iter(items)) as Self::ReadLogStream);
        *response.metadata_mut() = metadata; // the request id
        Ok(response)
    }
}
