//! The `cotejo.v1.BiometricsService` service: admit, validate, convert, call the
//! engine, convert back, record.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::{
    EngineSlot,
    convert::sample_to_pb,
    gate::{Gate, Touched},
    pb::{self, biometrics_service_server::BiometricsService},
};
use crate::{
    admission::with_deadline,
    auth::Method,
    cluster::Router,
    engine::{Engine, IdentifyRequest, PageRequest},
};

/// gRPC front of the engine; answers UNAVAILABLE until the engine is ready.
#[derive(Debug, Clone)]
pub struct BiometricsApi {
    engine: Arc<EngineSlot>,
    gate: Gate,
    /// On a routing node: the shards Identify fans out to.
    router: Option<Arc<Router>>,
}

impl BiometricsApi {
    /// A service that serves once `engine` is set, its calls passing `gate`.
    pub fn new(engine: Arc<EngineSlot>, gate: Gate, router: Option<Arc<Router>>) -> Self {
        Self { engine, gate, router }
    }

    fn engine(&self) -> Result<Arc<Engine>, Status> {
        super::ready(&self.engine)
    }
}

/// The audit entry's share of a match decision.
fn decided(subjects: Vec<String>, decision: Option<&pb::Decision>, extra: String) -> Touched {
    let detail = match decision {
        Some(d) => format!("{extra} match={} threshold={:.2}", d.is_match, d.threshold),
        None => extra,
    };
    Touched { subjects, detail, recorded: false }
}

#[tonic::async_trait]
impl BiometricsService for BiometricsApi {
    #[instrument(skip_all)]
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let call = self.gate.admit(&request, Method::Enroll).await?;
        let asked = vec![request.get_ref().subject_id.clone()];
        let result = async {
            let req = request.into_inner().try_into()?;
            Ok(self.engine()?.enroll(req, &call.actor).await?.into())
        };
        let result = with_deadline(call.deadline, result).await;
        // The engine wrote the entry in the enroll's own transaction; a
        // replayed answer (a retried request id) wrote nothing, so it is recorded here.
        self.gate
            .finish(call, asked, result, |r: &pb::EnrollResponse| Touched {
                recorded: !r.replayed,
                detail: format!("replayed encounter={}", r.encounter_id),
                ..Touched::default()
            })
            .await
    }

    #[instrument(skip_all)]
    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        let call = self.gate.admit(&request, Method::Identify).await?;
        let deadline = call.deadline;
        let result = async {
            if let Some(router) = &self.router {
                // Extracted once here: the shards search templates, not samples.
                // (The samples move out: the images are not copied to be parsed.)
                let mut forwarded = request.into_inner();
                let samples = std::mem::take(&mut forwarded.samples);
                let parsed: IdentifyRequest = pb::IdentifyRequest { samples, ..forwarded.clone() }.try_into()?;
                let (templates, reports) = self.engine()?.extracted(&parsed.samples).await?;
                forwarded.samples = templates.into_iter().map(sample_to_pb).collect();
                let mut answer = router.identify(forwarded, deadline).await?;
                answer.probes = reports.into_iter().map(pb::SampleResult::from).collect();
                return Ok(answer);
            }
            let req = request.into_inner().try_into()?;
            Ok(pb::IdentifyResponse::from(self.engine()?.identify(req).await?))
        };
        let result = with_deadline(call.deadline, result).await;
        self.gate
            .finish(call, Vec::new(), result, |r| {
                let returned = r.candidates.iter().map(|c| c.subject_id.clone()).collect();
                decided(returned, r.decision.as_ref(), format!("candidates={}", r.candidates.len()))
            })
            .await
    }

    #[instrument(skip_all)]
    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let call = self.gate.admit(&request, Method::Verify).await?;
        let asked = vec![request.get_ref().subject_id.clone()];
        let deadline = call.deadline;
        let result = async {
            if let Some(router) = &self.router {
                return router.verify(request.into_inner(), deadline).await;
            }
            let req = request.into_inner().try_into()?;
            Ok(pb::VerifyResponse::from(self.engine()?.verify(req).await?))
        };
        let result = with_deadline(call.deadline, result).await;
        self.gate
            .finish(call, asked, result, |r| decided(Vec::new(), r.decision.as_ref(), format!("score={:.2}", r.score)))
            .await
    }

    #[instrument(skip_all)]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let call = self.gate.admit(&request, Method::Delete).await?;
        let pb::DeleteRequest { subject_id } = request.into_inner();
        let asked = vec![subject_id.clone()];
        let result = async {
            let removed = self.engine()?.delete(subject_id.clone(), &call.actor).await?;
            Ok(pb::DeleteResponse { subject_id, templates_removed: u32::try_from(removed).unwrap_or(u32::MAX) })
        }
        .await;
        self.gate.finish(call, asked, result, |_| Touched { recorded: true, ..Touched::default() }).await
    }

    #[instrument(skip_all)]
    async fn get_subject(
        &self,
        request: Request<pb::GetSubjectRequest>,
    ) -> Result<Response<pb::GetSubjectResponse>, Status> {
        let call = self.gate.admit(&request, Method::GetSubject).await?;
        let pb::GetSubjectRequest { subject_id } = request.into_inner();
        let asked = vec![subject_id.clone()];
        let result = async {
            let subject = self.engine()?.subject(subject_id).await?;
            Ok(pb::GetSubjectResponse { subject: Some(subject.into()) })
        }
        .await;
        self.gate
            .finish(call, asked, result, |r: &pb::GetSubjectResponse| Touched {
                detail: format!("encounters={}", r.subject.as_ref().map_or(0, |s| s.encounters.len())),
                ..Touched::default()
            })
            .await
    }

    #[instrument(skip_all)]
    async fn list_subjects(
        &self,
        request: Request<pb::ListSubjectsRequest>,
    ) -> Result<Response<pb::ListSubjectsResponse>, Status> {
        let call = self.gate.admit(&request, Method::ListSubjects).await?;
        let pb::ListSubjectsRequest { page_size, page_token, watchlist } = request.into_inner();
        let result = async {
            let page = self.engine()?.list_subjects(PageRequest { page_size, page_token }, watchlist.clone()).await?;
            Ok(pb::ListSubjectsResponse {
                subjects: page.items.into_iter().map(Into::into).collect(),
                next_page_token: page.next_page_token,
            })
        }
        .await;
        // The entry names the page's range rather than every id on it.
        self.gate
            .finish(call, Vec::new(), result, |r: &pb::ListSubjectsResponse| Touched {
                detail: format!(
                    "watchlist={watchlist} subjects={} first={} last={}",
                    r.subjects.len(),
                    r.subjects.first().map_or("", |s| s.subject_id.as_str()),
                    r.subjects.last().map_or("", |s| s.subject_id.as_str()),
                ),
                ..Touched::default()
            })
            .await
    }

    #[instrument(skip_all)]
    async fn export_templates(
        &self,
        request: Request<pb::ExportTemplatesRequest>,
    ) -> Result<Response<pb::ExportTemplatesResponse>, Status> {
        let call = self.gate.admit(&request, Method::ExportTemplates).await?;
        let pb::ExportTemplatesRequest { subject_id } = request.into_inner();
        let asked = vec![subject_id.clone()];
        let result = async {
            let templates = self.engine()?.export_fingers(subject_id).await?;
            Ok(pb::ExportTemplatesResponse { templates: templates.into_iter().map(Into::into).collect() })
        }
        .await;
        self.gate
            .finish(call, asked, result, |r| Touched {
                detail: format!("templates={}", r.templates.len()),
                ..Touched::default()
            })
            .await
    }

    #[instrument(skip_all)]
    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let call = self.gate.admit(&request, Method::Stats).await?;
        let pb::StatsRequest {} = request.into_inner();
        let result = async { Ok(self.engine()?.stats().await?.into()) }.await;
        self.gate.finish(call, Vec::new(), result, |_: &pb::StatsResponse| Touched::default()).await
    }
}
