//! Distribution on Citus (DESIGN.md "Scale-out"): when the database has the `citus` extension,
//! `kahn migrate` makes `tenants` and `key_directory` reference tables (a copy on every node)
//! and every table holding a tenant's data distributed by `tenant_id`, co-located with
//! `runs`: all of one tenant's rows live in one shard group, on one worker, so its appends and
//! reads route there. On plain Postgres nothing happens.
//!
//! Idempotent: a table already placed is left alone, so every `kahn migrate` (and a table a
//! later migration adds to [`DISTRIBUTED`]) converges on the same layout. The SQL is fixed
//! text; table names come from the constants below, never from input.

use kahn_core::Result;
use sqlx_core::query::query;
use sqlx_core::query_scalar::query_scalar;
use sqlx_postgres::{PgPool, Postgres};

use crate::error::db;

/// Reference tables: small, read by every node (`tenants` by every lookup and foreign key,
/// `key_directory` by the key lookup before the tenant is known).
pub const REFERENCE: [&str; 2] = ["kahn.tenants", "kahn.key_directory"];

/// Tables distributed by `tenant_id`, co-located with the first. (`kahn.purge_turn`, one row
/// the retention purger locks, stays a local table on the coordinator, where every server's
/// purge takes its turn.)
pub const DISTRIBUTED: [&str; 8] = [
    "kahn.runs",
    "kahn.transitions",
    "kahn.run_nodes",
    "kahn.api_keys",
    "kahn.ingest_budget",
    "kahn.checkpoint_leaves",
    "kahn.checkpoints",
    "kahn.purge_records",
];

/// Whether the database the pool (or connection) reaches has the `citus` extension.
///
/// # Errors
/// A [`PgError`](crate::PgError) when the catalog cannot be read.
pub async fn is_citus<'c, E: sqlx_core::executor::Executor<'c, Database = Postgres>>(
    conn: E,
) -> Result<bool> {
    query_scalar("SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')")
        .fetch_one(conn)
        .await
        .map_err(db)
}

/// Places every table of [`REFERENCE`] and [`DISTRIBUTED`] that is not placed yet; returns how
/// many it placed. Runs as the admin, after the migrations.
pub(crate) async fn distribute(pool: &PgPool) -> Result<usize> {
    let_definer_reach_the_workers(pool).await?;
    let mut placed = 0;
    for table in REFERENCE {
        if method(pool, table).await?.as_deref() != Some("n") {
            query("SELECT pg_catalog.create_reference_table($1::regclass)")
                .bind(table)
                .execute(pool)
                .await
                .map_err(db)?;
            placed += 1;
        }
    }
    for table in DISTRIBUTED {
        if method(pool, table).await?.as_deref() == Some("h") {
            continue;
        }
        // One transaction per table: kahn.runs carries the received_at trigger, which Citus
        // only distributes with citus.enable_unsafe_triggers (it assigns NEW.received_at and
        // touches no other table, which is what makes it safe on a shard).
        let mut tx = pool.begin().await.map_err(db)?;
        query("SET LOCAL citus.enable_unsafe_triggers = on").execute(&mut *tx).await.map_err(db)?;
        // A table tied to a reference table by a foreign key became a Citus local table when
        // the reference table was created: distributing it again is how it becomes hash-
        // distributed.
        let colocate = if table == DISTRIBUTED[0] { "default" } else { DISTRIBUTED[0] };
        query(
            "SELECT pg_catalog.create_distributed_table($1::regclass, 'tenant_id', \
                    colocate_with => $2)",
        )
        .bind(table)
        .bind(colocate)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        placed += 1;
    }
    Ok(placed)
}

/// The table's Citus partition method (`h` hash-distributed, `n` reference, NULL for a local
/// table; a Citus local table is `n` with no shard key, told apart by `repmodel`).
async fn method(pool: &PgPool, table: &str) -> Result<Option<String>> {
    query_scalar(
        "SELECT CASE WHEN p.partmethod = 'n' AND p.repmodel <> 't' THEN 'local' \
                     ELSE p.partmethod::text END \
         FROM pg_dist_partition AS p WHERE p.logicalrelid = $1::regclass",
    )
    .bind(table)
    .fetch_optional(pool)
    .await
    .map_err(db)
    .map(Option::flatten)
}

/// Citus runs a query's shard tasks over connections to the workers **as the current user**,
/// and inside KAHN's SECURITY DEFINER functions (the key lookup, the purge, personal tenants)
/// that is `kahn_definer`: on a cluster it must be able to log in. It has no password, so
/// under password authentication nobody logs in as it from outside; the cluster's `pg_hba.conf`
/// (or `pg_dist_authinfo`) is what admits the coordinator's connections to the workers
/// (kahn-pg/README.md, "Citus"). Roles are per server and Citus propagates this to every node,
/// so it is done once per cluster; on plain Postgres the role stays `NOLOGIN`.
async fn let_definer_reach_the_workers(pool: &PgPool) -> Result<()> {
    let can_login: bool =
        query_scalar("SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = 'kahn_definer'")
            .fetch_one(pool)
            .await
            .map_err(db)?;
    if !can_login {
        query("ALTER ROLE kahn_definer LOGIN").execute(pool).await.map_err(db)?;
    }
    Ok(())
}
