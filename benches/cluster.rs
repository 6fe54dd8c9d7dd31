//! PostgreSQL against the embedded store, and how a shard node follows:
//! enroll throughput (synthetic face embeddings over 8 streams, each store
//! syncing every commit), how soon an enroll acknowledged by a routing
//! node is found on its shard, and a shard node's start-up from
//! PostgreSQL alone and from its own snapshot plus the changes since, and
//! Identify through a routing node over two shards against one node.
//!
//! `cargo bench --bench cluster -- [--enrolls 2000] [--later 20000]`
//!
//! `--startup N` measures only a node's start-up with N faces: a node of
//! the whole gallery restarted from its own snapshot against one started
//! from PostgreSQL alone (loaded through the API into a server without
//! fsync, which only the loading's speed depends on).

#[allow(dead_code, unreachable_pub, reason = "the tests' helper, shared")]
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[allow(dead_code, reason = "shared by the load benchmarks")]
#[path = "support/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient},
    cli::Connection,
};
use serve::{config, embedding, pct, populate, start};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn plain(addr: std::net::SocketAddr) -> Connection {
    Connection { server: format!("http://{addr}"), ..Connection::default() }
}

fn on_postgres(url: &str, shard: &str) -> Vec<(&'static str, String)> {
    vec![
        ("COTEJO__STORE__URL", url.to_owned()),
        ("COTEJO__STORE__ENCRYPTION_KEY", "5c".repeat(32)),
        ("COTEJO__CLUSTER__SHARD", shard.to_owned()),
    ]
}

/// Enrolls per second of `n` subjects from `from` on.
async fn throughput(c: &Connection, from: usize, n: usize) -> f64 {
    let t = Instant::now();
    populate(c, from..from + n).await;
    n as f64 / t.elapsed().as_secs_f64()
}

/// A whole-gallery node's start-up with `n` faces: from its snapshot, then from PostgreSQL alone.
async fn startup(n: usize) {
    let pg = postgres::TempPostgres::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let node_dir = dir.path().join("node");
    let (node, c) = start(config(&node_dir, &on_postgres(&pg.url, "0/1")), plain).await;
    let t = Instant::now();
    populate(&c, 0..n).await;
    println!(
        "{n} enrolls in {:.0} s ({:.0}/s, no fsync)",
        t.elapsed().as_secs_f64(),
        n as f64 / t.elapsed().as_secs_f64()
    );
    node.stop().await;
    for (label, at) in [("its own snapshot", node_dir.clone()), ("PostgreSQL alone", dir.path().join("fresh"))] {
        let t = Instant::now();
        let (node, _) = start(config(&at, &on_postgres(&pg.url, "0/1")), plain).await;
        println!("whole-gallery node ({n} faces) serving after {:.2} s from {label}", t.elapsed().as_secs_f64());
        node.stop().await;
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if arg("--startup", 0) > 0 {
        return startup(arg("--startup", 0)).await;
    }
    let (enrolls, later) = (arg("--enrolls", 2000), arg("--later", 20_000));
    let pg = postgres::TempPostgres::start_durable();

    // Enroll throughput: the embedded store against PostgreSQL, one node each, same run.
    let dir = tempfile::tempdir().expect("tempdir");
    let (sqlite, c) = start(config(&dir.path().join("sqlite"), &[]), plain).await;
    let sqlite_rate = throughput(&c, 0, enrolls).await;
    sqlite.stop().await;
    let shard_dir = dir.path().join("shard");
    let (shard, shard_c) = start(config(&shard_dir, &on_postgres(&pg.url, "0/2")), plain).await;
    let (router, router_c) = start(config(&dir.path().join("router"), &on_postgres(&pg.url, "0/1")), plain).await;
    let pg_rate = throughput(&router_c, 0, enrolls).await;
    println!(
        "enroll throughput, {enrolls} subjects over 8 streams: sqlite {sqlite_rate:.0}/s, postgres {pg_rate:.0}/s \
         (postgres/sqlite {:.2})",
        pg_rate / sqlite_rate
    );

    // Acknowledged by one node, searchable on the shard node that follows.
    let mut r = BiometricsServiceClient::new(router_c.connect().await.expect("connect"));
    let mut s = BiometricsServiceClient::new(shard_c.connect().await.expect("connect"));
    let stats = s.stats(pb::StatsRequest {}).await.expect("stats").into_inner();
    let (model, dim) = (stats.models[0].model_id.clone(), stats.models[0].dimension as usize);
    let mut lags = Vec::new();
    let mut i = 1_000_000;
    while lags.len() < 100 {
        i += 1;
        let id = format!("g{i:07}");
        if cotejo::shard::Shard::of(&id, 2).index != 0 {
            continue;
        }
        let req = pb::EnrollRequest {
            subject_id: id.clone(),
            samples: vec![embedding(&model, i, dim)],
            ..Default::default()
        };
        r.enroll(req).await.expect("enroll");
        let acked = Instant::now();
        let probe =
            pb::IdentifyRequest { samples: vec![embedding(&model, i, dim)], max_candidates: 1, ..Default::default() };
        loop {
            let found = s.identify(probe.clone()).await.expect("identify").into_inner();
            if found.candidates.first().is_some_and(|c| c.subject_id == id) {
                break;
            }
            assert!(acked.elapsed() < Duration::from_secs(30), "{id} never found on its shard");
        }
        lags.push(acked.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "acknowledged by another node -> found on its shard (100 enrolls, one Identify per poll): \
         p50 {:.1} ms, p99 {:.1} ms",
        pct(&mut lags, 0.5),
        pct(&mut lags, 0.99)
    );

    // The shard node stops (writing its snapshot), `later` enrolls go on, it restarts.
    shard.stop().await;
    let t = Instant::now();
    populate(&router_c, enrolls..enrolls + later).await;
    println!("{later} enrolls while the shard node was down: {:.1} s", t.elapsed().as_secs_f64());
    for (label, dir) in
        [("its own snapshot + the changes since", shard_dir.clone()), ("PostgreSQL alone", dir.path().join("fresh"))]
    {
        let t = Instant::now();
        let (node, _) = start(config(&dir, &on_postgres(&pg.url, "0/2")), plain).await;
        println!("shard 0/2 serving after {:.2} s from {label}", t.elapsed().as_secs_f64());
        node.stop().await;
    }

    // Identify through a routing node over two shard nodes against one node of
    // the whole gallery (`router` above), interleaved, same probes.
    let (shard0, c0) = start(config(&shard_dir, &on_postgres(&pg.url, "0/2")), plain).await;
    let (shard1, c1) = start(config(&dir.path().join("shard1"), &on_postgres(&pg.url, "1/2")), plain).await;
    let mut route = on_postgres(&pg.url, "0/1");
    route.push(("COTEJO__CLUSTER__SHARDS", format!("[[\"{}\"], [\"{}\"]]", c0.server, c1.server)));
    let (routing, routing_c) = start(config(&dir.path().join("routing"), &route), plain).await;
    let mut via = BiometricsServiceClient::new(routing_c.connect().await.expect("connect"));
    let (mut whole_ms, mut routed_ms) = (Vec::new(), Vec::new());
    for k in 0..300 {
        let i = (k * 7919) % (enrolls + later);
        let probe =
            pb::IdentifyRequest { samples: vec![embedding(&model, i, dim)], max_candidates: 10, ..Default::default() };
        let t = Instant::now();
        let a = r.identify(probe.clone()).await.expect("whole").into_inner();
        whole_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let b = via.identify(probe).await.expect("routed").into_inner();
        routed_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(a.candidates.first().map(|c| &c.subject_id), b.candidates.first().map(|c| &c.subject_id));
    }
    let (w50, w99, r50, r99) =
        (pct(&mut whole_ms, 0.5), pct(&mut whole_ms, 0.99), pct(&mut routed_ms, 0.5), pct(&mut routed_ms, 0.99));
    println!(
        "Identify over {} faces (embeddings, 300 probes): one node p50 {w50:.2} ms p99 {w99:.2} ms; \
         router + 2 shards p50 {r50:.2} ms p99 {r99:.2} ms (p50 ratio {:.2}, p99 ratio {:.2})",
        enrolls + later + 100,
        r50 / w50,
        r99 / w99
    );
    for node in [routing, shard1, shard0, router] {
        node.stop().await;
    }
}
