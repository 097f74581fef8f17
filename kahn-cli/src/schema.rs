//! A database's schema version, read without migrating it.
//!
//! Opening a store ([`SqliteBackend::connect`](kahn_sqlite::SqliteBackend::connect),
//! [`PgBackend::connect_admin`](kahn_pg::PgBackend::connect_admin)) migrates it on the way. A
//! command that must not change a database it was pointed at by mistake — `kahn copy`'s target
//! must already be at this build's schema — asks [`schema_state`] first: it only reads SQLite's
//! `user_version` (opening the file read-only) or Postgres's `_sqlx_migrations` table.

use std::path::{Path, PathBuf};

use kahn_core::{Error, Result};
use serde::Serialize;

use crate::dsn::redact_dsn;

/// The name of the table sqlx records Postgres migrations in (kahn-pg keeps sqlx's default).
const PG_MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Where a database's schema stands against this build's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SchemaState {
    /// Nothing to open: no SQLite file at the path.
    Missing,
    /// The database exists but holds no KAHN schema (a new database, or another program's).
    Empty,
    /// An older schema: `kahn migrate` brings it to this build's.
    Older {
        /// The database's version.
        found: i64,
        /// This build's.
        current: i64,
    },
    /// Exactly this build's schema.
    Current {
        /// The version.
        version: i64,
    },
    /// A newer schema than this build knows: upgrade kahn.
    Newer {
        /// The database's version.
        found: i64,
        /// This build's.
        current: i64,
    },
}

impl SchemaState {
    fn of(found: i64, current: i64) -> Self {
        match found {
            0 => SchemaState::Empty,
            f if f < current => SchemaState::Older { found, current },
            f if f > current => SchemaState::Newer { found, current },
            _ => SchemaState::Current { version: current },
        }
    }
}

/// The kind of database a URL names, as `kahn` opens them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbLocation {
    /// A SQLite file.
    SqliteFile(PathBuf),
    /// A private in-memory SQLite database.
    SqliteMemory,
    /// A Postgres database: its host (or socket directory), port and database name.
    Postgres {
        /// Host name or address, or the socket directory.
        host: String,
        /// Port.
        port: u16,
        /// Database name (Postgres defaults it to the user's name).
        database: String,
    },
}

impl DbLocation {
    /// Reads `url` the way `kahn` opens databases: `sqlite://PATH`, `sqlite:PATH`, a plain
    /// path, `sqlite::memory:`, or `postgres://…` / `postgresql://…`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `database_url` for another scheme, an empty path or a
    /// Postgres URL that does not parse.
    pub fn parse(url: &str) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts: kahn_pg::PgConnectOptions = url.parse().map_err(|e| {
                Error::invalid("database_url", format!("{} is not valid: {e}", redact_dsn(url)))
            })?;
            let host = match opts.get_socket() {
                Some(dir) => dir.display().to_string(),
                None => opts.get_host().to_owned(),
            };
            let database = opts
                .get_database()
                .map_or_else(|| opts.get_username().to_owned(), ToOwned::to_owned);
            return Ok(DbLocation::Postgres { host, port: opts.get_port(), database });
        }
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(DbLocation::SqliteMemory);
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite:") {
            rest.strip_prefix("//").unwrap_or(rest)
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::invalid(
                "database_url",
                format!(
                    "{scheme}:// is not supported (use sqlite://PATH or postgres://USER@HOST/DB)"
                ),
            ));
        } else {
            url
        };
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::invalid("database_url", "names no database file"));
        }
        Ok(DbLocation::SqliteFile(PathBuf::from(path)))
    }

    /// Whether `self` and `other` are one database: the same SQLite file (compared by
    /// canonical path when it exists, so `kahn.db`, `./kahn.db` and `sqlite://kahn.db` are
    /// one), or the same Postgres host, port and database whatever the user (different
    /// spellings of one host, `localhost` and `127.0.0.1`, are not recognised).
    pub fn same_database(&self, other: &Self) -> bool {
        match (self, other) {
            (DbLocation::SqliteFile(a), DbLocation::SqliteFile(b)) => absolute(a) == absolute(b),
            (a @ DbLocation::Postgres { .. }, b @ DbLocation::Postgres { .. }) => a == b,
            _ => false,
        }
    }
}

/// `path` made absolute, through symbolic links when it exists.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        std::env::current_dir().map_or_else(|_| path.to_owned(), |dir| dir.join(path))
    })
}

/// The schema state of the database `url` names, read without changing anything.
///
/// # Errors
/// [`Error::InvalidInput`] naming `database_url` for a URL `kahn` cannot open, or an
/// in-memory database (it has no state to ask about); [`Error::Backend`] when the database
/// cannot be read (not a SQLite file, Postgres unreachable or refusing the login).
pub async fn schema_state(url: &str) -> Result<SchemaState> {
    match DbLocation::parse(url)? {
        DbLocation::SqliteMemory => Err(Error::invalid(
            "database_url",
            "an in-memory database is empty and gone when the command ends; name a file",
        )),
        DbLocation::SqliteFile(path) => tokio::task::spawn_blocking(move || sqlite_state(&path))
            .await
            .map_err(|e| Error::backend("sqlite", e))?,
        DbLocation::Postgres { .. } => pg_state(url).await,
    }
}

fn sqlite_state(path: &Path) -> Result<SchemaState> {
    use rusqlite::{Connection, OpenFlags};
    if !path.exists() {
        return Ok(SchemaState::Missing);
    }
    let unreadable =
        |e: rusqlite::Error| Error::backend("sqlite", format!("{}: {e}", path.display()));
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(unreadable)?;
    let version: i64 =
        conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(unreadable)?;
    Ok(SchemaState::of(version, kahn_sqlite::SqliteBackend::schema_version()))
}

async fn pg_state(url: &str) -> Result<SchemaState> {
    use kahn_pg::sqlx_core::connection::Connection as _;
    use kahn_pg::sqlx_core::query::query;
    use kahn_pg::sqlx_core::row::Row as _;
    use kahn_pg::sqlx_postgres::PgConnection;

    let failed =
        |e: kahn_pg::sqlx_core::Error| Error::backend("postgres", redact_dsn(&e.to_string()));
    let mut conn = PgConnection::connect(url).await.map_err(failed)?;
    let current = kahn_pg::migrator().iter().map(|m| m.version).max().unwrap_or(0);
    let exists: bool = query("SELECT to_regclass($1) IS NOT NULL AS present")
        .bind(PG_MIGRATIONS_TABLE)
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get("present"))
        .map_err(failed)?;
    let state = if exists {
        // The table name is a constant: nothing from the caller is in the statement.
        let found: Option<i64> =
            query("SELECT max(version) AS version FROM _sqlx_migrations WHERE success")
                .fetch_one(&mut conn)
                .await
                .and_then(|row| row.try_get("version"))
                .map_err(failed)?;
        SchemaState::of(found.unwrap_or(0), current)
    } else {
        SchemaState::Empty
    };
    let _ = conn.close().await;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_database() {
        assert_eq!(
            DbLocation::parse("sqlite://a/kahn.db").ok(),
            Some(DbLocation::SqliteFile("a/kahn.db".into()))
        );
        assert_eq!(
            DbLocation::parse("kahn.db?mode=rwc").ok(),
            Some(DbLocation::SqliteFile("kahn.db".into()))
        );
        assert_eq!(DbLocation::parse("sqlite::memory:").ok(), Some(DbLocation::SqliteMemory));
        assert!(DbLocation::parse("mysql://h/db").is_err());
        assert!(DbLocation::parse("sqlite://").is_err());
        let a = DbLocation::parse("postgres://admin:pw@db.internal:5433/kahn").unwrap();
        let b = DbLocation::parse("postgresql://kahn_app@db.internal:5433/kahn?sslmode=require")
            .unwrap();
        let c = DbLocation::parse("postgres://admin@db.internal:5433/other").unwrap();
        assert!(a.same_database(&b), "another user on one database is the same database");
        assert!(!a.same_database(&c));
        let here = DbLocation::parse("sqlite://kahn.db").unwrap();
        let dotted = DbLocation::parse("./kahn.db").unwrap();
        assert!(here.same_database(&dotted));
        assert!(!here.same_database(&a));
    }

    #[test]
    fn versions_compare_with_the_build() {
        assert_eq!(SchemaState::of(0, 3), SchemaState::Empty);
        assert_eq!(SchemaState::of(2, 3), SchemaState::Older { found: 2, current: 3 });
        assert_eq!(SchemaState::of(3, 3), SchemaState::Current { version: 3 });
        assert_eq!(SchemaState::of(4, 3), SchemaState::Newer { found: 4, current: 3 });
    }
}
