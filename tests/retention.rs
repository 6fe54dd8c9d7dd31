//! Retention per watchlist: a subject past its watchlists' retention is
//! purged by the server, as an audited Delete, while subjects enrolled
//! since, kept by another watchlist or in none stay.

use std::time::Duration;

use cotejo::api::pb::{self, biometrics_service_client::BiometricsServiceClient};
use tonic::transport::Channel;

use crate::common::{TestServer, config, enroll_req, face_embedding};

async fn enroll(c: &mut BiometricsServiceClient<Channel>, model: &pb::ModelInfo, id: &str, i: usize, lists: &[&str]) {
    let mut v = vec![0.0f32; model.dimension as usize];
    v[i] = 1.0;
    let mut req = enroll_req(id, vec![face_embedding(&model.model_id, v)]);
    req.watchlists = lists.iter().map(|s| (*s).to_owned()).collect();
    c.enroll(req).await.expect("enroll");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_past_their_watchlists_retention_are_purged_and_audited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = [("COTEJO__RETENTION__WATCHLISTS__TRANSIT", "30"), ("COTEJO__RETENTION__PURGE_EVERY_SECS", "1")];
    let server = TestServer::start(config(dir.path(), &settings)).await;
    let mut c = server.client.clone();
    let model = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().models[0].clone();
    enroll(&mut c, &model, "old-transit", 0, &["transit"]).await;
    enroll(&mut c, &model, "old-kept", 1, &["transit", "wanted"]).await;
    enroll(&mut c, &model, "recent-transit", 2, &["transit"]).await;
    enroll(&mut c, &model, "old-unlisted", 3, &[]).await;
    server.stop().await;

    // 40 days pass for the "old" subjects' encounters.
    let forty_days_ago = cotejo::store::now_ms() - 40 * 86_400_000;
    let sql = format!("UPDATE encounters SET created_ms = {forty_days_ago} WHERE subject_id LIKE 'old-%'");
    assert_eq!(crate::common::postgres::execute(dir.path(), &sql), 3);

    let server = TestServer::start(config(dir.path(), &settings)).await;
    let mut c = server.client.clone();
    let gone = |r: Result<_, tonic::Status>| matches!(r, Err(s) if s.code() == tonic::Code::NotFound);
    let start = std::time::Instant::now();
    while !gone(c.get_subject(pb::GetSubjectRequest { subject_id: "old-transit".into() }).await) {
        assert!(start.elapsed() < Duration::from_secs(20), "old-transit not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for kept in ["old-kept", "recent-transit", "old-unlisted"] {
        c.get_subject(pb::GetSubjectRequest { subject_id: kept.into() }).await.expect(kept);
    }
    // Gone from the face index too.
    let mut probe = vec![0.0f32; model.dimension as usize];
    probe[0] = 1.0;
    let found = c
        .identify(crate::common::identify_req(vec![face_embedding(&model.model_id, probe)]))
        .await
        .expect("identify")
        .into_inner();
    assert!(found.candidates.iter().all(|x| x.subject_id != "old-transit"), "{found:?}");

    let ch = Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connect");
    let mut audit = pb::audit_service_client::AuditServiceClient::new(ch);
    let mut stream = audit.read_log(pb::ReadLogRequest { from_seq: 1, limit: 0 }).await.expect("read").into_inner();
    let mut purges = Vec::new();
    while let Some(e) = tokio_stream::StreamExt::next(&mut stream).await {
        let e = e.expect("entry").entry.expect("entry");
        if e.method == "RetentionPurge" {
            purges.push((e.caller, e.subject_ids, e.outcome));
        }
    }
    assert_eq!(purges, [("cotejo".to_owned(), vec!["old-transit".to_owned()], "OK".to_owned())]);
    assert!(audit.verify_log(pb::VerifyLogRequest {}).await.expect("verify").into_inner().intact);
    server.stop().await;
}
