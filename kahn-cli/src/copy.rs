//! Copying tenants, keys and runs from one store to another (`kahn copy`): out of the embedded
//! SQLite default into Postgres, or between any two [`StorageBackend`]s.
//!
//! Per tenant, [`StorageBackend::export_tenant`] on the source and
//! [`StorageBackend::import_tenant`] on the target move its settings and keys (hashes, never
//! secrets) with the same tenant id, so producers' keys keep working. Runs then move as
//! appends — an operator's [`WriteScope`] on the target, an admin's [`ReadScope`] on the
//! source — rebuilt from the stored canonical bodies, so every content and chain hash comes
//! out identical. Because a copy is an append like any other, it is resumable and idempotent:
//!
//! * a run the target already holds whole (same `next_seq`, same head) costs two summary reads
//!   and a verification, and sends nothing;
//! * a run the target holds a prefix of (an interrupted copy) continues from the target's
//!   `next_seq`, once one chain link on each side proves the prefix is the source's;
//! * a run whose stored content differs is a [`Error::Conflict`] naming the first differing
//!   seq (found by bisecting chain links): reported, nothing rewritten.
//!
//! Every run copied (or found complete) is verified: the target's chain is recomputed
//! ([`StorageBackendExt::verify_run`]) and its head compared with the source's `head_hash`.
//! While streaming, each source transition's content hash and chain link are checked too, so a
//! corrupt source is reported, never copied.
//!
//! Runs' `received_at` on the target is the target's clock at the append: a copied run's
//! retention starts again at the copy.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use kahn_core::{
    ApiKeyId, BatchBuilder, ConflictAt, Digest, Error, MAX_PAGE_SIZE, ReadScope, Result, RunId,
    RunInfo, RunMeta, RunQuery, RunSummary, Seq, StorageBackend, StorageBackendExt,
    StoredTransition, Tenant, TenantId, Transition, TransitionBody, WriteScope, chain_link,
};
use serde::Serialize;

use kahn_push::push;

/// Default largest append, in bytes of transition bodies (plus run id and seq).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Default most transitions in one append.
pub const MAX_BATCH_TRANSITIONS: usize = 4000;

/// How to copy.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    /// Only this tenant (by id); `None` copies every tenant of the source.
    pub tenant: Option<TenantId>,
    /// Largest append in bytes (a run's metadata alone may exceed it: it is sent whole).
    pub max_batch_bytes: usize,
    /// Most transitions in one append.
    pub max_batch_transitions: usize,
    /// Retries of one call after a retryable failure ([`Error::is_retryable`]).
    pub max_retries: u32,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            tenant: None,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_batch_transitions: MAX_BATCH_TRANSITIONS,
            max_retries: 8,
        }
    }
}

/// Hears about a copy as it goes. Every method has a no-op default.
pub trait CopyProgress: Send + Sync {
    /// A tenant and its keys are in the target; its runs are next.
    fn tenant_ready(&self, _tenant: &TenantCopy) {}
    /// A run was copied, found complete, or failed.
    fn run_done(&self, _tenant: &Tenant, _run: &RunCopy) {}
    /// A retryable failure; the copy waits `wait` before attempt `attempt`.
    fn retrying(&self, _attempt: u32, _wait: Duration, _error: &Error) {}
}

/// A [`CopyProgress`] that says nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl CopyProgress for Quiet {}

/// What happened to one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Something was appended (transitions or metadata), from scratch or resumed.
    Copied,
    /// The target already held everything the source does; nothing was sent.
    AlreadyComplete,
    /// The run was not copied (see the report's failures).
    Failed,
}

/// One run's copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RunCopy {
    /// The run.
    pub run_id: RunId,
    /// What happened.
    pub outcome: RunOutcome,
    /// Transitions the target held before (a resumed copy continues from there).
    pub target_had: u64,
    /// Transitions appended by this copy.
    pub appended: u64,
    /// The source's transition count (read when the run's copy started).
    pub next_seq: u64,
    /// The source's head hash, which the target's recomputed chain matched.
    pub head_hash: Digest,
    /// Whether the target's head was verified equal to the source's.
    pub verified: bool,
}

/// One tenant's copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TenantCopy {
    /// The tenant's id (the same in both stores).
    pub tenant_id: TenantId,
    /// Its name.
    pub name: String,
    /// Whether this copy created it in the target (`false`: it was already there).
    pub created: bool,
    /// Its keys in the source, active and not.
    pub keys: u64,
    /// Of those, keys the target did not hold before.
    pub keys_added: u64,
    /// Runs in the source.
    pub runs: u64,
    /// Runs that received something.
    pub runs_copied: u64,
    /// Of those, runs the target held a prefix of (an interrupted copy resumed).
    pub runs_resumed: u64,
    /// Runs the target already held whole.
    pub runs_already_complete: u64,
    /// Runs that failed.
    pub runs_failed: u64,
    /// Transitions appended.
    pub transitions_appended: u64,
    /// Runs whose target head was verified equal to the source's.
    pub heads_verified: u64,
}

/// Something that could not be copied. The copy goes on with the next run or tenant, unless
/// the failure was the store's ([`CopyReport::stopped`]).
#[derive(Debug, Serialize)]
pub struct CopyFailure {
    /// The tenant's name.
    pub tenant: String,
    /// The tenant's id.
    pub tenant_id: TenantId,
    /// The run, when the failure is one run's (else the tenant's settings or keys).
    pub run_id: Option<RunId>,
    /// What went wrong.
    pub message: String,
    /// The error itself.
    #[serde(skip)]
    pub error: Error,
}

/// Totals over every tenant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CopyTotals {
    /// Tenants created in the target.
    pub tenants_created: u64,
    /// Tenants the target already held.
    pub tenants_already_there: u64,
    /// Keys copied (all of each tenant's keys, active and not).
    pub keys: u64,
    /// Keys the target did not hold before.
    pub keys_added: u64,
    /// Runs that received something.
    pub runs_copied: u64,
    /// Of those, resumed runs.
    pub runs_resumed: u64,
    /// Runs already complete in the target.
    pub runs_already_complete: u64,
    /// Runs that failed.
    pub runs_failed: u64,
    /// Transitions appended.
    pub transitions_appended: u64,
    /// Heads verified.
    pub heads_verified: u64,
    /// Retries after retryable failures.
    pub retries: u64,
}

/// What a copy did.
#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    /// Totals.
    pub totals: CopyTotals,
    /// Per tenant whose settings and keys reached the target.
    pub tenants: Vec<TenantCopy>,
    /// Everything that failed.
    pub failures: Vec<CopyFailure>,
    /// Whether a store failed (unavailable after retries, a handle that may not do this):
    /// the copy stopped there. Run it again to resume.
    pub stopped: bool,
}

impl CopyReport {
    /// Whether everything was copied and verified.
    pub fn is_complete(&self) -> bool {
        self.failures.is_empty() && !self.stopped
    }

    fn total(&mut self, retries: u64) {
        let mut t = CopyTotals { retries, ..CopyTotals::default() };
        for c in &self.tenants {
            if c.created {
                t.tenants_created += 1;
            } else {
                t.tenants_already_there += 1;
            }
            t.keys += c.keys;
            t.keys_added += c.keys_added;
            t.runs_copied += c.runs_copied;
            t.runs_resumed += c.runs_resumed;
            t.runs_already_complete += c.runs_already_complete;
            t.runs_failed += c.runs_failed;
            t.transitions_appended += c.transitions_appended;
            t.heads_verified += c.heads_verified;
        }
        self.totals = t;
    }
}

/// Failures after which the copy cannot usefully go on: the store is gone (retries ran out)
/// or the handle may not do this (an app DSN, a remote client). Anything else is one run's
/// or one tenant's, and the copy continues.
fn stops_the_copy(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. } | Error::Unsupported { .. } | Error::Unauthorized(_))
}

/// Copies every tenant of `from` (or [`CopyOptions::tenant`]) into `to`: settings and keys,
/// then every run, verifying each run's head on the target. Failures of one run or tenant
/// are reported in [`CopyReport::failures`] and the copy goes on; a store failure stops it
/// ([`CopyReport::stopped`]). Running it again resumes: complete runs are skipped, partial
/// ones continue.
///
/// `to` must be a handle that may create tenants and append as an operator (SQLite, the
/// in-memory store, Postgres with the admin DSN).
///
/// # Errors
/// Only before anything is written: [`Error::NotFound`] for an unknown
/// [`CopyOptions::tenant`], or the source's error when its tenants cannot be listed.
pub async fn copy(
    from: &dyn StorageBackend,
    to: &dyn StorageBackend,
    opts: &CopyOptions,
    progress: &dyn CopyProgress,
) -> Result<CopyReport> {
    let copier = Copier { from, to, opts, progress, retries: std::sync::atomic::AtomicU64::new(0) };
    let tenants: Vec<Tenant> = match opts.tenant {
        Some(id) => vec![copier.retry(|| from.get_tenant(id)).await?],
        None => copier.retry(|| from.list_tenants()).await?.into_iter().map(|s| s.tenant).collect(),
    };
    let mut report = CopyReport::default();
    for tenant in &tenants {
        if copier.tenant(tenant, &mut report).await.is_err() {
            report.stopped = true;
            break;
        }
    }
    report.total(copier.retries.load(std::sync::atomic::Ordering::Relaxed));
    Ok(report)
}

/// The copy stopped (the failure is in the report).
struct Stopped;

struct Copier<'a> {
    from: &'a dyn StorageBackend,
    to: &'a dyn StorageBackend,
    opts: &'a CopyOptions,
    progress: &'a dyn CopyProgress,
    retries: std::sync::atomic::AtomicU64,
}

/// Forwards the pusher's retry notices to a [`CopyProgress`].
struct RetryNotice<'a>(&'a dyn CopyProgress);

impl push::Progress for RetryNotice<'_> {
    fn retrying(&self, attempt: u32, wait: Duration, error: &Error) {
        self.0.retrying(attempt, wait, error);
    }
}

fn record(
    report: &mut CopyReport,
    tenant: &Tenant,
    run_id: Option<&RunId>,
    error: Error,
) -> std::result::Result<(), Stopped> {
    let stop = stops_the_copy(&error);
    report.failures.push(CopyFailure {
        tenant: tenant.name.clone(),
        tenant_id: tenant.id,
        run_id: run_id.cloned(),
        message: error.chain().to_string(),
        error,
    });
    if stop { Err(Stopped) } else { Ok(()) }
}

impl Copier<'_> {
    async fn retry<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut retries = 0;
        let notice = RetryNotice(self.progress);
        let result = push::with_retries(self.opts.max_retries, &notice, &mut retries, call).await;
        self.retries.fetch_add(retries, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Copies one tenant: settings and keys, then its runs.
    async fn tenant(
        &self,
        tenant: &Tenant,
        report: &mut CopyReport,
    ) -> std::result::Result<(), Stopped> {
        let mut copied = match self.settings_and_keys(tenant).await {
            Ok(c) => c,
            Err(e) => return record(report, tenant, None, e),
        };
        let scopes = async {
            let src = self.retry(|| self.from.resolve_admin_override(tenant.id)).await?;
            let dst = self.retry(|| self.to.operator_write_scope(tenant.id)).await?;
            let runs = self.list_runs(&src).await?;
            Ok::<_, Error>((src, dst, runs))
        };
        let (src, dst, runs) = match scopes.await {
            Ok(s) => s,
            Err(e) => return record(report, tenant, None, e),
        };
        copied.runs = runs.len() as u64;
        self.progress.tenant_ready(&copied);
        let mut outcome = Ok(());
        for info in &runs {
            let run = match self.run(&src, &dst, &info.run_id).await {
                Ok(run) => run,
                Err(e) => {
                    copied.runs_failed += 1;
                    let failed = RunCopy {
                        run_id: info.run_id.clone(),
                        outcome: RunOutcome::Failed,
                        target_had: 0,
                        appended: 0,
                        next_seq: info.next_seq,
                        head_hash: info.head_hash,
                        verified: false,
                    };
                    self.progress.run_done(tenant, &failed);
                    outcome = record(report, tenant, Some(&info.run_id), e);
                    if outcome.is_err() {
                        break;
                    }
                    continue;
                }
            };
            match run.outcome {
                RunOutcome::Copied => copied.runs_copied += 1,
                RunOutcome::AlreadyComplete => copied.runs_already_complete += 1,
                RunOutcome::Failed => copied.runs_failed += 1,
            }
            if run.outcome == RunOutcome::Copied && run.target_had > 0 {
                copied.runs_resumed += 1;
            }
            copied.transitions_appended += run.appended;
            copied.heads_verified += u64::from(run.verified);
            self.progress.run_done(tenant, &run);
        }
        report.tenants.push(copied);
        outcome
    }

    /// Imports the tenant's settings and keys into the target.
    async fn settings_and_keys(&self, tenant: &Tenant) -> Result<TenantCopy> {
        let record = self.retry(|| self.from.export_tenant(tenant.id)).await?;
        let (created, before): (bool, HashSet<ApiKeyId>) =
            match self.retry(|| self.to.get_tenant(tenant.id)).await {
                Ok(_) => {
                    let keys = self.retry(|| self.to.list_api_keys(tenant.id)).await?;
                    (false, keys.into_iter().map(|k| k.id).collect())
                }
                Err(Error::NotFound { .. }) => (true, HashSet::new()),
                Err(e) => return Err(e),
            };
        self.retry(|| self.to.import_tenant(&record)).await?;
        Ok(TenantCopy {
            tenant_id: tenant.id,
            name: tenant.name.clone(),
            created,
            keys: record.keys.len() as u64,
            keys_added: record.keys.iter().filter(|k| !before.contains(&k.info.id)).count() as u64,
            runs: 0,
            runs_copied: 0,
            runs_resumed: 0,
            runs_already_complete: 0,
            runs_failed: 0,
            transitions_appended: 0,
            heads_verified: 0,
        })
    }

    /// Every run of the scope's tenant (listed first, so runs changing order while they are
    /// copied are neither skipped nor seen twice).
    async fn list_runs(&self, scope: &ReadScope) -> Result<Vec<RunInfo>> {
        let mut runs = Vec::new();
        let mut cursor = None;
        loop {
            let query =
                RunQuery { limit: MAX_PAGE_SIZE, cursor: cursor.clone(), ..RunQuery::default() };
            let page = self.retry(|| self.from.list_runs(scope, &query)).await?;
            runs.extend(page.runs);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(runs),
            }
        }
    }

    /// Copies one run up to the source's `next_seq` read first, then verifies the target.
    async fn run(&self, src: &ReadScope, dst: &WriteScope, run: &RunId) -> Result<RunCopy> {
        let dst_read = dst.read();
        let source = self.retry(|| self.from.get_run(src, run)).await?;
        let (n, head) = (source.info.next_seq, source.info.head_hash);
        let target = match self.retry(|| self.to.get_run(&dst_read, run)).await {
            Ok(t) => Some(t),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let (had, target_head) =
            target.as_ref().map_or((0, Digest::ZERO), |t| (t.info.next_seq, t.info.head_hash));
        // The shared prefix must be the source's: one chain link on each side proves it.
        let common = had.min(n);
        let mut prev = Digest::ZERO;
        if common > 0 {
            let at = common - 1;
            let src_link = self.transition_at(self.from, src, run, at).await?.chain_hash;
            let dst_link = if had == common {
                target_head
            } else {
                self.transition_at(self.to, &dst_read, run, at).await?.chain_hash
            };
            if src_link != dst_link {
                return Err(self.first_difference(src, &dst_read, run, at).await);
            }
            prev = src_link;
        }
        let meta = source_meta(&source)?;
        let meta_needed = match &target {
            Some(t) => !holds_meta(t, &source),
            None => true,
        };
        let mut sent = false;
        let mut appended = 0;
        if had < n || meta_needed {
            let (a, s) =
                self.stream(src, dst, run, had, n, prev, meta_needed.then_some(&meta)).await?;
            appended = a;
            sent = s;
        }
        // Verify: the target's chain recomputes, and its link at the source's last seq is the
        // source's head (the target may hold more, appended there since an earlier copy).
        let verified_head = self.retry(|| self.to.verify_run(&dst_read, run)).await?;
        let target_link = if had > n && n > 0 {
            self.transition_at(self.to, &dst_read, run, n - 1).await?.chain_hash
        } else if had > n {
            Digest::ZERO
        } else {
            verified_head
        };
        if target_link != head {
            return Err(Error::Integrity {
                run_id: Some(run.clone()),
                seq: n.checked_sub(1),
                message: format!(
                    "after the copy the target's chain at seq {} is {target_link}, the source's head {head}",
                    n.saturating_sub(1)
                ),
            });
        }
        Ok(RunCopy {
            run_id: run.clone(),
            outcome: if sent { RunOutcome::Copied } else { RunOutcome::AlreadyComplete },
            target_had: had,
            appended,
            next_seq: n,
            head_hash: head,
            verified: true,
        })
    }

    /// Sends the source's transitions `[from_seq, n)` (checking each one's content hash and
    /// chain link on the way, from `prev`, the link before `from_seq`) and `meta` in the
    /// first append. Returns the transitions appended and whether anything was sent.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        src: &ReadScope,
        dst: &WriteScope,
        run: &RunId,
        from_seq: u64,
        n: u64,
        mut prev: Digest,
        meta: Option<&RunMeta>,
    ) -> Result<(u64, bool)> {
        let max_bytes = self.opts.max_batch_bytes.max(1);
        let max_count = self.opts.max_batch_transitions.max(1);
        let mut builder = BatchBuilder::new();
        let (mut bytes, mut count) = (0usize, 0usize);
        if let Some(meta) = meta {
            // Also creates a run that has neither transitions nor metadata.
            builder.push_meta(run, meta)?;
        }
        let (mut appended, mut sent) = (0u64, false);
        let mut next = from_seq;
        while next < n {
            let after = next.checked_sub(1).map(Seq::new).transpose()?;
            let page =
                self.retry(|| self.from.read_transitions(src, run, after, MAX_PAGE_SIZE)).await?;
            if page.first().is_none_or(|t| t.seq.get() != next) {
                return Err(Error::Integrity {
                    run_id: Some(run.clone()),
                    seq: Some(next),
                    message: format!(
                        "the source's run has next_seq {n} but seq {next} cannot be read (purged while copying?)"
                    ),
                });
            }
            for t in page.into_iter().take_while(|t| t.seq.get() < n) {
                let body = checked_body(run, next, &prev, t)?;
                prev = chain_link(&prev, &body.content_hash());
                let size = body.canonical_json().len() + run.as_str().len() + 48;
                if count > 0 && (bytes + size > max_bytes || count >= max_count) {
                    appended += self.flush(dst, std::mem::take(&mut builder)).await?;
                    sent = true;
                    (bytes, count) = (0, 0);
                }
                builder.push_transition(Transition {
                    run_id: run.clone(),
                    seq: Seq::new(next)?,
                    body,
                })?;
                bytes += size;
                count += 1;
                next += 1;
            }
        }
        if builder.run_count() > 0 {
            appended += self.flush(dst, builder).await?;
            sent = true;
        }
        Ok((appended, sent))
    }

    async fn flush(&self, dst: &WriteScope, builder: BatchBuilder) -> Result<u64> {
        let batch = builder.build();
        let report = self.retry(|| self.to.append(dst, &batch)).await?;
        Ok(report.appended())
    }

    /// The transition at `seq` of `run` in `store`.
    async fn transition_at(
        &self,
        store: &dyn StorageBackend,
        scope: &ReadScope,
        run: &RunId,
        seq: u64,
    ) -> Result<StoredTransition> {
        let after = seq.checked_sub(1).map(Seq::new).transpose()?;
        let page = self.retry(|| store.read_transitions(scope, run, after, 1)).await?;
        page.into_iter().find(|t| t.seq.get() == seq).ok_or_else(|| Error::Integrity {
            run_id: Some(run.clone()),
            seq: Some(seq),
            message: "the transition below the run's next_seq cannot be read".into(),
        })
    }

    /// The conflict at the first seq where source and target differ, knowing their chain
    /// links differ at `differs_at`: bisected on chain links (a link commits to every
    /// transition up to it), a few reads whatever the run's length.
    async fn first_difference(
        &self,
        src: &ReadScope,
        dst: &ReadScope,
        run: &RunId,
        differs_at: u64,
    ) -> Error {
        let (mut lo, mut hi) = (0u64, differs_at);
        let bisect = async {
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                let a = self.transition_at(self.from, src, run, mid).await?.chain_hash;
                let b = self.transition_at(self.to, dst, run, mid).await?.chain_hash;
                if a == b {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let incoming = self.transition_at(self.from, src, run, lo).await?.content_hash;
            let stored = self.transition_at(self.to, dst, run, lo).await?.content_hash;
            Ok::<_, Error>(Error::Conflict {
                run_id: run.clone(),
                at: ConflictAt::Seq(lo),
                stored_hash: stored,
                incoming_hash: incoming,
            })
        };
        match bisect.await {
            Ok(conflict) | Err(conflict) => conflict,
        }
    }
}

/// The body of stored transition `t`, checked to be seq `seq` whose content hashes to its
/// stored content hash and whose link follows `prev`.
fn checked_body(
    run: &RunId,
    seq: u64,
    prev: &Digest,
    t: StoredTransition,
) -> Result<TransitionBody> {
    let corrupt = |message: String| Error::Integrity {
        run_id: Some(run.clone()),
        seq: Some(seq),
        message: format!("in the source: {message}; nothing from here on was copied"),
    };
    if t.seq.get() != seq {
        return Err(corrupt(format!("expected seq {seq}, read {}", t.seq)));
    }
    let (content, link) = (t.content_hash, t.chain_hash);
    let body = TransitionBody::new(t.body)
        .map_err(|e| corrupt(format!("the stored body is not a transition: {e}")))?;
    if body.content_hash() != content {
        return Err(corrupt(format!(
            "the stored body hashes to {}, its stored content hash is {content}",
            body.content_hash()
        )));
    }
    let expected = chain_link(prev, &content);
    if expected != link {
        return Err(corrupt(format!("the chain link is {expected}, stored {link}")));
    }
    Ok(body)
}

/// The run's metadata as stored: source, graph, labels.
///
/// # Errors
/// [`Error::Integrity`] ([`Error::corrupt`]) when the stored metadata is not valid metadata:
/// a corrupt store, not the caller's input.
pub fn source_meta(run: &RunSummary) -> Result<RunMeta> {
    let corrupt =
        |e: Error| Error::corrupt("stored run metadata", e).in_run(&run.info.run_id, None);
    let mut meta = RunMeta::new();
    if let Some(source) = &run.info.source {
        meta = meta.with_source(source.clone()).map_err(corrupt)?;
    }
    if let Some(graph) = &run.graph {
        meta = meta.with_graph(graph.clone()).map_err(corrupt)?;
    }
    for (k, v) in &run.info.labels {
        meta = meta.with_label(k.clone(), v.clone()).map_err(corrupt)?;
    }
    Ok(meta)
}

/// Whether `target` already holds every metadata field `source` has, with the same value.
fn holds_meta(target: &RunSummary, source: &RunSummary) -> bool {
    let (t, s) = (&target.info, &source.info);
    (s.source.is_none() || t.source == s.source)
        && (source.graph.is_none() || target.graph == source.graph)
        && s.labels.iter().all(|(k, v)| t.labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use kahn_core::{AppendBatch, MemoryBackend, NewTenant};

    use super::*;

    fn lines(run: &str, from: u64, to: u64, tag: &str) -> String {
        (from..to)
            .map(|i| {
                format!(
                    "{{\"run_id\":\"{run}\",\"seq\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"{tag}{i}\",\"attrs\":{{\"x\":0.1}}}}\n"
                )
            })
            .collect()
    }

    async fn store_with(name: &str, text: &str) -> (MemoryBackend, Tenant, WriteScope) {
        let store = MemoryBackend::new();
        let tenant = store.provision_tenant(&NewTenant::new(name).unwrap()).await.unwrap();
        let scope = store.operator_write_scope(tenant.id).await.unwrap();
        if !text.is_empty() {
            store.append(&scope, &AppendBatch::from_ndjson(text).unwrap()).await.unwrap();
        }
        (store, tenant, scope)
    }

    fn small() -> CopyOptions {
        CopyOptions { max_batch_transitions: 7, ..CopyOptions::default() }
    }

    #[tokio::test]
    async fn copies_resumes_and_skips_with_identical_heads() {
        let meta = r#"{"kind":"run","run_id":"a","source":"choco","graph":{"n":[1,2.5]},"labels":{"ci":"gh"}}"#;
        let empty = r#"{"kind":"run","run_id":"empty"}"#;
        let text = format!("{meta}\n{empty}\n{}{}", lines("a", 0, 50, "s"), lines("b", 0, 3, "t"));
        let (from, tenant, _) = store_with("t", &text).await;
        let key = from.issue_api_key(tenant.id).await.unwrap();
        let to = MemoryBackend::new();
        // Interrupted half way: the target holds the tenant and a prefix of run a.
        to.import_tenant(&from.export_tenant(tenant.id).await.unwrap()).await.unwrap();
        let dst = to.operator_write_scope(tenant.id).await.unwrap();
        to.append(&dst, &AppendBatch::from_ndjson(&lines("a", 0, 20, "s")).unwrap()).await.unwrap();

        let report = copy(&from, &to, &small(), &Quiet).await.unwrap();
        assert!(report.is_complete(), "{:?}", report.failures);
        let t = &report.totals;
        assert_eq!(
            (t.tenants_created, t.tenants_already_there, t.runs_copied, t.runs_resumed),
            (0, 1, 3, 1)
        );
        assert_eq!((t.transitions_appended, t.heads_verified, t.keys), (33, 3, 1));
        let read = from.resolve_admin_override(tenant.id).await.unwrap();
        let a = RunId::new("a").unwrap();
        let copied = to.get_run(&dst.read(), &a).await.unwrap();
        let original = from.get_run(&read, &a).await.unwrap();
        assert_eq!(copied.info.head_hash, original.info.head_hash);
        assert_eq!((copied.graph, copied.info.labels), (original.graph, original.info.labels));
        // The producer's key works on the target.
        assert!(to.resolve_api_key(&key.secret).await.unwrap().is_some());

        let again = copy(&from, &to, &small(), &Quiet).await.unwrap();
        assert!(again.is_complete());
        assert_eq!((again.totals.runs_copied, again.totals.runs_already_complete), (0, 3));
        assert_eq!((again.totals.transitions_appended, again.totals.heads_verified), (0, 3));
    }

    /// Embedders can spawn a copy or an export on a multi-threaded runtime.
    #[tokio::test]
    async fn copy_and_export_futures_are_send() {
        fn send<T: Send>(_: &T) {}
        let (a, b) = (MemoryBackend::new(), MemoryBackend::new());
        let opts = CopyOptions::default();
        send(&copy(&a, &b, &opts, &Quiet));
        let (_, _, scope) = store_with("t", "").await;
        let (scope, dir) = (scope.read(), std::path::PathBuf::new());
        send(&crate::export::export(&a, &scope, &dir, None));
    }

    #[tokio::test]
    async fn differing_content_is_a_conflict_at_the_first_differing_seq() {
        let (from, tenant, _) = store_with("t", &lines("a", 0, 40, "s")).await;
        let to = MemoryBackend::new();
        to.import_tenant(&from.export_tenant(tenant.id).await.unwrap()).await.unwrap();
        let dst = to.operator_write_scope(tenant.id).await.unwrap();
        let forked = format!("{}{}", lines("a", 0, 13, "s"), lines("a", 13, 30, "other"));
        to.append(&dst, &AppendBatch::from_ndjson(&forked).unwrap()).await.unwrap();
        let before = to.get_run(&dst.read(), &RunId::new("a").unwrap()).await.unwrap();

        let report = copy(&from, &to, &small(), &Quiet).await.unwrap();
        assert!(!report.is_complete() && !report.stopped);
        assert_eq!(report.failures.len(), 1);
        assert!(
            matches!(&report.failures[0].error, Error::Conflict { at: ConflictAt::Seq(13), .. }),
            "{:?}",
            report.failures
        );
        let after = to.get_run(&dst.read(), &RunId::new("a").unwrap()).await.unwrap();
        assert_eq!(before, after, "nothing rewritten");
    }

    #[tokio::test]
    async fn a_target_ahead_of_the_source_is_complete_when_it_extends_it() {
        let (from, tenant, _) = store_with("t", &lines("a", 0, 10, "s")).await;
        let to = MemoryBackend::new();
        to.import_tenant(&from.export_tenant(tenant.id).await.unwrap()).await.unwrap();
        let dst = to.operator_write_scope(tenant.id).await.unwrap();
        to.append(&dst, &AppendBatch::from_ndjson(&lines("a", 0, 15, "s")).unwrap()).await.unwrap();
        let report = copy(&from, &to, &small(), &Quiet).await.unwrap();
        assert!(report.is_complete(), "{:?}", report.failures);
        assert_eq!((report.totals.runs_already_complete, report.totals.heads_verified), (1, 1));
    }

    #[tokio::test]
    async fn a_tenant_whose_name_is_taken_fails_alone() {
        let (from, _, _) = store_with("taken", &lines("a", 0, 3, "s")).await;
        from.provision_tenant(&NewTenant::new("free").unwrap()).await.unwrap();
        let to = MemoryBackend::new();
        to.provision_tenant(&NewTenant::new("taken").unwrap()).await.unwrap();
        let report = copy(&from, &to, &small(), &Quiet).await.unwrap();
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].tenant, "taken");
        assert!(report.failures[0].message.contains("name"), "{}", report.failures[0].message);
        assert_eq!(report.totals.tenants_created, 1, "the other tenant is copied");
    }
}
