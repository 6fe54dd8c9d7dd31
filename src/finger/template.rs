//! Finger templates as cotejo stores them: one ISO/IEC 19794-2:2005 record
//! with a single view, coordinates at 500 ppi (197 pixels per centimetre).
//! The stored form is the interchange form, so export is a copy, and an
//! imported record is normalised once (its view chosen, its coordinates
//! rescaled) so that every stored template compares alike.

use super::{
    aspect,
    iso19794_2::{self, FingerView, IsoError, IsoMinutia, IsoRecord, MinutiaKind},
    mcc, minutiae,
};

/// ISO resolution of stored templates: 500 ppi in pixels per centimetre.
pub const RESOLUTION_PPCM: u16 = 197;
/// Model id recorded by finger templates imported as ISO records (made by
/// the caller's extractor, not ours).
pub const IMPORTED_MODEL_ID: &str = "iso19794-2-import";
/// Id of the matcher every finger template is compared with; calibrations of
/// finger scores are made for it. MCC-16b with LSS-R, the best score over the
/// declared frame and the [`aspect::FACTORS`] hypotheses.
pub const MATCHER_ID: &str = "mcc16b-lssr-aspects-2";

/// ISO finger positions cotejo accepts: 1 (right thumb) to 10 (left little finger).
pub const POSITIONS: std::ops::RangeInclusive<u8> = 1..=10;

/// Why a finger template cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Not a well-formed ISO/IEC 19794-2:2005 record.
    #[error("malformed ISO/IEC 19794-2 template: {0}")]
    Iso(#[from] IsoError),
    /// The record's view disagrees with the sample's finger position.
    #[error("the template's finger view has position {found}, the sample says {expected}")]
    PositionMismatch { found: u8, expected: u8 },
    /// Several views and none for the sample's finger.
    #[error("the template has {views} finger views and none for position {expected}")]
    NoViewForPosition { views: usize, expected: u8 },
    /// A resolution outside what images are accepted at ([`super::pipeline::PPI_RANGE`]).
    #[error(
        "the template declares {x} x {y} pixels per centimetre; 99 to 787 (250 to 2000 ppi, as for images) are accepted"
    )]
    Resolution { x: u16, y: u16 },
    /// Rescaled to 500 ppi, the record would not fit the format's 14-bit coordinates.
    #[error(
        "at 500 ppi the template's image is {width} x {height} pixels, over the {max} a side a stored template \
         may have (14-bit coordinates)"
    )]
    TooLarge { width: u32, height: u32, max: u16 },
    /// Too few minutiae at distinct positions to match reliably.
    #[error("the template has {found} minutiae at distinct positions, at least {min} are needed")]
    TooFewMinutiae { found: usize, min: usize },
}

/// The resolutions, in pixels per centimetre, an imported record may declare:
/// those of [`super::pipeline::PPI_RANGE`] (250-2000 ppi).
pub const RESOLUTION_RANGE_PPCM: std::ops::RangeInclusive<u16> = 99..=787;

/// A stored template of LEADER minutiae found in a `width` x `height` 500 ppi image.
pub fn from_extraction(
    position: u8,
    width: u32,
    height: u32,
    found: &[minutiae::Minutia],
    quality: f32,
) -> Result<Vec<u8>, IsoError> {
    let clamp = |v: f32, max: u32| v.round().clamp(0.0, max.saturating_sub(1) as f32) as u16;
    let minutiae = found
        .iter()
        .take(255)
        .map(|m| IsoMinutia {
            kind: match m.kind {
                minutiae::Kind::RidgeEnding => MinutiaKind::RidgeEnding,
                minutiae::Kind::Bifurcation => MinutiaKind::Bifurcation,
                minutiae::Kind::Other => MinutiaKind::Other,
            },
            x: clamp(m.x, width),
            y: clamp(m.y, height),
            angle: iso19794_2::angle_from_radians(m.angle),
            quality: (m.quality * 100.0).round().clamp(0.0, 100.0) as u8,
        })
        .collect();
    iso19794_2::write(&one_view_record(position, side(width), side(height), (quality * 100.0).round() as u8, minutiae))
}

/// Normalises an imported record for the finger at `position`: picks its
/// view, rescales coordinates to 500 ppi, and checks the minutiae count.
pub fn import(bytes: &[u8], position: u8, min_minutiae: usize) -> Result<Vec<u8>, TemplateError> {
    let rec = iso19794_2::parse(bytes)?;
    let view = choose_view(&rec, position)?;
    let (rx, ry) = (rec.resolution_x, rec.resolution_y);
    if !RESOLUTION_RANGE_PPCM.contains(&rx) || !RESOLUTION_RANGE_PPCM.contains(&ry) {
        return Err(TemplateError::Resolution { x: rx, y: ry });
    }
    let (sx, sy) = (f32::from(RESOLUTION_PPCM) / f32::from(rx), f32::from(RESOLUTION_PPCM) / f32::from(ry));
    let scaled = |v: u16, s: f32| (f32::from(v) * s).round() as u32;
    let (w, h) = (scaled(rec.width, sx).max(1), scaled(rec.height, sy).max(1));
    let max = iso19794_2::MAX_COORDINATE;
    // Refused rather than clamped: what is stored (and exported) is what was sent, rescaled.
    let (Ok(width), Ok(height)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(TemplateError::TooLarge { width: w, height: h, max });
    };
    if width > max || height > max {
        return Err(TemplateError::TooLarge { width: w, height: h, max });
    }
    let scale = |v: u16, s: f32| u16::try_from(scaled(v, s)).unwrap_or(u16::MAX);
    let minutiae: Vec<IsoMinutia> = view
        .minutiae
        .iter()
        .map(|m| IsoMinutia {
            // Inside the image before rescaling, so at most one pixel over it after rounding.
            x: scale(m.x, sx).min(width - 1),
            y: scale(m.y, sy).min(height - 1),
            // A non-square pixel grid bends directions; ISO angles are coarse
            // (1.4 degrees) and scanners are square in practice, so the angle stays.
            ..*m
        })
        .collect();
    // Repeated minutiae (one position written several times) count once; on
    // the record's own grid, so that rescaling cannot merge neighbours.
    let distinct = view.minutiae.iter().map(|m| (m.x, m.y)).collect::<std::collections::HashSet<_>>().len();
    if distinct < min_minutiae {
        return Err(TemplateError::TooFewMinutiae { found: distinct, min: min_minutiae });
    }
    Ok(iso19794_2::write(&one_view_record(position, width, height, view.quality, minutiae))?)
}

/// The minutiae of a stored template, for the matcher.
pub fn matcher_minutiae(stored: &[u8]) -> Result<Vec<mcc::Minutia>, IsoError> {
    let rec = iso19794_2::parse(stored)?;
    Ok(rec.views.first().map(|v| v.minutiae.iter().map(mcc::Minutia::from).collect()).unwrap_or_default())
}

/// The MCC template of a stored template.
pub fn matcher_template(stored: &[u8]) -> Result<mcc::Template, IsoError> {
    Ok(mcc::Template::new(&matcher_minutiae(stored)?))
}

/// The stretched MCC templates of a stored template (see [`aspect`]).
pub fn matcher_stretched(stored: &[u8]) -> Result<aspect::Stretched, IsoError> {
    Ok(aspect::Stretched::new(&matcher_minutiae(stored)?))
}

/// All the MCC templates of a stored template: declared and stretched.
pub fn matcher_hypotheses(stored: &[u8]) -> Result<aspect::Hypotheses, IsoError> {
    Ok(aspect::Hypotheses::new(&matcher_minutiae(stored)?))
}

fn choose_view(rec: &IsoRecord, position: u8) -> Result<&FingerView, TemplateError> {
    if let [only] = rec.views.as_slice() {
        // Position 0 is "unknown": the sample's position stands.
        if only.position != 0 && only.position != position {
            return Err(TemplateError::PositionMismatch { found: only.position, expected: position });
        }
        return Ok(only);
    }
    rec.views
        .iter()
        .find(|v| v.position == position)
        .ok_or(TemplateError::NoViewForPosition { views: rec.views.len(), expected: position })
}

/// A one-view record at 500 ppi (the stored form) of a `width` x `height` image.
pub fn one_view_record(position: u8, width: u16, height: u16, quality: u8, minutiae: Vec<IsoMinutia>) -> IsoRecord {
    IsoRecord {
        width,
        height,
        resolution_x: RESOLUTION_PPCM,
        resolution_y: RESOLUTION_PPCM,
        capture_equipment: 0,
        views: vec![FingerView {
            position,
            view_number: 0,
            impression_type: 0,
            quality: quality.min(100),
            minutiae,
            extended: Vec::new(),
        }],
    }
}

fn side(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX).clamp(1, iso19794_2::MAX_COORDINATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(n: usize) -> Vec<minutiae::Minutia> {
        (0..n)
            .map(|i| minutiae::Minutia {
                x: 20.0 + (i * 7 % 200) as f32,
                y: 30.0 + (i * 13 % 300) as f32,
                angle: i as f32 * 0.3 % std::f32::consts::TAU,
                kind: if i % 2 == 0 { minutiae::Kind::RidgeEnding } else { minutiae::Kind::Bifurcation },
                quality: 0.8,
            })
            .collect()
    }

    #[test]
    fn extraction_round_trips_through_import() {
        let stored = from_extraction(3, 300, 400, &leader(30), 0.7).expect("write");
        let again = import(&stored, 3, 12).expect("import");
        assert_eq!(stored, again, "import of an export must give back the same template");
        let ms = matcher_minutiae(&stored).expect("parse");
        assert_eq!(ms.len(), 30);
        assert!((ms[1].x - 27.0).abs() < 0.5 && (ms[1].y - 43.0).abs() < 0.5);
    }

    #[test]
    fn import_rescales_and_checks_views() {
        let mut rec = iso19794_2::parse(&from_extraction(0, 600, 800, &leader(20), 0.5).expect("w")).expect("p");
        rec.resolution_x = 394; // 1000 ppi
        rec.resolution_y = 394;
        let bytes = iso19794_2::write(&rec).expect("write");
        let out = iso19794_2::parse(&import(&bytes, 7, 12).expect("import")).expect("parse");
        assert_eq!((out.width, out.height, out.views[0].position), (300, 400, 7));
        assert_eq!(out.views[0].minutiae[1].x, (27.0f32 / 2.0).round() as u16);
        rec.views[0].position = 2;
        let bytes = iso19794_2::write(&rec).expect("write");
        assert!(matches!(import(&bytes, 7, 12), Err(TemplateError::PositionMismatch { .. })));
        assert!(matches!(import(&bytes, 2, 30), Err(TemplateError::TooFewMinutiae { found: 20, min: 30 })));
        assert!(matches!(import(b"FMR\0 20\0garbage", 2, 1), Err(TemplateError::Iso(_))));
    }

    #[test]
    fn import_refuses_what_it_cannot_store_as_sent() {
        let rec = iso19794_2::parse(&from_extraction(2, 300, 400, &leader(20), 0.5).expect("w")).expect("p");
        let with = |f: &dyn Fn(&mut IsoRecord)| {
            let mut r = rec.clone();
            f(&mut r);
            import(&iso19794_2::write(&r).expect("write"), 2, 12)
        };
        // Resolutions outside 250-2000 ppi, as images are refused.
        for (x, y) in [(1, 197), (98, 197), (197, 788), (2000, 2000)] {
            let got = with(&|r: &mut IsoRecord| (r.resolution_x, r.resolution_y) = (x, y));
            assert_eq!(got, Err(TemplateError::Resolution { x, y }), "{x} x {y}");
        }
        assert!(with(&|r: &mut IsoRecord| (r.resolution_x, r.resolution_y) = (99, 787)).is_ok());
        // A large image at a low resolution would not fit 14-bit coordinates at 500 ppi.
        let got = with(&|r: &mut IsoRecord| {
            (r.width, r.height, r.resolution_x, r.resolution_y) = (12_000, 400, 99, 99);
        });
        assert!(matches!(got, Err(TemplateError::TooLarge { width: 23_879, .. })), "{got:?}");
        // Twenty copies of one minutia are one minutia.
        let got = with(&|r: &mut IsoRecord| {
            let first = r.views[0].minutiae[0];
            r.views[0].minutiae = vec![first; 20];
        });
        assert_eq!(got, Err(TemplateError::TooFewMinutiae { found: 1, min: 12 }));
    }
}
