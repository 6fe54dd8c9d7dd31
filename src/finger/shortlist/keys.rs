//! The shortlist's keys: which cylinder bits each hash table samples, and a
//! template's (or a probe's) bucket in every table for each of its cylinders.

use std::f32::consts::TAU;
use std::sync::LazyLock;

use super::{BUCKET_BITS, CELLS_XY, EMPTY, KEY_BITS, PROBE_CYLINDERS, SAMPLE_RADIUS_CELLS, SAMPLE_SEED, TABLES, mcc};

/// The bucket keys of one template, ready to be inserted or searched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// [`TABLES`] global buckets (`table << BUCKET_BITS | bucket`, or [`EMPTY`]) per cylinder.
    pub(super) buckets: Vec<u32>,
    /// Direction of each cylinder's minutia, in 1/256 turns.
    pub(super) angles: Vec<u8>,
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

    /// The keys a search probes with: at most [`PROBE_CYLINDERS`] cylinders
    /// of the probe, those nearest the centroid of its minutiae.
    pub fn for_probe(template: &mcc::Template) -> Self {
        Self::new_capped(template, PROBE_CYLINDERS)
    }

    /// At most `max` cylinders of a template: its
    /// [`mcc::Template::central_indices`] (a probe's candidate-stage time
    /// grows with its cylinders, and its central ones are the likeliest to
    /// overlap the mate's print).
    pub fn new_capped(template: &mcc::Template, max: usize) -> Self {
        if template.len() <= max { Self::new(template) } else { Self::new(&template.central(max)) }
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
    pub(super) fn cylinders(&self) -> impl Iterator<Item = (&[u32], u8)> + '_ {
        self.buckets.chunks_exact(TABLES).zip(self.angles.iter().copied())
    }
}

/// An angle in radians as 1/256 turns.
pub(super) fn turn_units(angle: f32) -> u8 {
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
pub(super) static SAMPLER: LazyLock<Sampler> = LazyLock::new(Sampler::new);

#[derive(Debug)]
pub(super) struct Sampler {
    /// `TABLES × KEY_BITS` distinct-per-table bit indices into a cylinder (`layer * 256 + cell`).
    pub(super) positions: Vec<u16>,
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
