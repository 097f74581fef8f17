//! Row-Level Security guarantees, one test each, against the real PostgreSQL server as the
//! app role `kahn_app` (NOSUPERUSER NOBYPASSRLS, owns nothing). Each test has its own fresh
//! database; roles made for negative tests are uniquely named and dropped afterwards.

use kahn_core::{
    AppendBatch, Error, NewTenant, OrgId, PurgeRequest, ReadScope, RunId, RunQuery, StorageBackend,
    StorageBackendExt, TenantId, WriteScope,
};
use kahn_pg::{PgBackend, PgPool, RoleProblem, UnsafeAppRole};
use kahn_testkit::{TestDb, TestRole};
use serde_json::json;
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::PgConnection;

/// A tenant provisioned by the admin, its scopes resolved through the app backend.
struct T {
    id: TenantId,
    write: WriteScope,
    read: ReadScope,
}

async fn tenant(admin: &PgBackend, app: &PgBackend) -> T {
    let name = format!("rls-{}", uuid::Uuid::new_v4().simple());
    let t = admin.provision_tenant(&NewTenant::new(name).expect("valid")).await.expect("provision");
    let key = admin.issue_api_key(t.id).await.expect("key");
    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("resolves");
    T { id: t.id, read: write.read(), write }
}

fn ndjson(run: &str, n: u64, tag: &str) -> AppendBatch {
    let lines: Vec<String> = (0..n)
        .map(|seq| {
            json!({"run_id": run, "seq": seq, "ts": "2026-01-01T00:00:00Z", "to": format!("{tag}{seq}")})
                .to_string()
        })
        .collect();
    AppendBatch::from_ndjson(&lines.join("\n")).expect("valid batch")
}

/// Two tenants, each with runs `shared` (same id, different content) and `<tag>-only`.
async fn seeded() -> (TestDb, PgBackend, PgBackend, T, T) {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let a = tenant(&admin, &app).await;
    let b = tenant(&admin, &app).await;
    for (t, tag) in [(&a, "a"), (&b, "b")] {
        app.append(&t.write, &ndjson("shared", 3, tag)).await.expect("append");
        app.append(&t.write, &ndjson(&format!("{tag}-only"), 2, tag)).await.expect("append");
        let quota = kahn_core::IngestQuota::per_second(std::num::NonZeroU32::MIN);
        let charged = app.charge_ingest(&t.write, std::num::NonZeroU32::MIN, quota).await;
        assert_eq!(charged.expect("charge"), kahn_core::Admission::Admitted);
    }
    (db, admin, app, a, b)
}

async fn count(conn: &mut PgConnection, table: &str) -> Result<i64, sqlx_core::Error> {
    assert!(kahn_pg::TENANT_TABLES.contains(&table));
    let sql = format!("SELECT count(*) AS n FROM kahn.{table}");
    query(AssertSqlSafe(sql)).fetch_one(&mut *conn).await?.try_get("n")
}

async fn backend_pid(conn: &mut PgConnection) -> i32 {
    query("SELECT pg_backend_pid() AS pid")
        .fetch_one(&mut *conn)
        .await
        .expect("pid")
        .try_get("pid")
        .expect("pid")
}

async fn set_tenant(conn: &mut PgConnection, tenant: TenantId) {
    query("SELECT kahn.enter_tenant($1)")
        .bind(tenant.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("set tenant");
}

/// The SQLSTATE of a failed statement.
fn sqlstate<T: std::fmt::Debug>(r: Result<T, sqlx_core::Error>) -> String {
    let e = r.expect_err("the database must refuse this");
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

const INSUFFICIENT_PRIVILEGE: &str = "42501";
const READ_ONLY_TRANSACTION: &str = "25006";
const FEATURE_NOT_SUPPORTED: &str = "0A000";

fn refused_with(err: Error) -> UnsafeAppRole {
    match err {
        Error::Backend { source, .. } => match source.downcast_ref::<UnsafeAppRole>() {
            Some(r) => r.clone(),
            None => panic!("expected UnsafeAppRole, got {source}"),
        },
        other => panic!("expected a Backend error holding UnsafeAppRole, got {other:?}"),
    }
}

async fn admin_exec(admin: &PgBackend, sql: &'static str) {
    query(sql).execute(admin.pool()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn app_pool(db: &TestDb, max: u32) -> PgPool {
    db.pool_as(kahn_pg::APP_ROLE, max).await
}

/// Runs `sql` on `pool` (the app role) inside `tenant`, and asserts the database refuses it
/// for want of privilege; rolled back either way.
async fn assert_refused_to_app(pool: &PgPool, tenant: TenantId, sql: &'static str) {
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, tenant).await;
    let code = sqlstate(query(sql).execute(&mut *tx).await);
    assert_eq!(code, INSUFFICIENT_PRIVILEGE, "{sql}");
    tx.rollback().await.expect("rollback");
}

// ---------------------------------------------------------------------------------------------
// No tenant set → zero rows.
// ---------------------------------------------------------------------------------------------

/// With no tenant set (never set, reset to '', or set to an unknown tenant), every tenant
/// table returns zero rows — never an error, never another tenant's rows. The app role reads
/// runs and transitions; it has no grant at all on tenants and api_keys, so a role granted
/// SELECT on all four (NOSUPERUSER NOBYPASSRLS) shows that RLS alone hides them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_set_returns_zero_rows_from_every_tenant_table() {
    let (db, admin, _app, _a, _b) = seeded().await;
    let reader = TestRole::create(&db, &admin, "NOSUPERUSER NOBYPASSRLS").await;
    let sql = format!("GRANT SELECT ON ALL TABLES IN SCHEMA kahn TO \"{}\"", reader.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant");
    // The data is there: the admin (superuser) sees it.
    let mut conn = admin.pool().acquire().await.expect("conn");
    assert_eq!(count(&mut conn, "runs").await.expect("count"), 4);
    assert_eq!(count(&mut conn, "transitions").await.expect("count"), 10);
    assert_eq!(count(&mut conn, "ingest_budget").await.expect("count"), 2);
    drop(conn);

    let app = app_pool(&db, 1).await;
    let reader_pool = db.pool_as(&reader.name, 1).await;
    for setting in [None, Some(""), Some("00000000-0000-0000-0000-000000000000")] {
        for (pool, tables) in
            [(&app, &["runs", "transitions"][..]), (&reader_pool, &kahn_pg::TENANT_TABLES[..])]
        {
            let mut tx = pool.begin().await.expect("begin");
            if let Some(s) = setting {
                // SET LOCAL, as kahn.enter_tenant does, so that on Citus the workers see the
                // same setting (set_config would not reach them). `s` is one of the fixed
                // values above.
                query("SET LOCAL citus.propagate_set_commands = 'local'")
                    .execute(&mut *tx)
                    .await
                    .expect("propagate");
                query(AssertSqlSafe(format!("SET LOCAL kahn.tenant = '{s}'")))
                    .execute(&mut *tx)
                    .await
                    .expect("set");
            }
            for table in tables {
                assert_eq!(
                    count(&mut tx, table).await.expect("no cast error, no refusal"),
                    0,
                    "{table} with kahn.tenant = {setting:?}"
                );
            }
            tx.rollback().await.expect("rollback");
        }
    }
    // The app role cannot read tenants, api_keys or ingest allowances at all.
    let mut conn = app.acquire().await.expect("conn");
    for table in ["tenants", "api_keys", "ingest_budget"] {
        assert_eq!(sqlstate(count(&mut conn, table).await), INSUFFICIENT_PRIVILEGE, "{table}");
    }
}

// ---------------------------------------------------------------------------------------------
// Isolation between tenants.
// ---------------------------------------------------------------------------------------------

/// Tenant A's context never returns tenant B's rows: through the adapter (same run id with
/// other content, B-only runs) and through raw SQL as the app role, even when the query
/// names B's tenant id explicitly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_never_sees_tenant_b_via_adapter_or_raw_sql() {
    let (db, _admin, app, a, b) = seeded().await;
    // Adapter.
    let page = app.list_runs(&a.read, &RunQuery::default()).await.expect("list");
    let mut ids: Vec<_> = page.runs.iter().map(|r| r.run_id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["a-only", "shared"]);
    let shared = RunId::new("shared").expect("valid");
    let rows = app.read_all_transitions(&a.read, &shared).await.expect("read");
    assert!(rows.iter().all(|r| r.body["to"].as_str().is_some_and(|s| s.starts_with('a'))));
    let b_only = RunId::new("b-only").expect("valid");
    assert!(matches!(app.get_run(&a.read, &b_only).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        app.read_transitions(&a.read, &b_only, None, 10).await,
        Err(Error::NotFound { .. })
    ));

    // Raw SQL as kahn_app in A's context.
    let pool = app_pool(&db, 1).await;
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    let tenants: Vec<uuid::Uuid> =
        query("SELECT DISTINCT tenant_id FROM kahn.runs UNION SELECT DISTINCT tenant_id FROM kahn.transitions")
            .fetch_all(&mut *tx)
            .await
            .expect("select")
            .iter()
            .map(|r| r.try_get("tenant_id").expect("uuid"))
            .collect();
    assert_eq!(tenants, [*a.id.as_uuid()]);
    for table in ["runs", "transitions"] {
        let sql = format!("SELECT count(*) AS n FROM kahn.{table} WHERE tenant_id = $1");
        let n: i64 = query(AssertSqlSafe(sql))
            .bind(b.id.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
        assert_eq!(n, 0, "B's rows of {table}, asked for by id in A's context");
    }
    tx.rollback().await.expect("rollback");
    // The adapter's own read transaction for A, asked for B's rows by id.
    let mut tx = app.read_transaction(&a.read).await.expect("tx");
    let n: i64 = query("SELECT count(*) AS n FROM kahn.transitions WHERE tenant_id = $1")
        .bind(b.id.as_uuid())
        .fetch_one(&mut *tx)
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------------------------------------
// WITH CHECK.
// ---------------------------------------------------------------------------------------------

/// An INSERT or UPDATE whose tenant_id differs from the context is rejected by the policies'
/// WITH CHECK, for the app role (INSERT; it has no UPDATE grant on tenant_id at all) and for a
/// role holding every privilege but still under RLS (INSERT and UPDATE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_check_rejects_rows_of_another_tenant() {
    let (db, admin, _app, a, b) = seeded().await;
    let zero = vec![0u8; 32];
    let insert_run = "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at) \
                      VALUES ($1, 'smuggled', $2, now())";
    let insert_transition = "INSERT INTO kahn.transitions \
                             (tenant_id, run_id, seq, body, content_hash, chain_hash) \
                             VALUES ($1, 'shared', 99, '{}', $2, $2)";
    let full = TestRole::create(&db, &admin, "NOSUPERUSER NOBYPASSRLS").await;
    let sql = format!("GRANT ALL ON ALL TABLES IN SCHEMA kahn TO \"{}\"", full.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant");

    for pool in [app_pool(&db, 1).await, db.pool_as(&full.name, 1).await] {
        for sql in [insert_run, insert_transition] {
            let mut tx = pool.begin().await.expect("begin");
            set_tenant(&mut tx, a.id).await;
            let r = query(sql).bind(b.id.as_uuid()).bind(&zero).execute(&mut *tx).await;
            let err = r.expect_err("WITH CHECK must refuse a row of another tenant");
            assert!(
                err.to_string().contains("row-level security policy"),
                "refused by the policy, not something else: {err}"
            );
            tx.rollback().await.expect("rollback");
        }
    }
    // UPDATE moving A's row to B: the full-privilege role is refused by WITH CHECK (on Citus
    // even before, the tenant being the distribution column no row may move off)...
    let pool = db.pool_as(&full.name, 1).await;
    let refusal = if db.is_citus() {
        "modifying the partition value of rows is not allowed"
    } else {
        "row-level security policy"
    };
    for sql in [
        "UPDATE kahn.runs SET tenant_id = $1 WHERE run_id = 'a-only'",
        "UPDATE kahn.transitions SET tenant_id = $1 WHERE run_id = 'shared'",
    ] {
        let mut tx = pool.begin().await.expect("begin");
        set_tenant(&mut tx, a.id).await;
        let err = query(sql).bind(b.id.as_uuid()).execute(&mut *tx).await.expect_err("refused");
        assert!(err.to_string().contains(refusal), "{err}");
        tx.rollback().await.expect("rollback");
    }
    // ...and the app role may not even name the column.
    let pool = app_pool(&db, 1).await;
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    let r = query("UPDATE kahn.runs SET tenant_id = $1 WHERE run_id = 'a-only'")
        .bind(b.id.as_uuid())
        .execute(&mut *tx)
        .await;
    // Citus's planner refuses the moved distribution value before the privilege check runs.
    let expected = if db.is_citus() { FEATURE_NOT_SUPPORTED } else { INSUFFICIENT_PRIVILEGE };
    assert_eq!(sqlstate(r), expected);
    tx.rollback().await.expect("rollback");
    let may: bool =
        query("SELECT has_column_privilege('kahn_app', 'kahn.runs', 'tenant_id', 'UPDATE') AS m")
            .fetch_one(admin.pool())
            .await
            .expect("privilege")
            .try_get("m")
            .expect("bool");
    assert!(!may, "kahn_app holds no UPDATE on tenant_id");
}

// ---------------------------------------------------------------------------------------------
// Pooled connections.
// ---------------------------------------------------------------------------------------------

/// After a transaction for tenant A commits (or rolls back), the same pooled connection used
/// with no tenant sees nothing: the setting is transaction-local. Shown on a one-connection
/// pool (same backend pid) raw, and through the adapter's own pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_leaks_through_a_pooled_connection() {
    let (db, _admin, _app, a, _b) = seeded().await;
    let pool = app_pool(&db, 1).await;
    for commit in [true, false] {
        let mut tx = pool.begin().await.expect("begin");
        set_tenant(&mut tx, a.id).await;
        let first = backend_pid(&mut tx).await;
        assert_eq!(count(&mut tx, "runs").await.expect("count"), 2, "A sees its runs");
        if commit {
            tx.commit().await.expect("commit");
        } else {
            tx.rollback().await.expect("rollback");
        }
        let mut conn = pool.acquire().await.expect("the same connection");
        assert_eq!(backend_pid(&mut conn).await, first, "the pool handed back the same connection");
        let setting: Option<String> = query("SELECT current_setting('kahn.tenant', true) AS s")
            .fetch_one(&mut *conn)
            .await
            .expect("setting")
            .try_get("s")
            .expect("s");
        assert!(setting.unwrap_or_default().is_empty(), "the tenant ended with the transaction");
        assert_eq!(count(&mut conn, "runs").await.expect("count"), 0);
        assert_eq!(count(&mut conn, "transitions").await.expect("count"), 0);
    }

    // The adapter: a backend on a one-connection pool reads as A, then its pool, used bare,
    // sees nothing.
    let app = PgBackend::app_from_pool(app_pool(&db, 1).await).await.expect("app");
    assert_eq!(app.list_runs(&a.read, &RunQuery::default()).await.expect("list").runs.len(), 2);
    app.append(&a.write, &ndjson("later", 1, "a")).await.expect("append");
    let mut conn = app.pool().acquire().await.expect("conn");
    assert_eq!(count(&mut conn, "runs").await.expect("count"), 0);
    assert_eq!(count(&mut conn, "transitions").await.expect("count"), 0);
}

// ---------------------------------------------------------------------------------------------
// The app-DSN startup check.
// ---------------------------------------------------------------------------------------------

/// The app-DSN constructor accepts kahn_app on a migrated database, and refuses a superuser
/// (the admin DSN), naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_superuser() {
    let (db, admin) = TestDb::new().await;
    db.app().await; // kahn_app passes
    let err = PgBackend::app_from_pool(admin.pool().clone()).await.expect_err("superuser");
    // The message says a backend refused; the refusal, naming each problem and its fix, is
    // the cause the chain prints.
    let text = err.chain().to_string();
    let refused = refused_with(err);
    assert!(refused.problems.contains(&RoleProblem::Superuser), "{refused}");
    assert!(text.contains("superuser") && text.contains("fix:"), "{text}");
}

/// The app-DSN constructor refuses a BYPASSRLS role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_bypassrls_role() {
    let (db, admin) = TestDb::new().await;
    let role = TestRole::create(&db, &admin, "NOSUPERUSER BYPASSRLS").await;
    let refusal = refused_with(db.app_as(&role.name, 1).await.expect_err("BYPASSRLS"));
    assert_eq!(refusal.role, role.name);
    assert_eq!(refusal.problems, [RoleProblem::BypassRls], "{refusal}");
    assert!(refusal.to_string().contains("NOBYPASSRLS"));
}

/// The app-DSN constructor refuses the owner of a tenant table (who could switch its RLS
/// off), and a member of the owning role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_the_table_owner() {
    let (db, admin) = TestDb::new().await;
    let owner = TestRole::create(&db, &admin, "NOSUPERUSER NOBYPASSRLS").await;
    let member = TestRole::create(&db, &admin, "NOSUPERUSER NOBYPASSRLS").await;
    let sql = format!("ALTER TABLE kahn.runs OWNER TO \"{}\"", owner.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("alter owner");
    let sql = format!("GRANT \"{}\" TO \"{}\"", owner.name, member.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant membership");
    for role in [&owner.name, &member.name] {
        let refusal = refused_with(db.app_as(role, 1).await.expect_err("owner"));
        assert!(
            refusal.problems.contains(&RoleProblem::OwnsTable { table: "kahn.runs".into() }),
            "{role}: {refusal}"
        );
    }
    // kahn_app itself is fine: the table's RLS is still enabled and forced.
    db.app().await;
}

/// The app-DSN constructor refuses a database where a tenant table has RLS disabled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_table_with_rls_disabled() {
    let (db, admin) = TestDb::new().await;
    admin_exec(&admin, "ALTER TABLE kahn.transitions DISABLE ROW LEVEL SECURITY").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("RLS disabled"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::RlsDisabled { table: "kahn.transitions".into() }],
        "{refusal}"
    );
    assert!(refusal.to_string().contains("ENABLE ROW LEVEL SECURITY"));
    admin_exec(&admin, "ALTER TABLE kahn.transitions ENABLE ROW LEVEL SECURITY").await;
    // The shared ingest allowances (migration 0008) are tenant data like the rest.
    admin_exec(&admin, "ALTER TABLE kahn.ingest_budget DISABLE ROW LEVEL SECURITY").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("RLS disabled"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::RlsDisabled { table: "kahn.ingest_budget".into() }],
        "{refusal}"
    );
}

/// The app-DSN constructor refuses a database where a tenant table's RLS is not forced (the
/// owner would bypass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_table_with_rls_not_forced() {
    let (db, admin) = TestDb::new().await;
    admin_exec(&admin, "ALTER TABLE kahn.api_keys NO FORCE ROW LEVEL SECURITY").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("not forced"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::RlsNotForced { table: "kahn.api_keys".into() }],
        "{refusal}"
    );
    assert!(refusal.to_string().contains("FORCE ROW LEVEL SECURITY"));
}

/// A stray permissive policy (`USING (true)`) ORs itself into the tenant isolation and leaves
/// RLS inert; an altered KAHN policy does the same. The app-DSN constructor refuses both,
/// naming the table, the policy and the fix (red team, round two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_stray_policy_and_an_altered_one() {
    let (db, admin) = TestDb::new().await;
    admin_exec(&admin, "CREATE POLICY debug_all ON kahn.runs USING (true)").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("stray policy"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::ExtraPolicy { table: "kahn.runs".into(), policy: "debug_all".into() }],
        "{refusal}"
    );
    assert!(refusal.to_string().contains("DROP POLICY \"debug_all\" ON kahn.runs"), "{refusal}");
    // A restrictive extra policy is not KAHN's either.
    admin_exec(&admin, "DROP POLICY debug_all ON kahn.runs").await;
    admin_exec(&admin, "CREATE POLICY narrow ON kahn.tenants AS RESTRICTIVE USING (true)").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("extra policy"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::ExtraPolicy { table: "kahn.tenants".into(), policy: "narrow".into() }]
    );
    admin_exec(&admin, "DROP POLICY narrow ON kahn.tenants").await;

    // KAHN's own policy, rewritten to see everything (the name kept).
    admin_exec(&admin, "DROP POLICY tenant_isolation ON kahn.transitions").await;
    admin_exec(&admin, "CREATE POLICY tenant_isolation ON kahn.transitions USING (true)").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("altered"));
    let altered = RoleProblem::AlteredPolicy {
        table: "kahn.transitions".into(),
        policy: "tenant_isolation".into(),
    };
    assert_eq!(refusal.problems, std::slice::from_ref(&altered), "{refusal}");
    // Dropped altogether (RLS forced with only definer_all: the app would see nothing, and the
    // design is gone).
    admin_exec(&admin, "DROP POLICY tenant_isolation ON kahn.transitions").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("missing"));
    assert_eq!(refusal.problems, std::slice::from_ref(&altered), "{refusal}");
    // The sub-select spelling of migrations 0001-0005 is no longer KAHN's (Citus refuses it).
    let sub_select = "CREATE POLICY tenant_isolation ON kahn.transitions \
                      USING (tenant_id = (SELECT kahn.current_tenant())) \
                      WITH CHECK (tenant_id = (SELECT kahn.current_tenant()))";
    if db.is_citus() {
        // On a distributed table Citus refuses to create it at all: nothing for the check to see.
        let err = query(sub_select).execute(admin.pool()).await.expect_err("Citus refuses");
        assert!(err.to_string().contains("SubLink"), "refused for its sub-select: {err}");
    } else {
        admin_exec(&admin, sub_select).await;
        let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("sub-select"));
        assert_eq!(refusal.problems, [altered], "{refusal}");
        admin_exec(&admin, "DROP POLICY tenant_isolation ON kahn.transitions").await;
    }
    // Restored as designed: accepted again.
    admin_exec(
        &admin,
        "CREATE POLICY tenant_isolation ON kahn.transitions \
         USING (tenant_id = kahn.current_tenant()) \
         WITH CHECK (tenant_id = kahn.current_tenant())",
    )
    .await;
    db.app().await;
}

/// The checkpoint tables of migration 0010 are tenant tables like the rest: the startup check
/// refuses one whose RLS is not forced, whose KAHN policy is missing, or that carries a policy
/// KAHN did not create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_checks_the_checkpoint_tables_policies_exactly() {
    let (db, admin) = TestDb::new().await;
    admin_exec(&admin, "ALTER TABLE kahn.checkpoints NO FORCE ROW LEVEL SECURITY").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("not forced"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::RlsNotForced { table: "kahn.checkpoints".into() }],
        "{refusal}"
    );
    admin_exec(&admin, "ALTER TABLE kahn.checkpoints FORCE ROW LEVEL SECURITY").await;

    admin_exec(&admin, "DROP POLICY tenant_isolation ON kahn.checkpoint_leaves").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("missing"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::AlteredPolicy {
            table: "kahn.checkpoint_leaves".into(),
            policy: "tenant_isolation".into(),
        }],
        "{refusal}"
    );
    admin_exec(
        &admin,
        "CREATE POLICY tenant_isolation ON kahn.checkpoint_leaves \
         USING (tenant_id = kahn.current_tenant()) \
         WITH CHECK (tenant_id = kahn.current_tenant())",
    )
    .await;

    admin_exec(&admin, "CREATE POLICY peek ON kahn.purge_records FOR SELECT USING (true)").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("stray policy"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::ExtraPolicy { table: "kahn.purge_records".into(), policy: "peek".into() }],
        "{refusal}"
    );
    admin_exec(&admin, "DROP POLICY peek ON kahn.purge_records").await;

    admin_exec(&admin, "DROP POLICY definer_all ON kahn.checkpoints").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("no definer"));
    assert_eq!(
        refusal.problems,
        [RoleProblem::AlteredPolicy {
            table: "kahn.checkpoints".into(),
            policy: "definer_all".into(),
        }],
        "{refusal}"
    );
    admin_exec(
        &admin,
        "CREATE POLICY definer_all ON kahn.checkpoints TO kahn_definer \
         USING (true) WITH CHECK (true)",
    )
    .await;
    db.app().await; // restored as designed: accepted again
}

/// The app role's effective privileges must be exactly the designed ones: any extra grant —
/// on a table, a column, a function (the purge at a caller's time), the schema, directly or
/// through PUBLIC — refuses the start, naming the `REVOKE` that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_grants_beyond_the_design() {
    let (db, admin) = TestDb::new().await;
    let cases: [(&str, &str, RoleProblem); 17] = [
        (
            "GRANT SELECT ON kahn.api_keys TO kahn_app",
            "REVOKE SELECT ON kahn.api_keys FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "TABLE kahn.api_keys".into(),
                privilege: "SELECT".into(),
            },
        ),
        (
            "GRANT UPDATE (run_id) ON kahn.runs TO PUBLIC",
            "REVOKE UPDATE (run_id) ON kahn.runs FROM PUBLIC",
            RoleProblem::ExtraGrant {
                object: "kahn.runs (run_id)".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "GRANT EXECUTE ON FUNCTION kahn.purge_tenant(uuid, timestamptz, boolean) TO kahn_app",
            "REVOKE EXECUTE ON FUNCTION kahn.purge_tenant(uuid, timestamptz, boolean) FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "FUNCTION kahn.purge_tenant(uuid,timestamp with time zone,boolean)".into(),
                privilege: "EXECUTE".into(),
            },
        ),
        // Migration 0004's columns and functions: recording a key's use is the definer's,
        // creating tenants is the definer's, renewing received_at is the app role's.
        (
            "GRANT UPDATE (last_used_at) ON kahn.api_keys TO kahn_app",
            "REVOKE UPDATE (last_used_at) ON kahn.api_keys FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "kahn.api_keys (last_used_at)".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "GRANT INSERT ON kahn.tenants TO kahn_app",
            "REVOKE INSERT ON kahn.tenants FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "TABLE kahn.tenants".into(),
                privilege: "INSERT".into(),
            },
        ),
        (
            "REVOKE UPDATE (received_at) ON kahn.runs FROM kahn_app",
            "GRANT UPDATE (received_at) ON kahn.runs TO kahn_app",
            RoleProblem::MissingGrant {
                object: "column kahn.runs.received_at".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "GRANT CREATE ON SCHEMA kahn TO kahn_app",
            "REVOKE CREATE ON SCHEMA kahn FROM kahn_app",
            RoleProblem::ExtraGrant { object: "SCHEMA kahn".into(), privilege: "CREATE".into() },
        ),
        (
            "REVOKE INSERT ON kahn.transitions FROM kahn_app",
            "GRANT INSERT ON kahn.transitions TO kahn_app",
            RoleProblem::MissingGrant {
                object: "table kahn.transitions".into(),
                privilege: "INSERT".into(),
            },
        ),
        // Migration 0008: the ingest allowance is charged only through kahn.charge_ingest,
        // and the purge's turn only through kahn.take_purge_turn.
        (
            "GRANT UPDATE (tat_us) ON kahn.ingest_budget TO kahn_app",
            "REVOKE UPDATE (tat_us) ON kahn.ingest_budget FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "kahn.ingest_budget (tat_us)".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "REVOKE EXECUTE ON FUNCTION kahn.charge_ingest(uuid, integer, integer) FROM kahn_app",
            "GRANT EXECUTE ON FUNCTION kahn.charge_ingest(uuid, integer, integer) TO kahn_app",
            RoleProblem::MissingGrant {
                object: "function kahn.charge_ingest(uuid,integer,integer)".into(),
                privilege: "EXECUTE".into(),
            },
        ),
        (
            "REVOKE EXECUTE ON FUNCTION kahn.take_purge_turn(interval) FROM kahn_app",
            "GRANT EXECUTE ON FUNCTION kahn.take_purge_turn(interval) TO kahn_app",
            RoleProblem::MissingGrant {
                object: "function kahn.take_purge_turn(interval)".into(),
                privilege: "EXECUTE".into(),
            },
        ),
        // Migration 0010: the checkpoint log is append-only by grant, purge records are the
        // purge's to insert and the app role's to mark logged (that column only).
        (
            "GRANT DELETE ON kahn.checkpoint_leaves TO kahn_app",
            "REVOKE DELETE ON kahn.checkpoint_leaves FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "TABLE kahn.checkpoint_leaves".into(),
                privilege: "DELETE".into(),
            },
        ),
        (
            "GRANT UPDATE ON kahn.checkpoints TO PUBLIC",
            "REVOKE UPDATE ON kahn.checkpoints FROM PUBLIC",
            RoleProblem::ExtraGrant {
                object: "TABLE kahn.checkpoints".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "REVOKE INSERT ON kahn.checkpoints FROM kahn_app",
            "GRANT INSERT ON kahn.checkpoints TO kahn_app",
            RoleProblem::MissingGrant {
                object: "table kahn.checkpoints".into(),
                privilege: "INSERT".into(),
            },
        ),
        (
            "GRANT INSERT ON kahn.purge_records TO kahn_app",
            "REVOKE INSERT ON kahn.purge_records FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "TABLE kahn.purge_records".into(),
                privilege: "INSERT".into(),
            },
        ),
        (
            "GRANT UPDATE (next_seq) ON kahn.purge_records TO kahn_app",
            "REVOKE UPDATE (next_seq) ON kahn.purge_records FROM kahn_app",
            RoleProblem::ExtraGrant {
                object: "kahn.purge_records (next_seq)".into(),
                privilege: "UPDATE".into(),
            },
        ),
        (
            "REVOKE UPDATE (logged) ON kahn.purge_records FROM kahn_app",
            "GRANT UPDATE (logged) ON kahn.purge_records TO kahn_app",
            RoleProblem::MissingGrant {
                object: "column kahn.purge_records.logged".into(),
                privilege: "UPDATE".into(),
            },
        ),
    ];
    for (break_it, fix_it, problem) in cases {
        admin_exec(&admin, break_it).await;
        let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err(break_it));
        assert_eq!(refusal.problems, [problem], "{break_it}: {refusal}");
        assert!(refusal.to_string().contains("fix"), "{refusal}");
        admin_exec(&admin, fix_it).await;
        db.app().await; // fixed: accepted again
    }
    let refusal = {
        admin_exec(&admin, "GRANT UPDATE (run_id) ON kahn.runs TO PUBLIC").await;
        let r = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("column grant"));
        admin_exec(&admin, "REVOKE UPDATE (run_id) ON kahn.runs FROM PUBLIC").await;
        r
    };
    assert!(
        refusal.to_string().contains("REVOKE UPDATE (run_id) ON kahn.runs FROM <role>"),
        "the fix names the column: {refusal}"
    );
}

/// The app-DSN constructor also refuses a role that may rewrite the log, a member of
/// kahn_definer, and a database that was never migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dsn_refuses_a_mutable_log_a_definer_member_and_an_unmigrated_database() {
    let (db, admin) = TestDb::new().await;
    let role = TestRole::create(&db, &admin, "NOSUPERUSER NOBYPASSRLS").await;
    let sql = format!("GRANT UPDATE, DELETE ON kahn.transitions TO \"{}\"", role.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant");
    let refusal = refused_with(db.app_as(&role.name, 1).await.expect_err("mutable log"));
    assert_eq!(
        refusal.problems,
        [
            RoleProblem::MutableLog { privilege: "UPDATE" },
            RoleProblem::MutableLog { privilege: "DELETE" }
        ]
    );
    let sql = format!("GRANT kahn_definer TO \"{}\"", role.name);
    query(AssertSqlSafe(sql)).execute(admin.pool()).await.expect("grant");
    let refusal = refused_with(db.app_as(&role.name, 1).await.expect_err("definer member"));
    assert!(refusal.problems.contains(&RoleProblem::DefinerMember), "{refusal}");

    admin_exec(&admin, "DROP SCHEMA kahn CASCADE").await;
    let refusal = refused_with(db.app_as(kahn_pg::APP_ROLE, 1).await.expect_err("unmigrated"));
    assert!(
        refusal.problems.iter().all(|p| matches!(p, RoleProblem::NotMigrated { .. })),
        "{refusal}"
    );
    assert_eq!(refusal.problems.len(), kahn_pg::TENANT_TABLES.len(), "{refusal}");
}

// ---------------------------------------------------------------------------------------------
// Grants and READ ONLY.
// ---------------------------------------------------------------------------------------------

/// The log is append-only by grant: the app role cannot UPDATE, DELETE or TRUNCATE
/// transitions (nor DELETE runs, nor run DDL), even for its own tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_update_delete_or_truncate_transitions() {
    let (db, _admin, _app, a, _b) = seeded().await;
    let pool = app_pool(&db, 1).await;
    for sql in [
        "UPDATE kahn.transitions SET body = '{}' WHERE run_id = 'shared'",
        "DELETE FROM kahn.transitions WHERE run_id = 'shared'",
        "TRUNCATE kahn.transitions",
        "DELETE FROM kahn.runs WHERE run_id = 'shared'",
        "TRUNCATE kahn.runs",
        "ALTER TABLE kahn.transitions DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON kahn.transitions",
        "CREATE TABLE kahn.sneaky (x int)",
    ] {
        assert_refused_to_app(&pool, a.id, sql).await;
    }
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    assert_eq!(count(&mut tx, "transitions").await.expect("count"), 5, "nothing was removed");
}

/// The checkpoint log is append-only by grant, like the transitions: the app role cannot
/// UPDATE, DELETE or TRUNCATE leaves or checkpoints, even its own tenant's, nor INSERT purge
/// records (only the purge records what it removed), change anything of one but `logged`,
/// delete one or draw a record id. It sees only its tenant's log (raw SQL naming the other
/// tenant, and through the adapter), nothing with no tenant set, and cannot write a leaf
/// into another tenant's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_rewrite_or_wipe_the_checkpoint_log() {
    let (db, _admin, app, a, b) = seeded().await;
    let signer = kahn_core::receipt::ReceiptSigner::generate().expect("a signing key");
    for t in [&a, &b] {
        app.make_checkpoint(&t.read, &signer, chrono::Utc::now()).await.expect("checkpoint");
    }
    let pool = app_pool(&db, 1).await;
    for sql in [
        "UPDATE kahn.checkpoint_leaves SET leaf = leaf",
        "DELETE FROM kahn.checkpoint_leaves",
        "TRUNCATE kahn.checkpoint_leaves",
        "UPDATE kahn.checkpoints SET envelope = '{}'",
        "DELETE FROM kahn.checkpoints",
        "TRUNCATE kahn.checkpoints",
        "INSERT INTO kahn.purge_records \
             (tenant_id, id, run_id, next_seq, head_hash, received_at, purged_at) \
         VALUES (kahn.current_tenant(), 1, 'shared', 3, decode(repeat('00', 32), 'hex'), \
                 now(), now())",
        "UPDATE kahn.purge_records SET next_seq = 0",
        "DELETE FROM kahn.purge_records",
        "TRUNCATE kahn.purge_records",
        "SELECT nextval('kahn.purge_record_ids')",
        "ALTER TABLE kahn.checkpoint_leaves DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON kahn.checkpoints",
    ] {
        assert_refused_to_app(&pool, a.id, sql).await;
    }

    // Its own tenant's log only, whichever tenant a query names.
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    assert_eq!(count(&mut tx, "checkpoint_leaves").await.expect("count"), 2, "shared, a-only");
    assert_eq!(count(&mut tx, "checkpoints").await.expect("count"), 1);
    for table in ["checkpoint_leaves", "checkpoints"] {
        let sql = format!("SELECT count(*) AS n FROM kahn.{table} WHERE tenant_id = $1");
        let n: i64 = query(AssertSqlSafe(sql))
            .bind(b.id.as_uuid())
            .fetch_one(&mut *tx)
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
        assert_eq!(n, 0, "{table}: tenant b's rows are invisible to tenant a");
    }
    // A leaf into b's log, from a's context: refused by the policy's WITH CHECK.
    let forged =
        query("INSERT INTO kahn.checkpoint_leaves (tenant_id, idx, leaf) VALUES ($1, 1000, $2)")
            .bind(b.id.as_uuid())
            .bind(vec![0u8; 60])
            .execute(&mut *tx)
            .await;
    assert_eq!(sqlstate(forged), INSUFFICIENT_PRIVILEGE, "another tenant's leaf");
    tx.rollback().await.expect("rollback");
    // No tenant set: nothing.
    let mut tx = pool.begin().await.expect("begin");
    for table in ["checkpoint_leaves", "checkpoints", "purge_records"] {
        assert_eq!(count(&mut tx, table).await.expect("count"), 0, "{table}, no tenant");
    }
    tx.rollback().await.expect("rollback");

    // Through the adapter: each log holds its own tenant's runs, intact.
    let run_ids = |log: &kahn_core::checkpoint::CheckpointLog| -> Vec<String> {
        let mut ids: Vec<String> = log.leaves.iter().map(|l| l.run_id.to_string()).collect();
        ids.sort();
        ids
    };
    let log_a = app.read_checkpoint_log(&a.read).await.expect("a's log");
    let log_b = app.read_checkpoint_log(&b.read).await.expect("b's log");
    assert_eq!(run_ids(&log_a), ["a-only", "shared"]);
    assert_eq!(run_ids(&log_b), ["b-only", "shared"]);
    assert_eq!((log_a.checkpoints.len(), log_b.checkpoints.len()), (1, 1));
    assert_ne!(log_a.leaves, log_b.leaves, "same run id, each tenant's own head");
}

/// The app role cannot purge at a time of its choosing: `kahn.purge_expired('infinity')` used
/// to delete every tenant's log (red team, round two). The app's purge runs on the database's
/// clock, whatever time the caller passes; only the operator may purge "as of" a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_purge_more_than_retention_allows_now() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app).await;
    let now = chrono::Utc::now().to_rfc3339();
    let lines: Vec<String> = (0..4)
        .map(|seq| json!({"run_id": "fresh", "seq": seq, "ts": now, "to": "running"}).to_string())
        .collect();
    app.append(&t.write, &AppendBatch::from_ndjson(&lines.join("\n")).expect("valid"))
        .await
        .expect("append");
    let pool = app_pool(&db, 1).await;
    let mut conn = pool.acquire().await.expect("conn");
    for sql in [
        "SELECT * FROM kahn.purge_expired('infinity')",
        "SELECT * FROM kahn.purge_expired('9999-12-31'::timestamptz)",
    ] {
        let code = sqlstate(query(sql).execute(&mut *conn).await);
        assert_eq!(code, "42883", "{sql}: no purge takes the app role's time");
    }
    let code = sqlstate(
        query("SELECT * FROM kahn.purge_tenant($1, 'infinity', false)")
            .bind(t.id.as_uuid())
            .execute(&mut *conn)
            .await,
    );
    assert_eq!(code, INSUFFICIENT_PRIVILEGE, "the operator's purge is not the app role's");
    let rows =
        query("SELECT * FROM kahn.purge_expired()").fetch_all(&mut *conn).await.expect("purge");
    assert!(rows.is_empty(), "nothing is past retention at the database's clock");
    // Through the adapter: the app backend purges only at the database's clock; a request
    // with an instant, a tenant or a dry run is refused, naming the admin DSN, and removes
    // nothing.
    let far = chrono::DateTime::<chrono::Utc>::MAX_UTC;
    for req in [
        PurgeRequest::as_of(far),
        PurgeRequest::at_store_clock().for_tenant(t.id),
        PurgeRequest::at_store_clock().dry_run(),
        PurgeRequest::as_of(far).for_tenant(t.id).dry_run(),
    ] {
        match app.purge_expired(&req).await {
            Err(e @ Error::Unsupported { .. }) => {
                let text = e.to_string();
                assert!(text.contains("admin DSN") && text.contains("kahn purge"), "{text}");
            }
            other => panic!("{req:?}: the app role may not make this purge: {other:?}"),
        }
    }
    let out = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("app purge");
    assert!(out.reports.is_empty() && out.failures.is_empty(), "{out:?}");
    let run = RunId::new("fresh").expect("valid");
    assert_eq!(app.get_run(&t.read, &run).await.expect("still there").info.next_seq, 4);
    // The operator (admin DSN) may purge as of a time: the same run goes.
    let out = admin.purge_expired(&PurgeRequest::as_of(far)).await.expect("admin purge");
    assert_eq!(
        out.report_for(t.id).map(|r| (r.runs_removed, r.transitions_removed)),
        Some((1, 4)),
        "{out:?}"
    );
}

/// A read scope's transaction — the one every read method runs in — is READ ONLY: a write
/// attempted in it fails in the database, even one the grants would allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_scope_transaction_is_read_only() {
    let (_db, _admin, app, a, _b) = seeded().await;
    let mut tx = app.read_transaction(&a.read).await.expect("read tx");
    let ro: String = query("SELECT current_setting('transaction_read_only') AS ro")
        .fetch_one(&mut *tx)
        .await
        .expect("setting")
        .try_get("ro")
        .expect("ro");
    assert_eq!(ro, "on");
    assert_eq!(count(&mut tx, "runs").await.expect("reads work"), 2);
    let r = query(
        "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at) \
         VALUES ($1, 'via-read-scope', $2, now())",
    )
    .bind(a.id.as_uuid())
    .bind(vec![0u8; 32])
    .execute(&mut *tx)
    .await;
    assert_eq!(sqlstate(r), READ_ONLY_TRANSACTION);
    drop(tx);
    // The same insert in the write scope's transaction is allowed by the grants and policy.
    let mut tx = app.write_transaction(&a.write).await.expect("write tx");
    query(
        "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at) \
         VALUES ($1, 'via-write-scope', $2, now())",
    )
    .bind(a.id.as_uuid())
    .bind(vec![0u8; 32])
    .execute(&mut *tx)
    .await
    .expect("a write scope may insert");
    tx.rollback().await.expect("rollback");
}

// ---------------------------------------------------------------------------------------------
// SECURITY DEFINER functions.
// ---------------------------------------------------------------------------------------------

/// The SECURITY DEFINER functions resolve an API key, an org and a sub to their tenant for
/// the app role with no tenant context at all (raw and through the adapter), and resolve
/// unknown or revoked ones to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_definer_functions_resolve_without_tenant_context() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let org = OrgId::new("org-definer").expect("valid");
    let req = NewTenant::new("definer").expect("valid").with_owner_sub("sub-definer").expect("ok");
    let t = admin.provision_tenant(&req.with_airlock_org_id(org.clone())).await.expect("provision");
    let key = admin.issue_api_key(t.id).await.expect("key");
    let revoked = admin.issue_api_key(t.id).await.expect("key");
    admin.revoke_api_key(t.id, revoked.id).await.expect("revoke");

    let pool = app_pool(&db, 1).await;
    let mut conn = pool.acquire().await.expect("conn");
    let setting: Option<String> = query("SELECT current_setting('kahn.tenant', true) AS s")
        .fetch_one(&mut *conn)
        .await
        .expect("s")
        .try_get("s")
        .expect("s");
    assert!(setting.unwrap_or_default().is_empty(), "no tenant context");
    let one = |sql: &'static str, arg: Vec<u8>, text: Option<&str>| match text {
        Some(t) => query(sql).bind(t.to_owned()),
        None => query(sql).bind(arg),
    };
    let resolve = |row: sqlx_postgres::PgRow| row.try_get::<Option<uuid::Uuid>, _>("t").expect("t");
    let by_key =
        one("SELECT kahn.lookup_api_key($1) AS t", key.secret.hash().as_bytes().to_vec(), None)
            .fetch_one(&mut *conn)
            .await
            .expect("lookup_api_key");
    assert_eq!(resolve(by_key), Some(*t.id.as_uuid()));
    let by_revoked =
        one("SELECT kahn.lookup_api_key($1) AS t", revoked.secret.hash().as_bytes().to_vec(), None)
            .fetch_one(&mut *conn)
            .await
            .expect("lookup_api_key");
    assert_eq!(resolve(by_revoked), None, "a revoked key resolves to nothing");
    let by_org = one("SELECT kahn.lookup_tenant_by_org($1) AS t", vec![], Some("org-definer"))
        .fetch_one(&mut *conn)
        .await
        .expect("lookup_tenant_by_org");
    assert_eq!(resolve(by_org), Some(*t.id.as_uuid()));
    let by_sub = one("SELECT kahn.lookup_tenant_by_sub($1) AS t", vec![], Some("sub-definer"))
        .fetch_one(&mut *conn)
        .await
        .expect("lookup_tenant_by_sub");
    assert_eq!(resolve(by_sub), Some(*t.id.as_uuid()));
    let listed: i64 = query("SELECT count(*) AS n FROM kahn.admin_list_tenants() WHERE id = $1")
        .bind(t.id.as_uuid())
        .fetch_one(&mut *conn)
        .await
        .expect("admin_list_tenants")
        .try_get("n")
        .expect("n");
    assert_eq!(listed, 1);

    // The adapter (app mode) goes through the same functions.
    assert_eq!(app.authenticate_api_key(&key.secret).await.expect("auth"), Some(t.id));
    assert_eq!(app.authenticate_api_key(&revoked.secret).await.expect("auth"), None);
    assert_eq!(app.lookup_tenant_by_org(&org).await.expect("org"), Some(t.id));
    assert_eq!(app.lookup_tenant_by_sub("sub-definer").await.expect("sub"), Some(t.id));
    assert_eq!(app.get_tenant(t.id).await.expect("get").name, "definer");
    let over = app.resolve_admin_override(t.id).await.expect("override");
    assert_eq!(over.tenant(), t.id);
    let tenants = app.list_tenants().await.expect("admin listing through the definer");
    assert!(tenants.iter().any(|s| s.tenant.id == t.id));
    let purged = app
        .purge_expired(&PurgeRequest::at_store_clock())
        .await
        .expect("purge through the definer");
    assert!(purged.reports.is_empty(), "nothing is past retention: {purged:?}");
    // Control-plane writes are not the app's to make.
    assert!(matches!(
        app.provision_tenant(&NewTenant::new("nope").expect("valid")).await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(app.issue_api_key(t.id).await, Err(Error::Unsupported { .. })));
}

/// The SECURITY DEFINER functions expose nothing else: they are exactly the expected set,
/// owned by the NOLOGIN definer role, not executable by PUBLIC; calling them gives the app
/// no access to the tables behind them; hostile arguments are data, not SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_definer_functions_expose_nothing_else() {
    let (db, _admin, _app, _a, _b) = seeded().await;
    let pool = app_pool(&db, 1).await;
    let mut conn = pool.acquire().await.expect("conn");
    let rows = query(
        "SELECT p.proname::text AS name, pg_get_userbyid(p.proowner)::text AS owner, \
                has_function_privilege('kahn_app', p.oid, 'EXECUTE') AS app, \
                EXISTS (SELECT FROM aclexplode(p.proacl) AS a WHERE a.grantee = 0) AS public \
         FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'kahn' AND p.prosecdef ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("pg_proc");
    let names: Vec<String> = rows.iter().map(|r| r.try_get("name").expect("name")).collect();
    assert_eq!(
        names,
        [
            "admin_list_tenants",
            "charge_ingest",
            "get_tenant",
            "lookup_api_key",
            "lookup_tenant_by_org",
            "lookup_tenant_by_sub",
            "provision_personal_tenant",
            "purge_expired",
            "purge_tenant",
            "take_purge_turn",
            "touch_api_key"
        ]
    );
    for r in &rows {
        let name: String = r.try_get("name").expect("name");
        assert_eq!(r.try_get::<String, _>("owner").expect("owner"), "kahn_definer", "{name}");
        // The purge at a caller's time is the operator's, never the app role's.
        let app_may = name != "purge_tenant";
        assert_eq!(r.try_get::<bool, _>("app").expect("app"), app_may, "{name}: kahn_app EXECUTE");
        assert!(!r.try_get::<bool, _>("public").expect("public"), "{name}: PUBLIC may not");
    }
    let login: bool = query("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'kahn_definer'")
        .fetch_one(&mut *conn)
        .await
        .expect("role")
        .try_get("rolcanlogin")
        .expect("bool");
    // Citus runs a definer function's shard queries on the workers as the definer role, over
    // its own connections, so there (and only there) the role must be able to log in; keeping
    // other clients off it is pg_hba's job (kahn-pg/README.md, "Scale-out: Citus").
    assert_eq!(login, db.is_citus(), "the definer role logs in only where Citus needs it to");

    // Hostile arguments are values: they match nothing.
    for hostile in ["' OR '1'='1", "x'); DELETE FROM kahn.tenants; --", "%", "*"] {
        for sql in [
            "SELECT kahn.lookup_tenant_by_org($1) AS t",
            "SELECT kahn.lookup_tenant_by_sub($1) AS t",
        ] {
            let t: Option<uuid::Uuid> = query(sql)
                .bind(hostile)
                .fetch_one(&mut *conn)
                .await
                .expect("lookup")
                .try_get("t")
                .expect("t");
            assert_eq!(t, None, "{sql} with {hostile:?}");
        }
    }
    // Calling the functions opened no door to the tables behind them.
    for table in ["tenants", "api_keys", "ingest_budget"] {
        assert_eq!(sqlstate(count(&mut conn, table).await), INSUFFICIENT_PRIVILEGE, "{table}");
    }
    for sql in [
        "SELECT count(*) FROM kahn.purge_turn",
        "UPDATE kahn.purge_turn SET last_started_at = NULL",
        "INSERT INTO kahn.ingest_budget (tenant_id, tat_us) VALUES (gen_random_uuid(), 0)",
    ] {
        assert_eq!(sqlstate(query(sql).execute(&mut *conn).await), INSUFFICIENT_PRIVILEGE, "{sql}");
    }
    assert_eq!(count(&mut conn, "runs").await.expect("count"), 0);
    // The app role cannot take the definer's identity.
    assert_eq!(
        sqlstate(query("SET ROLE kahn_definer").execute(&mut *conn).await),
        INSUFFICIENT_PRIVILEGE
    );
}

/// Every SECURITY DEFINER function pins its search_path (`proconfig`), with pg_temp last: a
/// temporary table the app role creates to shadow `api_keys` cannot forge a key lookup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_definer_functions_pin_search_path() {
    let (db, _admin) = TestDb::new().await;
    let pool = app_pool(&db, 1).await;
    let mut conn = pool.acquire().await.expect("conn");
    let rows = query(
        "SELECT p.proname::text AS name, coalesce(p.proconfig, '{}')::text[] AS config \
         FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'kahn' AND p.prosecdef",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("pg_proc");
    assert!(!rows.is_empty());
    for r in &rows {
        let name: String = r.try_get("name").expect("name");
        let config: Vec<String> = r.try_get("config").expect("config");
        assert_eq!(config, ["search_path=pg_catalog, kahn, pg_temp"], "{name}");
    }
    // A shadowing attempt: temp tables and a search_path of the app's choosing.
    for sql in [
        "CREATE TEMP TABLE api_keys (tenant_id uuid, key_hash bytea, revoked_at timestamptz)",
        "INSERT INTO pg_temp.api_keys VALUES (gen_random_uuid(), '\\x00', NULL)",
        "SET search_path = pg_temp, public",
    ] {
        query(sql).execute(&mut *conn).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let t: Option<uuid::Uuid> = query("SELECT kahn.lookup_api_key('\\x00'::bytea) AS t")
        .fetch_one(&mut *conn)
        .await
        .expect("lookup")
        .try_get("t")
        .expect("t");
    assert_eq!(t, None, "the shadow table is never consulted");
}

// ---------------------------------------------------------------------------------------------
// Verbatim strings.
// ---------------------------------------------------------------------------------------------

/// Tenant-supplied strings with SQL metacharacters — in run ids, labels, attrs, node, states,
/// graphs, tenant names, subjects and orgs — are stored and read back verbatim, and what the
/// database holds is exactly the canonical JSON that was hashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_strings_with_sql_metacharacters_round_trip_verbatim() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let nasty = "'; DROP TABLE kahn.transitions; -- \" \\ \u{0000} %_ $1 $$ E'\\x00' 🦀";
    let name = "t'\";DROP/**/TABLE/**/kahn.runs;--";
    let sub = "sub'$1\\\"--";
    let org = OrgId::new("org'||pg_sleep(1)||'").expect("valid");
    let req = NewTenant::new(name)
        .expect("valid")
        .with_owner_sub(sub)
        .expect("valid")
        .with_airlock_org_id(org.clone());
    let t = admin.provision_tenant(&req).await.expect("provision");
    assert_eq!(admin.get_tenant(t.id).await.expect("get").name, name);
    assert_eq!(app.lookup_tenant_by_sub(sub).await.expect("sub"), Some(t.id));
    assert_eq!(app.lookup_tenant_by_org(&org).await.expect("org"), Some(t.id));
    let key = admin.issue_api_key(t.id).await.expect("key");
    let w = app.resolve_api_key(&key.secret).await.expect("resolve").expect("key");

    let run = "x'--:DROP.TABLE_runs;";
    let run = run.replace(['\'', ';'], "-"); // the run id alphabet is [A-Za-z0-9._:-]
    let lines = [
        json!({"kind": "run", "run_id": run, "source": "src'\"--", "labels": {"k'\";--": nasty},
               "graph": {"nodes": [nasty], "edges": [[nasty, "b"]]}})
        .to_string(),
        json!({"run_id": run, "seq": 0, "ts": "2026-01-01T00:00:00Z", "to": nasty, "from": "a'b",
               "node": nasty, "attrs": {nasty: nasty, "n": 1}})
        .to_string(),
        json!({"run_id": run, "seq": 1, "ts": "2026-01-01T00:00:01Z", "to": nasty}).to_string(),
    ];
    let batch = AppendBatch::from_ndjson(&lines.join("\n")).expect("valid");
    app.append(&w, &batch).await.expect("append");
    let run_id = RunId::new(&run).expect("valid");
    let s = app.get_run(&w.read(), &run_id).await.expect("get");
    assert_eq!(s.info.source.as_deref(), Some("src'\"--"));
    assert_eq!(s.info.labels.get("k'\";--").map(String::as_str), Some(nasty));
    // The run-level state is the status, verbatim; the node's summary keeps the node and its
    // state verbatim too.
    assert_eq!(s.info.status, nasty);
    assert_eq!((s.nodes[0].node.as_str(), s.nodes[0].state.as_str()), (nasty, nasty));
    assert_eq!(s.graph, Some(json!({"nodes": [nasty], "edges": [[nasty, "b"]]})));
    let rows = app.read_all_transitions(&w.read(), &run_id).await.expect("read");
    assert_eq!(rows[0].body["attrs"][nasty], json!(nasty));
    assert_eq!(rows[0].body["node"], json!(nasty));
    app.verify_run(&w.read(), &run_id).await.expect("the chain recomputes from what was read");

    // The stored text is exactly the canonical JSON that was hashed.
    let body = &batch.runs()[0].bodies()[0];
    let mut tx = app.read_transaction(&w.read()).await.expect("tx");
    let stored: String = query("SELECT body FROM kahn.transitions WHERE run_id = $1 AND seq = 0")
        .bind(&run)
        .fetch_one(&mut *tx)
        .await
        .expect("body")
        .try_get("body")
        .expect("text");
    assert_eq!(stored, body.canonical_json());
    let by_status = app
        .list_runs(&w.read(), &RunQuery { status: Some(nasty.into()), ..RunQuery::default() })
        .await
        .expect("list");
    assert_eq!(by_status.runs.len(), 1);
}

/// The isolation predicate costs a setting read per row, not a function call: the planner
/// inlines `kahn.current_tenant()` into every policy (migration 0009; with a `SET` clause it
/// could not, and a 100k-transition push spent twice as long in its INSERTs). Seen in the plans
/// the app role gets for an append's INSERT (WITH CHECK) and a read's scan (USING): they name
/// `current_setting`, never `current_tenant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_isolation_predicate_is_inlined_into_every_plan() {
    let (db, _admin, _app, a, _b) = seeded().await;
    let pool = app_pool(&db, 1).await;
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    for sql in [
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT seq FROM kahn.transitions \
         WHERE run_id = 'shared' AND body <> ''",
        "EXPLAIN (VERBOSE, COSTS OFF) SELECT run_id FROM kahn.runs WHERE next_seq > 1",
        "EXPLAIN (VERBOSE, COSTS OFF) INSERT INTO kahn.transitions \
         (tenant_id, run_id, seq, body, content_hash, chain_hash) \
         SELECT kahn.current_tenant(), 'shared', s, '{}', '\\x00'::bytea, '\\x00'::bytea \
         FROM generate_series(10, 12) AS s",
    ] {
        let plan: Vec<String> = query(sql)
            .fetch_all(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(|r| r.try_get::<String, _>(0).expect("plan line"))
            .collect();
        let plan = plan.join("\n");
        assert!(!plan.contains("current_tenant"), "a function call per row in:\n{plan}");
        assert!(plan.contains("current_setting"), "the predicate is in the plan:\n{plan}");
    }
    tx.rollback().await.expect("rollback");
}
