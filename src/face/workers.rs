//! Face inference off the async runtime: worker threads, each owning its
//! sessions, fed through a bounded channel. A job carries the caller's span
//! and a oneshot for the reply; a full queue is refused at once rather than
//! letting latency grow without bound.

use std::thread;

use crossbeam_channel::{Sender, TrySendError, bounded};
use tokio::sync::oneshot;
use tracing::Span;

use super::{FaceError, FaceExtraction, FacePipeline, FaceSettings, MultipleFaces};
use crate::inference::{Manifest, ModelError};

struct Job {
    bytes: Vec<u8>,
    multiple: MultipleFaces,
    span: Span,
    reply: oneshot::Sender<Result<FaceExtraction, FaceError>>,
}

/// Handle to the face worker threads; dropping it stops them.
#[derive(Debug, Clone)]
pub struct FaceWorkers {
    tx: Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("bytes", &self.bytes.len()).finish_non_exhaustive()
    }
}

impl FaceWorkers {
    /// Starts `workers` threads and waits until each has loaded its models.
    pub fn start(
        manifest: &Manifest,
        settings: FaceSettings,
        workers: usize,
        queue: usize,
    ) -> Result<Self, ModelError> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        for i in 0..workers.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let rx = rx.clone();
            let manifest = manifest.clone();
            thread::Builder::new()
                .name(format!("face-worker-{i}"))
                .spawn(move || {
                    let mut pipeline = match FacePipeline::load(&manifest, settings) {
                        Ok(p) => {
                            let _ = ready_tx.send(Ok(()));
                            p
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Ends when every sender (every FaceWorkers clone) is gone.
                    for job in rx.iter() {
                        let _enter = job.span.enter();
                        if job.reply.is_closed() {
                            continue; // the caller gave up; skip the work
                        }
                        // A panic in a decoder or the models must cost one
                        // request, not the worker.
                        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            pipeline.extract(&job.bytes, job.multiple)
                        }))
                        .unwrap_or_else(|_| {
                            Err(FaceError::Inference("the face pipeline panicked on this image".into()))
                        });
                        let _ = job.reply.send(result);
                    }
                })
                .map_err(|e| ModelError::Runtime(format!("cannot start a worker thread: {e}")))?;
            ready_rx.recv().map_err(|_| ModelError::Runtime("face worker died while loading".into()))??;
        }
        Ok(Self { tx })
    }

    /// Runs the face pipeline on an encoded image.
    pub async fn extract(&self, bytes: Vec<u8>, multiple: MultipleFaces) -> Result<FaceExtraction, FaceError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { bytes, multiple, span: Span::current(), reply };
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => FaceError::Overloaded("queue full, retry later".into()),
            TrySendError::Disconnected(_) => FaceError::Unavailable("workers stopped".into()),
        })?;
        rx.await.map_err(|_| FaceError::Unavailable("worker dropped the request".into()))?
    }
}
