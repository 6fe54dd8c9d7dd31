//! The `cotejo.v1.Biometrics` service: validate, convert, call the engine,
//! convert back.

use std::sync::{Arc, OnceLock};

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::pb::{self, biometrics_server::Biometrics};
use crate::engine::Engine;

/// gRPC front of the engine; answers UNAVAILABLE until the engine is ready.
#[derive(Debug, Clone)]
pub struct BiometricsApi {
    engine: Arc<OnceLock<Arc<Engine>>>,
}

impl BiometricsApi {
    /// A service that serves once `engine` is set.
    pub fn new(engine: Arc<OnceLock<Arc<Engine>>>) -> Self {
        Self { engine }
    }

    fn engine(&self) -> Result<&Engine, Status> {
        super::ready(&self.engine)
    }
}

#[tonic::async_trait]
impl Biometrics for BiometricsApi {
    #[instrument(skip_all)]
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        let req = request.into_inner().try_into()?;
        let out = self.engine()?.enroll(req).await?;
        Ok(Response::new(out.into()))
    }

    #[instrument(skip_all)]
    async fn identify(&self, request: Request<pb::IdentifyRequest>) -> Result<Response<pb::IdentifyResponse>, Status> {
        let req = request.into_inner().try_into()?;
        let out = self.engine()?.identify(req).await?;
        Ok(Response::new(out.into()))
    }

    #[instrument(skip_all)]
    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let req = request.into_inner().try_into()?;
        let out = self.engine()?.verify(req).await?;
        Ok(Response::new(out.into()))
    }

    #[instrument(skip_all)]
    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let pb::DeleteRequest { subject_id } = request.into_inner();
        let removed = self.engine()?.delete(subject_id.clone()).await?;
        Ok(Response::new(pb::DeleteResponse {
            subject_id,
            templates_removed: u32::try_from(removed).unwrap_or(u32::MAX),
        }))
    }

    #[instrument(skip_all)]
    async fn get_subject(&self, request: Request<pb::GetSubjectRequest>) -> Result<Response<pb::Subject>, Status> {
        let pb::GetSubjectRequest { subject_id } = request.into_inner();
        let s = self.engine()?.subject(subject_id).await?;
        Ok(Response::new(s.into()))
    }

    #[instrument(skip_all)]
    async fn export_templates(
        &self,
        request: Request<pb::ExportTemplatesRequest>,
    ) -> Result<Response<pb::ExportTemplatesResponse>, Status> {
        let pb::ExportTemplatesRequest { subject_id } = request.into_inner();
        let templates = self.engine()?.export_fingers(subject_id).await?;
        Ok(Response::new(pb::ExportTemplatesResponse { templates: templates.into_iter().map(Into::into).collect() }))
    }

    #[instrument(skip_all)]
    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let pb::StatsRequest {} = request.into_inner();
        let s = self.engine()?.stats().await?;
        Ok(Response::new(s.into()))
    }
}
