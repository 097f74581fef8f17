//! `kahn push`: a run file or directory into the key's tenant, resuming from what is stored.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use kahn_core::{ConflictAt, Error, RunId, Seq, StorageBackend, WriteScope};
use kahn_push::ResumeCache;
use kahn_push::push::{self, PushOptions, RunSource};

use crate::args::PushArgs;
use crate::failure::{CliResult, Failure};
use crate::print::{Bar, Lines, print_json};
use crate::receipt_cmd::ReceiptOut;
use crate::store::{open_target, resolve_key_retrying};

/// Runs `kahn push`.
pub(crate) async fn run(args: PushArgs) -> CliResult {
    let store = open_target(&args.target).await?;
    // The first call is retried too: a server still starting, or a proxy's 502.
    let scope =
        resolve_key_retrying(store.as_ref(), &args.target.key, args.max_retries, &Lines).await?;
    // A receipt asked for must be one the store can give and the path can take: refused
    // before a byte is pushed, not after.
    let receipt_out = match &args.receipt_out {
        Some(path) => Some(ReceiptOut::prepare(path, args.json, &args.target).await?),
        None => None,
    };
    let run_id = args.run_id.as_deref().map(RunId::new).transpose()?;
    let source = RunSource::from_path(&args.path, run_id)?;
    let opts = PushOptions {
        // Within 1 KiB..=1 MiB by the flag's range.
        max_chunk_bytes: usize::try_from(args.chunk_bytes).unwrap_or(push::MAX_CHUNK_BYTES),
        max_retries: args.max_retries,
        resume_cache: if args.no_resume_cache { None } else { ResumeCache::user_default() },
        ..PushOptions::default()
    };
    let pushed = if !args.json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {wide_bar} {eta}")
        {
            bar.set_style(style);
        }
        let progress = Bar(bar);
        let r = push::push(store.as_ref(), &scope, &source, &opts, &progress).await;
        progress.0.finish_and_clear();
        r
    } else if args.json {
        push::push(store.as_ref(), &scope, &source, &opts, &push::Quiet).await
    } else {
        push::push(store.as_ref(), &scope, &source, &opts, &Lines).await
    };
    let mut report = match pushed {
        Err(Error::Conflict { run_id, at: ConflictAt::Seq(seq), .. }) => {
            return Err(conflict(store.as_ref(), &scope, &source, &run_id, seq).await);
        }
        other => other?,
    };
    if let Some(receipt_out) = &receipt_out {
        receipt_out.write(&mut report, &scope.read(), opts.resume_cache.as_ref()).await?;
    }
    if args.json {
        return print_json(&report);
    }
    let line = format!(
        "run {}: {} appended, {} already stored, {} transitions, head {}",
        report.run_id,
        report.appended,
        report.already_stored + report.skipped,
        report.next_seq,
        report.head_hash
    );
    match &receipt_out {
        // stdout holds the receipt alone, so it can be redirected into a file.
        Some(r) if r.is_stdout() => eprintln!("{line}"),
        Some(r) => {
            out!("{line}");
            eprintln!("receipt: written to {}", r.path().display());
        }
        None => out!("{line}"),
    }
    Ok(())
}

/// A conflict at `seq`, for a person: the file line, what is stored and what the file says
/// there (canonical, shortened), and what can be done — the store never rewrites a run.
async fn conflict(
    store: &dyn StorageBackend,
    scope: &WriteScope,
    source: &RunSource,
    run_id: &RunId,
    n: u64,
) -> Failure {
    let file = source.transitions_path().display().to_string();
    let located = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || push::locate(&source, n))
            .await
            .ok()
            .and_then(|r| r.ok())
            .flatten()
    };
    let stored = store
        .read_transitions(
            &scope.read(),
            run_id,
            n.checked_sub(1).map(Seq::new).transpose().ok().flatten(),
            1,
        )
        .await
        .ok()
        .and_then(|page| page.into_iter().find(|t| t.seq.get() == n))
        .map(|t| serde_json::Value::Object(t.body).to_string());
    let place = match &located {
        Some((line, _)) => format!("seq {n} (line {line} of {file})"),
        None => format!("seq {n} of {file}"),
    };
    let mut message = format!(
        "run {run_id}: the store holds other content at {place}; nothing was changed, and a \
         stored run is never rewritten"
    );
    let incoming = located.as_ref().map(|(_, t)| t.body.canonical_json().to_owned());
    // Both from a little before where they first differ, so the difference is on screen.
    let from = match (&stored, &incoming) {
        (Some(a), Some(b)) => a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count(),
        _ => 0,
    };
    let shown = |text: &str| window(text, from.saturating_sub(40));
    let stored = stored.as_deref().map_or_else(|| "(could not be read)".to_owned(), shown);
    message.push_str(&format!("\n  stored:   {stored}"));
    if let Some(incoming) = &incoming {
        message.push_str(&format!("\n  incoming: {}", shown(incoming)));
    }
    let line = located.as_ref().map_or_else(String::new, |(l, _)| format!(" (line {l})"));
    message.push_str(&format!(
        "\nhint: if the stored run is right, fix the file{line} to match it and push again; if the \
         file is a different run, push it under its own id: --run-id {run_id}-2"
    ));
    Failure::new(3, message)
}

/// 120 characters of `text` from about byte `from` (on a character boundary), `…` where cut.
fn window(text: &str, from: usize) -> String {
    let start = (0..=from.min(text.len())).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
    let rest = &text[start..];
    let head = if start > 0 { "…" } else { "" };
    match rest.char_indices().nth(120) {
        Some((at, _)) => format!("{head}{}…", &rest[..at]),
        None => format!("{head}{rest}"),
    }
}
