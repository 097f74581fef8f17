//! End-to-end on PostgreSQL: `kahn migrate` and `kahn tenant provision` with the admin DSN,
//! `kahn serve` with the app DSN (refused with the admin's), and pushes through the server and
//! straight into the database as the app role, under Row-Level Security.

#![allow(clippy::unwrap_used)] // test setup: a failed step should panic right there

#[path = "../../kahn-pg/tests/support/mod.rs"]
mod pg_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn kahn(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kahn"));
    cmd.args(args)
        .env_remove("KAHN_DATABASE_URL")
        .env_remove("KAHN_URL")
        .env_remove("KAHN_API_KEY")
        .env("KAHN_CACHE_DIR", std::env::temp_dir().join("kahn-test-resume-cache"));
    if let Some(key) = key {
        cmd.env("KAHN_API_KEY", key);
    }
    cmd.output().unwrap()
}

fn ok(args: &[&str], key: Option<&str>) -> String {
    let out = kahn(args, key);
    assert!(out.status.success(), "kahn {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `url` with its database replaced by `db` and, when given, its user by `user`.
fn dsn(db: &str, user: Option<&str>) -> String {
    let admin = pg_support::admin_url();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let base = match user {
        Some(user) => {
            let (scheme, rest) = base.split_once("://").unwrap();
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://{user}@{host}")
        }
        None => base.to_owned(),
    };
    format!("{base}/{db}")
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_provision_serve_and_push_on_postgres() {
    let (db, _admin) = pg_support::TestDb::new().await;
    let admin = dsn(&db.name, None);
    let app = dsn(&db.name, Some(kahn_pg::APP_ROLE));
    assert!(ok(&["migrate", "--db", &admin], None).contains("schema is current"));
    let provisioned: serde_json::Value = serde_json::from_str(&ok(
        &["tenant", "provision", "pg-team", "--db", &admin, "--json"],
        None,
    ))
    .unwrap();
    let key = provisioned["api_key"].as_str().unwrap().to_owned();

    // The server refuses the admin DSN: RLS would not protect the data.
    let refused = kahn(&["serve", "--db", &admin, "--listen", "127.0.0.1:0"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("kahn_app"));

    let mut server = Command::new(env!("CARGO_BIN_EXE_kahn"))
        .args(["serve", "--db", &app, "--listen", "127.0.0.1:0", "--retention-interval-secs", "0"])
        .env("KAHN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap());
    let mut banner = String::new();
    out.read_line(&mut banner).unwrap();
    let url = banner.split_whitespace().find(|w| w.starts_with("http://")).unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg-run.ndjson");
    let text: String = (0..2500)
        .map(|i| {
            format!(
                "{{\"ts\":\"2026-11-23T09:00:{:02}Z\",\"to\":\"s{}\",\"attrs\":{{\"i\":{i}}}}}\n",
                i % 60,
                i % 3
            )
        })
        .collect();
    std::fs::write(&file, text).unwrap();
    let first: serde_json::Value = serde_json::from_str(&ok(
        &["push", file.to_str().unwrap(), "--url", &url, "--json"],
        Some(&key),
    ))
    .unwrap();
    assert_eq!(first["appended"].as_u64(), Some(2500));
    let again: serde_json::Value = serde_json::from_str(&ok(
        &["push", file.to_str().unwrap(), "--db", &app, "--json"],
        Some(&key),
    ))
    .unwrap();
    assert_eq!(
        (again["appended"].as_u64(), again["already_stored"].as_u64()),
        (Some(0), Some(2500))
    );
    assert_eq!(again["head_hash"], first["head_hash"]);
    assert!(ok(&["verify", "pg-run", "--url", &url], Some(&key)).starts_with("OK"));
    assert!(ok(&["verify", "pg-run", "--db", &app], Some(&key)).starts_with("OK"));

    // Operators' commands need the admin DSN: the app role cannot provision.
    let out = kahn(&["tenant", "provision", "other", "--db", &app], None);
    assert!(!out.status.success());
    let _ = server.kill();
    let _ = server.wait();
    drop(out);
}
