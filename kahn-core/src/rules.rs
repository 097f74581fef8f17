//! The append rules as pure functions, for adapter authors: every backend plans an append
//! with [`AppendPlan`] and merges metadata with [`merge_meta`], so the rules live in one place
//! and each adapter only reads and writes rows.
//!
//! A backend appends one run like this, inside its transaction, with the run's row locked:
//!
//! 1. [`AppendPlan::new`] with the stored `next_seq` and `head_hash` (gap check).
//! 2. Read the stored chain links of [`AppendPlan::links_needed`] (at most two rows).
//! 3. [`AppendPlan::decide`]: either the rows to insert, or a [`Divergence`] whose stored
//!    content hashes the backend reads to name the first conflicting seq. It computes the
//!    batch's chain links itself unless they were computed ahead
//!    ([`BatchBuilder::chain_ahead`](crate::BatchBuilder::chain_ahead)) from the very link
//!    stored before the batch: then it takes them, and the store's writer spends nothing on
//!    them.
//!
//! A fully duplicate chunk is thus confirmed by comparing one chain link, not n rows.

use std::ops::Range;

use chrono::{DateTime, TimeZone, Utc};

use crate::batch::RunAppend;
use crate::error::{ConflictAt, Error, Result};
use crate::hash::{Digest, chain_link};
use crate::id::RunId;
use crate::status::Progress;
use crate::transition::{RunMeta, TransitionBody};

/// How one run's transitions meet what is stored.
#[derive(Debug)]
pub struct AppendPlan<'a> {
    run: &'a RunAppend,
    stored_next: u64,
    stored_head: Digest,
}

/// A row to insert.
#[derive(Debug)]
pub struct NewRow<'a> {
    /// Its seq.
    pub seq: u64,
    /// Its body.
    pub body: &'a TransitionBody,
    /// Its chain link.
    pub chain_hash: Digest,
}

/// What appending one run's transitions comes to.
#[derive(Debug)]
pub struct Decision<'a> {
    /// Duplicates confirmed by content.
    pub skipped: u64,
    /// Rows to insert, in seq order.
    pub rows: Vec<NewRow<'a>>,
    /// `next_seq` after the append.
    pub next_seq: u64,
    /// `head_hash` after the append.
    pub head_hash: Digest,
}

impl Decision<'_> {
    /// The report of this run's append.
    pub fn report(&self, run_id: &RunId) -> crate::model::RunAppendReport {
        crate::model::RunAppendReport {
            run_id: run_id.clone(),
            appended: self.rows.len() as u64,
            skipped: self.skipped,
            next_seq: self.next_seq,
            head_hash: self.head_hash,
            receipt: None,
        }
    }

    /// The nodes the new rows touch: the [`NodeSummary`](crate::NodeSummary) rows a backend
    /// loads into the [`Progress`] it hands to [`advance`](Self::advance).
    pub fn touched_nodes(&self) -> std::collections::BTreeSet<&str> {
        // Thousands of rows name a few hundred nodes: deduplicated by hash first, so only the
        // distinct names are ordered (sorting every row's name was ~7% of an append). With
        // foldhash, seeded per process: SipHash was ~5% of SQLite's writer thread.
        let distinct: foldhash::HashSet<&str> =
            self.rows.iter().filter_map(|r| r.body.node()).collect();
        distinct.into_iter().collect()
    }

    /// Applies the new rows to the run's `progress` (loaded with at least the
    /// [`touched_nodes`](Self::touched_nodes)); the backend then stores `progress.run` and the
    /// touched nodes' summaries.
    pub fn advance(&self, progress: &mut Progress) {
        for row in &self.rows {
            progress.apply(row.seq, row.body);
        }
    }

    /// Earliest and latest `ts` among the new rows.
    pub fn ts_range(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let mut it = self.rows.iter().map(|r| truncate_micros(r.body.ts()));
        let first = it.next()?;
        Some(it.fold((first, first), |(lo, hi), t| (lo.min(t), hi.max(t))))
    }
}

/// The overlap's last chain link differs: some seq in `range` carries other content.
#[derive(Debug)]
pub struct Divergence {
    range: Range<u64>,
}

impl Divergence {
    /// The seqs whose stored content hashes the backend must read, in order.
    pub fn range(&self) -> Range<u64> {
        self.range.clone()
    }

    /// The [`Error::Conflict`] for the first seq whose stored content hash (from
    /// `stored_hashes`, one per seq of [`range`](Self::range)) differs from the incoming one.
    pub fn conflict(&self, run: &RunAppend, stored_hashes: &[Digest]) -> Error {
        let offset = (self.range.start - run.start()) as usize;
        let incoming = &run.bodies()[offset..];
        for ((seq, stored), body) in self.range.clone().zip(stored_hashes).zip(incoming) {
            if *stored != body.content_hash() {
                return Error::Conflict {
                    run_id: run.run_id().clone(),
                    at: ConflictAt::Seq(seq),
                    stored_hash: *stored,
                    incoming_hash: body.content_hash(),
                };
            }
        }
        // Every content hash matched but the link did not: the stored chain itself is broken.
        Error::corrupt("stored chain", "its links do not match the stored content")
            .in_run(run.run_id(), None)
    }
}

/// The outcome of [`AppendPlan::decide`].
#[derive(Debug)]
pub enum Outcome<'a> {
    /// Append these rows.
    Append(Decision<'a>),
    /// Find the conflicting seq.
    Diverged(Divergence),
}

impl<'a> AppendPlan<'a> {
    /// Plans `run` against a stored run with `stored_next` transitions and head `stored_head`
    /// (0 and [`Digest::ZERO`] for a new run).
    ///
    /// # Errors
    /// [`Error::Gap`] when the batch starts past `stored_next`.
    pub fn new(run: &'a RunAppend, stored_next: u64, stored_head: Digest) -> Result<Self> {
        if !run.bodies().is_empty() && run.start() > stored_next {
            return Err(Error::Gap {
                run_id: run.run_id().clone(),
                expected: stored_next,
                got: run.start(),
            });
        }
        Ok(Self { run, stored_next, stored_head })
    }

    fn overlap(&self) -> Range<u64> {
        self.run.start()..self.run.end().min(self.stored_next)
    }

    /// The seqs whose stored chain links [`decide`](Self::decide) needs (at most two): the link
    /// before the batch, when it is neither the zero link nor the head, and the last
    /// overlapping one.
    pub fn links_needed(&self) -> Vec<u64> {
        let s = self.run.start();
        let mut seqs = Vec::with_capacity(2);
        if self.run.bodies().is_empty() {
            return seqs;
        }
        if s > 0 && s < self.stored_next {
            seqs.push(s - 1);
        }
        let ov = self.overlap();
        if !ov.is_empty() && ov.end != self.stored_next {
            seqs.push(ov.end - 1);
        }
        seqs
    }

    /// Decides the append, given the stored chain links of [`links_needed`](Self::links_needed).
    ///
    /// # Errors
    /// [`Error::Integrity`] ([`Error::corrupt`]) when a needed link is missing: the store is
    /// inconsistent.
    pub fn decide(&self, link: impl Fn(u64) -> Option<Digest>) -> Result<Outcome<'a>> {
        let run = self.run;
        let (s, e, stored_next) = (run.start(), run.end(), self.stored_next);
        if run.bodies().is_empty() {
            return Ok(Outcome::Append(Decision {
                skipped: 0,
                rows: Vec::new(),
                next_seq: stored_next,
                head_hash: self.stored_head,
            }));
        }
        let need = |seq: u64| {
            if seq + 1 == stored_next {
                return Ok(self.stored_head);
            }
            link(seq).ok_or_else(|| {
                Error::corrupt("stored chain", format!("link {seq} is missing below next_seq"))
                    .in_run(run.run_id(), Some(seq))
            })
        };
        let mut prev = if s == 0 { Digest::ZERO } else { need(s - 1)? };
        // Computed ahead from this very link, they are the links this loop would compute.
        let ahead = run.links_ahead(&prev);
        let ov = self.overlap();
        let mut rows = Vec::with_capacity(e.saturating_sub(s.max(stored_next)) as usize);
        for (i, (seq, body)) in (s..).zip(run.bodies()).enumerate() {
            prev = match ahead.and_then(|links| links.get(i)) {
                Some(link) => *link,
                None => chain_link(&prev, &body.content_hash()),
            };
            if seq + 1 == ov.end && need(seq)? != prev {
                return Ok(Outcome::Diverged(Divergence { range: ov }));
            }
            if seq >= stored_next {
                rows.push(NewRow { seq, body, chain_hash: prev });
            }
        }
        let (next_seq, head_hash) =
            if e > stored_next { (e, prev) } else { (stored_next, self.stored_head) };
        Ok(Outcome::Append(Decision {
            skipped: ov.end.saturating_sub(ov.start),
            rows,
            next_seq,
            head_hash,
        }))
    }
}

/// Merges incoming run metadata into the stored one under the set-once rule. Returns whether
/// anything changed.
///
/// # Errors
/// [`Error::Conflict`] at the differing field, with the content hashes of both values.
pub fn merge_meta(run_id: &RunId, stored: &mut RunMeta, incoming: &RunMeta) -> Result<bool> {
    stored.merge(incoming).map_err(|(field, stored, incoming)| Error::Conflict {
        run_id: run_id.clone(),
        at: ConflictAt::Metadata(field),
        stored_hash: Digest::sha256(stored.as_bytes()),
        incoming_hash: Digest::sha256(incoming.as_bytes()),
    })
}

/// `dt` truncated to whole microseconds: the precision every backend stores.
pub fn truncate_micros(dt: DateTime<Utc>) -> DateTime<Utc> {
    from_micros(dt.timestamp_micros())
}

/// A timestamp from microseconds since the epoch (saturating at the representable range).
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros).single().unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::AppendBatch;

    /// NDJSON of run `r`'s transitions `range`, each `to` its tag and seq.
    fn lines(range: Range<u64>, tag: &str) -> String {
        range
            .map(|i| format!("{{\"run_id\":\"r\",\"seq\":{i},\"ts\":\"2026-01-01T00:00:00Z\",\"to\":\"{tag}{i}\"}}\n"))
            .collect()
    }

    fn batch(range: Range<u64>, tag: &str) -> AppendBatch {
        AppendBatch::from_ndjson(&lines(range, tag)).unwrap()
    }

    fn chain(b: &AppendBatch) -> Vec<Digest> {
        let mut prev = Digest::ZERO;
        b.runs()[0]
            .bodies()
            .iter()
            .map(|t| {
                prev = chain_link(&prev, &t.content_hash());
                prev
            })
            .collect()
    }

    fn decided(run: &RunAppend, next: u64, head: Digest, links: &[Digest]) -> Vec<Digest> {
        let plan = AppendPlan::new(run, next, head).unwrap();
        let Outcome::Append(d) = plan.decide(|seq| links.get(seq as usize).copied()).unwrap()
        else {
            panic!("diverged")
        };
        let mut out: Vec<Digest> = d.rows.iter().map(|r| r.chain_hash).collect();
        out.push(d.head_hash);
        out
    }

    fn chunk_ahead(range: Range<u64>, from: Digest) -> (AppendBatch, Vec<(RunId, u64, Digest)>) {
        let mut builder = crate::BatchBuilder::new();
        for line in lines(range, "s").lines() {
            builder.push(crate::NdjsonLine::parse(line).unwrap().unwrap()).unwrap();
        }
        let tips = builder.chain_ahead(|_, _| Some(from));
        (builder.build(), tips)
    }

    #[test]
    fn links_computed_ahead_from_the_stored_link_are_the_links() {
        let full = batch(0..10, "s");
        let links = chain(&full);
        let (ahead, tips) = chunk_ahead(4..10, links[3]);
        assert_eq!(tips, vec![(RunId::new("r").unwrap(), 10, links[9])]);
        assert!(ahead.runs()[0].links_ahead(&links[3]).is_some());
        assert_eq!(
            decided(&ahead.runs()[0], 4, links[3], &links),
            links[4..].iter().chain([&links[9]]).copied().collect::<Vec<_>>()
        );
    }

    #[test]
    fn links_computed_ahead_from_another_link_are_not_used() {
        let full = batch(0..10, "s");
        let links = chain(&full);
        // The caller guessed wrong (another pusher appended first, or a stale tip).
        let (ahead, _) = chunk_ahead(4..10, Digest::sha256(b"a wrong guess"));
        assert!(ahead.runs()[0].links_ahead(&links[3]).is_none());
        let plain = batch(4..10, "s");
        assert_eq!(
            decided(&ahead.runs()[0], 4, links[3], &links),
            decided(&plain.runs()[0], 4, links[3], &links)
        );
        assert_eq!(ahead, plain, "links computed ahead are not part of what a batch is");
    }

    #[test]
    fn duplicate_chunk_needs_two_links_at_most() {
        let full = batch(0..10, "s");
        let links = chain(&full);
        let chunk = batch(3..6, "s");
        let plan = AppendPlan::new(&chunk.runs()[0], 10, links[9]).unwrap();
        assert_eq!(plan.links_needed(), vec![2, 5]);
        let Outcome::Append(d) = plan.decide(|seq| Some(links[seq as usize])).unwrap() else {
            panic!()
        };
        assert_eq!((d.skipped, d.rows.len(), d.next_seq, d.head_hash), (3, 0, 10, links[9]));
    }

    #[test]
    fn overlap_plus_tail_appends_tail() {
        let full = batch(0..10, "s");
        let links = chain(&full);
        let plan = AppendPlan::new(&full.runs()[0], 4, links[3]).unwrap();
        assert_eq!(plan.links_needed(), Vec::<u64>::new());
        let Outcome::Append(d) = plan.decide(|seq| Some(links[seq as usize])).unwrap() else {
            panic!()
        };
        assert_eq!((d.skipped, d.rows.len(), d.rows[0].seq, d.head_hash), (4, 6, 4, links[9]));
    }

    #[test]
    fn divergence_names_first_differing_seq() {
        let stored = batch(0..10, "s");
        let links = chain(&stored);
        let other = batch(2..5, "x");
        let plan = AppendPlan::new(&other.runs()[0], 10, links[9]).unwrap();
        let Outcome::Diverged(div) = plan.decide(|seq| Some(links[seq as usize])).unwrap() else {
            panic!()
        };
        let hashes: Vec<_> =
            stored.runs()[0].bodies()[2..5].iter().map(|b| b.content_hash()).collect();
        assert!(matches!(
            div.conflict(&other.runs()[0], &hashes),
            Error::Conflict { at: ConflictAt::Seq(2), .. }
        ));
    }

    /// A stored chain that lacks a link below `next_seq`, or whose links do not follow its
    /// content, is a corrupt store: [`Error::Integrity`] naming the run, never `Backend`.
    #[test]
    fn an_inconsistent_stored_chain_is_corrupt() {
        let stored = batch(0..10, "s");
        let links = chain(&stored);
        let chunk = batch(3..6, "s");
        let plan = AppendPlan::new(&chunk.runs()[0], 10, links[9]).unwrap();
        let missing = plan.decide(|_| None).unwrap_err();
        assert!(
            matches!(&missing, Error::Integrity { run_id: Some(r), seq: Some(2), .. } if r.as_str() == "r"),
            "{missing:?}"
        );
        let other = batch(2..5, "x");
        let plan = AppendPlan::new(&other.runs()[0], 10, links[9]).unwrap();
        let Outcome::Diverged(div) = plan.decide(|seq| Some(links[seq as usize])).unwrap() else {
            panic!()
        };
        let same: Vec<_> = other.runs()[0].bodies().iter().map(|b| b.content_hash()).collect();
        let broken = div.conflict(&other.runs()[0], &same);
        assert!(matches!(&broken, Error::Integrity { run_id: Some(_), .. }), "{broken:?}");
    }

    #[test]
    fn gap_is_refused() {
        let b = batch(5..6, "s");
        assert!(matches!(
            AppendPlan::new(&b.runs()[0], 4, Digest::ZERO),
            Err(Error::Gap { expected: 4, got: 5, .. })
        ));
    }
}
