//! Identify's face search over N faces on one node against S shard nodes
//! on this machine: one index of N rows, then S indexes holding the rows of
//! the subjects of their shard (`Shard::of`, as `serve --shard` loads them),
//! each searched on a thread of its own as S nodes would, the hits merged by
//! score as the router merges them. Same vectors, same queries, same
//! process; latency per query (p50, p99), agreement of the merged top 10
//! with the single index's, and resident memory per index.
//!
//! Vectors: N random unit vectors of the face model's dimension (192);
//! queries: 300 gallery rows plus noise (cosine about 0.7 to their row).
//!
//! `cargo bench --bench shards -- [--n 1000000] [--shards 2] [--kinds flat,int4]`

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cotejo::{
    index::{Hit, IndexKind, IndexSettings, VectorIndex},
    shard::Shard,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

const DIM: usize = 192;
const QUERIES: usize = 300;
const K: usize = 10;

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_owned())
}

fn normalise(row: &mut [f32]) {
    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
    row.iter_mut().for_each(|x| *x /= norm);
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn settings(kind: &str) -> IndexSettings {
    let kind = match kind {
        "flat" => IndexKind::Flat,
        "int8" => IndexKind::Int8 { rerank: 128 },
        "int4" => IndexKind::Int4 { rerank: 1024 },
        other => panic!("unknown kind {other}"),
    };
    // One thread per scan: on this 2-core machine the shards' scans run side by side.
    IndexSettings { kind, threads: 1 }
}

/// An index of the `rows` of `vectors`, and the resident memory it added.
fn build(kind: &str, vectors: &[f32], owners: &[Arc<str>], rows: &[usize]) -> (VectorIndex, u64) {
    let before = resident_bytes();
    let mut index = VectorIndex::with_settings(DIM, settings(kind)).expect("index");
    for chunk in rows.chunks(100_000) {
        let ids: Vec<i64> = chunk.iter().map(|&r| r as i64).collect();
        let who: Vec<Arc<str>> = chunk.iter().map(|&r| owners[r].clone()).collect();
        let mut v = Vec::with_capacity(chunk.len() * DIM);
        for &r in chunk {
            v.extend_from_slice(&vectors[r * DIM..(r + 1) * DIM]);
        }
        index.add(&ids, &who, &v).expect("add");
    }
    (index, resident_bytes().saturating_sub(before))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    cotejo::openmp::ensure_passive_wait();
    let n: usize = arg("--n", "1000000").parse().expect("--n");
    let s: u32 = arg("--shards", "2").parse().expect("--shards");
    let kinds = arg("--kinds", "flat,int4");
    let mut rng = StdRng::seed_from_u64(7);
    let mut vectors: Vec<f32> = (0..n * DIM).map(|_| rng.random::<f32>() - 0.5).collect();
    vectors.chunks_exact_mut(DIM).for_each(normalise);
    let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("subject-{i:08}"))).collect();
    let queries: Vec<Vec<f32>> = (0..QUERIES)
        .map(|_| {
            let r = rng.random_range(0..n);
            let mut q: Vec<f32> =
                vectors[r * DIM..(r + 1) * DIM].iter().map(|x| x + 0.07 * (rng.random::<f32>() - 0.5)).collect();
            normalise(&mut q);
            q
        })
        .collect();
    let mut shard_rows: Vec<Vec<usize>> = vec![Vec::new(); s as usize];
    for (r, o) in owners.iter().enumerate() {
        shard_rows[Shard::of(o, s).index as usize].push(r);
    }
    let all: Vec<usize> = (0..n).collect();
    println!(
        "N = {n}, {s} shards of {:?} rows, {QUERIES} queries, k = {K}",
        shard_rows.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for kind in kinds.split(',') {
        let (whole, whole_mem) = build(kind, &vectors, &owners, &all);
        let shards: Vec<(VectorIndex, u64)> =
            shard_rows.iter().map(|rows| build(kind, &vectors, &owners, rows)).collect();
        // Warm both, then interleave: each query on the whole index, then on the shards.
        for q in queries.iter().take(10) {
            whole.search(q, K).expect("search");
            shards.iter().for_each(|(i, _)| drop(i.search(q, K).expect("search")));
        }
        let (mut t_whole, mut t_shards, mut same) = (Vec::new(), Vec::new(), 0);
        for q in &queries {
            let t = Instant::now();
            let one = whole.search(q, K).expect("search");
            t_whole.push(t.elapsed());
            let t = Instant::now();
            let mut merged: Vec<Hit> = std::thread::scope(|sc| {
                let handles: Vec<_> =
                    shards.iter().map(|(i, _)| sc.spawn(move || i.search(q, K).expect("search"))).collect();
                handles.into_iter().flat_map(|h| h.join().expect("join")).collect()
            });
            merged.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.template_id.cmp(&b.template_id)));
            merged.truncate(K);
            t_shards.push(t.elapsed());
            let ids = |h: &[Hit]| h.iter().map(|x| x.template_id).collect::<Vec<_>>();
            same += usize::from(ids(&one) == ids(&merged));
        }
        t_whole.sort();
        t_shards.sort();
        let shard_mem: Vec<String> = shards.iter().map(|(_, m)| format!("{:.0} MB", *m as f64 / 1e6)).collect();
        println!(
            "{kind}: one index p50 {:.1} ms p99 {:.1} ms ({:.0} MB) | {s} shards p50 {:.1} ms p99 {:.1} ms ({}) | \
             p50 ratio {:.2}, p99 ratio {:.2} | same top {K}: {same}/{QUERIES}",
            pct(&t_whole, 0.5),
            pct(&t_whole, 0.99),
            whole_mem as f64 / 1e6,
            pct(&t_shards, 0.5),
            pct(&t_shards, 0.99),
            shard_mem.join(", "),
            pct(&t_shards, 0.5) / pct(&t_whole, 0.5),
            pct(&t_shards, 0.99) / pct(&t_whole, 0.99),
        );
    }
}
