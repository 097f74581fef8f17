//! The data lifecycle on Postgres as the app role `kahn_app`: what it may do (purge at the
//! database's clock, create personal tenants through their function, record key use, renew its
//! runs' receipt) and what it may not (anything else of the control plane, a purge of its own
//! timing or scope, a forged or another tenant's receipt). Each test has a fresh database.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use kahn_core::{
    AppendBatch, Error, NewApiKey, NewTenant, OrgId, PurgeRequest, StorageBackend,
    StorageBackendExt, TenantChange, TenantId, WriteScope,
};
use kahn_pg::{PgBackend, PgConnectOptions, PgPool, PgPoolOptions};
use kahn_testkit::TestDb;
use serde_json::json;
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::PgConnection;

const INSUFFICIENT_PRIVILEGE: &str = "42501";
const INVALID_PARAMETER_VALUE: &str = "22023";

struct T {
    id: TenantId,
    key: kahn_core::IssuedApiKey,
    write: WriteScope,
}

async fn tenant(admin: &PgBackend, app: &PgBackend, days: u32) -> T {
    let name = format!("life-{}", uuid::Uuid::new_v4().simple());
    let req = NewTenant::new(name).expect("valid").with_retention_days(days).expect("valid");
    let t = admin.provision_tenant(&req).await.expect("provision");
    let key = admin.issue_api_key(t.id).await.expect("key");
    let write = app.resolve_api_key(&key.secret).await.expect("resolve").expect("resolves");
    T { id: t.id, key, write }
}

fn ndjson(run: &str, n: u64) -> AppendBatch {
    let lines: Vec<String> = (0..n)
        .map(|seq| {
            json!({"run_id": run, "seq": seq, "ts": "2025-01-01T00:00:00Z", "to": format!("s{seq}")})
                .to_string()
        })
        .collect();
    AppendBatch::from_ndjson(&lines.join("\n")).expect("valid batch")
}

fn sqlstate<T: std::fmt::Debug>(r: Result<T, sqlx_core::Error>) -> String {
    let e = r.expect_err("the database must refuse this");
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
        .unwrap_or_else(|| panic!("not a database error: {e}"))
}

async fn app_pool(db: &TestDb) -> PgPool {
    db.pool_as(kahn_pg::APP_ROLE, 1).await
}

async fn set_tenant(conn: &mut PgConnection, tenant: TenantId) {
    query("SELECT kahn.enter_tenant($1)")
        .bind(tenant.as_uuid())
        .execute(&mut *conn)
        .await
        .expect("set tenant");
}

/// A run's received_at as the admin sees it.
async fn received_at(admin: &PgBackend, tenant: TenantId, run: &str) -> DateTime<Utc> {
    query("SELECT received_at FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2")
        .bind(tenant.as_uuid())
        .bind(run)
        .fetch_one(admin.pool())
        .await
        .expect("run")
        .try_get("received_at")
        .expect("received_at")
}

/// Moves a run's receipt into the past as the operator: the trigger stamps now() over any
/// other received_at, so the superuser switches triggers off for its own transaction (replica
/// mode; on Citus also on the workers, where the shards' triggers run).
async fn backdate(admin: &PgBackend, tenant: TenantId, run: &str, days: i32) {
    let mut tx = admin.pool().begin().await.expect("begin");
    query("SET LOCAL citus.propagate_set_commands = 'local'")
        .execute(&mut *tx)
        .await
        .expect("propagate");
    query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await.expect("replica");
    query(
        "UPDATE kahn.runs SET received_at = now() - make_interval(days => $3) \
         WHERE tenant_id = $1 AND run_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(run)
    .bind(days)
    .execute(&mut *tx)
    .await
    .expect("backdate");
    tx.commit().await.expect("commit");
}

async fn transitions_of(admin: &PgBackend, tenant: TenantId, run: &str) -> i64 {
    query("SELECT count(*) AS n FROM kahn.transitions WHERE tenant_id = $1 AND run_id = $2")
        .bind(tenant.as_uuid())
        .bind(run)
        .fetch_one(admin.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n")
}

fn unsupported_naming_the_admin_dsn<T: std::fmt::Debug>(what: &str, r: kahn_core::Result<T>) {
    match r {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("admin DSN"), "{what}: {e}");
        }
        other => panic!("{what}: the app role must get Unsupported, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The purge.
// ---------------------------------------------------------------------------------------------

/// The app role's purge at the database's clock removes what is past retention (by receipt,
/// whatever the producer's ts) and nothing else; its report names the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_purge_at_the_database_clock_removes_only_runs_past_retention() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 1).await;
    let other = tenant(&admin, &app, 3).await;
    for run in ["old", "fresh"] {
        app.append(&t.write, &ndjson(run, 3)).await.expect("append");
    }
    app.append(&other.write, &ndjson("old", 2)).await.expect("append");
    backdate(&admin, t.id, "old", 2).await;
    backdate(&admin, other.id, "old", 2).await;
    let out = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("purge");
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    assert_eq!(out.reports.len(), 1, "only the 1-day tenant loses a run: {out:?}");
    assert_eq!(out.report_for(t.id).map(|r| (r.runs_removed, r.transitions_removed)), Some((1, 3)));
    assert_eq!(transitions_of(&admin, t.id, "old").await, 0);
    assert_eq!(transitions_of(&admin, t.id, "fresh").await, 3);
    assert_eq!(transitions_of(&admin, other.id, "old").await, 2, "3 days not passed");
    let again = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("purge");
    assert!(again.reports.is_empty(), "{again:?}");
}

/// A run receiving an append while the purge runs is never purged: the purge waits for the
/// append's lock and re-checks the run against the append's outcome (received_at renewed).
/// And a run the purge does remove loses every transition, including one committed by a
/// transaction it waited for: no orphan rows are left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_receiving_an_append_during_the_purge_is_kept_and_none_is_orphaned() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let zero = vec![0u8; 32];
    for (run, renew) in [("live", true), ("gone", false)] {
        // A tenant of its own, so the purge's report is this run's.
        let t = tenant(&admin, &app, 1).await;
        app.append(&t.write, &ndjson(run, 2)).await.expect("append");
        backdate(&admin, t.id, run, 2).await;
        // An append in flight: the run locked, a row added, received_at renewed (or, for
        // "gone", a row added without renewal: what only a broken writer would do).
        let mut tx = app.write_transaction(&t.write).await.expect("write tx");
        query("SELECT next_seq FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2 FOR UPDATE")
            .bind(t.id.as_uuid())
            .bind(run)
            .fetch_one(&mut *tx)
            .await
            .expect("lock");
        query(
            "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
             VALUES ($1, $2, 2, '{}', $3, $3)",
        )
        .bind(t.id.as_uuid())
        .bind(run)
        .bind(&zero)
        .execute(&mut *tx)
        .await
        .expect("insert");
        let renew_sql = if renew {
            "UPDATE kahn.runs SET next_seq = 3, received_at = now() \
             WHERE tenant_id = $1 AND run_id = $2"
        } else {
            "UPDATE kahn.runs SET next_seq = 3 WHERE tenant_id = $1 AND run_id = $2"
        };
        query(renew_sql).bind(t.id.as_uuid()).bind(run).execute(&mut *tx).await.expect("update");

        let purger = app.clone();
        let purge =
            tokio::spawn(
                async move { purger.purge_expired(&PurgeRequest::at_store_clock()).await },
            );
        tokio::time::sleep(StdDuration::from_millis(500)).await;
        assert!(!purge.is_finished(), "{run}: the purge waits for the append's lock");
        tx.commit().await.expect("commit the append");
        let out = purge.await.expect("join").expect("purge");
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        if renew {
            assert!(out.report_for(t.id).is_none(), "a run receiving appends is kept: {out:?}");
            assert_eq!(transitions_of(&admin, t.id, run).await, 3);
        } else {
            assert_eq!(
                out.report_for(t.id).map(|r| (r.runs_removed, r.transitions_removed)),
                Some((1, 3)),
                "the row committed while the purge waited goes with its run"
            );
            assert_eq!(transitions_of(&admin, t.id, run).await, 0, "no orphan rows");
        }
    }
}

/// Tenants are purged independently: a tenant whose purge fails (here: its expired run is
/// locked elsewhere past the session's lock_timeout) is reported in `failures`, with nothing of
/// its removed, and the other tenants' purges stand, as the operator and as the app role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_failed_purge_leaves_the_others_purged() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let stuck = tenant(&admin, &app, 1).await;
    let free = tenant(&admin, &app, 1).await;
    app.append(&stuck.write, &ndjson("old", 2)).await.expect("append");
    backdate(&admin, stuck.id, "old", 2).await;
    // Backends whose sessions wait at most 200 ms for a lock.
    let impatient = |opts: PgConnectOptions| opts.options([("lock_timeout", "200ms")]);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(impatient(db.options_as(kahn_pg::APP_ROLE)))
        .await
        .expect("app pool");
    let impatient_app = PgBackend::app_from_pool(pool).await.expect("app backend");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(impatient(db.admin_options()))
        .await
        .expect("admin pool");
    let impatient_admin = PgBackend::admin_from_pool(pool).await.expect("admin backend");

    let mut hold = admin.pool().begin().await.expect("begin");
    query("SELECT 1 FROM kahn.runs WHERE tenant_id = $1 FOR UPDATE")
        .bind(stuck.id.as_uuid())
        .fetch_all(&mut *hold)
        .await
        .expect("hold the stuck tenant's run");
    for (who, backend) in [("operator", &impatient_admin), ("app", &impatient_app)] {
        let run = format!("old-{who}");
        app.append(&free.write, &ndjson(&run, 2)).await.expect("append");
        backdate(&admin, free.id, &run, 2).await;
        let out = backend.purge_expired(&PurgeRequest::at_store_clock()).await.expect("purge");
        let failed: Vec<TenantId> = out.failures.iter().map(|f| f.tenant_id).collect();
        assert_eq!(failed, [stuck.id], "{who}: {out:?}");
        let why = out.failures[0].error.chain().to_string();
        assert!(why.contains("lock"), "{who}: the failure says why: {why}");
        assert_eq!(
            out.report_for(free.id).map(|r| (r.runs_removed, r.transitions_removed)),
            Some((1, 2)),
            "{who}: {out:?}"
        );
        assert!(out.report_for(stuck.id).is_none(), "{who}");
        assert_eq!(transitions_of(&admin, free.id, &run).await, 0, "{who}");
    }
    hold.rollback().await.expect("release");
    assert_eq!(transitions_of(&admin, stuck.id, "old").await, 2, "nothing of it was removed");
    let out = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("purge");
    assert_eq!(out.report_for(stuck.id).map(|r| r.runs_removed), Some(1), "once unlocked");
}

/// The operator's purge (admin DSN) takes an instant, a tenant and a dry run; the dry run
/// reports what the purge then removes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_purge_takes_an_instant_a_tenant_and_a_dry_run() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let a = tenant(&admin, &app, 1).await;
    let b = tenant(&admin, &app, 1).await;
    for t in [&a, &b] {
        app.append(&t.write, &ndjson("r", 2)).await.expect("append");
    }
    let at = received_at(&admin, a.id, "r").await.max(received_at(&admin, b.id, "r").await)
        + chrono::Duration::days(2);
    let dry = admin.purge_expired(&PurgeRequest::as_of(at).dry_run()).await.expect("dry run");
    assert_eq!(dry.reports.len(), 2, "{dry:?}");
    assert_eq!(transitions_of(&admin, a.id, "r").await, 2, "a dry run removes nothing");
    let one = admin.purge_expired(&PurgeRequest::as_of(at).for_tenant(a.id)).await.expect("a");
    assert_eq!(one.reports.len(), 1);
    assert_eq!(one.report_for(a.id).map(|r| (r.runs_removed, r.transitions_removed)), Some((1, 2)));
    assert_eq!(transitions_of(&admin, b.id, "r").await, 2, "b was out of scope");
    // An instant before anything Postgres can hold removes nothing (and is no error).
    let early = admin
        .purge_expired(&PurgeRequest::as_of(DateTime::<Utc>::MIN_UTC))
        .await
        .expect("purge at the earliest instant");
    assert!(early.reports.is_empty());
}

// ---------------------------------------------------------------------------------------------
// received_at.
// ---------------------------------------------------------------------------------------------

/// The app role renews its runs' receipt (the append's grant), but only to the database's
/// now(): whatever else it writes, the database stamps its own clock instead (a forged receipt
/// would let a compromised server have every tenant's runs purged), and another tenant's runs
/// are out of its reach (RLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_forge_a_receipt_or_touch_another_tenants() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let a = tenant(&admin, &app, 1).await;
    let b = tenant(&admin, &app, 1).await;
    for t in [&a, &b] {
        app.append(&t.write, &ndjson("shared", 2)).await.expect("append");
    }
    let b_before = received_at(&admin, b.id, "shared").await;
    let pool = app_pool(&db).await;

    // Another tenant's runs: RLS shows the app role none of them, in A's context.
    let mut tx = pool.begin().await.expect("begin");
    set_tenant(&mut tx, a.id).await;
    let touched = query("UPDATE kahn.runs SET received_at = now() WHERE tenant_id = $1")
        .bind(b.id.as_uuid())
        .execute(&mut *tx)
        .await
        .expect("an update RLS narrows to nothing")
        .rows_affected();
    assert_eq!(touched, 0, "B's runs are invisible in A's context");
    // Its own: renewing to now() is what the append does, and is allowed.
    let own = query("UPDATE kahn.runs SET received_at = now()")
        .execute(&mut *tx)
        .await
        .expect("renew its own")
        .rows_affected();
    assert_eq!(own, 1, "only A's run");
    tx.rollback().await.expect("rollback");

    // A forged receipt, past or future, in its own tenant or (INSERT) anew, is replaced by the
    // database's clock: between this transaction's start and now (on Citus the shard's trigger
    // runs on a worker, in a transaction that began a moment after the coordinator's).
    for (sql, run) in [
        ("UPDATE kahn.runs SET received_at = '1970-01-01'", "shared"),
        ("UPDATE kahn.runs SET received_at = now() - interval '1 microsecond'", "shared"),
        ("UPDATE kahn.runs SET received_at = 'infinity'", "shared"),
        (
            "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at, received_at) \
             VALUES (kahn.current_tenant(), 'forged', '\\x0000000000000000000000000000000000000000000000000000000000000000', now(), '1970-01-01')",
            "forged",
        ),
    ] {
        let mut tx = pool.begin().await.expect("begin");
        set_tenant(&mut tx, a.id).await;
        let written = query(sql).execute(&mut *tx).await.expect(sql).rows_affected();
        assert_eq!(written, 1, "{sql}");
        let stamped: bool = query(
            "SELECT received_at >= now() AND received_at <= clock_timestamp() AS ok \
             FROM kahn.runs WHERE run_id = $1",
        )
        .bind(run)
        .fetch_one(&mut *tx)
        .await
        .expect("read the receipts")
        .try_get("ok")
        .expect("ok");
        assert!(stamped, "{sql}: the receipt is the database's clock, not the writer's");
        tx.rollback().await.expect("rollback");
    }
    assert_eq!(received_at(&admin, b.id, "shared").await, b_before);
}

// ---------------------------------------------------------------------------------------------
// Personal tenants.
// ---------------------------------------------------------------------------------------------

/// The app role creates a subject's personal tenant through `kahn.provision_personal_tenant`
/// (once, and never under a name someone else holds), and in no other way: a direct INSERT into
/// kahn.tenants is refused by the database, and so is a malformed subject, even called raw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_provisions_personal_tenants_only_through_the_function() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let sub = format!("auth0|{}", uuid::Uuid::new_v4().simple());
    let id = app.provision_personal_tenant(&sub).await.expect("first sign-in");
    assert_eq!(app.provision_personal_tenant(&sub).await.expect("again"), id);
    assert_eq!(app.lookup_tenant_by_sub(&sub).await.expect("lookup"), Some(id));
    let t = app.get_tenant(id).await.expect("get");
    assert_eq!(t.name, format!("user:{sub}"));
    assert_eq!(t.owner_sub.as_deref(), Some(sub.as_str()));
    assert_eq!(t.retention_days, kahn_core::DEFAULT_RETENTION_DAYS);
    let newcomer = format!("google-oauth2|{}", uuid::Uuid::new_v4().simple());
    let scope = app.resolve_sub_creating(&newcomer).await.expect("created on first sign-in");
    assert_eq!(app.lookup_tenant_by_sub(&newcomer).await.expect("lookup"), Some(scope.tenant()));

    // A name held by someone else is refused, naming `name`, and creates nothing.
    admin.provision_tenant(&NewTenant::new("user:squatted").expect("valid")).await.expect("squat");
    let count = || async { admin.list_tenants().await.expect("list").len() };
    let before = count().await;
    match app.provision_personal_tenant("squatted").await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "name"),
        other => panic!("a held name must be refused naming `name`: {other:?}"),
    }
    // (NewTenant::personal checks the name `user:<sub>` first, so the field is `name`.)
    match app.provision_personal_tenant("has space").await {
        Err(Error::InvalidInput { field, .. }) => {
            assert!(field == "name" || field == "owner_sub", "{field}");
        }
        other => panic!("a malformed sub must be refused: {other:?}"),
    }
    assert_eq!(count().await, before, "nothing was created");
    assert_eq!(app.lookup_tenant_by_sub("squatted").await.expect("lookup"), None);

    // Raw SQL as the app role.
    let pool = app_pool(&db).await;
    let mut conn = pool.acquire().await.expect("conn");
    let direct = query(
        "INSERT INTO kahn.tenants (id, name, owner_sub, retention_days, created_at) \
         VALUES (gen_random_uuid(), 'user:direct', 'direct', 90, now())",
    )
    .execute(&mut *conn)
    .await;
    assert_eq!(sqlstate(direct), INSUFFICIENT_PRIVILEGE, "no INSERT on tenants");
    let held: Option<uuid::Uuid> = query("SELECT kahn.provision_personal_tenant('squatted') AS id")
        .fetch_one(&mut *conn)
        .await
        .expect("call")
        .try_get("id")
        .expect("id");
    assert_eq!(held, None, "the function never hands out a name someone else holds");
    let long = "x".repeat(300);
    for bad in ["", "has space", "tab\there", long.as_str()] {
        let r = query("SELECT kahn.provision_personal_tenant($1) AS id")
            .bind(bad)
            .fetch_one(&mut *conn)
            .await;
        assert_eq!(sqlstate(r), INVALID_PARAMETER_VALUE, "{bad:?}");
    }
    assert_eq!(count().await, before, "nothing was created");
}

// ---------------------------------------------------------------------------------------------
// The control plane is the operator's.
// ---------------------------------------------------------------------------------------------

/// Tenant changes, deletion, key management, export, import and operator scopes are the
/// admin DSN's: the app backend answers each with Unsupported naming the admin DSN (never a
/// raw permission error), and the database refuses the same changes as raw SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_change_delete_or_move_tenants() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 7).await;
    app.append(&t.write, &ndjson("kept", 2)).await.expect("append");
    let before = admin.get_tenant(t.id).await.expect("get");
    let org = OrgId::new("org-nope").expect("valid");
    let retention = TenantChange::retention_days(1).expect("valid");
    let rename = TenantChange::rename("renamed").expect("valid");
    unsupported_naming_the_admin_dsn("retention", app.update_tenant(t.id, &retention).await);
    unsupported_naming_the_admin_dsn("rename", app.update_tenant(t.id, &rename).await);
    unsupported_naming_the_admin_dsn("link_org", app.link_org(t.id, &org).await);
    unsupported_naming_the_admin_dsn("delete", app.delete_tenant(t.id).await);
    unsupported_naming_the_admin_dsn(
        "create_key",
        app.create_api_key(t.id, &NewApiKey::new()).await,
    );
    unsupported_naming_the_admin_dsn("issue_key", app.issue_api_key(t.id).await);
    unsupported_naming_the_admin_dsn("rotate", app.rotate_api_key(t.id, t.key.id).await);
    unsupported_naming_the_admin_dsn("revoke", app.revoke_api_key(t.id, t.key.id).await);
    unsupported_naming_the_admin_dsn("list_keys", app.list_api_keys(t.id).await);
    unsupported_naming_the_admin_dsn("export", app.export_tenant(t.id).await);
    let record = admin.export_tenant(t.id).await.expect("export as the admin");
    unsupported_naming_the_admin_dsn("import", app.import_tenant(&record).await);
    unsupported_naming_the_admin_dsn("operator scope", app.operator_write_scope(t.id).await);
    let op = admin.operator_write_scope(t.id).await.expect("the admin's operator scope");
    unsupported_naming_the_admin_dsn("operator append", app.append(&op, &ndjson("op", 1)).await);

    assert_eq!(admin.get_tenant(t.id).await.expect("get"), before, "nothing changed");
    assert!(app.resolve_api_key(&t.key.secret).await.expect("resolve").is_some());
    assert_eq!(transitions_of(&admin, t.id, "kept").await, 2);
    assert_eq!(transitions_of(&admin, t.id, "op").await, 0);

    let pool = app_pool(&db).await;
    for sql in [
        "UPDATE kahn.tenants SET retention_days = 1",
        "UPDATE kahn.tenants SET name = 'renamed'",
        "DELETE FROM kahn.tenants",
        "DELETE FROM kahn.api_keys",
        "UPDATE kahn.api_keys SET expires_at = now()",
        "UPDATE kahn.api_keys SET last_used_at = now()",
    ] {
        let mut tx = pool.begin().await.expect("begin");
        set_tenant(&mut tx, t.id).await;
        assert_eq!(sqlstate(query(sql).execute(&mut *tx).await), INSUFFICIENT_PRIVILEGE, "{sql}");
        tx.rollback().await.expect("rollback");
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.
// ---------------------------------------------------------------------------------------------

/// A key past its expiry resolves to nothing (raw and through the adapter), and a scope
/// resolved before it expired can no longer append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_does_not_resolve() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 7).await;
    let expiring = admin
        .create_api_key(t.id, &NewApiKey::new().expires_in(chrono::Duration::hours(1)).expect("ok"))
        .await
        .expect("issue");
    let scope = app.resolve_api_key(&expiring.secret).await.expect("resolve").expect("active");
    app.append(&scope, &ndjson("before", 1)).await.expect("append while active");
    // The operator moves its expiry into the past.
    query("UPDATE kahn.api_keys SET expires_at = now() - interval '1 second' WHERE key_id = $1")
        .bind(expiring.id.as_uuid())
        .execute(admin.pool())
        .await
        .expect("expire");
    assert_eq!(app.authenticate_api_key(&expiring.secret).await.expect("auth"), None);
    let pool = app_pool(&db).await;
    let raw: Option<uuid::Uuid> = query("SELECT kahn.lookup_api_key($1) AS t")
        .bind(expiring.secret.hash().as_bytes().as_slice())
        .fetch_one(&pool)
        .await
        .expect("lookup")
        .try_get("t")
        .expect("t");
    assert_eq!(raw, None);
    match app.append(&scope, &ndjson("after", 1)).await {
        Err(Error::Unauthorized(message)) => assert!(message.contains("expired"), "{message}"),
        other => panic!("an expired key's scope cannot append: {other:?}"),
    }
    assert_eq!(transitions_of(&admin, t.id, "after").await, 0);
    // The tenant's other key is untouched.
    assert_eq!(app.authenticate_api_key(&t.key.secret).await.expect("auth"), Some(t.id));
}

/// Authenticating through the app role records the key's last use, off the request path and
/// through `kahn.touch_api_key`, which writes at most once a minute per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_use_is_recorded_through_the_app_role() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 7).await; // resolved once already, through the app
    let last_used = || async {
        admin
            .list_api_keys(t.id)
            .await
            .expect("keys")
            .iter()
            .find(|k| k.id == t.key.id)
            .and_then(|k| k.last_used_at)
    };
    let mut first = None;
    for _ in 0..100 {
        first = last_used().await;
        if first.is_some() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let first = first.expect("the use is recorded within 5 s");
    assert!(first <= Utc::now() + chrono::Duration::seconds(1));

    // Raw, as the app role: within the minute, touching changes nothing...
    let pool = app_pool(&db).await;
    let touch = || async {
        query("SELECT kahn.touch_api_key($1)")
            .bind(t.key.secret.hash().as_bytes().as_slice())
            .execute(&pool)
            .await
            .expect("touch");
    };
    touch().await;
    assert_eq!(last_used().await, Some(first), "at most one write a minute");
    // ...and once the last use is older than a minute, it records the new one.
    query("UPDATE kahn.api_keys SET last_used_at = now() - interval '2 minutes' WHERE key_id = $1")
        .bind(t.key.id.as_uuid())
        .execute(admin.pool())
        .await
        .expect("age the last use");
    touch().await;
    let second = last_used().await.expect("recorded");
    assert!(second > first - chrono::Duration::seconds(1), "{second} after {first}");
    assert!(second > Utc::now() - chrono::Duration::seconds(30), "{second}");
}

/// A rotation with a grace period keeps the old key working and sets its expiry; a key
/// already expiring sooner keeps its earlier expiry; retiring a key that is not active issues
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollover_with_grace_keeps_earlier_expiries_and_issues_nothing_on_a_bad_key() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 7).await;
    let soon = admin
        .create_api_key(t.id, &NewApiKey::new().expires_in(chrono::Duration::hours(1)).expect("ok"))
        .await
        .expect("issue");
    let grace = chrono::Duration::hours(24);
    let req =
        NewApiKey::new().retiring_after(kahn_core::RetiredKeys::AllActive, grace).expect("valid");
    let new = admin.create_api_key(t.id, &req).await.expect("rotate with grace");
    let keys = admin.list_api_keys(t.id).await.expect("keys");
    let of = |id| keys.iter().find(|k| k.id == id).expect("listed").clone();
    let (old, soon_info, new_info) = (of(t.key.id), of(soon.id), of(new.id));
    let now = Utc::now();
    assert!(old.expires_at.is_some_and(|e| e > now + chrono::Duration::hours(23)), "{old:?}");
    assert!(soon_info.expires_at.is_some_and(|e| e < now + chrono::Duration::hours(2)));
    assert_eq!((new_info.expires_at, new_info.revoked_at), (None, None));
    for secret in [&t.key.secret, &soon.secret, &new.secret] {
        assert_eq!(app.authenticate_api_key(secret).await.expect("auth"), Some(t.id));
    }

    let before = admin.list_api_keys(t.id).await.expect("keys").len();
    admin.revoke_api_key(t.id, soon.id).await.expect("revoke");
    for gone in [soon.id, kahn_core::ApiKeyId::new_random()] {
        assert!(matches!(
            admin.rotate_api_key(t.id, gone).await,
            Err(Error::NotFound { what: "api_key", .. })
        ));
    }
    assert_eq!(admin.list_api_keys(t.id).await.expect("keys").len(), before, "nothing issued");
    assert!(matches!(
        admin.create_api_key(TenantId::new_random(), &NewApiKey::new()).await,
        Err(Error::NotFound { what: "tenant", .. })
    ));
    // An immediate rotation revokes the old key at once.
    admin.rotate_api_key(t.id, new.id).await.expect("rotate");
    assert_eq!(app.authenticate_api_key(&new.secret).await.expect("auth"), None);
}

// ---------------------------------------------------------------------------------------------
// A store altered behind KAHN's back.
// ---------------------------------------------------------------------------------------------

/// Stored data that fails its own checks is the one corrupt variant (`Error::Integrity`), as on
/// every backend: a body edited in place breaks the chain and verification names the seq; a
/// stored graph that is not JSON is corrupt when the run is read and when an append's graph
/// is compared with it (the append rebuilds stored metadata with `RunMeta::from_stored`, as the
/// SQLite adapter does) — never `InvalidInput`, which would blame the caller, nor `Backend`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_altered_behind_kahns_back_is_corrupt() {
    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 30).await;
    let read = t.write.read();
    let run = kahn_core::RunId::new("altered").expect("valid");
    app.append(&t.write, &ndjson("altered", 8)).await.expect("append");
    let graph = AppendBatch::from_ndjson(
        &json!({"kind": "run", "run_id": "altered", "graph": {"nodes": ["a"]}}).to_string(),
    )
    .expect("valid");
    app.append(&t.write, &graph).await.expect("append the graph");
    app.verify_run(&read, &run).await.expect("intact");

    let edited = query(
        "UPDATE kahn.transitions SET body = replace(body, '\"s5\"', '\"s9\"') \
         WHERE tenant_id = $1 AND run_id = 'altered' AND seq = 5",
    )
    .bind(t.id.as_uuid())
    .execute(admin.pool())
    .await
    .expect("edit a body as the operator");
    assert_eq!(edited.rows_affected(), 1);
    let err = app.verify_run(&read, &run).await.expect_err("the chain no longer recomputes");
    assert!(
        matches!(&err, Error::Integrity { run_id: Some(r), seq: Some(5), .. } if *r == run),
        "{err:?}"
    );

    query("UPDATE kahn.runs SET graph = '{not json' WHERE tenant_id = $1 AND run_id = 'altered'")
        .bind(t.id.as_uuid())
        .execute(admin.pool())
        .await
        .expect("corrupt the graph as the operator");
    let corrupt = |e: &Error| matches!(e, Error::Integrity { run_id: Some(r), .. } if *r == run);
    let err = app.get_run(&read, &run).await.expect_err("the graph does not decode");
    assert!(corrupt(&err), "{err:?}");
    let meta = AppendBatch::from_ndjson(
        &json!({"kind": "run", "run_id": "altered", "graph": {"nodes": ["a"]}}).to_string(),
    )
    .expect("valid");
    let err = app.append(&t.write, &meta).await.expect_err("comparing with a corrupt graph");
    assert!(corrupt(&err), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// The checkpoint log.
// ---------------------------------------------------------------------------------------------

/// Counts a tenant's rows of a checkpoint table, as the operator.
async fn checkpoint_rows(admin: &PgBackend, tenant: TenantId, table: &str) -> i64 {
    assert!(["checkpoint_leaves", "checkpoints", "purge_records"].contains(&table));
    let sql = format!("SELECT count(*) AS n FROM kahn.{table} WHERE tenant_id = $1");
    query(sqlx_core::sql_str::AssertSqlSafe(sql))
        .bind(tenant.as_uuid())
        .fetch_one(admin.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n")
}

/// The app role's purge at the database's clock records the run it removes (its last head, as
/// logged), and the next checkpoint the app role makes logs it as `Purged` and marks the record
/// logged; a leaf or an envelope altered behind KAHN's back, or a leaf removed, is
/// [`Error::Integrity`] naming it; the operator's tenant deletion removes the tenant's leaves,
/// checkpoints and purge records with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_are_recorded_and_the_log_goes_only_with_its_tenant() {
    use kahn_core::checkpoint::LeafKind;

    let (db, admin) = TestDb::new().await;
    let app = db.app().await;
    let t = tenant(&admin, &app, 1).await;
    let read = t.write.read();
    let signer = kahn_core::receipt::ReceiptSigner::generate().expect("a signing key");
    app.append(&t.write, &ndjson("old", 3)).await.expect("append");
    app.make_checkpoint(&read, &signer, Utc::now()).await.expect("first checkpoint");
    let logged = app.read_checkpoint_log(&read).await.expect("log").leaves;
    assert_eq!(logged.len(), 1);

    backdate(&admin, t.id, "old", 2).await;
    let out = app.purge_expired(&PurgeRequest::at_store_clock()).await.expect("purge");
    assert_eq!(out.runs_removed(), 1);
    let inputs = app.checkpoint_inputs(&read).await.expect("inputs");
    assert!(inputs.heads.is_empty(), "{:?}", inputs.heads);
    let [record] = inputs.purges.as_slice() else {
        panic!("one purge record: {:?}", inputs.purges)
    };
    assert_eq!(
        (record.run.run_id.as_str(), record.run.next_seq, record.run.head_hash),
        ("old", 3, logged[0].head_hash),
        "the record is the run's last head"
    );

    app.make_checkpoint(&read, &signer, Utc::now()).await.expect("second checkpoint");
    let log = app.read_checkpoint_log(&read).await.expect("log");
    let kinds: Vec<_> = log.leaves.iter().map(|l| l.kind).collect();
    assert_eq!(kinds, [LeafKind::Head, LeafKind::Purged]);
    assert!(app.checkpoint_inputs(&read).await.expect("inputs").purges.is_empty());
    let unlogged: i64 =
        query("SELECT count(*) AS n FROM kahn.purge_records WHERE tenant_id = $1 AND NOT logged")
            .bind(t.id.as_uuid())
            .fetch_one(admin.pool())
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
    assert_eq!(unlogged, 0, "the checkpoint marked the record logged");

    // Altered as the operator: each is Integrity, naming what does not decode.
    let integrity = |r: kahn_core::Result<kahn_core::checkpoint::CheckpointLog>, what: &str| match r
    {
        Err(Error::Integrity { message, .. }) => {
            assert!(message.contains(what), "{what}: {message}");
        }
        other => panic!("{what}: expected Integrity, got {other:?}"),
    };
    let alter = |sql: &'static str| {
        let pool = admin.pool().clone();
        let tenant = t.id;
        async move {
            query(sql).bind(tenant.as_uuid()).execute(&pool).await.expect(sql);
        }
    };
    alter(
        "UPDATE kahn.checkpoint_leaves SET leaf = overlay(leaf placing '\\x09'::bytea from 1) \
         WHERE tenant_id = $1 AND idx = 1",
    )
    .await;
    integrity(app.read_checkpoint_log(&read).await, "leaf 1");
    alter(
        "UPDATE kahn.checkpoint_leaves SET leaf = overlay(leaf placing '\\x01'::bytea from 1) \
         WHERE tenant_id = $1 AND idx = 1",
    )
    .await;
    app.read_checkpoint_log(&read).await.expect("restored");
    alter("UPDATE kahn.checkpoints SET envelope = '{' WHERE tenant_id = $1 AND seq = 1").await;
    integrity(app.read_checkpoint_log(&read).await, "checkpoint 1's envelope");
    integrity(app.checkpoint_inputs(&read).await.map(|i| i.log), "checkpoint 1's envelope");
    alter("DELETE FROM kahn.checkpoint_leaves WHERE tenant_id = $1 AND idx = 0").await;
    integrity(app.read_checkpoint_log(&read).await, "leaf 0");

    for table in ["checkpoint_leaves", "checkpoints", "purge_records"] {
        assert!(checkpoint_rows(&admin, t.id, table).await > 0, "{table} holds rows");
    }
    admin.delete_tenant(t.id).await.expect("delete the tenant");
    for table in ["checkpoint_leaves", "checkpoints", "purge_records"] {
        assert_eq!(checkpoint_rows(&admin, t.id, table).await, 0, "{table}");
    }
}
