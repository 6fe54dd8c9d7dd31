//! De-duplication jobs: planted duplicates among singles are found (faces
//! and fingers), a different person is not paired, and a job killed midway
//! resumes after a restart and ends with the results of an uninterrupted run.

use std::time::Duration;

use cotejo::api::pb::{self, jobs_service_client::JobsServiceClient};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;

use crate::common::{
    ChildServer, TestServer, client, config, enroll_req, face_embedding, face_image, fixture, jobs_client, models_dir,
};

pub(crate) async fn wait_done(c: &mut JobsServiceClient<Channel>, id: &str) -> pb::Job {
    for _ in 0..1200 {
        let j =
            c.get_job(pb::GetJobRequest { job_id: id.into() }).await.expect("get job").into_inner().job.expect("job");
        if j.state != pb::JobState::Queued as i32 && j.state != pb::JobState::Running as i32 {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

pub(crate) async fn results(
    c: &mut JobsServiceClient<Channel>,
    id: &str,
) -> (Vec<pb::DuplicatePair>, Vec<Vec<String>>) {
    let mut s = c.stream_results(pb::StreamResultsRequest { job_id: id.into() }).await.expect("results").into_inner();
    let (mut pairs, mut clusters) = (Vec::new(), Vec::new());
    while let Some(item) = s.message().await.expect("stream") {
        match item.item {
            Some(pb::stream_results_response::Item::Pair(p)) => pairs.push(p),
            Some(pb::stream_results_response::Item::Cluster(c)) => clusters.push(c.subject_ids),
            None => {}
        }
    }
    (pairs, clusters)
}

pub(crate) fn finger(position: u32, name: &str) -> pb::Sample {
    let bytes = std::fs::read(models_dir().join("fixtures/fingers").join(name)).expect("print");
    pb::Sample {
        modality: pb::Modality::Finger as i32,
        finger_position: position,
        data: Some(pb::sample::Data::Image(bytes)),
        ppi: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_duplicates_are_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    // The same person under two ids (different photos), and singles.
    for (id, file) in
        [("case-1", "obama3.jpg"), ("case-2", "obama2.jpg"), ("biden", "biden.jpg"), ("hanks", "hanks_aligned.png")]
    {
        c.enroll(enroll_req(id, vec![face_image(fixture(file))])).await.expect("enroll");
    }
    // One finger enrolled twice under different ids, and another finger.
    c.enroll(enroll_req("f-1", vec![finger(2, "p1_1.png")])).await.expect("enroll");
    c.enroll(enroll_req("f-2", vec![finger(2, "p1_2.png")])).await.expect("enroll");
    c.enroll(enroll_req("f-3", vec![finger(2, "p2_1.png")])).await.expect("enroll");

    let mut jobs = jobs_client(&server.url).await;
    let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner().job.expect("job");
    let job_id_all = job.job_id.clone();
    let done = wait_done(&mut jobs, &job.job_id).await;
    assert_eq!(done.state, pb::JobState::Done as i32, "{done:?}");
    assert_eq!(done.done, done.total);
    let (pairs, clusters) = results(&mut jobs, &job.job_id).await;
    let found: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
    assert_eq!(found.len(), 2, "{pairs:?}");
    assert!(found.contains(&("case-1", "case-2")) && found.contains(&("f-1", "f-2")), "{found:?}");
    assert_eq!(clusters.len(), 2);
    for p in &pairs {
        assert!(p.score >= done.threshold && !p.scores.is_empty());
    }
    // Scoped to faces of three subjects: only the planted pair among them.
    let scope = pb::start_dedup_request::Scope::Subjects(pb::SubjectList {
        subject_ids: vec!["case-1".into(), "biden".into(), "hanks".into()],
    });
    let req =
        pb::StartDedupRequest { scope: Some(scope), modalities: vec![pb::Modality::Face as i32], target_fmr: 0.0 };
    let job = jobs.start_dedup(req).await.expect("start").into_inner().job.expect("job");
    wait_done(&mut jobs, &job.job_id).await;
    assert!(results(&mut jobs, &job.job_id).await.0.is_empty(), "a different person was paired");
    // Deletion is final: the deleted subject leaves the job's results too.
    c.delete(pb::DeleteRequest { subject_id: "f-2".into() }).await.expect("delete");
    let (pairs, _) = results(&mut jobs, &job_id_all).await;
    assert!(pairs.iter().all(|p| p.a != "f-2" && p.b != "f-2"), "{pairs:?}");
    // The count a finished job reports follows the deletion (it was counted, 2, before it).
    assert_eq!(done.pairs, 2);
    let after = jobs.get_job(pb::GetJobRequest { job_id: job_id_all.clone() }).await.expect("job").into_inner();
    assert_eq!(after.job.expect("job").pairs, 1);
    let e = jobs.get_job(pb::GetJobRequest { job_id: "999".into() }).await.expect_err("unknown job");
    assert_eq!(e.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_pairs_templates_stretched_by_their_scanner() {
    // Two ISO records of one finger, the second stretched by 4/3 along y (see
    // `finger::stretched_impressions`): in the declared frame alone they hardly match.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let (enrolled, stretched) = crate::finger::stretched_impressions();
    c.enroll(enroll_req("s-a", vec![crate::finger::iso(4, enrolled)])).await.expect("enroll");
    c.enroll(enroll_req("s-b", vec![crate::finger::iso(4, stretched)])).await.expect("enroll");
    c.enroll(enroll_req("other", vec![finger(4, "p2_1.png")])).await.expect("enroll");
    let mut jobs = jobs_client(&server.url).await;
    let req = pb::StartDedupRequest { scope: None, modalities: vec![pb::Modality::Finger as i32], target_fmr: 0.0 };
    let job = jobs.start_dedup(req).await.expect("start").into_inner().job.expect("job");
    let done = wait_done(&mut jobs, &job.job_id).await;
    assert_eq!(done.state, pb::JobState::Done as i32, "{done:?}");
    let (pairs, _) = results(&mut jobs, &job.job_id).await;
    let found: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
    assert_eq!(found, [("s-a", "s-b")], "{pairs:?}");
    assert!(pairs[0].score >= done.threshold, "{pairs:?}");
    server.stop().await;
}

/// 600 synthetic subjects with 5 planted near-duplicates.
pub(crate) async fn enroll_synthetic(url: &str) {
    let mut c = client(url).await;
    let model = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().models[0].clone();
    let mut rng = StdRng::seed_from_u64(11);
    let random = |rng: &mut StdRng| -> Vec<f32> { (0..model.dimension).map(|_| rng.random::<f32>() - 0.5).collect() };
    for k in 0..5 {
        let v = random(&mut rng);
        let near: Vec<f32> = v.iter().map(|x| x + 0.02 * (rng.random::<f32>() - 0.5)).collect();
        c.enroll(enroll_req(&format!("dup-{k}-a"), vec![face_embedding(&model.model_id, v)])).await.expect("enroll");
        c.enroll(enroll_req(&format!("dup-{k}-b"), vec![face_embedding(&model.model_id, near)])).await.expect("enroll");
    }
    for i in 0..600 {
        let v = random(&mut rng);
        c.enroll(enroll_req(&format!("s-{i:04}"), vec![face_embedding(&model.model_id, v)])).await.expect("enroll");
    }
}

const SLOW_JOBS: [(&str, &str); 2] = [("COTEJO__JOBS__FACE_BLOCK_ROWS", "8"), ("COTEJO__JOBS__BLOCK_PAUSE_MS", "40")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_job_resumes_with_the_same_results() {
    // Uninterrupted reference run.
    let ref_dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start_with(ref_dir.path(), &SLOW_JOBS).await;
    enroll_synthetic(&server.url).await;
    let mut jobs = jobs_client(&server.url).await;
    let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner().job.expect("job");
    wait_done(&mut jobs, &job.job_id).await;
    let reference = results(&mut jobs, &job.job_id).await;
    drop(server);
    assert_eq!(reference.0.len(), 5, "{:?}", reference.0);

    // The same, killed midway and restarted.
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start_with(dir.path(), &SLOW_JOBS).await;
    enroll_synthetic(&server.url).await;
    let mut jobs = jobs_client(&server.url).await;
    let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner().job.expect("job");
    let mut before = 0;
    for _ in 0..600 {
        let j = jobs
            .get_job(pb::GetJobRequest { job_id: job.job_id.clone() })
            .await
            .expect("get")
            .into_inner()
            .job
            .expect("job");
        if j.done >= 10 {
            before = j.done;
            assert!(j.done < j.total, "the job finished before the kill: {j:?}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(before > 0, "the job never progressed");
    server.kill9();
    let server = ChildServer::start_with(dir.path(), &SLOW_JOBS).await;
    let mut jobs = jobs_client(&server.url).await;
    let after = jobs
        .get_job(pb::GetJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("get")
        .into_inner()
        .job
        .expect("job");
    assert!(after.done >= before, "finished blocks were lost: {} < {before}", after.done);
    let done = wait_done(&mut jobs, &job.job_id).await;
    assert_eq!((done.state, done.done), (pb::JobState::Done as i32, done.total));
    let resumed = results(&mut jobs, &job.job_id).await;
    let key = |p: &pb::DuplicatePair| (p.a.clone(), p.b.clone(), (p.score * 1e6).round() as i64);
    assert_eq!(
        resumed.0.iter().map(key).collect::<Vec<_>>(),
        reference.0.iter().map(key).collect::<Vec<_>>(),
        "resumed results differ from an uninterrupted run"
    );
    assert_eq!(resumed.1, reference.1);
}
