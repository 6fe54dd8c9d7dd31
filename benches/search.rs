//! The face search kernels (k = 10) over N random unit vectors of the face
//! model's dimension: the faiss flat index (`kind = "flat"`) and the int8
//! and int4 scans with float32 re-rank (`kind = "int8"` / `"int4"`, one
//! thread), against a plain
//! scalar scan measured in the same run as the baseline. The approximate
//! kinds and large N are measured by the `face_index` bench.

use std::{hint::black_box, sync::Arc};

use cotejo::index::{IndexKind, IndexSettings, VectorIndex};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};

const DIM: usize = 192;

fn unit_vectors(n: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n * DIM).map(|_| rng.random::<f32>() - 0.5).collect();
    for row in v.chunks_exact_mut(DIM) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Baseline: score every row, keep the 10 best.
fn scan(gallery: &[f32], q: &[f32]) -> Vec<(f32, usize)> {
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(11);
    for (i, row) in gallery.chunks_exact(DIM).enumerate() {
        let s: f32 = row.iter().zip(q).map(|(a, b)| a * b).sum();
        if best.len() < 10 || s > best[best.len() - 1].0 {
            let at = best.partition_point(|&(x, _)| x >= s);
            best.insert(at, (s, i));
            best.truncate(10);
        }
    }
    best
}

fn search(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let mut group = c.benchmark_group("face_search_k10");
    for n in [10_000usize, 100_000] {
        let gallery = unit_vectors(n, &mut rng);
        let queries = unit_vectors(64, &mut rng);
        let mut index = VectorIndex::new(DIM).expect("index");
        let ids: Vec<i64> = (0..n as i64).collect();
        let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("s{i}"))).collect();
        index.add(&ids, &owners, &gallery).expect("add");
        let int8 = IndexSettings { kind: IndexKind::Int8 { rerank: 128 }, threads: 1 };
        let mut compressed = VectorIndex::with_settings(DIM, int8).expect("index");
        compressed.add(&ids, &owners, &gallery).expect("add");
        let int4 = IndexSettings { kind: IndexKind::Int4 { rerank: 1024 }, threads: 1 };
        let mut four_bit = VectorIndex::with_settings(DIM, int4).expect("index");
        four_bit.add(&ids, &owners, &gallery).expect("add");
        let mut qi = 0;
        group.bench_with_input(BenchmarkId::new("faiss_flat_ip", n), &n, |b, _| {
            b.iter(|| {
                qi = (qi + 1) % 64;
                black_box(index.search(&queries[qi * DIM..(qi + 1) * DIM], 10).expect("search"))
            });
        });
        group.bench_with_input(BenchmarkId::new("int8_rerank128", n), &n, |b, _| {
            b.iter(|| {
                qi = (qi + 1) % 64;
                black_box(compressed.search(&queries[qi * DIM..(qi + 1) * DIM], 10).expect("search"))
            });
        });
        group.bench_with_input(BenchmarkId::new("int4_rerank1024", n), &n, |b, _| {
            b.iter(|| {
                qi = (qi + 1) % 64;
                black_box(four_bit.search(&queries[qi * DIM..(qi + 1) * DIM], 10).expect("search"))
            });
        });
        group.bench_with_input(BenchmarkId::new("scalar_scan_baseline", n), &n, |b, _| {
            b.iter(|| {
                qi = (qi + 1) % 64;
                black_box(scan(&gallery, &queries[qi * DIM..(qi + 1) * DIM]))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
