//! Shards of the gallery. A subject belongs to shard `key mod S`, where its
//! key is the first four bytes of the SHA-256 of its id: stable across
//! nodes, restarts, versions and platforms, and spread evenly.

use sha2::{Digest, Sha256};

/// Shard `index` of `count` (`0/1`: the whole gallery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u32,
    /// How many shards the gallery is cut into.
    pub count: u32,
}

impl Shard {
    /// The whole gallery, on one node.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// No subject (a routing node, which searches through the shards).
    pub const NONE: Shard = Shard { index: 0, count: 0 };

    /// A subject's shard key (what `mod count` places).
    pub fn key(subject_id: &str) -> i64 {
        let digest = Sha256::digest(subject_id.as_bytes());
        i64::from(u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]))
    }

    /// Whether the subject belongs to this shard.
    pub fn owns(&self, subject_id: &str) -> bool {
        self.count > 0 && Self::key(subject_id) % i64::from(self.count) == i64::from(self.index)
    }

    /// The shard of `count` that holds the subject.
    pub fn of(subject_id: &str, count: u32) -> Shard {
        let index = (Self::key(subject_id) % i64::from(count.max(1))) as u32;
        Shard { index, count: count.max(1) }
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.count == 0 {
            return f.write_str("none");
        }
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/S`, with `0 <= I < S`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("{s:?}: a shard is I/S, e.g. 0/2"))?;
        let index: u32 = i.trim().parse().map_err(|_| format!("{s:?}: shard index {i:?} is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("{s:?}: shard count {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("{s:?}: the shard index must be under the shard count"));
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn every_subject_has_exactly_one_shard_and_shards_are_even() {
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            let id = format!("subject-{i}");
            let owners: Vec<_> = shards.iter().filter(|s| s.owns(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            assert_eq!(*owners[0], Shard::of(&id, 3));
            counts[owners[0].index as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (850..=1150).contains(&c)), "{counts:?}");
        // The key is fixed by the id alone (a stored shard key stays valid).
        assert_eq!(Shard::key("subject-0"), Shard::key("subject-0"));
        assert!(Shard::WHOLE.owns("anyone"));
        assert!(!Shard::NONE.owns("anyone"));
    }

    #[test]
    fn shards_parse_as_index_over_count() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
