//! The content-aligned append, set-wise: a constant number of statements per batch, however
//! many runs and rows it holds.
//!
//! 1. Every run row of the batch that exists is locked `FOR UPDATE` in run id order by one
//!    `SELECT … ORDER BY … FOR UPDATE`: two batches touching the same runs lock them in the
//!    same order, so they serialize and never deadlock. A run not found is new, planned as an
//!    empty run.
//! 2. Each run is planned in Rust ([`AppendPlan`]); the (at most two per run) stored chain
//!    links the plans need are read by one query over all runs.
//! 3. The runs are decided in batch order, so the error reported is that of the first failing
//!    run of the batch (a conflict reads that one run's content hashes to name the seq).
//! 4. The new runs are created once, with their final summary (next seq, head, status, counts,
//!    times, metadata; `received_at` the database's `now()`), in run id order: on Postgres by
//!    one `INSERT … SELECT FROM UNNEST`, on Citus by multi-row `INSERT … VALUES` of up to
//!    3,000 runs ([`Engine`]). If a concurrent append created one of them after the lock, the
//!    insert waits for it to commit and then violates the primary key: the plan for that run
//!    assumed an empty run, so [`append`] returns `None`, and the caller rolls back and appends
//!    again, the run then locked like any other. No deadlock: an insert only waits for an
//!    append past its locking, and two appends creating the same runs insert them in the same
//!    order.
//! 5. The new rows of every run go in with one `INSERT … SELECT FROM UNNEST` (on Citus their
//!    tenant taken from the run rows), the node summaries they change with one upsert, and
//!    every run that existed and gained rows or metadata is updated by one `UPDATE … FROM
//!    UNNEST`, which also renews its `received_at`.
//!
//! 0. Before all of that, a batch of one run whose chain links were computed ahead
//!    ([`append_ahead`]) inserts its rows in one statement that first locks the run's row and
//!    checks that the stored tip is the link they were computed from; its bind crosses the
//!    wire while an earlier append of the run still holds the lock. When this process holds
//!    the run's progress under that link ([`ProgressCache`]: what its last append of the run
//!    left), everything the append writes is known before the lock, and the same statement
//!    also stores the node summaries and the run's summary: the append is that one statement.
//!    Otherwise the plan then decides exactly those rows, and step 5 does not insert them
//!    again. Progress a run's last append left is also taken from the cache when the rows are
//!    applied to it (between steps 3 and 4), for the node summaries, when it holds them under
//!    the stored head.
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
use sqlx_core::error::Error as SqlxError;
use sqlx_core::query::{Query, query};
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::{PgArguments, PgConnection, PgQueryResult, Postgres};

use crate::error::{corrupt, db, unique_violation};
use crate::progress::{self, NodeColumns, ProgressColumns, on_node_conflict, run_progress};
use crate::progress_cache::ProgressCache;

/// How the adapter writes rows that are not in any table yet, which depends on the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    /// Plain PostgreSQL: `INSERT … SELECT FROM UNNEST` of one array per column, one statement
    /// (planned once, whatever the batch's size; bound as a few arrays, not one parameter per
    /// value).
    Postgres,
    /// Citus: an `INSERT … SELECT` that reads no distributed table runs through the
    /// coordinator with `COPY`, which Postgres refuses into a table under RLS; a multi-row
    /// `VALUES` of one tenant is one `INSERT` on its shard. Chunked under the 65,535 bind
    /// parameters a statement may carry.
    Citus,
}

/// Appends `batch` inside the caller's transaction (whose tenant is already set). `None` when
/// a run the append found missing was created by a concurrent transaction before this one
/// could create it: its plan assumed an empty run, so the caller rolls the transaction back
/// and appends again (the run then exists and is locked like any other).
pub(crate) async fn append(
    conn: &mut PgConnection,
    tenant: TenantId,
    batch: &AppendBatch,
    engine: Engine,
    cache: &ProgressCache,
) -> Result<Option<AppendReport>> {
    let runs = batch.runs();
    if runs.is_empty() {
        return Ok(Some(AppendReport::default()));
    }
    let one_run = match (engine, runs) {
        (Engine::Postgres, [run]) => Some(run),
        _ => None,
    };
    // A run whose links were computed ahead is led to a head known now: the run's next append
    // in this process, sent before this one is done, waits for the progress this one works
    // out there, for as long as this promise lasts (until it is put, or this append ends).
    let promise = one_run.and_then(|run| {
        let head = run.chained_ahead()?.1.last()?;
        Some(cache.promise(tenant, run.run_id().as_str(), *head))
    });
    // Its rows go in first, on the condition that the run's stored tip is the link they were
    // computed from (the lock that condition takes is the one step 1 takes); their bind then
    // crosses the wire and is decoded while an earlier append of the run still holds its
    // lock, not after. With the run's progress known, that statement is the whole append.
    let written_ahead = match one_run {
        Some(run) => match append_ahead(conn, tenant, run, cache).await? {
            Ahead::Whole(report) => return Ok(Some(report)),
            Ahead::Rows => true,
            Ahead::Declined => false,
        },
        None => false,
    };
    // Run ids compare bytewise in Rust, as `COLLATE "C"` orders them in the table.
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_unstable_by(|&a, &b| runs[a].run_id().cmp(runs[b].run_id()));
    let locked = lock_runs(conn, tenant, runs, &order).await?;
    let is_new: Vec<bool> = locked.iter().map(Option::is_none).collect();
    let stored: Vec<StoredRun> =
        locked.into_iter().map(|s| s.unwrap_or_else(StoredRun::empty)).collect();

    // Plans in batch order; a gap is only reported when no earlier run fails.
    let plans: Vec<Result<AppendPlan<'_>>> = runs
        .iter()
        .zip(&stored)
        .map(|(run, s)| AppendPlan::new(run, s.next_seq, s.head_hash))
        .collect();
    let links = read_links(conn, tenant, runs, &plans).await?;

    let stored_progress: Vec<(RunProgress, Digest)> =
        stored.iter().map(|s| (s.progress.clone(), s.head_hash)).collect();
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

    let (advanced, complete) =
        advance(conn, tenant, runs, &decisions, &is_new, stored_progress, cache).await?;
    // Kept under the head it leads to as soon as it is known (the run's next append may be
    // waiting for it), whether or not this transaction commits: it is that head's progress
    // either way. Only for a batch of one run, what a pushed run's next chunk needs (a batch
    // of many runs would only churn the cache); then the promise ends, kept or not.
    if let ([run], [d], [p], [true]) = (runs, &decisions[..], &advanced[..], &complete[..]) {
        cache.put(tenant, run.run_id().as_str(), d.head_hash, p.clone());
    }
    drop(promise);
    // The new runs first, written once with their final summary (the transitions and node
    // summaries below take their tenant from the run rows). Fewer created than planned: a
    // concurrent append created one meanwhile, and its plan here assumed an empty run.
    let created = order.iter().copied().filter(|&i| is_new[i]);
    let created = Summaries::of(runs, &decisions, &metas, &advanced, created, true)?;
    if !created.is_empty() && !create_runs(conn, tenant, &created, engine).await? {
        return Ok(None);
    }
    if written_ahead {
        // The stored tip was the link the rows were computed from, so the plan appends every
        // one of them, with those links: what is already written. Checked, row by row: were
        // it ever otherwise, the transaction is refused, never committed.
        if !runs.iter().zip(&decisions).all(|(run, d)| decided_as_written(run, d)) {
            return Err(corrupt("rows written ahead are not the rows the append decided"));
        }
    } else {
        insert_rows(conn, tenant, runs, &decisions, engine).await?;
    }
    progress::store_nodes(conn, tenant, &changed_nodes(runs, &decisions, &advanced)).await?;
    // Then the runs that existed and gained rows or metadata.
    let changed = (0..runs.len())
        .filter(|&i| !is_new[i] && (!decisions[i].rows.is_empty() || metas[i].is_some()));
    update_runs(conn, tenant, &Summaries::of(runs, &decisions, &metas, &advanced, changed, false)?)
        .await?;

    let report = AppendReport {
        runs: runs.iter().zip(&decisions).map(|(run, d)| d.report(run.run_id())).collect(),
    };
    Ok(Some(report))
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

impl StoredRun {
    /// A run that does not exist yet, as the append plans it: nothing stored.
    fn empty() -> Self {
        Self {
            next_seq: 0,
            head_hash: Digest::ZERO,
            source: None,
            labels: "{}".to_owned(),
            graph: None,
            progress: RunProgress::default(),
        }
    }
}

/// Locks every run row of the batch that exists, in run id order (`order`, the batch's
/// indexes sorted by run id): concurrent appends to one run serialize here, for the rest of
/// the transaction, and never deadlock. Returns the stored rows in batch order, `None` for a
/// run that does not exist (yet).
async fn lock_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    order: &[usize],
) -> Result<Vec<Option<StoredRun>>> {
    let ids: Vec<&str> = order.iter().map(|&i| runs[i].run_id().as_str()).collect();
    let want_graph: Vec<bool> = order.iter().map(|&i| runs[i].meta().graph().is_some()).collect();
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

    // The rows come in run id order, a subsequence of `order`.
    let mut stored: Vec<Option<StoredRun>> = vec![None; runs.len()];
    let mut next = order.iter();
    for row in &rows {
        let run_id: String = row.try_get("run_id").map_err(db)?;
        let Some(&i) = next.by_ref().find(|&&i| runs[i].run_id().as_str() == run_id) else {
            return Err(corrupt("run rows were locked out of order"));
        };
        let seq: i64 = row.try_get("next_seq").map_err(db)?;
        stored[i] = Some(StoredRun {
            next_seq: u64::try_from(seq).map_err(corrupt)?,
            head_hash: digest(&row.try_get::<Vec<u8>, _>("head_hash").map_err(db)?)?,
            source: row.try_get("source").map_err(db)?,
            labels: row.try_get("labels").map_err(db)?,
            graph: row.try_get("graph").map_err(db)?,
            progress: run_progress(row)?,
        });
    }
    Ok(stored)
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
    engine: Engine,
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
    // On Citus the tenant comes from the run rows (locked or just created, co-located): that
    // makes the INSERT … SELECT one statement on the tenant's shard, never a COPY through the
    // coordinator (refused under RLS). On Postgres that join would cost an index probe per run
    // (20 ms of 75 for 10,000 one-row runs), so the tenant is the bound one.
    let sql = match engine {
        Engine::Postgres => {
            "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
             SELECT $1, r.run_id, t.seq, t.body, t.content_hash, t.chain_hash \
             FROM UNNEST($3::int4[], $4::bigint[], $5::text[], $6::bytea[], $7::bytea[]) \
                  AS t(run_index, seq, body, content_hash, chain_hash) \
             JOIN UNNEST($2::text[]) WITH ORDINALITY AS r(run_id, run_index) \
               ON r.run_index = t.run_index"
        }
        Engine::Citus => {
            "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
             SELECT s.tenant_id, s.run_id, t.seq, t.body, t.content_hash, t.chain_hash \
             FROM UNNEST($3::int4[], $4::bigint[], $5::text[], $6::bytea[], $7::bytea[]) \
                  AS t(run_index, seq, body, content_hash, chain_hash) \
             JOIN UNNEST($2::text[]) WITH ORDINALITY AS r(run_id, run_index) \
               ON r.run_index = t.run_index \
             JOIN kahn.runs AS s ON s.tenant_id = $1 AND s.run_id = r.run_id"
        }
    };
    query(sql)
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

/// The update of stored runs' summaries: `$1` the tenant, `$2` … `$20` the columns
/// [`Summaries::bind_columns`] binds. Ends with its `WHERE`, which a statement may extend.
macro_rules! update_runs_sql {
    () => {
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
             WHERE r.tenant_id = $1 AND r.run_id = u.run_id"
    };
}

/// How long [`append_ahead`] waits, at most, for the run's previous append in this process to
/// put the progress it promised (it puts it as soon as it has worked it out: before its
/// statement when it knew the progress before, after it locked the run otherwise). Past it,
/// the rows are sent without, and the append goes the usual way.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`append_ahead`] did.
enum Ahead {
    /// The whole append: rows, node summaries and run summary, all stored.
    Whole(AppendReport),
    /// The rows only: the append goes on from step 1, and decides exactly those rows.
    Rows,
    /// Nothing: the stored tip is another, or the run is new, or the batch does not qualify.
    Declined,
}

/// Appends `run` ahead of reading its stored run, when its links were computed ahead from the
/// link its stored run ends with, at the seq its first row carries: then they are exactly the
/// rows the append decides (nothing stored overlaps them, each link follows from that one).
/// One statement locks the run's row first, as [`lock_runs`] does (so a concurrent append of
/// the run is waited for, and the condition read after it commits), then writes only if the
/// stored tip is that link.
///
/// It writes the rows, and, when the cache holds the run's progress under that link and the
/// batch carries no metadata, also the node summaries and the run's summary the rows advance
/// it to: the whole append ([`Ahead::Whole`]). Otherwise only the rows ([`Ahead::Rows`]).
/// [`Ahead::Declined`] when the stored tip is another (or the run is new): nothing was written.
/// A first chunk (seq 0) is left to the usual path: its run is usually new, and its rows
/// would cross the wire twice.
async fn append_ahead(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &RunAppend,
    cache: &ProgressCache,
) -> Result<Ahead> {
    let Some((from, links)) = run.chained_ahead() else {
        return Ok(Ahead::Declined);
    };
    if run.bodies().is_empty() || run.start() == 0 {
        return Ok(Ahead::Declined);
    }
    // The append before this one may still be working the progress out (a pipelined pusher
    // sends this one before that one is done): it is waited for, not gone without.
    let cached = if run.meta().is_empty() {
        cache.take_or_wait(tenant, run.run_id().as_str(), from, PATIENCE).await
    } else {
        None
    };
    let whole = match cached {
        Some(progress) => advanced_ahead(run, *from, progress)?,
        None => None,
    };
    // Besides the rows, the run's summary and the node summaries they change when the progress
    // is known; none (nothing to update or upsert) when only the rows go ahead.
    let one = std::slice::from_ref(run);
    let (decided, advanced) = match &whole {
        Some((d, p)) => (std::slice::from_ref(d), std::slice::from_ref(p)),
        None => (&[][..], &[][..]),
    };
    let summary = Summaries::of(one, decided, &[None], advanced, 0..decided.len(), false)?;
    let nodes = NodeColumns::of(&changed_nodes(one, decided, advanced))?;
    let bodies: Vec<&str> = run.bodies().iter().map(|b| b.canonical_json()).collect();
    let contents: Vec<Digest> = run.bodies().iter().map(|b| b.content_hash()).collect();
    let contents: Vec<&[u8]> = contents.iter().map(|d| d.as_bytes().as_slice()).collect();
    let chains: Vec<&[u8]> = links.iter().map(|d| d.as_bytes().as_slice()).collect();
    // The run's row is locked by its key alone, so a concurrent append holding it is waited
    // for and the condition reads the tip it committed (a condition in the locking scan would
    // be read in the statement's snapshot, before that append, and skip the row unlocked).
    // The condition's `EXISTS` is uncorrelated: a one-time filter, evaluated (the row locked)
    // before the first row is inserted. The summaries' upsert and update (no rows to them
    // when only the rows go ahead) take the rows the append waited for, though the statement's
    // snapshot predates them: an update follows a row to its latest version, and an upsert
    // finds a conflicting row whether or not its snapshot sees it.
    let q = query(concat!(
        "WITH tip AS MATERIALIZED ( \
             SELECT next_seq, head_hash FROM kahn.runs \
             WHERE tenant_id = $1 AND run_id = $21 \
             FOR UPDATE), \
         ok AS MATERIALIZED (SELECT FROM tip WHERE next_seq = $22 AND head_hash = $23), \
         run AS (",
        update_runs_sql!(),
        " AND EXISTS (SELECT FROM ok)), \
         nodes AS ( \
             INSERT INTO kahn.run_nodes (tenant_id, run_id, node_json, state_json, started_at, \
                                         ended_at, attempts, first_seq, last_seq) \
             SELECT $1, n.run_id, n.node_json, n.state_json, n.started_at, n.ended_at, \
                    n.attempts, n.first_seq, n.last_seq \
             FROM UNNEST($27::text[], $28::text[], $29::text[], $30::timestamptz[], \
                         $31::timestamptz[], $32::bigint[], $33::bigint[], $34::bigint[]) \
                  AS n(run_id, node_json, state_json, started_at, ended_at, attempts, \
                       first_seq, last_seq) \
             WHERE EXISTS (SELECT FROM ok)",
        on_node_conflict!(),
        ") \
         INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
         SELECT $1, $21, $22 + t.n - 1, t.body, t.content_hash, t.chain_hash \
         FROM UNNEST($24::text[], $25::bytea[], $26::bytea[]) WITH ORDINALITY \
              AS t(body, content_hash, chain_hash, n) \
         WHERE EXISTS (SELECT FROM ok)"
    ))
    .bind(tenant.as_uuid());
    let q = summary
        .bind_columns(q)
        .bind(run.run_id().as_str())
        .bind(seq_param(run.start())?)
        .bind(from.as_bytes().as_slice())
        .bind(&bodies)
        .bind(&contents)
        .bind(&chains);
    // Kept under the head it leads to before the statement runs (the next append of the run
    // may be waiting for it), whether or not it commits: it is that head's progress either way.
    if let Some((d, p)) = &whole {
        cache.put(tenant, run.run_id().as_str(), d.head_hash, p.clone());
    }
    let done = nodes.bind(q).execute(&mut *conn).await.map_err(db)?;
    match (done.rows_affected(), whole) {
        (0, _) => Ok(Ahead::Declined),
        (n, Some((d, _))) if n == bodies.len() as u64 => {
            Ok(Ahead::Whole(AppendReport { runs: vec![d.report(run.run_id())] }))
        }
        (n, None) if n == bodies.len() as u64 => Ok(Ahead::Rows),
        (n, _) => Err(corrupt(format!("{n} of {} rows written ahead", bodies.len()))),
    }
}

/// The append of `run` decided ahead, against a stored run whose tip is `from` at the run's
/// start and whose progress is `progress`, and that progress advanced by it. `None` (the
/// append goes the usual way) unless it appends every row, with the links computed ahead.
fn advanced_ahead<'a>(
    run: &'a RunAppend,
    from: Digest,
    mut progress: Progress,
) -> Result<Option<(Decision<'a>, Progress)>> {
    let plan = AppendPlan::new(run, run.start(), from)?;
    // At the tip, the plan needs no stored link: none is read.
    let Outcome::Append(d) = plan.decide(|_| None)? else {
        return Ok(None);
    };
    if !decided_as_written(run, &d) {
        return Ok(None);
    }
    d.advance(&mut progress);
    Ok(Some((d, progress)))
}

/// Whether `d` appends exactly the rows [`append_ahead`] wrote for `run`: every one, at its
/// seq, with the link computed ahead.
fn decided_as_written(run: &RunAppend, d: &Decision<'_>) -> bool {
    let Some((_, links)) = run.chained_ahead() else {
        return false;
    };
    d.rows.len() == links.len()
        && (run.start()..)
            .zip(&d.rows)
            .zip(links)
            .all(|((seq, row), link)| row.seq == seq && row.chain_hash == *link)
}

/// Applies each run's new rows to its progress (kahn-core's rule), from the stored
/// summaries of the nodes they touch: none for a new run, every node of the run when the
/// cache holds its progress under its stored head (or, for a batch of one run with at most
/// [`kahn_core::ProgressCache::READ_WHOLE_RUN_NODES`], read from the database), otherwise the touched ones, read for
/// all runs in one statement. Returns every run's progress, advanced or as stored ([`changed_nodes`] are
/// then what to store), and whether it holds every node of its run (what the cache keeps).
async fn advance(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &[RunAppend],
    decisions: &[Decision<'_>],
    is_new: &[bool],
    stored: Vec<(RunProgress, Digest)>,
    cache: &ProgressCache,
) -> Result<(Vec<Progress>, Vec<bool>)> {
    let mut cached: Vec<Option<Progress>> = runs
        .iter()
        .zip(decisions)
        .zip(is_new.iter().zip(&stored))
        .map(|((run, d), (&new, (_, head)))| {
            if new || d.rows.is_empty() {
                return None;
            }
            cache.take(tenant, run.run_id().as_str(), head)
        })
        .collect();
    // A batch of one run (a pushed chunk) not in the cache reads all of the run's nodes when
    // they are few, so that its progress is complete, and cached: the run's next chunk is
    // then appended in one statement (a push resumed by a new process, a run pushed out of
    // the cache by others). Otherwise only the nodes the rows touch are read.
    let read_whole = match (runs, decisions, &stored[..], &cached[..], is_new) {
        ([_], [d], [(progress, _)], [None], [false]) => {
            !d.rows.is_empty()
                && progress.counts.total() <= kahn_core::ProgressCache::READ_WHOLE_RUN_NODES
        }
        _ => false,
    };
    let mut loaded = if read_whole {
        let run = runs[0].run_id().as_str();
        HashMap::from([(run.to_owned(), progress::read_nodes(conn, tenant, run).await?)])
    } else {
        let wanted: Vec<(&str, &str)> = runs
            .iter()
            .zip(decisions)
            .zip(is_new.iter().zip(&cached))
            .filter(|(_, (new, cached))| !**new && cached.is_none())
            .flat_map(|((run, d), _)| {
                d.touched_nodes().into_iter().map(move |n| (run.run_id().as_str(), n))
            })
            .collect();
        progress::load_nodes(conn, tenant, &wanted).await?
    };
    let mut advanced = Vec::with_capacity(runs.len());
    let mut complete = Vec::with_capacity(runs.len());
    for (i, ((run, d), (stored, _))) in runs.iter().zip(decisions).zip(stored).enumerate() {
        let (mut p, whole) = match cached[i].take() {
            // The run's own progress as just read under the lock (the cached one is the same).
            Some(cached) => (Progress { run: stored, nodes: cached.nodes }, true),
            None => {
                let nodes = loaded.remove(run.run_id().as_str()).unwrap_or_default();
                (Progress::new(stored, nodes), is_new[i] || read_whole)
            }
        };
        complete.push(whole);
        d.advance(&mut p);
        advanced.push(p);
    }
    Ok((advanced, complete))
}

/// The node summaries the new rows changed, `(run, summary)`.
fn changed_nodes<'a>(
    runs: &'a [RunAppend],
    decisions: &'a [Decision<'_>],
    advanced: &'a [Progress],
) -> Vec<(&'a str, &'a NodeSummary)> {
    runs.iter()
        .zip(decisions)
        .zip(advanced)
        .flat_map(|((run, d), p)| {
            d.touched_nodes()
                .into_iter()
                .filter_map(|n| p.nodes.get(n))
                .map(|n| (run.run_id().as_str(), n))
        })
        .collect()
}

/// Run summaries to write, one array per column (for `UNNEST`, or bound row by row into a
/// multi-row `VALUES`).
struct Summaries<'a> {
    ids: Vec<&'a str>,
    /// For a run that exists, `None` keeps what is stored.
    sources: Vec<Option<&'a str>>,
    graphs: Vec<Option<&'a str>>,
    labels: Vec<Option<String>>,
    next_seqs: Vec<i64>,
    heads: Vec<&'a [u8]>,
    progress: ProgressColumns,
    firsts: Vec<Option<DateTime<Utc>>>,
    lasts: Vec<Option<DateTime<Utc>>>,
}

impl<'a> Summaries<'a> {
    /// The summaries of the batch's runs at `indexes`, in that order. `new`: they are created,
    /// so a run without labels gets the empty object.
    fn of(
        runs: &'a [RunAppend],
        decisions: &'a [Decision<'_>],
        metas: &'a [Option<RunMeta>],
        advanced: &[Progress],
        indexes: impl IntoIterator<Item = usize>,
        new: bool,
    ) -> Result<Self> {
        let mut s = Self {
            ids: Vec::new(),
            sources: Vec::new(),
            graphs: Vec::new(),
            labels: Vec::new(),
            next_seqs: Vec::new(),
            heads: Vec::new(),
            progress: ProgressColumns::of([])?,
            firsts: Vec::new(),
            lasts: Vec::new(),
        };
        for i in indexes {
            let (d, meta) = (&decisions[i], metas[i].as_ref());
            s.ids.push(runs[i].run_id().as_str());
            s.sources.push(meta.and_then(RunMeta::source));
            s.graphs.push(meta.and_then(RunMeta::graph_canonical));
            let labels = meta.map(|m| serde_json::to_string(m.labels()).map_err(corrupt));
            s.labels.push(match labels.transpose()? {
                None if new => Some("{}".to_owned()),
                labels => labels,
            });
            s.next_seqs.push(seq_param(d.next_seq)?);
            s.heads.push(d.head_hash.as_bytes().as_slice());
            s.progress.push(&advanced[i].run)?;
            let (lo, hi) = d.ts_range().unzip();
            s.firsts.push(lo);
            s.lasts.push(hi);
        }
        Ok(s)
    }

    fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Binds the summaries' 19 columns, as arrays, in the order the `UNNEST` of the insert of
    /// new runs and of the update of stored ones lists them (after their own parameters).
    fn bind_columns<'q>(
        &'q self,
        q: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        let p = &self.progress;
        let [failed, cancelled, active, waiting, succeeded, skipped, other] = &p.counts;
        q.bind(&self.ids)
            .bind(&self.sources)
            .bind(&self.graphs)
            .bind(&self.labels)
            .bind(&self.next_seqs)
            .bind(&self.heads)
            .bind(&p.status)
            .bind(&self.firsts)
            .bind(&self.lasts)
            .bind(&p.run_state)
            .bind(&p.started)
            .bind(&p.ended)
            .bind(failed)
            .bind(cancelled)
            .bind(active)
            .bind(waiting)
            .bind(succeeded)
            .bind(skipped)
            .bind(other)
    }
}

/// Creates the new runs with their final summary, in the order given (run id order, so two
/// appends creating the same runs wait for each other in the same order), `received_at` the
/// database's clock. `false` when one of them was created by a concurrent transaction
/// meanwhile: the insert waited for that transaction to commit, then hit the primary key, and
/// this transaction is aborted (a plain `INSERT`, not `ON CONFLICT DO NOTHING`: it costs a
/// fifth less, and a clash means the append is made again anyway).
async fn create_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &Summaries<'_>,
    engine: Engine,
) -> Result<bool> {
    let created_at = truncate_micros(Utc::now());
    let p = &runs.progress;
    if engine == Engine::Postgres {
        let q = query(
            "INSERT INTO kahn.runs (tenant_id, run_id, source, graph, labels, next_seq, \
                    head_hash, status_json, first_ts, last_ts, created_at, received_at, \
                    run_state_json, started_at, ended_at, nodes_failed, nodes_cancelled, \
                    nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped, nodes_other) \
             SELECT $1, u.run_id, u.source, u.graph, u.labels, u.next_seq, u.head_hash, \
                    u.status_json, u.first_ts, u.last_ts, $2, pg_catalog.now(), \
                    u.run_state_json, u.started_at, u.ended_at, u.failed, u.cancelled, \
                    u.active, u.waiting, u.succeeded, u.skipped, u.other \
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], \
                         $8::bytea[], $9::text[], $10::timestamptz[], $11::timestamptz[], \
                         $12::text[], $13::timestamptz[], $14::timestamptz[], $15::bigint[], \
                         $16::bigint[], $17::bigint[], $18::bigint[], $19::bigint[], \
                         $20::bigint[], $21::bigint[]) \
                  AS u(run_id, source, graph, labels, next_seq, head_hash, status_json, \
                       first_ts, last_ts, run_state_json, started_at, ended_at, failed, \
                       cancelled, active, waiting, succeeded, skipped, other)",
        )
        .bind(tenant.as_uuid())
        .bind(created_at);
        let done = runs.bind_columns(q).execute(&mut *conn).await;
        return created(done);
    }
    let mut start = 0;
    while start < runs.ids.len() {
        let end = runs.ids.len().min(start + RUNS_PER_VALUES);
        let mut q = query(AssertSqlSafe(create_runs_values_sql(end - start)))
            .persistent(end - start <= 16)
            .bind(tenant.as_uuid())
            .bind(created_at);
        for i in start..end {
            q = q
                .bind(runs.ids[i])
                .bind(runs.sources[i])
                .bind(runs.graphs[i])
                .bind(runs.labels[i].as_deref())
                .bind(runs.next_seqs[i])
                .bind(runs.heads[i])
                .bind(p.status[i].as_str())
                .bind(runs.firsts[i])
                .bind(runs.lasts[i])
                .bind(p.run_state[i].as_deref())
                .bind(p.started[i])
                .bind(p.ended[i]);
            for column in &p.counts {
                q = q.bind(column[i]);
            }
        }
        if !created(q.execute(&mut *conn).await)? {
            return Ok(false);
        }
        start = end;
    }
    Ok(true)
}

/// Whether a run creation went through: `false` on the primary key's violation (a run
/// created concurrently), the error of anything else.
fn created(done: std::result::Result<PgQueryResult, SqlxError>) -> Result<bool> {
    match done {
        Ok(_) => Ok(true),
        Err(e) if unique_violation(&e) == Some("runs_pkey") => Ok(false),
        Err(e) => Err(db(e)),
    }
}

/// Updates, in one statement, the summary of every run that existed and gained rows or
/// metadata, and renews its `received_at` (the database's clock): exactly the runs this append
/// stored something for. A run the batch only re-pushed is not touched, so its retention is
/// not extended.
async fn update_runs(
    conn: &mut PgConnection,
    tenant: TenantId,
    runs: &Summaries<'_>,
) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let q = query(update_runs_sql!()).bind(tenant.as_uuid());
    runs.bind_columns(q).execute(&mut *conn).await.map_err(db)?;
    Ok(())
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::try_from_slice(bytes).map_err(corrupt)
}

/// Runs created per multi-row `VALUES` (Citus): two parameters are shared (the tenant, the
/// creation time), 19 are each run's, so 3,000 runs take 57,002 of Postgres's 65,535.
const RUNS_PER_VALUES: usize = 3_000;

/// The parameters [`create_runs_values_sql`] takes per run.
const VALUES_PER_RUN: usize = 19;

/// `INSERT INTO kahn.runs … VALUES …` creating `n` runs, with their summaries, in
/// the order given: `$1` the tenant, `$2` the creation time, then 19 parameters per run (run
/// id, source, graph, labels, next_seq, head_hash, status_json, first_ts, last_ts,
/// run_state_json, started_at, ended_at and the seven node counts, in `StateClass::ALL`
/// order). Built from `n` only; every value is bound.
fn create_runs_values_sql(n: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO kahn.runs (tenant_id, run_id, source, graph, labels, next_seq, head_hash, \
         status_json, first_ts, last_ts, run_state_json, started_at, ended_at, nodes_failed, \
         nodes_cancelled, nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped, \
         nodes_other, created_at, received_at) VALUES ",
    );
    for i in 0..n {
        sql.push_str(if i > 0 { ", ($1" } else { "($1" });
        for k in 0..VALUES_PER_RUN {
            sql.push_str(&format!(", ${}", 3 + i * VALUES_PER_RUN + k));
        }
        sql.push_str(", $2, pg_catalog.now())");
    }
    sql
}

/// A seq as Postgres stores it (`bigint`); seqs are validated below `i64::MAX` at parse time.
fn seq_param(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(corrupt)
}
