//! Unit tests of the ISO/IEC 19794-2 parser and writer.

use std::path::{Path, PathBuf};

use super::*;

fn minutia(kind: MinutiaKind, x: u16, y: u16, angle: u8, quality: u8) -> IsoMinutia {
    IsoMinutia { kind, x, y, angle, quality }
}

fn sample() -> IsoRecord {
    IsoRecord {
        width: 300,
        height: 400,
        resolution_x: 197,
        resolution_y: 197,
        capture_equipment: 0x1ABC,
        views: vec![
            FingerView {
                position: 2,
                view_number: 0,
                impression_type: 0,
                quality: 80,
                minutiae: vec![
                    minutia(MinutiaKind::RidgeEnding, 0, 0, 0, 100),
                    minutia(MinutiaKind::Bifurcation, 299, 399, 255, 0),
                    minutia(MinutiaKind::Other, 150, 200, 64, 55),
                ],
                extended: vec![],
            },
            FingerView {
                position: 10,
                view_number: 15,
                impression_type: 8,
                quality: 100,
                minutiae: vec![],
                // a ridge-count area: type 0x0001, length 0x0007, one 3-byte entry
                extended: vec![0x00, 0x01, 0x00, 0x07, 0x00, 0x01, 0x05],
            },
        ],
    }
}

/// A 300x400 one-view record header followed by `view_bytes`, with a correct length field.
fn raw_record(view_bytes: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"FMR\0 20\0");
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&[0x00, 0x00, 0x01, 0x2C, 0x01, 0x90, 0x00, 0xC5, 0x00, 0xC5, 0x01, 0x00]);
    b.extend_from_slice(view_bytes);
    fix_len(b)
}

/// Sets the record-length field (if there is one) to the actual length.
fn fix_len(mut b: Vec<u8>) -> Vec<u8> {
    let len = u32::try_from(b.len()).unwrap().to_be_bytes();
    if let Some(field) = b.get_mut(8..12) {
        field.copy_from_slice(&len);
    }
    b
}

fn out_of_range(result: Result<impl std::fmt::Debug, IsoError>, expected_field: &str) {
    match result {
        Err(IsoError::ValueOutOfRange { field, .. }) if field == expected_field => {}
        other => panic!("expected ValueOutOfRange {{ field: {expected_field:?} }}, got {other:?}"),
    }
}

/// Parses; if that succeeds, write must succeed and re-parse to the same record.
fn check_round_trip_invariant(bytes: &[u8]) {
    if let Ok(record) = parse(bytes) {
        let encoded = write(&record).unwrap_or_else(|e| panic!("parsed record did not re-encode: {e}"));
        assert_eq!(parse(&encoded).unwrap(), record);
    }
}

#[test]
fn round_trip_synthetic_record() {
    let record = sample();
    let bytes = write(&record).unwrap();
    assert_eq!(bytes.len(), 24 + (4 + 3 * 6 + 2) + (4 + 2 + 7));
    assert_eq!(parse(&bytes).unwrap(), record);
    assert_eq!(write(&parse(&bytes).unwrap()).unwrap(), bytes);
}

#[test]
fn round_trip_extreme_values() {
    let minutiae: Vec<_> = (0..=254u8)
        .map(|i| minutia(MinutiaKind::Bifurcation, MAX_COORDINATE, MAX_COORDINATE - u16::from(i), i, 100))
        .collect();
    let view = FingerView {
        position: 0,
        view_number: 1,
        impression_type: 3,
        quality: 0,
        minutiae,
        extended: vec![0xAB; usize::from(u16::MAX)],
    };
    let record = IsoRecord {
        width: u16::MAX,
        height: u16::MAX,
        resolution_x: u16::MAX,
        resolution_y: 0,
        capture_equipment: u16::MAX,
        views: vec![view; 255],
    };
    let bytes = write(&record).unwrap();
    assert_eq!(bytes.len(), 24 + 255 * (4 + 255 * 6 + 2 + 65535));
    assert_eq!(parse(&bytes).unwrap(), record);
}

#[test]
fn encodes_the_documented_layout() {
    let record = IsoRecord {
        width: 300,
        height: 400,
        resolution_x: 197,
        resolution_y: 198,
        capture_equipment: 0x0102,
        views: vec![FingerView {
            position: 7,
            view_number: 2,
            impression_type: 1,
            quality: 60,
            minutiae: vec![minutia(MinutiaKind::Bifurcation, 0xA5, 0x30, 0x6B, 42)],
            extended: vec![0xEE],
        }],
    };
    let expected: Vec<u8> = [
        &b"FMR\0 20\0"[..],
        &[0x00, 0x00, 0x00, 0x25], // 37 bytes
        &[0x01, 0x02, 0x01, 0x2C, 0x01, 0x90, 0x00, 0xC5, 0x00, 0xC6, 0x01, 0x00],
        &[0x07, 0x21, 0x3C, 0x01],
        &[0x80, 0xA5, 0x00, 0x30, 0x6B, 0x2A],
        &[0x00, 0x01, 0xEE],
    ]
    .concat();
    assert_eq!(write(&record).unwrap(), expected);
    assert_eq!(parse(&expected).unwrap(), record);
}

#[test]
fn reserved_bits_are_ignored_and_written_as_zero() {
    let mut bytes = raw_record(&[0, 0, 0, 1, 0x40, 0x10, 0xC0, 0x20, 0x01, 0x02, 0, 0]);
    bytes[23] = 0x7F; // reserved header byte
    let record = parse(&bytes).unwrap();
    assert_eq!(record.views[0].minutiae, vec![minutia(MinutiaKind::RidgeEnding, 0x10, 0x20, 1, 2)]);
    let rewritten = write(&record).unwrap();
    assert_eq!(rewritten[23], 0);
    assert_eq!(rewritten[24 + 4 + 2], 0x00);
}

#[test]
fn rejects_short_input() {
    assert_eq!(parse(&[]), Err(IsoError::TooShort { len: 0 }));
    assert_eq!(parse(b"FM"), Err(IsoError::TooShort { len: 2 }));
    assert_eq!(parse(b"FMR\0 20\0\0\0\0\x18"), Err(IsoError::TooShort { len: 12 }));
}

#[test]
fn rejects_bad_magic() {
    let mut bytes = write(&sample()).unwrap();
    bytes[0] = b'X';
    assert_eq!(parse(&bytes), Err(IsoError::BadMagic { found: *b"XMR\0" }));
    assert_eq!(parse(b"\x89PNG"), Err(IsoError::BadMagic { found: *b"\x89PNG" }));
}

#[test]
fn rejects_other_versions() {
    let mut bytes = write(&sample()).unwrap();
    bytes[4..8].copy_from_slice(b"030\0");
    let err = parse(&bytes).unwrap_err();
    assert_eq!(err, IsoError::UnsupportedVersion { found: *b"030\0" });
    assert!(err.to_string().contains("\"030\\x00\""), "{err}");
}

#[test]
fn rejects_length_mismatch_and_padding() {
    let bytes = write(&sample()).unwrap();
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 4]);
    let declared = u32::try_from(bytes.len()).unwrap();
    assert_eq!(parse(&padded), Err(IsoError::LengthMismatch { declared, actual: bytes.len() + 4 }));
    assert_eq!(parse(&bytes[..bytes.len() - 1]), Err(IsoError::LengthMismatch { declared, actual: bytes.len() - 1 }));
    let mut huge = bytes;
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(parse(&huge), Err(IsoError::LengthMismatch { declared: u32::MAX, .. })));
}

#[test]
fn rejects_zero_views() {
    let mut bytes = raw_record(&[]);
    bytes[22] = 0;
    assert_eq!(parse(&bytes), Err(IsoError::NoViews));
}

#[test]
fn rejects_zero_image_size() {
    let mut bytes = raw_record(&[0, 0, 0, 0, 0, 0]);
    bytes[14..16].copy_from_slice(&[0, 0]);
    out_of_range(parse(&bytes), "image width");
    let mut bytes = raw_record(&[0, 0, 0, 0, 0, 0]);
    bytes[16..18].copy_from_slice(&[0, 0]);
    out_of_range(parse(&bytes), "image height");
}

#[test]
fn rejects_bad_finger_position_and_quality() {
    out_of_range(parse(&raw_record(&[11, 0, 0, 0, 0, 0])), "finger position");
    out_of_range(parse(&raw_record(&[0, 0, 101, 0, 0, 0])), "finger quality");
    assert!(parse(&raw_record(&[10, 0xF8, 100, 0, 0, 0])).is_ok());
}

#[test]
fn rejects_minutiae_outside_the_image() {
    // image is 300 x 400: x = 300 and y = 400 are just outside
    let err = parse(&raw_record(&[0, 0, 0, 1, 0x41, 0x2C, 0x00, 0x10, 0, 0, 0, 0])).unwrap_err();
    assert_eq!(err, IsoError::ValueOutOfRange { field: "minutia x", value: 300, min: 0, max: 299 });
    assert_eq!(err.to_string(), "minutia x is 300, outside the allowed range 0..=299");
    out_of_range(parse(&raw_record(&[0, 0, 0, 1, 0x40, 0x10, 0x01, 0x90, 0, 0, 0, 0])), "minutia y");
    assert!(parse(&raw_record(&[0, 0, 0, 1, 0x41, 0x2B, 0x01, 0x8F, 0, 0, 0, 0])).is_ok());
}

#[test]
fn rejects_bad_minutia_quality_and_type() {
    out_of_range(parse(&raw_record(&[0, 0, 0, 1, 0x40, 0x10, 0x00, 0x10, 0, 101, 0, 0])), "minutia quality");
    out_of_range(parse(&raw_record(&[0, 0, 0, 1, 0xC0, 0x10, 0x00, 0x10, 0, 0, 0, 0])), "minutia type");
}

#[test]
fn rejects_minutiae_count_beyond_the_data() {
    // claims 3 minutiae, carries 1 (plus 2 bytes that would have been the extended length)
    let err = parse(&raw_record(&[0, 0, 0, 3, 0x40, 0x10, 0x00, 0x10, 0, 0, 0, 0])).unwrap_err();
    assert_eq!(err, IsoError::Truncated { what: "minutiae", offset: 28, needed: 18, available: 8 });
}

#[test]
fn rejects_truncated_extended_data() {
    let err = parse(&raw_record(&[0, 0, 0, 0, 0x00, 0x05, 1, 2, 3])).unwrap_err();
    assert_eq!(err, IsoError::Truncated { what: "extended data", offset: 30, needed: 5, available: 3 });
    let err = parse(&raw_record(&[0, 0, 0, 0, 0x00])).unwrap_err();
    assert!(matches!(err, IsoError::Truncated { what: "extended data length", .. }), "{err:?}");
}

#[test]
fn rejects_missing_views_and_trailing_bytes() {
    let mut two_views_claimed = raw_record(&[0, 0, 0, 0, 0, 0]);
    two_views_claimed[22] = 2;
    let err = parse(&two_views_claimed).unwrap_err();
    assert!(matches!(err, IsoError::Truncated { what: "finger position", offset: 30, .. }), "{err:?}");
    assert_eq!(parse(&raw_record(&[0, 0, 0, 0, 0, 0, 0, 0])), Err(IsoError::TrailingBytes { offset: 30, count: 2 }));
}

#[test]
fn write_validates_fields() {
    let with_view = |f: &dyn Fn(&mut FingerView)| {
        let mut r = sample();
        f(&mut r.views[0]);
        write(&r)
    };
    out_of_range(with_view(&|v| v.position = 11), "finger position");
    out_of_range(with_view(&|v| v.view_number = 16), "view number");
    out_of_range(with_view(&|v| v.impression_type = 16), "impression type");
    out_of_range(with_view(&|v| v.quality = 101), "finger quality");
    out_of_range(with_view(&|v| v.minutiae[0].quality = 101), "minutia quality");
    out_of_range(with_view(&|v| v.minutiae[0].x = 300), "minutia x");
    out_of_range(with_view(&|v| v.minutiae[0].y = 400), "minutia y");
    out_of_range(with_view(&|v| v.minutiae = vec![v.minutiae[0]; 256]), "minutiae count");
    out_of_range(with_view(&|v| v.extended = vec![0; 65536]), "extended data length");

    let mut wide = sample();
    wide.width = u16::MAX;
    wide.views[0].minutiae[0].x = MAX_COORDINATE + 1; // inside the image, but not 14-bit
    out_of_range(write(&wide), "minutia x");

    let mut r = sample();
    r.views.clear();
    assert_eq!(write(&r), Err(IsoError::NoViews));
    let mut r = sample();
    r.views = vec![r.views[1].clone(); 256];
    out_of_range(write(&r), "finger view count");
    let mut r = sample();
    r.height = 0;
    out_of_range(write(&r), "image height");
}

#[test]
fn angle_conversions() {
    assert_eq!(angle_radians(0), 0.0);
    assert!((angle_radians(64) - std::f32::consts::FRAC_PI_2).abs() < 1e-6);
    assert!((angle_radians(1).to_degrees() - 1.40625).abs() < 1e-5);
    for a in 0..=255u8 {
        assert_eq!(angle_from_radians(angle_radians(a)), a);
        assert_eq!(angle_from_radians(angle_radians(a) + TAU), a);
        assert_eq!(angle_from_radians(angle_radians(a) - TAU), a);
    }
    assert_eq!(angle_from_radians(-std::f32::consts::FRAC_PI_2), 192);
    assert_eq!(angle_from_radians(TAU - 1e-4), 0);
    assert_eq!(angle_from_radians(-1e-7), 0);
    assert_eq!(angle_from_radians(f32::NAN), 0);
    assert_eq!(angle_from_radians(f32::INFINITY), 0);
    assert_eq!(angle_from_radians(f32::MAX), angle_from_radians(f32::MAX.rem_euclid(TAU)));
}

#[test]
fn truncations_and_byte_mutations_never_panic() {
    let bytes = write(&sample()).unwrap();
    for end in 0..bytes.len() {
        assert!(parse(&bytes[..end]).is_err());
        check_round_trip_invariant(&fix_len(bytes[..end].to_vec()));
    }
    for i in 0..bytes.len() {
        for v in [0x00, 0xFF, 0x7F, 0x80, bytes[i] ^ 0x01, bytes[i] ^ 0x40, bytes[i].wrapping_add(1)] {
            let mut m = bytes.clone();
            m[i] = v;
            check_round_trip_invariant(&m);
            check_round_trip_invariant(&fix_len(m));
        }
    }
}

fn fvc2002_files() -> Option<Vec<PathBuf>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/fingerprints/fvc2002");
    assert!(root.is_dir(), "{} not found", root.display());
    let mut files = Vec::new();
    for db in std::fs::read_dir(&root).unwrap() {
        let db = db.unwrap().path();
        if db.is_dir() {
            for f in std::fs::read_dir(&db).unwrap() {
                let f = f.unwrap().path();
                if f.extension().is_some_and(|e| e == "iso") {
                    files.push(f);
                }
            }
        }
    }
    files.sort();
    Some(files)
}

#[test]
#[ignore = "needs ../shared/data/fingerprints/fvc2002 (scripts/test.sh runs it where present)"]
fn fvc2002_templates_parse_and_re_encode_byte_identically() {
    let Some(files) = fvc2002_files() else { return };
    assert!(!files.is_empty(), "no .iso files found under the FVC2002 directory");
    let mut total_minutiae = 0;
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let record = parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(write(&record).unwrap(), bytes, "{} did not re-encode byte-identically", path.display());
        assert!((100..=1000).contains(&record.resolution_x), "{}: resolution {}", path.display(), record.resolution_x);
        for view in &record.views {
            assert!(view.minutiae.len() > 5, "{}: only {} minutiae", path.display(), view.minutiae.len());
            total_minutiae += view.minutiae.len();
        }
    }
    eprintln!("FVC2002: {} templates, {total_minutiae} minutiae, all byte-identical", files.len());
}

#[test]
#[ignore = "needs ../shared/data/fingerprints/fvc2002 (scripts/test.sh runs it where present)"]
fn fvc2002_template_mutations_never_panic() {
    let Some(files) = fvc2002_files() else { return };
    let Some(first) = files.first() else { return };
    let bytes = std::fs::read(first).unwrap();
    for i in 0..bytes.len() {
        for v in [0x00, 0xFF, 0x80, bytes[i] ^ 0x01, bytes[i] ^ 0x40] {
            let mut m = bytes.clone();
            m[i] = v;
            check_round_trip_invariant(&m);
            check_round_trip_invariant(&fix_len(m));
        }
    }
}
