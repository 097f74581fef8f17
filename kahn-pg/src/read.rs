//! Reads, each inside the caller's `READ ONLY` transaction whose tenant is already set.
//!
//! Every statement also names the tenant explicitly: RLS is the guarantee, the predicate keeps
//! an admin backend (which may see every tenant) correct and lets the planner use the keys.

use kahn_core::rules::from_micros;
use kahn_core::{
    Cursor, Error, Labels, MAX_PAGE_SIZE, Result, RunId, RunInfo, RunPage, RunQuery, RunSummary,
    Seq, StateClass, StoredTransition, TenantId,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::{PgConnection, PgRow};

use crate::error::{corrupt, db};
use crate::progress::{json_literal, read_nodes, run_progress};

fn run_info(row: &PgRow) -> Result<RunInfo> {
    let run_id: String = row.try_get("run_id").map_err(db)?;
    let labels: String = row.try_get("labels").map_err(db)?;
    let next: i64 = row.try_get("next_seq").map_err(db)?;
    let head: Vec<u8> = row.try_get("head_hash").map_err(db)?;
    let mut info =
        RunInfo::new(RunId::new(run_id).map_err(corrupt)?, row.try_get("created_at").map_err(db)?);
    info.source = row.try_get("source").map_err(db)?;
    info.labels = serde_json::from_str::<Labels>(&labels).map_err(corrupt)?;
    info.next_seq = u64::try_from(next).map_err(corrupt)?;
    info.head_hash = kahn_core::Digest::try_from_slice(&head).map_err(corrupt)?;
    info.first_ts = row.try_get("first_ts").map_err(db)?;
    info.last_ts = row.try_get("last_ts").map_err(db)?;
    info.received_at = row.try_get("received_at").map_err(db)?;
    info.set_progress(&run_progress(row)?);
    Ok(info)
}

/// The run listing. The cursor's `activity_at <= $4` repeats what the `OR` below it already
/// implies: a bound the planner can put in `runs_by_activity`'s index condition, so a page
/// after a cursor starts at the cursor instead of filtering every newer run of the tenant
/// (the `OR` alone is only a filter: a page half-way down 100,000 runs read 50,000 index
/// entries, 34 ms, linear in the depth; benches/growth.rs).
pub(crate) async fn list_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    q: &RunQuery,
) -> Result<RunPage> {
    let limit = q.effective_limit() as usize;
    let rows = query(
        "SELECT run_id, source, labels, next_seq, head_hash, first_ts, last_ts, created_at, \
                received_at, run_state_json, started_at, ended_at, nodes_failed, nodes_cancelled, \
                nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped, nodes_other \
         FROM kahn.runs \
         WHERE tenant_id = $1 \
           AND ($2::text IS NULL OR source = $2) \
           AND ($3::text IS NULL OR status_json = $3) \
           AND ($7::text IS NULL OR pg_catalog.starts_with(run_id, $7)) \
           AND ($8::text IS NULL OR CASE $8 WHEN 'failed' THEN nodes_failed \
                                            WHEN 'cancelled' THEN nodes_cancelled \
                                            WHEN 'active' THEN nodes_active \
                                            WHEN 'waiting' THEN nodes_waiting \
                                            WHEN 'succeeded' THEN nodes_succeeded \
                                            WHEN 'skipped' THEN nodes_skipped \
                                            ELSE nodes_other END > 0) \
           AND ($4::timestamptz IS NULL OR activity_at < $4 \
                OR (activity_at = $4 AND run_id > $5)) \
           AND ($4::timestamptz IS NULL OR activity_at <= $4) \
         ORDER BY activity_at DESC, run_id \
         LIMIT $6",
    )
    .bind(tenant.as_uuid())
    .bind(q.source.as_deref())
    .bind(q.status.as_deref().map(json_literal))
    .bind(q.cursor.as_ref().map(|c| from_micros(c.activity_micros())))
    .bind(q.cursor.as_ref().map(|c| c.run_id().as_str().to_owned()))
    .bind(limit as i64 + 1)
    .bind(q.run_id_prefix.as_deref())
    .bind(q.node_class.map(StateClass::as_str))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut runs = rows.iter().map(run_info).collect::<Result<Vec<_>>>()?;
    let more = runs.len() > limit;
    runs.truncate(limit);
    let next_cursor = if more { runs.last().map(Cursor::after) } else { None };
    Ok(RunPage { runs, next_cursor })
}

pub(crate) async fn get_run(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &RunId,
) -> Result<RunSummary> {
    let row = query(
        "SELECT run_id, source, labels, next_seq, head_hash, first_ts, last_ts, created_at, \
                received_at, run_state_json, started_at, ended_at, nodes_failed, nodes_cancelled, \
                nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped, nodes_other, graph \
         FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(run.as_str())
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?
    .ok_or_else(|| Error::not_found("run", run))?;
    let graph: Option<String> = row.try_get("graph").map_err(db)?;
    Ok(RunSummary {
        info: run_info(&row)?,
        graph: graph
            .map(|g| serde_json::from_str(&g))
            .transpose()
            .map_err(|e| corrupt(e).in_run(run, None))?,
        nodes: read_nodes(conn, tenant, run.as_str()).await?,
    })
}

pub(crate) async fn read_transitions(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &RunId,
    after: Option<Seq>,
    limit: u32,
) -> Result<Vec<StoredTransition>> {
    let exists: bool =
        query("SELECT EXISTS (SELECT FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2) AS e")
            .bind(tenant.as_uuid())
            .bind(run.as_str())
            .fetch_one(&mut *conn)
            .await
            .map_err(db)?
            .try_get("e")
            .map_err(db)?;
    if !exists {
        return Err(Error::not_found("run", run));
    }
    let rows = query(
        "SELECT seq, body, content_hash, chain_hash FROM kahn.transitions \
         WHERE tenant_id = $1 AND run_id = $2 AND seq > $3 ORDER BY seq LIMIT $4",
    )
    .bind(tenant.as_uuid())
    .bind(run.as_str())
    .bind(after.map_or(-1, Seq::as_i64))
    .bind(i64::from(limit.min(MAX_PAGE_SIZE)))
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get("seq").map_err(db)?;
            let body: String = row.try_get("body").map_err(db)?;
            let content: Vec<u8> = row.try_get("content_hash").map_err(db)?;
            let chain: Vec<u8> = row.try_get("chain_hash").map_err(db)?;
            let at = |e: String| corrupt(e).in_run(run, u64::try_from(seq).ok());
            Ok(StoredTransition {
                seq: Seq::try_from(seq).map_err(|e| at(e.to_string()))?,
                body: serde_json::from_str(&body).map_err(|e| at(e.to_string()))?,
                content_hash: kahn_core::Digest::try_from_slice(&content).map_err(corrupt)?,
                chain_hash: kahn_core::Digest::try_from_slice(&chain).map_err(corrupt)?,
            })
        })
        .collect()
}
