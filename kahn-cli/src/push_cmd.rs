//! `kahn push`: a run file or directory into the key's tenant, resuming from what is stored.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use kahn_core::RunId;
use kahn_push::ResumeCache;
use kahn_push::push::{self, PushOptions, RunSource};

use crate::args::PushArgs;
use crate::failure::CliResult;
use crate::print::{Bar, Lines, print_json};
use crate::store::{open_target, resolve_key};

/// Runs `kahn push`.
pub(crate) async fn run(args: PushArgs) -> CliResult {
    let store = open_target(&args.target).await?;
    let scope = resolve_key(store.as_ref(), &args.target.key).await?;
    let run_id = args.run_id.as_deref().map(RunId::new).transpose()?;
    let source = RunSource::from_path(&args.path, run_id)?;
    let opts = PushOptions {
        max_chunk_bytes: args.chunk_bytes,
        max_retries: args.max_retries,
        resume_cache: if args.no_resume_cache { None } else { ResumeCache::user_default() },
        ..PushOptions::default()
    };
    let report = if !args.json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {wide_bar} {eta}")
        {
            bar.set_style(style);
        }
        let progress = Bar(bar);
        let r = push::push(store.as_ref(), &scope, &source, &opts, &progress).await;
        progress.0.finish_and_clear();
        r?
    } else if args.json {
        push::push(store.as_ref(), &scope, &source, &opts, &push::Quiet).await?
    } else {
        push::push(store.as_ref(), &scope, &source, &opts, &Lines).await?
    };
    if args.json {
        return print_json(&report);
    }
    out!(
        "run {}: {} appended, {} already stored, {} transitions, head {}",
        report.run_id,
        report.appended,
        report.already_stored + report.skipped,
        report.next_seq,
        report.head_hash
    );
    Ok(())
}
