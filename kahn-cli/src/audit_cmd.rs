//! `kahn checkpoint` and `kahn audit`: a tenant's signed checkpoints, made and checked
//! (docs/PROOFS.md, "Tenant checkpoints").

use std::path::Path;

use kahn_core::checkpoint::{
    AuditReport, Checkpoint, CheckpointLog, StoredCheckpoint, leaf_hashes,
};
use kahn_core::merkle::consistency_proof;
use kahn_core::receipt::{Envelope, ReceiptKey};
use kahn_core::{Error, ReadScope, StorageBackend, StorageBackendExt as _};

use crate::args::{AuditArgs, CheckpointArgs, KeyTarget};
use crate::failure::{CliResult, Failure};
use crate::print::print_json;
use crate::receipt_cmd::{KeySource, checking_key};
use crate::store::{Named, named_store, open_target, resolve_key, tenant_by_name};

/// The read scope of the tenant a command names: the key's (checked against `--tenant` when
/// both are given), or, on a database without a key, the tenant called `--tenant`.
async fn tenant_scope(
    store: &dyn StorageBackend,
    tenant: Option<&str>,
    target: &KeyTarget,
) -> CliResult<(ReadScope, String)> {
    if target.key.is_none()
        && let Some(name) = tenant
    {
        if let Named::Server(url) = named_store(target)? {
            return Err(Failure::new(
                4,
                format!(
                    "--tenant alone does not sign in to {url}\nhint: pass the tenant's API key \
                     (--key or KAHN_API_KEY); --tenant NAME alone works on a database (--db)"
                ),
            ));
        }
        let t = tenant_by_name(store, name).await?;
        return Ok((store.resolve_admin_override(t.id).await?, t.name));
    }
    let scope = resolve_key(store, &target.key).await?.read();
    let name = match named_store(target)? {
        Named::Server(url) => kahn_http::HttpBackend::new(url)?
            .tenant_name(&kahn_core::ApiKey::parse(
                target.key.as_deref().unwrap_or_default().trim(),
            )?)
            .await?
            .unwrap_or_else(|| scope.tenant().to_string()),
        Named::Database => store.get_tenant(scope.tenant()).await?.name,
    };
    if let Some(wanted) = tenant
        && wanted != name
    {
        return Err(Failure::new(
            4,
            format!(
                "the API key is tenant {name:?}'s, not {wanted:?}\nhint: pass {wanted:?}'s key, or drop --tenant"
            ),
        ));
    }
    Ok((scope, name))
}

/// `kahn checkpoint`: the tenant's checkpoint now, as JSON on stdout (the evidence to keep),
/// a summary on stderr.
pub(crate) async fn checkpoint(args: CheckpointArgs) -> CliResult {
    let CheckpointArgs { receipt_key, tenant, target } = args;
    let store = open_target(&target).await?;
    let (scope, name) = tenant_scope(store.as_ref(), tenant.as_deref(), &target).await?;
    let before = store.read_checkpoint_log(&scope).await?.latest().cloned();
    let made = match named_store(&target)? {
        Named::Server(url) => {
            if receipt_key.is_some() {
                return Err(Failure::new(
                    2,
                    "--receipt-key signs on a database; a server signs with its own key\nhint: \
                     drop --receipt-key",
                ));
            }
            let client = kahn_http::HttpBackend::new(url)?;
            match client.checkpoint_now(&scope).await {
                Err(Error::NotFound { what: "receipt_key", .. }) => {
                    return Err(Failure::new(
                        2,
                        format!(
                            "the server at {url} signs nothing (it was started without \
                             --receipt-key)\nhint: start it with --receipt-key FILE (`kahn keygen \
                             FILE` makes one)"
                        ),
                    ));
                }
                other => other?,
            }
        }
        Named::Database => {
            let Some(path) = receipt_key else {
                return Err(Failure::new(
                    2,
                    "a checkpoint on a database is signed here: --receipt-key FILE is needed\n\
                     hint: the server's key file (`kahn keygen FILE` makes one)",
                ));
            };
            let signer = crate::serve::read_receipt_key(&path)?;
            store.make_checkpoint(&scope, &signer, chrono::Utc::now()).await?
        }
    };
    let signed = made.envelope.unverified_checkpoint()?;
    eprintln!(
        "checkpoint of tenant {name:?}: {}, root {}, issued {} (key {})",
        leaves(signed.tree_size),
        signed.root_hash,
        signed.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        signed.key_id
    );
    print_json(&made)?;
    // What this checkpoint logged, read as an auditor would (signatures aside): a run gone
    // without a purge, or rewritten, is evidence now — and not a plain "checkpoint made".
    if let Some(before) = before.filter(|b| b.tree_size < made.tree_size) {
        let log = store.read_checkpoint_log(&scope).await?;
        let old = before.envelope.unverified_checkpoint()?;
        if let Err(e @ Error::Integrity { .. }) = check_log(&log, &old, &signed) {
            return Err(Failure::new(
                3,
                format!(
                    "ALTERED: the checkpoint (kept above) records that tenant {name:?}'s history \
                     changed outside KAHN since the previous one: {e}\nhint: keep both \
                     checkpoints as evidence (`kahn audit` shows it to anyone); restore the \
                     runs from a backup taken before"
                ),
            ));
        }
    }
    Ok(())
}

/// A checkpoint named on the command line: a size in the store's list, or a file.
fn named_checkpoint(flag: &str, value: &str, log: &CheckpointLog) -> CliResult<Envelope> {
    if let Ok(size) = value.parse::<u64>() {
        return log.at_size(size).map(|c| c.envelope.clone()).ok_or_else(|| {
            let sizes: Vec<String> =
                log.checkpoints.iter().map(|c| c.tree_size.to_string()).collect();
            Failure::new(
                2,
                format!(
                    "{flag} {size}: the store has no checkpoint of {size} leaves (it has: {})\n\
                     hint: `kahn audit --list` shows them; or pass a checkpoint file you kept",
                    if sizes.is_empty() { "none".to_owned() } else { sizes.join(", ") }
                ),
            )
        });
    }
    let path = Path::new(value);
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            2,
            format!(
                "{flag} {value}: {e}\nhint: a checkpoint file (`kahn checkpoint` output) or a size"
            ),
        )
    })?;
    serde_json::from_str::<StoredCheckpoint>(&text)
        .map(|c| c.envelope)
        .or_else(|_| serde_json::from_str::<Envelope>(&text))
        .map_err(|e| {
            Failure::new(
                2,
                format!(
                    "{flag} {value} is not a checkpoint ({e})\nhint: the JSON `kahn checkpoint` \
                     prints ({{\"tree_size\", \"envelope\"}}) or the envelope alone"
                ),
            )
        })
}

fn refused(flag: &str, source: KeySource, envelope: &Envelope, e: &Error) -> Failure {
    let why = match e {
        Error::InvalidInput { message, .. } => message.clone(),
        other => other.to_string(),
    };
    if envelope.payload_type == kahn_core::receipt::RECEIPT_PAYLOAD_TYPE {
        return Failure::new(
            2,
            format!(
                "REFUSED: {flag} is a receipt, not a checkpoint\nhint: a receipt proves one run: \
                 kahn verify RUN --receipt FILE; --from and --to take `kahn checkpoint` output"
            ),
        );
    }
    let hint = match source {
        KeySource::Pinned => {
            "it proves nothing under this key: altered after signing, or signed by another key"
        }
        KeySource::Server => {
            "it proves nothing under the key the server serves now: altered, or signed by another \
             key — if the server's key was replaced since, check with the key you had then: \
             --public-key FILE"
        }
    };
    Failure::new(2, format!("REFUSED: {flag} checkpoint: {why}\nhint: {hint}"))
}

/// `kahn audit`: checks the tenant's log between two checkpoints and prints what changed;
/// exit 3 when the history was altered.
pub(crate) async fn audit(args: AuditArgs) -> CliResult {
    let AuditArgs { from, to, list, tenant, public_key, retention_days, json, target } = args;
    let store = open_target(&target).await?;
    let (scope, name) = tenant_scope(store.as_ref(), tenant.as_deref(), &target).await?;
    let log = match store.read_checkpoint_log(&scope).await {
        Err(e @ Error::Integrity { .. }) => return Err(altered(&e, &name)),
        other => other?,
    };
    if let Some(pair) = log.checkpoints.windows(2).find(|w| w[1].tree_size < w[0].tree_size) {
        let e = Error::Integrity {
            run_id: None,
            seq: None,
            message: format!(
                "the store's checkpoints shrink from {} leaves to {}: a later one was signed \
                 over a log cut short",
                pair[0].tree_size, pair[1].tree_size
            ),
        };
        return Err(altered(&e, &name));
    }
    if list {
        return list_checkpoints(&log, &name, json);
    }
    let (Some(first), Some(latest)) = (log.checkpoints.first(), log.latest()) else {
        return Err(Failure::new(
            1,
            format!(
                "tenant {name:?} has no checkpoint yet\nhint: `kahn checkpoint` makes one (a \
                 server with --receipt-key also makes one every hour)"
            ),
        ));
    };
    let old = match &from {
        Some(v) => named_checkpoint("--from", v, &log)?,
        None => first.envelope.clone(),
    };
    let new = match &to {
        Some(v) => named_checkpoint("--to", v, &log)?,
        None => latest.envelope.clone(),
    };
    let (key, source) = checking_key(public_key.as_deref(), &target, "kahn audit").await?;
    let verified = |flag: &str, envelope: &Envelope| -> CliResult<Checkpoint> {
        let c = key.verify_checkpoint(envelope).map_err(|e| refused(flag, source, envelope, &e))?;
        if c.tenant_id != scope.tenant() {
            return Err(Failure::new(
                2,
                format!(
                    "REFUSED: the {flag} checkpoint is tenant {}'s, not {name:?}'s ({})\nhint: \
                     audit it with that tenant's key",
                    c.tenant_id,
                    scope.tenant()
                ),
            ));
        }
        Ok(c)
    };
    let (c_old, c_new) = (verified("--from", &old)?, verified("--to", &new)?);
    let (c_old, c_new) =
        if c_old.tree_size > c_new.tree_size { (c_new, c_old) } else { (c_old, c_new) };
    let report = check_log(&log, &c_old, &c_new).map_err(|e| altered(&e, &name))?;
    let purges = purges_between(&log, &key, &c_old, &c_new);
    if let Some(days) = retention_days
        && let Some(early) = purges.iter().find(|p| p.age < chrono::Duration::days(i64::from(days)))
    {
        return Err(Failure::new(
            3,
            format!(
                "ALTERED: tenant {name:?}'s run {} was purged at most {} after it was last \
                 received, under the {days} days of retention expected\nhint: a purge record \
                 forged by someone with the database (the run deleted under its cover), or the \
                 tenant's retention lowered (`kahn tenant list` shows it); keep both \
                 checkpoints as evidence",
                early.run_id,
                age(early.age)
            ),
        ));
    }
    let audited =
        Audited { tenant: &name, old: &c_old, new: &c_new, report: &report, purges: &purges };
    print_report(&audited, &key, source, json)?;
    if !json {
        if c_old.tree_size == c_new.tree_size {
            out!(
                "note: both checkpoints cover the same {}: nothing to compare",
                leaves(c_new.tree_size)
            );
        }
        out!(
            "note: this covers the history up to the checkpoint issued {}; to cover what \
             happened since, make one first (kahn checkpoint)",
            c_new.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(())
}

/// The audit proper: the store's leaves must hash to both signed roots and hold an honest
/// history in between.
fn check_log(
    log: &CheckpointLog,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Result<AuditReport, Error> {
    let size = usize::try_from(new.tree_size).unwrap_or(usize::MAX);
    let Some(leaves) = log.leaves.get(..size) else {
        return Err(Error::Integrity {
            run_id: None,
            seq: None,
            message: format!(
                "the store's log holds {} leaves, but a checkpoint signed {}: leaves were removed",
                log.leaves.len(),
                new.tree_size
            ),
        });
    };
    let proof = consistency_proof(&leaf_hashes(leaves), old.tree_size)
        .map_err(|e| Error::Integrity { run_id: None, seq: None, message: e.to_string() })?;
    kahn_core::checkpoint::audit(old, new, leaves, &proof)
}

/// A run retention purged between the two checkpoints, and how long after it was last
/// received the purge was logged at the latest.
struct Purge {
    run_id: kahn_core::RunId,
    received_at: chrono::DateTime<chrono::Utc>,
    /// From `received_at` to the first checkpoint that logged the purge (signed under `key`;
    /// the newer checkpoint when no earlier one verifies): the purge happened before it.
    age: chrono::Duration,
}

fn purges_between(
    log: &CheckpointLog,
    key: &ReceiptKey,
    old: &Checkpoint,
    new: &Checkpoint,
) -> Vec<Purge> {
    let signed: Vec<Checkpoint> = log
        .checkpoints
        .iter()
        .filter_map(|c| key.verify_checkpoint(&c.envelope).ok())
        .filter(|c| c.tenant_id == new.tenant_id && c.tree_size <= new.tree_size)
        .collect();
    let (from, to) = (old.tree_size as usize, new.tree_size as usize);
    log.leaves
        .get(from..to)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter(|(_, leaf)| leaf.kind == kahn_core::checkpoint::LeafKind::Purged)
        .map(|(i, leaf)| {
            let index = (from + i) as u64;
            let logged = signed
                .iter()
                .filter(|c| c.tree_size > index)
                .map(|c| c.issued_at)
                .min()
                .unwrap_or(new.issued_at);
            Purge {
                run_id: leaf.run_id.clone(),
                received_at: leaf.received_at,
                age: logged - leaf.received_at,
            }
        })
        .collect()
}

/// A duration in days (hours under two days).
fn age(d: chrono::Duration) -> String {
    if d.num_days() >= 2 {
        format!("{} days", d.num_days())
    } else {
        format!("{} hours", d.num_hours())
    }
}

fn altered(e: &Error, tenant: &str) -> Failure {
    match e {
        Error::Integrity { .. } => Failure::new(
            3,
            format!(
                "ALTERED: tenant {tenant:?}'s history is not what the checkpoints signed: {e}\n\
                 hint: a run was removed outside retention, rewritten, or the log itself edited; \
                 keep both checkpoints as evidence and restore from a backup taken before"
            ),
        ),
        other => Failure::new(2, other.to_string()),
    }
}

/// What an audit found, to print.
struct Audited<'a> {
    tenant: &'a str,
    old: &'a Checkpoint,
    new: &'a Checkpoint,
    report: &'a AuditReport,
    purges: &'a [Purge],
}

fn print_report(
    audited: &Audited<'_>,
    key: &ReceiptKey,
    source: KeySource,
    json: bool,
) -> CliResult {
    let Audited { tenant, old, new, report, purges } = *audited;
    let at = |c: &Checkpoint| c.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let key_kind = match source {
        KeySource::Pinned => "pinned",
        KeySource::Server => "served",
    };
    if json {
        return print_json(&serde_json::json!({
            "tenant": tenant,
            "consistent": true,
            "from": { "tree_size": old.tree_size, "issued_at": old.issued_at, "root_hash": old.root_hash },
            "to": { "tree_size": new.tree_size, "issued_at": new.issued_at, "root_hash": new.root_hash },
            "added": report.added,
            "extended": report.extended.iter().map(|(r, a, b)| serde_json::json!({
                "run_id": r, "from_next_seq": a, "to_next_seq": b,
            })).collect::<Vec<_>>(),
            "purged": report.purged,
            "purges": purges.iter().map(|p| serde_json::json!({
                "run_id": p.run_id,
                "received_at": p.received_at,
                "logged_within_days": p.age.num_days(),
            })).collect::<Vec<_>>(),
            "restored": report.restored,
            "key_id": key.id(),
            "key": key_kind,
        }));
    }
    out!(
        "OK: tenant {tenant:?}'s history only grew from checkpoint {} ({}) to {} ({})",
        old.tree_size,
        at(old),
        new.tree_size,
        at(new)
    );
    let names = |runs: &[kahn_core::RunId]| {
        if runs.is_empty() {
            "none".to_owned()
        } else {
            runs.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    out!("  added: {}", names(&report.added));
    let extended: Vec<String> =
        report.extended.iter().map(|(r, a, b)| format!("{r} ({a} -> {b} transitions)")).collect();
    out!(
        "  extended: {}",
        if extended.is_empty() { "none".to_owned() } else { extended.join(", ") }
    );
    let purged: Vec<String> = purges
        .iter()
        .map(|p| format!("{} (last received {} before the purge was logged)", p.run_id, age(p.age)))
        .collect();
    out!(
        "  purged by retention: {}",
        if purged.is_empty() { "none".to_owned() } else { purged.join(", ") }
    );
    out!("  stored again after a purge: {}", names(&report.restored));
    if source == KeySource::Server {
        out!(
            "note: checked with the key the server serves now; pin the key you were given \
             (--public-key FILE) to rule out a replaced key"
        );
    }
    Ok(())
}

fn list_checkpoints(log: &CheckpointLog, tenant: &str, json: bool) -> CliResult {
    let rows: Vec<(u64, Option<Checkpoint>)> = log
        .checkpoints
        .iter()
        .map(|c| (c.tree_size, c.envelope.unverified_checkpoint().ok()))
        .collect();
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(|(size, c)| {
                serde_json::json!({
                    "tree_size": size,
                    "issued_at": c.as_ref().map(|c| c.issued_at),
                    "root_hash": c.as_ref().map(|c| c.root_hash),
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "tenant": tenant, "checkpoints": list }));
    }
    if rows.is_empty() {
        out!("tenant {tenant:?} has no checkpoint yet");
    }
    for (size, c) in rows {
        match c {
            Some(c) => out!(
                "{:>14}  issued {}  root {}",
                leaves(size),
                c.issued_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                c.root_hash
            ),
            None => out!("{:>14}  (the envelope does not decode)", leaves(size)),
        }
    }
    Ok(())
}

fn leaves(n: u64) -> String {
    if n == 1 { "1 leaf".to_owned() } else { format!("{n} leaves") }
}
