//! The client subcommands: read files, call the server over gRPC, print a
//! human summary or one JSON object. A failure exits non-zero with the
//! server's message.

pub mod args;
mod connect;
mod jobs;
pub mod keys;
mod output;
mod tools;

pub use connect::{Conn, Connection};
pub use tools::{CheckpointArgs, audit_export, audit_verify, backup, restore, token_add, token_revoke};

pub use jobs::{
    DedupArgs, PairRow, cancel as job_cancel, dedup, list as job_list, print_results, results as job_results,
    status as job_status,
};

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::api::pb::{self, biometrics_service_client::BiometricsServiceClient};

/// Options every client command shares.
#[derive(Debug, Clone)]
pub struct ClientOpts {
    /// Where the server is and how to authenticate.
    pub connection: Connection,
    /// Print JSON.
    pub json: bool,
}

/// Probe or enrollment samples named on the command line.
#[derive(Debug, Clone, Default)]
pub struct SampleArgs {
    /// Face image files.
    pub faces: Vec<PathBuf>,
    /// `POS=FILE` finger images or ISO templates.
    pub fingers: Vec<String>,
    /// Finger image resolution.
    pub ppi: u32,
}

async fn connect(o: &ClientOpts) -> anyhow::Result<BiometricsServiceClient<Conn>> {
    let channel = o.connection.connect().await?;
    Ok(BiometricsServiceClient::new(channel).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20))
}

/// The `--ppi` default (the proto's 0 means the same).
const DEFAULT_PPI: u32 = 500;

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn samples(args: &SampleArgs) -> anyhow::Result<Vec<pb::Sample>> {
    let mut out = Vec::new();
    for f in &args.faces {
        out.push(pb::Sample {
            modality: pb::Modality::Face as i32,
            finger_position: 0,
            data: Some(pb::sample::Data::Image(read(f)?)),
            ppi: 0,
        });
    }
    for spec in &args.fingers {
        let Some((pos, file)) = spec.split_once('=') else {
            bail!("--finger wants POS=FILE (POS 1..10), got {spec:?}");
        };
        let pos: u32 = pos.parse().with_context(|| format!("finger position {pos:?} is not a number"))?;
        let path = Path::new(file);
        let bytes = read(path)?;
        // ISO/IEC 19794-2 records start with "FMR\0"; anything else is an image,
        // unless it is no image format and the file is named as a template:
        // then the server's answer is about the template (e.g. its magic).
        let named_as_template = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("iso") || e.eq_ignore_ascii_case("fmr"));
        let template = bytes.starts_with(b"FMR\0") || (named_as_template && image::guess_format(&bytes).is_err());
        if template && args.ppi != DEFAULT_PPI {
            eprintln!("note: --ppi {} does not apply to {file}: an ISO template carries its resolution", args.ppi);
        }
        let data = if template { pb::sample::Data::Iso197942(bytes) } else { pb::sample::Data::Image(bytes) };
        out.push(pb::Sample {
            modality: pb::Modality::Finger as i32,
            finger_position: pos,
            data: Some(data),
            ppi: args.ppi,
        });
    }
    if out.is_empty() {
        bail!("give at least one --face FILE or --finger POS=FILE");
    }
    Ok(out)
}

fn status_error(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server answered {:?}: {}", s.code(), s.message())
}

/// What `cotejo enroll` asks for besides the samples.
#[derive(Debug, Clone, Default)]
pub struct EnrollArgs {
    /// Subject id.
    pub subject: String,
    /// Add an encounter to an existing subject.
    pub add_encounter: bool,
    /// Use the main face of a photo with several.
    pub largest_face: bool,
    /// Watchlists to join.
    pub watchlists: Vec<String>,
    /// Idempotency key (empty: none).
    pub request_id: String,
}

/// `cotejo enroll`.
pub async fn enroll(o: &ClientOpts, a: EnrollArgs, s: &SampleArgs) -> anyhow::Result<()> {
    let EnrollArgs { subject, add_encounter, largest_face, watchlists, request_id } = a;
    let req = pb::EnrollRequest {
        subject_id: subject,
        samples: samples(s)?,
        add_encounter,
        use_main_face: largest_face,
        watchlists,
        request_id,
    };
    let r = connect(o).await?.enroll(req).await.map_err(|e| status_error(&e))?.into_inner();
    output::enroll(o.json, &r)
}

/// `cotejo identify`.
pub async fn identify(
    o: &ClientOpts,
    s: &SampleArgs,
    top: u32,
    target_fpir: f64,
    watchlist: Option<String>,
) -> anyhow::Result<()> {
    let req = pb::IdentifyRequest {
        samples: samples(s)?,
        max_candidates: top,
        target_fpir,
        watchlist: watchlist.unwrap_or_default(),
        ..Default::default()
    };
    let r = connect(o).await?.identify(req).await.map_err(|e| status_error(&e))?.into_inner();
    output::identify(o.json, &r)
}

/// `cotejo verify`.
pub async fn verify(o: &ClientOpts, subject: String, s: &SampleArgs, target_fmr: f64) -> anyhow::Result<()> {
    let req = pb::VerifyRequest { subject_id: subject, samples: samples(s)?, target_fmr };
    let r = connect(o).await?.verify(req).await.map_err(|e| status_error(&e))?.into_inner();
    output::verify(o.json, &r)
}

/// `cotejo delete`.
pub async fn delete(o: &ClientOpts, subject: String) -> anyhow::Result<()> {
    let r = connect(o)
        .await?
        .delete(pb::DeleteRequest { subject_id: subject })
        .await
        .map_err(|e| status_error(&e))?
        .into_inner();
    output::delete(o.json, &r)
}

/// `cotejo get`.
pub async fn get(o: &ClientOpts, subject: String) -> anyhow::Result<()> {
    let r = connect(o)
        .await?
        .get_subject(pb::GetSubjectRequest { subject_id: subject })
        .await
        .map_err(|e| status_error(&e))?
        .into_inner();
    output::subject(o.json, &r.subject.unwrap_or_default())
}

/// `cotejo subjects`: every subject (or a watchlist's members) in id order,
/// fetched a page at a time.
pub async fn list_subjects(o: &ClientOpts, watchlist: Option<String>) -> anyhow::Result<()> {
    let mut c = connect(o).await?;
    let watchlist = watchlist.unwrap_or_default();
    let mut page_token = String::new();
    loop {
        let page = c
            .list_subjects(pb::ListSubjectsRequest { page_size: 1000, page_token, watchlist: watchlist.clone() })
            .await
            .map_err(|e| status_error(&e))?
            .into_inner();
        output::subject_page(o.json, &page.subjects)?;
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// `cotejo stats`.
pub async fn stats(o: &ClientOpts) -> anyhow::Result<()> {
    let r = connect(o).await?.stats(pb::StatsRequest {}).await.map_err(|e| status_error(&e))?.into_inner();
    output::stats(o.json, &r)
}

/// A subject id as a file name, one to one: letters, digits, `-` and `_`
/// stay, any other byte (`%` too) becomes `%XX`, so `a/b` and `a_b` no longer
/// meet in `a_b`. A name longer than [`MAX_STEM`] (ids of 128 bytes can
/// triple) keeps its first part and ends in `~` and 16 hex digits of the id's
/// SHA-256 (`~` is otherwise written `%7E`, so it cannot meet a short name).
/// On a case-insensitive file system `Ab` and `ab` still meet.
fn file_stem(subject: &str) -> String {
    use sha2::Digest;
    let stem: String = subject
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if stem.len() <= MAX_STEM {
        return stem;
    }
    let digest = hex::encode(sha2::Sha256::digest(subject.as_bytes()));
    // The stem is ASCII, so any byte offset is a character boundary.
    format!("{}~{}", stem.get(..MAX_STEM - 17).unwrap_or_default(), digest.get(..16).unwrap_or_default())
}

/// Longest file stem an export writes: with `_fNN_NNNN.iso` the name stays
/// under the usual 255-byte limit.
const MAX_STEM: usize = 200;

/// `cotejo export`: writes a subject's finger templates as ISO/IEC 19794-2
/// files `<subject>_f<position>_<n>.iso` into `dir` (the subject id as
/// [`file_stem`] writes it).
pub async fn export(o: &ClientOpts, subject: String, dir: &Path) -> anyhow::Result<()> {
    let r = connect(o)
        .await?
        .export_templates(pb::ExportTemplatesRequest { subject_id: subject.clone() })
        .await
        .map_err(|e| status_error(&e))?
        .into_inner();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let safe = file_stem(&subject);
    let mut written = Vec::new();
    for (i, t) in r.templates.iter().enumerate() {
        let path = dir.join(format!("{safe}_f{}_{}.iso", t.finger_position, i + 1));
        std::fs::write(&path, &t.iso_19794_2).with_context(|| format!("cannot write {}", path.display()))?;
        written.push((path, t));
    }
    output::export(o.json, &subject, &written)
}

#[cfg(test)]
mod tests {
    use super::{MAX_STEM, file_stem};

    #[test]
    fn export_file_names_keep_subjects_apart() {
        assert_eq!(file_stem("A-2291_b"), "A-2291_b");
        assert_eq!(file_stem("a/b"), "a%2Fb");
        assert_eq!(file_stem("a%2Fb"), "a%252Fb");
        assert_eq!(file_stem("José"), "Jos%C3%A9");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
        // 128 bytes that all need escaping: 384 bytes encoded, cut to 200 with a digest.
        let (long, other) = ("é".repeat(64), format!("{}è", "é".repeat(63)));
        assert_eq!(file_stem(&long).len(), MAX_STEM);
        assert!(file_stem(&long).contains('~'));
        assert_ne!(file_stem(&long), file_stem(&other));
        assert_eq!(file_stem(&"x".repeat(128)), "x".repeat(128));
    }
}
