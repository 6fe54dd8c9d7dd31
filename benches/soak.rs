//! The crash soak: `cotejo serve` as a child process under 4 concurrent
//! enroll streams, killed with SIGKILL at a random moment, restarted, and
//! checked, `--kills` times: every acknowledged enroll must be there (lost),
//! and nothing that was never sent (unexpected). An enroll in flight at the
//! kill may or may not be there. Prints lost and unexpected per round and in all.
//!
//! `cargo bench --bench soak -- [--kills 100] [--seed 1]`

use std::{
    collections::HashSet,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cotejo::api::pb::{self, biometrics_service_client::BiometricsServiceClient};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn serve(data: &Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cotejo"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .env("COTEJO__MODELS__DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("models/files"))
        .env("COTEJO__LOG__FILTER", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cotejo serve")
}

async fn connect(url: &str) -> BiometricsServiceClient<Channel> {
    let started = Instant::now();
    loop {
        if let Ok(ch) = Channel::from_shared(url.to_owned()).expect("url").connect().await
            && let Ok(r) = HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status == ServingStatus::Serving as i32
        {
            return BiometricsServiceClient::new(ch);
        }
        assert!(started.elapsed() < Duration::from_secs(120), "server not serving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every subject id the server holds, a page at a time.
async fn held(c: &mut BiometricsServiceClient<Channel>) -> HashSet<String> {
    let (mut out, mut token) = (HashSet::new(), String::new());
    loop {
        let page = c
            .list_subjects(pb::ListSubjectsRequest { page_size: 1000, page_token: token, ..Default::default() })
            .await
            .expect("list")
            .into_inner();
        out.extend(page.subjects.into_iter().map(|s| s.subject_id));
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

fn embedding(model: &str, i: u64, dim: usize) -> pb::Sample {
    let mut rng = StdRng::seed_from_u64(i);
    let values = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    pb::Sample {
        modality: pb::Modality::Face as i32,
        finger_position: 0,
        data: Some(pb::sample::Data::FaceEmbedding(pb::FaceEmbedding { model_id: model.into(), values })),
        ppi: 0,
    }
}

#[derive(Default)]
struct Sent {
    acked: HashSet<String>,
    in_flight: HashSet<String>,
}

/// Acknowledged enrolls missing from `held` (lost), and subjects held that
/// were never sent (unexpected; one in flight at the kill may be either).
fn compare(sent: &Sent, held: &HashSet<String>) -> (usize, usize) {
    let lost = sent.acked.iter().filter(|id| !held.contains(*id)).count();
    let unexpected = held.iter().filter(|id| !sent.acked.contains(*id) && !sent.in_flight.contains(*id)).count();
    (lost, unexpected)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let kills = arg("--kills", 100);
    let mut rng = StdRng::seed_from_u64(arg("--seed", 1));
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let sent = Arc::new(Mutex::new(Sent::default()));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut lost_total, mut unexpected_total) = (0usize, 0usize);
    let started = Instant::now();
    for round in 1..=kills {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let url = format!("http://127.0.0.1:{port}");
        let mut child = serve(&data, port);
        let mut c = connect(&url).await;
        // What the last crash left: every acknowledged enroll, nothing never sent.
        let now = held(&mut c).await;
        let (lost, unexpected) = compare(&sent.lock().expect("sent"), &now);
        lost_total += lost;
        unexpected_total += unexpected;
        {
            // Those in flight that made it are acknowledged now; the rest never will be.
            let mut s = sent.lock().expect("sent");
            let made_it: Vec<String> = s.in_flight.iter().filter(|id| now.contains(*id)).cloned().collect();
            s.acked.extend(made_it);
            s.in_flight.clear();
        }
        if round > 1 {
            println!("after kill {}: {} held, lost {lost}, unexpected {unexpected}", round - 1, now.len());
        }
        let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
        let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
        let mut streams = Vec::new();
        for _ in 0..4 {
            let (mut c, model, sent, next) = (c.clone(), model.clone(), sent.clone(), next.clone());
            streams.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let id = format!("k{i:08}");
                    sent.lock().expect("sent").in_flight.insert(id.clone());
                    let req = pb::EnrollRequest {
                        subject_id: id.clone(),
                        samples: vec![embedding(&model, i, dim)],
                        ..Default::default()
                    };
                    if c.enroll(req).await.is_err() {
                        return; // the server is gone
                    }
                    let mut s = sent.lock().expect("sent");
                    s.in_flight.remove(&id);
                    s.acked.insert(id);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        for s in streams {
            s.await.expect("join");
        }
    }
    // The last kill's check.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let mut child = serve(&data, port);
    let now = held(&mut connect(&format!("http://127.0.0.1:{port}")).await).await;
    let s = sent.lock().expect("sent");
    let (lost, unexpected) = compare(&s, &now);
    println!("after kill {kills}: {} held, lost {lost}, unexpected {unexpected}", now.len());
    println!(
        "{kills} SIGKILLs under 4 enroll streams in {:.0} s: {} acknowledged enrolls, lost {}, unexpected {}",
        started.elapsed().as_secs_f64(),
        s.acked.len(),
        lost_total + lost,
        unexpected_total + unexpected
    );
    let _ = child.kill();
    let _ = child.wait();
}
