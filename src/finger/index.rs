//! The in-memory finger index: every enrolled finger's MCC template, by
//! finger position, derived from the store (never the only copy). A search
//! compares a probe with the templates of the same finger position on
//! several threads and keeps each subject's best score. From
//! [`FingerIndexSettings::shortlist_from`] templates at a position on, a
//! candidate stage picks the templates worth that comparison: the hash votes
//! ([`super::shortlist`]); below `shortlist_from`, every template is compared
//! (exhaustive).

use std::{collections::HashMap, sync::Arc};

use tracing::warn;

pub mod snapshot;

use super::{
    mcc::Template,
    rerank::{RerankSettings, rerank},
    shortlist::{Descriptor, ShortlistIndex},
};

/// Positions 0..=10 (0 is unused: samples always name their finger).
const SLOTS: usize = 11;

#[derive(Debug, Clone)]
struct Entry {
    template_id: i64,
    subject: Arc<str>,
    template: Arc<Template>,
}

/// A template with its shortlist keys, ready to join a [`FingerIndex`].
///
/// Building them is most of the cost of adding a template, and needs no
/// access to the index, so a start-up prepares its templates on every core
/// and adds them one after another.
#[derive(Debug, Clone)]
pub struct Prepared {
    template: Template,
    descriptor: Descriptor,
}

impl Prepared {
    /// Hashes the template's cylinders for the shortlist.
    pub fn new(template: Template) -> Self {
        let descriptor = Descriptor::new(&template);
        Self { template, descriptor }
    }
}

/// Maps `items` through `work` on up to `threads` threads (contiguous chunks), in order.
pub fn parallel_map<I: Sync, T: Send>(items: &[I], threads: usize, work: impl Fn(&I) -> T + Sync) -> Vec<T> {
    super::parallel_chunks(items, threads, |part| part.iter().map(&work).collect())
}

/// A subject's score for one probe finger.
#[derive(Debug, Clone, PartialEq)]
pub struct FingerHit {
    /// Owner.
    pub subject: Arc<str>,
    /// The best-scoring template of that subject.
    pub template_id: i64,
    /// MCC similarity in [0, 1].
    pub score: f32,
}

/// When and how much to shortlist.
#[derive(Debug, Clone, Copy)]
pub struct FingerIndexSettings {
    /// Positions with at least this many templates are searched through the shortlist.
    pub shortlist_from: usize,
    /// Fraction of a position's templates the hash votes keep for the full matcher.
    pub shortlist_fraction: f64,
    /// Fewest templates the shortlist keeps.
    pub shortlist_min: usize,
    /// Most templates the shortlist keeps (unless `shortlist_min` is larger).
    pub shortlist_max: usize,
    /// How the full matcher re-ranks what is compared (one pass, or two for large probes).
    pub rerank: RerankSettings,
}

impl Default for FingerIndexSettings {
    fn default() -> Self {
        Self {
            shortlist_from: 50_000,
            shortlist_fraction: 0.04,
            shortlist_min: 1_000,
            shortlist_max: 10_000,
            rerank: RerankSettings::default(),
        }
    }
}

/// Finger templates by position, with removal by template id.
#[derive(Debug, Default)]
pub struct FingerIndex {
    settings: FingerIndexSettings,
    by_position: [Vec<Entry>; SLOTS],
    shortlists: [ShortlistIndex; SLOTS],
    /// template id -> (position, index in `by_position`).
    slots: HashMap<i64, (usize, usize)>,
}

impl FingerIndex {
    /// An empty index.
    pub fn new(settings: FingerIndexSettings) -> Self {
        Self { settings, ..Self::default() }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &FingerIndexSettings {
        &self.settings
    }

    /// Templates held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a template; an id already present is replaced.
    pub fn add(&mut self, template_id: i64, subject: Arc<str>, position: u8, template: Template) {
        let prepared = Prepared::new(template);
        self.add_prepared(template_id, subject, position, prepared);
    }

    /// Adds a template whose shortlist keys were computed beforehand
    /// ([`Prepared::new`], which may run on other threads); an id already
    /// present is replaced.
    pub fn add_prepared(&mut self, template_id: i64, subject: Arc<str>, position: u8, prepared: Prepared) {
        self.add_prepared_batch(vec![(template_id, subject, position, prepared)]);
    }

    /// Adds many prepared templates in order, each id replacing what it held
    /// (an id given twice: its last template stands), with each position's
    /// shortlist keys inserted in one batch ([`ShortlistIndex::insert_batch`],
    /// what makes a start-up's rebuild fast).
    pub fn add_prepared_batch(&mut self, items: Vec<(i64, Arc<str>, u8, Prepared)>) {
        let mut last: HashMap<i64, usize> = HashMap::with_capacity(items.len());
        for (i, (id, ..)) in items.iter().enumerate() {
            last.insert(*id, i);
        }
        let items: Vec<_> =
            items.into_iter().enumerate().filter(|(i, (id, ..))| last.get(id) == Some(i)).map(|(_, it)| it).collect();
        let ids: Vec<i64> = items.iter().map(|(id, ..)| *id).collect();
        self.remove(&ids);
        let slot_of = |position: u8| usize::from(position).min(SLOTS - 1);
        for (p, index) in self.shortlists.iter_mut().enumerate() {
            let batch: Vec<(u64, &Descriptor)> = items
                .iter()
                .filter(|(_, _, position, _)| slot_of(*position) == p)
                .map(|(id, _, _, prepared)| (*id as u64, &prepared.descriptor))
                .collect();
            if batch.is_empty() {
                continue;
            }
            if let Err(e) = index.insert_batch(&batch) {
                // The templates stay searchable exhaustively below the shortlist threshold.
                warn!(error = %e, "finger templates not added to the shortlist index");
            }
        }
        for (template_id, subject, position, Prepared { template, .. }) in items {
            let p = slot_of(position);
            let list = &mut self.by_position[p];
            self.slots.insert(template_id, (p, list.len()));
            list.push(Entry { template_id, subject, template: Arc::new(template) });
        }
    }

    /// The MCC template held under a template id.
    pub fn template(&self, template_id: i64) -> Option<Arc<Template>> {
        let &(p, i) = self.slots.get(&template_id)?;
        self.by_position.get(p)?.get(i).map(|e| e.template.clone())
    }

    /// Removes templates by id (unknown ids are ignored); returns how many were held.
    pub fn remove(&mut self, ids: &[i64]) -> usize {
        let before = self.slots.len();
        for id in ids {
            let Some((p, i)) = self.slots.remove(id) else { continue };
            self.shortlists[p].remove(*id as u64);
            let list = &mut self.by_position[p];
            list.swap_remove(i);
            if let Some(moved) = list.get(i) {
                self.slots.insert(moved.template_id, (p, i));
            }
        }
        before - self.slots.len()
    }

    /// The `k` best subjects for a probe of the finger at `position`: the
    /// templates of that position (or a candidate stage's pick of them, from
    /// [`FingerIndexSettings::shortlist_from`] on) re-ranked by the full matcher
    /// ([`rerank`]) on up to `threads` threads.
    pub fn search(&self, position: u8, probe: &Template, k: usize, threads: usize) -> Vec<FingerHit> {
        let p = usize::from(position).min(SLOTS - 1);
        let list = self.by_position[p].as_slice();
        let settings = &self.settings;
        let share = |fraction: f64| (list.len() as f64 * fraction) as usize;
        let picked: Vec<&Entry> = if list.len() < settings.shortlist_from {
            list.iter().collect()
        } else {
            let n = share(settings.shortlist_fraction).min(settings.shortlist_max).max(settings.shortlist_min);
            self.shortlists[p]
                .search_descriptor(&Descriptor::for_probe(probe), n, threads)
                .into_iter()
                .filter_map(|key| self.slots.get(&(key as i64)))
                .filter_map(|&(_, i)| list.get(i))
                .collect()
        };
        let templates: Vec<&Template> = picked.iter().map(|e| &*e.template).collect();
        let mut hits: Vec<FingerHit> = rerank(probe, &templates, self.settings.rerank, k, threads)
            .into_iter()
            .filter_map(|(i, score)| {
                let e = picked.get(i)?;
                Some(FingerHit { subject: e.subject.clone(), template_id: e.template_id, score })
            })
            .collect();
        best_per_subject(&mut hits, k)
    }
}

/// Each subject's best hit, best first, at most `k`.
fn best_per_subject(hits: &mut [FingerHit], k: usize) -> Vec<FingerHit> {
    hits.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then(a.template_id.cmp(&b.template_id)));
    let mut seen = std::collections::HashSet::new();
    hits.iter().filter(|h| seen.insert(h.subject.clone())).take(k).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn print(seed: u64) -> Template {
        Template::new(&crate::finger::mcc::random_minutiae(seed, 35))
    }

    #[test]
    fn finds_the_same_print_and_forgets_removed_ones() {
        let mut g = FingerIndex::new(FingerIndexSettings::default());
        for i in 0..50 {
            g.add(i, format!("s{}", i / 2).into(), if i % 2 == 0 { 1 } else { 2 }, print(i as u64));
        }
        let hits = g.search(1, &print(10), 3, 2);
        assert_eq!(&*hits[0].subject, "s5");
        assert!(hits[0].score > 0.9 && hits[1].score < 0.3, "{hits:?}");
        assert!(g.search(2, &print(10), 3, 1)[0].score < 0.3, "another position is not searched");
        assert_eq!(hits[0].template_id, 10);
        assert_eq!(g.template(10).as_deref(), Some(&print(10)));
        g.remove(&[10, 999]);
        assert!(g.template(10).is_none());
        assert_ne!(&*g.search(1, &print(10), 3, 1)[0].subject, "s5");
        assert_eq!(g.len(), 49);
        // The entry moved into the removed slot is still found by id.
        assert_eq!(g.template(48).as_deref(), Some(&print(48)));
        g.remove(&[48]);
        assert!(g.template(48).is_none());
        assert_eq!(g.template(46).as_deref(), Some(&print(46)));
        assert_eq!(g.len(), 48);
    }

    #[test]
    fn parallel_map_keeps_the_order_whatever_the_threads() {
        let items: Vec<u64> = (0..1_001).collect();
        let want: Vec<u64> = items.iter().map(|x| x * x).collect();
        for threads in [0, 1, 2, 3, 7, 5_000] {
            assert_eq!(parallel_map(&items, threads, |x| x * x), want, "{threads} threads");
        }
        assert!(parallel_map(&[] as &[u64], 4, |x| *x).is_empty());
    }

    #[test]
    fn templates_prepared_on_threads_search_as_added_ones() {
        // Through the shortlist (from 10 templates on), whose keys were also prepared.
        let settings = FingerIndexSettings {
            shortlist_from: 10,
            shortlist_fraction: 0.25,
            shortlist_min: 5,
            shortlist_max: 100,
            ..FingerIndexSettings::default()
        };
        let (mut one, mut other) = (FingerIndex::new(settings), FingerIndex::new(settings));
        let seeds: Vec<u64> = (0..40).collect();
        for &i in &seeds {
            one.add(i as i64, format!("s{i}").into(), 1, print(i));
        }
        let prepared = parallel_map(&seeds, 3, |&i| Prepared::new(print(i)));
        for (&i, p) in seeds.iter().zip(prepared.clone()) {
            other.add_prepared(i as i64, format!("s{i}").into(), 1, p);
        }
        // In batches (two positions, an id given twice: the later stands), as a start-up adds them.
        let mut batched = FingerIndex::new(settings);
        let mut items: Vec<_> =
            seeds.iter().zip(prepared).map(|(&i, p)| (i as i64, Arc::<str>::from(format!("s{i}")), 1, p)).collect();
        items.insert(5, (7, "x".into(), 2, Prepared::new(print(99))));
        let rest = items.split_off(20);
        batched.add_prepared_batch(items);
        batched.add_prepared_batch(rest);
        assert_eq!(batched.len(), 40);
        for probe in [3, 7, 17, 39] {
            assert_eq!(one.search(1, &print(probe), 5, 1), other.search(1, &print(probe), 5, 1));
            assert_eq!(one.search(1, &print(probe), 5, 1), batched.search(1, &print(probe), 5, 1));
        }
        assert!(batched.search(2, &print(99), 1, 1).is_empty(), "the replaced template is gone");
    }
    #[test]
    fn a_large_probe_is_searched_in_two_passes_with_full_scores() {
        let settings = FingerIndexSettings {
            rerank: RerankSettings { probe_cap: 24, keep: 20 },
            ..FingerIndexSettings::default()
        };
        let (mut two, mut one) = (
            FingerIndex::new(settings),
            FingerIndex::new(FingerIndexSettings { rerank: RerankSettings::SINGLE_PASS, ..settings }),
        );
        let large = |seed: u64| Template::new(&crate::finger::mcc::random_minutiae(seed, 90));
        for i in 0..200 {
            for g in [&mut two, &mut one] {
                g.add(i, format!("s{i}").into(), 3, if i % 2 == 0 { large(i as u64) } else { print(i as u64) });
            }
        }
        // Another impression of 42: a quarter of its minutiae lost.
        let lost: Vec<_> = crate::finger::mcc::random_minutiae(42, 90)
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 4 != 0)
            .map(|(_, m)| m)
            .collect();
        let probe = Template::new(&lost);
        assert!(probe.len() > 24, "{} cylinders", probe.len());
        let (hits, all) = (two.search(3, &probe, 5, 2), one.search(3, &probe, 5, 2));
        assert_eq!(&*hits[0].subject, "s42");
        assert_eq!(hits[0].score.to_bits(), crate::finger::mcc::similarity(&probe, &large(42)).to_bits());
        assert_eq!(hits[0], all[0], "the best hit and its score are the single pass's");
    }
}

#[cfg(test)]
mod shortlist_tests {
    use super::*;
    use crate::finger::mcc::Minutia;

    #[test]
    fn the_candidate_stage_finds_a_rotated_copy_and_not_removed_ones() {
        {
            let stage = "hash votes";
            let settings = FingerIndexSettings {
                shortlist_from: 100,
                shortlist_fraction: 0.05,
                shortlist_min: 10,
                shortlist_max: 1_000,
                ..FingerIndexSettings::default()
            };
            let mut g = FingerIndex::new(settings);
            let random = |seed: u64| crate::finger::mcc::random_minutiae(seed, 40);
            for i in 0..300 {
                let template = Template::new(&random(i as u64 + 1));
                if i == 77 {
                    g.add_prepared(i, format!("s{i}").into(), 4, Prepared::new(template));
                } else {
                    g.add(i, format!("s{i}").into(), 4, template);
                }
            }
            // Rotated by 0.3 rad about the centre and shifted.
            let (sn, cs) = 0.3f32.sin_cos();
            let probe: Vec<Minutia> = random(78)
                .iter()
                .map(|m| {
                    let (x, y) = (m.x - 150.0, -(m.y - 200.0));
                    Minutia { x: x * cs - y * sn + 160.0, y: -(x * sn + y * cs) + 190.0, angle: m.angle + 0.3 }
                })
                .collect();
            let probe = Template::new(&probe);
            let hits = g.search(4, &probe, 20, 2);
            assert_eq!(&*hits[0].subject, "s77", "{stage}");
            // The full matcher scored only the shortlist (15 templates, the 5% of 300, at least 10).
            assert_eq!(hits.len(), 15, "{stage}");
            g.remove(&[77]);
            assert!(g.search(4, &probe, 5, 2).iter().all(|h| &*h.subject != "s77"), "{stage}");
        }
    }
}
