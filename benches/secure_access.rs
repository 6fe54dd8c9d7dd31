//! The cost of secure remote access, measured in one process on one gallery:
//! face Identify from a JPEG over plaintext HTTP/2 against TLS 1.3 with a
//! bearer token (servers started in turn on the same data directory,
//! rounds interleaved), at concurrency 1 and 8; and, with `--rotate N`, key
//! rotation over N enrolled subjects: templates re-sealed per second and
//! Identify p99 while it runs against idle.
//!
//! `cargo bench --bench secure_access -- [--gallery 10000] [--calls 200] [--rounds 2] [--rotate 100000]`

#[path = "support/serve.rs"]
mod serve;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use cotejo::{
    api::pb::{self, biometrics_service_client::BiometricsServiceClient},
    cli::{Conn, Connection},
    config::Config,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use serve::{config, face, models, pct, populate, start};

struct Opts {
    gallery: usize,
    calls: usize,
    rounds: usize,
    rotate: usize,
}

fn opts() -> Opts {
    let mut o = Opts { gallery: 10_000, calls: 200, rounds: 2, rotate: 0 };
    let args: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < args.len() {
        let v = || args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{} wants a number", args[i]));
        match args[i].as_str() {
            "--gallery" => o.gallery = v(),
            "--calls" => o.calls = v(),
            "--rounds" => o.rounds = v(),
            "--rotate" => o.rotate = v(),
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Server certificate for 127.0.0.1 and its CA, as PEM files in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca = p.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    p.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &ca, &ca_key).expect("sign");
    let files = (dir.join("ca.pem"), dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&files.0, ca.pem()).expect("write");
    std::fs::write(&files.1, cert.pem()).expect("write");
    std::fs::write(&files.2, key.serialize_pem()).expect("write");
    files
}

/// `calls` face Identify calls from a JPEG over `concurrency` streams; latencies in ms.
async fn identify(
    client: &BiometricsServiceClient<Conn>,
    jpeg: &Arc<Vec<u8>>,
    calls: usize,
    concurrency: usize,
) -> Vec<f64> {
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (mut c, jpeg) = (client.clone(), jpeg.clone());
        let n = calls / concurrency + usize::from(w < calls % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let req = pb::IdentifyRequest { samples: vec![face(&jpeg)], max_candidates: 5, ..Default::default() };
                c.identify(req).await.expect("identify");
                out.push(t.elapsed().as_secs_f64() * 1e3);
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("join"));
    }
    all
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let o = opts();
    let jpeg = Arc::new(std::fs::read(models().join("fixtures/faces/obama2.jpg")).expect("fixture"));
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let keys = work.path().join("keys");
    cotejo::store::new_key(&keys, true).expect("key");
    let (ca, cert, key) = certificates(work.path());
    let callers = work.path().join("callers.toml");
    let token = cotejo::auth::add_token(&callers, "bench", &cotejo::auth::Role::ALL).expect("token");
    let plain_cfg = || config(&data, &[("COTEJO__STORE__KEY_DIR", keys.display().to_string())]);
    let tls_cfg = || {
        config(
            &data,
            &[
                ("COTEJO__STORE__KEY_DIR", keys.display().to_string()),
                ("COTEJO__SERVER__TLS_CERT", cert.display().to_string()),
                ("COTEJO__SERVER__TLS_KEY", key.display().to_string()),
                ("COTEJO__AUTH__TOKENS_FILE", callers.display().to_string()),
            ],
        )
    };
    let plain_conn = |a: SocketAddr| Connection { server: format!("http://{a}"), ..Connection::default() };
    let tls_conn = |a: SocketAddr| Connection {
        server: format!("https://{a}"),
        ca: Some(ca.clone()),
        token: Some(token.clone()),
        ..Connection::default()
    };

    let gallery = o.gallery.max(o.rotate);
    let (server, c) = start(plain_cfg(), plain_conn).await;
    let t = Instant::now();
    populate(&c, 0..gallery).await;
    println!("gallery: {gallery} subjects enrolled in {:.1} s", t.elapsed().as_secs_f64());
    server.stop().await;

    println!(
        "face Identify from a JPEG, {} calls per run, {} rounds (plain, TLS + token alternating):",
        o.calls, o.rounds
    );
    let mut lat: std::collections::BTreeMap<(usize, &str), Vec<f64>> = Default::default();
    for _ in 0..o.rounds {
        for mode in ["plaintext", "tls+token"] {
            let (server, c) = if mode == "plaintext" {
                start(plain_cfg(), plain_conn).await
            } else {
                start(tls_cfg(), tls_conn).await
            };
            let client = BiometricsServiceClient::new(c.connect().await.expect("connect"));
            identify(&client, &jpeg, 16, 4).await; // warm-up
            for conc in [1, 8] {
                lat.entry((conc, mode)).or_default().extend(identify(&client, &jpeg, o.calls, conc).await);
            }
            server.stop().await;
        }
    }
    for conc in [1, 8] {
        let mut p = lat.remove(&(conc, "plaintext")).unwrap_or_default();
        let mut t = lat.remove(&(conc, "tls+token")).unwrap_or_default();
        let (p50, p99, t50, t99) = (pct(&mut p, 0.5), pct(&mut p, 0.99), pct(&mut t, 0.5), pct(&mut t, 0.99));
        println!(
            "  concurrency {conc}: plaintext p50 {p50:.1} ms p99 {p99:.1} ms | TLS+token p50 {t50:.1} ms p99 {t99:.1} ms | p50 ratio {:.3}, p99 ratio {:.3}",
            t50 / p50,
            t99 / p99
        );
    }

    if o.rotate > 0 {
        rotation(&o, plain_cfg(), plain_conn, &jpeg, &data, &keys).await;
    }
}

/// Rotations back to back (no wait for the server: nothing is enrolled
/// meanwhile) under a stream of Identify calls, against the same stream idle.
async fn rotation(
    o: &Opts,
    cfg: Config,
    conn: impl Fn(SocketAddr) -> Connection,
    jpeg: &Arc<Vec<u8>>,
    data: &Path,
    keys: &Path,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (server, c) = start(cfg, conn).await;
    let client = BiometricsServiceClient::new(c.connect().await.expect("connect"));
    identify(&client, jpeg, 16, 1).await;
    let mut idle = identify(&client, jpeg, o.calls, 1).await;
    let (busy, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let sampler = {
        let (busy, stop, mut c, jpeg) = (busy.clone(), stop.clone(), client.clone(), jpeg.clone());
        tokio::spawn(async move {
            let mut during = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let before = busy.load(Ordering::Relaxed);
                let t = Instant::now();
                let req = pb::IdentifyRequest { samples: vec![face(&jpeg)], max_candidates: 5, ..Default::default() };
                c.identify(req).await.expect("identify during rotation");
                if before && busy.load(Ordering::Relaxed) {
                    during.push(t.elapsed().as_secs_f64() * 1e3);
                }
            }
            during
        })
    };
    let (mut rows, mut secs) = (0u64, 0.0f64);
    for _ in 0..5 {
        let args = cotejo::cli::keys::RotateArgs {
            data_dir: data.to_owned(),
            key_dir: keys.to_owned(),
            resume: false,
            batch: 500,
            pause: Duration::ZERO,
            server_reload: Duration::ZERO,
        };
        busy.store(true, Ordering::Relaxed);
        let r = tokio::task::spawn_blocking(move || cotejo::cli::keys::rotate(&args)).await.expect("join");
        busy.store(false, Ordering::Relaxed);
        let r = r.expect("rotation");
        rows += r.resealed;
        secs += r.secs;
    }
    stop.store(true, Ordering::Relaxed);
    let mut during = sampler.await.expect("join");
    let (i99, d99) = (pct(&mut idle, 0.99), if during.is_empty() { f64::NAN } else { pct(&mut during, 0.99) });
    println!(
        "key rotation, 5 runs over {} templates each: {:.0} templates re-sealed per second ({rows} in {secs:.1} s); \
         Identify p50/p99 idle {:.1}/{i99:.1} ms, during rotation {:.1}/{d99:.1} ms ({} calls), p99 ratio {:.2}",
        rows / 5,
        rows as f64 / secs,
        pct(&mut idle, 0.5),
        if during.is_empty() { f64::NAN } else { pct(&mut during, 0.5) },
        during.len(),
        d99 / i99
    );
    server.stop().await;
}
