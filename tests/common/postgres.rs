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
    /// A server for tests: no fsync (a test never outlives a power cut).
    pub(crate) fn start() -> Self {
        Self::start_with(false)
    }

    /// A server that syncs every commit (PostgreSQL's defaults), for measurements.
    pub(crate) fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
        let bin = bin_dir();
        let (dir, data, data_s) = owned_dir();
        run(&bin, "initdb", &["-D", &data_s, "-U", "cotejo", "--auth=trust", "-E", "UTF8", "--no-sync"]);
        Self::run_server(bin, dir, data, durable)
    }

    /// A hot standby of this server: a base backup that streams the
    /// primary's log (`pg_basebackup -R`), on a port of its own; read-only.
    pub(crate) fn replica(&self) -> Self {
        let (dir, data, data_s) = owned_dir();
        run(
            &self.bin,
            "pg_basebackup",
            &["-d", &self.url, "-D", &data_s, "-R", "-X", "stream", "-c", "fast", "--no-sync"],
        );
        Self::run_server(self.bin.clone(), dir, data, false)
    }

    fn run_server(bin: PathBuf, dir: tempfile::TempDir, data: PathBuf, durable: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let sync = if durable { "" } else { " -c fsync=off -c synchronous_commit=off" };
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {}{sync}", dir.path().display());
        let log = dir.path().join("server.log").display().to_string();
        run(&bin, "pg_ctl", &["-D", &data.display().to_string(), "-o", &options, "-l", &log, "-w", "start"]);
        Self { url: format!("postgres://cotejo@127.0.0.1:{port}/postgres"), bin, data, _dir: dir }
    }

    /// This server's URL for `database` (a URL of [`TempPostgres::new_database`] elsewhere).
    pub(crate) fn url_of(&self, database_url: &str) -> String {
        let name = database_url.rsplit('/').next().expect("database name");
        self.url.replace("/postgres", &format!("/{name}"))
    }
}

/// A temporary folder the server's user owns, and its `data` path.
fn owned_dir() -> (tempfile::TempDir, PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    if is_root() {
        let status = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().expect("chown");
        assert!(status.success());
    }
    let data = dir.path().join("data");
    let data_s = data.display().to_string();
    (dir, data, data_s)
}

impl TempPostgres {
    /// Stops the server at once (a primary the link to is lost).
    pub(crate) fn kill(self) {
        drop(self);
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl TempPostgres {
    fn stop(&self) {
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

impl TempPostgres {
    /// A new, empty database on this server; its URL.
    pub(crate) fn new_database(&self) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("t{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let status = Command::new(self.bin.join("psql"))
            .args([self.url.as_str(), "-q", "-c", &format!("CREATE DATABASE {name}")])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("psql");
        assert!(status.success(), "CREATE DATABASE {name}: {status}");
        self.url.replace("/postgres", &format!("/{name}"))
    }
}

/// Whether this run tests the PostgreSQL backend (`COTEJO_TEST_STORE=postgres`).
pub(crate) fn selected() -> bool {
    std::env::var("COTEJO_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The server every test of a PostgreSQL run shares (a database each),
/// stopped when the test process exits.
pub(crate) fn shared() -> &'static TempPostgres {
    static SERVER: std::sync::OnceLock<TempPostgres> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        extern "C" fn stop_at_exit() {
            if let Some(s) = SERVER.get() {
                s.stop();
            }
        }
        #[allow(unsafe_code)]
        // SAFETY: registers a plain function to run at exit; it only spawns pg_ctl.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        TempPostgres::start()
    })
}

/// The database of a test's data directory on the shared server (made
/// on first use: a restarted test server finds its records again).
pub(crate) fn database_of(data_dir: &Path) -> String {
    static DATABASES: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(Vec::new());
    let mut known = DATABASES.lock().expect("databases");
    if let Some((_, url)) = known.iter().find(|(d, _)| d == data_dir) {
        return url.clone();
    }
    let url = shared().new_database();
    known.push((data_dir.to_owned(), url.clone()));
    url
}

/// Overrides that put a test server's records in the database of its data
/// directory on the shared server, when this run tests PostgreSQL.
pub(crate) fn overrides(data_dir: &Path) -> Vec<(String, String)> {
    if !selected() {
        return Vec::new();
    }
    vec![
        ("COTEJO__STORE__URL".into(), database_of(data_dir)),
        ("COTEJO__STORE__ENCRYPTION_KEY".into(), "42".repeat(32)),
    ]
}

/// Runs one SQL statement on the records of `data_dir` (SQLite, or its
/// PostgreSQL database in a PostgreSQL run); the rows it changed.
pub(crate) fn execute(data_dir: &Path, sql: &str) -> u64 {
    if !selected() {
        let db = rusqlite::Connection::open(data_dir.join("cotejo.db")).expect("open");
        return db.execute(sql, []).expect(sql) as u64;
    }
    let url = database_of(data_dir);
    let out = Command::new(shared().bin.join("psql"))
        .args([
            url.as_str(),
            "-q",
            "-t",
            "-A",
            "-c",
            &format!("WITH changed AS ({sql} RETURNING 1) SELECT count(*) FROM changed"),
        ])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("a count")
}

/// Every audit entry of the records of `data_dir`, oldest first.
pub(crate) fn audit_entries(data_dir: &Path) -> Vec<cotejo::store::AuditEntry> {
    if !selected() {
        return cotejo::store::AuditReader::open(data_dir).expect("audit reader").entries(1, 100_000).expect("entries");
    }
    let url = database_of(data_dir);
    // Read on a runtime of its own: callers may be inside a test's runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
            tokio::spawn(connection);
            cotejo::store::postgres::audit_entries(&client, 1, 100_000).await.expect("entries")
        })
    })
    .join()
    .expect("audit read")
}

/// True (and says why) when this PostgreSQL run skips a test of the
/// embedded store's own parts.
pub(crate) fn sqlite_only(why: &str) -> bool {
    if selected() {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    selected()
}
