//! `kahn copy` and `kahn export`, end to end with the real binary: a 100k-transition SQLite
//! store copied into a fresh Postgres database (interrupted, resumed, copied again as a no-op),
//! every head verified there as the app role through a copied key; exports pushed into another
//! tenant; and the refusals, each leaving the target as it was.

#![allow(clippy::unwrap_used)] // test setup: a failed step should panic right there

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use kahn_core::{
    BatchBuilder, RunId, Seq, StorageBackend, StorageBackendExt, TenantId, Transition,
    TransitionBody,
};
use kahn_testkit::TestDb;
use serde_json::Value;
use sqlx_core::query::query;
use sqlx_core::row::Row;

fn kahn(args: &[&str], key: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kahn"));
    cmd.args(args)
        .env_remove("KAHN_DATABASE_URL")
        .env_remove("KAHN_URL")
        .env_remove("KAHN_API_KEY")
        .env("KAHN_CACHE_DIR", std::env::temp_dir().join("kahn-test-copy-cache"));
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

fn json(args: &[&str], key: Option<&str>) -> Value {
    let text = ok(args, key);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("kahn {args:?}: {e}: {text}"))
}

/// A refused command: its exit code and stderr.
fn refused(args: &[&str]) -> (i32, String) {
    let out = kahn(args, None);
    assert!(!out.status.success(), "kahn {args:?} should have failed");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
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

/// A run directory: `n` transitions (a metadata line first when `meta` is given) and, with
/// `graph`, a graph.json.
fn run_dir(root: &Path, name: &str, n: usize, meta: Option<&str>, graph: bool) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::with_capacity(n * 140);
    if let Some(meta) = meta {
        text.push_str(meta);
        text.push('\n');
    }
    for i in 0..n {
        text.push_str(&format!(
            "{{\"ts\":\"2026-11-23T{:02}:{:02}:{:02}.{:03}Z\",\"node\":\"n{}\",\"to\":\"{}\",\"attrs\":{{\"i\":{i},\"f\":{}.25,\"run\":\"{name}\"}}}}\n",
            (i / 3600) % 24,
            (i / 60) % 60,
            i % 60,
            i % 1000,
            i % 7,
            if i % 3 == 0 { "running" } else { "succeeded" },
            i % 100,
        ));
    }
    std::fs::write(dir.join("transitions.ndjson"), text).unwrap();
    if graph {
        std::fs::write(
            dir.join("graph.json"),
            format!(r#"{{"nodes":["plan","build","{name}"],"edges":[["plan","build"]],"w":0.5}}"#),
        )
        .unwrap();
    }
    dir
}

/// One seeded run: its tenant's key and the source's view of it.
#[derive(Debug)]
struct SeededRun {
    tenant: String,
    run_id: String,
    key: String,
    transitions: u64,
    /// `kahn runs show --json` on the source.
    shown: Value,
}

struct Seeded {
    dir: tempfile::TempDir,
    db: String,
    tenants: BTreeMap<String, (TenantId, String)>,
    runs: Vec<SeededRun>,
    /// beta's first key, revoked by a rotation before the copy.
    revoked_key: String,
}

fn provision(db: &str, name: &str, extra: &[&str]) -> (TenantId, String) {
    let mut args = vec!["tenant", "provision", name, "--db", db, "--json"];
    args.extend_from_slice(extra);
    let v = json(&args, None);
    (v["tenant"]["id"].as_str().unwrap().parse().unwrap(), v["api_key"].as_str().unwrap().into())
}

/// A SQLite store: four tenants (one personal, one with 30 days' retention and a rotated key,
/// one without runs), seven runs of 100,000 transitions in all — one of 70,000 with source,
/// labels and graph.
fn seed() -> Seeded {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("source.db").display());
    let mut tenants = BTreeMap::new();
    tenants.insert("alpha".to_owned(), provision(&db, "alpha", &[]));
    let (beta, revoked_key) = provision(&db, "beta", &["--retention-days", "30"]);
    let rotated = json(&["tenant", "provision", "beta", "--rotate", "--db", &db, "--json"], None);
    tenants.insert("beta".to_owned(), (beta, rotated["api_key"].as_str().unwrap().to_owned()));
    tenants.insert("gamma".to_owned(), provision(&db, "gamma", &["--owner-sub", "auth0|gamma"]));
    tenants.insert("delta".to_owned(), provision(&db, "delta", &[]));
    let big_meta = r#"{"kind":"run","source":"choco","labels":{"branch":"main","ci":"github"}}"#;
    let plan: [(&str, &str, usize, Option<&str>, bool); 7] = [
        ("alpha", "big-1", 70_000, Some(big_meta), true),
        ("alpha", "a-small", 5_000, None, false),
        ("beta", "b-1", 5_000, Some(r#"{"kind":"run","labels":{"k":"v"}}"#), false),
        ("beta", "b-2", 5_000, None, true),
        ("beta", "b-3", 5_000, None, false),
        ("gamma", "g-1", 6_000, Some(r#"{"kind":"run","source":"stratt"}"#), true),
        ("gamma", "g-2", 4_000, None, false),
    ];
    let mut runs = Vec::new();
    for (tenant, run, n, meta, graph) in plan {
        let key = tenants[tenant].1.clone();
        let path = run_dir(dir.path(), run, n, meta, graph);
        let pushed = json(
            &["push", path.to_str().unwrap(), "--db", &db, "--json", "--no-resume-cache"],
            Some(&key),
        );
        assert_eq!(pushed["appended"].as_u64(), Some(n as u64));
        let shown = json(&["runs", "show", run, "--db", &db, "--json"], Some(&key));
        runs.push(SeededRun {
            tenant: tenant.into(),
            run_id: run.into(),
            key,
            transitions: n as u64,
            shown,
        });
    }
    assert_eq!(runs.iter().map(|r| r.transitions).sum::<u64>(), 100_000);
    Seeded { dir, db, tenants, runs, revoked_key }
}

/// Appends the first `n` transitions of `run` (and its metadata) from `source` to `target`,
/// as an interrupted copy would have left them.
async fn copy_prefix(
    source: &dyn StorageBackend,
    target: &dyn StorageBackend,
    tenant: TenantId,
    run: &str,
    n: u64,
) {
    let run = RunId::new(run).unwrap();
    target.import_tenant(&source.export_tenant(tenant).await.unwrap()).await.unwrap();
    let read = source.resolve_admin_override(tenant).await.unwrap();
    let write = target.operator_write_scope(tenant).await.unwrap();
    let summary = source.get_run(&read, &run).await.unwrap();
    let mut builder = BatchBuilder::new();
    builder.push_meta(&run, &kahn_cli::copy::source_meta(&summary).unwrap()).unwrap();
    let mut after = None;
    let mut copied = 0;
    while copied < n {
        let page = source.read_transitions(&read, &run, after, 1000).await.unwrap();
        for t in page.into_iter().take((n - copied) as usize) {
            after = Some(t.seq);
            builder
                .push_transition(Transition {
                    run_id: run.clone(),
                    seq: t.seq,
                    body: TransitionBody::new(t.body).unwrap(),
                })
                .unwrap();
            copied += 1;
        }
        if copied % 5000 == 0 || copied == n {
            let batch = std::mem::take(&mut builder).build();
            target.append(&write, &batch).await.unwrap();
        }
    }
    let stored = target.get_run(&write.read(), &run).await.unwrap();
    assert_eq!(stored.info.next_seq, n);
    assert_eq!(after, Some(Seq::new(n - 1).unwrap()));
}

fn totals(report: &Value) -> [u64; 8] {
    let t = &report["totals"];
    [
        "tenants_created",
        "tenants_already_there",
        "runs_copied",
        "runs_resumed",
        "runs_already_complete",
        "runs_failed",
        "transitions_appended",
        "heads_verified",
    ]
    .map(|k| t[k].as_u64().unwrap_or_else(|| panic!("no totals.{k} in {report}")))
}

/// Every file of `dir`, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The done-when test of issue 12: a 100k-transition SQLite store into a fresh Postgres
/// database — interrupted (one tenant first, then half of the large run), resumed, verified
/// as the app role through copied keys, and a second copy that does nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_100k_sqlite_store_copies_to_postgres_resumably_and_verifies_every_head() {
    let started = Instant::now();
    let seeded = seed();
    let seeding = started.elapsed();
    let (db, admin_backend) = TestDb::new().await;
    let (admin, app) = (dsn(&db.name, None), dsn(&db.name, Some(kahn_pg::APP_ROLE)));
    let src = seeded.db.as_str();

    // Interrupted after one tenant: `--tenant beta` alone, human report.
    let copy_started = Instant::now();
    let human = ok(&["copy", "--from", src, "--to", &admin, "--tenant", "beta"], None);
    assert!(human.contains("tenants: 1 created, 0 already there; keys: 2 (2 added)"), "{human}");
    assert!(
        human.contains(
            "runs: 3 copied (0 resumed), 0 already complete, 0 failed; 15000 transitions appended"
        ),
        "{human}"
    );
    assert!(human.contains("heads verified: 3"), "{human}");

    // Interrupted half way through the large run: the target holds its first 30,000.
    let source = kahn_sqlite::SqliteBackend::connect(src).await.unwrap();
    let alpha = seeded.tenants["alpha"].0;
    copy_prefix(&source, &admin_backend, alpha, "big-1", 30_000).await;
    drop(source);

    // The full copy resumes.
    let report = json(&["copy", "--from", src, "--to", &admin, "--json"], None);
    assert_eq!(report["failures"], serde_json::json!([]), "{report}");
    assert_eq!(report["stopped"], false);
    // created gamma and delta; alpha (imported by the interruption) and beta were there.
    // Copied: big-1 (resumed), a-small, g-1, g-2; beta's three already complete.
    assert_eq!(totals(&report), [2, 2, 4, 1, 3, 0, 55_000, 7], "{report}");
    let copy_time = copy_started.elapsed();

    // Every head, as the app role under RLS, through the copied keys.
    for run in &seeded.runs {
        let head = run.shown["head_hash"].as_str().unwrap();
        let verified = ok(&["verify", &run.run_id, "--db", &app], Some(&run.key));
        assert!(verified.starts_with("OK") && verified.contains(head), "{run:?}: {verified}");
        let there = json(&["runs", "show", &run.run_id, "--db", &app, "--json"], Some(&run.key));
        for field in
            ["head_hash", "next_seq", "source", "labels", "graph", "status", "first_ts", "last_ts"]
        {
            assert_eq!(there[field], run.shown[field], "{}/{}: {field}", run.tenant, run.run_id);
        }
    }
    // The key revoked before the copy stays revoked; the tenants' settings came along.
    let out = kahn(&["runs", "list", "--db", &app], Some(&seeded.revoked_key));
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = json(&["tenant", "list", "--db", &admin, "--json"], None);
    let by_name = |name: &str| {
        listed.as_array().unwrap().iter().find(|t| t["name"] == name).cloned().unwrap()
    };
    assert_eq!(by_name("beta")["retention_days"], 30);
    assert_eq!(by_name("gamma")["owner_sub"], "auth0|gamma");
    assert_eq!(by_name("alpha")["id"], alpha.to_string());
    assert_eq!(by_name("delta")["run_count"], 0);

    // A second copy is a no-op.
    let again = json(&["copy", "--from", src, "--to", &admin, "--json"], None);
    assert_eq!(totals(&again), [0, 4, 0, 0, 7, 0, 0, 7], "{again}");
    assert_eq!(again["totals"]["keys_added"], 0);

    // Both stores export the same bytes.
    let (from_sqlite, from_pg) =
        (seeded.dir.path().join("export-sqlite"), seeded.dir.path().join("export-pg"));
    ok(&["export", "--tenant", "gamma", "--db", src, "--out", from_sqlite.to_str().unwrap()], None);
    ok(&["export", "--tenant", "gamma", "--db", &admin, "--out", from_pg.to_str().unwrap()], None);
    let exported = files(&from_sqlite);
    assert_eq!(exported.keys().collect::<Vec<_>>(), ["g-1.ndjson", "g-2.ndjson"]);
    assert!(exported == files(&from_pg), "the exports of both stores differ");

    // And back: Postgres into a fresh SQLite file, one tenant.
    let back = format!("sqlite://{}", seeded.dir.path().join("back.db").display());
    ok(&["migrate", "--db", &back], None);
    let returned =
        json(&["copy", "--from", &admin, "--to", &back, "--tenant", "gamma", "--json"], None);
    assert_eq!(totals(&returned), [1, 0, 2, 0, 0, 0, 10_000, 2], "{returned}");
    let from_back = seeded.dir.path().join("export-back");
    ok(&["export", "--tenant", "gamma", "--db", &back, "--out", from_back.to_str().unwrap()], None);
    assert!(exported == files(&from_back), "the export after the round trip differs");
    eprintln!(
        "seeding {seeding:.1?}, copies {copy_time:.1?}, whole test {:.1?}",
        started.elapsed()
    );
}

/// `kahn export` writes files `kahn push` accepts as they are: pushed into another tenant they
/// reproduce every head and the metadata; exported again, the bytes are the same.
#[test]
fn exported_runs_pushed_into_another_tenant_reproduce_their_heads() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("kahn.db").display());
    let (_, alpha) = provision(&db, "alpha", &[]);
    let meta = r#"{"kind":"run","source":"choco","labels":{"ci":"github","pr":"42"}}"#;
    let with_meta = run_dir(dir.path(), "nightly-1", 3000, Some(meta), true);
    let plain = run_dir(dir.path(), "plain:2", 700, None, false);
    for path in [&with_meta, &plain] {
        json(&["push", path.to_str().unwrap(), "--db", &db, "--json"], Some(&alpha));
    }
    let out = dir.path().join("out");
    let report = json(
        &["export", "--tenant", "alpha", "--db", &db, "--out", out.to_str().unwrap(), "--json"],
        None,
    );
    assert_eq!(report["transitions"], 3700, "{report}");
    let first = std::fs::read_to_string(out.join("nightly-1.ndjson")).unwrap();
    let head_line: Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(head_line["kind"], "run");
    assert_eq!(head_line["run_id"], "nightly-1");
    assert_eq!(head_line["graph"]["nodes"][2], "nightly-1");
    assert!(first.lines().nth(1).unwrap().starts_with(r#"{"run_id":"nightly-1","seq":0,"#));

    let (_, omega) = provision(&db, "omega", &[]);
    for (run, explicit_id) in [("nightly-1", true), ("plain:2", false)] {
        let file = out.join(format!("{run}.ndjson"));
        let mut args = vec!["push", file.to_str().unwrap(), "--db", &db, "--json"];
        if explicit_id {
            args.extend(["--run-id", run]);
        }
        let pushed = json(&args, Some(&omega));
        let source = json(&["runs", "show", run, "--db", &db, "--json"], Some(&alpha));
        let copy = json(&["runs", "show", run, "--db", &db, "--json"], Some(&omega));
        assert_eq!(pushed["head_hash"], source["head_hash"], "{run}");
        for field in ["head_hash", "next_seq", "source", "labels", "graph", "status"] {
            assert_eq!(copy[field], source[field], "{run}: {field}");
        }
        // Into its own tenant again: everything is already stored.
        let again = json(&["push", file.to_str().unwrap(), "--db", &db, "--json"], Some(&alpha));
        assert_eq!(again["appended"], 0, "{again}");
    }
    // The other tenant's export is the same bytes; one run alone is one file.
    let copied = dir.path().join("copied");
    ok(&["export", "--tenant", "omega", "--db", &db, "--out", copied.to_str().unwrap()], None);
    assert!(files(&out) == files(&copied), "the exports of both tenants differ");
    let one = dir.path().join("one");
    let shown = ok(
        &[
            "export",
            "--tenant",
            "omega",
            "--db",
            &db,
            "--out",
            one.to_str().unwrap(),
            "--run",
            "plain:2",
        ],
        None,
    );
    assert!(shown.contains("exported 1 run(s), 700 transitions"), "{shown}");
    assert_eq!(files(&one).keys().collect::<Vec<_>>(), ["plain:2.ndjson"]);

    // Bad input: an unknown tenant or run, with hints; nothing written.
    let nowhere = dir.path().join("nowhere");
    let (code, err) =
        refused(&["export", "--tenant", "nope", "--db", &db, "--out", nowhere.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(r#"no tenant named "nope""#) && err.contains("kahn tenant list"), "{err}");
    let (code, err) = refused(&[
        "export",
        "--tenant",
        "alpha",
        "--db",
        &db,
        "--out",
        nowhere.to_str().unwrap(),
        "--run",
        "nope",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("run not found: nope"), "{err}");
    assert!(!nowhere.exists());
}

/// What a Postgres database holds of KAHN: its migration versions and its tenants (when it
/// has the tables).
async fn pg_state(db: &TestDb) -> (Vec<i64>, Option<Vec<String>>) {
    let pool = kahn_pg::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(db.admin_options())
        .await
        .unwrap();
    let has = |table: &'static str| {
        let pool = pool.clone();
        async move {
            query("SELECT to_regclass($1) IS NOT NULL AS present")
                .bind(table)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<bool, _>("present")
        }
    };
    let versions = if has("_sqlx_migrations").await {
        query("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<i64, _>("version"))
            .collect()
    } else {
        Vec::new()
    };
    let tenants = if has("kahn.tenants").await {
        Some(
            query("SELECT name FROM kahn.tenants ORDER BY name")
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<String, _>("name"))
                .collect(),
        )
    } else {
        None
    };
    pool.close().await;
    (versions, tenants)
}

/// Unknown tenant, the same database twice, a target with no or an older schema, an app DSN
/// as the target: each refused with what to do, and the target unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_hint_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.db");
    let src = format!("sqlite://{}", path.display());
    let (_, key) = provision(&src, "alpha", &[]);
    let run = run_dir(dir.path(), "r", 100, None, true);
    json(&["push", run.to_str().unwrap(), "--db", &src, "--json"], Some(&key));
    let source_list = ok(&["tenant", "list", "--db", &src, "--json"], None);

    // A migrated, empty Postgres target.
    let (migrated, _admin) = TestDb::new().await;
    let admin = dsn(&migrated.name, None);
    let current: Vec<i64> = kahn_pg::migrator().iter().map(|m| m.version).collect();
    let empty_target = (current.clone(), Some(Vec::<String>::new()));
    assert_eq!(pg_state(&migrated).await, empty_target);

    // An unknown tenant.
    let (code, err) = refused(&["copy", "--from", &src, "--to", &admin, "--tenant", "nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(r#"no tenant named "nope" in the source"#), "{err}");
    assert!(err.contains("hint: `kahn tenant list --db sqlite://"), "{err}");
    assert_eq!(pg_state(&migrated).await, empty_target);

    // The same database as source and target, however spelled.
    for (from, to) in [
        (src.clone(), path.display().to_string()),
        (src.clone(), format!("sqlite:{}", path.display())),
        (admin.clone(), dsn(&migrated.name, Some(kahn_pg::APP_ROLE))),
    ] {
        let (code, err) = refused(&["copy", "--from", &from, "--to", &to]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("--from and --to name the same database"), "{err}");
    }
    assert_eq!(ok(&["tenant", "list", "--db", &src, "--json"], None), source_list);
    assert_eq!(pg_state(&migrated).await, empty_target);

    // A Postgres target with an older schema: refused, not migrated.
    let older = TestDb::empty().await;
    let pool = kahn_pg::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(older.admin_options())
        .await
        .unwrap();
    let previous = current[current.len() - 2];
    kahn_pg::migrator().run_to(previous, &pool).await.unwrap();
    pool.close().await;
    let before = pg_state(&older).await;
    assert_eq!(before.0.last(), Some(&previous));
    let older_url = dsn(&older.name, None);
    let (code, err) = refused(&["copy", "--from", &src, "--to", &older_url]);
    assert_eq!(code, 2, "{err}");
    let newest = current[current.len() - 1];
    assert!(
        err.contains(&format!("schema version {previous} is older than this kahn's ({newest})")),
        "{err}"
    );
    assert!(err.contains(&format!("hint: run `kahn migrate --db {older_url}` first")), "{err}");
    assert_eq!(pg_state(&older).await, before, "the older target was not migrated");

    // A Postgres database with no KAHN schema: refused, nothing created.
    let blank = TestDb::empty().await;
    let blank_url = dsn(&blank.name, None);
    let (code, err) = refused(&["copy", "--from", &src, "--to", &blank_url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no KAHN schema yet"), "{err}");
    assert!(err.contains(&format!("kahn migrate --db {blank_url}")), "{err}");
    assert_eq!(pg_state(&blank).await, (Vec::new(), None));

    // A SQLite target that does not exist yet, or has an older schema: refused, untouched.
    let missing = dir.path().join("new.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let (code, err) = refused(&["copy", "--from", &src, "--to", &missing_url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("kahn migrate --db {missing_url}")), "{err}");
    assert!(!missing.exists(), "the target file was not created");
    let stale = dir.path().join("stale.db");
    {
        let conn = rusqlite::Connection::open(&stale).unwrap();
        let version = kahn_sqlite::SqliteBackend::schema_version() - 1;
        conn.execute_batch(&format!("CREATE TABLE t (x); PRAGMA user_version = {version};"))
            .unwrap();
    }
    let stale_bytes = std::fs::read(&stale).unwrap();
    let stale_url = format!("sqlite://{}", stale.display());
    let (code, err) = refused(&["copy", "--from", &src, "--to", &stale_url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("run `kahn migrate --db {stale_url}` first")), "{err}");
    assert_eq!(std::fs::read(&stale).unwrap(), stale_bytes);

    // A source that does not exist is not created either.
    let ghost = dir.path().join("ghost.db");
    let (code, err) =
        refused(&["copy", "--from", &format!("sqlite://{}", ghost.display()), "--to", &admin]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no such database file"), "{err}");
    assert!(!ghost.exists());

    // The app role as the target: refused (a copy needs the admin DSN), nothing written.
    let app = dsn(&migrated.name, Some(kahn_pg::APP_ROLE));
    let out = kahn(&["copy", "--from", &src, "--to", &app], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("admin DSN"), "{err}");
    assert_eq!(pg_state(&migrated).await, empty_target);
}
