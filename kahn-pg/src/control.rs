//! The control plane: tenants, keys, pre-tenant lookups, the admin listing and the purge.
//!
//! Lookups, `get_tenant`, the admin listing, personal tenants, key use and the app role's purge
//! go through the SECURITY DEFINER functions (one code path, the one the app role is granted).
//! Provisioning, tenant changes and deletion, key management, export and import are plain SQL
//! run by the admin role (a superuser, or a member of `kahn_definer`, whose policies see every
//! tenant); the operator's purge calls `kahn.purge_tenant`, one tenant per transaction.
//!
//! Behind a transaction-pooling pgbouncer without prepared-statement support (the app DSN then
//! turns sqlx's statement cache off), every statement the app role runs is inside an explicit
//! transaction, even a lone one ([`Lone::InTransaction`]): outside one, sqlx's parse and execute
//! (two round trips) may reach two different server connections.

use chrono::{DateTime, Utc};
use kahn_core::rules::truncate_micros;
use kahn_core::{
    Admission, ApiKey, ApiKeyHash, ApiKeyId, ApiKeyInfo, ApiKeyRecord, Digest, Error, IngestQuota,
    IssuedApiKey, NewApiKey, NewTenant, OrgId, PurgeFailure, PurgeOutcome, PurgeReport,
    PurgeRequest, PurgeTurn, Result, RetiredKeys, Tenant, TenantChange, TenantId, TenantRecord,
    TenantSummary,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::{PgConnection, PgPool, PgRow};
use uuid::Uuid;

use crate::Mode;
use crate::error::{BACKEND, corrupt, db, unique_violation};

/// How a lone statement (a lookup, a charge) runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lone {
    /// On the pool: one round trip, with sqlx's statement cache.
    Direct,
    /// In a transaction of its own (two more round trips): behind a transaction-pooling
    /// pgbouncer without prepared-statement support.
    InTransaction,
}

type PgQuery<'q> = sqlx_core::query::Query<'q, sqlx_postgres::Postgres, sqlx_postgres::PgArguments>;

impl Lone {
    async fn fetch_optional(self, pool: &PgPool, q: PgQuery<'_>) -> Result<Option<PgRow>> {
        match self {
            Self::Direct => q.fetch_optional(pool).await.map_err(db),
            Self::InTransaction => {
                let mut tx = pool.begin().await.map_err(db)?;
                let row = q.fetch_optional(&mut *tx).await.map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(row)
            }
        }
    }

    async fn fetch_one(self, pool: &PgPool, q: PgQuery<'_>) -> Result<PgRow> {
        self.fetch_optional(pool, q)
            .await?
            .ok_or_else(|| Error::backend(BACKEND, "a statement returning one row returned none"))
    }

    async fn fetch_all(self, pool: &PgPool, q: PgQuery<'_>) -> Result<Vec<PgRow>> {
        match self {
            Self::Direct => q.fetch_all(pool).await.map_err(db),
            Self::InTransaction => {
                let mut tx = pool.begin().await.map_err(db)?;
                let rows = q.fetch_all(&mut *tx).await.map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(rows)
            }
        }
    }
}

/// The columns of `kahn.tenants` every tenant query returns, in `tenant_from_row`'s terms.
macro_rules! tenant_columns {
    () => {
        "id, name, owner_sub, airlock_org_id, retention_days, created_at"
    };
}

/// The columns of `kahn.api_keys` `key_info_from_row` reads.
macro_rules! key_columns {
    () => {
        "tenant_id, key_id, created_at, expires_at, revoked_at, last_used_at"
    };
}

fn tenant_from_row(row: &PgRow) -> Result<Tenant> {
    let org: Option<String> = row.try_get("airlock_org_id").map_err(db)?;
    let days: i32 = row.try_get("retention_days").map_err(db)?;
    Ok(Tenant {
        id: TenantId::from_uuid(row.try_get("id").map_err(db)?),
        name: row.try_get("name").map_err(db)?,
        owner_sub: row.try_get("owner_sub").map_err(db)?,
        airlock_org_id: org.map(OrgId::new).transpose().map_err(corrupt)?,
        retention_days: u32::try_from(days).map_err(corrupt)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn key_info_from_row(row: &PgRow) -> Result<ApiKeyInfo> {
    Ok(ApiKeyInfo {
        id: ApiKeyId::from_uuid(row.try_get("key_id").map_err(db)?),
        tenant_id: TenantId::from_uuid(row.try_get("tenant_id").map_err(db)?),
        created_at: row.try_get("created_at").map_err(db)?,
        expires_at: row.try_get("expires_at").map_err(db)?,
        revoked_at: row.try_get("revoked_at").map_err(db)?,
        last_used_at: row.try_get("last_used_at").map_err(db)?,
    })
}

fn key_hash(bytes: &[u8]) -> Result<ApiKeyHash> {
    Ok(ApiKeyHash::from_digest(Digest::try_from_slice(bytes).map_err(corrupt)?))
}

/// The error a unique violation of `constraint` comes to, for a tenant named `name`.
fn tenant_conflict(constraint: &str, name: &str) -> Option<Error> {
    match constraint {
        "tenants_name_key" => Some(Error::name_taken(name)),
        "tenants_owner_sub_key" => Some(Error::owner_sub_taken()),
        "tenants_airlock_org_id_key" => Some(Error::org_taken()),
        _ => None,
    }
}

fn retention_param(days: u32) -> Result<i32> {
    i32::try_from(days).map_err(|_| Error::invalid("retention_days", "must be between 1 and 36500"))
}

async fn tenant_by_name(pool: &PgPool, name: &str) -> Result<Option<Tenant>> {
    query(concat!("SELECT ", tenant_columns!(), " FROM kahn.tenants WHERE name = $1"))
        .bind(name)
        .fetch_optional(pool)
        .await
        .map_err(db)?
        .as_ref()
        .map(tenant_from_row)
        .transpose()
}

pub(crate) async fn provision_tenant(pool: &PgPool, req: &NewTenant) -> Result<Tenant> {
    if let Some(existing) = tenant_by_name(pool, req.name()).await? {
        req.check_matches(&existing)?;
        return Ok(existing);
    }
    let inserted = query(concat!(
        "INSERT INTO kahn.tenants (id, name, owner_sub, airlock_org_id, retention_days, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT ON CONSTRAINT tenants_name_key DO NOTHING \
         RETURNING ",
        tenant_columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(req.name())
    .bind(req.owner_sub())
    .bind(req.airlock_org_id().map(OrgId::as_str))
    .bind(retention_param(req.retention_days())?)
    .bind(truncate_micros(Utc::now()))
    .fetch_optional(pool)
    .await;
    match inserted {
        Ok(Some(row)) => tenant_from_row(&row),
        // Provisioned concurrently under the same name: that one is the tenant.
        Ok(None) => {
            let existing = tenant_by_name(pool, req.name())
                .await?
                .ok_or_else(|| Error::backend(BACKEND, "tenant vanished"))?;
            req.check_matches(&existing)?;
            Ok(existing)
        }
        Err(e) => Err(unique_violation(&e)
            .and_then(|c| tenant_conflict(c, req.name()))
            .unwrap_or_else(|| db(e))),
    }
}

pub(crate) async fn get_tenant(pool: &PgPool, lone: Lone, tenant: TenantId) -> Result<Tenant> {
    let q = query(concat!("SELECT ", tenant_columns!(), " FROM kahn.get_tenant($1)"))
        .bind(tenant.as_uuid());
    let row = lone.fetch_optional(pool, q).await?;
    match row {
        Some(row) => tenant_from_row(&row),
        None => Err(Error::not_found("tenant", tenant)),
    }
}

pub(crate) async fn update_tenant(
    pool: &PgPool,
    tenant: TenantId,
    change: &TenantChange,
) -> Result<Tenant> {
    let id = *tenant.as_uuid();
    let (q, name) = match change {
        TenantChange::Rename(name) => (
            query(concat!(
                "UPDATE kahn.tenants SET name = $2 WHERE id = $1 RETURNING ",
                tenant_columns!()
            ))
            .bind(id)
            .bind(name.as_str()),
            name.as_str(),
        ),
        TenantChange::Retention(days) => (
            query(concat!(
                "UPDATE kahn.tenants SET retention_days = $2 WHERE id = $1 RETURNING ",
                tenant_columns!()
            ))
            .bind(id)
            .bind(retention_param(days.get())?),
            "",
        ),
        TenantChange::LinkOrg(org) => (
            query(concat!(
                "UPDATE kahn.tenants SET airlock_org_id = $2 WHERE id = $1 RETURNING ",
                tenant_columns!()
            ))
            .bind(id)
            .bind(org.as_str()),
            "",
        ),
        TenantChange::UnlinkOrg => (
            query(concat!(
                "UPDATE kahn.tenants SET airlock_org_id = NULL WHERE id = $1 RETURNING ",
                tenant_columns!()
            ))
            .bind(id),
            "",
        ),
        _ => {
            return Err(Error::Unsupported {
                backend: BACKEND,
                operation: "a tenant change this version of kahn-pg does not know",
            });
        }
    };
    match q.fetch_optional(pool).await {
        Ok(Some(row)) => tenant_from_row(&row),
        Ok(None) => Err(Error::not_found("tenant", tenant)),
        Err(e) => Err(unique_violation(&e)
            .and_then(|c| tenant_conflict(c, name))
            .unwrap_or_else(|| db(e))),
    }
}

/// Removes a tenant and everything it holds, in one transaction. The tenant row is locked
/// first, so no append can create a run of it meanwhile (the run's foreign key check waits,
/// then fails), nor append a checkpoint to its log (likewise); its runs are deleted next,
/// waiting for appends in flight on them; its transitions after, as a new statement that sees
/// every row those appends committed; its checkpoint log and purge records with the rest.
pub(crate) async fn delete_tenant(pool: &PgPool, tenant: TenantId) -> Result<PurgeReport> {
    let id = *tenant.as_uuid();
    let mut tx = pool.begin().await.map_err(db)?;
    let found = query("SELECT id FROM kahn.tenants WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if found.is_none() {
        return Err(Error::not_found("tenant", tenant));
    }
    let runs = query("DELETE FROM kahn.runs WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
    let transitions = query("DELETE FROM kahn.transitions WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
    query("DELETE FROM kahn.run_nodes WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    query("DELETE FROM kahn.api_keys WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    query("DELETE FROM kahn.ingest_budget WHERE tenant_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    // Its checkpoint log and purge records: the only deletion they ever see.
    for sql in [
        "DELETE FROM kahn.checkpoint_leaves WHERE tenant_id = $1",
        "DELETE FROM kahn.checkpoints WHERE tenant_id = $1",
        "DELETE FROM kahn.purge_records WHERE tenant_id = $1",
    ] {
        query(sql).bind(id).execute(&mut *tx).await.map_err(db)?;
    }
    query("DELETE FROM kahn.tenants WHERE id = $1").bind(id).execute(&mut *tx).await.map_err(db)?;
    tx.commit().await.map_err(db)?;
    Ok(PurgeReport { tenant_id: tenant, runs_removed: runs, transitions_removed: transitions })
}

/// The personal tenant of `sub`, through `kahn.provision_personal_tenant` (the only way the
/// app role may create a tenant).
pub(crate) async fn provision_personal_tenant(
    pool: &PgPool,
    lone: Lone,
    sub: &str,
) -> Result<TenantId> {
    let req = NewTenant::personal(sub)?;
    let q = query("SELECT kahn.provision_personal_tenant($1) AS id").bind(sub);
    let id: Option<Uuid> = lone.fetch_one(pool, q).await?.try_get("id").map_err(db)?;
    id.map(TenantId::from_uuid).ok_or_else(|| Error::name_taken(req.name()))
}

async fn insert_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    expires_at: Option<DateTime<Utc>>,
) -> Result<IssuedApiKey> {
    let secret = ApiKey::generate()?;
    let id = ApiKeyId::new_random();
    let res = query(
        "INSERT INTO kahn.api_keys (tenant_id, key_id, key_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .bind(secret.hash().as_bytes().as_slice())
    .bind(truncate_micros(Utc::now()))
    .bind(expires_at)
    .execute(&mut *conn)
    .await;
    match res {
        Ok(_) => {}
        Err(e) if e.as_database_error().is_some_and(|d| d.is_foreign_key_violation()) => {
            return Err(Error::not_found("tenant", tenant));
        }
        Err(e) => return Err(db(e)),
    }
    list_in_directory(conn, tenant, &[secret.hash().as_bytes().as_slice()]).await?;
    Ok(IssuedApiKey { id, tenant_id: tenant, secret })
}

/// Lists keys in `kahn.key_directory` (migration 0007), where `kahn.lookup_api_key` finds a
/// key's tenant before reading the key on that tenant's shard only. A hash listed already (an
/// import of a key stored before) stays as it is.
async fn list_in_directory(
    conn: &mut PgConnection,
    tenant: TenantId,
    hashes: &[&[u8]],
) -> Result<()> {
    // One row per statement (a tenant has a handful of keys): an INSERT … SELECT FROM UNNEST
    // would reach a Citus reference table as a COPY, which Postgres refuses under RLS.
    for hash in hashes {
        query(
            "INSERT INTO kahn.key_directory (key_hash, tenant_id) VALUES ($2, $1) \
             ON CONFLICT (key_hash) DO NOTHING",
        )
        .bind(tenant.as_uuid())
        .bind(*hash)
        .execute(&mut *conn)
        .await
        .map_err(db)?;
    }
    Ok(())
}

/// Issues a key as `req` says, retiring the keys it names, in one transaction: when a named
/// key is not active, nothing is issued. Keys are active at the database's clock, the one
/// `kahn.lookup_api_key` resolves them by.
pub(crate) async fn create_api_key(
    pool: &PgPool,
    tenant: TenantId,
    req: &NewApiKey,
) -> Result<IssuedApiKey> {
    let mut tx = pool.begin().await.map_err(db)?;
    // Locked (shared) so the tenant cannot be deleted between the retirement and the insert.
    let found = query("SELECT id FROM kahn.tenants WHERE id = $1 FOR SHARE")
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if found.is_none() {
        return Err(Error::not_found("tenant", tenant));
    }
    if let Some((which, at)) = req.retirement() {
        let one = match which {
            RetiredKeys::One(id) => Some(id),
            RetiredKeys::AllActive => None,
        };
        // No grace: revoked now; else they expire at `at`, or earlier if they already expire
        // sooner (LEAST skips NULLs). Active: at the database's clock, as lookups see it. Two
        // statements, not a CASE around now(): Citus refuses a non-immutable function there.
        const ACTIVE: &str = "WHERE tenant_id = $1 AND ($2::uuid IS NULL OR key_id = $2) \
                              AND revoked_at IS NULL \
                              AND (expires_at IS NULL OR expires_at > pg_catalog.now())";
        let sql = match at {
            None => format!("UPDATE kahn.api_keys SET revoked_at = pg_catalog.now() {ACTIVE}"),
            Some(_) => {
                format!("UPDATE kahn.api_keys SET expires_at = LEAST(expires_at, $3) {ACTIVE}")
            }
        };
        let mut retire =
            query(AssertSqlSafe(sql)).bind(tenant.as_uuid()).bind(one.map(|id| *id.as_uuid()));
        if let Some(at) = at {
            retire = retire.bind(at);
        }
        let retired = retire.execute(&mut *tx).await.map_err(db)?.rows_affected();
        if let Some(id) = one
            && retired == 0
        {
            return Err(Error::not_found("api_key", id));
        }
    }
    let issued = insert_key(&mut tx, tenant, req.expiry()).await?;
    tx.commit().await.map_err(db)?;
    Ok(issued)
}

pub(crate) async fn revoke_api_key(pool: &PgPool, tenant: TenantId, key: ApiKeyId) -> Result<()> {
    let res = query(
        // LEAST skips a NULL: revoked now, or when it already was (never in the future). Not
        // COALESCE: Citus refuses a non-immutable function inside one.
        "UPDATE kahn.api_keys SET revoked_at = LEAST(revoked_at, pg_catalog.now()) \
         WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(key.as_uuid())
    .execute(pool)
    .await
    .map_err(db)?;
    if res.rows_affected() == 0 {
        return Err(Error::not_found("api_key", key));
    }
    Ok(())
}

pub(crate) async fn list_api_keys(pool: &PgPool, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
    get_tenant(pool, Lone::Direct, tenant).await?;
    query(concat!(
        "SELECT ",
        key_columns!(),
        " FROM kahn.api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
    ))
    .bind(tenant.as_uuid())
    .fetch_all(pool)
    .await
    .map_err(db)?
    .iter()
    .map(key_info_from_row)
    .collect()
}

/// A tenant and its keys, read in one snapshot.
pub(crate) async fn export_tenant(pool: &PgPool, tenant: TenantId) -> Result<TenantRecord> {
    let mut tx =
        pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(db)?;
    let row = query(concat!("SELECT ", tenant_columns!(), " FROM kahn.tenants WHERE id = $1"))
        .bind(tenant.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or_else(|| Error::not_found("tenant", tenant))?;
    let t = tenant_from_row(&row)?;
    let keys = query(concat!(
        "SELECT ",
        key_columns!(),
        ", key_hash FROM kahn.api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id"
    ))
    .bind(tenant.as_uuid())
    .fetch_all(&mut *tx)
    .await
    .map_err(db)?
    .iter()
    .map(|row| {
        let hash: Vec<u8> = row.try_get("key_hash").map_err(db)?;
        Ok(ApiKeyRecord { info: key_info_from_row(row)?, hash: key_hash(&hash)? })
    })
    .collect::<Result<Vec<_>>>()?;
    tx.commit().await.map_err(db)?;
    Ok(TenantRecord { tenant: t, keys })
}

/// Checks an imported tenant's settings as provisioning would: a valid name, owner and
/// retention.
fn check_imported(t: &Tenant) -> Result<()> {
    let req = NewTenant::new(t.name.clone())?.with_retention_days(t.retention_days)?;
    if let Some(sub) = &t.owner_sub {
        req.with_owner_sub(sub)?;
    }
    Ok(())
}

/// Stores a tenant exported elsewhere, with its id, settings and keys, in one transaction;
/// importing the same record again changes nothing but revocations. Refusals are those of the
/// in-memory reference: `tenant` when the id exists with other settings, `name`, `owner_sub`
/// or `org_id` (in that order) when another tenant holds it, `keys` when a key here is another
/// key of the record's.
pub(crate) async fn import_tenant(pool: &PgPool, record: &TenantRecord) -> Result<Tenant> {
    record.check_keys()?;
    let t =
        Tenant { created_at: truncate_micros(record.tenant.created_at), ..record.tenant.clone() };
    check_imported(&t)?;
    let id = *t.id.as_uuid();
    let org = t.airlock_org_id.as_ref().map(OrgId::as_str);
    let mut tx = pool.begin().await.map_err(db)?;
    let existing =
        query(concat!("SELECT ", tenant_columns!(), " FROM kahn.tenants WHERE id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
    match existing.as_ref().map(tenant_from_row).transpose()? {
        Some(existing) if existing != t => return Err(Error::import_differs(t.id)),
        Some(_) => {}
        None => {
            let clash = query(
                "SELECT COALESCE(bool_or(name = $2), false) AS name, \
                        COALESCE(bool_or(owner_sub = $3), false) AS owner_sub, \
                        COALESCE(bool_or(airlock_org_id = $4), false) AS org_id \
                 FROM kahn.tenants WHERE id <> $1",
            )
            .bind(id)
            .bind(t.name.as_str())
            .bind(t.owner_sub.as_deref())
            .bind(org)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
            if clash.try_get::<bool, _>("name").map_err(db)? {
                return Err(Error::name_taken(&t.name));
            }
            if clash.try_get::<bool, _>("owner_sub").map_err(db)? {
                return Err(Error::owner_sub_taken());
            }
            if clash.try_get::<bool, _>("org_id").map_err(db)? {
                return Err(Error::org_taken());
            }
            let inserted = query(
                "INSERT INTO kahn.tenants \
                     (id, name, owner_sub, airlock_org_id, retention_days, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(t.name.as_str())
            .bind(t.owner_sub.as_deref())
            .bind(org)
            .bind(retention_param(t.retention_days)?)
            .bind(t.created_at)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                return Err(unique_violation(&e)
                    .and_then(|c| tenant_conflict(c, &t.name))
                    .unwrap_or_else(|| db(e)));
            }
        }
    }
    import_keys(&mut tx, t.id, &record.keys).await?;
    tx.commit().await.map_err(db)?;
    Ok(t)
}

/// Inserts the record's keys that are not stored yet and propagates revocations to those that
/// are; refuses a key whose hash or id is another key here.
async fn import_keys(
    conn: &mut PgConnection,
    tenant: TenantId,
    keys: &[ApiKeyRecord],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = keys.iter().map(|k| *k.info.id.as_uuid()).collect();
    let hashes: Vec<&[u8]> = keys.iter().map(|k| k.hash.as_bytes().as_slice()).collect();
    // Another tenant's key with one of these hashes: the directory knows every key's tenant.
    let elsewhere = query(
        "SELECT 1 AS found FROM kahn.key_directory \
         WHERE key_hash = ANY($2::bytea[]) AND tenant_id <> $1 LIMIT 1",
    )
    .bind(tenant.as_uuid())
    .bind(&hashes)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db)?;
    if elsewhere.is_some() {
        return Err(Error::invalid(
            "keys",
            "a key with this hash or id is another key here; nothing was imported",
        ));
    }
    let stored = query(
        "SELECT tenant_id, key_id, key_hash FROM kahn.api_keys \
         WHERE tenant_id = $1 AND (key_hash = ANY($2::bytea[]) OR key_id = ANY($3::uuid[]))",
    )
    .bind(tenant.as_uuid())
    .bind(&hashes)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(db)?;
    for row in &stored {
        let owner = TenantId::from_uuid(row.try_get("tenant_id").map_err(db)?);
        let id = ApiKeyId::from_uuid(row.try_get("key_id").map_err(db)?);
        let hash = key_hash(&row.try_get::<Vec<u8>, _>("key_hash").map_err(db)?)?;
        let same = keys.iter().any(|k| k.hash == hash && k.info.id == id && owner == tenant);
        if !same {
            return Err(Error::invalid(
                "keys",
                "a key with this hash or id is another key here; nothing was imported",
            ));
        }
    }
    let created: Vec<DateTime<Utc>> =
        keys.iter().map(|k| truncate_micros(k.info.created_at)).collect();
    let expires: Vec<Option<DateTime<Utc>>> = keys.iter().map(|k| k.info.expires_at).collect();
    let revoked: Vec<Option<DateTime<Utc>>> = keys.iter().map(|k| k.info.revoked_at).collect();
    let used: Vec<Option<DateTime<Utc>>> = keys.iter().map(|k| k.info.last_used_at).collect();
    query(
        "INSERT INTO kahn.api_keys \
             (tenant_id, key_id, key_hash, created_at, expires_at, revoked_at, last_used_at) \
         SELECT $1, k.key_id, k.key_hash, k.created_at, k.expires_at, k.revoked_at, k.last_used_at \
         FROM UNNEST($2::uuid[], $3::bytea[], $4::timestamptz[], $5::timestamptz[], \
                     $6::timestamptz[], $7::timestamptz[]) \
              AS k(key_id, key_hash, created_at, expires_at, revoked_at, last_used_at) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&hashes)
    .bind(&created)
    .bind(&expires)
    .bind(&revoked)
    .bind(&used)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    list_in_directory(conn, tenant, &hashes).await?;
    query(
        "UPDATE kahn.api_keys AS k SET revoked_at = u.revoked_at \
         FROM UNNEST($2::uuid[], $3::timestamptz[]) AS u(key_id, revoked_at) \
         WHERE k.tenant_id = $1 AND k.key_id = u.key_id \
           AND k.revoked_at IS NULL AND u.revoked_at IS NOT NULL",
    )
    .bind(tenant.as_uuid())
    .bind(&ids)
    .bind(&revoked)
    .execute(&mut *conn)
    .await
    .map_err(db)?;
    Ok(())
}

/// Checks that `tenant` exists (the admin's operator scope).
pub(crate) async fn tenant_exists(pool: &PgPool, tenant: TenantId) -> Result<()> {
    get_tenant(pool, Lone::Direct, tenant).await.map(|_| ())
}

pub(crate) async fn list_tenants(pool: &PgPool, lone: Lone) -> Result<Vec<TenantSummary>> {
    let q =
        query(concat!("SELECT ", tenant_columns!(), ", run_count FROM kahn.admin_list_tenants()"));
    let rows = lone.fetch_all(pool, q).await?;
    rows.iter()
        .map(|row| {
            let count: i64 = row.try_get("run_count").map_err(db)?;
            Ok(TenantSummary {
                tenant: tenant_from_row(row)?,
                run_count: u64::try_from(count).map_err(corrupt)?,
            })
        })
        .collect()
}

/// A pre-tenant lookup.
pub(crate) enum Lookup<'a> {
    ApiKey(&'a ApiKey),
    Org(&'a OrgId),
    Sub(&'a str),
}

pub(crate) async fn lookup(
    pool: &PgPool,
    lone: Lone,
    what: Lookup<'_>,
) -> Result<Option<TenantId>> {
    let q =
        match what {
            Lookup::ApiKey(key) => query("SELECT kahn.lookup_api_key($1) AS tenant")
                .bind(key.hash().as_bytes().to_vec()),
            Lookup::Org(org) => query("SELECT kahn.lookup_tenant_by_org($1) AS tenant")
                .bind(org.as_str().to_owned()),
            Lookup::Sub(sub) => {
                query("SELECT kahn.lookup_tenant_by_sub($1) AS tenant").bind(sub.to_owned())
            }
        };
    let row = lone.fetch_one(pool, q).await?;
    let tenant: Option<Uuid> = row.try_get("tenant").map_err(db)?;
    Ok(tenant.map(TenantId::from_uuid))
}

/// Records a use of the key whose hash is `hash` (`kahn.touch_api_key`: at most one write a
/// minute per key, whatever the number of servers).
pub(crate) async fn touch_api_key(pool: &PgPool, lone: Lone, hash: &ApiKeyHash) -> Result<()> {
    let q = query("SELECT kahn.touch_api_key($1)").bind(hash.as_bytes().as_slice());
    lone.fetch_all(pool, q).await?;
    Ok(())
}

/// What the app DSN answers a purge it may not run.
pub(crate) const APP_PURGE_UNSUPPORTED: Error = Error::Unsupported {
    backend: "postgres (app DSN)",
    operation: "a purge with an instant, a tenant or a dry run (the app role purges only at \
                the database's clock); run `kahn purge` with the admin DSN",
};

/// The retention purge. The app DSN runs only a purge at the database's own clock, of every
/// tenant (`kahn.purge_expired()`: the app role can never delete more than retention allows
/// now); the admin DSN runs any purge, one tenant per transaction (`kahn.purge_tenant`), so one
/// tenant's failure neither undoes nor hides the others'.
pub(crate) async fn purge_expired(
    pool: &PgPool,
    mode: Mode,
    req: &PurgeRequest,
) -> Result<PurgeOutcome> {
    match mode {
        Mode::App if *req != PurgeRequest::at_store_clock() => Err(APP_PURGE_UNSUPPORTED),
        Mode::App => {
            let mut tx = pool.begin().await.map_err(db)?;
            let outcome = purge_all_at_database_clock(&mut tx).await?;
            tx.commit().await.map_err(db)?;
            Ok(outcome)
        }
        Mode::Admin => purge_as_operator(pool, req).await,
    }
}

fn report_from(tenant: TenantId, row: &PgRow) -> Result<PurgeReport> {
    let runs: i64 = row.try_get("runs_removed").map_err(db)?;
    let transitions: i64 = row.try_get("transitions_removed").map_err(db)?;
    Ok(PurgeReport {
        tenant_id: tenant,
        runs_removed: u64::try_from(runs).map_err(corrupt)?,
        transitions_removed: u64::try_from(transitions).map_err(corrupt)?,
    })
}

/// A tenant's purge that failed inside `kahn.purge_expired()`: its SQLSTATE and message.
#[derive(Debug, thiserror::Error)]
#[error("purging tenant {tenant} failed: {message}")]
struct TenantPurgeFailed {
    tenant: TenantId,
    message: String,
}

async fn purge_all_at_database_clock(conn: &mut PgConnection) -> Result<PurgeOutcome> {
    let rows = query(
        "SELECT tenant_id, runs_removed, transitions_removed, failure FROM kahn.purge_expired()",
    )
    .fetch_all(conn)
    .await
    .map_err(db)?;
    let mut outcome = PurgeOutcome::default();
    for row in &rows {
        let tenant = TenantId::from_uuid(row.try_get("tenant_id").map_err(db)?);
        match row.try_get::<Option<String>, _>("failure").map_err(db)? {
            Some(message) => outcome.failures.push(PurgeFailure {
                tenant_id: tenant,
                error: Error::backend(BACKEND, TenantPurgeFailed { tenant, message }),
            }),
            None => outcome.reports.push(report_from(tenant, row)?),
        }
    }
    Ok(outcome)
}

/// The earliest instant a purge can count at: Postgres timestamps start in 4714 BC, and a
/// cutoff (the instant less up to 36,500 days) must stay representable. Nothing stored was
/// received before it, so a purge as of an earlier instant removes nothing.
fn earliest_purge_instant() -> Option<DateTime<Utc>> {
    chrono::NaiveDate::from_ymd_opt(-4000, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

async fn purge_as_operator(pool: &PgPool, req: &PurgeRequest) -> Result<PurgeOutcome> {
    let at = req.instant();
    if let Some(at) = at
        && earliest_purge_instant().is_some_and(|e| at < e)
    {
        return Ok(PurgeOutcome::default());
    }
    // Only the tenants with something to purge (the index on (tenant_id, received_at) answers).
    let tenants = query(
        // A join, not a correlated EXISTS: Citus plans no correlated subquery over a reference
        // table (tenants), and pushes this join down to each shard.
        "SELECT DISTINCT r.tenant_id AS id FROM kahn.runs AS r \
         JOIN kahn.tenants AS t ON t.id = r.tenant_id \
         WHERE ($1::uuid IS NULL OR r.tenant_id = $1) \
           AND r.received_at < COALESCE($2, pg_catalog.now()) \
               - pg_catalog.make_interval(hours => 24 * t.retention_days) \
         ORDER BY 1",
    )
    .bind(req.tenant().map(|t| *t.as_uuid()))
    .bind(at)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let mut outcome = PurgeOutcome::default();
    for row in &tenants {
        let tenant = TenantId::from_uuid(row.try_get("id").map_err(db)?);
        let purged =
            query("SELECT runs_removed, transitions_removed FROM kahn.purge_tenant($1, $2, $3)")
                .bind(tenant.as_uuid())
                .bind(at)
                .bind(req.is_dry_run())
                .fetch_one(pool)
                .await
                .map_err(db)
                .and_then(|row| report_from(tenant, &row));
        match purged {
            Ok(report) if report.runs_removed > 0 => outcome.reports.push(report),
            Ok(_) => {}
            Err(error) => outcome.failures.push(PurgeFailure { tenant_id: tenant, error }),
        }
    }
    Ok(outcome)
}

/// Charges `cost` units of `tenant`'s ingest allowance (`kahn.charge_ingest`: one statement,
/// at the database's clock, shared by every server on the database).
///
/// Its transaction commits without waiting for the WAL flush (`synchronous_commit = off`,
/// transaction-local, set in the same statement): a charge is not data, and a database crash
/// can at most forget the last fraction of a second of charges (a tenant gets that much more
/// after the restart), while a durable commit made each charge several times slower than the
/// key lookup every request already does (pgbench: ~2.7–3.8 ms against ~0.5–0.8 ms).
pub(crate) async fn charge_ingest(
    pool: &PgPool,
    lone: Lone,
    tenant: TenantId,
    cost: std::num::NonZeroU32,
    quota: IngestQuota,
) -> Result<Admission> {
    // Both are capped by the function (a cost above the rate counts as the rate).
    let cost = i32::try_from(cost.get()).unwrap_or(i32::MAX);
    let rate = i32::try_from(quota.rate().get()).unwrap_or(i32::MAX);
    let q = query(
        "SELECT pg_catalog.set_config('synchronous_commit', 'off', true) AS async_commit, \
                kahn.charge_ingest($1, $2, $3) AS wait_us",
    )
    .bind(tenant.as_uuid())
    .bind(cost)
    .bind(rate);
    let wait: i64 = lone.fetch_one(pool, q).await?.try_get("wait_us").map_err(db)?;
    Ok(match u64::try_from(wait) {
        Ok(0) | Err(_) => Admission::Admitted,
        Ok(us) => Admission::Refused { retry_after: std::time::Duration::from_micros(us) },
    })
}

/// The share of a retention interval a purge's turn lasts: a server's own next tick, a little
/// early by the database's clock (timer and network jitter), still finds the turn free, so one
/// server keeps purging once per interval rather than every other.
const TURN_SHARE: f64 = 0.9;

/// The retention timer's purge: takes the turn (`kahn.take_purge_turn`) and, when it is this
/// caller's, purges at the database's clock in the same transaction, so the turn's row stays
/// locked until the purge ends and no other server purges meanwhile.
pub(crate) async fn purge_in_turn(pool: &PgPool, every: std::time::Duration) -> Result<PurgeTurn> {
    let turn = every.mul_f64(TURN_SHARE).as_secs_f64();
    let mut tx = pool.begin().await.map_err(db)?;
    let mine: bool =
        query("SELECT kahn.take_purge_turn(pg_catalog.make_interval(secs => $1)) AS mine")
            .bind(turn)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .try_get("mine")
            .map_err(db)?;
    if !mine {
        tx.rollback().await.map_err(db)?;
        return Ok(PurgeTurn::Taken);
    }
    let outcome = purge_all_at_database_clock(&mut tx).await?;
    tx.commit().await.map_err(db)?;
    Ok(PurgeTurn::Ran(outcome))
}
