//! The metrics listener: plain HTTP/1.1, `GET /metrics` answers the
//! Prometheus text exposition, anything else 404. The gallery's size is
//! read from the store at each scrape.

use std::sync::Arc;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tracing::debug;

use crate::{api::EngineSlot, biometric::Modality, metrics::Metrics};

/// Longest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Answers scrapes on `listener` until the task is aborted.
pub(super) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, slot: Arc<EngineSlot>) {
    loop {
        let Ok((stream, addr)) = listener.accept().await else { continue };
        let (metrics, slot) = (metrics.clone(), slot.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &metrics, &slot).await {
                debug!(%addr, error = %e, "metrics request failed");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, metrics: &Metrics, slot: &EngineSlot) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(buf.get(..n).unwrap_or_default());
    }
    let line = String::from_utf8_lossy(&head);
    let wanted = line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?");
    let (status, body) = if wanted {
        if let Some(engine) = slot.get()
            && let Ok(stats) = engine.stats().await
        {
            let count = |m: Modality| stats.templates.iter().filter(|t| t.0 == m).map(|t| t.2).sum::<u64>();
            metrics
                .set_gallery(stats.subjects, &[("face", count(Modality::Face)), ("finger", count(Modality::Finger))]);
            if let Ok(gauges) = tokio::task::spawn_blocking(move || engine.gauges()).await {
                metrics.set_engine(&gauges);
            }
        }
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "only GET /metrics is served here\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
