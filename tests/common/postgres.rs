//! A throwaway PostgreSQL server for a test: Debian's binaries
//! (`scripts/setup.sh` installs them), `initdb` in a temporary folder, a
//! free port on 127.0.0.1, stopped when dropped. As root the server runs as
//! the `postgres` user (PostgreSQL refuses to run as root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub(crate) struct TempPostgres {
    pub(crate) url: String,
    bin: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// The newest `/usr/lib/postgresql/<version>/bin`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/setup.sh")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("no initdb under /usr/lib/postgresql: run scripts/setup.sh").1
}

#[allow(unsafe_code)]
fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program args`, as the `postgres` user when running as root.
fn run(bin: &Path, program: &str, args: &[&str]) {
    let exe = bin.join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let status =
        command.args(args).stdout(std::process::Stdio::null()).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

impl TempPostgres {
    pub(crate) fn start() -> Self {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().expect("chown");
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let data_s = data.display().to_string();
        run(&bin, "initdb", &["-D", &data_s, "-U", "cotejo", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c synchronous_commit=off",
            dir.path().display()
        );
        let log = dir.path().join("server.log").display().to_string();
        run(&bin, "pg_ctl", &["-D", &data_s, "-o", &options, "-l", &log, "-w", "start"]);
        Self { url: format!("postgres://cotejo@127.0.0.1:{port}/postgres"), bin, data, _dir: dir }
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.as_str(), "-m", "immediate", "-w", "stop"];
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = command.args(args).stdout(std::process::Stdio::null()).status();
    }
}
