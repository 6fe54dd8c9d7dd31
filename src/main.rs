//! The `cotejo` command: the server, its gRPC client and the evaluations.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::Parser;
use cotejo::{
    cli::{
        self, ClientOpts,
        args::{AuditCommand, CalibrateWhat, Cli, Client, Command, EvalCommand, JobCommand, KeysCommand, TokenCommand},
    },
    config::Config,
    eval, server, telemetry,
};

fn main() -> ExitCode {
    cotejo::openmp::ensure_passive_wait();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve { .. }) {
        die_quietly_on_closed_stdout();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Client and tool commands end quietly when their output is closed
/// (`cotejo stats | head -1`), as Unix tools do: Rust ignores SIGPIPE, so
/// `println!` would panic on the failed write. The server keeps ignoring it,
/// so that a write to a closed socket fails instead of killing the process.
#[expect(unsafe_code, reason = "one signal disposition reset at start-up, before any other thread")]
fn die_quietly_on_closed_stdout() {
    // SAFETY: called from `main` before the runtime starts any thread; SIG_DFL
    // is a valid disposition for SIGPIPE and no handler is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let opts = |c: Client| ClientOpts {
        connection: cli::Connection { server: c.server, ca: c.ca, cert: c.cert, key: c.key, token: c.token },
        json: c.json,
    };
    match cli.command {
        Command::Serve { listen, data_dir, config, shard, route } => {
            serve_command(listen, data_dir, config, shard, route).await
        }
        Command::Enroll { subject, samples, add_encounter, largest_face, watchlists, request_id, client } => {
            let args = cli::EnrollArgs { subject, add_encounter, largest_face, watchlists, request_id };
            cli::enroll(&opts(client), args, &samples.into()).await
        }
        Command::Identify { samples, top, target_fpir, watchlist, client } => {
            cli::identify(&opts(client), &samples.into(), top, target_fpir, watchlist).await
        }
        Command::Verify { subject, samples, target_fmr, client } => {
            cli::verify(&opts(client), subject, &samples.into(), target_fmr).await
        }
        Command::Export { subject, out, client } => cli::export(&opts(client), subject, &out).await,
        Command::Delete { subject, client } => cli::delete(&opts(client), subject).await,
        Command::Get { subject, client } => cli::get(&opts(client), subject).await,
        Command::Subjects { watchlist, client } => cli::list_subjects(&opts(client), watchlist).await,
        Command::Stats { client } => cli::stats(&opts(client)).await,
        Command::Dedup {
            subjects,
            enrolled_from,
            enrolled_to,
            modalities,
            target_fmr,
            wait,
            csv,
            offline,
            config,
            client,
        } => {
            if let Some(dir) = offline {
                let config = Config::load(config.as_deref())?;
                let fmr = if target_fmr == 0.0 { config.jobs.target_fmr } else { target_fmr };
                let json = client.json;
                let (rows, groups) =
                    tokio::task::spawn_blocking(move || eval::dedup::offline(&config, &dir, fmr, 2)).await??;
                return cli::print_results(json, &rows, &groups, csv.as_deref());
            }
            let args = cli::DedupArgs {
                subjects,
                from_ms: enrolled_from,
                to_ms: enrolled_to,
                modalities,
                target_fmr,
                wait,
                csv,
            };
            cli::dedup(&opts(client), &args).await
        }
        Command::Job { what } => match what {
            JobCommand::List { client } => cli::job_list(&opts(client)).await,
            JobCommand::Status { id, client } => cli::job_status(&opts(client), id).await,
            JobCommand::Results { id, csv, client } => cli::job_results(&opts(client), &id, csv.as_deref()).await,
            JobCommand::Cancel { id, client } => cli::job_cancel(&opts(client), id).await,
        },
        Command::Token { what } => match what {
            TokenCommand::Add { tokens_file, name, roles, certificate } => {
                cli::token_add(&tokens_file, &name, &roles, certificate)
            }
            TokenCommand::Revoke { tokens_file, name } => cli::token_revoke(&tokens_file, &name),
        },
        Command::Keys { what } => tokio::task::spawn_blocking(move || keys_command(what)).await?,
        Command::Audit { what } => audit_command(what).await,
        Command::Backup { data_dir, out } => tokio::task::spawn_blocking(move || cli::backup(&data_dir, &out)).await?,
        Command::Restore { backup, data_dir } => {
            tokio::task::spawn_blocking(move || cli::restore(&backup, &data_dir)).await?
        }
        Command::Calibrate { modality, data, threads, config } => {
            let config = Config::load(config.as_deref())?;
            let path = tokio::task::spawn_blocking(move || match modality {
                CalibrateWhat::Face => eval::calibrate::face(&config, &data, threads),
                CalibrateWhat::Finger => eval::calibrate::finger(&config, &data, threads),
            })
            .await??;
            println!("{}", path.display());
            Ok(())
        }
        Command::Eval { what, config } => eval_command(what, config).await,
    }
}

/// `cotejo serve`.
async fn serve_command(
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    shard: Option<cotejo::shard::Shard>,
    route: Option<String>,
) -> anyhow::Result<()> {
    let mut config = Config::load(config.as_deref())?;
    if let Some(s) = shard {
        config.cluster.shard = s.to_string();
    }
    if let Some(r) = route {
        config.cluster.shards = r
            .split(';')
            .map(|s| s.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect())
            .collect();
    }
    if let Some(l) = listen {
        config.server.listen = l;
    }
    if let Some(d) = data_dir {
        config.store.data_dir = d;
    }
    telemetry::init(&config.log);
    tracing::info!(?config, "starting");
    let listener = tokio::net::TcpListener::bind(config.server.listen).await?;
    server::serve(config, listener, server::shutdown_signal()).await
}

/// `cotejo keys ...` (blocking: file and database work).
fn keys_command(what: KeysCommand) -> anyhow::Result<()> {
    match what {
        KeysCommand::New { key_dir, inactive } => cli::keys::new(&key_dir, inactive),
        KeysCommand::Rotate { data_dir, key_dir, resume, batch, pause_ms, server_reload_secs } => {
            cli::keys::rotate(&cli::keys::RotateArgs {
                data_dir,
                key_dir,
                resume,
                batch: batch.max(1),
                pause: std::time::Duration::from_millis(pause_ms),
                server_reload: std::time::Duration::from_secs(server_reload_secs),
            })
            .map(|_| ())
        }
        KeysCommand::Retire { data_dir, key_dir } => cli::keys::retire(&data_dir, &key_dir),
        KeysCommand::Status { data_dir, key_dir } => cli::keys::status(&data_dir, &key_dir),
    }
}

/// `cotejo audit ...`.
async fn audit_command(what: AuditCommand) -> anyhow::Result<()> {
    match what {
        AuditCommand::Verify { data_dir, checkpoint_dir, checkpoint_key_file, config, json } => {
            let c = Config::load(config.as_deref())?.audit;
            let or_config =
                |flag: Option<PathBuf>, set: PathBuf| flag.or_else(|| (!set.as_os_str().is_empty()).then_some(set));
            let cp = cli::CheckpointArgs {
                dir: or_config(checkpoint_dir, c.checkpoint_dir),
                key_file: or_config(checkpoint_key_file, c.checkpoint_key_file),
            };
            tokio::task::spawn_blocking(move || cli::audit_verify(&data_dir, &cp, json)).await?
        }
        AuditCommand::Export { data_dir, from } => {
            tokio::task::spawn_blocking(move || cli::audit_export(&data_dir, from)).await?
        }
    }
}

/// `cotejo eval ...`.
async fn eval_command(what: EvalCommand, config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    match what {
        EvalCommand::Verification { data, aligned, threads, limit } => {
            tokio::task::spawn_blocking(move || eval::verification(&config, &data, aligned, threads, limit)).await?
        }
        EvalCommand::Identification { data, threads } => {
            tokio::task::spawn_blocking(move || eval::identification(&config, &data, threads)).await?
        }
        EvalCommand::Fingers { data, source, threads, scores, aspects, declared_only, export_iso } => {
            tokio::task::spawn_blocking(move || {
                let run = eval::FingerEval {
                    data: &data,
                    source,
                    threads,
                    scores_tsv: scores.as_deref(),
                    aspects: &aspects,
                    declared_only,
                    export_iso: export_iso.as_deref(),
                };
                eval::fingers(&config, &run)
            })
            .await?
        }
        EvalCommand::Dedup { data, threads } => {
            tokio::task::spawn_blocking(move || eval::dedup::evaluate(&config, &data, threads)).await?
        }
        EvalCommand::DedupTime { fingers, .. } if fingers > 0 => eval::dedup_time_fingers(&config, fingers).await,
        EvalCommand::DedupTime { gallery, .. } => eval::dedup_time(&config, gallery).await,
        EvalCommand::Startup { fingers: 0, gallery, changes, .. } => eval::startup(&config, gallery, changes).await,
        EvalCommand::Startup { fingers, changes, rounds, identifies, .. } => {
            eval::startup_fingers(&config, fingers, changes, rounds, identifies).await
        }
        EvalCommand::Latency { data, gallery, queries, with_dedup_job } => {
            eval::latency(&config, &data, gallery, queries, with_dedup_job).await
        }
    }
}
