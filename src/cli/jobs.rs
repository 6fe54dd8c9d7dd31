//! `cotejo dedup` and `cotejo job ...`: de-duplication jobs on a server, and
//! an offline de-duplication of a folder of face images.

use std::{io::Write, path::Path, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};

use super::{ClientOpts, status_error};
use crate::api::pb::{self, jobs_service_client::JobsServiceClient};

/// What `cotejo dedup` covers.
#[derive(Debug, Clone, Default)]
pub struct DedupArgs {
    /// Subjects (empty: all, or the time window).
    pub subjects: Vec<String>,
    /// Enrolled from / until (Unix ms, 0: unbounded).
    pub from_ms: i64,
    /// Until (exclusive).
    pub to_ms: i64,
    /// "face" / "finger" (empty: both).
    pub modalities: Vec<String>,
    /// Target FMR per pair (0: server default).
    pub target_fmr: f64,
    /// Wait for the end, with a progress bar on stderr, then print the results.
    pub wait: bool,
    /// Also write the results as CSV.
    pub csv: Option<std::path::PathBuf>,
}

async fn client(o: &ClientOpts) -> anyhow::Result<JobsServiceClient<super::Conn>> {
    Ok(JobsServiceClient::new(o.connection.connect().await?).max_decoding_message_size(256 << 20))
}

/// `cotejo dedup`.
pub async fn dedup(o: &ClientOpts, a: &DedupArgs) -> anyhow::Result<()> {
    let scope = if !a.subjects.is_empty() {
        Some(pb::start_dedup_request::Scope::Subjects(pb::SubjectList { subject_ids: a.subjects.clone() }))
    } else if a.from_ms != 0 || a.to_ms != 0 {
        let at = |ms: i64| (ms != 0).then(|| crate::api::timestamp(ms));
        Some(pb::start_dedup_request::Scope::Enrolled(pb::TimeWindow {
            start_time: at(a.from_ms),
            end_time: at(a.to_ms),
        }))
    } else {
        None
    };
    let modalities = a
        .modalities
        .iter()
        .map(|m| match m.as_str() {
            "face" => Ok(pb::Modality::Face as i32),
            "finger" => Ok(pb::Modality::Finger as i32),
            other => anyhow::bail!("--modality {other:?}: face or finger"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut c = client(o).await?;
    let job = c
        .start_dedup(pb::StartDedupRequest { scope, modalities, target_fmr: a.target_fmr })
        .await
        .map_err(|e| status_error(&e))?
        .into_inner()
        .job
        .unwrap_or_default();
    if !a.wait {
        return print_job(o.json, &job);
    }
    let job = wait(&mut c, &job.job_id).await?;
    if job.state != pb::JobState::Done as i32 {
        print_job(o.json, &job)?;
        anyhow::bail!("job {} ended {}", job.job_id, state_name(job.state));
    }
    results(o, &job.job_id, a.csv.as_deref()).await
}

async fn wait(c: &mut JobsServiceClient<super::Conn>, id: &str) -> anyhow::Result<pb::Job> {
    let mut err = std::io::stderr();
    loop {
        let job = c
            .get_job(pb::GetJobRequest { job_id: id.to_owned() })
            .await
            .map_err(|e| status_error(&e))?
            .into_inner()
            .job
            .unwrap_or_default();
        let frac = if job.total > 0 { job.done as f64 / job.total as f64 } else { 0.0 };
        let filled = (frac * 30.0).round() as usize;
        let _ = write!(
            err,
            "\r[{}{}] {:>5.1}% {}/{} blocks, {} pairs, eta {:.0} s   ",
            "#".repeat(filled),
            ".".repeat(30 - filled.min(30)),
            frac * 100.0,
            job.done,
            job.total,
            job.pairs,
            seconds(job.eta.as_ref())
        );
        let _ = err.flush();
        let running = job.state == pb::JobState::Queued as i32 || job.state == pb::JobState::Running as i32;
        if !running {
            let _ = writeln!(err);
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `cotejo job status ID`.
pub async fn status(o: &ClientOpts, id: String) -> anyhow::Result<()> {
    let job = client(o).await?.get_job(pb::GetJobRequest { job_id: id }).await.map_err(|e| status_error(&e))?;
    print_job(o.json, &job.into_inner().job.unwrap_or_default())
}

/// `cotejo job cancel ID`.
pub async fn cancel(o: &ClientOpts, id: String) -> anyhow::Result<()> {
    let job = client(o).await?.cancel_job(pb::CancelJobRequest { job_id: id }).await.map_err(|e| status_error(&e))?;
    print_job(o.json, &job.into_inner().job.unwrap_or_default())
}

/// `cotejo job list`: every job, newest first, a page per call.
pub async fn list(o: &ClientOpts) -> anyhow::Result<()> {
    let mut c = client(o).await?;
    let mut page_token = String::new();
    loop {
        let page = c
            .list_jobs(pb::ListJobsRequest { page_size: 0, page_token })
            .await
            .map_err(|e| status_error(&e))?
            .into_inner();
        for j in &page.jobs {
            print_job(o.json, j)?;
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        page_token = page.next_page_token;
    }
}

/// `cotejo job results ID`.
pub async fn results(o: &ClientOpts, id: &str, csv: Option<&Path>) -> anyhow::Result<()> {
    let mut stream = client(o)
        .await?
        .stream_results(pb::StreamResultsRequest { job_id: id.to_owned() })
        .await
        .map_err(|e| status_error(&e))?
        .into_inner();
    let (mut pairs, mut clusters) = (Vec::new(), Vec::new());
    while let Some(item) = stream.message().await.map_err(|e| status_error(&e))? {
        match item.item {
            Some(pb::stream_results_response::Item::Pair(p)) => pairs.push(p),
            Some(pb::stream_results_response::Item::Cluster(c)) => clusters.push(c.subject_ids),
            None => {}
        }
    }
    // Best first, as an officer reviews them (the stream is in subject id order).
    pairs.sort_by(|x, y| y.score.total_cmp(&x.score).then_with(|| (&x.a, &x.b).cmp(&(&y.a, &y.b))));
    let rows: Vec<PairRow> = pairs
        .iter()
        .map(|p| PairRow {
            a: p.a.clone(),
            b: p.b.clone(),
            score: p.score,
            detail: p
                .scores
                .iter()
                .map(|s| match s.finger_position {
                    0 => format!("face {:.3}", s.raw_score),
                    f => format!("finger{f} {:.3}", s.raw_score),
                })
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    print_results(o.json, &rows, &clusters, csv)
}

/// One result pair as printed.
#[derive(Debug, Clone)]
pub struct PairRow {
    /// First subject.
    pub a: String,
    /// Second subject.
    pub b: String,
    /// Fused calibrated score.
    pub score: f64,
    /// Raw component scores.
    pub detail: String,
}

/// Prints pairs and clusters (text or JSON) and writes the CSV if asked.
pub fn print_results(
    json: bool,
    pairs: &[PairRow],
    clusters: &[Vec<String>],
    csv: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(path) = csv {
        let mut out = String::from("a,b,score,components\n");
        for p in pairs {
            out.push_str(&format!("{},{},{:.4},{}\n", csv_field(&p.a), csv_field(&p.b), p.score, csv_field(&p.detail)));
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if json {
        let pairs: Vec<Value> =
            pairs.iter().map(|p| json!({"a": p.a, "b": p.b, "score": p.score, "components": p.detail})).collect();
        println!("{}", serde_json::to_string_pretty(&json!({"pairs": pairs, "clusters": clusters}))?);
        return Ok(());
    }
    println!("{} candidate duplicate pair(s), {} cluster(s)", pairs.len(), clusters.len());
    for p in pairs {
        println!("  {:<24} {:<24} {:7.2}  ({})", p.a, p.b, p.score, p.detail);
    }
    for c in clusters {
        println!("  cluster: {}", c.join(", "));
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Queued) => "queued",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Done) => "done",
        Ok(pb::JobState::Cancelled) => "cancelled",
        Ok(pb::JobState::Failed) => "failed",
        _ => "unknown",
    }
}

/// A Duration in seconds (unset: 0).
fn seconds(d: Option<&prost_types::Duration>) -> f64 {
    d.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9)
}

fn print_job(json: bool, j: &pb::Job) -> anyhow::Result<()> {
    if json {
        let v = json!({"job_id": j.job_id, "state": state_name(j.state), "done": j.done, "total": j.total,
                       "rate_per_second": j.rate_per_second, "eta_seconds": seconds(j.eta.as_ref()), "pairs": j.pairs,
                       "threshold": j.threshold, "threshold_basis": j.threshold_basis, "subjects": j.subjects,
                       "templates": j.templates, "error": j.error});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "job {} {}: {}/{} blocks, {} pairs, {:.1} blocks/s, eta {:.0} s{}",
        j.job_id,
        state_name(j.state),
        j.done,
        j.total,
        j.pairs,
        j.rate_per_second,
        seconds(j.eta.as_ref()),
        if j.error.is_empty() { String::new() } else { format!(" ({})", j.error) }
    );
    Ok(())
}
