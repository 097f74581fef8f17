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
    (5, "run status", include_str!("../migrations/0005_run_status.sql")),
    (
        6,
        "policies without subqueries",
        include_str!("../migrations/0006_policies_without_subqueries.sql"),
    ),
    (7, "citus ready", include_str!("../migrations/0007_citus_ready.sql")),
    (
        8,
        "shared ingest budget and purge turn",
        include_str!("../migrations/0008_shared_ingest_budget_and_purge_turn.sql"),
    ),
    (
        9,
        "inlinable current tenant",
        include_str!("../migrations/0009_inlinable_current_tenant.sql"),
    ),
    (10, "checkpoints", include_str!("../migrations/0010_checkpoints.sql")),
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

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The list above is kept by hand; this ties it to `migrations/`: one entry per file, in
    /// order, with the version and description `sqlx::migrate!` would derive from the file
    /// name (`0004_a_b.sql` is version 4, "a b") and the file's exact text.
    #[test]
    fn migration_list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read migrations/")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        let on_disk: Vec<(i64, String, String)> = files
            .iter()
            .map(|p| {
                let stem = p.file_stem().and_then(|s| s.to_str()).expect("UTF-8 file name");
                let (version, words) = stem.split_once('_').expect("NNNN_description.sql");
                let version = version.parse().expect("numeric version prefix");
                let sql = std::fs::read_to_string(p).expect("read migration");
                (version, words.replace('_', " "), sql)
            })
            .collect();
        let listed: Vec<(i64, String, String)> =
            MIGRATIONS.iter().map(|&(v, d, sql)| (v, d.to_owned(), sql.to_owned())).collect();
        let names = |l: &[(i64, String, String)]| -> Vec<(i64, String)> {
            l.iter().map(|(v, d, _)| (*v, d.clone())).collect()
        };
        assert_eq!(
            names(&listed),
            names(&on_disk),
            "MIGRATIONS must list every file of migrations/"
        );
        assert!(listed == on_disk, "each listed migration embeds its own file");
        let versions: Vec<i64> = listed.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=listed.len() as i64).collect();
        assert_eq!(versions, expected, "versions are 1, 2, 3, … without gaps");
    }
}
