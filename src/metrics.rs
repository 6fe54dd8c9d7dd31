//! Prometheus metrics, served as text on their own listener
//! (`[metrics] listen`): calls per RPC by status code, call latency per
//! RPC, and the gallery's size, read from the store at each scrape.

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

type Latency = Family<MethodLabels, Histogram, fn() -> Histogram>;

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
        Self { registry, calls, latency, subjects, templates }
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
    }
}
