//! The byte form of a [`ShortlistIndex`], for the finger index's snapshot:
//! its slots and every bucket's postings as they are, so that a start-up
//! reads the index sequentially instead of hashing every template again and
//! scattering its postings over two million buckets (most of a rebuild).
//! Counters are recomputed on reading, and every posting is checked (a slot
//! that exists, slot order within its bucket).

use crate::finger::{read_array, read_u64};
use std::io::{self, Read, Write};

use super::{Descriptor, ShortlistIndex, TABLES, mcc};

/// No key (a removed slot) in the byte form.
const NO_KEY: u64 = u64::MAX;

impl ShortlistIndex {
    /// Writes the slots (key, cylinder count) and the buckets' postings.
    pub fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&(self.slot_keys.len() as u64).to_le_bytes())?;
        for (key, cylinders) in self.slot_keys.iter().zip(&self.slot_cylinders) {
            out.write_all(&key.unwrap_or(NO_KEY).to_le_bytes())?;
            out.write_all(&cylinders.to_le_bytes())?;
        }
        // Only the buckets that hold postings: (bucket, length, postings).
        out.write_all(&(self.nonempty_buckets as u64).to_le_bytes())?;
        let mut bytes = Vec::new();
        for (bucket, list) in self.buckets.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            bytes.clear();
            bytes.extend_from_slice(&u32::try_from(bucket).map_err(io::Error::other)?.to_le_bytes());
            bytes.extend_from_slice(&u32::try_from(list.len()).map_err(io::Error::other)?.to_le_bytes());
            for p in list.iter() {
                bytes.extend_from_slice(&p.to_le_bytes());
            }
            out.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Reads what [`ShortlistIndex::write_to`] wrote; anything inconsistent is `InvalidData`.
    pub fn read_from(input: &mut impl Read) -> io::Result<Self> {
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("shortlist index: {what}"));
        let mut index = Self::new();
        let slots = read_u64(input)?;
        if slots > super::MAX_TEMPLATES as u64 {
            return Err(bad("too many slots"));
        }
        let slots = slots as usize;
        let mut record = vec![0u8; slots * 10];
        input.read_exact(&mut record)?;
        for (slot, r) in record.chunks_exact(10).enumerate() {
            let (key, cylinders) = r.split_at(8);
            let key = u64::from_le_bytes(key.try_into().map_err(|_| bad("slot"))?);
            let cylinders = u16::from_le_bytes(cylinders.try_into().map_err(|_| bad("slot"))?);
            let slot = u32::try_from(slot).map_err(|_| bad("slot"))?;
            if key == NO_KEY {
                index.slot_keys.push(None);
                index.dead_postings += usize::from(cylinders) * TABLES;
            } else {
                if index.slots.insert(key, slot).is_some() {
                    return Err(bad("a key in two slots"));
                }
                index.slot_keys.push(Some(key));
            }
            index.slot_cylinders.push(cylinders);
        }
        let nonempty = read_u64(input)?;
        if nonempty > 0 {
            index.allocate_buckets();
        }
        if nonempty > index.buckets.len() as u64 {
            return Err(bad("more buckets than there are"));
        }
        let mut bytes = Vec::new();
        let mut next_bucket = 0;
        for _ in 0..nonempty {
            let bucket = u32::from_le_bytes(read_array(input)?) as usize;
            let len = u32::from_le_bytes(read_array(input)?) as usize;
            // At most one posting per cylinder of every slot.
            if bucket < next_bucket || len == 0 || len > slots.saturating_mul(mcc::MAX_MINUTIAE) {
                return Err(bad("bucket out of place or of impossible length"));
            }
            next_bucket = bucket + 1;
            let entry = index.buckets.get_mut(bucket).ok_or_else(|| bad("no such bucket"))?;
            bytes.resize(len * 4, 0);
            input.read_exact(&mut bytes)?;
            let mut list = Vec::with_capacity(len);
            let mut previous = 0;
            for p in bytes.chunks_exact(4) {
                let p = u32::from_le_bytes(p.try_into().map_err(|_| bad("posting"))?);
                let slot = p >> 8;
                if slot as usize >= slots || slot < previous {
                    return Err(bad("posting out of place"));
                }
                previous = slot;
                list.push(p);
            }
            *entry = list.into();
            index.postings += len;
            index.nonempty_buckets += 1;
        }
        Ok(index)
    }
}

impl Descriptor {
    /// The bucket keys as bytes (what a change to the hashing would change).
    pub(crate) fn key_bytes(&self) -> Vec<u8> {
        self.buckets.iter().flat_map(|b| b.to_le_bytes()).chain(self.angles.iter().copied()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::finger::mcc::{Template, random_minutiae};

    #[test]
    fn an_index_reads_back_and_searches_as_before() {
        let mut index = ShortlistIndex::new();
        let templates: Vec<Template> = (0..60).map(|i| Template::new(&random_minutiae(i, 35))).collect();
        for (i, t) in templates.iter().enumerate() {
            index.insert(i as u64 * 10, t).unwrap();
        }
        index.remove(30);
        let mut bytes = Vec::new();
        index.write_to(&mut bytes).unwrap();
        let back = ShortlistIndex::read_from(&mut bytes.as_slice()).unwrap();
        assert_eq!(back.len(), index.len());
        assert_eq!(
            (back.postings, back.nonempty_buckets, back.dead_postings),
            (index.postings, index.nonempty_buckets, index.dead_postings)
        );
        for probe in [&templates[7], &templates[3], &templates[59]] {
            let d = Descriptor::new(probe);
            assert_eq!(back.search_descriptor(&d, 10, 1), index.search_descriptor(&d, 10, 1));
        }
        for cut in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            assert!(ShortlistIndex::read_from(&mut &bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A posting pointing past the slots.
        let mut wrong = bytes.clone();
        let at = 8 + 60 * 10 + 8 + 8;
        wrong[at..at + 4].copy_from_slice(&(61_u32 << 8).to_le_bytes());
        assert!(ShortlistIndex::read_from(&mut wrong.as_slice()).is_err());
    }
}
