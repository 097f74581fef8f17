//! The progress of the runs this process appended to last (status, counts, times and every
//! node summary), kept between appends so the next append of a run need neither read it back
//! nor wait for the database to work it out.
//!
//! A run's progress is a function of its transitions alone, and its head hash commits to
//! every one of them: an entry is keyed by `(tenant, run, head)`, and it is the progress of
//! whatever run is stored under that key, whoever stored it, whenever. So an entry is never
//! stale: a run that moved on (another pusher, another server) has another head, and its entry
//! is simply not found. Only complete node sets are kept (every node of the run), since a set
//! missing a node would count that node as new.
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

/// Runs kept at most.
const MAX_RUNS: usize = 64;

/// Bytes of progress kept at most, all runs together (as [`size`] counts them): node names
/// and states have no length limit, so the bound is on their bytes, not their number.
const MAX_BYTES: usize = 16 << 20;

/// What a run's progress holds in memory, about: its strings and a fixed cost per node
/// summary (the summary itself and its map entry) and for the run's own.
fn size(progress: &Progress) -> usize {
    let run = 160 + progress.run.run_state.as_ref().map_or(0, String::len);
    let nodes = progress.nodes.iter().map(|(k, n)| 160 + k.len() + n.node.len() + n.state.len());
    run + nodes.sum::<usize>()
}

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
    runs: HashMap<Key, Entry>,
    /// Bytes held ([`size`]), all entries together.
    bytes: usize,
    /// Orders the entries by age: the oldest goes first when the cache is full.
    clock: u64,
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

#[derive(Debug)]
struct Entry {
    head: Digest,
    progress: Progress,
    bytes: usize,
    stamp: u64,
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
    /// `head`. Taken, not copied: the append that took it puts back what it advanced it to.
    pub(crate) fn take(&self, tenant: TenantId, run: &str, head: &Digest) -> Option<Progress> {
        let mut entries = self.lock();
        let key = (tenant, run.to_owned());
        if entries.runs.get(&key).is_none_or(|e| e.head != *head) {
            return None;
        }
        let entry = entries.runs.remove(&key)?;
        entries.bytes -= entry.bytes;
        Some(entry.progress)
    }

    /// Keeps `progress`, that of `run` stored with `head`, with every node summary, evicting
    /// the oldest entries past the bounds. A run larger than the whole cache is not kept.
    pub(crate) fn put(&self, tenant: TenantId, run: &str, head: Digest, progress: Progress) {
        let bytes = size(&progress);
        if bytes > MAX_BYTES {
            return;
        }
        let mut entries = self.lock();
        let key = (tenant, run.to_owned());
        if let Some(old) = entries.runs.remove(&key) {
            entries.bytes -= old.bytes;
        }
        while entries.runs.len() >= MAX_RUNS || entries.bytes + bytes > MAX_BYTES {
            let Some(oldest) =
                entries.runs.iter().min_by_key(|(_, e)| e.stamp).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = entries.runs.remove(&oldest) {
                entries.bytes -= old.bytes;
            }
        }
        entries.clock += 1;
        entries.bytes += bytes;
        let stamp = entries.clock;
        entries.runs.insert(key, Entry { head, progress, bytes, stamp });
        drop(entries);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use kahn_core::NodeSummary;

    use super::*;

    fn node(name: &str) -> NodeSummary {
        NodeSummary {
            node: name.to_owned(),
            state: "running".to_owned(),
            class: kahn_core::StateClass::of("running"),
            started_at: None,
            ended_at: None,
            attempts: 1,
            first_seq: 0,
            last_seq: 0,
        }
    }

    /// A run's progress with `n` node summaries.
    fn nodes(n: usize) -> Progress {
        Progress::new(Default::default(), (0..n).map(|i| node(&format!("n{i}"))))
    }

    /// `n` summaries of nodes whose names are `len` bytes long.
    fn long_nodes(n: usize, len: usize) -> Progress {
        let named = |i: usize| {
            let mut name = format!("{i}");
            name.push_str(&"x".repeat(len.saturating_sub(name.len())));
            node(&name)
        };
        Progress::new(Default::default(), (0..n).map(named))
    }

    #[test]
    fn an_entry_is_found_only_under_its_tenant_run_and_head() {
        let cache = ProgressCache::default();
        let (t, other) = (TenantId::new_random(), TenantId::new_random());
        let (h, h2) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
        cache.put(t, "r", h, nodes(3));
        assert!(cache.take(other, "r", &h).is_none());
        assert!(cache.take(t, "r2", &h).is_none());
        assert!(cache.take(t, "r", &h2).is_none());
        assert_eq!(cache.take(t, "r", &h).map(|p| p.nodes.len()), Some(3));
        // Taken out: a second append of the run reads its nodes from the database.
        assert!(cache.take(t, "r", &h).is_none());
    }

    #[test]
    fn the_oldest_entries_go_first_and_the_bounds_hold() {
        let cache = ProgressCache::default();
        let t = TenantId::new_random();
        let h = Digest::sha256(b"h");
        for i in 0..MAX_RUNS + 3 {
            cache.put(t, &format!("r{i}"), h, nodes(1));
        }
        assert!(cache.take(t, "r0", &h).is_none());
        assert!(cache.take(t, "r2", &h).is_none());
        assert!(cache.take(t, &format!("r{}", MAX_RUNS + 2), &h).is_some());
        // A large run pushes out the oldest entries, as many as it needs, and no more.
        let big = long_nodes(1000, (MAX_BYTES / 1000 - 170) / 2);
        cache.put(t, "big", h, big.clone());
        let held = cache.inner.lock().map(|e| e.bytes).unwrap_or(usize::MAX);
        assert!(held <= MAX_BYTES && held >= size(&big), "{held} bytes held");
        assert!(cache.take(t, "r3", &h).is_none(), "the oldest is pushed out");
        assert!(cache.take(t, &format!("r{}", MAX_RUNS + 1), &h).is_some(), "the newest stays");
        assert_eq!(cache.take(t, "big", &h).map(|p| p.nodes.len()), Some(1000));
        // The count of bytes is exact: with every entry taken, nothing is held.
        for i in 0..MAX_RUNS + 3 {
            cache.take(t, &format!("r{i}"), &h);
        }
        assert_eq!(cache.inner.lock().map(|e| (e.bytes, e.runs.len())).ok(), Some((0, 0)));
        // Few nodes with long names count by their bytes: more than the cache holds is not kept.
        cache.put(t, "huge", h, long_nodes(10, MAX_BYTES / 5));
        assert!(cache.take(t, "huge", &h).is_none());
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
