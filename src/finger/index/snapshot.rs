//! The byte form of the finger index's snapshot: per finger position, the
//! templates held (id and MCC cylinders as built, [`Template::write_to`]) and
//! the shortlist index as it is ([`ShortlistIndex::write_to`]). Owners are not
//! in it: a start-up takes them from the store's list of live templates, which
//! also says which saved templates were deleted since (removed here) and which
//! enrolled ones are missing (the caller adds them). The store seals it chunk
//! by chunk ([`crate::store::SealedWriter`]).

use crate::finger::{read_array, read_u64};
use std::{
    io::{self, Read, Write},
    sync::Arc,
};

use sha2::{Digest, Sha256};

use super::{Entry, FingerIndex, FingerIndexSettings, SLOTS};
use crate::finger::{
    mcc::{self, Template},
    shortlist::{Descriptor, ShortlistIndex},
};

const MAGIC: &[u8; 8] = b"CTJFNG02";

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a finger index snapshot.
    #[error("not a finger index snapshot")]
    NotASnapshot,
    /// Written by a build that makes other cylinders or other shortlist keys.
    #[error("written for template layout {found}, this build makes {wanted}")]
    OtherLayout { found: String, wanted: String },
    /// Unreadable, truncated or damaged.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What a snapshot saves, taken from the index under its read lock: the
/// templates are shared, the shortlist indexes copied, so that the writing
/// itself needs no lock.
#[derive(Debug)]
pub struct Frozen {
    positions: Vec<FrozenPosition>,
}

/// One finger position's templates (id, template) and shortlist index.
type FrozenPosition = (Vec<(i64, Arc<Template>)>, ShortlistIndex);

impl Frozen {
    /// Templates saved.
    pub fn len(&self) -> usize {
        self.positions.iter().map(|p| p.0.len()).sum()
    }

    /// Whether nothing is saved.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl FingerIndex {
    /// The index's state for a snapshot: templates and shortlist buckets shared, not copied
    /// (the buckets are copied on write, so an insertion while the snapshot is written copies
    /// only the buckets it touches).
    pub fn freeze(&self) -> Frozen {
        let positions = self
            .by_position
            .iter()
            .zip(&self.shortlists)
            .map(|(list, index)| {
                let entries = list.iter().map(|e| (e.template_id, e.template.clone())).collect();
                // An unused position's index is empty (its buckets are not even allocated).
                let index = if list.is_empty() { ShortlistIndex::default() } else { index.clone() };
                (entries, index)
            })
            .collect();
        Frozen { positions }
    }
}

/// A digest of how templates and their shortlist keys are built: the bytes
/// of a template made from fixed minutiae and of its keys. Any change to the
/// cylinders' construction or to the hashing changes it.
pub fn layout_digest() -> String {
    let minutiae: Vec<mcc::Minutia> = (0..40_u16)
        .map(|i| {
            let f = f32::from(i);
            mcc::Minutia {
                x: 150.0 + 110.0 * (f * 2.399).cos() * (f / 40.0).sqrt(),
                y: 200.0 + 150.0 * (f * 2.399).sin() * (f / 40.0).sqrt(),
                angle: (f * 0.77).rem_euclid(std::f32::consts::TAU),
            }
        })
        .collect();
    let template = Template::new(&minutiae);
    let mut bytes = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = template.write_to(&mut bytes);
    bytes.extend(Descriptor::new(&template).key_bytes());
    hex::encode(Sha256::digest(&bytes).get(..12).unwrap_or_default())
}

/// Writes a frozen index.
pub fn write(frozen: &Frozen, out: &mut impl Write) -> io::Result<()> {
    let layout = layout_digest();
    out.write_all(MAGIC)?;
    out.write_all(&[u8::try_from(layout.len()).map_err(io::Error::other)?])?;
    out.write_all(layout.as_bytes())?;
    out.write_all(&(frozen.positions.len() as u64).to_le_bytes())?;
    for (entries, index) in &frozen.positions {
        out.write_all(&(entries.len() as u64).to_le_bytes())?;
        for (id, template) in entries {
            out.write_all(&id.to_le_bytes())?;
            template.write_to(out)?;
        }
        if !entries.is_empty() {
            index.write_to(out)?;
        }
    }
    Ok(())
}

/// An index read back from a snapshot.
#[derive(Debug)]
pub struct Restored {
    /// The index, without the templates `owner` did not know.
    pub index: FingerIndex,
    /// Saved templates removed because `owner` did not know them (deleted since).
    pub dropped: usize,
}

/// Reads a snapshot into an index with `settings`. `owner(id, position)`
/// gives a saved template's owner, or `None` for a template the store no
/// longer holds at that position (it is removed). The whole stream must read
/// without error and end right after the last position.
pub fn read(
    input: &mut impl Read,
    settings: FingerIndexSettings,
    mut owner: impl FnMut(i64, u8) -> Option<Arc<str>>,
) -> Result<Restored, SnapshotError> {
    let bad = |what: &str| SnapshotError::Io(io::Error::new(io::ErrorKind::InvalidData, what.to_owned()));
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| SnapshotError::NotASnapshot)?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let mut len = [0u8; 1];
    input.read_exact(&mut len)?;
    let mut layout = vec![0u8; usize::from(len[0])];
    input.read_exact(&mut layout)?;
    let (found, wanted) = (String::from_utf8_lossy(&layout).into_owned(), layout_digest());
    if found != wanted {
        return Err(SnapshotError::OtherLayout { found, wanted });
    }
    if read_u64(input)? != SLOTS as u64 {
        return Err(bad("another number of finger positions"));
    }
    let mut gallery = FingerIndex::new(settings);
    let mut gone = Vec::new();
    let unknown: Arc<str> = "".into();
    for p in 0..SLOTS {
        let position = u8::try_from(p).map_err(|_| bad("position"))?;
        let count = read_u64(input)?;
        if count > crate::finger::shortlist::MAX_TEMPLATES as u64 {
            return Err(bad("too many templates"));
        }
        let list = gallery.by_position.get_mut(p).ok_or_else(|| bad("position"))?;
        for i in 0..count as usize {
            let template_id = i64::from_le_bytes(read_array(input)?);
            let template = Arc::new(Template::read_from(input)?);
            let subject = owner(template_id, position).unwrap_or_else(|| {
                gone.push(template_id);
                unknown.clone()
            });
            if gallery.slots.insert(template_id, (p, i)).is_some() {
                return Err(bad("a template saved twice"));
            }
            list.push(Entry { template_id, subject, template });
        }
        if count > 0 {
            let index = ShortlistIndex::read_from(input)?;
            if index.len() != list.len() || list.iter().any(|e| !index.contains(e.template_id as u64)) {
                return Err(bad("the shortlist index does not hold the saved templates"));
            }
            if let Some(slot) = gallery.shortlists.get_mut(p) {
                *slot = index;
            }
        }
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(bad("bytes after the last position"));
    }
    let dropped = gallery.remove(&gone);
    Ok(Restored { index: gallery, dropped })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::finger::mcc::random_minutiae;

    fn print(seed: u64) -> Template {
        Template::new(&random_minutiae(seed, 35))
    }

    fn gallery(settings: FingerIndexSettings) -> FingerIndex {
        let mut g = FingerIndex::new(settings);
        for i in 0..40 {
            g.add(i * 3 + 1, format!("s{i}").into(), (i % 3 + 1) as u8, print(i as u64));
        }
        g.remove(&[4]);
        g
    }

    fn owners(id: i64, position: u8) -> Option<Arc<str>> {
        let i = (id - 1) / 3;
        (id != 7 && position == (i % 3 + 1) as u8).then(|| format!("s{i}").into())
    }

    #[test]
    fn reads_back_a_gallery_that_searches_as_the_saved_one() {
        // The shortlist path from 5 templates on, so that the restored index is searched.
        {
            let settings = FingerIndexSettings {
                shortlist_from: 5,
                shortlist_fraction: 0.5,
                shortlist_min: 3,
                shortlist_max: 100,
                ..FingerIndexSettings::default()
            };
            let mut saved = gallery(settings);
            let mut bytes = Vec::new();
            write(&saved.freeze(), &mut bytes).unwrap();
            let r = read(&mut bytes.as_slice(), settings, owners).unwrap();
            assert_eq!(r.dropped, 1, "id 7 is gone from the store");
            saved.remove(&[7]);
            let mut back = r.index;
            assert_eq!(back.len(), saved.len());
            assert!(back.template(7).is_none());
            assert_eq!(back.template(10).as_deref(), Some(&print(3)));
            for (position, probe) in [(1, 0), (2, 4), (3, 8), (1, 9)] {
                let (got, want) =
                    (back.search(position, &print(probe), 5, 1), saved.search(position, &print(probe), 5, 1));
                assert_eq!(got, want, "probe {probe}");
            }
            // Changes after a restore work as on any index.
            back.add(500, "new".into(), 1, print(77));
            assert_eq!(&*back.search(1, &print(77), 1, 1)[0].subject, "new");
        }
    }

    #[test]
    fn a_truncated_or_padded_or_foreign_snapshot_is_an_error() {
        let settings = FingerIndexSettings::default();
        let mut bytes = Vec::new();
        write(&gallery(settings).freeze(), &mut bytes).unwrap();
        for cut in [0, 5, 30, bytes.len() / 2, bytes.len() - 1] {
            assert!(read(&mut &bytes[..cut], settings, owners).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(read(&mut padded.as_slice(), settings, owners).is_err());
        let mut other = bytes.clone();
        other[9] ^= 1;
        assert!(matches!(read(&mut other.as_slice(), settings, owners), Err(SnapshotError::OtherLayout { .. })));
        assert!(matches!(read(&mut &b"CTJIDX01...."[..], settings, owners), Err(SnapshotError::NotASnapshot)));
        // An empty index is a small snapshot (empty positions save no index).
        let mut empty = Vec::new();
        write(&FingerIndex::new(settings).freeze(), &mut empty).unwrap();
        assert!(empty.len() < 200, "{} bytes", empty.len());
        assert!(read(&mut empty.as_slice(), settings, owners).unwrap().index.is_empty());
    }
}
