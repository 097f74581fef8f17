//! `kahn tenant …` and `kahn purge`: what operators do to tenants, keys and retention. Every
//! command here runs on the admin DSN (or a SQLite file), never through a server.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use kahn_core::{
    ApiKeyId, ApiKeyInfo, Error, NewApiKey, NewTenant, OrgId, PurgeOutcome, PurgeRequest, Tenant,
    TenantChange,
};
use kahn_push::provision::{KeyPlan, Provisioned, provision};

use crate::args::DbArgs;
use crate::failure::{CliResult, Failure};
use crate::print::{print_json, print_provisioned};
use crate::store::{create_db, open_db, tenant_by_name};

/// A duration such as `24h`, `7d`, `90m` or `1h 30m` (humantime's syntax).
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 24h, 7d, 30m)"))
}

fn chrono_span(field: &'static str, d: Duration) -> Result<chrono::Duration, Error> {
    chrono::Duration::from_std(d).map_err(|_| Error::invalid(field, "is too long"))
}

#[derive(Subcommand, Debug)]
pub(crate) enum TenantCommand {
    /// Create a tenant (or find it by name) and print a key when one is issued.
    #[command(after_help = "\
Examples:
  kahn tenant provision choco --db sqlite://kahn.db  # first time: prints a key
  kahn tenant provision choco --db sqlite://kahn.db  # again: creates nothing, prints no key
  kahn tenant provision choco --rotate --db sqlite://kahn.db  # new key; the old ones stop working now
  kahn tenant provision choco --rotate --grace 24h --db sqlite://kahn.db  # old keys keep working for 24 hours
  kahn tenant provision alice --owner-sub 'auth0|alice' --json --db sqlite://kahn.db")]
    Provision {
        /// Unique tenant name.
        name: String,
        /// Make it the personal tenant of this JWT subject.
        #[arg(long)]
        owner_sub: Option<String>,
        /// Link it to this organisation (JWT org_id).
        #[arg(long)]
        org: Option<String>,
        /// Retention of its runs, in days counted from receipt (default 90 for a new tenant;
        /// for an existing one it must match: change it with `tenant set-retention`).
        #[arg(long)]
        retention_days: Option<u32>,
        /// Issue a new key and retire the tenant's active ones.
        #[arg(long)]
        rotate: bool,
        /// With --rotate: the old keys keep working this long (e.g. 24h), so producers roll
        /// over without an outage. Default: they stop at once.
        #[arg(long, requires = "rotate", value_parser = duration)]
        grace: Option<Duration>,
        /// The issued key expires after this long (e.g. 90d).
        #[arg(long, value_parser = duration)]
        expires_in: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Issue one more API key for a tenant (its other keys keep working).
    #[command(after_help = "\
Examples:
  kahn tenant issue-key choco --db sqlite://kahn.db  # a key that does not expire
  kahn tenant issue-key choco --expires-in 30d --db sqlite://kahn.db  # a key for a 30-day contractor")]
    IssueKey {
        /// Tenant name.
        name: String,
        /// The key expires after this long (e.g. 30d, 12h).
        #[arg(long, value_parser = duration)]
        expires_in: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List tenants with their run counts and retention.
    #[command(
        after_help = "Examples:\n  kahn tenant list --db sqlite://kahn.db\n  kahn tenant list --json --db postgres://postgres@db.internal/kahn"
    )]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List a tenant's API keys: id, created, expires, revoked, last used (secrets are never
    /// stored).
    #[command(after_help = "Example:\n  kahn tenant keys choco --db sqlite://kahn.db")]
    Keys {
        /// Tenant name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke one API key of a tenant.
    #[command(
        after_help = "Example:\n  kahn tenant keys choco --db sqlite://kahn.db        # find the id\n  kahn tenant revoke-key choco 3d7a9453-86ca-4380-a10a-2383526fba23 --db sqlite://kahn.db"
    )]
    RevokeKey {
        /// Tenant name.
        name: String,
        /// The key's id (from `tenant provision` or `tenant keys`).
        key_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Set how many days a tenant's runs are kept after their last receipt; it applies to
    /// stored runs at the next purge.
    #[command(after_help = "\
Example:
  kahn tenant set-retention choco 30 --db sqlite://kahn.db
  kahn purge --tenant choco --dry-run --db sqlite://kahn.db  # what the new retention removes")]
    SetRetention {
        /// Tenant name.
        name: String,
        /// Days, 1 to 36500.
        days: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Rename a tenant (its id, keys and runs stay).
    #[command(after_help = "Example:\n  kahn tenant rename choco choco-ci --db sqlite://kahn.db")]
    Rename {
        /// Current name.
        name: String,
        /// New unique name.
        new_name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Link a tenant to an organisation (moves the org's tenancy in one update).
    #[command(
        after_help = "Example:\n  kahn tenant link-org choco org_8f2k3 --db sqlite://kahn.db"
    )]
    LinkOrg {
        /// Tenant name.
        name: String,
        /// Organisation id (JWT org_id).
        org: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Unlink a tenant's organisation: the org's members no longer read this tenant.
    #[command(after_help = "Example:\n  kahn tenant unlink-org choco --db sqlite://kahn.db")]
    UnlinkOrg {
        /// Tenant name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete a tenant with all its runs, transitions and keys. Irreversible; audited.
    #[command(after_help = "\
Example:
  kahn tenant delete old-team --yes --db postgres://postgres@db.internal/kahn")]
    Delete {
        /// Tenant name.
        name: String,
        /// Confirm: without it nothing is deleted.
        #[arg(long)]
        yes: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `kahn purge`: remove the runs past their tenant's retention now.
#[derive(Args, Debug)]
pub(crate) struct PurgeArgs {
    /// Print what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    db: DbArgs,
}

fn expiry(field: &'static str, d: Option<Duration>) -> Result<NewApiKey, Error> {
    match d {
        Some(d) => NewApiKey::new().expires_in(chrono_span(field, d)?),
        None => Ok(NewApiKey::new()),
    }
}

/// Runs one `kahn tenant` command.
pub(crate) async fn run(cmd: TenantCommand) -> CliResult {
    match cmd {
        TenantCommand::Provision {
            name,
            owner_sub,
            org,
            retention_days,
            rotate,
            grace,
            expires_in,
            json,
            db,
        } => {
            // Provisioning may begin a store: the first step on a new machine.
            let store = create_db(&db).await?;
            let mut req = NewTenant::new(name)?;
            if let Some(sub) = owner_sub {
                req = req.with_owner_sub(sub)?;
            }
            if let Some(org) = org {
                req = req.with_airlock_org_id(OrgId::new(org)?);
            }
            if let Some(days) = retention_days {
                req = req.with_retention_days(days)?;
            }
            let plan = KeyPlan {
                rotate,
                grace: grace.map(|g| chrono_span("grace", g)).transpose()?,
                key: expiry("expires_in", expires_in)?,
            };
            let done = provision(store.as_ref(), &req, &plan).await?;
            print_provisioned(&done, json, "KAHN_API_KEY")
        }
        TenantCommand::IssueKey { name, expires_in, json, db } => {
            let key = expiry("expires_in", expires_in)?;
            let store = open_db(&db).await?;
            let tenant = tenant_by_name(store.as_ref(), &name).await?;
            let issued = store.create_api_key(tenant.id, &key).await?;
            let done = Provisioned {
                tenant,
                issued: Some(issued),
                expires_at: key.expiry(),
                retired: Vec::new(),
                retired_at: None,
            };
            print_provisioned(&done, json, "KAHN_API_KEY")
        }
        TenantCommand::List { json, db } => {
            let store = open_db(&db).await?;
            let tenants = store.list_tenants().await?;
            if json {
                return print_json(&tenants);
            }
            if tenants.is_empty() {
                out!("no tenants yet; `kahn tenant provision NAME` creates one");
            }
            for t in tenants {
                out!(
                    "{:<24} {} runs={} retention={}d org={} owner={}",
                    t.tenant.name,
                    t.tenant.id,
                    t.run_count,
                    t.tenant.retention_days,
                    t.tenant.airlock_org_id.as_ref().map_or("-", OrgId::as_str),
                    t.tenant.owner_sub.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        TenantCommand::Keys { name, json, db } => {
            let store = open_db(&db).await?;
            let tenant = tenant_by_name(store.as_ref(), &name).await?;
            let keys = store.list_api_keys(tenant.id).await?;
            if json {
                return print_json(&keys);
            }
            print_keys(&keys, Utc::now());
            Ok(())
        }
        TenantCommand::RevokeKey { name, key_id, json, db } => {
            let store = open_db(&db).await?;
            let tenant = tenant_by_name(store.as_ref(), &name).await?;
            let key: ApiKeyId = key_id.parse()?;
            store.revoke_api_key(tenant.id, key).await?;
            if json {
                return print_json(&serde_json::json!({ "tenant": tenant, "revoked_key_id": key }));
            }
            out!("revoked key {key} of tenant {}", tenant.name);
            Ok(())
        }
        TenantCommand::SetRetention { name, days, json, db } => {
            let change = TenantChange::retention_days(days)?;
            let t = change_tenant(&db, &name, &change).await?;
            if json {
                return print_json(&serde_json::json!({ "tenant": t }));
            }
            out!(
                "tenant {} keeps runs {} days after their last receipt (applies at the next purge; \
                 `kahn purge --tenant {} --dry-run` shows what it removes)",
                t.name,
                t.retention_days,
                t.name
            );
            Ok(())
        }
        TenantCommand::Rename { name, new_name, json, db } => {
            let change = TenantChange::rename(new_name)?;
            let t = change_tenant(&db, &name, &change).await?;
            if json {
                return print_json(&serde_json::json!({ "tenant": t, "was_named": name }));
            }
            out!("tenant {name} is now named {} (id {}, keys and runs unchanged)", t.name, t.id);
            Ok(())
        }
        TenantCommand::LinkOrg { name, org, json, db } => {
            let t = change_tenant(&db, &name, &TenantChange::LinkOrg(OrgId::new(org)?)).await?;
            if json {
                return print_json(&serde_json::json!({ "tenant": t }));
            }
            out!(
                "tenant {} is now linked to org {}",
                t.name,
                t.airlock_org_id.as_ref().map_or("-", OrgId::as_str)
            );
            Ok(())
        }
        TenantCommand::UnlinkOrg { name, json, db } => {
            let store = open_db(&db).await?;
            let before = tenant_by_name(store.as_ref(), &name).await?;
            let t = store.update_tenant(before.id, &TenantChange::UnlinkOrg).await?;
            if json {
                return print_json(&serde_json::json!({
                    "tenant": t,
                    "unlinked_org": before.airlock_org_id,
                }));
            }
            match before.airlock_org_id {
                Some(org) => out!("tenant {} is no longer linked to org {}", t.name, org),
                None => out!("tenant {} was linked to no org; nothing changed", t.name),
            }
            Ok(())
        }
        TenantCommand::Delete { name, yes, json, db } => delete(&db, &name, yes, json).await,
    }
}

async fn change_tenant(db: &DbArgs, name: &str, change: &TenantChange) -> CliResult<Tenant> {
    let store = open_db(db).await?;
    let tenant = tenant_by_name(store.as_ref(), name).await?;
    Ok(store.update_tenant(tenant.id, change).await?)
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn print_keys(keys: &[ApiKeyInfo], now: DateTime<Utc>) {
    if keys.is_empty() {
        out!("no keys; `kahn tenant issue-key NAME` issues one");
        return;
    }
    out!(
        "{:<36}  {:<7}  {:<20}  {:<20}  {:<20}  LAST USED",
        "ID",
        "STATE",
        "CREATED",
        "EXPIRES",
        "REVOKED"
    );
    for k in keys {
        out!(
            "{:<36}  {:<7}  {:<20}  {:<20}  {:<20}  {}",
            k.id.to_string(),
            k.state(now).as_str(),
            when(Some(k.created_at)),
            when(k.expires_at),
            when(k.revoked_at),
            when(k.last_used_at)
        );
    }
}

async fn delete(db: &DbArgs, name: &str, yes: bool, json: bool) -> CliResult {
    let store = open_db(db).await?;
    let tenant = tenant_by_name(store.as_ref(), name).await?;
    if !yes {
        let runs = store
            .list_tenants()
            .await?
            .into_iter()
            .find(|t| t.tenant.id == tenant.id)
            .map_or(0, |t| t.run_count);
        return Err(Failure::new(
            2,
            format!(
                "not deleted: tenant {name} ({}) holds {runs} runs and its keys; deleting removes \
                 them for good\nhint: re-run with --yes to delete (`kahn export --tenant {name} --out DIR` \
                 keeps a copy first)",
                tenant.id
            ),
        ));
    }
    crate::logging::init(crate::serve::LogFormat::Pretty);
    let report = store.delete_tenant(tenant.id).await?;
    tracing::warn!(
        target: kahn_http::AUDIT_TARGET,
        event = "tenant_deleted",
        tenant = %tenant.id,
        name = %tenant.name,
        runs_removed = report.runs_removed,
        transitions_removed = report.transitions_removed,
        operator = %operator(),
        "tenant deleted with all its data"
    );
    if json {
        return print_json(&serde_json::json!({
            "deleted": tenant,
            "runs_removed": report.runs_removed,
            "transitions_removed": report.transitions_removed,
        }));
    }
    out!(
        "deleted tenant {} ({}): {} runs, {} transitions, and its keys",
        tenant.name,
        tenant.id,
        report.runs_removed,
        report.transitions_removed
    );
    Ok(())
}

/// Who ran the command, as the OS says (for the audit trail).
fn operator() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "-".into())
}

/// Runs `kahn purge`.
pub(crate) async fn purge(args: PurgeArgs) -> CliResult {
    let store = open_db(&args.db).await?;
    let names: std::collections::HashMap<_, _> =
        store.list_tenants().await?.into_iter().map(|t| (t.tenant.id, t.tenant.name)).collect();
    let mut req = PurgeRequest::at_store_clock();
    if let Some(name) = &args.tenant {
        req = req.for_tenant(tenant_by_name(store.as_ref(), name).await?.id);
    }
    if args.dry_run {
        req = req.dry_run();
    }
    let outcome = store.purge_expired(&req).await?;
    let name = |id| names.get(&id).map_or("?", String::as_str).to_owned();
    if args.json {
        print_json(&purge_json(&outcome, args.dry_run, &name))?;
    } else {
        print_purge(&outcome, args.dry_run, &name);
    }
    match outcome.failures.first() {
        None => Ok(()),
        Some(f) => Err(Failure::new(
            1,
            format!(
                "{} tenant(s) could not be purged, first {} ({}): {}\nhint: the other tenants \
                 were purged; fix the cause and run `kahn purge` again",
                outcome.failures.len(),
                name(f.tenant_id),
                f.tenant_id,
                f.error.chain()
            ),
        )),
    }
}

fn print_purge(
    outcome: &PurgeOutcome,
    dry_run: bool,
    name: &dyn Fn(kahn_core::TenantId) -> String,
) {
    let verb = if dry_run { "would remove" } else { "removed" };
    if outcome.reports.is_empty() {
        out!("nothing to purge: no run is past its tenant's retention");
    }
    for r in &outcome.reports {
        out!(
            "{:<24} {}  {verb} {} runs, {} transitions",
            name(r.tenant_id),
            r.tenant_id,
            r.runs_removed,
            r.transitions_removed
        );
    }
    if !outcome.reports.is_empty() {
        out!(
            "total: {verb} {} runs, {} transitions{}",
            outcome.runs_removed(),
            outcome.transitions_removed(),
            if dry_run { " (dry run: nothing was removed)" } else { "" }
        );
    }
    for f in &outcome.failures {
        out!("{:<24} {}  FAILED: {}", name(f.tenant_id), f.tenant_id, f.error.chain());
    }
}

fn purge_json(
    outcome: &PurgeOutcome,
    dry_run: bool,
    name: &dyn Fn(kahn_core::TenantId) -> String,
) -> serde_json::Value {
    serde_json::json!({
        "dry_run": dry_run,
        "tenants": outcome.reports.iter().map(|r| serde_json::json!({
            "tenant_id": r.tenant_id,
            "name": name(r.tenant_id),
            "runs_removed": r.runs_removed,
            "transitions_removed": r.transitions_removed,
        })).collect::<Vec<_>>(),
        "failures": outcome.failures.iter().map(|f| serde_json::json!({
            "tenant_id": f.tenant_id,
            "name": name(f.tenant_id),
            "error": f.error.chain().to_string(),
        })).collect::<Vec<_>>(),
    })
}
