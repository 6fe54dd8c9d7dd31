//! Behaviour under load, on a server in this process over real gRPC.
//!
//! The overload curve: face Identify from a JPEG offered open-loop at 1x to
//! 10x the sustainable rate (measured first, closed-loop), for each
//! admission setting in turn: admitted p50/p99, refused share, goodput.
//! `queue-only` is admission by queue length alone (`max_queue_wait_ms = 0`,
//! no deadline): how the service behaved before admission by waiting time.
//!
//! Interference (`--gallery N`): Identify (an embedding probe: the matching
//! hot path alone) p50/p99 at N faces idle, then beside a whole-gallery
//! dedup job, a snapshot rewrite, an enroll stream and `cotejo backup`;
//! the backup's time, and how long after Delete returns the snapshot
//! without the subject is in place (the erasure bound).
//!
//! `cargo bench --bench load -- [--seconds 8] [--gallery 100000] [--skip-overload]`

#[path = "support/serve.rs"]
mod serve;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient, jobs_service_client::JobsServiceClient},
    cli::{Conn, Connection},
};
use serve::{config, embedding, face, models, pct, populate, start};

struct Opts {
    seconds: f64,
    gallery: usize,
    overload: bool,
}

fn opts() -> Opts {
    let mut o = Opts { seconds: 8.0, gallery: 0, overload: true };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = || args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} wants a number", args[i]));
        match args[i].as_str() {
            "--seconds" => o.seconds = v(),
            "--gallery" => o.gallery = v() as usize,
            "--skip-overload" => {
                o.overload = false;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn conn(a: std::net::SocketAddr) -> Connection {
    Connection { server: format!("http://{a}"), ..Connection::default() }
}

/// One call's outcome: answered (latency, completion time), refused, or failed otherwise.
enum Outcome {
    Ok(f64, Duration),
    Refused,
    Failed(tonic::Code),
}

async fn identify_jpeg(c: &mut BiometricsServiceClient<Conn>, jpeg: &[u8], deadline: Option<Duration>) -> Outcome {
    let mut req =
        tonic::Request::new(pb::IdentifyRequest { samples: vec![face(jpeg)], max_candidates: 5, ..Default::default() });
    req.set_timeout(deadline.unwrap_or(Duration::from_secs(60)));
    let t = Instant::now();
    match c.identify(req).await {
        Ok(_) => Outcome::Ok(t.elapsed().as_secs_f64() * 1e3, Duration::ZERO),
        Err(s) if s.code() == tonic::Code::ResourceExhausted => Outcome::Refused,
        Err(s) => Outcome::Failed(s.code()),
    }
}

/// Calls at `rate` per second for `seconds`, each in its own task.
async fn open_loop(
    client: &BiometricsServiceClient<Conn>,
    jpeg: &Arc<Vec<u8>>,
    rate: f64,
    seconds: f64,
    deadline: Option<Duration>,
) -> Vec<Outcome> {
    let start = Instant::now();
    let n = (rate * seconds).round() as usize;
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (mut c, jpeg) = (client.clone(), jpeg.clone());
        tasks.push(tokio::spawn(async move {
            match identify_jpeg(&mut c, &jpeg, deadline).await {
                Outcome::Ok(ms, _) => Outcome::Ok(ms, start.elapsed()),
                other => other,
            }
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

async fn overload(o: &Opts, jpeg: &Arc<Vec<u8>>) {
    let work = tempfile::tempdir().expect("tempdir");
    // (name, max_queue_wait_ms, the callers' deadline)
    let settings: [(&str, u64, Option<Duration>); 4] = [
        ("queue-only", 0, None),
        ("wait 2000 ms", 2000, None),
        ("wait 100 ms (default)", 100, None),
        ("wait 2000 ms + 400 ms deadline", 2000, Some(Duration::from_millis(400))),
    ];
    for (name, wait_ms, deadline) in settings {
        let cfg = config(&work.path().join("data"), &[("COTEJO__INFERENCE__MAX_QUEUE_WAIT_MS", wait_ms.to_string())]);
        let (server, c) = start(cfg, conn).await;
        let client = BiometricsServiceClient::new(c.connect().await.expect("connect"));
        // Unloaded latency (one caller) and the sustainable rate (two callers keep the worker busy).
        let mut unloaded = Vec::new();
        let mut one = client.clone();
        for _ in 0..30 {
            if let Outcome::Ok(ms, _) = identify_jpeg(&mut one, jpeg, None).await {
                unloaded.push(ms);
            }
        }
        let t = Instant::now();
        let mut pair = Vec::new();
        for _ in 0..2 {
            let (mut c, jpeg) = (client.clone(), jpeg.clone());
            pair.push(tokio::spawn(async move {
                for _ in 0..20 {
                    identify_jpeg(&mut c, &jpeg, None).await;
                }
            }));
        }
        for p in pair {
            p.await.expect("join");
        }
        let sustainable = 40.0 / t.elapsed().as_secs_f64();
        let (u50, u99) = (pct(&mut unloaded, 0.5), pct(&mut unloaded, 0.99));
        println!(
            "{name}: unloaded p50 {u50:.0} ms p99 {u99:.0} ms; sustainable {sustainable:.2} calls/s; {} s per level",
            o.seconds
        );
        for m in [1.0, 2.0, 4.0, 6.0, 8.0, 10.0] {
            let outcomes = open_loop(&client, jpeg, m * sustainable, o.seconds, deadline).await;
            let mut ok: Vec<f64> = Vec::new();
            let (mut in_window, mut refused, mut failed) = (0usize, 0usize, Vec::new());
            for x in &outcomes {
                match x {
                    Outcome::Ok(ms, at) => {
                        ok.push(*ms);
                        if at.as_secs_f64() <= o.seconds {
                            in_window += 1;
                        }
                    }
                    Outcome::Refused => refused += 1,
                    Outcome::Failed(code) => failed.push(*code),
                }
            }
            let (p50, p99) = if ok.is_empty() { (f64::NAN, f64::NAN) } else { (pct(&mut ok, 0.5), pct(&mut ok, 0.99)) };
            let goodput = in_window as f64 / o.seconds;
            println!(
                "  {m:>4.0}x offered {:>5.1}/s: admitted p50 {p50:>6.0} ms p99 {p99:>6.0} ms ({:.1}x unloaded p99) | refused {:>5.1}% | failed {} | goodput {goodput:.2}/s ({:.0}% of sustainable)",
                m * sustainable,
                p99 / u99,
                100.0 * refused as f64 / outcomes.len() as f64,
                failed.len(),
                100.0 * goodput / sustainable
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        server.stop().await;
    }
}

/// Identify calls from an embedding until `stop`; latencies in ms.
async fn sample(mut c: BiometricsServiceClient<Conn>, probe: pb::Sample, stop: Arc<AtomicBool>) -> Vec<f64> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let req = pb::IdentifyRequest { samples: vec![probe.clone()], max_candidates: 5, ..Default::default() };
        c.identify(req).await.expect("identify");
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    out
}

async fn during<F: std::future::Future<Output = ()>>(
    client: &BiometricsServiceClient<Conn>,
    probe: &pb::Sample,
    background: F,
) -> Vec<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(client.clone(), probe.clone(), stop.clone()));
    background.await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.expect("join")
}

fn line(what: &str, idle99: f64, mut v: Vec<f64>) {
    let (p50, p99) = (pct(&mut v, 0.5), pct(&mut v, 0.99));
    println!("  {what}: p50 {p50:.1} ms p99 {p99:.1} ms ({} calls), p99 {:.2}x idle", v.len(), p99 / idle99);
}

async fn interference(o: &Opts) {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let (server, c) = start(config(&data, &[]), conn).await;
    let t = Instant::now();
    populate(&c, 0..o.gallery).await;
    println!("interference at {} faces (enrolled in {:.1} s):", o.gallery, t.elapsed().as_secs_f64());
    let client = BiometricsServiceClient::new(c.connect().await.expect("connect"));
    let stats = client.clone().stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let probe = embedding(&model, 7, dim);
    let secs = Duration::from_secs_f64(o.seconds);
    let mut idle = during(&client, &probe, tokio::time::sleep(secs)).await;
    let idle99 = pct(&mut idle, 0.99);
    line("idle", idle99, idle);

    let mut jobs = JobsServiceClient::new(c.connect().await.expect("connect"));
    let job = jobs
        .start_dedup(pb::StartDedupRequest {
            modalities: vec![pb::Modality::Face as i32],
            target_fmr: 1e-4,
            ..Default::default()
        })
        .await
        .expect("dedup")
        .into_inner()
        .job
        .expect("job");
    let (j2, id) = (jobs.clone(), job.job_id.clone());
    let job_run = during(&client, &probe, async move {
        let mut j2 = j2;
        // Sampled once the job is running (its data read), for `secs`.
        loop {
            let s = j2.get_job(pb::GetJobRequest { job_id: id.clone() }).await.expect("job").into_inner();
            if s.job.is_some_and(|j| j.state == pb::JobState::Running as i32 && j.total > 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(secs).await;
    })
    .await;
    jobs.cancel_job(pb::CancelJobRequest { job_id: job.job_id.clone() }).await.expect("cancel");
    line("beside a whole-gallery dedup job", idle99, job_run);

    // A deletion rewrites the face snapshot at once, in the background.
    let mut writer = client.clone();
    let snap = during(&client, &probe, async move {
        for i in 0..3 {
            writer.delete(pb::DeleteRequest { subject_id: format!("g{i:07}") }).await.expect("delete");
            tokio::time::sleep(secs / 3).await;
        }
    })
    .await;
    line("beside snapshot rewrites (3 deletions)", idle99, snap);

    let enroller = client.clone();
    let (m2, gallery) = (model.clone(), o.gallery);
    let stream = during(&client, &probe, async move {
        let mut e = enroller;
        let end = Instant::now() + secs;
        let mut i = gallery;
        while Instant::now() < end {
            let req = pb::EnrollRequest {
                subject_id: format!("n{i:07}"),
                samples: vec![embedding(&m2, i, dim)],
                ..Default::default()
            };
            e.enroll(req).await.expect("enroll");
            i += 1;
        }
    })
    .await;
    line("beside an enroll stream", idle99, stream);

    beside_backup(&client, &probe, idle99, &data, work.path()).await;
    erasure_bound(&client, &data).await;
    server.stop().await;
}

/// `cotejo backup` (a process of its own, at nice 10) beside Identify: its time, and the calls' latency.
async fn beside_backup(
    client: &BiometricsServiceClient<Conn>,
    probe: &pb::Sample,
    idle99: f64,
    data: &std::path::Path,
    work: &std::path::Path,
) {
    let (from, out) = (data.to_owned(), work.join("backup"));
    let took = Arc::new(Mutex::new(0.0f64));
    let t2 = took.clone();
    let beside = during(client, probe, async move {
        let t = Instant::now();
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_cotejo"))
            .args(["backup", "--data-dir"])
            .arg(&from)
            .arg("--out")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("run cotejo backup");
        assert!(status.success(), "backup failed");
        *t2.lock().expect("lock") = t.elapsed().as_secs_f64();
    })
    .await;
    let db_mb = std::fs::metadata(data.join("cotejo.db")).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let snap_mb = std::fs::metadata(data.join("face-index.snap")).map(|m| m.len() as f64 / 1e6).unwrap_or(0.0);
    let backup_secs = *took.lock().expect("lock");
    println!("  backup: {db_mb:.0} MB database + {snap_mb:.0} MB snapshot copied in {backup_secs:.1} s");
    line("beside the backup", idle99, beside);
}

/// The erasure bound: from Delete's return until the snapshot without the subject is in place.
async fn erasure_bound(client: &BiometricsServiceClient<Conn>, data: &std::path::Path) {
    let snap = data.join("face-index.snap");
    let mut d = client.clone();
    for i in 10..13 {
        let before = std::fs::metadata(&snap).and_then(|m| m.modified()).expect("snapshot");
        let t = Instant::now();
        d.delete(pb::DeleteRequest { subject_id: format!("g{i:07}") }).await.expect("delete");
        let returned = t.elapsed();
        while std::fs::metadata(&snap).and_then(|m| m.modified()).expect("snapshot") == before {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "  Delete returned in {:.1} ms; snapshot rewritten {:.2} s after it returned",
            returned.as_secs_f64() * 1e3,
            (t.elapsed() - returned).as_secs_f64()
        );
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let o = opts();
    let jpeg = Arc::new(std::fs::read(models().join("fixtures/faces/obama2.jpg")).expect("fixture"));
    if o.overload {
        overload(&o, &jpeg).await;
    }
    if o.gallery > 0 {
        interference(&o).await;
    }
}
