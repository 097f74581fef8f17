//! The checkpoint log's storage (kahn-core's [`checkpoint`](kahn_core::checkpoint), "What a
//! store keeps"): each tenant's leaves (`kahn.checkpoint_leaves`), signed checkpoints
//! (`kahn.checkpoints`) and the retention purge's records (`kahn.purge_records`, written by
//! `kahn.purge_tenant` in the transaction that deletes the runs). Migration 0010 made them.
//!
//! Every function runs inside the caller's transaction, whose tenant is already set; every
//! statement also names the tenant (RLS is the guarantee, the predicate keeps an admin backend
//! correct and lets the planner use the keys). Whatever is read back is decoded strictly: a
//! row that does not decode is [`Error::Integrity`] naming it, never a panic.

use kahn_core::checkpoint::{
    CheckpointInputs, CheckpointLog, Leaf, NewCheckpoint, PurgeRecord, PurgedRun, RunHead,
    StoredCheckpoint, log_moved,
};
use kahn_core::receipt::Envelope;
use kahn_core::{Digest, Error, Result, RunId, TenantId};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::{PgConnection, PgRow};

use crate::error::{BACKEND, db, unique_violation};

/// The first key of the transaction-scoped advisory lock that serializes one tenant's
/// checkpoint appends (`pg_advisory_xact_lock(KEY, hashtext(tenant))`): "KAHN" in ASCII, so
/// the lock is told apart from any other application's two-key advisory locks. The second key
/// is the hash of the tenant's id; two tenants sharing a hash only wait for each other.
const APPEND_LOCK_KEY: i32 = 0x4B41_484E;

/// A stored thing that does not decode: [`Error::Integrity`] naming it.
fn corrupt(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> Error {
    Error::corrupt(format_args!("{what} of the stored postgres checkpoint log"), detail)
}

/// A `bigint` column that must hold a count, a size or an index (never negative).
fn unsigned(row: &PgRow, column: &str, what: &str) -> Result<u64> {
    let v: i64 = row.try_get(column).map_err(db)?;
    u64::try_from(v).map_err(|_| corrupt(what, format_args!("{column} is negative ({v})")))
}

/// A `u64` as the `bigint` it is stored as.
fn bigint(v: u64, field: &'static str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(field, format!("{v} is beyond 2^63 - 1")))
}

/// The tenant's leaves, in order. Their indexes must run 0, 1, 2… without a gap: a missing
/// row is a log altered outside KAHN.
async fn leaves(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<Leaf>> {
    let rows =
        query("SELECT idx, leaf FROM kahn.checkpoint_leaves WHERE tenant_id = $1 ORDER BY idx")
            .bind(tenant.as_uuid())
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for (expected, row) in rows.iter().enumerate() {
        let idx = unsigned(row, "idx", "a leaf")?;
        if idx != expected as u64 {
            return Err(corrupt(
                format_args!("leaf {expected}"),
                format_args!("it is missing (the next stored leaf is {idx})"),
            ));
        }
        let bytes: Vec<u8> = row.try_get("leaf").map_err(db)?;
        out.push(Leaf::decode(&bytes).map_err(|e| corrupt(format_args!("leaf {idx}"), e))?);
    }
    Ok(out)
}

/// The tenant's signed checkpoints, in the order they were appended.
async fn checkpoints(conn: &mut PgConnection, tenant: TenantId) -> Result<Vec<StoredCheckpoint>> {
    let rows = query(
        "SELECT seq, tree_size, envelope FROM kahn.checkpoints WHERE tenant_id = $1 ORDER BY seq",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.try_get("seq").map_err(db)?;
        let what = format!("checkpoint {seq}");
        let tree_size = unsigned(row, "tree_size", &what)?;
        let text: String = row.try_get("envelope").map_err(db)?;
        let envelope: Envelope = serde_json::from_str(&text)
            .map_err(|e| corrupt(format_args!("{what}'s envelope"), e))?;
        out.push(StoredCheckpoint { tree_size, envelope });
    }
    Ok(out)
}

/// The tenant's whole checkpoint log. The caller's transaction should be one snapshot
/// (`REPEATABLE READ`), so no checkpoint is read without its leaves.
pub(crate) async fn read_log(conn: &mut PgConnection, tenant: TenantId) -> Result<CheckpointLog> {
    let leaves = leaves(conn, tenant).await?;
    let checkpoints = checkpoints(conn, tenant).await?;
    Ok(CheckpointLog { leaves, checkpoints })
}

/// A run id, a next_seq and a head hash as a row of `kahn.runs` or `kahn.purge_records`
/// holds them.
fn run_state(row: &PgRow, what: &str) -> Result<(RunId, u64, Digest)> {
    let run_id: String = row.try_get("run_id").map_err(db)?;
    let run_id = RunId::new(run_id).map_err(|e| corrupt(what, e))?;
    let next_seq = unsigned(row, "next_seq", what)?;
    let head: Vec<u8> = row.try_get("head_hash").map_err(db)?;
    let head_hash = Digest::try_from_slice(&head).map_err(|e| corrupt(what, e))?;
    Ok((run_id, next_seq, head_hash))
}

/// What the tenant's next checkpoint is made from: the log, the head of every run it holds and
/// its purge records not logged yet (by id). The caller's transaction must be one snapshot
/// (`REPEATABLE READ`): `kahn.purge_tenant` deletes a run and inserts its record in one
/// transaction, so the snapshot holds either the run or its record, never neither.
pub(crate) async fn inputs(conn: &mut PgConnection, tenant: TenantId) -> Result<CheckpointInputs> {
    let log = read_log(conn, tenant).await?;
    let rows = query(
        "SELECT run_id, next_seq, head_hash, received_at FROM kahn.runs \
         WHERE tenant_id = $1 ORDER BY run_id",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut heads = Vec::with_capacity(rows.len());
    for row in &rows {
        let (run_id, next_seq, head_hash) = run_state(row, "a run's head")?;
        let received_at = row.try_get("received_at").map_err(db)?;
        heads.push(RunHead { run_id, next_seq, head_hash, received_at });
    }
    let rows = query(
        "SELECT id, run_id, next_seq, head_hash, received_at, purged_at FROM kahn.purge_records \
         WHERE tenant_id = $1 AND NOT logged ORDER BY id",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut purges = Vec::with_capacity(rows.len());
    for row in &rows {
        let id = unsigned(row, "id", "a purge record")?;
        let (run_id, next_seq, head_hash) = run_state(row, &format!("purge record {id}"))?;
        let received_at = row.try_get("received_at").map_err(db)?;
        let purged_at = row.try_get("purged_at").map_err(db)?;
        let run = PurgedRun { run_id, next_seq, head_hash, received_at };
        purges.push(PurgeRecord { id, run, purged_at });
    }
    Ok(CheckpointInputs { log, heads, purges })
}

/// How many leaves the tenant's log holds (its indexes run 0…n-1) and the `seq` its next
/// checkpoint gets, as the caller's transaction sees them.
async fn sizes(conn: &mut PgConnection, tenant: TenantId) -> Result<(u64, i64)> {
    let row = query(
        "SELECT (SELECT coalesce(max(idx) + 1, 0) FROM kahn.checkpoint_leaves \
                 WHERE tenant_id = $1) AS leaves, \
                (SELECT coalesce(max(seq) + 1, 0) FROM kahn.checkpoints \
                 WHERE tenant_id = $1) AS next_seq",
    )
    .bind(tenant.as_uuid())
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let leaves = unsigned(&row, "leaves", "the log's size")?;
    let next_seq: i64 = row.try_get("next_seq").map_err(db)?;
    Ok((leaves, next_seq))
}

/// How many leaves the tenant's log holds, outside any append (for the error of an append that
/// lost a race).
pub(crate) async fn size(conn: &mut PgConnection, tenant: TenantId) -> Result<u64> {
    Ok(sizes(conn, tenant).await?.0)
}

/// Why an append wrote nothing, when it was refused by a key or a foreign key rather than
/// failing: the log moved (a concurrent append took the same index or `seq`; the caller reads
/// the size again for the error), or the tenant does not exist.
pub(crate) enum Refused {
    /// A concurrent append won.
    Moved,
    /// No such tenant (the checkpoint's foreign key).
    NoTenant,
}

/// Appends `next` to the tenant's log inside the caller's read-write transaction (tenant set),
/// after [`NewCheckpoint::validate`] passed: first takes the tenant's append lock, so appends
/// of one tenant run one at a time; then compares the log's size with `next.after`
/// ([`log_moved`] when they differ), inserts the checkpoint (`seq` the next one), the leaves
/// (indexes `after`…) and marks the purge records `next.purges` logged.
///
/// The leaves go in with one `INSERT … SELECT FROM UNNEST(…)` joined to the checkpoint row
/// just inserted: on Citus that reads a distributed table, so the statement runs on the
/// tenant's shard (an `INSERT … SELECT` reading none goes through the coordinator as a `COPY`,
/// which Postgres refuses into a table under RLS); on Postgres it is one index probe more.
///
/// `Ok(Err(_))` when a key or the foreign key refused the write (the transaction is then
/// aborted: roll it back).
pub(crate) async fn append(
    conn: &mut PgConnection,
    tenant: TenantId,
    next: &NewCheckpoint,
) -> Result<std::result::Result<(), Refused>> {
    query("SELECT pg_catalog.pg_advisory_xact_lock($2, pg_catalog.hashtext($1::text))")
        .bind(tenant.as_uuid())
        .bind(APPEND_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    // A statement after the lock: under READ COMMITTED it sees every append committed before.
    let (size, seq) = sizes(conn, tenant).await?;
    if size != next.after {
        return Err(log_moved(BACKEND, next.after, size));
    }
    let tree_size = bigint(next.checkpoint.tree_size, "checkpoint")?;
    let envelope = serde_json::to_string(&next.checkpoint.envelope).map_err(|e| {
        Error::invalid("checkpoint", format!("the envelope does not serialize: {e}"))
    })?;
    let inserted = query(
        "INSERT INTO kahn.checkpoints (tenant_id, seq, tree_size, envelope) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant.as_uuid())
    .bind(seq)
    .bind(tree_size)
    .bind(&envelope)
    .execute(&mut *conn)
    .await;
    if let Err(e) = inserted {
        return refused(e);
    }
    if !next.leaves.is_empty() {
        let leaves: Vec<Vec<u8>> = next.leaves.iter().map(Leaf::encode).collect();
        let inserted = query(
            "INSERT INTO kahn.checkpoint_leaves (tenant_id, idx, leaf) \
             SELECT c.tenant_id, $3 + l.ord - 1, l.leaf \
             FROM UNNEST($4::bytea[]) WITH ORDINALITY AS l(leaf, ord) \
             JOIN kahn.checkpoints AS c ON c.tenant_id = $1 AND c.seq = $2",
        )
        .bind(tenant.as_uuid())
        .bind(seq)
        .bind(bigint(next.after, "checkpoint")?)
        .bind(&leaves)
        .execute(&mut *conn)
        .await;
        match inserted {
            Ok(done) if done.rows_affected() == leaves.len() as u64 => {}
            Ok(done) => {
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "{} of the checkpoint's {} leaves were inserted; nothing was written",
                        done.rows_affected(),
                        leaves.len()
                    ),
                ));
            }
            Err(e) => return refused(e),
        }
    }
    if !next.purges.is_empty() {
        let ids =
            next.purges.iter().map(|id| bigint(*id, "checkpoint")).collect::<Result<Vec<i64>>>()?;
        query(
            "UPDATE kahn.purge_records SET logged = true \
             WHERE tenant_id = $1 AND id = ANY ($2::bigint[]) AND NOT logged",
        )
        .bind(tenant.as_uuid())
        .bind(&ids)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(Ok(()))
}

/// A failed insert of an append: a key taken by a concurrent append (it did not wait for the
/// lock: another node's, or none) is [`Refused::Moved`], the checkpoint's foreign key
/// [`Refused::NoTenant`]; anything else an error.
fn refused(e: sqlx_core::Error) -> Result<std::result::Result<(), Refused>> {
    if matches!(unique_violation(&e), Some("checkpoints_pkey" | "checkpoint_leaves_pkey")) {
        return Ok(Err(Refused::Moved));
    }
    if e.as_database_error().is_some_and(|d| d.is_foreign_key_violation()) {
        return Ok(Err(Refused::NoTenant));
    }
    Err(db(e))
}
