//! The fresh-database kit on the real PostgreSQL server (needs it, like every Postgres test:
//! no server fails the test, naming `scripts/ensure-postgres.sh`).

use kahn_testkit::{TestDb, TestRole};
use sqlx_core::connection::Connection;
use sqlx_core::query_scalar::query_scalar;
use sqlx_postgres::PgConnection;

/// Each test gets its own migrated database; the app role it connects as is no superuser and
/// cannot bypass RLS; the database is gone once the handle is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_test_gets_its_own_database_and_connects_as_the_unprivileged_app_role() {
    let (a, admin_a) = TestDb::new().await;
    let (b, admin_b) = TestDb::new().await;
    assert_ne!(a.name, b.name);

    let mut app = PgConnection::connect(&a.url_as_app()).await.expect("the app DSN connects");
    let (user, db): (String, String) =
        sqlx_core::query_as::query_as("SELECT current_user::text, current_database()::text")
            .fetch_one(&mut app)
            .await
            .expect("who am I");
    assert_eq!((user.as_str(), db.as_str()), (kahn_pg::APP_ROLE, a.name.as_str()));
    let privileged: bool = query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut app)
    .await
    .expect("role attributes");
    assert!(!privileged, "the app role is neither superuser nor BYPASSRLS");
    app.close().await.expect("close");
    drop(a.app().await); // passes its startup check

    let role = TestRole::create(&b, &admin_b, "NOSUPERUSER NOBYPASSRLS").await;
    assert!(role.name.starts_with("kahn_t_role_"));
    drop(role);

    let name = a.name.clone();
    admin_a.close().await;
    drop(a);
    let mut maintenance =
        PgConnection::connect(&kahn_testkit::admin_url()).await.expect("maintenance");
    let left: i64 = query_scalar("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut maintenance)
        .await
        .expect("count");
    assert_eq!(left, 0, "the database is dropped with its handle");
    admin_b.close().await;
}
