//! Running the service: health (and, when configured, reflection) beside the
//! API, TLS and caller authentication in front of it, start-up in the
//! background (health NOT_SERVING until models are loaded and the index
//! rebuilt), graceful shutdown.

mod metrics_http;
pub mod tls;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tracing::{error, info, warn};

use crate::{
    api::{AuditApi, BiometricsApi, EngineSlot, Gate, JobsApi, pb},
    auth::{Authenticator, Callers},
    config::Config,
    engine::Engine,
};
use tls::{ReloadingAcceptor, TlsFiles};

/// Refuses a listener other hosts can reach unless it speaks TLS and
/// identifies callers, or the configuration says `insecure = true`.
fn check_exposure(config: &Config, addr: std::net::SocketAddr, auth: &Authenticator) -> anyhow::Result<()> {
    let secured = config.server.tls() && auth.required();
    if addr.ip().is_loopback() || secured {
        return Ok(());
    }
    if config.server.insecure {
        warn!(
            %addr,
            tls = config.server.tls(),
            callers = auth.required(),
            "INSECURE: listening beyond loopback without TLS and caller authentication (server.insecure = true)"
        );
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} without TLS and caller authentication: anyone reaching the port could \
         enroll, delete or export templates in plain text. Set server.tls_cert and server.tls_key, and \
         auth.tokens_file (cotejo token add) or server.tls_client_ca (mutual TLS); or listen on 127.0.0.1; \
         or, knowingly, server.insecure = true"
    )
}

/// The TLS acceptor and authenticator of `config`.
fn security(config: &Config) -> anyhow::Result<(Option<Arc<ReloadingAcceptor>>, Arc<Authenticator>)> {
    let s = &config.server;
    let tls = if s.tls() {
        let files = TlsFiles {
            cert: s.tls_cert.clone(),
            key: s.tls_key.clone(),
            client_ca: s.mutual_tls().then(|| s.tls_client_ca.clone()),
        };
        Some(Arc::new(ReloadingAcceptor::new(files).context("TLS")?))
    } else {
        None
    };
    let callers = if config.auth.tokens_file.as_os_str().is_empty() {
        None
    } else {
        Some(Callers::open(&config.auth.tokens_file).context("auth.tokens_file")?)
    };
    Ok((tls, Arc::new(Authenticator::new(callers, s.mutual_tls()))))
}

/// Tasks aborted when `serve` returns, however it returns.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Re-reads the TLS files, the callers file and the key directory every
/// `every` and on SIGHUP.
fn spawn_reloader(
    tls: Option<Arc<ReloadingAcceptor>>,
    auth: Arc<Authenticator>,
    slot: Arc<EngineSlot>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(every);
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            if forced {
                info!("SIGHUP: reading the TLS and callers files again");
            }
            if let Some(t) = &tls {
                t.reload(forced);
            }
            if let Some(engine) = slot.get() {
                // Both take the store's lock: off the async threads.
                let reloaded = tokio::task::spawn_blocking(move || {
                    let before = engine.active_key();
                    engine.reload_keys().map(|now| (before, now))
                });
                match reloaded.await {
                    Ok(Ok((before, now))) if Some(now) != before => {
                        info!(active = %now, "key directory read again: a new active key")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(error = %e, "key directory unusable; the current keys stay in force"),
                    Err(e) => warn!(error = %e, "key reload task failed"),
                }
            }
            if let Some(c) = auth.callers() {
                match c.reload_if_changed() {
                    Ok(true) => info!(file = %c.path().display(), "callers file read again"),
                    Ok(false) => {}
                    Err(e) => warn!(error = %e, "callers file unusable; the previous callers stay in force"),
                }
            }
        }
    })
}

/// Signs the audit chain's head every `every` (the engine skips an unmoved head).
fn spawn_checkpointer(slot: Arc<EngineSlot>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let Some(engine) = slot.get() else { continue };
            match tokio::task::spawn_blocking(move || engine.write_checkpoint()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => error!(error = %e, "audit checkpoint not written"),
                Err(e) => error!(error = %e, "audit checkpoint task failed"),
            }
        }
    })
}

/// Checks every `every` that the engine can serve (inference workers, store
/// commits, free disk) and turns health NOT_SERVING, with the reason
/// logged, while it cannot; SERVING again once it can. Leaves health alone
/// before start-up ends, while shutting down, and when the audit log failed
/// its start-up check (audit role only).
fn spawn_health_monitor(
    slot: Arc<EngineSlot>,
    health: tonic_health::server::HealthReporter,
    stopping: Arc<AtomicBool>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut problem: Option<String> = None;
        loop {
            tick.tick().await;
            let Some(engine) = slot.get() else { continue };
            if engine.audit_problem().is_some() {
                continue;
            }
            let now = match tokio::task::spawn_blocking(move || engine.health_problem()).await {
                Ok(p) => p,
                Err(e) => Some(format!("health check failed: {e}")),
            };
            if stopping.load(Ordering::SeqCst) {
                return;
            }
            match (&problem, &now) {
                (_, Some(why)) if problem.as_ref() != Some(why) => {
                    error!(reason = %why, "not serving");
                    set_health(&health, Health::NotServing).await;
                }
                (Some(_), None) => {
                    info!("serving again: the health check passes");
                    set_health(&health, Health::Serving).await;
                }
                _ => {}
            }
            problem = now;
        }
    })
}

/// Purges the subjects past their watchlists' retention once the engine is
/// ready, then every `retention.purge_every_secs`; never while the audit
/// log is not trusted. None without a retention.
fn spawn_retention_purge(config: &Config, slot: Arc<EngineSlot>) -> Option<tokio::task::JoinHandle<()>> {
    if config.retention.watchlists.is_empty() {
        return None;
    }
    let every = Duration::from_secs(config.retention.purge_every_secs.max(1));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            let engine = loop {
                match slot.get() {
                    Some(e) => break e,
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            tick.tick().await;
            if engine.audit_problem().is_some() {
                continue;
            }
            match engine.purge_expired().await {
                Ok(purged) if purged.is_empty() => {}
                Ok(purged) => info!(subjects = purged.len(), "retention purge: subjects past retention deleted"),
                Err(e) => error!(error = %e, "retention purge failed; retried at the next run"),
            }
        }
    }))
}

/// The metrics listener, when `[metrics] listen` is set.
async fn spawn_metrics(
    config: &Config,
    metrics: &Arc<crate::metrics::Metrics>,
    slot: &Arc<EngineSlot>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.metrics.listen.is_empty() {
        return Ok(None);
    }
    let at = tokio::net::TcpListener::bind(&config.metrics.listen)
        .await
        .with_context(|| format!("metrics.listen {}", config.metrics.listen))?;
    info!(addr = %at.local_addr()?, "metrics on GET /metrics");
    Ok(Some(tokio::spawn(metrics_http::serve(at, metrics.clone(), slot.clone()))))
}

/// The API's three services over `slot`, their calls passing `gate`, with
/// messages up to `max` bytes either way.
fn services(
    slot: &Arc<EngineSlot>,
    gate: &Gate,
    max: usize,
    router: Option<Arc<crate::cluster::Router>>,
) -> (
    pb::biometrics_service_server::BiometricsServiceServer<BiometricsApi>,
    pb::jobs_service_server::JobsServiceServer<JobsApi>,
    pb::audit_service_server::AuditServiceServer<AuditApi>,
) {
    let biometrics = pb::biometrics_service_server::BiometricsServiceServer::new(BiometricsApi::new(
        slot.clone(),
        gate.clone(),
        router,
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let jobs = pb::jobs_service_server::JobsServiceServer::new(JobsApi::new(slot.clone(), gate.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let audit = pb::audit_service_server::AuditServiceServer::new(AuditApi::new(slot.clone(), gate.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    (biometrics, jobs, audit)
}

/// Serves on `listener` until `shutdown` resolves, then drains in-flight
/// calls for up to the configured grace period.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, Health::NotServing).await;

    let reflection = reflection(&config)?;

    let addr = listener.local_addr()?;
    let (tls, auth) = security(&config)?;
    check_exposure(&config, addr, &auth)?;
    // Tasks that end with the server: they hold the engine (and with it the
    // data directory's lock) and the listening socket.
    let slot: Arc<EngineSlot> = Arc::new(EngineSlot::default());
    let reload = Duration::from_secs(config.server.reload_secs);
    let mut background = Background(vec![spawn_reloader(tls.clone(), auth.clone(), slot.clone(), reload)]);

    let engine_at_exit = slot.clone();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    if let Some(task) = spawn_metrics(&config, &metrics, &slot).await? {
        background.0.push(task);
    }
    let gate = Gate::new(auth, slot.clone(), metrics);
    let max = config.server.max_message_bytes;
    let shard: crate::shard::Shard = config.cluster.shard.parse().map_err(anyhow::Error::msg)?;
    if config.store.url.is_empty() && (!config.cluster.shards.is_empty() || shard != crate::shard::Shard::WHOLE) {
        // A node on its own SQLite store holds the whole gallery; a router
        // writing there would enroll where its shards never look.
        anyhow::bail!("cluster.shard and cluster.shards (serve --shard, --route) need store.url (PostgreSQL)");
    }
    let router = match config.cluster.shards.is_empty() {
        true => None,
        false => Some(
            crate::cluster::Router::new(
                &config.cluster.shards,
                Duration::from_millis(config.cluster.replica_timeout_ms),
            )
            .map_err(anyhow::Error::msg)?,
        ),
    };
    let (biometrics, jobs, audit) = services(&slot, &gate, max, router);
    background.0.push(spawn_checkpointer(slot.clone(), Duration::from_secs(config.audit.checkpoint_every_secs)));

    let stopping = Arc::new(AtomicBool::new(false));
    background.0.push(spawn_health_monitor(
        slot.clone(),
        health.clone(),
        stopping.clone(),
        Duration::from_secs(config.server.health_check_secs),
    ));
    background.0.extend(spawn_retention_purge(&config, slot.clone()));
    let (startup, mut failed_rx) = spawn_startup(config.clone(), slot, health.clone(), stopping.clone());

    info!(%addr, tls = tls.is_some(), mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()), "listening");
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown_health = health.clone();
    let signal = async move {
        shutdown.await;
        stopping.store(true, Ordering::SeqCst);
        info!("shutting down: draining in-flight calls");
        set_health(&shutdown_health, Health::NotServing).await;
        let _ = drained_tx.send(());
    };
    let (refused_tx, mut refused_rx) = tokio::sync::mpsc::unbounded_channel::<tls::HandshakeRefusal>();
    // Refused TLS handshakes are audited like refused calls.
    background.0.push(tokio::spawn(async move {
        while let Some(r) = refused_rx.recv().await {
            gate.record_handshake_refusal(r.addr, &r.error).await;
        }
    }));
    let (incoming, accepting) = tls::incoming(listener, tls, refused_tx);
    background.0.push(accepting);
    let server = Server::builder()
        .layer(tower::util::MapResponseLayer::new(move |r| crate::api::type_oversized_request(r, max)))
        .add_service(health_service)
        .add_optional_service(reflection)
        .add_service(biometrics)
        .add_service(jobs)
        .add_service(audit)
        .serve_with_incoming_shutdown(incoming, signal);
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
    for task in std::mem::take(&mut background.0) {
        task.abort();
        let _ = task.await;
    }
    close(&engine_at_exit).await;
    info!("stopped");
    Ok(())
}

/// gRPC reflection, when configured.
fn reflection(
    config: &Config,
) -> anyhow::Result<
    Option<tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>>,
> {
    if !config.server.reflection {
        return Ok(None);
    }
    Ok(Some(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?,
    ))
}

/// What health reports for the API's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// Every service.
    Serving,
    /// Only the audit service (the audit log failed its start-up check).
    AuditOnly,
    /// None (starting, stopping).
    NotServing,
}

async fn set_health(h: &tonic_health::server::HealthReporter, to: Health) {
    let all = if to == Health::Serving { ServingStatus::Serving } else { ServingStatus::NotServing };
    let audit = if to == Health::NotServing { ServingStatus::NotServing } else { ServingStatus::Serving };
    h.set_service_status("", all).await;
    h.set_service_status(
        <pb::biometrics_service_server::BiometricsServiceServer<BiometricsApi> as tonic::server::NamedService>::NAME,
        all,
    )
    .await;
    h.set_service_status(
        <pb::jobs_service_server::JobsServiceServer<JobsApi> as tonic::server::NamedService>::NAME,
        all,
    )
    .await;
    h.set_service_status(
        <pb::audit_service_server::AuditServiceServer<AuditApi> as tonic::server::NamedService>::NAME,
        audit,
    )
    .await;
}

/// Loads the models and rebuilds the index while the socket already
/// answers health checks (NOT_SERVING); then puts the engine in `slot` and
/// reports SERVING. A failed start-up sends its cause, so that `serve` ends
/// with it and the process exits non-zero instead of idling unready.
fn spawn_startup(
    config: Config,
    slot: Arc<EngineSlot>,
    health: tonic_health::server::HealthReporter,
    stopping: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Receiver<String>) {
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<String>();
    let task = tokio::spawn(async move {
        match tokio::task::spawn_blocking(move || Engine::start(&config)).await {
            Ok(Ok(engine)) => {
                let broken = engine.audit_problem().is_some();
                slot.set(Arc::new(engine));
                if stopping.load(Ordering::SeqCst) {
                    return; // shutting down: never turn SERVING again
                }
                if broken {
                    error!("not serving: the audit log failed its start-up check (only the audit role is answered)");
                    set_health(&health, Health::AuditOnly).await;
                    return;
                }
                set_health(&health, Health::Serving).await;
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
    (task, failed_rx)
}

/// Takes the engine back and writes what makes the next start fast and the
/// audit log anchored: the snapshots (face index, finger index) and a
/// checkpoint. A connection left open then holds no engine, so the store
/// closes (and the data directory is free) once the calls still running end.
async fn close(slot: &EngineSlot) {
    let Some(engine) = slot.take() else { return };
    let closing = tokio::task::spawn_blocking(move || {
        if let Err(e) = engine.save_snapshot() {
            warn!(error = %e, "snapshot at shutdown failed");
        }
        if let Err(e) = engine.write_checkpoint() {
            error!(error = %e, "audit checkpoint at shutdown not written");
        }
    });
    if let Err(e) = closing.await {
        warn!(error = %e, "shutdown task failed");
    }
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
