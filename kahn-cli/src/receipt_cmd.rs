//! Receipts: `kahn keygen`, `kahn receipt-key`, and what `kahn push --receipt-out` and
//! `kahn verify --receipt` do with them (see `kahn_core::receipt`, `docs/PROOFS.md`).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{SecondsFormat, Utc};
use kahn_core::receipt::{Envelope, Receipt, ReceiptKey, ReceiptSigner};
use kahn_core::{Error, ReadScope, RunId, StorageBackend, StorageBackendExt as _};
use kahn_push::ResumeCache;
use kahn_push::push::PushReport;

use crate::args::KeyTarget;
use crate::failure::{CliResult, Failure};
use crate::print::print_json;
use crate::store::{Named, named_store};

fn unreadable(flag: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new(2, format!("{flag} {}: {e}\nhint: check the path", path.display()))
}

/// Where a new file at `path` can go: not a directory, in a directory that exists.
fn writable_place(flag: &str, path: &Path) -> CliResult {
    if path.is_dir() {
        return Err(Failure::new(
            2,
            format!(
                "{flag} {}: is a directory\nhint: name a file inside it, e.g. {}",
                path.display(),
                path.join("receipt-key.pem").display()
            ),
        ));
    }
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) if !dir.is_dir() => Err(Failure::new(
            2,
            format!(
                "{flag} {}: the directory {} does not exist\nhint: create it first (mkdir -p {}), \
                 or name a file in an existing directory",
                path.display(),
                dir.display(),
                dir.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// `kahn keygen FILE`: a new receipt signing key, written to `file` (0600), and its public
/// half to `FILE.pub`; neither is ever written over an existing file.
pub(crate) fn keygen(file: &Path, json: bool) -> CliResult {
    writable_place("keygen", file)?;
    let mut public = file.as_os_str().to_owned();
    public.push(".pub");
    let public = PathBuf::from(public);
    for existing in [file, public.as_path()] {
        if existing.exists() {
            return Err(Failure::new(
                2,
                format!(
                    "{} exists\nhint: a key is never overwritten (receipts signed with it could \
                     no longer be checked, and its .pub may be published): pick another file name",
                    existing.display()
                ),
            ));
        }
    }
    let signer = ReceiptSigner::generate()?;
    let pem = signer.to_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(file)
        .and_then(|mut f| f.write_all(pem.as_bytes()))
        .map_err(|e| unreadable("keygen", file, e))?;
    let key = signer.public_key();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&public)
        .and_then(|mut f| f.write_all(key.to_pem().as_bytes()))
        .map_err(|e| unreadable("keygen", &public, e))?;
    if json {
        return print_json(&serde_json::json!({
            "key_id": key.id(),
            "algorithm": "ed25519",
            "public_key_pem": key.to_pem(),
            "private_key_file": file.display().to_string(),
            "public_key_file": public.display().to_string(),
        }));
    }
    out!(
        "private key: {} (mode 0600; start the server with --receipt-key {})",
        file.display(),
        file.display()
    );
    out!(
        "public key:  {} (give it to producers and auditors: kahn verify --public-key)",
        public.display()
    );
    out!("key id:      {}", key.id());
    Ok(())
}

/// The failure of a server that signs no receipts, saying what can be done instead.
fn signs_none(url: &str, instead: &str) -> Failure {
    Failure::new(
        2,
        format!(
            "the server at {url} signs no receipts (it was started without --receipt-key)\nhint: \
             {instead}"
        ),
    )
}

fn is_no_receipt_key(e: &Error) -> bool {
    matches!(e, Error::NotFound { what: "receipt_key", .. })
}

/// `kahn receipt-key`: the public key receipts are checked with, from a server or from the
/// private key file: the PEM alone (redirect it to a file), or JSON with its id.
pub(crate) async fn receipt_key(
    url: Option<&str>,
    private: Option<&Path>,
    json: bool,
) -> CliResult {
    let key = match (url, private) {
        (_, Some(path)) => {
            let pem = std::fs::read_to_string(path).map_err(|e| unreadable("--from", path, e))?;
            ReceiptSigner::from_pem(&pem)
                .map_err(|e| {
                    Failure::new(
                        2,
                        format!(
                            "--from {}: {e}\nhint: --from takes the private key `kahn keygen` \
                             wrote (not its .pub); for a server's key use --url",
                            path.display()
                        ),
                    )
                })?
                .public_key()
                .clone()
        }
        (Some(url), None) => match kahn_http::HttpBackend::new(url)?.receipt_key().await {
            Err(e) if is_no_receipt_key(&e) => {
                return Err(signs_none(
                    url,
                    "an operator starts it with --receipt-key FILE (a key from `kahn keygen`)",
                ));
            }
            other => other?,
        },
        (None, None) => {
            return Err(Failure::new(
                2,
                "no key named\nhint: --url URL (the key a server signs with) or --from FILE (a \
                 private key from `kahn keygen`)",
            ));
        }
    };
    if json {
        return print_json(&serde_json::json!({
            "key_id": key.id(),
            "algorithm": "ed25519",
            "public_key_pem": key.to_pem(),
        }));
    }
    out!("{}", key.to_pem().trim_end());
    Ok(())
}

/// `kahn push --receipt-out`: checked before anything is pushed, written after.
pub(crate) struct ReceiptOut {
    path: PathBuf,
    url: String,
}

impl ReceiptOut {
    /// Refuses, before a byte is pushed, what could only fail after it: stdout wanted twice,
    /// an unwritable path, a store that signs nothing.
    pub(crate) async fn prepare(path: &Path, json: bool, target: &KeyTarget) -> CliResult<Self> {
        if path.as_os_str() == "-" {
            if json {
                return Err(Failure::new(
                    2,
                    "--receipt-out - and --json would both write stdout\nhint: write the \
                     receipt to a file (--receipt-out FILE), or drop --json",
                ));
            }
        } else {
            writable_place("--receipt-out", path)?;
        }
        let url = match named_store(target)? {
            Named::Server(url) => url.to_owned(),
            Named::Database => {
                return Err(Failure::new(
                    2,
                    "--receipt-out: a database signs no receipts; nothing was pushed\nhint: push \
                     through --url to a KAHN server started with --receipt-key",
                ));
            }
        };
        match kahn_http::HttpBackend::new(&url)?.receipt_key().await {
            Ok(_) => Ok(Self { path: path.to_owned(), url }),
            Err(e) if is_no_receipt_key(&e) => Err(signs_none(
                &url,
                "nothing was pushed; push without --receipt-out, or ask its operator to start it \
                 with --receipt-key",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the receipt goes to stdout (the push's own report then goes to stderr).
    pub(crate) fn is_stdout(&self) -> bool {
        self.path.as_os_str() == "-"
    }

    /// Writes the push's receipt. A push that stored nothing was given none (and the resume
    /// cache had none, as on a fresh CI runner): the server signs one for the head it holds,
    /// which the pusher has just confirmed is its file's.
    pub(crate) async fn write(
        &self,
        report: &mut PushReport,
        scope: &ReadScope,
        cache: Option<&ResumeCache>,
    ) -> CliResult {
        if report.receipt.is_none() {
            let server = kahn_http::HttpBackend::new(&self.url)?;
            let envelope = server.run_receipt(scope, &report.run_id).await?;
            let receipt = envelope.unverified_receipt()?;
            if (receipt.next_seq, receipt.head_hash) != (report.next_seq, report.head_hash) {
                return Err(Failure::new(
                    1,
                    format!(
                        "run {} grew while it was pushed (another pusher?): the server now holds \
                         {} transitions, this push confirmed {}\nhint: push again to get a \
                         receipt for what the file holds",
                        report.run_id, receipt.next_seq, report.next_seq
                    ),
                ));
            }
            if let Some(cache) = cache {
                cache.save_receipt(scope.tenant(), &report.run_id, &envelope).await;
            }
            report.receipt = Some(envelope);
        }
        let Some(envelope) = &report.receipt else { return Ok(()) };
        let text = serde_json::to_string_pretty(envelope).map_err(|e| Error::backend("json", e))?;
        if self.is_stdout() {
            out!("{text}");
            return Ok(());
        }
        std::fs::write(&self.path, format!("{text}\n")).map_err(|e| {
            Failure::new(
                1,
                format!(
                    "run {} was stored, but its receipt could not be written to {}: {e}\nhint: \
                     fix the path and run the same push again: it stores nothing more and writes \
                     the receipt",
                    report.run_id,
                    self.path.display()
                ),
            )
        })
    }

    /// Where the receipt went, for the person at the terminal.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the public key a receipt was checked with came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// A file the user gave (`--public-key`): the strong check.
    Pinned,
    /// The server being checked served it: proves the receipt is that server's, not that the
    /// key is the one the producer was given receipts under.
    Server,
}

/// Checks a kept receipt: its signature under the public key, then the stored run against
/// it. Every refusal says what it means for the evidence, not "fix the input".
pub(crate) async fn check(
    store: &dyn StorageBackend,
    scope: &ReadScope,
    run_id: &RunId,
    receipt_file: &Path,
    public_key: Option<&Path>,
    target: &KeyTarget,
) -> CliResult<(Receipt, KeySource)> {
    let shown = receipt_file.display();
    let text = std::fs::read_to_string(receipt_file)
        .map_err(|e| unreadable("--receipt", receipt_file, e))?;
    let envelope: Envelope = serde_json::from_str(&text).map_err(|e| {
        Failure::new(
            2,
            format!(
                "--receipt {shown} is not a receipt ({e})\nhint: a receipt is the JSON envelope \
                 `kahn push --receipt-out` writes ({{\"payloadType\", \"payload\", \"signatures\"}})"
            ),
        )
    })?;
    let (key, source) = checking_key(public_key, target, "--receipt").await?;
    let receipt = key.verify(&envelope).map_err(|e| {
        let why = match &e {
            Error::InvalidInput { message, .. } => message.clone(),
            other => other.to_string(),
        };
        let hint = match source {
            KeySource::Pinned => {
                "it proves nothing under this key: it was altered after it was signed, or \
                 another key signed it"
            }
            KeySource::Server => {
                "it proves nothing under the key the server serves now: it was altered, or \
                 signed by another key — if the server's key was replaced since, check it with \
                 the key you were given then: --public-key FILE"
            }
        };
        Failure::new(2, format!("REFUSED: receipt {shown}: {why}\nhint: {hint}"))
    })?;
    if &receipt.run_id != run_id {
        return Err(Failure::new(
            2,
            format!(
                "receipt {shown} is for run {}, not run {run_id}\nhint: kahn verify {} --receipt \
                 {shown}",
                receipt.run_id, receipt.run_id
            ),
        ));
    }
    match store.check_receipt(scope, &receipt).await {
        Ok(_) => Ok((receipt, source)),
        Err(Error::InvalidInput { message, .. }) => Err(Failure::new(
            2,
            format!(
                "receipt {shown} {message}\nhint: verify it with an API key of the tenant that \
                 pushed the run"
            ),
        )),
        Err(e @ Error::Integrity { .. }) => Err(broken(&e, &receipt)),
        Err(e) => Err(e.into()),
    }
}

/// The key signed statements are checked with: the `--public-key` file given (pinned), else
/// the one the `--url` server serves now. `flag` names what needs it, for the message when
/// neither is at hand.
pub(crate) async fn checking_key(
    public_key: Option<&Path>,
    target: &KeyTarget,
    flag: &str,
) -> CliResult<(ReceiptKey, KeySource)> {
    Ok(match public_key {
        Some(path) => {
            let pem =
                std::fs::read_to_string(path).map_err(|e| unreadable("--public-key", path, e))?;
            let key = ReceiptKey::from_pem(&pem).map_err(|e| {
                let private = pem.contains("PRIVATE KEY");
                Failure::new(
                    2,
                    format!(
                        "--public-key {}: {e}\nhint: {}",
                        path.display(),
                        if private {
                            "pass the .pub file `kahn keygen` wrote beside it (or `kahn \
                             receipt-key --from FILE`); a private key handed to verifiers is \
                             exposed: make a new one"
                        } else {
                            "pass the PEM public key (`BEGIN PUBLIC KEY`) you were given"
                        }
                    ),
                )
            })?;
            (key, KeySource::Pinned)
        }
        None => match named_store(target)? {
            Named::Server(url) => match kahn_http::HttpBackend::new(url)?.receipt_key().await {
                Ok(key) => (key, KeySource::Server),
                Err(e) if is_no_receipt_key(&e) => {
                    return Err(signs_none(
                        url,
                        "check it with the public key you were given: --public-key FILE",
                    ));
                }
                Err(e) => return Err(e.into()),
            },
            Named::Database => {
                return Err(Failure::new(
                    2,
                    format!(
                        "{flag} needs the public key to check it with\nhint: --public-key FILE \
                     (the .pub file `kahn keygen` wrote, or what `kahn receipt-key --url` printed \
                     for the server)"
                    ),
                ));
            }
        },
    })
}

/// The stored run no longer extends the receipt: what that means, and what can explain it.
fn broken(e: &Error, receipt: &Receipt) -> Failure {
    let days = (Utc::now() - receipt.received_at).num_days();
    let gone = matches!(e, Error::Integrity { message, .. } if message.contains("not stored"));
    let hint = if gone {
        format!(
            "the receipt is {days} day(s) old: if that is longer than the tenant's retention (90 \
             days unless an operator changed it; `kahn tenant list` shows it), retention removed \
             the run as designed. Otherwise it was deleted or moved outside KAHN: restore the \
             database from a backup taken before, and keep the receipt as evidence"
        )
    } else {
        "the server acknowledged this head with a key the database never held, so the stored run \
         was altered after it was acknowledged; restore the database from a backup taken before, \
         and keep the receipt as evidence"
            .to_owned()
    };
    Failure::new(
        3,
        format!(
            "BROKEN: run {} no longer extends the receipt signed {}: {e}\nhint: {hint}",
            receipt.run_id,
            receipt.received_at.to_rfc3339_opts(SecondsFormat::Secs, true)
        ),
    )
}
