//! Face Identify search (k = 10) with every index kind, against faiss
//! `IndexFlatIP` (float32, exact: the baseline and the ground truth) built
//! and searched in the same process on the same data.
//!
//! Run: `cargo bench --bench face_index -- --n 1000000 --kinds int8,int4`
//! (a kind is `flat`, `int8[:rerank]` or `int4[:rerank]`; several shortlist
//! sizes of one kind: `int4:256/1024`). Options: `--queries Q`
//! (default 1000), `--threads T` (int8 scan threads, default 1),
//! `--data DIR` (default ../shared/data/faces/lfw-dev).
//!
//! Data. Real embeddings: every lfw-dev image through the service's own face
//! pipeline (cached in the bench's target directory after the first run).
//! The gallery holds the first image of every identity; the rest is
//! synthetic, drawn from Gaussians fitted to the real embeddings: identities
//! from the mean and covariance of the real gallery vectors, and a mated
//! probe of a synthetic identity by adding a within-identity deviation drawn
//! from the covariance of the real images around their identity's mean,
//! scaled so that synthetic mated pairs have the real pairs' mean cosine. Half
//! of the queries are real mated probes (other lfw-dev images of gallery
//! identities), half synthetic mated probes. The bench prints the cosine
//! statistics of both, so the synthetic data can be checked against the real.
//!
//! Measured per kind: build seconds, resident memory added by the build per
//! template (run one kind per process for a clean figure), single-query
//! throughput, p50/p99 latency, batch-of-32 throughput and p99, recall@1
//! and recall@10 against the exact float32 top 10.

use std::{path::PathBuf, sync::Arc, time::Instant};

use cotejo::{
    config::Config,
    eval,
    index::{IndexKind, IndexSettings, VectorIndex},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The command line (see the top of this file).
struct Opts {
    n: usize,
    kinds: String,
    queries: usize,
    threads: usize,
    data: PathBuf,
}

impl Opts {
    fn parse() -> Res<Self> {
        let mut o = Self {
            n: 100_000,
            kinds: "flat,int8,int4".to_owned(),
            queries: 1000,
            threads: 1,
            data: PathBuf::from("../shared/data/faces/lfw-dev"),
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--bench" {
                continue;
            }
            let mut value = || args.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--n" => o.n = value()?.parse()?,
                "--kinds" => o.kinds = value()?,
                "--queries" => o.queries = value()?.parse()?,
                "--threads" => o.threads = value()?.parse()?,
                "--data" => o.data = value()?.into(),
                other => return Err(format!("unknown option {other}").into()),
            }
        }
        Ok(o)
    }
}

fn main() -> Res<()> {
    // The same OpenMP setting as the service, for every kind and the baseline.
    cotejo::openmp::ensure_passive_wait();
    let Opts { n, kinds, queries, threads, data } = Opts::parse()?;
    let real = real_embeddings(&data)?;
    let dim = real.dim;
    let (gallery, probes, mates) = dataset(&real, n, queries, 17);
    let n = gallery.len() / dim;
    let nq = probes.len() / dim;
    eprintln!("gallery {n} ({} real), {nq} queries ({} real)", real.gallery_len(), real.probe_len().min(nq / 2));
    let ids: Vec<i64> = (0..n as i64).collect();
    let owners: Vec<Arc<str>> = (0..n).map(|i| Arc::from(format!("s{i}"))).collect();

    // Kinds first (their resident memory is measured on a fresh heap), then
    // the baseline in the same process.
    let mut rows = Vec::new();
    for spec in kinds.split(',').filter(|s| !s.is_empty() && *s != "flat") {
        let (kind, breadths) = parse_kind(spec)?;
        let rss0 = rss_bytes();
        let t = Instant::now();
        let mut ix = build(dim, kind.clone(), threads, &ids, &owners, &gallery)?;
        let build_s = t.elapsed().as_secs_f64();
        let mem = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
        for b in breadths {
            if let Some(b) = b {
                ix.set_search_breadth(b);
            }
            let label = format!("{}{}", kind.name(), b.map(|b| format!(":{b}")).unwrap_or_default());
            rows.push(measure(&label, &ix, &probes, dim, build_s, mem)?);
        }
    }
    let rss0 = rss_bytes();
    let t = Instant::now();
    let flat = build(dim, IndexKind::Flat, threads, &ids, &owners, &gallery)?;
    let build_s = t.elapsed().as_secs_f64();
    let mem = rss_bytes().saturating_sub(rss0) as f64 / n as f64;
    let base = measure("flat (baseline)", &flat, &probes, dim, build_s, mem)?;
    let truth = base.top10.clone();
    let mate_hit = base.top10.iter().zip(&mates).filter(|(t, m)| t.first() == Some(m)).count();
    println!("N = {n}, dim {dim}, {nq} queries; exact rank-1 on the planted mate: {:.3}", mate_hit as f64 / nq as f64);
    println!(
        "{:<18} {:>8} {:>9} {:>10} {:>9} {:>9} {:>8} {:>10} {:>8} {:>11} {:>9} {:>9} {:>7}",
        "index",
        "build s",
        "B/templ",
        "single q/s",
        "p50 ms",
        "p99 ms",
        "x base",
        "2 clients",
        "x base",
        "batch32 q/s",
        "b32 p99",
        "recall@1",
        "@10"
    );
    for r in std::iter::once(&base).chain(&rows) {
        let (r1, r10) = recall(&r.top10, &truth);
        println!(
            "{:<18} {:>8.1} {:>9.0} {:>10.1} {:>9.2} {:>9.2} {:>8.2} {:>10.1} {:>8.2} {:>11.1} {:>9.1} {:>9.4} {:>7.4}",
            r.label,
            r.build_s,
            r.mem,
            r.single_qps,
            r.p50,
            r.p99,
            r.single_qps / base.single_qps,
            r.two_clients_qps,
            r.two_clients_qps / base.two_clients_qps,
            r.batch_qps,
            r.batch_p99,
            r1,
            r10
        );
    }
    Ok(())
}

struct Row {
    label: String,
    build_s: f64,
    mem: f64,
    single_qps: f64,
    two_clients_qps: f64,
    p50: f64,
    p99: f64,
    batch_qps: f64,
    batch_p99: f64,
    top10: Vec<Vec<i64>>,
}

fn build(
    dim: usize,
    kind: IndexKind,
    threads: usize,
    ids: &[i64],
    owners: &[Arc<str>],
    vectors: &[f32],
) -> Res<VectorIndex> {
    let mut ix = VectorIndex::with_settings(dim, IndexSettings { kind, threads })?;
    for (c, chunk) in ids.chunks(65_536).enumerate() {
        let a = c * 65_536;
        ix.add(chunk, &owners[a..a + chunk.len()], &vectors[a * dim..(a + chunk.len()) * dim])?;
    }
    Ok(ix)
}

fn measure(label: &str, ix: &VectorIndex, probes: &[f32], dim: usize, build_s: f64, mem: f64) -> Res<Row> {
    let mut lat = Vec::new();
    let mut top10 = Vec::new();
    let t = Instant::now();
    for q in probes.chunks_exact(dim) {
        let t = Instant::now();
        let hits = ix.search(q, 10)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
        top10.push(hits.iter().map(|h| h.template_id).collect::<Vec<_>>());
    }
    let single_qps = lat.len() as f64 / t.elapsed().as_secs_f64();
    // Two clients at once, each one query per call (both cores busy).
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..2 {
            s.spawn(move || {
                for q in probes.chunks_exact(dim).skip(c).step_by(2) {
                    std::hint::black_box(ix.search(q, 10).ok());
                }
            });
        }
    });
    let two_clients_qps = (probes.len() / dim) as f64 / t.elapsed().as_secs_f64();
    let mut blat = Vec::new();
    let t = Instant::now();
    for b in probes.chunks(32 * dim) {
        let t = Instant::now();
        std::hint::black_box(ix.search_batch(b, 10)?);
        blat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let batch_qps = (probes.len() / dim) as f64 / t.elapsed().as_secs_f64();
    eprintln!("measured {label}");
    Ok(Row {
        label: label.to_owned(),
        build_s,
        mem,
        single_qps,
        two_clients_qps,
        p50: quantile(&mut lat.clone(), 0.5),
        p99: quantile(&mut lat, 0.99),
        batch_qps,
        batch_p99: quantile(&mut blat, 0.99),
        top10,
    })
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

/// recall@1: the exact best is the answer's first; recall@10: share of the
/// exact top 10 in the answer's top 10.
fn recall(got: &[Vec<i64>], truth: &[Vec<i64>]) -> (f64, f64) {
    let (mut r1, mut r10) = (0.0, 0.0);
    for (g, t) in got.iter().zip(truth) {
        r1 += f64::from(u8::from(g.first() == t.first()));
        r10 += t.iter().filter(|x| g.contains(x)).count() as f64 / t.len().max(1) as f64;
    }
    (r1 / truth.len() as f64, r10 / truth.len() as f64)
}

fn parse_kind(spec: &str) -> Res<(IndexKind, Vec<Option<usize>>)> {
    let (name, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let breadths: Vec<Option<usize>> = if rest.is_empty() {
        vec![None]
    } else {
        rest.split('/').map(|b| b.parse().map(Some)).collect::<Result<_, _>>()?
    };
    let kind = match name {
        "int8" => IndexKind::Int8 { rerank: 128 },
        "int4" => IndexKind::Int4 { rerank: 1024 },
        other => return Err(format!("unknown kind {other}").into()),
    };
    Ok((kind, breadths))
}

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Real embeddings grouped by identity (only images that gave a face).
struct Real {
    dim: usize,
    identities: Vec<Vec<Vec<f32>>>,
}

impl Real {
    fn gallery_len(&self) -> usize {
        self.identities.len()
    }

    fn probe_len(&self) -> usize {
        self.identities.iter().map(|v| v.len() - 1).sum()
    }
}

fn real_embeddings(data: &std::path::Path) -> Res<Real> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("face-index-bench-lfw-dev.json");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        let identities: Vec<Vec<Vec<f32>>> = serde_json::from_str(&text)?;
        let dim = identities.first().and_then(|i| i.first()).map_or(0, Vec::len);
        return Ok(Real { dim, identities });
    }
    let config = Config::load(None)?;
    let (manifest, settings) = eval::pipeline(&config)?;
    let images = eval::read_labels(data)?;
    let embedded = eval::embed_all(&manifest, settings, &images, false, 2)?;
    let mut by_id: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for (img, e) in images.iter().zip(embedded) {
        let Ok(v) = e else { continue };
        match by_id.iter_mut().find(|(id, _)| *id == img.identity) {
            Some((_, list)) => list.push(v),
            None => by_id.push((img.identity.clone(), vec![v])),
        }
    }
    let identities: Vec<Vec<Vec<f32>>> = by_id.into_iter().map(|(_, v)| v).collect();
    std::fs::write(&cache, serde_json::to_string(&identities)?)?;
    let dim = identities.first().and_then(|i| i.first()).map_or(0, Vec::len);
    Ok(Real { dim, identities })
}

/// Gallery (N vectors), queries, and each query's planted mate (gallery row).
fn dataset(real: &Real, n: usize, queries: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<i64>) {
    let d = real.dim;
    let firsts: Vec<&[f32]> = real.identities.iter().map(|v| v[0].as_slice()).collect();
    let (mean, between) = covariance(firsts.iter().copied(), d, None);
    let mut residuals = Vec::new();
    for imgs in real.identities.iter().filter(|v| v.len() >= 2) {
        let m: Vec<f32> = (0..d).map(|j| imgs.iter().map(|v| v[j]).sum::<f32>() / imgs.len() as f32).collect();
        // Deviations from a sample mean are smaller than from the true one.
        let scale = (imgs.len() as f32 / (imgs.len() as f32 - 1.0)).sqrt();
        for v in imgs {
            residuals.push(v.iter().zip(&m).map(|(a, b)| (a - b) * scale).collect::<Vec<f32>>());
        }
    }
    let (_, within) = covariance(residuals.iter().map(Vec::as_slice), d, Some(vec![0.0; d]));
    let (lb, lw) = (cholesky(&between, d), cholesky(&within, d));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gallery: Vec<f32> = firsts.iter().flat_map(|v| v.iter().copied()).collect();
    gallery.truncate(n * d);
    while gallery.len() < n * d {
        let z = gaussian(&lb, d, &mut rng);
        gallery.extend(unit(&z.iter().zip(&mean).map(|(a, b)| a + b).collect::<Vec<_>>()));
    }
    let n = gallery.len() / d;
    let (mut probes, mut mates) = (Vec::new(), Vec::new());
    'real: for (i, imgs) in real.identities.iter().enumerate().filter(|(i, _)| *i < n) {
        for v in &imgs[1..] {
            if mates.len() >= queries / 2 {
                break 'real;
            }
            probes.extend_from_slice(v);
            mates.push(i as i64);
        }
    }
    let real_q = mates.len();
    let cos = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    // A real mated pair is two deviations from the identity's centre; a
    // synthetic probe is one deviation from a gallery vector. Scale the
    // deviation so that synthetic mated pairs have the real mean cosine c:
    // cos(g, g + s*w) = 1 / sqrt(1 + s^2 |w|^2) with |w|^2 about trace(within).
    let c = (0..real_q).map(|q| cos(&probes[q * d..(q + 1) * d], &gallery[mates[q] as usize * d..][..d])).sum::<f32>()
        / real_q.max(1) as f32;
    let trace: f64 = (0..d).map(|i| within[i * d + i]).sum();
    let s = ((1.0 / f64::from(c * c) - 1.0) / trace).sqrt() as f32;
    while mates.len() < queries {
        let g = rng.random_range(real.identities.len().min(n - 1)..n);
        let w = gaussian(&lw, d, &mut rng);
        probes.extend(unit(&gallery[g * d..(g + 1) * d].iter().zip(&w).map(|(a, b)| a + s * b).collect::<Vec<_>>()));
        mates.push(g as i64);
    }
    let mated = |range: std::ops::Range<usize>| {
        let v: Vec<f32> =
            range.map(|q| cos(&probes[q * d..(q + 1) * d], &gallery[mates[q] as usize * d..][..d])).collect();
        v.iter().sum::<f32>() / v.len().max(1) as f32
    };
    let impostor = |range: std::ops::Range<usize>| {
        let v: Vec<f32> = range
            .map(|q| cos(&probes[q * d..(q + 1) * d], &gallery[((mates[q] as usize + 7919) % n) * d..][..d]))
            .collect();
        v.iter().sum::<f32>() / v.len().max(1) as f32
    };
    eprintln!(
        "mean cosine, mated / impostor: real probes {:.3} / {:.3}, synthetic probes {:.3} / {:.3}",
        mated(0..real_q),
        impostor(0..real_q),
        mated(real_q..mates.len()),
        impostor(real_q..mates.len())
    );
    (gallery, probes, mates)
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

/// Mean (or the given one) and covariance of rows, in f64.
fn covariance<'a>(
    rows: impl Iterator<Item = &'a [f32]> + Clone,
    d: usize,
    mean: Option<Vec<f64>>,
) -> (Vec<f32>, Vec<f64>) {
    let count = rows.clone().count().max(2) as f64;
    let mean = mean.unwrap_or_else(|| {
        let mut m = vec![0.0f64; d];
        for r in rows.clone() {
            m.iter_mut().zip(r).for_each(|(a, &b)| *a += f64::from(b));
        }
        m.iter().map(|x| x / count).collect()
    });
    let mut c = vec![0.0f64; d * d];
    for r in rows {
        let x: Vec<f64> = r.iter().zip(&mean).map(|(&a, b)| f64::from(a) - b).collect();
        for i in 0..d {
            for j in 0..=i {
                c[i * d + j] += x[i] * x[j];
            }
        }
    }
    for i in 0..d {
        for j in 0..=i {
            c[i * d + j] /= count - 1.0;
            c[j * d + i] = c[i * d + j];
        }
    }
    (mean.iter().map(|&x| x as f32).collect(), c)
}

/// Lower Cholesky factor (with a small ridge for rank deficiency).
fn cholesky(a: &[f64], d: usize) -> Vec<f64> {
    let ridge = 1e-6 * (0..d).map(|i| a[i * d + i]).sum::<f64>() / d as f64;
    let mut l = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                l[i * d + i] = (a[i * d + i] + ridge - s).max(1e-12).sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    l
}

/// A draw of N(0, L L^T).
fn gaussian(l: &[f64], d: usize, rng: &mut StdRng) -> Vec<f32> {
    let z: Vec<f64> = (0..d)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-300), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        })
        .collect();
    (0..d).map(|i| (0..=i).map(|k| l[i * d + k] * z[k]).sum::<f64>() as f32).collect()
}
