//! Appends to one run wait, within this server, for the appends to it that arrived before.
//!
//! A pusher keeps two chunks of a run in flight (`kahn_push`'s `appends_in_flight`), so the
//! server parses chunk k+1 while chunk k is appended. Without an order, chunk k+1 could reach
//! the store first and be refused as a `Gap` (nothing written; the pusher then re-sends it).
//! With this queue it waits for chunk k's append to finish — succeed or fail — and then goes
//! to the store like any append: the append rules decide, unchanged. The queue only orders;
//! it never decides. Between servers (behind a load balancer) nothing is ordered, and the
//! pusher's re-send after a `Gap` keeps the push correct.
//!
//! Waits are taken in arrival order (each request waits only for requests that entered
//! before it), so two requests never wait for each other.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use kahn_core::{AppendBatch, RunId, TenantId};
use tokio::sync::watch;

type Key = (TenantId, RunId);

/// Per run, the requests queued: their entry number and what signals they left.
type Queued = Vec<(u64, watch::Receiver<()>)>;

/// The appends in flight in this server, by run.
#[derive(Debug, Default)]
pub(crate) struct RunQueue {
    next: AtomicU64,
    entered: Mutex<HashMap<Key, Queued>>,
}

/// A request's place in the queues of the runs of its batch; leaving (drop) lets the requests
/// behind it go.
#[derive(Debug)]
pub(crate) struct Place<'q> {
    queue: &'q RunQueue,
    id: u64,
    keys: Vec<Key>,
    /// Never sent on: dropping it is the signal (every receiver's `changed()` then returns).
    _done: watch::Sender<()>,
}

/// The requests a new one waits for.
#[derive(Debug)]
pub(crate) struct Ahead(Vec<watch::Receiver<()>>);

impl Ahead {
    /// Waits until every request ahead left (answered, failed, or was dropped).
    pub(crate) async fn wait(self) {
        for mut done in self.0 {
            // Resolves with an error once the sender is dropped; nothing is ever sent.
            let _ = done.changed().await;
        }
    }

    /// Whether there is nothing to wait for.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl RunQueue {
    /// Takes a place behind every request already queued for a run of `batch`.
    pub(crate) fn enter(&self, tenant: TenantId, batch: &AppendBatch) -> (Place<'_>, Ahead) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (done, receiver) = watch::channel(());
        let keys: Vec<Key> = batch.runs().iter().map(|r| (tenant, r.run_id().clone())).collect();
        let mut ahead = Vec::new();
        {
            let mut entered = self.entered.lock().unwrap_or_else(|p| p.into_inner());
            for key in &keys {
                let queue = entered.entry(key.clone()).or_default();
                ahead.extend(queue.iter().map(|(_, r)| r.clone()));
                queue.push((id, receiver.clone()));
            }
        }
        (Place { queue: self, id, keys, _done: done }, Ahead(ahead))
    }

    /// How many runs have a request queued (for tests).
    #[cfg(test)]
    fn runs_queued(&self) -> usize {
        self.entered.lock().map(|m| m.len()).unwrap_or_default()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut entered = self.queue.entered.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            if let Some(queue) = entered.get_mut(key) {
                queue.retain(|(id, _)| *id != self.id);
                if queue.is_empty() {
                    entered.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn batch(runs: &[&str]) -> AppendBatch {
        let text: String = runs
            .iter()
            .map(|r| format!("{{\"run_id\":\"{r}\",\"seq\":0,\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"x\"}}\n"))
            .collect();
        AppendBatch::from_ndjson(&text).expect("valid batch")
    }

    #[tokio::test]
    async fn a_request_waits_for_the_one_before_on_the_same_run_only() {
        let q = RunQueue::default();
        let tenant = TenantId::new_random();
        let (first, ahead) = q.enter(tenant, &batch(&["a"]));
        assert!(ahead.is_empty());
        let (_other, ahead) = q.enter(tenant, &batch(&["b"]));
        assert!(ahead.is_empty(), "another run does not wait");
        let (_other_tenant, ahead) = q.enter(TenantId::new_random(), &batch(&["a"]));
        assert!(ahead.is_empty(), "the same run id of another tenant does not wait");
        let (second, ahead) = q.enter(tenant, &batch(&["a"]));
        let mut waiting = tokio::spawn(ahead.wait());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting).await.is_err(),
            "the second waits while the first is in flight"
        );
        drop(first);
        waiting.await.expect("the second goes once the first left");
        drop(second);
        drop(_other);
        drop(_other_tenant);
        assert_eq!(q.runs_queued(), 0, "leaving empties the queues");
    }

    #[tokio::test]
    async fn a_batch_of_several_runs_waits_for_each_and_is_waited_for_by_each() {
        let q = RunQueue::default();
        let tenant = TenantId::new_random();
        let (a, _) = q.enter(tenant, &batch(&["a"]));
        let (ab, ahead) = q.enter(tenant, &batch(&["a", "b"]));
        assert_eq!(ahead.0.len(), 1);
        let (_b, ahead_b) = q.enter(tenant, &batch(&["b"]));
        assert_eq!(ahead_b.0.len(), 1, "b waits for the batch holding a and b");
        drop(a);
        ahead.wait().await;
        drop(ab);
        ahead_b.wait().await;
    }
}
