//! Connections on their own threads: the async runtime never blocks on SQLite.
//!
//! A [`Pool`] is N threads, each owning one connection, pulling jobs from one shared queue:
//! whichever connection is free takes the next job. The writer is a pool of one, so writes
//! serialize in the adapter (no `SQLITE_BUSY` between our own writers); readers are a pool of
//! several, which in WAL mode read while the writer appends.
//!
//! The queue is bounded: when it holds `capacity` jobs, one more call fails at once with
//! [`Error::Unavailable`] (retry after a second) instead of queueing without bound.

use std::thread;

use crossbeam_channel::{Receiver, Sender};
use kahn_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Threads waited for when this is dropped, each after the ones before it: their connections
/// are closed by the time the drop returns, so a process that exits right after dropping a
/// backend leaves its database whole in the file (the last connection to close a WAL database
/// copies the log into it and removes it), not in a file and a log beside it.
#[derive(Debug, Default)]
pub(crate) struct Threads(Vec<thread::JoinHandle<()>>);

impl From<thread::JoinHandle<()>> for Threads {
    fn from(thread: thread::JoinHandle<()>) -> Self {
        Self(vec![thread])
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let current = thread::current().id();
        for thread in self.0.drain(..) {
            // A thread never waits for itself (the last owner could be a job on it).
            if thread.thread().id() != current {
                // A thread that panicked has nothing left to close.
                let _ = thread.join();
            }
        }
    }
}

/// Fields drop in order: the queue's sender first, which ends the threads once they finish
/// the jobs queued, then the threads, waited for.
#[derive(Debug)]
pub(crate) struct Pool {
    jobs: Sender<Job>,
    /// Held for its drop: waits for the threads once `jobs` is gone.
    _threads: Threads,
    name: String,
    capacity: usize,
}

impl Pool {
    /// Starts one thread per connection, taking jobs from a queue of at most `capacity`.
    /// Threads end when the pool is dropped, and the drop waits for them (see [`Threads`]).
    pub(crate) fn start(name: &str, connections: Vec<Connection>, capacity: usize) -> Result<Self> {
        let capacity = capacity.max(1);
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(capacity);
        let mut threads = Vec::with_capacity(connections.len());
        for (i, conn) in connections.into_iter().enumerate() {
            let queue: Receiver<Job> = queue.clone();
            let thread = thread::Builder::new()
                .name(format!("kahn-sqlite-{name}-{i}"))
                .spawn(move || {
                    let mut conn = conn;
                    while let Ok(job) = queue.recv() {
                        // A panicking job must not take the connection thread with it: the
                        // caller sees its call fail (its reply channel is dropped), and the
                        // thread serves the next job. An open transaction rolls back when the
                        // panic unwinds through its guard.
                        let outcome =
                            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                job(&mut conn)
                            }));
                        if outcome.is_err() {
                            tracing::error!(
                                "a kahn-sqlite job panicked; the connection thread continues"
                            );
                        }
                    }
                })
                .map_err(|e| Error::backend("sqlite", e))?;
            threads.push(thread);
        }
        Ok(Self { jobs, _threads: Threads(threads), name: name.to_owned(), capacity })
    }

    /// Queues `f` to run on one of the pool's connections, without waiting for it: for work
    /// off a request's path. Returns whether it was queued; with the queue full (or the
    /// threads gone) it is dropped, never waited for.
    pub(crate) fn submit<F>(&self, f: F) -> bool
    where
        F: FnOnce(&mut Connection) + Send + 'static,
    {
        self.jobs.try_send(Box::new(f)).is_ok()
    }

    /// Runs `f` on one of the pool's connections and awaits its result.
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            // The receiver may have gone (the caller's future was dropped): nothing to do.
            let _ = tx.send(f(conn));
        });
        self.jobs.try_send(job).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => Error::unavailable(
                "sqlite",
                format!(
                    "the {} queue is full ({} calls waiting); the store is overloaded",
                    self.name, self.capacity
                ),
            )
            .with_retry_after(std::time::Duration::from_secs(1)),
            crossbeam_channel::TrySendError::Disconnected(_) => {
                Error::backend("sqlite", "the connection threads have stopped")
            }
        })?;
        rx.await
            .map_err(|_| Error::backend("sqlite", "a connection thread panicked during the call"))?
    }
}
