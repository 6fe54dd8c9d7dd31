//! What the int8 and int4 scans share: the running top-r of a stream of
//! scores, and the split of a gallery's rows over threads with the merge of
//! their answers.

use std::{cmp::Ordering, ops::Range, thread};

/// Galleries with at least this many rows are split across threads; below, spawning costs more than it saves.
pub(super) const PARALLEL_MIN_ROWS: usize = 65_536;

/// Best first; equal scores order by position so every split of the rows gives the same answer.
pub(super) fn better(a: &(usize, f32), b: &(usize, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The best `r` of a stream of (position, score) offered in increasing position order. Candidates go to a
/// buffer of up to `2r`; when full it is cut back to the best `r`, whose worst becomes the bar to beat.
pub(super) struct TopR {
    r: usize,
    buf: Vec<(usize, f32)>,
    /// Scores at or below this cannot enter: `r` better ones (or equal with lower positions) are held.
    bar: f32,
}

impl TopR {
    pub(super) fn new(r: usize) -> Self {
        Self { r, buf: Vec::with_capacity(2 * r), bar: f32::NEG_INFINITY }
    }

    #[inline]
    pub(super) fn offer(&mut self, pos: usize, score: f32) {
        if score > self.bar {
            self.insert(pos, score);
        }
    }

    fn insert(&mut self, pos: usize, score: f32) {
        if self.buf.len() == 2 * self.r {
            self.buf.select_nth_unstable_by(self.r - 1, better);
            self.buf.truncate(self.r);
            self.bar = self.buf[self.r - 1].1;
            if score <= self.bar {
                return;
            }
        }
        self.buf.push((pos, score));
    }
}

/// The best `r` rows of `n` for each of `nq` queries, best first. `scan(rows, r)` scores a range of rows
/// for every query; from [`PARALLEL_MIN_ROWS`] rows on, `threads` contiguous ranges run at once (the
/// calling thread scans the first) and their answers are merged.
pub(super) fn split_search<F>(n: usize, nq: usize, r: usize, threads: usize, scan: F) -> Vec<Vec<(usize, f32)>>
where
    F: Fn(Range<usize>, usize) -> Vec<TopR> + Sync,
{
    if r == 0 || n == 0 {
        return vec![Vec::new(); nq];
    }
    // Buffers are sized from `r`; more than `n` could never be filled.
    let r = r.min(n);
    let threads = if n >= PARALLEL_MIN_ROWS { threads.clamp(1, n) } else { 1 };
    let chunk = n.div_ceil(threads);
    let range = |t: usize| (t * chunk).min(n)..((t + 1) * chunk).min(n);
    let scan = &scan;
    let mut parts = thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|t| s.spawn(move || scan(range(t), r))).collect();
        let mut parts = vec![scan(range(0), r)];
        // A panicking worker is a bug here; re-raise it on the caller's thread rather than hide it.
        parts.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
        parts
    });
    (0..nq)
        .map(|q| {
            let mut merged: Vec<(usize, f32)> = parts.iter_mut().flat_map(|p| p[q].buf.drain(..)).collect();
            merged.sort_unstable_by(better);
            merged.truncate(r);
            merged
        })
        .collect()
}
