//! `kahn`: serve, migrate, tenant, push, runs, verify, bridge.
//!
//! `args` holds what the command line accepts (clap), `dispatch` hands each command to its
//! handler (`*_cmd`, `serve`), `store` opens the database or server a command names,
//! `print` holds what commands print, and `failure` the exit codes and hints.

/// `println!` that survives a reader going away: writes one line to stdout, and when the
/// pipe is closed (`kahn runs list | head -1`) ends the process quietly with success, as Unix
/// tools do, instead of `println!`'s panic (exit 101).
macro_rules! out {
    () => {
        $crate::print::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::print::write_line(format_args!($($arg)*))
    };
}

mod args;
mod audit_cmd;
mod bridge_cmd;
mod dispatch;
mod failure;
mod logging;
mod print;
mod push_cmd;
mod receipt_cmd;
mod runs_cmd;
mod serve;
mod store;
mod tenant_cmd;
mod transfer_cmd;

use std::process::ExitCode;

use clap::Parser;
use kahn_cli::redact_dsns_in;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = args::Cli::parse();
    // With --json, a failure is JSON on stdout too, as the result would have been.
    let json = std::env::args().take_while(|a| a != "--").any(|a| a == "--json");
    match dispatch::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A message may embed a URL (a config file's excerpt, a driver's text): never
            // print a password from it.
            let message = redact_dsns_in(&f.message);
            if json {
                print::write_line(format_args!("{}", failure::json_error(f.code, &message)));
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::from(f.code)
        }
    }
}
