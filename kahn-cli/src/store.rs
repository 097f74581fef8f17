//! Opening the store a command works on, and resolving what names its tenant.

use std::sync::Arc;

use kahn_cli::redact_dsn;
use kahn_core::{ApiKey, StorageBackend, StorageBackendExt, Tenant, WriteScope};
use kahn_sqlite::SqliteBackend;

use crate::args::{DbArgs, KeyTarget};
use crate::failure::{CliResult, Failure, exit_code, explained};

/// Which Postgres DSN a command needs: operators' commands (migrate, tenant, bridge onboard)
/// run as the schema's admin; the server and data commands as the app role, under RLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DbRole {
    /// The schema's owner: operators' commands.
    Admin,
    /// The app role, under RLS: the server and data commands.
    App,
}

/// The database `db` names, opened as `role` (on SQLite every role is the same handle). A
/// SQLite file that does not exist is refused: only `serve`, `migrate`, `tenant provision`,
/// `bridge onboard` and `copy`'s target create one ([`create_db_as`]).
pub(crate) async fn open_db_as(db: &DbArgs, role: DbRole) -> CliResult<Arc<dyn StorageBackend>> {
    let url = named(db)?;
    if let Ok(kahn_cli::schema::DbLocation::SqliteFile(path)) =
        kahn_cli::schema::DbLocation::parse(url)
        && !path.exists()
    {
        return Err(Failure {
            code: 2,
            message: format!(
                "no database at {}\nhint: is it the file `kahn serve` uses? `kahn serve --db {url}` or `kahn migrate --db {url}` creates a new one",
                path.display()
            ),
        });
    }
    create_db_as(url, role).await
}

/// The database `db` names, or why a command needs one.
fn named(db: &DbArgs) -> CliResult<&str> {
    db.db.as_deref().ok_or_else(|| Failure {
        code: 2,
        message: "no database named\nhint: pass --db sqlite://kahn.db (the file `kahn serve` uses by default) or --db postgres://…, or set KAHN_DATABASE_URL".into(),
    })
}

/// The database `url` names, opened as `role`; a SQLite file is created (and migrated) when
/// missing.
pub(crate) async fn create_db_as(url: &str, role: DbRole) -> CliResult<Arc<dyn StorageBackend>> {
    if url.starts_with("sqlite:") || !url.contains("://") {
        return Ok(Arc::new(SqliteBackend::connect(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = match role {
            DbRole::Admin => kahn_pg::PgBackend::connect_admin(url).await,
            DbRole::App => kahn_pg::PgBackend::connect_app(url).await,
        };
        return store.map(|s| Arc::new(s) as Arc<dyn StorageBackend>).map_err(|e| {
            let hint = match role {
                DbRole::Admin => "this command needs the admin DSN (a role that owns the kahn schema)",
                DbRole::App => "the server and data commands need the app DSN (role kahn_app); operators' commands take the admin DSN",
            };
            Failure { code: exit_code(&e).0, message: format!("{}\nhint: {hint}", explained(&e)) }
        });
    }
    Err(Failure {
        code: 2,
        message: format!(
            "unsupported database URL {:?}\nhint: use sqlite://PATH or postgres://USER@HOST/DB",
            redact_dsn(url)
        ),
    })
}

/// The database for operators' commands.
pub(crate) async fn open_db(db: &DbArgs) -> CliResult<Arc<dyn StorageBackend>> {
    open_db_as(db, DbRole::Admin).await
}

/// The database for operators' commands that may begin a store (`tenant provision`, `bridge
/// onboard`): created when missing.
pub(crate) async fn create_db(db: &DbArgs) -> CliResult<Arc<dyn StorageBackend>> {
    create_db_as(named(db)?, DbRole::Admin).await
}

/// Which store a [`KeyTarget`] names.
pub(crate) enum Named<'a> {
    /// A KAHN server at this URL.
    Server(&'a str),
    /// The database of `--db` / `KAHN_DATABASE_URL`.
    Database,
}

/// Which store `target` names: the server of `--url`, else the database; one of them must be
/// named.
pub(crate) fn named_store(target: &KeyTarget) -> CliResult<Named<'_>> {
    // A flag beats the environment: `--db` typed here wins over an exported KAHN_URL (and
    // `--url` over KAHN_DATABASE_URL); both typed is a mistake to say, not to guess.
    let typed = |flag: &str| {
        std::env::args()
            .take_while(|a| a != "--")
            .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
    };
    match (typed("--url"), typed("--db")) {
        (true, true) => {
            return Err(Failure {
                code: 2,
                message: "both --url and --db are given\nhint: name one store: --url for a server, --db for a database".into(),
            });
        }
        (false, true) => return Ok(Named::Database),
        _ => {}
    }
    match (&target.url, &target.db.db) {
        (Some(url), _) => Ok(Named::Server(url)),
        (None, Some(_)) => Ok(Named::Database),
        (None, None) => Err(Failure {
            code: 2,
            message: "no server or database named\nhint: pass --url http://127.0.0.1:8080 (a KAHN server; or set KAHN_URL) or --db sqlite://kahn.db (its database file; or set KAHN_DATABASE_URL)".into(),
        }),
    }
}

/// The store a data command works on: the server named by `--url`, else the database; one of
/// them must be named.
pub(crate) async fn open_target(target: &KeyTarget) -> CliResult<Arc<dyn StorageBackend>> {
    match named_store(target)? {
        Named::Server(url) => Ok(Arc::new(kahn_http::HttpBackend::new(url)?)),
        Named::Database => open_db_as(&target.db, DbRole::App).await,
    }
}

/// As [`resolve_key`], trying the store again after a retryable failure (the server not up
/// yet, a proxy's 502) up to `max_retries` times with the pusher's backoff: a push's first
/// call is retried like every other.
pub(crate) async fn resolve_key_retrying(
    store: &dyn StorageBackend,
    key: &Option<String>,
    max_retries: u32,
    progress: &dyn kahn_push::push::Progress,
) -> CliResult<WriteScope> {
    let key = parse_key(key)?;
    let mut retries = 0;
    kahn_push::push::with_retries(max_retries, progress, &mut retries, || {
        store.resolve_api_key(&key)
    })
    .await?
    .ok_or_else(unknown_key)
}

/// The write scope of the API key given (`--key` or `KAHN_API_KEY`).
pub(crate) async fn resolve_key(
    store: &dyn StorageBackend,
    key: &Option<String>,
) -> CliResult<WriteScope> {
    let key = parse_key(key)?;
    store.resolve_api_key(&key).await?.ok_or_else(unknown_key)
}

/// The API key given, well-formed.
fn parse_key(key: &Option<String>) -> CliResult<ApiKey> {
    let Some(key) = key else {
        return Err(Failure {
            code: 4,
            message: "no API key\nhint: pass --key or set KAHN_API_KEY (`kahn tenant provision NAME` prints one)".into(),
        });
    };
    ApiKey::parse(key.trim()).map_err(|e| Failure {
        code: 4,
        message: format!(
            "{e}\nhint: pass the key `kahn tenant provision` printed, via --key or KAHN_API_KEY"
        ),
    })
}

fn unknown_key() -> Failure {
    Failure {
        code: 4,
        message: "the API key is unknown or revoked\nhint: check it was copied whole (`kahn tenant keys NAME --db …` lists the tenant's keys); `kahn tenant issue-key NAME --db …` issues another without stopping the others".into(),
    }
}

/// The tenant named `name`.
pub(crate) async fn tenant_by_name(store: &dyn StorageBackend, name: &str) -> CliResult<Tenant> {
    let all = store.list_tenants().await?;
    all.into_iter().map(|s| s.tenant).find(|t| t.name == name).ok_or_else(|| Failure {
        code: 1,
        message: format!("no tenant named {name:?}\nhint: `kahn tenant list` shows them"),
    })
}
