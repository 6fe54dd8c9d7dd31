//! 1:N candidate stage for fingerprints: picks, from a large gallery, the few
//! enrolled templates worth comparing with the full MCC matcher.
//!
//! Follows R. Cappelli, M. Ferrara and D. Maltoni, "Fingerprint indexing based
//! on Minutia Cylinder-Code", IEEE TPAMI 33(5), 2011: locality-sensitive
//! hashing of the cylinders' bit vectors by bit sampling. Each of [`TABLES`]
//! hash functions reads [`KEY_BITS`] fixed cell bits of a cylinder (cells
//! within 6 cells of the centre, whose validity rarely depends on the overlap);
//! cylinders of the same minutia in two impressions agree on most bits and so
//! share some buckets, unrelated cylinders rarely do.
//!
//! One addition to the paper's vote count: a rotation vote. A cylinder is
//! expressed in its minutia's frame, so a collision between a probe and an
//! enrolled cylinder also says by how much the probe is rotated (the
//! difference of the two minutia directions). Votes go to one of
//! [`ROTATION_BINS`] bins per template, and a template scores the best pair of
//! adjacent bins (a consistent rotation), divided by the fourth root of its
//! cylinder count. On the FVC2002 benchmark (`benches/finger_identify.rs`,
//! 4,000-template gallery, 280 probes) the mate recall in the top 1.25% was
//! 0.66 with plain vote counts (16 tables × 20 bits), 0.83 with the rotation
//! vote and 0.92 with the present 32 tables × 24 bits and 32 rotation bins.
//!
//! Everything is derived from an [`mcc::Template`], so the index is rebuilt at
//! start-up from stored minutiae. A removed template's slot is marked dead at
//! once (it is never returned again) and its postings are purged in bulk once
//! dead postings pass a quarter of the total. One index holds at most
//! [`MAX_TEMPLATES`] templates; a multi-core service shards the gallery over
//! several indexes (by key) and searches them in parallel.

#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::f32::consts::TAU;
use std::sync::LazyLock;

use super::mcc;

/// Number of hash functions (tables) per cylinder.
pub const TABLES: usize = 32;
/// Cell bits each hash function samples.
pub const KEY_BITS: usize = 24;
/// Rotation bins of the per-template vote accumulator (a full turn).
pub const ROTATION_BINS: usize = 32;
/// Most templates one index holds (a posting packs the slot into 24 bits).
pub const MAX_TEMPLATES: usize = 1 << 24;
/// Buckets per table, as a power of two (sampled values are folded into them).
const BUCKET_BITS: u32 = 16;
/// Bucket of a cylinder whose sampled bits are all 0 (it says nothing and is not stored).
const EMPTY: u32 = u32::MAX;
/// Sampled cells lie within this many cells of the centre (the rim is often invalid).
const SAMPLE_RADIUS_CELLS: f32 = 6.0;
/// Seed of the fixed choice of sampled bits (changing it changes every key).
const SAMPLE_SEED: u64 = 0x6d63_635f_6c73_6831;
/// Spatial cells per cylinder layer.
const CELLS_XY: usize = mcc::NS * mcc::NS;

/// Errors of the shortlist index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShortlistError {
    /// The index already holds [`MAX_TEMPLATES`] templates.
    #[error("the shortlist index is full ({MAX_TEMPLATES} templates); shard the gallery")]
    Full,
}

/// The bucket keys of one template, ready to be inserted or searched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// [`TABLES`] global buckets (`table << BUCKET_BITS | bucket`, or [`EMPTY`]) per cylinder.
    buckets: Vec<u32>,
    /// Direction of each cylinder's minutia, in 1/256 turns.
    angles: Vec<u8>,
}

impl Descriptor {
    /// Hashes every cylinder of a template.
    pub fn new(template: &mcc::Template) -> Self {
        let positions = &SAMPLER.positions;
        let mut buckets = Vec::with_capacity(template.len() * TABLES);
        let mut angles = Vec::with_capacity(template.len());
        for (_, _, angle, bits, _) in template.cylinders() {
            angles.push(turn_units(angle));
            for (table, sample) in positions.chunks_exact(KEY_BITS).enumerate() {
                let value = sample.iter().fold(0_u32, |v, &p| {
                    let bit = bits.get(usize::from(p) / 64).is_some_and(|w| (w >> (p % 64)) & 1 == 1);
                    (v << 1) | u32::from(bit)
                });
                buckets.push(if value == 0 { EMPTY } else { bucket_of(table, value) });
            }
        }
        Self { buckets, angles }
    }

    /// Number of cylinders described.
    pub fn len(&self) -> usize {
        self.angles.len()
    }

    /// Whether the template had no valid cylinder (it can then never be shortlisted).
    pub fn is_empty(&self) -> bool {
        self.angles.is_empty()
    }

    /// Each cylinder's buckets with its direction.
    fn cylinders(&self) -> impl Iterator<Item = (&[u32], u8)> + '_ {
        self.buckets.chunks_exact(TABLES).zip(self.angles.iter().copied())
    }
}

/// An angle in radians as 1/256 turns.
fn turn_units(angle: f32) -> u8 {
    #[allow(clippy::cast_possible_truncation)] // rounded, then wrapped into 0..256
    let units = (angle / TAU * 256.0).round() as i64;
    u8::try_from(units.rem_euclid(256)).unwrap_or(0)
}

/// Global bucket of a sampled value in a table.
fn bucket_of(table: usize, value: u32) -> u32 {
    let table = u32::try_from(table).unwrap_or(0);
    let mixed = (u64::from(value) | (u64::from(table) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let bucket = u32::try_from(mixed >> (64 - BUCKET_BITS)).unwrap_or(0);
    (table << BUCKET_BITS) | bucket
}

/// The fixed bit positions the tables sample.
static SAMPLER: LazyLock<Sampler> = LazyLock::new(Sampler::new);

#[derive(Debug)]
struct Sampler {
    /// `TABLES × KEY_BITS` distinct-per-table bit indices into a cylinder (`layer * 256 + cell`).
    positions: Vec<u16>,
}

impl Sampler {
    fn new() -> Self {
        #[allow(clippy::cast_precision_loss)] // small grid indices
        let offset = |i: usize| i as f32 - (mcc::NS as f32 - 1.0) / 2.0;
        let cells: Vec<usize> =
            (0..CELLS_XY).filter(|c| offset(c / mcc::NS).hypot(offset(c % mcc::NS)) <= SAMPLE_RADIUS_CELLS).collect();
        let candidates = cells.len() * mcc::ND;
        let mut state = SAMPLE_SEED;
        let mut next = move || {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            usize::try_from(state >> 33).unwrap_or(0)
        };
        let mut positions = Vec::with_capacity(TABLES * KEY_BITS);
        for _ in 0..TABLES {
            let mut chosen: Vec<u16> = Vec::with_capacity(KEY_BITS);
            while chosen.len() < KEY_BITS {
                let pick = next() % candidates;
                let cell = cells.get(pick / mcc::ND).copied().unwrap_or(0);
                let bit = u16::try_from((pick % mcc::ND) * CELLS_XY + cell).unwrap_or(0);
                if !chosen.contains(&bit) {
                    chosen.push(bit);
                }
            }
            positions.extend(chosen);
        }
        Self { positions }
    }
}

/// Inverted index from cylinder hash buckets to enrolled templates.
///
/// `search` takes `&self` and allocates its own counters, so any number of
/// threads may search at once; `insert` and `remove` need `&mut self`.
#[derive(Debug)]
pub struct ShortlistIndex {
    /// Postings of each bucket: `slot << 8 | minutia direction` (1/256 turns).
    buckets: Vec<Vec<u32>>,
    /// Key of each slot, `None` once removed.
    slot_keys: Vec<Option<u64>>,
    /// Cylinder count of each slot (for the score normalisation).
    slot_cylinders: Vec<u16>,
    slots: HashMap<u64, u32>,
    /// Purged slots, ready for reuse.
    free: Vec<u32>,
    /// Removed slots whose postings are still in the buckets.
    dead: Vec<u32>,
    /// Postings of the removed slots in `dead`.
    dead_postings: usize,
    /// Postings of all slots, live or dead.
    postings: usize,
}

impl Default for ShortlistIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl ShortlistIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self {
            buckets: vec![Vec::new(); TABLES << BUCKET_BITS],
            slot_keys: Vec::new(),
            slot_cylinders: Vec::new(),
            slots: HashMap::new(),
            free: Vec::new(),
            dead: Vec::new(),
            dead_postings: 0,
            postings: 0,
        }
    }

    /// Number of templates enrolled.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no template is enrolled.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `key` is enrolled.
    pub fn contains(&self, key: u64) -> bool {
        self.slots.contains_key(&key)
    }

    /// Heap bytes held by the index (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        let postings: usize = self.buckets.iter().map(Vec::capacity).sum();
        postings * size_of::<u32>()
            + self.buckets.capacity() * size_of::<Vec<u32>>()
            + self.slot_keys.capacity() * size_of::<Option<u64>>()
            + self.slot_cylinders.capacity() * size_of::<u16>()
            + self.slots.capacity() * (size_of::<(u64, u32)>() + 1)
            + (self.free.capacity() + self.dead.capacity()) * size_of::<u32>()
    }

    /// Enrolls a template under `key`, replacing what the key held.
    pub fn insert(&mut self, key: u64, template: &mcc::Template) -> Result<(), ShortlistError> {
        self.insert_descriptor(key, &Descriptor::new(template))
    }

    /// Enrolls a precomputed descriptor (start-up can hash templates in parallel).
    pub fn insert_descriptor(&mut self, key: u64, descriptor: &Descriptor) -> Result<(), ShortlistError> {
        self.remove(key);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slot_keys.len()).ok().filter(|&s| (s as usize) < MAX_TEMPLATES);
                let Some(slot) = slot else {
                    return Err(ShortlistError::Full);
                };
                self.slot_keys.push(None);
                self.slot_cylinders.push(0);
                slot
            }
        };
        if let Some(k) = self.slot_keys.get_mut(slot as usize) {
            *k = Some(key);
        }
        if let Some(c) = self.slot_cylinders.get_mut(slot as usize) {
            *c = u16::try_from(descriptor.len()).unwrap_or(u16::MAX);
        }
        for (buckets, angle) in descriptor.cylinders() {
            for &bucket in buckets {
                if let Some(list) = self.buckets.get_mut(bucket as usize) {
                    list.push((slot << 8) | u32::from(angle));
                    self.postings += 1;
                }
            }
        }
        self.slots.insert(key, slot);
        Ok(())
    }

    /// Removes the template under `key`; false when there was none.
    pub fn remove(&mut self, key: u64) -> bool {
        let Some(slot) = self.slots.remove(&key) else {
            return false;
        };
        if let Some(k) = self.slot_keys.get_mut(slot as usize) {
            *k = None;
        }
        self.dead.push(slot);
        // An upper bound (empty samples are not stored); it only schedules the purge.
        let cylinders = self.slot_cylinders.get(slot as usize).copied().unwrap_or(0);
        self.dead_postings += usize::from(cylinders) * TABLES;
        if self.dead_postings * 4 > self.postings {
            self.purge();
        }
        true
    }

    /// Drops the postings of removed templates and frees their slots.
    fn purge(&mut self) {
        let alive = &self.slot_keys;
        let mut kept = 0;
        for list in &mut self.buckets {
            list.retain(|&p| alive.get((p >> 8) as usize).is_some_and(Option::is_some));
            kept += list.len();
        }
        self.postings = kept;
        self.dead_postings = 0;
        self.free.append(&mut self.dead);
    }

    /// The keys of up to `n` enrolled templates most likely to match `probe`, most promising first.
    ///
    /// Templates without a single vote are never returned, so fewer than `n`
    /// keys may come back.
    pub fn search(&self, probe: &mcc::Template, n: usize) -> Vec<u64> {
        self.search_descriptor(&Descriptor::new(probe), n)
    }

    /// As [`ShortlistIndex::search`], for a precomputed probe descriptor.
    pub fn search_descriptor(&self, probe: &Descriptor, n: usize) -> Vec<u64> {
        if n == 0 || self.slots.is_empty() {
            return Vec::new();
        }
        let votes = self.votes(probe);
        let mut scored: Vec<u64> = Vec::new();
        for (slot, ((bins, key), &cylinders)) in
            votes.chunks_exact(ROTATION_BINS).zip(&self.slot_keys).zip(&self.slot_cylinders).enumerate()
        {
            if key.is_none() {
                continue;
            }
            let best = bins.iter().zip(bins.iter().cycle().skip(1)).map(|(&a, &b)| u32::from(a) + u32::from(b)).max();
            if let Some(v) = best.filter(|&v| v > 0) {
                scored.push((u64::from(score(v, cylinders)) << 32) | slot as u64);
            }
        }
        let by_desc = |a: &u64, b: &u64| b.cmp(a);
        if scored.len() > n {
            scored.select_nth_unstable_by(n - 1, by_desc);
            scored.truncate(n);
        }
        scored.sort_unstable_by(by_desc);
        scored
            .iter()
            .filter_map(|&s| self.slot_keys.get(usize::try_from(s & 0xFFFF_FFFF).ok()?).copied().flatten())
            .collect()
    }

    /// Rotation votes: `ROTATION_BINS` saturating counters per slot.
    fn votes(&self, probe: &Descriptor) -> Vec<u8> {
        const SHIFT: u32 = 8 - ROTATION_BINS.trailing_zeros();
        let mut votes = vec![0_u8; self.slot_keys.len() * ROTATION_BINS];
        for (buckets, angle) in probe.cylinders() {
            for &bucket in buckets {
                let Some(list) = self.buckets.get(bucket as usize) else {
                    continue;
                };
                for &posting in list {
                    // Low byte: the enrolled minutia's direction; the difference is the rotation.
                    let [enrolled, ..] = posting.to_le_bytes();
                    let bin = usize::from(enrolled.wrapping_sub(angle) >> SHIFT);
                    if let Some(v) = votes.get_mut((posting >> 8) as usize * ROTATION_BINS + bin) {
                        *v = v.saturating_add(1);
                    }
                }
            }
        }
        votes
    }
}

/// Rotation-consistent votes over the fourth root of the template's cylinder count, as a sortable integer.
///
/// Larger templates collect more chance votes; the fourth root measured better
/// than no normalisation or the square root.
fn score(votes: u32, cylinders: u16) -> u32 {
    let norm = f64::from(cylinders.max(8)).powf(0.25);
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, below 2^32
    let s = (f64::from(votes) / norm * 1024.0) as u32;
    s
}

#[cfg(test)]
mod tests;
