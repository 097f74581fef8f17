//! The model-based check: random interleavings of pushes of random chunkings of a few source
//! logs (and of divergent versions of them), run against the backend and against a plain
//! in-memory reference model; after every step the backend's visible state must equal the
//! model's.

use std::collections::HashMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::fixtures::{Harness, SourceLog, TestTenant, batch_of, recent_base};
use crate::{ConflictAt, Digest, Error, RunId, StorageBackendExt, chain_link};

const RUNS: usize = 3;
const LOG_LEN: u64 = 24;
/// Variant 0 is the source log; variants 1 and 2 diverge from it at these seqs.
const DIVERGE_AT: [u64; 2] = [5, 15];

#[derive(Clone, Debug)]
struct Push {
    run: usize,
    variant: usize,
    start: u64,
    len: u64,
}

fn push_strategy() -> impl Strategy<Value = Push> {
    // Sources are pushed far more often than divergent versions, so runs grow.
    let variant = prop_oneof![6 => Just(0usize), 1 => Just(1usize), 1 => Just(2usize)];
    (0..RUNS, variant, 0..LOG_LEN, 1..=10u64).prop_map(|(run, variant, start, len)| Push {
        run,
        variant,
        start,
        len: len.min(LOG_LEN - start),
    })
}

fn ops_strategy() -> impl Strategy<Value = Vec<Vec<Push>>> {
    // A step is one append call: one or two runs in one batch.
    prop::collection::vec(prop::collection::vec(push_strategy(), 1..=2), 1..30)
}

/// The reference model: per run, the content hashes stored, in seq order.
#[derive(Default)]
struct Model {
    runs: HashMap<usize, Vec<Digest>>,
}

struct Logs {
    variants: Vec<[SourceLog; 3]>,
}

impl Logs {
    fn new() -> Self {
        let base = recent_base();
        let variants = (0..RUNS)
            .map(|r| {
                let source = SourceLog::new(&format!("m{r}"), LOG_LEN, "a", base);
                let one = source.diverging_at(DIVERGE_AT[0], "b", base);
                let two = source.diverging_at(DIVERGE_AT[1], "c", base);
                [source, one, two]
            })
            .collect();
        Self { variants }
    }

    fn hash(&self, run: usize, variant: usize, seq: u64) -> Digest {
        self.variants[run][variant].body(seq).content_hash()
    }
}

impl Model {
    /// What the backend must answer to this batch: per run `(appended, skipped)`, or the error.
    fn apply(&mut self, logs: &Logs, step: &[Push]) -> Result<Vec<(u64, u64)>, Error> {
        let mut staged = Vec::new();
        for p in step {
            let stored = self.runs.get(&p.run).cloned().unwrap_or_default();
            let run_id = logs.variants[p.run][0].run_id.clone();
            let l = stored.len() as u64;
            let (s, e) = (p.start, p.start + p.len);
            if s > l {
                return Err(Error::Gap { run_id, expected: l, got: s });
            }
            for seq in s..e.min(l) {
                let incoming = logs.hash(p.run, p.variant, seq);
                if incoming != stored[seq as usize] {
                    return Err(Error::Conflict {
                        run_id,
                        at: ConflictAt::Seq(seq),
                        stored_hash: stored[seq as usize],
                        incoming_hash: incoming,
                    });
                }
            }
            let mut next = stored;
            next.extend((l.max(s)..e).map(|seq| logs.hash(p.run, p.variant, seq)));
            staged.push((p.run, next, (e.saturating_sub(l.max(s)), e.min(l).saturating_sub(s))));
        }
        Ok(staged
            .into_iter()
            .map(|(run, next, counts)| {
                self.runs.insert(run, next);
                counts
            })
            .collect())
    }
}

fn same_error(got: &Error, want: &Error) -> bool {
    match (got, want) {
        (
            Error::Gap { run_id: a, expected: x, got: y },
            Error::Gap { run_id: b, expected: x2, got: y2 },
        ) => a == b && x == x2 && y == y2,
        (
            Error::Conflict { run_id: a, at: p, stored_hash: s, incoming_hash: i },
            Error::Conflict { run_id: b, at: p2, stored_hash: s2, incoming_hash: i2 },
        ) => a == b && p == p2 && s == s2 && i == i2,
        _ => false,
    }
}

async fn check_state(
    h: &Harness,
    t: &TestTenant,
    logs: &Logs,
    model: &Model,
    full: bool,
) -> Result<(), TestCaseError> {
    for r in 0..RUNS {
        let run_id: &RunId = &logs.variants[r][0].run_id;
        let got = h.store.get_run(&t.read, run_id).await;
        match (model.runs.get(&r), got) {
            (None, Err(Error::NotFound { .. })) => {}
            (Some(hashes), Ok(summary)) => {
                let head = hashes.iter().fold(Digest::ZERO, |prev, c| chain_link(&prev, c));
                prop_assert_eq!(
                    summary.info.next_seq,
                    hashes.len() as u64,
                    "next_seq of {}",
                    run_id
                );
                prop_assert_eq!(summary.info.head_hash, head, "head_hash of {}", run_id);
                if full {
                    let rows = h
                        .store
                        .read_all_transitions(&t.read, run_id)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let stored: Vec<Digest> = rows.iter().map(|r| r.content_hash).collect();
                    prop_assert_eq!(&stored, hashes, "stored content of {}", run_id);
                    // The status and node summaries kept at append time are what kahn-core's
                    // rule gives over the stored log, whatever interleaving built it.
                    let mut progress = crate::Progress::default();
                    for row in &rows {
                        let body = crate::TransitionBody::new(row.body.clone())
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        progress.apply(row.seq.get(), &body);
                    }
                    prop_assert_eq!(
                        (summary.info.status.as_str(), summary.info.node_counts),
                        (progress.run.status(), progress.run.counts),
                        "status of {}",
                        run_id
                    );
                    let nodes: Vec<_> = progress.nodes.into_values().collect();
                    prop_assert_eq!(&summary.nodes, &nodes, "node summaries of {}", run_id);
                    h.store
                        .verify_run(&t.read, run_id)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            (want, got) => {
                return Err(TestCaseError::fail(format!(
                    "{run_id}: model has {want:?}, backend {got:?}"
                )));
            }
        }
    }
    Ok(())
}

async fn run_case(h: &Harness, steps: &[Vec<Push>]) -> Result<(), TestCaseError> {
    let t = h.fresh_tenant().await;
    let logs = Logs::new();
    let mut model = Model::default();
    for step in steps {
        // One run appears at most once per batch (a batch groups lines by run).
        let mut seen = [false; RUNS];
        let step: Vec<Push> =
            step.iter().filter(|p| !std::mem::replace(&mut seen[p.run], true)).cloned().collect();
        let parts: Vec<&[String]> = step
            .iter()
            .map(|p| {
                &logs.variants[p.run][p.variant].lines[p.start as usize..(p.start + p.len) as usize]
            })
            .collect();
        let want = model.apply(&logs, &step);
        let got = h.store.append(&t.write, &batch_of(&parts)).await;
        match (&want, &got) {
            (Ok(counts), Ok(report)) => {
                let got_counts: Vec<(u64, u64)> =
                    report.runs.iter().map(|r| (r.appended, r.skipped)).collect();
                prop_assert_eq!(&got_counts, counts, "report of step {:?}", step);
            }
            (Err(w), Err(g)) => {
                prop_assert!(same_error(g, w), "step {:?}: expected {:?}, got {:?}", step, w, g)
            }
            _ => {
                return Err(TestCaseError::fail(format!(
                    "step {step:?}: expected {want:?}, got {got:?}"
                )));
            }
        }
        check_state(h, &t, &logs, &model, false).await?;
    }
    check_state(h, &t, &logs, &model, true).await
}

/// Random interleavings of pushes — random chunks of three source logs and of divergent
/// versions of them, one or two runs per batch — against the reference model. Cases:
/// `KAHN_MODEL_CASES` (default 24). Needs a multi-threaded tokio runtime.
pub async fn model_based_interleavings(h: &Harness) {
    let cases = std::env::var("KAHN_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    let config =
        Config { cases, failure_persistence: None, max_shrink_iters: 256, ..Config::default() };
    let handle = tokio::runtime::Handle::current();
    let result = tokio::task::block_in_place(|| {
        TestRunner::new(config).run(&ops_strategy(), |steps| handle.block_on(run_case(h, &steps)))
    });
    if let Err(e) = result {
        panic!("model-based check failed: {e}");
    }
}
