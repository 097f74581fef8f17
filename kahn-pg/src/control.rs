//! The control plane: tenants, keys, pre-tenant lookups, the admin listing and the purge.
//!
//! Lookups, `get_tenant`, the admin listing and the purge go through the SECURITY DEFINER
//! functions in both modes (one code path, the one the app role is granted). Provisioning and
//! key management are plain SQL run by the admin role (a superuser, or a member of
//! `kahn_definer`, whose policies see every tenant).

use chrono::{DateTime, Utc};
use kahn_core::rules::truncate_micros;
use kahn_core::{
    ApiKey, ApiKeyId, ApiKeyInfo, Error, IssuedApiKey, NewTenant, OrgId, PurgeReport, Result,
    Tenant, TenantId, TenantSummary,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_postgres::{PgPool, PgRow};
use uuid::Uuid;

use crate::Mode;
use crate::error::{corrupt, db, unique_violation};

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
        revoked_at: row.try_get("revoked_at").map_err(db)?,
    })
}

fn tenant_conflict(constraint: &str) -> Option<Error> {
    match constraint {
        "tenants_owner_sub_key" => Some(Error::invalid("owner_sub", "already owns another tenant")),
        "tenants_airlock_org_id_key" => {
            Some(Error::invalid("org_id", "is already linked to another tenant"))
        }
        _ => None,
    }
}

async fn tenant_by_name(pool: &PgPool, name: &str) -> Result<Option<Tenant>> {
    query(
        "SELECT id, name, owner_sub, airlock_org_id, retention_days, created_at \
           FROM kahn.tenants WHERE name = $1",
    )
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
    let inserted = query(
        "INSERT INTO kahn.tenants (id, name, owner_sub, airlock_org_id, retention_days, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT ON CONSTRAINT tenants_name_key DO NOTHING \
         RETURNING id, name, owner_sub, airlock_org_id, retention_days, created_at",
    )
    .bind(Uuid::new_v4())
    .bind(req.name())
    .bind(req.owner_sub())
    .bind(req.org_id().map(OrgId::as_str))
    .bind(i32::try_from(req.retention_days()).map_err(|_| {
        Error::invalid("retention_days", "must be between 1 and 36500")
    })?)
    .bind(truncate_micros(Utc::now()))
    .fetch_optional(pool)
    .await;
    match inserted {
        Ok(Some(row)) => tenant_from_row(&row),
        // Provisioned concurrently under the same name: that one is the tenant.
        Ok(None) => {
            let existing = tenant_by_name(pool, req.name())
                .await?
                .ok_or_else(|| Error::backend(crate::error::BACKEND, "tenant vanished"))?;
            req.check_matches(&existing)?;
            Ok(existing)
        }
        Err(e) => Err(unique_violation(&e).and_then(tenant_conflict).unwrap_or_else(|| db(e))),
    }
}

pub(crate) async fn get_tenant(pool: &PgPool, tenant: TenantId) -> Result<Tenant> {
    let row = query(
        "SELECT id, name, owner_sub, airlock_org_id, retention_days, created_at \
         FROM kahn.get_tenant($1)",
    )
    .bind(tenant.as_uuid())
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    match row {
        Some(row) => tenant_from_row(&row),
        None => Err(Error::not_found("tenant", tenant)),
    }
}

pub(crate) async fn link_org(pool: &PgPool, tenant: TenantId, org: &OrgId) -> Result<Tenant> {
    let row = query(
        "UPDATE kahn.tenants SET airlock_org_id = $2 WHERE id = $1 \
         RETURNING id, name, owner_sub, airlock_org_id, retention_days, created_at",
    )
    .bind(tenant.as_uuid())
    .bind(org.as_str())
    .fetch_optional(pool)
    .await;
    match row {
        Ok(Some(row)) => tenant_from_row(&row),
        Ok(None) => Err(Error::not_found("tenant", tenant)),
        Err(e) => Err(unique_violation(&e).and_then(tenant_conflict).unwrap_or_else(|| db(e))),
    }
}

async fn insert_key<'c>(
    conn: impl sqlx_postgres::PgExecutor<'c>,
    tenant: TenantId,
) -> Result<IssuedApiKey> {
    let secret = ApiKey::generate()?;
    let id = ApiKeyId::new_random();
    let res = query(
        "INSERT INTO kahn.api_keys (tenant_id, key_id, key_hash, created_at) \
         VALUES ($1, $2, $3, $4)",
    )
    .bind(tenant.as_uuid())
    .bind(id.as_uuid())
    .bind(secret.hash().as_bytes().as_slice())
    .bind(truncate_micros(Utc::now()))
    .execute(conn)
    .await;
    match res {
        Ok(_) => Ok(IssuedApiKey { id, tenant_id: tenant, secret }),
        Err(e) if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23503") => {
            Err(Error::not_found("tenant", tenant))
        }
        Err(e) => Err(db(e)),
    }
}

pub(crate) async fn issue_api_key(pool: &PgPool, tenant: TenantId) -> Result<IssuedApiKey> {
    insert_key(pool, tenant).await
}

pub(crate) async fn rotate_api_key(
    pool: &PgPool,
    tenant: TenantId,
    old: ApiKeyId,
) -> Result<IssuedApiKey> {
    let mut tx = pool.begin().await.map_err(db)?;
    let revoked = query(
        "UPDATE kahn.api_keys SET revoked_at = $3 \
         WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL",
    )
    .bind(tenant.as_uuid())
    .bind(old.as_uuid())
    .bind(truncate_micros(Utc::now()))
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    if revoked.rows_affected() == 0 {
        return Err(Error::not_found("api_key", old));
    }
    let issued = insert_key(&mut *tx, tenant).await?;
    tx.commit().await.map_err(db)?;
    Ok(issued)
}

pub(crate) async fn revoke_api_key(pool: &PgPool, tenant: TenantId, key: ApiKeyId) -> Result<()> {
    let res = query(
        "UPDATE kahn.api_keys SET revoked_at = COALESCE(revoked_at, $3) \
         WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant.as_uuid())
    .bind(key.as_uuid())
    .bind(truncate_micros(Utc::now()))
    .execute(pool)
    .await
    .map_err(db)?;
    if res.rows_affected() == 0 {
        return Err(Error::not_found("api_key", key));
    }
    Ok(())
}

pub(crate) async fn list_api_keys(pool: &PgPool, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
    get_tenant(pool, tenant).await?;
    query(
        "SELECT tenant_id, key_id, created_at, revoked_at FROM kahn.api_keys \
         WHERE tenant_id = $1 ORDER BY created_at, key_id",
    )
    .bind(tenant.as_uuid())
    .fetch_all(pool)
    .await
    .map_err(db)?
    .iter()
    .map(key_info_from_row)
    .collect()
}

pub(crate) async fn list_tenants(pool: &PgPool) -> Result<Vec<TenantSummary>> {
    let rows = query(
        "SELECT id, name, owner_sub, airlock_org_id, retention_days, created_at, run_count \
         FROM kahn.admin_list_tenants()",
    )
    .fetch_all(pool)
    .await
    .map_err(db)?;
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

pub(crate) async fn lookup(pool: &PgPool, what: Lookup<'_>) -> Result<Option<TenantId>> {
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
    let row = q.fetch_one(pool).await.map_err(db)?;
    let tenant: Option<Uuid> = row.try_get("tenant").map_err(db)?;
    Ok(tenant.map(TenantId::from_uuid))
}

/// The retention purge. The admin DSN purges at `now` (`kahn.purge_expired_at`, which only
/// owners and members of `kahn_definer` may call); the app DSN purges at the database's own
/// clock (`kahn.purge_expired()`), whatever `now` says: the app role can never delete more than
/// retention allows at the database's time.
pub(crate) async fn purge_expired(
    pool: &PgPool,
    mode: Mode,
    now: DateTime<Utc>,
) -> Result<Vec<PurgeReport>> {
    let rows = match mode {
        Mode::App => {
            query("SELECT tenant_id, runs_removed, transitions_removed FROM kahn.purge_expired()")
                .fetch_all(pool)
                .await
                .map_err(db)?
        }
        Mode::Admin => {
            // Postgres timestamps start in 4714 BC: nothing stored is older than a `now` before
            // that.
            let earliest = chrono::NaiveDate::from_ymd_opt(-4712, 1, 1)
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|d| d.and_utc());
            if earliest.is_some_and(|e| now < e) {
                return Ok(Vec::new());
            }
            query(
                "SELECT tenant_id, runs_removed, transitions_removed \
                 FROM kahn.purge_expired_at($1)",
            )
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(db)?
        }
    };
    rows.iter()
        .map(|row| {
            let runs: i64 = row.try_get("runs_removed").map_err(db)?;
            let transitions: i64 = row.try_get("transitions_removed").map_err(db)?;
            Ok(PurgeReport {
                tenant_id: TenantId::from_uuid(row.try_get("tenant_id").map_err(db)?),
                runs_removed: u64::try_from(runs).map_err(corrupt)?,
                transitions_removed: u64::try_from(transitions).map_err(corrupt)?,
            })
        })
        .collect()
}
