//! A cluster on one PostgreSQL: a node of the whole gallery, two shard
//! nodes (the second with two replicas) and a routing node. The router's
//! Identify equals the whole node's (same candidates, same scores, same
//! decision); a replica stopped under a stream of Identify calls fails no
//! call; with both replicas of a shard gone Identify names the shard, or
//! lists it in a partial answer without a decision when asked; Verify
//! through the router equals the whole node's, and names a lost shard. A dedup job
//! shared by two shard nodes, one killed midway, ends with a single node's pairs.

use std::time::{Duration, Instant};

use cotejo::api::pb;

use crate::common::{
    ChildServer, TestServer, client, config, enroll_req, face_embedding, face_image, fixture, identify_req,
    jobs_client, postgres::TempPostgres,
};

/// A unit vector for subject `i`, and a probe near it (`noise` > 0).
pub(crate) fn vector(i: usize, dim: usize, noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.5).collect();
    v[i % dim] += 3.0;
    v[(i + 1) % dim] += noise;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

struct Node {
    server: TestServer,
    _dir: tempfile::TempDir,
}

async fn node(url: &str, shard: &str, route: Option<String>) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "7a".repeat(32);
    let mut overrides = vec![
        ("COTEJO__STORE__URL", url.to_owned()),
        ("COTEJO__STORE__ENCRYPTION_KEY", key),
        ("COTEJO__CLUSTER__SHARD", shard.to_owned()),
    ];
    if let Some(r) = route {
        overrides.push(("COTEJO__CLUSTER__SHARDS", r));
    }
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Node { server: TestServer::start(config(dir.path(), &overrides)).await, _dir: dir }
}

/// What an answer says: candidates (id, score to 1e-4), decision (match, subject, threshold).
type Said = (Vec<(String, i64)>, Option<(bool, String, i64)>);

fn said(r: &pb::IdentifyResponse) -> Said {
    let candidates = r.candidates.iter().map(|c| (c.subject_id.clone(), (c.score * 1e4).round() as i64)).collect();
    let decision = r.decision.as_ref().map(|d| (d.is_match, d.subject_id.clone(), (d.threshold * 1e4).round() as i64));
    (candidates, decision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_shards_behind_a_router_answer_as_one_node_and_survive_a_replica() {
    let pg = TempPostgres::start();
    let whole = node(&pg.url, "0/1", None).await;
    let shard0 = node(&pg.url, "0/2", None).await;
    let shard1a = node(&pg.url, "1/2", None).await;
    let shard1b = node(&pg.url, "1/2", None).await;
    let route = format!("[[\"{}\"], [\"{}\", \"{}\"]]", shard0.server.url, shard1a.server.url, shard1b.server.url);
    let router = node(&pg.url, "0/1", Some(route)).await;

    let mut w = whole.server.client.clone();
    let stats = w.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    // Enrolled through the router: written to PostgreSQL, followed by every node.
    let mut r = router.server.client.clone();
    let n = 40;
    for i in 0..n {
        r.enroll(enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i, dim, 0.0))]))
            .await
            .expect("enroll");
    }
    let probe = |i: usize| identify_req(vec![face_embedding(&model, vector(i, dim, 0.3))]);
    // Every node follows the change log: wait until the whole node and the router agree.
    let start = Instant::now();
    for i in [0, n - 1] {
        loop {
            let a = w.identify(probe(i)).await.expect("whole").into_inner();
            let b = r.identify(probe(i)).await.expect("router").into_inner();
            let top = |r: &pb::IdentifyResponse| r.candidates.first().is_some_and(|c| c.subject_id == format!("s{i}"));
            if said(&a) == said(&b) && top(&a) {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "the shards did not catch up: {a:?} vs {b:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The same candidates, scores and decisions for every probe, N = 40 on both.
    for i in 0..n {
        let a = w.identify(probe(i)).await.expect("whole").into_inner();
        let b = r.identify(probe(i)).await.expect("router").into_inner();
        assert_eq!(said(&a), said(&b), "probe {i}");
        assert_eq!(a.candidates[0].subject_id, format!("s{i}"));
        assert!(b.decision.as_ref().is_some_and(|d| d.is_match), "probe {i}: {b:?}");
    }
    // Images: the router extracts a probe once and the shards search its
    // templates; the answer equals that of the whole node, which extracts it
    // itself, and says what the router's extraction found.
    r.enroll(enroll_req("face-a", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll a face image");
    r.enroll(enroll_req("finger-a", vec![crate::jobs::finger(2, "p1_1.png")])).await.expect("enroll a print");
    for (who, sample) in
        [("face-a", face_image(fixture("obama2.jpg"))), ("finger-a", crate::jobs::finger(2, "p1_2.png"))]
    {
        let probe = identify_req(vec![sample]);
        let start = Instant::now();
        let (a, b) = loop {
            let a = w.identify(probe.clone()).await.expect("whole").into_inner();
            let b = r.identify(probe.clone()).await.expect("router").into_inner();
            if said(&a) == said(&b) && a.candidates.first().is_some_and(|c| c.subject_id == who) {
                break (a, b);
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{who}: {a:?} vs {b:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(a.probes, b.probes, "{who}: the router reports its own extraction");
        assert!(b.decision.as_ref().is_some_and(|d| d.is_match && d.subject_id == who), "{b:?}");
    }

    // Verify goes to the subject's shard: the whole node's scores and decisions.
    let verify = |i: usize| pb::VerifyRequest {
        subject_id: format!("s{i}"),
        samples: vec![face_embedding(&model, vector(i, dim, 0.3))],
        target_fmr: 0.0,
    };
    let scored = |v: pb::VerifyResponse| ((v.score * 1e4).round() as i64, v.decision.map(|d| d.is_match));
    for i in 0..n {
        let a = w.verify(verify(i)).await.expect("whole").into_inner();
        let b = r.verify(verify(i)).await.expect("router").into_inner();
        assert_eq!(scored(a), scored(b), "verify s{i}");
    }
    let unknown = r.verify(pb::VerifyRequest { subject_id: "nobody".into(), ..verify(0) }).await.expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Each shard node holds its own subjects only.
    let mut s0 = shard0.server.client.clone();
    let own = s0.identify(probe(0)).await.expect("shard 0").into_inner();
    let owner = cotejo::shard::Shard::of("s0", 2).index;
    assert_eq!(own.candidates.iter().any(|c| c.subject_id == "s0"), owner == 0);

    // A replica of shard 1 stops while Identify calls stream: none fails.
    let streaming = {
        let mut r = r.clone();
        let probes: Vec<_> = (0..n).map(probe).collect();
        tokio::spawn(async move {
            for round in 0..3 {
                for (i, p) in probes.iter().enumerate() {
                    let found = r.identify(p.clone()).await.unwrap_or_else(|e| panic!("round {round} probe {i}: {e}"));
                    assert_eq!(found.into_inner().candidates[0].subject_id, format!("s{i}"));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    shard1a.server.stop().await;
    streaming.await.expect("no failed call while a replica stopped");

    // Both replicas gone: UNAVAILABLE naming shard 1/2, or a flagged partial answer.
    shard1b.server.stop().await;
    let e = r.identify(probe(1)).await.expect_err("a shard is missing");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("shard 1/2"), "{}", e.message());
    let partial = r
        .identify(pb::IdentifyRequest { allow_partial: true, ..probe(1) })
        .await
        .expect("a partial answer")
        .into_inner();
    assert_eq!(partial.missing_shards, ["1/2"]);
    assert!(partial.decision.is_none(), "a partial answer decides nothing");
    assert!(!partial.candidates.is_empty());
    // Verify of a subject of shard 1/2 names it; of shard 0/2 still answers.
    let on = |k: u32| (0..n).find(|i| cotejo::shard::Shard::of(&format!("s{i}"), 2).index == k).expect("a subject");
    let e = r.verify(verify(on(1))).await.expect_err("its shard is gone");
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("shard 1/2"), "{}", e.message());
    r.verify(verify(on(0))).await.expect("shard 0/2 answers");
    for n in [router, shard0, whole] {
        n.server.stop().await;
    }
}

#[test]
fn a_shard_or_a_route_without_postgresql_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    for flags in [["--shard", "1/2"], ["--route", "http://127.0.0.1:1"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cotejo"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(flags)
            .env("COTEJO__MODELS__DIR", crate::common::models_dir())
            .env_remove("COTEJO__STORE__URL")
            .output()
            .expect("run cotejo serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} started");
        assert!(stderr.contains("need store.url"), "{flags:?}: {stderr}");
    }
}

/// Slow blocks (8 face rows, then a pause), so that a job outlasts a kill.
const SLOW_JOBS: [(&str, &str); 2] = [("COTEJO__JOBS__FACE_BLOCK_ROWS", "8"), ("COTEJO__JOBS__BLOCK_PAUSE_MS", "100")];

/// The jobs test's synthetic faces, and one finger seen twice (the second
/// impression stretched by its scanner) beside another finger.
async fn enroll_gallery(url: &str) {
    crate::jobs::enroll_synthetic(url).await;
    let mut c = client(url).await;
    let (enrolled, stretched) = crate::finger::stretched_impressions();
    c.enroll(enroll_req("f-a", vec![crate::finger::iso(4, enrolled)])).await.expect("enroll");
    c.enroll(enroll_req("f-b", vec![crate::finger::iso(4, stretched)])).await.expect("enroll");
    c.enroll(enroll_req("f-other", vec![crate::jobs::finger(4, "p2_1.png")])).await.expect("enroll");
}

async fn dedup(url: &str) -> (pb::Job, (Vec<pb::DuplicatePair>, Vec<Vec<String>>)) {
    let mut jobs = jobs_client(url).await;
    let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner().job.expect("job");
    let done = crate::jobs::wait_done(&mut jobs, &job.job_id).await;
    (done, crate::jobs::results(&mut jobs, &job.job_id).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_shared_by_shard_nodes_survives_a_killed_worker_with_a_single_nodes_pairs() {
    // A single node's answer (whichever store this run tests).
    let single_dir = tempfile::tempdir().expect("tempdir");
    let single = ChildServer::start_with(single_dir.path(), &SLOW_JOBS).await;
    enroll_gallery(&single.url).await;
    let (single_job, reference) = dedup(&single.url).await;
    drop(single);
    assert_eq!(single_job.state, pb::JobState::Done as i32, "{single_job:?}");
    assert_eq!(reference.0.len(), 6, "five planted faces and the stretched finger: {:?}", reference.0);

    // Two shard nodes on one PostgreSQL, the job started on the first.
    let pg = TempPostgres::start();
    let db = pg.new_database();
    let key = "5c".repeat(32);
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let shard = format!("{i}/2");
        let mut env: Vec<(&str, &str)> = SLOW_JOBS.to_vec();
        env.extend([
            ("COTEJO__STORE__URL", db.as_str()),
            ("COTEJO__STORE__ENCRYPTION_KEY", key.as_str()),
            ("COTEJO__CLUSTER__SHARD", shard.as_str()),
        ]);
        nodes.push(ChildServer::start_with(dir.path(), &env).await);
    }
    enroll_gallery(&nodes[0].url).await;
    let mut jobs = jobs_client(&nodes[0].url).await;
    let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner().job.expect("job");
    let get = |jobs: &mut cotejo::api::pb::jobs_service_client::JobsServiceClient<_>| {
        let req = pb::GetJobRequest { job_id: job.job_id.clone() };
        let mut jobs = jobs.clone();
        async move { jobs.get_job(req).await.expect("get").into_inner().job.expect("job") }
    };
    let (mut before, mut last) = (0, None);
    for _ in 0..600 {
        let j = get(&mut jobs).await;
        last = Some(j.clone());
        if j.done >= 10 {
            assert!(j.done < j.total, "the job finished before the kill: {j:?}");
            before = j.done;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(before > 0, "the job never progressed: {last:?}");
    // Killed between blocks or holding one: its claim ends with its connection.
    nodes.remove(0).kill9();
    let mut jobs = jobs_client(&nodes[0].url).await;
    let done = crate::jobs::wait_done(&mut jobs, &job.job_id).await;
    assert_eq!(done.state, pb::JobState::Done as i32, "{done:?}");
    assert_eq!(done.done, done.total, "{done:?}");
    let shared = crate::jobs::results(&mut jobs, &job.job_id).await;
    let pairs = |r: &(Vec<pb::DuplicatePair>, Vec<Vec<String>>)| -> Vec<(String, String, i64)> {
        r.0.iter().map(|p| (p.a.clone(), p.b.clone(), (p.score * 1e4).round() as i64)).collect()
    };
    assert_eq!(pairs(&shared), pairs(&reference));
    assert_eq!(shared.1, reference.1);
    // Both nodes committed blocks, each block once.
    let (pg_client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let row = pg_client
        .query_one("SELECT COUNT(DISTINCT done_by), COUNT(*), COUNT(*) FILTER (WHERE done) FROM job_blocks", &[])
        .await
        .expect("blocks");
    let (workers, blocks, finished): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(workers, 2, "the killed node's blocks and the survivor's");
    assert_eq!((blocks, finished), (done.total as i64, done.total as i64));
}
