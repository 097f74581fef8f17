//! The records backends store and return.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::Error;
use crate::hash::Digest;
use crate::id::{ApiKeyId, OrgId, RunId, Seq, TenantId, validate_token};
use crate::secret::ApiKey;
use crate::transition::Labels;

/// Default retention of a tenant's runs, in days.
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

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
    /// Runs whose last activity is older than this are purged.
    pub retention_days: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
}

/// A request to create (or get, when the name exists) a tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTenant {
    name: String,
    owner_sub: Option<String>,
    org_id: Option<OrgId>,
    retention_days: u32,
}

impl NewTenant {
    /// A tenant named `name` with default settings.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `name` when empty, over 256 bytes, or holding whitespace.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        validate_token("name", &name)?;
        Ok(Self { name, owner_sub: None, org_id: None, retention_days: DEFAULT_RETENTION_DAYS })
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

    /// Links it to an organisation.
    pub fn with_org(mut self, org: OrgId) -> Self {
        self.org_id = Some(org);
        self
    }

    /// Sets its retention.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `retention_days` unless 1 ≤ days ≤ 36500.
    pub fn with_retention_days(mut self, days: u32) -> Result<Self, Error> {
        if !(1..=36_500).contains(&days) {
            return Err(Error::invalid("retention_days", "must be between 1 and 36500"));
        }
        self.retention_days = days;
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

    /// The organisation.
    pub fn org_id(&self) -> Option<&OrgId> {
        self.org_id.as_ref()
    }

    /// The retention in days.
    pub fn retention_days(&self) -> u32 {
        self.retention_days
    }

    /// The tenant this request creates: a fresh random id, created now.
    pub fn to_tenant(&self) -> Tenant {
        Tenant {
            id: TenantId::new_random(),
            name: self.name.clone(),
            owner_sub: self.owner_sub.clone(),
            airlock_org_id: self.org_id.clone(),
            retention_days: self.retention_days,
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
        if self.org_id.is_some() && self.org_id != existing.airlock_org_id {
            return Err(differs("org_id"));
        }
        if self.retention_days != DEFAULT_RETENTION_DAYS
            && self.retention_days != existing.retention_days
        {
            return Err(differs("retention_days"));
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
    /// When revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
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
    /// The `to` of the last transition.
    pub status: Option<String>,
    /// The earliest transition `ts`.
    pub first_ts: Option<DateTime<Utc>>,
    /// The latest transition `ts`.
    pub last_ts: Option<DateTime<Utc>>,
    /// When the store first saw the run.
    pub created_at: DateTime<Utc>,
}

impl RunInfo {
    /// Number of transitions stored.
    pub fn transition_count(&self) -> u64 {
        self.next_seq
    }

    /// The run's last activity: its latest transition `ts`, or its creation when it has none.
    /// Lists are ordered by it (newest first) and retention is measured from it.
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
    /// [`Error::InvalidInput`] naming `cursor` when it was not made by [`encode`](Self::encode).
    pub fn decode(s: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("cursor", "is not a cursor this server issued");
        let bytes = hex::decode(s).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, run) = text.split_once('|').ok_or_else(bad)?;
        Ok(Self {
            activity_micros: micros.parse().map_err(|_| bad())?,
            run_id: RunId::new(run).map_err(|_| bad())?,
        })
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
    /// Only runs whose status (last `to`) is this.
    pub status: Option<String>,
    /// Page size, 1 to [`MAX_PAGE_SIZE`].
    pub limit: u32,
    /// Continue after this position.
    pub cursor: Option<Cursor>,
}

impl Default for RunQuery {
    fn default() -> Self {
        Self { source: None, status: None, limit: DEFAULT_PAGE_SIZE, cursor: None }
    }
}

impl RunQuery {
    /// The limit, clamped to `1..=MAX_PAGE_SIZE`.
    pub fn effective_limit(&self) -> u32 {
        self.limit.clamp(1, MAX_PAGE_SIZE)
    }

    /// Whether `run` passes the filters (not the cursor).
    pub fn matches(&self, run: &RunInfo) -> bool {
        self.source.as_ref().is_none_or(|s| run.source.as_ref() == Some(s))
            && self.status.as_ref().is_none_or(|s| run.status.as_ref() == Some(s))
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
