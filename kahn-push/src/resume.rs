//! What the pusher remembers about files it pushed, so a re-push need not re-parse them.
//!
//! To resume, the pusher must prove that the first transitions of the file are the ones the
//! store holds: it recomputes their hash chain and compares the head with the store's. That
//! costs a full parse, canonicalisation and hash of every stored line — as much as pushing them.
//! A [`ResumeCache`] records, per file, a [`Mark`]: "the first `bytes` bytes of this file,
//! whose BLAKE3 hash is `raw_blake3`, hold `transitions` transitions whose chain head is
//! `head_hash`". When the store reports exactly that count and head, and the file's first
//! `bytes` bytes still hash to `raw_blake3`, those bytes are skipped unparsed: hashing raw
//! bytes is two orders of magnitude cheaper than parsing them. (BLAKE3, not the SHA-256 of
//! the chain: it is a local check of the file, never stored or compared by anyone else, and
//! hashes ~3.5× faster here, ~5 GB/s, which is what a re-push of a large file costs.)
//!
//! A mark is a fact about the file's content pushed as one run (the chain covers transition
//! bodies, not where they are stored), so one mark serves every store the file is pushed to.
//! A missing, unreadable or stale mark (the file changed) only means the pusher proves the
//! prefix the slow way. Marks cover files of transition lines only: a file holding metadata
//! lines gets none, since the store's count and head say nothing about its metadata.
//!
//! The cache is trusted like the file itself: a mark forged to name another file's prefix
//! hash together with the store's count and head would make the pusher skip bytes the store
//! does not hold and append the rest after them. Keep it in a directory only its user writes
//! (the default is under the user's own cache directory).

use std::path::{Path, PathBuf};

use kahn_core::receipt::Envelope;
use kahn_core::{Digest, RunId, TenantId};
use serde::{Deserialize, Serialize};

/// A directory of [`Mark`]s, one JSON file per pushed file and run id (named by the SHA-256
/// of the file's canonical path and the run id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeCache {
    dir: PathBuf,
}

/// What a file's first `bytes` bytes hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// Bytes of the file covered, ending at a line's end.
    pub bytes: u64,
    /// Lines in them (for the line numbers of later errors).
    pub lines: u64,
    /// Transitions in them.
    pub transitions: u64,
    /// BLAKE3 hash of the raw bytes. (A mark written by an older `kahn`, which kept their
    /// SHA-256, does not read: a miss, so that push proves the prefix the slow way once.)
    pub raw_blake3: Digest,
    /// The chain head of the transitions.
    pub head_hash: Digest,
}

impl ResumeCache {
    /// A cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The user's cache: `$KAHN_CACHE_DIR`, else `$XDG_CACHE_HOME/kahn`, else
    /// `$HOME/.cache/kahn`; `None` when none of them is set.
    pub fn user_default() -> Option<Self> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        var("KAHN_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("kahn")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("kahn")))
            .map(Self::new)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of `file` pushed as `run`. Blocking: it canonicalises `file`.
    fn entry(&self, file: &Path, run: &RunId) -> PathBuf {
        let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_owned());
        let mut key = path.as_os_str().as_encoded_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(run.as_str().as_bytes());
        self.dir.join("push").join(format!("{}.json", Digest::sha256(&key)))
    }

    /// The mark recorded for `file` pushed as `run`, if any. Any failure to read it is a miss.
    ///
    /// The file system is touched on Tokio's blocking pool, never on the async runtime's
    /// threads: a cache on a slow or hung disk (a network home directory) delays this push,
    /// not every task beside it.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn load(&self, file: &Path, run: &RunId) -> Option<Mark> {
        let (cache, file, run) = (self.clone(), file.to_owned(), run.clone());
        tokio::task::spawn_blocking(move || cache.load_blocking(&file, &run)).await.ok()?
    }

    fn load_blocking(&self, file: &Path, run: &RunId) -> Option<Mark> {
        let text = std::fs::read(self.entry(file, run)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records `mark` for `file` pushed as `run`, replacing the previous one atomically. A
    /// failure is logged, never an error: the cache only ever saves work. Like
    /// [`load`](Self::load), the writing runs on Tokio's blocking pool.
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn save(&self, file: &Path, run: &RunId, mark: &Mark) {
        let (cache, file, run, mark) = (self.clone(), file.to_owned(), run.clone(), mark.clone());
        let saving = tokio::task::spawn_blocking(move || cache.save_blocking(&file, &run, &mark));
        if let Err(e) = saving.await {
            tracing::debug!(error = %e, "resume mark not saved");
        }
    }

    fn save_blocking(&self, file: &Path, run: &RunId, mark: &Mark) {
        let entry = self.entry(file, run);
        let write = || -> std::io::Result<()> {
            let dir = entry.parent().unwrap_or(&self.dir);
            std::fs::create_dir_all(dir)?;
            let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, serde_json::to_vec(mark)?)?;
            std::fs::rename(&tmp, &entry)
        };
        if let Err(e) = write() {
            tracing::debug!(cache = %entry.display(), error = %e, "resume mark not saved");
        }
    }
}

impl ResumeCache {
    /// The receipt entry of `run` of `tenant` (receipts are about a store's run, not a file).
    fn receipt_entry(&self, tenant: TenantId, run: &RunId) -> PathBuf {
        let mut key = tenant.to_string().into_bytes();
        key.push(0);
        key.extend_from_slice(run.as_str().as_bytes());
        self.dir.join("receipts").join(format!("{}.json", Digest::sha256(&key)))
    }

    /// The last receipt kept for `run` of `tenant`, if any and readable. Not verified: the
    /// pusher only hands it on (see [`Envelope::unverified_receipt`]).
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn load_receipt(&self, tenant: TenantId, run: &RunId) -> Option<Envelope> {
        let entry = self.receipt_entry(tenant, run);
        let text = tokio::task::spawn_blocking(move || std::fs::read(entry)).await.ok()?.ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps `receipt` as the last one of `run` of `tenant`, replacing the previous one
    /// atomically. A failure is logged, never an error (the push itself succeeded; the
    /// receipt is also in the push's report).
    ///
    /// # Panics
    /// When called outside a Tokio runtime.
    pub async fn save_receipt(&self, tenant: TenantId, run: &RunId, receipt: &Envelope) {
        let entry = self.receipt_entry(tenant, run);
        let Ok(bytes) = serde_json::to_vec(receipt) else { return };
        let dir = self.dir.clone();
        let saving = tokio::task::spawn_blocking(move || {
            let write = || -> std::io::Result<()> {
                std::fs::create_dir_all(entry.parent().unwrap_or(&dir))?;
                let tmp = entry.with_extension(format!("tmp{}", std::process::id()));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &entry)
            };
            if let Err(e) = write() {
                tracing::debug!(cache = %entry.display(), error = %e, "receipt not kept");
            }
        });
        let _ = saving.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark() -> Mark {
        Mark {
            bytes: 10,
            lines: 2,
            transitions: 2,
            raw_blake3: Digest::from_bytes(*blake3::hash(b"raw").as_bytes()),
            head_hash: Digest::sha256(b"head"),
        }
    }

    #[tokio::test]
    async fn marks_round_trip_per_file_and_misses_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResumeCache::new(dir.path().join("cache"));
        let (a, b) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        let (r, other) = (RunId::new("r").unwrap(), RunId::new("other").unwrap());
        assert_eq!(cache.load(&a, &r).await, None);
        cache.save(&a, &r, &mark()).await;
        assert_eq!(cache.load(&a, &r).await, Some(mark()));
        assert_eq!(cache.load(&b, &r).await, None, "marks are per file");
        assert_eq!(cache.load(&a, &other).await, None, "and per run id");
        // A corrupt entry is a miss, not an error.
        std::fs::write(cache.entry(&a, &r), "{").unwrap();
        assert_eq!(cache.load(&a, &r).await, None);
    }

    /// A load whose read hangs (the entry is a FIFO nobody writes yet, like a cache on a hung
    /// network disk) must leave a single-threaded runtime free to run other tasks. The other
    /// task here is the one that ends the hang: it polls on the runtime's timer until the
    /// load has the FIFO open, then writes the mark into it. Were the load's I/O on the
    /// runtime's only thread, that task could never run: the load would wait for it forever,
    /// and the watchdog fails the test.
    #[cfg(unix)]
    #[test]
    fn a_pending_load_does_not_block_the_runtime() {
        use std::time::Duration;
        use tokio::io::AsyncWriteExt as _;

        let dir = tempfile::tempdir().unwrap();
        let cache = ResumeCache::new(dir.path().join("cache"));
        let file = dir.path().join("a.ndjson");
        std::fs::write(&file, "x").unwrap();
        let run = RunId::new("r").unwrap();
        let entry = cache.entry(&file, &run);
        std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&entry).status().unwrap();
        assert!(made.success(), "mkfifo {}", entry.display());

        let (done, outcome) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let loaded = rt.block_on(async {
                let load = tokio::spawn(async move { cache.load(&file, &run).await });
                // Opening a FIFO's write end without blocking succeeds only once a reader
                // holds it open: the load is then pending in its read.
                let mut writer = loop {
                    match tokio::net::unix::pipe::OpenOptions::new().open_sender(&entry) {
                        Ok(writer) => break writer,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                };
                writer.write_all(&serde_json::to_vec(&mark()).unwrap()).await.unwrap();
                drop(writer);
                load.await.unwrap()
            });
            let _ = done.send(loaded);
        });
        match outcome.recv_timeout(Duration::from_secs(30)) {
            Ok(loaded) => assert_eq!(loaded, Some(mark()), "the pending load returns the mark"),
            Err(_) => panic!("the runtime stalled while a resume-cache load was pending"),
        }
    }
}
