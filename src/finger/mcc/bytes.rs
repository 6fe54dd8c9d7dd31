//! The byte form of a [`Template`], for the finger gallery's snapshot: the
//! cylinders exactly as built (little-endian), so that a start-up reads them
//! instead of building every template again. [`layout_digest`] names the
//! construction: a snapshot written by a build that makes other cylinders is
//! not used.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::{MASK_WORDS, MAX_MINUTIAE, Point, Template, WORDS};

impl Template {
    /// Writes the cylinders: a u16 count, then per cylinder its centre
    /// (x, y, direction as f32), cell bits and validity mask.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let count = u16::try_from(self.points.len()).map_err(io::Error::other)?;
        out.write_all(&count.to_le_bytes())?;
        for ((p, bits), mask) in self.points.iter().zip(&self.bits).zip(&self.masks) {
            for v in [p.x, p.y, p.angle] {
                out.write_all(&v.to_le_bytes())?;
            }
            for w in bits.iter().chain(mask) {
                out.write_all(&w.to_le_bytes())?;
            }
        }
        Ok(())
    }

    /// Reads what [`Template::write_to`] wrote. More than [`MAX_MINUTIAE`]
    /// cylinders, a non-finite centre or a direction outside `[0, 2π)` is
    /// `InvalidData` (never a panic).
    pub fn read_from(input: &mut impl Read) -> io::Result<Self> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("MCC template: {what}"));
        let count = usize::from(u16::from_le_bytes(read_array(input)?));
        if count > MAX_MINUTIAE {
            return Err(bad("too many cylinders"));
        }
        let mut t = Self {
            points: Vec::with_capacity(count),
            bits: Vec::with_capacity(count),
            masks: Vec::with_capacity(count),
        };
        for _ in 0..count {
            let [x, y, angle] = [(); 3].map(|()| read_array(input).map(f32::from_le_bytes));
            let (x, y, angle) = (x?, y?, angle?);
            if !(x.is_finite() && y.is_finite() && (0.0..std::f32::consts::TAU).contains(&angle)) {
                return Err(bad("cylinder centre out of range"));
            }
            let mut bits = [0u64; WORDS];
            for w in &mut bits {
                *w = u64::from_le_bytes(read_array(input)?);
            }
            let mut mask = [0u64; MASK_WORDS];
            for w in &mut mask {
                *w = u64::from_le_bytes(read_array(input)?);
            }
            t.points.push(Point { x, y, angle });
            t.bits.push(bits);
            t.masks.push(mask);
        }
        Ok(t)
    }
}

fn read_array<const N: usize>(input: &mut impl Read) -> io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

/// A digest of how templates are built: the bytes of a template made from a
/// fixed set of minutiae. Any change to the cylinders' construction or
/// parameters changes it.
pub fn layout_digest() -> String {
    let minutiae: Vec<super::Minutia> = (0..40_u16)
        .map(|i| {
            let f = f32::from(i);
            super::Minutia {
                x: 150.0 + 110.0 * (f * 2.399).cos() * (f / 40.0).sqrt(),
                y: 200.0 + 150.0 * (f * 2.399).sin() * (f / 40.0).sqrt(),
                angle: (f * 0.77).rem_euclid(std::f32::consts::TAU),
            }
        })
        .collect();
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = Template::new(&minutiae).write_to(&mut bytes);
    hex::encode(Sha256::digest(&bytes).get(..12).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::finger::mcc::random_minutiae;

    #[test]
    fn a_template_reads_back_as_written() {
        for seed in 0..8 {
            let t = Template::new(&random_minutiae(seed, 20 + 3 * seed as usize));
            assert!(!t.is_empty());
            let mut bytes = Vec::new();
            t.write_to(&mut bytes).unwrap();
            let back = Template::read_from(&mut bytes.as_slice()).unwrap();
            assert_eq!(back, t);
        }
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let t = Template::new(&random_minutiae(3, 30));
        let mut bytes = Vec::new();
        t.write_to(&mut bytes).unwrap();
        for cut in [0, 1, 2, 14, bytes.len() - 1] {
            assert!(Template::read_from(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = bytes.clone();
        huge[..2].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(Template::read_from(&mut huge.as_slice()).is_err());
        let mut nan = bytes.clone();
        nan[2..6].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Template::read_from(&mut nan.as_slice()).is_err());
    }

    #[test]
    fn the_layout_digest_is_stable_and_names_the_construction() {
        assert_eq!(layout_digest(), layout_digest());
        assert_eq!(layout_digest().len(), 24);
    }
}
