//! End-to-end on PostgreSQL: `kahn migrate` and `kahn tenant provision` with the admin DSN,
//! `kahn serve` with the app DSN (refused with the admin's), and pushes through the server and
//! straight into the database as the app role, under Row-Level Security.

#![allow(clippy::unwrap_used)] // test setup: a failed step should panic right there

use std::process::{Command, Output};
use std::time::Duration;

use kahn_testkit::{KahnServer, ServerStderr, TestDb};

/// The `kahn` binary cargo built for these tests.
const KAHN: &str = env!("CARGO_BIN_EXE_kahn");

fn kahn(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(KAHN);
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
    let admin = kahn_testkit::admin_url();
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
    let (db, _admin) = TestDb::new().await;
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

    let server = KahnServer::start(KAHN, &app);
    let url = server.url().to_owned();

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
    drop(server);
    drop(out);
}

/// `dsn` with `password` in its user info (replacing any there).
fn with_password(dsn: &str, password: &str) -> String {
    let (scheme, rest) = dsn.split_once("://").unwrap();
    let (user, host) = rest.rsplit_once('@').unwrap();
    let user = user.split_once(':').map_or(user, |(u, _)| u);
    format!("{scheme}://{user}:{password}@{host}")
}

fn assert_hidden(what: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows the password {secret:?}:\n{text}");
    }
}

/// The red team's finding: `kahn serve` printed the app DSN's password twice (and told
/// Postgres users to provision with it), `kahn migrate` the admin's. No output, log line or
/// error shows a password, wherever it sits in the DSN.
#[tokio::test(flavor = "multi_thread")]
async fn no_output_log_or_error_shows_a_dsn_password() {
    let (db, _admin) = TestDb::new().await;
    // Trust auth accepts any password; a server that checks them gets the real ones.
    let admin_pw = kahn_testkit::admin_url()
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map_or_else(|| "AdminPw-7c41d9e2".to_owned(), |(_, pw)| pw.to_owned());
    let app_pw =
        std::env::var("KAHN_TEST_PG_APP_PASSWORD").unwrap_or_else(|_| "AppPw-52b8f0aa".to_owned());
    let secrets = [admin_pw.as_str(), app_pw.as_str(), "QueryPw-1e6b"];
    let admin = with_password(&dsn(&db.name, None), &admin_pw);
    let app = with_password(&dsn(&db.name, Some(kahn_pg::APP_ROLE)), &app_pw);

    // migrate: the admin DSN, its password in the user info, then in the query.
    let out = kahn(&["migrate", "--db", &admin], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_hidden(
        "kahn migrate",
        &format!("{shown}{}", String::from_utf8_lossy(&out.stderr)),
        &secrets,
    );
    assert!(shown.contains(":***@"), "the DSN is still named, redacted: {shown}");
    let in_query = format!("{}?sslmode=disable&password=QueryPw-1e6b", dsn(&db.name, None));
    let out = kahn(&["migrate", "--db", &in_query], None);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert_hidden("kahn migrate (password in the query)", &text, &secrets);
    assert!(text.contains("password=***"), "{text}");
    // An error from the driver: no such database.
    let nowhere = with_password(&dsn(&format!("{}_missing", db.name), None), &admin_pw);
    let out = kahn(&["migrate", "--db", &nowhere], None);
    assert!(!out.status.success());
    assert_hidden("a failed kahn migrate", &String::from_utf8_lossy(&out.stderr), &secrets);
    // An unsupported scheme is named back, redacted.
    let out = kahn(&["serve", "--db", &format!("mysql://root:{app_pw}@h/db")], None);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_hidden("kahn serve on an unsupported URL", &text, &secrets);
    assert!(text.contains("mysql://root:***@h/db"), "{text}");
    // `--help` does not show the DSN from the environment.
    let help = Command::new(KAHN)
        .args(["serve", "--help"])
        .env("KAHN_DATABASE_URL", &app)
        .output()
        .unwrap();
    assert_hidden("kahn serve --help", &String::from_utf8_lossy(&help.stdout), &secrets);

    // serve: the banner, then the logs of a request, at debug level.
    let provisioned: serde_json::Value = serde_json::from_str(&ok(
        &["tenant", "provision", "pw-team", "--db", &admin, "--json"],
        None,
    ))
    .unwrap();
    let key = provisioned["api_key"].as_str().unwrap().to_owned();
    let server = KahnServer::builder(KAHN)
        .db(&app)
        .env("KAHN_LOG", "debug")
        .stderr(ServerStderr::Capture)
        .start();
    let banner = server.wait_for_stdout("openapi.json", Duration::from_secs(30));
    assert!(ok(&["runs", "list", "--url", server.url()], Some(&key)).contains("no runs yet"));
    let logs = server.stop();
    assert_hidden("the kahn serve banner", &banner, &secrets);
    assert_hidden("the kahn serve logs", &logs, &secrets);
    assert!(banner.contains("kahn_app:***@"), "the banner names the database: {banner}");
    // Provisioning needs the admin DSN: the hint does not offer the app DSN.
    assert!(
        banner.contains("kahn tenant provision my-team --db <admin DSN>"),
        "the hint names the admin DSN: {banner}"
    );
}

/// `kahn verify` on Postgres, as on SQLite: a store altered behind KAHN's back exits 3 with
/// `BROKEN` — a body edited so the chain no longer recomputes (the seq named), and a body that
/// no longer decodes at all (the one corrupt variant, not an unclassified backend error).
#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_3_broken_for_a_store_altered_behind_kahns_back() {
    let (db, admin) = TestDb::new().await;
    let admin_url = dsn(&db.name, None);
    let app = dsn(&db.name, Some(kahn_pg::APP_ROLE));
    let provisioned: serde_json::Value = serde_json::from_str(&ok(
        &["tenant", "provision", "pg-tamper", "--db", &admin_url, "--json"],
        None,
    ))
    .unwrap();
    let key = provisioned["api_key"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tamper.ndjson");
    let text: String = (0..40)
        .map(|i| format!("{{\"ts\":\"2026-11-23T09:00:{:02}Z\",\"to\":\"s{i}\"}}\n", i % 60))
        .collect();
    std::fs::write(&file, text).unwrap();
    ok(&["push", file.to_str().unwrap(), "--db", &app, "--json"], Some(&key));
    assert!(ok(&["verify", "tamper", "--db", &app], Some(&key)).starts_with("OK"));

    let broken = |what: &str, needle: &str| {
        let out = kahn(&["verify", "tamper", "--db", &app], Some(&key));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{what}: {err}");
        assert!(err.contains("BROKEN") && err.contains(needle), "{what}: {err}");
    };
    let edit = |sql: &'static str| {
        let pool = admin.pool().clone();
        async move {
            let done = sqlx_core::query::query(sql).execute(&pool).await.unwrap();
            assert_eq!(done.rows_affected(), 1, "{sql}");
        }
    };
    edit("UPDATE kahn.transitions SET body = replace(body, '\"s17\"', '\"s71\"') WHERE run_id = 'tamper' AND seq = 17").await;
    broken("an edited body", "seq 17");
    edit("UPDATE kahn.transitions SET body = '{not json' WHERE run_id = 'tamper' AND seq = 3")
        .await;
    broken("a body that is not JSON", "seq 3");
}

/// Receipts on Postgres, against an operator with the superuser's connection who rewrites a
/// transition and recomputes every hash in SQL alone (`sha256()` over the stored canonical
/// bodies, the chain by a recursive query, the run's head): `kahn verify` sees a sound chain,
/// `kahn verify --receipt` sees the rewrite, and so does `kahn audit` from a checkpoint kept
/// before it to the next one.
#[tokio::test(flavor = "multi_thread")]
async fn a_rewrite_recomputed_in_sql_passes_the_chain_but_not_the_receipt_nor_the_audit() {
    let (db, admin) = TestDb::new().await;
    let admin_url = dsn(&db.name, None);
    let app = dsn(&db.name, Some(kahn_pg::APP_ROLE));
    let provisioned: serde_json::Value = serde_json::from_str(&ok(
        &["tenant", "provision", "pg-receipts", "--db", &admin_url, "--json"],
        None,
    ))
    .unwrap();
    let key = provisioned["api_key"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let signing_key = dir.path().join("receipt-key.pem");
    ok(&["keygen", signing_key.to_str().unwrap()], None);
    let public = dir.path().join("receipt-key.pem.pub");
    let server = KahnServer::builder(KAHN)
        .db(&app)
        .args(["--receipt-key", signing_key.to_str().unwrap()])
        .start();
    let url = server.url().to_owned();
    let file = dir.path().join("signed.ndjson");
    let text: String = (0..40)
        .map(|i| format!("{{\"ts\":\"2026-11-23T09:00:{:02}Z\",\"to\":\"s{i}\"}}\n", i % 60))
        .collect();
    std::fs::write(&file, text).unwrap();
    let receipt = dir.path().join("signed.receipt.json");
    ok(
        &[
            "push",
            file.to_str().unwrap(),
            "--url",
            &url,
            "--receipt-out",
            receipt.to_str().unwrap(),
        ],
        Some(&key),
    );
    let verify_receipt = || {
        kahn(
            &[
                "verify",
                "signed",
                "--url",
                &url,
                "--receipt",
                receipt.to_str().unwrap(),
                "--public-key",
                public.to_str().unwrap(),
            ],
            Some(&key),
        )
    };
    let out = verify_receipt();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checkpoint = |name: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, ok(&["checkpoint", "--url", &url], Some(&key))).unwrap();
        file
    };
    let before = checkpoint("c1.json");

    for sql in [
        "UPDATE kahn.transitions SET body = replace(body, '\"s17\"', '\"s71\"') \
         WHERE run_id = 'signed' AND seq = 17",
        "UPDATE kahn.transitions SET content_hash = sha256(convert_to(body, 'UTF8')) \
         WHERE run_id = 'signed'",
        "WITH RECURSIVE chain (seq, link) AS ( \
             SELECT t.seq, sha256(decode(repeat('00', 32), 'hex') || t.content_hash) \
             FROM kahn.transitions t WHERE t.run_id = 'signed' AND t.seq = 0 \
           UNION ALL \
             SELECT t.seq, sha256(chain.link || t.content_hash) \
             FROM chain JOIN kahn.transitions t ON t.run_id = 'signed' AND t.seq = chain.seq + 1) \
         UPDATE kahn.transitions t SET chain_hash = chain.link FROM chain \
         WHERE t.run_id = 'signed' AND t.seq = chain.seq",
        "UPDATE kahn.runs SET head_hash = (SELECT chain_hash FROM kahn.transitions \
         WHERE run_id = 'signed' ORDER BY seq DESC LIMIT 1) WHERE run_id = 'signed'",
    ] {
        sqlx_core::query::query(sql).execute(admin.pool()).await.unwrap();
    }
    // The operator's rewrite is invisible to the chain...
    let out = kahn(&["verify", "signed", "--url", &url], Some(&key));
    assert!(
        out.status.success(),
        "the recomputed chain verifies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and caught by the receipt.
    let out = verify_receipt();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no longer extends the receipt") && err.contains("rewritten"), "{err}");
    // ...and by the next checkpoint, which records it (exit 3, the checkpoint still printed),
    // and the audit across it.
    let out = kahn(&["checkpoint", "--url", &url], Some(&key));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ALTERED") && err.contains("the run was rewritten"), "{err}");
    let out = kahn(
        &[
            "audit",
            "--from",
            before.to_str().unwrap(),
            "--url",
            &url,
            "--public-key",
            public.to_str().unwrap(),
        ],
        Some(&key),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("ALTERED") && err.contains("the run was rewritten"), "{err}");
}
