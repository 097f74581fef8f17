//! The conformance suite: one public async check per rule of the contract, run by every
//! adapter's tests through [`conformance_suite!`](crate::conformance_suite).
//!
//! An adapter's test file is two lines:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use kahn_core::MemoryBackend;
//! async fn harness() -> kahn_core::conformance::Harness {
//!     // A fresh backend (here the in-memory one); keep temp dirs alive with `with_guard`.
//!     kahn_core::conformance::Harness::new(Arc::new(MemoryBackend::new()))
//! }
//! kahn_core::conformance_suite!(harness);
//! # fn main() {}
//! ```
//!
//! Each check becomes its own `#[tokio::test]`, so one failure never hides the rest, and
//! each uses fresh random tenants, so the checks run in parallel against one store.

use chrono::{Duration, Utc};
use serde_json::json;

use crate::{
    ConflictAt, Digest, Error, NewTenant, OrgId, RunId, RunQuery, StorageBackendExt, TenantSource,
    verify_chain,
};

mod checkpoints;
pub mod fixtures;
mod lifecycle;
mod model;
mod shared;
mod status;

pub use checkpoints::{
    append_checkpoint_compares_and_validates, checkpoints_log_every_change_and_prove_runs,
    purges_are_logged_by_the_next_checkpoint,
};
pub use fixtures::{Harness, SourceLog, TestTenant};
pub use lifecycle::{
    appends_that_store_something_renew_receipt, backfill_is_kept_the_full_retention,
    deleting_a_tenant_removes_everything_it_holds, future_dated_run_expires_on_time,
    key_use_is_recorded, keys_expire_and_roll_over_with_grace, personal_tenant_is_created_once,
    purge_follows_each_tenants_retention_and_scope, tenant_settings_change_and_apply,
    tenants_export_and_import,
};
pub use model::model_based_interleavings;
pub use shared::{ingest_allowance_is_shared_per_tenant, purge_turn_is_taken_once_per_interval};
pub use status::{
    a_failed_node_fails_the_run, a_run_is_running_while_a_node_is_active_and_skips_do_not_skip_it,
    a_run_level_transition_decides_the_status, node_summaries_track_state_times_and_attempts,
    status_is_the_same_however_the_run_is_chunked,
};

use fixtures::{batch, batch_of, meta_line, recent_base};

/// Every check, by name, in the order [`conformance_suite!`](crate::conformance_suite) runs
/// them. Generated from the macro's own list, so the two cannot differ.
pub const CHECKS: &[&str] = crate::conformance_suite!(@list @names);

/// Expands to one `#[tokio::test]` per conformance check, each calling `$harness().await`
/// for a [`Harness`] and running the check against it. The calling crate needs `tokio` with
/// the `macros` and `rt-multi-thread` features as a dev-dependency.
///
/// The list of checks lives here, once: [`CHECKS`] is generated from it, and a test of
/// kahn-core fails when a `pub async fn` check of this module is missing from it.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:path) => {
        $crate::conformance_suite!(@list @each $harness);
    };
    // The one list of checks; `@list` hands it to the arm named by the tokens that follow.
    (@list $($then:tt)+) => {
        $crate::conformance_suite! {
            $($then)+;
            repush_of_whole_run_is_noop,
            repush_of_every_chunking_is_noop,
            overlap_with_new_tail_appends_only_tail,
            divergent_content_conflicts_and_writes_nothing,
            key_order_and_whitespace_do_not_matter,
            ndjson_appends_as_its_parsed_batch_does,
            links_computed_ahead_count_only_from_the_stored_link,
            gap_is_refused_and_writes_nothing,
            batch_with_one_bad_run_writes_nothing,
            metadata_is_set_once,
            run_summary_tracks_status_counts_and_head,
            a_failed_node_fails_the_run,
            a_run_is_running_while_a_node_is_active_and_skips_do_not_skip_it,
            a_run_level_transition_decides_the_status,
            node_summaries_track_state_times_and_attempts,
            status_is_the_same_however_the_run_is_chunked,
            list_runs_orders_filters_and_pages,
            read_transitions_pages_by_seq,
            chain_recomputed_from_reads_equals_head,
            tenants_never_see_each_other,
            revoked_keys_resolve_to_nothing,
            a_revoked_keys_scope_cannot_append,
            rotation_issues_new_key_and_revokes_old,
            org_and_sub_resolve_to_their_tenant,
            provisioning_is_idempotent,
            backfill_is_kept_the_full_retention,
            future_dated_run_expires_on_time,
            appends_that_store_something_renew_receipt,
            purge_follows_each_tenants_retention_and_scope,
            tenant_settings_change_and_apply,
            deleting_a_tenant_removes_everything_it_holds,
            keys_expire_and_roll_over_with_grace,
            key_use_is_recorded,
            personal_tenant_is_created_once,
            tenants_export_and_import,
            hostile_strings_round_trip_verbatim,
            list_runs_refuses_queries_ingest_would_refuse,
            concurrent_overlapping_pushes_leave_exactly_the_source_log,
            racing_divergent_creators_one_wins_whole,
            batches_in_opposite_run_orders_do_not_deadlock,
            model_based_interleavings,
            ingest_allowance_is_shared_per_tenant,
            purge_turn_is_taken_once_per_interval,
            checkpoints_log_every_change_and_prove_runs,
            purges_are_logged_by_the_next_checkpoint,
            append_checkpoint_compares_and_validates,
        }
    };
    (@names; $($check:ident),* $(,)?) => {
        &[$(stringify!($check)),*]
    };
    (@each $harness:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let harness = $harness().await;
                $crate::conformance::$check(&harness).await;
            }
        )*
    };
}

/// Reads a run's stored state: summary and every transition, and checks the chain.
async fn snapshot(h: &Harness, t: &TestTenant, run: &RunId) -> (u64, Digest, Vec<String>) {
    let summary = h.store.get_run(&t.read, run).await.expect("get_run");
    let rows = h.store.read_all_transitions(&t.read, run).await.expect("read_all_transitions");
    let head = verify_chain(&rows).expect("the stored chain verifies");
    assert_eq!(head, summary.info.head_hash, "recomputed chain equals head_hash");
    let bodies =
        rows.iter().map(|r| serde_json::Value::Object(r.body.clone()).to_string()).collect();
    (summary.info.next_seq, summary.info.head_hash, bodies)
}

/// The stored bodies a source log must leave (canonical JSON of each body).
fn expected_bodies(log: &SourceLog, upto: u64) -> Vec<String> {
    log.chunk(0, upto).runs().first().map_or_else(Vec::new, |r| {
        r.bodies().iter().map(|b| serde_json::Value::Object(b.fields()).to_string()).collect()
    })
}

/// Rule 3: pushing a whole run again stores nothing and reports every transition skipped.
pub async fn repush_of_whole_run_is_noop(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("whole", 25, "a", recent_base());
    let first = h.store.append(&t.write, &log.all()).await.expect("first push");
    assert_eq!((first.appended(), first.skipped()), (25, 0));
    let before = snapshot(h, &t, &log.run_id).await;
    for _ in 0..3 {
        let again = h.store.append(&t.write, &log.all()).await.expect("re-push");
        assert_eq!((again.appended(), again.skipped()), (0, 25), "a re-push appends nothing");
        assert_eq!(again.runs[0].next_seq, 25);
        assert_eq!(again.runs[0].head_hash, first.runs[0].head_hash);
    }
    assert_eq!(snapshot(h, &t, &log.run_id).await, before, "the store is unchanged");
}

/// Rule 2 and 5: every chunk of a stored run, of every size at every offset, is a no-op.
pub async fn repush_of_every_chunking_is_noop(h: &Harness) {
    let t = h.fresh_tenant().await;
    let n = 12;
    let log = SourceLog::new("chunked", n, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.expect("first push");
    let before = snapshot(h, &t, &log.run_id).await;
    for size in 1..=n {
        for start in 0..=(n - size) {
            let report = h
                .store
                .append(&t.write, &log.chunk(start, start + size))
                .await
                .unwrap_or_else(|e| panic!("chunk [{start}, {}) refused: {e}", start + size));
            assert_eq!(
                (report.appended(), report.skipped(), report.runs[0].next_seq),
                (0, size, n),
                "chunk [{start}, {}) of a stored run is a no-op",
                start + size
            );
        }
    }
    assert_eq!(snapshot(h, &t, &log.run_id).await, before, "the store is unchanged");
}

/// Rule 3: a chunk overlapping the stored end appends only its new tail.
pub async fn overlap_with_new_tail_appends_only_tail(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("tail", 20, "a", recent_base());
    h.store.append(&t.write, &log.chunk(0, 8)).await.expect("first 8");
    let r = h.store.append(&t.write, &log.chunk(5, 14)).await.expect("overlap + tail");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].next_seq), (6, 3, 14));
    let r = h.store.append(&t.write, &log.chunk(14, 20)).await.expect("exact continuation");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].next_seq), (6, 0, 20));
    let (next, head, bodies) = snapshot(h, &t, &log.run_id).await;
    assert_eq!(next, 20);
    assert_eq!(head, r.runs[0].head_hash);
    assert_eq!(bodies, expected_bodies(&log, 20), "the stored log is exactly the source");
}

/// Rule 2: content that differs from what is stored is refused, naming the first differing
/// seq and both hashes; nothing is written, nothing rewritten — not even the new tail.
pub async fn divergent_content_conflicts_and_writes_nothing(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let log = SourceLog::new("diverge", 10, "a", base);
    h.store.append(&t.write, &log.all()).await.expect("first push");
    let before = snapshot(h, &t, &log.run_id).await;
    let other = SourceLog::new("diverge", 15, "a", base).diverging_at(6, "b", base);
    for (start, end) in [(0, 15), (4, 8), (6, 7), (6, 12), (9, 15)] {
        let err =
            h.store.append(&t.write, &other.chunk(start, end)).await.expect_err("must conflict");
        let seq = start.max(6);
        match err {
            Error::Conflict { run_id, at: ConflictAt::Seq(s), stored_hash, incoming_hash } => {
                assert_eq!(run_id, log.run_id);
                assert_eq!(s, seq, "the first differing seq of [{start}, {end}) is named");
                let stored = log.body(seq);
                let incoming = other.body(seq);
                assert_eq!(stored_hash, stored.content_hash());
                assert_eq!(incoming_hash, incoming.content_hash());
            }
            other => panic!("expected Conflict for [{start}, {end}), got {other:?}"),
        }
        assert_eq!(snapshot(h, &t, &log.run_id).await, before, "nothing written after a conflict");
    }
}

/// The content hash is over the canonical form: key order and whitespace never matter.
pub async fn key_order_and_whitespace_do_not_matter(h: &Harness) {
    let t = h.fresh_tenant().await;
    let ts = recent_base().to_rfc3339();
    let a = format!(
        r#"{{"run_id":"k","seq":0,"ts":"{ts}","to":"running","attrs":{{"a":1,"b":[1,2]}}}}"#
    );
    let b = format!(
        "{{ \"attrs\" : {{ \"b\" : [1, 2], \"a\" : 1.0 }},\n\"to\":\"running\", \"seq\":0,\"ts\":\"{ts}\",\"run_id\":\"k\"}}"
    );
    h.store.append(&t.write, &batch(&[a])).await.expect("first form");
    let r = h.store.append(&t.write, &batch(&[b.replace('\n', " ")])).await.expect("second form");
    assert_eq!(
        (r.appended(), r.skipped()),
        (0, 1),
        "the same content in another form is a duplicate"
    );
    let run = RunId::new("k").expect("valid");
    let rows = h.store.read_all_transitions(&t.read, &run).await.expect("read");
    let canonical = format!(r#"{{"attrs":{{"a":1,"b":[1,2]}},"to":"running","ts":"{ts}"}}"#);
    assert_eq!(
        serde_json::Value::Object(rows[0].body.clone()).to_string(),
        canonical,
        "bodies read back in their canonical form"
    );
}

/// `append_ndjson`: NDJSON as a producer spells it (members in any order, blank lines, CRLF,
/// a metadata line) is one append of the batch it parses to, under the same rules; its first
/// bad line is named by its line in the body, and nothing of it is written.
pub async fn ndjson_appends_as_its_parsed_batch_does(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let log = SourceLog::new("spelled", 6, "a", base);
    let line = |seq| fixtures::transition_line("spelled", seq, "a", base);
    let reordered = |seq| {
        let v: serde_json::Value = serde_json::from_str(&line(seq)).expect("fixture JSON");
        let mut members: Vec<String> = v
            .as_object()
            .expect("an object")
            .iter()
            .map(|(k, v)| format!("{} : {v}", serde_json::Value::from(k.as_str())))
            .collect();
        members.reverse();
        format!("{{ {} }}", members.join(" ,\t"))
    };
    let meta = meta_line("spelled", json!({"source": "ndjson", "labels": {"form": "any"}}));
    let body = format!("{meta}\r\n{}\n\n{}\r\n{}\n", reordered(0), line(1), reordered(2));
    let r = h.store.append_ndjson(&t.write, body.into()).await.expect("producer spellings");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].next_seq), (3, 0, 3));
    let direct = h.store.append(&t.write, &log.chunk(0, 3)).await.expect("the same, parsed");
    assert_eq!((direct.appended(), direct.skipped()), (0, 3), "the same content: a no-op");
    assert_eq!(direct.runs[0].head_hash, r.runs[0].head_hash);
    let summary = h.store.get_run(&t.read, &log.run_id).await.expect("the run");
    assert_eq!(summary.info.source.as_deref(), Some("ndjson"), "the metadata line applies");

    // Line 3 of this body is bad (no `ts`): nothing of the body is written, not even line 1.
    let bad =
        format!("{}\n{}\n{{\"run_id\":\"spelled\",\"seq\":5,\"to\":\"x\"}}\n", line(3), line(4));
    let err = h.store.append_ndjson(&t.write, bad.into()).await.expect_err("line 3 has no ts");
    match &err {
        Error::InvalidInput { field, message } => {
            assert_eq!(field, "ts", "{err}");
            assert!(message.starts_with("line 3:"), "{err}");
        }
        other => panic!("expected InvalidInput naming line 3, got {other:?}"),
    }
    let after = h.store.get_run(&t.read, &log.run_id).await.expect("the run");
    assert_eq!(after.info.next_seq, 3, "a refused body writes nothing");

    // And the rules hold as for any append: a gap is refused, divergent content conflicts.
    let gap = h.store.append_ndjson(&t.write, format!("{}\n", line(5)).into()).await;
    assert!(matches!(gap, Err(Error::Gap { expected: 3, got: 5, .. })), "{gap:?}");
    let other = fixtures::transition_line("spelled", 2, "b", base);
    let conflict = h.store.append_ndjson(&t.write, other.into()).await;
    assert!(
        matches!(conflict, Err(Error::Conflict { at: ConflictAt::Seq(2), .. })),
        "{conflict:?}"
    );
}

/// Links computed ahead of the append (by a pusher, from the link it expects the store to
/// hold) are a hint: from the stored link they are the links; from any other link, or over
/// stored rows, the store computes its own, and the rules apply as to any batch.
pub async fn links_computed_ahead_count_only_from_the_stored_link(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("ahead", 45, "a", recent_base());
    let run = &log.run_id;
    h.store.append(&t.write, &log.chunk(0, 10)).await.expect("first 10");
    // From the stored link: appended as computed.
    let r = h.store.append(&t.write, &log.chunk_ahead(10, 20, log.link(9))).await.expect("10..20");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].head_hash), (10, 0, log.link(19)));
    // From another link (a pusher that guessed wrong): the store's own links are stored.
    let wrong = Digest::sha256(b"not the stored link");
    let r = h.store.append(&t.write, &log.chunk_ahead(20, 30, wrong)).await.expect("20..30");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].head_hash), (10, 0, log.link(29)));
    // Over stored rows, from the right link: the overlap is skipped, the tail appended.
    let r = h.store.append(&t.write, &log.chunk_ahead(25, 35, log.link(24))).await.expect("25..35");
    assert_eq!((r.appended(), r.skipped(), r.runs[0].head_hash), (5, 5, log.link(34)));
    // Other content from the stored link: appended (it is new), under its own links; the
    // same content again, computed from the wrong link, is a no-op.
    let other = log.diverging_at(35, "b", recent_base());
    let r = h.store.append(&t.write, &other.chunk_ahead(35, 40, log.link(34))).await.expect("tail");
    assert_eq!((r.appended(), r.runs[0].head_hash), (5, other.link(39)));
    let r = h.store.append(&t.write, &other.chunk_ahead(35, 40, wrong)).await.expect("again");
    assert_eq!((r.appended(), r.skipped()), (0, 5));
    // Divergent content over stored rows conflicts, whatever it was computed from.
    for from in [log.link(34), wrong] {
        let err = h
            .store
            .append(&t.write, &log.chunk_ahead(35, 40, from))
            .await
            .expect_err("35..40 of the first log diverge from what is stored");
        assert!(matches!(err, Error::Conflict { at: ConflictAt::Seq(35), .. }), "{err:?}");
    }
    // A chunk from the stored link that also names another source than the stored one is
    // refused whole: none of its rows is kept, however early a store wrote them.
    let source = batch(&[meta_line("ahead", json!({"source": "ci"}))]);
    h.store.append(&t.write, &source).await.expect("the source is set");
    let elsewhere = other.chunk_ahead_with(json!({"source": "elsewhere"}), 40, 45, other.link(39));
    let err = h.store.append(&t.write, &elsewhere).await.expect_err("the source differs");
    assert!(matches!(err, Error::Conflict { at: ConflictAt::Metadata(_), .. }), "{err:?}");
    let (next, head, _) = snapshot(h, &t, run).await;
    assert_eq!((next, head), (40, other.link(39)), "the chain recomputed from the reads");
}

/// Rule 1: a batch starting past the stored end is a Gap naming `expected`; nothing written.
pub async fn gap_is_refused_and_writes_nothing(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("gap", 10, "a", recent_base());
    let err = h.store.append(&t.write, &log.chunk(3, 5)).await.expect_err("gap on a new run");
    assert!(matches!(err, Error::Gap { expected: 0, got: 3, .. }), "{err:?}");
    assert!(
        matches!(h.store.get_run(&t.read, &log.run_id).await, Err(Error::NotFound { .. })),
        "a refused gap creates no run"
    );
    h.store.append(&t.write, &log.chunk(0, 4)).await.expect("first 4");
    let before = snapshot(h, &t, &log.run_id).await;
    let err = h.store.append(&t.write, &log.chunk(5, 10)).await.expect_err("gap");
    assert!(
        matches!(&err, Error::Gap { expected: 4, got: 5, run_id } if *run_id == log.run_id),
        "{err:?}"
    );
    assert_eq!(snapshot(h, &t, &log.run_id).await, before, "nothing written after a gap");
}

/// Rule 5: a batch is one transaction; one failing run writes nothing for any run.
pub async fn batch_with_one_bad_run_writes_nothing(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let stored = SourceLog::new("b-stored", 5, "a", base);
    h.store.append(&t.write, &stored.all()).await.expect("seed");
    let before = snapshot(h, &t, &stored.run_id).await;
    let fresh = SourceLog::new("b-fresh", 5, "a", base);
    let divergent = stored.diverging_at(2, "x", base);
    let gapped = SourceLog::new("b-gapped", 5, "a", base);
    let meta = [meta_line("b-fresh", json!({"source": "choco"}))];
    for bad in [
        batch_of(&[&meta, &fresh.lines, &divergent.lines]),
        batch_of(&[&fresh.lines, &gapped.lines[2..]]),
        batch_of(&[
            &fresh.lines,
            &stored.lines,
            &[meta_line("b-stored", json!({"source": "s"}))],
            &gapped.lines[1..],
        ]),
    ] {
        let err = h.store.append(&t.write, &bad).await.expect_err("the batch must fail");
        assert!(matches!(err, Error::Conflict { .. } | Error::Gap { .. }), "{err:?}");
        for run in ["b-fresh", "b-gapped"] {
            let run = RunId::new(run).expect("valid");
            assert!(
                matches!(h.store.get_run(&t.read, &run).await, Err(Error::NotFound { .. })),
                "no run of a failed batch is created"
            );
        }
        assert_eq!(snapshot(h, &t, &stored.run_id).await, before, "no stored run is touched");
        let source = h.store.get_run(&t.read, &stored.run_id).await.expect("get").info.source;
        assert_eq!(source, None, "no metadata of a failed batch is set");
    }
    let ok = h
        .store
        .append(&t.write, &batch_of(&[&meta, &fresh.lines, &stored.lines]))
        .await
        .expect("a good batch");
    let per_run: Vec<_> =
        ok.runs.iter().map(|r| (r.run_id.as_str(), r.appended, r.skipped)).collect();
    assert_eq!(per_run, [("b-fresh", 5, 0), ("b-stored", 0, 5)], "the report follows batch order");
}

/// Rule 4: source, graph and each label are set once: absent → set, equal → no-op,
/// different → Conflict naming the field; a metadata-only line creates the run.
pub async fn metadata_is_set_once(h: &Harness) {
    let t = h.fresh_tenant().await;
    let run = RunId::new("meta").expect("valid");
    let graph = json!({"nodes": ["plan", "build"], "edges": [["plan", "build"]]});
    let push = |m: serde_json::Value| batch(&[meta_line("meta", m)]);
    let r = h.store.append(&t.write, &push(json!({"source": "choco"}))).await.expect("set source");
    assert_eq!((r.runs[0].appended, r.runs[0].next_seq, r.runs[0].head_hash), (0, 0, Digest::ZERO));
    let s = h.store.get_run(&t.read, &run).await.expect("a metadata-only run exists");
    assert_eq!(
        (s.info.source.as_deref(), s.graph.as_ref(), s.info.status.as_str()),
        (Some("choco"), None, "pending")
    );
    h.store
        .append(&t.write, &push(json!({"source": "choco", "graph": graph})))
        .await
        .expect("equal source, new graph");
    let reordered = json!({"edges": [["plan", "build"]], "nodes": ["plan", "build"]});
    h.store
        .append(&t.write, &push(json!({"graph": reordered, "labels": {"ci": "github"}})))
        .await
        .expect("equal graph, new label");
    for (m, field) in [
        (json!({"source": "stratt"}), "source"),
        (json!({"graph": {"nodes": []}}), "graph"),
        (json!({"labels": {"ci": "gitlab"}}), "labels.ci"),
    ] {
        let before = h.store.get_run(&t.read, &run).await.expect("get");
        let err = h.store.append(&t.write, &push(m)).await.expect_err("different metadata");
        match err {
            Error::Conflict { at: ConflictAt::Metadata(f), stored_hash, incoming_hash, .. } => {
                assert_eq!(f, field);
                assert_ne!(stored_hash, incoming_hash);
            }
            other => panic!("expected a metadata Conflict on {field}, got {other:?}"),
        }
        assert_eq!(h.store.get_run(&t.read, &run).await.expect("get"), before, "nothing rewritten");
    }
    let before = h.store.get_run(&t.read, &run).await.expect("get");
    let mixed = batch_of(&[
        &[meta_line("meta", json!({"source": "traceo"}))],
        &SourceLog::new("meta", 3, "a", recent_base()).lines,
    ]);
    let err =
        h.store.append(&t.write, &mixed).await.expect_err("metadata conflict with transitions");
    assert!(matches!(err, Error::Conflict { at: ConflictAt::Metadata(_), .. }), "{err:?}");
    assert_eq!(
        h.store.get_run(&t.read, &run).await.expect("get"),
        before,
        "no transition written either"
    );
    let s = h.store.get_run(&t.read, &run).await.expect("get");
    assert_eq!(s.graph, Some(graph));
    assert_eq!(s.info.labels.get("ci").map(String::as_str), Some("github"));
}

/// Run summaries: status (by kahn-core's rule), counts and head follow every append, ts range.
pub async fn run_summary_tracks_status_counts_and_head(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let log = SourceLog::new("summary", 7, "a", base);
    let r = h.store.append(&t.write, &log.chunk(0, 3)).await.expect("push");
    let s = h.store.get_run(&t.read, &log.run_id).await.expect("get").info;
    assert_eq!((s.next_seq, s.transition_count(), s.head_hash), (3, 3, r.runs[0].head_hash));
    assert_eq!(s.status, status::expected(&log.lines[..3]).run.status());
    assert_eq!((s.first_ts, s.last_ts), (Some(base), Some(base + Duration::seconds(2))));
    let r = h.store.append(&t.write, &log.all()).await.expect("push rest");
    let s = h.store.get_run(&t.read, &log.run_id).await.expect("get").info;
    assert_eq!((s.next_seq, s.head_hash), (7, r.runs[0].head_hash));
    assert_eq!(s.status, status::expected(&log.lines).run.status());
    assert_eq!(s.last_ts, Some(base + Duration::seconds(6)));
    assert_eq!(s.activity_at(), base + Duration::seconds(6));
    // A later chunk may carry earlier timestamps: first_ts is the minimum, last_ts the maximum.
    let early = SourceLog::new("summary", 9, "a", base - Duration::hours(2));
    let later = batch_of(&[&log.lines, &early.lines[7..]]);
    h.store.append(&t.write, &later).await.expect("append seqs 7 and 8 with earlier ts");
    let s = h.store.get_run(&t.read, &log.run_id).await.expect("get").info;
    assert_eq!(s.next_seq, 9);
    assert_eq!(s.first_ts, Some(base - Duration::hours(2) + Duration::seconds(7)));
    assert_eq!(s.last_ts, Some(base + Duration::seconds(6)));
    let mut all = log.lines.clone();
    all.extend_from_slice(&early.lines[7..]);
    assert_eq!(s.status, status::expected(&all).run.status(), "status follows seq order, not ts");
}

/// Listing: newest activity first, filters by source and status, cursor pages that cover
/// every run exactly once.
pub async fn list_runs_orders_filters_and_pages(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let mut lines = Vec::new();
    for i in 0..9u64 {
        let run = format!("list-{i}");
        lines.push(meta_line(&run, json!({"source": if i % 3 == 0 { "choco" } else { "stratt" }})));
        // Later runs have later activity, except that runs 4 and 5 tie (5 has two
        // transitions, one second apart).
        let start = base + Duration::minutes(i as i64)
            - if i == 5 { Duration::seconds(61) } else { Duration::zero() };
        lines.extend(SourceLog::new(&run, 1 + i % 2, "a", start).lines);
    }
    h.store.append(&t.write, &batch(&lines)).await.expect("push");
    let all = h
        .store
        .list_runs(&t.read, &RunQuery { limit: 100, ..RunQuery::default() })
        .await
        .expect("list");
    let ids: Vec<_> = all.runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(
        ids,
        ["list-8", "list-7", "list-6", "list-4", "list-5", "list-3", "list-2", "list-1", "list-0"]
    );
    assert!(all.next_cursor.is_none());
    let choco = h
        .store
        .list_runs(&t.read, &RunQuery { source: Some("choco".into()), ..RunQuery::default() })
        .await
        .expect("list by source");
    let ids: Vec<_> = choco.runs.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, ["list-6", "list-3", "list-0"]);
    let status = all.runs[0].status.clone();
    let by_status = h
        .store
        .list_runs(
            &t.read,
            &RunQuery { status: Some(status.clone()), limit: 100, ..RunQuery::default() },
        )
        .await
        .expect("list by status");
    let expected: Vec<_> = all.runs.iter().filter(|r| r.status == status).cloned().collect();
    assert_eq!(by_status.runs, expected);
    // Run id prefix: `list-1` matches only itself among list-0..list-8; `list-` and `lis` all.
    let every: Vec<&str> = all.runs.iter().map(|r| r.run_id.as_str()).collect();
    for (prefix, want) in [("list-1", vec!["list-1"]), ("list-", every.clone()), ("lis", every)] {
        let q = RunQuery { run_id_prefix: Some(prefix.into()), limit: 100, ..RunQuery::default() };
        let page = h.store.list_runs(&t.read, &q).await.expect("list by prefix");
        let got: Vec<_> = page.runs.iter().map(|r| r.run_id.as_str()).collect();
        assert_eq!(got, want, "run_id_prefix {prefix}");
    }
    let q = RunQuery { run_id_prefix: Some("list-9".into()), ..RunQuery::default() };
    assert!(h.store.list_runs(&t.read, &q).await.expect("no match").runs.is_empty());
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = h
            .store
            .list_runs(&t.read, &RunQuery { limit: 2, cursor, ..RunQuery::default() })
            .await
            .expect("page");
        assert!(page.runs.len() <= 2);
        paged.extend(page.runs);
        match page.next_cursor {
            Some(c) => {
                cursor = Some(crate::Cursor::decode(&c.encode()).expect("cursor round trip"))
            }
            None => break,
        }
    }
    assert_eq!(paged, all.runs, "pages cover every run once, in order");
}

/// Reading transitions: `after` is exclusive, `limit` bounds the page, unknown runs are
/// NotFound.
pub async fn read_transitions_pages_by_seq(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("pages", 30, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.expect("push");
    let first = h.store.read_transitions(&t.read, &log.run_id, None, 10).await.expect("read");
    assert_eq!(first.iter().map(|r| r.seq.get()).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    let after = crate::Seq::new(24).expect("valid");
    let tail =
        h.store.read_transitions(&t.read, &log.run_id, Some(after), 100).await.expect("read");
    assert_eq!(tail.iter().map(|r| r.seq.get()).collect::<Vec<_>>(), (25..30).collect::<Vec<_>>());
    let past = crate::Seq::new(29).expect("valid");
    assert!(
        h.store
            .read_transitions(&t.read, &log.run_id, Some(past), 10)
            .await
            .expect("read")
            .is_empty()
    );
    let big = SourceLog::new("big", 1100, "a", recent_base());
    h.store.append(&t.write, &big.all()).await.expect("push 1100");
    let capped = h.store.read_transitions(&t.read, &big.run_id, None, 5000).await.expect("read");
    assert_eq!(
        capped.len(),
        crate::MAX_PAGE_SIZE as usize,
        "a page holds at most MAX_PAGE_SIZE rows"
    );
    let none = h.store.read_transitions(&t.read, &big.run_id, None, 0).await.expect("read");
    assert!(none.is_empty(), "limit 0 reads nothing");
    let missing = RunId::new("no-such-run").expect("valid");
    assert!(matches!(
        h.store.read_transitions(&t.read, &missing, None, 10).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(h.store.get_run(&t.read, &missing).await, Err(Error::NotFound { .. })));
}

/// Tamper evidence: the chain recomputed from the transitions read equals `head_hash`, and
/// every link is `SHA-256(prev ‖ content_hash)`.
pub async fn chain_recomputed_from_reads_equals_head(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("chain", 40, "a", recent_base());
    for (s, e) in [(0, 13), (10, 27), (27, 40)] {
        h.store.append(&t.write, &log.chunk(s, e)).await.expect("push");
    }
    let head = h.store.verify_run(&t.read, &log.run_id).await.expect("verifies");
    let rows = h.store.read_all_transitions(&t.read, &log.run_id).await.expect("read");
    let mut prev = Digest::ZERO;
    for (row, body) in rows.iter().zip(log.all().runs()[0].bodies()) {
        assert_eq!(row.content_hash, body.content_hash(), "stored content hash at {}", row.seq);
        prev = crate::chain_link(&prev, &body.content_hash());
        assert_eq!(row.chain_hash, prev, "chain link at {}", row.seq);
    }
    assert_eq!(head, prev);
}

/// Tenancy: tenant A never sees tenant B's runs, transitions, keys or counts, even for the
/// same run id with different content.
pub async fn tenants_never_see_each_other(h: &Harness) {
    let a = h.fresh_tenant().await;
    let b = h.fresh_tenant().await;
    let base = recent_base();
    let a_log = SourceLog::new("same-id", 5, "a", base);
    let b_log = SourceLog::new("same-id", 8, "b", base);
    h.store.append(&a.write, &a_log.all()).await.expect("A pushes");
    let r =
        h.store.append(&b.write, &b_log.all()).await.expect("B's different content is no conflict");
    assert_eq!(r.appended(), 8);
    h.store
        .append(&a.write, &SourceLog::new("a-only", 2, "a", base).all())
        .await
        .expect("A pushes");
    let (a_next, _, a_bodies) = snapshot(h, &a, &a_log.run_id).await;
    let (b_next, _, b_bodies) = snapshot(h, &b, &b_log.run_id).await;
    assert_eq!((a_next, a_bodies), (5, expected_bodies(&a_log, 5)));
    assert_eq!((b_next, b_bodies), (8, expected_bodies(&b_log, 8)));
    let b_runs = h.store.list_runs(&b.read, &RunQuery::default()).await.expect("list");
    assert_eq!(b_runs.runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(), ["same-id"]);
    let a_only = RunId::new("a-only").expect("valid");
    assert!(matches!(h.store.get_run(&b.read, &a_only).await, Err(Error::NotFound { .. })));
    assert!(matches!(
        h.store.read_transitions(&b.read, &a_only, None, 10).await,
        Err(Error::NotFound { .. })
    ));
    let a_keys = h.control.list_api_keys(a.tenant.id).await.expect("keys");
    assert_eq!(a_keys.iter().map(|k| k.id).collect::<Vec<_>>(), [a.key.id]);
    assert!(a_keys.iter().all(|k| k.tenant_id == a.tenant.id));
    assert!(matches!(
        h.control.revoke_api_key(a.tenant.id, b.key.id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(
        h.store.resolve_api_key(&b.key.secret).await.expect("resolve").is_some(),
        "B's key survives A's attempt"
    );
    let tenants = h.control.list_tenants().await.expect("list tenants");
    let count = |id| tenants.iter().find(|s| s.tenant.id == id).map(|s| s.run_count);
    assert_eq!((count(a.tenant.id), count(b.tenant.id)), (Some(2), Some(1)));
}

/// Revoked keys resolve to nothing; unknown keys too.
pub async fn revoked_keys_resolve_to_nothing(h: &Harness) {
    let t = h.fresh_tenant().await;
    let second = h.control.issue_api_key(t.tenant.id).await.expect("second key");
    h.control.revoke_api_key(t.tenant.id, t.key.id).await.expect("revoke");
    assert!(h.store.resolve_api_key(&t.key.secret).await.expect("resolve").is_none());
    assert!(
        h.store.resolve_api_key(&second.secret).await.expect("resolve").is_some(),
        "other keys stay active"
    );
    let unknown = crate::ApiKey::generate().expect("random");
    assert!(h.store.resolve_api_key(&unknown).await.expect("resolve").is_none());
    let keys = h.control.list_api_keys(t.tenant.id).await.expect("keys");
    let revoked: Vec<_> = keys.iter().map(|k| (k.id, k.revoked_at.is_some())).collect();
    assert_eq!(revoked, [(t.key.id, true), (second.id, false)]);
}

/// Rotation issues a working new key and revokes the old one at once.
pub async fn rotation_issues_new_key_and_revokes_old(h: &Harness) {
    let t = h.fresh_tenant().await;
    let new = h.control.rotate_api_key(t.tenant.id, t.key.id).await.expect("rotate");
    assert_eq!(new.tenant_id, t.tenant.id);
    assert_ne!(new.secret, t.key.secret);
    assert!(
        h.store.resolve_api_key(&t.key.secret).await.expect("resolve").is_none(),
        "old key revoked"
    );
    let scope =
        h.store.resolve_api_key(&new.secret).await.expect("resolve").expect("new key resolves");
    assert_eq!(scope.tenant(), t.tenant.id);
    let again = h.control.rotate_api_key(t.tenant.id, t.key.id).await;
    assert!(
        matches!(again, Err(Error::NotFound { .. })),
        "a revoked key cannot be rotated: {again:?}"
    );
}

/// JWT tenancy: `sub` resolves to its personal tenant, `org_id` to the linked tenant; linking
/// an org is one update; unknown ones resolve to nothing. (Resolution by org and sub runs on
/// the control backend: a client backend reaches it only through a signed JWT.)
pub async fn org_and_sub_resolve_to_their_tenant(h: &Harness) {
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let personal = h.fresh_tenant_with(|r| r.with_owner_sub(sub.clone()).expect("valid")).await;
    let team = h.fresh_tenant().await;
    let scope = h.store.resolve_sub(&sub).await.expect("resolve").expect("sub resolves");
    assert_eq!((scope.tenant(), scope.source()), (personal.tenant.id, TenantSource::Sub));
    let org = OrgId::new(format!("org_{}", uuid::Uuid::new_v4().simple())).expect("valid");
    assert!(h.control.resolve_org(&org).await.expect("resolve").is_none(), "unlinked org");
    let linked = h.control.link_org(team.tenant.id, &org).await.expect("link");
    assert_eq!(linked.airlock_org_id.as_ref(), Some(&org));
    let scope = h.store.resolve_org(&org).await.expect("resolve").expect("org resolves");
    assert_eq!((scope.tenant(), scope.source()), (team.tenant.id, TenantSource::Org));
    let err =
        h.control.link_org(personal.tenant.id, &org).await.expect_err("org held by another tenant");
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert!(h.store.resolve_sub("nobody-has-this-sub").await.expect("resolve").is_none());
    let over = h.store.resolve_admin_override(team.tenant.id).await.expect("override");
    assert_eq!((over.tenant(), over.source()), (team.tenant.id, TenantSource::AdminOverride));
    let unknown = crate::TenantId::new_random();
    assert!(matches!(h.control.resolve_admin_override(unknown).await, Err(Error::NotFound { .. })));
}

/// Provisioning is create-or-get by name, and never silently ignores a different setting.
pub async fn provisioning_is_idempotent(h: &Harness) {
    let name = format!("p-{}", uuid::Uuid::new_v4().simple());
    let req = NewTenant::new(name.clone()).expect("valid").with_retention_days(30).expect("valid");
    let first = h.control.provision_tenant(&req).await.expect("create");
    let second = h.control.provision_tenant(&req).await.expect("get");
    assert_eq!(first, second);
    assert_eq!(h.control.get_tenant(first.id).await.expect("get"), first);
    assert_eq!(first.retention_days, 30);
    let differs = NewTenant::new(name).expect("valid").with_retention_days(7).expect("valid");
    assert!(matches!(h.control.provision_tenant(&differs).await, Err(Error::InvalidInput { .. })));
    assert!(matches!(
        h.control.get_tenant(crate::TenantId::new_random()).await,
        Err(Error::NotFound { .. })
    ));
}

/// Tenant-supplied strings with SQL metacharacters, quotes, NUL escapes and non-ASCII text
/// are stored and read back verbatim.
pub async fn hostile_strings_round_trip_verbatim(h: &Harness) {
    let t = h.fresh_tenant().await;
    let nasty = "'; DROP TABLE transitions; -- \" \\ \u{0000} % _ $1 ${x} 🦀 Ω\u{202e}";
    let run = "DROP--TABLE:runs..x_";
    let ts = recent_base().to_rfc3339();
    let lines = [
        json!({"kind": "run", "run_id": run, "source": "src'\"--", "labels": {"k'\"": nasty}, "graph": {"n": [nasty]}}).to_string(),
        json!({"run_id": run, "seq": 0, "ts": ts, "to": nasty, "node": nasty, "attrs": {nasty: nasty}, nasty: [nasty]}).to_string(),
        json!({"run_id": run, "seq": 1, "ts": ts, "to": nasty}).to_string(),
    ];
    let err = RunId::new("a';--").expect_err("quotes are outside the run id alphabet");
    assert!(matches!(err, Error::InvalidInput { .. }));
    h.store.append(&t.write, &batch(&lines)).await.expect("push");
    let run = RunId::new(run).expect("valid");
    let s = h.store.get_run(&t.read, &run).await.expect("get");
    assert_eq!(s.info.source.as_deref(), Some("src'\"--"));
    assert_eq!(s.info.labels.get("k'\"").map(String::as_str), Some(nasty));
    assert_eq!(s.info.status, nasty, "a run-level state is the status, verbatim");
    assert_eq!((s.nodes[0].node.as_str(), s.nodes[0].state.as_str()), (nasty, nasty));
    assert_eq!(s.graph, Some(json!({"n": [nasty]})));
    let rows = h.store.read_all_transitions(&t.read, &run).await.expect("read");
    assert_eq!(rows[0].body["attrs"][nasty], json!(nasty));
    assert_eq!(rows[0].body[nasty], json!([nasty]));
    let r = h.store.append(&t.write, &batch(&lines)).await.expect("re-push");
    assert_eq!(r.skipped(), 2, "read-back content hashes the same");
    let listed = h
        .store
        .list_runs(&t.read, &RunQuery { status: Some(nasty.into()), ..RunQuery::default() })
        .await
        .expect("list");
    assert_eq!(listed.runs.len(), 1);
}

/// A listing's filters follow the rules of the fields they filter on — `source` as a run's
/// source (a NUL there was a 500 on PostgreSQL), `status` as a transition's `to` — and a cursor
/// whose time no run can have (PostgreSQL cannot represent it) is refused: `InvalidInput`
/// naming the parameter, from every backend alike.
pub async fn list_runs_refuses_queries_ingest_would_refuse(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("listed", 2, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.expect("seed");
    let far_future =
        crate::RunInfo::new(RunId::new("r").expect("valid"), chrono::DateTime::<Utc>::MAX_UTC);
    let cases = [
        (RunQuery { source: Some("\0".into()), ..RunQuery::default() }, "source"),
        (RunQuery { source: Some("a b".into()), ..RunQuery::default() }, "source"),
        (RunQuery { source: Some(String::new()), ..RunQuery::default() }, "source"),
        (RunQuery { source: Some("s".repeat(257)), ..RunQuery::default() }, "source"),
        (RunQuery { status: Some(String::new()), ..RunQuery::default() }, "status"),
        (RunQuery { run_id_prefix: Some(String::new()), ..RunQuery::default() }, "run_id_prefix"),
        (RunQuery { run_id_prefix: Some("a%".into()), ..RunQuery::default() }, "run_id_prefix"),
        (RunQuery { run_id_prefix: Some("a\0".into()), ..RunQuery::default() }, "run_id_prefix"),
        (RunQuery { run_id_prefix: Some("r".repeat(201)), ..RunQuery::default() }, "run_id_prefix"),
        (
            RunQuery { cursor: Some(crate::Cursor::after(&far_future)), ..RunQuery::default() },
            "cursor",
        ),
    ];
    for (query, field) in cases {
        match h.store.list_runs(&t.read, &query).await {
            Err(Error::InvalidInput { field: f, .. }) => assert_eq!(f, field, "{query:?}"),
            other => panic!("{query:?} must be InvalidInput naming {field}, got {other:?}"),
        }
    }
    let forged = hex::encode(format!("{}|x", -8_000_000_000_000_000_000_i64));
    let decoded = crate::Cursor::decode(&forged);
    assert!(matches!(decoded, Err(Error::InvalidInput { field, .. }) if field == "cursor"));
    let all = h.store.list_runs(&t.read, &RunQuery::default()).await.expect("list");
    assert_eq!(all.runs.len(), 1, "valid queries still list");
}

/// Bad input — invalid ids, duplicate or non-contiguous seqs, non-object lines, missing or
/// unparsable `ts`/`to`, bad metadata, integers JCS cannot hash exactly — is refused naming the
/// field and line when the batch is built, so no adapter ever receives it; the store is
/// unchanged.
///
/// Not one of the per-adapter checks of [`conformance_suite!`](crate::conformance_suite): the
/// input is refused before any adapter sees it, so it could not fail for one adapter and pass
/// for another. The facade's tests run it once.
pub async fn invalid_input_is_refused_naming_the_field(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("valid", 3, "a", recent_base());
    h.store.append(&t.write, &log.all()).await.expect("seed");
    let before = snapshot(h, &t, &log.run_id).await;
    let ts = recent_base().to_rfc3339();
    let good = |seq: u64| format!(r#"{{"run_id":"valid","seq":{seq},"ts":"{ts}","to":"x"}}"#);
    let cases: Vec<(String, &str)> = vec![
        (format!(r#"{{"run_id":"a/b","seq":0,"ts":"{ts}","to":"x"}}"#), "run_id"),
        (format!(r#"{{"run_id":"..","seq":0,"ts":"{ts}","to":"x"}}"#), "run_id"),
        (format!(r#"{{"run_id":"{}","seq":0,"ts":"{ts}","to":"x"}}"#, "r".repeat(201)), "run_id"),
        (format!(r#"{{"seq":0,"ts":"{ts}","to":"x"}}"#), "run_id"),
        (good(3), "seq"), // a duplicate of line 1
        (good(5), "seq"), // not contiguous after line 1
        (format!(r#"{{"run_id":"valid","seq":-1,"ts":"{ts}","to":"x"}}"#), "seq"),
        (format!(r#"{{"run_id":"valid","seq":1.5,"ts":"{ts}","to":"x"}}"#), "seq"),
        (format!(r#"{{"run_id":"valid","seq":{},"ts":"{ts}","to":"x"}}"#, u64::MAX), "seq"),
        ("[1,2,3]".to_owned(), "line"),
        ("\"a string\"".to_owned(), "line"),
        ("{not json".to_owned(), "json"),
        (r#"{"run_id":"valid","seq":3,"to":"x"}"#.to_owned(), "ts"),
        (r#"{"run_id":"valid","seq":3,"ts":"yesterday","to":"x"}"#.to_owned(), "ts"),
        (r#"{"run_id":"valid","seq":3,"ts":1700000000,"to":"x"}"#.to_owned(), "ts"),
        (format!(r#"{{"run_id":"valid","seq":3,"ts":"{ts}"}}"#), "to"),
        (format!(r#"{{"run_id":"valid","seq":3,"ts":"{ts}","to":""}}"#), "to"),
        (format!(r#"{{"run_id":"valid","seq":3,"ts":"{ts}","to":"x","attrs":[1]}}"#), "attrs"),
        (r#"{"kind":"run","run_id":"valid","source":"a b"}"#.to_owned(), "source"),
        (r#"{"kind":"run","run_id":"valid","graph":"not a graph"}"#.to_owned(), "graph"),
        (r#"{"kind":"run","run_id":"valid","labels":{"k":1}}"#.to_owned(), "labels"),
        (r#"{"kind":"run","run_id":"valid","colour":"red"}"#.to_owned(), "colour"),
        (r#"{"kind":"step","run_id":"valid"}"#.to_owned(), "kind"),
        (
            format!(
                r#"{{"run_id":"valid","seq":3,"ts":"{ts}","to":"x","attrs":{{"n":9007199254740993}}}}"#
            ),
            "attrs",
        ),
    ];
    for (text, field) in cases {
        // Good lines around the bad one: the whole input is refused, not a prefix of it.
        let text = format!("{}\n{text}\n{}", good(3), good(4));
        match crate::AppendBatch::from_ndjson(&text) {
            Err(Error::InvalidInput { field: f, message }) => {
                assert_eq!(f, field, "{text:?}: {message}");
                assert!(message.starts_with("line 2:"), "{text:?}: {message}");
            }
            other => panic!("{text:?} must be InvalidInput naming {field}, got {other:?}"),
        }
    }
    assert_eq!(snapshot(h, &t, &log.run_id).await, before, "the store is unchanged");
    let cursor = crate::Cursor::decode("not-a-cursor");
    assert!(matches!(cursor, Err(Error::InvalidInput { field, .. }) if field == "cursor"));
}

/// Revocation cuts off scopes already resolved: an append under a revoked key's scope is
/// Unauthorized and writes nothing.
pub async fn a_revoked_keys_scope_cannot_append(h: &Harness) {
    let t = h.fresh_tenant().await;
    let log = SourceLog::new("revoked", 4, "a", recent_base());
    h.store.append(&t.write, &log.chunk(0, 2)).await.expect("push with an active key");
    h.control.revoke_api_key(t.tenant.id, t.key.id).await.expect("revoke");
    let err = h.store.append(&t.write, &log.all()).await.expect_err("the key is revoked");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let other = h.control.issue_api_key(t.tenant.id).await.expect("new key");
    let fresh = h.store.resolve_api_key(&other.secret).await.expect("resolve").expect("active");
    assert_eq!(h.store.get_run(&fresh.read(), &log.run_id).await.expect("get").info.next_seq, 2);
}

/// Rule 5: pushers racing to create one run with different content: exactly one wins, whole;
/// every other is refused with Conflict (never a backend error); the log is the winner's.
pub async fn racing_divergent_creators_one_wins_whole(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let versions: Vec<std::sync::Arc<SourceLog>> = (0..8)
        .map(|i| std::sync::Arc::new(SourceLog::new("race", 30, &format!("v{i}"), base)))
        .collect();
    let tasks: Vec<_> = versions
        .iter()
        .map(|log| {
            let (store, write, log) = (h.store.clone(), t.write.clone(), log.clone());
            tokio::spawn(async move {
                store.append(&write, &log.chunk(0, 15)).await?;
                store.append(&write, &log.chunk(15, 30)).await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for (i, task) in futures::future::join_all(tasks).await.into_iter().enumerate() {
        match task.expect("task") {
            Ok(_) => winners.push(i),
            Err(Error::Conflict { at: ConflictAt::Seq(0), .. }) => {}
            Err(other) => {
                panic!("pusher {i} got {other:?}; a lost race must be a Conflict at seq 0")
            }
        }
    }
    assert_eq!(winners.len(), 1, "exactly one version wins: {winners:?}");
    let (next, _, bodies) = snapshot(h, &t, &versions[0].run_id).await;
    assert_eq!((next, bodies), (30, expected_bodies(&versions[winners[0]], 30)));
}

/// Rule 5: batches naming the same runs in opposite orders, concurrently, all apply (no
/// deadlock surfaces as an error) and leave exactly the source logs.
pub async fn batches_in_opposite_run_orders_do_not_deadlock(h: &Harness) {
    let t = h.fresh_tenant().await;
    let base = recent_base();
    let a = std::sync::Arc::new(SourceLog::new("order-a", 60, "a", base));
    let b = std::sync::Arc::new(SourceLog::new("order-b", 60, "b", base));
    let tasks: Vec<_> = (0..8)
        .map(|p| {
            let (store, write, a, b) = (h.store.clone(), t.write.clone(), a.clone(), b.clone());
            tokio::spawn(async move {
                for start in (0..60).step_by(6) {
                    let (ca, cb) = (&a.lines[start..start + 6], &b.lines[start..start + 6]);
                    let batch = if p % 2 == 0 { batch_of(&[ca, cb]) } else { batch_of(&[cb, ca]) };
                    store.append(&write, &batch).await.expect("no batch fails for its run order");
                }
            })
        })
        .collect();
    for task in futures::future::join_all(tasks).await {
        task.expect("task");
    }
    for log in [&a, &b] {
        let (next, _, bodies) = snapshot(h, &t, &log.run_id).await;
        assert_eq!((next, bodies), (60, expected_bodies(log, 60)));
    }
}

/// Rule 5: many pushers sending overlapping chunkings of one run at once end with exactly the
/// source log — no duplicate, no lost, no altered row — and their reports add up.
pub async fn concurrent_overlapping_pushes_leave_exactly_the_source_log(h: &Harness) {
    let t = h.fresh_tenant().await;
    let n = 240u64;
    let log = std::sync::Arc::new(SourceLog::new("concurrent", n, "a", recent_base()));
    let pushers = 12u64;
    let mut tasks = Vec::new();
    for p in 0..pushers {
        let (store, write, log) = (h.store.clone(), t.write.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            // Each pusher walks the log in its own chunk sizes, re-sending a little overlap.
            let size = 7 + p * 5;
            let overlap = p % 4;
            let (mut start, mut appended) = (0u64, 0u64);
            while start < n {
                let end = (start + size).min(n);
                let r = store
                    .append(&write, &log.chunk(start, end))
                    .await
                    .expect("no pusher is refused");
                assert_eq!(r.appended() + r.skipped(), end - start);
                appended += r.appended();
                if end == n {
                    break;
                }
                start = end.saturating_sub(overlap);
            }
            appended
        }));
    }
    let mut total = 0;
    for task in futures::future::join_all(tasks).await {
        total += task.expect("pusher task");
    }
    assert_eq!(total, n, "every transition was appended by exactly one pusher");
    let (next, _, bodies) = snapshot(h, &t, &log.run_id).await;
    assert_eq!(next, n);
    assert_eq!(bodies, expected_bodies(&log, n), "the stored log is exactly the source");
}
