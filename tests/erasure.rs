//! Erasure that holds: once Delete has returned and the snapshots have been
//! rewritten (in the background, one write), no file in the data directory
//! holds the deleted subject's templates: not the database (rows zeroed by
//! secure_delete), not the WAL (checkpointed and truncated before Delete
//! returns), not the sealed snapshots; a kept subject's are still found by
//! the same checks. On PostgreSQL, a following node's snapshots lose a
//! subject deleted through another node.

use std::{sync::Arc, time::Duration};

use cotejo::{
    api::pb,
    finger::index::{FingerIndexSettings, snapshot},
    index::{IndexSettings, VectorIndex},
    store::{SealedFile, Store},
};
use rusqlite::{Connection, OpenFlags};

use crate::common::{ChildServer, client, enroll_req, face_embedding, models_dir};

fn finger(name: &str) -> pb::Sample {
    let bytes = std::fs::read(models_dir().join("fixtures/fingers").join(name)).expect("print");
    pb::Sample {
        modality: pb::Modality::Finger as i32,
        finger_position: 2,
        data: Some(pb::sample::Data::Image(bytes)),
        ppi: 0,
    }
}

/// A subject's stored templates: (template id, modality code, sealed record).
fn stored(db: &std::path::Path, subject: &str) -> Vec<(i64, i64, Vec<u8>)> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).expect("db");
    let mut st =
        conn.prepare("SELECT template_id, modality, sealed FROM templates WHERE subject_id = ?1").expect("sql");
    st.query_map([subject], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Files in `dir` holding 32 bytes of the sealed record's ciphertext.
fn files_holding(dir: &std::path::Path, sealed: &[u8]) -> Vec<String> {
    let needle = &sealed[sealed.len() - 48..sealed.len() - 16];
    std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).ok()?;
            bytes.windows(needle.len()).any(|w| w == needle).then(|| path.display().to_string())
        })
        .collect()
}

/// A unit face vector with weight on dimensions `k` and `k + 1`.
fn unit(dim: usize, k: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    v[k] = 0.6;
    v[k + 1] = 0.8;
    v
}

/// Enrolls "keep" and "gone", each a face and a print; the face model and its dimension.
async fn enroll_keep_and_gone(
    c: &mut pb::biometrics_service_client::BiometricsServiceClient<tonic::transport::Channel>,
) -> (String, usize) {
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    c.enroll(enroll_req("keep", vec![face_embedding(&model, unit(dim, 0)), finger("p2_1.png")])).await.expect("enroll");
    c.enroll(enroll_req("gone", vec![face_embedding(&model, unit(dim, 5)), finger("p1_1.png")])).await.expect("enroll");
    (model, dim)
}

/// Waits (30 s at most) until every one of `paths` was written after `after`; whether they were.
async fn rewritten_after(paths: &[&std::path::Path], after: std::time::SystemTime) -> bool {
    let rewritten = || paths.iter().all(|p| modified(p).is_some_and(|t| t > after));
    for _ in 0..600 {
        if rewritten() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rewritten()
}

/// The template ids of the kept and the deleted subject.
#[derive(Clone, Copy)]
struct Ids {
    gone_face: i64,
    keep_face: i64,
    gone_finger: i64,
    keep_finger: i64,
}

/// Opened with the key (`open` names a sealed file), the snapshots hold the
/// kept subject's templates and not the deleted one's.
fn hold_only_the_kept(open: impl Fn(&str) -> SealedFile, dim: usize, model: &str, ids: Ids) {
    let bytes = open("face-index.snap").read().expect("read").expect("face snapshot");
    let live: Vec<(i64, Arc<str>)> = vec![(ids.gone_face, "gone".into()), (ids.keep_face, "keep".into())];
    let (_, missing, _) =
        VectorIndex::restore(&bytes, dim, IndexSettings::default(), model, &live).expect("face snapshot");
    assert_eq!(missing, [ids.gone_face], "the face snapshot holds the deleted template, or lost the kept one");
    let mut reader = open("finger-index.snap").reader().expect("read").expect("finger snapshot");
    let restored = snapshot::read(&mut reader, FingerIndexSettings::default(), |_, _| Some("any".into()))
        .expect("finger snapshot");
    assert!(restored.index.template(ids.gone_finger).is_none(), "the finger snapshot holds the deleted template");
    assert!(restored.index.template(ids.keep_finger).is_some());
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_subject_leaves_no_template_in_the_data_directory() {
    if crate::common::postgres::sqlite_only("reads the SQLite file and its WAL") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("COTEJO__INDEX__SNAPSHOT_EVERY", "1"), ("COTEJO__FINGER__SNAPSHOT_EVERY", "1")];
    let server = ChildServer::start_with(dir.path(), &env).await;
    let mut c = client(&server.url).await;
    let (model, dim) = enroll_keep_and_gone(&mut c).await;
    let (face_snap, finger_snap) = (dir.path().join("face-index.snap"), dir.path().join("finger-index.snap"));
    let db = dir.path().join("cotejo.db");
    // Both snapshots hold both subjects: written after every change here.
    for _ in 0..300 {
        if face_snap.exists() && finger_snap.exists() && stored(&db, "gone").len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (gone, keep) = (stored(&db, "gone"), stored(&db, "keep"));
    assert_eq!((gone.len(), keep.len()), (2, 2));
    let id_of = |t: &[(i64, i64, Vec<u8>)], modality: i64| t.iter().find(|r| r.1 == modality).expect("template").0;
    let (gone_face, gone_finger) = (id_of(&gone, 1), id_of(&gone, 2));
    let (keep_face, keep_finger) = (id_of(&keep, 1), id_of(&keep, 2));

    let before = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.delete(pb::DeleteRequest { subject_id: "gone".into() }).await.expect("delete");
    // Delete has returned: the database and the WAL hold nothing of it.
    for (_, _, sealed) in &gone {
        assert_eq!(files_holding(dir.path(), sealed), Vec::<String>::new(), "after Delete returned");
    }
    // The snapshots are rewritten in the background.
    assert!(rewritten_after(&[&face_snap, &finger_snap], before).await, "the snapshots were not rewritten");
    server.kill9();

    for (_, _, sealed) in &gone {
        assert_eq!(files_holding(dir.path(), sealed), Vec::<String>::new());
    }
    for (_, _, sealed) in &keep {
        assert!(!files_holding(dir.path(), sealed).is_empty(), "the check finds a kept subject's record");
    }
    // Opened with the key: the snapshots hold the kept subject, not the deleted one.
    let store = Store::open(dir.path(), "").expect("open the store");
    let ids = Ids { gone_face, keep_face, gone_finger, keep_finger };
    hold_only_the_kept(|name| store.sealed_file(name), dim, &model, ids);
}

/// On PostgreSQL a node's indexes follow the change log, and so do its
/// snapshots: a deletion made through another node rewrites them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_nodes_snapshots_lose_a_subject_deleted_through_another_node() {
    let pg = crate::common::postgres::TempPostgres::start();
    let db = pg.new_database();
    let key = "4e".repeat(32);
    let env = [
        ("COTEJO__STORE__URL", db.as_str()),
        ("COTEJO__STORE__ENCRYPTION_KEY", key.as_str()),
        ("COTEJO__INDEX__SNAPSHOT_EVERY", "1"),
        ("COTEJO__FINGER__SNAPSHOT_EVERY", "1"),
    ];
    let (writer_dir, follower_dir) = (tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir"));
    let writer = crate::common::TestServer::start(crate::common::config(writer_dir.path(), &env)).await;
    let follower = crate::common::TestServer::start(crate::common::config(follower_dir.path(), &env)).await;
    let mut c = writer.client.clone();
    let (model, dim) = enroll_keep_and_gone(&mut c).await;
    let unit = |k: usize| unit(dim, k);
    let (pg_client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    let id = |subject: &'static str, modality: i16| {
        let c = &pg_client;
        async move {
            c.query_one(
                "SELECT template_id FROM templates WHERE subject_id = $1 AND modality = $2",
                &[&subject, &modality],
            )
            .await
            .expect("template")
            .get::<_, i64>(0)
        }
    };
    let ids = Ids {
        gone_face: id("gone", 1).await,
        gone_finger: id("gone", 2).await,
        keep_face: id("keep", 1).await,
        keep_finger: id("keep", 2).await,
    };
    let path = |name: &str| follower_dir.path().join(name);
    let (face_snap, finger_snap) = (path("face-index.snap"), path("finger-index.snap"));
    // The follower took both enrolls and saved them (every change, here).
    let mut f = follower.client.clone();
    let probe = crate::common::identify_req(vec![face_embedding(&model, unit(5))]);
    for _ in 0..300 {
        let found = f.identify(probe.clone()).await.expect("identify").into_inner();
        if found.candidates.first().is_some_and(|c| c.subject_id == "gone")
            && face_snap.exists()
            && finger_snap.exists()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.delete(pb::DeleteRequest { subject_id: "gone".into() }).await.expect("delete");
    assert!(rewritten_after(&[&face_snap, &finger_snap], before).await, "the follower's snapshots were not rewritten");
    follower.stop().await;
    writer.stop().await;
    // Opened with the key: the follower's snapshots hold the kept subject only.
    let records = cotejo::store::postgres::PgRecords::open(&db, std::path::Path::new(""), &key, 1).await.expect("open");
    hold_only_the_kept(|name| records.sealed_file(follower_dir.path(), name), dim, &model, ids);
}
