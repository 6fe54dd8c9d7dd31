use super::*;

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// Deterministic pseudo-random unit vectors.
fn vectors(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(n * dim);
    for _ in 0..n {
        let row: Vec<f32> = (0..dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect();
        out.extend(unit(&row));
    }
    out
}

fn kinds() -> Vec<IndexKind> {
    vec![IndexKind::Flat, IndexKind::Int8 { rerank: 16 }, IndexKind::Int4 { rerank: 64 }]
}

#[test]
fn add_search_remove() {
    for kind in kinds() {
        let mut ix = VectorIndex::with_settings(3, IndexSettings { kind: kind.clone(), threads: 2 }).expect("index");
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        let vs: Vec<f32> = [unit(&[1.0, 0.0, 0.0]), unit(&[0.0, 1.0, 0.0]), unit(&[0.9, 0.1, 0.0])].concat();
        ix.add(&[10, 20, 30], &[a.clone(), b.clone(), a.clone()], &vs).expect("add");
        let hits = ix.search(&unit(&[1.0, 0.05, 0.0]), 3).expect("search");
        assert_eq!(hits[0].subject_id, a, "{kind:?}");
        assert_eq!(hits[0].template_id, 10, "{kind:?}");
        assert_eq!(hits.len(), 3, "{kind:?}");
        let per = best_per_subject(&hits, 10);
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].0, a);
        assert_eq!(ix.remove(&[10, 30, 99]).expect("remove"), 2, "{kind:?}");
        let hits = ix.search(&unit(&[1.0, 0.0, 0.0]), 3).expect("search");
        assert_eq!(hits.len(), 1, "{kind:?}");
        assert_eq!(hits[0].subject_id, b, "{kind:?}");
        assert!(ix.search(&[1.0], 1).is_err());
    }
}

#[test]
fn every_kind_finds_the_exact_best_on_easy_queries() {
    let (n, dim) = (2_000, 32);
    let gallery = vectors(n, dim, 7);
    let ids: Vec<i64> = (0..n as i64).collect();
    let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("s{i}"))).collect();
    // Queries: gallery rows with a little noise; the row itself is the best.
    let noise = vectors(50, dim, 9);
    let queries: Vec<f32> = (0..50)
        .flat_map(|q| {
            let row = &gallery[q * 37 * dim..(q * 37 + 1) * dim];
            unit(&row.iter().zip(&noise[q * dim..(q + 1) * dim]).map(|(a, b)| a + 0.2 * b).collect::<Vec<_>>())
        })
        .collect();
    for kind in kinds() {
        let mut ix = VectorIndex::with_settings(dim, IndexSettings { kind: kind.clone(), threads: 2 }).expect("index");
        ix.add(&ids, &owners, &gallery).expect("add");
        let hits = ix.search_batch(&queries, 5).expect("search");
        for (q, h) in hits.iter().enumerate() {
            assert_eq!(h.len(), 5, "{kind:?}");
            assert_eq!(h[0].template_id, (q * 37) as i64, "{kind:?} query {q}");
            assert!(h.windows(2).all(|w| w[0].score >= w[1].score), "{kind:?} sorted");
        }
        // Single and batch searches agree (up to rounding: BLAS for batches).
        let one = ix.search(&queries[..dim], 5).expect("search");
        let ids = |h: &[Hit]| h.iter().map(|h| h.template_id).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&hits[0]), "{kind:?}");
        assert!(one.iter().zip(&hits[0]).all(|(a, b)| (a.score - b.score).abs() < 1e-5), "{kind:?}");
    }
}

#[test]
fn snapshot_restores_and_replays_deletions_and_additions() {
    let dim = 24;
    let n = 1_200;
    let g = vectors(n, dim, 11);
    let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("s{}", i / 2))).collect();
    let ids: Vec<i64> = (1..=n as i64).collect();
    for kind in kinds() {
        let settings = IndexSettings { kind: kind.clone(), threads: 1 };
        let mut ix = VectorIndex::with_settings(dim, settings.clone()).expect("index");
        // The snapshot holds the first 1,000; 1..=10 are then deleted, and
        // 1,001.. are added after it.
        ix.add(&ids[..1000], &owners[..1000], &g[..1000 * dim]).expect("add");
        let bytes = ix.snapshot("model-a").expect("snapshot");
        let live: Vec<(i64, Arc<str>)> = ids.iter().zip(&owners).skip(10).map(|(i, o)| (*i, o.clone())).collect();
        let (mut restored, missing, dropped) =
            VectorIndex::restore(&bytes, dim, settings.clone(), "model-a", &live).expect("restore");
        assert_eq!(missing, ids[1000..].to_vec(), "{kind:?}");
        assert_eq!(dropped, 10, "{kind:?}");
        restored.add(&ids[1000..], &owners[1000..], &g[1000 * dim..]).expect("replay");
        assert_eq!(restored.len(), n - 10, "{kind:?}");
        for probe in [0usize, 5, 500, 1100] {
            let hits = restored.search(&g[probe * dim..(probe + 1) * dim], 3).expect("search");
            if probe < 10 {
                assert!(hits.iter().all(|h| h.template_id > 10), "{kind:?}: deleted {probe} returned");
            } else {
                assert_eq!(hits[0].template_id, ids[probe], "{kind:?}");
                assert_eq!(hits[0].subject_id, owners[probe], "{kind:?}");
            }
        }
        // A snapshot of another model or kind is refused.
        assert!(VectorIndex::restore(&bytes, dim, settings.clone(), "model-b", &live).is_err());
        let other = if kind == IndexKind::Flat { IndexKind::Int8 { rerank: 8 } } else { IndexKind::Flat };
        assert!(
            VectorIndex::restore(&bytes, dim, IndexSettings { kind: other, threads: 1 }, "model-a", &live).is_err()
        );
        assert!(VectorIndex::restore(&bytes[..bytes.len() / 2], dim, settings, "model-a", &live).is_err());
    }
}
