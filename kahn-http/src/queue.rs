//! Appends to one run wait, within this server, for the appends to it that arrived before.
//!
//! A pusher keeps two chunks of a run in flight (`kahn_push`'s `appends_in_flight`), so the
//! server parses chunk k+1 while chunk k is appended. Without an order, chunk k+1 could reach
//! the store first and be refused as a `Gap` (nothing written; the pusher then re-sends it).
//! With this queue it waits for chunk k's append to finish — succeed or fail — and then goes
//! to the store like any append: the append rules decide, unchanged. A backend whose appends
//! reach the store in the order they were first polled (SQLite's one writer,
//! [`appends_in_poll_order`](kahn_core::StorageBackend::appends_in_poll_order)) keeps that
//! order itself: there chunk k+1 goes as soon as chunk k's append was polled once, and is
//! applied after it (other calls may come between the two), already queued when the writer is
//! done with chunk k. Either way a request leaves the queue when its append is answered, before
//! its receipts are signed, so consecutive chunks' receipts may be signed in either order (each
//! names the head its own append left). The queue only orders; it never decides. Between
//! servers (behind a load balancer) nothing is ordered, and the pusher's re-send after a `Gap`
//! keeps the push correct.
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

impl Place<'_> {
    /// Awaits `append`, leaving this place once `append` has been polled for the first time
    /// when `polled_is_placed` (the backend's
    /// [`appends_in_poll_order`](kahn_core::StorageBackend::appends_in_poll_order): from then
    /// on the store itself keeps the requests behind in order), else once it is answered.
    pub(crate) async fn hold_for<F: Future>(self, append: F, polled_is_placed: bool) -> F::Output {
        if !polled_is_placed {
            let answer = append.await;
            drop(self);
            return answer;
        }
        let mut append = std::pin::pin!(append);
        let mut place = Some(self);
        std::future::poll_fn(|cx| {
            let polled = append.as_mut().poll(cx);
            drop(place.take());
            polled
        })
        .await
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

/// Where this server last computed each run's chain to: the seq after a parsed batch's last
/// transition and the link there. The next chunk of the run (parsed while that batch is
/// appended) computes its links from it, on the request's thread, instead of the store's
/// writer doing it inside the append ([`BatchBuilder::chain_ahead`]). A guess only: the store
/// uses links computed ahead only when its stored link before the chunk is the one they were
/// computed from, so a stale or wrong tip costs the work, never correctness.
///
/// Bounded: past [`ChainTips::CAPACITY`] runs it forgets them all and starts again.
///
/// [`BatchBuilder::chain_ahead`]: kahn_core::BatchBuilder::chain_ahead
#[derive(Debug, Default)]
pub(crate) struct ChainTips {
    tips: Mutex<HashMap<Key, (u64, kahn_core::Digest)>>,
}

impl ChainTips {
    /// Runs remembered at most.
    pub(crate) const CAPACITY: usize = 4096;

    /// Computes the links of `builder`'s runs ahead where a tip (or seq 0) says where their
    /// chains start, and remembers where they end.
    pub(crate) fn chain_ahead(&self, tenant: TenantId, builder: &mut kahn_core::BatchBuilder) {
        // The lock is held per lookup, never while links are computed.
        let ends = builder.chain_ahead(|run, start| {
            if start == 0 {
                return Some(kahn_core::Digest::ZERO);
            }
            match self.tips.lock().ok()?.get(&(tenant, run.clone())) {
                Some(&(next, head)) if next == start => Some(head),
                _ => None,
            }
        });
        // A request of thousands of small runs is not what a tip is for.
        if ends.len() > Self::CAPACITY {
            return;
        }
        let Ok(mut tips) = self.tips.lock() else { return };
        if tips.len() + ends.len() > Self::CAPACITY {
            tips.clear();
        }
        for (run, end, head) in ends {
            tips.insert((tenant, run), (end, head));
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
    async fn a_place_held_for_an_append_is_left_when_the_backend_says_a_poll_places_it() {
        let q = RunQueue::default();
        let tenant = TenantId::new_random();
        for polled_is_placed in [true, false] {
            let (first, _) = q.enter(tenant, &batch(&["a"]));
            let (_second, ahead) = q.enter(tenant, &batch(&["a"]));
            // An append that never answers, and checks at its first poll that the place is
            // still held (leaving before the append is placed would let the next one overtake
            // it); then the next request waiting beside it.
            let probe = ahead.0[0].clone();
            let mut polled = false;
            let append = std::future::poll_fn(move |_| {
                if !polled {
                    polled = true;
                    let held = matches!(probe.has_changed(), Ok(false));
                    assert!(held, "the place was left before the append's first poll");
                }
                std::task::Poll::<()>::Pending
            });
            let holding = first.hold_for(append, polled_is_placed);
            let waited = tokio::select! {
                () = holding => unreachable!("the append never answers"),
                waited = tokio::time::timeout(Duration::from_millis(200), ahead.wait()) => waited,
            };
            assert_eq!(
                waited.is_ok(),
                polled_is_placed,
                "the next request goes while the append is unanswered only when a poll placed it"
            );
            drop(_second);
        }
        assert_eq!(q.runs_queued(), 0);
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

    fn chunk(run: &str, seqs: std::ops::Range<u64>) -> kahn_core::BatchBuilder {
        use kahn_core::conformance::fixtures::{recent_base, transition_line};
        let mut b = kahn_core::BatchBuilder::new();
        for seq in seqs {
            let line = transition_line(run, seq, "x", recent_base());
            b.push(kahn_core::NdjsonLine::parse(&line).unwrap().unwrap()).unwrap();
        }
        b
    }

    #[test]
    fn a_run_s_next_chunk_is_chained_from_where_the_last_one_ended() {
        let tips = ChainTips::default();
        let tenant = TenantId::new_random();
        let mut first = chunk("a", 0..3);
        tips.chain_ahead(tenant, &mut first);
        let first = first.build();
        let run = &first.runs()[0];
        let end = *run
            .links_ahead(&kahn_core::Digest::ZERO)
            .expect("seq 0 chains from zero")
            .last()
            .unwrap();
        let mut next = chunk("a", 3..5);
        tips.chain_ahead(tenant, &mut next);
        assert!(next.build().runs()[0].links_ahead(&end).is_some(), "chained from the tip");
        // Not where a tip says, or another tenant's run of that id: left to the store.
        let mut skipped = chunk("a", 9..10);
        tips.chain_ahead(tenant, &mut skipped);
        let mut other = chunk("a", 3..5);
        tips.chain_ahead(TenantId::new_random(), &mut other);
        for b in [skipped.build(), other.build()] {
            assert!(b.runs()[0].links_ahead(&end).is_none());
        }
    }
}
