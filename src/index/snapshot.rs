//! The byte form of a face index: a header naming what it holds (label,
//! structure, dimension), then length-prefixed sections. The store seals it
//! (AES-256-GCM, like the templates) before it reaches the disk.

use serde::{Deserialize, Serialize};

use super::{Backend, IndexError, IndexSettings, VectorIndex, compressed::Compressed, faiss_ix::FaissIndex};
use crate::index::IndexKind;

const MAGIC: &[u8; 8] = b"CTJIDX01";

#[derive(Serialize, Deserialize)]
struct Header {
    label: String,
    build: String,
    dim: usize,
    trained_on: usize,
    sections: usize,
}

pub(super) fn encode(ix: &VectorIndex, label: &str) -> Result<Vec<u8>, IndexError> {
    let mut held: Vec<i64> = ix.owners.keys().copied().collect();
    held.sort_unstable();
    let sections: Vec<Vec<u8>> = match &ix.backend {
        Backend::Flat(f) => vec![ids_bytes(&held), f.to_bytes()?],
        Backend::Compressed(c) => vec![ids_bytes(c.ids()), floats_bytes(c.vectors())],
    };
    let header = Header {
        label: label.to_owned(),
        build: ix.settings.kind.build_key(),
        dim: ix.dim,
        trained_on: 0,
        sections: sections.len(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| IndexError::Snapshot(e.to_string()))?;
    let total = 16 + header.len() + sections.iter().map(|s| s.len() + 8).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for s in &sections {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
    }
    Ok(out)
}

/// The structure and the ids it holds live.
pub(super) fn decode(
    bytes: &[u8],
    dim: usize,
    settings: &IndexSettings,
    label: &str,
) -> Result<(Backend, Vec<i64>), IndexError> {
    let mut r = Reader { bytes };
    if r.take(8)? != MAGIC {
        return Err(bad("not an index snapshot"));
    }
    let header: Header = serde_json::from_slice(r.section()?).map_err(|e| bad(&e.to_string()))?;
    if header.label != label {
        return Err(bad(&format!("made for {}, not {label}", header.label)));
    }
    if header.build != settings.kind.build_key() || header.dim != dim {
        return Err(bad(&format!(
            "holds {} of dimension {}, configured {}",
            header.build,
            header.dim,
            settings.kind.build_key()
        )));
    }
    let held = read_ids(r.section()?)?;
    let backend = match &settings.kind {
        IndexKind::Flat => Backend::Flat(FaissIndex::from_bytes(r.section()?)?),
        IndexKind::Int8 { rerank } | IndexKind::Int4 { rerank } => {
            let vectors = read_floats(r.section()?)?;
            if vectors.len() != held.len() * dim {
                return Err(bad("int8 section length"));
            }
            let four_bit = matches!(settings.kind, IndexKind::Int4 { .. });
            let mut c = Compressed::new(dim, four_bit, *rerank, settings.threads);
            c.add(&held, &vectors);
            Backend::Compressed(c)
        }
    };
    Ok((backend, held))
}

fn bad(why: &str) -> IndexError {
    IndexError::Snapshot(why.to_owned())
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        if self.bytes.len() < n {
            return Err(bad("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn section(&mut self) -> Result<&'a [u8], IndexError> {
        let len = u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| bad("length"))?);
        self.take(usize::try_from(len).map_err(|_| bad("length"))?)
    }
}

fn ids_bytes(ids: &[i64]) -> Vec<u8> {
    ids.iter().flat_map(|i| i.to_le_bytes()).collect()
}

fn floats_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

fn read_ids(b: &[u8]) -> Result<Vec<i64>, IndexError> {
    if !b.len().is_multiple_of(8) {
        return Err(bad("id section length"));
    }
    Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
}

fn read_floats(b: &[u8]) -> Result<Vec<f32>, IndexError> {
    if !b.len().is_multiple_of(4) {
        return Err(bad("vector section length"));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}
