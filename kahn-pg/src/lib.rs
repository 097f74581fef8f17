//! # kahn-pg
//!
//! KAHN's Postgres adapter: a [`StorageBackend`] on PostgreSQL (sqlx), where tenancy is
//! enforced **by the database** with Row-Level Security that cannot be silently inert.
//!
//! * **Two DSNs, two modes.** [`PgBackend::connect_admin`] takes the admin DSN: it runs the
//!   versioned migrations (schema `kahn`, roles, tables, policies, grants, functions) and can
//!   provision tenants, issue keys and link orgs. [`PgBackend::connect_app`] takes the app DSN
//!   (the server's): it first checks that the role is not a superuser, has no BYPASSRLS, owns
//!   no tenant table, that every tenant table has RLS enabled *and* forced with exactly KAHN's
//!   policies, and that the role's privileges are exactly the designed ones, and refuses to
//!   start otherwise ([`UnsafeAppRole`], naming each problem's fix).
//! * **Tenant per transaction.** Every tenant-data operation runs in one transaction that
//!   first enters the tenant (`SELECT kahn.enter_tenant($1)`, a `SET LOCAL kahn.tenant` that
//!   Citus also carries to its workers): the setting ends with the
//!   transaction, so a pooled connection never carries a tenant into the next request. Reads
//!   run in `READ ONLY` transactions, so the database refuses a write even if code tried one.
//! * **Fast, serialized append, set-wise.** A constant number of statements per batch, however
//!   many runs it names: the run rows that exist are locked (`FOR UPDATE`) in run id order,
//!   [`AppendPlan`](kahn_core::rules::AppendPlan) asks for at most two chain links per run (one
//!   query for the batch), the new runs are created once with their final summary (one
//!   `INSERT`; the append is made again if another created one of them meanwhile), the new rows
//!   of every run go in with one `INSERT … SELECT FROM UNNEST(…)` and the summaries of the runs
//!   that existed change with one `UPDATE`. On plain Postgres, a pushed run's next chunk (one
//!   run, links computed ahead, past seq 0) sends its rows while the chunk before it still
//!   holds the run's lock, written on the condition that the tip it waited for is the one they
//!   were chained from (a wrong guess costs the rows crossing the wire twice, never a wrong
//!   row); and a run's progress is kept in process under the head it leads to, so that the
//!   next chunk, when its links were computed from that head, writes its rows, node summaries
//!   and run summary in that one statement.
//! * **Exact content.** Transition bodies and graphs are stored as their RFC 8785 canonical
//!   JSON *text* (not jsonb, which refuses `\u0000` and reformats), so reading back gives the
//!   hashed content and the chain recomputes.
//!
//! ## What each mode supports
//!
//! | method | admin DSN | app DSN |
//! | --- | --- | --- |
//! | `append` with a key's scope, `list_runs`, `get_run`, `read_transitions` | yes | yes |
//! | `append` with an operator's scope (`operator_write_scope`, `authorize_operator`) | yes | [`Error::Unsupported`] |
//! | `authenticate_api_key` (records the key's last use off the request path), `lookup_tenant_by_org`, `lookup_tenant_by_sub`, `get_tenant`, `list_tenants` | yes | yes, through SECURITY DEFINER functions |
//! | `provision_personal_tenant` | yes | yes, through `kahn.provision_personal_tenant` |
//! | `purge_expired` | any request: an instant, one tenant, a dry run | only [`PurgeRequest::at_store_clock`] (the **database's** clock, every tenant); anything else is [`Error::Unsupported`] |
//! | `provision_tenant`, `update_tenant`, `delete_tenant`, `create_api_key`, `revoke_api_key`, `list_api_keys`, `export_tenant`, `import_tenant` | yes | [`Error::Unsupported`], naming the admin DSN |
//! | `read_checkpoint_log`, `checkpoint_inputs` (one `REPEATABLE READ` snapshot each), `append_checkpoint` | yes | yes (the app role inserts leaves and checkpoints, never changes or deletes them) |
//! | `ping` | yes | yes |
//!
//! Retention counts from each run's `received_at`: the database's `now()` at the last append
//! that stored something for it (migration 0004 gave runs stored before it the migration's
//! time). Keys resolve only while neither revoked nor expired at the database's clock.
//!
//! ```no_run
//! # async fn demo() -> kahn_core::Result<()> {
//! use kahn_core::{NewTenant, StorageBackend, StorageBackendExt};
//! use kahn_pg::PgBackend;
//!
//! // Once, as the operator: migrate and provision.
//! let admin = PgBackend::connect_admin("postgres://postgres@127.0.0.1/kahn").await?;
//! let tenant = admin.provision_tenant(&NewTenant::new("choco")?).await?;
//! let key = admin.issue_api_key(tenant.id).await?;
//!
//! // The server: the app role, checked at startup.
//! let app = PgBackend::connect_app("postgres://kahn_app@127.0.0.1/kahn").await?;
//! # Ok(()) }
//! ```

mod append;
mod check;
mod checkpoint;
pub mod citus;
mod control;
mod error;
mod migrate;
mod progress;
mod progress_cache;
mod read;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use kahn_core::{
    ApiKey, ApiKeyId, ApiKeyInfo, AppendBatch, AppendReport, Error, IssuedApiKey, KeyUseThrottle,
    NewApiKey, NewTenant, OrgId, PurgeOutcome, PurgeReport, PurgeRequest, ReadScope, Result, RunId,
    RunPage, RunQuery, RunSummary, Seq, StorageBackend, StoredTransition, Tenant, TenantChange,
    TenantId, TenantRecord, TenantSummary, WriteScope,
};
use sqlx_core::query::query;
use sqlx_core::row::Row;
pub use sqlx_postgres::PgTransaction;
use tokio::sync::Semaphore;

pub use check::TENANT_TABLES;
pub use error::{PgError, PgErrorKind, RoleProblem, UnsafeAppRole};
pub use migrate::migrator;
pub use sqlx_core;
pub use sqlx_postgres;
pub use sqlx_postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::db;

/// The role the migrations create for the server: `LOGIN NOSUPERUSER NOBYPASSRLS`, owns
/// nothing, `SELECT, INSERT` on the log.
pub const APP_ROLE: &str = "kahn_app";

/// The `NOLOGIN` role the migrations create to own the SECURITY DEFINER functions; its own
/// policies let it see every tenant.
pub const DEFINER_ROLE: &str = "kahn_definer";

/// Which DSN a [`PgBackend`] was built from, and so what it may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The admin DSN: migrations, provisioning, keys, and everything else.
    Admin,
    /// The app DSN (the server's): tenant data under RLS, pre-tenant lookups, personal tenants
    /// and the purge at the database's clock through SECURITY DEFINER functions; the rest of
    /// the control plane is [`Error::Unsupported`].
    App,
}

/// A [`StorageBackend`] on PostgreSQL. Cheap to clone (it shares one pool).
///
/// Appends hold at most [`write_concurrency`](Self::write_concurrency) of the pool's
/// connections at once (by default all but a quarter of them, at least one kept back), so
/// reads and key lookups always find a connection however many appends are waiting: a flood
/// of writes slows writes, never reads.
#[derive(Clone, Debug)]
pub struct PgBackend {
    pool: PgPool,
    mode: Mode,
    writes: Arc<Semaphore>,
    write_slots: usize,
    /// Which keys' use is due to be recorded (shared by the clones of this backend).
    key_uses: Arc<KeyUseThrottle>,
    /// How lone statements run: in a transaction of their own behind a transaction pooler.
    lone: control::Lone,
    /// Plain Postgres or Citus, learned at the first append (shared by the clones).
    engine: Arc<OnceLock<append::Engine>>,
    /// The progress of the runs appended to last (shared by the clones).
    progress: Arc<progress_cache::ProgressCache>,
}

/// Whether `url` turns sqlx's statement cache off (`statement-cache-capacity=0`): what an app
/// DSN through a transaction-pooling pgbouncer without prepared-statement support must say.
fn statement_cache_off(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, params)| {
        params.split('&').any(|kv| {
            kv.split_once('=').is_some_and(|(k, v)| k == "statement-cache-capacity" && v == "0")
        })
    })
}

/// The connections of a pool of `max` that appends may hold at once: all but a quarter of
/// them (at least one kept for reads), and at least one.
fn default_write_slots(max: u32) -> usize {
    let max = max as usize;
    max.saturating_sub((max / 4).max(1)).max(1)
}

impl PgBackend {
    /// Connects with the admin DSN and runs the migrations.
    ///
    /// # Errors
    /// [`Error::Backend`] when the server is unreachable or a migration fails (its
    /// [`PgError::kind`] says which).
    pub async fn connect_admin(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new().max_connections(4).connect(url).await.map_err(db)?;
        Self::admin_from_pool(pool).await
    }

    /// An admin backend on an existing pool (logged in with the admin DSN); runs the
    /// migrations.
    ///
    /// # Errors
    /// As [`connect_admin`](Self::connect_admin).
    pub async fn admin_from_pool(pool: PgPool) -> Result<Self> {
        let backend = Self::new(pool, Mode::Admin);
        backend.migrate().await?;
        Ok(backend)
    }

    /// Connects with the app DSN (the server's) and checks the role: refuses a superuser, a
    /// BYPASSRLS role, a role owning a tenant table (or a member of its owner or of
    /// `kahn_definer`), a role that may rewrite the log or holds any privilege beyond the
    /// designed ones (tables, columns, functions, schema), and a database where a tenant table
    /// has RLS disabled or not forced, or carries a policy that is not exactly KAHN's.
    ///
    /// # Errors
    /// [`Error::Backend`] whose source is an [`UnsafeAppRole`] naming every problem and its
    /// fix; or, when the server is unreachable, a [`PgError`].
    ///
    /// A DSN that turns sqlx's statement cache off (`?statement-cache-capacity=0`, for a
    /// transaction-pooling pgbouncer without prepared-statement support: `kahn-pg/README.md`,
    /// "Running several servers") also makes the backend
    /// [`behind_transaction_pooler`](Self::behind_transaction_pooler).
    pub async fn connect_app(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new().max_connections(10).connect(url).await.map_err(db)?;
        Ok(Self::app_from_pool(pool).await?.behind_transaction_pooler(statement_cache_off(url)))
    }

    /// Runs every statement inside an explicit transaction, lone lookups and charges included
    /// (two more round trips each), when `on`: behind a transaction-pooling pgbouncer without
    /// prepared-statement support (Debian 12's 1.18), where the pool's statement cache must be
    /// off too, sqlx's parse and execute of a statement outside a transaction may reach two
    /// different server connections. Off by default; [`connect_app`](Self::connect_app) turns
    /// it on for a DSN with `statement-cache-capacity=0`.
    #[must_use]
    pub fn behind_transaction_pooler(mut self, on: bool) -> Self {
        self.lone = if on { control::Lone::InTransaction } else { control::Lone::Direct };
        self
    }

    /// An app backend on an existing pool (logged in with the app DSN); runs the role check
    /// of [`connect_app`](Self::connect_app).
    ///
    /// # Errors
    /// As [`connect_app`](Self::connect_app).
    pub async fn app_from_pool(pool: PgPool) -> Result<Self> {
        check::check_app_role(&pool).await?;
        Ok(Self::new(pool, Mode::App))
    }

    fn new(pool: PgPool, mode: Mode) -> Self {
        let write_slots = default_write_slots(pool.options().get_max_connections());
        Self {
            pool,
            mode,
            writes: Arc::new(Semaphore::new(write_slots)),
            write_slots,
            key_uses: Arc::new(KeyUseThrottle::new()),
            lone: control::Lone::Direct,
            engine: Arc::new(OnceLock::new()),
            progress: Arc::default(),
        }
    }

    /// Sets how many appends may hold a connection at once (at least 1). Keep it below the
    /// pool's size, or appends can take every connection and starve reads.
    #[must_use]
    pub fn with_write_concurrency(mut self, slots: usize) -> Self {
        self.write_slots = slots.max(1);
        self.writes = Arc::new(Semaphore::new(self.write_slots));
        self
    }

    /// How many appends may hold a connection at once.
    pub fn write_concurrency(&self) -> usize {
        self.write_slots
    }

    /// Runs the pending migrations (admin mode only). Re-runnable; the role creation is
    /// guarded, so it runs in every database of one cluster. On a database with the `citus`
    /// extension it then places the tables ([`citus`]: reference, or distributed by
    /// `tenant_id`).
    ///
    /// # Errors
    /// [`Error::Unsupported`] in app mode; [`Error::Backend`] when a migration fails.
    pub async fn migrate(&self) -> Result<()> {
        self.require_admin("migrate (run the migrations with the admin DSN: `kahn migrate`)")?;
        migrator().run(&self.pool).await.map_err(|e| db(e.into()))?;
        // Runs stored under the old status rule (marked by migration 0005) get the new one's
        // values, computed by kahn-core from their transitions.
        let runs = progress::recompute_marked(&self.pool).await?;
        if runs > 0 {
            tracing::info!(runs, "recomputed run status and node summaries");
        }
        // On Citus, the tables are then placed: reference or distributed by tenant_id.
        if citus::is_citus(&self.pool).await? {
            let placed = citus::distribute(&self.pool).await?;
            if placed > 0 {
                tracing::info!(tables = placed, "distributed the tables on Citus");
            }
        }
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The mode (which DSN this backend was built from).
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A `READ ONLY` transaction whose tenant is the scope's, for queries of your own over
    /// the `kahn` tables: the same transaction every read method of this backend runs in.
    /// Row-Level Security shows it only the scope's rows, and the database refuses any write.
    ///
    /// # Errors
    /// [`Error::Backend`] when the server fails.
    pub async fn read_transaction(&self, scope: &ReadScope) -> Result<PgTransaction<'static>> {
        self.read_tx(scope.tenant()).await
    }

    /// A read-write transaction whose tenant is the scope's: the same transaction
    /// [`append`](StorageBackend::append) runs in. Under the app role the grants still apply
    /// (the log is append-only).
    ///
    /// # Errors
    /// [`Error::Backend`] when the server fails.
    pub async fn write_transaction(&self, scope: &WriteScope) -> Result<PgTransaction<'static>> {
        self.write_tx(scope).await
    }

    /// Plain Postgres or Citus ([`citus::is_citus`]), asked once, in the append's transaction
    /// (behind a transaction pooler a lone statement would need one of its own).
    async fn engine(&self, conn: &mut sqlx_postgres::PgConnection) -> Result<append::Engine> {
        if let Some(engine) = self.engine.get() {
            return Ok(*engine);
        }
        let engine = if citus::is_citus(conn).await? {
            append::Engine::Citus
        } else {
            append::Engine::Postgres
        };
        Ok(*self.engine.get_or_init(|| engine))
    }

    /// Refuses `operation` (which names the admin DSN as the way to do it) in app mode.
    fn require_admin(&self, operation: &'static str) -> Result<()> {
        match self.mode {
            Mode::Admin => Ok(()),
            Mode::App => Err(Error::Unsupported { backend: "postgres (app DSN)", operation }),
        }
    }

    /// Begins a read-write transaction for the scope's tenant. For a scope resolved from a key,
    /// it checks, in the same statement that sets the tenant, that the key is still active
    /// (neither revoked nor expired): revocation and expiry cut off scopes already resolved.
    /// An operator's scope (no key) writes only with the admin DSN, to an existing tenant.
    async fn write_tx(&self, scope: &WriteScope) -> Result<PgTransaction<'static>> {
        let Some(key) = scope.api_key() else {
            self.require_admin(
                "appending with an operator's scope (only the admin DSN may write any tenant)",
            )?;
            let mut tx = self.pool.begin().await.map_err(db)?;
            let exists: bool = query(
                "SELECT kahn.enter_tenant($1) AS tenant, \
                        EXISTS (SELECT FROM kahn.tenants WHERE id = $1) AS exists",
            )
            .bind(scope.tenant().as_uuid())
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .try_get("exists")
            .map_err(db)?;
            if !exists {
                return Err(Error::not_found("tenant", scope.tenant()));
            }
            return Ok(tx);
        };
        let mut tx = self.pool.begin().await.map_err(db)?;
        let owner: Option<uuid::Uuid> =
            query("SELECT kahn.enter_tenant($1) AS tenant, kahn.lookup_api_key($2) AS owner")
                .bind(scope.tenant().as_uuid())
                .bind(key.hash().as_bytes().as_slice())
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?
                .try_get("owner")
                .map_err(db)?;
        if owner != Some(*scope.tenant().as_uuid()) {
            return Err(Error::Unauthorized(
                "the API key of this scope is unknown, revoked or expired".into(),
            ));
        }
        Ok(tx)
    }

    /// Records a use of `key` when the throttle says it is due: on a task of its own, so
    /// authenticating stays a read and never waits for (or fails because of) the write.
    fn record_key_use(&self, key: &ApiKey) {
        let hash = key.hash();
        if !self.key_uses.due(&hash) {
            return;
        }
        let pool = self.pool.clone();
        let lone = self.lone;
        tokio::spawn(async move {
            match control::touch_api_key(&pool, lone, &hash).await {
                Ok(()) => {}
                Err(e) if pool.is_closed() => {
                    tracing::debug!(
                        error = %e.chain(),
                        "not recording an API key's last use: pool closed"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "could not record an API key's last use");
                }
            }
        });
    }

    /// Begins a `READ ONLY` transaction for `tenant`, first entering it with
    /// `kahn.enter_tenant` (a transaction-local `SET LOCAL kahn.tenant`, which Citus carries to
    /// the workers where `set_config` would not reach them). Writes go through
    /// [`write_tx`](Self::write_tx), which also checks the key.
    ///
    /// Reads are planned with their parameters (`plan_cache_mode = force_custom_plan`, also
    /// transaction-local, set in the same statement). A prepared statement's generic plan knows
    /// neither the `LIMIT` nor which filters are NULL: for the run listing it scanned all the
    /// tenant's runs and sorted them (15 ms at 50,000 runs, linear) where the custom plan walks
    /// `runs_by_activity` and stops after the page (0.09 ms).
    async fn read_tx(&self, tenant: TenantId) -> Result<PgTransaction<'static>> {
        self.read_tx_begun_with(tenant, "BEGIN READ ONLY").await
    }

    /// As [`read_tx`](Self::read_tx), one snapshot for the whole transaction
    /// (`REPEATABLE READ`): what the checkpoint log's reads need, so that what one statement
    /// read and what the next reads were committed together. On Citus a tenant's rows are on
    /// one worker, whose transaction takes the same isolation level.
    async fn snapshot_tx(&self, tenant: TenantId) -> Result<PgTransaction<'static>> {
        self.read_tx_begun_with(tenant, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await
    }

    /// Begins a read-only transaction with `begin` (fixed text) and enters `tenant`, as
    /// [`read_tx`](Self::read_tx) describes.
    async fn read_tx_begun_with(
        &self,
        tenant: TenantId,
        begin: &'static str,
    ) -> Result<PgTransaction<'static>> {
        let mut tx = self.pool.begin_with(begin).await.map_err(db)?;
        query(
            "SELECT kahn.enter_tenant($1), \
                    pg_catalog.set_config('plan_cache_mode', 'force_custom_plan', true)",
        )
        .bind(tenant.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        Ok(tx)
    }
}

/// What the app DSN answers the control-plane operations that are the operator's.
mod admin_only {
    pub(crate) const UPDATE_TENANT: &str = "update_tenant (change tenants with the admin DSN: `kahn tenant set-retention`, `rename`, \
         `unlink-org`)";
    pub(crate) const DELETE_TENANT: &str =
        "delete_tenant (delete tenants with the admin DSN: `kahn tenant delete`)";
    pub(crate) const PROVISION_TENANT: &str =
        "provision_tenant (provision with the admin DSN: `kahn tenant provision`)";
    pub(crate) const CREATE_API_KEY: &str =
        "create_api_key (issue keys with the admin DSN: `kahn tenant issue-key`)";
    pub(crate) const REVOKE_API_KEY: &str = "revoke_api_key (revoke keys with the admin DSN)";
    pub(crate) const LIST_API_KEYS: &str =
        "list_api_keys (list keys with the admin DSN: `kahn tenant keys`)";
    pub(crate) const EXPORT_TENANT: &str =
        "export_tenant (the app role may not read keys; export with the admin DSN)";
    pub(crate) const IMPORT_TENANT: &str = "import_tenant (the app role may not create tenants; import with the admin DSN: \
         `kahn copy`)";
    pub(crate) const AUTHORIZE_OPERATOR: &str =
        "an operator's write scope (only the admin DSN may write any tenant: `kahn copy`)";
}

#[async_trait]
impl StorageBackend for PgBackend {
    async fn provision_tenant(&self, req: &NewTenant) -> Result<Tenant> {
        self.require_admin(admin_only::PROVISION_TENANT)?;
        control::provision_tenant(&self.pool, req).await
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        control::get_tenant(&self.pool, self.lone, tenant).await
    }

    async fn update_tenant(&self, tenant: TenantId, change: &TenantChange) -> Result<Tenant> {
        self.require_admin(admin_only::UPDATE_TENANT)?;
        control::update_tenant(&self.pool, tenant, change).await
    }

    async fn delete_tenant(&self, tenant: TenantId) -> Result<PurgeReport> {
        self.require_admin(admin_only::DELETE_TENANT)?;
        control::delete_tenant(&self.pool, tenant).await
    }

    async fn provision_personal_tenant(&self, sub: &str) -> Result<TenantId> {
        control::provision_personal_tenant(&self.pool, self.lone, sub).await
    }

    async fn create_api_key(&self, tenant: TenantId, req: &NewApiKey) -> Result<IssuedApiKey> {
        self.require_admin(admin_only::CREATE_API_KEY)?;
        control::create_api_key(&self.pool, tenant, req).await
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        self.require_admin(admin_only::REVOKE_API_KEY)?;
        control::revoke_api_key(&self.pool, tenant, key).await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
        self.require_admin(admin_only::LIST_API_KEYS)?;
        control::list_api_keys(&self.pool, tenant).await
    }

    async fn export_tenant(&self, tenant: TenantId) -> Result<TenantRecord> {
        self.require_admin(admin_only::EXPORT_TENANT)?;
        control::export_tenant(&self.pool, tenant).await
    }

    async fn import_tenant(&self, record: &TenantRecord) -> Result<Tenant> {
        self.require_admin(admin_only::IMPORT_TENANT)?;
        control::import_tenant(&self.pool, record).await
    }

    async fn authorize_operator(&self, tenant: TenantId) -> Result<()> {
        self.require_admin(admin_only::AUTHORIZE_OPERATOR)?;
        control::tenant_exists(&self.pool, tenant).await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantSummary>> {
        control::list_tenants(&self.pool, self.lone).await
    }

    async fn authenticate_api_key(&self, key: &ApiKey) -> Result<Option<TenantId>> {
        let tenant = control::lookup(&self.pool, self.lone, control::Lookup::ApiKey(key)).await?;
        if tenant.is_some() {
            self.record_key_use(key);
        }
        Ok(tenant)
    }

    async fn lookup_tenant_by_org(&self, org: &OrgId) -> Result<Option<TenantId>> {
        control::lookup(&self.pool, self.lone, control::Lookup::Org(org)).await
    }

    async fn lookup_tenant_by_sub(&self, sub: &str) -> Result<Option<TenantId>> {
        control::lookup(&self.pool, self.lone, control::Lookup::Sub(sub)).await
    }

    async fn append(&self, scope: &WriteScope, batch: &AppendBatch) -> Result<AppendReport> {
        // A write slot first, within the pool's own acquire timeout: appends queue here, not
        // in the pool, so reads always find a connection.
        let patience = self.pool.options().get_acquire_timeout();
        let _slot = match tokio::time::timeout(patience, self.writes.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) | Err(_) => {
                return Err(Error::unavailable(
                    error::BACKEND,
                    format!(
                        "all {} write slots stayed busy for {} s; nothing was written",
                        self.write_slots,
                        patience.as_secs()
                    ),
                )
                .with_retry_after(std::time::Duration::from_secs(1)));
            }
        };
        // A run the append found missing but a concurrent append created before this one
        // could: the plan assumed an empty run, so the append is rolled back and made again,
        // that run then existing and locked like any other. Every attempt but the last follows
        // the creation of one more of the batch's runs by another append, so one attempt more
        // than the batch has runs is enough (the bound only matters if purges keep removing
        // runs that other appends keep creating again).
        let attempts = batch.runs().len() + 1;
        for attempt in 1..=attempts {
            let mut tx = self.write_tx(scope).await?;
            let engine = self.engine(&mut tx).await?;
            if let Some(report) =
                append::append(&mut tx, scope.tenant(), batch, engine, &self.progress).await?
            {
                tx.commit().await.map_err(db)?;
                return Ok(report);
            }
            tx.rollback().await.map_err(db)?;
            tracing::debug!(
                attempt,
                "runs of the batch were created concurrently; appending again"
            );
        }
        Err(Error::unavailable(
            error::BACKEND,
            format!(
                "runs of the batch kept being created by concurrent appends ({attempts} \
                 attempts); nothing was written"
            ),
        )
        .with_retry_after(std::time::Duration::from_secs(1)))
    }

    async fn list_runs(&self, scope: &ReadScope, q: &RunQuery) -> Result<RunPage> {
        q.validate()?;
        let mut tx = self.read_tx(scope.tenant()).await?;
        let page = read::list_runs(&mut tx, scope.tenant(), q).await?;
        tx.commit().await.map_err(db)?;
        Ok(page)
    }

    async fn get_run(&self, scope: &ReadScope, run: &RunId) -> Result<RunSummary> {
        let mut tx = self.read_tx(scope.tenant()).await?;
        let summary = read::get_run(&mut tx, scope.tenant(), run).await?;
        tx.commit().await.map_err(db)?;
        Ok(summary)
    }

    async fn read_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<StoredTransition>> {
        let mut tx = self.read_tx(scope.tenant()).await?;
        let rows = read::read_transitions(&mut tx, scope.tenant(), run, after, limit).await?;
        tx.commit().await.map_err(db)?;
        Ok(rows)
    }

    async fn purge_expired(&self, req: &PurgeRequest) -> Result<PurgeOutcome> {
        control::purge_expired(&self.pool, self.mode, req).await
    }

    /// Shared by every server on the database: one row per tenant in `kahn.ingest_budget`,
    /// charged by `kahn.charge_ingest` at the database's clock.
    async fn charge_ingest(
        &self,
        scope: &WriteScope,
        cost: std::num::NonZeroU32,
        quota: kahn_core::IngestQuota,
    ) -> Result<kahn_core::Admission> {
        control::charge_ingest(&self.pool, self.lone, scope.tenant(), cost, quota).await
    }

    /// One purger at a time across every server on the database, about once per `every`:
    /// `kahn.take_purge_turn`, then `kahn.purge_expired()` in the same transaction.
    async fn purge_expired_in_turn(
        &self,
        every: std::time::Duration,
    ) -> Result<kahn_core::PurgeTurn> {
        control::purge_in_turn(&self.pool, every).await
    }

    /// Read in one snapshot (`REPEATABLE READ READ ONLY`), so no checkpoint is read without
    /// the leaves it covers.
    async fn read_checkpoint_log(
        &self,
        scope: &ReadScope,
    ) -> Result<kahn_core::checkpoint::CheckpointLog> {
        let mut tx = self.snapshot_tx(scope.tenant()).await?;
        let log = checkpoint::read_log(&mut tx, scope.tenant()).await?;
        tx.commit().await.map_err(db)?;
        Ok(log)
    }

    /// Read in one snapshot (`REPEATABLE READ READ ONLY`): the retention purge deletes a run
    /// and inserts its purge record in one transaction, so the snapshot holds one of them.
    async fn checkpoint_inputs(
        &self,
        scope: &ReadScope,
    ) -> Result<kahn_core::checkpoint::CheckpointInputs> {
        let mut tx = self.snapshot_tx(scope.tenant()).await?;
        let inputs = checkpoint::inputs(&mut tx, scope.tenant()).await?;
        tx.commit().await.map_err(db)?;
        Ok(inputs)
    }

    /// One read-write transaction for the scope's tenant (the app role may insert leaves and
    /// checkpoints, never change or delete them), serialized per tenant by a
    /// transaction-scoped advisory lock; the tenant's primary keys refuse an interleaving even
    /// without it. A tenant that does not exist is [`Error::NotFound`].
    async fn append_checkpoint(
        &self,
        scope: &ReadScope,
        next: &kahn_core::checkpoint::NewCheckpoint,
    ) -> Result<()> {
        next.validate(scope.tenant())?;
        let tenant = scope.tenant();
        let mut tx = self.pool.begin().await.map_err(db)?;
        query("SELECT kahn.enter_tenant($1)")
            .bind(tenant.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        match checkpoint::append(&mut tx, tenant, next).await? {
            Ok(()) => {
                tx.commit().await.map_err(db)?;
                Ok(())
            }
            Err(refused) => {
                tx.rollback().await.map_err(db)?;
                match refused {
                    checkpoint::Refused::NoTenant => Err(Error::not_found("tenant", tenant)),
                    checkpoint::Refused::Moved => {
                        let mut tx = self.snapshot_tx(tenant).await?;
                        let found = checkpoint::size(&mut tx, tenant).await?;
                        tx.commit().await.map_err(db)?;
                        Err(kahn_core::checkpoint::log_moved(error::BACKEND, next.after, found))
                    }
                }
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        // The simple protocol (no prepared statement): one round trip, safe behind a
        // transaction-pooling pgbouncer.
        sqlx_core::raw_sql::raw_sql("SELECT 1").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    fn pool_status(&self) -> Option<kahn_core::PoolStatus> {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        Some(kahn_core::PoolStatus::new(
            self.pool.size(),
            idle,
            self.pool.options().get_max_connections(),
        ))
    }
}

#[cfg(test)]
mod pooler_tests {
    use super::statement_cache_off;

    #[test]
    fn a_dsn_without_statement_cache_is_behind_a_pooler() {
        assert!(statement_cache_off("postgres://kahn_app@h:6432/kahn?statement-cache-capacity=0"));
        assert!(statement_cache_off("postgres://u@h/d?sslmode=disable&statement-cache-capacity=0"));
        assert!(!statement_cache_off("postgres://u@h/d"));
        assert!(!statement_cache_off("postgres://u@h/d?statement-cache-capacity=10"));
        assert!(!statement_cache_off("postgres://u@h/d?x-statement-cache-capacity=0"));
    }
}
