//! Listings a page at a time: every subject exactly once in id order, a
//! watchlist's members only, jobs newest first; a token used with another
//! filter, or not ours, and an oversized page are refused by name.

use cotejo::api::pb;

use crate::common::{TestServer, config, enroll_req, face_embedding, jobs_client, reason};

/// Every subject of a listing, fetched `page_size` at a time, and the pages.
async fn all_subjects(
    c: &mut pb::biometrics_service_client::BiometricsServiceClient<tonic::transport::Channel>,
    page_size: u32,
    watchlist: &str,
) -> (Vec<pb::SubjectSummary>, usize) {
    let (mut out, mut pages, mut page_token) = (Vec::new(), 0, String::new());
    loop {
        let req = pb::ListSubjectsRequest { page_size, page_token, watchlist: watchlist.into() };
        let page = c.list_subjects(req).await.expect("list").into_inner();
        pages += 1;
        assert!(page_size == 0 || page.subjects.len() <= page_size as usize);
        out.extend(page.subjects);
        if page.next_page_token.is_empty() {
            return (out, pages);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_and_jobs_are_listed_a_page_at_a_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let model = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().models[0].clone();
    let dim = model.dimension as usize;
    for i in [4usize, 0, 3, 1, 2] {
        let mut v = vec![0.0f32; dim];
        v[i] = 1.0;
        let mut req = enroll_req(&format!("s-{i}"), vec![face_embedding(&model.model_id, v)]);
        if i % 2 == 0 {
            req.watchlists = vec!["even".into()];
        }
        c.enroll(req).await.expect("enroll");
    }
    // A second encounter shows in the counts.
    let mut v = vec![0.0f32; dim];
    v[3] = 1.0;
    let mut again = enroll_req("s-3", vec![face_embedding(&model.model_id, v)]);
    again.add_encounter = true;
    c.enroll(again).await.expect("encounter");

    let (all, pages) = all_subjects(&mut c, 2, "").await;
    let ids: Vec<&str> = all.iter().map(|s| s.subject_id.as_str()).collect();
    assert_eq!(ids, ["s-0", "s-1", "s-2", "s-3", "s-4"]);
    assert_eq!(pages, 3);
    let s3 = &all[3];
    assert_eq!((s3.encounters, s3.templates), (2, 2));
    assert!(s3.create_time.as_ref().is_some_and(|t| t.seconds > 1_700_000_000), "{s3:?}");
    assert_eq!(all[0].watchlists, ["even"]);
    // One page holding everything has no next token.
    assert_eq!(all_subjects(&mut c, 0, "").await.1, 1);
    let (even, _) = all_subjects(&mut c, 1, "even").await;
    assert_eq!(even.iter().map(|s| s.subject_id.as_str()).collect::<Vec<_>>(), ["s-0", "s-2", "s-4"]);

    // A token is bound to its filter; a made-up token and a huge page are refused.
    let first = c
        .list_subjects(pb::ListSubjectsRequest { page_size: 1, page_token: String::new(), watchlist: "even".into() })
        .await
        .expect("list")
        .into_inner();
    let refused = |r: Result<tonic::Response<pb::ListSubjectsResponse>, tonic::Status>| {
        let e = r.expect_err("refused");
        (e.code(), reason(&e))
    };
    let bad = |page_size: u32, page_token: &str| pb::ListSubjectsRequest {
        page_size,
        page_token: page_token.into(),
        watchlist: String::new(),
    };
    let invalid = |r: &str| (tonic::Code::InvalidArgument, r.to_owned());
    assert_eq!(refused(c.list_subjects(bad(1, &first.next_page_token)).await), invalid("INVALID_PAGE_TOKEN"));
    assert_eq!(refused(c.list_subjects(bad(1, "not-a-token")).await), invalid("INVALID_PAGE_TOKEN"));
    assert_eq!(refused(c.list_subjects(bad(5000, "")).await), invalid("INVALID_PAGE_SIZE"));

    // Jobs: newest first, across pages.
    let mut jobs = jobs_client(&server.url).await;
    let mut started = Vec::new();
    for _ in 0..3 {
        let job = jobs.start_dedup(pb::StartDedupRequest::default()).await.expect("start").into_inner();
        started.push(job.job.expect("job").job_id);
    }
    let (mut listed, mut page_token) = (Vec::new(), String::new());
    loop {
        let page = jobs.list_jobs(pb::ListJobsRequest { page_size: 2, page_token }).await.expect("jobs").into_inner();
        listed.extend(page.jobs.into_iter().map(|j| {
            assert!(j.create_time.is_some(), "{j:?}");
            j.job_id
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    started.reverse();
    assert_eq!(listed, started);
    let e = jobs
        .list_jobs(pb::ListJobsRequest { page_size: 1, page_token: first.next_page_token })
        .await
        .expect_err("a subjects token");
    assert_eq!(reason(&e), "INVALID_PAGE_TOKEN");
    server.stop().await;
}
