//! Model inference off the async runtime: worker threads, each owning its
//! face and finger sessions, fed through one bounded channel. A job carries
//! the caller's span and a oneshot for the reply; a full queue is refused at
//! once rather than letting latency grow without bound.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use crossbeam_channel::{Sender, TrySendError, bounded};
use tokio::sync::oneshot;
use tracing::Span;

use crate::{
    face::{FaceError, FaceExtraction, FacePipeline, FaceSettings, MultipleFaces},
    finger::{FingerError, FingerExtraction, FingerPipeline, FingerSettings},
    inference::{Manifest, ModelError},
    metrics::observed,
};

enum Task {
    Face { multiple: MultipleFaces, reply: oneshot::Sender<Result<FaceExtraction, FaceError>> },
    Finger { ppi: u32, position: u8, reply: oneshot::Sender<Result<FingerExtraction, FingerError>> },
}

struct Job {
    bytes: Vec<u8>,
    task: Task,
    span: Span,
    queued: std::time::Instant,
    /// Face (0) or finger (1), and the time it was expected to take.
    kind: usize,
    estimate_us: u64,
}

/// What the workers have in hand, in expected µs of work: the moving
/// average of one request's time per kind (face, finger; 0: none measured
/// yet), and the work queued and in service.
#[derive(Debug, Default)]
struct Load {
    service_us: [AtomicU64; 2],
    queued_us: AtomicU64,
    busy_us: AtomicU64,
    busy: AtomicUsize,
}

/// Handle to the worker threads; dropping every clone stops them.
#[derive(Debug, Clone)]
pub struct Workers {
    tx: Sender<Job>,
    fingers: bool,
    workers: usize,
    max_wait: std::time::Duration,
    load: Arc<Load>,
    /// Worker threads running (a thread that ends, by any path, counts down).
    alive: Arc<AtomicUsize>,
}

/// How requests are admitted to the workers' queue.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Most requests waiting.
    pub queue: usize,
    /// Longest expected wait admitted (zero: no limit but the queue).
    pub max_wait: std::time::Duration,
}

/// The expected wait of a request behind `queued_us` of queued work, each
/// worker taking its share; the rest of the requests in service is not
/// counted (at most one request per worker).
fn expected_wait(queued_us: u64, workers: usize) -> Duration {
    Duration::from_micros(queued_us / workers.max(1) as u64)
}

/// When a request admitted now would be done, at the latest expected: at
/// once on an idle worker, else after the work queued and in service (a
/// request in service counted whole) shared by the workers; then its own.
fn expected_done(queued: usize, busy: usize, queued_us: u64, busy_us: u64, own_us: u64, workers: usize) -> Duration {
    let start = if queued + busy < workers.max(1) { 0 } else { (queued_us + busy_us) / workers.max(1) as u64 };
    Duration::from_micros(start + own_us)
}

/// Folds one request's time into the moving average (weight 1/8).
fn fold(average_us: &AtomicU64, took: Duration) {
    let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let _ = average_us
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(if a == 0 { took } else { a - a / 8 + took / 8 }));
}

impl Load {
    /// A request of `kind` leaves the queue for a worker.
    fn start(&self, job: &Job) {
        self.queued_us.fetch_sub(job.estimate_us, Ordering::SeqCst);
        self.busy_us.fetch_add(job.estimate_us, Ordering::SeqCst);
        self.busy.fetch_add(1, Ordering::SeqCst);
    }

    /// It is done after `took`.
    fn finish(&self, kind: usize, estimate_us: u64, took: Duration) {
        self.busy_us.fetch_sub(estimate_us, Ordering::SeqCst);
        self.busy.fetch_sub(1, Ordering::SeqCst);
        fold(&self.service_us[kind], took);
    }
}

/// Counts a worker thread down when it ends, however it ends.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
        let Job { bytes, task, span, .. } = job;
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
        admission: Admission,
    ) -> Result<Self, ModelError> {
        let (tx, rx) = bounded::<Job>(admission.queue.max(1));
        let load = Arc::new(Load::default());
        let alive = Arc::new(AtomicUsize::new(0));
        for i in 0..workers.max(1) {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let rx = rx.clone();
            let manifest = manifest.clone();
            alive.fetch_add(1, Ordering::SeqCst);
            let running = Alive(alive.clone());
            let work = load.clone();
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
                        let started = std::time::Instant::now();
                        work.start(&job);
                        observed().admitted("inference", started.duration_since(job.queued));
                        let (kind, estimate_us) = (job.kind, job.estimate_us);
                        pipelines.run(job);
                        work.finish(kind, estimate_us, started.elapsed());
                    }
                })
                .map_err(|e| ModelError::Runtime(format!("cannot start a worker thread: {e}")))?;
            ready_rx.recv().map_err(|_| ModelError::Runtime("model worker died while loading".into()))??;
        }
        Ok(Self {
            tx,
            fingers: manifest.finger_extractor.is_some(),
            workers: workers.max(1),
            max_wait: admission.max_wait,
            load,
            alive,
        })
    }

    /// Requests waiting for a worker.
    pub fn queued(&self) -> usize {
        self.tx.len()
    }

    /// Worker threads running.
    pub fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    /// Whether finger images can be processed.
    pub fn fingers(&self) -> bool {
        self.fingers
    }

    /// Runs the face pipeline on an encoded image.
    pub async fn face(&self, bytes: Vec<u8>, multiple: MultipleFaces) -> Result<FaceExtraction, FaceError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Task::Face { multiple, reply }, bytes).map_err(|e| match e {
            Refused::Stopped => FaceError::Unavailable("workers stopped".into()),
            busy => FaceError::Overloaded(busy.to_string()),
        })?;
        rx.await.map_err(|_| FaceError::Unavailable("worker dropped the request".into()))?
    }

    /// Runs the finger pipeline on an encoded image at `ppi` (0: 500).
    pub async fn finger(&self, bytes: Vec<u8>, ppi: u32, position: u8) -> Result<FingerExtraction, FingerError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Task::Finger { ppi, position, reply }, bytes).map_err(|e| match e {
            Refused::Stopped => FingerError::Unavailable("workers stopped".into()),
            busy => FingerError::Overloaded(busy.to_string()),
        })?;
        rx.await.map_err(|_| FingerError::Unavailable("worker dropped the request".into()))?
    }

    /// Queues a request, or refuses it: when its expected wait is past
    /// `inference.max_queue_wait_ms`, when it would not be done before the
    /// caller's deadline, or when the queue is full.
    fn submit(&self, task: Task, bytes: Vec<u8>) -> Result<(), Refused> {
        let kind = usize::from(matches!(task, Task::Finger { .. }));
        let l = &self.load;
        let own_us = l.service_us[kind].load(Ordering::Relaxed);
        let queued_us = l.queued_us.load(Ordering::SeqCst);
        let wait = expected_wait(queued_us, self.workers);
        let refused = if !self.max_wait.is_zero() && wait > self.max_wait {
            Some(Refused::Slow(wait))
        } else {
            // Against the deadline, the latest expected end, its own service
            // included: an answer after the deadline is no answer.
            let (busy, busy_us) = (l.busy.load(Ordering::SeqCst), l.busy_us.load(Ordering::SeqCst));
            let done = expected_done(self.tx.len(), busy, queued_us, busy_us, own_us, self.workers);
            let left = crate::admission::deadline().map(|d| d.saturating_duration_since(std::time::Instant::now()));
            left.filter(|left| done > *left).map(|left| Refused::Deadline { done, left })
        };
        if let Some(r) = refused {
            observed().refused("inference", r.reason());
            return Err(r);
        }
        let job =
            Job { bytes, task, span: Span::current(), queued: std::time::Instant::now(), kind, estimate_us: own_us };
        // Counted before it can be taken, so a worker never subtracts first.
        l.queued_us.fetch_add(own_us, Ordering::SeqCst);
        self.tx.try_send(job).map_err(|e| {
            l.queued_us.fetch_sub(own_us, Ordering::SeqCst);
            match e {
                TrySendError::Full(_) => {
                    observed().refused("inference", "queue");
                    Refused::Full
                }
                TrySendError::Disconnected(_) => Refused::Stopped,
            }
        })
    }
}

enum Refused {
    Full,
    /// The expected wait is past `inference.max_queue_wait_ms`.
    Slow(std::time::Duration),
    /// The expected wait and service would end past the caller's deadline.
    Deadline {
        done: std::time::Duration,
        left: std::time::Duration,
    },
    Stopped,
}

impl Refused {
    fn reason(&self) -> &'static str {
        match self {
            Self::Full => "queue",
            Self::Slow(_) => "wait",
            Self::Deadline { .. } => "deadline",
            Self::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full => write!(f, "queue full, retry later"),
            Self::Slow(wait) => write!(
                f,
                "expected wait for a worker {} ms is past inference.max_queue_wait_ms; retry later",
                wait.as_millis()
            ),
            Self::Deadline { done, left } => write!(
                f,
                "expected to finish in {} ms, past the call's deadline in {} ms; retry later or allow more time",
                done.as_millis(),
                left.as_millis()
            ),
            Self::Stopped => write!(f, "workers stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::Duration,
    };

    use super::{expected_done, expected_wait, fold};

    #[test]
    fn the_expected_wait_follows_the_queue_and_the_recent_service_time() {
        let average = AtomicU64::new(0);
        fold(&average, Duration::from_millis(120));
        assert_eq!(average.load(Ordering::Relaxed), 120_000, "the first sample sets it");
        for _ in 0..40 {
            fold(&average, Duration::from_millis(40));
        }
        let us = average.load(Ordering::Relaxed);
        assert!((40_000..41_000).contains(&us), "{us}");
        // 64 faces ahead at 120 ms on one worker: 7.7 s; on two, half.
        assert_eq!(expected_wait(64 * 120_000, 1), Duration::from_millis(7_680));
        assert_eq!(expected_wait(64 * 120_000, 2), Duration::from_millis(3_840));
        // Two fingers at 400 ms and a face at 100 ms ahead: their own times, not one average.
        assert_eq!(expected_wait(2 * 400_000 + 100_000, 1), Duration::from_millis(900));
        assert_eq!(expected_wait(0, 1), Duration::ZERO, "nothing queued (or measured yet): admitted");
        // Against a deadline: an idle worker starts it at once; a busy one
        // counts its request whole; two workers share what is ahead.
        let ms = |n: u64| n * 1000;
        assert_eq!(expected_done(0, 0, 0, 0, ms(100), 1), Duration::from_millis(100));
        assert_eq!(expected_done(0, 1, 0, ms(100), ms(100), 1), Duration::from_millis(200));
        assert_eq!(expected_done(2, 1, ms(200), ms(100), ms(100), 1), Duration::from_millis(400));
        assert_eq!(expected_done(0, 1, 0, ms(100), ms(100), 2), Duration::from_millis(100));
        assert_eq!(expected_done(1, 2, ms(400), ms(200), ms(100), 2), Duration::from_millis(400));
    }
}
