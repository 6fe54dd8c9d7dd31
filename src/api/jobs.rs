//! The `cotejo.v1.Jobs` service: batch de-duplication jobs.

use std::{pin::Pin, sync::Arc};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{
    EngineSlot,
    gate::{Gate, Touched},
    pb::{self, jobs_server::Jobs},
};
use crate::{
    auth::Method,
    engine::{DedupRequest, DuplicatePair, Engine, EngineError, JobStatus},
    jobs::Scope,
    store::JobState,
};

/// gRPC front of the engine's jobs; answers UNAVAILABLE until the engine is ready.
#[derive(Debug, Clone)]
pub struct JobsApi {
    engine: Arc<EngineSlot>,
    gate: Gate,
}

impl JobsApi {
    /// A service that serves once `engine` is set, its calls passing `gate`.
    pub fn new(engine: Arc<EngineSlot>, gate: Gate) -> Self {
        Self { engine, gate }
    }

    fn engine(&self) -> Result<Arc<Engine>, Status> {
        super::ready(&self.engine)
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::JobResult, Status>> + Send>>;

/// A job call's audit detail: the job id names exactly what was seen (its
/// pairs are rows of the store).
fn job_touched(job: &pb::Job) -> Touched {
    Touched { detail: format!("job={} state={} pairs={}", job.job_id, job.state, job.pairs), ..Touched::default() }
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    #[instrument(skip_all)]
    async fn start_dedup(&self, request: Request<pb::StartDedupRequest>) -> Result<Response<pb::Job>, Status> {
        let call = self.gate.admit(&request, Method::StartDedup).await?;
        let asked = match &request.get_ref().scope {
            Some(pb::start_dedup_request::Scope::Subjects(list)) => list.subject_ids.clone(),
            _ => Vec::new(),
        };
        let result = async {
            let req = request.into_inner().try_into()?;
            Ok(self.engine()?.start_dedup(req).await?.into())
        }
        .await;
        self.gate.finish(call, asked, result, job_touched).await
    }

    #[instrument(skip_all)]
    async fn get_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let call = self.gate.admit(&request, Method::GetJob).await?;
        let pb::JobRequest { job_id } = request.into_inner();
        let result = async { Ok(self.engine()?.job(job_id).await?.into()) }.await;
        self.gate.finish(call, Vec::new(), result, job_touched).await
    }

    type StreamResultsStream = ResultStream;

    #[instrument(skip_all)]
    async fn stream_results(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<Self::StreamResultsStream>, Status> {
        let call = self.gate.admit(&request, Method::StreamResults).await?;
        let pb::JobRequest { job_id } = request.into_inner();
        let result = async {
            let (pairs, clusters) = self.engine()?.job_results(job_id.clone()).await?;
            Ok((job_id, pairs, clusters))
        }
        .await;
        let touched = |(job_id, pairs, clusters): &(String, Vec<DuplicatePair>, Vec<Vec<String>>)| Touched {
            detail: format!("job={job_id} pairs={} clusters={}", pairs.len(), clusters.len()),
            ..Touched::default()
        };
        let (metadata, (_, pairs, clusters), _) =
            self.gate.finish(call, Vec::new(), result, touched).await?.into_parts();
        let items: Vec<Result<pb::JobResult, Status>> = pairs
            .into_iter()
            .map(|p| Ok(pb::JobResult { item: Some(pb::job_result::Item::Pair(p.into())) }))
            .chain(clusters.into_iter().map(|subject_ids| {
                Ok(pb::JobResult { item: Some(pb::job_result::Item::Cluster(pb::DuplicateCluster { subject_ids })) })
            }))
            .collect();
        let mut response = Response::new(Box::pin(tokio_stream::iter(items)) as Self::StreamResultsStream);
        *response.metadata_mut() = metadata; // the request id
        Ok(response)
    }

    #[instrument(skip_all)]
    async fn cancel_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let call = self.gate.admit(&request, Method::CancelJob).await?;
        let pb::JobRequest { job_id } = request.into_inner();
        let result = async { Ok(self.engine()?.cancel_job(job_id).await?.into()) }.await;
        self.gate.finish(call, Vec::new(), result, job_touched).await
    }
}

impl TryFrom<pb::StartDedupRequest> for DedupRequest {
    type Error = EngineError;
    fn try_from(r: pb::StartDedupRequest) -> Result<Self, EngineError> {
        let pb::StartDedupRequest { scope, modalities, target_fmr } = r;
        let scope = match scope {
            None => Scope::All,
            Some(pb::start_dedup_request::Scope::Subjects(pb::SubjectList { subject_ids })) => {
                Scope::Subjects(subject_ids)
            }
            Some(pb::start_dedup_request::Scope::Enrolled(pb::TimeWindow { from_unix_ms, to_unix_ms })) => {
                Scope::Enrolled { from_ms: from_unix_ms, to_ms: to_unix_ms }
            }
        };
        let modalities = modalities
            .into_iter()
            .enumerate()
            .map(|(i, m)| super::convert::modality_from_pb(m, &format!("modalities[{i}]")))
            .collect::<Result<_, _>>()?;
        Ok(Self { scope, modalities, target_fmr })
    }
}

impl From<JobStatus> for pb::Job {
    fn from(s: JobStatus) -> Self {
        let r = s.record;
        let state = match r.state {
            JobState::Queued => pb::JobState::Queued,
            JobState::Running => pb::JobState::Running,
            JobState::Done => pb::JobState::Done,
            JobState::Cancelled => pb::JobState::Cancelled,
            JobState::Failed => pb::JobState::Failed,
        };
        Self {
            job_id: r.job_id.to_string(),
            state: state as i32,
            done: r.done,
            total: r.total,
            rate_per_second: s.rate,
            eta_seconds: s.eta,
            pairs: s.pairs,
            threshold: s.threshold,
            threshold_basis: s.basis,
            subjects: s.subjects,
            templates: s.templates,
            created_unix_ms: r.created_ms,
            error: r.error,
        }
    }
}

impl From<DuplicatePair> for pb::DuplicatePair {
    fn from(p: DuplicatePair) -> Self {
        Self {
            a: p.a,
            b: p.candidate.subject_id,
            score: p.candidate.score,
            scores: p.candidate.scores.into_iter().map(Into::into).collect(),
        }
    }
}
