//! A transaction-pooling pgbouncer in front of a Postgres server, for tests of several
//! `kahn serve` processes on one database (DESIGN.md "Scale-out": a transaction-pooling
//! pgbouncer in front changes nothing).
//!
//! [`PgBouncer::start`] writes a config into a temporary directory, starts Debian's
//! `pgbouncer` (installed by `scripts/ensure-pgbouncer.sh`) on a free loopback port in
//! `pool_mode = transaction`, waits until it accepts connections, and kills and reaps it on
//! drop. No binary → the test **fails**, naming the script; it never skips.
//!
//! The config is the one `kahn-pg/README.md` ("Running several servers") documents for a
//! pgbouncer without prepared-statement support (Debian 12 ships 1.18): sqlx's statements are
//! parsed anew in every transaction (`statement-cache-capacity=0` in the DSN, see
//! [`PgBouncer::url_as`]) and the server's prepared statements are dropped when a transaction
//! hands its server connection back (`server_reset_query = DEALLOCATE ALL`,
//! `server_reset_query_always = 1`).

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kahn_pg::PgConnectOptions;

/// The script that installs pgbouncer.
pub const PGBOUNCER_SCRIPT: &str = "scripts/ensure-pgbouncer.sh";

/// Server connections pgbouncer opens per database and role: few, so that the servers'
/// pooled connections (10 each) really share them.
pub const DEFAULT_POOL_SIZE: u32 = 8;

/// A running pgbouncer in transaction pool mode; killed and reaped on drop.
#[derive(Debug)]
pub struct PgBouncer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    // Holds the config, the auth file and the log until pgbouncer is gone.
    _dir: tempfile::TempDir,
}

/// The pgbouncer binary: `$PGBOUNCER_BIN`, else `pgbouncer` on the `PATH`, else Debian's
/// `/usr/sbin/pgbouncer`.
fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("PGBOUNCER_BIN") {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("pgbouncer")).find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"))
}

/// Whether this process runs as root (pgbouncer refuses to, unless told which user to become).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener.local_addr().expect("its address").port()
}

impl PgBouncer {
    /// Starts pgbouncer in front of `upstream`'s host and port (any database, logging in as
    /// the client's role: the upstream's own authentication applies; `kahn_app` is given
    /// `KAHN_TEST_PG_APP_PASSWORD` when set), in transaction pool mode with
    /// [`DEFAULT_POOL_SIZE`] server connections per database and role.
    ///
    /// # Panics
    ///
    /// When the binary is missing (naming `scripts/ensure-pgbouncer.sh`), or pgbouncer exits
    /// or does not accept connections within 10 s (with its log).
    pub fn start(upstream: &PgConnectOptions) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for pgbouncer");
        let auth = dir.path().join("users.txt");
        let app_password = std::env::var("KAHN_TEST_PG_APP_PASSWORD").unwrap_or_default();
        let quoted = |s: &str| s.replace('"', "\"\"");
        let mut users = format!("\"{}\" \"\"\n", quoted(upstream.get_username()));
        let _ = writeln!(users, "\"{}\" \"{}\"", kahn_pg::APP_ROLE, quoted(&app_password));
        std::fs::write(&auth, users).expect("write pgbouncer's auth file");

        let port = free_port();
        let config = dir.path().join("pgbouncer.ini");
        let text = format!(
            "[databases]\n\
             * = host={host} port={upstream_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = transaction\n\
             max_client_conn = 1000\n\
             default_pool_size = {DEFAULT_POOL_SIZE}\n\
             server_reset_query = DEALLOCATE ALL\n\
             server_reset_query_always = 1\n\
             ignore_startup_parameters = extra_float_digits\n",
            host = upstream.get_host(),
            upstream_port = upstream.get_port(),
            auth = auth.display(),
        );
        std::fs::write(&config, text).expect("write pgbouncer's config");

        let log = dir.path().join("pgbouncer.log");
        let log_file = std::fs::File::create(&log).expect("create pgbouncer's log");
        let err_file = log_file.try_clone().expect("clone the log's handle");
        let bin = binary();
        let mut cmd = Command::new(&bin);
        if running_as_root() {
            // The config was read before it drops to `nobody`; it writes only to stderr.
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg(&config).stdin(Stdio::null()).stdout(log_file).stderr(err_file);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "\n\nThis test needs pgbouncer and found none at {}: {e}\n\
                 Install it with\n    bash {PGBOUNCER_SCRIPT}\n\
                 or set PGBOUNCER_BIN.\n\n",
                bin.display()
            ),
            Err(e) => panic!("start {}: {e}", bin.display()),
        };
        let mut bouncer = PgBouncer { child: Some(child), port, log, _dir: dir };
        bouncer.wait_until_accepting(Duration::from_secs(10));
        bouncer
    }

    fn wait_until_accepting(&mut self, patience: Duration) {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("pgbouncer exited at startup ({status}):\n{}", self.log());
            }
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("pgbouncer did not accept connections within {patience:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The loopback port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A DSN of `database` through this pgbouncer as `role` (with `KAHN_TEST_PG_APP_PASSWORD`
    /// as the password of `kahn_app` when set), with `statement-cache-capacity=0`: sqlx keeps
    /// no prepared statement from one transaction to the next, which may run on another
    /// server connection.
    pub fn url_as(&self, database: &str, role: &str) -> String {
        let password = match std::env::var("KAHN_TEST_PG_APP_PASSWORD") {
            Ok(pw) if role == kahn_pg::APP_ROLE => format!(":{}", encode(&pw)),
            _ => String::new(),
        };
        format!(
            "postgres://{}{password}@127.0.0.1:{}/{}?statement-cache-capacity=0",
            encode(role),
            self.port,
            encode(database)
        )
    }

    /// What pgbouncer has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("<no log: {e}>"))
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a DSN's parts.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
