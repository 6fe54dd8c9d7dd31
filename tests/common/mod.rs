//! Test harness: the real server on 127.0.0.1:0 (in process, with a oneshot
//! shutdown) or as a child process, and gRPC clients for it.

#![allow(dead_code, reason = "each test uses a different part of the harness")]

pub(crate) mod postgres;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient},
    config::Config,
};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// The fetched models and fixtures (run `models/fetch.sh` first).
pub(crate) fn models_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/files");
    assert!(
        dir.join("manifest.json").is_file(),
        "models are missing: run models/fetch.sh (the README's test command does)"
    );
    dir
}

/// Bytes of a fixture image.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let p = models_dir().join("fixtures/faces").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Settings for a test server on `data_dir` with `overrides` (COTEJO__ style);
/// its records in a fresh PostgreSQL database when `COTEJO_TEST_STORE=postgres`.
pub(crate) fn config(data_dir: &Path, overrides: &[(&str, &str)]) -> Config {
    let mut env: Vec<(String, String)> = vec![
        ("COTEJO__MODELS__DIR".into(), models_dir().display().to_string()),
        ("COTEJO__STORE__DATA_DIR".into(), data_dir.display().to_string()),
        ("COTEJO__LOG__FILTER".into(), "warn".into()),
    ];
    env.extend(postgres::overrides(data_dir));
    env.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Config::load_with_env(None, env).expect("test config")
}

/// A server running inside the test process.
pub(crate) struct TestServer {
    pub(crate) url: String,
    pub(crate) client: BiometricsServiceClient<Channel>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts a server and waits until health says SERVING.
    pub(crate) async fn start(config: Config) -> Self {
        cotejo::telemetry::init(&config.log);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(cotejo::server::serve(config, listener, async {
            let _ = rx.await;
        }));
        wait_serving(&url, Duration::from_secs(120)).await;
        let client = client(&url).await;
        Self { url, client, shutdown: Some(tx), handle: Some(handle) }
    }

    /// Graceful shutdown; returns the server's result.
    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server result");
        }
    }
}

/// A connected client.
pub(crate) async fn client(url: &str) -> BiometricsServiceClient<Channel> {
    let ch = Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect");
    BiometricsServiceClient::new(ch).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

/// Polls the health service until the overall status is SERVING.
pub(crate) async fn wait_serving(url: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_owned()).expect("url").connect().await {
            let mut h = HealthClient::new(ch);
            if let Ok(r) = h.check(HealthCheckRequest { service: String::new() }).await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(start.elapsed() < limit, "server at {url} not SERVING after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Jobs client for a server.
pub(crate) async fn jobs_client(url: &str) -> cotejo::api::pb::jobs_service_client::JobsServiceClient<Channel> {
    cotejo::api::pb::jobs_service_client::JobsServiceClient::connect(url.to_owned()).await.expect("connect jobs")
}

/// The `cotejo` binary as a child process serving on a free port.
pub(crate) struct ChildServer {
    pub(crate) url: String,
    child: Child,
}

impl ChildServer {
    /// Starts `cotejo serve` on `data_dir` and waits until it serves.
    pub(crate) async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// Like [`ChildServer::start`] with extra `COTEJO__` settings.
    pub(crate) async fn start_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_logged(data_dir, env, None).await
    }

    /// Like [`ChildServer::start_with`], its log (JSON lines) written to `log`.
    pub(crate) async fn start_logged(data_dir: &Path, env: &[(&str, &str)], log: Option<&Path>) -> Self {
        // Reserve a free port, release it, hand it to the child.
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let child = Command::new(env!("CARGO_BIN_EXE_cotejo"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(data_dir)
            .env("COTEJO__MODELS__DIR", models_dir())
            .env("COTEJO__LOG__FILTER", "warn")
            .envs(postgres::overrides(data_dir))
            .envs(env.iter().copied())
            .envs(log.map(|_| [("COTEJO__LOG__FILTER", "info"), ("COTEJO__LOG__FORMAT", "json")]).into_iter().flatten())
            .stdout(Stdio::null())
            .stderr(match log {
                Some(path) => Stdio::from(std::fs::File::create(path).expect("log file")),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("spawn cotejo serve");
        let url = format!("http://127.0.0.1:{port}");
        wait_serving(&url, Duration::from_secs(120)).await;
        Self { url, child }
    }

    /// SIGKILL: no chance to flush or shut down.
    pub(crate) fn kill9(mut self) {
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for ChildServer {
    /// A failing test must not leave a server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A face sample from image bytes.
pub(crate) fn face_image(bytes: Vec<u8>) -> pb::Sample {
    pb::Sample {
        modality: pb::Modality::Face as i32,
        finger_position: 0,
        data: Some(pb::sample::Data::Image(bytes)),
        ppi: 0,
    }
}

/// A face sample from an embedding.
pub(crate) fn face_embedding(model_id: &str, values: Vec<f32>) -> pb::Sample {
    pb::Sample {
        modality: pb::Modality::Face as i32,
        finger_position: 0,
        data: Some(pb::sample::Data::FaceEmbedding(pb::FaceEmbedding { model_id: model_id.into(), values })),
        ppi: 0,
    }
}

/// An enroll request.
pub(crate) fn enroll_req(subject: &str, samples: Vec<pb::Sample>) -> pb::EnrollRequest {
    pb::EnrollRequest {
        subject_id: subject.into(),
        samples,
        add_encounter: false,
        use_main_face: false,
        watchlists: Vec::new(),
        request_id: String::new(),
    }
}

/// An identify request for the top 5.
pub(crate) fn identify_req(samples: Vec<pb::Sample>) -> pb::IdentifyRequest {
    pb::IdentifyRequest { samples, max_candidates: 5, ..Default::default() }
}

/// The google.rpc.ErrorInfo reason of a status.
pub(crate) fn reason(s: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

/// The fields named by a status's BadRequest violations.
pub(crate) fn fields(s: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    s.get_details_bad_request().map(|b| b.field_violations.into_iter().map(|v| v.field).collect()).unwrap_or_default()
}
