//! An in-memory backend: the reference implementation of the contract, for embedders' tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::backend::StorageBackend;
use crate::batch::AppendBatch;
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
use crate::transition::RunMeta;

/// Everything in one mutex: appends serialize, reads see committed state only.
///
/// It passes the same conformance suite as the database adapters, so embedders can test
/// against it; nothing survives the process.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    tenants: BTreeMap<TenantId, Tenant>,
    keys: HashMap<ApiKeyHash, ApiKeyInfo>,
    runs: HashMap<(TenantId, RunId), StoredRun>,
}

#[derive(Debug, Clone)]
struct StoredRun {
    info: RunInfo,
    meta: RunMeta,
    transitions: Vec<StoredTransition>,
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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

    fn issue_key(&mut self, tenant: TenantId) -> Result<IssuedApiKey> {
        let secret = ApiKey::generate()?;
        let info = ApiKeyInfo {
            id: ApiKeyId::new_random(),
            tenant_id: tenant,
            created_at: truncate_micros(Utc::now()),
            revoked_at: None,
        };
        let id = info.id;
        self.keys.insert(secret.hash(), info);
        Ok(IssuedApiKey { id, tenant_id: tenant, secret })
    }

    fn key_mut(&mut self, tenant: TenantId, key: ApiKeyId) -> Option<&mut ApiKeyInfo> {
        self.keys.values_mut().find(|k| k.id == key && k.tenant_id == tenant)
    }

    /// A write scope's key must still be active: revocation cuts off scopes already resolved.
    fn check_write_key(&self, scope: &WriteScope) -> Result<()> {
        match self.keys.get(&scope.api_key().hash()) {
            Some(k) if k.tenant_id == scope.tenant() && k.revoked_at.is_none() => Ok(()),
            _ => Err(Error::Unauthorized("the API key of this scope is unknown or revoked".into())),
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
        if let Some(sub) = req.owner_sub()
            && st.tenants.values().any(|t| t.owner_sub.as_deref() == Some(sub))
        {
            return Err(Error::owner_sub_taken());
        }
        if let Some(org) = req.org_id()
            && st.tenants.values().any(|t| t.airlock_org_id.as_ref() == Some(org))
        {
            return Err(Error::org_taken());
        }
        let tenant = req.to_tenant();
        st.tenants.insert(tenant.id, tenant.clone());
        Ok(tenant)
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        self.lock().tenant(tenant).cloned()
    }

    async fn link_org(&self, tenant: TenantId, org: &OrgId) -> Result<Tenant> {
        let mut st = self.lock();
        st.tenant(tenant)?;
        if st.tenants.values().any(|t| t.id != tenant && t.airlock_org_id.as_ref() == Some(org)) {
            return Err(Error::org_taken());
        }
        let t = st.tenants.get_mut(&tenant).ok_or_else(|| Error::not_found("tenant", tenant))?;
        t.airlock_org_id = Some(org.clone());
        Ok(t.clone())
    }

    async fn issue_api_key(&self, tenant: TenantId) -> Result<IssuedApiKey> {
        let mut st = self.lock();
        st.tenant(tenant)?;
        st.issue_key(tenant)
    }

    async fn rotate_api_key(&self, tenant: TenantId, old: ApiKeyId) -> Result<IssuedApiKey> {
        let mut st = self.lock();
        match st.key_mut(tenant, old) {
            Some(k) if k.revoked_at.is_none() => {}
            _ => return Err(Error::not_found("api_key", old)),
        }
        let issued = st.issue_key(tenant)?;
        if let Some(k) = st.key_mut(tenant, old) {
            k.revoked_at = Some(truncate_micros(Utc::now()));
        }
        Ok(issued)
    }

    async fn revoke_api_key(&self, tenant: TenantId, key: ApiKeyId) -> Result<()> {
        let mut st = self.lock();
        let k = st.key_mut(tenant, key).ok_or_else(|| Error::not_found("api_key", key))?;
        if k.revoked_at.is_none() {
            k.revoked_at = Some(truncate_micros(Utc::now()));
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
        let st = self.lock();
        Ok(st.keys.get(&key.hash()).filter(|k| k.revoked_at.is_none()).map(|k| k.tenant_id))
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
        st.check_write_key(scope)?;
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
                merge_meta(run.run_id(), &mut meta, run.meta())?;
                Some(meta)
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
        let now = truncate_micros(Utc::now());
        let mut report = AppendReport::default();
        for (run, decision, meta, rows) in planned {
            let stored =
                st.runs.entry((tenant, run.run_id().clone())).or_insert_with(|| StoredRun {
                    info: RunInfo {
                        run_id: run.run_id().clone(),
                        source: None,
                        labels: Default::default(),
                        next_seq: 0,
                        head_hash: Digest::ZERO,
                        status: None,
                        first_ts: None,
                        last_ts: None,
                        created_at: now,
                    },
                    meta: RunMeta::new(),
                    transitions: Vec::new(),
                });
            if let Some(meta) = meta {
                stored.info.source = meta.source().map(str::to_owned);
                stored.info.labels = meta.labels().clone();
                stored.meta = meta;
            }
            if let Some((lo, hi)) = decision.ts_range() {
                stored.info.first_ts = Some(stored.info.first_ts.map_or(lo, |f| f.min(lo)));
                stored.info.last_ts = Some(stored.info.last_ts.map_or(hi, |l| l.max(hi)));
            }
            if let Some(status) = decision.status() {
                stored.info.status = Some(status.to_owned());
            }
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
        Ok(RunSummary { info: r.info.clone(), graph: r.meta.graph().cloned() })
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

    async fn purge_expired(&self, now: DateTime<Utc>) -> Result<Vec<PurgeReport>> {
        let mut st = self.lock();
        let retention: HashMap<TenantId, u32> =
            st.tenants.values().map(|t| (t.id, t.retention_days)).collect();
        let mut per_tenant: BTreeMap<TenantId, PurgeReport> = BTreeMap::new();
        st.runs.retain(|(tenant, _), r| {
            let days = retention.get(tenant).copied().unwrap_or(u32::MAX);
            let expired = now
                .checked_sub_signed(Duration::days(i64::from(days)))
                .is_some_and(|cutoff| r.info.activity_at() < cutoff);
            if expired {
                let rep = per_tenant.entry(*tenant).or_insert(PurgeReport {
                    tenant_id: *tenant,
                    runs_removed: 0,
                    transitions_removed: 0,
                });
                rep.runs_removed += 1;
                rep.transitions_removed += r.transitions.len() as u64;
            }
            !expired
        });
        Ok(per_tenant.into_values().collect())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
