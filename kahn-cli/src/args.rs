//! What `kahn` accepts: the clap definitions of the commands and the flags they share. Their
//! doc comments and attributes are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kahn_push::push;

use crate::{serve, tenant_cmd, transfer_cmd};

/// KAHN: tamper-evident, idempotent, multi-tenant storage for orchestrator run histories.
#[derive(Parser, Debug)]
#[command(name = "kahn", version, long_about = None, after_help = "\
Start here:
  kahn serve                                              # the server, over ./kahn.db
  kahn tenant provision my-team --db sqlite://kahn.db     # a tenant and its API key (shown once)
  export KAHN_API_KEY=kahn_live_sk_...
  export KAHN_URL=http://127.0.0.1:8080                   # or pass --url to each command
  kahn push ./runs/nightly-42                             # a run directory (transitions.ndjson, graph.json)
  kahn runs list                                          # see it
  kahn verify nightly-42                                  # recompute its hash chain
Data commands take --url (a server) or --db (its database); nothing assumes ./kahn.db but
kahn serve and kahn migrate.")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Serve the HTTP API over a database (default: sqlite://kahn.db on 127.0.0.1:8080).
    #[command(after_help = "\
Examples:
  kahn serve                                        # sqlite://kahn.db on 127.0.0.1:8080
  kahn serve --db sqlite:///var/lib/kahn/kahn.db --listen 0.0.0.0:8080 --log-format json
  kahn serve --config kahn.toml                     # settings from TOML; flags and env win
  kahn serve --receipt-key receipt-key.pem          # sign receipts (the key from `kahn keygen receipt-key.pem`)
  kahn serve --jwt-public-key idp.pub.pem --jwt-issuer https://idp.example.com --jwt-audience kahn
Audit events (target kahn::audit) are logged whatever KAHN_LOG says.")]
    Serve(Box<serve::ServeArgs>),
    /// Create or upgrade the database schema.
    #[command(after_help = "Example:\n  kahn migrate --db sqlite://kahn.db")]
    Migrate(MigrateArgs),
    /// Tenants and their API keys: provision, keys, retention, rename, org, delete.
    #[command(subcommand)]
    Tenant(tenant_cmd::TenantCommand),
    /// Remove the runs past their tenant's retention (counted from each run's last receipt).
    #[command(after_help = "\
Examples:
  kahn purge --dry-run --db sqlite://kahn.db    # what would go, per tenant; nothing removed
  kahn purge --tenant choco --db sqlite://kahn.db
  kahn purge --db postgres://postgres@db.internal/kahn --json
`kahn serve` also purges hourly at the database's clock.")]
    Purge(tenant_cmd::PurgeArgs),
    /// Push a run (a directory with transitions.ndjson, or an NDJSON file), resuming from
    /// what is stored.
    #[command(after_help = "\
Examples:
  kahn push ./runs/nightly-42 --db sqlite://kahn.db  # straight into the database; key from $KAHN_API_KEY
  kahn push run.ndjson --run-id nightly-42 --json --url http://127.0.0.1:8080  # a file; machine-readable report
  kahn push ./runs/nightly-42 --url http://127.0.0.1:8080 --receipt-out nightly-42.receipt.json  # keep the server's signed receipt
A re-run sends only what is missing; a fully stored run is a no-op.")]
    Push(PushArgs),
    /// List and show runs of the key's tenant.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// CI bridges: onboard a product, push a CI job's run under a deterministic id.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Recompute a run's hash chain from its transitions and compare it with the stored head;
    /// with --receipt, also prove the run still extends what the server once acknowledged.
    #[command(after_help = "\
Examples:
  kahn verify nightly-42 --url http://127.0.0.1:8080
  kahn verify nightly-42 --db sqlite://kahn.db      # in the database file itself
  kahn verify nightly-42 --receipt nightly-42.receipt.json --public-key receipt-key.pem.pub --url http://127.0.0.1:8080
A receipt catches what the chain alone cannot: a run edited with its hashes recomputed,
truncated, deleted or moved to another tenant.")]
    Verify(VerifyArgs),
    /// Make a receipt signing key for `kahn serve --receipt-key` (Ed25519, PKCS#8 PEM, mode
    /// 0600), and its public half in FILE.pub, which producers and auditors check receipts
    /// with.
    #[command(after_help = "\
Example:
  kahn keygen receipt-key.pem     # writes receipt-key.pem and receipt-key.pem.pub
An existing key file is never overwritten.")]
    Keygen {
        /// Where to write the private key (must not exist).
        file: PathBuf,
        /// Print JSON (`{"key_id", "algorithm", "public_key_pem", "private_key_file",
        /// "public_key_file"}`).
        #[arg(long)]
        json: bool,
    },
    /// Print the public key receipts are checked with (PEM): the one a server signs with, or
    /// a private key file's.
    #[command(after_help = "\
Examples:
  kahn receipt-key --url http://127.0.0.1:8080 > kahn-receipts.pub
  kahn receipt-key --from receipt-key.pem --json    # with its key id")]
    ReceiptKey {
        /// A KAHN server (its GET /v1/receipts/key).
        #[arg(long, env = "KAHN_URL", conflicts_with = "from")]
        url: Option<String>,
        /// A private key file from `kahn keygen`.
        #[arg(long, value_name = "FILE")]
        from: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the tenant's signed checkpoint now (a server also makes them every hour): a
    /// Merkle root over every run's head, which `kahn audit` later checks nothing was removed
    /// or rewritten against. Keep its output: it is evidence.
    #[command(after_help = "\
Examples:
  kahn checkpoint --url http://127.0.0.1:8080 > checkpoint-2026-12-01.json
  kahn checkpoint --db sqlite://kahn.db --tenant my-team --receipt-key receipt-key.pem   # no server: sign it here
When nothing changed since the latest checkpoint, that one is printed and nothing is added.")]
    Checkpoint(CheckpointArgs),
    /// Check that a tenant's history only grew between two signed checkpoints: nothing was
    /// removed or rewritten except what retention purged. Prints what changed.
    #[command(after_help = "\
Examples:
  kahn audit --from checkpoint-2026-12-01.json --url http://127.0.0.1:8080 --public-key kahn-receipts.pub
  kahn audit --from 3 --to 12 --db sqlite://kahn.db --tenant my-team --public-key kahn-receipts.pub
--from and --to take a checkpoint you kept (its file) or a size in the server's list
(`kahn audit --list`). Exit 3 when the history was altered.")]
    Audit(AuditArgs),
    /// Copy tenants, keys and runs from one store into another (e.g. SQLite to Postgres).
    Copy(transfer_cmd::CopyArgs),
    /// Export a tenant's runs as NDJSON files `kahn push` accepts.
    Export(transfer_cmd::ExportArgs),
    /// Check that a KAHN server answers and is ready (its /readyz): exit 0 when it is, 5 when
    /// not. For container and service health checks.
    #[command(after_help = "\
Examples:
  kahn healthcheck --url http://127.0.0.1:8080
  kahn healthcheck --url http://127.0.0.1:8080 --json")]
    Healthcheck {
        /// The server.
        #[arg(long, env = "KAHN_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script for kahn.
    #[command(after_help = "\
Examples:
  kahn completions bash > kahn.bash    # source it, or move it to ~/.local/share/bash-completion/completions/kahn
  kahn completions zsh > _kahn         # into a directory on your fpath
  kahn completions fish > kahn.fish    # into ~/.config/fish/completions/")]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print kahn's manual page (roff), or write one page per command into a directory.
    #[command(after_help = "\
Examples:
  kahn man > kahn.1                    # read it with: man -l kahn.1
  kahn man --out-dir man1              # kahn.1, kahn-serve.1, kahn-tenant-provision.1, ... (add its parent to MANPATH)")]
    Man {
        /// Write kahn.1 and a page for every command (kahn-push.1, kahn-tenant-provision.1,
        /// ...) into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// The database a command works on: always named (`--db` or `KAHN_DATABASE_URL`), so a
/// forgotten flag is an error, never a fresh `./kahn.db` that answers "unknown key".
#[derive(Args, Debug, Clone)]
pub(crate) struct DbArgs {
    /// The database: sqlite://PATH (the file `kahn serve` uses; sqlite://kahn.db by default
    /// there) or postgres://USER@HOST/DB.
    #[arg(long, env = "KAHN_DATABASE_URL", hide_env_values = true)]
    pub(crate) db: Option<String>,
}

impl DbArgs {
    /// A database named by a URL.
    pub(crate) fn named(url: impl Into<String>) -> Self {
        Self { db: Some(url.into()) }
    }
}

/// `kahn migrate`'s database: the one command besides `serve` that defaults to
/// `sqlite://kahn.db`.
#[derive(Args, Debug, Clone)]
pub(crate) struct MigrateArgs {
    /// The database: sqlite://PATH (created when missing) or postgres://… (the admin DSN).
    #[arg(
        long,
        env = "KAHN_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://kahn.db"
    )]
    pub(crate) db: String,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct KeyTarget {
    #[command(flatten)]
    pub(crate) db: DbArgs,
    /// A KAHN server to talk to instead of a database (e.g. http://127.0.0.1:8080); one of
    /// --url and --db is needed.
    #[arg(long, env = "KAHN_URL")]
    pub(crate) url: Option<String>,
    /// The API key naming the tenant.
    #[arg(long, env = "KAHN_API_KEY", hide_env_values = true)]
    pub(crate) key: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct VerifyArgs {
    /// The run.
    pub(crate) run_id: String,
    /// A receipt the server gave for this run (`kahn push --receipt-out`): the stored chain
    /// must still pass through the receipted head.
    #[arg(long, value_name = "FILE")]
    pub(crate) receipt: Option<PathBuf>,
    /// The server's receipt public key (PEM, from `kahn receipt-key`) to check --receipt
    /// with [default: the key the --url server serves now, which proves less]
    #[arg(long, value_name = "FILE", requires = "receipt")]
    pub(crate) public_key: Option<PathBuf>,
    /// Print JSON (`{"run_id", "verified", "head_hash", "receipt"?}`; a broken chain is an
    /// error).
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) target: KeyTarget,
}

#[derive(Args, Debug)]
pub(crate) struct CheckpointArgs {
    /// The private key to sign with, on a database (a server signs with its own).
    #[arg(long, value_name = "FILE")]
    pub(crate) receipt_key: Option<PathBuf>,
    /// The tenant, by name, on a database without --key (an operator's checkpoint).
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    #[command(flatten)]
    pub(crate) target: KeyTarget,
}

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// The older checkpoint: a file you kept (`kahn checkpoint` output) or a size in the
    /// store's list [default: the first checkpoint].
    #[arg(long, value_name = "FILE|SIZE")]
    pub(crate) from: Option<String>,
    /// The newer checkpoint, as --from [default: the latest].
    #[arg(long, value_name = "FILE|SIZE")]
    pub(crate) to: Option<String>,
    /// The retention you were promised, in days: a purge logged sooner after its run was
    /// last received is reported as an alteration (exit 3) — a purge record forged to cover a
    /// deletion, or retention lowered. Without it, each purge's age is printed.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) retention_days: Option<u32>,
    /// List the store's checkpoints (size, time) and stop.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub(crate) list: bool,
    /// The tenant, by name: on a database without --key; with --key, checked to be the key's.
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// The server's receipt public key (PEM) to check the checkpoints with [default: the key
    /// the --url server serves now, which proves less]
    #[arg(long, value_name = "FILE")]
    pub(crate) public_key: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    pub(crate) target: KeyTarget,
}

#[derive(Args, Debug)]
pub(crate) struct PushArgs {
    /// A run directory (transitions.ndjson, optional graph.json) or an NDJSON file.
    pub(crate) path: PathBuf,
    /// The run id (default: the directory's name or the file's stem).
    #[arg(long)]
    pub(crate) run_id: Option<String>,
    /// Give up after this many retries of one call.
    #[arg(long, default_value_t = 8)]
    pub(crate) max_retries: u32,
    /// Largest chunk in bytes: 1024 to 1048576 (1 MiB).
    #[arg(
        long,
        default_value_t = push::MAX_CHUNK_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(1024..=push::MAX_CHUNK_BYTES as u64)
    )]
    pub(crate) chunk_bytes: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not use the resume cache ($KAHN_CACHE_DIR, else $XDG_CACHE_HOME/kahn, else
    /// ~/.cache/kahn), which lets a re-push skip the stored part of the file unparsed.
    #[arg(long)]
    pub(crate) no_resume_cache: bool,
    /// Write the server's signed receipt for the run's head to FILE (`-`: stdout): keep it
    /// to prove later what was acknowledged (`kahn verify --receipt`). Needs a server with
    /// --receipt-key; the last receipt is also kept beside the resume cache, so a re-push that
    /// stores nothing still writes it.
    #[arg(long, value_name = "FILE")]
    pub(crate) receipt_out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) target: KeyTarget,
}

#[derive(Subcommand, Debug)]
pub(crate) enum RunsCommand {
    /// The tenant's runs, newest activity first.
    #[command(
        after_help = "Example:\n  kahn runs list --source choco --status failed --url http://127.0.0.1:8080"
    )]
    List {
        /// Only runs from this source.
        #[arg(long)]
        source: Option<String>,
        /// Only runs in this status: their latest run-level state, else derived from their
        /// nodes (running, failed, pending, cancelled, succeeded).
        #[arg(long, value_parser = ["running", "failed", "pending", "cancelled", "succeeded"])]
        status: Option<String>,
        /// Only runs whose id starts with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Only runs with a node in this class (failed, cancelled, active, waiting, succeeded,
        /// skipped, other): `--status running --node-class failed`.
        #[arg(long, value_parser = parse_class)]
        node_class: Option<kahn_core::StateClass>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Continue after this cursor (printed by the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// One run: status, times, and its nodes (state, start, duration), failed first.
    #[command(
        after_help = "Example:\n  kahn runs show nightly-42 --json --url http://127.0.0.1:8080"
    )]
    Show {
        /// The run.
        run_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// A run's transitions in seq order, read page by page (any size of run).
    #[command(after_help = "\
Examples:
  kahn runs transitions nightly-42 --url http://127.0.0.1:8080  # seq, ts, node, from → to
  kahn runs transitions nightly-42 --after-seq 999 --json --url http://127.0.0.1:8080 > tail.ndjson
With --json each line is the transition as NDJSON (`kahn push` takes it back).")]
    Transitions {
        /// The run.
        run_id: String,
        /// Start after this seq.
        #[arg(long)]
        after_seq: Option<u64>,
        /// At most this many transitions (default: all).
        #[arg(long)]
        limit: Option<u64>,
        /// One NDJSON line per transition, as the API's NDJSON and `kahn export` write it.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum BridgeCommand {
    /// Provision a product's tenant and key (idempotent) and print the CI secret to set.
    #[command(after_help = "Example:\n  kahn bridge onboard choco --db sqlite://kahn.db")]
    Onboard {
        /// The profile: choco, stratt, traceo, or one from --profiles.
        profile: String,
        /// Issue a new key and revoke the active ones.
        #[arg(long)]
        rotate: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profiles: ProfilesArg,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Push the run a CI job produced, under a run id derived from the CI environment
    /// (GitHub Actions: repository, run id, attempt; GitLab CI: project, pipeline, job).
    #[command(after_help = "\
Examples:
  kahn bridge push --profile choco ./out/run --url \"$KAHN_URL\"     # the key in $KAHN_API_KEY
  kahn bridge push --profile choco ./out/run --url \"$KAHN_URL\" --json
The run id is PROFILE:gh:OWNER:REPO:RUN:ATTEMPT:JOB[:MATRIX] on GitHub Actions (MATRIX from
KAHN_MATRIX, the job's matrix as JSON, or KAHN_RUN_SUFFIX) and PROFILE:gl:PROJECT:PIPELINE:JOB
on GitLab CI; elsewhere --run-id or KAHN_RUN_ID. ('/' is written ':', other characters outside
the run id alphabet '_'.)
In GitHub Actions use KAHN's action (action.yml: a matrix leg is a run of its own); in GitLab
CI the template ci/gitlab/kahn.gitlab-ci.yml. Pushing again within the same job attempt adds
nothing (same run id, same content); a new attempt (GitHub's Re-run) or a retried GitLab job
is a new run.")]
    Push {
        /// The profile: choco, stratt, traceo, or one from --profiles. It names the source
        /// recorded on the run and the run id's prefix.
        #[arg(long)]
        profile: String,
        /// The run directory or NDJSON file.
        path: PathBuf,
        /// The run id outside CI (default: $KAHN_RUN_ID).
        #[arg(long)]
        run_id: Option<String>,
        /// Give up after this many retries of one call.
        #[arg(long, default_value_t = 8)]
        max_retries: u32,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        profiles: ProfilesArg,
        #[command(flatten)]
        target: KeyTarget,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ProfilesArg {
    /// A TOML file of extra profiles (`[[profile]]` tables: name, tenant, source).
    #[arg(long, env = "KAHN_PROFILES")]
    pub(crate) profiles: Option<PathBuf>,
}

/// A `--node-class` value.
fn parse_class(name: &str) -> Result<kahn_core::StateClass, String> {
    kahn_core::StateClass::from_name(name).ok_or_else(|| {
        format!(
            "{name:?} is not a class: failed, cancelled, active, waiting, succeeded, skipped, other"
        )
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every example line (`kahn …`) of every command's help, continuation lines joined.
    fn examples(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        let texts = [cmd.get_after_help(), cmd.get_after_long_help(), cmd.get_long_about()];
        for text in texts.into_iter().flatten() {
            let text = text.to_string();
            let mut pending = String::new();
            for line in text.lines() {
                let line = line.trim();
                if pending.is_empty() && !line.starts_with("kahn ") {
                    continue;
                }
                match line.strip_suffix('\\') {
                    Some(head) => {
                        pending.push_str(head);
                        pending.push(' ');
                    }
                    None => {
                        pending.push_str(line);
                        out.push((path.to_owned(), std::mem::take(&mut pending)));
                    }
                }
            }
        }
        for sub in cmd.get_subcommands() {
            examples(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// Each example pasted into bash runs `kahn` once and nothing else: no pipe, `;`, `&` or
    /// command substitution hides in an unquoted value (`--owner-sub auth0|alice` would pipe
    /// into a command named alice). Run with `kahn` a shell function counting its calls and
    /// no PATH (any other command fails), in a scratch directory (an example may redirect its
    /// output to a file, visibly).
    #[test]
    fn every_help_example_is_one_kahn_command_when_pasted_into_a_shell() {
        let mut all = Vec::new();
        examples(&Cli::command(), "kahn", &mut all);
        assert!(all.len() >= 20, "found only {} examples", all.len());
        let dir = tempfile::tempdir().expect("tempdir");
        for (command, example) in &all {
            let script = format!(
                "calls=0; kahn() {{ calls=$((calls+1)); }}; {example}\n\
                 [ \"$calls\" = 1 ] || {{ echo \"kahn ran $calls times\" >&2; exit 3; }}"
            );
            let out = std::process::Command::new("/bin/bash")
                .args(["--noprofile", "--norc", "-c", &script])
                .env_clear()
                .env("PATH", "/nonexistent")
                .current_dir(dir.path())
                .output()
                .expect("bash");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stderr.is_empty(),
                "`{command} --help` example is not one safe kahn command:\n  {example}\n{stderr}"
            );
            // A data or operator command's example names its store: pasted without one, it
            // would fail (no `./kahn.db` is assumed any more).
            let names_its_store = ["--url", "--db", "--from", "KAHN_URL", "KAHN_DATABASE_URL"]
                .iter()
                .any(|flag| example.contains(flag));
            let needs_no_store =
                ["kahn serve", "kahn migrate", "kahn completions", "kahn man", "kahn keygen"]
                    .iter()
                    .any(|c| example.starts_with(c));
            assert!(
                needs_no_store || names_its_store || command == "kahn",
                "`{command} --help` example names no --url or --db:\n  {example}"
            );
        }
    }
}
