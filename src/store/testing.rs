//! A private PostgreSQL cluster for the test suite and the benches: `initdb` in a temporary
//! folder, `postgres` on a free loopback port, run as the unprivileged `postgres` user when
//! the caller is root (PostgreSQL refuses to run as root). Not used by the gateway itself.
//!
//! A watchdog shell stops the server and removes its folder when the process that started it
//! ends, however it ends, so a test binary that exits without running destructors leaves no
//! server behind.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A running private cluster. Dropping it stops the server and removes its files.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    server: Option<Child>,
}

const INSTALL: &str = "PostgreSQL server binaries not found: install Debian's postgresql \
                       (apt-get install postgresql) or set PG_BIN to the folder holding initdb";

impl PgCluster {
    /// One cluster for the whole process, started on first use; each test takes its own
    /// database in it ([`PgCluster::database`]).
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| match PgCluster::start() {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        })
    }

    /// Starts a new cluster (its own folder and port).
    pub fn start() -> Result<Self, String> {
        let bin = find_bin().ok_or_else(|| INSTALL.to_owned())?;
        let user = if is_root() {
            Some(postgres_user().ok_or("running as root needs the `postgres` user to run PostgreSQL as (Debian's postgresql package makes it)")?)
        } else {
            None
        };
        static CLUSTERS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-pg-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier process with this pid goes.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = user {
            for path in [dir.clone(), dir.join("sock")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let mut cluster = Self {
            dir,
            bin,
            port: free_port()?,
            user,
            server: None,
        };
        let out = cluster
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(cluster.data())
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        cluster.resume()?;
        cluster.psql("postgres", "CREATE ROLE portcullis LOGIN")?;
        cluster.watchdog()?;
        Ok(cluster)
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id (the postmaster).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// A new empty database owned by the `portcullis` role; its URL.
    pub fn database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        if let Err(e) = self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} OWNER portcullis"),
        ) {
            panic!("{e}");
        }
        self.url(&name)
    }

    /// The URL of database `name` for the `portcullis` role.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://portcullis@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `sql` in database `name` as the superuser; psql's output.
    pub fn psql(&self, name: &str, sql: &str) -> Result<String, String> {
        let out = self
            .command("psql")
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                name,
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(format!(
                "psql {sql:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the server (fast shutdown: sessions are cut, committed work is kept).
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            let _ = Command::new("kill")
                .args(["-INT", &server.id().to_string()])
                .status();
            let _ = server.wait();
        }
    }

    /// Starts the server again on the same files and port; returns once it accepts
    /// connections.
    pub fn resume(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("server.log")).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(self.dir.join("server.log"), Some(uid), Some(gid))
                .map_err(|e| e.to_string())?;
        }
        let server = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-c", &format!("port={}", self.port)])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "max_connections=400",
            ])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.join("sock").display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.server = Some(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres did not start: {}",
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command.stdin(Stdio::null());
        if let Some((uid, gid)) = self.user {
            command.uid(uid).gid(gid).env("HOME", &self.dir);
        }
        command
    }

    /// Stops the server and removes the folder once this process is gone.
    fn watchdog(&self) -> Result<(), String> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -INT {pid} 2>/dev/null; \
             while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; rm -rf '{dir}'",
            me = std::process::id(),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(drop)
            .map_err(|e| format!("watchdog: {e}"))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&"postgres") && fields.len() > 3)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    })
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
tokio::task_local! {
    static DIALECT: super::Dialect;
}

/// Runs `test` with [`store_url`] naming a store on `dialect`.
#[cfg(test)]
pub(crate) async fn on<F: std::future::Future>(dialect: super::Dialect, test: F) -> F::Output {
    DIALECT.scope(dialect, test).await
}

/// A fresh empty store for the running test: in-memory SQLite, or a new database in the
/// shared private PostgreSQL cluster when the test runs under [`on`]`(Postgres, ..)`.
#[cfg(test)]
pub(crate) fn store_url() -> String {
    match DIALECT.try_with(|d| *d).unwrap_or(super::Dialect::Sqlite) {
        super::Dialect::Sqlite => "sqlite::memory:".to_owned(),
        super::Dialect::Postgres => PgCluster::shared().database(),
    }
}

/// `store_test! { async fn name() { ... } }`: the test, once on SQLite and once on PostgreSQL
/// (`name::sqlite`, `name::postgres`); the body opens its store from [`store_url`].
#[cfg(test)]
macro_rules! store_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $(#[$meta])*
            #[tokio::test]
            async fn sqlite() {
                $crate::store::testing::on($crate::store::Dialect::Sqlite, async $body).await
            }
            $(#[$meta])*
            #[tokio::test]
            async fn postgres() {
                $crate::store::testing::on($crate::store::Dialect::Postgres, async $body).await
            }
        }
    };
}
#[cfg(test)]
pub(crate) use store_test;
