//! The byte form of the finger gallery's snapshot: which templates it holds
//! (id and finger position) and their MCC cylinders as built
//! ([`mcc::Template::write_to`]). Owners are not in it: a start-up takes them
//! from the store's list of live templates, which also says which saved
//! templates were deleted since and which enrolled ones are missing. The
//! store seals it chunk by chunk ([`crate::store::SealedWriter`]).

use std::io::{self, Read, Write};

use super::mcc::{self, Template};

const MAGIC: &[u8; 8] = b"CTJFNG01";

/// Why a snapshot cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a finger gallery snapshot.
    #[error("not a finger gallery snapshot")]
    NotASnapshot,
    /// Written by a build that makes other cylinders.
    #[error("written for template layout {found}, this build makes {wanted}")]
    OtherLayout { found: String, wanted: String },
    /// Unreadable, truncated or damaged.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Templates read back from a snapshot.
#[derive(Debug, Default)]
pub struct Restored {
    /// (template id, position, template) of those kept, in the order saved (id order).
    pub kept: Vec<(i64, u8, Template)>,
    /// Saved templates the caller did not keep (deleted since).
    pub dropped: usize,
}

/// Writes `entries` (template id, finger position, template).
pub fn write(entries: &[(i64, u8, std::sync::Arc<Template>)], out: &mut impl Write) -> io::Result<()> {
    let layout = mcc::layout_digest();
    out.write_all(MAGIC)?;
    out.write_all(&[u8::try_from(layout.len()).map_err(io::Error::other)?])?;
    out.write_all(layout.as_bytes())?;
    out.write_all(&(entries.len() as u64).to_le_bytes())?;
    for (id, position, template) in entries {
        out.write_all(&id.to_le_bytes())?;
        out.write_all(&[*position])?;
        template.write_to(out)?;
    }
    Ok(())
}

/// Reads a snapshot, keeping the templates for which `keep(id, position)`
/// holds (the others are skipped as they are read, never held). The whole
/// stream must be read without error and end right after the last template.
pub fn read(input: &mut impl Read, mut keep: impl FnMut(i64, u8) -> bool) -> Result<Restored, SnapshotError> {
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| SnapshotError::NotASnapshot)?;
    if &magic != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    let mut len = [0u8; 1];
    input.read_exact(&mut len)?;
    let mut layout = vec![0u8; usize::from(len[0])];
    input.read_exact(&mut layout)?;
    let (found, wanted) = (String::from_utf8_lossy(&layout).into_owned(), mcc::layout_digest());
    if found != wanted {
        return Err(SnapshotError::OtherLayout { found, wanted });
    }
    let mut count = [0u8; 8];
    input.read_exact(&mut count)?;
    let count = u64::from_le_bytes(count);
    let mut restored = Restored::default();
    for _ in 0..count {
        let mut head = [0u8; 9];
        input.read_exact(&mut head)?;
        let [i0, i1, i2, i3, i4, i5, i6, i7, position] = head;
        let id = i64::from_le_bytes([i0, i1, i2, i3, i4, i5, i6, i7]);
        let template = Template::read_from(input)?;
        if keep(id, position) {
            restored.kept.push((id, position, template));
        } else {
            restored.dropped += 1;
        }
    }
    let mut rest = [0u8; 1];
    if input.read(&mut rest)? != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bytes after the last template").into());
    }
    Ok(restored)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::finger::mcc::random_minutiae;

    fn entries() -> Vec<(i64, u8, Arc<Template>)> {
        (0..12)
            .map(|i| (i * 3 + 1, (i % 10 + 1) as u8, Arc::new(Template::new(&random_minutiae(i as u64, 30)))))
            .collect()
    }

    #[test]
    fn reads_back_what_it_wrote_without_the_dropped_ones() {
        let entries = entries();
        let mut bytes = Vec::new();
        write(&entries, &mut bytes).unwrap();
        let r = read(&mut bytes.as_slice(), |id, _| id != 7).unwrap();
        assert_eq!(r.dropped, 1);
        let want: Vec<_> = entries.iter().filter(|e| e.0 != 7).map(|(i, p, t)| (*i, *p, (**t).clone())).collect();
        assert_eq!(r.kept, want);
    }

    #[test]
    fn a_truncated_or_padded_or_foreign_snapshot_is_an_error() {
        let mut bytes = Vec::new();
        write(&entries(), &mut bytes).unwrap();
        for cut in [0, 5, 30, bytes.len() / 2, bytes.len() - 1] {
            assert!(read(&mut &bytes[..cut], |_, _| true).is_err(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(read(&mut padded.as_slice(), |_, _| true).is_err());
        let mut other = bytes.clone();
        other[9] ^= 1;
        assert!(matches!(read(&mut other.as_slice(), |_, _| true), Err(SnapshotError::OtherLayout { .. })));
        assert!(matches!(read(&mut &b"CTJIDX01...."[..], |_, _| true), Err(SnapshotError::NotASnapshot)));
    }
}
