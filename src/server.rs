//! Running the service: health and reflection beside the API, start-up in
//! the background (health NOT_SERVING until models are loaded and the index
//! rebuilt), graceful shutdown.

use std::{
    future::Future,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{error, info};

use crate::{
    api::{BiometricsApi, JobsApi, pb},
    config::Config,
    engine::Engine,
};

/// Serves on `listener` until `shutdown` resolves, then drains in-flight
/// calls for up to the configured grace period.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::NotServing).await;
    health.set_not_serving::<pb::biometrics_server::BiometricsServer<BiometricsApi>>().await;

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let slot: Arc<OnceLock<Arc<Engine>>> = Arc::new(OnceLock::new());
    let engine_at_exit = slot.clone();
    let api = BiometricsApi::new(slot.clone());
    let max = config.server.max_message_bytes;
    let biometrics =
        pb::biometrics_server::BiometricsServer::new(api).max_decoding_message_size(max).max_encoding_message_size(max);
    let jobs = pb::jobs_server::JobsServer::new(JobsApi::new(slot.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    // Models load and the index is rebuilt while the socket already answers
    // health checks (NOT_SERVING). A failed start-up ends `serve` with the
    // cause, so the process exits non-zero instead of idling unready.
    let stopping = Arc::new(AtomicBool::new(false));
    let (failed_tx, mut failed_rx) = tokio::sync::oneshot::channel::<String>();
    let startup_config = config.clone();
    let startup_health = health.clone();
    let startup_stopping = stopping.clone();
    let startup = tokio::spawn(async move {
        let started = tokio::task::spawn_blocking(move || Engine::start(&startup_config)).await;
        match started {
            Ok(Ok(engine)) => {
                let _ = slot.set(Arc::new(engine));
                if startup_stopping.load(Ordering::SeqCst) {
                    return; // shutting down: never turn SERVING again
                }
                startup_health.set_service_status("", ServingStatus::Serving).await;
                startup_health.set_serving::<pb::biometrics_server::BiometricsServer<BiometricsApi>>().await;
                startup_health.set_serving::<pb::jobs_server::JobsServer<JobsApi>>().await;
                info!("ready");
            }
            Ok(Err(e)) => {
                error!(error = %e, "start-up failed");
                let _ = failed_tx.send(e.to_string());
            }
            Err(e) => {
                let _ = failed_tx.send(format!("start-up task failed: {e}"));
            }
        }
    });

    let addr = listener.local_addr()?;
    info!(%addr, "listening");
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown_health = health.clone();
    let signal = async move {
        shutdown.await;
        stopping.store(true, Ordering::SeqCst);
        info!("shutting down: draining in-flight calls");
        shutdown_health.set_service_status("", ServingStatus::NotServing).await;
        shutdown_health.set_not_serving::<pb::biometrics_server::BiometricsServer<BiometricsApi>>().await;
        shutdown_health.set_not_serving::<pb::jobs_server::JobsServer<JobsApi>>().await;
        let _ = drained_tx.send(());
    };
    let server = Server::builder()
        .layer(tower::util::MapResponseLayer::new(move |r| crate::api::type_oversized_request(r, max)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(biometrics)
        .add_service(jobs)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        Ok(cause) = &mut failed_rx => {
            anyhow::bail!("start-up failed: {cause}");
        }
        () = async {
            let _ = drained_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("grace period over; abandoning calls still running");
        }
    }
    startup.abort();
    // The snapshots (face index, finger gallery) make the next start-up fast.
    if let Some(engine) = engine_at_exit.get().cloned() {
        match tokio::task::spawn_blocking(move || engine.save_snapshot()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "snapshot at shutdown failed"),
            Err(e) => tracing::warn!(error = %e, "snapshot task failed"),
        }
    }
    info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
