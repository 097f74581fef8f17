//! A fresh database per test on the real PostgreSQL server, migrated as the admin, with an
//! app-role backend beside the admin one; dropped when the test ends.
//!
//! The server is `KAHN_TEST_PG_URL` (an admin DSN: a superuser, or a role with CREATEDB and
//! CREATEROLE) or, by default, `postgres://postgres@127.0.0.1:5432/postgres` (the machine's
//! PostgreSQL 15 with trust auth). The app role logs in without a password unless
//! `KAHN_TEST_PG_APP_PASSWORD` is set. No server → the test fails, saying how to get one.
//!
//! Databases are named `kahn_t_<unix seconds>_<random hex>`: every test has its own, so tests
//! run in parallel, and a database a crashed run leaked is dropped by a later run once it is
//! an hour old (a concurrent run's databases are never touched).

use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kahn_pg::{PgBackend, PgConnectOptions, PgPool, PgPoolOptions};

use crate::citus::{Citus, CitusDb};
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

/// The admin DSN under test: `KAHN_TEST_PG_URL`, or the machine's PostgreSQL as `postgres`.
pub fn admin_url() -> String {
    std::env::var("KAHN_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

fn admin_options() -> PgConnectOptions {
    let url = admin_url();
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("KAHN_TEST_PG_URL={url:?} is not a Postgres URL: {e}"))
}

/// The message of a test that found no PostgreSQL server: what failed and how to start one.
pub(crate) fn unreachable_message(url: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "\n\nThis test needs a real PostgreSQL server and could not reach one at {url}: {e}\n\
         Start the machine's cluster with\n    \
         scripts/ensure-postgres.sh\n\
         (or: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)\n\
         or point KAHN_TEST_PG_URL at an admin DSN (a superuser, or a role with CREATEDB and \
         CREATEROLE).\n\n"
    )
}

fn unreachable(e: impl std::fmt::Display) -> ! {
    panic!("{}", unreachable_message(&admin_url(), &e))
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

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Twelve random hex digits, for names only this kit generates.
pub(crate) fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// A database name only this module generates: `kahn_t_<unix seconds>_<random hex>`.
fn fresh_name() -> String {
    format!("kahn_t_{}_{}", now_secs(), random_hex())
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

/// Runs `work` to completion on a runtime of its own, on a thread of its own: `Drop` impls run
/// inside the test's runtime, where blocking on another future is not allowed.
pub(crate) fn block_on_side_thread<F>(what: &str, work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let done = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(work);
    })
    .join();
    if done.is_err() {
        eprintln!("warning: {what} panicked");
    }
}

/// Where the test databases live: the environment's choice for [`TestDb::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The PostgreSQL server of [`admin_url`] (the default).
    Postgres,
    /// The local Citus cluster ([`Citus::connect`]): the database is created on the coordinator
    /// and every worker, and migrating it distributes the tables.
    Citus,
}

impl Target {
    /// `KAHN_TEST_PG_TARGET`: `citus` runs every Postgres test of the process on the Citus
    /// cluster (what `scripts/test` does for the conformance suite, the RLS guarantees and the
    /// composition test), anything else or unset on plain PostgreSQL.
    ///
    /// # Panics
    ///
    /// On a value other than `postgres` or `citus`: a typo must not quietly test plain
    /// Postgres twice.
    pub fn from_env() -> Self {
        match std::env::var("KAHN_TEST_PG_TARGET").as_deref() {
            Err(_) | Ok("" | "postgres") => Target::Postgres,
            Ok("citus") => Target::Citus,
            Ok(other) => panic!("KAHN_TEST_PG_TARGET={other:?}: expected `postgres` or `citus`"),
        }
    }
}

/// A fresh database on the test server (or on every node of the Citus cluster), only this
/// test's. Dropping it drops the database (best effort, `WITH (FORCE)`).
#[derive(Debug)]
pub struct TestDb {
    /// The database's name (`kahn_t_<unix seconds>_<random hex>`, or `kahn_c_…` on Citus).
    pub name: String,
    citus: Option<CitusDb>,
}

impl TestDb {
    /// Creates and migrates a fresh database; returns it with its admin backend.
    ///
    /// # Panics
    ///
    /// When no server is reachable (naming `scripts/ensure-postgres.sh`), or creating or
    /// migrating the database fails.
    pub async fn new() -> (Self, PgBackend) {
        Self::new_on(Target::from_env()).await
    }

    /// As [`TestDb::new`], on `target`. On Citus, the migration distributes the tables; this
    /// checks it did, so a test meant for the cluster never runs on local tables.
    ///
    /// # Panics
    ///
    /// As [`TestDb::new`]; on Citus also when the cluster is not up (naming the script that
    /// starts it) or a table was left undistributed.
    pub async fn new_on(target: Target) -> (Self, PgBackend) {
        let (db, admin_pool) = Self::unmigrated_on(target).await;
        let admin = PgBackend::admin_from_pool(admin_pool)
            .await
            .unwrap_or_else(|e| panic!("migrate {}: {e}", db.name));
        if db.citus.is_some() {
            assert_distributed(&admin).await;
        }
        (db, admin)
    }

    /// Creates a fresh database and migrates nothing; returns it with an admin pool on it.
    ///
    /// # Panics
    ///
    /// When no server is reachable, or creating the database fails.
    pub async fn unmigrated() -> (Self, PgPool) {
        Self::unmigrated_on(Target::from_env()).await
    }

    /// As [`TestDb::unmigrated`], on `target`.
    ///
    /// # Panics
    ///
    /// As [`TestDb::unmigrated`].
    pub async fn unmigrated_on(target: Target) -> (Self, PgPool) {
        let db = match target {
            Target::Postgres => Self::empty().await,
            Target::Citus => {
                let citus = Citus::connect().await.fresh_database().await;
                TestDb { name: citus.name.clone(), citus: Some(citus) }
            }
        };
        let admin_pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(db.admin_options())
            .await
            .unwrap_or_else(|e| unreachable(e));
        (db, admin_pool)
    }

    /// Creates a fresh, empty database (no migrations, no pool on it).
    ///
    /// # Panics
    ///
    /// When no server is reachable, or creating the database fails.
    pub async fn empty() -> Self {
        let mut conn = maintenance().await;
        drop_stale(&mut conn).await;
        let name = fresh_name();
        let sql = format!("CREATE DATABASE \"{name}\"");
        query(AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("create test database {name}: {e}"));
        let _ = conn.close().await;
        TestDb { name, citus: None }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The admin's connect options for this database.
    pub fn admin_options(&self) -> PgConnectOptions {
        match &self.citus {
            Some(citus) => citus.options(),
            None => admin_options().database(&self.name),
        }
    }

    /// Whether the database is on the Citus cluster.
    pub fn is_citus(&self) -> bool {
        self.citus.is_some()
    }

    /// The database on the Citus cluster, to grow it ([`CitusDb::add_worker`]); `None` on plain
    /// Postgres.
    pub fn citus_mut(&mut self) -> Option<&mut CitusDb> {
        self.citus.as_mut()
    }

    /// Connect options for this database as `role` (no password unless
    /// `KAHN_TEST_PG_APP_PASSWORD` is set).
    pub fn options_as(&self, role: &str) -> PgConnectOptions {
        let opts = self.admin_options().username(role);
        match std::env::var("KAHN_TEST_PG_APP_PASSWORD") {
            Ok(pw) => opts.password(&pw),
            Err(_) => opts,
        }
    }

    /// The admin DSN of this database: [`admin_url`] with its database replaced.
    pub fn url(&self) -> String {
        with_database(&self.server_url(), &self.name, None)
    }

    /// The admin URL of the server (the coordinator, on Citus).
    fn server_url(&self) -> String {
        match &self.citus {
            Some(citus) => citus.server_url().to_owned(),
            None => admin_url(),
        }
    }

    /// A DSN of this database as `role`, with `KAHN_TEST_PG_APP_PASSWORD` as its password
    /// when that is set (as [`TestDb::options_as`]).
    pub fn url_as(&self, role: &str) -> String {
        let password = std::env::var("KAHN_TEST_PG_APP_PASSWORD").ok();
        with_database(&self.server_url(), &self.name, Some((role, password.as_deref())))
    }

    /// The app DSN of this database (role `kahn_app`): what `kahn serve` runs with.
    pub fn url_as_app(&self) -> String {
        self.url_as(kahn_pg::APP_ROLE)
    }

    /// A pool on this database as `role`.
    ///
    /// # Panics
    ///
    /// When the role cannot connect.
    pub async fn pool_as(&self, role: &str, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.options_as(role))
            .await
            .unwrap_or_else(|e| panic!("connect to {} as {role}: {e}", self.name))
    }

    /// The app-DSN backend (role `kahn_app`), through its startup check.
    ///
    /// # Panics
    ///
    /// When the app role cannot connect or fails its startup check.
    pub async fn app(&self) -> PgBackend {
        self.app_as(kahn_pg::APP_ROLE, 16).await.unwrap_or_else(|e| panic!("app backend: {e}"))
    }

    /// The app-DSN constructor run as `role`: the startup check's verdict.
    ///
    /// # Errors
    ///
    /// What `PgBackend::app_from_pool` refuses (the role is unsafe, the schema is not
    /// current, …).
    ///
    /// # Panics
    ///
    /// When `role` cannot connect at all.
    pub async fn app_as(&self, role: &str, max: u32) -> kahn_core::Result<PgBackend> {
        PgBackend::app_from_pool(self.pool_as(role, max).await).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.citus.is_some() {
            return; // CitusDb drops it on every node.
        }
        let name = std::mem::take(&mut self.name);
        block_on_side_thread("dropping a test database", async move {
            let mut conn = maintenance().await;
            drop_database(&mut conn, &name).await;
            let _ = conn.close().await;
        });
    }
}

/// A login role created for one negative test, dropped (with everything it owns in the
/// test database) when the test ends. Names are `kahn_t_role_<random>`.
#[derive(Debug)]
pub struct TestRole {
    /// The role's name.
    pub name: String,
    /// The admin's options on the test database (its server: the coordinator on Citus).
    db: PgConnectOptions,
}

impl TestRole {
    /// Creates a login role with `attributes` (e.g. `BYPASSRLS`), validated against a fixed
    /// list, a member of `kahn_app` (so it holds the app role's grants) in `db`.
    ///
    /// # Panics
    ///
    /// On attributes outside `BYPASSRLS NOBYPASSRLS SUPERUSER NOSUPERUSER`, or when creating
    /// or granting fails.
    pub async fn create(db: &TestDb, admin: &PgBackend, attributes: &str) -> Self {
        assert!(
            attributes
                .split_whitespace()
                .all(|a| matches!(a, "BYPASSRLS" | "NOBYPASSRLS" | "SUPERUSER" | "NOSUPERUSER")),
            "unexpected role attributes {attributes:?}"
        );
        let name = format!("kahn_t_role_{}", random_hex());
        let sql = format!("CREATE ROLE \"{name}\" LOGIN {attributes}");
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("create test role");
        // Through kahn_app it holds exactly the app role's designed grants, so the test's one
        // deviation is the only problem the startup check can find.
        let sql = format!("GRANT USAGE ON SCHEMA kahn TO \"{name}\"");
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant usage");
        let sql = format!("GRANT {} TO \"{name}\"", kahn_pg::APP_ROLE);
        query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant the app role");
        TestRole { name, db: db.admin_options() }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (name, db) = (std::mem::take(&mut self.name), self.db.clone());
        block_on_side_thread("dropping a test role", async move {
            // Objects it owns in the test database go first, then the role.
            // Objects it owns go first, then the role (on Citus, the coordinator propagates
            // both to the workers).
            if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect_with(db.clone()).await
            {
                let sql = format!("DROP OWNED BY \"{name}\" CASCADE");
                let _ = query(AssertSqlSafe(sql)).execute(&pool).await;
                let sql = format!("DROP ROLE IF EXISTS \"{name}\"");
                if let Err(e) = query(AssertSqlSafe(sql)).execute(&pool).await {
                    eprintln!("warning: could not drop test role {name}: {e}");
                }
                pool.close().await;
            }
        });
    }
}

/// `url` (a `postgres://` URL) naming database `db` and, when given, user `user` with its
/// password (replacing the user information `url` had). A query string is kept.
pub(crate) fn with_database(url: &str, db: &str, user: Option<(&str, Option<&str>)>) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_owned()), h),
        None => (None, authority),
    };
    let userinfo = match user {
        Some((name, Some(pw))) => Some(format!("{}:{}", encode(name), encode(pw))),
        Some((name, None)) => Some(encode(name)),
        None => userinfo,
    };
    let mut out = format!("{scheme}://");
    if let Some(u) = userinfo {
        out.push_str(&u);
        out.push('@');
    }
    out.push_str(host);
    out.push('/');
    out.push_str(&encode(db));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Panics unless every table KAHN places on Citus is placed: reference or hash-distributed.
async fn assert_distributed(admin: &PgBackend) {
    let tables: Vec<String> = kahn_pg::citus::REFERENCE
        .iter()
        .chain(kahn_pg::citus::DISTRIBUTED.iter())
        .map(|t| (*t).to_owned())
        .collect();
    let placed: i64 = sqlx_core::query_scalar::query_scalar(
        "SELECT count(*) FROM pg_dist_partition AS p \
         JOIN pg_catalog.unnest($1::text[]) AS t(name) ON p.logicalrelid = t.name::regclass \
         WHERE p.partmethod = 'h' OR p.repmodel = 't'",
    )
    .bind(&tables)
    .fetch_one(admin.pool())
    .await
    .unwrap_or_else(|e| panic!("read the Citus placement: {e}"));
    assert_eq!(
        placed,
        tables.len() as i64,
        "`kahn migrate` on Citus must place every table of {tables:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dsn_names_the_database_and_the_user_and_keeps_host_and_query() {
        let admin = "postgres://postgres:se%2Fcret@db.test:5433/postgres?sslmode=disable";
        assert_eq!(
            with_database(admin, "kahn_t_1_ab", None),
            "postgres://postgres:se%2Fcret@db.test:5433/kahn_t_1_ab?sslmode=disable"
        );
        assert_eq!(
            with_database(admin, "kahn_t_1_ab", Some(("kahn_app", None))),
            "postgres://kahn_app@db.test:5433/kahn_t_1_ab?sslmode=disable"
        );
        assert_eq!(
            with_database("postgresql://h/x", "d", Some(("kahn_app", Some("p w@")))),
            "postgresql://kahn_app:p%20w%40@h/d"
        );
    }

    #[test]
    fn only_generated_names_are_ever_dropped() {
        assert!(is_generated(&fresh_name()));
        for other in ["postgres", "kahn", "kahn_t_", "kahn_t_1; DROP", "kahn_prod"] {
            assert!(!is_generated(other), "{other}");
        }
    }

    #[test]
    fn the_unreachable_message_says_how_to_start_postgres() {
        let text = unreachable_message(DEFAULT_URL, &"connection refused");
        assert!(text.contains("scripts/ensure-postgres.sh"), "{text}");
        assert!(text.contains("KAHN_TEST_PG_URL"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
