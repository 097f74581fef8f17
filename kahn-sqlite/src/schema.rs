//! Versioned migrations, applied on open. The version is SQLite's `user_version`.

use kahn_core::{Error, Result};
use rusqlite::{Connection, TransactionBehavior};

use crate::error::db;

/// Each migration, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_lifecycle.sql"),
    include_str!("../migrations/0003_run_status.sql"),
    include_str!("../migrations/0004_checkpoints.sql"),
];

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], each migration in its own transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db)?;
    if version > SCHEMA_VERSION {
        return Err(Error::backend(
            "sqlite",
            format!(
                "database schema is version {version}, newer than this build's {SCHEMA_VERSION}: upgrade kahn"
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)?;
        tx.execute_batch(sql).map_err(db)?;
        if i + 1 == 3 {
            // Runs stored under the old status rule ("the last `to`") get the new one's
            // values, computed by kahn-core from their transitions.
            let runs = crate::store::recompute_progress(&tx)?;
            if runs > 0 {
                tracing::info!(runs, "recomputed run status and node summaries");
            }
        }
        tx.pragma_update(None, "user_version", i as i64 + 1).map_err(db)?;
        tx.commit().map_err(db)?;
        tracing::info!(version = i + 1, "applied sqlite migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    /// The list above is kept by hand; this ties it to `migrations/`: file `000N_….sql` is
    /// entry `N - 1`, with its exact text, and no file is left out.
    #[test]
    fn migration_list_matches_the_migrations_directory() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read migrations/")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        assert_eq!(files.len(), MIGRATIONS.len(), "MIGRATIONS must list every file of migrations/");
        for (i, (path, listed)) in files.iter().zip(MIGRATIONS).enumerate() {
            let name = path.file_name().and_then(|n| n.to_str()).expect("UTF-8 file name");
            let version: usize =
                name.split('_').next().and_then(|v| v.parse().ok()).expect("NNNN_ prefix");
            assert_eq!(version, i + 1, "{name}: versions are 1, 2, 3, … without gaps");
            let sql = std::fs::read_to_string(path).expect("read migration");
            assert!(sql == *listed, "{name}: entry {i} of MIGRATIONS embeds another file");
        }
    }
}
