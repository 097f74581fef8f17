//! The app-DSN startup check: refuses a role or a database under which Row-Level Security
//! would be silently inert.

use kahn_core::{Error, Result};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::PgPool;

use crate::error::{BACKEND, RoleProblem, UnsafeAppRole, db};

/// The tables holding tenant data. Every one must have RLS enabled and forced.
pub const TENANT_TABLES: [&str; 4] = ["tenants", "api_keys", "runs", "transitions"];

/// Checks the role the pool logs in as; every problem found is reported at once.
pub(crate) async fn check_app_role(pool: &PgPool) -> Result<()> {
    let mut conn = pool.acquire().await.map_err(db)?;
    let role = query(
        "SELECT r.rolname::text AS role, r.rolsuper, r.rolbypassrls, \
                EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'kahn_definer') AS definer \
         FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let name: String = role.try_get("role").map_err(db)?;
    let mut problems = Vec::new();
    if role.try_get::<bool, _>("rolsuper").map_err(db)? {
        problems.push(RoleProblem::Superuser);
    }
    if role.try_get::<bool, _>("rolbypassrls").map_err(db)? {
        problems.push(RoleProblem::BypassRls);
    }
    if role.try_get::<bool, _>("definer").map_err(db)? {
        let member: bool = query(
            "SELECT pg_catalog.pg_has_role(current_user, 'kahn_definer', 'MEMBER') AS member",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?
        .try_get("member")
        .map_err(db)?;
        if member && !problems.contains(&RoleProblem::Superuser) {
            problems.push(RoleProblem::DefinerMember);
        }
    } else {
        problems.push(RoleProblem::NotMigrated { missing: "role kahn_definer".into() });
    }

    let tables = query(
        "SELECT t.name, c.relrowsecurity, c.relforcerowsecurity, \
                pg_catalog.pg_has_role(current_user, c.relowner, 'MEMBER') AS owns \
         FROM pg_catalog.unnest($1::text[]) WITH ORDINALITY AS t(name, ord) \
         LEFT JOIN pg_catalog.pg_namespace AS n ON n.nspname = 'kahn' \
         LEFT JOIN pg_catalog.pg_class AS c \
                ON c.relnamespace = n.oid AND c.relname = t.name AND c.relkind IN ('r', 'p') \
         ORDER BY t.ord",
    )
    .bind(TENANT_TABLES.as_slice())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let superuser = problems.contains(&RoleProblem::Superuser);
    let mut transitions_exist = false;
    for row in &tables {
        let table = format!("kahn.{}", row.try_get::<String, _>("name").map_err(db)?);
        let enabled: Option<bool> = row.try_get("relrowsecurity").map_err(db)?;
        let forced: Option<bool> = row.try_get("relforcerowsecurity").map_err(db)?;
        let owns: Option<bool> = row.try_get("owns").map_err(db)?;
        let (Some(enabled), Some(forced)) = (enabled, forced) else {
            problems.push(RoleProblem::NotMigrated { missing: format!("table {table}") });
            continue;
        };
        if table == "kahn.transitions" {
            transitions_exist = true;
        }
        // A superuser "is a member of" every role; its own problem already says it all.
        if owns == Some(true) && !superuser {
            problems.push(RoleProblem::OwnsTable { table: table.clone() });
        }
        if !enabled {
            problems.push(RoleProblem::RlsDisabled { table });
        } else if !forced {
            problems.push(RoleProblem::RlsNotForced { table });
        }
    }

    if transitions_exist && !superuser {
        let row = query(
            "SELECT pg_catalog.has_table_privilege('kahn.transitions', 'UPDATE') AS u, \
                    pg_catalog.has_table_privilege('kahn.transitions', 'DELETE') AS d, \
                    pg_catalog.has_table_privilege('kahn.transitions', 'TRUNCATE') AS t",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(db)?;
        for (col, privilege) in [("u", "UPDATE"), ("d", "DELETE"), ("t", "TRUNCATE")] {
            if row.try_get::<bool, _>(col).map_err(db)? {
                problems.push(RoleProblem::MutableLog { privilege });
            }
        }
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::backend(BACKEND, UnsafeAppRole { role: name, problems }))
    }
}
