//! # kahn-sqlite
//!
//! KAHN's embedded adapter: a [`StorageBackend`] on one SQLite file (bundled SQLite, no
//! setup). It is the zero-setup default, `sqlite://kahn.db`.
//!
//! * **Durable.** WAL journal with `synchronous = FULL`: a committed append survives a crash
//!   or power loss.
//! * **Never blocks the runtime.** Each connection lives on its own thread; async methods send
//!   the work there and await the answer.
//! * **Reads beside writes.** One writer connection (appends serialize in the adapter) and a
//!   pool of read-only reader connections that WAL lets read while the writer appends; the
//!   WAL is checkpointed into the file on a thread of its own, not in the writer's commits.
//! * **Closes whole.** Dropping the backend waits for its connections to close; the last one
//!   copies the WAL into the file, so once the drop returns the file alone is the store.
//! * **A pushed run's next chunk reads no node summaries back.** The writer keeps the progress
//!   its last append of a run left (kahn-core's `ProgressCache`, keyed by the run's head: a run
//!   another append moved on, through this backend or another on the file, is not found) and
//!   the run's next chunk starts from it; one not found reads all the run's node summaries
//!   once (at most 10,000), so the chunk after it is found again.
//! * **Tenancy by the adapter.** Every statement on tenant data binds the scope's tenant; the
//!   schema leads every key with `tenant_id`.
//! * **Retention by receipt.** Each run keeps `received_at`, the store's clock at the last
//!   append that stored something; a purge removes runs past their tenant's retention from
//!   it, one tenant per transaction, so one tenant's failure never undoes another's purge.
//! * **Checkpoint logs.** Each tenant's leaves and signed checkpoints are append-only rows,
//!   appended only onto the log a checkpoint was made against; a purge records each run it
//!   removes, in its own transaction, for the next checkpoint to log.
//! * **Key use off the request path.** Authenticating is a read; a key's `last_used_at` is
//!   queued on the writer at most once a minute per key and never awaited.
//!
//! ```no_run
//! # async fn demo() -> kahn_core::Result<()> {
//! use kahn_sqlite::SqliteBackend;
//! let store = SqliteBackend::connect("sqlite://kahn.db").await?;
//! # Ok(()) }
//! ```

mod error;
mod schema;
mod store;
mod wal;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kahn_core::checkpoint::{CheckpointInputs, CheckpointLog, NewCheckpoint};
use kahn_core::{
    ApiKey, ApiKeyId, ApiKeyInfo, AppendBatch, AppendReport, Error, IssuedApiKey, KeyUseThrottle,
    NewApiKey, NewTenant, OrgId, ProgressCache, PurgeFailure, PurgeOutcome, PurgeReport,
    PurgeRequest, ReadScope, Result, RunId, RunPage, RunQuery, RunSummary, Seq, StorageBackend,
    StoredTransition, Tenant, TenantChange, TenantId, TenantRecord, TenantSummary, WriteScope,
};
use rusqlite::{Connection, OpenFlags};

use crate::error::db;
use crate::worker::{Pool, Threads};

/// Where and how to open the database.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    location: Location,
    readers: usize,
    queue: usize,
}

/// Default bound of each connection pool's queue of waiting calls.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

#[derive(Clone, Debug)]
enum Location {
    File(PathBuf),
    Memory,
}

impl SqliteOptions {
    /// A database file at `path`, created when missing.
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self {
            location: Location::File(path.as_ref().to_owned()),
            readers: 4,
            queue: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// A private in-memory database (one connection; gone when the backend is dropped).
    pub fn memory() -> Self {
        Self { location: Location::Memory, readers: 0, queue: DEFAULT_QUEUE_CAPACITY }
    }

    /// Parses `sqlite://PATH`, `sqlite:PATH`, `sqlite::memory:` or a plain path.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `database_url` for another scheme or an empty path.
    pub fn from_url(url: &str) -> Result<Self> {
        if url == "sqlite::memory:" || url == "sqlite://:memory:" {
            return Ok(Self::memory());
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite:") {
            rest.strip_prefix("//").unwrap_or(rest)
        } else if let Some((scheme, _)) = url.split_once("://") {
            return Err(Error::invalid(
                "database_url",
                format!("{scheme}:// is not a SQLite URL (expected sqlite://PATH)"),
            ));
        } else {
            url
        };
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::invalid("database_url", "names no database file"));
        }
        Ok(Self::file(path))
    }

    /// The most calls that may wait for the writer (and, separately, for the readers); one
    /// more fails at once with [`Error::Unavailable`] instead of queueing without bound
    /// (default [`DEFAULT_QUEUE_CAPACITY`]; at least 1).
    #[must_use]
    pub fn queue_capacity(mut self, calls: usize) -> Self {
        self.queue = calls.max(1);
        self
    }

    /// Number of reader connections (default 4; 0 sends reads to the writer).
    #[must_use]
    pub fn readers(mut self, n: usize) -> Self {
        if matches!(self.location, Location::File(_)) {
            self.readers = n;
        }
        self
    }
}

/// KAHN on SQLite. Cheap to share: wrap it in an `Arc` (or `Arc<dyn StorageBackend>`).
#[derive(Debug)]
pub struct SqliteBackend {
    // Dropped in this order, each waiting for its threads: the read-only readers, the writer,
    // then the checkpointer's connection, closed last, which copies the WAL into the file and
    // removes it (a read-only connection closed last could not).
    readers: Option<Pool>,
    writer: Pool,
    _checkpointer: Threads,
    path: Option<PathBuf>,
    /// When a key's use is next worth recording (`api_keys.last_used_at`).
    key_uses: KeyUseThrottle,
    /// The progress of the runs appended to last (see `store::append`); only the writer's
    /// thread takes the lock.
    progress: Arc<Mutex<ProgressCache>>,
}

/// Whether [`configure`] switches the connection's database to write-ahead logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
    /// Turn WAL on (the file's writer, once; readers and in-memory databases inherit or skip it).
    EnableWal,
    /// Leave the journal mode as it is.
    Keep,
}

fn configure(conn: &Connection, journal: Journal) -> Result<()> {
    if journal == Journal::EnableWal {
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(db)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(
                "sqlite",
                format!("could not enable WAL (journal_mode is {mode})"),
            ));
        }
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 10000;
         PRAGMA cache_size = -16000;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(db)
}

/// Creates the database file, when it does not exist yet, readable and writable by its owner
/// only (0600), whatever the umask: it holds every tenant's data and API key hashes. SQLite
/// then opens an existing file, and creates its `-wal` and `-shm` files with the database
/// file's own mode (its unix VFS copies it, bypassing the umask), so they are 0600 too. An
/// existing file keeps the mode its operator gave it.
#[cfg(unix)]
fn create_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let created = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path);
    let cannot = |e: std::io::Error| {
        Error::backend("sqlite", format!("cannot create {}: {e}", path.display()))
    };
    match created {
        // The umask can only narrow 0600; set it exactly (a umask of 0o200 would leave the
        // owner unable to write).
        Ok(file) => file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(cannot),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(cannot(e)),
    }
}

/// Elsewhere the platform's defaults apply.
#[cfg(not(unix))]
fn create_private(_path: &Path) -> Result<()> {
    Ok(())
}

impl SqliteBackend {
    /// Opens (creating and migrating when needed) the database a URL names; see
    /// [`SqliteOptions::from_url`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad URL; [`Error::Backend`] when the file cannot be
    /// opened, is not a KAHN database, or has a newer schema.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(SqliteOptions::from_url(url)?).await
    }

    /// Opens with explicit options.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn open(options: SqliteOptions) -> Result<Self> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Opening and migrating touch the disk: do it off the runtime.
        std::thread::Builder::new()
            .name("kahn-sqlite-open".into())
            .spawn(move || {
                let _ = tx.send(Self::open_blocking(options));
            })
            .map_err(|e| Error::backend("sqlite", e))?;
        rx.await.map_err(|_| Error::backend("sqlite", "opening the database panicked"))?
    }

    fn open_blocking(options: SqliteOptions) -> Result<Self> {
        match &options.location {
            Location::Memory => {
                let mut conn = Connection::open_in_memory().map_err(db)?;
                configure(&conn, Journal::Keep)?;
                schema::migrate(&mut conn)?;
                Ok(Self {
                    readers: None,
                    writer: Pool::start("rw", vec![conn], options.queue)?,
                    _checkpointer: Threads::default(),
                    path: None,
                    key_uses: KeyUseThrottle::new(),
                    progress: Arc::default(),
                })
            }
            Location::File(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        Error::backend(
                            "sqlite",
                            format!("cannot create directory {}: {e}", dir.display()),
                        )
                    })?;
                }
                create_private(path)?;
                let mut writer = Connection::open(path).map_err(db)?;
                configure(&writer, Journal::EnableWal)?;
                schema::migrate(&mut writer)?;
                let checkpointer = Connection::open(path).map_err(db)?;
                configure(&checkpointer, Journal::Keep)?;
                // A bare handle until the writer's pool holds the writer: waiting for the
                // checkpointer before the writer is closed would never end.
                let checkpoint_thread = wal::checkpoint_in_background(&mut writer, checkpointer)?;
                let mut readers = Vec::with_capacity(options.readers);
                for _ in 0..options.readers {
                    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI;
                    let conn = Connection::open_with_flags(path, flags).map_err(db)?;
                    configure(&conn, Journal::Keep)?;
                    conn.execute_batch("PRAGMA query_only = ON").map_err(db)?;
                    readers.push(conn);
                }
                Ok(Self {
                    readers: if readers.is_empty() {
                        None
                    } else {
                        Some(Pool::start("reader", readers, options.queue)?)
                    },
                    writer: Pool::start("writer", vec![writer], options.queue)?,
                    _checkpointer: Threads::from(checkpoint_thread),
                    path: Some(path.clone()),
                    key_uses: KeyUseThrottle::new(),
                    progress: Arc::default(),
                })
            }
        }
    }

    /// The database file, unless in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The schema version this build writes.
    pub const fn schema_version() -> i64 {
        schema::SCHEMA_VERSION
    }

    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.readers.as_ref().unwrap_or(&self.writer).run(f).await
    }

    async fn write<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.writer.run(f).await
    }
}

#[async_trait]
impl StorageBackend for SqliteBackend {
    async fn provision_tenant(&self, req: &NewTenant) -> Result<Tenant> {
        let req = req.clone();
        self.write(move |c| store::provision_tenant(c, &req)).await
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        self.read(move |c| store::get_tenant(c, tenant)).await
    }

    async fn update_tenant(&self, tenant: TenantId, change: &TenantChange) -> Result<Tenant> {
        let change = change.clone();
        self.write(move |c| store::update_tenant(c, tenant, &change)).await
    }

    async fn delete_tenant(&self, tenant: TenantId) -> Result<PurgeReport> {
        self.write(move |c| store::delete_tenant(c, tenant)).await
    }

    async fn provision_personal_tenant(&self, sub: &str) -> Result<TenantId> {
        let sub = sub.to_owned();
        self.write(move |c| store::provision_personal_tenant(c, &sub)).await
    }

    async fn create_api_key(&self, tenant: TenantId, req: &NewApiKey) -> Result<IssuedApiKey> {
        let req = req.clone();
        self.write(move |c| store::create_api_key(c, tenant, &req)).await
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        self.write(move |c| store::revoke_api_key(c, tenant, key)).await
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
        self.read(move |c| store::list_api_keys(c, tenant)).await
    }

    async fn export_tenant(&self, tenant: TenantId) -> Result<TenantRecord> {
        self.read(move |c| store::export_tenant(c, tenant)).await
    }

    async fn import_tenant(&self, record: &TenantRecord) -> Result<Tenant> {
        let record = record.clone();
        self.write(move |c| store::import_tenant(c, &record)).await
    }

    /// A SQLite file is an operator's: whoever holds the handle may write any tenant.
    async fn authorize_operator(&self, tenant: TenantId) -> Result<()> {
        self.read(move |c| store::tenant_exists(c, tenant)).await
    }

    async fn list_tenants(&self) -> Result<Vec<TenantSummary>> {
        self.read(|c| store::list_tenants(c)).await
    }

    async fn authenticate_api_key(&self, key: &ApiKey) -> Result<Option<TenantId>> {
        let (hash, now) = (key.hash(), store::now_micros());
        let tenant = self.read(move |c| store::authenticate_api_key(c, hash, now)).await?;
        // Record the use at most once a minute per key, off the request's path: queued on
        // the writer and not awaited; a full queue skips it rather than slow or fail this.
        if tenant.is_some() && self.key_uses.due(&hash) {
            let queued = self.writer.submit(move |c| {
                if let Err(e) = store::record_key_use(c, hash, now) {
                    tracing::warn!(error = %e.chain(), "could not record an API key's last use");
                }
            });
            if !queued {
                tracing::debug!("writer queue full: an API key's last use was not recorded");
            }
        }
        Ok(tenant)
    }

    async fn lookup_tenant_by_org(&self, org: &OrgId) -> Result<Option<TenantId>> {
        let org = org.clone();
        self.read(move |c| store::lookup_tenant_by(c, store::TenantKey::Org(org.as_str()))).await
    }

    async fn lookup_tenant_by_sub(&self, sub: &str) -> Result<Option<TenantId>> {
        let sub = sub.to_owned();
        self.read(move |c| store::lookup_tenant_by(c, store::TenantKey::OwnerSub(&sub))).await
    }

    async fn append(&self, scope: &WriteScope, batch: &AppendBatch) -> Result<AppendReport> {
        let (tenant, batch) = (scope.tenant(), batch.clone());
        // An operator's scope carries no key; one resolved from a key must still be active.
        let key = scope.api_key().map(ApiKey::hash);
        let progress = self.progress.clone();
        self.write(move |c| store::append(c, tenant, key, &batch, &progress)).await
    }

    /// The first poll of [`append`](Self::append) puts its job on the writer's queue (nothing
    /// is awaited before), and the one writer thread takes the queue in order.
    fn appends_in_poll_order(&self) -> bool {
        true
    }

    async fn list_runs(&self, scope: &ReadScope, query: &RunQuery) -> Result<RunPage> {
        query.validate()?;
        let (tenant, query) = (scope.tenant(), query.clone());
        self.read(move |c| store::list_runs(c, tenant, &query)).await
    }

    async fn get_run(&self, scope: &ReadScope, run: &RunId) -> Result<RunSummary> {
        let (tenant, run) = (scope.tenant(), run.clone());
        self.read(move |c| store::get_run(c, tenant, &run)).await
    }

    async fn read_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<StoredTransition>> {
        let (tenant, run) = (scope.tenant(), run.clone());
        self.read(move |c| store::read_transitions(c, tenant, &run, after, limit)).await
    }

    async fn purge_expired(&self, req: &PurgeRequest) -> Result<PurgeOutcome> {
        let now = req.instant().map_or_else(store::now_micros, |t| t.timestamp_micros());
        let tenants = self
            .read({
                let only = req.tenant();
                move |c| store::retention(c, only)
            })
            .await?;
        // One transaction per tenant, each its own writer job: appends interleave, and one
        // tenant's failure is reported without undoing or hiding the others' purges.
        let mut outcome = PurgeOutcome::default();
        for (tenant, days) in tenants {
            let purged = if req.is_dry_run() {
                self.read(move |c| store::expired_of_tenant(c, tenant, days, now)).await
            } else {
                self.write(move |c| store::purge_tenant(c, tenant, days, now)).await
            };
            match purged {
                Ok(Some(report)) => outcome.reports.push(report),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%tenant, error = %error.chain(), "purging a tenant failed");
                    outcome.failures.push(PurgeFailure { tenant_id: tenant, error });
                }
            }
        }
        Ok(outcome)
    }

    async fn read_checkpoint_log(&self, scope: &ReadScope) -> Result<CheckpointLog> {
        let tenant = scope.tenant();
        self.read(move |c| store::read_checkpoint_log(c, tenant)).await
    }

    async fn checkpoint_inputs(&self, scope: &ReadScope) -> Result<CheckpointInputs> {
        let tenant = scope.tenant();
        self.read(move |c| store::checkpoint_inputs(c, tenant)).await
    }

    async fn append_checkpoint(&self, scope: &ReadScope, next: &NewCheckpoint) -> Result<()> {
        let tenant = scope.tenant();
        next.validate(tenant)?;
        let next = next.clone();
        self.write(move |c| store::append_checkpoint(c, tenant, &next)).await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db)).await
    }
}
