//! Test data shared by the suite and by adapters' own tests: fresh tenants, realistic
//! source logs, chunkings. One set of fixtures for every adapter, never copies per adapter.

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use serde_json::json;

use crate::{
    AppendBatch, Digest, IssuedApiKey, NewTenant, ReadScope, RunId, StorageBackend,
    StorageBackendExt, Tenant, WriteScope,
};

/// What a conformance check runs against.
#[derive(Clone, Debug)]
pub struct Harness {
    /// The backend under test: scopes are resolved, runs appended and read through it.
    pub store: Arc<dyn StorageBackend>,
    /// Where tenants and keys are provisioned and purges and admin listings run: the same
    /// backend for database adapters; for a client backend, the store behind its server.
    pub control: Arc<dyn StorageBackend>,
    /// Whatever must outlive the backends (a temporary directory, a test database), dropped
    /// after them when the check ends.
    guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl Harness {
    /// A harness where one backend does everything.
    pub fn new(backend: Arc<dyn StorageBackend>) -> Self {
        Self { store: backend.clone(), control: backend, guard: None }
    }

    /// A harness whose control plane is a different backend than the store under test.
    pub fn with_control(store: Arc<dyn StorageBackend>, control: Arc<dyn StorageBackend>) -> Self {
        Self { store, control, guard: None }
    }

    /// Keeps `guard` alive as long as the harness (e.g. the temporary directory holding the
    /// database file); it is dropped after the backends.
    #[must_use]
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.guard = Some(Arc::new(guard));
        self
    }

    /// Provisions a fresh, randomly named tenant with one key, and resolves its scopes
    /// through the store under test.
    pub async fn fresh_tenant(&self) -> TestTenant {
        self.fresh_tenant_with(|t| t).await
    }

    /// As [`fresh_tenant`](Self::fresh_tenant), with the request adjusted by `f`.
    pub async fn fresh_tenant_with(&self, f: impl FnOnce(NewTenant) -> NewTenant) -> TestTenant {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        let req = f(NewTenant::new(name).expect("random names are valid"));
        let tenant = self.control.provision_tenant(&req).await.expect("provision a fresh tenant");
        let key = self.control.issue_api_key(tenant.id).await.expect("issue a key");
        let write = self
            .store
            .resolve_api_key(&key.secret)
            .await
            .expect("resolve a fresh key")
            .expect("a fresh key resolves to its tenant");
        assert_eq!(write.tenant(), tenant.id, "a key resolves to the tenant it was issued for");
        let read = write.read();
        TestTenant { tenant, key, write, read }
    }
}

/// A provisioned tenant with a key and its scopes.
#[derive(Clone, Debug)]
pub struct TestTenant {
    /// The tenant.
    pub tenant: Tenant,
    /// Its key.
    pub key: IssuedApiKey,
    /// Its write scope (resolved from the key).
    pub write: WriteScope,
    /// Its read scope.
    pub read: ReadScope,
}

/// A run's source log: the NDJSON lines a producer holds, seq 0..n.
#[derive(Clone, Debug)]
pub struct SourceLog {
    /// The run.
    pub run_id: RunId,
    /// One JSON line per transition, in seq order.
    pub lines: Vec<String>,
}

const STATES: [&str; 4] = ["pending", "running", "succeeded", "failed"];

/// A fixed base time close to now (so runs are within every retention) and whole seconds.
pub fn recent_base() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(0) - Duration::hours(1)
}

impl SourceLog {
    /// A realistic log of `n` transitions for `run`, its content varied by `tag`, with `ts`
    /// starting at `base`, one second apart.
    pub fn new(run: &str, n: u64, tag: &str, base: DateTime<Utc>) -> Self {
        let lines = (0..n).map(|seq| transition_line(run, seq, tag, base)).collect();
        Self { run_id: RunId::new(run).expect("fixture run ids are valid"), lines }
    }

    /// The log with the transitions from `from` on replaced by other content.
    pub fn diverging_at(&self, from: u64, tag: &str, base: DateTime<Utc>) -> Self {
        let mut other = self.clone();
        for seq in from..self.len() {
            other.lines[seq as usize] = transition_line(self.run_id.as_str(), seq, tag, base);
        }
        other
    }

    /// Number of transitions.
    pub fn len(&self) -> u64 {
        self.lines.len() as u64
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// A batch of seqs `[start, end)`.
    pub fn chunk(&self, start: u64, end: u64) -> AppendBatch {
        batch(&self.lines[start as usize..end as usize])
    }

    /// The validated body at `seq`.
    pub fn body(&self, seq: u64) -> crate::TransitionBody {
        self.chunk(seq, seq + 1).runs()[0].bodies()[0].clone()
    }

    /// A batch of seqs `[start, end)` whose chain links are computed ahead
    /// ([`BatchBuilder::chain_ahead`](crate::BatchBuilder::chain_ahead)) from `from`, as a
    /// pusher computes them from the link it expects the store to hold before `start`.
    pub fn chunk_ahead(&self, start: u64, end: u64, from: Digest) -> AppendBatch {
        self.ahead(None, start, end, from)
    }

    /// As [`chunk_ahead`](Self::chunk_ahead), after a metadata line setting `meta`.
    pub fn chunk_ahead_with(
        &self,
        meta: serde_json::Value,
        start: u64,
        end: u64,
        from: Digest,
    ) -> AppendBatch {
        self.ahead(Some(meta_line(self.run_id.as_str(), meta)), start, end, from)
    }

    fn ahead(&self, meta: Option<String>, start: u64, end: u64, from: Digest) -> AppendBatch {
        let mut builder = crate::BatchBuilder::new();
        for line in meta.iter().chain(&self.lines[start as usize..end as usize]) {
            let line = crate::NdjsonLine::parse(line).expect("fixture lines are valid");
            builder.push(line.expect("not blank")).expect("fixture lines ascend");
        }
        builder.chain_ahead(|_, _| Some(from));
        builder.build()
    }

    /// The chain link of the log's transition `seq`: what the store holds there.
    pub fn link(&self, seq: u64) -> Digest {
        (0..=seq)
            .fold(Digest::ZERO, |prev, s| crate::chain_link(&prev, &self.body(s).content_hash()))
    }

    /// A batch of the whole log.
    pub fn all(&self) -> AppendBatch {
        self.chunk(0, self.len())
    }

    /// The run as a reference store (kahn-core's in-memory one) holds it after `chunks`, each
    /// `[start, end)` appended in turn: what an adapter must report for the same appends.
    ///
    /// # Panics
    /// When the reference refuses a chunk.
    pub async fn reference(&self, chunks: &[(u64, u64)]) -> crate::RunSummary {
        let reference = crate::MemoryBackend::new();
        let t = reference.provision_tenant(&NewTenant::new("ref").expect("valid")).await;
        let key = reference.issue_api_key(t.expect("tenant").id).await.expect("key");
        let scope = reference.resolve_api_key(&key.secret).await.expect("resolve").expect("key");
        for &(start, end) in chunks {
            reference.append(&scope, &self.chunk(start, end)).await.expect("reference");
        }
        reference.get_run(&scope.read(), &self.run_id).await.expect("reference run")
    }
}

/// One realistic transition line (~300 bytes, nested `attrs`).
pub fn transition_line(run: &str, seq: u64, tag: &str, base: DateTime<Utc>) -> String {
    let ts = base + Duration::seconds(seq as i64);
    json!({
        "run_id": run,
        "seq": seq,
        "ts": ts.to_rfc3339(),
        "node": format!("node-{}", seq % 7),
        "from": STATES[(seq % 3) as usize],
        "to": STATES[((seq + 1) % 3) as usize],
        "attrs": {
            "tag": tag,
            "attempt": 1 + seq % 2,
            "host": "runner-04.ci.internal",
            "timing": {"queued_ms": seq * 3, "ran_ms": seq * 17 % 1000},
            "outputs": [format!("artifact-{seq}.tar.zst"), null, true],
        },
    })
    .to_string()
}

/// A batch from NDJSON lines (panics on invalid fixtures).
pub fn batch(lines: &[String]) -> AppendBatch {
    AppendBatch::from_ndjson(&lines.join("\n")).expect("fixture lines are valid")
}

/// A batch from several batches' lines, in order.
pub fn batch_of(parts: &[&[String]]) -> AppendBatch {
    let lines: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
    batch(&lines)
}

/// A run metadata line.
pub fn meta_line(run: &str, meta: serde_json::Value) -> String {
    let mut v = meta;
    v["kind"] = json!("run");
    v["run_id"] = json!(run);
    v.to_string()
}
