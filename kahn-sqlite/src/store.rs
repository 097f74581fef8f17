//! The SQL of every operation, as plain functions on a connection. They run on the
//! connection's own thread (see `worker`); every statement on tenant data binds the scope's
//! tenant, and every value is bound, never spliced into SQL.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use kahn_core::checkpoint::{
    CheckpointInputs, CheckpointLog, Leaf, NewCheckpoint, PurgeRecord, PurgedRun, RunHead,
    StoredCheckpoint, log_moved,
};
use kahn_core::rules::{AppendPlan, Outcome, from_micros, merge_meta, truncate_micros};
use kahn_core::{
    ApiKey, ApiKeyHash, ApiKeyId, ApiKeyInfo, ApiKeyRecord, AppendBatch, AppendReport, ClassCounts,
    Cursor, Digest, Error, IssuedApiKey, Labels, NewApiKey, NewTenant, NodeSummary, OrgId,
    Progress, ProgressCache, PurgeReport, Result, RetiredKeys, RunId, RunInfo, RunMeta, RunPage,
    RunProgress, RunQuery, RunSummary, Seq, StateClass, StoredTransition, Tenant, TenantChange,
    TenantId, TenantRecord, TenantSummary, TransitionBody,
};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};
use uuid::Uuid;

use crate::error::{db, is_unique_violation};

/// The store's clock, in microseconds since the epoch.
pub(crate) fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// A stored value of `column` that does not decode: the file is corrupt, not the caller's
/// input.
fn corrupt(column: &str, e: impl std::fmt::Display) -> Error {
    Error::corrupt(format_args!("stored sqlite {column}"), e)
}

fn uuid_from(bytes: Vec<u8>) -> Result<Uuid> {
    Uuid::from_slice(&bytes).map_err(|e| corrupt("id", e))
}

fn digest(bytes: &[u8]) -> Result<Digest> {
    Digest::try_from_slice(bytes).map_err(|e| corrupt("hash", e))
}

fn write_tx(conn: &mut Connection) -> Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db)
}

// ---------------------------------------------------------------------------------------
// Tenants and keys

const TENANT_COLS: &str = "id, name, owner_sub, airlock_org_id, retention_days, created_at";

/// A tenants row as read, before validation: id, name, owner_sub, org, retention, created.
type TenantRow = (Vec<u8>, String, Option<String>, Option<String>, i64, i64);

fn tenant_row(r: &Row<'_>) -> rusqlite::Result<TenantRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn tenant_from((id, name, owner_sub, org, retention, created): TenantRow) -> Result<Tenant> {
    Ok(Tenant {
        id: TenantId::from_uuid(uuid_from(id)?),
        name,
        owner_sub,
        airlock_org_id: org
            .map(OrgId::new)
            .transpose()
            .map_err(|e| corrupt("airlock_org_id", e))?,
        retention_days: u32::try_from(retention).map_err(|e| corrupt("retention_days", e))?,
        created_at: from_micros(created),
    })
}

fn find_tenant(conn: &Connection, id: TenantId) -> Result<Option<Tenant>> {
    conn.prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE id = ?1"))
        .map_err(db)?
        .query_row(params![id.as_uuid().as_bytes()], tenant_row)
        .optional()
        .map_err(db)?
        .map(tenant_from)
        .transpose()
}

pub(crate) fn get_tenant(conn: &Connection, id: TenantId) -> Result<Tenant> {
    find_tenant(conn, id)?.ok_or_else(|| Error::not_found("tenant", id))
}

pub(crate) fn provision_tenant(conn: &mut Connection, req: &NewTenant) -> Result<Tenant> {
    let tx = write_tx(conn)?;
    let existing = tx
        .prepare_cached(&format!("SELECT {TENANT_COLS} FROM tenants WHERE name = ?1"))
        .map_err(db)?
        .query_row(params![req.name()], tenant_row)
        .optional()
        .map_err(db)?
        .map(tenant_from)
        .transpose()?;
    if let Some(existing) = existing {
        req.check_matches(&existing)?;
        return Ok(existing);
    }
    let tenant = req.to_tenant();
    check_unique(&tx, &tenant, None)?;
    insert_tenant(&tx, &tenant)?;
    tx.commit().map_err(db)?;
    Ok(tenant)
}

/// Refuses a name, owner or org of `t` that a tenant other than `except` holds: the checks
/// and errors of the reference adapter, in its order.
fn check_unique(conn: &Connection, t: &Tenant, except: Option<TenantId>) -> Result<()> {
    let except = except.map(|id| *id.as_uuid().as_bytes());
    let held = |sql: &str, value: &str| -> Result<bool> {
        conn.prepare_cached(sql).map_err(db)?.exists(params![value, except]).map_err(db)
    };
    if held("SELECT 1 FROM tenants WHERE name = ?1 AND (?2 IS NULL OR id <> ?2)", &t.name)? {
        return Err(Error::name_taken(&t.name));
    }
    if let Some(sub) = &t.owner_sub
        && held("SELECT 1 FROM tenants WHERE owner_sub = ?1 AND (?2 IS NULL OR id <> ?2)", sub)?
    {
        return Err(Error::owner_sub_taken());
    }
    if let Some(org) = &t.airlock_org_id
        && held(
            "SELECT 1 FROM tenants WHERE airlock_org_id = ?1 AND (?2 IS NULL OR id <> ?2)",
            org.as_str(),
        )?
    {
        return Err(Error::org_taken());
    }
    Ok(())
}

fn insert_tenant(tx: &Transaction<'_>, tenant: &Tenant) -> Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO tenants ({TENANT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
    ))
    .map_err(db)?
    .execute(params![
        tenant.id.as_uuid().as_bytes(),
        tenant.name,
        tenant.owner_sub,
        tenant.airlock_org_id.as_ref().map(OrgId::as_str),
        tenant.retention_days,
        tenant.created_at.timestamp_micros(),
    ])
    .map_err(db)?;
    Ok(())
}

pub(crate) fn update_tenant(
    conn: &mut Connection,
    id: TenantId,
    change: &TenantChange,
) -> Result<Tenant> {
    let tx = write_tx(conn)?;
    let mut tenant = get_tenant(&tx, id)?;
    change.apply(&mut tenant);
    check_unique(&tx, &tenant, Some(id))?;
    tx.prepare_cached(
        "UPDATE tenants SET name = ?2, airlock_org_id = ?3, retention_days = ?4 WHERE id = ?1",
    )
    .map_err(db)?
    .execute(params![
        id.as_uuid().as_bytes(),
        tenant.name,
        tenant.airlock_org_id.as_ref().map(OrgId::as_str),
        tenant.retention_days,
    ])
    .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok(tenant)
}

pub(crate) fn delete_tenant(conn: &mut Connection, id: TenantId) -> Result<PurgeReport> {
    let tx = write_tx(conn)?;
    get_tenant(&tx, id)?;
    let tid = id.as_uuid().as_bytes();
    let delete = |sql: &str| -> Result<u64> {
        Ok(tx.prepare_cached(sql).map_err(db)?.execute(params![tid]).map_err(db)? as u64)
    };
    let transitions_removed = delete("DELETE FROM transitions WHERE tenant_id = ?1")?;
    delete("DELETE FROM run_nodes WHERE tenant_id = ?1")?;
    let runs_removed = delete("DELETE FROM runs WHERE tenant_id = ?1")?;
    delete("DELETE FROM api_keys WHERE tenant_id = ?1")?;
    // Its checkpoint log goes with it: the one time leaves and checkpoints are removed.
    delete("DELETE FROM checkpoint_leaves WHERE tenant_id = ?1")?;
    delete("DELETE FROM checkpoints WHERE tenant_id = ?1")?;
    delete("DELETE FROM purge_records WHERE tenant_id = ?1")?;
    delete("DELETE FROM tenants WHERE id = ?1")?;
    tx.commit().map_err(db)?;
    Ok(PurgeReport { tenant_id: id, runs_removed, transitions_removed })
}

pub(crate) fn provision_personal_tenant(conn: &mut Connection, sub: &str) -> Result<TenantId> {
    let req = NewTenant::personal(sub)?;
    // The writer is one connection and the transaction takes the write lock first: concurrent
    // first sign-ins (of this process or another) create one tenant.
    let tx = write_tx(conn)?;
    if let Some(existing) = lookup_tenant_by(&tx, TenantKey::OwnerSub(sub))? {
        return Ok(existing);
    }
    let tenant = req.to_tenant();
    check_unique(&tx, &tenant, None)?;
    insert_tenant(&tx, &tenant)?;
    tx.commit().map_err(db)?;
    Ok(tenant.id)
}

fn insert_key(
    tx: &Transaction<'_>,
    tenant: TenantId,
    created_at: i64,
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedApiKey> {
    let secret = ApiKey::generate()?;
    let id = ApiKeyId::new_random();
    tx.prepare_cached(
        "INSERT INTO api_keys (tenant_id, key_id, key_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .map_err(db)?
    .execute(params![
        tenant.as_uuid().as_bytes(),
        id.as_uuid().as_bytes(),
        secret.hash().as_bytes(),
        created_at,
        expires_at.map(|t| t.timestamp_micros()),
    ])
    .map_err(db)?;
    Ok(IssuedApiKey { id, tenant_id: tenant, secret })
}

pub(crate) fn create_api_key(
    conn: &mut Connection,
    tenant: TenantId,
    req: &NewApiKey,
) -> Result<IssuedApiKey> {
    let tx = write_tx(conn)?;
    get_tenant(&tx, tenant)?;
    let now = now_micros();
    let tid = tenant.as_uuid().as_bytes();
    // Retire first (the new key is not among the retired), in this one transaction. A key
    // is active at ?3 when neither revoked nor expired by then (as `ApiKeyInfo::is_active`).
    // Without a grace period (?4 NULL) the retired keys are revoked now; with one they expire
    // at its end, a key already expiring sooner keeping its earlier expiry.
    if let Some((which, at)) = req.retirement() {
        let one = match which {
            RetiredKeys::AllActive => None,
            RetiredKeys::One(id) => Some(id),
        };
        let retired = tx
            .prepare_cached(
                "UPDATE api_keys SET
                    revoked_at = CASE WHEN ?4 IS NULL THEN ?3 ELSE revoked_at END,
                    expires_at = CASE WHEN ?4 IS NULL THEN expires_at
                                      ELSE min(coalesce(expires_at, ?4), ?4) END
                 WHERE tenant_id = ?1 AND (?2 IS NULL OR key_id = ?2)
                   AND (revoked_at IS NULL OR revoked_at > ?3)
                   AND (expires_at IS NULL OR expires_at > ?3)",
            )
            .map_err(db)?
            .execute(params![
                tid,
                one.map(|id| *id.as_uuid().as_bytes()),
                now,
                at.map(|t| t.timestamp_micros()),
            ])
            .map_err(db)?;
        if let Some(id) = one
            && retired == 0
        {
            return Err(Error::not_found("api_key", id));
        }
    }
    let issued = insert_key(&tx, tenant, now, req.expiry())?;
    tx.commit().map_err(db)?;
    Ok(issued)
}
pub(crate) fn revoke_api_key(conn: &mut Connection, tenant: TenantId, key: ApiKeyId) -> Result<()> {
    let tx = write_tx(conn)?;
    let found = tx
        .prepare_cached(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?3) WHERE tenant_id = ?1 AND key_id = ?2",
        )
        .map_err(db)?
        .execute(params![tenant.as_uuid().as_bytes(), key.as_uuid().as_bytes(), now_micros()])
        .map_err(db)?;
    if found == 0 {
        return Err(Error::not_found("api_key", key));
    }
    tx.commit().map_err(db)
}

/// The keys of a tenant with their hashes, oldest first.
fn keys_of(conn: &Connection, tenant: TenantId) -> Result<Vec<ApiKeyRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT key_id, key_hash, created_at, expires_at, revoked_at, last_used_at
             FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, key_id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tenant.as_uuid().as_bytes()], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (id, hash, created, expires, revoked, last_used) = row.map_err(db)?;
        Ok(ApiKeyRecord {
            info: ApiKeyInfo {
                id: ApiKeyId::from_uuid(uuid_from(id)?),
                tenant_id: tenant,
                created_at: from_micros(created),
                expires_at: expires.map(from_micros),
                revoked_at: revoked.map(from_micros),
                last_used_at: last_used.map(from_micros),
            },
            hash: ApiKeyHash::from_digest(digest(&hash)?),
        })
    })
    .collect()
}

pub(crate) fn list_api_keys(conn: &mut Connection, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
    // One read transaction: the tenant check and the keys see the same snapshot.
    let tx = conn.transaction().map_err(db)?;
    get_tenant(&tx, tenant)?;
    Ok(keys_of(&tx, tenant)?.into_iter().map(|k| k.info).collect())
}

pub(crate) fn export_tenant(conn: &mut Connection, tenant: TenantId) -> Result<TenantRecord> {
    let tx = conn.transaction().map_err(db)?;
    let t = get_tenant(&tx, tenant)?;
    Ok(TenantRecord { tenant: t, keys: keys_of(&tx, tenant)? })
}

/// Checks an imported tenant's settings as provisioning would (a record is input, possibly
/// edited by hand), naming the field at fault.
fn check_imported(t: &Tenant) -> Result<()> {
    let req = NewTenant::new(t.name.clone())?.with_retention_days(t.retention_days)?;
    if let Some(sub) = &t.owner_sub {
        req.with_owner_sub(sub.clone())?;
    }
    Ok(())
}

pub(crate) fn import_tenant(conn: &mut Connection, record: &TenantRecord) -> Result<Tenant> {
    record.check_keys()?;
    check_imported(&record.tenant)?;
    // Stored times are microseconds: compare and return the tenant as it is stored.
    let t =
        &Tenant { created_at: truncate_micros(record.tenant.created_at), ..record.tenant.clone() };
    let tx = write_tx(conn)?;
    match find_tenant(&tx, t.id)? {
        Some(existing) if existing != *t => return Err(Error::import_differs(t.id)),
        Some(_) => {}
        None => {
            check_unique(&tx, t, None)?;
            insert_tenant(&tx, t)?;
        }
    }
    let tid = t.id.as_uuid().as_bytes();
    for key in &record.keys {
        let kid = key.info.id.as_uuid().as_bytes();
        let stored: Option<(Vec<u8>, Vec<u8>)> = tx
            .prepare_cached("SELECT tenant_id, key_id FROM api_keys WHERE key_hash = ?1")
            .map_err(db)?
            .query_row(params![key.hash.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db)?;
        match stored {
            Some((st, sk)) if st.as_slice() != tid || sk.as_slice() != kid => {
                return Err(Error::invalid("keys", "a key with this hash is another key here"));
            }
            // The same key: only a revocation at the source since propagates.
            Some(_) => {
                tx.prepare_cached(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE key_hash = ?1",
                )
                .map_err(db)?
                .execute(params![
                    key.hash.as_bytes(),
                    key.info.revoked_at.map(|t| t.timestamp_micros())
                ])
                .map_err(db)?;
            }
            None => {
                let inserted = tx
                    .prepare_cached(
                        "INSERT INTO api_keys (tenant_id, key_id, key_hash, created_at, expires_at,
                                               revoked_at, last_used_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(db)?
                    .execute(params![
                        tid,
                        kid,
                        key.hash.as_bytes(),
                        key.info.created_at.timestamp_micros(),
                        key.info.expires_at.map(|t| t.timestamp_micros()),
                        key.info.revoked_at.map(|t| t.timestamp_micros()),
                        key.info.last_used_at.map(|t| t.timestamp_micros()),
                    ]);
                match inserted {
                    // Only the key id can clash here (the hash was looked up above).
                    Err(e) if is_unique_violation(&e) => {
                        return Err(Error::invalid(
                            "keys",
                            format!("key {} is another key of this tenant here", key.info.id),
                        ));
                    }
                    other => other.map_err(db)?,
                };
            }
        }
    }
    tx.commit().map_err(db)?;
    Ok(t.clone())
}

pub(crate) fn list_tenants(conn: &Connection) -> Result<Vec<TenantSummary>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {TENANT_COLS}, (SELECT count(*) FROM runs r WHERE r.tenant_id = t.id) FROM tenants t ORDER BY name"
        ))
        .map_err(db)?;
    let rows = stmt.query_map([], |r| Ok((tenant_row(r)?, r.get::<_, i64>(6)?))).map_err(db)?;
    rows.map(|row| {
        let (t, count) = row.map_err(db)?;
        Ok(TenantSummary { tenant: tenant_from(t)?, run_count: count as u64 })
    })
    .collect()
}

/// The tenant of a key active at `now` (neither revoked nor expired by then).
pub(crate) fn authenticate_api_key(
    conn: &Connection,
    hash: ApiKeyHash,
    now: i64,
) -> Result<Option<TenantId>> {
    conn.prepare_cached(
        "SELECT tenant_id FROM api_keys WHERE key_hash = ?1
           AND (revoked_at IS NULL OR revoked_at > ?2) AND (expires_at IS NULL OR expires_at > ?2)",
    )
    .map_err(db)?
    .query_row(params![hash.as_bytes(), now], |r| r.get::<_, Vec<u8>>(0))
    .optional()
    .map_err(db)?
    .map(|id| Ok(TenantId::from_uuid(uuid_from(id)?)))
    .transpose()
}

/// Records a key's use at `at` (never moving it back). Run off the request's path.
pub(crate) fn record_key_use(conn: &Connection, hash: ApiKeyHash, at: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, ?2), ?2) WHERE key_hash = ?1",
    )
    .map_err(db)?
    .execute(params![hash.as_bytes(), at])
    .map_err(db)?;
    Ok(())
}

pub(crate) fn tenant_exists(conn: &Connection, id: TenantId) -> Result<()> {
    let found = conn
        .prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")
        .map_err(db)?
        .exists(params![id.as_uuid().as_bytes()])
        .map_err(db)?;
    if found { Ok(()) } else { Err(Error::not_found("tenant", id)) }
}

/// What a tenant is looked up by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum TenantKey<'a> {
    /// The airlock organization it is linked to.
    Org(&'a str),
    /// The `sub` of the person owning it.
    OwnerSub(&'a str),
}

pub(crate) fn lookup_tenant_by(conn: &Connection, key: TenantKey<'_>) -> Result<Option<TenantId>> {
    let (sql, value) = match key {
        TenantKey::Org(org) => ("SELECT id FROM tenants WHERE airlock_org_id = ?1", org),
        TenantKey::OwnerSub(sub) => ("SELECT id FROM tenants WHERE owner_sub = ?1", sub),
    };
    conn.prepare_cached(sql)
        .map_err(db)?
        .query_row(params![value], |r| r.get::<_, Vec<u8>>(0))
        .optional()
        .map_err(db)?
        .map(|id| Ok(TenantId::from_uuid(uuid_from(id)?)))
        .transpose()
}

// ---------------------------------------------------------------------------------------
// Runs

/// The columns of a listed run. The graph (possibly large) is read only where it is used:
/// `get_run`, and an append that carries metadata.
const RUN_COLS: &str = "run_id, source, labels, next_seq, head_hash, status, first_ts, last_ts, \
     created_at, received_at, run_state, started_at, ended_at, nodes_failed, nodes_cancelled, \
     nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped, nodes_other";

/// A run row: what is listed, and the progress an append continues from.
fn run_row(r: &Row<'_>) -> rusqlite::Result<Result<(RunInfo, RunProgress)>> {
    let run_id: String = r.get(0)?;
    let labels: String = r.get(2)?;
    let next_seq: i64 = r.get(3)?;
    let head: Vec<u8> = r.get(4)?;
    let (first, last, created): (Option<i64>, Option<i64>, i64) = (r.get(6)?, r.get(7)?, r.get(8)?);
    let received: i64 = r.get(9)?;
    let source = r.get(1)?;
    let count = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    let progress = RunProgress {
        run_state: r.get(10)?,
        counts: ClassCounts {
            failed: count(13)?,
            cancelled: count(14)?,
            active: count(15)?,
            waiting: count(16)?,
            succeeded: count(17)?,
            skipped: count(18)?,
            other: count(19)?,
        },
        started_at: r.get::<_, Option<i64>>(11)?.map(from_micros),
        ended_at: r.get::<_, Option<i64>>(12)?.map(from_micros),
    };
    Ok((|| {
        let mut info = RunInfo::new(
            RunId::new(run_id).map_err(|e| corrupt("run_id", e))?,
            from_micros(created),
        );
        info.source = source;
        info.labels = serde_json::from_str::<Labels>(&labels).map_err(|e| corrupt("labels", e))?;
        info.next_seq = u64::try_from(next_seq).map_err(|e| corrupt("next_seq", e))?;
        info.head_hash = digest(&head)?;
        info.first_ts = first.map(from_micros);
        info.last_ts = last.map(from_micros);
        info.received_at = from_micros(received);
        info.set_progress(&progress);
        Ok((info, progress))
    })())
}

const NODE_COLS: &str = "node, state, started_at, ended_at, attempts, first_seq, last_seq";

fn node_row(r: &Row<'_>) -> rusqlite::Result<NodeSummary> {
    let state: String = r.get(1)?;
    Ok(NodeSummary {
        node: r.get(0)?,
        class: StateClass::of(&state),
        state,
        started_at: r.get::<_, Option<i64>>(2)?.map(from_micros),
        ended_at: r.get::<_, Option<i64>>(3)?.map(from_micros),
        attempts: r.get::<_, i64>(4)?.max(0) as u64,
        first_seq: r.get::<_, i64>(5)?.max(0) as u64,
        last_seq: r.get::<_, i64>(6)?.max(0) as u64,
    })
}

/// Every node summary of a run, in node order (byte order, as `String`'s).
fn read_nodes(conn: &Connection, tid: &[u8], run: &str) -> Result<Vec<NodeSummary>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {NODE_COLS} FROM run_nodes WHERE tenant_id = ?1 AND run_id = ?2 ORDER BY node"
        ))
        .map_err(db)?;
    let rows = stmt.query_map(params![tid, run], node_row).map_err(db)?;
    rows.map(|r| r.map_err(db)).collect()
}

/// The run's stored progress with the summaries of `nodes` (those stored).
fn load_progress<'a>(
    tx: &Connection,
    tid: &[u8],
    run: &str,
    stored: RunProgress,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Result<Progress> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT {NODE_COLS} FROM run_nodes WHERE tenant_id = ?1 AND run_id = ?2 AND node = ?3"
        ))
        .map_err(db)?;
    let mut loaded = Vec::new();
    for node in nodes {
        if let Some(row) =
            stmt.query_row(params![tid, run, node], node_row).optional().map_err(db)?
        {
            loaded.push(row);
        }
    }
    Ok(Progress::new(stored, loaded))
}

/// Writes the summaries of `nodes` from `progress`.
fn store_nodes<'a>(
    tx: &Connection,
    tid: &[u8],
    run: &str,
    progress: &Progress,
    nodes: impl IntoIterator<Item = &'a str>,
) -> Result<()> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO run_nodes (tenant_id, run_id, node, state, started_at, ended_at, attempts,
                                    first_seq, last_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (tenant_id, run_id, node) DO UPDATE SET
                state = excluded.state, started_at = excluded.started_at,
                ended_at = excluded.ended_at, attempts = excluded.attempts,
                last_seq = excluded.last_seq",
        )
        .map_err(db)?;
    for node in nodes.into_iter().filter_map(|n| progress.nodes.get(n)) {
        stmt.execute(params![
            tid,
            run,
            node.node,
            node.state,
            node.started_at.map(|t| t.timestamp_micros()),
            node.ended_at.map(|t| t.timestamp_micros()),
            node.attempts as i64,
            node.first_seq as i64,
            node.last_seq as i64,
        ])
        .map_err(db)?;
    }
    Ok(())
}

fn find_run(
    conn: &Connection,
    tenant: TenantId,
    run: &RunId,
) -> Result<Option<(RunInfo, RunProgress)>> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLS} FROM runs WHERE tenant_id = ?1 AND run_id = ?2"
    ))
    .map_err(db)?
    .query_row(params![tenant.as_uuid().as_bytes(), run.as_str()], run_row)
    .optional()
    .map_err(db)?
    .transpose()
}

/// A run's stored graph (canonical JSON text), if set.
fn stored_graph(conn: &Connection, tenant: TenantId, run: &RunId) -> Result<Option<String>> {
    conn.prepare_cached("SELECT graph FROM runs WHERE tenant_id = ?1 AND run_id = ?2")
        .map_err(db)?
        .query_row(params![tenant.as_uuid().as_bytes(), run.as_str()], |r| r.get(0))
        .optional()
        .map_err(db)
        .map(Option::flatten)
}

pub(crate) fn get_run(conn: &mut Connection, tenant: TenantId, run: &RunId) -> Result<RunSummary> {
    // One read transaction: the summary and the graph come from the same snapshot.
    let tx = conn.transaction().map_err(db)?;
    let (info, _) = find_run(&tx, tenant, run)?.ok_or_else(|| Error::not_found("run", run))?;
    let graph = stored_graph(&tx, tenant, run)?
        .map(|g| serde_json::from_str(&g).map_err(|e| corrupt("graph", e).in_run(run, None)))
        .transpose()?;
    let nodes = read_nodes(&tx, tenant.as_uuid().as_bytes(), run.as_str())?;
    Ok(RunSummary { info, graph, nodes })
}

pub(crate) fn list_runs(conn: &Connection, tenant: TenantId, q: &RunQuery) -> Result<RunPage> {
    let limit = q.effective_limit();
    let (after_t, after_run) = match &q.cursor {
        Some(c) => (Some(c.activity_micros()), Some(c.run_id().as_str())),
        None => (None, None),
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {RUN_COLS} FROM runs
             WHERE tenant_id = ?1
               AND (?2 IS NULL OR source = ?2)
               AND (?3 IS NULL OR status = ?3)
               AND (?7 IS NULL OR substr(run_id, 1, length(?7)) = ?7)
               AND (?8 IS NULL OR CASE ?8 WHEN 'failed' THEN nodes_failed
                                          WHEN 'cancelled' THEN nodes_cancelled
                                          WHEN 'active' THEN nodes_active
                                          WHEN 'waiting' THEN nodes_waiting
                                          WHEN 'succeeded' THEN nodes_succeeded
                                          WHEN 'skipped' THEN nodes_skipped
                                          ELSE nodes_other END > 0)
               AND (?4 IS NULL OR activity_at < ?4 OR (activity_at = ?4 AND run_id > ?5))
             ORDER BY activity_at DESC, run_id ASC
             LIMIT ?6"
        ))
        .map_err(db)?;
    let rows = stmt
        .query_map(
            params![
                tenant.as_uuid().as_bytes(),
                q.source,
                q.status,
                after_t,
                after_run,
                limit + 1,
                q.run_id_prefix,
                q.node_class.map(StateClass::as_str)
            ],
            run_row,
        )
        .map_err(db)?;
    let mut runs = Vec::with_capacity(limit as usize + 1);
    for row in rows {
        runs.push(row.map_err(db)??.0);
    }
    let more = runs.len() > limit as usize;
    runs.truncate(limit as usize);
    let next_cursor = if more { runs.last().map(Cursor::after) } else { None };
    Ok(RunPage { runs, next_cursor })
}

pub(crate) fn read_transitions(
    conn: &mut Connection,
    tenant: TenantId,
    run: &RunId,
    after: Option<Seq>,
    limit: u32,
) -> Result<Vec<StoredTransition>> {
    // One read transaction: the existence check and the rows see the same snapshot.
    let tx = conn.transaction().map_err(db)?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM runs WHERE tenant_id = ?1 AND run_id = ?2")
        .map_err(db)?
        .exists(params![tenant.as_uuid().as_bytes(), run.as_str()])
        .map_err(db)?;
    if !exists {
        return Err(Error::not_found("run", run));
    }
    let from = after.map_or(0, |s| s.as_i64().saturating_add(1));
    let limit = limit.min(kahn_core::MAX_PAGE_SIZE);
    if limit == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = tx
        .prepare_cached(
            "SELECT seq, body, content_hash, chain_hash FROM transitions
             WHERE tenant_id = ?1 AND run_id = ?2 AND seq >= ?3 ORDER BY seq LIMIT ?4",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tenant.as_uuid().as_bytes(), run.as_str(), from, limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (seq, body, content, chain) = row.map_err(db)?;
        Ok(StoredTransition {
            seq: Seq::try_from(seq).map_err(|e| corrupt("seq", e).in_run(run, None))?,
            body: serde_json::from_str(&body)
                .map_err(|e| corrupt("body", e).in_run(run, u64::try_from(seq).ok()))?,
            content_hash: digest(&content)?,
            chain_hash: digest(&chain)?,
        })
    })
    .collect()
}

/// Recomputes every stored run's status, node counts, times and node summaries from its
/// transitions, by kahn-core's rule: schema version 3 runs it once, in its own transaction,
/// for runs stored under the old rule. A run whose stored transitions do not decode keeps
/// what those before it give, with a warning. Returns the runs recomputed.
pub(crate) fn recompute_progress(tx: &Connection) -> Result<u64> {
    let runs: Vec<(Vec<u8>, String)> = tx
        .prepare("SELECT tenant_id, run_id FROM runs WHERE next_seq > 0")
        .map_err(db)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(db)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db)?;
    let mut read = tx
        .prepare(
            "SELECT seq, body FROM transitions WHERE tenant_id = ?1 AND run_id = ?2 ORDER BY seq",
        )
        .map_err(db)?;
    for (tid, rid) in &runs {
        let mut progress = Progress::default();
        let mut rows = read.query(params![tid, rid]).map_err(db)?;
        while let Some(row) = rows.next().map_err(db)? {
            let (seq, body): (i64, String) = (row.get(0).map_err(db)?, row.get(1).map_err(db)?);
            match kahn_core::parse_json_object(&body).and_then(TransitionBody::new) {
                Ok(body) => progress.apply(seq.max(0) as u64, &body),
                Err(e) => {
                    // A corrupt store is `kahn verify`'s to name; the migration does not refuse
                    // the whole file because of one run.
                    tracing::warn!(run = rid, seq, error = %e, "a stored transition does not decode: its run's status counts the transitions before it");
                    break;
                }
            };
        }
        let names: Vec<String> = progress.nodes.keys().cloned().collect();
        store_nodes(tx, tid, rid, &progress, names.iter().map(String::as_str))?;
        let run = &progress.run;
        tx.prepare_cached(
            "UPDATE runs SET status = ?3, run_state = ?4, started_at = ?5, ended_at = ?6,
                nodes_failed = ?7, nodes_cancelled = ?8, nodes_active = ?9, nodes_waiting = ?10,
                nodes_succeeded = ?11, nodes_skipped = ?12, nodes_other = ?13
             WHERE tenant_id = ?1 AND run_id = ?2",
        )
        .map_err(db)?
        .execute(params![
            tid,
            rid,
            run.status(),
            run.run_state,
            run.started_at.map(|t| t.timestamp_micros()),
            run.ended_at.map(|t| t.timestamp_micros()),
            run.counts.failed as i64,
            run.counts.cancelled as i64,
            run.counts.active as i64,
            run.counts.waiting as i64,
            run.counts.succeeded as i64,
            run.counts.skipped as i64,
            run.counts.other as i64,
        ])
        .map_err(db)?;
    }
    Ok(runs.len() as u64)
}

// ---------------------------------------------------------------------------------------
// Append

/// Appends `batch` (DESIGN.md's append rules) in one transaction.
///
/// A batch of one run (a pushed chunk) takes the run's progress from `cache` when it is kept
/// under the stored head, reads all of the run's node summaries when it is not and they are
/// at most [`ProgressCache::READ_WHOLE_RUN_NODES`], and once committed keeps the advanced
/// progress under the new head: the run's next chunk reads none of its node summaries back.
/// A new run has none to read. Otherwise only the summaries of the nodes the rows touch are
/// read.
pub(crate) fn append(
    conn: &mut Connection,
    tenant: TenantId,
    key: Option<ApiKeyHash>,
    batch: &AppendBatch,
    cache: &Mutex<ProgressCache>,
) -> Result<AppendReport> {
    let cache = || cache.lock().unwrap_or_else(PoisonError::into_inner);
    let one_run = batch.runs().len() == 1;
    // The progress to keep once committed: of the batch's one run, complete, under its new head.
    let mut keep = None;
    let tx = write_tx(conn)?;
    let tid = tenant.as_uuid().as_bytes();
    let now = now_micros();
    match key {
        // Revocation and expiry cut off scopes already resolved: the key must still be active.
        Some(key) => {
            let active = tx
                .prepare_cached(
                    "SELECT 1 FROM api_keys WHERE key_hash = ?1 AND tenant_id = ?2
                       AND (revoked_at IS NULL OR revoked_at > ?3)
                       AND (expires_at IS NULL OR expires_at > ?3)",
                )
                .map_err(db)?
                .exists(params![key.as_bytes(), tid, now])
                .map_err(db)?;
            if !active {
                return Err(Error::Unauthorized(
                    "the API key of this scope is unknown, revoked or expired".into(),
                ));
            }
        }
        // An operator's scope, granted by this store for a tenant that existed then.
        None => tenant_exists(&tx, tenant)?,
    }
    let mut report = AppendReport::default();
    for run in batch.runs() {
        let rid = run.run_id().as_str();
        let (stored, stored_progress) = match find_run(&tx, tenant, run.run_id())? {
            Some((info, progress)) => (Some(info), progress),
            None => (None, RunProgress::default()),
        };
        let (next, head) = stored.as_ref().map_or((0, Digest::ZERO), |r| (r.next_seq, r.head_hash));
        let plan = AppendPlan::new(run, next, head)?;

        let mut links = HashMap::new();
        {
            let mut stmt = tx
                .prepare_cached("SELECT chain_hash FROM transitions WHERE tenant_id = ?1 AND run_id = ?2 AND seq = ?3")
                .map_err(db)?;
            for seq in plan.links_needed() {
                let link: Option<Vec<u8>> = stmt
                    .query_row(params![tid, rid, seq as i64], |r| r.get(0))
                    .optional()
                    .map_err(db)?;
                if let Some(link) = link {
                    links.insert(seq, digest(&link)?);
                }
            }
        }
        let decision = match plan.decide(|seq| links.get(&seq).copied())? {
            Outcome::Append(d) => d,
            Outcome::Diverged(div) => {
                let range = div.range();
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT content_hash FROM transitions WHERE tenant_id = ?1 AND run_id = ?2
                         AND seq >= ?3 AND seq < ?4 ORDER BY seq",
                    )
                    .map_err(db)?;
                let hashes = stmt
                    .query_map(params![tid, rid, range.start as i64, range.end as i64], |r| {
                        r.get::<_, Vec<u8>>(0)
                    })
                    .map_err(db)?
                    .map(|h| digest(&h.map_err(db)?))
                    .collect::<Result<Vec<_>>>()?;
                return Err(div.conflict(run, &hashes));
            }
        };

        // Metadata, set once. Stored metadata is rebuilt only when some arrives.
        let mut meta_changed = false;
        let mut meta = None;
        if !run.meta().is_empty() {
            let mut m = match &stored {
                Some(r) => RunMeta::from_stored(
                    r.source.clone(),
                    stored_graph(&tx, tenant, run.run_id())?.as_deref(),
                    r.labels.clone(),
                )
                .map_err(|e| e.in_run(run.run_id(), None))?,
                None => RunMeta::new(),
            };
            meta_changed = merge_meta(run.run_id(), &mut m, run.meta())?;
            meta = Some(m);
        }

        // Status and node summaries, maintained here so no read scans the transitions.
        let touched = decision.touched_nodes();
        // A pushed chunk's run, when the backend kept its progress under the stored head.
        let one_run_rows = one_run && !decision.rows.is_empty();
        let kept = match &stored {
            Some(info) if one_run_rows => cache().take(tenant, rid, &info.head_hash),
            _ => None,
        };
        let whole_nodes = stored_progress.counts.total() <= ProgressCache::READ_WHOLE_RUN_NODES;
        let (mut progress, complete) = match (&stored, kept) {
            // A new run has no node summaries yet (a purge removes a run's with the run).
            (None, _) => (Progress::new(stored_progress, []), true),
            (Some(_), Some(kept)) => (Progress { run: stored_progress, nodes: kept.nodes }, true),
            (Some(_), None) if one_run_rows && whole_nodes => {
                (Progress::new(stored_progress, read_nodes(&tx, tid, rid)?), true)
            }
            (Some(_), None) => {
                (load_progress(&tx, tid, rid, stored_progress, touched.iter().copied())?, false)
            }
        };
        decision.advance(&mut progress);
        store_nodes(&tx, tid, rid, &progress, touched.iter().copied())?;

        if !decision.rows.is_empty() {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO transitions (tenant_id, run_id, seq, body, content_hash, chain_hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(db)?;
            for row in &decision.rows {
                insert
                    .execute(params![
                        tid,
                        rid,
                        row.seq as i64,
                        row.body.canonical_json(),
                        row.body.content_hash().as_bytes(),
                        row.chain_hash.as_bytes()
                    ])
                    .map_err(db)?;
            }
        }

        // Whenever this writes the row, the append stored something (a new run, rows, or
        // metadata set for the first time): it is a receipt, and received_at moves to now. A
        // re-push that stores nothing leaves the row, and so the run's retention, alone.
        if stored.is_none() || !decision.rows.is_empty() || meta_changed {
            let (lo, hi) = decision
                .ts_range()
                .map(|(a, b)| (Some(a.timestamp_micros()), Some(b.timestamp_micros())))
                .unwrap_or((None, None));
            let (source, graph, labels) = match &meta {
                Some(m) => (
                    m.source().map(str::to_owned),
                    m.graph_canonical().map(str::to_owned),
                    Some(labels_json(m.labels())?),
                ),
                None => (None, None, None),
            };
            tx.prepare_cached(
                "INSERT INTO runs (tenant_id, run_id, source, graph, labels, next_seq, head_hash, status,
                                   first_ts, last_ts, created_at, activity_at, received_at,
                                   run_state, started_at, ended_at, nodes_failed, nodes_cancelled,
                                   nodes_active, nodes_waiting, nodes_succeeded, nodes_skipped,
                                   nodes_other)
                 VALUES (?1, ?2, ?3, ?4, coalesce(?5, '{}'), ?6, ?7, ?8, ?9, ?10, ?11, coalesce(?10, ?11), ?11,
                         ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)
                 ON CONFLICT (tenant_id, run_id) DO UPDATE SET
                    source = coalesce(excluded.source, runs.source),
                    graph = coalesce(excluded.graph, runs.graph),
                    labels = coalesce(?5, runs.labels),
                    next_seq = excluded.next_seq,
                    head_hash = excluded.head_hash,
                    status = excluded.status,
                    run_state = excluded.run_state,
                    started_at = excluded.started_at,
                    ended_at = excluded.ended_at,
                    nodes_failed = excluded.nodes_failed,
                    nodes_cancelled = excluded.nodes_cancelled,
                    nodes_active = excluded.nodes_active,
                    nodes_waiting = excluded.nodes_waiting,
                    nodes_succeeded = excluded.nodes_succeeded,
                    nodes_skipped = excluded.nodes_skipped,
                    nodes_other = excluded.nodes_other,
                    first_ts = min(coalesce(runs.first_ts, excluded.first_ts), coalesce(excluded.first_ts, runs.first_ts)),
                    last_ts = max(coalesce(runs.last_ts, excluded.last_ts), coalesce(excluded.last_ts, runs.last_ts)),
                    activity_at = coalesce(max(coalesce(runs.last_ts, excluded.last_ts), coalesce(excluded.last_ts, runs.last_ts)), runs.created_at),
                    received_at = excluded.received_at",
            )
            .map_err(db)?
            .execute(params![
                tid,
                rid,
                source,
                graph,
                labels,
                decision.next_seq as i64,
                decision.head_hash.as_bytes(),
                progress.run.status(),
                lo,
                hi,
                now,
                progress.run.run_state,
                progress.run.started_at.map(|t| t.timestamp_micros()),
                progress.run.ended_at.map(|t| t.timestamp_micros()),
                progress.run.counts.failed as i64,
                progress.run.counts.cancelled as i64,
                progress.run.counts.active as i64,
                progress.run.counts.waiting as i64,
                progress.run.counts.succeeded as i64,
                progress.run.counts.skipped as i64,
                progress.run.counts.other as i64,
            ])
            .map_err(db)?;
        }
        report.runs.push(decision.report(run.run_id()));
        if one_run_rows && complete {
            keep = Some((run.run_id(), decision.head_hash, progress));
        }
    }
    tx.commit().map_err(db)?;
    if let Some((run, head, progress)) = keep {
        cache().put(tenant, run.as_str(), head, progress);
    }
    Ok(report)
}

fn labels_json(labels: &Labels) -> Result<String> {
    serde_json::to_string(labels).map_err(|e| Error::backend("sqlite", e))
}

// ---------------------------------------------------------------------------------------
// Retention

/// Every tenant with its retention (or only `only`, when it exists), by id, for a purge.
pub(crate) fn retention(conn: &Connection, only: Option<TenantId>) -> Result<Vec<(TenantId, u32)>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, retention_days FROM tenants WHERE ?1 IS NULL OR id = ?1 ORDER BY id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![only.map(|t| *t.as_uuid().as_bytes())], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (id, days) = row.map_err(db)?;
        Ok((
            TenantId::from_uuid(uuid_from(id)?),
            u32::try_from(days).map_err(|e| corrupt("retention_days", e))?,
        ))
    })
    .collect()
}

const DAY_MICROS: i64 = 86_400_000_000;

/// The receipts before which a run is past a retention of `days` at `now` (µs):
/// `received_at + days < now` ⇔ `received_at < now - days`, as [`kahn_core::is_expired`]
/// decides; `None` when nothing can be that old.
fn cutoff(days: u32, now: i64) -> Option<i64> {
    now.checked_sub(i64::from(days).checked_mul(DAY_MICROS)?)
}

/// What purging one tenant at `now` (µs) would remove, removing nothing.
pub(crate) fn expired_of_tenant(
    conn: &mut Connection,
    tenant: TenantId,
    days: u32,
    now: i64,
) -> Result<Option<PurgeReport>> {
    let Some(cutoff) = cutoff(days, now) else { return Ok(None) };
    let id = tenant.as_uuid().as_bytes();
    // One read transaction: both counts from one snapshot.
    let tx = conn.transaction().map_err(db)?;
    let count = |sql: &str| -> Result<u64> {
        let n: i64 = tx
            .prepare_cached(sql)
            .map_err(db)?
            .query_row(params![id, cutoff], |r| r.get(0))
            .map_err(db)?;
        Ok(n as u64)
    };
    let runs = count("SELECT count(*) FROM runs WHERE tenant_id = ?1 AND received_at < ?2")?;
    let transitions = count(
        "SELECT count(*) FROM transitions WHERE tenant_id = ?1 AND run_id IN
           (SELECT run_id FROM runs WHERE tenant_id = ?1 AND received_at < ?2)",
    )?;
    Ok((runs > 0).then_some(PurgeReport {
        tenant_id: tenant,
        runs_removed: runs,
        transitions_removed: transitions,
    }))
}

/// Removes one tenant's runs (and their transitions) received more than `days` before `now`
/// (µs), in one transaction of its own, so appends interleave between tenants and one
/// tenant's failure leaves the others' purges alone.
///
/// In the same transaction it records each run it removes, as it was, for the tenant's next
/// checkpoint to log (`purge_records`, by run id, stamped with the store's clock): the run
/// and its record are never seen one without the other.
pub(crate) fn purge_tenant(
    conn: &mut Connection,
    tenant: TenantId,
    days: u32,
    now: i64,
) -> Result<Option<PurgeReport>> {
    let Some(cutoff) = cutoff(days, now) else { return Ok(None) };
    let id = tenant.as_uuid().as_bytes();
    let tx = write_tx(conn)?;
    tx.prepare_cached(
        "INSERT INTO purge_records (tenant_id, run_id, next_seq, head_hash, received_at, purged_at)
         SELECT tenant_id, run_id, next_seq, head_hash, received_at, ?3
         FROM runs WHERE tenant_id = ?1 AND received_at < ?2 ORDER BY run_id",
    )
    .map_err(db)?
    .execute(params![id, cutoff, now_micros()])
    .map_err(db)?;
    let transitions = tx
        .prepare_cached(
            "DELETE FROM transitions WHERE tenant_id = ?1 AND run_id IN
               (SELECT run_id FROM runs WHERE tenant_id = ?1 AND received_at < ?2)",
        )
        .map_err(db)?
        .execute(params![id, cutoff])
        .map_err(db)?;
    tx.prepare_cached(
        "DELETE FROM run_nodes WHERE tenant_id = ?1 AND run_id IN
           (SELECT run_id FROM runs WHERE tenant_id = ?1 AND received_at < ?2)",
    )
    .map_err(db)?
    .execute(params![id, cutoff])
    .map_err(db)?;
    let runs = tx
        .prepare_cached("DELETE FROM runs WHERE tenant_id = ?1 AND received_at < ?2")
        .map_err(db)?
        .execute(params![id, cutoff])
        .map_err(db)?;
    tx.commit().map_err(db)?;
    Ok((runs > 0).then_some(PurgeReport {
        tenant_id: tenant,
        runs_removed: runs as u64,
        transitions_removed: transitions as u64,
    }))
}

// ---------------------------------------------------------------------------------------
// Checkpoints

/// The tenant's leaves, in order. A gap in the indexes (a row removed behind KAHN's back) is
/// corrupt, as is a leaf that does not decode.
fn checkpoint_leaves(conn: &Connection, tid: &[u8; 16]) -> Result<Vec<Leaf>> {
    let mut stmt = conn
        .prepare_cached("SELECT idx, leaf FROM checkpoint_leaves WHERE tenant_id = ?1 ORDER BY idx")
        .map_err(db)?;
    let mut rows = stmt.query(params![tid]).map_err(db)?;
    let mut leaves = Vec::new();
    while let Some(row) = rows.next().map_err(db)? {
        let (idx, bytes): (i64, Vec<u8>) = (row.get(0).map_err(db)?, row.get(1).map_err(db)?);
        if idx != leaves.len() as i64 {
            return Err(corrupt(
                "checkpoint_leaves",
                format!("leaf {} is missing (the next stored is {idx})", leaves.len()),
            ));
        }
        let leaf = Leaf::decode(&bytes)
            .map_err(|e| corrupt(&format!("checkpoint leaf {idx}"), e.to_string()))?;
        leaves.push(leaf);
    }
    Ok(leaves)
}

/// The tenant's signed checkpoints, in the order they were appended.
fn stored_checkpoints(conn: &Connection, tid: &[u8; 16]) -> Result<Vec<StoredCheckpoint>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT position, tree_size, envelope FROM checkpoints WHERE tenant_id = ?1
             ORDER BY position",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tid], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (position, size, envelope) = row.map_err(db)?;
        let what = format!("checkpoint {position}");
        Ok(StoredCheckpoint {
            tree_size: u64::try_from(size).map_err(|e| corrupt(&format!("{what} tree_size"), e))?,
            envelope: serde_json::from_str(&envelope)
                .map_err(|e| corrupt(&format!("{what} envelope"), e))?,
        })
    })
    .collect()
}

fn checkpoint_log(conn: &Connection, tid: &[u8; 16]) -> Result<CheckpointLog> {
    Ok(CheckpointLog {
        leaves: checkpoint_leaves(conn, tid)?,
        checkpoints: stored_checkpoints(conn, tid)?,
    })
}

/// A tenant's checkpoint log, leaves and checkpoints from one snapshot.
pub(crate) fn read_checkpoint_log(
    conn: &mut Connection,
    tenant: TenantId,
) -> Result<CheckpointLog> {
    let tx = conn.transaction().map_err(db)?;
    checkpoint_log(&tx, tenant.as_uuid().as_bytes())
}

/// The head of every run the tenant holds, by run id.
fn run_heads(conn: &Connection, tid: &[u8; 16]) -> Result<Vec<RunHead>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT run_id, next_seq, head_hash, received_at FROM runs WHERE tenant_id = ?1
             ORDER BY run_id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tid], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (run_id, next_seq, head, received) = row.map_err(db)?;
        let run_id = RunId::new(run_id).map_err(|e| corrupt("run_id", e))?;
        Ok(RunHead {
            next_seq: u64::try_from(next_seq)
                .map_err(|e| corrupt("next_seq", e).in_run(&run_id, None))?,
            head_hash: digest(&head).map_err(|e| e.in_run(&run_id, None))?,
            received_at: from_micros(received),
            run_id,
        })
    })
    .collect()
}

/// The tenant's purge records no checkpoint has logged yet, by id.
fn unlogged_purges(conn: &Connection, tid: &[u8; 16]) -> Result<Vec<PurgeRecord>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, run_id, next_seq, head_hash, received_at, purged_at FROM purge_records
             WHERE tenant_id = ?1 AND logged_in IS NULL ORDER BY id",
        )
        .map_err(db)?;
    let rows = stmt
        .query_map(params![tid], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(db)?;
    rows.map(|row| {
        let (id, run_id, next_seq, head, received, purged) = row.map_err(db)?;
        let what = |column: &str| format!("purge record {id} {column}");
        Ok(PurgeRecord {
            id: u64::try_from(id).map_err(|e| corrupt(&what("id"), e))?,
            run: PurgedRun {
                run_id: RunId::new(run_id).map_err(|e| corrupt(&what("run_id"), e))?,
                next_seq: u64::try_from(next_seq).map_err(|e| corrupt(&what("next_seq"), e))?,
                head_hash: Digest::try_from_slice(&head)
                    .map_err(|e| corrupt(&what("head_hash"), e))?,
                received_at: from_micros(received),
            },
            purged_at: from_micros(purged),
        })
    })
    .collect()
}

/// What the tenant's next checkpoint is made from, in one read transaction: a purge commits
/// its deletes and its records together, so a snapshot holds both or neither.
pub(crate) fn checkpoint_inputs(
    conn: &mut Connection,
    tenant: TenantId,
) -> Result<CheckpointInputs> {
    let tx = conn.transaction().map_err(db)?;
    let tid = tenant.as_uuid().as_bytes();
    Ok(CheckpointInputs {
        log: checkpoint_log(&tx, tid)?,
        heads: run_heads(&tx, tid)?,
        purges: unlogged_purges(&tx, tid)?,
    })
}

/// A size or index of a checkpoint as SQLite stores it (a signed 64-bit integer).
fn stored_size(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::invalid("checkpoint", format!("size {n} is too large")))
}

/// Appends `next` (already validated) to the tenant's log while the log holds `next.after`
/// leaves, and marks its purge records logged, in one write transaction; with the log moved,
/// writes nothing and answers [`log_moved`].
pub(crate) fn append_checkpoint(
    conn: &mut Connection,
    tenant: TenantId,
    next: &NewCheckpoint,
) -> Result<()> {
    let envelope = serde_json::to_string(&next.checkpoint.envelope)
        .map_err(|e| Error::backend("sqlite", e))?;
    let tree_size = stored_size(next.checkpoint.tree_size)?;
    let tid = tenant.as_uuid().as_bytes();
    let tx = write_tx(conn)?;
    tenant_exists(&tx, tenant)?;
    let found: i64 = tx
        .prepare_cached("SELECT count(*) FROM checkpoint_leaves WHERE tenant_id = ?1")
        .map_err(db)?
        .query_row(params![tid], |r| r.get(0))
        .map_err(db)?;
    let found = u64::try_from(found).unwrap_or_default();
    if found != next.after {
        return Err(log_moved("sqlite", next.after, found));
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO checkpoint_leaves (tenant_id, idx, leaf) VALUES (?1, ?2, ?3)",
            )
            .map_err(db)?;
        for (i, leaf) in next.leaves.iter().enumerate() {
            let idx = stored_size(next.after + i as u64)?;
            insert.execute(params![tid, idx, leaf.encode()]).map_err(db)?;
        }
    }
    tx.prepare_cached(
        "INSERT INTO checkpoints (tenant_id, position, tree_size, envelope)
         VALUES (?1, (SELECT coalesce(max(position) + 1, 0) FROM checkpoints WHERE tenant_id = ?1),
                 ?2, ?3)",
    )
    .map_err(db)?
    .execute(params![tid, tree_size, envelope])
    .map_err(db)?;
    {
        // A record already logged keeps the checkpoint that logged it first; an id that is no
        // record of this tenant's marks nothing.
        let mut mark = tx
            .prepare_cached(
                "UPDATE purge_records SET logged_in = ?3
                 WHERE tenant_id = ?1 AND id = ?2 AND logged_in IS NULL",
            )
            .map_err(db)?;
        for &id in &next.purges {
            let Ok(id) = i64::try_from(id) else { continue };
            mark.execute(params![tid, id, tree_size]).map_err(db)?;
        }
    }
    tx.commit().map_err(db)
}
