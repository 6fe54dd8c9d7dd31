//! Backup beside a running server while enrolls go on, and restore into a
//! new data directory: the restored server answers Identify exactly as the
//! original did for every enroll acknowledged before the backup began; a
//! non-empty target and a damaged backup are refused.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use cotejo::api::pb;
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::common::{ChildServer, client, enroll_req, face_embedding, identify_req};

fn cotejo(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cotejo")).args(args).output().expect("run cotejo");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A unit vector for subject `i`.
fn vector(i: u64, dim: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(i);
    let v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_enrolls_restores_everything_acknowledged_before_it() {
    if crate::common::postgres::sqlite_only(
        "cotejo backup copies the embedded store; PostgreSQL is backed up by its own tools",
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path()).await;
    let mut c = client(&server.url).await;
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let before = 30u64;
    for i in 0..before {
        c.enroll(enroll_req(&format!("s-{i}"), vec![face_embedding(&model, vector(i, dim))])).await.expect("enroll");
    }
    let original: Vec<(String, f64)> = {
        let mut out = Vec::new();
        for i in 0..before {
            let r = c.identify(identify_req(vec![face_embedding(&model, vector(i, dim))])).await.expect("identify");
            let top = r.into_inner().candidates.into_iter().next().expect("a candidate");
            out.push((top.subject_id, top.score));
        }
        out
    };

    // An enroll stream runs through the backup.
    let (stop, late) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let stream = {
        let (stop, late, mut c, model) = (stop.clone(), late.clone(), c.clone(), model.clone());
        tokio::spawn(async move {
            let mut n = 1000u64;
            while !stop.load(Ordering::Relaxed) {
                let req = enroll_req(&format!("late-{n}"), vec![face_embedding(&model, vector(n, dim))]);
                c.enroll(req).await.expect("enroll during the backup");
                late.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        })
    };
    while late.load(Ordering::Relaxed) < 5 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let backup = out.path().join("backup");
    let (data, backup_arg) = (dir.path().display().to_string(), backup.display().to_string());
    let (ok, text) = tokio::task::spawn_blocking({
        let (data, backup_arg) = (data.clone(), backup_arg.clone());
        move || cotejo(&["backup", "--data-dir", &data, "--out", &backup_arg])
    })
    .await
    .expect("join");
    assert!(ok, "{text}");
    assert!(text.contains("keys needed"), "{text}");
    stop.store(true, Ordering::Relaxed);
    stream.await.expect("stream");
    let late = late.load(Ordering::Relaxed) as u64;
    assert!(!backup.join("template.key").exists(), "a backup never holds a key");
    // Never inside the data directory (the erasure promise covers every file there).
    let (ok, text) = cotejo(&["backup", "--data-dir", &data, "--out", &format!("{data}/./copies/today")]);
    assert!(!ok && text.contains("inside the data directory"), "{text}");
    assert!(!dir.path().join("copies").exists());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).expect("manifest")).expect("json");
    let copied = manifest["subjects"].as_u64().expect("subjects");
    assert!((before..=before + late).contains(&copied), "{copied} subjects copied, {before} + {late} enrolled");

    // A target that is not empty is refused; a new one is made.
    let (ok, text) = cotejo(&["restore", &backup_arg, "--data-dir", &data]);
    assert!(!ok && text.contains("not empty"), "{text}");
    let restored = out.path().join("restored");
    let (ok, text) = cotejo(&["restore", &backup_arg, "--data-dir", &restored.display().to_string()]);
    assert!(ok, "{text}");
    // The development key travels by hand, as a key_dir would.
    std::fs::copy(dir.path().join("template.key"), restored.join("template.key")).expect("key");
    drop(server);

    let server = ChildServer::start(&restored).await;
    let mut c = client(&server.url).await;
    assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, copied);
    for (i, (subject, score)) in original.iter().enumerate() {
        let r = c.identify(identify_req(vec![face_embedding(&model, vector(i as u64, dim))])).await.expect("identify");
        let top = r.into_inner().candidates.into_iter().next().expect("a candidate");
        assert_eq!((&top.subject_id, top.score), (subject, *score), "s-{i}");
    }
    drop(server);

    // A damaged backup is refused before anything is written.
    let db = backup.join("cotejo.db");
    let mut bytes = std::fs::read(&db).expect("db");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&db, bytes).expect("damage");
    let again = out.path().join("again");
    let (ok, text) = cotejo(&["restore", &backup_arg, "--data-dir", &again.display().to_string()]);
    assert!(!ok && text.contains("sha256"), "{text}");
    assert!(!again.join("cotejo.db").exists());
}
