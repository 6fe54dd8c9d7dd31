//! Readiness and discovery: health stays NOT_SERVING while the models are
//! unavailable (calls are refused, not faked), and reflection lists the API.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::common::{TestServer, config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_without_models_fails_with_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path(), &[]);
    cfg.models.dir = dir.path().join("no-models-here");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cotejo::server::serve(cfg, listener, async {
        let _ = rx.await;
    }));
    // Until start-up ends the socket answers, NOT_SERVING, and calls are
    // refused as not ready; then serve ends with the cause.
    let ch = Channel::from_shared(url.clone()).expect("url").connect().await;
    if let Ok(ch) = ch
        && let Ok(status) = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await
    {
        assert_eq!(status.into_inner().status, ServingStatus::NotServing as i32);
    }
    let result = tokio::time::timeout(Duration::from_secs(30), server).await.expect("serve ended").expect("join");
    let err = result.expect_err("start-up without models must fail");
    assert!(format!("{err:#}").contains("manifest"), "{err:#}");
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services_only_when_configured() {
    let list = || ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let ch = Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connect");
    let off = ServerReflectionClient::new(ch).server_reflection_info(tokio_stream::iter(vec![list()])).await;
    assert_eq!(off.expect_err("reflection is off by default").code(), tonic::Code::Unimplemented);
    server.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[("COTEJO__SERVER__REFLECTION", "true")])).await;
    let ch = Channel::from_shared(server.url.clone()).expect("url").connect().await.expect("connect");
    let mut stream = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![list()]))
        .await
        .expect("reflection")
        .into_inner();
    let Some(Ok(resp)) = stream.next().await else { panic!("no reflection response") };
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected response")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"cotejo.v1.BiometricsService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    assert!(names.contains(&"cotejo.v1.AuditService".to_owned()), "{names:?}");
    server.stop().await;
}

/// GET `path` on `addr` over plain HTTP/1.1: (status line, body).
async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").expect("head");
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_code_and_the_gallery() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let addr = format!("127.0.0.1:{port}");
    let server = TestServer::start(config(dir.path(), &[("COTEJO__METRICS__LISTEN", &addr)])).await;
    let mut c = server.client.clone();
    c.enroll(crate::common::enroll_req("obama", vec![crate::common::face_image(crate::common::fixture("obama3.jpg"))]))
        .await
        .expect("enroll");
    c.get_subject(cotejo::api::pb::GetSubjectRequest { subject_id: "nobody".into() }).await.expect_err("unknown");
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains(r#"cotejo_rpc_calls_total{method="Enroll",code="OK"} 1"#), "{body}");
    assert!(body.contains(r#"cotejo_rpc_calls_total{method="GetSubject",code="NOT_FOUND"} 1"#), "{body}");
    assert!(body.contains(r#"cotejo_rpc_seconds_count{method="Enroll"} 1"#), "{body}");
    assert!(body.contains("cotejo_subjects 1"), "{body}");
    assert!(body.contains(r#"cotejo_templates{modality="face"} 1"#), "{body}");
    assert!(body.contains("cotejo_inference_workers 1"), "{body}");
    assert!(body.contains("cotejo_inference_queue 0"), "{body}");
    for observed in [
        r#"cotejo_stage_seconds_count{stage="decode"}"#,
        r#"cotejo_stage_seconds_count{stage="detect"}"#,
        r#"cotejo_stage_seconds_count{stage="embed"}"#,
        r#"cotejo_admitted_total{pool="inference"}"#,
        r#"cotejo_queue_wait_seconds_count{pool="inference"}"#,
        "cotejo_store_commit_seconds_count",
    ] {
        assert!(body.contains(observed), "{observed} in {body}");
    }
    let free = body.lines().find_map(|l| l.strip_prefix("cotejo_data_free_bytes ")).expect("free bytes");
    assert!(free.parse::<u64>().is_ok_and(|b| b > 0), "{body}");
    assert_eq!(http_get(&addr, "/").await.0, "HTTP/1.1 404 Not Found");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_cannot_finish_before_its_deadline_is_refused_at_once() {
    use crate::common::{face_image, fixture, identify_req, reason};
    let dir = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut c = server.client.clone();
    // One call measures the time a face takes a worker (about 0.1 s or more).
    let t = std::time::Instant::now();
    c.identify(identify_req(vec![face_image(fixture("obama3.jpg"))])).await.expect("identify");
    // A third of that cannot hold the face's service, yet leaves the refusal
    // (its audit entry included) time to arrive on a busy machine. Should
    // the machine be too busy even for that, the server's own timeout
    // answers CANCELLED; a few tries, and one must be the refusal.
    let hurry = (t.elapsed() / 3).max(Duration::from_millis(40));
    let mut refused = None;
    for _ in 0..3 {
        let mut hurried = tonic::Request::new(identify_req(vec![face_image(fixture("obama3.jpg"))]));
        hurried.set_timeout(hurry);
        let status = c.identify(hurried).await.expect_err("cannot finish in a third of its time");
        if status.code() != tonic::Code::Cancelled {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("refused rather than cancelled at least once");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert_eq!(reason(&refused), "OVERLOADED");
    assert!(refused.message().contains("deadline"), "{}", refused.message());
    use tonic_types::StatusExt;
    assert!(refused.get_details_retry_info().is_some(), "says when to retry");
    let mut patient = tonic::Request::new(identify_req(vec![face_image(fixture("obama3.jpg"))]));
    patient.set_timeout(Duration::from_secs(30));
    c.identify(patient).await.expect("time enough: admitted");
    server.stop().await;
}
