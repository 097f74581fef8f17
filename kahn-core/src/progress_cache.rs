//! The progress of the runs a process appended to last, kept between its appends so that an
//! adapter's next append of a run need not read the run's node summaries back.
//!
//! A run's progress ([`Progress`]: status, counts, times and every node summary) is a function
//! of its transitions alone, and its head hash commits to every one of them: an entry is keyed
//! by `(tenant, run, head)`, and it is the progress of whatever run is stored under that key,
//! whoever stored it, whenever. So an entry is never stale: a run that moved on (another
//! pusher, another process on the same database) has another head, and its entry is simply
//! not found. Only complete node sets belong here (every node of the run), since a set
//! missing a node would count that node as new.
//!
//! This is the bounded map alone, for one owner (`&mut self`); an adapter shares it as it
//! needs (kahn-sqlite's writer thread behind a mutex it alone takes, kahn-pg's connections
//! behind a mutex with promises of entries under way).

use std::collections::HashMap;

use crate::hash::Digest;
use crate::id::TenantId;
use crate::status::Progress;

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

/// The progress of at most 64 runs (and 16 MiB), each under the head it was worked out for;
/// the oldest entry goes first.
#[derive(Debug, Default)]
pub struct ProgressCache {
    runs: HashMap<(TenantId, String), Entry>,
    /// Bytes held ([`size`]), all entries together.
    bytes: usize,
    /// Orders the entries by age: the oldest goes first when the cache is full.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    head: Digest,
    progress: Progress,
    bytes: usize,
    stamp: u64,
}

impl ProgressCache {
    /// The most node summaries a run not in the cache may have for an adapter to read them
    /// all, rather than only those an append touches, so that the run's progress is complete
    /// and can be kept: its next append then finds it here (a push resumed by a new process,
    /// a run pushed out of the cache by others).
    pub const READ_WHOLE_RUN_NODES: u64 = 10_000;

    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes out the progress of `run`, with every node summary, when it is kept under
    /// `head`. Taken, not copied: the append that took it puts back what it advanced it to.
    pub fn take(&mut self, tenant: TenantId, run: &str, head: &Digest) -> Option<Progress> {
        let key = (tenant, run.to_owned());
        if self.runs.get(&key).is_none_or(|e| e.head != *head) {
            return None;
        }
        let entry = self.runs.remove(&key)?;
        self.bytes -= entry.bytes;
        Some(entry.progress)
    }

    /// Keeps `progress`, that of `run` stored with `head`, with every node summary, evicting
    /// the oldest entries past the bounds. A run larger than the whole cache is not kept.
    pub fn put(&mut self, tenant: TenantId, run: &str, head: Digest, progress: Progress) {
        let bytes = size(&progress);
        if bytes > MAX_BYTES {
            return;
        }
        let key = (tenant, run.to_owned());
        if let Some(old) = self.runs.remove(&key) {
            self.bytes -= old.bytes;
        }
        while self.runs.len() >= MAX_RUNS || self.bytes + bytes > MAX_BYTES {
            let Some(oldest) =
                self.runs.iter().min_by_key(|(_, e)| e.stamp).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(old) = self.runs.remove(&oldest) {
                self.bytes -= old.bytes;
            }
        }
        self.clock += 1;
        self.bytes += bytes;
        let stamp = self.clock;
        self.runs.insert(key, Entry { head, progress, bytes, stamp });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{NodeSummary, StateClass};

    fn node(name: &str) -> NodeSummary {
        NodeSummary {
            node: name.to_owned(),
            state: "running".to_owned(),
            class: StateClass::of("running"),
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
        let mut cache = ProgressCache::new();
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
        let mut cache = ProgressCache::new();
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
        assert!(cache.bytes <= MAX_BYTES && cache.bytes >= size(&big), "{} held", cache.bytes);
        assert!(cache.take(t, "r3", &h).is_none(), "the oldest is pushed out");
        assert!(cache.take(t, &format!("r{}", MAX_RUNS + 1), &h).is_some(), "the newest stays");
        assert_eq!(cache.take(t, "big", &h).map(|p| p.nodes.len()), Some(1000));
        // The count of bytes is exact: with every entry taken, nothing is held.
        for i in 0..MAX_RUNS + 3 {
            cache.take(t, &format!("r{i}"), &h);
        }
        assert_eq!((cache.bytes, cache.runs.len()), (0, 0));
        // Few nodes with long names count by their bytes: more than the cache holds is not kept.
        cache.put(t, "huge", h, long_nodes(10, MAX_BYTES / 5));
        assert!(cache.take(t, "huge", &h).is_none());
    }
}
