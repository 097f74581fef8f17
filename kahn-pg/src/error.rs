//! Database failures mapped into [`kahn_core::Error`] by what a caller can do about them.

use std::fmt;

use kahn_core::Error;
use sqlx_core::error::{DatabaseError, Error as SqlxError};

/// The backend name carried by every [`Error::Backend`] this crate returns.
pub(crate) const BACKEND: &str = "postgres";

/// What kind of database failure an [`Error::Backend`] from this adapter holds. It is the
/// `source` of that error; `downcast_ref::<PgError>()` to inspect it. Its message is the
/// classification; the driver's error is its own `source`.
#[derive(Debug, thiserror::Error)]
#[error("{kind}")]
pub struct PgError {
    kind: PgErrorKind,
    #[source]
    source: SqlxError,
}

impl PgError {
    /// The classification.
    pub fn kind(&self) -> PgErrorKind {
        self.kind
    }

    /// The SQLSTATE the server returned, if the failure came from the server.
    pub fn sqlstate(&self) -> Option<String> {
        self.source.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned())
    }

    /// The driver's error.
    pub fn sqlx(&self) -> &SqlxError {
        &self.source
    }
}

/// Classes of database failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgErrorKind {
    /// The server could not be reached, the connection broke, or the pool gave none in time.
    /// Retrying later may succeed.
    Connection,
    /// A serialization failure or deadlock (SQLSTATE class 40): the transaction was rolled back
    /// and nothing was written. Retrying the call is safe (appends are idempotent).
    Retryable,
    /// A unique, foreign-key, not-null or check constraint refused a write.
    Constraint,
    /// The database refused the role the operation (SQLSTATE 42501, or a write in a read-only
    /// transaction): a grant, a policy or READ ONLY did its job.
    Refused,
    /// The schema is not what this adapter expects (missing table, function or column): run
    /// the migrations with the admin DSN.
    Schema,
    /// Migrations failed.
    Migration,
    /// Anything else.
    Other,
}

impl fmt::Display for PgErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PgErrorKind::Connection => "connection failure (retry later)",
            PgErrorKind::Retryable => "serialization failure or deadlock (safe to retry)",
            PgErrorKind::Constraint => "constraint violation",
            PgErrorKind::Refused => "refused by the database (grant, policy or read-only)",
            PgErrorKind::Schema => "schema mismatch (run the migrations with the admin DSN)",
            PgErrorKind::Migration => "migration failed",
            PgErrorKind::Other => "database error",
        })
    }
}

fn classify(e: &SqlxError) -> PgErrorKind {
    match e {
        SqlxError::Io(_)
        | SqlxError::Tls(_)
        | SqlxError::PoolTimedOut
        | SqlxError::PoolClosed
        | SqlxError::WorkerCrashed
        | SqlxError::Protocol(_) => PgErrorKind::Connection,
        SqlxError::Migrate(_) => PgErrorKind::Migration,
        SqlxError::Database(db) => classify_db(db.as_ref()),
        _ => PgErrorKind::Other,
    }
}

/// The SQLSTATEs (and classes) this adapter tells apart, by their PostgreSQL names
/// (Appendix A of the PostgreSQL manual).
mod sqlstate {
    pub(super) const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub(super) const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub(super) const UNDEFINED_TABLE: &str = "42P01";
    pub(super) const UNDEFINED_FUNCTION: &str = "42883";
    pub(super) const UNDEFINED_COLUMN: &str = "42703";
    pub(super) const INVALID_SCHEMA_NAME: &str = "3F000";
    /// Class 08, connection exception.
    pub(super) const CLASS_CONNECTION_EXCEPTION: &str = "08";
    /// Class 57, operator intervention (shutdown, cancel).
    pub(super) const CLASS_OPERATOR_INTERVENTION: &str = "57";
    /// Class 53, insufficient resources.
    pub(super) const CLASS_INSUFFICIENT_RESOURCES: &str = "53";
    /// Class 40, transaction rollback (serialization failure, deadlock).
    pub(super) const CLASS_TRANSACTION_ROLLBACK: &str = "40";
    /// Class 23, integrity constraint violation.
    pub(super) const CLASS_INTEGRITY_CONSTRAINT_VIOLATION: &str = "23";
}

fn classify_db(db: &dyn DatabaseError) -> PgErrorKind {
    use sqlstate::*;
    let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
    let code = code.as_str();
    let class = code.get(..2).unwrap_or("");
    if [READ_ONLY_SQL_TRANSACTION, INSUFFICIENT_PRIVILEGE].contains(&code) {
        PgErrorKind::Refused
    } else if [UNDEFINED_TABLE, UNDEFINED_FUNCTION, UNDEFINED_COLUMN, INVALID_SCHEMA_NAME]
        .contains(&code)
    {
        PgErrorKind::Schema
    } else if [
        CLASS_CONNECTION_EXCEPTION,
        CLASS_OPERATOR_INTERVENTION,
        CLASS_INSUFFICIENT_RESOURCES,
    ]
    .contains(&class)
    {
        PgErrorKind::Connection
    } else if class == CLASS_TRANSACTION_ROLLBACK {
        PgErrorKind::Retryable
    } else if class == CLASS_INTEGRITY_CONSTRAINT_VIOLATION {
        PgErrorKind::Constraint
    } else {
        PgErrorKind::Other
    }
}

/// Maps a driver error into KAHN's error: a lost connection, pool timeout, serialization
/// failure or deadlock is [`Error::Unavailable`] (the same call may succeed later; appends are
/// idempotent, so retrying is safe); anything else is [`Error::Backend`] with its
/// classification and source kept.
pub(crate) fn db(e: SqlxError) -> Error {
    let kind = classify(&e);
    let error = PgError { kind, source: e };
    match kind {
        PgErrorKind::Connection | PgErrorKind::Retryable => {
            Error::unavailable(BACKEND, kind.to_string()).with_unavailable_source(error)
        }
        _ => Error::backend(BACKEND, error),
    }
}

/// The constraint a unique violation names, when `e` is one: the table's constraint, also when
/// Citus reports it from a shard (`tenants_name_key_102008` is `tenants_name_key`).
/// Citus relays a worker's violation without the constraint field; its message names it.
pub(crate) fn unique_violation(e: &SqlxError) -> Option<&str> {
    let d = e.as_database_error()?;
    if !d.is_unique_violation() {
        return None;
    }
    let named = d.constraint().or_else(|| {
        let (_, rest) = d.message().split_once("unique constraint \"")?;
        rest.split_once('"').map(|(name, _)| name)
    });
    Some(without_shard_suffix(named.unwrap_or("")))
}

/// `name` without the `_<shard id>` Citus appends to a shard's objects.
fn without_shard_suffix(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((base, id)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// Stored data that cannot be read back as KAHN data (a corrupted or hand-edited row):
/// [`Error::corrupt`], as every backend reports it.
pub(crate) fn corrupt(what: impl fmt::Display) -> Error {
    Error::corrupt("a stored postgres row", what)
}

/// One reason the app-DSN constructor refuses to start.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoleProblem {
    /// The schema is missing or incomplete.
    NotMigrated {
        /// The missing table or role.
        missing: String,
    },
    /// The role is a superuser: superusers bypass Row-Level Security.
    Superuser,
    /// The role has BYPASSRLS.
    BypassRls,
    /// The role owns (or is a member of the owner of) a tenant table: it could switch RLS off.
    OwnsTable {
        /// The table.
        table: String,
    },
    /// A tenant table has Row-Level Security disabled.
    RlsDisabled {
        /// The table.
        table: String,
    },
    /// A tenant table has Row-Level Security enabled but not forced.
    RlsNotForced {
        /// The table.
        table: String,
    },
    /// The role is a member of `kahn_definer`, whose policies see every tenant.
    DefinerMember,
    /// The role may rewrite the log: it holds this privilege on `kahn.transitions`.
    MutableLog {
        /// `UPDATE`, `DELETE` or `TRUNCATE`.
        privilege: &'static str,
    },
    /// A tenant table carries a policy KAHN did not create: a permissive one ORs itself into
    /// the tenant isolation (a stray `USING (true)` leaves RLS inert).
    ExtraPolicy {
        /// The table.
        table: String,
        /// The policy's name.
        policy: String,
    },
    /// One of KAHN's policies on a tenant table is missing or not as designed (its predicate,
    /// command, roles or permissiveness changed).
    AlteredPolicy {
        /// The table.
        table: String,
        /// `tenant_isolation` or `definer_all`.
        policy: String,
    },
    /// The role holds a privilege beyond KAHN's design (directly, through a role, or through
    /// PUBLIC).
    ExtraGrant {
        /// The object, as a `REVOKE` names it: `TABLE kahn.api_keys`, `kahn.runs (run_id)`,
        /// `FUNCTION kahn.purge_tenant(uuid,timestamp with time zone,boolean)`, `SCHEMA kahn`.
        object: String,
        /// The privilege.
        privilege: String,
    },
    /// The role lacks a privilege KAHN's design gives the app role.
    MissingGrant {
        /// The object.
        object: String,
        /// The privilege.
        privilege: String,
    },
}

impl fmt::Display for RoleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoleProblem::NotMigrated { missing } => write!(
                f,
                "{missing} is missing; fix: run the migrations with the admin DSN \
                 (PgBackend::connect_admin or `kahn migrate`)"
            ),
            RoleProblem::Superuser => f.write_str(
                "the role is a superuser, which bypasses Row-Level Security; fix: connect the \
                 server as the app role kahn_app (NOSUPERUSER NOBYPASSRLS), not as the admin",
            ),
            RoleProblem::BypassRls => f.write_str(
                "the role has BYPASSRLS, which ignores every policy; fix: \
                 ALTER ROLE <role> NOBYPASSRLS, or connect as kahn_app",
            ),
            RoleProblem::OwnsTable { table } => write!(
                f,
                "the role owns {table} (directly or through membership) and could disable its \
                 Row-Level Security; fix: connect as kahn_app, which owns nothing"
            ),
            RoleProblem::RlsDisabled { table } => write!(
                f,
                "Row-Level Security is disabled on {table}; fix (as the admin): \
                 ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"
            ),
            RoleProblem::RlsNotForced { table } => write!(
                f,
                "Row-Level Security is not forced on {table}; fix (as the admin): \
                 ALTER TABLE {table} FORCE ROW LEVEL SECURITY"
            ),
            RoleProblem::DefinerMember => f.write_str(
                "the role is a member of kahn_definer, whose policies see every tenant; fix: \
                 REVOKE kahn_definer FROM <role>, or connect as kahn_app",
            ),
            RoleProblem::MutableLog { privilege } => write!(
                f,
                "the role holds {privilege} on kahn.transitions, so the log is not append-only; \
                 fix (as the admin): REVOKE UPDATE, DELETE, TRUNCATE ON kahn.transitions FROM <role>"
            ),
            RoleProblem::ExtraPolicy { table, policy } => write!(
                f,
                "{table} carries policy {policy:?}, which KAHN did not create; a permissive policy \
                 widens what every role sees; fix (as the admin): DROP POLICY \"{policy}\" ON {table}"
            ),
            RoleProblem::AlteredPolicy { table, policy } => write!(
                f,
                "policy {policy} on {table} is missing or not as KAHN created it; fix (as the \
                 admin): DROP POLICY IF EXISTS {policy} ON {table}, then recreate it as the \
                 migrations define it (tenant_isolation: USING and WITH CHECK on the tenant \
                 column = kahn.current_tenant(); definer_all: TO kahn_definer USING (true) \
                 WITH CHECK (true))"
            ),
            RoleProblem::ExtraGrant { object, privilege } => {
                // A column grant is revoked as `REVOKE UPDATE (col) ON kahn.t`.
                let revoke = match object.strip_suffix(')').and_then(|o| o.split_once(" (")) {
                    Some((table, column)) if !object.starts_with("FUNCTION ") => {
                        format!("REVOKE {privilege} ({column}) ON {table}")
                    }
                    _ => format!("REVOKE {privilege} ON {object}"),
                };
                write!(
                    f,
                    "the role holds {privilege} on {object}, beyond KAHN's least-privilege \
                     design; fix (as the admin): {revoke} FROM <role> (or from PUBLIC, or the \
                     role it inherits it from)"
                )
            }
            RoleProblem::MissingGrant { object, privilege } => write!(
                f,
                "the role lacks {privilege} on {object}, which the server needs; fix: connect \
                 as kahn_app on a database migrated with `kahn migrate` (the admin DSN)"
            ),
        }
    }
}

/// The app-DSN constructor's refusal: the role or the database would let Row-Level Security
/// be silently inert. It is the `source` of the [`Error::Backend`] returned; every problem
/// found is listed with its fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct UnsafeAppRole {
    /// The role the app DSN logs in as.
    pub role: String,
    /// Every problem found.
    pub problems: Vec<RoleProblem>,
}

impl fmt::Display for UnsafeAppRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "refusing to serve tenant data as role {:?}: Row-Level Security would not protect it",
            self.role
        )?;
        for p in &self.problems {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_shards_constraint_is_its_tables() {
        use super::without_shard_suffix as base;
        assert_eq!(base("tenants_name_key_102008"), "tenants_name_key");
        assert_eq!(base("tenants_name_key"), "tenants_name_key");
        assert_eq!(base("runs_pkey"), "runs_pkey");
        assert_eq!(base("x_"), "x_");
    }

    use super::*;

    #[test]
    fn refusal_names_every_problem_and_its_fix() {
        let r = UnsafeAppRole {
            role: "postgres".into(),
            problems: vec![
                RoleProblem::Superuser,
                RoleProblem::RlsNotForced { table: "kahn.runs".into() },
            ],
        };
        let text = r.to_string();
        assert!(text.contains("\"postgres\""), "{text}");
        assert!(text.contains("superuser"), "{text}");
        assert!(text.contains("ALTER TABLE kahn.runs FORCE ROW LEVEL SECURITY"), "{text}");
        assert_eq!(text.matches("fix").count(), 2, "{text}");
    }

    #[test]
    fn driver_failures_are_classified() {
        assert_eq!(classify(&SqlxError::PoolTimedOut), PgErrorKind::Connection);
        assert_eq!(classify(&SqlxError::RowNotFound), PgErrorKind::Other);
        let e = db(SqlxError::PoolTimedOut);
        assert!(e.is_retryable(), "a pool timeout is worth retrying: {e:?}");
        let e = db(SqlxError::RowNotFound);
        let Error::Backend { backend, source } = e else { panic!("not Backend") };
        assert_eq!(backend, BACKEND);
        let pg = source.downcast_ref::<PgError>().expect("a PgError source");
        assert_eq!((pg.kind(), pg.sqlstate()), (PgErrorKind::Other, None));
    }
}
