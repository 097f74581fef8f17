//! Per-tenant ingest rate limits (GCRA, via governor).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use kahn_core::TenantId;

/// One keyed limiter for tenants at the default rate, one direct limiter per tenant with its
/// own rate.
pub(crate) struct IngestLimits {
    default: DefaultKeyedRateLimiter<TenantId>,
    overrides: HashMap<TenantId, DefaultDirectRateLimiter>,
}

impl std::fmt::Debug for IngestLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestLimits").field("overrides", &self.overrides.len()).finish()
    }
}

impl IngestLimits {
    pub(crate) fn new(default: NonZeroU32, overrides: &HashMap<TenantId, NonZeroU32>) -> Self {
        Self {
            default: RateLimiter::keyed(Quota::per_second(default)),
            overrides: overrides
                .iter()
                .map(|(t, rate)| (*t, RateLimiter::direct(Quota::per_second(*rate))))
                .collect(),
        }
    }

    /// `Ok` when `tenant` may ingest now, else how long to wait.
    pub(crate) fn check(&self, tenant: TenantId) -> Result<(), Duration> {
        match self.overrides.get(&tenant) {
            Some(limiter) => limiter.check().map_err(|n| n.wait_time_from(limiter.clock().now())),
            None => self
                .default
                .check_key(&tenant)
                .map_err(|n| n.wait_time_from(self.default.clock().now())),
        }
    }

    /// Forgets tenants whose state is back to full, bounding memory.
    pub(crate) fn shrink(&self) {
        self.default.retain_recent();
        self.default.shrink_to_fit();
    }
}
