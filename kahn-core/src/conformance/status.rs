//! Run status and durations (DESIGN.md "Run status and durations"): every adapter reports the
//! status, node counts, times and node summaries kahn-core's rule gives, however the run was
//! chunked, and filters on that status.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::Harness;
use super::fixtures::{SourceLog, batch, recent_base};
use crate::{NodeSummary, Progress, RunId, RunInfo, RunQuery, StateClass, TransitionBody};

/// A transition line of `run` at `seq`, `secs` after `base`; run-level when `node` is `None`.
fn line(run: &str, seq: u64, node: Option<&str>, to: &str, at: DateTime<Utc>) -> String {
    let mut v = json!({"run_id": run, "seq": seq, "ts": at.to_rfc3339(), "to": to});
    if let Some(node) = node {
        v["node"] = json!(node);
    }
    v.to_string()
}

/// The lines of `steps` for `run`, one second apart from `base`.
fn lines(run: &str, steps: &[(Option<&str>, &str)], base: DateTime<Utc>) -> Vec<String> {
    (0..)
        .zip(steps)
        .map(|(seq, (node, to))| line(run, seq, *node, to, base + Duration::seconds(seq as i64)))
        .collect()
}

/// What kahn-core's rule says about `lines`, applied in one go.
pub(super) fn expected(lines: &[String]) -> Progress {
    let mut p = Progress::default();
    for (seq, body) in (0..).zip(bodies(lines)) {
        p.apply(seq, &body);
    }
    p
}

fn bodies(lines: &[String]) -> Vec<TransitionBody> {
    batch(lines).runs()[0].bodies().to_vec()
}

/// The derived part of a run's info, for comparing with [`Progress`].
fn derived(info: &RunInfo) -> (String, StateClass, crate::ClassCounts, Option<DateTime<Utc>>) {
    (info.status.clone(), info.status_class, info.node_counts, info.ended_at)
}

fn derived_of(p: &Progress) -> (String, StateClass, crate::ClassCounts, Option<DateTime<Utc>>) {
    (p.run.status().to_owned(), p.run.status_class(), p.run.counts, p.run.ended_at)
}

/// A node that failed fails the run, even when a later node succeeds; `?status=failed` finds
/// it and `?status=succeeded` does not.
pub async fn a_failed_node_fails_the_run(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let run = "ci-failed";
    let steps = [
        (Some("migrate-db"), "running"),
        (Some("migrate-db"), "failed"),
        (Some("notify"), "running"),
        (Some("notify"), "succeeded"),
    ];
    h.store.append(&t.write, &batch(&lines(run, &steps, base))).await.expect("push");
    let info = h.store.get_run(&t.read, &RunId::new(run).expect("valid")).await.expect("get").info;
    assert_eq!((info.status.as_str(), info.status_class), ("failed", StateClass::Failed));
    assert_eq!((info.node_counts.failed, info.node_counts.succeeded), (1, 1));
    assert_eq!(info.node_counts.total(), 2);
    assert_eq!((info.started_at, info.ended_at), (Some(base), Some(base + Duration::seconds(3))));
    assert_eq!(info.duration(), Some(Duration::seconds(3)));
    for (status, found) in [("failed", 1), ("succeeded", 0)] {
        let q = RunQuery { status: Some(status.into()), ..RunQuery::default() };
        let page = h.store.list_runs(&t.read, &q).await.expect("list by status");
        assert_eq!(page.runs.len(), found, "?status={status}");
    }
}

/// Skipped nodes do not make a run skipped; a run is running while any node is active, and
/// has no end until its status is terminal; lists filter on node classes.
pub async fn a_run_is_running_while_a_node_is_active_and_skips_do_not_skip_it(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let run = RunId::new("ci-skip").expect("valid");
    let steps = [
        (Some("build"), "running"),
        (Some("deploy"), "queued"),
        (Some("build"), "succeeded"),
        (Some("deploy"), "skipped"),
    ];
    let all = lines(run.as_str(), &steps, base);
    h.store.append(&t.write, &batch(&all[..3])).await.expect("push the first three");
    let info = h.store.get_run(&t.read, &run).await.expect("get").info;
    assert_eq!((info.status.as_str(), info.ended_at), ("pending", None), "deploy still waits");
    h.store.append(&t.write, &batch(&all[..1])).await.expect("re-push changes nothing");
    assert_eq!(h.store.get_run(&t.read, &run).await.expect("get").info, info);
    h.store.append(&t.write, &batch(&all)).await.expect("push the rest");
    let info = h.store.get_run(&t.read, &run).await.expect("get").info;
    assert_eq!(info.status, "succeeded");
    assert_eq!((info.node_counts.succeeded, info.node_counts.skipped), (1, 1));
    let running = lines("ci-running", &[(Some("a"), "failed"), (Some("b"), "in_progress")], base);
    h.store.append(&t.write, &batch(&running)).await.expect("push");
    let q = RunQuery { status: Some("running".into()), ..RunQuery::default() };
    let page = h.store.list_runs(&t.read, &q).await.expect("list");
    let listed: Vec<_> = page.runs.iter().map(|r| (r.run_id.as_str(), r.ended_at)).collect();
    assert_eq!(listed, [("ci-running", None)]);
    // Filtering on node classes: the running runs where something already failed; the runs
    // with a skipped node.
    for (status, class, want) in [
        (Some("running"), StateClass::Failed, vec!["ci-running"]),
        (None, StateClass::Skipped, vec!["ci-skip"]),
        (Some("succeeded"), StateClass::Failed, vec![]),
    ] {
        let q = RunQuery {
            status: status.map(str::to_owned),
            node_class: Some(class),
            ..RunQuery::default()
        };
        let page = h.store.list_runs(&t.read, &q).await.expect("list by node class");
        let got: Vec<_> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(got, want, "status {status:?}, node_class {class}");
    }
}

/// A transition without `node` is run-level: the latest one is the status, whatever the
/// nodes say, verbatim (its class classified); a run with nothing yet is `pending`.
pub async fn a_run_level_transition_decides_the_status(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let run = RunId::new("ci-run-level").expect("valid");
    h.store
        .append(&t.write, &batch(&[super::fixtures::meta_line(run.as_str(), json!({}))]))
        .await
        .expect("create the run");
    let info = h.store.get_run(&t.read, &run).await.expect("get").info;
    assert_eq!((info.status.as_str(), info.status_class), ("pending", StateClass::Waiting));
    assert_eq!((info.started_at, info.ended_at), (None, None));
    let steps = [(Some("a"), "failed"), (None, "Deploying"), (Some("b"), "running"), (None, "OK")];
    let all = lines(run.as_str(), &steps, base);
    h.store.append(&t.write, &batch(&all[..3])).await.expect("push");
    let info = h.store.get_run(&t.read, &run).await.expect("get").info;
    assert_eq!((info.status.as_str(), info.status_class), ("Deploying", StateClass::Other));
    assert_eq!(info.ended_at, None);
    h.store.append(&t.write, &batch(&all)).await.expect("push");
    let info = h.store.get_run(&t.read, &run).await.expect("get").info;
    assert_eq!((info.status.as_str(), info.status_class), ("OK", StateClass::Succeeded));
    assert_eq!((info.node_counts.failed, info.node_counts.active), (1, 1));
    assert_eq!(info.ended_at, Some(base + Duration::seconds(3)));
}

/// Each node's summary — latest state and class, first start, end since its last start,
/// attempts, first and last seq — is what kahn-core's rule gives, in node order, however the
/// run was chunked.
pub async fn node_summaries_track_state_times_and_attempts(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let run = RunId::new("ci-retry").expect("valid");
    let steps = [
        (Some("test"), "queued"),
        (Some("lint"), "running"),
        (Some("test"), "running"),
        (Some("test"), "failed"),
        (Some("lint"), "succeeded"),
        (Some("test"), "up_for_retry"),
        (None, "running"),
        (Some("test"), "success"),
    ];
    let all = lines(run.as_str(), &steps, base);
    for end in 1..=all.len() {
        h.store.append(&t.write, &batch(&all[end - 1..end])).await.expect("push one by one");
    }
    let s = h.store.get_run(&t.read, &run).await.expect("get");
    let want = expected(&all);
    let nodes: Vec<NodeSummary> = want.nodes.values().cloned().collect();
    assert_eq!(s.nodes, nodes);
    let test = &s.nodes[1];
    assert_eq!((test.node.as_str(), test.state.as_str(), test.attempts), ("test", "success", 2));
    assert_eq!((test.first_seq, test.last_seq), (0, 7));
    assert_eq!(test.started_at, Some(base + Duration::seconds(2)));
    assert_eq!(test.duration(), Some(Duration::seconds(5)), "from its first start to its end");
    assert_eq!(derived(&s.info), derived_of(&want));
    assert_eq!(s.info.status, "running", "the run-level state decides");
}

/// However a realistic run is chunked and re-pushed, its status, counts and end are what
/// kahn-core's rule gives over all its transitions.
pub async fn status_is_the_same_however_the_run_is_chunked(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let want = expected(&SourceLog::new("chunked-status", 40, "a", base).lines);
    for step in [1u64, 3, 7, 40] {
        // The same bodies under a run of its own per chunking.
        let log = SourceLog::new(&format!("chunked-status-{step}"), 40, "a", base);
        let mut end = 0;
        while end < log.len() {
            end = (end + step).min(log.len());
            h.store.append(&t.write, &log.chunk(0, end)).await.expect("push a prefix");
        }
        let s = h.store.get_run(&t.read, &log.run_id).await.expect("get");
        assert_eq!(derived(&s.info), derived_of(&want), "chunks of {step}");
        assert_eq!(s.info.started_at, want.run.started_at);
        assert_eq!(s.nodes, want.nodes.values().cloned().collect::<Vec<_>>(), "chunks of {step}");
    }
}
