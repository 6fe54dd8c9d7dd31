//! Model inference off the async runtime: worker threads, each owning its
//! face and finger sessions, fed through one bounded channel. A job carries
//! the caller's span and a oneshot for the reply; a full queue is refused at
//! once rather than letting latency grow without bound.

use std::thread;

use crossbeam_channel::{Sender, TrySendError, bounded};
use tokio::sync::oneshot;
use tracing::Span;

use crate::{
    face::{FaceError, FaceExtraction, FacePipeline, FaceSettings, MultipleFaces},
    finger::{FingerError, FingerExtraction, FingerPipeline, FingerSettings},
    inference::{Manifest, ModelError},
};

enum Task {
    Face { multiple: MultipleFaces, reply: oneshot::Sender<Result<FaceExtraction, FaceError>> },
    Finger { ppi: u32, position: u8, reply: oneshot::Sender<Result<FingerExtraction, FingerError>> },
}

struct Job {
    bytes: Vec<u8>,
    task: Task,
    span: Span,
}

/// Handle to the worker threads; dropping every clone stops them.
#[derive(Debug, Clone)]
pub struct Workers {
    tx: Sender<Job>,
    fingers: bool,
    /// Worker threads running (a thread that ends, by any path, counts down).
    alive: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts a worker thread down when it ends, however it ends.
struct Alive(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("bytes", &self.bytes.len()).finish_non_exhaustive()
    }
}

/// One worker's sessions.
struct Pipelines {
    face: FacePipeline,
    finger: Option<FingerPipeline>,
}

impl Pipelines {
    fn run(&mut self, job: Job) {
        let Job { bytes, task, span } = job;
        let _enter = span.enter();
        // A panic in a decoder or the models must cost one request, not the worker.
        let guarded = |f: &mut dyn FnMut()| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_ok();
        match task {
            Task::Face { multiple, reply } => {
                if reply.is_closed() {
                    return; // the caller gave up; skip the work
                }
                let mut out = None;
                if !guarded(&mut || out = Some(self.face.extract(&bytes, multiple))) {
                    out = Some(Err(FaceError::Inference("the face pipeline panicked on this image".into())));
                }
                let _ = reply.send(out.unwrap_or_else(|| Err(FaceError::Inference("no result".into()))));
            }
            Task::Finger { ppi, position, reply } => {
                if reply.is_closed() {
                    return;
                }
                let Some(finger) = self.finger.as_mut() else {
                    let _ = reply.send(Err(FingerError::Unavailable("no finger extractor is installed".into())));
                    return;
                };
                let mut out = None;
                if !guarded(&mut || out = Some(finger.extract(&bytes, ppi, position))) {
                    out = Some(Err(FingerError::Inference("the finger pipeline panicked on this image".into())));
                }
                let _ = reply.send(out.unwrap_or_else(|| Err(FingerError::Inference("no result".into()))));
            }
        }
    }
}

impl Workers {
    /// Starts `workers` threads and waits until each has loaded its models.
    pub fn start(
        manifest: &Manifest,
        face: FaceSettings,
        finger: FingerSettings,
        workers: usize,
        queue: usize,
    ) -> Result<Self, ModelError> {
        let (tx, rx) = bounded::<Job>(queue.max(1));
        let alive = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for i in 0..workers.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let rx = rx.clone();
            let manifest = manifest.clone();
            alive.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let running = Alive(alive.clone());
            thread::Builder::new()
                .name(format!("model-worker-{i}"))
                .spawn(move || {
                    let _running = running;
                    let load = || -> Result<Pipelines, ModelError> {
                        Ok(Pipelines {
                            face: FacePipeline::load(&manifest, face)?,
                            finger: FingerPipeline::load(&manifest, finger)?,
                        })
                    };
                    let mut pipelines = match load() {
                        Ok(p) => {
                            let _ = ready_tx.send(Ok(()));
                            p
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    // Ends when every sender (every Workers clone) is gone.
                    for job in rx.iter() {
                        pipelines.run(job);
                    }
                })
                .map_err(|e| ModelError::Runtime(format!("cannot start a worker thread: {e}")))?;
            ready_rx.recv().map_err(|_| ModelError::Runtime("model worker died while loading".into()))??;
        }
        Ok(Self { tx, fingers: manifest.finger_extractor.is_some(), alive })
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Worker threads running.
    pub fn alive(&self) -> usize {
        self.alive.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether finger images can be processed.
    pub fn fingers(&self) -> bool {
        self.fingers
    }

    /// Runs the face pipeline on an encoded image.
    pub async fn face(&self, bytes: Vec<u8>, multiple: MultipleFaces) -> Result<FaceExtraction, FaceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job { bytes, task: Task::Face { multiple, reply }, span: Span::current() }).map_err(
            |e| match e {
                Refused::Full => FaceError::Overloaded("queue full, retry later".into()),
                Refused::Stopped => FaceError::Unavailable("workers stopped".into()),
            },
        )?;
        rx.await.map_err(|_| FaceError::Unavailable("worker dropped the request".into()))?
    }

    /// Runs the finger pipeline on an encoded image at `ppi` (0: 500).
    pub async fn finger(&self, bytes: Vec<u8>, ppi: u32, position: u8) -> Result<FingerExtraction, FingerError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Job { bytes, task: Task::Finger { ppi, position, reply }, span: Span::current() }).map_err(
            |e| match e {
                Refused::Full => FingerError::Overloaded("queue full, retry later".into()),
                Refused::Stopped => FingerError::Unavailable("workers stopped".into()),
            },
        )?;
        rx.await.map_err(|_| FingerError::Unavailable("worker dropped the request".into()))?
    }

    fn submit(&self, job: Job) -> Result<(), Refused> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Full,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

enum Refused {
    Full,
    Stopped,
}
