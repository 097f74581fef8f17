//! Checks of the data lifecycle: retention counted from receipt, tenant changes and
//! deletion, key expiry and rollover, personal tenants, and moving a tenant between stores.
//!
//! Purges at an instant other than the store's clock are always scoped to the check's own
//! tenants, so checks running in parallel against one store never purge each other's runs.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::fixtures::{Harness, SourceLog, TestTenant, recent_base};
use crate::{
    ApiKey, ApiKeyRecord, ApiKeyState, Error, NewApiKey, NewTenant, OrgId, PurgeOutcome,
    PurgeRequest, RetiredKeys, RunId, RunQuery, StorageBackendExt, TenantChange, TenantId,
    TenantRecord,
};

const MICRO: Duration = Duration::microseconds(1);

async fn push(h: &Harness, t: &TestTenant, log: &SourceLog) {
    h.store.append(&t.write, &log.all()).await.expect("push");
}

async fn received_at(h: &Harness, t: &TestTenant, run: &RunId) -> DateTime<Utc> {
    h.store.get_run(&t.read, run).await.expect("get_run").info.received_at
}

async fn purge(h: &Harness, req: PurgeRequest) -> PurgeOutcome {
    let out = h.control.purge_expired(&req).await.expect("purge");
    assert!(out.failures.is_empty(), "{:?}", out.failures);
    out
}

async fn purge_tenant_at(h: &Harness, t: &TestTenant, at: DateTime<Utc>) -> Option<(u64, u64)> {
    let out = purge(h, PurgeRequest::as_of(at).for_tenant(t.tenant.id)).await;
    assert!(out.reports.iter().all(|r| r.tenant_id == t.tenant.id), "a scoped purge: {out:?}");
    out.report_for(t.tenant.id).map(|r| (r.runs_removed, r.transitions_removed))
}

async fn run_ids(h: &Harness, t: &TestTenant) -> Vec<String> {
    let page = h.store.list_runs(&t.read, &RunQuery::default()).await.expect("list");
    let mut ids: Vec<String> = page.runs.into_iter().map(|r| r.run_id.to_string()).collect();
    ids.sort();
    ids
}

fn days(n: i64) -> Duration {
    Duration::days(n)
}

/// Retention counts from receipt: a backfill of runs dated a year ago is kept the full
/// retention, to the microsecond, and then removed with its transitions; a dry run reports
/// the same and removes nothing; a second purge removes nothing.
pub async fn backfill_is_kept_the_full_retention(h: &Harness) {
    let t = h.fresh_tenant_with(|r| r.with_retention_days(1).expect("valid")).await;
    let log = SourceLog::new("backfill", 4, "a", recent_base() - days(365));
    push(h, &t, &log).await;
    let received = received_at(h, &t, &log.run_id).await;
    let now = Utc::now();
    assert!(
        received > now - Duration::minutes(5) && received <= now + Duration::minutes(5),
        "received_at is the store's clock at the append ({received}), not the producer's ts"
    );
    let at_clock = purge(h, PurgeRequest::at_store_clock()).await;
    assert!(at_clock.report_for(t.tenant.id).is_none(), "a backfill is not purged on arrival");
    assert_eq!(purge_tenant_at(h, &t, received + days(1)).await, None, "kept at the boundary");
    let dry =
        purge(h, PurgeRequest::as_of(received + days(1) + MICRO).for_tenant(t.tenant.id).dry_run())
            .await;
    assert_eq!(
        dry.report_for(t.tenant.id).map(|r| (r.runs_removed, r.transitions_removed)),
        Some((1, 4))
    );
    assert_eq!(run_ids(h, &t).await, ["backfill"], "a dry run removes nothing");
    assert_eq!(purge_tenant_at(h, &t, received + days(1) + MICRO).await, Some((1, 4)));
    assert!(run_ids(h, &t).await.is_empty());
    assert!(matches!(
        h.store.read_transitions(&t.read, &log.run_id, None, 10).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(purge_tenant_at(h, &t, received + days(2)).await, None, "nothing left to purge");
}

/// A run dated far in the future expires like any other: its producer's `ts` never keeps it.
pub async fn future_dated_run_expires_on_time(h: &Harness) {
    let t = h.fresh_tenant_with(|r| r.with_retention_days(2).expect("valid")).await;
    let future = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).single().expect("valid date");
    let log = SourceLog::new("from-2099", 3, "a", future);
    push(h, &t, &log).await;
    let received = received_at(h, &t, &log.run_id).await;
    assert_eq!(purge_tenant_at(h, &t, received + days(2)).await, None);
    assert_eq!(purge_tenant_at(h, &t, received + days(2) + MICRO).await, Some((1, 3)));
}

/// `received_at` moves with every append that stores something (transitions, or metadata set
/// for the first time) and only then: a run still receiving appends is never purged, and a
/// re-push that stores nothing does not extend its life.
pub async fn appends_that_store_something_renew_receipt(h: &Harness) {
    let t = h.fresh_tenant_with(|r| r.with_retention_days(1).expect("valid")).await;
    let log = SourceLog::new("live", 6, "a", recent_base() - days(30));
    h.store.append(&t.write, &log.chunk(0, 3)).await.expect("first chunk");
    let first = received_at(h, &t, &log.run_id).await;
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    h.store.append(&t.write, &log.chunk(0, 3)).await.expect("re-push");
    assert_eq!(received_at(h, &t, &log.run_id).await, first, "a no-op re-push is not a receipt");
    h.store.append(&t.write, &log.chunk(2, 6)).await.expect("the rest");
    let second = received_at(h, &t, &log.run_id).await;
    assert!(second > first, "an append that stored rows renews received_at");
    tokio::time::sleep(StdDuration::from_millis(20)).await;
    let meta = super::fixtures::batch(&[super::fixtures::meta_line(
        log.run_id.as_str(),
        serde_json::json!({"source": "late-meta"}),
    )]);
    h.store.append(&t.write, &meta).await.expect("metadata");
    let third = received_at(h, &t, &log.run_id).await;
    assert!(third > second, "metadata set for the first time is a receipt");
    h.store.append(&t.write, &meta).await.expect("same metadata");
    assert_eq!(received_at(h, &t, &log.run_id).await, third, "equal metadata is not");
    assert_eq!(purge_tenant_at(h, &t, first + days(1) + MICRO).await, None, "still receiving");
    assert_eq!(purge_tenant_at(h, &t, third + days(1) + MICRO).await, Some((1, 6)));
}

/// Each tenant's runs go by its own retention, and a purge scoped to one tenant touches no
/// other; a purge at the store's clock removes nothing received moments ago.
pub async fn purge_follows_each_tenants_retention_and_scope(h: &Harness) {
    let short = h.fresh_tenant_with(|r| r.with_retention_days(1).expect("valid")).await;
    let long = h.fresh_tenant_with(|r| r.with_retention_days(3).expect("valid")).await;
    let log = SourceLog::new("r", 2, "a", recent_base());
    push(h, &short, &log).await;
    push(h, &long, &log).await;
    let latest =
        received_at(h, &short, &log.run_id).await.max(received_at(h, &long, &log.run_id).await);
    let at = latest + days(2);
    let out = purge(h, PurgeRequest::as_of(at).for_tenant(long.tenant.id)).await;
    assert!(out.reports.is_empty(), "long keeps 3 days, and short is out of scope: {out:?}");
    assert_eq!(run_ids(h, &short).await, ["r"], "a scoped purge leaves other tenants alone");
    assert_eq!(purge_tenant_at(h, &short, at).await, Some((1, 2)));
    assert_eq!(run_ids(h, &long).await, ["r"]);
    let out = purge(h, PurgeRequest::at_store_clock()).await;
    assert!(out.report_for(long.tenant.id).is_none());
}

/// A tenant's retention, name and org can be changed; a new retention applies to runs
/// already stored at the next purge; a name or org another tenant holds is refused and
/// changes nothing.
pub async fn tenant_settings_change_and_apply(h: &Harness) {
    let t = h.fresh_tenant().await;
    let other = h.fresh_tenant().await;
    let log = SourceLog::new("kept-then-gone", 2, "a", recent_base());
    push(h, &t, &log).await;
    let received = received_at(h, &t, &log.run_id).await;
    assert_eq!(purge_tenant_at(h, &t, received + days(5)).await, None, "90 days by default");
    let changed = h
        .control
        .update_tenant(t.tenant.id, &TenantChange::retention_days(3).expect("valid"))
        .await
        .expect("set retention");
    assert_eq!(changed.retention_days, 3);
    assert_eq!(purge_tenant_at(h, &t, received + days(3) + MICRO).await, Some((1, 2)));

    let new_name = format!("renamed-{}", uuid::Uuid::new_v4().simple());
    let renamed = h
        .control
        .update_tenant(t.tenant.id, &TenantChange::rename(new_name.clone()).expect("valid"))
        .await
        .expect("rename");
    assert_eq!((renamed.id, renamed.name.as_str()), (t.tenant.id, new_name.as_str()));
    let taken = TenantChange::rename(other.tenant.name.clone()).expect("valid");
    match h.control.update_tenant(t.tenant.id, &taken).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "name"),
        other => panic!("a taken name must be refused naming `name`: {other:?}"),
    }
    assert_eq!(h.control.get_tenant(t.tenant.id).await.expect("get").name, new_name);

    let org = OrgId::new(format!("org_{}", uuid::Uuid::new_v4().simple())).expect("valid");
    h.control.link_org(t.tenant.id, &org).await.expect("link");
    assert!(h.control.resolve_org(&org).await.expect("resolve").is_some());
    let taken = TenantChange::LinkOrg(org.clone());
    match h.control.update_tenant(other.tenant.id, &taken).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "org_id"),
        other => panic!("a held org must be refused naming `org_id`: {other:?}"),
    }
    let unlinked =
        h.control.update_tenant(t.tenant.id, &TenantChange::UnlinkOrg).await.expect("unlink");
    assert_eq!(unlinked.airlock_org_id, None);
    assert!(h.control.resolve_org(&org).await.expect("resolve").is_none());
    assert!(matches!(
        h.control.update_tenant(TenantId::new_random(), &TenantChange::UnlinkOrg).await,
        Err(Error::NotFound { .. })
    ));
}

/// Deleting a tenant removes its runs, transitions and keys (its keys never resolve again)
/// and nothing of any other tenant.
pub async fn deleting_a_tenant_removes_everything_it_holds(h: &Harness) {
    let doomed = h.fresh_tenant().await;
    let bystander = h.fresh_tenant().await;
    for run in ["a", "b"] {
        push(h, &doomed, &SourceLog::new(run, 3, "x", recent_base())).await;
    }
    push(h, &bystander, &SourceLog::new("a", 2, "x", recent_base())).await;
    let report = h.control.delete_tenant(doomed.tenant.id).await.expect("delete");
    assert_eq!((report.runs_removed, report.transitions_removed), (2, 6));
    assert!(matches!(h.control.get_tenant(doomed.tenant.id).await, Err(Error::NotFound { .. })));
    assert!(h.store.resolve_api_key(&doomed.key.secret).await.expect("resolve").is_none());
    assert!(matches!(h.control.delete_tenant(doomed.tenant.id).await, Err(Error::NotFound { .. })));
    assert_eq!(run_ids(h, &bystander).await, ["a"]);
    assert!(h.store.resolve_api_key(&bystander.key.secret).await.expect("resolve").is_some());
}

/// Keys may expire; a rotation with a grace period lets the old keys work until it ends and
/// then stop (a scope resolved before cannot append after), while the new key keeps working;
/// retiring a key that is not active issues nothing.
pub async fn keys_expire_and_roll_over_with_grace(h: &Harness) {
    let t = h.fresh_tenant().await;
    let grace = Duration::milliseconds(1500);
    let short_lived = h
        .control
        .create_api_key(t.tenant.id, &NewApiKey::new().expires_in(grace).expect("valid"))
        .await
        .expect("issue an expiring key");
    assert!(h.store.resolve_api_key(&short_lived.secret).await.expect("resolve").is_some());
    let unknown = crate::ApiKeyId::new_random();
    let before = h.control.list_api_keys(t.tenant.id).await.expect("keys").len();
    assert!(matches!(
        h.control.rotate_api_key(t.tenant.id, unknown).await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(h.control.list_api_keys(t.tenant.id).await.expect("keys").len(), before);
    let rollover = NewApiKey::new().retiring_after(RetiredKeys::AllActive, grace).expect("valid");
    let new = h.control.create_api_key(t.tenant.id, &rollover).await.expect("rotate with grace");
    assert!(
        h.store.resolve_api_key(&t.key.secret).await.expect("resolve").is_some(),
        "old keys work during the grace period"
    );
    let keys = h.control.list_api_keys(t.tenant.id).await.expect("keys");
    let old = keys.iter().find(|k| k.id == t.key.id).expect("the old key is listed");
    assert!(old.expires_at.is_some() && old.revoked_at.is_none(), "{old:?}");
    let newest = keys.iter().find(|k| k.id == new.id).expect("the new key is listed");
    assert_eq!((newest.expires_at, newest.revoked_at), (None, None));
    tokio::time::sleep(grace.to_std().expect("positive") + StdDuration::from_millis(300)).await;
    for gone in [&t.key.secret, &short_lived.secret] {
        assert!(h.store.resolve_api_key(gone).await.expect("resolve").is_none(), "expired");
    }
    let err = h
        .store
        .append(&t.write, &SourceLog::new("late", 1, "a", recent_base()).all())
        .await
        .expect_err("a scope of an expired key cannot append");
    assert!(matches!(err, Error::Unauthorized(_)), "{err:?}");
    let scope = h.store.resolve_api_key(&new.secret).await.expect("resolve").expect("new key");
    h.store
        .append(&scope, &SourceLog::new("after", 1, "a", recent_base()).all())
        .await
        .expect("the new key appends");
    let now = Utc::now();
    let states: Vec<_> = h
        .control
        .list_api_keys(t.tenant.id)
        .await
        .expect("keys")
        .iter()
        .map(|k| (k.id, k.state(now)))
        .collect();
    assert_eq!(
        states,
        [
            (t.key.id, ApiKeyState::Expired),
            (short_lived.id, ApiKeyState::Expired),
            (new.id, ApiKeyState::Active)
        ]
    );
}

/// Authenticating records a key's last use (off the request path: it shows within seconds),
/// and never-used keys show none.
pub async fn key_use_is_recorded(h: &Harness) {
    let t = h.fresh_tenant().await;
    let unused = h.control.issue_api_key(t.tenant.id).await.expect("issue");
    let used = h.control.issue_api_key(t.tenant.id).await.expect("issue");
    let before = crate::rules::truncate_micros(Utc::now()) - Duration::seconds(1);
    h.store.resolve_api_key(&used.secret).await.expect("resolve").expect("active");
    let mut last_used = None;
    for _ in 0..100 {
        let keys = h.control.list_api_keys(t.tenant.id).await.expect("keys");
        let of = |id| keys.iter().find(|k| k.id == id).and_then(|k| k.last_used_at);
        assert_eq!(of(unused.id), None, "an unused key has no last use");
        last_used = of(used.id);
        if last_used.is_some() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    let last_used = last_used.expect("the use is recorded within 5 s");
    assert!(last_used >= before && last_used <= Utc::now() + Duration::seconds(1), "{last_used}");
}

/// A subject without a tenant gets a personal tenant `user:<sub>` once, however many first
/// sign-ins race; a name already held by another owner is refused, never shared.
pub async fn personal_tenant_is_created_once(h: &Harness) {
    let sub = format!("auth0|{}", uuid::Uuid::new_v4().simple());
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (control, sub) = (h.control.clone(), sub.clone());
            tokio::spawn(async move { control.provision_personal_tenant(&sub).await })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.expect("join").expect("first sign-in"));
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one tenant for concurrent first sign-ins: {ids:?}");
    let tenant = h.control.get_tenant(ids[0]).await.expect("created");
    assert_eq!(tenant.name, format!("user:{sub}"));
    assert_eq!(tenant.owner_sub.as_deref(), Some(sub.as_str()));
    assert_eq!(tenant.retention_days, crate::DEFAULT_RETENTION_DAYS);
    let scope = h.store.resolve_sub(&sub).await.expect("resolve").expect("the sub resolves");
    assert_eq!(scope.tenant(), tenant.id);
    assert_eq!(h.control.provision_personal_tenant(&sub).await.expect("again"), tenant.id);

    let squatted = format!("sq-{}", uuid::Uuid::new_v4().simple());
    let squatter = NewTenant::new(format!("user:{squatted}")).expect("valid");
    h.control.provision_tenant(&squatter).await.expect("a tenant holding the name");
    assert!(matches!(
        h.control.provision_personal_tenant(&squatted).await,
        Err(Error::InvalidInput { .. })
    ));
    assert!(h.store.resolve_sub(&squatted).await.expect("resolve").is_none());
    assert!(matches!(
        h.control.provision_personal_tenant("has space").await,
        Err(Error::InvalidInput { .. })
    ));
}

/// A tenant moves between stores as a record (id, settings, key hashes) and its runs as
/// operator appends: importing creates it with its keys working, importing again changes
/// nothing but revocations, and a record that clashes with a different tenant is refused.
pub async fn tenants_export_and_import(h: &Harness) {
    let t = h.fresh_tenant_with(|r| r.with_retention_days(12).expect("valid")).await;
    let exported = h.control.export_tenant(t.tenant.id).await.expect("export");
    assert_eq!(exported.tenant, t.tenant);
    assert_eq!(exported.keys.len(), 1);
    assert_eq!(exported.keys[0].hash, t.key.secret.hash());
    assert_eq!(h.control.import_tenant(&exported).await.expect("re-import"), t.tenant);

    // A tenant as another store holds it: new id, name, and keys whose secrets we hold.
    let secret = ApiKey::generate().expect("random");
    let revoked_secret = ApiKey::generate().expect("random");
    let mut moved = NewTenant::new(format!("moved-{}", uuid::Uuid::new_v4().simple()))
        .expect("valid")
        .to_tenant();
    moved.retention_days = 7;
    let key = |secret: &ApiKey, revoked| ApiKeyRecord {
        info: crate::ApiKeyInfo {
            id: crate::ApiKeyId::new_random(),
            tenant_id: moved.id,
            created_at: crate::rules::truncate_micros(Utc::now() - days(3)),
            expires_at: None,
            revoked_at: revoked,
            last_used_at: None,
        },
        hash: secret.hash(),
    };
    let mut record = TenantRecord {
        tenant: moved.clone(),
        keys: vec![key(&secret, None), key(&revoked_secret, None)],
    };
    assert_eq!(h.control.import_tenant(&record).await.expect("import"), moved);
    assert_eq!(h.control.get_tenant(moved.id).await.expect("get"), moved);
    let scope = h.store.resolve_api_key(&secret).await.expect("resolve").expect("key works");
    assert_eq!(scope.tenant(), moved.id);
    let revoked_at = crate::rules::truncate_micros(Utc::now());
    record.keys[1].info.revoked_at = Some(revoked_at);
    h.control.import_tenant(&record).await.expect("import again");
    assert!(h.store.resolve_api_key(&revoked_secret).await.expect("resolve").is_none());
    let keys = h.control.list_api_keys(moved.id).await.expect("keys");
    assert_eq!(keys.len(), 2, "importing again adds no key");

    // Runs move as operator appends, content and chain intact.
    let op = h.control.operator_write_scope(moved.id).await.expect("operator scope");
    assert!(op.api_key().is_none(), "an operator scope carries no key");
    let log = SourceLog::new("moved-run", 5, "a", recent_base());
    let first = h.control.append(&op, &log.all()).await.expect("operator append");
    let again = h.control.append(&op, &log.all()).await.expect("operator re-append");
    assert_eq!((first.appended(), again.skipped()), (5, 5));
    let read = h.store.get_run(&scope.read(), &log.run_id).await.expect("read via the key");
    assert_eq!(read.info.head_hash, first.runs[0].head_hash);
    assert!(matches!(
        h.control.operator_write_scope(TenantId::new_random()).await,
        Err(Error::NotFound { .. })
    ));

    // Clashes: same id with other settings; another id with a name held here.
    let mut changed = record.clone();
    changed.tenant.retention_days = 8;
    match h.control.import_tenant(&changed).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "tenant"),
        other => panic!("{other:?}"),
    }
    let mut clash = record.clone();
    clash.tenant.id = TenantId::new_random();
    clash.keys.clear();
    match h.control.import_tenant(&clash).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "name"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(h.control.get_tenant(clash.tenant.id).await, Err(Error::NotFound { .. })));
}
