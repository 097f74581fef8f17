//! How a command fails: an exit code a script can rely on, and a message ending with a hint.

use kahn_core::Error;

/// A failure with the exit code a script can rely on and a hint naming what to do next.
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// A failure exiting with `code`; `message` ends with a `hint:` line.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The exit code of an error, and what to do next.
pub(crate) fn exit_code(e: &Error) -> (u8, &'static str) {
    match e {
        Error::Conflict { .. } => {
            (3, "the store holds different content for this run; nothing was changed")
        }
        Error::Gap { .. } => {
            (3, "push from the expected seq (a plain re-run of `kahn push` resumes)")
        }
        Error::Integrity { .. } => {
            (3, "stored data was altered outside KAHN or is corrupt; restore it from a backup")
        }
        Error::Unauthorized(_) => {
            (4, "check the key; `kahn tenant provision NAME --rotate` issues a new one")
        }
        Error::Unavailable { .. } => (5, "the store is unavailable; retry later"),
        Error::InvalidInput { .. } => (2, "fix the input named above and re-run"),
        Error::NotFound { .. } => (1, "check the name or id"),
        Error::Unsupported { .. } => {
            (2, "this store does not offer that; operators' commands need --db with the admin DSN")
        }
        _ => (1, "see the error above"),
    }
}

/// `e` for the terminal: its message, then each cause under it once, a line each. Errors keep
/// their causes apart from their message (a server never sends driver text to clients; a
/// wrapper names only its own layer); the operator at the terminal gets them all.
pub(crate) fn explained(e: &(dyn std::error::Error + 'static)) -> String {
    let causes = kahn_core::ErrorChain::new(e).causes();
    causes.fold(e.to_string(), |text, cause| format!("{text}\n  cause: {cause}"))
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (code, hint) = exit_code(&e);
        Failure { code, message: format!("{}\nhint: {hint}", explained(&e)) }
    }
}

/// A failure as JSON, for `--json`: `{"error", "exit_code", "message", "hint"}`; `error` names
/// the kind the exit code stands for.
pub(crate) fn json_error(code: u8, message: &str) -> String {
    let (message, hint) = match message.rsplit_once("\nhint: ") {
        Some((m, h)) => (m, Some(h)),
        None => (message, None),
    };
    let error = match code {
        2 => "invalid_input",
        3 => "conflict",
        4 => "unauthorized",
        5 => "unavailable",
        74 => "io",
        _ => "failed",
    };
    serde_json::json!({ "error": error, "exit_code": code, "message": message, "hint": hint })
        .to_string()
}

/// What a command returns.
pub(crate) type CliResult<T = ()> = Result<T, Failure>;
