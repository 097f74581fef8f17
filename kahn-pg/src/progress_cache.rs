//! The progress of the runs this process appended to last (status, counts, times and every
//! node summary), kept between appends so the next append of a run need neither read it back
//! nor wait for the database to work it out: kahn-core's [`kahn_core::ProgressCache`] (keyed
//! by `(tenant, run, head)`, so never stale; see there), shared by the backend's connections.
//!
//! An append that will lead a run to a known head (its links were computed ahead) promises
//! that head's progress ([`ProgressCache::promise`]) while it works it out, and the next
//! append of the run, sent before it finished, waits for it ([`ProgressCache::take_or_wait`])
//! rather than go without: a pusher straight to the database sends a run's next chunk while
//! the one before is under way, and would otherwise look before that one has put anything.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use kahn_core::{Digest, Progress, TenantId};

type Key = (TenantId, String);

/// The cache; shared by the clones of a backend.
#[derive(Debug, Default)]
pub(crate) struct ProgressCache {
    inner: Mutex<Entries>,
    /// Woken when an entry is put and when a promise ends.
    changed: Notify,
}

#[derive(Debug, Default)]
struct Entries {
    /// The progress kept (kahn-core's bounded map, shared with kahn-sqlite).
    runs: kahn_core::ProgressCache,
    /// The heads appends under way will put the progress of, with how many promise each.
    promised: HashMap<(Key, Digest), usize>,
}

/// A promise to put a run's progress under a head ([`ProgressCache::promise`]); ends when
/// dropped, kept or not.
#[derive(Debug)]
pub(crate) struct Promise<'a> {
    cache: &'a ProgressCache,
    key: (Key, Digest),
}

impl Drop for Promise<'_> {
    fn drop(&mut self) {
        let mut entries = self.cache.lock();
        if let Some(n) = entries.promised.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                entries.promised.remove(&self.key);
            }
        }
        drop(entries);
        self.cache.changed.notify_waiters();
    }
}

impl ProgressCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Announces that the caller is working out the progress of `run` under `head`, and will
    /// put it (or give up) before it drops the promise.
    pub(crate) fn promise(&self, tenant: TenantId, run: &str, head: Digest) -> Promise<'_> {
        let key = ((tenant, run.to_owned()), head);
        *self.lock().promised.entry(key.clone()).or_default() += 1;
        Promise { cache: self, key }
    }

    /// [`take`](Self::take), and while an append under way has promised that entry, waits
    /// for it to be put, for at most `patience`.
    pub(crate) async fn take_or_wait(
        &self,
        tenant: TenantId,
        run: &str,
        head: &Digest,
        patience: Duration,
    ) -> Option<Progress> {
        let deadline = Instant::now() + patience;
        let key = ((tenant, run.to_owned()), *head);
        loop {
            // Listening before looking: a put between the look and the wait still wakes it.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if let Some(progress) = self.take(tenant, run, head) {
                return Some(progress);
            }
            if !self.lock().promised.contains_key(&key) {
                return None;
            }
            tokio::time::timeout_at(deadline, changed).await.ok()?;
        }
    }

    /// Takes out the progress of `run`, with every node summary, when it is stored with
    /// `head` (see [`kahn_core::ProgressCache::take`]).
    pub(crate) fn take(&self, tenant: TenantId, run: &str, head: &Digest) -> Option<Progress> {
        self.lock().runs.take(tenant, run, head)
    }

    /// Keeps `progress`, that of `run` stored with `head`, with every node summary (see
    /// [`kahn_core::ProgressCache::put`]), and wakes whoever waits for it.
    pub(crate) fn put(&self, tenant: TenantId, run: &str, head: Digest, progress: Progress) {
        self.lock().runs.put(tenant, run, head, progress);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use kahn_core::NodeSummary;

    use super::*;

    /// A run's progress with `n` node summaries.
    fn nodes(n: usize) -> Progress {
        let node = |i: usize| NodeSummary {
            node: format!("n{i}"),
            state: "running".to_owned(),
            class: kahn_core::StateClass::of("running"),
            started_at: None,
            ended_at: None,
            attempts: 1,
            first_seq: 0,
            last_seq: 0,
        };
        Progress::new(Default::default(), (0..n).map(node))
    }

    #[tokio::test]
    async fn a_promised_entry_is_waited_for_until_put_or_given_up() {
        let cache = std::sync::Arc::new(ProgressCache::default());
        let t = TenantId::new_random();
        let (h, h2) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
        let patience = Duration::from_secs(30);
        // Nothing promised: no wait.
        assert!(cache.take_or_wait(t, "r", &h, patience).await.is_none());

        // Promised, then put: the waiter gets it.
        let promise = cache.promise(t, "r", h);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.take_or_wait(t, "r", &h, patience).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "it waits while the entry is promised");
        cache.put(t, "r", h2, nodes(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "another head's entry does not end the wait");
        cache.put(t, "r", h, nodes(2));
        let got = waiter.await.map(|p| p.map(|p| p.nodes.len())).ok();
        assert_eq!(got, Some(Some(2)));
        drop(promise);

        // Promised, then given up: the waiter goes on without.
        let promise = cache.promise(t, "r", h);
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.take_or_wait(t, "r", &h, patience).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(promise);
        assert_eq!(waiter.await.map(|p| p.is_none()).ok(), Some(true));
        assert!(cache.lock().promised.is_empty(), "a promise ends when dropped");

        // Promised and never kept: the wait ends with the patience.
        let _promise = cache.promise(t, "r", h);
        let waited = Instant::now();
        assert!(cache.take_or_wait(t, "r", &h, Duration::from_millis(100)).await.is_none());
        assert!(waited.elapsed() >= Duration::from_millis(100));
    }
}
