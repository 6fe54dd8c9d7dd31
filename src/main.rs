//! The `cotejo` command: the server, its gRPC client and the evaluations.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use cotejo::{
    cli::{self, ClientOpts, SampleArgs},
    config::Config,
    eval, server, telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "cotejo",
    version,
    about = "Biometric enrollment, identification (1:N) and verification (1:1) over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Client {
    /// Server URL (https:// for TLS).
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// PEM CA bundle the server's certificate must chain to (https://).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --key).
    #[arg(long, global = true)]
    cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Bearer token (from `cotejo token add`).
    #[arg(long, global = true, env = "COTEJO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
struct Samples {
    /// A face image (JPEG, PNG, TIFF, BMP, PGM); repeatable.
    #[arg(long = "face", value_name = "FILE")]
    faces: Vec<PathBuf>,
    /// A finger image or ISO/IEC 19794-2 template at ISO position POS (1..10); repeatable.
    #[arg(long = "finger", value_name = "POS=FILE")]
    fingers: Vec<String>,
    /// Resolution of finger images (250 to 2000; ISO templates carry their own).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    ppi: u32,
}

impl From<Samples> for SampleArgs {
    fn from(s: Samples) -> Self {
        SampleArgs { faces: s.faces, fingers: s.fingers, ppi: s.ppi }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve {
        /// Listen address (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Data directory (overrides store.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// TOML settings file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Enroll a subject.
    Enroll {
        /// Subject id.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        samples: Samples,
        /// Add an encounter to an existing subject.
        #[arg(long)]
        add_encounter: bool,
        /// With several faces in an image, enroll the largest, most central one.
        #[arg(long)]
        largest_face: bool,
        /// Watchlist to add the subject to (repeatable).
        #[arg(long = "watchlist")]
        watchlists: Vec<String>,
        /// Idempotency key: running the command again with the same key
        /// returns the first answer and adds nothing.
        #[arg(long, default_value = "")]
        request_id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Identify (1:N) against every enrolled subject.
    Identify {
        #[command(flatten)]
        samples: Samples,
        /// Candidates to return.
        #[arg(long, default_value_t = 10)]
        top: u32,
        /// False-positive identification rate the decision targets (0: the server's default).
        #[arg(long, default_value_t = 0.0)]
        target_fpir: f64,
        /// Search only the members of this watchlist.
        #[arg(long)]
        watchlist: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Verify (1:1) against one subject.
    Verify {
        /// Claimed subject id.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        samples: Samples,
        /// False-match rate the decision targets (0: the server's default).
        #[arg(long, default_value_t = 0.0)]
        target_fmr: f64,
        #[command(flatten)]
        client: Client,
    },
    /// Write a subject's finger templates as ISO/IEC 19794-2 files.
    Export {
        /// Subject id.
        #[arg(long)]
        subject: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        client: Client,
    },
    /// Delete a subject and its templates.
    Delete {
        /// Subject id.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        client: Client,
    },
    /// Show a subject's encounters.
    Get {
        /// Subject id.
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        client: Client,
    },
    /// List the enrolled subjects (or a watchlist's members) in id order.
    Subjects {
        /// Only this watchlist's members.
        #[arg(long)]
        watchlist: Option<String>,
        #[command(flatten)]
        client: Client,
    },
    /// Enrolled counts and models.
    Stats {
        #[command(flatten)]
        client: Client,
    },
    /// Find likely duplicate identities: starts a de-duplication job on the
    /// server (or, with --offline DIR, compares a folder of face images here).
    Dedup {
        /// Only these subjects (comma-separated).
        #[arg(long, value_delimiter = ',')]
        subjects: Vec<String>,
        /// Only subjects enrolled from this time (Unix ms).
        #[arg(long, default_value_t = 0)]
        enrolled_from: i64,
        /// Only subjects enrolled before this time (Unix ms).
        #[arg(long, default_value_t = 0)]
        enrolled_to: i64,
        /// Modalities compared: face, finger (repeatable; default both).
        #[arg(long = "modality")]
        modalities: Vec<String>,
        /// False-match rate per pair (0: the server's default).
        #[arg(long, default_value_t = 0.0)]
        target_fmr: f64,
        /// Wait for the end with a progress bar on stderr, then print the results.
        #[arg(long)]
        wait: bool,
        /// Also write the results to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        /// No server: every face image in this folder is a subject.
        #[arg(long)]
        offline: Option<PathBuf>,
        /// TOML settings file (offline mode).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        client: Client,
    },
    /// De-duplication jobs: list, status, results or cancel.
    Job {
        #[command(subcommand)]
        what: JobCommand,
    },
    /// Measure the raw-score -> -10*log10(FMR) map of a matcher from impostor
    /// comparisons on labelled data; writes it to models.calibration_dir.
    Calibrate {
        /// Which matcher.
        #[arg(value_enum)]
        modality: CalibrateWhat,
        /// Folder with LABELS.txt (faces: any labelled set; fingers: FVC-style with .iso beside the images).
        #[arg(long)]
        data: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// TOML settings file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Bearer tokens and client certificate grants in a callers file.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Keys that seal templates and snapshots (store.key_dir): make, rotate
    /// (while a server serves), retire.
    Keys {
        #[command(subcommand)]
        what: KeysCommand,
    },
    /// Check or export a data directory's audit log (no server needed; a
    /// running one may keep serving).
    Audit {
        #[command(subcommand)]
        what: AuditCommand,
    },
    /// Offline evaluations on labelled data (no server).
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
        /// TOML settings file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Every job, newest first.
    List {
        #[command(flatten)]
        client: Client,
    },
    /// State and progress.
    Status {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: Client,
    },
    /// Pairs and clusters found so far.
    Results {
        /// Job id.
        id: String,
        /// Also write the results to this CSV file.
        #[arg(long)]
        csv: Option<PathBuf>,
        #[command(flatten)]
        client: Client,
    },
    /// Stop the job.
    Cancel {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: Client,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Add a caller: prints a new random token once (only its hash is kept).
    Add {
        /// The callers file (auth.tokens_file); made if missing.
        #[arg(long)]
        tokens_file: PathBuf,
        /// Caller name, as the audit log records it.
        #[arg(long)]
        name: String,
        /// Roles: identify, enroll, admin, audit (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Grant the roles to the client certificate whose common name is
        /// --name (mutual TLS) instead of making a token.
        #[arg(long)]
        certificate: bool,
    },
    /// Remove every token and certificate grant of a caller.
    Revoke {
        /// The callers file (auth.tokens_file).
        #[arg(long)]
        tokens_file: PathBuf,
        /// Caller name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a new random key in the key directory and make it active.
    New {
        /// The key directory (store.key_dir).
        #[arg(long)]
        key_dir: PathBuf,
        /// Do not make it active.
        #[arg(long)]
        inactive: bool,
    },
    /// Make a new active key and seal every template and snapshot again
    /// under it, beside a running server; --resume finishes a cut rotation.
    Rotate {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// The key directory (store.key_dir).
        #[arg(long)]
        key_dir: PathBuf,
        /// Finish an unfinished rotation under the current active key.
        #[arg(long)]
        resume: bool,
        /// Template rows per transaction.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Pause between transactions, in ms (spares a busy server).
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
        /// Seconds a running server takes to read the key directory again
        /// (twice its server.reload_secs).
        #[arg(long, default_value_t = 5)]
        server_reload_secs: u64,
    },
    /// Remove the key files that no template or snapshot needs any more.
    Retire {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// The key directory (store.key_dir).
        #[arg(long)]
        key_dir: PathBuf,
    },
    /// The active key and how many records each key seals.
    Status {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// The key directory (store.key_dir).
        #[arg(long)]
        key_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the whole hash chain and check it against the last signed
    /// checkpoint; exits non-zero naming the first broken entry.
    Verify {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// Folder of the signed checkpoints (audit.checkpoint_dir; default: from --config).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Key that signs them (audit.checkpoint_key_file; default: from --config).
        #[arg(long)]
        checkpoint_key_file: Option<PathBuf>,
        /// TOML settings file for the checkpoint settings.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Write the entries from a sequence number on as JSON lines (for a SIEM).
    Export {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// First sequence number.
        #[arg(long, default_value_t = 1)]
        from: i64,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CalibrateWhat {
    /// The face model.
    Face,
    /// The finger matcher.
    Finger,
}

#[derive(Debug, Subcommand)]
enum EvalCommand {
    /// EER and FNMR at FMR over all pairs of a labelled face set.
    Verification {
        /// Folder with LABELS.txt.
        #[arg(long)]
        data: PathBuf,
        /// Images are already aligned 112x112 crops (embedding only).
        #[arg(long)]
        aligned: bool,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Use only the first N images (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Open-set 1:N: rank-1, FNIR at FPIR 1% and 0.1% (gallery = first image of identities with two or more).
    Identification {
        /// Folder with LABELS.txt.
        #[arg(long)]
        data: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Fingerprint verification per DB (FVC protocol and all-pairs impostors).
    Fingers {
        /// FVC-style folder with LABELS.txt.
        #[arg(long)]
        data: PathBuf,
        /// Minutiae from the `.iso` templates (as declared, or rescaled to the image beside them) or from the images (LEADER).
        #[arg(long, value_enum, default_value_t = eval::FingerSource::Iso)]
        source: eval::FingerSource,
        /// Extraction threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Also write every comparison (db, finger and impression of both, score) to this TSV file.
        #[arg(long)]
        scores: Option<PathBuf>,
        /// Diagnostic: other y scale factors for the aspect hypotheses than the
        /// service's (comma-separated, e.g. 0.8,1.25).
        #[arg(long, value_delimiter = ',')]
        aspects: Vec<f32>,
        /// Compare in the templates' declared frame only (no aspect hypotheses).
        #[arg(long)]
        declared_only: bool,
        /// With `--source images`: also write each print's minutiae as an ISO
        /// template under this folder (same relative paths, `.iso`).
        #[arg(long)]
        export_iso: Option<PathBuf>,
    },
    /// Precision and recall of face de-duplication pairs (every image its own subject).
    Dedup {
        /// Folder with LABELS.txt.
        #[arg(long)]
        data: PathBuf,
        /// Worker threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Time of a face dedup job over synthetic subjects, end to end in process;
    /// with --fingers N, of finger dedup jobs with and without the aspect rescoring.
    DedupTime {
        /// Subjects (one face embedding each).
        #[arg(long, default_value_t = 100_000)]
        gallery: usize,
        /// Instead: this many synthetic one-finger subjects, a tenth of them with a planted duplicate.
        #[arg(long, default_value_t = 0)]
        fingers: usize,
    },
    /// Restart time with a large face gallery: rebuild from the store
    /// against the index snapshot plus a replay of later changes.
    Startup {
        /// Subjects (one synthetic face embedding each).
        #[arg(long, default_value_t = 100_000)]
        gallery: usize,
        /// Enrollments after the snapshot (a tenth as many deletions too).
        #[arg(long, default_value_t = 1000)]
        changes: usize,
        /// Instead of faces: this many synthetic one-finger subjects (ISO
        /// records), with restarts that rebuild the finger index from the
        /// store and restarts from its snapshot plus the changes since.
        #[arg(long, default_value_t = 0)]
        fingers: usize,
        /// Restarts of each kind (with --fingers).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// One-finger Identify calls timed after the last restart (with --fingers).
        #[arg(long, default_value_t = 50)]
        identifies: usize,
    },
    /// Identify latency from image files at a gallery size.
    Latency {
        /// Folder with LABELS.txt (identities with two images give the mates).
        #[arg(long)]
        data: PathBuf,
        /// Gallery size in templates.
        #[arg(long, default_value_t = 10_000)]
        gallery: usize,
        /// Real identities enrolled and then searched.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Measure again while a face dedup job runs over the gallery.
        #[arg(long)]
        with_dedup_job: bool,
    },
}

fn main() -> ExitCode {
    cotejo::openmp::ensure_passive_wait();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        die_quietly_on_closed_stdout();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Client and tool commands end quietly when their output is closed
/// (`cotejo stats | head -1`), as Unix tools do: Rust ignores SIGPIPE, so
/// `println!` would panic on the failed write. The server keeps ignoring it,
/// so that a write to a closed socket fails instead of killing the process.
#[expect(unsafe_code, reason = "one signal disposition reset at start-up, before any other thread")]
fn die_quietly_on_closed_stdout() {
    // SAFETY: called from `main` before the runtime starts any thread; SIG_DFL
    // is a valid disposition for SIGPIPE and no handler is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = |c: Client| ClientOpts {
        connection: cli::Connection { server: c.server, ca: c.ca, cert: c.cert, key: c.key, token: c.token },
        json: c.json,
    };
    match cli.command {
        Command::Serve { listen, data_dir, config } => serve_command(listen, data_dir, config).await,
        Command::Enroll { subject, samples, add_encounter, largest_face, watchlists, request_id, client } => {
            let args = cli::EnrollArgs { subject, add_encounter, largest_face, watchlists, request_id };
            cli::enroll(&opts(client), args, &samples.into()).await
        }
        Command::Identify { samples, top, target_fpir, watchlist, client } => {
            cli::identify(&opts(client), &samples.into(), top, target_fpir, watchlist).await
        }
        Command::Verify { subject, samples, target_fmr, client } => {
            cli::verify(&opts(client), subject, &samples.into(), target_fmr).await
        }
        Command::Export { subject, out, client } => cli::export(&opts(client), subject, &out).await,
        Command::Delete { subject, client } => cli::delete(&opts(client), subject).await,
        Command::Get { subject, client } => cli::get(&opts(client), subject).await,
        Command::Subjects { watchlist, client } => cli::list_subjects(&opts(client), watchlist).await,
        Command::Stats { client } => cli::stats(&opts(client)).await,
        Command::Dedup {
            subjects,
            enrolled_from,
            enrolled_to,
            modalities,
            target_fmr,
            wait,
            csv,
            offline,
            config,
            client,
        } => {
            if let Some(dir) = offline {
                let config = Config::load(config.as_deref())?;
                let fmr = if target_fmr == 0.0 { config.jobs.target_fmr } else { target_fmr };
                let json = client.json;
                let (rows, groups) =
                    tokio::task::spawn_blocking(move || eval::dedup::offline(&config, &dir, fmr, 2)).await??;
                return cli::print_results(json, &rows, &groups, csv.as_deref());
            }
            let args = cli::DedupArgs {
                subjects,
                from_ms: enrolled_from,
                to_ms: enrolled_to,
                modalities,
                target_fmr,
                wait,
                csv,
            };
            cli::dedup(&opts(client), &args).await
        }
        Command::Job { what } => match what {
            JobCommand::List { client } => cli::job_list(&opts(client)).await,
            JobCommand::Status { id, client } => cli::job_status(&opts(client), id).await,
            JobCommand::Results { id, csv, client } => cli::job_results(&opts(client), &id, csv.as_deref()).await,
            JobCommand::Cancel { id, client } => cli::job_cancel(&opts(client), id).await,
        },
        Command::Token { what } => match what {
            TokenCommand::Add { tokens_file, name, roles, certificate } => {
                cli::token_add(&tokens_file, &name, &roles, certificate)
            }
            TokenCommand::Revoke { tokens_file, name } => cli::token_revoke(&tokens_file, &name),
        },
        Command::Keys { what } => tokio::task::spawn_blocking(move || keys_command(what)).await?,
        Command::Audit { what } => audit_command(what).await,
        Command::Calibrate { modality, data, threads, config } => {
            let config = Config::load(config.as_deref())?;
            let path = tokio::task::spawn_blocking(move || match modality {
                CalibrateWhat::Face => eval::calibrate::face(&config, &data, threads),
                CalibrateWhat::Finger => eval::calibrate::finger(&config, &data, threads),
            })
            .await??;
            println!("{}", path.display());
            Ok(())
        }
        Command::Eval { what, config } => eval_command(what, config).await,
    }
}

/// `cotejo serve`.
async fn serve_command(
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(l) = listen {
        config.server.listen = l;
    }
    if let Some(d) = data_dir {
        config.store.data_dir = d;
    }
    telemetry::init(&config.log);
    tracing::info!(?config, "starting");
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    server::serve(config, listener, server::shutdown_signal()).await
}

/// `cotejo keys ...` (blocking: file and database work).
fn keys_command(what: KeysCommand) -> anyhow::Result<()> {
    match what {
        KeysCommand::New { key_dir, inactive } => cli::keys::new(&key_dir, inactive),
        KeysCommand::Rotate { data_dir, key_dir, resume, batch, pause_ms, server_reload_secs } => {
            cli::keys::rotate(&cli::keys::RotateArgs {
                data_dir,
                key_dir,
                resume,
                batch: batch.max(1),
                pause: std::time::Duration::from_millis(pause_ms),
                server_reload: std::time::Duration::from_secs(server_reload_secs),
            })
            .map(|_| ())
        }
        KeysCommand::Retire { data_dir, key_dir } => cli::keys::retire(&data_dir, &key_dir),
        KeysCommand::Status { data_dir, key_dir } => cli::keys::status(&data_dir, &key_dir),
    }
}

/// `cotejo audit ...`.
async fn audit_command(what: AuditCommand) -> anyhow::Result<()> {
    match what {
        AuditCommand::Verify { data_dir, checkpoint_dir, checkpoint_key_file, config, json } => {
            let c = Config::load(config.as_deref())?.audit;
            let or_config =
                |flag: Option<PathBuf>, set: PathBuf| flag.or_else(|| (!set.as_os_str().is_empty()).then_some(set));
            let cp = cli::CheckpointArgs {
                dir: or_config(checkpoint_dir, c.checkpoint_dir),
                key_file: or_config(checkpoint_key_file, c.checkpoint_key_file),
            };
            tokio::task::spawn_blocking(move || cli::audit_verify(&data_dir, &cp, json)).await?
        }
        AuditCommand::Export { data_dir, from } => {
            tokio::task::spawn_blocking(move || cli::audit_export(&data_dir, from)).await?
        }
    }
}

/// `cotejo eval ...`.
async fn eval_command(what: EvalCommand, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    match what {
        EvalCommand::Verification { data, aligned, threads, limit } => {
            tokio::task::spawn_blocking(move || eval::verification(&config, &data, aligned, threads, limit)).await?
        }
        EvalCommand::Identification { data, threads } => {
            tokio::task::spawn_blocking(move || eval::identification(&config, &data, threads)).await?
        }
        EvalCommand::Fingers { data, source, threads, scores, aspects, declared_only, export_iso } => {
            tokio::task::spawn_blocking(move || {
                let run = eval::FingerEval {
                    data: &data,
                    source,
                    threads,
                    scores_tsv: scores.as_deref(),
                    aspects: &aspects,
                    declared_only,
                    export_iso: export_iso.as_deref(),
                };
                eval::fingers(&config, &run)
            })
            .await?
        }
        EvalCommand::Dedup { data, threads } => {
            tokio::task::spawn_blocking(move || eval::dedup::evaluate(&config, &data, threads)).await?
        }
        EvalCommand::DedupTime { fingers, .. } if fingers > 0 => eval::dedup_time_fingers(&config, fingers).await,
        EvalCommand::DedupTime { gallery, .. } => eval::dedup_time(&config, gallery).await,
        EvalCommand::Startup { fingers: 0, gallery, changes, .. } => eval::startup(&config, gallery, changes).await,
        EvalCommand::Startup { fingers, changes, rounds, identifies, .. } => {
            eval::startup_fingers(&config, fingers, changes, rounds, identifies).await
        }
        EvalCommand::Latency { data, gallery, queries, with_dedup_job } => {
            eval::latency(&config, &data, gallery, queries, with_dedup_job).await
        }
    }
}
