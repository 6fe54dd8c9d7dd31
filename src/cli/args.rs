//! The `cotejo` command line: every subcommand and its arguments (clap).
//! `src/main.rs` dispatches them.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use super::SampleArgs;
use crate::eval;

#[derive(Debug, Parser)]
#[command(
    name = "cotejo",
    version,
    about = "Biometric enrollment, identification (1:N) and verification (1:1) over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Client {
    /// Server URL (https:// for TLS).
    #[arg(long, global = true, default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// PEM CA bundle the server's certificate must chain to (https://).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --key).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    /// PEM key of --cert.
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Bearer token (from `cotejo token add`).
    #[arg(long, global = true, env = "COTEJO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct Samples {
    /// A face image (JPEG, PNG, TIFF, BMP, PGM); repeatable.
    #[arg(long = "face", value_name = "FILE")]
    pub faces: Vec<PathBuf>,
    /// A finger image or ISO/IEC 19794-2 template at ISO position POS (1..10); repeatable.
    #[arg(long = "finger", value_name = "POS=FILE")]
    pub fingers: Vec<String>,
    /// Resolution of finger images (250 to 2000; ISO templates carry their own).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub ppi: u32,
}

impl From<Samples> for SampleArgs {
    fn from(s: Samples) -> Self {
        SampleArgs { faces: s.faces, fingers: s.fingers, ppi: s.ppi }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
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
        /// With store.url: the shard this node loads and searches, I/S
        /// (overrides cluster.shard).
        #[arg(long)]
        shard: Option<crate::shard::Shard>,
        /// Route Identify to shard nodes: the shards in order, separated by
        /// `;`, each its replicas' URLs separated by `,` (overrides
        /// cluster.shards), e.g. "http://a:1,http://b:1;http://c:1".
        #[arg(long)]
        route: Option<String>,
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
    /// Copy a data directory into a new folder, consistently, while a
    /// server on it keeps serving: the database (SQLite's online backup),
    /// the snapshots and backup.json (key ids and sha256 sums; never a key).
    Backup {
        /// Data directory (store.data_dir).
        #[arg(long)]
        data_dir: PathBuf,
        /// New or empty folder to write the backup into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new data directory from a backup (checked against its
    /// backup.json); refuses a target that is not empty.
    Restore {
        /// The backup folder.
        backup: PathBuf,
        /// New or empty data directory.
        #[arg(long)]
        data_dir: PathBuf,
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
pub enum JobCommand {
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
pub enum TokenCommand {
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
pub enum KeysCommand {
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
pub enum AuditCommand {
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
pub enum CalibrateWhat {
    /// The face model.
    Face,
    /// The finger matcher.
    Finger,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
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
