//! What commands print: JSON reports, a provisioned key, and a push's progress (a bar on a
//! terminal, one line per event otherwise).

use std::time::Duration;

use indicatif::ProgressBar;
use kahn_core::Error;
use kahn_push::provision::Provisioned;
use kahn_push::push::Progress;

use crate::failure::CliResult;

/// One line on stdout (the `out!` macro). A closed pipe ends the process with success (the
/// reader had what it wanted); any other write error ends it with 74 (EX_IOERR), saying so.
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| stdout.write_all(b"\n"));
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(74);
    }
}

/// What to do with a freshly issued key.
fn next_step(secret_name: &str) -> String {
    if secret_name == "KAHN_API_KEY" {
        "next: export KAHN_API_KEY=<the key>, then `kahn push PATH --url URL` (or --db)".to_owned()
    } else {
        format!(
            "next: store the key as {secret_name}; the job runs `kahn bridge push \
             --profile NAME PATH --url URL` (or KAHN's GitHub Action / GitLab template)"
        )
    }
}

/// Bytes on stdout, as [`write_line`] treats a closed pipe and other write errors.
pub(crate) fn write_bytes(bytes: &[u8]) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(74);
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::backend("json", e))?;
    out!("{text}");
    Ok(())
}

/// Prints what provisioning did: the key (shown once), its expiry, the keys it retired.
pub(crate) fn print_provisioned(p: &Provisioned, json: bool, secret_name: &str) -> CliResult {
    if json {
        return print_json(&serde_json::json!({
            "tenant": p.tenant,
            "api_key": p.issued.as_ref().map(|k| k.secret.expose_secret()),
            "key_id": p.issued.as_ref().map(|k| k.id),
            "expires_at": p.expires_at,
            "retired": p.retired,
            "retired_at": p.retired_at,
        }));
    }
    out!("tenant {} ({})", p.tenant.name, p.tenant.id);
    match &p.issued {
        Some(k) => {
            out!("API key (shown once; store it as a secret): {}", k.secret.expose_secret());
            out!("key id: {}", k.id);
            if let Some(at) = p.expires_at {
                out!("expires: {}", at.format("%Y-%m-%d %H:%M:%SZ"));
            }
            match (p.retired.len(), p.retired_at) {
                (0, _) => {}
                (n, None) => out!("revoked {n} previous key(s): they stop working now"),
                (n, Some(at)) => out!(
                    "{n} previous key(s) keep working until {} (the grace period), then expire",
                    at.format("%Y-%m-%d %H:%M:%SZ")
                ),
            }
            out!("{}", next_step(secret_name));
        }
        None => out!("already provisioned; no key issued (use --rotate for a new one)"),
    }
    Ok(())
}

/// Progress on a terminal: a bar over the file's bytes.
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Progress for Bar {
    fn started(&self, file_bytes: u64, _already: u64) {
        self.0.set_length(file_bytes);
    }
    fn resumed(&self, bytes: u64, transitions: u64) {
        self.0.inc(bytes);
        self.0.println(format!("resuming: {transitions} transitions already stored"));
    }
    fn chunk_done(&self, bytes: u64, _appended: u64, _skipped: u64) {
        self.0.inc(bytes);
    }
    fn retrying(&self, attempt: u32, wait: Duration, error: &Error) {
        self.0.println(format!("retry {attempt} in {wait:.1?}: {error}"));
    }
}

/// Progress when not on a terminal: one line per event on stderr.
pub(crate) struct Lines;

impl Progress for Lines {
    fn started(&self, file_bytes: u64, already: u64) {
        eprintln!("push: {file_bytes} bytes in the file, {already} transitions already stored");
    }
    fn resumed(&self, bytes: u64, transitions: u64) {
        eprintln!(
            "push: the first {transitions} transitions ({bytes} bytes) are stored (one chain link confirms them)"
        );
    }
    fn chunk_done(&self, bytes: u64, appended: u64, skipped: u64) {
        if bytes == 0 && appended == 0 && skipped == 0 {
            // Only the run's metadata (graph.json, labels) went: checked against what is set.
            eprintln!("push: run metadata sent (set once: an equal copy changes nothing)");
        } else {
            eprintln!(
                "push: chunk of {bytes} bytes: {appended} appended, {skipped} already stored"
            );
        }
    }
    fn retrying(&self, attempt: u32, wait: Duration, error: &Error) {
        eprintln!("push: retry {attempt} in {wait:.1?}: {error}");
    }
}
