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

/// Bytes of node summaries kept at most, all runs together (as [`size`] counts them): node
/// names and states have no length limit, so the bound is on their bytes, not their number.
const MAX_BYTES: usize = 16 << 20;

/// What a run's summaries hold in memory, about: their strings and a fixed cost per summary
/// (the summary itself and its map entry).
fn size(nodes: &Nodes) -> usize {
    nodes.iter().map(|(k, n)| 160 + k.len() + n.node.len() + n.state.len()).sum()
}

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
    /// Bytes held ([`size`]), all entries together.
    bytes: usize,
    /// Orders the entries by age: the oldest goes first when the cache is full.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    head: Digest,
    nodes: Nodes,
    bytes: usize,
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
        entries.bytes -= entry.bytes;
        Some(entry.nodes)
    }

    /// Keeps `nodes`, the complete node summaries of `run` stored with `head`, evicting the
    /// oldest entries past the bounds. A run larger than the whole cache is not kept.
    pub(crate) fn put(&self, tenant: TenantId, run: &str, head: Digest, nodes: Nodes) {
        let bytes = size(&nodes);
        if bytes > MAX_BYTES {
            return;
        }
        let mut entries = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
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
        entries.runs.insert(key, Entry { head, nodes, bytes, stamp });
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

    /// `n` summaries of nodes whose names are `len` bytes long.
    fn long_nodes(n: usize, len: usize) -> Nodes {
        (0..n)
            .map(|i| {
                let mut name = format!("{i}");
                name.push_str(&"x".repeat(len.saturating_sub(name.len())));
                (name.clone(), node(&name))
            })
            .collect()
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
        // A large run pushes out the oldest entries, as many as it needs, and no more.
        let big = long_nodes(1000, (MAX_BYTES / 1000 - 170) / 2);
        cache.put(t, "big", h, big.clone());
        let held = cache.inner.lock().map(|e| e.bytes).unwrap_or(usize::MAX);
        assert!(held <= MAX_BYTES && held >= size(&big), "{held} bytes held");
        assert!(cache.take(t, "r3", &h).is_none(), "the oldest is pushed out");
        assert!(cache.take(t, &format!("r{}", MAX_RUNS + 1), &h).is_some(), "the newest stays");
        assert_eq!(cache.take(t, "big", &h).map(|n| n.len()), Some(1000));
        // The count of bytes is exact: with every entry taken, nothing is held.
        for i in 0..MAX_RUNS + 3 {
            cache.take(t, &format!("r{i}"), &h);
        }
        assert_eq!(cache.inner.lock().map(|e| (e.bytes, e.runs.len())).ok(), Some((0, 0)));
        // Few nodes with long names count by their bytes: more than the cache holds is not kept.
        cache.put(t, "huge", h, long_nodes(10, MAX_BYTES / 5));
        assert!(cache.take(t, "huge", &h).is_none());
    }
}
