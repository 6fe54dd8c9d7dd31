//! The in-memory finger gallery: every enrolled finger's MCC template, by
//! finger position, derived from the store (never the only copy). A search
//! compares a probe with the templates of the same finger position on
//! several threads and keeps each subject's best score.

use std::{collections::HashMap, sync::Arc, thread};

use super::mcc::{Matcher, Template};

/// Positions 0..=10 (0 is unused: samples always name their finger).
const SLOTS: usize = 11;
/// Below this many templates a search runs on the calling thread only.
const PARALLEL_FROM: usize = 2_000;

#[derive(Debug, Clone)]
struct Entry {
    template_id: i64,
    subject: Arc<str>,
    template: Arc<Template>,
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

/// Finger templates by position, with removal by template id.
#[derive(Debug, Default)]
pub struct FingerGallery {
    by_position: [Vec<Entry>; SLOTS],
    /// template id -> (position, index in `by_position`).
    slots: HashMap<i64, (usize, usize)>,
    /// subject -> its template ids.
    subjects: HashMap<Arc<str>, Vec<i64>>,
}

impl FingerGallery {
    /// An empty gallery.
    pub fn new() -> Self {
        Self::default()
    }

    /// Templates held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the gallery is empty.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Adds a template; an id already present is replaced.
    pub fn add(&mut self, template_id: i64, subject: Arc<str>, position: u8, template: Template) {
        self.remove(&[template_id]);
        let p = usize::from(position).min(SLOTS - 1);
        let list = &mut self.by_position[p];
        self.slots.insert(template_id, (p, list.len()));
        self.subjects.entry(subject.clone()).or_default().push(template_id);
        list.push(Entry { template_id, subject, template: Arc::new(template) });
    }

    /// Removes templates by id (unknown ids are ignored).
    pub fn remove(&mut self, ids: &[i64]) {
        for id in ids {
            let Some((p, i)) = self.slots.remove(id) else { continue };
            let list = &mut self.by_position[p];
            let gone = list.swap_remove(i);
            if let Some(moved) = list.get(i) {
                self.slots.insert(moved.template_id, (p, i));
            }
            if let Some(ids) = self.subjects.get_mut(&gone.subject) {
                ids.retain(|t| t != id);
                if ids.is_empty() {
                    self.subjects.remove(&gone.subject);
                }
            }
        }
    }

    /// The `k` best subjects for a probe of the finger at `position`,
    /// comparing with every template of that position on up to `threads` threads.
    pub fn search(&self, position: u8, probe: &Template, k: usize, threads: usize) -> Vec<FingerHit> {
        let list = self.by_position.get(usize::from(position)).map_or(&[][..], Vec::as_slice);
        let threads = if list.len() < PARALLEL_FROM { 1 } else { threads.clamp(1, 64) };
        let chunk = list.len().div_ceil(threads).max(1);
        let mut hits: Vec<FingerHit> = if threads == 1 {
            scan(list, probe)
        } else {
            thread::scope(|s| {
                let parts: Vec<_> = list.chunks(chunk).map(|c| s.spawn(move || scan(c, probe))).collect();
                parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
            })
        };
        best_per_subject(&mut hits, k)
    }

    /// The best score of `subject`'s templates at `position` against the
    /// probe, if it has any there.
    pub fn score_subject(&self, subject: &str, position: u8, probe: &Template) -> Option<FingerHit> {
        let ids = self.subjects.get(subject)?;
        let mut matcher = Matcher::new();
        ids.iter()
            .filter_map(|id| self.slots.get(id))
            .filter(|(p, _)| *p == usize::from(position))
            .filter_map(|&(p, i)| self.by_position.get(p).and_then(|l| l.get(i)))
            .map(|e| FingerHit {
                subject: e.subject.clone(),
                template_id: e.template_id,
                score: matcher.similarity(probe, &e.template),
            })
            .max_by(|a, b| a.score.total_cmp(&b.score))
    }
}

fn scan(entries: &[Entry], probe: &Template) -> Vec<FingerHit> {
    let mut matcher = Matcher::new();
    entries
        .iter()
        .map(|e| FingerHit {
            subject: e.subject.clone(),
            template_id: e.template_id,
            score: matcher.similarity(probe, &e.template),
        })
        .collect()
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
    use crate::finger::mcc::Minutia;

    fn print(seed: u64) -> Template {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        let ms: Vec<Minutia> = (0..35)
            .map(|_| Minutia {
                x: 30.0 + 240.0 * next(),
                y: 30.0 + 340.0 * next(),
                angle: std::f32::consts::TAU * next(),
            })
            .collect();
        Template::new(&ms)
    }

    #[test]
    fn finds_the_same_print_and_forgets_removed_ones() {
        let mut g = FingerGallery::new();
        for i in 0..50 {
            g.add(i, format!("s{}", i / 2).into(), if i % 2 == 0 { 1 } else { 2 }, print(i as u64));
        }
        let hits = g.search(1, &print(10), 3, 2);
        assert_eq!(&*hits[0].subject, "s5");
        assert!(hits[0].score > 0.9 && hits[1].score < 0.3, "{hits:?}");
        assert!(g.search(2, &print(10), 3, 1)[0].score < 0.3, "another position is not searched");
        assert_eq!(g.score_subject("s5", 1, &print(10)).map(|h| h.template_id), Some(10));
        g.remove(&[10, 999]);
        assert_ne!(&*g.search(1, &print(10), 3, 1)[0].subject, "s5");
        assert_eq!(g.len(), 49);
        assert!(g.score_subject("s5", 1, &print(10)).is_none());
        // The entry moved into the removed slot is still found by id.
        g.remove(&[48]);
        assert_eq!(g.score_subject("s24", 1, &print(48)), None);
        assert_eq!(g.len(), 48);
    }
}
