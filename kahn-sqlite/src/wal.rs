//! WAL checkpoints off the writer's thread.
//!
//! SQLite's default checkpoints the WAL back into the database file on whichever connection
//! commits past 1,000 pages, inside that commit's call: on the one writer, every ~4 MB of
//! appends paid for copying the log into the file and an `fsync` of it (~20 % of the writer's
//! time on a 10k-transition push, by `perf`). Here the writer's commit only wakes a thread of
//! its own connection that runs the same `PASSIVE` checkpoint, which WAL lets run while the
//! writer appends.
//!
//! Durability does not change: a commit is durable once its WAL frames are synced
//! (`synchronous = FULL`), whoever later copies them into the file. The log stays bounded: the
//! writer checkpoints inline, as SQLite would, once the log reaches [`INLINE_PAGES`] (the
//! checkpointer fell behind, or its thread is gone).

use std::thread;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use kahn_core::{Error, Result};
use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

/// Log size, in pages, past which a commit wakes the checkpointer (SQLite's default
/// `wal_autocheckpoint`).
pub(crate) const BACKGROUND_PAGES: i32 = 1000;

/// Log size, in pages, past which the writer checkpoints inline after its commit.
pub(crate) const INLINE_PAGES: i32 = 8 * BACKGROUND_PAGES;

/// Starts the checkpointer on `conn` (a read-write connection to the writer's database) and
/// installs the hook on `writer` that wakes it. The thread ends when `writer` is closed (the
/// hook, and with it the waking end, is dropped with the connection), closing `conn`.
///
/// # Errors
/// [`Error::Backend`] when the thread cannot be started or the hook installed.
pub(crate) fn checkpoint_in_background(
    writer: &mut Connection,
    conn: Connection,
) -> Result<thread::JoinHandle<()>> {
    // One pending wake-up is enough: a checkpoint copies every frame committed before it starts.
    let (wake, woken) = crossbeam_channel::bounded::<()>(1);
    let thread = thread::Builder::new()
        .name("kahn-sqlite-checkpoint".into())
        .spawn(move || run(&conn, &woken))
        .map_err(|e| Error::backend("sqlite", e))?;
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            on_commit(&wake, pages, || wal.checkpoint_v2(CheckpointMode::PASSIVE).map(|_| ()));
            // The commit has happened whatever this returns: an error here would make a durable
            // commit report failure, so none is returned.
            Ok(())
        }))
        .map_err(crate::error::db)?;
    Ok(thread)
}

/// What a commit leaving `pages` in the log does: wake the checkpointer past
/// [`BACKGROUND_PAGES`], checkpoint inline past [`INLINE_PAGES`] (when the background thread is
/// gone, as soon as the log passes the background threshold).
///
/// Past [`INLINE_PAGES`] the checkpointer is not woken: under appends back to back it would
/// start a new checkpoint as soon as one ends, and the writer's inline one, which needs the
/// same lock and never waits for it, could keep losing while the log grows. Left unwoken, it
/// finishes the checkpoint it is in and the next commit's inline one runs.
fn on_commit(wake: &Sender<()>, pages: i32, inline: impl FnOnce() -> rusqlite::Result<()>) {
    if pages < BACKGROUND_PAGES {
        return;
    }
    if pages >= INLINE_PAGES || matches!(wake.try_send(()), Err(TrySendError::Disconnected(()))) {
        // Busy (the checkpointer is finishing one) or failed: the next commit tries again.
        if let Err(e) = inline() {
            tracing::debug!("inline WAL checkpoint did not run: {e}");
        }
    }
}

fn run(conn: &Connection, woken: &Receiver<()>) {
    while woken.recv().is_ok() {
        // PASSIVE never waits on the writer or readers; frames a reader still needs are left
        // for the next wake-up.
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok(_) => {}
            // Another connection (another process on the same file) is checkpointing: it
            // copies these frames too, or the next wake-up does.
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {
                tracing::debug!("background WAL checkpoint: another one is running");
            }
            Err(e) => tracing::warn!("background WAL checkpoint failed: {e}"),
        }
    }
    // The writer is closed (and the readers before it, see `SqliteBackend`): what the log still
    // holds goes into the file now, so the file alone is the whole store once this returns.
    if let Err(e) = conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
        tracing::warn!("closing WAL checkpoint failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_inline(wake: &Sender<()>, pages: i32) -> bool {
        let mut ran = false;
        on_commit(wake, pages, || {
            ran = true;
            Ok(())
        });
        ran
    }

    #[test]
    fn a_small_log_wakes_nothing_and_a_large_one_is_checkpointed_inline() {
        let (wake, woken) = crossbeam_channel::bounded(1);
        assert!(!count_inline(&wake, BACKGROUND_PAGES - 1));
        assert!(woken.try_recv().is_err(), "below the threshold nothing is woken");
        assert!(!count_inline(&wake, BACKGROUND_PAGES));
        assert!(woken.try_recv().is_ok(), "past it the checkpointer is woken");
        assert!(count_inline(&wake, INLINE_PAGES), "past the inline bound the writer checkpoints");
        assert!(woken.try_recv().is_err(), "past it the checkpointer is left to finish, not woken");
    }

    #[test]
    fn without_its_thread_the_writer_checkpoints_itself() {
        let (wake, woken) = crossbeam_channel::bounded(1);
        drop(woken);
        assert!(count_inline(&wake, BACKGROUND_PAGES));
    }
}
