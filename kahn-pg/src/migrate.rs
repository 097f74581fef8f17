//! The versioned migrations, embedded in the binary.
//!
//! This is what `sqlx::migrate!("./migrations")` expands to, written out: the `sqlx` facade
//! crate (which holds the macro) cannot be a dependency of this workspace, because its optional
//! `sqlx-sqlite` dependency links a `libsqlite3-sys` whose version conflicts with the one
//! `rusqlite` (kahn-sqlite) links, and Cargo refuses two crates linking `sqlite3` even when one
//! is never built. Add a migration by adding its file to `migrations/` and a line here.

use std::borrow::Cow;

use sqlx_core::migrate::{Migration, MigrationType, Migrator};
use sqlx_core::sql_str::SqlSafeStr;

/// `(version, description, SQL)` of every migration, in order.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("../migrations/0001_init.sql")),
    (
        2,
        "transitions without run fkey",
        include_str!("../migrations/0002_transitions_without_run_fkey.sql"),
    ),
    (3, "purge on database clock", include_str!("../migrations/0003_purge_on_database_clock.sql")),
    (
        4,
        "retention by receipt keys and personal tenants",
        include_str!("../migrations/0004_retention_by_receipt_keys_and_personal_tenants.sql"),
    ),
];

/// The migrator holding every migration of `migrations/`, as `sqlx::migrate!` would build it
/// (same checksums, same `_sqlx_migrations` table), each migration in its own transaction.
pub fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}
