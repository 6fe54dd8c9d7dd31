//! A site node: a cotejo node on a PostgreSQL streaming replica (a hot
//! standby near a consulate). It follows what the primary's nodes enroll,
//! answers Identify and Verify, records its calls in its own audit chain,
//! refuses writes with FAILED_PRECONDITION naming the primary, and keeps
//! answering when the primary is gone.

use std::time::{Duration, Instant};

use cotejo::api::pb;
use tokio_stream::StreamExt;

use crate::{
    cluster::vector,
    common::{TestServer, config, enroll_req, face_embedding, identify_req, postgres::TempPostgres, reason},
};

const PRIMARY: &str = "https://capital.example:50051";

async fn node(url: &str, dir: &std::path::Path) -> TestServer {
    let key = "3d".repeat(32);
    let overrides = [
        ("COTEJO__STORE__URL", url),
        ("COTEJO__STORE__ENCRYPTION_KEY", key.as_str()),
        ("COTEJO__STORE__PRIMARY", PRIMARY),
        ("COTEJO__CLUSTER__POLL_SECS", "1"),
    ];
    TestServer::start(config(dir, &overrides)).await
}

fn top(r: &pb::IdentifyResponse) -> Option<&str> {
    r.candidates.first().map(|c| c.subject_id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_node_on_a_replica_serves_reads_refuses_writes_and_outlives_the_primary() {
    let pg = TempPostgres::start();
    let db = pg.new_database();
    let (primary_dir, site_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let primary = node(&db, primary_dir.path()).await;
    let mut p = primary.client.clone();
    let stats = p.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let enroll = |i: usize| enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i, dim, 0.0))]);
    let probe = |i: usize| identify_req(vec![face_embedding(&model, vector(i, dim, 0.3))]);
    for i in 0..20 {
        p.enroll(enroll(i)).await.expect("enroll at the primary");
    }
    let replica = pg.replica();
    let site = node(&replica.url_of(&db), site_dir.path()).await;
    let mut s = site.client.clone();

    // What the primary's nodes enroll later reaches the site through the replica.
    p.enroll(enroll(20)).await.expect("enroll at the primary");
    let start = Instant::now();
    loop {
        let r = s.identify(probe(20)).await.expect("identify at the site").into_inner();
        if top(&r) == Some("s20") {
            assert!(r.decision.as_ref().is_some_and(|d| d.is_match && d.subject_id == "s20"), "{r:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the site never saw s20: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = s.identify(probe(3)).await.expect("identify").into_inner();
    assert_eq!(top(&r), Some("s3"));
    let v = s
        .verify(pb::VerifyRequest {
            subject_id: "s5".into(),
            samples: vec![face_embedding(&model, vector(5, dim, 0.3))],
            target_fmr: 0.0,
        })
        .await
        .expect("verify at the site")
        .into_inner();
    assert!(v.decision.is_some_and(|d| d.is_match));
    s.get_subject(pb::GetSubjectRequest { subject_id: "s7".into() }).await.expect("read at the site");

    // Writes are refused, naming the primary; nothing reaches the records.
    let refused = s.enroll(enroll(99)).await.expect_err("enroll at the site");
    assert_eq!((refused.code(), reason(&refused).as_str()), (tonic::Code::FailedPrecondition, "READ_ONLY_REPLICA"));
    assert!(refused.message().contains(PRIMARY), "{}", refused.message());
    let refused = s.delete(pb::DeleteRequest { subject_id: "s1".into() }).await.expect_err("delete at the site");
    assert_eq!(reason(&refused), "READ_ONLY_REPLICA");
    let mut jobs = crate::common::jobs_client(&site.url).await;
    let refused = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect_err("a job at the site");
    assert_eq!(reason(&refused), "READ_ONLY_REPLICA");
    p.get_subject(pb::GetSubjectRequest { subject_id: "s1".into() }).await.expect("s1 kept");
    p.get_subject(pb::GetSubjectRequest { subject_id: "s99".into() }).await.expect_err("s99 never written");

    // The site's calls are in its own audit chain, intact.
    let ch = tonic::transport::Endpoint::from_shared(site.url.clone()).expect("url").connect().await.expect("connect");
    let mut audit = pb::audit_service_client::AuditServiceClient::new(ch);
    let mut log = audit.read_log(pb::ReadLogRequest { from_seq: 1, limit: 0 }).await.expect("read log").into_inner();
    let mut methods = Vec::new();
    while let Some(e) = log.next().await {
        let e = e.expect("entry").entry.expect("entry");
        methods.push((e.method, e.outcome.split(':').next().unwrap_or_default().to_owned()));
    }
    for (method, outcome) in [("Identify", "OK"), ("Verify", "OK"), ("Enroll", "FailedPrecondition")] {
        assert!(methods.iter().any(|(m, o)| m == method && o == outcome), "{method} {outcome} in {methods:?}");
    }
    let verified = audit.verify_log(pb::VerifyLogRequest {}).await.expect("verify log").into_inner();
    assert!(verified.intact, "{verified:?}");

    // The primary gone (the link to the capital down): the site still answers.
    primary.stop().await;
    pg.kill();
    let r = s.identify(probe(11)).await.expect("identify without the primary").into_inner();
    assert_eq!(top(&r), Some("s11"));
    site.stop().await;
    drop(replica);
}
