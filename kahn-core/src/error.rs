//! The one error type every backend converts its own failures into.

use std::fmt;

use crate::hash::Digest;
use crate::id::RunId;

/// A boxed error, as kept in [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with KAHN's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where stored content and incoming content disagreed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConflictAt {
    /// The transition at this seq differs from the one stored.
    Seq(u64),
    /// A set-once run metadata field (`source`, `graph`, or `labels.<key>`) differs.
    Metadata(String),
}

impl fmt::Display for ConflictAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConflictAt::Seq(seq) => write!(f, "seq {seq}"),
            ConflictAt::Metadata(field) => write!(f, "metadata field {field}"),
        }
    }
}

/// Everything a KAHN operation can fail with. Each variant is something a caller can act on;
/// whatever a backend cannot classify is [`Error::Backend`] with its source kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch starts past the run's end: nothing was written. Resend from `expected`.
    #[error("gap in run {run_id}: batch starts at seq {got} but the run's next seq is {expected}")]
    Gap {
        /// The run.
        run_id: RunId,
        /// The run's stored `next_seq`: where the batch must start (at the latest).
        expected: u64,
        /// Where the batch started.
        got: u64,
    },

    /// Incoming content differs from what is stored: nothing was written, nothing rewritten.
    #[error(
        "conflict in run {run_id} at {at}: stored content hash {stored_hash}, incoming {incoming_hash}"
    )]
    Conflict {
        /// The run.
        run_id: RunId,
        /// The first place the contents differ.
        at: ConflictAt,
        /// Hash of what is stored there.
        stored_hash: Digest,
        /// Hash of what was sent.
        incoming_hash: Digest,
    },

    /// The named thing does not exist (for this scope).
    #[error("{what} not found: {id}")]
    NotFound {
        /// What kind of thing: `run`, `tenant`, `api_key`.
        what: &'static str,
        /// Which one.
        id: String,
    },

    /// Input was refused before anything was written; `field` names what is wrong.
    #[error("invalid {field}: {message}")]
    InvalidInput {
        /// The offending field (or a path to it, like `runs[1].transitions[3].ts`).
        field: String,
        /// What is wrong with it.
        message: String,
    },

    /// The credential is unknown, revoked, or not allowed to do this.
    #[error("unauthorized: {0}")]
    Unauthorized(String),

    /// The backend is temporarily unable to serve (overloaded, rate limited, restarting,
    /// unreachable): nothing was written, and the same call may succeed later.
    #[error("{backend} backend unavailable: {message}")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What happened, in words fit for a caller (no driver internals: those are in
        /// `source`).
        message: String,
        /// How long the backend asked the caller to wait, when it said.
        retry_after: Option<std::time::Duration>,
        /// The underlying failure (a driver's connection or pool error), kept for logs and
        /// `downcast_ref`, never flattened into `message`.
        #[source]
        source: Option<BoxError>,
    },

    /// Stored data fails its own integrity checks — a hash chain that does not recompute, rows
    /// missing below `next_seq`: the store was altered outside KAHN or is corrupt. Never the
    /// caller's fault; never repaired by KAHN.
    #[error("integrity check failed{}: {message}", integrity_at(run_id.as_ref(), *seq))]
    Integrity {
        /// The run, when known.
        run_id: Option<RunId>,
        /// The first seq where the check fails, when known.
        seq: Option<u64>,
        /// What does not match.
        message: String,
    },

    /// This backend does not offer the operation (e.g. provisioning through the HTTP client).
    #[error("{backend} backend does not support {operation}")]
    Unsupported {
        /// Which backend.
        backend: &'static str,
        /// The operation.
        operation: &'static str,
    },

    /// The backend failed in a way KAHN cannot classify; the source is kept. Its message
    /// names only this layer: the cause is the `source`, which [`ErrorChain`] prints.
    #[error("{backend} backend error")]
    Backend {
        /// Which backend (`sqlite`, `postgres`, `http`, `memory`).
        backend: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
}

fn integrity_at(run_id: Option<&RunId>, seq: Option<u64>) -> String {
    match (run_id, seq) {
        (Some(r), Some(s)) => format!(" in run {r} at seq {s}"),
        (Some(r), None) => format!(" in run {r}"),
        (None, Some(s)) => format!(" at seq {s}"),
        (None, None) => String::new(),
    }
}

impl Error {
    /// An [`Error::InvalidInput`] for `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), message: message.into() }
    }

    /// An [`Error::NotFound`].
    pub fn not_found(what: &'static str, id: impl fmt::Display) -> Self {
        Error::NotFound { what, id: id.to_string() }
    }

    /// An [`Error::Unavailable`]: `message` says what happened in words fit for a caller.
    pub fn unavailable(backend: &'static str, message: impl Into<String>) -> Self {
        Error::Unavailable { backend, message: message.into(), retry_after: None, source: None }
    }

    /// This error with `wait` as its retry hint, when it is [`Error::Unavailable`].
    #[must_use]
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        if let Error::Unavailable { retry_after, .. } = &mut self {
            *retry_after = Some(wait);
        }
        self
    }

    /// This error with `cause` kept as its source, when it is [`Error::Unavailable`].
    #[must_use]
    pub fn with_unavailable_source(mut self, cause: impl Into<BoxError>) -> Self {
        if let Error::Unavailable { source, .. } = &mut self {
            *source = Some(cause.into());
        }
        self
    }

    /// The [`Error::Integrity`] for stored data that does not read back as KAHN data — a row
    /// that does not decode, a stored value that breaks its own rules, a chain link that is
    /// missing or does not match: `what` names the stored thing (`"stored graph"`), `detail`
    /// what is wrong with it. Every backend reports a corrupt store with this, so a caller sees
    /// one variant whatever the adapter: never [`Error::InvalidInput`] (it is not the caller's
    /// input) nor [`Error::Backend`]. Name the run with [`in_run`](Self::in_run).
    pub fn corrupt(what: impl fmt::Display, detail: impl fmt::Display) -> Self {
        Error::Integrity {
            run_id: None,
            seq: None,
            message: format!("{what} is corrupt: {detail}"),
        }
    }

    /// This error naming `run` and, when given, `seq`, when it is an [`Error::Integrity`] that
    /// names no run (or seq) yet; any other error unchanged.
    #[must_use]
    pub fn in_run(mut self, run: &RunId, at: Option<u64>) -> Self {
        if let Error::Integrity { run_id, seq, .. } = &mut self {
            if run_id.is_none() {
                *run_id = Some(run.clone());
            }
            if seq.is_none() {
                *seq = at;
            }
        }
        self
    }

    /// An [`Error::Backend`] wrapping `source`.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend { backend, source: source.into() }
    }

    /// The [`Error::InvalidInput`] for an `owner_sub` that already owns another tenant.
    pub fn owner_sub_taken() -> Self {
        Error::invalid("owner_sub", "already owns another tenant")
    }

    /// The [`Error::InvalidInput`] for an org already linked to another tenant.
    pub fn org_taken() -> Self {
        Error::invalid("org_id", "is already linked to another tenant")
    }

    /// The [`Error::InvalidInput`] for a tenant name another tenant has.
    pub fn name_taken(name: &str) -> Self {
        Error::invalid("name", format!("another tenant is already named {name:?}"))
    }

    /// The [`Error::InvalidInput`] for an imported tenant whose id exists here with other
    /// settings (a different tenant, or one changed since the last copy).
    pub fn import_differs(tenant: crate::TenantId) -> Self {
        Error::invalid(
            "tenant",
            format!(
                "tenant {tenant} exists here with other settings (name, owner, org or \
                 retention); make them equal on both sides, then copy again"
            ),
        )
    }

    /// Whether retrying the same call later may succeed (the backend was unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// This error with its causes, for people: see [`ErrorChain`].
    pub fn chain(&self) -> ErrorChain<'_> {
        ErrorChain::new(self)
    }
}

/// An error and every cause under it, for a person to read: `error: cause: cause's cause`.
///
/// Every error type of KAHN names only its own layer in `Display` and hands the layer below
/// out as `source()`, so printing one layer never repeats another; what users and logs see
/// is this chain. Some libraries do repeat their source in their own message; the chain says
/// such text once (see [`causes`](Self::causes)).
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl<'a> ErrorChain<'a> {
    /// The chain of `error`.
    pub fn new(error: &'a (dyn std::error::Error + 'static)) -> Self {
        Self(error)
    }

    /// The messages of the causes under the error, outermost first, each said once: a cause
    /// whose text the message above it already holds is left out, and one whose text holds
    /// the cause above it (a library quoting its own source) stands in for that one.
    pub fn causes(&self) -> impl Iterator<Item = String> + use<> {
        let top = self.0.to_string();
        let mut kept: Vec<String> = Vec::new();
        let mut next = self.0.source();
        while let Some(cause) = next {
            next = cause.source();
            let text = cause.to_string();
            let above = kept.last().unwrap_or(&top);
            if text.is_empty() || above.contains(&text) {
                continue;
            }
            match kept.last_mut() {
                Some(last) if text.contains(last.as_str()) => *last = text,
                _ => kept.push(text),
            }
        }
        kept.into_iter()
    }
}

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for cause in self.causes() {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Layer(&'static str, #[source] Option<Box<Layer>>);

    /// Each layer is printed once: a wrapping error names only itself, the chain adds each
    /// cause, and a cause its wrapper already quotes (as some libraries do) is not repeated.
    #[test]
    fn the_chain_prints_every_cause_once() {
        let e = Error::backend("sqlite", Layer("disk full", Some(Box::new(Layer("EIO", None)))));
        assert_eq!(e.to_string(), "sqlite backend error");
        assert_eq!(e.chain().to_string(), "sqlite backend error: disk full: EIO");
        assert_eq!(e.chain().causes().collect::<Vec<_>>(), ["disk full", "EIO"]);
        let quoting = Layer("query failed: EIO", Some(Box::new(Layer("EIO", None))));
        let e = Error::backend("postgres", quoting);
        assert_eq!(e.chain().to_string(), "postgres backend error: query failed: EIO");
        let quoted = Layer("EIO", Some(Box::new(Layer("code 5: EIO", None))));
        let e = Error::backend("sqlite", Layer("disk", Some(Box::new(quoted))));
        assert_eq!(e.chain().to_string(), "sqlite backend error: disk: code 5: EIO");
        let plain = Error::invalid("seq", "must be a number");
        assert_eq!(plain.chain().to_string(), plain.to_string());
    }
}
