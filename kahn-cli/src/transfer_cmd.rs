//! `kahn copy` and `kahn export`: the command-line side of [`kahn_cli::copy`] and
//! [`kahn_cli::export`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use kahn_cli::copy::{
    self, CopyOptions, CopyProgress, CopyReport, RunCopy, RunOutcome, TenantCopy,
};
use kahn_cli::export;
use kahn_cli::redact_dsn;
use kahn_cli::schema::{DbLocation, SchemaState, schema_state};
use kahn_core::{Error, RunId, StorageBackendExt, Tenant};

use crate::args::DbArgs;
use crate::failure::{CliResult, Failure, exit_code, explained};
use crate::print::print_json;
use crate::store::{create_db, open_db, tenant_by_name};

/// Copy tenants, keys and runs from one store into another, resumably.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  kahn migrate --db postgres://postgres@db.internal/kahn     # the target first: copy never migrates it
  kahn copy --from sqlite://kahn.db --to postgres://postgres@db.internal/kahn
  kahn copy --from sqlite://kahn.db --to postgres://postgres@db.internal/kahn --tenant choco --json
Both are admin DSNs (or SQLite paths). Tenants keep their ids, settings and API keys (hashes only),
so producers' keys keep working; runs keep every content and chain hash, and each run's head is
verified on the target. Run it again to resume: complete runs are skipped, partial ones continue,
and a run whose stored content differs is reported as a conflict, nothing rewritten. Producers
may keep pushing to the source meanwhile: copy again to bring over what arrived.
Retention of a copied run counts from the copy (its received_at is the target's clock).")]
pub(crate) struct CopyArgs {
    /// The store to copy from: sqlite://PATH or an admin postgres:// DSN. Its tenants and runs
    /// are only read (an older schema is migrated on open, as by every command).
    #[arg(long)]
    from: String,
    /// The store to copy into: an admin postgres:// DSN or sqlite://PATH, already at this
    /// kahn's schema (`kahn migrate --db URL`).
    #[arg(long)]
    to: String,
    /// Only this tenant (by name in the source).
    #[arg(long)]
    tenant: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Export a tenant's runs as NDJSON files `kahn push` accepts.
#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  kahn export --tenant choco --out backup/ --db sqlite://kahn.db  # backup/<run_id>.ndjson, one per run
  kahn export --tenant choco --run nightly-42 --out moved/ --db postgres://postgres@db.internal/kahn
  kahn push moved/nightly-42.ndjson --key \"$OTHER_TENANT_KEY\" --url http://127.0.0.1:8080  # the same run in another tenant, same head
Each file holds the run's metadata line (source, graph, labels), then its transitions with run_id
and seq, exactly as stored; every content hash and the run's head are checked while writing.")]
pub(crate) struct ExportArgs {
    /// The tenant (by name).
    #[arg(long)]
    tenant: String,
    /// The directory to write `<run_id>.ndjson` files into (created when missing; files of
    /// the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Only this run.
    #[arg(long)]
    run: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DbArgs,
}

fn refuse(message: String) -> Failure {
    Failure { code: 2, message }
}

/// A schema check that could not be made: a URL `kahn` cannot open, or a database it cannot
/// read.
fn unreadable(flag: &str, shown: &str, e: &Error, otherwise: &str) -> Failure {
    let hint = match e {
        Error::InvalidInput { .. } => {
            "name a database file (sqlite://PATH) or a Postgres database (postgres://USER@HOST/DB)"
        }
        _ => otherwise,
    };
    let (code, e) = (exit_code(e).0, explained(e));
    Failure { code, message: format!("{flag} {shown}: {e}\nhint: {hint}") }
}

/// Checks the source can be read as a KAHN store without creating one by mistake.
async fn check_source(url: &str) -> CliResult {
    let shown = redact_dsn(url);
    let state = schema_state(url).await.map_err(|e| {
        unreadable(
            "--from",
            &shown,
            &e,
            "--from takes sqlite://PATH or the admin DSN of a KAHN database",
        )
    })?;
    match state {
        SchemaState::Missing => Err(refuse(format!(
            "--from {shown}: no such database file\nhint: name the SQLite file `kahn serve` used (e.g. sqlite://kahn.db)"
        ))),
        SchemaState::Empty => Err(refuse(format!(
            "--from {shown}: holds no KAHN schema, so there is nothing to copy\nhint: check the URL; `kahn tenant list --db URL` shows a store's tenants"
        ))),
        SchemaState::Newer { found, current } => Err(refuse(format!(
            "--from {shown}: schema version {found} is newer than this kahn's ({current})\nhint: upgrade kahn"
        ))),
        SchemaState::Older { .. } | SchemaState::Current { .. } => Ok(()),
    }
}

/// Checks the target is already at this build's schema: a copy never migrates it.
async fn check_target(url: &str) -> CliResult {
    let shown = redact_dsn(url);
    let migrate = format!("kahn migrate --db {shown}");
    let otherwise = format!(
        "--to takes the admin DSN of a database migrated with `{migrate}` (or sqlite://PATH)"
    );
    let state = schema_state(url).await.map_err(|e| unreadable("--to", &shown, &e, &otherwise))?;
    match state {
        SchemaState::Current { .. } => Ok(()),
        SchemaState::Missing | SchemaState::Empty => Err(refuse(format!(
            "--to {shown}: holds no KAHN schema yet; a copy never creates or migrates its target\nhint: run `{migrate}` first, then copy again"
        ))),
        SchemaState::Older { found, current } => Err(refuse(format!(
            "--to {shown}: schema version {found} is older than this kahn's ({current}); a copy never migrates its target\nhint: run `{migrate}` first, then copy again"
        ))),
        SchemaState::Newer { found, current } => Err(refuse(format!(
            "--to {shown}: schema version {found} is newer than this kahn's ({current})\nhint: upgrade kahn"
        ))),
    }
}

/// Progress lines on stderr.
struct Lines;

impl CopyProgress for Lines {
    fn tenant_ready(&self, t: &TenantCopy) {
        eprintln!(
            "copy: tenant {} ({}): {}, {} key(s) ({} added), {} run(s)",
            t.name,
            t.tenant_id,
            if t.created { "created" } else { "already there" },
            t.keys,
            t.keys_added,
            t.runs
        );
    }
    fn run_done(&self, tenant: &Tenant, run: &RunCopy) {
        match run.outcome {
            RunOutcome::Copied if run.target_had > 0 => eprintln!(
                "copy: {}/{}: resumed after {} transition(s), {} appended, head {} verified",
                tenant.name, run.run_id, run.target_had, run.appended, run.head_hash
            ),
            RunOutcome::Copied => eprintln!(
                "copy: {}/{}: {} appended, head {} verified",
                tenant.name, run.run_id, run.appended, run.head_hash
            ),
            RunOutcome::AlreadyComplete => {}
            RunOutcome::Failed => eprintln!("copy: {}/{}: FAILED", tenant.name, run.run_id),
        }
    }
    fn retrying(&self, attempt: u32, wait: Duration, error: &Error) {
        eprintln!("copy: retry {attempt} in {wait:.1?}: {error}");
    }
}

fn print_copy(report: &CopyReport, from: &str, to: &str) {
    let t = &report.totals;
    out!("copy {} -> {}", redact_dsn(from), redact_dsn(to));
    out!(
        "tenants: {} created, {} already there; keys: {} ({} added)",
        t.tenants_created,
        t.tenants_already_there,
        t.keys,
        t.keys_added
    );
    out!(
        "runs: {} copied ({} resumed), {} already complete, {} failed; {} transitions appended",
        t.runs_copied,
        t.runs_resumed,
        t.runs_already_complete,
        t.runs_failed,
        t.transitions_appended
    );
    out!("heads verified: {}", t.heads_verified);
    for f in &report.failures {
        match &f.run_id {
            Some(run) => out!("FAILED {}/{run}: {}", f.tenant, f.message),
            None => out!("FAILED tenant {}: {}", f.tenant, f.message),
        }
    }
    if report.stopped {
        out!("stopped early: a store failed; run the same command again to resume");
    }
}

/// `kahn copy`.
pub(crate) async fn copy(args: CopyArgs) -> CliResult {
    let (from, to) = (DbLocation::parse(&args.from)?, DbLocation::parse(&args.to)?);
    if from.same_database(&to) {
        return Err(refuse(format!(
            "--from and --to name the same database ({})\nhint: copy from one store into another, e.g. --from sqlite://kahn.db --to postgres://postgres@db.internal/kahn",
            redact_dsn(&args.to)
        )));
    }
    check_source(&args.from).await?;
    check_target(&args.to).await?;
    let source = open_db(&DbArgs::named(args.from.clone())).await?;
    let tenant = match &args.tenant {
        None => None,
        Some(name) => {
            let all = source.list_tenants().await?;
            let found = all.into_iter().find(|t| t.tenant.name == *name);
            Some(
                found
                    .ok_or_else(|| Failure {
                        code: 1,
                        message: format!(
                            "no tenant named {name:?} in the source {}\nhint: `kahn tenant list --db {}` shows them",
                            redact_dsn(&args.from),
                            redact_dsn(&args.from)
                        ),
                    })?
                    .tenant
                    .id,
            )
        }
    };
    let target = create_db(&DbArgs::named(args.to.clone())).await?;
    let opts = CopyOptions { tenant, ..CopyOptions::default() };
    let progress: &dyn CopyProgress = if args.json { &copy::Quiet } else { &Lines };
    let report = copy::copy(source.as_ref(), target.as_ref(), &opts, progress).await?;
    if args.json {
        print_json(&report)?;
    } else {
        print_copy(&report, &args.from, &args.to);
    }
    if report.is_complete() {
        return Ok(());
    }
    let worst = report.failures.iter().map(|f| exit_code(&f.error)).max_by_key(|(code, _)| *code);
    let (code, hint) = worst.unwrap_or((1, "see the report above"));
    Err(Failure {
        code,
        message: format!(
            "{} failure(s) copying (listed above)\nhint: {hint}; a copy run again resumes and skips what is complete",
            report.failures.len()
        ),
    })
}

/// `kahn export`.
pub(crate) async fn export(args: ExportArgs) -> CliResult {
    let run = args.run.as_deref().map(RunId::new).transpose()?;
    let store = open_db(&args.db).await?;
    let tenant = tenant_by_name(store.as_ref(), &args.tenant).await?;
    let scope = store.resolve_admin_override(tenant.id).await?;
    let report = export::export(store.as_ref(), &scope, &args.out, run.as_ref()).await?;
    if args.json {
        return print_json(&report);
    }
    for r in &report.runs {
        out!(
            "run {}: {} transitions{}, head {} -> {}",
            r.run_id,
            r.transitions,
            if r.metadata { " and metadata" } else { "" },
            r.head_hash,
            r.path.display()
        );
    }
    out!(
        "exported {} run(s), {} transitions, of tenant {} into {}",
        report.runs.len(),
        report.transitions,
        tenant.name,
        args.out.display()
    );
    Ok(())
}
