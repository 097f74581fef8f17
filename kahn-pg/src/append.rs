//! The content-aligned append: per run, a constant number of statements however many rows.

use chrono::Utc;
use kahn_core::rules::{AppendPlan, Outcome, merge_meta, truncate_micros};
use kahn_core::{
    AppendBatch, AppendReport, Digest, Labels, Result, RunAppend, RunAppendReport, RunMeta,
    TenantId,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::PgConnection;

use crate::error::{corrupt, db};

/// Appends `batch` inside the caller's transaction (whose tenant is already set).
///
/// First every run row is created if missing and locked, in run id order, so two batches
/// touching the same runs never deadlock; then the runs are applied in batch order, so the
/// error reported is that of the first failing run of the batch, and the report follows
/// batch order.
pub(crate) async fn append(
    conn: &mut PgConnection,
    tenant: TenantId,
    batch: &AppendBatch,
) -> Result<AppendReport> {
    let runs = batch.runs();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| runs[a].run_id().cmp(runs[b].run_id()));
    let mut locked: Vec<Option<StoredRun>> = vec![None; runs.len()];
    for i in order {
        locked[i] = Some(lock_run(conn, tenant, &runs[i]).await?);
    }
    let mut report = AppendReport::default();
    for (run, stored) in runs.iter().zip(locked) {
        let stored = stored.ok_or_else(|| corrupt("a run of the batch was not locked"))?;
        report.runs.push(append_run(conn, tenant, run, stored).await?);
    }
    Ok(report)
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
}

/// Creates the run row if missing, then locks it: concurrent appends to one run serialize
/// here, for the rest of the transaction.
async fn lock_run(conn: &mut PgConnection, tenant: TenantId, run: &RunAppend) -> Result<StoredRun> {
    let (tenant_id, run_id) = (tenant.as_uuid(), run.run_id().as_str());
    query(
        "INSERT INTO kahn.runs (tenant_id, run_id, head_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant_id, run_id) DO NOTHING",
    )
    .bind(tenant_id)
    .bind(run_id)
    .bind(Digest::ZERO.as_bytes().as_slice())
    .bind(truncate_micros(Utc::now()))
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    let row = query(
        "SELECT next_seq, head_hash, source, labels, CASE WHEN $3 THEN graph END AS graph \
         FROM kahn.runs WHERE tenant_id = $1 AND run_id = $2 FOR UPDATE",
    )
    .bind(tenant_id)
    .bind(run_id)
    .bind(run.meta().graph().is_some())
    .fetch_one(&mut *conn)
    .await
    .map_err(db)?;
    let next: i64 = row.try_get("next_seq").map_err(db)?;
    Ok(StoredRun {
        next_seq: u64::try_from(next).map_err(corrupt)?,
        head_hash: digest(&row.try_get::<Vec<u8>, _>("head_hash").map_err(db)?)?,
        source: row.try_get("source").map_err(db)?,
        labels: row.try_get("labels").map_err(db)?,
        graph: row.try_get("graph").map_err(db)?,
    })
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::try_from_slice(bytes).map_err(corrupt)
}

/// Rebuilds the stored metadata, to merge the incoming metadata into.
fn stored_meta(source: Option<String>, graph: Option<String>, labels: &str) -> Result<RunMeta> {
    let mut meta = RunMeta::new();
    if let Some(source) = source {
        meta = meta.with_source(source).map_err(corrupt)?;
    }
    if let Some(graph) = graph {
        let value: serde_json::Value = serde_json::from_str(&graph).map_err(corrupt)?;
        meta = meta.with_graph(value).map_err(corrupt)?;
    }
    let labels: Labels = serde_json::from_str(labels).map_err(corrupt)?;
    for (k, v) in labels {
        meta = meta.with_label(k, v).map_err(corrupt)?;
    }
    Ok(meta)
}

async fn append_run(
    conn: &mut PgConnection,
    tenant: TenantId,
    run: &RunAppend,
    stored: StoredRun,
) -> Result<RunAppendReport> {
    let (tenant_id, run_id) = (tenant.as_uuid(), run.run_id().as_str());
    let (stored_next, stored_head) = (stored.next_seq, stored.head_hash);

    // 2. Plan; read the (at most two) chain links the plan needs in one query.
    let plan = AppendPlan::new(run, stored_next, stored_head)?;
    let needed: Vec<i64> = plan.links_needed().into_iter().map(|s| s as i64).collect();
    let mut links: Vec<(u64, Digest)> = Vec::with_capacity(needed.len());
    if !needed.is_empty() {
        let rows = query(
            "SELECT seq, chain_hash FROM kahn.transitions \
             WHERE tenant_id = $1 AND run_id = $2 AND seq = ANY($3::bigint[])",
        )
        .bind(tenant_id)
        .bind(run_id)
        .bind(&needed)
        .fetch_all(&mut *conn)
        .await
        .map_err(db)?;
        for r in rows {
            let seq: i64 = r.try_get("seq").map_err(db)?;
            let hash: Vec<u8> = r.try_get("chain_hash").map_err(db)?;
            links.push((u64::try_from(seq).map_err(corrupt)?, digest(&hash)?));
        }
    }
    let decision = match plan.decide(|seq| links.iter().find(|(s, _)| *s == seq).map(|l| l.1))? {
        Outcome::Append(d) => d,
        Outcome::Diverged(div) => {
            let range = div.range();
            let rows = query(
                "SELECT content_hash FROM kahn.transitions \
                 WHERE tenant_id = $1 AND run_id = $2 AND seq >= $3 AND seq < $4 ORDER BY seq",
            )
            .bind(tenant_id)
            .bind(run_id)
            .bind(range.start as i64)
            .bind(range.end as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(db)?;
            let hashes = rows
                .iter()
                .map(|r| digest(&r.try_get::<Vec<u8>, _>("content_hash").map_err(db)?))
                .collect::<Result<Vec<_>>>()?;
            return Err(div.conflict(run, &hashes));
        }
    };

    // 3. Metadata: set once.
    let mut meta_update: Option<RunMeta> = None;
    if !run.meta().is_empty() {
        let mut meta = stored_meta(stored.source, stored.graph, &stored.labels)?;
        if merge_meta(run.run_id(), &mut meta, run.meta())? {
            meta_update = Some(meta);
        }
    }

    // 4. The new rows, in one statement.
    if !decision.rows.is_empty() {
        // Borrowed, not copied: the arrays are encoded straight from the batch's rows.
        let content_hashes: Vec<Digest> =
            decision.rows.iter().map(|r| r.body.content_hash()).collect();
        let seqs: Vec<i64> = decision.rows.iter().map(|r| r.seq as i64).collect();
        let bodies: Vec<&str> = decision.rows.iter().map(|r| r.body.canonical_json()).collect();
        let contents: Vec<&[u8]> = content_hashes.iter().map(|d| d.as_bytes().as_slice()).collect();
        let chains: Vec<&[u8]> =
            decision.rows.iter().map(|r| r.chain_hash.as_bytes().as_slice()).collect();
        query(
            "INSERT INTO kahn.transitions (tenant_id, run_id, seq, body, content_hash, chain_hash) \
             SELECT $1, $2, t.seq, t.body, t.content_hash, t.chain_hash \
             FROM UNNEST($3::bigint[], $4::text[], $5::bytea[], $6::bytea[]) \
                  AS t(seq, body, content_hash, chain_hash)",
        )
        .bind(tenant_id)
        .bind(run_id)
        .bind(&seqs)
        .bind(&bodies)
        .bind(&contents)
        .bind(&chains)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }

    // 5. The run summary.
    if !decision.rows.is_empty() || meta_update.is_some() {
        let status = decision.status().map(status_json);
        let (lo, hi) = decision.ts_range().unzip();
        let (source, graph, labels) = match &meta_update {
            Some(m) => (
                m.source().map(str::to_owned),
                m.graph_canonical().map(str::to_owned),
                Some(serde_json::to_string(m.labels()).map_err(corrupt)?),
            ),
            None => (None, None, None),
        };
        query(
            "UPDATE kahn.runs SET source = COALESCE($3, source), graph = COALESCE($4, graph), \
                    labels = COALESCE($5, labels), next_seq = $6, head_hash = $7, \
                    status_json = COALESCE($8, status_json), \
                    first_ts = LEAST(first_ts, $9), last_ts = GREATEST(last_ts, $10) \
             WHERE tenant_id = $1 AND run_id = $2",
        )
        .bind(tenant_id)
        .bind(run_id)
        .bind(source)
        .bind(graph)
        .bind(labels)
        .bind(decision.next_seq as i64)
        .bind(decision.head_hash.as_bytes().as_slice())
        .bind(status)
        .bind(lo)
        .bind(hi)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }

    Ok(RunAppendReport {
        run_id: run.run_id().clone(),
        appended: decision.rows.len() as u64,
        skipped: decision.skipped,
        next_seq: decision.next_seq,
        head_hash: decision.head_hash,
    })
}

/// A status as stored: its JSON string literal, so any string (even one holding `\u0000`,
/// which Postgres text refuses) is stored and compared exactly.
pub(crate) fn status_json(status: &str) -> String {
    serde_json::Value::String(status.to_owned()).to_string()
}
