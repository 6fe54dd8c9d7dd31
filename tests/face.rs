//! Faces end to end: enroll real photos, identify and verify.

use crate::common::{TestServer, config, enroll_req, face_image, fixture, identify_req};
use cotejo::api::pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_identify_verify_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();

    for (who, file) in [("obama", "obama3.jpg"), ("biden", "biden.jpg"), ("hanks", "hanks_aligned.png")] {
        let r = c.enroll(enroll_req(who, vec![face_image(fixture(file))])).await.expect("enroll").into_inner();
        assert_eq!(r.subject_id, who);
        assert_eq!(r.samples.len(), 1);
        assert_eq!(r.samples[0].faces_found, 1);
        assert!(r.samples[0].quality > 0.9, "detector confidence {}", r.samples[0].quality);
    }

    // Another photo of an enrolled person: rank 1 and a positive decision.
    let r = c.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify").into_inner();
    let d = r.decision.expect("decision");
    assert_eq!(r.candidates[0].subject_id, "obama");
    assert!(d.is_match, "score {} threshold {}", r.candidates[0].score, d.threshold);
    assert_eq!(d.subject_id, "obama");
    assert!(!d.threshold_basis.is_empty());
    assert!(r.candidates[0].score > r.candidates[1].score);
    assert_eq!(r.candidates[0].scores[0].modality, pb::Modality::Face as i32);

    // 1:1: the right subject matches, the wrong one does not.
    // obama.jpg has a second, smaller face in the background: verify uses the main one.
    let probe = || vec![face_image(fixture("obama.jpg"))];
    let v = c
        .verify(pb::VerifyRequest { subject_id: "obama".into(), samples: probe(), target_fmr: 0.0 })
        .await
        .expect("verify")
        .into_inner();
    assert!(v.decision.expect("decision").is_match, "score {}", v.score);
    let v = c
        .verify(pb::VerifyRequest { subject_id: "biden".into(), samples: probe(), target_fmr: 0.0 })
        .await
        .expect("verify")
        .into_inner();
    assert!(!v.decision.expect("decision").is_match, "score {}", v.score);

    // Deleted subjects are never returned again.
    let d = c.delete(pb::DeleteRequest { subject_id: "obama".into() }).await.expect("delete").into_inner();
    assert_eq!(d.templates_removed, 1);
    let r = c.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify").into_inner();
    assert!(r.candidates.iter().all(|c| c.subject_id != "obama"));
    assert!(!r.decision.expect("decision").is_match);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_enrolled_person_is_not_matched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    for (who, file) in [("obama", "obama3.jpg"), ("hanks", "hanks_aligned.png")] {
        c.enroll(enroll_req(who, vec![face_image(fixture(file))])).await.expect("enroll");
    }
    let r = c.identify(identify_req(vec![face_image(fixture("biden.jpg"))])).await.expect("identify").into_inner();
    let d = r.decision.expect("decision");
    assert!(
        !d.is_match,
        "biden matched {:?} at {}",
        r.candidates.first().map(|c| &c.subject_id),
        r.candidates[0].score
    );
    assert!(d.subject_id.is_empty());
    assert_eq!(r.candidates.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_faces_need_the_main_face_option() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let group = || vec![face_image(fixture("group.jpg"))];
    let e = c.enroll(enroll_req("group", group())).await.expect_err("several faces");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(crate::common::reason(&e), "MULTIPLE_FACES");
    let mut req = enroll_req("group", group());
    req.use_main_face = true;
    let r = c.enroll(req).await.expect("main face").into_inner();
    assert!(r.samples[0].faces_found > 1);
    assert!(r.samples[0].main_face_used);
    // Identify uses the main face and says so.
    let r = c.identify(identify_req(group())).await.expect("identify").into_inner();
    assert!(r.probes[0].main_face_used);
    assert_eq!(r.candidates[0].subject_id, "group");
    assert!(r.candidates[0].scores[0].raw_score > 0.99);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_format_and_grayscale() {
    use std::io::Cursor;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll");
    c.enroll(enroll_req("obama", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll");
    let photo = image::load_from_memory(&fixture("biden.jpg")).expect("decode");
    let gray = image::DynamicImage::ImageLuma8(photo.to_luma8());
    for (what, img, format) in [
        ("png", &photo, image::ImageFormat::Png),
        ("tiff", &photo, image::ImageFormat::Tiff),
        ("bmp", &photo, image::ImageFormat::Bmp),
        ("grayscale pgm", &gray, image::ImageFormat::Pnm),
        ("grayscale jpeg", &gray, image::ImageFormat::Jpeg),
    ] {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).expect("encode");
        let r = c.identify(identify_req(vec![face_image(bytes)])).await.expect(what).into_inner();
        assert_eq!(r.candidates[0].subject_id, "biden", "{what}");
        assert!(r.decision.expect("decision").is_match, "{what}: score {}", r.candidates[0].score);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchlist_restricts_the_search() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let mut req = enroll_req("obama", vec![face_image(fixture("obama3.jpg"))]);
    req.watchlists = vec!["watch".into()];
    c.enroll(req).await.expect("enroll");
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll");
    let s = c
        .get_subject(pb::GetSubjectRequest { subject_id: "obama".into() })
        .await
        .expect("get")
        .into_inner()
        .subject
        .expect("subject");
    assert_eq!(s.watchlists, vec!["watch".to_owned()]);

    let search = |file: &str, watchlist: &str| {
        let mut r = identify_req(vec![face_image(fixture(file))]);
        r.watchlist = watchlist.into();
        r
    };
    let r = c.identify(search("obama2.jpg", "watch")).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "obama");
    assert!(r.decision.expect("decision").is_match);
    // Biden is enrolled but not on the watchlist: never a candidate there.
    let r = c.identify(search("biden.jpg", "watch")).await.expect("identify").into_inner();
    assert!(r.candidates.iter().all(|c| c.subject_id != "biden"), "{:?}", r.candidates);
    let d = r.decision.expect("decision");
    assert!(!d.is_match);
    assert!(d.threshold_basis.contains("over 1 subject"), "{}", d.threshold_basis);
    let e = c.identify(search("biden.jpg", "nobody-here")).await.expect_err("unknown watchlist");
    assert_eq!((e.code(), crate::common::reason(&e).as_str()), (tonic::Code::NotFound, "WATCHLIST_NOT_FOUND"));
    // Deleting a member empties the watchlist.
    c.delete(pb::DeleteRequest { subject_id: "obama".into() }).await.expect("delete");
    let e = c.identify(search("obama2.jpg", "watch")).await.expect_err("empty watchlist");
    assert_eq!(e.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_enroll_returns_the_first_answer_and_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let req = |who: &str, id: &str, add: bool| pb::EnrollRequest {
        request_id: id.into(),
        add_encounter: add,
        ..enroll_req(who, vec![face_image(fixture("obama3.jpg"))])
    };
    let first = c.enroll(req("obama", "desk-12/0001", false)).await.expect("enroll").into_inner();
    assert!(!first.replayed);
    // The retry of a first enroll: the same answer, not ALREADY_EXISTS, nothing added.
    let again = c.enroll(req("obama", "desk-12/0001", false)).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!((again.encounter_id.as_str(), again.samples.len()), (first.encounter_id.as_str(), first.samples.len()));
    assert_eq!(again.samples[0].quality, first.samples[0].quality);
    // A new key adds an encounter, once.
    let second = c.enroll(req("obama", "desk-12/0002", true)).await.expect("encounter").into_inner();
    let retried = c.enroll(req("obama", "desk-12/0002", true)).await.expect("retry").into_inner();
    assert_eq!(second.encounter_id, retried.encounter_id);
    let subject = c
        .get_subject(pb::GetSubjectRequest { subject_id: "obama".into() })
        .await
        .expect("get")
        .into_inner()
        .subject
        .expect("subject");
    assert_eq!(subject.encounters.len(), 2);
    assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, 1);
    // A key names one enroll: another subject with it is refused.
    let e = c.enroll(req("biden", "desk-12/0001", false)).await.expect_err("reused key");
    assert_eq!((e.code(), crate::common::reason(&e).as_str()), (tonic::Code::InvalidArgument, "REQUEST_ID_REUSED"));
    // The replay is audited too.
    let log = crate::security::audit_log(dir.path());
    assert_eq!(log.iter().filter(|e| e.method == "Enroll" && e.outcome == "OK").count(), 4, "{log:?}");
    server.stop().await;
}
