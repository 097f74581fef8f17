//! Run status and node summaries (DESIGN.md "Run status and durations"), kept in `kahn.runs`
//! and `kahn.run_nodes` by the append from kahn-core's [`Progress`]. States and node names are
//! stored as JSON string literals (`status_json`, `node_json`, …): Postgres text cannot hold
//! the `\u0000` they may carry, and the literal compares exactly.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kahn_core::{
    ClassCounts, NodeSummary, Progress, Result, RunProgress, StateClass, TenantId, TransitionBody,
};
use sqlx_core::query::{Query, query};
use sqlx_core::row::Row;
use sqlx_postgres::{PgArguments, PgConnection, PgPool, PgRow, Postgres};

use crate::error::{corrupt, db};

/// A string as stored: its JSON string literal.
pub(crate) fn json_literal(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn from_literal(s: &str) -> Result<String> {
    serde_json::from_str(s).map_err(corrupt)
}

fn count(row: &PgRow, column: &str) -> Result<u64> {
    let n: i64 = row.try_get(column).map_err(db)?;
    u64::try_from(n).map_err(corrupt)
}

/// The run's progress, from a `kahn.runs` row holding `run_state_json`, `started_at`,
/// `ended_at` and the `nodes_<class>` counts.
pub(crate) fn run_progress(row: &PgRow) -> Result<RunProgress> {
    let run_state: Option<String> = row.try_get("run_state_json").map_err(db)?;
    Ok(RunProgress {
        run_state: run_state.as_deref().map(from_literal).transpose()?,
        counts: ClassCounts {
            failed: count(row, "nodes_failed")?,
            cancelled: count(row, "nodes_cancelled")?,
            active: count(row, "nodes_active")?,
            waiting: count(row, "nodes_waiting")?,
            succeeded: count(row, "nodes_succeeded")?,
            skipped: count(row, "nodes_skipped")?,
            other: count(row, "nodes_other")?,
        },
        started_at: row.try_get("started_at").map_err(db)?,
        ended_at: row.try_get("ended_at").map_err(db)?,
    })
}

fn node_summary(row: &PgRow) -> Result<NodeSummary> {
    let state = from_literal(&row.try_get::<String, _>("state_json").map_err(db)?)?;
    Ok(NodeSummary {
        node: from_literal(&row.try_get::<String, _>("node_json").map_err(db)?)?,
        class: StateClass::of(&state),
        state,
        started_at: row.try_get("started_at").map_err(db)?,
        ended_at: row.try_get("ended_at").map_err(db)?,
        attempts: count(row, "attempts")?,
        first_seq: count(row, "first_seq")?,
        last_seq: count(row, "last_seq")?,
    })
}

/// Every node summary of a run, in node order (as `String`s compare).
pub(crate) async fn read_nodes(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &str,
) -> Result<Vec<NodeSummary>> {
    let rows = query(
        "SELECT node_json, state_json, started_at, ended_at, attempts, first_seq, last_seq \
         FROM kahn.run_nodes WHERE tenant_id = $1 AND run_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(run)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let mut nodes = rows.iter().map(node_summary).collect::<Result<Vec<_>>>()?;
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(nodes)
}

/// The stored summaries of `wanted` `(run, node)` pairs, in one query, by run.
pub(crate) async fn load_nodes(
    conn: &mut PgConnection,
    tenant: TenantId,
    wanted: &[(&str, &str)],
) -> Result<HashMap<String, Vec<NodeSummary>>> {
    let mut by_run: HashMap<String, Vec<NodeSummary>> = HashMap::new();
    if wanted.is_empty() {
        return Ok(by_run);
    }
    let runs: Vec<&str> = wanted.iter().map(|(r, _)| *r).collect();
    let nodes: Vec<String> = wanted.iter().map(|(_, n)| json_literal(n)).collect();
    let rows = query(
        "SELECT n.run_id, n.node_json, n.state_json, n.started_at, n.ended_at, n.attempts, \
                n.first_seq, n.last_seq \
         FROM UNNEST($2::text[], $3::text[]) AS w(run_id, node_json) \
         JOIN kahn.run_nodes AS n \
           ON n.tenant_id = $1 AND n.run_id = w.run_id AND n.node_json = w.node_json",
    )
    .bind(tenant.as_uuid())
    .bind(&runs)
    .bind(&nodes)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for row in &rows {
        let run: String = row.try_get("run_id").map_err(db)?;
        by_run.entry(run).or_default().push(node_summary(row)?);
    }
    Ok(by_run)
}

/// Node summaries to store, one array per column, in the order the upserts' `UNNEST` lists
/// them: run id, node, state, started, ended, attempts, first seq, last seq.
pub(crate) struct NodeColumns<'a> {
    runs: Vec<&'a str>,
    names: Vec<String>,
    states: Vec<String>,
    started: Vec<Option<DateTime<Utc>>>,
    ended: Vec<Option<DateTime<Utc>>>,
    attempts: Vec<i64>,
    firsts: Vec<i64>,
    lasts: Vec<i64>,
}

impl<'a> NodeColumns<'a> {
    /// The columns of `nodes`, `(run, summary)`.
    pub(crate) fn of(nodes: &[(&'a str, &NodeSummary)]) -> Result<Self> {
        let seq = |n: u64| i64::try_from(n).map_err(corrupt);
        let mut c = Self {
            runs: Vec::with_capacity(nodes.len()),
            names: Vec::with_capacity(nodes.len()),
            states: Vec::with_capacity(nodes.len()),
            started: Vec::with_capacity(nodes.len()),
            ended: Vec::with_capacity(nodes.len()),
            attempts: Vec::with_capacity(nodes.len()),
            firsts: Vec::with_capacity(nodes.len()),
            lasts: Vec::with_capacity(nodes.len()),
        };
        for (run, n) in nodes {
            c.runs.push(*run);
            c.names.push(json_literal(&n.node));
            c.states.push(json_literal(&n.state));
            c.started.push(n.started_at);
            c.ended.push(n.ended_at);
            c.attempts.push(seq(n.attempts)?);
            c.firsts.push(seq(n.first_seq)?);
            c.lasts.push(seq(n.last_seq)?);
        }
        Ok(c)
    }

    /// Binds the eight columns, as arrays, in their order.
    pub(crate) fn bind<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        q.bind(&self.runs)
            .bind(&self.names)
            .bind(&self.states)
            .bind(&self.started)
            .bind(&self.ended)
            .bind(&self.attempts)
            .bind(&self.firsts)
            .bind(&self.lasts)
    }
}

/// What an upsert of node summaries does with a node already stored: takes the new summary
/// (all but `first_seq`, which a node keeps from its first transition).
macro_rules! on_node_conflict {
    () => {
        " ON CONFLICT (tenant_id, run_id, node_json) DO UPDATE SET \
            state_json = excluded.state_json, started_at = excluded.started_at, \
            ended_at = excluded.ended_at, attempts = excluded.attempts, \
            last_seq = excluded.last_seq"
    };
}
pub(crate) use on_node_conflict;

/// Writes the summaries of `nodes` `(run, summary)`, in one statement: new nodes are inserted,
/// known ones updated.
pub(crate) async fn store_nodes(
    conn: &mut PgConnection,
    tenant: TenantId,
    nodes: &[(&str, &NodeSummary)],
) -> Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    let columns = NodeColumns::of(nodes)?;
    let q = query(concat!(
        "INSERT INTO kahn.run_nodes (tenant_id, run_id, node_json, state_json, started_at, \
                                     ended_at, attempts, first_seq, last_seq) \
         SELECT r.tenant_id, u.run_id, u.node_json, u.state_json, u.started_at, u.ended_at, \
                u.attempts, u.first_seq, u.last_seq \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::bigint[], $8::bigint[], $9::bigint[]) \
              AS u(run_id, node_json, state_json, started_at, ended_at, attempts, first_seq, last_seq) \
         JOIN kahn.runs AS r ON r.tenant_id = $1 AND r.run_id = u.run_id",
        on_node_conflict!()
    ))
    .bind(tenant.as_uuid());
    columns.bind(q).execute(&mut *conn).await.map_err(db)?;
    Ok(())
}

/// Recomputes, from their transitions and by kahn-core's rule, the status, counts, times and
/// node summaries of every run migration 0005 marked (a NULL `status_json`): the runs stored
/// under the old rule. One transaction per run, so a migration interrupted here resumes where
/// it stopped. A run whose stored transitions do not decode keeps what those before it give,
/// with a warning: `kahn verify` names it; the migration does not refuse the whole store.
/// Returns the runs recomputed.
pub(crate) async fn recompute_marked(pool: &PgPool) -> Result<u64> {
    let marked = query("SELECT tenant_id, run_id FROM kahn.runs WHERE status_json IS NULL")
        .fetch_all(pool)
        .await
        .map_err(db)?;
    for row in &marked {
        let tenant: uuid::Uuid = row.try_get("tenant_id").map_err(db)?;
        let run: String = row.try_get("run_id").map_err(db)?;
        let mut tx = pool.begin().await.map_err(db)?;
        let rows = query(
            "SELECT seq, body FROM kahn.transitions WHERE tenant_id = $1 AND run_id = $2 \
             ORDER BY seq",
        )
        .bind(tenant)
        .bind(&run)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut progress = Progress::default();
        for t in &rows {
            let seq: i64 = t.try_get("seq").map_err(db)?;
            let body: String = t.try_get("body").map_err(db)?;
            match kahn_core::parse_json_object(&body).and_then(TransitionBody::new) {
                Ok(body) => {
                    progress.apply(u64::try_from(seq).map_err(corrupt)?, &body);
                }
                Err(e) => {
                    tracing::warn!(%tenant, run, seq, error = %e, "a stored transition does not decode: its run's status counts the transitions before it");
                    break;
                }
            }
        }
        let tenant_id = TenantId::from_uuid(tenant);
        let nodes: Vec<(&str, &NodeSummary)> =
            progress.nodes.values().map(|n| (run.as_str(), n)).collect();
        store_nodes(&mut tx, tenant_id, &nodes).await?;
        write_run_progress(&mut tx, tenant_id, &[(run.as_str(), &progress.run)]).await?;
        tx.commit().await.map_err(db)?;
    }
    Ok(marked.len() as u64)
}

/// Writes the status, counts and times of `runs`, in one statement (the recomputation's; the
/// append writes them with the rest of the run summary).
async fn write_run_progress(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[(&str, &RunProgress)],
) -> Result<()> {
    let cols = ProgressColumns::of(runs.iter().map(|(_, p)| *p))?;
    let ids: Vec<&str> = runs.iter().map(|(r, _)| *r).collect();
    let [failed, cancelled, active, waiting, succeeded, skipped, other] = &cols.counts;
    query(
        "UPDATE kahn.runs AS r SET status_json = u.status_json, run_state_json = u.run_state_json, \
                started_at = u.started_at, ended_at = u.ended_at, nodes_failed = u.failed, \
                nodes_cancelled = u.cancelled, nodes_active = u.active, \
                nodes_waiting = u.waiting, nodes_succeeded = u.succeeded, \
                nodes_skipped = u.skipped, nodes_other = u.other \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], \
                     $12::bigint[], $13::bigint[]) \
              AS u(run_id, status_json, run_state_json, started_at, ended_at, failed, cancelled, \
                   active, waiting, succeeded, skipped, other) \
         WHERE r.tenant_id = $1 AND r.run_id = u.run_id",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&cols.status)
    .bind(&cols.run_state)
    .bind(&cols.started)
    .bind(&cols.ended)
    .bind(failed)
    .bind(cancelled)
    .bind(active)
    .bind(waiting)
    .bind(succeeded)
    .bind(skipped)
    .bind(other)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Runs' progress as parallel arrays, for `UNNEST`; the counts one array per class, in
/// [`StateClass::ALL`] order.
pub(crate) struct ProgressColumns {
    pub(crate) status: Vec<String>,
    pub(crate) run_state: Vec<Option<String>>,
    pub(crate) started: Vec<Option<DateTime<Utc>>>,
    pub(crate) ended: Vec<Option<DateTime<Utc>>>,
    pub(crate) counts: [Vec<i64>; 7],
}

impl ProgressColumns {
    pub(crate) fn of<'a>(runs: impl IntoIterator<Item = &'a RunProgress>) -> Result<Self> {
        let mut cols = Self {
            status: Vec::new(),
            run_state: Vec::new(),
            started: Vec::new(),
            ended: Vec::new(),
            counts: Default::default(),
        };
        for p in runs {
            cols.push(p)?;
        }
        Ok(cols)
    }

    pub(crate) fn push(&mut self, p: &RunProgress) -> Result<()> {
        self.status.push(json_literal(p.status()));
        self.run_state.push(p.run_state.as_deref().map(json_literal));
        self.started.push(p.started_at);
        self.ended.push(p.ended_at);
        for (column, class) in self.counts.iter_mut().zip(StateClass::ALL) {
            column.push(i64::try_from(p.counts.get(class)).map_err(corrupt)?);
        }
        Ok(())
    }
}
