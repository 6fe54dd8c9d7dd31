//! Bad input gets a typed error and changes nothing stored.

use std::io::Cursor;

use cotejo::api::pb;
use tonic::Code;

use crate::common::{
    TestServer, config, enroll_req, face_embedding, face_image, fields, fixture, identify_req, reason,
};

fn png(w: u32, h: u32, value: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::GrayImage::from_pixel(w, h, image::Luma([value]))
        .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode");
    out
}

async fn counts(
    c: &mut pb::biometrics_service_client::BiometricsServiceClient<tonic::transport::Channel>,
) -> (u64, u64, Vec<u64>) {
    let s = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    (s.subjects, s.encounters, s.templates.iter().map(|t| t.count).collect())
}

/// A refused enroll: what it is, the request, and the code, reason and
/// field the refusal must name.
type Case = (&'static str, pb::EnrollRequest, Code, &'static str, &'static str);

/// Every kind of bad enroll, each refused by name.
fn enroll_cases(jpeg: &[u8], model_id: &str, dim: usize) -> Vec<Case> {
    let jpeg = jpeg.to_vec();
    vec![
        (
            "empty bytes",
            enroll_req("x", vec![face_image(Vec::new())]),
            Code::InvalidArgument,
            "EMPTY_IMAGE",
            "samples[0].image",
        ),
        (
            "truncated jpeg",
            enroll_req("x", vec![face_image(jpeg[..jpeg.len() / 3].to_vec())]),
            Code::InvalidArgument,
            "CORRUPT_IMAGE",
            "samples[0].image",
        ),
        (
            "text file",
            enroll_req("x", vec![face_image(b"name,date\nalice,2020\n".to_vec())]),
            Code::InvalidArgument,
            "UNSUPPORTED_FORMAT",
            "samples[0].image",
        ),
        (
            "no face",
            enroll_req("x", vec![face_image(png(320, 240, 128))]),
            Code::InvalidArgument,
            "NO_FACE_FOUND",
            "samples[0].image",
        ),
        (
            "over the pixel limit",
            enroll_req("x", vec![face_image(png(3000, 2000, 0))]),
            Code::InvalidArgument,
            "IMAGE_TOO_LARGE",
            "samples[0].image",
        ),
        (
            "over the byte limit",
            enroll_req("x", vec![face_image(vec![0xFF; 16 << 20])]),
            Code::InvalidArgument,
            "IMAGE_TOO_LARGE",
            "samples[0].image",
        ),
        (
            "missing subject id",
            enroll_req("", vec![face_image(jpeg.clone())]),
            Code::InvalidArgument,
            "INVALID_SUBJECT_ID",
            "subject_id",
        ),
        (
            "missing sample data",
            enroll_req("x", vec![pb::Sample { modality: pb::Modality::Face as i32, ..Default::default() }]),
            Code::InvalidArgument,
            "MISSING_SAMPLE_DATA",
            "samples[0].data",
        ),
        (
            "missing modality",
            enroll_req(
                "x",
                vec![pb::Sample { data: Some(pb::sample::Data::Image(jpeg.clone())), ..Default::default() }],
            ),
            Code::InvalidArgument,
            "INVALID_MODALITY",
            "samples[0].modality",
        ),
        ("no samples", enroll_req("x", vec![]), Code::InvalidArgument, "NO_SAMPLES", "samples"),
        (
            "duplicate subject",
            enroll_req("known", vec![face_image(jpeg.clone())]),
            Code::AlreadyExists,
            "SUBJECT_EXISTS",
            "subject_id",
        ),
        (
            "wrong dimension",
            enroll_req("x", vec![face_embedding(model_id, vec![0.1; dim + 1])]),
            Code::InvalidArgument,
            "WRONG_DIMENSION",
            "samples[0].face_embedding.values",
        ),
        (
            "unknown model",
            enroll_req("x", vec![face_embedding("arcface-r100", vec![0.1; dim])]),
            Code::InvalidArgument,
            "UNKNOWN_MODEL",
            "samples[0].face_embedding.model_id",
        ),
        (
            "NaN embedding",
            enroll_req("x", vec![face_embedding(model_id, vec![f32::NAN; dim])]),
            Code::InvalidArgument,
            "INVALID_EMBEDDING",
            "samples[0].face_embedding.values",
        ),
        (
            "finger position 0",
            enroll_req(
                "x",
                vec![pb::Sample {
                    modality: pb::Modality::Finger as i32,
                    finger_position: 0,
                    data: Some(pb::sample::Data::Image(png(300, 300, 200))),
                    ppi: 500,
                }],
            ),
            Code::InvalidArgument,
            "INVALID_FINGER_POSITION",
            "samples[0].finger_position",
        ),
        // A bad second sample rejects the whole request: the good first one is not stored either.
        (
            "one bad sample of two",
            enroll_req("x", vec![face_image(jpeg.clone()), face_image(Vec::new())]),
            Code::InvalidArgument,
            "EMPTY_IMAGE",
            "samples[1].image",
        ),
    ]
}

type Client = pb::biometrics_service_client::BiometricsServiceClient<tonic::transport::Channel>;

/// Deleting, reading or verifying a subject nobody enrolled.
async fn unknown_subjects_are_not_found(c: &mut Client, jpeg: &[u8]) {
    let jpeg = jpeg.to_vec();
    let e = c.delete(pb::DeleteRequest { subject_id: "nobody".into() }).await.expect_err("delete");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::NotFound, "SUBJECT_NOT_FOUND"));
    let e = c.get_subject(pb::GetSubjectRequest { subject_id: "nobody".into() }).await.expect_err("get");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .verify(pb::VerifyRequest {
            subject_id: "nobody".into(),
            samples: vec![face_image(jpeg.clone())],
            target_fmr: 0.0,
        })
        .await
        .expect_err("verify");
    assert_eq!(e.code(), Code::NotFound);
}

/// Identify, Verify and StartDedup validate their own fields and targets.
async fn searches_validate_their_fields(c: &mut Client, jobs_url: &str, jpeg: &[u8]) {
    let jpeg = jpeg.to_vec();
    let e = c.identify(identify_req(vec![face_image(b"GIF89a....".to_vec())])).await.expect_err("gif");
    assert_eq!(reason(&e), "UNSUPPORTED_FORMAT");
    let mut req = identify_req(vec![face_image(jpeg.clone())]);
    req.max_candidates = 1_000_000;
    let e = c.identify(req).await.expect_err("too many candidates");
    assert_eq!(fields(&e), vec!["max_candidates".to_owned()]);
    let mut req = identify_req(vec![face_image(jpeg.clone())]);
    req.target_fpir = 1.5;
    let e = c.identify(req).await.expect_err("target fpir");
    assert_eq!((e.code(), fields(&e)), (Code::InvalidArgument, vec!["target_fpir".to_owned()]));

    // Targets whose threshold no calibrated score can reach (they stop at 150 = FMR 1e-15)
    // are refused, not answered "no match" whatever the evidence.
    let mut req = identify_req(vec![face_image(jpeg.clone())]);
    req.target_fpir = 1e-16;
    let e = c.identify(req).await.expect_err("target fpir beyond the scale");
    assert_eq!((e.code(), fields(&e)), (Code::InvalidArgument, vec!["target_fpir".to_owned()]));
    assert!(e.message().contains("above 150"), "{e:?}");
    let mut req = identify_req(vec![face_image(fixture("obama2.jpg"))]);
    req.target_fpir = 1e-15; // one subject enrolled: per comparison 1e-15, still decidable
    assert!(c.identify(req).await.is_ok());
    let e = c
        .verify(pb::VerifyRequest {
            subject_id: "known".into(),
            samples: vec![face_image(jpeg.clone())],
            target_fmr: 1e-16,
        })
        .await
        .expect_err("target fmr beyond the scale");
    assert_eq!((e.code(), fields(&e)), (Code::InvalidArgument, vec!["target_fmr".to_owned()]));
    let e = super::common::jobs_client(jobs_url)
        .await
        .start_dedup(pb::StartDedupRequest {
            scope: None,
            modalities: vec![pb::Modality::Face as i32],
            target_fmr: 1e-20,
        })
        .await
        .expect_err("dedup target beyond the scale");
    assert_eq!((e.code(), fields(&e)), (Code::InvalidArgument, vec!["target_fmr".to_owned()]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_typed_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[("COTEJO__LIMITS__MAX_IMAGE_PIXELS", "4000000")])).await;
    let mut c = server.client.clone();
    c.enroll(enroll_req("known", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll");
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let model_id = stats.models[0].model_id.clone();
    let dim = stats.models[0].dimension as usize;
    let before = counts(&mut c).await;

    let jpeg = fixture("biden.jpg");
    for (what, req, code, why, field) in enroll_cases(&jpeg, &model_id, dim) {
        let e = c.enroll(req).await.expect_err(what);
        assert_eq!(e.code(), code, "{what}: {e:?}");
        assert_eq!(reason(&e), why, "{what}: {e:?}");
        assert_eq!(fields(&e), vec![field.to_owned()], "{what}");
        assert!(!e.message().is_empty());
    }

    unknown_subjects_are_not_found(&mut c, &jpeg).await;
    searches_validate_their_fields(&mut c, &server.url, &jpeg).await;
    assert_eq!(counts(&mut c).await, before, "a refused request changed the store");
    // The enrolled subject is still intact and identifiable.
    let r = c.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "known");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_is_typed_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[("COTEJO__SERVER__MAX_MESSAGE_BYTES", "1048576")])).await;
    let mut c = server.client.clone();
    // Refused by the transport's decoder, before the service reads it.
    let e = c.enroll(enroll_req("big", vec![face_image(vec![0; 2 << 20])])).await.expect_err("too large");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::OutOfRange, "MESSAGE_TOO_LARGE"), "{e:?}");
    assert!(e.message().contains("1048576 bytes at most"), "{e:?}");
    // The Jobs service decodes up to the same limit (not tonic's 4 MiB default).
    let ids: Vec<String> = (0..200_000).map(|i| format!("s-{i:07}")).collect();
    let scope = pb::start_dedup_request::Scope::Subjects(pb::SubjectList { subject_ids: ids });
    let req =
        pb::StartDedupRequest { scope: Some(scope), modalities: vec![pb::Modality::Face as i32], target_fmr: 0.0 };
    let e = super::common::jobs_client(&server.url).await.start_dedup(req).await.expect_err("too large");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::OutOfRange, "MESSAGE_TOO_LARGE"), "{e:?}");
    assert!(e.message().contains("1048576 bytes at most"), "{e:?}");
    // Under the limit, the service's own checks answer as before.
    let e = c.enroll(enroll_req("small", vec![face_image(vec![0; 1000])])).await.expect_err("not an image");
    assert_eq!(reason(&e), "UNSUPPORTED_FORMAT");
    assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, 0);
    server.stop().await;
}
