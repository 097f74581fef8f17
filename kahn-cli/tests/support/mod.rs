//! What the `kahn` binary's end-to-end tests share: an environment (a temporary directory,
//! its SQLite database, optionally a real `kahn serve` over it) and run files to push.
// Each test binary uses a part of this module.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)] // test helpers: a failed setup step should panic right there

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kahn_core::{Digest, chain_link, content_hash};
use kahn_testkit::KahnServer;

/// The `kahn` binary cargo built for these tests.
pub const KAHN: &str = env!("CARGO_BIN_EXE_kahn");

pub struct Env {
    /// A `kahn serve` over the same database, when data commands go through HTTP. Declared
    /// before `dir`, so the server is stopped before its directory is removed.
    pub server: Option<KahnServer>,
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self { server: None, dir: tempfile::tempdir().unwrap() }
    }

    /// An environment whose data commands talk to a real `kahn serve` started on a free
    /// loopback port over this environment's database.
    pub fn served(extra: &[&str]) -> Self {
        let mut env = Self::new();
        env.server = Some(KahnServer::builder(KAHN).db(env.db()).args(extra).start());
        env
    }

    pub fn url(&self) -> Option<&str> {
        self.server.as_ref().map(KahnServer::url)
    }

    /// GET `path` from the server, returning the whole response.
    pub fn http_get(&self, path: &str) -> String {
        self.server.as_ref().expect("a served environment").get(path, &[]).1
    }

    pub fn db(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("kahn.db").display())
    }

    pub fn kahn(&self, args: &[&str], key: Option<&str>) -> Output {
        self.kahn_in(args, key, &[])
    }

    /// Runs `kahn` with a clean CI environment plus `vars`.
    pub fn kahn_in(&self, args: &[&str], key: Option<&str>, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(KAHN);
        cmd.args(args).env("KAHN_DATABASE_URL", self.db()).env_remove("KAHN_API_KEY");
        cmd.env("KAHN_CACHE_DIR", self.dir.path().join("cache"));
        match self.url() {
            Some(url) => cmd.env("KAHN_URL", url),
            None => cmd.env_remove("KAHN_URL"),
        };
        for ci in ["GITHUB_ACTIONS", "GITLAB_CI", "KAHN_RUN_ID", "KAHN_RUN_SUFFIX", "KAHN_PROFILES"]
        {
            cmd.env_remove(ci);
        }
        cmd.envs(vars.iter().copied());
        if let Some(key) = key {
            cmd.env("KAHN_API_KEY", key);
        }
        cmd.output().unwrap()
    }

    pub fn ok(&self, args: &[&str], key: Option<&str>) -> String {
        let out = self.kahn(args, key);
        assert!(
            out.status.success(),
            "kahn {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn provision(&self, name: &str, rotate: bool) -> serde_json::Value {
        let mut args = vec!["tenant", "provision", name, "--json"];
        if rotate {
            args.push("--rotate");
        }
        serde_json::from_str(&self.ok(&args, None)).unwrap()
    }

    pub fn key(&self, name: &str) -> String {
        self.provision(name, false)["api_key"]
            .as_str()
            .expect("a first provision issues a key")
            .to_owned()
    }

    /// A run directory with `n` transitions (no seqs or run ids in the lines) and a graph.
    pub fn run_dir(&self, name: &str, n: usize, tag: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        write_lines(&dir.join("transitions.ndjson"), n, tag);
        std::fs::write(
            dir.join("graph.json"),
            r#"{"nodes":["plan","build"],"edges":[["plan","build"]]}"#,
        )
        .unwrap();
        dir
    }
}

pub fn write_lines(path: &Path, n: usize, tag: &str) {
    let text: String = (0..n)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-11-23T09:{:02}:{:02}Z\",\"node\":\"n{}\",\"to\":\"{}\",\"attrs\":{{\"tag\":\"{tag}\",\"i\":{i},\"pad\":\"{}\"}}}}\n",
                (i / 60) % 60,
                i % 60,
                i % 5,
                if i % 2 == 0 { "running" } else { "succeeded" },
                "x".repeat(300)
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

pub fn push_json(env: &Env, path: &Path, key: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["push", path.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&env.ok(&args, Some(key))).unwrap()
}

/// A served environment whose server signs receipts with a fresh key; returns it and the
/// public key file.
pub fn signing_env() -> (Env, PathBuf) {
    let keys = tempfile::tempdir().unwrap().keep();
    let private = keys.join("receipt-key.pem");
    let plain = Env::new();
    plain.ok(&["keygen", private.to_str().unwrap()], None);
    let env = Env::served(&["--receipt-key", private.to_str().unwrap()]);
    (env, keys.join("receipt-key.pem.pub"))
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What an operator with the database file does to hide an edit: change a body, then
/// recompute its content hash, every chain link after it and the run's head, so the stored
/// run verifies again.
pub fn rewrite_with_recomputed_chain(db: &Path, run: &str, seq: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let edited = conn
        .execute(
            "UPDATE transitions SET body = replace(body, '\"to\":\"succeeded\"', '\"to\":\"failed\"') \
             WHERE run_id = ?1 AND seq = ?2",
            rusqlite::params![run, seq],
        )
        .unwrap();
    assert_eq!(edited, 1, "the body was edited");
    let rows: Vec<(i64, String)> = conn
        .prepare("SELECT seq, body FROM transitions WHERE run_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([run], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut head = Digest::ZERO;
    for (seq, body) in rows {
        let content = content_hash(&serde_json::from_str(&body).unwrap()).unwrap();
        head = chain_link(&head, &content);
        conn.execute(
            "UPDATE transitions SET content_hash = ?1, chain_hash = ?2 WHERE run_id = ?3 AND seq = ?4",
            rusqlite::params![&content.as_bytes()[..], &head.as_bytes()[..], run, seq],
        )
        .unwrap();
    }
    conn.execute(
        "UPDATE runs SET head_hash = ?1 WHERE run_id = ?2",
        rusqlite::params![&head.as_bytes()[..], run],
    )
    .unwrap();
}
