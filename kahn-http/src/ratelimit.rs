//! Per-tenant ingest limits: a rate (GCRA, via governor) charged by cost, and a cap on the
//! ingests one tenant may have in flight at once.
//!
//! A request costs one unit up front (before its body is read) and, once its body is parsed,
//! one unit per started [`RUNS_PER_UNIT`] runs or [`TRANSITIONS_PER_UNIT`] transitions,
//! whichever is more, minus the unit already paid. So a tenant's allowance of N units a second
//! is N ordinary pushes (one run, a 1 MiB chunk), but only N/100 requests of 10,000 runs each.
//!
//! The allowance is kept where every server on the store sees it: a store several servers can
//! serve (Postgres) charges it itself ([`StorageBackend::charge_ingest`], one statement at the
//! database's clock), so N servers allow a tenant its rate once, not N times, and the
//! `Retry-After` comes from that shared state. A store one process serves answers
//! [`Admission::NotShared`] and the allowance is kept here, in this process (governor's GCRA).
//! The cap of ingests in flight stays per process: it protects this server.
//!
//! [`StorageBackend::charge_ingest`]: kahn_core::StorageBackend::charge_ingest

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use kahn_core::{Admission, IngestQuota, TenantId, WriteScope};

use crate::error::ApiError;
use crate::state::AppState;

/// Runs per unit of ingest cost.
pub(crate) const RUNS_PER_UNIT: usize = 100;
/// Transitions per unit of ingest cost.
pub(crate) const TRANSITIONS_PER_UNIT: usize = 10_000;

/// The cost, in rate units, of a request naming `runs` runs and `transitions` transitions.
pub(crate) fn ingest_cost(runs: usize, transitions: usize) -> u32 {
    let units = runs.div_ceil(RUNS_PER_UNIT).max(transitions.div_ceil(TRANSITIONS_PER_UNIT)).max(1);
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// One keyed limiter for tenants at the default rate, one direct limiter per tenant with its
/// own rate, and the count of each tenant's ingests in flight.
pub(crate) struct IngestLimits {
    default: DefaultKeyedRateLimiter<TenantId>,
    default_burst: NonZeroU32,
    overrides: HashMap<TenantId, (DefaultDirectRateLimiter, NonZeroU32)>,
    in_flight: Mutex<HashMap<TenantId, usize>>,
    in_flight_cap: usize,
}

impl std::fmt::Debug for IngestLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestLimits")
            .field("overrides", &self.overrides.len())
            .field("in_flight_cap", &self.in_flight_cap)
            .finish()
    }
}

/// A tenant's ingest in flight; the count drops when it does.
pub(crate) struct InFlight<'a> {
    limits: &'a IngestLimits,
    tenant: TenantId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut map = self.limits.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.tenant);
            }
        }
    }
}

fn wait(not_until: &governor::NotUntil<<DefaultClock as Clock>::Instant>) -> Duration {
    not_until.wait_time_from(DefaultClock::default().now())
}

impl IngestLimits {
    pub(crate) fn new(
        default: NonZeroU32,
        overrides: &HashMap<TenantId, NonZeroU32>,
        in_flight_cap: usize,
    ) -> Self {
        Self {
            default: RateLimiter::keyed(Quota::per_second(default)),
            default_burst: default,
            overrides: overrides
                .iter()
                .map(|(t, rate)| (*t, (RateLimiter::direct(Quota::per_second(*rate)), *rate)))
                .collect(),
            in_flight: Mutex::new(HashMap::new()),
            in_flight_cap,
        }
    }

    /// The cap on one tenant's ingests in flight.
    pub(crate) fn in_flight_cap(&self) -> usize {
        self.in_flight_cap
    }

    /// Counts an ingest of `tenant` in flight, or `None` when it already has the cap.
    pub(crate) fn enter(&self, tenant: TenantId) -> Option<InFlight<'_>> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(tenant).or_insert(0);
        if *n >= self.in_flight_cap {
            return None;
        }
        *n += 1;
        Some(InFlight { limits: self, tenant })
    }

    /// `tenant`'s allowance: its override, else the default rate.
    pub(crate) fn quota(&self, tenant: TenantId) -> IngestQuota {
        IngestQuota::per_second(self.overrides.get(&tenant).map_or(self.default_burst, |(_, b)| *b))
    }

    /// Charges one unit of `tenant`'s allowance in this process, before a request's body is
    /// read: `Ok` when it may ingest now, else how long to wait.
    #[cfg(test)]
    pub(crate) fn charge_upfront(&self, tenant: TenantId) -> Result<(), Duration> {
        self.charge_local(tenant, 1)
    }

    /// Charges the rest of a request's `cost` in this process once its body is parsed (the
    /// unit paid up front deducted). A cost above the tenant's burst counts as the whole
    /// burst: the request passes only on a full allowance, and empties it.
    #[cfg(test)]
    pub(crate) fn charge_rest(&self, tenant: TenantId, cost: u32) -> Result<(), Duration> {
        self.charge_local(tenant, rest_of(cost, self.quota(tenant)))
    }

    /// Charges `units` of `tenant`'s allowance kept in this process.
    pub(crate) fn charge_local(&self, tenant: TenantId, units: u32) -> Result<(), Duration> {
        let Some(units) = NonZeroU32::new(units) else { return Ok(()) };
        let outcome = match self.overrides.get(&tenant) {
            Some((limiter, _)) => limiter.check_n(units),
            None => self.default.check_key_n(&tenant, units),
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(wait(&not_until)),
            // More than the burst: cannot happen (callers cap at the burst); wait a second.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Forgets tenants whose state is back to full, bounding memory.
    pub(crate) fn shrink(&self) {
        self.default.retain_recent();
        self.default.shrink_to_fit();
    }
}

/// What is left to charge of a request's `cost` once the unit paid up front is deducted, a cost
/// above the burst counting as the whole burst.
fn rest_of(cost: u32, quota: IngestQuota) -> u32 {
    cost.min(quota.burst().get()).saturating_sub(1)
}

/// Which part of a request's cost is charged.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Charge {
    /// One unit, before the body is read.
    Upfront,
    /// The rest of the request's whole cost, once its body is parsed.
    Rest(u32),
}

/// Charges the scope's tenant for an ingest: in the store when it keeps the allowance for
/// every server ([`Admission::Admitted`] / [`Admission::Refused`]), else in this process.
/// A refusal is 429 `rate_limited` with `Retry-After` (whole seconds, rounded up, at least 1).
///
/// # Errors
/// [`ApiError`] 429 when the allowance is spent; the store's error when it fails (503 when
/// it is unavailable).
pub(crate) async fn charge(
    state: &AppState,
    scope: &WriteScope,
    part: Charge,
) -> Result<(), ApiError> {
    let limits = &state.inner.limits;
    let tenant = scope.tenant();
    let quota = limits.quota(tenant);
    let units = match part {
        Charge::Upfront => 1,
        Charge::Rest(cost) => rest_of(cost, quota),
    };
    let Some(cost) = NonZeroU32::new(units) else { return Ok(()) };
    let wait = match state.inner.backend.charge_ingest(scope, cost, quota).await? {
        Admission::Admitted => return Ok(()),
        Admission::Refused { retry_after } => retry_after,
        Admission::NotShared => match limits.charge_local(tenant, units) {
            Ok(()) => return Ok(()),
            Err(wait) => wait,
        },
    };
    state.inner.metrics.rate_limited.inc();
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Err(ApiError::rate_limited(secs.max(1)))
}

/// Middleware: serves at most `max_requests_in_flight` requests to `/v1` and `/api` at once;
/// one more answers 503 with `Retry-After` at once rather than waiting in an unbounded queue.
/// Liveness, readiness, metrics and the viewer stay outside the cap.
pub(crate) async fn limit_in_flight(
    axum::extract::State(state): axum::extract::State<crate::state::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = request.uri().path();
    if !(path.starts_with("/v1/") || path.starts_with("/api/")) {
        return next.run(request).await;
    }
    match state.inner.in_flight.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => {
            state.inner.metrics.overloaded.inc();
            tracing::warn!(
                cap = state.inner.config.max_requests_in_flight,
                "request refused: the server is at its cap of requests in flight"
            );
            let mut response =
                crate::error::ApiError::service_unavailable(Duration::from_secs(1)).into_response();
            // The body (an upload, maybe) is left unread: close, so no client reuses the socket.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_counts_runs_and_transitions() {
        assert_eq!(ingest_cost(0, 0), 1);
        assert_eq!(ingest_cost(1, 5_000), 1);
        assert_eq!(ingest_cost(100, 100), 1);
        assert_eq!(ingest_cost(101, 101), 2);
        assert_eq!(ingest_cost(10_000, 10_000), 100);
        assert_eq!(ingest_cost(1, 14_000), 2);
    }

    #[test]
    fn in_flight_is_capped_per_tenant_and_released_on_drop() {
        let limits = IngestLimits::new(NonZeroU32::MIN, &HashMap::new(), 2);
        let (a, b) = (TenantId::new_random(), TenantId::new_random());
        let first = limits.enter(a).expect("1 of 2");
        let second = limits.enter(a).expect("2 of 2");
        assert!(limits.enter(a).is_none(), "a third is refused");
        let other = limits.enter(b).expect("another tenant is not affected");
        drop(first);
        let again = limits.enter(a).expect("a slot was released");
        drop((second, other, again));
        assert!(limits.in_flight.lock().expect("lock").is_empty(), "no tenant left behind");
    }

    #[test]
    fn a_costly_request_spends_the_allowance() {
        let rate = NonZeroU32::new(100).expect("not zero");
        let limits = IngestLimits::new(rate, &HashMap::new(), 4);
        let t = TenantId::new_random();
        assert!(limits.charge_upfront(t).is_ok());
        assert!(limits.charge_rest(t, 100).is_ok(), "the whole burst, upfront unit included");
        assert!(limits.charge_upfront(t).is_err(), "nothing left this instant");
        let u = TenantId::new_random();
        assert!(limits.charge_upfront(u).is_ok());
        assert!(limits.charge_rest(u, 1000).is_ok(), "capped at the burst");
        assert!(limits.charge_upfront(u).is_err(), "and the burst is spent");
        let v = TenantId::new_random();
        assert!(limits.charge_upfront(v).is_ok());
        assert!(limits.charge_rest(v, 1).is_ok(), "an ordinary request pays only upfront");
        assert!(limits.charge_upfront(v).is_ok(), "98 units left");
    }
}
