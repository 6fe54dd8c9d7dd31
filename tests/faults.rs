//! Faults: a disk that fills up under the service. Enroll is refused by
//! name (RESOURCE_EXHAUSTED, STORAGE_FULL) with nothing half-stored, health
//! turns NOT_SERVING, and both recover once there is room again.

use std::{io::Write, path::PathBuf, process::Command, time::Duration};

use cotejo::api::pb;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::common::{ChildServer, client, enroll_req, face_embedding, reason};

/// Unmounts the test's file system, however the test ends.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn health(url: &str) -> i32 {
    let ch = Channel::from_shared(url.to_owned()).expect("url").connect().await.expect("connect");
    HealthClient::new(ch)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .expect("health")
        .into_inner()
        .status
}

async fn wait_health(url: &str, want: ServingStatus) {
    for _ in 0..100 {
        if health(url).await == want as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a small tmpfs; scripts/test.sh runs it as root"]
async fn a_full_disk_refuses_enrolls_by_name_and_recovers() {
    let base = tempfile::tempdir().expect("tempdir");
    let mnt = base.path().join("small");
    std::fs::create_dir(&mnt).expect("mount point");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=32m", "tmpfs"]).arg(&mnt).status();
    assert!(mounted.is_ok_and(|s| s.success()), "mount -t tmpfs failed (root needed)");
    let _mounted = Mounted(mnt.clone());
    let env = [("COTEJO__SERVER__HEALTH_CHECK_SECS", "1"), ("COTEJO__STORE__MIN_FREE_MB", "1")];
    let server = ChildServer::start_with(&mnt.join("data"), &env).await;
    let mut c = client(&server.url).await;
    let stats = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let sample = |i: usize| {
        let mut v = vec![0.0f32; dim];
        v[i % dim] = 1.0;
        vec![face_embedding(&model, v)]
    };
    for i in 0..10 {
        c.enroll(enroll_req(&format!("s-{i}"), sample(i))).await.expect("enroll");
    }

    let before = c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects;
    // Fill the file system.
    let ballast = mnt.join("ballast");
    {
        let mut f = std::fs::File::create(&ballast).expect("ballast");
        let chunk = vec![0x5a_u8; 1 << 16];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    wait_health(&server.url, ServingStatus::NotServing).await;
    let full = (tonic::Code::ResourceExhausted, "STORAGE_FULL".to_owned());
    let e = c.enroll(enroll_req("full", sample(11))).await.expect_err("an enroll on a full disk");
    assert_eq!((e.code(), reason(&e)), full, "{e:?}");
    // A call that cannot be audited is not answered either, and says why.
    let e = c.stats(pb::StatsRequest {}).await.expect_err("an unaudited read");
    assert_eq!((e.code(), reason(&e)), full, "{e:?}");

    // Room again: health and enrolls come back without a restart.
    std::fs::remove_file(&ballast).expect("free the disk");
    wait_health(&server.url, ServingStatus::Serving).await;
    // Nothing of the refused enroll was stored: the same id enrolls as new.
    let e = c.get_subject(pb::GetSubjectRequest { subject_id: "full".into() }).await.expect_err("nothing stored");
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, before);
    c.enroll(enroll_req("full", sample(11))).await.expect("enroll once there is room");
    assert_eq!(c.stats(pb::StatsRequest {}).await.expect("stats").into_inner().subjects, before + 1);
    // The audit chain took no half-written entry.
    let ch = Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connect");
    let v = pb::audit_service_client::AuditServiceClient::new(ch)
        .verify_log(pb::VerifyLogRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(v.intact, "{v:?}");
    drop(server);
}
