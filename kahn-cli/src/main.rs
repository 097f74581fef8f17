//! `kahn`: serve, migrate, tenant, push, runs, verify, bridge.

mod logging;
mod serve;
mod tenant_cmd;
mod transfer_cmd;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kahn_cli::bridge::{self, Bridge, CiContext, Profile};
use kahn_cli::provision::Provisioned;
use kahn_cli::push::{self, Progress, PushOptions, RunSource};
use kahn_cli::{ResumeCache, redact_dsn, redact_dsns_in};
use kahn_core::{
    ApiKey, Cursor, Error, RunId, RunQuery, StorageBackend, StorageBackendExt, Tenant, WriteScope,
};
use kahn_sqlite::SqliteBackend;

/// KAHN: tamper-evident, idempotent, multi-tenant storage for orchestrator run histories.
#[derive(Parser, Debug)]
#[command(name = "kahn", version, about, long_about = None, after_help = "\
Start here:
  kahn tenant provision my-team         # create a tenant, print its API key (once)
  export KAHN_API_KEY=kahn_live_sk_...
  kahn push ./runs/nightly-42           # push a run directory (transitions.ndjson, graph.json)
  kahn runs list                        # see it
  kahn verify nightly-42                # recompute its hash chain")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the HTTP API over a database (default: sqlite://kahn.db on 127.0.0.1:8080).
    #[command(after_help = "\
Examples:
  kahn serve                                        # sqlite://kahn.db on 127.0.0.1:8080
  kahn serve --db sqlite:///var/lib/kahn/kahn.db --listen 0.0.0.0:8080 --log-format json
  kahn serve --config kahn.toml                     # settings from TOML; flags and env win
  kahn serve --jwt-public-key idp.pub.pem --jwt-issuer https://idp.example.com --jwt-audience kahn
Audit events (target kahn::audit) are logged whatever KAHN_LOG says.")]
    Serve(serve::ServeArgs),
    /// Create or upgrade the database schema.
    #[command(after_help = "Example:\n  kahn migrate --db sqlite://kahn.db")]
    Migrate(DbArgs),
    /// Tenants and their API keys: provision, keys, retention, rename, org, delete.
    #[command(subcommand)]
    Tenant(tenant_cmd::TenantCommand),
    /// Remove the runs past their tenant's retention (counted from each run's last receipt).
    #[command(after_help = "\
Examples:
  kahn purge --dry-run                          # what would go, per tenant; nothing removed
  kahn purge --tenant choco
  kahn purge --db postgres://postgres@db.internal/kahn --json
`kahn serve` also purges hourly at the database's clock.")]
    Purge(tenant_cmd::PurgeArgs),
    /// Push a run (a directory with transitions.ndjson, or an NDJSON file), resuming from
    /// what is stored.
    #[command(after_help = "\
Examples:
  kahn push ./runs/nightly-42                       # into ./kahn.db, key from $KAHN_API_KEY
  kahn push run.ndjson --run-id nightly-42 --json   # a file; machine-readable report
A re-run sends only what is missing; a fully stored run is a no-op.")]
    Push(PushArgs),
    /// List and show runs of the key's tenant.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// CI bridges: onboard a product, push a CI job's run under a deterministic id.
    #[command(subcommand)]
    Bridge(BridgeCommand),
    /// Recompute a run's hash chain from its transitions and compare it with the stored head.
    #[command(after_help = "Example:\n  kahn verify nightly-42")]
    Verify {
        /// The run.
        run_id: String,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Copy tenants, keys and runs from one store into another (e.g. SQLite to Postgres).
    Copy(transfer_cmd::CopyArgs),
    /// Export a tenant's runs as NDJSON files `kahn push` accepts.
    Export(transfer_cmd::ExportArgs),
}

#[derive(Args, Debug, Clone)]
struct DbArgs {
    /// The database: sqlite://PATH (created when missing).
    #[arg(
        long,
        env = "KAHN_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://kahn.db"
    )]
    db: String,
}

#[derive(Args, Debug, Clone)]
struct KeyTarget {
    #[command(flatten)]
    db: DbArgs,
    /// A KAHN server to talk to instead of a database (e.g. http://127.0.0.1:8080).
    #[arg(long, env = "KAHN_URL")]
    url: Option<String>,
    /// The API key naming the tenant.
    #[arg(long, env = "KAHN_API_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Args, Debug)]
struct PushArgs {
    /// A run directory (transitions.ndjson, optional graph.json) or an NDJSON file.
    path: PathBuf,
    /// The run id (default: the directory's name or the file's stem).
    #[arg(long)]
    run_id: Option<String>,
    /// Give up after this many retries of one call.
    #[arg(long, default_value_t = 8)]
    max_retries: u32,
    /// Largest chunk in bytes (at most 1 MiB).
    #[arg(long, default_value_t = push::MAX_CHUNK_BYTES)]
    chunk_bytes: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Do not use the resume cache ($KAHN_CACHE_DIR, else $XDG_CACHE_HOME/kahn, else
    /// ~/.cache/kahn), which lets a re-push skip the stored part of the file unparsed.
    #[arg(long)]
    no_resume_cache: bool,
    #[command(flatten)]
    target: KeyTarget,
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// The tenant's runs, newest activity first.
    #[command(after_help = "Example:\n  kahn runs list --source choco --status failed")]
    List {
        /// Only runs from this source.
        #[arg(long)]
        source: Option<String>,
        /// Only runs in this status (the `to` of their last transition).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 50)]
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
    /// One run: summary and graph.
    #[command(after_help = "Example:\n  kahn runs show nightly-42 --json")]
    Show {
        /// The run.
        run_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
}

#[derive(Subcommand, Debug)]
enum BridgeCommand {
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
Example (in a GitHub Actions step):
  KAHN_API_KEY=${{ secrets.KAHN_API_KEY }} kahn bridge push --profile choco ./out/run
A retried step pushes nothing new: the run id is the same, and so is the content.")]
    Push {
        /// The profile.
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
struct ProfilesArg {
    /// A TOML file of extra profiles ([[profile]] name, tenant, source).
    #[arg(long, env = "KAHN_PROFILES")]
    profiles: Option<PathBuf>,
}

impl ProfilesArg {
    fn find(&self, name: &str) -> CliResult<Profile> {
        let extra = match &self.profiles {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::invalid("profiles", format!("{}: {e}", path.display())))?;
                bridge::parse_profiles(&text)?
            }
            None => Vec::new(),
        };
        Ok(bridge::find_profile(name, &extra)?)
    }
}

/// A failure with the exit code a script can rely on and a hint naming what to do next.
pub(crate) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// A failure exiting with `code`; `message` ends with a `hint:` line.
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The exit code of an error, and what to do next.
fn exit_code(e: &Error) -> (u8, &'static str) {
    match e {
        Error::Conflict { .. } => {
            (3, "the store holds different content for this run; nothing was changed")
        }
        Error::Gap { .. } => {
            (3, "push from the expected seq (a plain re-run of `kahn push` resumes)")
        }
        Error::Integrity { .. } => {
            (3, "stored data was altered outside KAHN or is corrupt; restore it from a backup")
        }
        Error::Unauthorized(_) => {
            (4, "check the key; `kahn tenant provision NAME --rotate` issues a new one")
        }
        Error::Unavailable { .. } => (5, "the store is unavailable; retry later"),
        Error::InvalidInput { .. } => (2, "fix the input named above and re-run"),
        Error::NotFound { .. } => (1, "check the name or id"),
        Error::Unsupported { .. } => {
            (2, "this store does not offer that; operators' commands need --db with the admin DSN")
        }
        _ => (1, "see the error above"),
    }
}

/// `e` for the terminal: its message, then each cause under it once, a line each. Errors keep
/// their causes apart from their message (a server never sends driver text to clients; a
/// wrapper names only its own layer); the operator at the terminal gets them all.
pub(crate) fn explained(e: &(dyn std::error::Error + 'static)) -> String {
    let causes = kahn_core::ErrorChain::new(e).causes();
    causes.fold(e.to_string(), |text, cause| format!("{text}\n  cause: {cause}"))
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let (code, hint) = exit_code(&e);
        Failure { code, message: format!("{}\nhint: {hint}", explained(&e)) }
    }
}

pub(crate) type CliResult<T = ()> = Result<T, Failure>;

/// Which Postgres DSN a command needs: operators' commands (migrate, tenant, bridge onboard)
/// run as the schema's admin; the server and data commands as the app role, under RLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DbRole {
    Admin,
    App,
}

async fn open_db_as(db: &DbArgs, role: DbRole) -> CliResult<Arc<dyn StorageBackend>> {
    let url = db.db.as_str();
    if url.starts_with("sqlite:") || !url.contains("://") {
        return Ok(Arc::new(SqliteBackend::connect(url).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = match role {
            DbRole::Admin => kahn_pg::PgBackend::connect_admin(url).await,
            DbRole::App => kahn_pg::PgBackend::connect_app(url).await,
        };
        return store.map(|s| Arc::new(s) as Arc<dyn StorageBackend>).map_err(|e| {
            let hint = match role {
                DbRole::Admin => "this command needs the admin DSN (a role that owns the kahn schema)",
                DbRole::App => "the server and data commands need the app DSN (role kahn_app); operators' commands take the admin DSN",
            };
            Failure { code: exit_code(&e).0, message: format!("{}\nhint: {hint}", explained(&e)) }
        });
    }
    Err(Failure {
        code: 2,
        message: format!(
            "unsupported database URL {:?}\nhint: use sqlite://PATH or postgres://USER@HOST/DB",
            redact_dsn(url)
        ),
    })
}

/// The database for operators' commands.
async fn open_db(db: &DbArgs) -> CliResult<Arc<dyn StorageBackend>> {
    open_db_as(db, DbRole::Admin).await
}

/// The store a data command works on: the server named by `--url`, else the database.
async fn open_target(target: &KeyTarget) -> CliResult<Arc<dyn StorageBackend>> {
    match &target.url {
        Some(url) => Ok(Arc::new(kahn_http::HttpBackend::new(url)?)),
        None => open_db_as(&target.db, DbRole::App).await,
    }
}

async fn resolve_key(store: &dyn StorageBackend, key: &Option<String>) -> CliResult<WriteScope> {
    let Some(key) = key else {
        return Err(Failure {
            code: 4,
            message: "no API key\nhint: pass --key or set KAHN_API_KEY (`kahn tenant provision NAME` prints one)".into(),
        });
    };
    let key = ApiKey::parse(key.trim()).map_err(|e| Failure {
        code: 4,
        message: format!(
            "{e}\nhint: pass the key `kahn tenant provision` printed, via --key or KAHN_API_KEY"
        ),
    })?;
    store.resolve_api_key(&key).await?.ok_or_else(|| Failure {
        code: 4,
        message: "the API key is unknown or revoked\nhint: `kahn tenant provision NAME --rotate` issues a new one".into(),
    })
}

async fn tenant_by_name(store: &dyn StorageBackend, name: &str) -> CliResult<Tenant> {
    let all = store.list_tenants().await?;
    all.into_iter().map(|s| s.tenant).find(|t| t.name == name).ok_or_else(|| Failure {
        code: 1,
        message: format!("no tenant named {name:?}\nhint: `kahn tenant list` shows them"),
    })
}

fn print_json(value: &impl serde::Serialize) -> CliResult {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::backend("json", e))?;
    println!("{text}");
    Ok(())
}

fn print_provisioned(p: &Provisioned, json: bool, secret_name: &str) -> CliResult {
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
    println!("tenant {} ({})", p.tenant.name, p.tenant.id);
    match &p.issued {
        Some(k) => {
            println!("API key (shown once; store it as a secret): {}", k.secret.expose_secret());
            println!("key id: {}", k.id);
            if let Some(at) = p.expires_at {
                println!("expires: {}", at.format("%Y-%m-%d %H:%M:%SZ"));
            }
            match (p.retired.len(), p.retired_at) {
                (0, _) => {}
                (n, None) => println!("revoked {n} previous key(s): they stop working now"),
                (n, Some(at)) => println!(
                    "{n} previous key(s) keep working until {} (the grace period), then expire",
                    at.format("%Y-%m-%d %H:%M:%SZ")
                ),
            }
            println!("next: set {secret_name} to the key, then `kahn push PATH`");
        }
        None => println!("already provisioned; no key issued (use --rotate for a new one)"),
    }
    Ok(())
}

/// Progress on a terminal: a bar over the file's bytes.
struct Bar(ProgressBar);

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
struct Lines;

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
        eprintln!("push: chunk of {bytes} bytes: {appended} appended, {skipped} already stored");
    }
    fn retrying(&self, attempt: u32, wait: Duration, error: &Error) {
        eprintln!("push: retry {attempt} in {wait:.1?}: {error}");
    }
}

async fn run_push(args: PushArgs) -> CliResult {
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
    println!(
        "run {}: {} appended, {} already stored, {} transitions, head {}",
        report.run_id,
        report.appended,
        report.already_stored + report.skipped,
        report.next_seq,
        report.head_hash
    );
    Ok(())
}

async fn run(cli: Cli) -> CliResult {
    match cli.command {
        Command::Serve(args) => {
            serve::run(args, async |db: &str| {
                open_db_as(&DbArgs { db: db.to_owned() }, DbRole::App).await
            })
            .await
        }
        Command::Migrate(db) => {
            open_db(&db).await?;
            println!("schema is current ({})", redact_dsn(&db.db));
            Ok(())
        }
        Command::Tenant(cmd) => tenant_cmd::run(cmd).await,
        Command::Purge(args) => tenant_cmd::purge(args).await,
        Command::Push(args) => run_push(args).await,
        Command::Copy(args) => transfer_cmd::copy(args).await,
        Command::Export(args) => transfer_cmd::export(args).await,
        Command::Runs(RunsCommand::List { source, status, limit, cursor, json, target }) => {
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
        Command::Runs(RunsCommand::Show { run_id, json, target }) => {
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
        Command::Bridge(BridgeCommand::Onboard { profile, rotate, json, profiles, db }) => {
            let bridge = Bridge::new(profiles.find(&profile)?);
            let store = open_db(&db).await?;
            let done = bridge.onboard(store.as_ref(), rotate).await?;
            print_provisioned(&done, json, "the CI secret KAHN_API_KEY")
        }
        Command::Bridge(BridgeCommand::Push {
            profile,
            path,
            run_id,
            max_retries,
            json,
            profiles,
            target,
        }) => {
            let bridge = Bridge::new(profiles.find(&profile)?);
            let ci = CiContext::detect(|k| std::env::var(k).ok(), run_id.as_deref())?;
            let store = open_target(&target).await?;
            let scope = resolve_key(store.as_ref(), &target.key).await?;
            let progress: &dyn Progress = if json { &push::Quiet } else { &Lines };
            let report =
                bridge.push(store.as_ref(), &scope, &ci, &path, max_retries, progress).await?;
            if json {
                return print_json(&report);
            }
            println!(
                "{} run {} ({}): {} appended, {} already stored",
                bridge.profile().name,
                report.run_id,
                ci.provider,
                report.appended,
                report.already_stored + report.skipped
            );
            Ok(())
        }
        Command::Verify { run_id, target } => {
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
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A message may embed a URL (a config file's excerpt, a driver's text): never
            // print a password from it.
            eprintln!("error: {}", redact_dsns_in(&f.message));
            ExitCode::from(f.code)
        }
    }
}
