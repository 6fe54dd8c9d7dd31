//! Remote access as a consulate would use it: real TLS 1.3 handshakes with
//! certificates made here, mutual TLS, bearer tokens with roles, revocation
//! without a restart, and the audit entry each call and refusal leaves.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient},
    cli::{Conn, Connection},
    store::AuditEntry,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::common::{config, enroll_req, face_image, fixture, identify_req, reason};

/// A CA, and certificates it issues, written as PEM files under `dir`.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = p.self_signed(&ca_key).expect("CA");
        std::fs::write(dir.join(format!("{name}.pem")), ca.pem()).expect("write CA");
        Self { dir: dir.to_owned(), ca, ca_key }
    }

    pub(crate) fn ca_file(&self) -> PathBuf {
        let name = self.ca.params().distinguished_name.get(&DnType::CommonName).map(|v| match v {
            rcgen::DnValue::Utf8String(s) => s.clone(),
            other => format!("{other:?}"),
        });
        self.dir.join(format!("{}.pem", name.unwrap_or_default()))
    }

    /// (certificate, key) files for `cn`: a server certificate for
    /// 127.0.0.1 when `server`, else a client certificate.
    pub(crate) fn issue(&self, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(if server { vec!["localhost".to_owned()] } else { vec![] }).expect("params");
        if server {
            p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages =
            vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).expect("sign");
        let (c, k) = (self.dir.join(format!("{cn}.crt")), self.dir.join(format!("{cn}.key")));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c, k)
    }
}

/// A server started in process on 127.0.0.1:0 with `overrides`, waited
/// for through `probe` (a connection that can pass its TLS and auth).
pub(crate) struct SecureServer {
    pub(crate) addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl SecureServer {
    pub(crate) async fn start(
        data_dir: &Path,
        overrides: &[(&str, &str)],
        probe: impl Fn(SocketAddr) -> Connection,
    ) -> Self {
        let cfg = config(data_dir, overrides);
        cotejo::telemetry::init(&cfg.log);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(cotejo::server::serve(cfg, listener, async {
            let _ = rx.await;
        }));
        let start = Instant::now();
        loop {
            if let Ok(conn) = probe(addr).connect().await
                && let Ok(r) = HealthClient::new(conn).check(HealthCheckRequest { service: String::new() }).await
                && r.into_inner().status == ServingStatus::Serving as i32
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "not SERVING");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { addr, shutdown: Some(tx), handle: Some(handle) }
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server result");
        }
    }
}

pub(crate) async fn biometrics(c: &Connection) -> Result<BiometricsServiceClient<Conn>, String> {
    c.connect().await.map(BiometricsServiceClient::new).map_err(|e| format!("{e:#}"))
}

/// Every audit entry of a data directory (read while the server runs).
pub(crate) fn audit_log(data_dir: &Path) -> Vec<AuditEntry> {
    crate::common::postgres::audit_entries(data_dir)
}

fn cotejo(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cotejo")).args(args).output().expect("run cotejo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_of_the_ca_with_their_roles() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(pki_dir.path(), "institute-ca");
    let rogue = Pki::new(pki_dir.path(), "rogue-ca");
    let (server_cert, server_key) = pki.issue("cotejo", true);
    let (wa_cert, wa_key) = pki.issue("consulate-wa", false);
    let (admin_cert, admin_key) = pki.issue("registry-admin", false);
    let (rogue_cert, rogue_key) = rogue.issue("consulate-wa-forged", false);
    let callers = pki_dir.path().join("callers.toml");
    let (ok, _, err) = cotejo(&[
        "token",
        "add",
        "--tokens-file",
        &s(&callers),
        "--name",
        "consulate-wa",
        "--roles",
        "identify",
        "--certificate",
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = cotejo(&[
        "token",
        "add",
        "--tokens-file",
        &s(&callers),
        "--name",
        "registry-admin",
        "--roles",
        "enroll,admin,identify",
        "--certificate",
    ]);
    assert!(ok, "{err}");
    let env = [
        ("COTEJO__SERVER__TLS_CERT", s(&server_cert)),
        ("COTEJO__SERVER__TLS_KEY", s(&server_key)),
        ("COTEJO__SERVER__TLS_CLIENT_CA", s(&pki.ca_file())),
        ("COTEJO__AUTH__TOKENS_FILE", s(&callers)),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let conn = |addr: SocketAddr, cert: Option<(&PathBuf, &PathBuf)>, ca: &PathBuf| Connection {
        server: format!("https://{addr}"),
        ca: Some(ca.clone()),
        cert: cert.map(|c| c.0.clone()),
        key: cert.map(|c| c.1.clone()),
        token: None,
    };
    let ca = pki.ca_file();
    let server = SecureServer::start(data.path(), &env, |a| conn(a, Some((&admin_cert, &admin_key)), &ca)).await;
    let addr = server.addr;

    // The admin enrolls over mutual TLS; the consulate identifies.
    let mut admin = biometrics(&conn(addr, Some((&admin_cert, &admin_key)), &ca)).await.expect("admin connects");
    admin.enroll(enroll_req("obama", vec![face_image(fixture("obama3.jpg"))])).await.expect("enroll over mTLS");
    let mut wa = biometrics(&conn(addr, Some((&wa_cert, &wa_key)), &ca)).await.expect("consulate connects");
    let r = wa.identify(identify_req(vec![face_image(fixture("obama2.jpg"))])).await.expect("identify").into_inner();
    assert_eq!(r.candidates[0].subject_id, "obama");
    // A role it lacks: PERMISSION_DENIED naming the role.
    let e = wa.delete(pb::DeleteRequest { subject_id: "obama".into() }).await.expect_err("no admin role");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_eq!(reason(&e), "MISSING_ROLE");
    assert!(e.message().contains("admin"), "{}", e.message());

    // No client certificate, or one from another CA: the handshake fails.
    let refused = |r: Result<BiometricsServiceClient<Conn>, String>| async move {
        match r {
            Err(_) => true,
            Ok(mut c) => c.stats(pb::StatsRequest {}).await.is_err(),
        }
    };
    assert!(refused(biometrics(&conn(addr, None, &ca)).await).await, "a client without a certificate got in");
    assert!(
        refused(biometrics(&conn(addr, Some((&rogue_cert, &rogue_key)), &ca)).await).await,
        "a certificate of another CA got in"
    );
    // A client that does not trust the server's CA refuses it too.
    assert!(refused(biometrics(&conn(addr, Some((&wa_cert, &wa_key)), &rogue.ca_file())).await).await);
    // Plain HTTP/2 to a TLS port gets nowhere.
    let plain = Connection { server: format!("http://{addr}"), ..Connection::default() };
    assert!(refused(biometrics(&plain).await).await);

    let log = wait_for(data.path(), |log| log.iter().filter(|e| e.method == "TlsHandshake").count() >= 2).await;
    let enroll = log.iter().find(|e| e.method == "Enroll").expect("enroll entry");
    assert_eq!(
        (enroll.caller.as_str(), enroll.role.as_str(), enroll.outcome.as_str()),
        ("registry-admin", "enroll", "OK")
    );
    let identify = log.iter().find(|e| e.method == "Identify").expect("identify entry");
    assert_eq!(identify.caller, "consulate-wa");
    assert!(identify.subjects.contains(&"obama".to_owned()), "{identify:?}");
    let denied = log.iter().find(|e| e.method == "Delete").expect("refused delete entry");
    assert_eq!(denied.caller, "consulate-wa");
    assert!(denied.outcome.starts_with("PermissionDenied: MISSING_ROLE"), "{denied:?}");
    assert!(log.iter().any(|e| e.method == "TlsHandshake" && e.outcome.contains("TLS_HANDSHAKE_REFUSED")), "{log:?}");
    assert!(log.iter().all(|e| !e.request_id.is_empty() || e.method == "TlsHandshake"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_carry_roles_and_revocation_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let callers = dir.path().join("callers.toml");
    let add = |name: &str, roles: &str| {
        let (ok, out, err) = cotejo(&["token", "add", "--tokens-file", &s(&callers), "--name", name, "--roles", roles]);
        assert!(ok, "{err}");
        out.trim().to_owned()
    };
    let desk = add("desk-12", "enroll,identify");
    let auditor = add("auditor", "audit");
    assert!(!std::fs::read_to_string(&callers).expect("read").contains(&desk), "the token itself is stored");
    let env = [("COTEJO__AUTH__TOKENS_FILE", s(&callers)), ("COTEJO__SERVER__RELOAD_SECS", "1".to_owned())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let with = |addr: SocketAddr, token: Option<&str>| Connection {
        server: format!("http://{addr}"),
        token: token.map(str::to_owned),
        ..Connection::default()
    };
    let server = SecureServer::start(data.path(), &env, |a| with(a, None)).await;
    let addr = server.addr;

    // Health is open; calls without a token are not.
    let mut anon = biometrics(&with(addr, None)).await.expect("connect");
    let e = anon.stats(pb::StatsRequest {}).await.expect_err("no credentials");
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(reason(&e), "UNAUTHENTICATED");
    let mut bad = biometrics(&with(addr, Some("ctj_not-a-token"))).await.expect("connect");
    assert_eq!(bad.stats(pb::StatsRequest {}).await.expect_err("unknown").code(), Code::Unauthenticated);

    let mut c = biometrics(&with(addr, Some(&desk))).await.expect("connect");
    c.enroll(enroll_req("biden", vec![face_image(fixture("biden.jpg"))])).await.expect("enroll with the role");
    let e = c.export_templates(pb::ExportTemplatesRequest { subject_id: "biden".into() }).await.expect_err("admin");
    assert_eq!(e.code(), Code::PermissionDenied);
    use tonic_types::StatusExt;
    let info = e.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("required_role").map(String::as_str), Some("admin"));
    assert!(info.metadata.get("request_id").is_some_and(|r| !r.is_empty()), "{info:?}");

    // Revoked: refused within the reload period, no restart.
    let (ok, _, err) = cotejo(&["token", "revoke", "--tokens-file", &s(&callers), "--name", "desk-12"]);
    assert!(ok, "{err}");
    let start = Instant::now();
    loop {
        match c.identify(identify_req(vec![face_image(fixture("biden.jpg"))])).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(15), "the revoked token still works"),
            Err(e) => panic!("unexpected {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The auditor reads and verifies the log over gRPC; nothing else.
    let conn = with(addr, Some(&auditor)).connect().await.expect("connect");
    let mut audit = pb::audit_service_client::AuditServiceClient::new(conn.clone());
    let v = audit.verify_log(pb::VerifyLogRequest {}).await.expect("verify").into_inner();
    assert!(v.intact, "{v:?}");
    let read = audit.read_log(pb::ReadLogRequest { from_seq: 1, limit: 0 }).await.expect("read");
    assert!(read.metadata().get(cotejo::api::REQUEST_ID).is_some(), "a streamed answer carries its request id too");
    let mut stream = read.into_inner();
    let mut entries = Vec::new();
    while let Some(e) = tokio_stream::StreamExt::next(&mut stream).await {
        entries.push(e.expect("entry").entry.expect("entry"));
    }
    assert!(entries.iter().any(|e| e.method == "Enroll" && e.caller == "desk-12" && e.subject_ids == ["biden"]));
    assert!(entries.iter().any(|e| e.method == "Stats" && e.outcome.starts_with("Unauthenticated")));
    assert!(entries.iter().any(|e| e.method == "Identify" && e.caller.is_empty() && e.outcome.contains("revoked")));
    assert!(
        entries
            .iter()
            .any(|e| e.method == "ExportTemplates" && e.caller == "desk-12" && e.outcome.contains("MISSING_ROLE"))
    );
    let e = BiometricsServiceClient::new(conn).stats(pb::StatsRequest {}).await.expect_err("auditor is no admin");
    assert_eq!(e.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_plaintext_listener_is_refused_unless_insecure() {
    let data = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let err = cotejo::server::serve(config(data.path(), &[]), listener, async {}).await.expect_err("refused");
    let text = format!("{err:#}");
    assert!(text.contains("without TLS") && text.contains("insecure"), "{text}");

    // With insecure = true it starts (and warns).
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(cotejo::server::serve(
        config(data.path(), &[("COTEJO__SERVER__INSECURE", "true")]),
        listener,
        async {
            let _ = rx.await;
        },
    ));
    crate::common::wait_serving(&format!("http://127.0.0.1:{port}"), Duration::from_secs(120)).await;
    let _ = tx.send(());
    handle.await.expect("join").expect("served");
}

/// Polls the audit log until `done` holds (entries are written as calls end).
pub(crate) async fn wait_for(data: &Path, done: impl Fn(&[AuditEntry]) -> bool) -> Vec<AuditEntry> {
    let start = Instant::now();
    loop {
        let log = audit_log(data);
        if done(&log) {
            return log;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "audit log never got there: {log:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn s(p: &Path) -> String {
    p.display().to_string()
}
