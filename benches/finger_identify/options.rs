//! The bench's command line (see `finger_identify.rs` for the options).

use std::path::PathBuf;

use cotejo::finger::rerank::RerankSettings;

use super::Res;
use super::identify::PROBE_CAP;

/// A candidate stage and its shortlist size (`None`: `--shortlist`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stage {
    /// The sketch scan (`finger::sketch`) rather than the hash votes.
    pub(crate) scan: bool,
    pub(crate) n: Option<usize>,
}

#[derive(Debug)]
pub(crate) struct Options {
    pub(crate) data: PathBuf,
    /// Where the `.iso` templates are (default: beside the images in `data`).
    pub(crate) templates: Option<PathBuf>,
    pub(crate) gallery: usize,
    pub(crate) threads: Vec<usize>,
    pub(crate) shortlist: usize,
    pub(crate) exhaustive: usize,
    pub(crate) runs: usize,
    pub(crate) seed: u64,
    pub(crate) shards: usize,
    pub(crate) one_pass_probes: usize,
    pub(crate) sketch: Option<(u32, usize, usize)>,
    /// The candidate stages measured, each with its shortlist size: the hash
    /// votes (the default, `--shortlist`) and/or the sketch scan.
    pub(crate) candidates: Vec<Stage>,
    pub(crate) rescore: usize,
    pub(crate) min_minutiae: usize,
    pub(crate) insert_baseline: bool,
    pub(crate) blocks: Vec<usize>,
    /// With `--long-lists`: probe buckets longer than each ratio times the mean are skipped (experiment).
    pub(crate) long_lists: Vec<f64>,
    /// With `--dump FILE`: every probe's rescored candidates with their vote and sketch scores (experiment).
    pub(crate) dump: Option<PathBuf>,
    /// Re-rank settings, each run on every probe and thread count, interleaved.
    pub(crate) rerank: Vec<RerankSettings>,
}

impl Options {
    pub(crate) fn parse() -> Res<Self> {
        let mut o = Self {
            data: PathBuf::from("../shared/data/fingerprints/fvc2002"),
            templates: None,
            gallery: 250_000,
            threads: vec![1, 2],
            shortlist: 2_000,
            exhaustive: 1_000,
            runs: 2,
            seed: 20_250_101,
            shards: 1,
            one_pass_probes: 40,
            sketch: None,
            candidates: Vec::new(),
            rescore: 42,
            min_minutiae: 0,
            insert_baseline: false,
            blocks: Vec::new(),
            rerank: vec![RerankSettings::default()],
            long_lists: Vec::new(),
            dump: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--bench" {
                continue;
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--data" => o.data = PathBuf::from(value),
                "--templates" => o.templates = Some(PathBuf::from(value)),
                "--gallery" => o.gallery = value.parse()?,
                "--threads" => o.threads = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--shortlist" => o.shortlist = value.parse()?,
                "--candidates" => {
                    for item in value.split(',') {
                        let (name, size) = item.split_once(':').unwrap_or((item, ""));
                        let n = if size.is_empty() { None } else { Some(size.parse()?) };
                        o.candidates.push(match name {
                            "votes" => Stage { scan: false, n },
                            "sketch" => Stage { scan: true, n },
                            _ => return Err("--candidates wants votes[:N] and/or sketch[:N]".into()),
                        });
                    }
                }
                "--exhaustive" => o.exhaustive = value.parse()?,
                "--seed" => o.seed = value.parse()?,
                "--runs" => o.runs = value.parse::<usize>()?.clamp(1, 2),
                "--shards" => o.shards = value.parse::<usize>()?.max(1),
                "--one-pass-probes" => o.one_pass_probes = value.parse()?,
                "--sketch" => {
                    let parts: Vec<&str> = value.split(',').collect();
                    let [t, k, rest @ ..] = parts.as_slice() else {
                        return Err("--sketch wants THRESHOLD,TOP[,BLOCK]".into());
                    };
                    let block = match rest {
                        [] => 4,
                        [b] => b.parse()?,
                        _ => return Err("--sketch wants THRESHOLD,TOP[,BLOCK]".into()),
                    };
                    if ![2, 4, 8].contains(&block) {
                        return Err("--sketch BLOCK is 2, 4 or 8".into());
                    }
                    o.sketch = Some((t.parse()?, k.parse()?, block));
                }
                "--rescore" => o.rescore = value.parse()?,
                "--dump" => o.dump = Some(PathBuf::from(value)),
                "--min-minutiae" => o.min_minutiae = value.parse()?,
                "--insert-baseline" => o.insert_baseline = value.parse::<u8>()? != 0,
                "--probe-cap" => PROBE_CAP.store(value.parse()?, std::sync::atomic::Ordering::Relaxed),
                "--blocks" => o.blocks = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--long-lists" => o.long_lists = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
                "--rerank" => {
                    o.rerank = value
                        .split(',')
                        .map(|pair| {
                            let (cap, keep) = pair.split_once(':').ok_or("--rerank wants CAP:KEEP,...")?;
                            Ok(RerankSettings { probe_cap: cap.parse()?, keep: keep.parse()? })
                        })
                        .collect::<Res<_>>()?;
                }
                _ => return Err(format!("unknown option {flag}").into()),
            }
        }
        o.threads.retain(|&t| t > 0);
        if o.threads.is_empty() {
            o.threads.push(1);
        }
        Ok(o)
    }
}
