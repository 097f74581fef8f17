//! Receipts: `kahn keygen`, `kahn receipt-key`, and what `kahn push --receipt-out` and
//! `kahn verify --receipt` do with them (see `kahn_core::receipt`).

use std::io::Write as _;
use std::path::Path;

use kahn_core::receipt::{Envelope, Receipt, ReceiptKey, ReceiptSigner};
use kahn_core::{Error, ReadScope, RunId, StorageBackend, StorageBackendExt as _};

use crate::args::KeyTarget;
use crate::failure::{CliResult, Failure};
use crate::print::print_json;
use crate::store::{Named, named_store};

fn unreadable(flag: &str, path: &Path, e: impl std::fmt::Display) -> Failure {
    Failure::new(2, format!("{flag} {}: {e}\nhint: check the path", path.display()))
}

/// `kahn keygen FILE`: a new receipt signing key, written to `file` (0600, never over an
/// existing file), and its public half to `FILE.pub`.
pub(crate) fn keygen(file: &Path, json: bool) -> CliResult {
    let signer = ReceiptSigner::generate()?;
    let pem = signer.to_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(file).and_then(|mut f| f.write_all(pem.as_bytes()));
    if let Err(e) = written {
        let hint = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "a key is never overwritten: receipts signed with it could no longer be checked; \
             pick another file name"
        } else {
            "check the path"
        };
        return Err(Failure::new(2, format!("{}: {e}\nhint: {hint}", file.display())));
    }
    let key = signer.public_key();
    let mut public = file.as_os_str().to_owned();
    public.push(".pub");
    let public = std::path::PathBuf::from(public);
    std::fs::write(&public, key.to_pem()).map_err(|e| unreadable("keygen", &public, e))?;
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
            ReceiptSigner::from_pem(&pem)?.public_key().clone()
        }
        (Some(url), None) => kahn_http::HttpBackend::new(url)?.receipt_key().await?,
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

/// Writes the receipt a push was given to `path` (`-`: stdout).
pub(crate) fn write_receipt(path: &Path, receipt: Option<&Envelope>, run: &RunId) -> CliResult {
    let Some(receipt) = receipt else {
        return Err(Failure::new(
            1,
            format!(
                "run {run} was stored, but the store issued no receipt for it\nhint: receipts \
                 come from a KAHN server started with --receipt-key (a database signs nothing); \
                 push through --url to such a server"
            ),
        ));
    };
    let text = serde_json::to_string_pretty(receipt).map_err(|e| Error::backend("json", e))?;
    if path.as_os_str() == "-" {
        out!("{text}");
        return Ok(());
    }
    std::fs::write(path, format!("{text}\n")).map_err(|e| unreadable("--receipt-out", path, e))
}

/// Checks a kept receipt: its signature under the public key, then the stored run against
/// it. Returns the verified receipt.
pub(crate) async fn check(
    store: &dyn StorageBackend,
    scope: &ReadScope,
    run_id: &RunId,
    receipt_file: &Path,
    public_key: Option<&Path>,
    target: &KeyTarget,
) -> CliResult<(Receipt, KeySource)> {
    let text = std::fs::read_to_string(receipt_file)
        .map_err(|e| unreadable("--receipt", receipt_file, e))?;
    let envelope: Envelope = serde_json::from_str(&text).map_err(|e| {
        Error::invalid(
            "receipt",
            format!("{} is not a receipt envelope: {e}", receipt_file.display()),
        )
    })?;
    let (key, source) = match public_key {
        Some(path) => {
            let pem =
                std::fs::read_to_string(path).map_err(|e| unreadable("--public-key", path, e))?;
            (ReceiptKey::from_pem(&pem)?, KeySource::Pinned)
        }
        None => match named_store(target)? {
            Named::Server(url) => {
                (kahn_http::HttpBackend::new(url)?.receipt_key().await?, KeySource::Server)
            }
            Named::Database => {
                return Err(Failure::new(
                    2,
                    "--receipt needs the public key to check it with\nhint: --public-key FILE \
                     (the PEM `kahn receipt-key` printed when the server's key was made)",
                ));
            }
        },
    };
    let receipt = key.verify(&envelope)?;
    if &receipt.run_id != run_id {
        return Err(Error::invalid(
            "receipt",
            format!("is for run {}, not run {run_id}", receipt.run_id),
        )
        .into());
    }
    store.check_receipt(scope, &receipt).await?;
    Ok((receipt, source))
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
