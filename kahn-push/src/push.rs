//! The resumable, chunked pusher: streams a run's NDJSON file into any [`StorageBackend`].
//!
//! It first asks the store how much of the run it holds (`next_seq`, `head_hash`), hashes that
//! prefix of the file locally and compares the one chain link, then sends only what is
//! missing, in chunks of at most 1 MiB cut on line boundaries. Reading (parsing,
//! canonicalising, hashing) runs on its own thread, one chunk ahead of the append; to a store
//! that parses NDJSON itself (a server), lines are forwarded as written instead of parsed
//! twice (see [`StorageBackend::prefers_ndjson`] and `forward.rs`). Memory
//! stays flat: at most three chunks are held at a time, whatever the file's size. Retryable
//! failures (rate limits, restarts, lost connections) are retried with exponential backoff
//! and jitter (backon, see [`with_retries`]), honouring the store's `Retry-After`; since
//! appends are idempotent by content, a retry of an append that did commit only finds its
//! transitions already stored.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kahn_core::receipt::Envelope;
use kahn_core::{
    AppendBatch, AppendReport, BatchBuilder, Digest, Error, NdjsonLine, ReadScope, Result, RunId,
    RunMeta, Seq, StorageBackend, Transition, TransitionBody, WriteScope, chain_link,
    parse_json_object,
};
use serde::Serialize;
use serde_json::Value;

use crate::forward::{self, Forwarded, Look, Members, Origins};
use crate::resume::{Mark, ResumeCache};

/// Largest chunk sent in one append, in bytes of NDJSON.
pub const MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Where a run comes from: its transitions file, and its graph when there is one.
#[derive(Clone, Debug)]
pub struct RunSource {
    transitions: PathBuf,
    graph: Option<PathBuf>,
    run_id: RunId,
}

impl RunSource {
    /// A run directory (holding `transitions.ndjson` and, when present, `graph.json`) or an
    /// NDJSON file. The run id is `run_id` when given, else the directory's name or the
    /// file's stem.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `path` when it does not exist or has no
    /// `transitions.ndjson`, or `run_id` when the derived id is not a valid run id.
    pub fn from_path(path: &Path, run_id: Option<RunId>) -> Result<Self> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid("path", format!("{}: {e}", path.display())))?;
        let (transitions, graph, name) = if meta.is_dir() {
            let transitions = path.join("transitions.ndjson");
            if !transitions.is_file() {
                return Err(Error::invalid(
                    "path",
                    format!("{} has no transitions.ndjson", path.display()),
                ));
            }
            let graph = Some(path.join("graph.json")).filter(|g| g.is_file());
            let dir = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            (transitions, graph, dir.file_name().map(|n| n.to_string_lossy().into_owned()))
        } else {
            (path.to_owned(), None, path.file_stem().map(|n| n.to_string_lossy().into_owned()))
        };
        let run_id = match run_id {
            Some(id) => id,
            None => RunId::new(name.unwrap_or_default()).map_err(|e| match e {
                Error::InvalidInput { message, .. } => Error::invalid(
                    "run_id",
                    format!("{message} (the run id comes from the path; pass --run-id)"),
                ),
                other => other,
            })?,
        };
        Ok(Self { transitions, graph, run_id })
    }

    /// The run.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// The transitions file.
    pub fn transitions_path(&self) -> &Path {
        &self.transitions
    }
}

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Largest chunk, in bytes (at most [`MAX_CHUNK_BYTES`]).
    pub max_chunk_bytes: usize,
    /// Retries of one call before giving up.
    pub max_retries: u32,
    /// Metadata to set on the run besides the graph (source, labels).
    pub meta: RunMeta,
    /// Where to remember what pushed files hold, so a re-push skips the stored prefix without
    /// parsing it (see [`ResumeCache`]). `None`: every resume re-hashes the prefix.
    pub resume_cache: Option<ResumeCache>,
    /// Appends sent before the previous one is answered (at least 1). With 2, the store (or
    /// the server in front of it) works on chunk k+1 while chunk k is appended; a store that
    /// takes them out of order refuses the later one as a gap (nothing written) and the pusher
    /// sends it again once the earlier one is stored, so any store stays correct. `kahn serve`
    /// queues a run's appends in arrival order, which is what makes 2 pay off over HTTP.
    pub appends_in_flight: usize,
}

impl Default for PushOptions {
    fn default() -> Self {
        Self {
            max_chunk_bytes: MAX_CHUNK_BYTES,
            max_retries: 8,
            meta: RunMeta::new(),
            resume_cache: None,
            appends_in_flight: 2,
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PushReport {
    /// The run.
    pub run_id: RunId,
    /// Transitions the store already held when the push started (confirmed by one link).
    pub already_stored: u64,
    /// Whether they were confirmed by the resume cache's mark (raw bytes hashed, not parsed).
    pub resumed_by_mark: bool,
    /// Transitions this push stored.
    pub appended: u64,
    /// Transitions sent and found already stored.
    pub skipped: u64,
    /// Appends made.
    pub chunks: u64,
    /// Retries after retryable failures.
    pub retries: u64,
    /// The run's next seq afterwards (its transition count).
    pub next_seq: u64,
    /// The run's head hash afterwards.
    pub head_hash: Digest,
    /// The store's signed receipt for that head (see [`kahn_core::receipt`]): the last one
    /// this push was given, else the one an earlier push of the run was given and the resume
    /// cache kept, when it names this very head. `None` when the store signs no receipts (a
    /// database, or a server without a receipt key). Absent from the JSON then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Envelope>,
}

/// Hears about a push as it goes (a progress bar, log lines). Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// The push starts: the file's size, and how many transitions the store holds.
    fn started(&self, _file_bytes: u64, _already_stored: u64) {}
    /// The first `transitions` of the file (`bytes` long) were confirmed stored by one chain
    /// link, and are not sent.
    fn resumed(&self, _bytes: u64, _transitions: u64) {}
    /// A chunk of `bytes` was stored (or found stored).
    fn chunk_done(&self, _bytes: u64, _appended: u64, _skipped: u64) {}
    /// A retryable failure; the pusher waits `wait` before attempt `attempt`.
    fn retrying(&self, _attempt: u32, _wait: Duration, _error: &Error) {}
}

/// A [`Progress`] that says nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {}

/// The longest `Retry-After` honoured: a store asking for more is waited on this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// The waits of up to `max_retries` retries, before any `Retry-After`: retry `n` (from 0)
/// waits a random time between `b/2` and `b`, where `b` is 250 ms · 2ⁿ capped at 30 s
/// ("equal jitter": half fixed, half random). backon's jitter adds a random fraction of the
/// delay to it (`d` becomes between `d` and `2d`), so the delays it is given are half of
/// `b`: from 125 ms, doubling, capped at 15 s.
fn backoff(max_retries: u32) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(125))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(15))
        .with_jitter()
        .with_max_times(max_retries as usize)
}

/// `wait`, lengthened to the store's `Retry-After` (itself capped at [`MAX_RETRY_AFTER`])
/// when `error` names one.
fn honour_retry_after(error: &Error, wait: Duration) -> Duration {
    match error {
        Error::Unavailable { retry_after: Some(asked), .. } => {
            wait.max((*asked).min(MAX_RETRY_AFTER))
        }
        _ => wait,
    }
}

/// Runs `call` until it succeeds, fails for good, or `max_retries` retryable failures passed.
///
/// A retryable failure ([`Error::is_retryable`]) is retried after a wait: retry `n` (from 0)
/// waits a random time between `b/2` and `b`, where `b` is 250 ms · 2ⁿ capped at 30 s, and
/// never less than the store's `Retry-After` (itself capped at [`MAX_RETRY_AFTER`]). Each
/// retry adds one to `retries` and is told to `progress` (attempts counted from 1) before
/// the wait.
///
/// # Errors
/// The last error.
pub async fn with_retries<T, F, Fut>(
    max_retries: u32,
    progress: &dyn Progress,
    retries: &mut u64,
    call: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut attempt = 0;
    call.retry(backoff(max_retries))
        .when(Error::is_retryable)
        .adjust(|e, wait| wait.map(|w| honour_retry_after(e, w)))
        .notify(|e, wait| {
            attempt += 1;
            *retries += 1;
            progress.retrying(attempt, wait, e);
        })
        .await
}

/// Where the transition `seq` of `source` is in its file: the line number (from 1) and the
/// transition as the pusher reads it; `None` when the file holds fewer transitions. For
/// saying where a conflict is; it reads the file up to that line.
///
/// # Errors
/// The file cannot be read, or a line before it is not one the pusher accepts.
pub fn locate(source: &RunSource, seq: u64) -> Result<Option<(u64, Transition)>> {
    use std::io::BufRead as _;
    let path = &source.transitions;
    let unreadable = |e: std::io::Error| Error::invalid("path", format!("{}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut next = 0u64;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(unreadable)?;
        if let Some(NdjsonLine::Transition(t)) = parse_line(&line, &source.run_id, next)? {
            if next == seq {
                return Ok(Some((index as u64 + 1, t)));
            }
            next += 1;
        }
    }
    Ok(None)
}

/// Pushes `source` into `store` as the tenant of `scope`, resuming from what is stored.
///
/// # Errors
/// [`Error::InvalidInput`] naming the line of the file and the field of the first bad line
/// (the chunks before the one holding it are stored, nothing from it on);
/// [`Error::Conflict`] when the store holds different content (nothing is rewritten);
/// [`Error::Unavailable`] when retries ran out; others as the store returns them.
pub async fn push(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    source: &RunSource,
    opts: &PushOptions,
    progress: &dyn Progress,
) -> Result<PushReport> {
    let mut meta = opts.meta.clone();
    if let Some(path) = &source.graph {
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Error::invalid("graph", format!("{}: {e}", path.display())))?;
        // Read as strictly as a line (duplicate keys, numbers no double holds): what is
        // stored is what the file says.
        let graph: Value = kahn_core::parse_json(&text).map_err(|e| {
            Error::invalid("graph", format!("{} is not valid JSON: {e}", path.display()))
        })?;
        meta = meta.with_graph(graph)?;
    }
    let mut report = PushReport {
        run_id: source.run_id.clone(),
        already_stored: 0,
        resumed_by_mark: false,
        appended: 0,
        skipped: 0,
        chunks: 0,
        retries: 0,
        next_seq: 0,
        head_hash: Digest::ZERO,
        receipt: None,
    };
    let read: ReadScope = scope.read();
    let stored = with_retries(opts.max_retries, progress, &mut report.retries, || {
        store.get_run(&read, &source.run_id)
    })
    .await;
    let (stored_next, stored_head) = match stored {
        Ok(s) => (s.info.next_seq, s.info.head_hash),
        Err(Error::NotFound { .. }) => (0, Digest::ZERO),
        Err(e) => return Err(e),
    };
    let file_bytes = tokio::fs::metadata(&source.transitions)
        .await
        .map_err(|e| Error::invalid("path", format!("{}: {e}", source.transitions.display())))?
        .len();
    progress.started(file_bytes, stored_next);

    // Resume from what is stored when the file's prefix hashes to the stored head; otherwise
    // send everything and let the store name the first differing seq.
    let pass = Pass { store, scope, source, opts, progress, meta: &meta };
    match pass.run(&mut report, stored_next, stored_head).await? {
        Outcome::Done => report.already_stored = stored_next,
        Outcome::Diverged => {
            tracing::info!(run = %source.run_id, "stored run differs from the file's prefix; sending it all");
            pass.run(&mut report, 0, Digest::ZERO).await?;
        }
    }
    keep_receipt(opts.resume_cache.as_ref(), scope, &mut report).await;
    Ok(report)
}

/// Keeps the receipt this push was given beside the resume cache, or, when it was given none
/// (everything was stored already), takes the kept one if it names the head the run has now.
async fn keep_receipt(cache: Option<&ResumeCache>, scope: &WriteScope, report: &mut PushReport) {
    let Some(cache) = cache else { return };
    let tenant = scope.tenant();
    match &report.receipt {
        Some(receipt) => cache.save_receipt(tenant, &report.run_id, receipt).await,
        None => {
            report.receipt = cache.load_receipt(tenant, &report.run_id).await.filter(|kept| {
                kept.unverified_receipt().is_ok_and(|r| {
                    r.tenant_id == tenant
                        && r.run_id == report.run_id
                        && r.next_seq == report.next_seq
                        && r.head_hash == report.head_hash
                })
            });
        }
    }
}

enum Outcome {
    Done,
    Diverged,
}

struct Pass<'a> {
    store: &'a dyn StorageBackend,
    scope: &'a WriteScope,
    source: &'a RunSource,
    opts: &'a PushOptions,
    progress: &'a dyn Progress,
    meta: &'a RunMeta,
}

/// What the reading side of a pass hands the appending side.
enum Cut {
    /// The file's first `transitions` (`bytes` long) hash to the stored head: not sent.
    /// `by_mark` when the resume cache's mark proved it.
    Resumed { bytes: u64, transitions: u64, by_mark: bool },
    /// A chunk to append, and the bytes of the file it covers.
    Chunk { payload: Payload, file_bytes: u64 },
    /// The file's prefix is not what the store holds (or is shorter than it).
    Diverged,
    /// The whole file was read: what it holds, for the resume cache (its `head_hash` is not
    /// known here; the store's report gives it).
    End(Mark),
}

/// A chunk as the store is handed it.
enum Payload {
    /// Parsed lines (a store in this process).
    Batch(AppendBatch),
    /// NDJSON, forwarded (a store that parses it on its side; see [`crate::forward`]), and
    /// where its lines came from in the file.
    Ndjson(bytes::Bytes, Origins),
}

/// A chunk's append, answered.
struct Sent {
    payload: Payload,
    file_bytes: u64,
    /// Sent while an earlier chunk was in flight.
    behind: bool,
    retries: u64,
    result: Result<AppendReport>,
}

/// One chunk being cut: its lines, grouped and checked (or forwarded), its size on the wire
/// (bounded by the chunk limit) and in the file (for progress).
struct Chunk {
    lines: Lines,
    wire: usize,
    file_bytes: u64,
    count: u64,
}

/// A chunk's lines as they are gathered.
enum Lines {
    /// Parsed into a batch.
    Parsed(BatchBuilder),
    /// Forwarded as NDJSON.
    Forwarded(Forwarded),
}

/// What one line of the file adds to a chunk.
enum Add {
    /// A transition line looked at, to forward as written.
    Looked(Members),
    /// A line parsed.
    Parsed(NdjsonLine),
}

impl Add {
    fn is_transition(&self) -> bool {
        match self {
            Add::Looked(_) => true,
            Add::Parsed(line) => matches!(line, NdjsonLine::Transition(_)),
        }
    }
}

impl Chunk {
    /// An empty chunk; forwarded when `forward` names its run and first seq.
    fn empty(forward: Option<(&RunId, u64)>) -> Self {
        let lines = match forward {
            Some((run_id, seq)) => Lines::Forwarded(Forwarded::new(run_id, seq)),
            None => Lines::Parsed(BatchBuilder::new()),
        };
        Self { lines, wire: 0, file_bytes: 0, count: 0 }
    }

    /// A chunk opening with the run's metadata line, counted in its size.
    fn with_meta(meta: &RunMeta, run_id: &RunId, max: usize, forward: Option<u64>) -> Result<Self> {
        let mut chunk = Self::empty(forward.map(|seq| (run_id, seq)));
        if !meta.is_empty() {
            let wire = meta_wire_bytes(meta, run_id);
            if wire > max {
                return Err(Error::invalid(
                    "graph",
                    format!(
                        "the run's metadata line is {wire} bytes; it must fit in one {max}-byte chunk"
                    ),
                ));
            }
            match &mut chunk.lines {
                Lines::Parsed(builder) => builder.push_meta(run_id, meta)?,
                Lines::Forwarded(forwarded) => forwarded.push_parsed(
                    &NdjsonLine::Run { run_id: run_id.clone(), meta: meta.clone() },
                    0,
                ),
            }
            chunk.wire = wire;
            chunk.count = 1;
        }
        Ok(chunk)
    }

    /// What `text` (a line of the file holding `members`) adds when forwarded as written;
    /// `None` when this chunk is not forwarded.
    fn forwarded_len(&self, text: &str, members: Members, seq: u64) -> Option<usize> {
        match &self.lines {
            Lines::Forwarded(forwarded) => Some(forwarded.wire_len(text, members, seq)),
            Lines::Parsed(_) => None,
        }
    }

    /// Adds the file's line `line_no` (`text`, transition `seq` of `run_id` if it is one).
    fn add(&mut self, add: Add, text: &str, run_id: &RunId, seq: u64, line_no: u64) -> Result<()> {
        match (&mut self.lines, add) {
            (Lines::Forwarded(forwarded), Add::Looked(members)) => {
                forwarded.push_looked(text, members, seq, line_no);
            }
            (Lines::Forwarded(forwarded), Add::Parsed(line)) => {
                forwarded.push_parsed(&line, line_no);
            }
            (Lines::Parsed(builder), Add::Parsed(line)) => builder.push(line)?,
            // Only a forwarded chunk has lines looked at; were one handed here, reading it in
            // full is what a parsed chunk does.
            (Lines::Parsed(builder), Add::Looked(_)) => {
                if let Some(line) = parse_line(text, run_id, seq)? {
                    builder.push(line)?;
                }
            }
        }
        Ok(())
    }

    /// The chunk. A parsed one gets its chain links computed ahead on this (the reading)
    /// thread from `tip`, the link the store is expected to hold before it; `tip` moves to
    /// the chunk's end. (A forwarded one carries no links: the server computes its own.)
    fn cut(self, tip: &mut (u64, Digest)) -> Cut {
        let payload = match self.lines {
            Lines::Parsed(mut builder) => {
                let (next, head) = *tip;
                for (_, end, last) in
                    builder.chain_ahead(|_, start| (start == next).then_some(head))
                {
                    *tip = (end, last);
                }
                Payload::Batch(builder.build())
            }
            Lines::Forwarded(forwarded) => {
                let (body, origins) = forwarded.finish();
                Payload::Ndjson(body, origins)
            }
        };
        Cut::Chunk { payload, file_bytes: self.file_bytes }
    }
}

/// The reading side of a pass: reads the file once, on a blocking thread, hashing the first
/// `skip` transitions and comparing the link with `skip_head`, then parsing, validating,
/// canonicalising and hashing the rest into chunks (or, when `forward`, looking at each line
/// and forwarding it as written). Owns what it reads, so it runs while the appending side
/// awaits the store.
struct Cutter {
    path: PathBuf,
    run_id: RunId,
    meta: RunMeta,
    max: usize,
    skip: u64,
    skip_head: Digest,
    /// A resume mark matching the store's count and head: its bytes may be skipped unparsed.
    hint: Option<Mark>,
    /// Whether to hash the raw bytes for a mark (only when a resume cache will keep it).
    mark: bool,
    /// Whether to forward lines as NDJSON rather than parse them (see [`crate::forward`]).
    forward: bool,
}

/// Reads the file, hashing every byte read when a resume cache will keep a mark of it.
struct Reader {
    inner: std::io::BufReader<std::fs::File>,
    raw: Option<RawHash>,
    bytes: u64,
}

/// The BLAKE3 hash of a file's raw bytes, fed in blocks.
///
/// BLAKE3 hashes as many 1 KiB chunks at once as the CPU's vectors hold, but only when it is
/// handed that many: fed one ~300-byte line at a time it compresses one chunk after another,
/// five times slower (0.41 s against 0.08 s for the lines of a 1M-transition file). So short
/// updates are gathered into a block first, and long ones go straight through.
struct RawHash {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

impl RawHash {
    /// The bytes gathered before they are hashed.
    const BLOCK: usize = 64 * 1024;

    fn new() -> Self {
        Self { hasher: blake3::Hasher::new(), pending: Vec::with_capacity(Self::BLOCK) }
    }

    fn update(&mut self, bytes: &[u8]) {
        if self.pending.len() + bytes.len() > Self::BLOCK {
            self.hasher.update(&self.pending);
            self.pending.clear();
        }
        if bytes.len() >= Self::BLOCK {
            self.hasher.update(bytes);
        } else {
            self.pending.extend_from_slice(bytes);
        }
    }

    /// The hash of everything fed so far; more may be fed after.
    fn finalize(&self) -> Digest {
        let mut hasher = self.hasher.clone();
        hasher.update(&self.pending);
        Digest::from_bytes(*hasher.finalize().as_bytes())
    }
}

impl Reader {
    /// Consumes the mark's bytes if they are still what it says; otherwise rewinds.
    ///
    /// The bytes are hashed straight from the reader's buffer, a whole buffer at a time (see
    /// [`RawHash`]; `io::copy` through a `Take` hands over 8 KiB, which made this part of a
    /// re-push nearly twice as slow).
    fn skip_marked(&mut self, mark: &Mark) -> std::io::Result<bool> {
        use std::io::{BufRead, ErrorKind, Seek};
        let mut raw = RawHash::new();
        let mut left = mark.bytes;
        while left > 0 {
            let buf = match self.inner.fill_buf() {
                Ok([]) => break,
                Ok(buf) => buf,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            raw.update(&buf[..n]);
            self.inner.consume(n);
            left -= n as u64;
        }
        if left == 0 && raw.finalize() == mark.raw_blake3 {
            self.bytes = mark.bytes;
            self.raw = Some(raw);
            return Ok(true);
        }
        self.inner.rewind()?;
        Ok(false)
    }
}

impl Cutter {
    /// Reads the file, handing each [`Cut`] to `emit`; stops early when `emit` says the
    /// appending side is gone.
    fn cut(self, mut emit: impl FnMut(Cut) -> bool) -> Result<()> {
        use std::io::{BufRead, Read};
        let (path, run_id, max, skip) = (&self.path, &self.run_id, self.max, self.skip);
        let io_error =
            |e: std::io::Error| Error::invalid("path", format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(io_error)?;
        let mut reader = Reader {
            inner: std::io::BufReader::with_capacity(256 * 1024, file),
            raw: self.mark.then(RawHash::new),
            bytes: 0,
        };
        let (mut seq, mut line_no, mut prefix, mut prefix_bytes) = (0u64, 0u64, Digest::ZERO, 0u64);
        if let Some(mark) = &self.hint
            && reader.skip_marked(mark).map_err(io_error)?
        {
            (seq, line_no, prefix_bytes) = (mark.transitions, mark.lines, mark.bytes);
            if !emit(Cut::Resumed { bytes: mark.bytes, transitions: skip, by_mark: true }) {
                return Ok(());
            }
        }
        // A forwarded chunk starts where the store is expected to be: the first transition
        // after the skipped prefix.
        let mut chunk = Chunk::with_meta(&self.meta, run_id, max, self.forward.then_some(skip))?;
        let mut cut_so_far = 0usize;
        // The link the store holds before the next chunk, once the skipped prefix is proved
        // to end at `skip_head` (a wrong guess only costs the store computing the links).
        let mut tip = (skip, self.skip_head);
        let mut buf = Vec::with_capacity(4096);
        // Whether what was read so far ends at a line's end (a mark ends at one), and whether
        // it held a metadata line (a mark covers transition lines only: the store's count and
        // head, which a mark is matched against, say nothing about metadata).
        let (mut at_line_end, mut saw_meta) = (true, false);
        loop {
            // Read at most one chunk's worth plus one byte: a longer line is refused, never
            // buffered whole, so memory stays bounded whatever the file holds.
            buf.clear();
            let n = (&mut reader.inner)
                .take(max as u64 + 1)
                .read_until(b'\n', &mut buf)
                .map_err(io_error)?;
            if n == 0 {
                break;
            }
            if let Some(raw) = &mut reader.raw {
                raw.update(&buf);
            }
            reader.bytes += n as u64;
            at_line_end = buf.last() == Some(&b'\n');
            line_no += 1;
            let at_line = |e: Error| at_line(e, line_no);
            if buf.last() != Some(&b'\n') && n > max {
                return Err(at_line(Error::invalid(
                    "line",
                    format!("is longer than {max} bytes; a line must fit in one chunk"),
                )));
            }
            let text = std::str::from_utf8(&buf)
                .map_err(|e| at_line(Error::invalid("line", format!("is not UTF-8: {e}"))))?;
            // Past the skipped prefix, a line a server will parse anyway is only looked at.
            let found = if self.forward && seq >= skip {
                forward::look(text.as_bytes(), run_id.as_str(), seq)
            } else {
                Look::Parse
            };
            let looked = match found {
                Look::Blank => continue,
                Look::Transition(members) => chunk
                    .forwarded_len(text, members, seq)
                    .filter(|wire| *wire <= max)
                    .map(|wire| (Add::Looked(members), wire)),
                // A line too long as written goes the parsed way: its canonical form decides.
                Look::Parse => None,
            };
            let (add, wire) = match looked {
                Some(looked) => looked,
                None => match parse_line(text, run_id, seq).map_err(at_line)? {
                    Some(line) => {
                        let wire = line.wire_len();
                        (Add::Parsed(line), wire)
                    }
                    None => continue,
                },
            };
            if let (Add::Parsed(NdjsonLine::Transition(t)), true) = (&add, seq < skip) {
                prefix = chain_link(&prefix, &t.body.content_hash());
                prefix_bytes += n as u64;
                seq += 1;
                if seq == skip {
                    if prefix != self.skip_head {
                        emit(Cut::Diverged);
                        return Ok(());
                    }
                    let resumed =
                        Cut::Resumed { bytes: prefix_bytes, transitions: skip, by_mark: false };
                    if !emit(resumed) {
                        return Ok(());
                    }
                }
                continue;
            }
            let is_transition = add.is_transition();
            saw_meta |= !is_transition;
            if wire > max {
                return Err(at_line(Error::invalid(
                    "line",
                    format!("is {wire} bytes on the wire; a line must fit in one {max}-byte chunk"),
                )));
            }
            if chunk.wire + wire > chunk_limit(max, cut_so_far) && chunk.count > 0 {
                cut_so_far += 1;
                // The next chunk's first transition: after the skipped prefix (metadata lines
                // read within it go with the chunk after it).
                let next = Chunk::empty(self.forward.then_some((run_id, seq.max(skip))));
                if !emit(std::mem::replace(&mut chunk, next).cut(&mut tip)) {
                    return Ok(());
                }
            }
            chunk.add(add, text, run_id, seq, line_no).map_err(at_line)?;
            chunk.wire += wire;
            chunk.file_bytes += n as u64;
            chunk.count += 1;
            if is_transition {
                seq += 1;
            }
        }
        if seq < skip {
            // The store holds more than the file: confirm by sending it all.
            emit(Cut::Diverged);
            return Ok(());
        }
        if chunk.count > 0 && !emit(chunk.cut(&mut tip)) {
            return Ok(());
        }
        // A mark must end at a line's end: a file still being written may yet extend its
        // last line.
        if at_line_end
            && !saw_meta
            && let Some(raw) = reader.raw
        {
            emit(Cut::End(Mark {
                bytes: reader.bytes,
                lines: line_no,
                transitions: seq,
                raw_blake3: raw.finalize(),
                head_hash: Digest::ZERO,
            }));
        }
        Ok(())
    }
}

impl Pass<'_> {
    /// One pass over the file: resumes after the first `skip` transitions when they hash to
    /// `skip_head`, and sends the rest chunk by chunk.
    ///
    /// Reading and appending overlap: a blocking thread reads and hashes the next chunk while
    /// the store works, handing chunks over a channel of one, and up to
    /// [`appends_in_flight`](PushOptions::appends_in_flight) appends are sent before the
    /// oldest is answered; answers are taken in order. At most that many chunks plus two are
    /// alive at once (in flight, waiting, being read), whatever the file's size.
    async fn run(&self, report: &mut PushReport, skip: u64, skip_head: Digest) -> Result<Outcome> {
        let is_regular_file =
            tokio::fs::metadata(&self.source.transitions).await.is_ok_and(|m| m.is_file());
        // Only a regular file can be re-read from its start when its mark is stale.
        let hint = match &self.opts.resume_cache {
            Some(cache) if is_regular_file => cache
                .load(&self.source.transitions, &self.source.run_id)
                .await
                .filter(|m| skip > 0 && m.transitions == skip && m.head_hash == skip_head),
            _ => None,
        };
        let cutter = Cutter {
            path: self.source.transitions.clone(),
            run_id: self.source.run_id.clone(),
            meta: self.meta.clone(),
            max: self.opts.max_chunk_bytes.clamp(1024, MAX_CHUNK_BYTES),
            skip,
            skip_head,
            hint: hint.clone(),
            mark: self.opts.resume_cache.is_some(),
            forward: self.store.prefers_ndjson(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Cut>>(1);
        let reading = tokio::task::spawn_blocking(move || {
            if let Err(e) = cutter.cut(|cut| tx.blocking_send(Ok(cut)).is_ok()) {
                // The appending side may be gone already; then nobody needs the error.
                let _ = tx.blocking_send(Err(e));
            }
        });
        // Returning early drops `rx`: the reading thread's next hand-over fails and it stops.
        let mut end = None;
        let depth = self.opts.appends_in_flight.max(1);
        let mut sent = FuturesOrdered::new();
        let mut read_all = false;
        loop {
            tokio::select! {
                // Answers first, in the order the chunks were sent.
                biased;
                Some(answer) = sent.next(), if !sent.is_empty() => {
                    self.settle(report, answer).await?;
                }
                cut = rx.recv(), if !read_all && sent.len() < depth => match cut {
                    None => read_all = true,
                    Some(Err(e)) => {
                        // What was read before the bad line is stored before it is reported,
                        // as when the chunks went one at a time.
                        while let Some(answer) = sent.next().await {
                            self.settle(report, answer).await?;
                        }
                        return Err(e);
                    }
                    Some(Ok(cut)) => match cut {
                        Cut::Resumed { bytes, transitions, by_mark } => {
                            report.resumed_by_mark = by_mark;
                            self.progress.resumed(bytes, transitions);
                        }
                        Cut::Chunk { payload, file_bytes } => {
                            let behind = !sent.is_empty();
                            sent.push_back(self.send(payload, file_bytes, behind));
                        }
                        Cut::Diverged => return Ok(Outcome::Diverged),
                        Cut::End(mark) => end = Some(mark),
                    },
                },
                else => break,
            }
        }
        reading.await.map_err(|e| Error::backend("push", e))?;
        if report.chunks == 0 {
            report.next_seq = skip;
            report.head_hash = skip_head;
        }
        // The store now holds exactly the file's transitions (when its count is the file's):
        // its head is the file's chain head.
        if let (Some(cache), Some(mut mark)) = (&self.opts.resume_cache, end)
            && mark.transitions == report.next_seq
        {
            mark.head_hash = report.head_hash;
            // A re-push that changed nothing leaves the mark it was proved by as it is.
            if hint.as_ref() != Some(&mark) {
                cache.save(&self.source.transitions, &self.source.run_id, &mark).await;
            }
        }
        Ok(Outcome::Done)
    }

    /// Appends one chunk; answers with the chunk, for a re-send. The oldest chunk in flight
    /// retries what is retryable; one sent `behind` another gets one attempt: its failure is
    /// settled once the one before it is stored (see [`settle`](Self::settle)), so a store
    /// that says "not now" to the second of a pusher's requests costs no back-off.
    async fn send(&self, payload: Payload, file_bytes: u64, behind: bool) -> Sent {
        let append = || async {
            match &payload {
                Payload::Batch(batch) => self.store.append(self.scope, batch).await,
                Payload::Ndjson(body, origins) => {
                    // A line the store refuses is named by its line in the file.
                    self.store.append_ndjson(self.scope, body.clone()).await.map_err(|e| match e {
                        Error::InvalidInput { .. } => origins.explain(body, e),
                        other => other,
                    })
                }
            }
        };
        let mut retries = 0;
        let result = if behind {
            append().await
        } else {
            with_retries(self.opts.max_retries, self.progress, &mut retries, append).await
        };
        Sent { payload, file_bytes, behind, retries, result }
    }

    /// Takes the answer of the oldest chunk in flight (every earlier one is stored). A chunk
    /// sent behind another that came back with a gap (it reached the store first: nothing
    /// was written) or a retryable refusal (a cap of requests in flight) is sent again now,
    /// after it, retrying as the oldest chunk does.
    async fn settle(&self, report: &mut PushReport, answer: Sent) -> Result<()> {
        let Sent { payload, file_bytes, behind, retries, result } = answer;
        report.retries += retries;
        let result = match result {
            Err(e) if behind && (matches!(e, Error::Gap { .. }) || e.is_retryable()) => {
                tracing::debug!(run = %self.source.run_id, error = %e, "a chunk sent ahead is sent again after the one before it");
                let again = self.send(payload, file_bytes, false).await;
                report.retries += again.retries + 1;
                again.result
            }
            other => other,
        };
        let appended = result?;
        for run in &appended.runs {
            report.appended += run.appended;
            report.skipped += run.skipped;
            report.next_seq = run.next_seq;
            report.head_hash = run.head_hash;
            if run.receipt.is_some() {
                report.receipt.clone_from(&run.receipt);
            }
        }
        report.chunks += 1;
        self.progress.chunk_done(file_bytes, appended.appended(), appended.skipped());
        Ok(())
    }
}

/// The size the chunk cut after `cut_so_far` others aims at: a sixteenth of `max`, then a
/// quarter, then `max`. The store starts on the first chunk while the rest is read (the
/// pipeline fills after ~64 KiB instead of 1 MiB), which is most of a small run's time; a
/// large run still goes in `max`-sized chunks. A line longer than the aim still goes whole,
/// in a chunk of its own (lines are bounded by `max`).
fn chunk_limit(max: usize, cut_so_far: usize) -> usize {
    match cut_so_far {
        0 => max / 16,
        1 => max / 4,
        _ => max,
    }
}

/// `e`, its message prefixed with the file's line.
pub(crate) fn at_line(e: Error, line: u64) -> Error {
    match e {
        Error::InvalidInput { field, message } => {
            Error::InvalidInput { field, message: format!("line {line}: {message}") }
        }
        other => other,
    }
}

/// Parses one line of a run file: fills in `run_id` (refusing another run's) and `seq`
/// (refusing one out of order), so files may carry them or not. Read as strictly as the
/// server reads a line (duplicate keys refused), so pushing straight into a database accepts
/// exactly what pushing over HTTP accepts.
pub(crate) fn parse_line(text: &str, run_id: &RunId, next_seq: u64) -> Result<Option<NdjsonLine>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    // Most lines read without a JSON tree; any line that does not, and every error, the
    // general way below.
    if let Some(line) = kahn_core::ndjson::read_transition(text)
        && line.run_id.is_none_or(|id| id == run_id.as_str())
        && line.seq.is_none_or(|seq| seq == next_seq)
    {
        let t = Transition { run_id: run_id.clone(), seq: Seq::new(next_seq)?, body: line.body };
        return Ok(Some(NdjsonLine::Transition(t)));
    }
    let mut fields = parse_json_object(text)?;
    match fields.get("run_id") {
        None => {}
        Some(Value::String(id)) if id == run_id.as_str() => {}
        Some(other) => {
            return Err(Error::invalid(
                "run_id",
                format!("{other} is not the run being pushed ({run_id}); one file holds one run"),
            ));
        }
    }
    if fields.contains_key("kind") {
        fields.insert("run_id".into(), Value::String(run_id.to_string()));
        return NdjsonLine::from_object(fields).map(Some);
    }
    fields.remove("run_id");
    match fields.remove("seq") {
        None => {}
        Some(v) if v.as_u64() == Some(next_seq) => {}
        Some(v) => {
            return Err(Error::invalid(
                "seq",
                format!(
                    "is {v} but this line is transition {next_seq} of the file; seqs run 0, 1, 2, … in order"
                ),
            ));
        }
    }
    let t = Transition {
        run_id: run_id.clone(),
        seq: Seq::new(next_seq)?,
        body: TransitionBody::new(fields)?,
    };
    Ok(Some(NdjsonLine::Transition(t)))
}

/// The exact bytes of a run metadata line on the wire, with its newline: as kahn-core's
/// encoder (the one the HTTP client sends with) writes it.
fn meta_wire_bytes(meta: &RunMeta, run_id: &RunId) -> usize {
    let mut line = String::new();
    kahn_core::ndjson::write_run(&mut line, run_id, meta);
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// However the bytes are cut into updates (lines, whole buffers, both mixed), the
        /// block-fed hash is BLAKE3 of all of them, and asking for it midway changes nothing.
        #[test]
        fn a_raw_hash_is_blake3_of_the_bytes_however_they_are_fed(
            pieces in proptest::collection::vec(0usize..(3 * RawHash::BLOCK), 0..12),
            midway in 0usize..12,
        ) {
            let mut all = Vec::new();
            let mut raw = RawHash::new();
            for (i, len) in pieces.iter().enumerate() {
                let piece: Vec<u8> = (0..*len).map(|j| (i * 31 + j * 7) as u8).collect();
                raw.update(&piece);
                all.extend_from_slice(&piece);
                if i == midway {
                    let want = Digest::from_bytes(*blake3::hash(&all).as_bytes());
                    proptest::prop_assert_eq!(raw.finalize(), want);
                }
            }
            let want = Digest::from_bytes(*blake3::hash(&all).as_bytes());
            proptest::prop_assert_eq!(raw.finalize(), want);
        }
    }

    /// Retry `n` waits between `b/2` and `b`, `b` = 250 ms · 2ⁿ capped at 30 s: backon's
    /// jitter (`d` to `2d`) on the halved delays gives exactly the "equal jitter" promised.
    #[test]
    fn backoff_grows_with_equal_jitter_and_caps() {
        use backon::BackoffBuilder as _;
        for _ in 0..100 {
            let waits: Vec<Duration> = backoff(20).build().collect();
            assert_eq!(waits.len(), 20, "one wait a retry, and no more");
            for (n, wait) in waits.into_iter().enumerate() {
                let b = Duration::from_millis(250)
                    .saturating_mul(1 << n.min(16))
                    .min(Duration::from_secs(30));
                assert!(wait >= b / 2 && wait <= b, "retry {n}: {wait:?}");
            }
        }
        assert_eq!(backoff(0).build().next(), None, "no retries: no wait");
    }

    #[test]
    fn retry_after_lengthens_the_wait_up_to_its_cap() {
        let short = Duration::from_millis(200);
        let asked =
            |secs| Error::unavailable("t", "busy").with_retry_after(Duration::from_secs(secs));
        assert_eq!(honour_retry_after(&asked(7), short), Duration::from_secs(7));
        assert_eq!(honour_retry_after(&asked(86_400), short), MAX_RETRY_AFTER, "capped");
        assert_eq!(honour_retry_after(&asked(0), short), short, "never shorter than the backoff");
        assert_eq!(honour_retry_after(&Error::unavailable("t", "busy"), short), short);
    }

    /// Hears the retries: their attempt numbers and waits.
    #[derive(Default)]
    struct Heard(std::sync::Mutex<Vec<(u32, Duration)>>);

    impl Progress for Heard {
        fn retrying(&self, attempt: u32, wait: Duration, _error: &Error) {
            self.0.lock().unwrap().push((attempt, wait));
        }
    }

    /// `max_retries` retries after the first call, counted from 1, each told and added to the
    /// count before its wait; the last error comes back. A call that fails for good, or
    /// succeeds, is not called again.
    #[tokio::test]
    async fn with_retries_counts_tells_and_stops() {
        let (heard, mut retries, calls) =
            (Heard::default(), 5, std::sync::atomic::AtomicU32::new(0));
        let result: Result<()> = with_retries(2, &heard, &mut retries, || async {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(Error::unavailable("t", format!("call {n}")))
        })
        .await;
        assert!(
            matches!(&result, Err(Error::Unavailable { message, .. }) if message == "call 2"),
            "{result:?}"
        );
        assert_eq!(calls.into_inner(), 3, "the first call and two retries");
        assert_eq!(retries, 7, "added to what was counted");
        let heard = heard.0.into_inner().unwrap();
        assert_eq!(heard.iter().map(|(a, _)| *a).collect::<Vec<_>>(), [1, 2]);
        assert!(
            heard[0].1 >= Duration::from_millis(125) && heard[0].1 <= Duration::from_millis(250)
        );
        assert!(
            heard[1].1 >= Duration::from_millis(250) && heard[1].1 <= Duration::from_millis(500)
        );

        let (heard, mut retries, calls) =
            (Heard::default(), 0, std::sync::atomic::AtomicU32::new(0));
        let result: Result<u32> = with_retries(8, &heard, &mut retries, || async {
            match calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
                0 => Err(Error::unavailable("t", "restarting")),
                n => Ok(n),
            }
        })
        .await;
        assert_eq!(result.unwrap(), 1);
        assert_eq!((retries, heard.0.into_inner().unwrap().len()), (1, 1));

        let (mut retries, calls) = (0, std::sync::atomic::AtomicU32::new(0));
        let result: Result<()> = with_retries(8, &Quiet, &mut retries, || async {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err(Error::invalid("field", "bad"))
        })
        .await;
        assert!(matches!(result, Err(Error::InvalidInput { .. })), "{result:?}");
        assert_eq!((calls.into_inner(), retries), (1, 0), "not retryable: one call");
    }

    /// Reads the file at `path` as run `run_id` from its start, in chunks of at most `max`
    /// bytes (forwarded when `forward`): each chunk as it would be sent.
    fn cut_all(path: PathBuf, run_id: RunId, max: usize, forward: bool) -> Result<Vec<String>> {
        let cutter = Cutter {
            path,
            run_id,
            meta: RunMeta::new(),
            max,
            skip: 0,
            skip_head: Digest::ZERO,
            hint: None,
            mark: false,
            forward,
        };
        let mut sent = Vec::new();
        cutter.cut(|cut| {
            match cut {
                Cut::Chunk { payload: Payload::Batch(batch), .. } => {
                    sent.push(kahn_core::ndjson::encode_batch(&batch));
                }
                Cut::Chunk { payload: Payload::Ndjson(body, _), .. } => {
                    sent.push(String::from_utf8(body.to_vec()).unwrap());
                }
                _ => {}
            }
            true
        })?;
        Ok(sent)
    }

    /// Chunks are measured exactly as they are sent (encoded by the HTTP client's encoder, or
    /// forwarded): each fits the limit as sent, and none could have taken the next line.
    #[test]
    fn chunks_are_cut_by_their_exact_size_on_the_wire() {
        chunks_are_cut_to_size(false);
        chunks_are_cut_to_size(true);
    }

    fn chunks_are_cut_to_size(forward: bool) {
        let run = RunId::new("r".repeat(200)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.ndjson");
        let mut text = String::from(r#"{"kind":"run","source":"choco","labels":{"é":"\"q\""}}"#);
        for seq in 0..300 {
            // JSON escapes the canonical form rewrites, so file bytes and wire bytes differ.
            let pad = r"é\u0001\\".repeat(seq % 17);
            text.push('\n');
            text.push_str(&format!(
                r#"{{"ts":"2026-01-01T00:00:00+02:00","to":"x","attrs":{{"k":[1.50,"{pad}"]}}}}"#
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let max = 2_000;
        let sent = cut_all(path, run, max, forward).unwrap();
        assert!(sent.len() > 10, "{} chunks", sent.len());
        for (k, pair) in sent.windows(2).enumerate() {
            let next_line = pair[1].split_inclusive('\n').next().unwrap();
            let aim = chunk_limit(max, k);
            assert!(aim <= max && (k < 2 || aim == max), "chunk {k} aims at {aim}");
            // Over its aim only as one line longer than it (never over `max`).
            let one_line = pair[0].lines().count() == 1;
            assert!(pair[0].len() <= max, "chunk {k} of {} bytes is over {max}", pair[0].len());
            assert!(
                pair[0].len() <= aim || one_line,
                "chunk {k} ({}) is over {aim}",
                pair[0].len()
            );
            assert!(pair[0].len() + next_line.len() > aim, "the next line would have fit");
        }
        assert!(sent.concat().lines().count() == 301, "every line sent once");
    }

    /// A line the look vouches for but too long as written (whitespace, and `run_id`/`seq`
    /// to add) goes the parsed way: its canonical form decides, as on a direct push.
    #[test]
    fn a_line_too_long_as_written_is_forwarded_canonical_when_that_fits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.ndjson");
        let line = format!(r#"{{"ts":"2026-01-01T00:00:00Z",{}"to":"x"}}"#, " ".repeat(1_960));
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let max = 2_000;
        assert!(line.len() < max && line.len() + 22 > max, "{}", line.len());
        for forward in [false, true] {
            let sent = cut_all(path.clone(), RunId::new("r").unwrap(), max, forward)
                .unwrap_or_else(|e| panic!("forward {forward}: refused: {e}"));
            assert_eq!(
                sent,
                ["{\"run_id\":\"r\",\"seq\":0,\"to\":\"x\",\"ts\":\"2026-01-01T00:00:00Z\"}\n"],
                "forward {forward}"
            );
        }
    }

    #[test]
    fn a_metadata_line_over_the_chunk_size_is_refused() {
        let run = RunId::new("r".repeat(200)).unwrap();
        let meta = RunMeta::new()
            .with_source("choco")
            .unwrap()
            .with_graph(serde_json::json!({"nodes": vec!["a"; 1000]}))
            .unwrap()
            .with_label("ci", "github")
            .unwrap();
        let wire = meta_wire_bytes(&meta, &run);
        assert!(wire > 1000 * 4, "the graph is counted: {wire}");
        for forward in [None, Some(0)] {
            let over = Chunk::with_meta(&meta, &run, wire - 1, forward);
            assert!(over.is_err(), "one byte over is refused");
            let chunk = Chunk::with_meta(&meta, &run, wire, forward).unwrap();
            assert_eq!(chunk.wire, wire, "the metadata line counts toward the chunk");
        }
    }

    /// Pushes `text` as a file into `store`, with a resume cache in `cache`.
    async fn push_text(
        store: &kahn_core::MemoryBackend,
        scope: &WriteScope,
        dir: &Path,
        text: &str,
    ) -> PushReport {
        let file = dir.join("run.ndjson");
        std::fs::write(&file, text).unwrap();
        let source = RunSource::from_path(&file, None).unwrap();
        let opts = PushOptions {
            resume_cache: Some(ResumeCache::new(dir.join("cache"))),
            ..PushOptions::default()
        };
        push(store, scope, &source, &opts, &Quiet).await.unwrap()
    }

    #[tokio::test]
    async fn a_mark_is_recorded_only_for_a_file_ending_at_a_line_end() {
        use kahn_core::{NewTenant, StorageBackendExt};
        let store = kahn_core::MemoryBackend::new();
        let tenant = store.provision_tenant(&NewTenant::new("t").unwrap()).await.unwrap();
        let key = store.issue_api_key(tenant.id).await.unwrap();
        let scope = store.resolve_api_key(&key.secret).await.unwrap().unwrap();
        let line = |i: u32| format!(r#"{{"ts":"2026-01-01T00:00:00Z","to":"s{i}"}}"#);
        let dir = tempfile::tempdir().unwrap();
        // No newline after the last line: it may still be being written, so no mark.
        let open_ended = format!("{}\n{}", line(0), line(1));
        assert_eq!(push_text(&store, &scope, dir.path(), &open_ended).await.appended, 2);
        let again = push_text(&store, &scope, dir.path(), &open_ended).await;
        assert_eq!((again.already_stored, again.resumed_by_mark), (2, false));
        // Once the line ends, the push records a mark, and the next push uses it.
        let closed = format!("{open_ended}\n{}\n", line(2));
        assert_eq!(push_text(&store, &scope, dir.path(), &closed).await.appended, 1);
        let again = push_text(&store, &scope, dir.path(), &closed).await;
        assert_eq!((again.already_stored, again.resumed_by_mark, again.appended), (3, true, 0));
        // A file holding a metadata line gets no mark: the store's count and head say nothing
        // about metadata, so a mark could skip a label a store never received. (Found by
        // review.) Pushed to a store that holds the transitions but not the label, the label
        // arrives.
        let labelled = tempfile::tempdir().unwrap();
        let with_meta = format!("{closed}{{\"kind\":\"run\",\"labels\":{{\"r\":\"pass\"}}}}\n");
        push_text(&store, &scope, labelled.path(), &with_meta).await;
        let run = RunId::new("run").unwrap();
        let cache = ResumeCache::new(labelled.path().join("cache"));
        assert_eq!(cache.load(&labelled.path().join("run.ndjson"), &run).await, None);
        let other = kahn_core::MemoryBackend::new();
        let tenant = other.provision_tenant(&NewTenant::new("t").unwrap()).await.unwrap();
        let key = other.issue_api_key(tenant.id).await.unwrap();
        let other_scope = other.resolve_api_key(&key.secret).await.unwrap().unwrap();
        push_text(&other, &other_scope, tempfile::tempdir().unwrap().path(), &closed).await;
        let again = push_text(&other, &other_scope, labelled.path(), &with_meta).await;
        assert_eq!((again.already_stored, again.appended), (3, 0));
        let stored = other.get_run(&other_scope.read(), &run).await.unwrap();
        assert_eq!(stored.info.labels.get("r").map(String::as_str), Some("pass"));
    }

    #[test]
    fn lines_may_omit_run_id_and_seq_but_not_contradict_them() {
        let run = RunId::new("r").unwrap();
        let ok = parse_line(r#"{"ts":"2026-01-01T00:00:00Z","to":"x"}"#, &run, 4).unwrap();
        assert!(matches!(ok, Some(NdjsonLine::Transition(t)) if t.seq.get() == 4));
        let e =
            parse_line(r#"{"seq":3,"ts":"2026-01-01T00:00:00Z","to":"x"}"#, &run, 4).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { field, .. } if field == "seq"));
        let e = parse_line(r#"{"run_id":"other","ts":"2026-01-01T00:00:00Z","to":"x"}"#, &run, 0)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidInput { field, .. } if field == "run_id"));
        assert!(parse_line("   ", &run, 0).unwrap().is_none());
        // As strict as the server: a repeated key is refused, not silently last-wins.
        let e =
            parse_line(r#"{"ts":"2026-01-01T00:00:00Z","to":"x","to":"y"}"#, &run, 0).unwrap_err();
        assert!(matches!(e, Error::InvalidInput { field, .. } if field == "json"));
        // A metadata line takes the run from the push, without a re-serialisation.
        let meta = parse_line(r#"{"kind":"run","source":"choco"}"#, &run, 0).unwrap();
        assert!(
            matches!(meta, Some(NdjsonLine::Run { run_id, meta }) if run_id == run && meta.source() == Some("choco"))
        );
    }
}
