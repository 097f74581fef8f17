//! What every server on one store must share: each tenant's ingest allowance and the
//! retention purger's turn (DESIGN.md "Scale-out": servers are stateless).
//!
//! A store that several servers can serve (Postgres) keeps both in the store itself, so N
//! servers allow a tenant its allowance once, not N times, and purge once per interval, not N
//! times. A store only one process serves (SQLite, the in-memory store) answers
//! [`Admission::NotShared`] and [`PurgeTurn::NotShared`]: the server keeps the allowance in its
//! own memory, and purges on every tick of its own timer.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::admin::PurgeOutcome;

/// A tenant's ingest allowance: [`rate`](Self::rate) cost units a second, with a burst of as
/// many (a full allowance admits `rate` units at once, then one unit every `1/rate` s).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IngestQuota {
    rate: NonZeroU32,
}

impl IngestQuota {
    /// `rate` units a second, and a burst of `rate`.
    pub const fn per_second(rate: NonZeroU32) -> Self {
        Self { rate }
    }

    /// Units a second.
    pub const fn rate(self) -> NonZeroU32 {
        self.rate
    }

    /// The most units admitted at once: a charge above it counts as the whole burst.
    pub const fn burst(self) -> NonZeroU32 {
        self.rate
    }
}

/// What a store answers a charge of a tenant's ingest allowance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Admission {
    /// The store keeps no state shared between servers (one process serves it): the caller
    /// limits in its own memory.
    NotShared,
    /// Charged: the ingest may proceed.
    Admitted,
    /// Refused, nothing charged: the allowance holds less than the cost until `retry_after`
    /// has passed, by the store's clock.
    Refused {
        /// How long until the same charge would be admitted.
        retry_after: Duration,
    },
}

/// What a store answers a server whose retention timer fired
/// ([`StorageBackend::purge_expired_in_turn`](crate::StorageBackend::purge_expired_in_turn)).
#[derive(Debug)]
#[must_use]
pub enum PurgeTurn {
    /// The store keeps no state shared between servers: this process purged, as
    /// [`PurgeRequest::at_store_clock`](crate::PurgeRequest::at_store_clock) does.
    NotShared(PurgeOutcome),
    /// It was this server's turn: it purged, and no other server purges until the interval
    /// has passed.
    Ran(PurgeOutcome),
    /// Another server purged less than an interval ago, or is purging now: nothing was done.
    Taken,
}

impl PurgeTurn {
    /// The purge's outcome, when this caller purged.
    pub fn outcome(&self) -> Option<&PurgeOutcome> {
        match self {
            Self::NotShared(o) | Self::Ran(o) => Some(o),
            Self::Taken => None,
        }
    }
}
