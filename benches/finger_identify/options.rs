//! The bench's command line (see `finger_identify.rs` for the options).

use std::path::PathBuf;

use cotejo::finger::rerank::RerankSettings;

use super::Res;
use super::identify::PROBE_CAP;

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
    /// Shortlist sizes of the hash votes measured (default: `--shortlist`).
    pub(crate) candidates: Vec<usize>,
    pub(crate) rescore: usize,
    pub(crate) min_minutiae: usize,
    pub(crate) insert_baseline: bool,
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
            candidates: Vec::new(),
            rescore: 42,
            min_minutiae: 0,
            insert_baseline: false,
            rerank: vec![RerankSettings::default()],
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
                        let size = item.strip_prefix("votes:").unwrap_or(item);
                        o.candidates.push(size.parse().map_err(|_| "--candidates wants N or votes:N, ...")?);
                    }
                }
                "--exhaustive" => o.exhaustive = value.parse()?,
                "--seed" => o.seed = value.parse()?,
                "--runs" => o.runs = value.parse::<usize>()?.clamp(1, 2),
                "--shards" => o.shards = value.parse::<usize>()?.max(1),
                "--rescore" => o.rescore = value.parse()?,
                "--min-minutiae" => o.min_minutiae = value.parse()?,
                "--insert-baseline" => o.insert_baseline = value.parse::<u8>()? != 0,
                "--probe-cap" => PROBE_CAP.store(value.parse()?, std::sync::atomic::Ordering::Relaxed),
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
