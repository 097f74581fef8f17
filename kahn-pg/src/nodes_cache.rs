//! The node summaries of the runs this process appended to last, kept between appends so
//! the next append of a run need not read them back.
//!
//! A run's node summaries are a function of its transitions alone, and its head hash commits
//! to every one of them: an entry is keyed by `(tenant, run, head)`, and it is the summaries
//! of whatever run is stored under that key, whoever stored it, whenever. So an entry is
//! never stale: a run that moved on (another pusher, another server) has another head, and
//! its entry is simply not found. Only complete sets are kept (every node of the run), since
//! a set missing a node would count that node as new.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use kahn_core::{Digest, NodeSummary, TenantId};

/// Runs kept at most.
const MAX_RUNS: usize = 64;

/// Node summaries kept at most, all runs together (about 200 bytes each).
const MAX_NODES: usize = 65_536;

/// A run's complete node summaries, by node.
pub(crate) type Nodes = BTreeMap<String, NodeSummary>;

type Key = (TenantId, String);

/// The cache; shared by the clones of a backend.
#[derive(Debug, Default)]
pub(crate) struct NodesCache {
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    runs: HashMap<Key, Entry>,
    /// Node summaries held, all entries together.
    nodes: usize,
    /// Orders the entries by age: the oldest goes first when the cache is full.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    head: Digest,
    nodes: Nodes,
    stamp: u64,
}

impl NodesCache {
    /// Takes out the complete node summaries of `run` when it is stored with `head`. Taken,
    /// not copied: the append that took them puts back what it advanced them to.
    pub(crate) fn take(&self, tenant: TenantId, run: &str, head: &Digest) -> Option<Nodes> {
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (tenant, run.to_owned());
        if entries.runs.get(&key).is_none_or(|e| e.head != *head) {
            return None;
        }
        let entry = entries.runs.remove(&key)?;
        entries.nodes -= entry.nodes.len();
        Some(entry.nodes)
    }

    /// Keeps `nodes`, the complete node summaries of `run` stored with `head`, evicting the
    /// oldest entries past the bounds. A run with more nodes than the whole cache holds is
    /// not kept.
    pub(crate) fn put(&self, tenant: TenantId, run: &str, head: Digest, nodes: Nodes) {
        if nodes.len() > MAX_NODES {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (tenant, run.to_owned());
        if let Some(old) = entries.runs.remove(&key) {
            entries.nodes -= old.nodes.len();
        }
        while entries.runs.len() >= MAX_RUNS || entries.nodes + nodes.len() > MAX_NODES {
            let Some(oldest) =
                entries.runs.iter().min_by_key(|(_, e)| e.stamp).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = entries.runs.remove(&oldest) {
                entries.nodes -= old.nodes.len();
            }
        }
        entries.clock += 1;
        entries.nodes += nodes.len();
        let stamp = entries.clock;
        entries.runs.insert(key, Entry { head, nodes, stamp });
    }
}

#[cfg(test)]
mod tests {
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

    fn nodes(n: usize) -> Nodes {
        (0..n).map(|i| (format!("n{i}"), node(&format!("n{i}")))).collect()
    }

    #[test]
    fn an_entry_is_found_only_under_its_tenant_run_and_head() {
        let cache = NodesCache::default();
        let (t, other) = (TenantId::new_random(), TenantId::new_random());
        let (h, h2) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
        cache.put(t, "r", h, nodes(3));
        assert!(cache.take(other, "r", &h).is_none());
        assert!(cache.take(t, "r2", &h).is_none());
        assert!(cache.take(t, "r", &h2).is_none());
        assert_eq!(cache.take(t, "r", &h).map(|n| n.len()), Some(3));
        // Taken out: a second append of the run reads its nodes from the database.
        assert!(cache.take(t, "r", &h).is_none());
    }

    #[test]
    fn the_oldest_entries_go_first_and_the_bounds_hold() {
        let cache = NodesCache::default();
        let t = TenantId::new_random();
        let h = Digest::sha256(b"h");
        for i in 0..MAX_RUNS + 3 {
            cache.put(t, &format!("r{i}"), h, nodes(1));
        }
        assert!(cache.take(t, "r0", &h).is_none());
        assert!(cache.take(t, "r2", &h).is_none());
        assert!(cache.take(t, &format!("r{}", MAX_RUNS + 2), &h).is_some());
        // A large run pushes out as many as it needs, and the count of nodes stays exact.
        cache.put(t, "big", h, nodes(MAX_NODES - 10));
        let held = cache.inner.lock().map(|e| e.nodes).unwrap_or(usize::MAX);
        assert!(held <= MAX_NODES, "{held} nodes held");
        assert_eq!(cache.take(t, "big", &h).map(|n| n.len()), Some(MAX_NODES - 10));
        cache.put(t, "huge", h, nodes(MAX_NODES + 1));
        assert!(cache.take(t, "huge", &h).is_none());
    }
}
