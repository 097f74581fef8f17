//! Run status and durations (DESIGN.md "Run status and durations"): the one place a state
//! string is classified and a run's status derived, so every adapter reports the same thing.
//!
//! Adapters keep a [`RunProgress`] per run and a [`NodeSummary`] per node, and update them at
//! append time with [`Progress::apply`]: a read never scans a run's transitions to say how it
//! is doing.
//!
//! Durations: a node's `started_at` is its first active transition; its `ended_at` is the first
//! terminal transition after it last became active (a retried node that is running again has
//! not ended), or its first terminal transition when it never became active. A run starts at
//! its first transition and ends at the transition that made its status terminal; it has no
//! end while its status is not terminal.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::rules::truncate_micros;
use crate::transition::TransitionBody;

/// The class of a state string. Classification is case-insensitive; the vocabulary covers
/// Airflow, Dagster, Argo, GitHub Actions, GitLab CI, Tekton and Prefect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateClass {
    /// failed, failure, error, errored, upstream_failed, timed_out, timeout, crashed.
    Failed,
    /// cancelled, canceled, aborted, terminated, killed.
    Cancelled,
    /// running, started, in_progress, retrying, up_for_retry.
    Active,
    /// pending, queued, scheduled, created, waiting, manual, blocked.
    Waiting,
    /// succeeded, success, successful, passed, done, completed, ok.
    Succeeded,
    /// skipped, upstream_skipped, excluded.
    Skipped,
    /// Anything else.
    Other,
}

impl StateClass {
    /// Every class, in the order counts are listed.
    pub const ALL: [StateClass; 7] = [
        StateClass::Failed,
        StateClass::Cancelled,
        StateClass::Active,
        StateClass::Waiting,
        StateClass::Succeeded,
        StateClass::Skipped,
        StateClass::Other,
    ];

    /// The class of `state`, case-insensitively; [`Other`](Self::Other) when unknown.
    pub fn of(state: &str) -> Self {
        const TABLE: [(StateClass, &[&str]); 6] = [
            (
                StateClass::Failed,
                &[
                    "failed",
                    "failure",
                    "error",
                    "errored",
                    "upstream_failed",
                    "timed_out",
                    "timeout",
                    "crashed",
                ],
            ),
            (StateClass::Cancelled, &["cancelled", "canceled", "aborted", "terminated", "killed"]),
            (
                StateClass::Active,
                &["running", "started", "in_progress", "retrying", "up_for_retry"],
            ),
            (
                StateClass::Waiting,
                &["pending", "queued", "scheduled", "created", "waiting", "manual", "blocked"],
            ),
            (
                StateClass::Succeeded,
                &["succeeded", "success", "successful", "passed", "done", "completed", "ok"],
            ),
            (StateClass::Skipped, &["skipped", "upstream_skipped", "excluded"]),
        ];
        TABLE
            .iter()
            .find(|(_, names)| names.iter().any(|n| n.eq_ignore_ascii_case(state)))
            .map_or(StateClass::Other, |(class, _)| *class)
    }

    /// The class's name, as the API and the CLI write it.
    pub fn as_str(self) -> &'static str {
        match self {
            StateClass::Failed => "failed",
            StateClass::Cancelled => "cancelled",
            StateClass::Active => "active",
            StateClass::Waiting => "waiting",
            StateClass::Succeeded => "succeeded",
            StateClass::Skipped => "skipped",
            StateClass::Other => "other",
        }
    }

    /// The class named `name` (as [`as_str`](Self::as_str) writes it), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// True for the classes that end a node: failed, cancelled, succeeded, skipped.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            StateClass::Failed
                | StateClass::Cancelled
                | StateClass::Succeeded
                | StateClass::Skipped
        )
    }
}

impl std::fmt::Display for StateClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many nodes of a run are in each class (by their latest state).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    /// Nodes whose latest state is failed.
    pub failed: u64,
    /// … cancelled.
    pub cancelled: u64,
    /// … active.
    pub active: u64,
    /// … waiting.
    pub waiting: u64,
    /// … succeeded.
    pub succeeded: u64,
    /// … skipped.
    pub skipped: u64,
    /// … of no known class.
    pub other: u64,
}

impl ClassCounts {
    /// The count of `class`.
    pub fn get(&self, class: StateClass) -> u64 {
        match class {
            StateClass::Failed => self.failed,
            StateClass::Cancelled => self.cancelled,
            StateClass::Active => self.active,
            StateClass::Waiting => self.waiting,
            StateClass::Succeeded => self.succeeded,
            StateClass::Skipped => self.skipped,
            StateClass::Other => self.other,
        }
    }

    fn slot(&mut self, class: StateClass) -> &mut u64 {
        match class {
            StateClass::Failed => &mut self.failed,
            StateClass::Cancelled => &mut self.cancelled,
            StateClass::Active => &mut self.active,
            StateClass::Waiting => &mut self.waiting,
            StateClass::Succeeded => &mut self.succeeded,
            StateClass::Skipped => &mut self.skipped,
            StateClass::Other => &mut self.other,
        }
    }

    /// Total nodes counted.
    pub fn total(&self) -> u64 {
        StateClass::ALL.iter().map(|c| self.get(*c)).sum()
    }

    /// The status these counts derive (when the run has no run-level transition), by
    /// precedence: active → `running`; failed → `failed`; waiting → `pending`; cancelled →
    /// `cancelled`; otherwise `succeeded`, and `pending` when there are no nodes.
    pub fn derived_status(&self) -> &'static str {
        if self.active > 0 {
            "running"
        } else if self.failed > 0 {
            "failed"
        } else if self.waiting > 0 {
            "pending"
        } else if self.cancelled > 0 {
            "cancelled"
        } else if self.total() == 0 {
            "pending"
        } else {
            "succeeded"
        }
    }
}

/// One node of a run, as its transitions left it: maintained at append time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// The node (`node` of its transitions).
    pub node: String,
    /// Its latest state (`to` of its latest transition).
    pub state: String,
    /// The class of [`state`](Self::state).
    pub class: StateClass,
    /// Its first active transition's `ts`.
    pub started_at: Option<DateTime<Utc>>,
    /// Its first terminal transition's `ts` since it last became active (see the module docs).
    pub ended_at: Option<DateTime<Utc>>,
    /// How many times it became active.
    pub attempts: u64,
    /// The seq of its first transition.
    pub first_seq: u64,
    /// The seq of its latest transition.
    pub last_seq: u64,
}

impl NodeSummary {
    /// `ended_at - started_at`, when both are known.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.ended_at? - self.started_at?)
    }
}

/// A run's status and durations, as its transitions left them: maintained at append time.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProgress {
    /// The `to` of the latest run-level transition (one without `node`), if any.
    pub run_state: Option<String>,
    /// Nodes per class.
    pub counts: ClassCounts,
    /// The first transition's `ts`.
    pub started_at: Option<DateTime<Utc>>,
    /// The `ts` of the transition that made the status terminal; `None` while it is not.
    pub ended_at: Option<DateTime<Utc>>,
}

impl RunProgress {
    /// The run's status: its latest run-level state when it has one, otherwise derived from
    /// its nodes (see [`ClassCounts::derived_status`]).
    pub fn status(&self) -> &str {
        self.run_state.as_deref().unwrap_or_else(|| self.counts.derived_status())
    }

    /// The class of [`status`](Self::status).
    pub fn status_class(&self) -> StateClass {
        StateClass::of(self.status())
    }

    /// `ended_at - started_at`, when the run has ended.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.ended_at? - self.started_at?)
    }
}

/// A run's progress and the summaries of (at least) the nodes an append touches: load them,
/// [`apply`](Self::apply) the new transitions in seq order, store what changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// The run's progress.
    pub run: RunProgress,
    /// Node summaries by node; an adapter loads those of the nodes it is about to touch.
    pub nodes: BTreeMap<String, NodeSummary>,
}

impl Progress {
    /// Starts from what is stored.
    pub fn new(run: RunProgress, nodes: impl IntoIterator<Item = NodeSummary>) -> Self {
        Self { run, nodes: nodes.into_iter().map(|n| (n.node.clone(), n)).collect() }
    }

    /// Applies transition `seq`, the run's next one. Returns the node it touched, if any.
    pub fn apply(&mut self, seq: u64, body: &TransitionBody) -> Option<&NodeSummary> {
        // At the precision every backend stores, so every adapter reports the same times.
        let ts = truncate_micros(body.ts());
        let to = body.to_state();
        let class = StateClass::of(to);
        if self.run.started_at.is_none() {
            self.run.started_at = Some(ts);
        }
        let touched = match body.node() {
            None => {
                self.run.run_state = Some(to.to_owned());
                None
            }
            Some(name) => {
                let counts = &mut self.run.counts;
                // Looked up before inserting: an append applies thousands of transitions to a
                // few hundred nodes, and the entry API would copy the name for every one.
                let node = match self.nodes.get_mut(name) {
                    Some(node) => node,
                    None => {
                        *counts.slot(class) += 1;
                        let node = NodeSummary {
                            node: name.to_owned(),
                            state: String::new(),
                            class,
                            started_at: None,
                            ended_at: None,
                            attempts: 0,
                            first_seq: seq,
                            last_seq: seq,
                        };
                        self.nodes.entry(name.to_owned()).or_insert(node)
                    }
                };
                let was_active = !node.state.is_empty() && node.class == StateClass::Active;
                if node.class != class {
                    *counts.slot(node.class) -= 1;
                    *counts.slot(class) += 1;
                }
                if class == StateClass::Active && !was_active {
                    node.attempts += 1;
                    node.started_at.get_or_insert(ts);
                    node.ended_at = None;
                }
                if class.is_terminal() && node.ended_at.is_none() {
                    node.ended_at = Some(ts);
                }
                // In place: the state's text is replaced, its buffer kept.
                node.state.clear();
                node.state.push_str(to);
                node.class = class;
                node.last_seq = seq;
                Some(name)
            }
        };
        let terminal = self.run.status_class().is_terminal();
        match (terminal, self.run.ended_at) {
            (true, None) => self.run.ended_at = Some(ts),
            (false, Some(_)) => self.run.ended_at = None,
            _ => {}
        }
        touched.and_then(|name| self.nodes.get(name))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn body(node: Option<&str>, to: &str, second: u32) -> TransitionBody {
        let mut fields = serde_json::Map::new();
        fields.insert("ts".into(), format!("2026-01-01T00:00:{:02}Z", second % 60).into());
        fields.insert("to".into(), to.into());
        if let Some(node) = node {
            fields.insert("node".into(), node.into());
        }
        TransitionBody::new(fields).expect("a valid body")
    }

    fn run(steps: &[(Option<&str>, &str)]) -> Progress {
        let mut p = Progress::default();
        for (seq, (node, to)) in steps.iter().enumerate() {
            p.apply(seq as u64, &body(*node, to, seq as u32));
        }
        p
    }

    #[test]
    fn states_are_classified_case_insensitively_and_unknown_is_other() {
        assert_eq!(StateClass::of("FAILED"), StateClass::Failed);
        assert_eq!(StateClass::of("Up_For_Retry"), StateClass::Active);
        assert_eq!(StateClass::of("canceled"), StateClass::Cancelled);
        assert_eq!(StateClass::of("ok"), StateClass::Succeeded);
        assert_eq!(StateClass::of("upstream_skipped"), StateClass::Skipped);
        assert_eq!(StateClass::of("manual"), StateClass::Waiting);
        assert_eq!(StateClass::of("deploying"), StateClass::Other);
        assert_eq!(StateClass::of(""), StateClass::Other);
    }

    #[test]
    fn a_failed_node_fails_the_run_even_when_a_later_node_succeeds() {
        let p = run(&[
            (Some("migrate-db"), "running"),
            (Some("migrate-db"), "failed"),
            (Some("notify"), "running"),
            (Some("notify"), "succeeded"),
        ]);
        assert_eq!(p.run.status(), "failed");
        assert_eq!((p.run.counts.failed, p.run.counts.succeeded), (1, 1));
        assert!(p.run.ended_at.is_some());
    }

    #[test]
    fn a_run_is_running_while_any_node_is_active() {
        let p = run(&[(Some("a"), "failed"), (Some("b"), "running")]);
        assert_eq!(p.run.status(), "running");
        assert_eq!(p.run.ended_at, None, "a running run has not ended");
    }

    #[test]
    fn skipped_nodes_do_not_make_a_run_skipped() {
        let p = run(&[(Some("build"), "succeeded"), (Some("deploy"), "skipped")]);
        assert_eq!(p.run.status(), "succeeded");
    }

    #[test]
    fn a_run_level_transition_decides_over_nodes() {
        let p = run(&[(Some("a"), "failed"), (None, "Succeeded"), (Some("b"), "running")]);
        assert_eq!(p.run.status(), "Succeeded");
        assert_eq!(p.run.status_class(), StateClass::Succeeded);
        assert_eq!(run(&[]).run.status(), "pending");
    }

    #[test]
    fn a_retried_node_counts_attempts_and_has_not_ended_while_running_again() {
        let mut p = run(&[(Some("a"), "queued"), (Some("a"), "running"), (Some("a"), "failed")]);
        let a = p.nodes["a"].clone();
        assert_eq!((a.attempts, a.duration()), (1, Some(chrono::Duration::seconds(1))));
        p.apply(3, &body(Some("a"), "retrying", 3));
        let a = &p.nodes["a"];
        assert_eq!((a.attempts, a.ended_at), (2, None));
        p.apply(4, &body(Some("a"), "success", 9));
        let a = &p.nodes["a"];
        assert_eq!((a.first_seq, a.last_seq, a.attempts), (0, 4, 2));
        assert_eq!(a.duration(), Some(chrono::Duration::seconds(8)), "from first start to end");
    }

    /// Reference: the rule read straight off DESIGN.md, from every transition at once.
    fn reference(steps: &[(Option<&str>, &str)]) -> String {
        if let Some((_, to)) = steps.iter().rev().find(|(node, _)| node.is_none()) {
            return (*to).to_owned();
        }
        let mut latest = BTreeMap::new();
        for (node, to) in steps {
            if let Some(node) = node {
                latest.insert(*node, StateClass::of(to));
            }
        }
        let any = |c: StateClass| latest.values().any(|v| *v == c);
        let status = if any(StateClass::Active) {
            "running"
        } else if any(StateClass::Failed) {
            "failed"
        } else if any(StateClass::Waiting) {
            "pending"
        } else if any(StateClass::Cancelled) {
            "cancelled"
        } else if latest.is_empty() {
            "pending"
        } else {
            "succeeded"
        };
        status.to_owned()
    }

    const NODES: [Option<&str>; 4] = [None, Some("a"), Some("b"), Some("c")];
    const STATES: [&str; 9] =
        ["running", "FAILED", "queued", "aborted", "ok", "skipped", "weird", "retrying", "done"];

    proptest! {
        /// Applied incrementally, in chunks whose node rows are saved and reloaded between
        /// appends as an adapter does, the status always equals the reference's.
        #[test]
        fn incremental_status_equals_the_reference(
            steps in prop::collection::vec((0..NODES.len(), 0..STATES.len()), 0..60),
            chunk in 1usize..8,
        ) {
            let steps: Vec<_> = steps.iter().map(|(n, s)| (NODES[*n], STATES[*s])).collect();
            let mut stored_run = RunProgress::default();
            let mut stored_nodes: BTreeMap<String, NodeSummary> = BTreeMap::new();
            for (c, part) in steps.chunks(chunk).enumerate() {
                let touched = part.iter().filter_map(|(n, _)| *n);
                let loaded = touched.filter_map(|n| stored_nodes.get(n).cloned());
                let mut p = Progress::new(stored_run.clone(), loaded);
                for (i, (node, to)) in part.iter().enumerate() {
                    let seq = (c * chunk + i) as u64;
                    p.apply(seq, &body(*node, to, seq as u32));
                }
                stored_run = p.run;
                stored_nodes.extend(p.nodes);
                let done = &steps[..(c * chunk + part.len())];
                prop_assert_eq!(stored_run.status(), reference(done));
                prop_assert_eq!(stored_run.counts.total(), stored_nodes.len() as u64);
                for class in StateClass::ALL {
                    let n = stored_nodes.values().filter(|n| n.class == class).count() as u64;
                    prop_assert_eq!(stored_run.counts.get(class), n, "{}", class);
                }
                prop_assert_eq!(
                    stored_run.ended_at.is_some(),
                    stored_run.status_class().is_terminal()
                );
            }
        }
    }
}
