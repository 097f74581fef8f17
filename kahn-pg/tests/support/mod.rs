//! Test support: a fresh database per test on the real PostgreSQL server, migrated as the
//! admin, with an app-role backend beside the admin one; dropped when the test ends.
//!
//! The server is `KAHN_TEST_PG_URL` (an admin DSN: a superuser, or a role with CREATEDB and
//! CREATEROLE) or, by default, `postgres://postgres@127.0.0.1:5432/postgres` (the machine's
//! PostgreSQL 15 with trust auth). The app role logs in without a password unless
//! `KAHN_TEST_PG_APP_PASSWORD` is set. No server → the test fails, saying how to get one.

#![allow(dead_code)]

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kahn_pg::{PgBackend, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx_core::connection::Connection;
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::PgConnection;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Test databases older than this are dropped by the next test run (a crashed run leaks none
/// for long; a concurrent run's databases are never touched).
const STALE_AFTER_SECS: u64 = 3600;

static CLEANED: AtomicBool = AtomicBool::new(false);

/// The admin DSN under test.
pub(crate) fn admin_url() -> String {
    std::env::var("KAHN_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn admin_options() -> PgConnectOptions {
    let url = admin_url();
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("KAHN_TEST_PG_URL={url:?} is not a Postgres URL: {e}"))
}

fn unreachable(e: impl std::fmt::Display) -> ! {
    panic!(
        "\n\nThe kahn-pg tests need a real PostgreSQL server and could not reach one at {}: {e}\n\
         Start the machine's cluster with\n    \
         scripts/ensure-postgres.sh\n\
         (or: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)\n\
         or point KAHN_TEST_PG_URL at an admin DSN (a superuser, or a role with CREATEDB and \
         CREATEROLE).\n\n",
        admin_url()
    )
}

/// Set once the server was found unreachable, so every later test fails at once.
static UNREACHABLE: OnceLock<String> = OnceLock::new();

/// A connection to the maintenance database (where databases are created and dropped).
async fn maintenance() -> PgConnection {
    if let Some(e) = UNREACHABLE.get() {
        unreachable(e);
    }
    let opts = admin_options();
    let connect = PgConnection::connect_with(&opts);
    match tokio::time::timeout(Duration::from_secs(10), connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => unreachable(UNREACHABLE.get_or_init(|| e.to_string())),
        Err(_) => unreachable(UNREACHABLE.get_or_init(|| "no answer within 10 s".to_owned())),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A database name only this module generates: `kahn_t_<unix seconds>_<random hex>`.
fn fresh_name() -> String {
    format!("kahn_t_{}_{}", now_secs(), &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn is_generated(name: &str) -> bool {
    name.strip_prefix("kahn_t_").is_some_and(|rest| {
        !rest.is_empty()
            && rest.bytes().all(|b| b.is_ascii_digit() || b == b'_' || b.is_ascii_hexdigit())
    })
}

async fn drop_database(conn: &mut PgConnection, name: &str) {
    assert!(is_generated(name), "refusing to drop {name:?}: not a test database");
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    if let Err(e) = query(AssertSqlSafe(sql)).execute(&mut *conn).await {
        eprintln!("warning: could not drop test database {name}: {e}");
    }
}

async fn drop_stale(conn: &mut PgConnection) {
    if CLEANED.swap(true, Ordering::SeqCst) {
        return;
    }
    let rows = query("SELECT datname::text AS name FROM pg_catalog.pg_database WHERE datname LIKE 'kahn\\_t\\_%'")
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
    let now = now_secs();
    for row in rows {
        let Ok(name) = row.try_get::<String, _>("name") else { continue };
        let born = name
            .strip_prefix("kahn_t_")
            .and_then(|r| r.split('_').next())
            .and_then(|s| s.parse::<u64>().ok());
        if born.is_some_and(|b| b + STALE_AFTER_SECS < now) && is_generated(&name) {
            drop_database(conn, &name).await;
        }
    }
}

/// A fresh, migrated database. Dropping it drops the database (best effort).
#[derive(Debug)]
pub(crate) struct TestDb {
    /// The database's name.
    pub(crate) name: String,
}

impl TestDb {
    /// Creates and migrates a fresh database; returns it with its admin backend.
    pub(crate) async fn new() -> (Self, PgBackend) {
        let (db, admin_pool) = Self::unmigrated().await;
        let admin = PgBackend::admin_from_pool(admin_pool)
            .await
            .unwrap_or_else(|e| panic!("migrate {}: {e}", db.name));
        (db, admin)
    }

    /// Creates a fresh database and migrates nothing; returns it with an admin pool on it.
    pub(crate) async fn unmigrated() -> (Self, PgPool) {
        let mut conn = maintenance().await;
        drop_stale(&mut conn).await;
        let name = fresh_name();
        let sql = format!("CREATE DATABASE \"{name}\"");
        query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let _ = conn.close().await;
        let db = TestDb { name };
        let admin_pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(db.admin_options())
            .await
            .unwrap_or_else(|e| unreachable(e));
        (db, admin_pool)
    }

    /// The admin's connect options for this database.
    pub(crate) fn admin_options(&self) -> PgConnectOptions {
        admin_options().database(&self.name)
    }

    /// Connect options for this database as `role` (no password unless
    /// `KAHN_TEST_PG_APP_PASSWORD` is set).
    pub(crate) fn options_as(&self, role: &str) -> PgConnectOptions {
        let opts = self.admin_options().username(role);
        match std::env::var("KAHN_TEST_PG_APP_PASSWORD") {
            Ok(pw) => opts.password(&pw),
            Err(_) => opts,
        }
    }

    /// A pool on this database as `role`.
    pub(crate) async fn pool_as(&self, role: &str, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.options_as(role))
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {role}: {e}", self.name))
    }

    /// The app-DSN backend (role `kahn_app`), through its startup check.
    pub(crate) async fn app(&self) -> PgBackend {
        self.app_as(kahn_pg::APP_ROLE, 16).await.unwrap_or_else(|e| panic!("app backend: {e}"))
    }

    /// The app-DSN constructor run as `role`: the startup check's verdict.
    pub(crate) async fn app_as(&self, role: &str, max: u32) -> kahn_core::Result<PgBackend> {
        PgBackend::app_from_pool(self.pool_as(role, max).await).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                let mut conn = maintenance().await;
                drop_database(&mut conn, &name).await;
                let _ = conn.close().await;
            });
        })
        .join();
        if done.is_err() {
            eprintln!("warning: dropping a test database panicked");
        }
    }
}

/// A login role created for one negative test, dropped (with everything it owns in the
/// test database) when the test ends. Names are `kahn_t_role_<random>`.
#[derive(Debug)]
pub(crate) struct TestRole {
    /// The role's name.
    pub(crate) name: String,
    db: String,
}

impl TestRole {
    /// Creates a login role with `attributes` (e.g. `BYPASSRLS`), validated against a fixed
    /// list, a member of `kahn_app` (so it holds the app role's grants) in `db`.
    pub(crate) async fn create(db: &TestDb, admin: &PgBackend, attributes: &str) -> Self {
        assert!(
            attributes
                .split_whitespace()
                .all(|a| matches!(a, "BYPASSRLS" | "NOBYPASSRLS" | "SUPERUSER" | "NOSUPERUSER")),
            "unexpected role attributes {attributes:?}"
        );
        let name = format!("kahn_t_role_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let sql = format!("CREATE ROLE \"{name}\" LOGIN {attributes}");
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("create test role");
        // Through kahn_app it holds exactly the app role's designed grants, so the test's one
        // deviation is the only problem the startup check can find.
        let sql = format!("GRANT USAGE ON SCHEMA kahn TO \"{name}\"");
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant usage");
        let sql = format!("GRANT {} TO \"{name}\"", kahn_pg::APP_ROLE);
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant the app role");
        TestRole { name, db: db.name.clone() }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, db) = (std::mem::take(&mut self.name), self.db.clone());
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async {
                // Objects it owns in the test database go first, then the role.
                if let Ok(pool) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(admin_options().database(&db))
                    .await
                {
                    let sql = format!("DROP OWNED BY \"{name}\" CASCADE");
                    let _ = query(AssertSqlSafe(sql)).execute(&pool).await;
                    pool.close().await;
                }
                let mut conn = maintenance().await;
                let sql = format!("DROP ROLE IF EXISTS \"{name}\"");
                if let Err(e) = query(AssertSqlSafe(sql)).execute(&mut conn).await {
                    eprintln!("warning: could not drop test role {name}: {e}");
                }
                let _ = conn.close().await;
            });
        })
        .join();
    }
}
