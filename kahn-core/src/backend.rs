//! The one trait every storage adapter implements.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::batch::AppendBatch;
use crate::error::{Error, Result};
use crate::id::{ApiKeyId, OrgId, RunId, Seq, TenantId};
use crate::model::{
    ApiKeyInfo, AppendReport, IssuedApiKey, NewTenant, PurgeReport, RunPage, RunQuery, RunSummary,
    StoredTransition, Tenant, TenantSummary,
};
use crate::scope::{ReadScope, TenantSource, WriteScope};
use crate::secret::ApiKey;

/// A store of tenants, API keys, runs and their transitions.
///
/// Object safe: use it as `Arc<dyn StorageBackend>`. Every adapter passes the same
/// conformance suite (`kahn_core::conformance`, feature `conformance`), which is the
/// executable form of this contract:
///
/// * **Tenancy.** Tenant-data methods take a [`WriteScope`] or [`ReadScope`] and touch only
///   that tenant's rows. A run of another tenant is [`Error::NotFound`], never visible.
/// * **Content-aligned append.** See [`append`](Self::append): idempotent by content, refuses
///   gaps and divergent content, never rewrites, one transaction per call, concurrent appends
///   to one run serialize.
/// * **Tamper evidence.** Every transition stores its content hash and chain link; a run's
///   `head_hash` is the last link, and [`verify_chain`](crate::verify_chain) over
///   [`read_transitions`](Self::read_transitions) recomputes it.
///
/// Control-plane methods (provisioning, keys, [`list_tenants`](Self::list_tenants),
/// [`purge_expired`](Self::purge_expired)) are for operators; a backend that cannot offer them
/// (the HTTP client) returns [`Error::Unsupported`].
#[async_trait]
pub trait StorageBackend: Debug + Send + Sync + 'static {
    /// Creates the tenant named in `req`, or returns the existing tenant of that name.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when a tenant of that name exists with different settings, or
    /// `owner_sub`/`org_id` already belongs to another tenant.
    async fn provision_tenant(&self, req: &NewTenant) -> Result<Tenant>;

    /// A tenant by id.
    ///
    /// # Errors
    /// [`Error::NotFound`] when there is none.
    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant>;

    /// Links `tenant` to organisation `org` (moving an org's tenancy is this one update).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant; [`Error::InvalidInput`] naming `org_id` when
    /// another tenant holds that org.
    async fn link_org(&self, tenant: TenantId, org: &OrgId) -> Result<Tenant>;

    /// Issues a new API key for `tenant`; its secret is returned once and only its hash kept.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant.
    async fn issue_api_key(&self, tenant: TenantId) -> Result<IssuedApiKey>;

    /// Atomically issues a new key for `tenant` and revokes `old`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `old` is not an active key of `tenant`; nothing is issued then.
    async fn rotate_api_key(&self, tenant: TenantId, old: ApiKeyId) -> Result<IssuedApiKey>;

    /// Revokes a key: it never resolves again.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `key` is not a key of `tenant`.
    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()>;

    /// The keys of `tenant`, active and revoked, oldest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant.
    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>>;

    /// Every tenant with its run count, by name. For admins only.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    async fn list_tenants(&self) -> Result<Vec<TenantSummary>>;

    /// The tenant of an active API key, or `None` for an unknown or revoked key.
    /// Prefer [`StorageBackendExt::resolve_api_key`], which returns a [`WriteScope`].
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails (never for an unknown key).
    async fn authenticate_api_key(&self, key: &ApiKey) -> Result<Option<TenantId>>;

    /// The tenant linked to organisation `org`, if any.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    async fn lookup_tenant_by_org(&self, org: &OrgId) -> Result<Option<TenantId>>;

    /// The personal tenant of JWT subject `sub`, if any.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails.
    async fn lookup_tenant_by_sub(&self, sub: &str) -> Result<Option<TenantId>>;

    /// Appends a batch under the content-aligned rules. For each run, with `L` its stored
    /// `next_seq` and the batch carrying seqs `[s, e)`:
    ///
    /// 1. `s > L` → [`Error::Gap`] with `expected: L`.
    /// 2. Seqs `[s, min(e, L))` must carry the stored content; the first that differs →
    ///    [`Error::Conflict`] with the seq and both hashes.
    /// 3. Seqs `[max(s, L), e)` are appended; the report gives `appended`, `skipped`,
    ///    `next_seq` and `head_hash` per run.
    /// 4. Metadata fields are set once: absent → set, equal → no-op, different → Conflict.
    /// 5. One call is one transaction: every run of the batch applies, or none does.
    ///    Concurrent appends to one run serialize.
    ///
    /// # Errors
    /// [`Error::Gap`], [`Error::Conflict`] as above — and nothing is written.
    async fn append(&self, scope: &WriteScope, batch: &AppendBatch) -> Result<AppendReport>;

    /// A page of the scope's runs, newest activity first.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `source`, `status` or `cursor` when
    /// [`RunQuery::validate`] refuses the query (every backend checks it first);
    /// [`Error::Backend`] when the store fails.
    async fn list_runs(&self, scope: &ReadScope, query: &RunQuery) -> Result<RunPage>;

    /// One run with its graph.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the scope's tenant has no such run.
    async fn get_run(&self, scope: &ReadScope, run: &RunId) -> Result<RunSummary>;

    /// Up to `limit` (at most 1000) transitions of a run with seq greater than `after`
    /// (from seq 0 when `None`), in seq order.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the scope's tenant has no such run.
    async fn read_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<StoredTransition>>;

    /// Removes every run whose last activity is older than its tenant's retention at `now`,
    /// with its transitions. Reports, per tenant that lost anything, what was removed.
    ///
    /// A backend whose credentials must never delete more than retention allows *now* uses
    /// its own clock instead of `now`: Postgres under the app role purges at the database's
    /// `now()` (the caller's time is not trusted there); operators purge "as of" a time with
    /// the admin DSN.
    ///
    /// # Errors
    /// [`Error::Backend`] when the store fails; nothing is removed then.
    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<Vec<PurgeReport>>;

    /// Checks the store is reachable (readiness).
    ///
    /// # Errors
    /// [`Error::Backend`] when it is not.
    async fn ping(&self) -> Result<()>;
}

/// Conveniences over [`StorageBackend`], implemented for every backend.
#[async_trait]
pub trait StorageBackendExt: StorageBackend {
    /// Resolves an API key to the write scope of its tenant; `None` when unknown or revoked.
    ///
    /// # Errors
    /// As [`StorageBackend::authenticate_api_key`].
    async fn resolve_api_key(&self, key: &ApiKey) -> Result<Option<WriteScope>> {
        let tenant = self.authenticate_api_key(key).await?;
        Ok(tenant.map(|t| WriteScope::from_resolved_api_key(t, key.clone())))
    }

    /// The read scope of the tenant linked to `org`.
    ///
    /// # Errors
    /// As [`StorageBackend::lookup_tenant_by_org`].
    async fn resolve_org(&self, org: &OrgId) -> Result<Option<ReadScope>> {
        let tenant = self.lookup_tenant_by_org(org).await?;
        Ok(tenant.map(|t| ReadScope::resolved(t, TenantSource::Org)))
    }

    /// The read scope of the personal tenant of `sub`.
    ///
    /// # Errors
    /// As [`StorageBackend::lookup_tenant_by_sub`].
    async fn resolve_sub(&self, sub: &str) -> Result<Option<ReadScope>> {
        let tenant = self.lookup_tenant_by_sub(sub).await?;
        Ok(tenant.map(|t| ReadScope::resolved(t, TenantSource::Sub)))
    }

    /// A read-only scope on any existing tenant, for an administrator. The caller decides who
    /// is an administrator; the result can only ever read.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant.
    async fn resolve_admin_override(&self, tenant: TenantId) -> Result<ReadScope> {
        let t = self.get_tenant(tenant).await?;
        Ok(ReadScope::resolved(t.id, TenantSource::AdminOverride))
    }

    /// Every transition of a run, read page by page.
    ///
    /// # Errors
    /// As [`StorageBackend::read_transitions`].
    async fn read_all_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
    ) -> Result<Vec<StoredTransition>> {
        let mut out: Vec<StoredTransition> = Vec::new();
        loop {
            let after = out.last().map(|t| t.seq);
            let page =
                self.read_transitions(scope, run, after, crate::model::MAX_PAGE_SIZE).await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// Recomputes a run's hash chain from its stored transitions, page by page (memory stays
    /// flat), up to the `next_seq` read first, and compares it with the stored `head_hash`.
    /// Transitions appended meanwhile are not read, so a concurrent push never looks like
    /// tampering. Returns the verified head.
    ///
    /// # Errors
    /// [`Error::Integrity`] naming the first seq where the chain breaks, or when rows below
    /// `next_seq` are missing; [`Error::NotFound`] for an unknown run.
    async fn verify_run(&self, scope: &ReadScope, run: &RunId) -> Result<crate::Digest> {
        let summary = self.get_run(scope, run).await?.info;
        let mut verifier = crate::hash::ChainVerifier::new();
        let in_run = |e: Error| match e {
            Error::Integrity { seq, message, .. } => {
                Error::Integrity { run_id: Some(run.clone()), seq, message }
            }
            other => other,
        };
        while verifier.verified() < summary.next_seq {
            let after = verifier.verified().checked_sub(1).map(Seq::new).transpose()?;
            let page =
                self.read_transitions(scope, run, after, crate::model::MAX_PAGE_SIZE).await?;
            if page.is_empty() {
                break;
            }
            for t in page.iter().take_while(|t| t.seq.get() < summary.next_seq) {
                verifier.push(t).map_err(in_run)?;
            }
        }
        if verifier.verified() != summary.next_seq {
            return Err(Error::Integrity {
                run_id: Some(run.clone()),
                seq: Some(verifier.verified()),
                message: format!(
                    "rows missing: next_seq is {} but only {} are stored",
                    summary.next_seq,
                    verifier.verified()
                ),
            });
        }
        if verifier.head() != summary.head_hash {
            return Err(Error::Integrity {
                run_id: Some(run.clone()),
                seq: summary.next_seq.checked_sub(1),
                message: format!(
                    "recomputed head {} differs from stored head_hash {}",
                    verifier.head(),
                    summary.head_hash
                ),
            });
        }
        Ok(verifier.head())
    }
}

impl<T: StorageBackend + ?Sized> StorageBackendExt for T {}
