//! An in-memory backend: the reference implementation of the contract, for embedders' tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::admin::{
    ApiKeyRecord, KeyUseThrottle, NewApiKey, PurgeOutcome, PurgeRequest, RetiredKeys, TenantChange,
    TenantRecord, is_expired,
};
use crate::backend::StorageBackend;
use crate::batch::AppendBatch;
use crate::checkpoint::{
    CheckpointInputs, CheckpointLog, NewCheckpoint, PurgeRecord, PurgedRun, RunHead, log_moved,
};
use crate::error::{Error, Result};
use crate::hash::Digest;
use crate::id::{ApiKeyId, OrgId, RunId, Seq, TenantId};
use crate::model::{
    ApiKeyInfo, AppendReport, Cursor, IssuedApiKey, MAX_PAGE_SIZE, NewTenant, PurgeReport, RunInfo,
    RunPage, RunQuery, RunSummary, StoredTransition, Tenant, TenantSummary,
};
use crate::rules::{AppendPlan, Outcome, merge_meta, truncate_micros};
use crate::scope::{ReadScope, WriteScope};
use crate::secret::{ApiKey, ApiKeyHash};
use crate::status::Progress;
use crate::transition::RunMeta;

/// Everything in one mutex: appends serialize, reads see committed state only.
///
/// It passes the same conformance suite as the database adapters, so embedders can test
/// against it; nothing survives the process. Its clock can be replaced
/// ([`with_clock`](Self::with_clock)), so a test can let days pass for retention and key
/// expiry without waiting.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
    key_uses: KeyUseThrottle,
    clock: Clock,
}

/// The store's clock: the system's, or a test's.
#[derive(Clone, Default)]
struct Clock(Option<std::sync::Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>>);

impl Clock {
    fn now(&self) -> DateTime<Utc> {
        truncate_micros(self.0.as_ref().map_or_else(Utc::now, |f| f()))
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Clock(custom)" } else { "Clock(system)" })
    }
}

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<TenantId, Tenant>,
    keys: HashMap<ApiKeyHash, ApiKeyInfo>,
    runs: HashMap<(TenantId, RunId), StoredRun>,
    logs: HashMap<TenantId, TenantLog>,
}

/// A tenant's checkpoint log and the purge records no checkpoint has logged yet.
#[derive(Debug, Default)]
struct TenantLog {
    log: CheckpointLog,
    unlogged_purges: Vec<PurgeRecord>,
    next_purge_id: u64,
}

#[derive(Debug, Clone)]
struct StoredRun {
    info: RunInfo,
    meta: RunMeta,
    transitions: Vec<StoredTransition>,
    /// The run's progress with every node's summary.
    progress: Progress,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose clock is `now` instead of the system's: it stamps `received_at`,
    /// key times, and decides expiry and purges at the store's clock.
    pub fn with_clock(now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        Self { clock: Clock(Some(std::sync::Arc::new(now))), ..Self::default() }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied append: appends compute
        // everything first and apply without fallible steps. So a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn tenant(&self, id: TenantId) -> Result<&Tenant> {
        self.tenants.get(&id).ok_or_else(|| Error::not_found("tenant", id))
    }

    fn issue_key(
        &mut self,
        tenant: TenantId,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<IssuedApiKey> {
        let secret = ApiKey::generate()?;
        let info = ApiKeyInfo {
            id: ApiKeyId::new_random(),
            tenant_id: tenant,
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let id = info.id;
        self.keys.insert(secret.hash(), info);
        Ok(IssuedApiKey { id, tenant_id: tenant, secret })
    }

    /// Refuses a name, owner or org that a tenant other than `except` holds.
    fn check_unique(&self, t: &Tenant, except: Option<TenantId>) -> Result<()> {
        let others = || self.tenants.values().filter(|o| Some(o.id) != except);
        if others().any(|o| o.name == t.name) {
            return Err(Error::name_taken(&t.name));
        }
        if t.owner_sub.is_some() && others().any(|o| o.owner_sub == t.owner_sub) {
            return Err(Error::owner_sub_taken());
        }
        if t.airlock_org_id.is_some() && others().any(|o| o.airlock_org_id == t.airlock_org_id) {
            return Err(Error::org_taken());
        }
        Ok(())
    }

    /// Removes `report`'s tenant's runs that `keep` refuses, counting them in `report`.
    fn remove_runs(&mut self, report: &mut PurgeReport, keep: impl Fn(&StoredRun) -> bool) {
        let tenant = report.tenant_id;
        self.runs.retain(|(t, _), r| {
            if *t != tenant || keep(r) {
                return true;
            }
            report.runs_removed += 1;
            report.transitions_removed += r.transitions.len() as u64;
            false
        });
    }

    fn key_mut(&mut self, tenant: TenantId, key: ApiKeyId) -> Option<&mut ApiKeyInfo> {
        self.keys.values_mut().find(|k| k.id == key && k.tenant_id == tenant)
    }

    /// A write scope's key must still be active: revocation cuts off scopes already resolved.
    /// An operator's scope (no key) was granted by this store for an existing tenant.
    fn check_write_key(&self, scope: &WriteScope, now: DateTime<Utc>) -> Result<()> {
        let Some(key) = scope.api_key() else {
            return self.tenant(scope.tenant()).map(|_| ());
        };
        match self.keys.get(&key.hash()) {
            Some(k) if k.tenant_id == scope.tenant() && k.is_active(now) => Ok(()),
            _ => Err(Error::Unauthorized(
                "the API key of this scope is unknown, revoked or expired".into(),
            )),
        }
    }

    fn run(&self, scope: &ReadScope, run: &RunId) -> Result<&StoredRun> {
        self.runs.get(&(scope.tenant(), run.clone())).ok_or_else(|| Error::not_found("run", run))
    }
}

#[async_trait]
impl StorageBackend for MemoryBackend {
    async fn provision_tenant(&self, req: &NewTenant) -> Result<Tenant> {
        let mut st = self.lock();
        if let Some(existing) = st.tenants.values().find(|t| t.name == req.name()) {
            req.check_matches(existing)?;
            return Ok(existing.clone());
        }
        let tenant = req.to_tenant();
        st.check_unique(&tenant, None)?;
        st.tenants.insert(tenant.id, tenant.clone());
        Ok(tenant)
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        self.lock().tenant(tenant).cloned()
    }

    async fn update_tenant(&self, tenant: TenantId, change: &TenantChange) -> Result<Tenant> {
        let mut st = self.lock();
        let mut changed = st.tenant(tenant)?.clone();
        change.apply(&mut changed);
        st.check_unique(&changed, Some(tenant))?;
        st.tenants.insert(tenant, changed.clone());
        Ok(changed)
    }

    async fn delete_tenant(&self, tenant: TenantId) -> Result<PurgeReport> {
        let mut st = self.lock();
        st.tenant(tenant)?;
        let mut report = PurgeReport { tenant_id: tenant, runs_removed: 0, transitions_removed: 0 };
        st.remove_runs(&mut report, |_| false);
        st.keys.retain(|_, k| k.tenant_id != tenant);
        st.logs.remove(&tenant);
        st.tenants.remove(&tenant);
        Ok(report)
    }

    async fn provision_personal_tenant(&self, sub: &str) -> Result<TenantId> {
        let req = NewTenant::personal(sub)?;
        let mut st = self.lock();
        if let Some(t) = st.tenants.values().find(|t| t.owner_sub.as_deref() == Some(sub)) {
            return Ok(t.id);
        }
        let tenant = req.to_tenant();
        st.check_unique(&tenant, None)?;
        st.tenants.insert(tenant.id, tenant.clone());
        Ok(tenant.id)
    }

    async fn create_api_key(&self, tenant: TenantId, req: &NewApiKey) -> Result<IssuedApiKey> {
        let mut st = self.lock();
        st.tenant(tenant)?;
        let now = self.clock.now();
        let mut retired: Vec<ApiKeyHash> = Vec::new();
        if let Some((which, _)) = req.retirement() {
            retired = st
                .keys
                .iter()
                .filter(|(_, k)| k.tenant_id == tenant && k.is_active(now))
                .filter(|(_, k)| match which {
                    RetiredKeys::AllActive => true,
                    RetiredKeys::One(id) => k.id == id,
                })
                .map(|(h, _)| *h)
                .collect();
            if let RetiredKeys::One(id) = which
                && retired.is_empty()
            {
                return Err(Error::not_found("api_key", id));
            }
        }
        let issued = st.issue_key(tenant, req.expiry(), now)?;
        let at = req.retirement().and_then(|(_, at)| at);
        for hash in retired {
            if let Some(k) = st.keys.get_mut(&hash) {
                match at {
                    None => k.revoked_at = Some(now),
                    Some(at) => k.expires_at = Some(k.expires_at.map_or(at, |e| e.min(at))),
                }
            }
        }
        Ok(issued)
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        let mut st = self.lock();
        let k = st.key_mut(tenant, key).ok_or_else(|| Error::not_found("api_key", key))?;
        if k.revoked_at.is_none() {
            k.revoked_at = Some(self.clock.now());
        }
        Ok(())
    }

    async fn list_api_keys(&self, tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
        let st = self.lock();
        st.tenant(tenant)?;
        let mut keys: Vec<_> =
            st.keys.values().filter(|k| k.tenant_id == tenant).cloned().collect();
        keys.sort_by_key(|k| (k.created_at, k.id));
        Ok(keys)
    }

    async fn list_tenants(&self) -> Result<Vec<TenantSummary>> {
        let st = self.lock();
        let mut out: Vec<_> = st
            .tenants
            .values()
            .map(|t| TenantSummary {
                tenant: t.clone(),
                run_count: st.runs.keys().filter(|(tid, _)| *tid == t.id).count() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.tenant.name.cmp(&b.tenant.name));
        Ok(out)
    }

    async fn authenticate_api_key(&self, key: &ApiKey) -> Result<Option<TenantId>> {
        let mut st = self.lock();
        let now = self.clock.now();
        let hash = key.hash();
        let Some(k) = st.keys.get_mut(&hash).filter(|k| k.is_active(now)) else {
            return Ok(None);
        };
        if self.key_uses.due(&hash) {
            k.last_used_at = Some(now);
        }
        Ok(Some(k.tenant_id))
    }

    async fn export_tenant(&self, tenant: TenantId) -> Result<TenantRecord> {
        let st = self.lock();
        let t = st.tenant(tenant)?.clone();
        let mut keys: Vec<ApiKeyRecord> = st
            .keys
            .iter()
            .filter(|(_, k)| k.tenant_id == tenant)
            .map(|(hash, info)| ApiKeyRecord { info: info.clone(), hash: *hash })
            .collect();
        keys.sort_by_key(|k| (k.info.created_at, k.info.id));
        Ok(TenantRecord { tenant: t, keys })
    }

    async fn import_tenant(&self, record: &TenantRecord) -> Result<Tenant> {
        let mut st = self.lock();
        let t = &record.tenant;
        record.check_keys()?;
        match st.tenants.get(&t.id) {
            Some(existing) if existing != t => return Err(Error::import_differs(t.id)),
            Some(_) => {}
            None => st.check_unique(t, None)?,
        }
        for key in &record.keys {
            if let Some(stored) = st.keys.get(&key.hash)
                && (stored.tenant_id != t.id || stored.id != key.info.id)
            {
                return Err(Error::invalid("keys", "a key with this hash is another key here"));
            }
        }
        st.tenants.insert(t.id, t.clone());
        for key in &record.keys {
            let stored = st.keys.entry(key.hash).or_insert_with(|| key.info.clone());
            if stored.revoked_at.is_none() {
                stored.revoked_at = key.info.revoked_at;
            }
        }
        Ok(t.clone())
    }

    async fn authorize_operator(&self, tenant: TenantId) -> Result<()> {
        self.lock().tenant(tenant).map(|_| ())
    }

    async fn lookup_tenant_by_org(&self, org: &OrgId) -> Result<Option<TenantId>> {
        let st = self.lock();
        Ok(st.tenants.values().find(|t| t.airlock_org_id.as_ref() == Some(org)).map(|t| t.id))
    }

    async fn lookup_tenant_by_sub(&self, sub: &str) -> Result<Option<TenantId>> {
        let st = self.lock();
        Ok(st.tenants.values().find(|t| t.owner_sub.as_deref() == Some(sub)).map(|t| t.id))
    }

    async fn append(&self, scope: &WriteScope, batch: &AppendBatch) -> Result<AppendReport> {
        let mut st = self.lock();
        let tenant = scope.tenant();
        let now = self.clock.now();
        st.check_write_key(scope, now)?;
        // Decide every run first, reading only; apply when all runs pass (one transaction).
        let mut planned = Vec::with_capacity(batch.runs().len());
        for run in batch.runs() {
            let stored = st.runs.get(&(tenant, run.run_id().clone()));
            let (next, head) =
                stored.map_or((0, Digest::ZERO), |r| (r.info.next_seq, r.info.head_hash));
            let plan = AppendPlan::new(run, next, head)?;
            let link = |seq: u64| stored?.transitions.get(seq as usize).map(|t| t.chain_hash);
            let decision = match plan.decide(link)? {
                Outcome::Append(d) => d,
                Outcome::Diverged(div) => {
                    let rows = stored.map_or(&[][..], |r| &r.transitions[..]);
                    let hashes: Vec<Digest> = div
                        .range()
                        .filter_map(|seq| rows.get(seq as usize))
                        .map(|t| t.content_hash)
                        .collect();
                    return Err(div.conflict(run, &hashes));
                }
            };
            let meta = if run.meta().is_empty() {
                None
            } else {
                let mut meta = stored.map(|r| r.meta.clone()).unwrap_or_default();
                merge_meta(run.run_id(), &mut meta, run.meta())?.then_some(meta)
            };
            // Stored bodies are the canonical form, exactly as a database adapter reads back.
            let rows = decision
                .rows
                .iter()
                .map(|row| {
                    let body = serde_json::from_str(row.body.canonical_json())
                        .map_err(|e| Error::backend("memory", e))?;
                    Ok(StoredTransition {
                        seq: Seq::new(row.seq)?,
                        body,
                        content_hash: row.body.content_hash(),
                        chain_hash: row.chain_hash,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            planned.push((run, decision, meta, rows));
        }
        let mut report = AppendReport::default();
        for (run, decision, meta, rows) in planned {
            let stored =
                st.runs.entry((tenant, run.run_id().clone())).or_insert_with(|| StoredRun {
                    info: RunInfo::new(run.run_id().clone(), now),
                    meta: RunMeta::new(),
                    transitions: Vec::new(),
                    progress: Progress::default(),
                });
            // Received: something was stored (a row, or metadata set for the first time).
            if !decision.rows.is_empty() || meta.is_some() {
                stored.info.received_at = now;
            }
            if let Some(meta) = meta {
                stored.info.source = meta.source().map(str::to_owned);
                stored.info.labels = meta.labels().clone();
                stored.meta = meta;
            }
            if let Some((lo, hi)) = decision.ts_range() {
                stored.info.first_ts = Some(stored.info.first_ts.map_or(lo, |f| f.min(lo)));
                stored.info.last_ts = Some(stored.info.last_ts.map_or(hi, |l| l.max(hi)));
            }
            decision.advance(&mut stored.progress);
            stored.info.set_progress(&stored.progress.run);
            stored.transitions.extend(rows);
            stored.info.next_seq = decision.next_seq;
            stored.info.head_hash = decision.head_hash;
            report.runs.push(decision.report(run.run_id()));
        }
        Ok(report)
    }

    async fn list_runs(&self, scope: &ReadScope, query: &RunQuery) -> Result<RunPage> {
        query.validate()?;
        let st = self.lock();
        let mut runs: Vec<RunInfo> = st
            .runs
            .iter()
            .filter(|((t, _), r)| {
                *t == scope.tenant()
                    && query.matches(&r.info)
                    && query.cursor.as_ref().is_none_or(|c| c.precedes(&r.info))
            })
            .map(|(_, r)| r.info.clone())
            .collect();
        runs.sort_by(|a, b| {
            b.activity_at().cmp(&a.activity_at()).then_with(|| a.run_id.cmp(&b.run_id))
        });
        let limit = query.effective_limit() as usize;
        let more = runs.len() > limit;
        runs.truncate(limit);
        let next_cursor = if more { runs.last().map(Cursor::after) } else { None };
        Ok(RunPage { runs, next_cursor })
    }

    async fn get_run(&self, scope: &ReadScope, run: &RunId) -> Result<RunSummary> {
        let st = self.lock();
        let r = st.run(scope, run)?;
        Ok(RunSummary {
            info: r.info.clone(),
            graph: r.meta.graph().cloned(),
            nodes: r.progress.nodes.values().cloned().collect(),
        })
    }

    async fn read_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<StoredTransition>> {
        let st = self.lock();
        let r = st.run(scope, run)?;
        let from = after.map_or(0, |s| s.get().saturating_add(1));
        let from = usize::try_from(from).unwrap_or(usize::MAX);
        let limit = limit.min(MAX_PAGE_SIZE) as usize;
        Ok(r.transitions.iter().skip(from).take(limit).cloned().collect())
    }

    async fn purge_expired(&self, req: &PurgeRequest) -> Result<PurgeOutcome> {
        let mut st = self.lock();
        let now = req.instant_or(self.clock.now());
        let tenants: Vec<(TenantId, u32)> = st
            .tenants
            .values()
            .filter(|t| req.tenant().is_none_or(|id| id == t.id))
            .map(|t| (t.id, t.retention_days))
            .collect();
        let mut outcome = PurgeOutcome::default();
        for (tenant, days) in tenants {
            let mut report =
                PurgeReport { tenant_id: tenant, runs_removed: 0, transitions_removed: 0 };
            let kept = |r: &StoredRun| !is_expired(r.info.received_at, days, now);
            if req.is_dry_run() {
                for r in st.runs.iter().filter(|((t, _), r)| *t == tenant && !kept(r)).map(|e| e.1)
                {
                    report.runs_removed += 1;
                    report.transitions_removed += r.transitions.len() as u64;
                }
            } else {
                let mut gone: Vec<PurgedRun> = st
                    .runs
                    .iter()
                    .filter(|((t, _), r)| *t == tenant && !kept(r))
                    .map(|((_, id), r)| PurgedRun {
                        run_id: id.clone(),
                        next_seq: r.info.next_seq,
                        head_hash: r.info.head_hash,
                        received_at: r.info.received_at,
                    })
                    .collect();
                gone.sort_by(|a, b| a.run_id.cmp(&b.run_id));
                let purged_at = self.clock.now();
                let log = st.logs.entry(tenant).or_default();
                for run in gone {
                    log.next_purge_id += 1;
                    let id = log.next_purge_id;
                    log.unlogged_purges.push(PurgeRecord { id, run, purged_at });
                }
                st.remove_runs(&mut report, kept);
            }
            if report.runs_removed > 0 {
                outcome.reports.push(report);
            }
        }
        Ok(outcome)
    }

    async fn read_checkpoint_log(&self, scope: &ReadScope) -> Result<CheckpointLog> {
        let st = self.lock();
        Ok(st.logs.get(&scope.tenant()).map(|l| l.log.clone()).unwrap_or_default())
    }

    async fn checkpoint_inputs(&self, scope: &ReadScope) -> Result<CheckpointInputs> {
        let st = self.lock();
        let tenant = scope.tenant();
        let heads = st
            .runs
            .iter()
            .filter(|((t, _), _)| *t == tenant)
            .map(|((_, id), r)| RunHead {
                run_id: id.clone(),
                next_seq: r.info.next_seq,
                head_hash: r.info.head_hash,
                received_at: r.info.received_at,
            })
            .collect();
        let (log, purges) = st
            .logs
            .get(&tenant)
            .map(|l| (l.log.clone(), l.unlogged_purges.clone()))
            .unwrap_or_default();
        Ok(CheckpointInputs { log, heads, purges })
    }

    async fn append_checkpoint(&self, scope: &ReadScope, next: &NewCheckpoint) -> Result<()> {
        next.validate(scope.tenant())?;
        let mut st = self.lock();
        st.tenant(scope.tenant())?;
        let log = st.logs.entry(scope.tenant()).or_default();
        let size = log.log.leaves.len() as u64;
        if size != next.after {
            return Err(log_moved("memory", next.after, size));
        }
        log.log.leaves.extend(next.leaves.iter().cloned());
        log.log.checkpoints.push(next.checkpoint.clone());
        log.unlogged_purges.retain(|p| !next.purges.contains(&p.id));
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
