//! `kahn runs list`, `kahn runs show`, `kahn runs transitions` and `kahn verify`: reading the
//! key's tenant's runs.

use std::fmt::Write as _;
use std::io::Write as _;

use kahn_core::{
    Cursor, Error, MAX_PAGE_SIZE, NodeSummary, RunId, RunInfo, RunQuery, Seq, StateClass,
    StorageBackendExt, StoredTransition,
};

use crate::args::{RunsCommand, VerifyArgs};
use crate::failure::{CliResult, Failure};
use crate::print::print_json;
use crate::receipt_cmd::KeySource;
use crate::store::{open_target, resolve_key};

/// Runs `kahn runs …`.
pub(crate) async fn run(cmd: RunsCommand) -> CliResult {
    match cmd {
        RunsCommand::List { source, status, prefix, node_class, limit, cursor, json, target } => {
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?.read();
            let cursor = cursor.as_deref().map(Cursor::decode).transpose()?;
            let filtered =
                source.is_some() || status.is_some() || prefix.is_some() || node_class.is_some();
            let query =
                RunQuery { source, status, run_id_prefix: prefix, node_class, limit, cursor };
            let page = store.list_runs(&scope, &query).await?;
            if json {
                // The API's own shape (`GET /v1/runs`): the same fields whichever store.
                return print_json(&kahn_http::wire::RunsPage {
                    runs: page.runs.into_iter().map(Into::into).collect(),
                    next_cursor: page.next_cursor.map(|c| c.encode()),
                });
            }
            if page.runs.is_empty() && filtered {
                out!("no run matches these filters");
            } else if page.runs.is_empty() {
                out!("no runs yet for this tenant; push one with `kahn push PATH --url URL`");
            }
            for r in page.runs {
                out!(
                    "{:<40} {:<10} {:<24} {:>9} {:>7} transitions  last activity {}",
                    r.run_id.as_str(),
                    r.source.as_deref().unwrap_or("-"),
                    status_line(&r),
                    r.duration().map_or_else(|| "-".to_owned(), human_duration),
                    r.next_seq,
                    r.activity_at().to_rfc3339()
                );
            }
            if let Some(next) = page.next_cursor {
                // The same command for the next page (on stderr: stdout is the list).
                eprintln!("more: {} --cursor {}", same_command_without_cursor(), next.encode());
            }
            Ok(())
        }
        RunsCommand::Show { run_id, json, target } => {
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?.read();
            let run = store.get_run(&scope, &RunId::new(run_id)?).await?;
            if json {
                // The API's own shape (`GET /v1/runs/{run_id}`).
                return print_json(&kahn_http::wire::RunDetail::from(run));
            }
            let i = &run.info;
            out!("run        {}", i.run_id);
            out!("source     {}", i.source.as_deref().unwrap_or("-"));
            out!("status     {}", status_line(i));
            out!("nodes      {}", node_counts(i));
            out!("started    {}", i.started_at.map_or("-".into(), |t| t.to_rfc3339()));
            out!("ended      {}", i.ended_at.map_or("-".into(), |t| t.to_rfc3339()));
            out!("duration   {}", i.duration().map_or_else(|| "-".to_owned(), human_duration));
            out!("transitions {}", i.next_seq);
            out!("first ts   {}", i.first_ts.map_or("-".into(), |t| t.to_rfc3339()));
            out!("last ts    {}", i.last_ts.map_or("-".into(), |t| t.to_rfc3339()));
            out!("received   {}  (retention counts from here)", i.received_at.to_rfc3339());
            out!("head hash  {}", i.head_hash);
            for (k, v) in &i.labels {
                out!("label      {k}={v}");
            }
            out!("graph      {}", if run.graph.is_some() { "yes" } else { "no" });
            print_nodes(&run.nodes);
            Ok(())
        }
        RunsCommand::Transitions { run_id, after_seq, limit, json, target } => {
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?.read();
            let run = RunId::new(run_id)?;
            let mut after = after_seq.map(Seq::new).transpose()?;
            let mut left = limit.unwrap_or(u64::MAX);
            let mut out = std::io::stdout().lock();
            let mut line = String::new();
            while left > 0 {
                let page_size = left.min(u64::from(MAX_PAGE_SIZE)) as u32;
                let page = store.read_transitions(&scope, &run, after, page_size).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.seq);
                left -= page.len() as u64;
                for t in &page {
                    line.clear();
                    if json {
                        kahn_core::ndjson::write_stored(&mut line, &run, t);
                    } else {
                        transition_row(&mut line, t);
                    }
                    if out.write_all(line.as_bytes()).is_err() {
                        // The reader went away (`| head`): stop quietly, as Unix tools do.
                        return Ok(());
                    }
                }
            }
            Ok(())
        }
    }
}

/// Runs `kahn verify`.
pub(crate) async fn verify(args: VerifyArgs) -> CliResult {
    let VerifyArgs { run_id, receipt, public_key, json, target } = args;
    let store = open_target(&target).await?;
    let scope = resolve_key(store.as_ref(), &target.key).await?.read();
    let run_id = RunId::new(run_id)?;
    let receipted = match &receipt {
        Some(file) => Some(
            crate::receipt_cmd::check(
                store.as_ref(),
                &scope,
                &run_id,
                file,
                public_key.as_deref(),
                &target,
            )
            .await?,
        ),
        None => None,
    };
    match store.verify_run(&scope, &run_id).await {
        Ok(head) if json => print_json(&serde_json::json!({
            "run_id": run_id,
            "verified": true,
            "head_hash": head,
            "receipt": receipted.as_ref().map(|(r, source)| serde_json::json!({
                "next_seq": r.next_seq,
                "head_hash": r.head_hash,
                "received_at": r.received_at,
                "key_id": r.key_id,
                "key": match source { KeySource::Pinned => "pinned", KeySource::Server => "served" },
            })),
        })),
        Ok(head) => {
            out!("OK: run {run_id} hash chain verified, head {head}");
            if let Some((r, source)) = &receipted {
                let stored = store.get_run(&scope, &run_id).await?.info.next_seq;
                out!(
                    "OK: it still extends the receipt: {} transitions with head {}, acknowledged \
                     {} under key {}",
                    r.next_seq,
                    r.head_hash,
                    r.received_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    r.key_id
                );
                if stored > r.next_seq {
                    out!(
                        "note: the {} transitions stored after it are not covered by this receipt",
                        stored - r.next_seq
                    );
                }
                if *source == KeySource::Server {
                    out!(
                        "note: checked with the key the server serves now; pin the key you were \
                         given (--public-key FILE) to rule out a replaced key"
                    );
                }
            }
            Ok(())
        }
        Err(e @ Error::Integrity { .. }) => Err(Failure {
            code: 3,
            message: format!(
                "BROKEN: {e}\nhint: the stored run no longer hashes to its own chain: it was altered \
                 outside KAHN. KAHN never rewrites a run, so pushing the source again cannot mend \
                 it (it would stop at the first differing seq); restore the database from a backup \
                 taken before, then verify again. `kahn runs transitions {run_id}` shows what is \
                 stored now"
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

/// The status as a list shows it: with the failed nodes named when the status alone would
/// hide them (`running · 1 failed`).
fn status_line(r: &RunInfo) -> String {
    let failed = r.node_counts.failed;
    if failed > 0 && r.status_class != StateClass::Failed {
        format!("{} · {failed} failed", r.status)
    } else {
        r.status.clone()
    }
}

/// `2 failed, 3 succeeded, 1 active` (classes with nodes, most urgent first), or `none`.
fn node_counts(r: &RunInfo) -> String {
    let parts: Vec<String> = StateClass::ALL
        .iter()
        .filter_map(|c| {
            let n = r.node_counts.get(*c);
            (n > 0).then(|| format!("{n} {c}"))
        })
        .collect();
    if parts.is_empty() { "none".to_owned() } else { parts.join(", ") }
}

/// The node table of `kahn runs show`: failed nodes first, then by node.
fn print_nodes(nodes: &[NodeSummary]) {
    if nodes.is_empty() {
        return;
    }
    let mut rows: Vec<&NodeSummary> = nodes.iter().collect();
    rows.sort_by_key(|n| (n.class != StateClass::Failed, n.node.as_str()));
    let width = rows.iter().map(|n| n.node.chars().count()).max().unwrap_or(4).clamp(4, 48);
    out!();
    out!("{:<width$}  {:<14} {:<26} {:>9}  ATTEMPTS", "NODE", "STATE", "STARTED", "DURATION");
    for n in rows {
        out!(
            "{:<width$}  {:<14} {:<26} {:>9}  {}",
            n.node,
            n.state,
            n.started_at.map_or("-".into(), |t| t.to_rfc3339()),
            n.duration().map_or_else(|| "-".to_owned(), human_duration),
            n.attempts
        );
    }
}

/// A duration as a person reads it: `850ms`, `42s`, `3m05s`, `2h07m`, `3d04h`.
pub(crate) fn human_duration(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds();
    if ms < 0 {
        return format!("-{}", human_duration(-d));
    }
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `seq  ts  node  from → to`, one line.
fn transition_row(out: &mut String, t: &StoredTransition) {
    let text = |k: &str| t.body.get(k).and_then(|v| v.as_str()).unwrap_or("-");
    let _ = writeln!(
        out,
        "{:>7}  {:<30} {:<24} {} → {}",
        t.seq.get(),
        text("ts"),
        text("node"),
        text("from"),
        text("to")
    );
}

/// This invocation as typed, `--cursor` and its value left out: what to run for the next
/// page. Words a shell would split or expand are single-quoted.
fn same_command_without_cursor() -> String {
    let mut words = vec!["kahn".to_owned()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--cursor" {
            args.next();
            continue;
        }
        if arg.starts_with("--cursor=") {
            continue;
        }
        let plain = !arg.is_empty()
            && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
        words.push(if plain { arg } else { format!("'{}'", arg.replace('\'', "'\\''")) });
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::human_duration;
    use chrono::Duration;

    #[test]
    fn durations_read_as_a_person_says_them() {
        let cases = [
            (Duration::milliseconds(850), "850ms"),
            (Duration::seconds(42), "42s"),
            (Duration::seconds(185), "3m05s"),
            (Duration::seconds(2 * 3600 + 7 * 60 + 9), "2h07m"),
            (Duration::seconds(3 * 86_400 + 4 * 3600), "3d04h"),
            (Duration::seconds(-5), "-5s"),
        ];
        for (d, want) in cases {
            assert_eq!(human_duration(d), want);
        }
    }
}
