//! SIGKILL at awkward moments: while the snapshots are rewritten after a
//! deletion, and while `cotejo backup` copies the store. Each restart is
//! consistent: every acknowledged enroll is there, nothing deleted comes
//! back, and a backup cut short is refused, never restored in part.

use std::{process::Command, time::Duration};

use cotejo::api::pb::{self, biometrics_service_client::BiometricsServiceClient};
use tonic::transport::Channel;

use crate::common::{ChildServer, client, enroll_req, face_embedding, identify_req};

/// A unit vector for subject `i`.
fn vector(i: usize, dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    v[i % dim] = 1.0;
    v[(i * 7 + 3) % dim] += 0.5;
    v[(i * 13 + 5) % dim] += 0.25 * (1 + i / dim) as f32;
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// Enrolls `s0`..`s{n-1}` over 4 concurrent streams; the model id and dimension.
async fn gallery(c: &BiometricsServiceClient<Channel>, n: usize) -> (String, usize) {
    let stats = c.clone().stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (mut c, model) = (c.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(4) {
                c.enroll(enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i, dim))]))
                    .await
                    .expect("enroll");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    (model, dim)
}

async fn top(c: &mut BiometricsServiceClient<Channel>, model: &str, v: Vec<f32>) -> Vec<String> {
    let r = c.identify(identify_req(vec![face_embedding(model, v)])).await.expect("identify").into_inner();
    r.candidates.into_iter().map(|c| c.subject_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_snapshots_are_rewritten_restarts_consistent() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Snapshots only from deletions (each rewrites them at once).
    let env = [("COTEJO__INDEX__SNAPSHOT_EVERY", "1000000")];
    let server = ChildServer::start_with(dir.path(), &env).await;
    let n = 1500;
    let (model, dim) = gallery(&client(&server.url).await, n).await;
    let mut server = server;
    let mut deleted = Vec::new();
    // Killed at several moments after the deletion returned: before,
    // during and after the background rewrite.
    for (round, delay_ms) in [0u64, 3, 8, 15, 30].into_iter().enumerate() {
        let mut c = client(&server.url).await;
        let gone = format!("s{}", round * 11);
        c.delete(pb::DeleteRequest { subject_id: gone.clone() }).await.expect("delete");
        deleted.push(round * 11);
        // And one enroll acknowledged just before the kill.
        let late = n + round;
        c.enroll(enroll_req(&format!("s{late}"), vec![face_embedding(&model, vector(late, dim))]))
            .await
            .expect("enroll");
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill9();
        server = ChildServer::start_with(dir.path(), &env).await;
        let mut c = client(&server.url).await;
        let s = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
        assert_eq!(s.subjects as usize, n + round + 1 - deleted.len(), "round {round}");
        for &d in &deleted {
            assert!(!top(&mut c, &model, vector(d, dim)).await.contains(&format!("s{d}")), "s{d} came back");
        }
        for i in [1, 700, n - 1, late] {
            assert_eq!(top(&mut c, &model, vector(i, dim)).await.first(), Some(&format!("s{i}")), "round {round}");
        }
    }
    drop(server);
}

fn backup(data: &std::path::Path, out: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cotejo"))
        .args(["backup", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn cotejo backup")
}

fn restore(from: &std::path::Path, to: &std::path::Path) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_cotejo"))
        .arg("restore")
        .arg(from)
        .arg("--data-dir")
        .arg(to)
        .output()
        .expect("run cotejo restore");
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_backup_leaves_nothing_restorable_in_part() {
    if crate::common::postgres::sqlite_only("cotejo backup copies the embedded store") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path()).await;
    let n = 1500;
    let (model, dim) = gallery(&client(&server.url).await, n).await;
    let out = tempfile::tempdir().expect("tempdir");
    let mut whole = 0;
    for (round, delay_ms) in [1u64, 10, 25, 50, 100].into_iter().enumerate() {
        let target = out.path().join(format!("cut-{round}"));
        let mut child = backup(dir.path(), &target);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let finished = child.wait().expect("wait").success();
        let restored = out.path().join(format!("restored-{round}"));
        let ok = restore(&target, &restored);
        // A backup killed before its manifest is refused; one that finished restores whole.
        assert_eq!(ok, finished || target.join("backup.json").exists(), "round {round} (+{delay_ms} ms)");
        if ok {
            whole += 1;
            let db = rusqlite::Connection::open(restored.join("cotejo.db")).expect("open");
            let subjects: i64 = db.query_row("SELECT COUNT(*) FROM subjects", [], |r| r.get(0)).expect("count");
            assert_eq!(subjects as usize, n, "round {round}: a restored backup holds everything");
        }
    }
    // The server did not notice: it still answers and takes enrolls; a new backup is whole.
    let mut c = client(&server.url).await;
    assert_eq!(top(&mut c, &model, vector(42, dim)).await.first(), Some(&"s42".to_owned()));
    c.enroll(enroll_req("after", vec![face_embedding(&model, vector(n, dim))])).await.expect("enroll");
    let last = out.path().join("whole");
    assert!(backup(dir.path(), &last).wait().expect("wait").success());
    assert!(restore(&last, &out.path().join("restored-whole")));
    eprintln!("{whole} of 5 cut backups had finished before the kill");
    drop(server);
}
