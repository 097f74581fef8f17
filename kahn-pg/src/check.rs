//! The app-DSN startup check: refuses a role or a database under which Row-Level Security
//! would be silently inert.

use kahn_core::{Error, Result};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::PgPool;

use crate::error::{BACKEND, RoleProblem, UnsafeAppRole, db};

/// The tables holding tenant data. Every one must have RLS enabled and forced.
pub const TENANT_TABLES: [&str; 10] = [
    "tenants",
    "api_keys",
    "key_directory",
    "runs",
    "transitions",
    "run_nodes",
    "ingest_budget",
    "checkpoint_leaves",
    "checkpoints",
    "purge_records",
];

/// The table privileges the app role holds, per tenant table: the log is append-only, the
/// run summary is inserted and (by column, below) updated; tenants and keys are reached only
/// through SECURITY DEFINER functions, and so is each tenant's ingest allowance
/// (`kahn.charge_ingest`). The checkpoint log is append-only like the transitions; purge
/// records are inserted only by the purge (`kahn.purge_tenant`), the app role reads them and
/// marks them logged (by column, below). Anything else is refused at startup.
const APP_TABLE_GRANTS: [(&str, &[&str]); 10] = [
    ("tenants", &[]),
    ("api_keys", &[]),
    ("key_directory", &[]),
    ("runs", &["SELECT", "INSERT"]),
    ("transitions", &["SELECT", "INSERT"]),
    ("run_nodes", &["SELECT", "INSERT"]),
    ("ingest_budget", &[]),
    ("checkpoint_leaves", &["SELECT", "INSERT"]),
    ("checkpoints", &["SELECT", "INSERT"]),
    ("purge_records", &["SELECT"]),
];

/// The columns the append keeps current, per table, and the flag a checkpoint sets on the
/// purge records it logs: the app role's only UPDATE grants.
const APP_UPDATE_COLUMNS: [(&str, &[&str]); 3] = [
    (
        "runs",
        &[
            "source",
            "graph",
            "labels",
            "next_seq",
            "head_hash",
            "status_json",
            "first_ts",
            "last_ts",
            "received_at",
            "run_state_json",
            "started_at",
            "ended_at",
            "nodes_failed",
            "nodes_cancelled",
            "nodes_active",
            "nodes_waiting",
            "nodes_succeeded",
            "nodes_skipped",
            "nodes_other",
        ],
    ),
    ("run_nodes", &["state_json", "started_at", "ended_at", "attempts", "last_seq"]),
    ("purge_records", &["logged"]),
];

/// Privileges checked on each tenant table and on each of its columns.
const TABLE_PRIVILEGES: [&str; 7] =
    ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"];
const COLUMN_PRIVILEGES: [&str; 4] = ["SELECT", "INSERT", "UPDATE", "REFERENCES"];

/// The functions of schema `kahn` the app role may execute (as `regprocedure` text); it may
/// execute no other function of the schema (`kahn.purge_tenant`, which purges as of a time of
/// the caller's choosing, above all).
const APP_FUNCTIONS: [&str; 12] = [
    "kahn.current_tenant()",
    "kahn.enter_tenant(uuid)",
    "kahn.lookup_api_key(bytea)",
    "kahn.touch_api_key(bytea)",
    "kahn.lookup_tenant_by_org(text)",
    "kahn.lookup_tenant_by_sub(text)",
    "kahn.provision_personal_tenant(text)",
    "kahn.get_tenant(uuid)",
    "kahn.admin_list_tenants()",
    "kahn.purge_expired()",
    "kahn.charge_ingest(uuid,integer,integer)",
    "kahn.take_purge_turn(interval)",
];

/// The one tenant-isolation predicate of every tenant table, as `pg_get_expr` prints it: plain,
/// without a subquery (migration 0006; DESIGN.md "Scale-out": Citus refuses subqueries in the
/// policies of distributed tables). The sub-select spelling of migrations 0001–0005 is refused:
/// a database that has not run 0006 is told to migrate.
fn isolation_predicate(table: &str) -> String {
    let column = if table == "tenants" { "id" } else { "tenant_id" };
    format!("({column} = kahn.current_tenant())")
}

/// Checks the role the pool logs in as; every problem found is reported at once.
pub(crate) async fn check_app_role(pool: &PgPool) -> Result<()> {
    // One transaction (read only): behind a transaction-pooling pgbouncer, statements outside
    // one may land on different server connections.
    let mut conn = pool.begin_with("BEGIN READ ONLY").await.map_err(db)?;
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

    if !superuser && problems.iter().all(|p| !matches!(p, RoleProblem::NotMigrated { .. })) {
        check_policies(&mut conn, &mut problems).await?;
        check_grants(&mut conn, &mut problems).await?;
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

    conn.commit().await.map_err(db)?;
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::backend(BACKEND, UnsafeAppRole { role: name, problems }))
    }
}

/// Each tenant table's policies must be exactly KAHN's two: `tenant_isolation` (permissive, for
/// every command and role, on the tenant predicate both ways) and `definer_all` (permissive,
/// only for `kahn_definer`). An extra permissive policy — a stray `USING (true)` — would OR
/// itself into the isolation and leave RLS inert; an altered or missing one likewise.
async fn check_policies(
    conn: &mut sqlx_postgres::PgConnection,
    problems: &mut Vec<RoleProblem>,
) -> Result<()> {
    let rows = query(
        "SELECT c.relname::text AS tbl, p.polname::text AS name, p.polpermissive AS permissive, \
                p.polcmd::text AS cmd, \
                ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_catalog.pg_get_userbyid(r)::text END \
                      FROM pg_catalog.unnest(p.polroles) AS r ORDER BY 1) AS roles, \
                pg_catalog.pg_get_expr(p.polqual, p.polrelid) AS qual, \
                pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid) AS with_check \
         FROM pg_catalog.pg_policy AS p \
         JOIN pg_catalog.pg_class AS c ON c.oid = p.polrelid \
         JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'kahn' AND c.relname = ANY($1::text[]) \
         ORDER BY 1, 2",
    )
    .bind(TENANT_TABLES.as_slice())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for table in TENANT_TABLES {
        let predicate = isolation_predicate(table);
        let mut seen = (false, false);
        for row in &rows {
            let tbl: String = row.try_get("tbl").map_err(db)?;
            if tbl != table {
                continue;
            }
            let name: String = row.try_get("name").map_err(db)?;
            let permissive: bool = row.try_get("permissive").map_err(db)?;
            let cmd: String = row.try_get("cmd").map_err(db)?;
            let roles: Vec<String> = row.try_get("roles").map_err(db)?;
            let qual: Option<String> = row.try_get("qual").map_err(db)?;
            let with_check: Option<String> = row.try_get("with_check").map_err(db)?;
            let table = format!("kahn.{table}");
            let as_designed = match name.as_str() {
                "tenant_isolation" => {
                    seen.0 = true;
                    permissive
                        && cmd == "*"
                        && roles == ["public"]
                        && qual.as_deref() == Some(predicate.as_str())
                        && qual == with_check
                }
                "definer_all" => {
                    seen.1 = true;
                    permissive
                        && cmd == "*"
                        && roles == [crate::DEFINER_ROLE]
                        && qual.as_deref() == Some("true")
                        && with_check.as_deref() == Some("true")
                }
                _ => {
                    problems.push(RoleProblem::ExtraPolicy { table, policy: name });
                    continue;
                }
            };
            if !as_designed {
                problems.push(RoleProblem::AlteredPolicy { table, policy: name });
            }
        }
        for (present, policy) in [(seen.0, "tenant_isolation"), (seen.1, "definer_all")] {
            if !present {
                problems.push(RoleProblem::AlteredPolicy {
                    table: format!("kahn.{table}"),
                    policy: policy.to_owned(),
                });
            }
        }
    }
    Ok(())
}

/// The role's effective privileges (its own, its roles', PUBLIC's) on schema `kahn`, the tenant
/// tables, their columns and the schema's functions must be exactly the designed ones. The
/// log's UPDATE, DELETE and TRUNCATE are reported as [`RoleProblem::MutableLog`] instead.
async fn check_grants(
    conn: &mut sqlx_postgres::PgConnection,
    problems: &mut Vec<RoleProblem>,
) -> Result<()> {
    let schema = query(
        "SELECT pg_catalog.has_schema_privilege('kahn', 'USAGE') AS usage, \
                pg_catalog.has_schema_privilege('kahn', 'CREATE') AS create",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    if !schema.try_get::<bool, _>("usage").map_err(db)? {
        problems.push(RoleProblem::MissingGrant {
            object: "schema kahn".into(),
            privilege: "USAGE".into(),
        });
    }
    if schema.try_get::<bool, _>("create").map_err(db)? {
        problems.push(RoleProblem::ExtraGrant {
            object: "SCHEMA kahn".into(),
            privilege: "CREATE".into(),
        });
    }

    let rows = query(
        "SELECT t.name AS tbl, p.privilege, \
                pg_catalog.has_table_privilege('kahn.' || t.name, p.privilege) AS held \
         FROM pg_catalog.unnest($1::text[]) AS t(name), pg_catalog.unnest($2::text[]) AS p(privilege)",
    )
    .bind(TENANT_TABLES.as_slice())
    .bind(TABLE_PRIVILEGES.as_slice())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut table_level: Vec<(String, String)> = Vec::new();
    for row in &rows {
        let table: String = row.try_get("tbl").map_err(db)?;
        let privilege: String = row.try_get("privilege").map_err(db)?;
        let held: bool = row.try_get("held").map_err(db)?;
        let designed =
            APP_TABLE_GRANTS.iter().any(|(t, ps)| *t == table && ps.contains(&privilege.as_str()));
        if held {
            table_level.push((table.clone(), privilege.clone()));
        }
        let mutates_log = table == "transitions"
            && matches!(privilege.as_str(), "UPDATE" | "DELETE" | "TRUNCATE");
        if held && !designed && !mutates_log {
            problems
                .push(RoleProblem::ExtraGrant { object: format!("TABLE kahn.{table}"), privilege });
        } else if !held && designed {
            problems.push(RoleProblem::MissingGrant {
                object: format!("table kahn.{table}"),
                privilege,
            });
        }
    }

    // Column grants, where the table-level privilege is not already held.
    let rows = query(
        "SELECT c.relname::text AS tbl, a.attname::text AS col, p.privilege, \
                pg_catalog.has_column_privilege(c.oid, a.attnum, p.privilege) AS held \
         FROM pg_catalog.pg_class AS c \
         JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace AND n.nspname = 'kahn' \
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         CROSS JOIN pg_catalog.unnest($2::text[]) AS p(privilege) \
         WHERE c.relname = ANY($1::text[]) ORDER BY 1, a.attnum, 3",
    )
    .bind(TENANT_TABLES.as_slice())
    .bind(COLUMN_PRIVILEGES.as_slice())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for row in &rows {
        let table: String = row.try_get("tbl").map_err(db)?;
        let column: String = row.try_get("col").map_err(db)?;
        let privilege: String = row.try_get("privilege").map_err(db)?;
        let held: bool = row.try_get("held").map_err(db)?;
        if table_level.iter().any(|(t, p)| *t == table && *p == privilege) {
            continue;
        }
        let designed = privilege == "UPDATE"
            && APP_UPDATE_COLUMNS
                .iter()
                .any(|(t, columns)| *t == table && columns.contains(&column.as_str()));
        if held && !designed {
            problems.push(RoleProblem::ExtraGrant {
                object: format!("kahn.{table} ({column})"),
                privilege,
            });
        } else if !held && designed {
            problems.push(RoleProblem::MissingGrant {
                object: format!("column kahn.{table}.{column}"),
                privilege,
            });
        }
    }

    let rows = query(
        "SELECT p.oid::pg_catalog.regprocedure::text AS function, \
                pg_catalog.has_function_privilege(p.oid, 'EXECUTE') AS held \
         FROM pg_catalog.pg_proc AS p \
         JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace AND n.nspname = 'kahn' \
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut present = Vec::new();
    for row in &rows {
        let function: String = row.try_get("function").map_err(db)?;
        let held: bool = row.try_get("held").map_err(db)?;
        let designed = APP_FUNCTIONS.contains(&function.as_str());
        if held && !designed {
            problems.push(RoleProblem::ExtraGrant {
                object: format!("FUNCTION {function}"),
                privilege: "EXECUTE".into(),
            });
        } else if !held && designed {
            problems.push(RoleProblem::MissingGrant {
                object: format!("function {function}"),
                privilege: "EXECUTE".into(),
            });
        }
        present.push(function);
    }
    for function in APP_FUNCTIONS {
        if !present.iter().any(|p| p == function) {
            problems.push(RoleProblem::NotMigrated { missing: format!("function {function}") });
        }
    }
    Ok(())
}
