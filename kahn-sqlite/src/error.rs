//! rusqlite errors converted into KAHN's error type, keeping the source.

use kahn_core::Error;
use rusqlite::ErrorCode;

/// Any SQLite failure not caused by the caller's input: [`Error::Unavailable`] when another
/// process holds the lock past the busy timeout (retry), else [`Error::Backend`] keeping the
/// rusqlite error as its source, with a hint for the conditions an operator can act on.
pub(crate) fn db(e: rusqlite::Error) -> Error {
    let hint = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            return Error::unavailable("sqlite", "the database is locked by another process")
                .with_unavailable_source(e);
        }
        Some(ErrorCode::ReadOnly) => Some("the database file is read-only"),
        Some(ErrorCode::DiskFull) => Some("the disk is full"),
        Some(ErrorCode::CannotOpen) => Some("the database file cannot be opened; check the path"),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Some("the file is not a KAHN SQLite database, or is corrupt")
        }
        _ => None,
    };
    match hint {
        Some(hint) => Error::backend("sqlite", Hinted { hint, source: e }),
        None => Error::backend("sqlite", e),
    }
}

/// What an operator can do about a SQLite failure; the failure is its `source`.
#[derive(Debug, thiserror::Error)]
#[error("{hint}")]
struct Hinted {
    hint: &'static str,
    #[source]
    source: rusqlite::Error,
}

/// Whether `e` is a UNIQUE constraint violation.
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}
