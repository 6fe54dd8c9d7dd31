//! A routing node: Identify fans out to one replica of every shard in
//! parallel, the candidates are merged by their fused calibrated score and
//! the decision is taken on the merged list with the threshold the shards
//! applied (each shard node counts every subject, so its threshold is the
//! one for N = the whole gallery). A replica that fails is skipped for a
//! while and the next one asked; a shard none of whose replicas answers is
//! named in an UNAVAILABLE error, or listed in a partial answer that
//! withholds the decision when the request allows one. Verify goes to a
//! replica of the subject's shard, with the same failover.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Code, Status, transport::Channel};
use tracing::warn;

use crate::{api::pb, shard::Shard};

/// How long a failed replica is passed over.
const SKIP_FAILED: Duration = Duration::from_secs(2);

/// The shards a routing node fans out to.
#[derive(Debug)]
pub struct Router {
    shards: Vec<Replicas>,
    replica_timeout: Duration,
    started: Instant,
}

/// The nodes serving one shard.
#[derive(Debug)]
struct Replicas {
    shard: Shard,
    nodes: Vec<Node>,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Node {
    url: String,
    client: pb::biometrics_service_client::BiometricsServiceClient<Channel>,
    /// Milliseconds since the router started before which the node is passed over.
    skip_until_ms: AtomicU64,
}

impl Router {
    /// A router over `shards` (each the URLs of its replicas); connections
    /// are made on first use.
    pub fn new(shards: &[Vec<String>], replica_timeout: Duration) -> Result<Arc<Self>, String> {
        let count = u32::try_from(shards.len()).map_err(|_| "too many shards".to_owned())?;
        let mut out = Vec::with_capacity(shards.len());
        for (i, urls) in shards.iter().enumerate() {
            let shard = Shard { index: i as u32, count };
            if urls.is_empty() {
                return Err(format!("cluster.shards: shard {shard} has no node"));
            }
            let nodes = urls
                .iter()
                .map(|url| {
                    let channel = Channel::from_shared(url.clone())
                        .map_err(|e| format!("cluster.shards: shard {shard}: {url:?}: {e}"))?
                        .connect_timeout(Duration::from_secs(2))
                        .connect_lazy();
                    let client = pb::biometrics_service_client::BiometricsServiceClient::new(channel)
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20);
                    Ok(Node { url: url.clone(), client, skip_until_ms: AtomicU64::new(0) })
                })
                .collect::<Result<Vec<_>, String>>()?;
            out.push(Replicas { shard, nodes, next: AtomicUsize::new(0) });
        }
        Ok(Arc::new(Self { shards: out, replica_timeout, started: Instant::now() }))
    }

    /// Identify over every shard, merged; `deadline` is the caller's.
    pub async fn identify(
        &self,
        req: pb::IdentifyRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::IdentifyResponse, Status> {
        let allow_partial = req.allow_partial;
        let wanted = match req.max_candidates {
            0 => 10,
            n => n as usize,
        };
        let asked = pb::IdentifyRequest { allow_partial: false, ..req };
        let answers = futures_util::future::join_all(
            self.shards
                .iter()
                .map(|r| self.ask(r, asked.clone(), deadline, |mut c, q| async move { c.identify(q).await })),
        )
        .await;
        let mut merged: Vec<pb::IdentifyResponse> = Vec::with_capacity(answers.len());
        let mut missing = Vec::new();
        for (replicas, answer) in self.shards.iter().zip(answers) {
            match answer {
                Ok(r) => merged.push(r),
                Err(e) if is_unreachable(&e) => missing.push((replicas, e)),
                // The request itself was refused: every shard would say the same.
                Err(e) => return Err(e),
            }
        }
        if !missing.is_empty() && !allow_partial {
            let (replicas, e) = &missing[0];
            return Err(unreachable(
                replicas,
                e,
                "; set allow_partial for the other shards' candidates without a decision",
            ));
        }
        Ok(merge(merged, wanted, missing.iter().map(|(r, _)| r.shard.to_string()).collect()))
    }

    /// Verify on a replica of the subject's shard (which holds its templates).
    pub async fn verify(
        &self,
        req: pb::VerifyRequest,
        deadline: Option<Instant>,
    ) -> Result<pb::VerifyResponse, Status> {
        let count = u32::try_from(self.shards.len()).unwrap_or(u32::MAX);
        let replicas = &self.shards[Shard::of(&req.subject_id, count).index as usize];
        self.ask(replicas, req, deadline, |mut c, q| async move { c.verify(q).await })
            .await
            .map_err(|e| if is_unreachable(&e) { unreachable(replicas, &e, "") } else { e })
    }

    /// One shard's answer from the first replica that gives one.
    async fn ask<Q, A, F, Fut>(
        &self,
        replicas: &Replicas,
        req: Q,
        deadline: Option<Instant>,
        call: F,
    ) -> Result<A, Status>
    where
        Q: Clone,
        F: Fn(pb::biometrics_service_client::BiometricsServiceClient<Channel>, tonic::Request<Q>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<A>, Status>>,
    {
        let n = replicas.nodes.len();
        let first = replicas.next.fetch_add(1, Ordering::Relaxed);
        let now_ms = self.started.elapsed().as_millis() as u64;
        // Healthy replicas first (in turn), then those that failed lately.
        let mut order: Vec<&Node> = (0..n).map(|i| &replicas.nodes[(first + i) % n]).collect();
        order.sort_by_key(|node| node.skip_until_ms.load(Ordering::Relaxed) > now_ms);
        let mut last = Status::unavailable("no replica");
        for node in order {
            let mut timeout = self.replica_timeout;
            if let Some(d) = deadline {
                timeout = timeout.min(d.saturating_duration_since(Instant::now()));
                if timeout.is_zero() {
                    return Err(Status::deadline_exceeded("the deadline passed before every shard answered"));
                }
            }
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(timeout);
            match tokio::time::timeout(timeout, call(node.client.clone(), request)).await {
                Ok(Ok(r)) => {
                    node.skip_until_ms.store(0, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(e)) if !is_unreachable(&e) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = Status::unavailable(format!("no answer within {timeout:?}")),
            }
            warn!(shard = %replicas.shard, node = %node.url, error = %last.message(), "replica failed; trying the next");
            let until = self.started.elapsed() + SKIP_FAILED;
            node.skip_until_ms.store(until.as_millis() as u64, Ordering::Relaxed);
        }
        Err(last)
    }
}

/// UNAVAILABLE naming a shard none of whose nodes answered.
fn unreachable(replicas: &Replicas, e: &Status, hint: &str) -> Status {
    let urls: Vec<&str> = replicas.nodes.iter().map(|n| n.url.as_str()).collect();
    Status::unavailable(format!(
        "shard {} unreachable (nodes {}): {}{hint}",
        replicas.shard,
        urls.join(", "),
        e.message()
    ))
}

/// Errors of the node or the link, not of the request: another replica may answer.
fn is_unreachable(e: &Status) -> bool {
    matches!(e.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Internal)
        || e.code() == Code::ResourceExhausted && e.message().contains("OVERLOADED")
}

/// The shards' candidates best first, the best `wanted`; the decision taken
/// on the merged list (withheld when shards are missing).
fn merge(answers: Vec<pb::IdentifyResponse>, wanted: usize, missing_shards: Vec<String>) -> pb::IdentifyResponse {
    let probes = answers.first().map(|a| a.probes.clone()).unwrap_or_default();
    let rule = answers.iter().find_map(|a| a.decision.clone());
    let mut candidates: Vec<pb::Candidate> = answers.into_iter().flat_map(|a| a.candidates).collect();
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.subject_id.cmp(&b.subject_id)));
    candidates.truncate(wanted);
    let decision = match (missing_shards.is_empty(), rule) {
        (true, Some(rule)) => {
            let best = candidates.first().filter(|c| c.score >= rule.threshold);
            Some(pb::Decision {
                is_match: best.is_some(),
                subject_id: best.map(|c| c.subject_id.clone()).unwrap_or_default(),
                ..rule
            })
        }
        _ => None,
    };
    pb::IdentifyResponse { candidates, decision, probes, missing_shards }
}

#[cfg(test)]
mod tests {
    use super::{merge, pb};

    fn answer(candidates: &[(&str, f64)], threshold: f64, is_match: bool) -> pb::IdentifyResponse {
        pb::IdentifyResponse {
            candidates: candidates
                .iter()
                .map(|(s, score)| pb::Candidate { subject_id: (*s).into(), score: *score, scores: Vec::new() })
                .collect(),
            decision: Some(pb::Decision {
                is_match,
                threshold,
                subject_id: if is_match { candidates[0].0.into() } else { String::new() },
                ..Default::default()
            }),
            probes: Vec::new(),
            missing_shards: Vec::new(),
        }
    }

    #[test]
    fn candidates_merge_by_score_and_the_best_decides() {
        let a = answer(&[("a1", 12.0), ("a2", 3.0)], 30.0, false);
        let b = answer(&[("b1", 41.0), ("b2", 5.0)], 30.0, true);
        let r = merge(vec![a, b], 3, Vec::new());
        let order: Vec<_> = r.candidates.iter().map(|c| c.subject_id.as_str()).collect();
        assert_eq!(order, ["b1", "a1", "b2"]);
        let d = r.decision.expect("decision");
        assert!(d.is_match);
        assert_eq!(d.subject_id, "b1");
        assert_eq!(d.threshold, 30.0);
    }

    #[test]
    fn a_partial_answer_lists_missing_shards_and_decides_nothing() {
        let a = answer(&[("a1", 45.0)], 30.0, true);
        let r = merge(vec![a], 10, vec!["1/2".into()]);
        assert!(r.decision.is_none());
        assert_eq!(r.missing_shards, ["1/2"]);
        assert_eq!(r.candidates.len(), 1);
    }
}
