// Tests index their own fixtures: a panic is a failed test.
#![allow(clippy::indexing_slicing)]

use std::f32::consts::TAU;

use super::*;

/// Deterministic pseudo-random numbers in [0, 1).
fn sequence(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        #[allow(clippy::cast_precision_loss)]
        let v = (state >> 40) as f32 / (1_u64 << 24) as f32;
        v
    }
}

/// Random minutiae in a 300×400 frame.
fn random_minutiae(seed: u64, n: usize) -> Vec<mcc::Minutia> {
    let mut next = sequence(seed);
    (0..n).map(|_| mcc::Minutia { x: 40.0 + 220.0 * next(), y: 40.0 + 320.0 * next(), angle: TAU * next() }).collect()
}

/// Rotates by `phi` about (150, 200), translates, drops every `drop_every`-th minutia and jitters the rest.
fn distort(ms: &[mcc::Minutia], seed: u64, phi: f32, (tx, ty): (f32, f32), drop_every: usize) -> Vec<mcc::Minutia> {
    let mut next = sequence(seed);
    let (s, c) = phi.sin_cos();
    ms.iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % drop_every != 0)
        .map(|(_, m)| {
            let (x, y) = (m.x - 150.0, -(m.y - 200.0));
            let (rx, ry) = (x * c - y * s, x * s + y * c);
            mcc::Minutia {
                x: rx + 150.0 + tx + 3.0 * next() - 1.5,
                y: -ry + 200.0 + ty + 3.0 * next() - 1.5,
                angle: (m.angle + phi + 0.1 * next() - 0.05).rem_euclid(TAU),
            }
        })
        .collect()
}

fn gallery(fingers: u64) -> (ShortlistIndex, Vec<Vec<mcc::Minutia>>) {
    let mut index = ShortlistIndex::new();
    let mut minutiae = Vec::new();
    for key in 0..fingers {
        let ms = random_minutiae(1_000 + key, 35);
        assert_eq!(index.insert(key, &mcc::Template::new(&ms)), Ok(()));
        minutiae.push(ms);
    }
    (index, minutiae)
}

#[test]
fn distorted_copies_are_shortlisted_among_many_distractors() {
    let (index, minutiae) = gallery(400);
    assert_eq!(index.len(), 400);
    for (key, (phi, shift)) in [(3_u64, (0.4, (25.0, -10.0))), (77, (-0.5, (-30.0, 35.0))), (250, (0.0, (40.0, 0.0)))] {
        let ms = minutiae.get(usize::try_from(key).unwrap_or(0)).map_or(&[][..], Vec::as_slice);
        let probe = mcc::Template::new(&distort(ms, key, phi, shift, 6));
        let found = index.search(&probe, 4);
        assert!(found.contains(&key), "key {key} not in the shortlist {found:?}");
        assert_eq!(found.first(), Some(&key), "key {key} not first in {found:?}");
    }
}

#[test]
fn removed_keys_never_come_back() {
    let (mut index, minutiae) = gallery(60);
    // Removing a third of the gallery triggers at least one purge of the postings.
    for key in (0..60).step_by(3) {
        assert!(index.remove(key));
        assert!(!index.remove(key), "second removal of {key} succeeded");
    }
    assert_eq!(index.len(), 40);
    for (key, ms) in (0_u64..).zip(&minutiae) {
        let found = index.search(&mcc::Template::new(ms), 60);
        if key % 3 == 0 {
            assert!(!found.contains(&key), "removed key {key} came back");
            assert!(!index.contains(key));
        } else {
            assert_eq!(found.first(), Some(&key), "enrolled key {key} not first");
        }
        assert!(found.iter().all(|k| k % 3 != 0), "a removed key came back: {found:?}");
    }
    // The purge renumbered the live slots in order; a re-enrolled key takes the next slot and is found again.
    assert!(index.slot_keys.len() < 60, "no purge ran");
    assert_slot_order(&index);
    let before = index.slot_keys.len();
    assert_eq!(index.insert(0, &mcc::Template::new(minutiae.first().map_or(&[][..], Vec::as_slice))), Ok(()));
    assert_eq!(index.slot_keys.len(), before + 1);
    assert_slot_order(&index);
    assert_eq!(index.search(&mcc::Template::new(minutiae.first().map_or(&[][..], Vec::as_slice)), 1), vec![0]);
}

/// Every bucket lists its postings in increasing slot order (what the blocked search relies on).
fn assert_slot_order(index: &ShortlistIndex) {
    for list in &index.buckets {
        assert!(
            list.windows(2).all(|w| w.first().map(|p| p >> 8) <= w.get(1).map(|p| p >> 8)),
            "bucket out of slot order"
        );
    }
    for (slot, key) in index.slot_keys.iter().enumerate() {
        if let Some(key) = key {
            assert_eq!(index.slots.get(key).map(|&s| s as usize), Some(slot));
        }
    }
}

#[test]
fn blocked_and_parallel_searches_agree_with_one_pass() {
    let (mut index, minutiae) = gallery(300);
    for key in (0..300).step_by(7) {
        assert!(index.remove(key));
    }
    assert_slot_order(&index);
    for (key, ms) in (0_u64..).zip(&minutiae).step_by(23) {
        let probe = Descriptor::new(&mcc::Template::new(&distort(ms, key, 0.3, (10.0, -5.0), 5)));
        let one_pass = index.search_in_blocks(&probe, 25, 1, usize::MAX);
        assert!(!one_pass.is_empty());
        for (threads, block) in [(1, 16), (3, 16), (2, 50), (4, 7)] {
            assert_eq!(
                index.search_in_blocks(&probe, 25, threads, block),
                one_pass,
                "{threads} threads, block {block}"
            );
        }
        assert_eq!(index.search_descriptor(&probe, 25, 2), one_pass);
    }
}

#[test]
fn insert_replaces_what_the_key_held() {
    let mut index = ShortlistIndex::new();
    let (a, b) = (random_minutiae(1, 35), random_minutiae(2, 35));
    assert_eq!(index.insert(9, &mcc::Template::new(&a)), Ok(()));
    assert_eq!(index.insert(9, &mcc::Template::new(&b)), Ok(()));
    assert_eq!(index.len(), 1);
    assert_eq!(index.search(&mcc::Template::new(&b), 5), vec![9]);
    // Only `b`'s postings remain (replacing removed `a`, whose postings were purged).
    let kept = Descriptor::new(&mcc::Template::new(&b)).buckets.iter().filter(|&&bucket| bucket != EMPTY).count();
    assert_eq!(index.postings, kept);
    assert_eq!(index.buckets.iter().map(|b| b.len()).sum::<usize>(), kept);
}

#[test]
fn empty_inputs_give_empty_shortlists() {
    let mut index = ShortlistIndex::new();
    let some = mcc::Template::new(&random_minutiae(5, 30));
    assert!(index.search(&some, 10).is_empty());
    assert_eq!(index.insert(1, &mcc::Template::new(&[])), Ok(()));
    assert_eq!(index.insert(2, &some), Ok(()));
    assert!(index.search(&mcc::Template::new(&[]), 10).is_empty());
    assert!(index.search(&some, 0).is_empty());
    assert_eq!(index.search(&some, 10), vec![2]);
    assert!(Descriptor::new(&mcc::Template::new(&[])).is_empty());
}

#[test]
fn index_is_shareable_between_threads() {
    fn assert_sync_send<T: Sync + Send>() {}
    assert_sync_send::<ShortlistIndex>();
    assert_sync_send::<Descriptor>();
}

#[test]
fn sampler_picks_distinct_central_bits_per_table() {
    assert_eq!(SAMPLER.positions.len(), TABLES * KEY_BITS);
    for sample in SAMPLER.positions.chunks_exact(KEY_BITS) {
        let mut sorted = sample.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), KEY_BITS);
        assert!(sample.iter().all(|&p| usize::from(p) < CELLS_XY * mcc::ND));
    }
    assert_eq!(turn_units(0.0), 0);
    assert_eq!(turn_units(TAU / 4.0), 64);
    assert_eq!(turn_units(-TAU / 4.0), 192);
}

#[test]
fn rare_buckets_weigh_more() {
    assert_eq!(vote_weight(100, 100.0), 4);
    assert_eq!(vote_weight(1, 100.0), 8);
    assert_eq!(vote_weight(100_000, 100.0), 1);
    let weights: Vec<u8> = [1, 10, 50, 100, 200, 400, 800, 5_000].iter().map(|&l| vote_weight(l, 100.0)).collect();
    assert!(weights.windows(2).all(|w| w.first() >= w.get(1)), "{weights:?}");
    assert!(weights.iter().all(|w| (1..=MAX_VOTE_WEIGHT).contains(w)));
}

#[test]
fn a_clone_keeps_its_buckets_while_the_original_changes() {
    let templates: Vec<mcc::Template> = (0..40).map(|i| mcc::Template::new(&random_minutiae(100 + i, 35))).collect();
    let mut index = ShortlistIndex::new();
    for (i, t) in templates.iter().take(30).enumerate() {
        assert_eq!(index.insert(i as u64, t), Ok(()));
    }
    let frozen = index.clone();
    let shared = |a: &ShortlistIndex, b: &ShortlistIndex| {
        a.buckets.iter().zip(&b.buckets).filter(|(x, y)| !x.is_empty() && Arc::ptr_eq(x, y)).count()
    };
    assert_eq!(shared(&index, &frozen), index.nonempty_buckets, "a clone copies no bucket");
    let probes: Vec<Descriptor> = templates.iter().map(Descriptor::new).collect();
    let before: Vec<Vec<u64>> = probes.iter().map(|d| frozen.search_descriptor(d, 5, 1)).collect();
    for (i, t) in templates.iter().enumerate().skip(30) {
        assert_eq!(index.insert(i as u64, t), Ok(()));
    }
    for key in 0..12 {
        assert!(index.remove(key));
    }
    // The clone answers as when it was taken; the original with its changes.
    let after: Vec<Vec<u64>> = probes.iter().map(|d| frozen.search_descriptor(d, 5, 1)).collect();
    assert_eq!(after, before);
    assert_eq!(frozen.len(), 30);
    assert_eq!(index.len(), 28);
    for (key, d) in probes.iter().enumerate() {
        let found = index.search_descriptor(d, 5, 1);
        assert!(found.iter().all(|&k| k >= 12), "a removed key came back");
        if key >= 12 {
            assert_eq!(found.first(), Some(&(key as u64)));
        }
    }
    assert!(shared(&index, &frozen) < frozen.nonempty_buckets, "written buckets were copied");
    assert_slot_order(&index);
    assert_slot_order(&frozen);
}

#[test]
fn a_batch_builds_the_index_one_insertion_at_a_time_would() {
    let templates: Vec<mcc::Template> = (0..50).map(|i| mcc::Template::new(&random_minutiae(200 + i, 30))).collect();
    let descriptors: Vec<Descriptor> = templates.iter().map(Descriptor::new).collect();
    // Keys 0..50, then 5 and 17 again with other templates (replacements), then removals.
    let mut order: Vec<(u64, usize)> = (0..50).map(|i| (i as u64, i)).collect();
    order.extend([(5, 40), (17, 41)]);
    let mut one = ShortlistIndex::new();
    for &(key, t) in &order {
        assert_eq!(one.insert_descriptor(key, &descriptors[t]), Ok(()));
    }
    let mut batched = ShortlistIndex::new();
    let items: Vec<(u64, &Descriptor)> = order.iter().map(|&(key, t)| (key, &descriptors[t])).collect();
    let (first, second) = items.split_at(20);
    assert_eq!(batched.insert_batch(first), Ok(()));
    let _ = batched.clone(); // a clone taken between batches changes nothing
    assert_eq!(batched.insert_batch(second), Ok(()));
    for index in [&mut one, &mut batched] {
        for key in [3, 5, 30] {
            assert!(index.remove(key));
        }
    }
    assert_eq!(batched.len(), one.len());
    assert_eq!((batched.postings, batched.nonempty_buckets), (one.postings, one.nonempty_buckets));
    assert_eq!(batched.slot_keys, one.slot_keys);
    assert!(batched.buckets.iter().zip(&one.buckets).all(|(a, b)| a.as_slice() == b.as_slice()), "same postings");
    assert_slot_order(&batched);
    // A key twice in one batch: the later descriptor stands, in one slot.
    let mut twice = ShortlistIndex::new();
    assert_eq!(twice.insert_batch(&[(1, &descriptors[0]), (2, &descriptors[1]), (1, &descriptors[2])]), Ok(()));
    assert_eq!(twice.len(), 2);
    assert_eq!(twice.slot_keys.len(), 2);
    assert_eq!(twice.search_descriptor(&descriptors[2], 1, 1), vec![1]);
    assert_eq!(twice.search_descriptor(&descriptors[1], 1, 1), vec![2]);
    assert_eq!(ShortlistIndex::new().insert_batch(&[]), Ok(()));
}

#[test]
fn a_probe_hashes_its_central_cylinders_only() {
    // 120 minutiae spread over the frame: more valid cylinders than the cap.
    let minutiae = random_minutiae(300, 120);
    let template = mcc::Template::new(&minutiae);
    assert!(template.len() > PROBE_CYLINDERS, "{} cylinders", template.len());
    let full = Descriptor::new(&template);
    let probe = Descriptor::for_probe(&template);
    assert_eq!(probe.len(), PROBE_CYLINDERS);
    assert_eq!(probe.buckets.len(), PROBE_CYLINDERS * TABLES);
    // The kept cylinders are the full descriptor's, in order, and the most central ones.
    let points: Vec<(f32, f32)> = template.cylinders().map(|(x, y, ..)| (x, y)).collect();
    let n = points.len() as f32;
    let (cx, cy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let kept: Vec<usize> = (0..full.len())
        .filter(|&i| probe.buckets.chunks_exact(TABLES).any(|c| c == &full.buckets[i * TABLES..(i + 1) * TABLES]))
        .collect();
    assert!(kept.len() >= PROBE_CYLINDERS);
    let distance = |i: usize| (points[i].0 - cx).hypot(points[i].1 - cy);
    let farthest_kept = kept.iter().map(|&i| distance(i)).fold(0.0_f32, f32::max);
    let dropped_nearest = (0..full.len()).filter(|i| !kept.contains(i)).map(distance).fold(f32::INFINITY, f32::min);
    assert!(farthest_kept <= dropped_nearest, "{farthest_kept} > {dropped_nearest}");
    // A small template is hashed whole, and a capped probe still finds its own template.
    let small = mcc::Template::new(&random_minutiae(301, 30));
    assert_eq!(Descriptor::for_probe(&small), Descriptor::new(&small));
    let mut index = ShortlistIndex::new();
    assert_eq!(index.insert(7, &template), Ok(()));
    assert_eq!(index.insert(8, &small), Ok(()));
    assert_eq!(index.search(&template, 1), vec![7]);
}

#[test]
fn the_vote_reductions_are_the_plain_formulas() {
    let mut next = sequence(77);
    for case in 0..2_000 {
        let mut bins = [0_u8; ROTATION_BINS];
        // Mostly sparse bins, some saturated, some all zero.
        for b in &mut bins {
            let r = next();
            *b = if case % 7 == 0 || r < 0.7 { 0 } else { (next() * 256.0) as u8 };
        }
        if case % 11 == 0 {
            bins = [255; ROTATION_BINS];
        }
        let plain = bins.iter().zip(bins.iter().cycle().skip(1)).map(|(&a, &b)| u32::from(a) + u32::from(b)).max();
        assert_eq!(best_adjacent(&bins), plain.unwrap_or(0), "case {case}: {bins:?}");
    }
    assert_eq!(best_adjacent(&[1, 2, 3]), 0, "a slice of another length has no bins");
    for c in [0_u16, 1, 7, 8, 9, 35, 100, 1_024, 1_025, 60_000] {
        let direct = (f64::from(50_u32) / f64::from(c.max(8)).powf(0.25) * 1024.0) as u32;
        assert_eq!(score(50, c, &NORMS), direct, "{c} cylinders");
    }
}
