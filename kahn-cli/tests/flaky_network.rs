//! The pusher against what networks do: a reverse proxy answering 502 and 504 at random in
//! front of a real `kahn serve`, a server that is not up yet when the push starts, a host name
//! that does not resolve, TLS spoken to a plain server, and a server that is not KAHN.
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there
//!
//! The proxy is a real HTTP/1.1 proxy on a loopback port (one request per connection): it
//! either answers an HTML error page itself, as nginx does when its upstream fails, or
//! forwards the request to the server and its answer back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kahn_testkit::KahnServer;

const KAHN: &str = env!("CARGO_BIN_EXE_kahn");

/// What the proxy does with a request.
#[derive(Clone, Copy)]
enum Mode {
    /// 502 or 504 at random, never more than two in a row; else forwards.
    Flaky,
    /// Answers every request with a web server's HTML 404 page (not KAHN's JSON).
    NotKahn,
}

struct Proxy {
    addr: SocketAddr,
    failed: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

impl Proxy {
    fn start(listener: TcpListener, upstream: SocketAddr, mode: Mode) -> Self {
        let addr = listener.local_addr().unwrap();
        let (failed, forwarded, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (f, w, s) = (failed.clone(), forwarded.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
            let mut in_a_row = 0;
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                // xorshift: a fresh choice per request.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let fail = match mode {
                    Mode::NotKahn => Some(404),
                    Mode::Flaky if in_a_row < 2 && rng.is_multiple_of(2) => {
                        Some(if rng.is_multiple_of(4) { 502 } else { 504 })
                    }
                    Mode::Flaky => None,
                };
                in_a_row = if fail.is_some() { in_a_row + 1 } else { 0 };
                if fail.is_some() {
                    f.fetch_add(1, Ordering::SeqCst);
                } else {
                    w.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::spawn(move || serve_one(conn, upstream, fail));
            }
        });
        Self { addr, failed, forwarded, stop }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// Reads one request from `conn`; answers `fail` or forwards it to `upstream`.
fn serve_one(conn: TcpStream, upstream: SocketAddr, fail: Option<u16>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let lower = line.to_ascii_lowercase();
        assert!(
            !lower.starts_with("transfer-encoding"),
            "the proxy reads Content-Length bodies only"
        );
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut conn = conn;
    if let Some(status) = fail {
        let reason = match status {
            502 => "Bad Gateway",
            504 => "Gateway Time-out",
            _ => "Not Found",
        };
        let page = format!(
            "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n{}</body>\r\n</html>\r\n",
            "<!-- a padding comment as real error pages have -->\r\n".repeat(20)
        );
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        return;
    }
    let Ok(mut up) = TcpStream::connect(upstream) else { return };
    if up.write_all(&head).and_then(|()| up.write_all(&body)).is_err() {
        return;
    }
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let _ = conn.write_all(&answer);
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("kahn.db").display())
    }

    fn kahn(&self, args: &[&str]) -> Output {
        Command::new(KAHN)
            .args(args)
            .env("KAHN_DATABASE_URL", self.db())
            .env("KAHN_CACHE_DIR", self.dir.path().join("cache"))
            .env_remove("KAHN_URL")
            .env_remove("KAHN_API_KEY")
            .output()
            .unwrap()
    }

    fn key(&self) -> String {
        let out = self.kahn(&["tenant", "provision", "choco", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["api_key"].as_str().unwrap().to_owned()
    }

    fn run_dir(&self, name: &str, n: usize) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_lines(&dir.join("transitions.ndjson"), n);
        dir
    }
}

fn write_lines(path: &Path, n: usize) {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-11-23T09:{:02}:{:02}Z\",\"node\":\"n{}\",\"to\":\"running\",\"attrs\":{{\"i\":{i},\"pad\":\"{}\"}}}}\n",
                (i / 60) % 60,
                i % 60,
                i % 7,
                "y".repeat(200)
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn upstream(server: &KahnServer) -> SocketAddr {
    server.url().trim_start_matches("http://").parse().unwrap()
}

/// A push through a proxy that answers 502/504 to about half the requests (a first call
/// included) finishes, retrying each, and what is stored is exactly the file.
#[test]
fn a_push_through_a_proxy_answering_502_and_504_at_random_finishes_exactly() {
    let env = Env::new();
    let key = env.key();
    let server = KahnServer::builder(KAHN).db(env.db()).start();
    let proxy =
        Proxy::start(TcpListener::bind("127.0.0.1:0").unwrap(), upstream(&server), Mode::Flaky);
    let run = env.run_dir("through-proxy", 2000);
    let out = env.kahn(&[
        "push",
        run.to_str().unwrap(),
        "--url",
        &proxy.url(),
        "--key",
        &key,
        "--json",
        "--chunk-bytes",
        "65536",
        "--max-retries",
        "10",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["next_seq"].as_u64(), Some(2000), "{report}");
    let failed = proxy.failed.load(Ordering::SeqCst);
    assert!(failed >= 3, "the proxy failed {failed} requests");
    assert!(proxy.forwarded.load(Ordering::SeqCst) >= 5);
    // Stored exactly: the chain verifies in the database itself, and a second push adds nothing.
    let verify = env.kahn(&["verify", "through-proxy", "--key", &key]);
    assert!(text(&verify).starts_with("OK"), "{}", text(&verify));
    let again = env.kahn(&["push", run.to_str().unwrap(), "--key", &key, "--json"]);
    let again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(again["appended"].as_u64(), Some(0), "{again}");
}

/// The server is not up when the push starts: its first call is retried with backoff, and
/// the push completes once the server answers.
#[test]
fn a_push_started_before_its_server_waits_for_it() {
    let env = Env::new();
    let key = env.key();
    let run = env.run_dir("early", 50);
    // A port nothing listens on yet.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(KAHN)
        .args([
            "push",
            run.to_str().unwrap(),
            "--url",
            &url,
            "--key",
            &key,
            "--json",
            "--max-retries",
            "8",
        ])
        .env("KAHN_CACHE_DIR", env.dir.path().join("cache"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let server = KahnServer::builder(KAHN).db(env.db()).start();
    let _proxy = Proxy::start(
        TcpListener::bind(("127.0.0.1", port)).unwrap(),
        upstream(&server),
        Mode::Flaky,
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["next_seq"].as_u64(), Some(50), "{report}");
    assert!(report["retries"].as_u64().is_some(), "{report}");
    assert!(text(&out).contains("retry"), "the waits are said: {}", text(&out));
}

/// Failures no retry can mend say what they are, at once, instead of "unavailable; retry
/// later": a name that does not resolve, https to a plain server, a server that is not KAHN
/// (its page summarised, not dumped).
#[test]
fn failures_a_retry_cannot_mend_say_what_they_are() {
    let env = Env::new();
    let key = env.key();
    let run = env.run_dir("nowhere", 5);
    let push = |url: &str| {
        let started = std::time::Instant::now();
        let out = env.kahn(&[
            "push",
            run.to_str().unwrap(),
            "--url",
            url,
            "--key",
            &key,
            "--max-retries",
            "5",
        ]);
        (out, started.elapsed())
    };
    let (out, took) = push("http://kahn-nowhere.invalid:8080");
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("does not resolve") && said.contains("kahn-nowhere.invalid"), "{said}");
    assert!(!said.contains("retry later"), "{said}");
    assert!(took < Duration::from_secs(5), "not retried: {took:?}");

    let server = KahnServer::builder(KAHN).db(env.db()).start();
    let tls = server.url().replace("http://", "https://");
    let (out, took) = push(&tls);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("TLS") && said.contains("http://"), "{said}");
    assert!(took < Duration::from_secs(5), "not retried: {took:?}");

    let not_kahn =
        Proxy::start(TcpListener::bind("127.0.0.1:0").unwrap(), upstream(&server), Mode::NotKahn);
    let (out, _) = push(&not_kahn.url());
    let said = text(&out);
    assert!(!out.status.success());
    assert!(said.contains("not KAHN") && said.contains("404"), "{said}");
    assert!(said.len() < 800, "the page is summarised, not dumped: {said}");
}
