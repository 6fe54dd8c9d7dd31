//! Prometheus metrics, served as text on their own listener
//! (`[metrics] listen`): calls per RPC by status code, call latency per
//! RPC, and the gallery's size, read from the store at each scrape; and
//! what the engine observes as it works ([`observed`]): pipeline stage
//! times, admission (waits, admitted and refused calls) and store commits.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModalityLabels {
    modality: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IndexLabels {
    index: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

/// What the engine reports at each scrape besides the gallery's size.
#[derive(Debug, Clone, Default)]
pub struct EngineGauges {
    /// Requests waiting for an inference worker, and the workers running.
    pub inference_queue: u64,
    pub inference_workers: u64,
    /// Free bytes on the data directory's file system.
    pub free_bytes: u64,
    /// Seconds since each snapshot file was written ("face", "finger"), when there is one.
    pub snapshot_age: Vec<(&'static str, f64)>,
    /// Running or queued jobs: id, blocks done, blocks in all.
    pub jobs: Vec<(String, u64, u64)>,
}

type Latency = Family<MethodLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    pool: &'static str,
    reason: &'static str,
}

fn stage_buckets() -> Histogram {
    // 0.1 ms to about 3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// What the engine observes as it works, recorded where it happens (the
/// workers, the searches, the store) and rendered by every [`Metrics`].
pub struct Observed {
    stages: Family<StageLabels, Histogram, fn() -> Histogram>,
    queue_wait: Family<PoolLabels, Histogram, fn() -> Histogram>,
    admitted: Family<PoolLabels, Counter>,
    refused: Family<RefusedLabels, Counter>,
    commit: Histogram,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observed")
    }
}

/// The process's observations.
pub fn observed() -> &'static Observed {
    static OBSERVED: std::sync::LazyLock<Observed> = std::sync::LazyLock::new(|| Observed {
        stages: Family::new_with_constructor(stage_buckets),
        queue_wait: Family::new_with_constructor(stage_buckets),
        admitted: Family::default(),
        refused: Family::default(),
        commit: stage_buckets(),
    });
    &OBSERVED
}

impl Observed {
    /// One pass of a pipeline stage: decode, detect, align, embed,
    /// minutiae, search or rescore.
    pub fn stage(&self, stage: &'static str, took: std::time::Duration) {
        self.stages.get_or_create(&StageLabels { stage }).observe(took.as_secs_f64());
    }

    /// A call admitted to `pool` (inference, search) after waiting `waited`.
    pub fn admitted(&self, pool: &'static str, waited: std::time::Duration) {
        self.admitted.get_or_create(&PoolLabels { pool }).inc();
        self.queue_wait.get_or_create(&PoolLabels { pool }).observe(waited.as_secs_f64());
    }

    /// A call refused by `pool`: `wait` (it could not start within the
    /// configured wait), `deadline` (nor before the caller's deadline), `queue` (full).
    pub fn refused(&self, pool: &'static str, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { pool, reason }).inc();
    }

    /// One store commit, from its start to durable.
    pub fn commit(&self, took: std::time::Duration) {
        self.commit.observe(took.as_secs_f64());
    }

    fn register(&self, registry: &mut Registry) {
        registry.register("stage_seconds", "Time per pipeline stage and pass", self.stages.clone());
        registry.register(
            "queue_wait_seconds",
            "Time an admitted call waited to start, per pool (inference, search)",
            self.queue_wait.clone(),
        );
        registry.register("admitted", "Calls admitted, per pool", self.admitted.clone());
        registry.register(
            "refused",
            "Calls refused, per pool and reason (wait, deadline, queue)",
            self.refused.clone(),
        );
        registry.register("store_commit_seconds", "Store write transactions, to durable", self.commit.clone());
    }
}

fn latency_buckets() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The service's metrics.
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    latency: Latency,
    subjects: Gauge,
    templates: Family<ModalityLabels, Gauge>,
    inference_queue: Gauge,
    inference_workers: Gauge,
    free_bytes: Gauge,
    snapshot_age: Family<IndexLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    job_done: Family<JobLabels, Gauge>,
    job_total: Family<JobLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric registered, at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cotejo");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register("rpc_calls", "Calls per RPC and status code (OK, or the gRPC code)", calls.clone());
        let latency: Latency = Family::new_with_constructor(latency_buckets);
        registry.register("rpc_seconds", "Call latency per RPC, refusals included", latency.clone());
        let subjects = Gauge::default();
        registry.register("subjects", "Enrolled subjects", subjects.clone());
        let templates = Family::<ModalityLabels, Gauge>::default();
        registry.register("templates", "Stored templates per modality", templates.clone());
        let inference_queue = Gauge::default();
        registry.register("inference_queue", "Requests waiting for an inference worker", inference_queue.clone());
        let inference_workers = Gauge::default();
        registry.register("inference_workers", "Inference worker threads running", inference_workers.clone());
        let free_bytes = Gauge::default();
        registry.register("data_free_bytes", "Free bytes on the data directory's file system", free_bytes.clone());
        let snapshot_age = Family::<IndexLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "snapshot_age_seconds",
            "Seconds since each index snapshot was written",
            snapshot_age.clone(),
        );
        let job_done = Family::<JobLabels, Gauge>::default();
        registry.register("job_blocks_done", "Blocks finished, per running or queued job", job_done.clone());
        let job_total = Family::<JobLabels, Gauge>::default();
        registry.register("job_blocks_total", "Blocks in all, per running or queued job", job_total.clone());
        observed().register(&mut registry);
        Self {
            registry,
            calls,
            latency,
            subjects,
            templates,
            inference_queue,
            inference_workers,
            free_bytes,
            snapshot_age,
            job_done,
            job_total,
        }
    }

    /// The engine's state at this scrape; jobs no longer running drop out.
    pub fn set_engine(&self, g: &EngineGauges) {
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.inference_queue.set(int(g.inference_queue));
        self.inference_workers.set(int(g.inference_workers));
        self.free_bytes.set(int(g.free_bytes));
        for (index, age) in &g.snapshot_age {
            self.snapshot_age.get_or_create(&IndexLabels { index: (*index).to_owned() }).set(*age);
        }
        self.job_done.clear();
        self.job_total.clear();
        for (job, done, total) in &g.jobs {
            self.job_done.get_or_create(&JobLabels { job: job.clone() }).set(int(*done));
            self.job_total.get_or_create(&JobLabels { job: job.clone() }).set(int(*total));
        }
    }

    /// One finished call: its RPC, outcome (`OK` or the code's name) and duration.
    pub fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.calls.get_or_create(&CallLabels { method: method.to_owned(), code: code.to_owned() }).inc();
        self.latency.get_or_create(&MethodLabels { method: method.to_owned() }).observe(seconds);
    }

    /// The gallery's size: subjects and templates per modality.
    pub fn set_gallery(&self, subjects: u64, templates: &[(&str, u64)]) {
        self.subjects.set(i64::try_from(subjects).unwrap_or(i64::MAX));
        for (modality, n) in templates {
            let g = self.templates.get_or_create(&ModalityLabels { modality: (*modality).to_owned() });
            g.set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_latency_and_gallery_are_rendered() {
        let m = Metrics::new();
        m.observe("Identify", "OK", 0.12);
        m.observe("Identify", "OK", 0.2);
        m.observe("Delete", "PERMISSION_DENIED", 0.001);
        m.set_gallery(7, &[("face", 7), ("finger", 3)]);
        let text = m.render();
        assert!(text.contains(r#"cotejo_rpc_calls_total{method="Identify",code="OK"} 2"#), "{text}");
        assert!(text.contains(r#"cotejo_rpc_calls_total{method="Delete",code="PERMISSION_DENIED"} 1"#), "{text}");
        assert!(text.contains(r#"cotejo_rpc_seconds_count{method="Identify"} 2"#), "{text}");
        assert!(text.contains("cotejo_subjects 7"), "{text}");
        assert!(text.contains(r#"cotejo_templates{modality="finger"} 3"#), "{text}");
        let g = EngineGauges {
            inference_queue: 2,
            inference_workers: 1,
            free_bytes: 1 << 30,
            snapshot_age: vec![("face", 12.5)],
            jobs: vec![("4".into(), 3, 10)],
        };
        m.set_engine(&g);
        let text = m.render();
        assert!(text.contains("cotejo_inference_queue 2"), "{text}");
        assert!(text.contains(r#"cotejo_snapshot_age_seconds{index="face"} 12.5"#), "{text}");
        assert!(text.contains(r#"cotejo_job_blocks_done{job="4"} 3"#), "{text}");
        m.set_engine(&EngineGauges::default());
        assert!(!m.render().contains(r#"job="4""#), "a finished job drops out");
        observed().stage("embed", std::time::Duration::from_millis(30));
        observed().refused("inference", "deadline");
        let text = m.render();
        assert!(text.contains(r#"cotejo_stage_seconds_bucket{le="0.0512",stage="embed"}"#), "{text}");
        assert!(text.contains(r#"cotejo_refused_total{pool="inference",reason="deadline"}"#), "{text}");
        assert!(text.contains("cotejo_store_commit_seconds_count"), "{text}");
    }
}
