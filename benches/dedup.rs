//! Face de-duplication throughput: the N x N comparison of a dedup job, by
//! blocks of matrix products (`cotejo::jobs::face_block`, what the job
//! runner runs on its one thread), against the baseline of N separate exact
//! searches (faiss `IndexFlatIP`, one query at a time, k = 10: what N
//! Identify calls would cost), measured in the same process.
//!
//! Run: `cargo bench --bench dedup -- --n 100000 --threads 1` (all blocks) or
//! `cargo bench --bench dedup -- --n 1000000 --sample-blocks 24` (a sample of
//! evenly spaced blocks; the total is extrapolated from the measured time per
//! comparison, since a block's cost is its rows times the rows after it).
//!
//! Vectors are random unit vectors of the face model's dimension (192):
//! the cost of a matrix product does not depend on their content.

use std::{sync::Arc, time::Instant};

use cotejo::{index::VectorIndex, jobs::face_block};
use ndarray::Array2;
use rand::{Rng, SeedableRng, rngs::StdRng};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut n = 100_000usize;
    let mut dim = 192usize;
    let mut block = 512usize;
    let mut sample = 0usize;
    let mut baseline_queries = 300usize;
    let mut threads = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--bench" {
            continue;
        }
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => n = value()?.parse()?,
            "--dim" => dim = value()?.parse()?,
            "--block" => block = value()?.parse()?,
            "--sample-blocks" => sample = value()?.parse()?,
            "--baseline-queries" => baseline_queries = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let mut rng = StdRng::seed_from_u64(5);
    let mut data: Vec<f32> = (0..n * dim).map(|_| rng.random::<f32>() - 0.5).collect();
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    let matrix = Array2::from_shape_vec((n, dim), data.clone())?;
    let blocks: Vec<usize> = (0..n).step_by(block).collect();
    let chosen: Vec<usize> = if sample == 0 || sample >= blocks.len() {
        blocks.clone()
    } else {
        (0..sample).map(|i| blocks[i * blocks.len() / sample]).collect()
    };
    let comparisons = |start: usize| -> f64 {
        let end = (start + block).min(n);
        // Rows start..end against the rows after each of them.
        (start..end).map(|i| (n - i - 1) as f64).sum()
    };
    let t = Instant::now();
    let (mut pairs, mut measured) = (0usize, 0.0f64);
    for &start in &chosen {
        pairs += face_block(matrix.view(), start, (start + block).min(n), 0.6, threads).len();
        measured += comparisons(start);
    }
    let secs = t.elapsed().as_secs_f64();
    let total: f64 = blocks.iter().map(|&s| comparisons(s)).sum();
    let blocks_secs = secs * total / measured;

    // Baseline: one exact faiss search per template.
    let mut index = VectorIndex::new(dim)?;
    let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("s{i}"))).collect();
    let ids: Vec<i64> = (0..n as i64).collect();
    for c in 0..n.div_ceil(65_536) {
        let (a, b) = (c * 65_536, ((c + 1) * 65_536).min(n));
        index.add(&ids[a..b], &owners[a..b], &data[a * dim..b * dim])?;
    }
    let q = baseline_queries.min(n);
    let t = Instant::now();
    for i in 0..q {
        let r = index.search(&data[i * dim..(i + 1) * dim], 10)?;
        std::hint::black_box(r);
    }
    let per_query = t.elapsed().as_secs_f64() / q as f64;
    let baseline_secs = per_query * n as f64;
    println!("n {n}, dim {dim}, block {block} rows, {} of {} blocks measured", chosen.len(), blocks.len());
    println!(
        "blocks of matrix products ({threads} thread(s)): {secs:.2} s measured for {measured:.3e} comparisons, {:.3e} comparisons/s",
        measured / secs
    );
    println!(
        "  whole N x N: {blocks_secs:.1} s ({:.2} h){}",
        blocks_secs / 3600.0,
        if chosen.len() < blocks.len() { " extrapolated" } else { "" }
    );
    println!("  pairs above cosine 0.6 in the measured blocks: {pairs}");
    println!(
        "baseline, N separate exact searches (faiss IndexFlatIP, k=10, 1 thread): {:.2} ms/query over {q} queries, {baseline_secs:.1} s for N",
        per_query * 1e3
    );
    println!("speed-up of the blocks over the baseline: {:.1}x", baseline_secs / blocks_secs);
    Ok(())
}
