//! The `cotejo.v1.JobsService` service: batch de-duplication jobs.

use std::{pin::Pin, sync::Arc};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{
    EngineSlot,
    convert::{duration, timestamp, unix_ms},
    gate::{Gate, Touched},
    pb::{self, jobs_service_server::JobsService},
};
use crate::{
    auth::Method,
    engine::{DedupRequest, DuplicatePair, Engine, EngineError, JobStatus, PageRequest, ResultItem},
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

type ResultStream = Pin<Box<dyn Stream<Item = Result<pb::StreamResultsResponse, Status>> + Send>>;

/// A job call's audit detail: the job id names exactly what was seen (its
/// pairs are rows of the store).
fn job_touched(job: Option<&pb::Job>) -> Touched {
    let detail = job.map_or_else(String::new, |j| format!("job={} state={} pairs={}", j.job_id, j.state, j.pairs));
    Touched { detail, ..Touched::default() }
}

#[tonic::async_trait]
impl JobsService for JobsApi {
    #[instrument(skip_all)]
    async fn start_dedup(
        &self,
        request: Request<pb::StartDedupRequest>,
    ) -> Result<Response<pb::StartDedupResponse>, Status> {
        let call = self.gate.admit(&request, Method::StartDedup).await?;
        let asked = match &request.get_ref().scope {
            Some(pb::start_dedup_request::Scope::Subjects(list)) => list.subject_ids.clone(),
            _ => Vec::new(),
        };
        let result = async {
            let req = request.into_inner().try_into()?;
            Ok(pb::StartDedupResponse { job: Some(self.engine()?.start_dedup(req).await?.into()) })
        }
        .await;
        self.gate.finish(call, asked, result, |r| job_touched(r.job.as_ref())).await
    }

    #[instrument(skip_all)]
    async fn get_job(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::GetJobResponse>, Status> {
        let call = self.gate.admit(&request, Method::GetJob).await?;
        let pb::GetJobRequest { job_id } = request.into_inner();
        let result = async { Ok(pb::GetJobResponse { job: Some(self.engine()?.job(job_id).await?.into()) }) }.await;
        self.gate.finish(call, Vec::new(), result, |r| job_touched(r.job.as_ref())).await
    }

    #[instrument(skip_all)]
    async fn list_jobs(&self, request: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let call = self.gate.admit(&request, Method::ListJobs).await?;
        let pb::ListJobsRequest { page_size, page_token } = request.into_inner();
        let result = async {
            let page = self.engine()?.list_jobs(PageRequest { page_size, page_token }).await?;
            Ok(pb::ListJobsResponse {
                jobs: page.items.into_iter().map(Into::into).collect(),
                next_page_token: page.next_page_token,
            })
        }
        .await;
        self.gate
            .finish(call, Vec::new(), result, |r| Touched {
                detail: format!("jobs={}", r.jobs.iter().map(|j| j.job_id.as_str()).collect::<Vec<_>>().join(",")),
                ..Touched::default()
            })
            .await
    }

    type StreamResultsStream = ResultStream;

    #[instrument(skip_all)]
    async fn stream_results(
        &self,
        request: Request<pb::StreamResultsRequest>,
    ) -> Result<Response<Self::StreamResultsStream>, Status> {
        let call = self.gate.admit(&request, Method::StreamResults).await?;
        let pb::StreamResultsRequest { job_id } = request.into_inner();
        let result = async { Ok((job_id.clone(), self.engine()?.stream_job_results(job_id).await?)) }.await;
        // Recorded before the first pair leaves: the job id names what is read.
        let touched = |(job_id, _): &(String, _)| Touched { detail: format!("job={job_id}"), ..Touched::default() };
        let (metadata, (_, items), _) = self.gate.finish(call, Vec::new(), result, touched).await?.into_parts();
        use pb::stream_results_response::Item;
        let stream = tokio_stream::wrappers::ReceiverStream::new(items).map(|item| match item {
            Ok(ResultItem::Pair(p)) => Ok(pb::StreamResultsResponse { item: Some(Item::Pair(p.into())) }),
            Ok(ResultItem::Cluster(subject_ids)) => {
                Ok(pb::StreamResultsResponse { item: Some(Item::Cluster(pb::DuplicateCluster { subject_ids })) })
            }
            Err(e) => Err(Status::from(e)),
        });
        let mut response = Response::new(Box::pin(stream) as Self::StreamResultsStream);
        *response.metadata_mut() = metadata; // the request id
        Ok(response)
    }

    #[instrument(skip_all)]
    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let call = self.gate.admit(&request, Method::CancelJob).await?;
        let pb::CancelJobRequest { job_id } = request.into_inner();
        let result =
            async { Ok(pb::CancelJobResponse { job: Some(self.engine()?.cancel_job(job_id).await?.into()) }) }.await;
        self.gate.finish(call, Vec::new(), result, |r| job_touched(r.job.as_ref())).await
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
            Some(pb::start_dedup_request::Scope::Enrolled(pb::TimeWindow { start_time, end_time })) => {
                Scope::Enrolled {
                    from_ms: unix_ms(start_time, "enrolled.start_time")?,
                    to_ms: unix_ms(end_time, "enrolled.end_time")?,
                }
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
            eta: (s.eta > 0.0).then(|| duration(s.eta)),
            pairs: s.pairs,
            threshold: s.threshold,
            threshold_basis: s.basis,
            subjects: s.subjects,
            templates: s.templates,
            create_time: Some(timestamp(r.created_ms)),
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
