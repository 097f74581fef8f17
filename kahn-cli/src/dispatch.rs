//! From a parsed command line to the command's handler.

use kahn_cli::redact_dsn;

use crate::args::{Cli, Command, DbArgs};
use crate::failure::CliResult;
use crate::store::{DbRole, open_db, open_db_as};
use crate::{bridge_cmd, push_cmd, runs_cmd, serve, tenant_cmd, transfer_cmd};

/// Runs the command `cli` names.
pub(crate) async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => {
            serve::run(*args, async |db: &str| {
                open_db_as(&DbArgs { db: db.to_owned() }, DbRole::App).await
            })
            .await
        }
        Command::Migrate(db) => {
            open_db(&db).await?;
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
        Command::Verify { run_id, target } => runs_cmd::verify(run_id, target).await,
    }
}
