//! The records backends store and return.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::admin::RetentionDays;
use crate::error::Error;
use crate::hash::Digest;
use crate::id::{ApiKeyId, OrgId, RunId, Seq, TenantId, validate_token};
use crate::secret::ApiKey;
use crate::status::{ClassCounts, NodeSummary, RunProgress, StateClass};
use crate::transition::Labels;

/// Default retention of a tenant's runs, in days (counted from each run's `received_at`).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// The name prefix of personal tenants created on first sign-in: `user:<sub>`.
pub const PERSONAL_TENANT_PREFIX: &str = "user:";

/// A tenant: the unit of isolation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its id.
    pub id: TenantId,
    /// Unique name.
    pub name: String,
    /// The JWT `sub` of the human whose personal tenant this is.
    pub owner_sub: Option<String>,
    /// The identity provider organisation linked to this tenant.
    pub airlock_org_id: Option<OrgId>,
    /// A run is purged once this many days have passed since its `received_at` (the last
    /// append that stored something for it).
    pub retention_days: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A request to create (or get, when the name exists) a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTenant {
    name: String,
    owner_sub: Option<String>,
    airlock_org_id: Option<OrgId>,
    /// `None`: not asked for (the default for a new tenant; any for an existing one).
    retention_days: Option<RetentionDays>,
}

impl NewTenant {
    /// A tenant named `name` with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `name` when empty, over 256 bytes, or holding whitespace.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        validate_token("name", &name)?;
        Ok(Self { name, owner_sub: None, airlock_org_id: None, retention_days: None })
    }

    /// The personal tenant of JWT subject `sub`: named `user:<sub>`, owned by `sub`, default
    /// retention. Created on first sign-in when no tenant matches the subject or its org.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `owner_sub` when `sub` is malformed, or `name` when
    /// `user:<sub>` is longer than 256 bytes.
    pub fn personal(sub: &str) -> Result<Self, Error> {
        Self::new(format!("{PERSONAL_TENANT_PREFIX}{sub}"))?.with_owner_sub(sub)
    }

    /// Makes it the personal tenant of JWT subject `sub`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `owner_sub` when malformed.
    pub fn with_owner_sub(mut self, sub: impl Into<String>) -> Result<Self, Error> {
        let sub = sub.into();
        validate_token("owner_sub", &sub)?;
        self.owner_sub = Some(sub);
        Ok(self)
    }

    /// Links it to an identity provider organisation ([`Tenant::airlock_org_id`]).
    pub fn with_airlock_org_id(mut self, org: OrgId) -> Self {
        self.airlock_org_id = Some(org);
        self
    }

    /// Sets its retention explicitly. Provisioning an existing tenant with an explicit
    /// retention that differs from its own is refused (change it with
    /// [`TenantChange::retention_days`](crate::TenantChange::retention_days)).
    ///
    /// # Errors
    /// As [`RetentionDays::new`]: unless 1 ≤ days ≤ 36500.
    pub fn with_retention_days(mut self, days: u32) -> Result<Self, Error> {
        self.retention_days = Some(RetentionDays::new(days)?);
        Ok(self)
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The owner's subject.
    pub fn owner_sub(&self) -> Option<&str> {
        self.owner_sub.as_deref()
    }

    /// The organisation it is linked to ([`Tenant::airlock_org_id`]).
    pub fn airlock_org_id(&self) -> Option<&OrgId> {
        self.airlock_org_id.as_ref()
    }

    /// The retention in days a new tenant gets: the explicit one, else
    /// [`DEFAULT_RETENTION_DAYS`].
    pub fn retention_days(&self) -> u32 {
        self.retention_days.map_or(DEFAULT_RETENTION_DAYS, RetentionDays::get)
    }

    /// The retention asked for explicitly, if any.
    pub fn explicit_retention_days(&self) -> Option<u32> {
        self.retention_days.map(RetentionDays::get)
    }

    /// The tenant this request creates: a fresh random id, created now.
    pub fn to_tenant(&self) -> Tenant {
        Tenant {
            id: TenantId::new_random(),
            name: self.name.clone(),
            owner_sub: self.owner_sub.clone(),
            airlock_org_id: self.airlock_org_id.clone(),
            retention_days: self.retention_days(),
            created_at: crate::rules::truncate_micros(chrono::Utc::now()),
        }
    }

    /// Checks that an existing tenant of the same name matches this request, so provisioning
    /// is idempotent but never silently ignores a different setting.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the first setting that differs.
    pub fn check_matches(&self, existing: &Tenant) -> Result<(), Error> {
        let differs = |field: &str| {
            Error::invalid(
                field,
                format!("tenant {:?} already exists with a different {field}", self.name),
            )
        };
        if self.owner_sub.is_some() && self.owner_sub != existing.owner_sub {
            return Err(differs("owner_sub"));
        }
        if self.airlock_org_id.is_some() && self.airlock_org_id != existing.airlock_org_id {
            return Err(differs("airlock_org_id"));
        }
        if let Some(days) = self.explicit_retention_days()
            && days != existing.retention_days
        {
            return Err(Error::invalid(
                "retention_days",
                format!(
                    "tenant {:?} already exists with retention {} days, not {days}; \
                     change it with `kahn tenant set-retention {} {days}`",
                    self.name, existing.retention_days, self.name
                ),
            ));
        }
        Ok(())
    }
}

/// A tenant with its run count, for admins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSummary {
    /// The tenant.
    #[serde(flatten)]
    pub tenant: Tenant,
    /// How many runs it holds.
    pub run_count: u64,
}

/// A freshly issued API key: the only time its secret is available.
#[derive(Clone, Debug)]
pub struct IssuedApiKey {
    /// The key's public id.
    pub id: ApiKeyId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// The secret, shown once.
    pub secret: ApiKey,
}

/// What is stored of an API key (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyInfo {
    /// The key's public id.
    pub id: ApiKeyId,
    /// Its tenant.
    pub tenant_id: TenantId,
    /// When issued.
    pub created_at: DateTime<Utc>,
    /// When it stops resolving, if it expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request, recorded at most about once a minute
    /// ([`KEY_USE_RECORD_INTERVAL`]); `None` when never used.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// How often at most a key's `last_used_at` is written: authenticating is a read, and a busy
/// producer's key must not turn every request into a write.
pub const KEY_USE_RECORD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Where a key stands at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiKeyState {
    /// It resolves.
    Active,
    /// Its expiry has passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl ApiKeyState {
    /// The lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ApiKeyState::Active => "active",
            ApiKeyState::Expired => "expired",
            ApiKeyState::Revoked => "revoked",
        }
    }
}

impl ApiKeyInfo {
    /// Where the key stands at `now`: revoked wins over expired.
    pub fn state(&self, now: DateTime<Utc>) -> ApiKeyState {
        if self.revoked_at.is_some_and(|r| r <= now) {
            ApiKeyState::Revoked
        } else if self.expires_at.is_some_and(|e| e <= now) {
            ApiKeyState::Expired
        } else {
            ApiKeyState::Active
        }
    }

    /// Whether the key resolves at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.state(now) == ApiKeyState::Active
    }
}

/// A store's connection pool at one moment ([`StorageBackend::pool_status`]).
///
/// [`StorageBackend::pool_status`]: crate::StorageBackend::pool_status
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStatus {
    /// Connections open now.
    pub open: u32,
    /// Of those, idle.
    pub idle: u32,
    /// The most the pool opens.
    pub max: u32,
}

impl PoolStatus {
    /// A pool with `open` connections, `idle` of them idle, at most `max`.
    pub fn new(open: u32, idle: u32, max: u32) -> Self {
        Self { open, idle: idle.min(open), max }
    }
}

/// A run as listed: everything but the graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run.
    pub run_id: RunId,
    /// The producer, once set.
    pub source: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// The next seq to append: also the number of transitions stored.
    pub next_seq: u64,
    /// The last link of the hash chain ([`Digest::ZERO`] for a run with no transitions).
    pub head_hash: Digest,
    /// The run's status (DESIGN.md "Run status and durations"): the `to` of its latest
    /// run-level transition when it has one, otherwise derived from its nodes' latest states;
    /// `pending` for a run with neither. Maintained at append time.
    pub status: String,
    /// The class of [`status`](Self::status).
    pub status_class: StateClass,
    /// How many of the run's nodes are in each class, by their latest state.
    pub node_counts: ClassCounts,
    /// The first transition's `ts`.
    pub started_at: Option<DateTime<Utc>>,
    /// The `ts` of the transition that made the status terminal; `None` while it is not.
    pub ended_at: Option<DateTime<Utc>>,
    /// The earliest transition `ts`.
    pub first_ts: Option<DateTime<Utc>>,
    /// The latest transition `ts`.
    pub last_ts: Option<DateTime<Utc>>,
    /// When the store first saw the run.
    pub created_at: DateTime<Utc>,
    /// The store's clock at the last append that stored something for the run: retention
    /// counts from it, never from the producer's `ts`.
    pub received_at: DateTime<Utc>,
}

impl RunInfo {
    /// A run the store has just seen, at `created_at`: no transitions, status `pending`.
    pub fn new(run_id: RunId, created_at: DateTime<Utc>) -> Self {
        let progress = RunProgress::default();
        Self {
            run_id,
            source: None,
            labels: Labels::new(),
            next_seq: 0,
            head_hash: Digest::ZERO,
            status: progress.status().to_owned(),
            status_class: progress.status_class(),
            node_counts: progress.counts,
            started_at: None,
            ended_at: None,
            first_ts: None,
            last_ts: None,
            created_at,
            received_at: created_at,
        }
    }

    /// Number of transitions stored.
    pub fn transition_count(&self) -> u64 {
        self.next_seq
    }

    /// `ended_at - started_at`, once the run has ended.
    pub fn duration(&self) -> Option<chrono::Duration> {
        Some(self.ended_at? - self.started_at?)
    }

    /// Sets the derived fields from the run's progress.
    pub fn set_progress(&mut self, progress: &RunProgress) {
        self.status = progress.status().to_owned();
        self.status_class = progress.status_class();
        self.node_counts = progress.counts;
        self.started_at = progress.started_at;
        self.ended_at = progress.ended_at;
    }

    /// The run's last activity: its latest transition `ts`, or its creation when it has none.
    /// Lists are ordered by it (newest first). Retention is not: it counts from
    /// [`received_at`](Self::received_at).
    pub fn activity_at(&self) -> DateTime<Utc> {
        self.last_ts.unwrap_or(self.created_at)
    }
}

/// A run with its graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Everything listed.
    #[serde(flatten)]
    pub info: RunInfo,
    /// The DAG, once set.
    pub graph: Option<Value>,
    /// Every node's summary (state, times, attempts), in node order: maintained at append
    /// time, so reading it never reads the run's transitions.
    pub nodes: Vec<NodeSummary>,
}

/// A stored transition, as read back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredTransition {
    /// Its seq.
    pub seq: Seq,
    /// Its body (canonical: keys sorted).
    pub body: Map<String, Value>,
    /// SHA-256 of the body's canonical form.
    pub content_hash: Digest,
    /// The chain link up to and including this transition.
    pub chain_hash: Digest,
}

/// Default page size of [`RunQuery`].
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page size of [`RunQuery`] and of a transitions read.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The earliest activity time (µs since the epoch) a cursor may carry: -0001-12-30T00:00:00Z,
/// a day before the earliest RFC 3339 instant (0000-01-01T00:00:00+23:59). Every timestamp a
/// run can hold — an RFC 3339 `ts`, or a server clock's `created_at` — lies within
/// [`MIN_CURSOR_MICROS`]..=[`MAX_CURSOR_MICROS`], and so does every cursor a backend issues;
/// every backend can represent the whole range (PostgreSQL's `timestamptz` stops at 4713 BC
/// and 294276 AD).
pub const MIN_CURSOR_MICROS: i64 = -62_167_392_000_000_000;
/// The latest activity time (µs since the epoch) a cursor may carry: 10000-01-03T00:00:00Z,
/// a day after the latest RFC 3339 instant (9999-12-31T23:59:60.999999999-23:59). See
/// [`MIN_CURSOR_MICROS`].
pub const MAX_CURSOR_MICROS: i64 = 253_402_473_600_000_000;

/// Opaque position in a run listing: the last run of the previous page.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor {
    activity_micros: i64,
    run_id: RunId,
}

impl Cursor {
    /// The cursor that continues after `run`.
    pub fn after(run: &RunInfo) -> Self {
        Self { activity_micros: run.activity_at().timestamp_micros(), run_id: run.run_id.clone() }
    }

    /// The activity time (µs since the epoch) of the last run listed.
    pub fn activity_micros(&self) -> i64 {
        self.activity_micros
    }

    /// The id of the last run listed.
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// The opaque text form.
    pub fn encode(&self) -> String {
        hex::encode(format!("{}|{}", self.activity_micros, self.run_id))
    }

    /// Reads the opaque text form.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `cursor` when it was not made by [`encode`](Self::encode):
    /// not hex, not `MICROS|RUN_ID`, or a time outside
    /// [`MIN_CURSOR_MICROS`]..=[`MAX_CURSOR_MICROS`] (no run can have one).
    pub fn decode(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("cursor", "is not a cursor this server issued");
        let bytes = hex::decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, run) = text.split_once('|').ok_or_else(bad)?;
        let cursor = Self {
            activity_micros: micros.parse().map_err(|_| bad())?,
            run_id: RunId::new(run).map_err(|_| bad())?,
        };
        cursor.check_range()?;
        Ok(cursor)
    }

    /// Refuses a time no run can have (see [`MIN_CURSOR_MICROS`]).
    fn check_range(&self) -> Result<(), Error> {
        if (MIN_CURSOR_MICROS..=MAX_CURSOR_MICROS).contains(&self.activity_micros) {
            Ok(())
        } else {
            Err(Error::invalid(
                "cursor",
                "is not a cursor this server issued (its time is outside years 0000 to 9999)",
            ))
        }
    }

    /// Whether `run` comes after this cursor in listing order (activity descending, then run
    /// id ascending).
    pub fn precedes(&self, run: &RunInfo) -> bool {
        let t = run.activity_at().timestamp_micros();
        t < self.activity_micros || (t == self.activity_micros && run.run_id > self.run_id)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Cursor::decode(&s).map_err(serde::de::Error::custom)
    }
}

/// Which runs to list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunQuery {
    /// Only runs with this source.
    pub source: Option<String>,
    /// Only runs whose status (see [`RunInfo::status`]) is this.
    pub status: Option<String>,
    /// Only runs whose id starts with this (1 to [`RUN_ID_MAX_LEN`] characters of the run id
    /// alphabet).
    ///
    /// [`RUN_ID_MAX_LEN`]: crate::RUN_ID_MAX_LEN
    pub run_id_prefix: Option<String>,
    /// Only runs with at least one node whose latest state is of this class (e.g. the running
    /// runs where something already failed).
    pub node_class: Option<StateClass>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
}

impl Default for RunQuery {
    fn default() -> Self {
        Self {
            source: None,
            status: None,
            run_id_prefix: None,
            node_class: None,
            limit: DEFAULT_PAGE_SIZE,
            cursor: None,
        }
    }
}

impl RunQuery {
    /// The limit, clamped to `1..=MAX_PAGE_SIZE`.
    pub fn effective_limit(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }

    /// Checks the query by the rules its fields follow at ingest, so every backend refuses
    /// the same queries the same way (and none reaches a database that cannot represent it):
    /// `source` as a run's `source` (1–256 bytes, no whitespace or control characters),
    /// `status` as a transition's `to` (not empty), `run_id_prefix` as the start of a run id
    /// (1–200 characters of `[A-Za-z0-9._:-]`), the cursor's time within
    /// [`MIN_CURSOR_MICROS`]..=[`MAX_CURSOR_MICROS`]. Every [`StorageBackend::list_runs`]
    /// calls it first.
    ///
    /// [`StorageBackend::list_runs`]: crate::StorageBackend::list_runs
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `source`, `status`, `run_id_prefix` or `cursor`.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(source) = &self.source {
            validate_token("source", source)?;
        }
        if self.status.as_deref().is_some_and(str::is_empty) {
            return Err(Error::invalid("status", "must not be empty"));
        }
        if let Some(prefix) = &self.run_id_prefix {
            let bad = prefix
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')));
            if prefix.is_empty() || prefix.len() > crate::RUN_ID_MAX_LEN {
                return Err(Error::invalid(
                    "run_id_prefix",
                    format!("must be 1 to {} characters", crate::RUN_ID_MAX_LEN),
                ));
            }
            if let Some(bad) = bad {
                return Err(Error::invalid(
                    "run_id_prefix",
                    format!("contains {bad:?}; run ids hold only A-Z a-z 0-9 . _ : -"),
                ));
            }
        }
        if let Some(cursor) = &self.cursor {
            cursor.check_range()?;
        }
        Ok(())
    }

    /// Whether `run` passes the filters (not the cursor).
    pub fn matches(&self, run: &RunInfo) -> bool {
        self.source.as_ref().is_none_or(|s| run.source.as_ref() == Some(s))
            && self.status.as_ref().is_none_or(|s| run.status == *s)
            && self
                .run_id_prefix
                .as_ref()
                .is_none_or(|p| run.run_id.as_str().starts_with(p.as_str()))
            && self.node_class.is_none_or(|c| run.node_counts.get(c) > 0)
    }
}

/// A page of runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPage {
    /// Runs, newest activity first.
    pub runs: Vec<RunInfo>,
    /// Present when more runs may follow: pass it back in [`RunQuery::cursor`].
    pub next_cursor: Option<Cursor>,
}

/// What one append did to one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunAppendReport {
    /// The run.
    pub run_id: RunId,
    /// Transitions newly stored.
    pub appended: u64,
    /// Transitions already stored with the same content.
    pub skipped: u64,
    /// The run's next seq after the append.
    pub next_seq: u64,
    /// The run's head hash after the append.
    pub head_hash: Digest,
    /// The signed receipt for the run's new head, when the store issues them (a KAHN server
    /// started with a receipt key, for a run this append stored something in); `None` from a
    /// database, which holds no signing key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<crate::receipt::Envelope>,
}

/// What one append did, per run, in batch order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReport {
    /// One entry per run of the batch.
    pub runs: Vec<RunAppendReport>,
}

impl AppendReport {
    /// Transitions newly stored, over all runs.
    pub fn appended(&self) -> u64 {
        self.runs.iter().map(|r| r.appended).sum()
    }

    /// Duplicates skipped, over all runs.
    pub fn skipped(&self) -> u64 {
        self.runs.iter().map(|r| r.skipped).sum()
    }
}

/// What a retention purge removed from one tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeReport {
    /// The tenant.
    pub tenant_id: TenantId,
    /// Runs removed.
    pub runs_removed: u64,
    /// Transitions removed with them.
    pub transitions_removed: u64,
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    fn forged(micros: i64, run: &str) -> String {
        hex::encode(format!("{micros}|{run}"))
    }

    #[test]
    fn the_cursor_range_holds_every_rfc3339_instant_with_a_day_to_spare() {
        let micros = |s: &str| {
            DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc).timestamp_micros())
        };
        let earliest = micros("0000-01-01T00:00:00+23:59").unwrap();
        let latest = micros("9999-12-31T23:59:60.999999999-23:59").unwrap();
        assert_eq!(micros("-0001-12-30T00:00:00Z").ok(), None, "RFC 3339 has no negative years");
        let day = 86_400_000_000;
        assert!(MIN_CURSOR_MICROS < earliest && earliest - MIN_CURSOR_MICROS < 2 * day);
        assert!(latest < MAX_CURSOR_MICROS && MAX_CURSOR_MICROS - latest < 2 * day);
        assert_eq!(
            DateTime::<Utc>::from_timestamp_micros(MAX_CURSOR_MICROS).map(|t| t.to_rfc3339()),
            Some("+10000-01-03T00:00:00+00:00".to_owned())
        );
        assert_eq!(
            DateTime::<Utc>::from_timestamp_micros(MIN_CURSOR_MICROS).map(|t| t.to_rfc3339()),
            Some("-0001-12-30T00:00:00+00:00".to_owned())
        );
        for edge in [MIN_CURSOR_MICROS, 0, MAX_CURSOR_MICROS] {
            let c = Cursor::decode(&forged(edge, "r")).expect("in range");
            assert_eq!(c.activity_micros(), edge);
        }
    }

    #[test]
    fn a_cursor_whose_time_no_run_can_have_is_refused_naming_the_cursor() {
        // The red team's forged cursor: PostgreSQL cannot represent its time (a 500 there).
        for micros in [
            -8_000_000_000_000_000_000,
            MIN_CURSOR_MICROS - 1,
            MAX_CURSOR_MICROS + 1,
            i64::MIN,
            i64::MAX,
        ] {
            match Cursor::decode(&forged(micros, "x")) {
                Err(Error::InvalidInput { field, message }) => {
                    assert_eq!(field, "cursor");
                    assert!(message.contains("outside"), "{message}");
                }
                other => panic!("{micros}: {other:?}"),
            }
        }
        let junk = ["", "zz", &hex::encode("12"), &hex::encode("1|a b"), &hex::encode("1e3|r")];
        for junk in junk.map(str::to_owned) {
            assert!(
                matches!(&Cursor::decode(&junk), Err(Error::InvalidInput { field, .. }) if field == "cursor"),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn run_queries_follow_the_ingest_rules_of_their_fields() {
        let refused = |q: RunQuery| match q.validate() {
            Err(Error::InvalidInput { field, .. }) => field,
            other => panic!("{q:?}: {other:?}"),
        };
        let source = |s: &str| RunQuery { source: Some(s.into()), ..RunQuery::default() };
        for bad in ["\0", "a\0b", "", "a b", "tab\t", &"s".repeat(257), "\u{7f}"] {
            assert_eq!(refused(source(bad)), "source", "{bad:?}");
            // The same string is refused as a run's source at ingest.
            assert!(crate::RunMeta::new().with_source(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            refused(RunQuery { status: Some(String::new()), ..RunQuery::default() }),
            "status"
        );
        // A cursor made by hand from a run whose time no store can hold.
        let mut info = RunInfo::new(RunId::new("r").unwrap(), DateTime::<Utc>::MAX_UTC);
        let far = RunQuery { cursor: Some(Cursor::after(&info)), ..RunQuery::default() };
        assert_eq!(refused(far), "cursor");
        info.created_at = Utc::now();
        let ok = RunQuery {
            run_id_prefix: Some("nightly-4".into()),
            node_class: Some(crate::StateClass::Failed),
            source: Some("choco".into()),
            // `to` may hold any non-empty text, NUL included; so may the filter.
            status: Some("failed \0 ✓".into()),
            cursor: Some(Cursor::after(&info)),
            limit: 5,
        };
        assert!(ok.validate().is_ok());
        assert!(RunQuery::default().validate().is_ok());
    }
}
