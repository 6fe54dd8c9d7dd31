//! Key rotation as an operator runs it: `cotejo keys rotate` beside a
//! serving server under a stream of Identify and Verify calls, the old key
//! retired, restarts from the snapshot and from the store; and a rotation
//! killed half-way, then resumed.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use cotejo::api::pb;

use crate::{
    common::{ChildServer, client, enroll_req, face_embedding, identify_req},
    security::s,
};

fn cotejo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cotejo")).args(args).output().expect("run cotejo");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A pseudo-random vector per subject (distinct for every `i`).
fn vector(i: usize, dim: usize) -> Vec<f32> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..dim)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn key_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("keys")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "key")))
        .count()
}

/// A server on a fresh data directory with a key directory (its first key
/// made by `cotejo keys new`), re-read every second, and `n` subjects.
struct Keyed {
    keys: tempfile::TempDir,
    data: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
    server: ChildServer,
    c: cotejo::api::pb::biometrics_service_client::BiometricsServiceClient<tonic::transport::Channel>,
    model: String,
    dim: usize,
}

async fn keyed_server(n: usize) -> Keyed {
    let keys = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let (ok, out) = cotejo(&["keys", "new", "--key-dir", &s(keys.path())]);
    assert!(ok, "{out}");
    let env = vec![("COTEJO__STORE__KEY_DIR", s(keys.path())), ("COTEJO__SERVER__RELOAD_SECS", "1".to_owned())];
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = ChildServer::start_with(data.path(), &pairs).await;
    let mut c = client(&server.url).await;
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    for i in 0..n {
        c.enroll(enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i, dim))])).await.expect("enroll");
    }
    Keyed { keys, data, env, server, c, model, dim }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_beside_live_traffic_then_the_old_key_retired() {
    if crate::common::postgres::sqlite_only("cotejo keys rotate re-seals the embedded store") {
        return;
    }
    let n = 400;
    let Keyed { keys, data, env, server, mut c, model, dim } = keyed_server(n).await;
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Identify and Verify (which opens stored templates) all through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let traffic = {
        let (stop, calls, failed, mut c, model) =
            (stop.clone(), calls.clone(), failed.clone(), c.clone(), model.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = identify_req(vec![face_embedding(&model, vector(i % n, dim))]);
                let verify = pb::VerifyRequest {
                    subject_id: format!("s{}", i % n),
                    samples: vec![face_embedding(&model, vector(i % n, dim))],
                    target_fmr: 0.0,
                };
                let ok_id = c
                    .identify(id)
                    .await
                    .is_ok_and(|r| r.into_inner().candidates[0].subject_id == format!("s{}", i % n));
                let ok_v = c.verify(verify).await.is_ok_and(|r| r.into_inner().decision.is_some_and(|d| d.is_match));
                calls.fetch_add(2, Ordering::Relaxed);
                failed.fetch_add(u64::from(!ok_id) + u64::from(!ok_v), Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let (ok, out) = tokio::task::spawn_blocking({
        let (d, k) = (s(data.path()), s(keys.path()));
        move || {
            cotejo(&["keys", "rotate", "--data-dir", &d, "--key-dir", &k, "--batch", "50", "--server-reload-secs", "3"])
        }
    })
    .await
    .expect("join");
    stop.store(true, Ordering::Relaxed);
    traffic.await.expect("traffic");
    assert!(ok, "{out}");
    assert!(calls.load(Ordering::Relaxed) > 10, "too little traffic to show anything");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls failed during the rotation");
    // Enrolled after the rotation: under the new key too.
    c.enroll(enroll_req("late", vec![face_embedding(&model, vector(n, dim))])).await.expect("enroll");

    let (ok, out) = cotejo(&["keys", "retire", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]);
    assert!(ok, "{out}");
    assert_eq!(key_files(keys.path()), 1, "{out}");
    tokio::time::sleep(Duration::from_secs(2)).await; // the server drops the old key
    for i in (0..n).step_by(37) {
        let r = c
            .verify(pb::VerifyRequest {
                subject_id: format!("s{i}"),
                samples: vec![face_embedding(&model, vector(i, dim))],
                target_fmr: 0.0,
            })
            .await
            .expect("every template opens without the old key");
        assert!(r.into_inner().decision.expect("decision").is_match);
    }
    assert!(server.terminate().success());
    // From the re-sealed snapshot, then from the store alone.
    for from_store in [false, true] {
        if from_store {
            std::fs::remove_file(data.path().join("face-index.snap")).expect("rm snapshot");
        }
        let server = ChildServer::start_with(data.path(), &env).await;
        let mut c = client(&server.url).await;
        assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, n as u64 + 1);
        let r = c.identify(identify_req(vec![face_embedding(&model, vector(123, dim))])).await.expect("identify");
        assert_eq!(r.into_inner().candidates[0].subject_id, "s123");
        assert!(server.terminate().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_half_way_resumes_and_finishes() {
    if crate::common::postgres::sqlite_only("cotejo keys rotate re-seals the embedded store") {
        return;
    }
    let Keyed { keys, data, server, mut c, model, dim, .. } = keyed_server(300).await;
    // One row per transaction, slowly; SIGKILL once some are done.
    let mut child = Command::new(env!("CARGO_BIN_EXE_cotejo"))
        .args(["keys", "rotate", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())])
        .args(["--batch", "1", "--pause-ms", "10", "--server-reload-secs", "2"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut err = child.stderr.take().expect("stderr");
    let progress = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        let mut b = [0u8; 256];
        while let Ok(k) = err.read(&mut b) {
            if k == 0 {
                break;
            }
            text.extend_from_slice(&b[..k]);
            if String::from_utf8_lossy(&text).contains(" 40 re-sealed") {
                return true;
            }
        }
        false
    })
    .await
    .expect("join");
    assert!(progress, "the rotation never got going");
    child.kill().expect("SIGKILL");
    let _ = child.wait();

    let (ok, status) = cotejo(&["keys", "status", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]);
    assert!(ok && status.matches(" under ").count() == 2, "half-way: two keys in use\n{status}");
    let (ok, out) = cotejo(&["keys", "rotate", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]);
    assert!(!ok && out.contains("--resume"), "a new rotation over an unfinished one: {out}");
    let (ok, out) =
        cotejo(&["keys", "rotate", "--resume", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]);
    assert!(ok, "{out}");
    let (ok, status) = cotejo(&["keys", "status", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]);
    assert!(ok && status.matches(" under ").count() == 1, "{status}");
    assert!(cotejo(&["keys", "retire", "--data-dir", &s(data.path()), "--key-dir", &s(keys.path())]).0);
    assert_eq!(key_files(keys.path()), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = c
        .verify(pb::VerifyRequest {
            subject_id: "s7".into(),
            samples: vec![face_embedding(&model, vector(7, dim))],
            target_fmr: 0.0,
        })
        .await
        .expect("verify after the resumed rotation");
    assert!(r.into_inner().decision.expect("decision").is_match);
    assert!(server.terminate().success());
}
