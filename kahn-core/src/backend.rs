//! The one trait every storage adapter implements.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::admin::{
    NewApiKey, PurgeOutcome, PurgeRequest, RetiredKeys, TenantChange, TenantRecord,
};
use crate::batch::AppendBatch;
use crate::checkpoint::{
    CheckpointInputs, CheckpointLog, MadeCheckpoint, NewCheckpoint, StoredCheckpoint,
    checkpoint_for, next_leaves,
};
use crate::error::{Error, Result};
use crate::id::{ApiKeyId, OrgId, RunId, Seq, TenantId};
use crate::model::{
    ApiKeyInfo, AppendReport, IssuedApiKey, NewTenant, PurgeReport, RunPage, RunQuery, RunSummary,
    StoredTransition, Tenant, TenantSummary,
};
use crate::scope::{ReadScope, TenantSource, WriteScope};
use crate::secret::ApiKey;
use crate::shared::{Admission, IngestQuota, PurgeTurn};

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
/// Control-plane methods (provisioning, tenant changes, keys, [`list_tenants`](Self::list_tenants),
/// [`purge_expired`](Self::purge_expired), export and import) are for operators; a backend
/// that cannot offer them (the HTTP client) returns [`Error::Unsupported`]. Conveniences over
/// them ([`StorageBackendExt::issue_api_key`], [`StorageBackendExt::rotate_api_key`],
/// [`StorageBackendExt::link_org`]) live in [`StorageBackendExt`].
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

    /// Applies one change to a tenant's settings.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant; [`Error::InvalidInput`] naming `name` when
    /// another tenant has that name, or `org_id` when another tenant holds that org.
    async fn update_tenant(&self, tenant: TenantId, change: &TenantChange) -> Result<Tenant>;

    /// Removes a tenant with everything it holds: runs, transitions, keys. Its keys never
    /// resolve again. Only an operator's handle may (not the Postgres app role, not a client).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant; [`Error::Unsupported`] where the handle may
    /// not delete tenants.
    async fn delete_tenant(&self, tenant: TenantId) -> Result<PurgeReport>;

    /// The personal tenant of JWT subject `sub`, created on first sign-in when it has none
    /// ([`NewTenant::personal`]: named `user:<sub>`, default retention). Concurrent first
    /// sign-ins create one tenant.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `sub` is malformed or `user:<sub>` is the name of a
    /// tenant owned by someone else.
    async fn provision_personal_tenant(&self, sub: &str) -> Result<TenantId>;

    /// Issues a new API key for `tenant` as `req` says — its expiry, and which keys it retires
    /// and when — in one transaction. Its secret is returned once and only its hash kept.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant, or when `req` retires
    /// [`RetiredKeys::One`](crate::RetiredKeys::One) key that is not an active key of
    /// `tenant`; nothing is issued then.
    async fn create_api_key(&self, tenant: TenantId, req: &NewApiKey) -> Result<IssuedApiKey>;

    /// Revokes a key: it never resolves again.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `key` is not a key of `tenant`.
    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()>;

    /// The keys of `tenant`, active and not, oldest first.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant.
    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>>;

    /// A tenant with its keys (hashes, never secrets), to move it to another store.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown tenant; [`Error::Unsupported`] where the handle may
    /// not read keys (the Postgres app role, a client).
    async fn export_tenant(&self, tenant: TenantId) -> Result<TenantRecord>;

    /// Stores a tenant exported from another store, with the same id, settings and keys, so
    /// its producers' keys keep working. Idempotent: importing the same record again changes
    /// nothing, except that a key revoked at the source since is revoked here too.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `name`, `owner_sub` or `org_id` when another tenant
    /// here holds it, or `tenant` when a tenant with this id exists with other settings;
    /// [`Error::Unsupported`] where the handle may not create tenants.
    async fn import_tenant(&self, record: &TenantRecord) -> Result<Tenant>;

    /// Checks that this handle may append to any tenant as an operator (moving runs between
    /// stores), and that `tenant` exists. Prefer
    /// [`StorageBackendExt::operator_write_scope`], which returns the scope.
    ///
    /// # Errors
    /// [`Error::Unsupported`] where it may not (the Postgres app role, a client);
    /// [`Error::NotFound`] for an unknown tenant.
    async fn authorize_operator(&self, tenant: TenantId) -> Result<()>;

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

    /// Appends NDJSON lines in the form `POST /v1/ingest/transitions` takes (see
    /// [`AppendBatch::from_ndjson_bytes`]): one call is one [`append`](Self::append), under
    /// the same rules.
    ///
    /// The default parses the lines here and appends the batch. A store that reads NDJSON on
    /// the far side of a connection anyway (the HTTP client) sends the bytes as they are,
    /// and says so with [`prefers_ndjson`](Self::prefers_ndjson).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for the first bad line, its message starting `line N:` (N
    /// counts the body's lines from 1), and nothing is written; otherwise as
    /// [`append`](Self::append).
    async fn append_ndjson(&self, scope: &WriteScope, body: bytes::Bytes) -> Result<AppendReport> {
        let batch = AppendBatch::from_ndjson_bytes(&body)?;
        self.append(scope, &batch).await
    }

    /// Whether NDJSON already in hand is best handed over as it is, with
    /// [`append_ndjson`](Self::append_ndjson), rather than parsed by the caller into a batch:
    /// `true` for a store that parses every line again on its side (a remote server), so the
    /// caller's parse would be spent twice. `false` (the default) for a store in this process,
    /// where the caller parsing on a thread of its own keeps the store's writer free.
    fn prefers_ndjson(&self) -> bool {
        false
    }

    /// Whether appends reach the store in the order their futures were **first polled**: once
    /// an [`append`](Self::append)'s future has been polled, an append first polled after it
    /// is applied after it, whether or not the earlier future is polled again. `true` for a
    /// store whose one writer takes appends from a queue the first poll joins (SQLite).
    ///
    /// A caller keeping two appends of one run in order (the HTTP server, for a pusher's
    /// chunks in flight) may then start the second as soon as the first was polled once,
    /// instead of waiting for its answer: the second is then already queued when the writer
    /// is done with the first (other calls may still come between them), with no other thread
    /// to wake first. The append rules are the same either way; with `false` (the
    /// default, which promises nothing) a second append that overtakes the first is refused
    /// as a [`Gap`](crate::Error::Gap).
    fn appends_in_poll_order(&self) -> bool {
        false
    }

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

    /// Removes every run whose `received_at + retention_days` has passed at the request's
    /// instant, with its transitions — of every tenant, or of the request's one tenant — and
    /// reports per tenant what went (on a dry run: what would go, removing nothing).
    ///
    /// `received_at` is the store's clock at the last append that stored something for the
    /// run, so a backfill is kept the full retention, a run dated 2099 expires like any other,
    /// and a run still receiving appends is never purged. Tenants are purged independently:
    /// one tenant's failure is reported in [`PurgeOutcome::failures`] and leaves the others'
    /// purges (and reports) intact.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a request the handle may not make: Postgres under the app
    /// role purges only at the database's own clock ([`PurgeRequest::at_store_clock`]);
    /// [`Error::Backend`] when the store fails before any tenant is purged.
    async fn purge_expired(&self, req: &PurgeRequest) -> Result<PurgeOutcome>;

    /// The scope's tenant's checkpoint log ([`crate::checkpoint`]): every leaf and every
    /// signed checkpoint, oldest first. Empty before the first checkpoint.
    ///
    /// # Errors
    /// [`Error::Integrity`] when a stored leaf or envelope does not decode (the log was
    /// altered outside KAHN); [`Error::Backend`] when the store fails.
    async fn read_checkpoint_log(&self, scope: &ReadScope) -> Result<CheckpointLog>;

    /// What the scope's tenant's next checkpoint is made from, read in **one snapshot**: the
    /// log, the head of every run held now, and the purge records no checkpoint has logged.
    /// A run a purge removed and that purge's record are never seen one without the other.
    ///
    /// # Errors
    /// As [`read_checkpoint_log`](Self::read_checkpoint_log); [`Error::Unsupported`] from a
    /// backend that does not make checkpoints itself (the HTTP client: its server does).
    async fn checkpoint_inputs(&self, scope: &ReadScope) -> Result<CheckpointInputs>;

    /// Appends `next.leaves` and `next.checkpoint` to the scope's tenant's log, and marks
    /// the purge records `next.purges` logged — in one transaction, and only while the log
    /// still holds `next.after` leaves (a compare-and-append: two servers checkpointing one
    /// tenant at once append one checkpoint, never an interleaving). Leaves and checkpoints
    /// are never updated or deleted afterwards, except with the whole tenant.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when [`NewCheckpoint::validate`] refuses `next`;
    /// [`Error::Unavailable`] ([`crate::checkpoint::log_moved`]) when the log no longer holds
    /// `next.after` leaves — nothing is written, read the inputs again; [`Error::Unsupported`]
    /// as for [`checkpoint_inputs`](Self::checkpoint_inputs).
    async fn append_checkpoint(&self, scope: &ReadScope, next: &NewCheckpoint) -> Result<()>;

    /// Charges `cost` units of the scope's tenant's ingest allowance `quota` in state every
    /// server on this store shares, at the store's clock (a GCRA: the allowance refills at
    /// `quota.rate()` units a second up to `quota.burst()`; a cost above the burst counts as
    /// the whole burst). [`Admission::Refused`] charges nothing and says how long until the
    /// same charge fits; tenants never share an allowance.
    ///
    /// The default, for stores one process serves, answers [`Admission::NotShared`]: the
    /// caller then limits in its own memory.
    ///
    /// # Errors
    /// [`Error::Backend`] or [`Error::Unavailable`] when the store fails; nothing is charged.
    async fn charge_ingest(
        &self,
        scope: &WriteScope,
        cost: std::num::NonZeroU32,
        quota: IngestQuota,
    ) -> Result<Admission> {
        let _ = (scope, cost, quota);
        Ok(Admission::NotShared)
    }

    /// The purge a server's retention timer runs, every `every`: a purge at the store's clock
    /// ([`PurgeRequest::at_store_clock`]), by one server at a time and at most about once per
    /// `every` across every server on this store. [`PurgeTurn::Taken`] when another server
    /// purged less than `every` ago or is purging now.
    ///
    /// The default, for stores one process serves, purges every time
    /// ([`PurgeTurn::NotShared`]).
    ///
    /// # Errors
    /// As [`purge_expired`](Self::purge_expired).
    async fn purge_expired_in_turn(&self, every: std::time::Duration) -> Result<PurgeTurn> {
        let _ = every;
        self.purge_expired(&PurgeRequest::at_store_clock()).await.map(PurgeTurn::NotShared)
    }

    /// Checks the store is reachable (readiness).
    ///
    /// # Errors
    /// [`Error::Backend`] when it is not.
    async fn ping(&self) -> Result<()>;

    /// How the store's database connections are used now, for metrics; `None` (the default)
    /// for a store without a pool of its own (in memory, a remote server).
    fn pool_status(&self) -> Option<crate::PoolStatus> {
        None
    }
}

/// Conveniences over [`StorageBackend`], implemented for every backend.
#[async_trait]
pub trait StorageBackendExt: StorageBackend {
    /// Issues a new key for `tenant` that never expires and retires nothing.
    ///
    /// # Errors
    /// As [`StorageBackend::create_api_key`].
    async fn issue_api_key(&self, tenant: TenantId) -> Result<IssuedApiKey> {
        self.create_api_key(tenant, &NewApiKey::new()).await
    }

    /// Atomically issues a new key for `tenant` and revokes `old`.
    ///
    /// # Errors
    /// [`Error::NotFound`] when `old` is not an active key of `tenant`; nothing is issued then.
    async fn rotate_api_key(&self, tenant: TenantId, old: ApiKeyId) -> Result<IssuedApiKey> {
        self.create_api_key(tenant, &NewApiKey::new().retiring(RetiredKeys::One(old))).await
    }

    /// Links `tenant` to organisation `org` (moving an org's tenancy is this one update).
    ///
    /// # Errors
    /// As [`StorageBackend::update_tenant`].
    async fn link_org(&self, tenant: TenantId, org: &OrgId) -> Result<Tenant> {
        self.update_tenant(tenant, &TenantChange::LinkOrg(org.clone())).await
    }

    /// A write scope on `tenant` for an operator moving runs between stores (`kahn copy`):
    /// only a handle that may write any tenant (SQLite, the in-memory store, Postgres with
    /// the admin DSN) grants it. The scope carries no API key, so a client cannot forward it.
    ///
    /// # Errors
    /// As [`StorageBackend::authorize_operator`].
    async fn operator_write_scope(&self, tenant: TenantId) -> Result<WriteScope> {
        self.authorize_operator(tenant).await?;
        Ok(WriteScope::operator(tenant))
    }

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

    /// The read scope of the personal tenant of `sub`, created on first sign-in.
    ///
    /// # Errors
    /// As [`StorageBackend::provision_personal_tenant`].
    async fn resolve_sub_creating(&self, sub: &str) -> Result<ReadScope> {
        if let Some(scope) = self.resolve_sub(sub).await? {
            return Ok(scope);
        }
        let tenant = self.provision_personal_tenant(sub).await?;
        Ok(ReadScope::resolved(tenant, TenantSource::Sub))
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
        let verifier = chain_until(self, scope, run, summary.next_seq).await?;
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

    /// Checks that the stored run still extends what `receipt` acknowledged: the chain
    /// recomputed from the stored bodies, seq 0 to `receipt.next_seq - 1`, must end in
    /// `receipt.head_hash`. An operator who edits a transition and recomputes every stored
    /// hash passes [`verify_run`](Self::verify_run), but not this: the receipt's head was
    /// signed by a key the database never held. Check the receipt's signature first
    /// ([`ReceiptKey::verify`](crate::receipt::ReceiptKey::verify)); this checks the store.
    /// Returns the recomputed head (equal to the receipt's).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the receipt is another tenant's than the scope's;
    /// [`Error::Integrity`] when the run is not stored (deleted, moved to another tenant, or
    /// removed by retention), holds fewer transitions than the receipt acknowledged, or its
    /// chain at `next_seq - 1` differs from the receipted head (naming the seq); others as
    /// the reads return them.
    async fn check_receipt(
        &self,
        scope: &ReadScope,
        receipt: &crate::receipt::Receipt,
    ) -> Result<crate::Digest> {
        let run = &receipt.run_id;
        if receipt.tenant_id != scope.tenant() {
            return Err(Error::invalid(
                "receipt",
                format!(
                    "is for tenant {}, but this credential reads tenant {}",
                    receipt.tenant_id,
                    scope.tenant()
                ),
            ));
        }
        let broken = |seq: Option<u64>, message: String| Error::Integrity {
            run_id: Some(run.clone()),
            seq,
            message,
        };
        let stored = match self.get_run(scope, run).await {
            Ok(detail) => detail.info,
            Err(Error::NotFound { .. }) => {
                return Err(broken(
                    None,
                    format!(
                        "the receipted run is not stored (acknowledged with {} transitions at \
                         {}): it was deleted, moved to another tenant, or removed by retention",
                        receipt.next_seq,
                        receipt.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                ));
            }
            Err(e) => return Err(e),
        };
        if stored.next_seq < receipt.next_seq {
            return Err(broken(
                Some(stored.next_seq),
                format!(
                    "the store holds {} transitions, the receipt acknowledged {}: rows were removed",
                    stored.next_seq, receipt.next_seq
                ),
            ));
        }
        let verifier = chain_until(self, scope, run, receipt.next_seq).await?;
        if verifier.verified() != receipt.next_seq {
            return Err(broken(
                Some(verifier.verified()),
                format!(
                    "rows missing: the receipt acknowledged {} transitions, {} are stored",
                    receipt.next_seq,
                    verifier.verified()
                ),
            ));
        }
        if verifier.head() != receipt.head_hash {
            // The receipt holds the head only: which of the seqs changed is not knowable.
            return Err(broken(
                None,
                format!(
                    "the stored chain of seqs 0-{} ends in {} where the receipt acknowledged {}: \
                     at least one of them was rewritten",
                    receipt.next_seq.saturating_sub(1),
                    verifier.head(),
                    receipt.head_hash
                ),
            ));
        }
        Ok(verifier.head())
    }

    /// Makes the scope's tenant's next checkpoint at `now`, signed by `signer`, and returns
    /// it: [`make_checkpoint_audited`](Self::make_checkpoint_audited) without the findings.
    ///
    /// # Errors
    /// As [`make_checkpoint_audited`](Self::make_checkpoint_audited).
    async fn make_checkpoint(
        &self,
        scope: &ReadScope,
        signer: &crate::receipt::ReceiptSigner,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<StoredCheckpoint> {
        self.make_checkpoint_audited(scope, signer, now).await.map(|made| made.checkpoint)
    }

    /// Makes the scope's tenant's next checkpoint at `now`, signed by `signer`: reads the
    /// inputs, appends the leaves of what changed ([`next_leaves`]) and the signed root
    /// ([`checkpoint_for`]). When nothing changed since the latest checkpoint, returns that
    /// one and appends nothing. When another server checkpoints the tenant at the same time,
    /// reads again (up to 5 times). Never signs over a log that no longer extends the latest
    /// stored checkpoint (leaves removed or edited outside KAHN): that would sign a fork.
    ///
    /// A checkpoint that records a change made outside KAHN (a run gone without a purge,
    /// rewritten, dated back) is still appended — it is the evidence — and says so in
    /// [`MadeCheckpoint::alteration`]: the [`audit`](crate::checkpoint::audit) from the
    /// previous checkpoint fails.
    ///
    /// # Errors
    /// [`Error::Integrity`] when the stored log does not extend its latest checkpoint;
    /// as [`checkpoint_inputs`](StorageBackend::checkpoint_inputs) and
    /// [`append_checkpoint`](StorageBackend::append_checkpoint); [`Error::Unavailable`]
    /// when the log kept moving.
    async fn make_checkpoint_audited(
        &self,
        scope: &ReadScope,
        signer: &crate::receipt::ReceiptSigner,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<MadeCheckpoint> {
        let key_id = signer.public_key().id().to_owned();
        let mut tries = 0;
        loop {
            let inputs = self.checkpoint_inputs(scope).await?;
            crate::checkpoint::check_extends_latest(&inputs.log)?;
            let purged: Vec<_> = inputs.purges.iter().map(|p| p.run.clone()).collect();
            let leaves = next_leaves(&inputs.log.leaves, &inputs.heads, &purged);
            let unlogged = !inputs.purges.is_empty();
            if let Some(latest) = inputs.log.latest().filter(|_| leaves.is_empty() && !unlogged) {
                return Ok(MadeCheckpoint { checkpoint: latest.clone(), alteration: None });
            }
            let previous =
                inputs.log.latest().and_then(|c| c.envelope.unverified_checkpoint().ok());
            let after = inputs.log.leaves.len() as u64;
            let mut all = inputs.log.leaves;
            all.extend(leaves.iter().cloned());
            let checkpoint = checkpoint_for(scope.tenant(), &all, now, &key_id);
            let alteration = previous.and_then(|old| {
                let proof = crate::merkle::consistency_proof(
                    &crate::checkpoint::leaf_hashes(&all),
                    old.tree_size,
                )
                .ok()?;
                crate::checkpoint::audit(&old, &checkpoint, &all, &proof)
                    .err()
                    .map(|e| e.to_string())
            });
            let envelope = signer.sign_checkpoint(&checkpoint)?;
            let next = NewCheckpoint {
                after,
                leaves,
                purges: inputs.purges.iter().map(|p| p.id).collect(),
                checkpoint: StoredCheckpoint { tree_size: checkpoint.tree_size, envelope },
            };
            match self.append_checkpoint(scope, &next).await {
                Ok(()) => return Ok(MadeCheckpoint { checkpoint: next.checkpoint, alteration }),
                Err(Error::Unavailable { .. }) if tries < 4 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<T: StorageBackend + ?Sized> StorageBackendExt for T {}

/// Recomputes `run`'s chain from its stored bodies, seq 0 up to `end` (exclusive), page by
/// page (memory stays flat); stops early when fewer are stored (the caller compares
/// [`verified`](crate::hash::ChainVerifier::verified) with `end`).
async fn chain_until<B: StorageBackend + ?Sized>(
    store: &B,
    scope: &ReadScope,
    run: &RunId,
    end: u64,
) -> Result<crate::hash::ChainVerifier> {
    let mut verifier = crate::hash::ChainVerifier::new();
    while verifier.verified() < end {
        let after = verifier.verified().checked_sub(1).map(Seq::new).transpose()?;
        let page = store.read_transitions(scope, run, after, crate::model::MAX_PAGE_SIZE).await?;
        if page.is_empty() {
            break;
        }
        for t in page.iter().take_while(|t| t.seq.get() < end) {
            verifier.push(t).map_err(|e| e.in_run(run, None))?;
        }
    }
    Ok(verifier)
}
