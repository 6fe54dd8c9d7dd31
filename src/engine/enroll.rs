//! Enroll: validate, answer a retried request id with its first answer,
//! extract the templates, store them (durable on return, audited in the
//! same transaction), then add them to the face index and finger index.

use std::sync::{Arc, RwLock, atomic::Ordering};

use tracing::{error, info};

use super::{
    Derived, Engine, EngineError, EnrollOutcome, EnrollRequest, MAX_WATCHLISTS, SampleReport, derived::DerivedIndex,
    face_index::FaceIndexSpec, read, validate_name, validate_subject_id,
};
use crate::{
    biometric::{NewTemplate, TemplateData},
    finger::{index::FingerIndex, mcc::Template, template},
    index::VectorIndex,
    store::{Actor, EnrollReplay, Enrolled, ReadPool, RequestKey},
};

/// A finger template to add to the gallery: its place among the request's
/// templates, its position and its matcher form.
type FingerTemplate = (usize, u8, Template);

impl Engine {
    /// Stores a subject's samples; durable when this returns. The audit
    /// log's entry names `actor`, in the same transaction. With a request id
    /// already used, the first answer comes back and nothing is stored.
    pub async fn enroll(&self, req: EnrollRequest, actor: &Actor) -> Result<EnrollOutcome, EngineError> {
        let EnrollRequest { subject_id, samples, add_encounter, use_main_face, watchlists, request_id } = req;
        check(&subject_id, &watchlists, &request_id)?;
        // A retry is answered before the models run.
        if let Some(first) = self.first_answer(&request_id).await? {
            return replayed(first, &subject_id);
        }
        self.writable()?;
        let probes = self.extract_all(&samples, use_main_face).await?;
        let templates: Vec<NewTemplate> = probes.iter().map(|p| p.template.clone()).collect();
        let reports: Vec<SampleReport> = probes.into_iter().map(|p| p.report).collect();
        let reports_json = serde_json::to_string(&reports).map_err(|e| EngineError::Internal(e.to_string()))?;
        // Matcher templates are built before taking any lock.
        let finger_templates = matcher_templates(&templates)?;
        let (records, writes, indexes, subjects) =
            (self.records.clone(), self.writes.clone(), self.indexes(), self.subjects.clone());
        let following = self.following.is_some();
        let reads = self.local_reads.clone();
        let (sid, actor) = (subject_id.clone(), actor.clone());
        let done = tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let key =
                (!request_id.is_empty()).then_some(RequestKey { request_id: &request_id, samples: &reports_json });
            if following {
                // The indexes follow the change log, in its order.
                let enrolled = records.enroll(&sid, add_encounter, &templates, &watchlists, &actor, key)?;
                return Ok((enrolled, 0, 0));
            }
            // Store first, then the indexes, with no deletion between them.
            let _ordered = writes.lock().map_err(|_| EngineError::Internal("write lock poisoned".into()))?;
            let enrolled = records.enroll(&sid, add_encounter, &templates, &watchlists, &actor, key)?;
            if enrolled.replay.is_some() {
                // A concurrent retry committed first: nothing new to index.
                return Ok((enrolled, 0, 0));
            }
            if !add_encounter {
                subjects.fetch_add(1, Ordering::Relaxed);
            }
            let (faces, fingers) = indexes.add(reads.as_ref(), &sid, &templates, finger_templates, &enrolled)?;
            Ok((enrolled, faces, fingers))
        })
        .await??;
        let (enrolled, faces, fingers) = done;
        if let Some(first) = enrolled.replay {
            return replayed(first, &subject_id);
        }
        self.wait_for_own(&subject_id, enrolled.seq).await;
        self.note_changes(Derived::Faces, faces as u64);
        self.note_changes(Derived::Fingers, fingers as u64);
        info!(templates = enrolled.template_ids.len(), encounter = enrolled.encounter_id, "enrolled");
        Ok(EnrollOutcome { subject_id, encounter_id: enrolled.encounter_id, samples: reports, replayed: false })
    }

    /// The first answer to `request_id`, if it was used (none for an empty id).
    async fn first_answer(&self, request_id: &str) -> Result<Option<EnrollReplay>, EngineError> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let id = request_id.to_owned();
        read(&self.records, move |r| r.enroll_request(&id)).await
    }

    fn indexes(&self) -> Indexes {
        Indexes { faces: self.faces.clone(), fingers: self.fingers.clone(), face_spec: self.face_spec.clone() }
    }
}

/// The subject id, watchlist names and request id of an enroll.
fn check(subject_id: &str, watchlists: &[String], request_id: &str) -> Result<(), EngineError> {
    validate_subject_id(subject_id)?;
    if !request_id.is_empty() {
        validate_name(request_id).map_err(|reason| EngineError::invalid("INVALID_REQUEST_ID", "request_id", reason))?;
    }
    if watchlists.len() > MAX_WATCHLISTS {
        let why = format!("at most {MAX_WATCHLISTS} per request");
        return Err(EngineError::invalid("TOO_MANY_WATCHLISTS", "watchlists", why));
    }
    for (i, g) in watchlists.iter().enumerate() {
        validate_name(g)
            .map_err(|reason| EngineError::invalid("INVALID_WATCHLIST_NAME", format!("watchlists[{i}]"), reason))?;
    }
    Ok(())
}

/// The matcher form of every finger template of a request.
fn matcher_templates(templates: &[NewTemplate]) -> Result<Vec<FingerTemplate>, EngineError> {
    templates
        .iter()
        .enumerate()
        .filter_map(|(i, t)| match &t.data {
            TemplateData::Minutiae(iso) => Some((i, t.finger_position, template::matcher_template(iso))),
            TemplateData::Embedding(_) => None,
        })
        .map(|(i, p, t)| t.map(|t| (i, p, t)).map_err(|e| EngineError::Internal(format!("own template: {e}"))))
        .collect()
}

/// The derived indexes an enroll adds to.
struct Indexes {
    faces: Arc<RwLock<VectorIndex>>,
    fingers: Arc<RwLock<FingerIndex>>,
    face_spec: Arc<FaceIndexSpec>,
}

impl Indexes {
    /// Adds the stored templates (ids from `enrolled`); how many faces and
    /// fingers. A face index that fails to take them is rebuilt from the
    /// store: the enroll is durable and acknowledged.
    fn add(
        &self,
        reads: Option<&Arc<ReadPool>>,
        subject_id: &str,
        templates: &[NewTemplate],
        finger_templates: Vec<FingerTemplate>,
        enrolled: &Enrolled,
    ) -> Result<(usize, usize), EngineError> {
        let owner: Arc<str> = subject_id.into();
        let (mut ids, mut owners, mut vectors) = (Vec::new(), Vec::new(), Vec::new());
        for (t, id) in templates.iter().zip(&enrolled.template_ids) {
            if let TemplateData::Embedding(v) = &t.data {
                ids.push(*id);
                owners.push(owner.clone());
                vectors.extend_from_slice(v);
            }
        }
        let mut g = self.faces.write().map_err(|_| EngineError::Internal("index lock poisoned".into()))?;
        if let Err(e) = g.add(&ids, &owners, &vectors) {
            error!(error = %e, "index update failed after commit; rebuilding the index from the store");
            let reads = reads.ok_or_else(|| EngineError::Internal(format!("face index update: {e}")))?;
            *g = self.face_spec.rebuild(&*reads.get()?)?;
        }
        let mut f = self.fingers.write().map_err(|_| EngineError::Internal("finger lock poisoned".into()))?;
        let fingers = finger_templates.len();
        for (i, position, t) in finger_templates {
            if let Some(id) = enrolled.template_ids.get(i) {
                f.add(*id, owner.clone(), position, t);
            }
        }
        Ok((ids.len(), fingers))
    }
}

/// The first answer to a request id, for a retry of the same enroll; the
/// id of another subject's enroll is refused.
fn replayed(first: EnrollReplay, subject_id: &str) -> Result<EnrollOutcome, EngineError> {
    if first.subject_id != subject_id {
        return Err(EngineError::invalid(
            "REQUEST_ID_REUSED",
            "request_id",
            format!("already used for the enroll of another subject (encounter {})", first.encounter_id),
        ));
    }
    let samples = serde_json::from_str(&first.samples).map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok(EnrollOutcome { subject_id: first.subject_id, encounter_id: first.encounter_id, samples, replayed: true })
}
