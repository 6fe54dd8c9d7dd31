//! Shared by the load benchmarks: a server started in this process on an
//! ephemeral port, synthetic face embeddings enrolled over 8 streams, and
//! percentiles.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient},
    cli::Connection,
    config::Config,
};
use tokio::sync::oneshot;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

pub(crate) fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/files")
}

pub(crate) fn config(data: &Path, extra: &[(&str, String)]) -> Config {
    let mut env: Vec<(String, String)> = vec![
        ("COTEJO__MODELS__DIR".into(), models().display().to_string()),
        ("COTEJO__STORE__DATA_DIR".into(), data.display().to_string()),
        ("COTEJO__LOG__FILTER".into(), "error".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    Config::load_with_env(None, env).expect("config")
}

pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub(crate) async fn start(config: Config, conn: impl Fn(SocketAddr) -> Connection) -> (Running, Connection) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(cotejo::server::serve(config, listener, async {
        let _ = rx.await;
    }));
    let c = conn(addr);
    loop {
        if let Ok(ch) = c.connect().await
            && let Ok(r) = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status == ServingStatus::Serving as i32
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (Running { stop, handle }, c)
}

impl Running {
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.expect("join").expect("served");
    }
}

pub(crate) fn face(bytes: &[u8]) -> pb::Sample {
    pb::Sample {
        modality: pb::Modality::Face as i32,
        finger_position: 0,
        data: Some(pb::sample::Data::Image(bytes.to_vec())),
        ppi: 0,
    }
}

pub(crate) fn embedding(model: &str, i: usize, dim: usize) -> pb::Sample {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let values = (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    pb::Sample {
        modality: pb::Modality::Face as i32,
        finger_position: 0,
        data: Some(pb::sample::Data::FaceEmbedding(pb::FaceEmbedding { model_id: model.into(), values })),
        ppi: 0,
    }
}

/// Enrolls subjects `range` with synthetic embeddings over 8 streams.
pub(crate) async fn populate(c: &Connection, range: std::ops::Range<usize>) {
    let mut first = BiometricsServiceClient::new(c.connect().await.expect("connect"));
    let stats = first.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (next, model, mut client, end) = (next.clone(), model.clone(), first.clone(), range.end);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= end {
                    break;
                }
                let req = pb::EnrollRequest {
                    subject_id: format!("g{i:07}"),
                    samples: vec![embedding(&model, i, dim)],
                    ..Default::default()
                };
                client.enroll(req).await.expect("enroll");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
}

pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
