//! Layered settings: embedded defaults, then a TOML file, then `COTEJO__`
//! environment variables. Nothing outside this module reads the environment.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

const DEFAULTS: &str = include_str!("default.toml");
const ENV_PREFIX: &str = "COTEJO__";

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The TOML did not parse or did not match the schema.
    #[error("invalid config ({origin}): {message}")]
    Invalid { origin: String, message: String },
}

/// The whole service configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC server settings.
    pub server: ServerConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Embedded store settings.
    pub store: StoreConfig,
    /// Model files.
    pub models: ModelsConfig,
    /// Inference workers.
    pub inference: InferenceConfig,
    /// Gallery searches.
    pub search: SearchConfig,
    /// Input limits.
    pub limits: Limits,
    /// Face pipeline settings.
    pub face: FaceConfig,
    /// Finger settings.
    pub finger: FingerConfig,
    /// Decision defaults.
    pub decision: DecisionConfig,
    /// Batch jobs.
    pub jobs: JobsConfig,
    /// Face search index.
    pub index: IndexConfig,
    /// Callers and their credentials.
    pub auth: AuthConfig,
    /// Audit log anchoring.
    pub audit: AuditConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// How long subjects of some watchlists are kept.
    pub retention: RetentionConfig,
    /// Shards, routing and replicas when the store is PostgreSQL.
    pub cluster: ClusterConfig,
}

/// A node of a cluster on PostgreSQL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The shard whose templates this node loads and searches, `I/S`
    /// (`0/1`: the whole gallery).
    pub shard: String,
    /// How long an Enroll or Delete answered by the node that holds the
    /// subject's shard waits for its own index to take the change (ms).
    pub follow_wait_ms: u64,
    /// Seconds between polls of the change log when no notification came.
    pub poll_secs: u64,
    /// A routing node's shards, in shard order: each the URLs of the nodes
    /// that serve it (replicas). Empty: this node answers from its own index.
    pub shards: Vec<Vec<String>>,
    /// How long a routed call waits for one replica before the next (ms).
    pub replica_timeout_ms: u64,
}

/// Retention per watchlist, applied by a purge that runs in the server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days a subject is kept after its latest encounter, per watchlist
    /// name. A subject is purged when it is past the longest retention of
    /// its watchlists and belongs to no watchlist without one; subjects in
    /// no watchlist are kept.
    pub watchlists: std::collections::BTreeMap<String, u32>,
    /// Seconds between purges (the first runs at start-up).
    pub purge_every_secs: u64,
}

/// Prometheus metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the plain-HTTP listener serving `/metrics` (empty: none).
    pub listen: String,
}

/// gRPC server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Largest accepted message in bytes.
    pub max_message_bytes: usize,
    /// Seconds allowed to drain calls at shutdown.
    pub shutdown_grace_secs: u64,
    /// PEM certificate chain; with `tls_key`, the port speaks TLS 1.3 only.
    pub tls_cert: PathBuf,
    /// PEM private key of `tls_cert`.
    pub tls_key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it issued (mutual TLS).
    pub tls_client_ca: PathBuf,
    /// Allow a non-loopback listener without TLS and caller authentication (warned at every start).
    pub insecure: bool,
    /// Serve gRPC reflection.
    pub reflection: bool,
    /// Seconds between checks of the TLS and callers files for changes (SIGHUP checks at once).
    pub reload_secs: u64,
    /// Seconds between two checks of the inference workers, the store and
    /// the disk (health NOT_SERVING while one fails).
    pub health_check_secs: u64,
}

impl ServerConfig {
    /// Whether the port speaks TLS.
    pub fn tls(&self) -> bool {
        !self.tls_cert.as_os_str().is_empty()
    }

    /// Whether clients must present a certificate (mutual TLS).
    pub fn mutual_tls(&self) -> bool {
        self.tls() && !self.tls_client_ca.as_os_str().is_empty()
    }
}

/// Callers and their credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The callers file (token hashes and certificate names with roles);
    /// when set, every call needs a caller.
    pub tokens_file: PathBuf,
}

/// Audit log anchoring.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Folder outside the data directory for the signed checkpoints (empty: none).
    pub checkpoint_dir: PathBuf,
    /// Key (64 hex digits, mode 600) that signs them; outside the data directory.
    pub checkpoint_key_file: PathBuf,
    /// Seconds between checkpoints (also written at shutdown).
    pub checkpoint_every_secs: u64,
    /// What a start-up that finds the chain broken does.
    pub on_broken: OnBrokenAudit,
}

/// What a start-up that finds the audit chain broken does.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnBrokenAudit {
    /// Exit with the first broken entry named.
    Refuse,
    /// Serve with health NOT_SERVING, answering only the audit role.
    NotServing,
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// `tracing` filter directive.
    pub filter: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Embedded store settings.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Hex AES-256 key, or empty for a key file in the data directory.
    pub encryption_key: String,
    /// Folder of key files and the ACTIVE one (outside the data directory).
    pub key_dir: PathBuf,
    /// Free space (MiB) on the data directory's file system below which
    /// health reports NOT_SERVING.
    pub min_free_mb: u64,
    /// `postgres://user@host:port/db`: PostgreSQL holds the records and the
    /// data directory only this node's index snapshots; empty: SQLite in
    /// the data directory.
    pub url: String,
    /// Connections to PostgreSQL a node keeps at most.
    pub max_connections: usize,
    /// Where writes go when `url` is a read-only streaming replica (a site
    /// node): named to callers whose writes this node refuses.
    pub primary: String,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.encryption_key.is_empty() { "<key file>" } else { "<redacted>" };
        f.debug_struct("StoreConfig")
            .field("data_dir", &self.data_dir)
            .field("encryption_key", &key)
            .field("key_dir", &self.key_dir)
            .field("min_free_mb", &self.min_free_mb)
            .field("url", &redact_password(&self.url))
            .field("max_connections", &self.max_connections)
            .field("primary", &self.primary)
            .finish()
    }
}

/// Model files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Directory holding `manifest.json`.
    pub dir: PathBuf,
    /// ONNX Runtime library path override.
    pub onnxruntime: String,
    /// Directory of the score calibrations (`cotejo calibrate` writes them).
    pub calibration_dir: PathBuf,
}

/// Inference workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// Number of worker threads.
    pub workers: usize,
    /// Intra-op threads per ONNX session.
    pub threads: usize,
    /// Bounded queue length.
    pub queue: usize,
    /// A request is admitted only if its expected wait for a worker (the
    /// requests ahead of it times the recent time per request, over the
    /// workers) is at most this; 0: no limit but the queue.
    pub max_queue_wait_ms: u64,
}

/// Gallery searches (Identify's face index and finger index searches and
/// their rescoring).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Searches running at once (0: one per core).
    pub max_concurrent: usize,
    /// Longest a search waits for a place before it is refused.
    pub max_wait_ms: u64,
}

/// Input limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest encoded image in bytes.
    pub max_image_bytes: usize,
    /// Largest decoded image in pixels.
    pub max_image_pixels: u64,
    /// Most samples per request.
    pub max_samples: usize,
    /// Most candidates per Identify.
    pub max_candidates: usize,
    /// Most subject ids in an Identify restriction.
    pub max_subject_ids: usize,
}

/// Face pipeline settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceConfig {
    /// Average the embeddings of the face and its mirror image.
    pub flip_average: bool,
}

/// Finger pipeline and search settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FingerConfig {
    /// Fewest minutiae a finger template must have.
    pub min_minutiae: usize,
    /// Threads a finger search uses.
    pub search_threads: usize,
    /// Threads that build the finger index at start-up (0: every core).
    pub rebuild_threads: usize,
    /// ONNX Runtime intra-op threads of the minutiae extractor (0: `inference.threads`).
    pub extract_threads: usize,
    /// Positions with at least this many templates are searched through the shortlist.
    pub shortlist_from: usize,
    /// Fraction of a position's templates the hash votes keep for the full matcher.
    pub shortlist_fraction: f64,
    /// Fewest templates the shortlist keeps.
    pub shortlist_min: usize,
    /// Most templates the shortlist keeps.
    pub shortlist_max: usize,
    /// Probes with more valid cylinders are re-ranked in two passes, the first with this many (0: never).
    pub rerank_probe_cap: usize,
    /// Candidates the first of two re-rank passes keeps for the whole probe.
    pub rerank_keep: usize,
    /// Finger templates added or removed between two snapshots of the gallery (0: no snapshot).
    pub snapshot_every: u64,
}

/// Batch jobs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Threads a job computes on (all at the lowest CPU priority).
    pub threads: usize,
    /// Face rows per block (one matrix product against the later rows).
    pub face_block_rows: usize,
    /// Finger templates per block.
    pub finger_block_rows: usize,
    /// Best hits of each finger template rescored under the aspect hypotheses (0: none).
    pub finger_rescored: usize,
    /// Pause after each block, in milliseconds (throttle beside online traffic).
    pub block_pause_ms: u64,
    /// Default target FMR per pair of a de-duplication job.
    pub target_fmr: f64,
    /// Whether this node computes jobs' blocks (on PostgreSQL every worker
    /// node claims blocks of the same jobs; a router may leave them to others).
    pub worker: bool,
}

/// Which structure serves face searches (docs/index.md says which to pick when).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IndexKindName {
    /// Exact float32.
    Flat,
    /// int8 scan, exact float32 re-rank.
    Int8,
    /// 4-bit scan, exact float32 re-rank.
    Int4,
}

impl IndexKindName {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flat => "flat",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }
}

/// The face search index.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// `flat`, `int8` or `int4`.
    pub kind: IndexKindName,
    /// Threads one int8 or int4 scan uses.
    pub threads: usize,
    /// int8 / int4: shortlist re-ranked in float32.
    pub int8_rerank: usize,
    pub int4_rerank: usize,
    /// Changes (templates added or removed) between two snapshots.
    pub snapshot_every: u64,
}

/// Default decision targets (requests may choose their own).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionConfig {
    /// Identify: false-positive identification rate.
    pub target_fpir: f64,
    /// Verify: false-match rate.
    pub target_fmr: f64,
}

impl Config {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut root = parse(DEFAULTS, "embedded defaults")?;
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
            merge(&mut root, parse(&text, &path.display().to_string())?);
        }
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else { continue };
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut root, &path, env_value(&value));
        }
        let config: Config = root.try_into().map_err(|e: toml::de::Error| ConfigError::Invalid {
            origin: "merged settings".into(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |message: &str| Err(ConfigError::Invalid { origin: "validation".into(), message: message.into() });
        if self.inference.workers == 0 || self.inference.threads == 0 {
            return bad("inference.workers and inference.threads must be at least 1");
        }
        let rate = |r: f64| (crate::calibration::MIN_FMR..1.0).contains(&r);
        if !rate(self.decision.target_fpir) || !rate(self.decision.target_fmr) || !rate(self.jobs.target_fmr) {
            return bad("decision.target_fpir, decision.target_fmr and jobs.target_fmr must be in [1e-15, 1) \
                 (calibrated scores stop at 150 = -10*log10(1e-15))");
        }
        if self.jobs.face_block_rows == 0 || self.jobs.finger_block_rows == 0 || self.jobs.threads == 0 {
            return bad("jobs.face_block_rows and jobs.finger_block_rows must be at least 1");
        }
        if let Some((name, _)) = self.retention.watchlists.iter().find(|(_, days)| **days == 0) {
            return bad(&format!(
                "retention.watchlists.{name} must be at least 1 day (0 would purge its subjects as soon as they are enrolled)"
            ));
        }
        if let Err(e) = self.cluster.shard.parse::<crate::shard::Shard>() {
            return bad(&format!("cluster.shard: {e}"));
        }
        if !self.store.url.is_empty() && self.store.max_connections < 2 {
            // A job block holds one connection while it is computed.
            return bad("store.max_connections must be at least 2");
        }
        if self.finger.search_threads == 0 {
            return bad("finger.search_threads must be at least 1");
        }
        if !(self.finger.shortlist_fraction > 0.0 && self.finger.shortlist_fraction <= 1.0) {
            return bad("finger.shortlist_fraction must be in (0, 1]");
        }
        if self.finger.shortlist_max < self.finger.shortlist_min {
            return bad("finger.shortlist_max must be at least finger.shortlist_min");
        }
        if self.finger.rerank_probe_cap > 0 && self.finger.rerank_keep == 0 {
            return bad("finger.rerank_keep must be at least 1 when finger.rerank_probe_cap is set");
        }
        let ones = [self.index.threads, self.index.int8_rerank, self.index.int4_rerank];
        if ones.contains(&0) {
            return bad("index.threads, index.int8_rerank and index.int4_rerank must be at least 1");
        }
        let key = &self.store.encryption_key;
        if !key.is_empty() && (key.len() != 64 || hex::decode(key).is_err()) {
            return bad("store.encryption_key must be 64 hex characters");
        }
        if self.limits.max_samples == 0 || self.limits.max_candidates == 0 {
            return bad("limits.max_samples and limits.max_candidates must be at least 1");
        }
        let set = |p: &PathBuf| !p.as_os_str().is_empty();
        let s = &self.server;
        if set(&s.tls_cert) != set(&s.tls_key) {
            return bad("server.tls_cert and server.tls_key go together");
        }
        if set(&s.tls_client_ca) && !s.tls() {
            return bad("server.tls_client_ca (mutual TLS) needs server.tls_cert and server.tls_key");
        }
        if s.reload_secs == 0 || s.health_check_secs == 0 || self.audit.checkpoint_every_secs == 0 {
            return bad(
                "server.reload_secs, server.health_check_secs and audit.checkpoint_every_secs must be at least 1",
            );
        }
        if set(&self.audit.checkpoint_dir) != set(&self.audit.checkpoint_key_file) {
            return bad("audit.checkpoint_dir and audit.checkpoint_key_file go together");
        }
        Ok(())
    }
}

fn parse(text: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    text.parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| ConfigError::Invalid { origin: origin.into(), message: e.to_string() })
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn set_path(root: &mut toml::Value, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else { return };
    let mut node = root;
    for p in parents {
        let toml::Value::Table(t) = node else { return };
        node = t.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    }
    if let toml::Value::Table(t) = node {
        t.insert(last.clone(), value);
    }
}

/// An environment value is read as a TOML scalar when it parses as one
/// (numbers, booleans), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// A connection URL with its password, if any, replaced (for logs).
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.split_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_env_overrides() {
        let env = [
            ("COTEJO__SERVER__LISTEN".to_string(), "0.0.0.0:6000".to_string()),
            ("COTEJO__INFERENCE__WORKERS".to_string(), "3".to_string()),
            ("COTEJO__STORE__DATA_DIR".to_string(), "/tmp/x".to_string()),
            ("OTHER".to_string(), "ignored".to_string()),
        ];
        let c = Config::load_with_env(None, env).expect("config");
        assert_eq!(c.server.listen.port(), 6000);
        assert_eq!(c.inference.workers, 3);
        assert_eq!(c.store.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn bad_values_are_refused() {
        let env = [("COTEJO__INFERENCE__WORKERS".to_string(), "0".to_string())];
        assert!(Config::load_with_env(None, env).is_err());
        let env = [("COTEJO__NOPE__X".to_string(), "1".to_string())];
        assert!(Config::load_with_env(None, env).is_err());
        let env = [("COTEJO__RETENTION__WATCHLISTS__TRANSIT".to_string(), "0".to_string())];
        let e = Config::load_with_env(None, env).expect_err("a retention of 0 days");
        assert!(e.to_string().contains("retention.watchlists.transit"), "{e}");
        let env = [("COTEJO__RETENTION__WATCHLISTS__TRANSIT".to_string(), "30".to_string())];
        assert_eq!(Config::load_with_env(None, env).expect("30 days").retention.watchlists["transit"], 30);
    }

    #[test]
    fn index_kind_is_checked() {
        let env = [("COTEJO__INDEX__KIND".to_string(), "int4".to_string())];
        assert_eq!(Config::load_with_env(None, env).expect("config").index.kind, IndexKindName::Int4);
        // The approximate kinds are gone: a configuration naming one is refused.
        let env = [("COTEJO__INDEX__KIND".to_string(), "hnsw".to_string())];
        assert!(Config::load_with_env(None, env).is_err());
        let env = [("COTEJO__INDEX__KIND".to_string(), "annoy".to_string())];
        assert!(Config::load_with_env(None, env).is_err());
    }

    #[test]
    fn a_url_password_is_redacted() {
        assert_eq!(redact_password("postgres://app:s3cret@db:5432/x"), "postgres://app:<redacted>@db:5432/x");
        assert_eq!(redact_password("postgres://app@db/x"), "postgres://app@db/x");
    }

    #[test]
    fn key_is_redacted() {
        let env = [("COTEJO__STORE__ENCRYPTION_KEY".to_string(), "ab".repeat(32))];
        let c = Config::load_with_env(None, env).expect("config");
        assert!(!format!("{c:?}").contains("abab"));
    }
}
