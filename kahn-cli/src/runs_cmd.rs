//! `kahn runs list`, `kahn runs show` and `kahn verify`: reading the key's tenant's runs.

use kahn_core::{Cursor, Error, RunId, RunQuery, StorageBackendExt};

use crate::args::{KeyTarget, RunsCommand};
use crate::failure::{CliResult, Failure};
use crate::print::print_json;
use crate::store::{open_target, resolve_key};

/// Runs `kahn runs …`.
pub(crate) async fn run(cmd: RunsCommand) -> CliResult {
    match cmd {
        RunsCommand::List { source, status, limit, cursor, json, target } => {
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?.read();
            let cursor = cursor.as_deref().map(Cursor::decode).transpose()?;
            let page = store.list_runs(&scope, &RunQuery { source, status, limit, cursor }).await?;
            if json {
                return print_json(&page);
            }
            if page.runs.is_empty() {
                println!("no runs yet for this tenant; push one with `kahn push PATH`");
            }
            for r in page.runs {
                println!(
                    "{:<40} {:<10} {:<12} {:>7} transitions  last activity {}",
                    r.run_id.as_str(),
                    r.source.as_deref().unwrap_or("-"),
                    r.status.as_deref().unwrap_or("-"),
                    r.next_seq,
                    r.activity_at().to_rfc3339()
                );
            }
            if let Some(next) = page.next_cursor {
                println!("more: kahn runs list --cursor {}", next.encode());
            }
            Ok(())
        }
        RunsCommand::Show { run_id, json, target } => {
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?.read();
            let run = store.get_run(&scope, &RunId::new(run_id)?).await?;
            if json {
                return print_json(&run);
            }
            let i = &run.info;
            println!("run        {}", i.run_id);
            println!("source     {}", i.source.as_deref().unwrap_or("-"));
            println!("status     {}", i.status.as_deref().unwrap_or("-"));
            println!("transitions {}", i.next_seq);
            println!("first ts   {}", i.first_ts.map_or("-".into(), |t| t.to_rfc3339()));
            println!("last ts    {}", i.last_ts.map_or("-".into(), |t| t.to_rfc3339()));
            println!("received   {}  (retention counts from here)", i.received_at.to_rfc3339());
            println!("head hash  {}", i.head_hash);
            for (k, v) in &i.labels {
                println!("label      {k}={v}");
            }
            println!("graph      {}", if run.graph.is_some() { "yes" } else { "no" });
            Ok(())
        }
    }
}

/// Runs `kahn verify`.
pub(crate) async fn verify(run_id: String, target: KeyTarget) -> CliResult {
    let store = open_target(&target).await?;
    let scope = resolve_key(store.as_ref(), &target.key).await?.read();
    let run_id = RunId::new(run_id)?;
    match store.verify_run(&scope, &run_id).await {
        Ok(head) => {
            println!("OK: run {run_id} hash chain verified, head {head}");
            Ok(())
        }
        Err(e @ Error::Integrity { .. }) => Err(Failure {
            code: 3,
            message: format!(
                "BROKEN: {e}\nhint: the stored run was altered outside KAHN; restore it from a backup or re-push the source"
            ),
        }),
        Err(e) => Err(e.into()),
    }
}
