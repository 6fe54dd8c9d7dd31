//! Tampering with a stopped server's data directory: an edited audit entry,
//! removed last entries and swapped sealed templates are each detected and
//! reported, by `cotejo audit verify`, at start-up, or on reading.

use std::{path::Path, process::Command, time::Duration};

use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    common::{TestServer, client, config, enroll_req, face_image, fixture, identify_req, reason},
    security::s,
};

fn verify(data: &Path, anchors: Option<(&Path, &Path)>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cotejo"));
    cmd.args(["audit", "verify", "--data-dir"]).arg(data);
    if let Some((dir, key)) = anchors {
        cmd.arg("--checkpoint-dir").arg(dir).arg("--checkpoint-key-file").arg(key);
    }
    let out = cmd.output().expect("run cotejo");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A copy of a stopped server's data directory.
fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_name() != "LOCK" && e.file_type().expect("type").is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// What someone with write access to the file does: drop the triggers, edit.
fn tamper(data: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(data.join("cotejo.db")).expect("open");
    conn.execute_batch("DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;")
        .expect("drop triggers");
    conn.execute_batch(sql).expect("tamper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_truncation_and_swapped_templates_are_detected() {
    // PostgreSQL refuses such edits itself (tests/postgres.rs).
    if crate::common::postgres::sqlite_only("edits the SQLite file and its signed checkpoints") {
        return;
    }
    let outside = tempfile::tempdir().expect("tempdir");
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let (cp_dir, cp_key) = (outside.path().join("checkpoints"), outside.path().join("audit.key"));
    cotejo::store::write_secret_file(&cp_key, &[42u8; 32]).expect("key");
    let anchors = [("COTEJO__AUDIT__CHECKPOINT_DIR", s(&cp_dir)), ("COTEJO__AUDIT__CHECKPOINT_KEY_FILE", s(&cp_key))];
    let anchors: Vec<(&str, &str)> = anchors.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let server = TestServer::start(config(&data, &anchors)).await;
    let mut c = server.client.clone();
    c.enroll(enroll_req("obama", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll");
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll");
    for _ in 0..3 {
        c.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify");
    }
    server.stop().await; // writes the checkpoint
    let cp = (cp_dir.as_path(), cp_key.as_path());
    let (ok, text) = verify(&data, Some(cp));
    assert!(ok && text.contains("intact: 5 entries") && text.contains("checkpoint at entry 5"), "{text}");

    // One entry edited: the chain breaks there.
    let edited = root.path().join("edited");
    copy(&data, &edited);
    tamper(&edited, "UPDATE audit SET detail = 'nothing to see' WHERE seq = 3");
    let (ok, text) = verify(&edited, None);
    assert!(!ok && text.contains("BROKEN at entry 3"), "{text}");

    // The last entries removed: a consistent chain, but the signed
    // checkpoint vouches for more.
    let cut = root.path().join("cut");
    copy(&data, &cut);
    tamper(&cut, "DELETE FROM audit WHERE seq > 3");
    assert!(verify(&cut, None).0, "without a checkpoint a cut chain looks whole (why checkpoints exist)");
    let (ok, text) = verify(&cut, Some(cp));
    assert!(!ok && text.contains("BROKEN at entry 4") && text.contains("vouches for 5"), "{text}");
    // A server on the cut log refuses to start, naming the entry...
    let err = cotejo::server::serve(
        config(&cut, &anchors),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        std::future::pending(),
    )
    .await
    .expect_err("start-up on a cut audit log");
    assert!(format!("{err:#}").contains("audit log broken at entry 4"), "{err:#}");
    // ...or, so configured, serves NOT_SERVING and only the audit role.
    let mut lenient = anchors.clone();
    lenient.push(("COTEJO__AUDIT__ON_BROKEN", "not_serving"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(cotejo::server::serve(config(&cut, &lenient), listener, async {
        let _ = rx.await;
    }));
    let ch = tonic::transport::Channel::from_shared(url.clone()).expect("url");
    let mut health = loop {
        if let Ok(ch) = ch.connect().await {
            break HealthClient::new(ch);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let audit_service = "cotejo.v1.AuditService".to_owned();
    let started = std::time::Instant::now();
    while health.check(HealthCheckRequest { service: audit_service.clone() }).await.map(|r| r.into_inner().status).ok()
        != Some(ServingStatus::Serving as i32)
    {
        assert!(started.elapsed() < Duration::from_secs(120), "the audit service never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let overall = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
    assert_eq!(overall.status, ServingStatus::NotServing as i32);
    let e =
        client(&url).await.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect_err("refused");
    assert_eq!((e.code(), reason(&e).as_str()), (Code::Unavailable, "AUDIT_LOG_BROKEN"));
    let ch = ch.connect().await.expect("connect");
    let v = cotejo::api::pb::audit_service_client::AuditServiceClient::new(ch)
        .verify_log(cotejo::api::pb::VerifyLogRequest {})
        .await
        .expect("the audit role is answered")
        .into_inner();
    assert!(!v.intact && v.first_broken_seq == 4, "{v:?}");
    let _ = tx.send(());
    handle.await.expect("join").expect("served");

    // Two sealed templates swapped between rows: neither opens.
    let swapped = root.path().join("swapped");
    copy(&data, &swapped);
    tamper(
        &swapped,
        "CREATE TEMP TABLE s AS SELECT template_id, sealed FROM templates;
         UPDATE templates SET sealed = (SELECT sealed FROM s WHERE s.template_id != templates.template_id);",
    );
    std::fs::remove_file(swapped.join("face-index.snap")).expect("no snapshot: the start-up reads every template");
    let err = cotejo::server::serve(
        config(&swapped, &[]),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        std::future::pending(),
    )
    .await
    .expect_err("start-up with swapped templates");
    assert!(format!("{err:#}").contains("failed to decrypt"), "{err:#}");
}
