//! The real `kahn serve` binary as a child process on a free loopback port.
//!
//! [`KahnServer`] starts `kahn serve --listen 127.0.0.1:0`, waits for the banner line that
//! names the URL it bound, and exposes it. Its stdout is drained on a thread of its own (so the
//! server never blocks on a full pipe) and kept for [`KahnServer::stdout`]; its stderr (the
//! log) is discarded, captured for [`KahnServer::stop`], or inherited. Dropping the guard
//! kills the process and waits for it: no test leaves a server or a zombie behind.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The `kahn` binary: `KAHN_BIN` when set, else `target/<profile>/kahn` beside the running
/// test or bench executable (which lives in `target/<profile>/deps/`).
///
/// Integration tests of kahn-cli should pass `env!("CARGO_BIN_EXE_kahn")` instead: cargo
/// builds that binary for them. Other crates' tests need it built first
/// (`cargo build -p kahn-cli --bin kahn`).
///
/// # Panics
///
/// When the binary is not there, saying how to build it.
pub fn kahn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("KAHN_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("the path of the running test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("kahn"))
        .unwrap_or_else(|| PathBuf::from("kahn"));
    assert!(
        bin.is_file(),
        "{} not found: build it first (cargo build -p kahn-cli --bin kahn, with --release for \
         cargo bench) or set KAHN_BIN",
        bin.display()
    );
    bin
}

/// What becomes of the server's stderr (its log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServerStderr {
    /// Thrown away (the default).
    #[default]
    Discard,
    /// Kept, and returned by [`KahnServer::stop`] and in a [`StartError`].
    Capture,
    /// Written to the test's own stderr.
    Inherit,
}

/// How to start a [`KahnServer`]; from [`KahnServer::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until start() or try_start()"]
pub struct KahnServerBuilder {
    bin: PathBuf,
    db: Option<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, Option<OsString>)>,
    retention_timer: bool,
    stderr: ServerStderr,
    startup_timeout: Duration,
}

impl KahnServerBuilder {
    /// Serves `db` (`--db`: a `sqlite://` path or a Postgres DSN).
    pub fn db(mut self, db: impl Into<String>) -> Self {
        self.db = Some(db.into());
        self
    }

    /// Adds one argument after `serve --db … --listen 127.0.0.1:0`.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments after `serve --db … --listen 127.0.0.1:0`.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the server (after the defaults: `KAHN_LOG=warn`, and
    /// `KAHN_CONFIG` and `KAHN_DATABASE_URL` removed).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable of the server (`KAHN_LOG` for its default level).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.envs.push((key.as_ref().to_owned(), None));
        self
    }

    /// Keeps the server's retention timer (a purge at start, then hourly). Off by default:
    /// the server is started with `--retention-interval-secs 0` (and, unless its arguments
    /// set one, `--checkpoint-interval-secs 0`: checkpoints only on demand).
    pub fn retention_timer(mut self, on: bool) -> Self {
        self.retention_timer = on;
        self
    }

    /// What becomes of the server's stderr (default: discarded).
    pub fn stderr(mut self, stderr: ServerStderr) -> Self {
        self.stderr = stderr;
        self
    }

    /// How long to wait for the banner naming the URL (default: 60 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts the server and waits for its URL.
    ///
    /// # Errors
    ///
    /// A [`StartError`] when the binary cannot be spawned, or the server exits or stays
    /// silent past the startup timeout without naming a URL (a refused configuration): its
    /// exit code and whatever it wrote (stderr only when captured).
    pub fn try_start(self) -> Result<KahnServer, StartError> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve");
        if let Some(db) = &self.db {
            cmd.args(["--db", db]);
        }
        cmd.args(["--listen", "127.0.0.1:0"]);
        if !self.retention_timer {
            cmd.args(["--retention-interval-secs", "0"]);
        }
        // No periodic checkpoints (a checkpoint at start would race a test's own), unless the
        // test's arguments set an interval.
        if !self.args.iter().any(|a| a == "--checkpoint-interval-secs") {
            cmd.args(["--checkpoint-interval-secs", "0"]);
        }
        cmd.args(&self.args);
        cmd.env("KAHN_LOG", "warn").env_remove("KAHN_CONFIG").env_remove("KAHN_DATABASE_URL");
        for (key, value) in &self.envs {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(match self.stderr {
            ServerStderr::Discard => Stdio::null(),
            ServerStderr::Capture => Stdio::piped(),
            ServerStderr::Inherit => Stdio::inherit(),
        });
        let mut child = cmd.spawn().map_err(|e| StartError {
            status: None,
            reason: format!("could not run {}: {e}", self.bin.display()),
            stdout: String::new(),
            stderr: String::new(),
        })?;

        let stderr = child.stderr.take().map(|mut pipe| {
            std::thread::spawn(move || {
                let mut log = Vec::new();
                let _ = pipe.read_to_end(&mut log);
                log
            })
        });
        let stdout_text = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().map(|pipe| {
            let text = stdout_text.clone();
            std::thread::spawn(move || {
                let mut url_tx = Some(url_tx);
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    // The line is kept before the URL is announced, so that `stdout()` holds
                    // the banner by the time `start` returns.
                    if let Ok(mut t) = text.lock() {
                        t.push_str(&line);
                        t.push('\n');
                    }
                    if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://"))
                        && let Some(tx) = url_tx.take()
                    {
                        let _ = tx.send(url.to_owned());
                    }
                }
            })
        });

        let mut server = KahnServer {
            child,
            url: String::new(),
            stdout_text,
            stdout,
            stderr,
            stderr_mode: self.stderr,
            stopped: false,
        };
        match url_rx.recv_timeout(self.startup_timeout) {
            Ok(url) => {
                server.url = url;
                Ok(server)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = server.child.wait().ok();
                let (stdout, stderr) = server.finish();
                Err(StartError {
                    status,
                    reason: "kahn serve exited without printing its URL".to_owned(),
                    stdout,
                    stderr,
                })
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = server.child.kill();
                let status = server.child.wait().ok();
                let (stdout, stderr) = server.finish();
                Err(StartError {
                    status,
                    reason: format!(
                        "kahn serve printed no URL within {} s (killed)",
                        self.startup_timeout.as_secs()
                    ),
                    stdout,
                    stderr,
                })
            }
        }
    }

    /// Starts the server and waits for its URL.
    ///
    /// # Panics
    ///
    /// When it does not start, with the [`StartError`].
    pub fn start(self) -> KahnServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// A `kahn serve` that did not start.
#[derive(Debug)]
pub struct StartError {
    /// How it ended, when it did.
    pub status: Option<ExitStatus>,
    /// What went wrong, in words.
    pub reason: String,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it logged on stderr (empty unless [`ServerStderr::Capture`]).
    pub stderr: String,
}

impl StartError {
    /// The exit code, when it exited with one.
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.reason)?;
        if let Some(status) = self.status {
            write!(f, " ({status})")?;
        }
        write!(f, "\nstdout: {:?}\nstderr: {:?}", self.stdout, self.stderr)
    }
}

impl std::error::Error for StartError {}

/// A running `kahn serve`, killed and reaped when dropped.
#[derive(Debug)]
pub struct KahnServer {
    child: Child,
    url: String,
    stdout_text: Arc<Mutex<String>>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    stderr_mode: ServerStderr,
    stopped: bool,
}

impl KahnServer {
    /// A builder for a server run by the `kahn` binary at `bin`
    /// (`env!("CARGO_BIN_EXE_kahn")` in kahn-cli's tests, else [`kahn_bin`]).
    pub fn builder(bin: impl Into<PathBuf>) -> KahnServerBuilder {
        KahnServerBuilder {
            bin: bin.into(),
            db: None,
            args: Vec::new(),
            envs: Vec::new(),
            retention_timer: false,
            stderr: ServerStderr::Discard,
            startup_timeout: Duration::from_secs(60),
        }
    }

    /// `kahn serve` over `db` with the defaults: `KAHN_LOG=warn`, no retention timer, stderr
    /// discarded.
    ///
    /// # Panics
    ///
    /// When it does not start.
    pub fn start(bin: impl Into<PathBuf>, db: impl Into<String>) -> Self {
        Self::builder(bin).db(db).start()
    }

    /// The URL it serves, `http://127.0.0.1:<port>`, as its banner printed it.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `<url><path>`.
    pub fn url_of(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://").trim_end_matches('/')
    }

    /// The process id (for `/proc/<pid>/…` probes).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed on stdout so far (the banner).
    pub fn stdout(&self) -> String {
        self.stdout_text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until its stdout contains `needle`; returns the stdout so far.
    ///
    /// # Panics
    ///
    /// When `needle` has not appeared within `timeout`.
    pub fn wait_for_stdout(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stdout();
            if text.contains(needle) {
                return text;
            }
            assert!(Instant::now() < deadline, "kahn serve never printed {needle:?}: {text:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A plain HTTP/1.1 GET of `path` with `headers`, on a connection of its own (no client
    /// library, no pooling); returns the status code (0 when unreadable) and the whole
    /// response, head and body.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or the response cannot be read.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let addr = self.addr();
        let mut conn = std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connect to kahn serve at {addr}: {e}"));
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        conn.write_all(head.as_bytes()).unwrap_or_else(|e| panic!("send GET {path}: {e}"));
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap_or_else(|e| panic!("read GET {path}: {e}"));
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response)
    }

    /// SIGKILL: no graceful shutdown, no flush, nothing; then waits for the process.
    pub fn kill(mut self) {
        self.kill_and_wait();
    }

    /// Kills the server, waits for it, and returns everything it logged (empty unless
    /// started with [`ServerStderr::Capture`]).
    pub fn stop(mut self) -> String {
        self.kill_and_wait();
        let (_, stderr) = self.finish();
        stderr
    }

    fn kill_and_wait(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.stopped = true;
        }
    }

    /// Joins the pipe threads (the process has ended, so both pipes are at their end);
    /// returns stdout and the captured stderr.
    fn finish(&mut self) -> (String, String) {
        self.stopped = true;
        if let Some(t) = self.stdout.take() {
            let _ = t.join();
        }
        let stderr = match self.stderr.take() {
            Some(t) if self.stderr_mode == ServerStderr::Capture => {
                t.join().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
            }
            _ => String::new(),
        };
        (self.stdout(), stderr)
    }
}

impl Drop for KahnServer {
    fn drop(&mut self) {
        self.kill_and_wait();
        let _ = self.finish();
    }
}
