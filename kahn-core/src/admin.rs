//! Control-plane requests: what operators ask of a store beyond appending and reading —
//! retention purges, tenant changes, key lifetimes, and moving a tenant between stores.
//!
//! Every request is validated when it is built, so a backend receives only requests it can
//! carry out as they are: no zero retention, no expiry in the past, no empty name.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::id::{ApiKeyId, OrgId, TenantId, validate_token};
use crate::model::{ApiKeyInfo, PurgeReport, Tenant};
use crate::rules::truncate_micros;
use crate::secret::ApiKeyHash;

/// Fewest retention days a tenant may have.
pub const MIN_RETENTION_DAYS: u32 = 1;
/// Most retention days a tenant may have (a hundred years).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

/// A validated retention: 1 to 36,500 days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct RetentionDays(u32);

impl RetentionDays {
    /// `days`, when within [`MIN_RETENTION_DAYS`]..=[`MAX_RETENTION_DAYS`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `retention_days` otherwise.
    pub fn new(days: u32) -> Result<Self, Error> {
        if (MIN_RETENTION_DAYS..=MAX_RETENTION_DAYS).contains(&days) {
            Ok(Self(days))
        } else {
            Err(Error::invalid(
                "retention_days",
                format!(
                    "must be between {MIN_RETENTION_DAYS} and {MAX_RETENTION_DAYS} days, not {days}"
                ),
            ))
        }
    }

    /// The number of days.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The retention as a duration.
    pub fn duration(self) -> Duration {
        Duration::days(i64::from(self.0))
    }
}

impl TryFrom<u32> for RetentionDays {
    type Error = Error;
    fn try_from(days: u32) -> Result<Self, Error> {
        Self::new(days)
    }
}

impl From<RetentionDays> for u32 {
    fn from(d: RetentionDays) -> u32 {
        d.0
    }
}

/// Whether a run received at `received_at` is past a retention of `days` at `now`: its
/// `received_at + days` has passed (strictly). The one definition every backend follows.
pub fn is_expired(received_at: DateTime<Utc>, days: u32, now: DateTime<Utc>) -> bool {
    received_at
        .checked_add_signed(Duration::days(i64::from(days)))
        .is_some_and(|expiry| expiry < now)
}

/// Which runs a purge removes: those whose `received_at + retention_days` has passed at the
/// request's instant, of every tenant or one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PurgeRequest {
    as_of: Option<DateTime<Utc>>,
    tenant: Option<TenantId>,
    dry_run: bool,
}

impl PurgeRequest {
    /// A purge at the store's own clock (on Postgres, the database's `now()`): the only kind
    /// the app role may run.
    pub fn at_store_clock() -> Self {
        Self::default()
    }

    /// A purge as of `instant` instead of the store's clock: for operators (tests, a planned
    /// purge); Postgres refuses it under the app role.
    pub fn as_of(instant: DateTime<Utc>) -> Self {
        Self { as_of: Some(truncate_micros(instant)), ..Self::default() }
    }

    /// Only `tenant`'s runs.
    #[must_use]
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Report what would be removed; remove nothing.
    #[must_use]
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// The instant the purge counts at, or `None` for the store's clock.
    pub fn instant(&self) -> Option<DateTime<Utc>> {
        self.as_of
    }

    /// The one tenant purged, or `None` for all.
    pub fn tenant(&self) -> Option<TenantId> {
        self.tenant
    }

    /// Whether nothing is removed.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The instant to use: the request's, or `clock` for the store's own.
    pub fn instant_or(&self, clock: DateTime<Utc>) -> DateTime<Utc> {
        self.as_of.unwrap_or(clock)
    }
}

/// What a purge did: per tenant that lost anything (or would, on a dry run), what went, and
/// per tenant whose purge failed, why. Tenants are purged independently, so one tenant's
/// failure neither undoes nor hides the others' purges.
#[derive(Debug, Default)]
pub struct PurgeOutcome {
    /// One report per tenant that lost (or would lose) at least one run, by tenant id.
    pub reports: Vec<PurgeReport>,
    /// Tenants whose purge failed; nothing of theirs was removed.
    pub failures: Vec<PurgeFailure>,
}

impl PurgeOutcome {
    /// Runs removed over all tenants.
    pub fn runs_removed(&self) -> u64 {
        self.reports.iter().map(|r| r.runs_removed).sum()
    }

    /// Transitions removed over all tenants.
    pub fn transitions_removed(&self) -> u64 {
        self.reports.iter().map(|r| r.transitions_removed).sum()
    }

    /// The report of `tenant`, if it lost anything.
    pub fn report_for(&self, tenant: TenantId) -> Option<&PurgeReport> {
        self.reports.iter().find(|r| r.tenant_id == tenant)
    }
}

/// A tenant whose purge failed.
#[derive(Debug)]
pub struct PurgeFailure {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Why.
    pub error: Error,
}

/// One change to a tenant's settings, validated when built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TenantChange {
    /// A new unique name.
    Rename(String),
    /// A new retention; it applies at the next purge, to runs already stored too.
    Retention(RetentionDays),
    /// Link an organisation (the tenant of everyone signing in with that `org_id`).
    LinkOrg(OrgId),
    /// Unlink the organisation, if any.
    UnlinkOrg,
}

impl TenantChange {
    /// Rename to `name` (the rules of [`NewTenant::new`](crate::NewTenant::new)).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `name` when empty, over 256 bytes, or holding
    /// whitespace or control characters.
    pub fn rename(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        validate_token("name", &name)?;
        Ok(Self::Rename(name))
    }

    /// Set the retention to `days`.
    ///
    /// # Errors
    /// As [`RetentionDays::new`].
    pub fn retention_days(days: u32) -> Result<Self, Error> {
        RetentionDays::new(days).map(Self::Retention)
    }

    /// Applies the change to `tenant` in memory (backends that hold tenants as values use it;
    /// uniqueness of names and orgs is theirs to check).
    pub fn apply(&self, tenant: &mut Tenant) {
        match self {
            TenantChange::Rename(name) => tenant.name.clone_from(name),
            TenantChange::Retention(days) => tenant.retention_days = days.get(),
            TenantChange::LinkOrg(org) => tenant.airlock_org_id = Some(org.clone()),
            TenantChange::UnlinkOrg => tenant.airlock_org_id = None,
        }
    }
}

/// Which keys a new key retires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetiredKeys {
    /// Every other key of the tenant that is active when the new one is issued.
    AllActive,
    /// This one key, which must be active.
    One(ApiKeyId),
}

/// A request for a new API key: its own lifetime, and which keys it replaces and when they
/// stop working. Issuing and retiring happen in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewApiKey {
    expires_at: Option<DateTime<Utc>>,
    retire: Option<(RetiredKeys, Option<DateTime<Utc>>)>,
}

/// The longest lifetime or grace period a key request may ask for (a hundred years).
const MAX_KEY_SPAN_DAYS: i64 = 36_500;

fn future_instant(field: &'static str, after: Duration) -> Result<DateTime<Utc>, Error> {
    if after <= Duration::zero() {
        return Err(Error::invalid(field, "must be a positive duration (an expiry in the future)"));
    }
    if after > Duration::days(MAX_KEY_SPAN_DAYS) {
        return Err(Error::invalid(field, "must be at most 36500 days"));
    }
    Ok(truncate_micros(Utc::now() + after))
}

impl NewApiKey {
    /// A key that never expires and retires nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key stops resolving `lifetime` from now.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `expires_in` unless the lifetime is positive and at most
    /// 36,500 days: an expiry in the past is refused.
    pub fn expires_in(mut self, lifetime: Duration) -> Result<Self, Error> {
        self.expires_at = Some(future_instant("expires_in", lifetime)?);
        Ok(self)
    }

    /// The key stops resolving at `instant`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `expires_at` when `instant` is not in the future.
    pub fn expires_at(mut self, instant: DateTime<Utc>) -> Result<Self, Error> {
        if instant <= Utc::now() {
            return Err(Error::invalid("expires_at", "is in the past; give a future instant"));
        }
        self.expires_at = Some(truncate_micros(instant));
        Ok(self)
    }

    /// Retires `keys` at once: they are revoked in the transaction that issues this key.
    pub fn retiring(mut self, keys: RetiredKeys) -> Self {
        self.retire = Some((keys, None));
        self
    }

    /// Retires `keys` after `grace`: they keep working until then (a key already expiring
    /// sooner keeps its earlier expiry), so producers roll over without an outage.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `grace` unless it is positive and at most 36,500 days.
    pub fn retiring_after(mut self, keys: RetiredKeys, grace: Duration) -> Result<Self, Error> {
        self.retire = Some((keys, Some(future_instant("grace", grace)?)));
        Ok(self)
    }

    /// When the new key expires, if ever.
    pub fn expiry(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// Which keys are retired, and when they stop working (`None`: revoked at once).
    pub fn retirement(&self) -> Option<(RetiredKeys, Option<DateTime<Utc>>)> {
        self.retire
    }
}

/// An API key as moved between stores: what is stored of it, hash included (never the
/// secret, which no store has).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// What is stored of the key.
    pub info: ApiKeyInfo,
    /// The hash a presented key is looked up by.
    pub hash: ApiKeyHash,
}

/// A tenant as moved between stores: its settings and its keys. Runs move as appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantRecord {
    /// The tenant, id included.
    pub tenant: Tenant,
    /// Its keys, active and not.
    pub keys: Vec<ApiKeyRecord>,
}

impl TenantRecord {
    /// Checks the record holds only keys of its own tenant, each once.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `keys` otherwise.
    pub fn check_keys(&self) -> Result<(), Error> {
        let (mut hashes, mut ids) =
            (std::collections::HashSet::new(), std::collections::HashSet::new());
        for k in &self.keys {
            if k.info.tenant_id != self.tenant.id {
                return Err(Error::invalid("keys", "the record holds a key of another tenant"));
            }
            if !hashes.insert(k.hash) || !ids.insert(k.info.id) {
                return Err(Error::invalid("keys", "the record holds a key twice"));
            }
        }
        Ok(())
    }
}

/// Decides, per key, when an authentication should record `last_used_at`: the first use seen
/// by this process, then at most once per [`KEY_USE_RECORD_INTERVAL`]. Adapters keep one and
/// write the time off the request's path, so authenticating stays a read.
///
/// [`KEY_USE_RECORD_INTERVAL`]: crate::KEY_USE_RECORD_INTERVAL
#[derive(Debug, Default)]
pub struct KeyUseThrottle {
    last: std::sync::Mutex<std::collections::HashMap<ApiKeyHash, std::time::Instant>>,
}

impl KeyUseThrottle {
    /// A throttle that has seen no use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a use of `key` now should be recorded; when it should, the use counts as
    /// recorded from now on.
    pub fn due(&self, key: &ApiKeyHash) -> bool {
        let now = std::time::Instant::now();
        // A poisoned map only means a panic elsewhere mid-insert; the map is still usable.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(key) {
            Some(t) if now.duration_since(*t) < crate::model::KEY_USE_RECORD_INTERVAL => false,
            _ => {
                last.insert(*key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_days_refuse_zero_and_beyond_a_century_naming_the_field() {
        for bad in [0, 36_501, u32::MAX] {
            match RetentionDays::new(bad) {
                Err(Error::InvalidInput { field, message }) => {
                    assert_eq!(field, "retention_days");
                    assert!(message.contains(&bad.to_string()), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert_eq!(RetentionDays::new(1).map(RetentionDays::get).ok(), Some(1));
        assert_eq!(RetentionDays::new(36_500).map(RetentionDays::get).ok(), Some(36_500));
        assert!(serde_json::from_str::<RetentionDays>("0").is_err());
    }

    #[test]
    fn expiry_is_strictly_after_the_retention() {
        let r = Utc::now();
        assert!(!is_expired(r, 1, r + Duration::days(1)), "at the boundary: kept");
        assert!(is_expired(r, 1, r + Duration::days(1) + Duration::microseconds(1)));
        assert!(!is_expired(DateTime::<Utc>::MAX_UTC, 1, DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn key_requests_refuse_an_expiry_or_grace_in_the_past() {
        let field = |r: Result<NewApiKey, Error>| match r {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(NewApiKey::new().expires_in(Duration::zero())), "expires_in");
        assert_eq!(field(NewApiKey::new().expires_in(Duration::days(-1))), "expires_in");
        assert_eq!(field(NewApiKey::new().expires_in(Duration::days(40_000))), "expires_in");
        assert_eq!(
            field(NewApiKey::new().expires_at(Utc::now() - Duration::hours(1))),
            "expires_at"
        );
        assert_eq!(
            field(NewApiKey::new().retiring_after(RetiredKeys::AllActive, Duration::seconds(-5))),
            "grace"
        );
        let ok = NewApiKey::new().expires_in(Duration::hours(1)).expect("future");
        assert!(ok.expiry().is_some_and(|t| t > Utc::now()));
        assert_eq!(ok.retirement(), None);
    }

    #[test]
    fn a_key_use_is_recorded_once_per_interval() {
        let t = KeyUseThrottle::new();
        let a = crate::ApiKey::generate().expect("random").hash();
        let b = crate::ApiKey::generate().expect("random").hash();
        assert!(t.due(&a), "first use is recorded");
        assert!(!t.due(&a), "a second use within the interval is not");
        assert!(t.due(&b), "keys are throttled independently");
    }

    #[test]
    fn tenant_changes_are_validated_and_apply() {
        assert!(matches!(TenantChange::rename("a b"), Err(Error::InvalidInput { .. })));
        assert!(matches!(TenantChange::retention_days(0), Err(Error::InvalidInput { .. })));
        let mut t = crate::NewTenant::new("x").expect("valid").to_tenant();
        TenantChange::rename("y").expect("valid").apply(&mut t);
        TenantChange::retention_days(7).expect("valid").apply(&mut t);
        assert_eq!((t.name.as_str(), t.retention_days), ("y", 7));
    }
}
