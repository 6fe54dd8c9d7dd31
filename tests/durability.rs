//! An acknowledged enroll survives SIGKILL, and the index is rebuilt from
//! the store at start-up.

use cotejo::api::pb;

use crate::common::{ChildServer, client, enroll_req, face_embedding, face_image, fixture, identify_req};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_enrolls_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = ChildServer::start(dir.path()).await;
    let mut c = client(&server.url).await;
    c.enroll(enroll_req("obama", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll");
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll");
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    // Many small enrolls right before the kill: each acknowledged one must survive.
    let mut acked = Vec::new();
    for i in 0..40 {
        let mut v = vec![0.0f32; dim];
        v[i % dim] = 1.0;
        v[(i * 7 + 3) % dim] += 0.5;
        let id = format!("synthetic-{i}");
        c.enroll(enroll_req(&id, vec![face_embedding(&model, v.clone())])).await.expect("enroll");
        acked.push((id, v));
    }
    // A deletion is final: also after a crash and a rebuild from the store.
    c.delete(pb::DeleteRequest { subject_id: "biden".into() }).await.expect("delete");
    server.kill9();

    let server = ChildServer::start(dir.path()).await;
    let mut c = client(&server.url).await;
    let s = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(s.subjects, 41);
    let r = c.identify(identify_req(vec![face_image(fixture("biden.jpg"))])).await.expect("identify").into_inner();
    assert!(r.candidates.iter().all(|c| c.subject_id != "biden"), "a deleted subject came back");
    assert!(!r.decision.expect("decision").is_match);
    let r = c.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "obama");
    assert!(r.decision.expect("decision").is_match);
    for (id, v) in &acked {
        let r = c.identify(identify_req(vec![face_embedding(&model, v.clone())])).await.expect("identify").into_inner();
        assert_eq!(&r.candidates[0].subject_id, id);
        assert!((r.candidates[0].scores[0].raw_score - 1.0).abs() < 1e-4);
    }
    // A clean SIGTERM shutdown exits with success.
    assert!(server.terminate().success());

    // The audit chain is intact across the crash and records searches too.
    let entries = crate::common::postgres::audit_entries(dir.path());
    assert!(entries.len() >= 44, "{} audit entries", entries.len());
    if !crate::common::postgres::selected() {
        let store = cotejo::store::Store::open(dir.path(), "").expect("reopen the store");
        assert_eq!(store.verify_audit(None, false).expect("audit chain").entries, entries.len() as u64);
    }
    let tail = &entries[entries.len().saturating_sub(50)..];
    let has = |method: &str, who: &str| tail.iter().any(|e| e.method == method && e.subjects.iter().any(|s| s == who));
    assert!(has("Identify", "obama"), "an Identify that returned obama is recorded");
    assert!(has("Delete", "biden"));
    assert!(tail.iter().all(|e| e.caller == "anonymous" && !e.request_id.is_empty()), "{tail:?}");
}

/// With every index kind: a snapshot is written, later changes (enrolls and
/// deletions) are replayed from the store after a SIGKILL, nothing deleted
/// comes back, and the snapshot on disk is sealed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_snapshot_plus_replay_after_sigkill() {
    for kind in ["flat", "int8", "int4"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = [("COTEJO__INDEX__KIND", kind), ("COTEJO__INDEX__SNAPSHOT_EVERY", "8")];
        let server = ChildServer::start_with(dir.path(), &env).await;
        let mut c = client(&server.url).await;
        let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
        let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
        let vector = |i: usize| {
            let mut v = vec![0.0f32; dim];
            v[i % dim] = 1.0;
            v[(i * 7 + 3) % dim] += 0.5;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        for i in 0..8 {
            c.enroll(enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i))])).await.expect("enroll");
        }
        // The empty store's start-up wrote a snapshot of nothing; wait for
        // the one written after 8 changes (it holds 8 float vectors).
        let holds_eight = |len: u64| len as usize >= 8 * dim * 4;
        let sealed = snapshot_once(&dir.path().join("face-index.snap"), holds_eight).await;
        assert!(holds_eight(sealed.len() as u64), "{kind}: no snapshot after 8 changes");
        assert!(!sealed.windows(8).any(|w| w == b"CTJIDX01"), "{kind}: the snapshot is not sealed");
        // After the snapshot: three more enrolls, one deletion of each age.
        for i in 8..11 {
            c.enroll(enroll_req(&format!("s{i}"), vec![face_embedding(&model, vector(i))])).await.expect("enroll");
        }
        for gone in ["s2", "s9"] {
            c.delete(pb::DeleteRequest { subject_id: gone.into() }).await.expect("delete");
        }
        server.kill9();

        let log = dir.path().join("restart.log");
        let server = ChildServer::start_logged(dir.path(), &env, Some(&log)).await;
        let mut c = client(&server.url).await;
        let index = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().face_index.expect("face index");
        assert_eq!(index.kind, kind);
        assert_eq!(index.approximate, kind != "flat");
        for i in 0..11 {
            let r = c.identify(identify_req(vec![face_embedding(&model, vector(i))])).await.expect("identify");
            let r = r.into_inner();
            let top = r.candidates.first().map(|c| c.subject_id.clone()).unwrap_or_default();
            if i == 2 || i == 9 {
                assert!(r.candidates.iter().all(|c| c.subject_id != format!("s{i}")), "{kind}: deleted s{i} returned");
            } else {
                assert_eq!(top, format!("s{i}"), "{kind}");
            }
        }
        drop(server);
        let log = std::fs::read_to_string(&log).expect("log");
        assert!(log.contains("restored from its snapshot"), "{kind}: the snapshot was not used:\n{log}");
    }
}

/// The snapshot file's bytes once `holds(its length)` (written in the
/// background), or whatever is there after 10 s.
async fn snapshot_once(path: &std::path::Path, holds: impl Fn(u64) -> bool) -> Vec<u8> {
    for _ in 0..200 {
        if std::fs::metadata(path).is_ok_and(|m| holds(m.len())) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    std::fs::read(path).expect("snapshot")
}

/// A synthetic ISO/IEC 19794-2 record of finger `seed` at position 2, its
/// minutiae shifted by `shift` px (another impression of the same finger).
fn synthetic_finger(seed: u64, shift: u16) -> pb::Sample {
    crate::finger::iso(2, crate::finger::synthetic_record(seed, 2, 0.0, f32::from(shift)))
}

/// The finger index's snapshot: written after `snapshot_every` changes,
/// sealed, used by the next start-up together with the enrolls and deletions
/// made after it (replayed from the store after a SIGKILL), and a damaged
/// snapshot is not used: the gallery is rebuilt from the store instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finger_snapshot_plus_replay_after_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("COTEJO__FINGER__SNAPSHOT_EVERY", "6")];
    let server = ChildServer::start_with(dir.path(), &env).await;
    let mut c = client(&server.url).await;
    for i in 0..6 {
        c.enroll(enroll_req(&format!("f{i}"), vec![synthetic_finger(i, 0)])).await.expect("enroll");
    }
    // The empty store's start-up wrote a snapshot of nothing; wait for the
    // one written after 6 changes (6 templates of about 40 cylinders, 236
    // bytes each, and their shortlist keys).
    let snap = dir.path().join("finger-index.snap");
    let holds_six = |len: u64| len > 6 * 30 * 236;
    let sealed = snapshot_once(&snap, holds_six).await;
    assert!(holds_six(sealed.len() as u64), "no finger snapshot after 6 changes");
    // The format's magic (src/finger/index/snapshot.rs) must not be readable on disk.
    assert!(!sealed.windows(8).any(|w| w == b"CTJFNG02"), "the finger snapshot is not sealed");
    // A deletion rewrites the snapshot at once (erasure): it then holds
    // f0 and f2-f5. Two enrolls after that are left for the replay.
    let written = std::fs::metadata(&snap).and_then(|m| m.modified()).expect("mtime");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    c.delete(pb::DeleteRequest { subject_id: "f1".into() }).await.expect("delete");
    for _ in 0..200 {
        if std::fs::metadata(&snap).and_then(|m| m.modified()).is_ok_and(|t| t > written) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for i in 6..8 {
        c.enroll(enroll_req(&format!("f{i}"), vec![synthetic_finger(i, 0)])).await.expect("enroll");
    }
    server.kill9();

    let check = |log: &std::path::Path, wants: &[&str]| {
        let log = std::fs::read_to_string(log).expect("log");
        for want in wants {
            assert!(log.contains(want), "not in the log: {want}\n{log}");
        }
    };
    // The snapshot holds f0 and f2-f5; f6 and f7 were enrolled after it.
    let replayed =
        ["finger index snapshot read, with the store's changes since", r#""kept":5"#, r#""added":2"#, r#""removed":0"#];
    for (round, damage, wants) in [
        (0, false, &replayed[..]),
        (1, true, &["snapshot not used; rebuilding from the store", r#""index":"finger index""#][..]),
    ] {
        if damage {
            let mut bytes = std::fs::read(&snap).expect("snapshot");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x40;
            std::fs::write(&snap, bytes).expect("damage the snapshot");
        }
        let log = dir.path().join(format!("restart-{round}.log"));
        let server = ChildServer::start_logged(dir.path(), &env, Some(&log)).await;
        let mut c = client(&server.url).await;
        for i in 0..8 {
            let r = c.identify(identify_req(vec![synthetic_finger(i, 7)])).await.expect("identify").into_inner();
            let found = r.candidates.first().map(|c| c.subject_id.clone()).unwrap_or_default();
            if i == 1 {
                assert!(r.candidates.iter().all(|c| c.subject_id != format!("f{i}")), "deleted f{i} returned");
            } else {
                assert_eq!(found, format!("f{i}"), "round {round}");
                assert!(r.decision.expect("decision").is_match, "round {round}: f{i}");
            }
        }
        drop(server);
        check(&log, wants);
    }
    // A clean shutdown saves the changed gallery: the next start adds nothing from the store.
    let server = ChildServer::start_with(dir.path(), &env).await;
    let mut c = client(&server.url).await;
    c.enroll(enroll_req("f8", vec![synthetic_finger(8, 0)])).await.expect("enroll");
    assert!(server.terminate().success());
    let log = dir.path().join("after-shutdown.log");
    let server = ChildServer::start_logged(dir.path(), &env, Some(&log)).await;
    let mut c = client(&server.url).await;
    let r = c.identify(identify_req(vec![synthetic_finger(8, 7)])).await.expect("identify").into_inner();
    assert_eq!(r.candidates.first().map(|c| c.subject_id.as_str()), Some("f8"));
    drop(server);
    check(&log, &[r#""kept":8"#, r#""added":0"#, r#""removed":0"#]);
}
