//! The `cotejo.v1.Jobs` service: batch de-duplication jobs.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::{self, jobs_server::Jobs};
use crate::{
    engine::{DedupRequest, DuplicatePair, Engine, EngineError, JobStatus},
    jobs::Scope,
};

/// gRPC front of the engine's jobs; answers UNAVAILABLE until the engine is ready.
#[derive(Debug, Clone)]
pub struct JobsApi {
    engine: Arc<OnceLock<Arc<Engine>>>,
}

impl JobsApi {
    /// A service that serves once `engine` is set.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>) -> Self {
        Self { engine }
    }

    fn engine(&self) -> Result<&Engine, Status> {
        super::ready(&self.engine)
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::JobResult, Status>> + Send>>;

#[tonic::async_trait]
impl Jobs for JobsApi {
    #[instrument(skip_all)]
    async fn start_dedup(&self, request: Request<pb::StartDedupRequest>) -> Result<Response<pb::Job>, Status> {
        let req = request.into_inner().try_into()?;
        let status = self.engine()?.start_dedup(req).await?;
        Ok(Response::new(status.into()))
    }

    #[instrument(skip_all)]
    async fn get_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let pb::JobRequest { job_id } = request.into_inner();
        Ok(Response::new(self.engine()?.job(job_id).await?.into()))
    }

    type StreamResultsStream = ResultStream;

    #[instrument(skip_all)]
    async fn stream_results(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<Self::StreamResultsStream>, Status> {
        let pb::JobRequest { job_id } = request.into_inner();
        let (pairs, clusters) = self.engine()?.job_results(job_id).await?;
        let items: Vec<Result<pb::JobResult, Status>> = pairs
            .into_iter()
            .map(|p| Ok(pb::JobResult { item: Some(pb::job_result::Item::Pair(p.into())) }))
            .chain(clusters.into_iter().map(|subject_ids| {
                Ok(pb::JobResult { item: Some(pb::job_result::Item::Cluster(pb::DuplicateCluster { subject_ids })) })
            }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    #[instrument(skip_all)]
    async fn cancel_job(&self, request: Request<pb::JobRequest>) -> Result<Response<pb::Job>, Status> {
        let pb::JobRequest { job_id } = request.into_inner();
        Ok(Response::new(self.engine()?.cancel_job(job_id).await?.into()))
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
        let state = match r.state.as_str() {
            "queued" => pb::JobState::Queued,
            "running" => pb::JobState::Running,
            "done" => pb::JobState::Done,
            "cancelled" => pb::JobState::Cancelled,
            "failed" => pb::JobState::Failed,
            _ => pb::JobState::Unspecified,
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
