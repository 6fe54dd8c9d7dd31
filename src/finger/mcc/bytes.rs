//! The byte form of a [`Template`], for the finger index's snapshot: the
//! cylinders exactly as built (little-endian), so that a start-up reads them
//! instead of building every template again (the snapshot's layout digest
//! tells a build that makes other cylinders).

use crate::finger::read_array;
use std::io::{self, Read, Write};

use super::{MASK_WORDS, MAX_MINUTIAE, Point, Template, WORDS};

impl Template {
    /// Writes the cylinders: a u16 count, then per cylinder its centre
    /// (x, y, direction as f32), cell bits and validity mask.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        let count = u16::try_from(self.points.len()).map_err(io::Error::other)?;
        out.write_all(&count.to_le_bytes())?;
        let mut block = Vec::with_capacity(12 + 8 * (WORDS + MASK_WORDS));
        for ((p, bits), mask) in self.points.iter().zip(&self.bits).zip(&self.masks) {
            block.clear();
            block.extend([p.x, p.y, p.angle].iter().flat_map(|v| v.to_le_bytes()));
            block.extend(bits.iter().chain(mask).flat_map(|w| w.to_le_bytes()));
            out.write_all(&block)?;
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
        // One read per cylinder: centre, cell bits, mask.
        let mut block = [0u8; 12 + 8 * (WORDS + MASK_WORDS)];
        for _ in 0..count {
            input.read_exact(&mut block)?;
            let (centre, words) = block.split_at(12);
            let f = |i: usize| {
                let b = centre.get(i * 4..i * 4 + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).unwrap_or_default();
                f32::from_le_bytes(b)
            };
            let (x, y, angle) = (f(0), f(1), f(2));
            if !(x.is_finite() && y.is_finite() && (0.0..std::f32::consts::TAU).contains(&angle)) {
                return Err(bad("cylinder centre out of range"));
            }
            let mut all = words.chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()));
            let mut bits = [0u64; WORDS];
            bits.iter_mut().zip(all.by_ref()).for_each(|(b, w)| *b = w);
            let mut mask = [0u64; MASK_WORDS];
            mask.iter_mut().zip(all).for_each(|(m, w)| *m = w);
            t.points.push(Point { x, y, angle });
            t.bits.push(bits);
            t.masks.push(mask);
        }
        Ok(t)
    }
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
}
