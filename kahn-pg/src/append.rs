//! The content-aligned append, set-wise: a constant number of statements per batch, however
//! many runs and rows it holds.
//!
//! 1. Every run row the batch names is created if missing (one multi-row `INSERT … VALUES`
//!    per 10,000 runs, in run id order), then all of them are locked `FOR UPDATE` in run id
//!    order by one `SELECT … ORDER BY … FOR UPDATE`: two batches touching the same runs lock
//!    them in the same order, so they serialize and never deadlock.
//! 2. Each run is planned in Rust ([`AppendPlan`]); the (at most two per run) stored chain
//!    links the plans need are read by one query over all runs.
//! 3. The runs are decided in batch order, so the error reported is that of the first failing
//!    run of the batch (a conflict reads that one run's content hashes to name the seq).
//! 4. The new rows of every run go in with one `INSERT … SELECT FROM UNNEST`, and every run
//!    summary changed is updated by one `UPDATE … FROM UNNEST`, which also sets `received_at`
//!    to the database's `now()` (a run created by the append gets it at creation).
//!
//! Before, each run cost five round trips; a request of 10,000 one-transition runs held a
//! pooled connection for 13 s (see docs/RELIABILITY.md, "red team, round two").

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kahn_core::rules::{AppendPlan, Decision, Divergence, Outcome, merge_meta, truncate_micros};
use kahn_core::{
    AppendBatch, AppendReport, Digest, Error, Labels, NodeSummary, Progress, Result, RunAppend,
    RunMeta, RunProgress, TenantId,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::PgConnection;

use crate::error::{corrupt, db};
use crate::progress::{self, ProgressColumns, run_progress};

/// Appends `batch` inside the caller's transaction (whose tenant is already set).
pub(crate) async fn append(
    conn: &mut PgConnection,
    tenant: TenantId,
    batch: &AppendBatch,
) -> Result<AppendReport> {
    let runs = batch.runs();
    if runs.is_empty() {
        return Ok(AppendReport::default());
    }
    let stored = lock_runs(conn, tenant, runs).await?;

    // Plans in batch order; a gap is only reported when no earlier run fails.
    let plans: Vec<Result<AppendPlan<'_>>> = runs
        .iter()
        .zip(&stored)
        .map(|(run, s)| AppendPlan::new(run, s.next_seq, s.head_hash))
        .collect();
    let links = read_links(conn, tenant, runs, &plans).await?;

    let stored_progress: Vec<RunProgress> = stored.iter().map(|s| s.progress.clone()).collect();
    let mut decisions: Vec<Decision<'_>> = Vec::with_capacity(runs.len());
    let mut metas: Vec<Option<RunMeta>> = Vec::with_capacity(runs.len());
    for (index, ((run, plan), stored)) in runs.iter().zip(plans).zip(stored).enumerate() {
        let plan = plan?;
        let decision = match plan.decide(|seq| links.get(&(index, seq)).copied())? {
            Outcome::Append(d) => d,
            Outcome::Diverged(div) => return Err(conflict(conn, tenant, run, &div).await?),
        };
        let mut meta_update = None;
        if !run.meta().is_empty() {
            let labels: Labels = serde_json::from_str(&stored.labels).map_err(corrupt)?;
            let mut meta = RunMeta::from_stored(stored.source, stored.graph.as_deref(), labels)
                .map_err(|e| e.in_run(run.run_id(), None))?;
            if merge_meta(run.run_id(), &mut meta, run.meta())? {
                meta_update = Some(meta);
            }
        }
        decisions.push(decision);
        metas.push(meta_update);
    }

    insert_rows(conn, tenant, runs, &decisions).await?;
    let progress = advance(conn, tenant, runs, &decisions, stored_progress).await?;
    update_runs(conn, tenant, runs, &decisions, &metas, &progress).await?;

    Ok(AppendReport {
        runs: runs.iter().zip(&decisions).map(|(run, d)| d.report(run.run_id())).collect(),
    })
}

/// The conflict a divergence comes to: reads the diverging range's stored content hashes to
/// name the first seq that differs.
async fn conflict(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &RunAppend,
    div: &Divergence,
) -> Result<Error> {
    let range = div.range();
    let rows = query(
        "SELECT content_hash FROM kahn.transitions \
         WHERE tenant_id = $1 AND run_id = $2 AND seq >= $3 AND seq < $4 ORDER BY seq",
    )
    .bind(tenant.as_uuid())
    .bind(run.run_id().as_str())
    .bind(seq_param(range.start)?)
    .bind(seq_param(range.end)?)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    let hashes = rows
        .iter()
        .map(|r| digest(&r.try_get::<Vec<u8>, _>("content_hash").map_err(db)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(div.conflict(run, &hashes))
}

/// A run row as locked for the append.
#[derive(Clone, Debug)]
struct StoredRun {
    next_seq: u64,
    head_hash: Digest,
    source: Option<String>,
    labels: String,
    /// Read only when the incoming metadata carries a graph (it can be large).
    graph: Option<String>,
    /// Status, node counts and times, as the append left them.
    progress: RunProgress,
}

/// Creates the batch's missing run rows, then locks every one of them, both in run id order:
/// concurrent appends to one run serialize here, for the rest of the transaction. Returns
/// the stored rows in batch order.
async fn lock_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
) -> Result<Vec<StoredRun>> {
    // Run ids compare bytewise in Rust, as `COLLATE "C"` orders them in the table.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_unstable_by(|&a, &b| runs[a].run_id().cmp(runs[b].run_id()));
    let ids: Vec<&str> = order.iter().map(|&i| runs[i].run_id().as_str()).collect();
    let want_graph: Vec<bool> = order.iter().map(|&i| runs[i].meta().graph().is_some()).collect();

    // Multi-row VALUES, not INSERT … SELECT FROM UNNEST: on Citus an INSERT whose SELECT reads
    // no distributed table is run through the coordinator with COPY, which Postgres refuses
    // into a table under RLS. A multi-row VALUES of one tenant is one INSERT on its shard.
    let created_at = truncate_micros(Utc::now());
    for chunk in ids.chunks(RUNS_PER_CREATE) {
        let sql = create_runs_sql(chunk.len());
        let mut q = query(AssertSqlSafe(sql))
            .persistent(chunk.len() <= 16)
            .bind(tenant.as_uuid())
            .bind(Digest::ZERO.as_bytes().as_slice())
            .bind(created_at);
        for id in chunk {
            q = q.bind(*id);
        }
        q.execute(&mut *conn).await.map_err(db)?;
    }

    let rows = query(
        "SELECT r.run_id, r.next_seq, r.head_hash, r.source, r.labels, \
                CASE WHEN w.want_graph THEN r.graph END AS graph, r.run_state_json, \
                r.started_at, r.ended_at, r.nodes_failed, r.nodes_cancelled, r.nodes_active, \
                r.nodes_waiting, r.nodes_succeeded, r.nodes_skipped, r.nodes_other \
         FROM UNNEST($2::text[], $3::bool[]) WITH ORDINALITY AS w(run_id, want_graph, ord) \
         JOIN kahn.runs AS r ON r.tenant_id = $1 AND r.run_id = w.run_id \
         ORDER BY w.ord \
         FOR UPDATE OF r",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&want_graph)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    if rows.len() != runs.len() {
        return Err(corrupt(format!(
            "{} of the batch's {} run rows could be locked",
            rows.len(),
            runs.len()
        )));
    }

    let mut stored: Vec<Option<StoredRun>> = vec![None; runs.len()];
    for (row, &i) in rows.iter().zip(&order) {
        let run_id: String = row.try_get("run_id").map_err(db)?;
        if run_id != runs[i].run_id().as_str() {
            return Err(corrupt("run rows were locked out of order"));
        }
        let next: i64 = row.try_get("next_seq").map_err(db)?;
        stored[i] = Some(StoredRun {
            next_seq: u64::try_from(next).map_err(corrupt)?,
            head_hash: digest(&row.try_get::<Vec<u8>, _>("head_hash").map_err(db)?)?,
            source: row.try_get("source").map_err(db)?,
            labels: row.try_get("labels").map_err(db)?,
            graph: row.try_get("graph").map_err(db)?,
            progress: run_progress(row)?,
        });
    }
    stored
        .into_iter()
        .map(|s| s.ok_or_else(|| corrupt("a run of the batch was not locked")))
        .collect()
}

/// Reads, in one query, the stored chain links every plan needs (at most two per run), keyed
/// by (the run's index in the batch, seq).
async fn read_links(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    plans: &[Result<AppendPlan<'_>>],
) -> Result<HashMap<(usize, u64), Digest>> {
    let (mut ids, mut seqs): (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
    let mut index_of: HashMap<&str, usize> = HashMap::new();
    for (i, (run, plan)) in runs.iter().zip(plans).enumerate() {
        let Ok(plan) = plan else { continue };
        for seq in plan.links_needed() {
            ids.push(run.run_id().as_str());
            seqs.push(seq_param(seq)?);
            index_of.insert(run.run_id().as_str(), i);
        }
    }
    let mut links = HashMap::with_capacity(ids.len());
    if ids.is_empty() {
        return Ok(links);
    }
    let rows = query(
        "SELECT t.run_id, t.seq, t.chain_hash \
         FROM UNNEST($2::text[], $3::bigint[]) AS n(run_id, seq) \
         JOIN kahn.transitions AS t \
           ON t.tenant_id = $1 AND t.run_id = n.run_id AND t.seq = n.seq",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&seqs)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for r in rows {
        let run_id: String = r.try_get("run_id").map_err(db)?;
        let seq: i64 = r.try_get("seq").map_err(db)?;
        let hash: Vec<u8> = r.try_get("chain_hash").map_err(db)?;
        let Some(&i) = index_of.get(run_id.as_str()) else {
            return Err(corrupt(format!("a chain link of run {run_id}, not asked for, was read")));
        };
        links.insert((i, u64::try_from(seq).map_err(corrupt)?), digest(&hash)?);
    }
    Ok(links)
}

/// Inserts every new row of the batch in one statement. Each row carries the index of its
/// run in a short array of run ids (joined back in SQL), not a copy of the id.
async fn insert_rows(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    decisions: &[Decision<'_>],
) -> Result<()> {
    let total: usize = decisions.iter().map(|d| d.rows.len()).sum();
    if total == 0 {
        return Ok(());
    }
    let mut run_ids: Vec<&str> = Vec::new();
    let mut run_index: Vec<i32> = Vec::with_capacity(total);
    let mut seqs: Vec<i64> = Vec::with_capacity(total);
    let mut bodies: Vec<&str> = Vec::with_capacity(total);
    let mut contents: Vec<Digest> = Vec::with_capacity(total);
    let mut chains: Vec<&[u8]> = Vec::with_capacity(total);
    for (run, d) in runs.iter().zip(decisions) {
        if d.rows.is_empty() {
            continue;
        }
        run_ids.push(run.run_id().as_str());
        let index = i32::try_from(run_ids.len()).map_err(corrupt)?;
        for row in &d.rows {
            run_index.push(index);
            seqs.push(seq_param(row.seq)?);
            bodies.push(row.body.canonical_json());
            contents.push(row.body.content_hash());
            chains.push(row.chain_hash.as_bytes().as_slice());
        }
    }
    // Borrowed, not copied: the arrays are encoded straight from the batch's rows.
    let contents: Vec<&[u8]> = contents.iter().map(|d| d.as_bytes().as_slice()).collect();
    // The tenant comes from the run rows (locked already, co-located): on Citus that makes the
    // INSERT … SELECT one statement on the tenant's shard, never a COPY through the coordinator
    // (refused under RLS). On Postgres it costs one index probe per run.
    query(
        "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
         SELECT s.tenant_id, s.run_id, t.seq, t.body, t.content_hash, t.chain_hash \
         FROM UNNEST($3::int4[], $4::bigint[], $5::text[], $6::bytea[], $7::bytea[]) \
              AS t(run_index, seq, body, content_hash, chain_hash) \
         JOIN UNNEST($2::text[]) WITH ORDINALITY AS r(run_id, run_index) \
           ON r.run_index = t.run_index \
         JOIN kahn.runs AS s ON s.tenant_id = $1 AND s.run_id = r.run_id",
    )
    .bind(tenant.as_uuid())
    .bind(&run_ids)
    .bind(&run_index)
    .bind(&seqs)
    .bind(&bodies)
    .bind(&contents)
    .bind(&chains)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Applies each run's new rows to its progress (kahn-core's rule), reading and writing the
/// summaries of the nodes they touch in one statement each. Returns every run's progress,
/// advanced or as stored.
async fn advance(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    decisions: &[Decision<'_>],
    stored: Vec<RunProgress>,
) -> Result<Vec<RunProgress>> {
    let touched: Vec<_> = decisions.iter().map(Decision::touched_nodes).collect();
    let wanted: Vec<(&str, &str)> = runs
        .iter()
        .zip(&touched)
        .flat_map(|(run, nodes)| nodes.iter().map(move |n| (run.run_id().as_str(), *n)))
        .collect();
    let mut loaded = progress::load_nodes(conn, tenant, &wanted).await?;
    let mut advanced = Vec::with_capacity(runs.len());
    for ((run, d), stored) in runs.iter().zip(decisions).zip(stored) {
        let nodes = loaded.remove(run.run_id().as_str()).unwrap_or_default();
        let mut p = Progress::new(stored, nodes);
        d.advance(&mut p);
        advanced.push(p);
    }
    let changed: Vec<(&str, &NodeSummary)> = runs
        .iter()
        .zip(&touched)
        .zip(&advanced)
        .flat_map(|((run, nodes), p)| {
            nodes.iter().filter_map(|n| p.nodes.get(*n)).map(|n| (run.run_id().as_str(), n))
        })
        .collect();
    progress::store_nodes(conn, tenant, &changed).await?;
    Ok(advanced.into_iter().map(|p| p.run).collect())
}

/// Updates, in one statement, the summary of every run that gained rows or metadata, and
/// renews its `received_at` (the database's clock): exactly the runs this append stored
/// something for. A run the batch only re-pushed is not touched, so its retention is not
/// extended.
async fn update_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    decisions: &[Decision<'_>],
    metas: &[Option<RunMeta>],
    progress: &[RunProgress],
) -> Result<()> {
    let mut ids: Vec<&str> = Vec::new();
    let mut sources: Vec<Option<&str>> = Vec::new();
    let mut graphs: Vec<Option<&str>> = Vec::new();
    let mut labels: Vec<Option<String>> = Vec::new();
    let mut next_seqs: Vec<i64> = Vec::new();
    let mut heads: Vec<&[u8]> = Vec::new();
    let mut cols = ProgressColumns::of([])?;
    let mut firsts: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut lasts: Vec<Option<DateTime<Utc>>> = Vec::new();
    for (((run, d), meta), p) in runs.iter().zip(decisions).zip(metas).zip(progress) {
        if d.rows.is_empty() && meta.is_none() {
            continue;
        }
        ids.push(run.run_id().as_str());
        sources.push(meta.as_ref().and_then(RunMeta::source));
        graphs.push(meta.as_ref().and_then(RunMeta::graph_canonical));
        labels.push(
            meta.as_ref()
                .map(|m| serde_json::to_string(m.labels()).map_err(corrupt))
                .transpose()?,
        );
        next_seqs.push(seq_param(d.next_seq)?);
        heads.push(d.head_hash.as_bytes().as_slice());
        cols.push(p)?;
        let (lo, hi) = d.ts_range().unzip();
        firsts.push(lo);
        lasts.push(hi);
    }
    if ids.is_empty() {
        return Ok(());
    }
    let [failed, cancelled, active, waiting, succeeded, skipped, other] = &cols.counts;
    query(
        "UPDATE kahn.runs AS r SET source = COALESCE(u.source, r.source), \
                graph = COALESCE(u.graph, r.graph), labels = COALESCE(u.labels, r.labels), \
                next_seq = u.next_seq, head_hash = u.head_hash, status_json = u.status_json, \
                first_ts = LEAST(r.first_ts, u.first_ts), last_ts = GREATEST(r.last_ts, u.last_ts), \
                received_at = pg_catalog.now(), run_state_json = u.run_state_json, \
                started_at = u.started_at, ended_at = u.ended_at, nodes_failed = u.failed, \
                nodes_cancelled = u.cancelled, nodes_active = u.active, \
                nodes_waiting = u.waiting, nodes_succeeded = u.succeeded, \
                nodes_skipped = u.skipped, nodes_other = u.other \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bytea[], \
                     $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], \
                     $12::timestamptz[], $13::timestamptz[], $14::bigint[], $15::bigint[], \
                     $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[]) \
              AS u(run_id, source, graph, labels, next_seq, head_hash, status_json, first_ts, \
                   last_ts, run_state_json, started_at, ended_at, failed, cancelled, active, \
                   waiting, succeeded, skipped, other) \
         WHERE r.tenant_id = $1 AND r.run_id = u.run_id",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&sources)
    .bind(&graphs)
    .bind(&labels)
    .bind(&next_seqs)
    .bind(&heads)
    .bind(&cols.status)
    .bind(&firsts)
    .bind(&lasts)
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

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::try_from_slice(bytes).map_err(corrupt)
}

/// Runs created per statement: three parameters are shared, one is each run's id, well under
/// Postgres's 65,535 parameters.
const RUNS_PER_CREATE: usize = 10_000;

/// `INSERT INTO kahn.runs … VALUES …` creating `n` runs if missing, in the order given: `$1`
/// the tenant, `$2` the zero head hash, `$3` the creation time, `$4…` the run ids. Built from
/// `n` only; every value is bound.
fn create_runs_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at, received_at) VALUES ",
    );
    for i in 0..n {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!("($1, ${}, $2, $3, pg_catalog.now())", i + 4));
    }
    sql.push_str(" ON CONFLICT (tenant_id, run_id) DO NOTHING");
    sql
}

/// A seq as Postgres stores it (`bigint`); seqs are validated below `i64::MAX` at parse time.
fn seq_param(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(corrupt)
}
