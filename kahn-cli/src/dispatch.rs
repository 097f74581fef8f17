//! From a parsed command line to the command's handler.

use kahn_cli::redact_dsn;
use kahn_core::Error;

use crate::args::{Cli, Command};
use crate::failure::CliResult;
use crate::store::{DbRole, create_db_as};
use crate::{
    audit_cmd, bridge_cmd, push_cmd, receipt_cmd, runs_cmd, serve, tenant_cmd, transfer_cmd,
};

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => {
            serve::run(*args, async |db: &str| create_db_as(db, DbRole::App).await).await
        }
        Command::Migrate(db) => {
            create_db_as(&db.db, DbRole::Admin).await?;
            if db.json {
                return crate::print::print_json(&serde_json::json!({
                    "database": redact_dsn(&db.db),
                    "schema": "current",
                }));
            }
            out!("schema is current ({})", redact_dsn(&db.db));
            Ok(())
        }
        Command::Tenant(cmd) => tenant_cmd::run(cmd).await,
        Command::Purge(args) => tenant_cmd::purge(args).await,
        Command::Push(args) => push_cmd::run(args).await,
        Command::Copy(args) => transfer_cmd::copy(args).await,
        Command::Export(args) => transfer_cmd::export(args).await,
        Command::Runs(cmd) => runs_cmd::run(cmd).await,
        Command::Bridge(cmd) => bridge_cmd::run(cmd).await,
        Command::Verify(args) => runs_cmd::verify(args).await,
        Command::Keygen { file, json } => receipt_cmd::keygen(&file, json),
        Command::Checkpoint(args) => audit_cmd::checkpoint(args).await,
        Command::Audit(args) => audit_cmd::audit(args).await,
        Command::ReceiptKey { url, from, json } => {
            receipt_cmd::receipt_key(url.as_deref(), from.as_deref(), json).await
        }
        Command::Healthcheck { url, json } => {
            // One try, short: a health check that waits is one the orchestrator times out.
            let store = kahn_http::HttpBackend::new(&url)?;
            let ping = kahn_core::StorageBackend::ping(&store);
            tokio::time::timeout(std::time::Duration::from_secs(5), ping)
                .await
                .map_err(|_| Error::unavailable("http", "no answer within 5 s"))??;
            if json {
                return crate::print::print_json(&serde_json::json!({ "url": url, "ready": true }));
            }
            out!("ready: {url}");
            Ok(())
        }
        Command::Completions { shell } => {
            let mut cmd = <crate::args::Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kahn", &mut script);
            crate::print::write_bytes(&script);
            Ok(())
        }
        Command::Man { out_dir } => man(out_dir.as_deref()),
    }
}

/// `kahn man`: kahn(1) on stdout, or with `out_dir` one page per command there (kahn.1,
/// kahn-serve.1, kahn-tenant-provision.1, …), as the SUBCOMMANDS sections refer to them.
fn man(out_dir: Option<&std::path::Path>) -> CliResult {
    let cmd = <crate::args::Cli as clap::CommandFactory>::command();
    let Some(dir) = out_dir else {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).map_err(|e| Error::backend("man", e))?;
        crate::print::write_bytes(&page);
        return Ok(());
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::invalid("out_dir", format!("{}: {e}", dir.display())))?;
    // clap_mangen names subcommand pages by their full path; the root's subcommands must know
    // theirs (`kahn-tenant`, not `tenant`) before being rendered.
    let mut cmd = cmd;
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "kahn", dir, &mut written)?;
    out!("{written} manual pages written to {}", dir.display());
    Ok(())
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut usize,
) -> CliResult {
    let path = dir.join(format!("{name}.1"));
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone().name(name.to_owned()))
        .render(&mut page)
        .and_then(|()| std::fs::write(&path, &page))
        .map_err(|e| Error::invalid("out_dir", format!("{}: {e}", path.display())))?;
    *written += 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
