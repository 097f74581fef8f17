//! The state every server on one store shares (DESIGN.md "Scale-out"): ingest allowances and
//! the retention purger's turn. A store one process serves answers "not shared" throughout;
//! a store that shares answers consistently.

use std::num::NonZeroU32;
use std::time::Duration;

use super::Harness;
use crate::{Admission, IngestQuota, PurgeTurn};

fn units(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("not zero")
}

/// A tenant's allowance is charged at the store's clock, once for everyone: at one unit a
/// second, the first unit is admitted and the next refused with a wait of at most a second;
/// another tenant's allowance is untouched; a cost above the burst counts as the whole burst
/// (admitted on a full allowance, and it empties it). A store that does not share answers
/// `NotShared` every time.
pub async fn ingest_allowance_is_shared_per_tenant(h: &Harness) {
    let one_a_second = IngestQuota::per_second(units(1));
    let a = h.fresh_tenant().await;
    let b = h.fresh_tenant().await;
    let first = h.store.charge_ingest(&a.write, units(1), one_a_second).await.expect("charge");
    if first == Admission::NotShared {
        for (t, cost) in [(&a, 1), (&a, 1000), (&b, 1)] {
            let again =
                h.store.charge_ingest(&t.write, units(cost), one_a_second).await.expect("charge");
            assert_eq!(again, Admission::NotShared, "a store shares or it does not, always");
        }
        return;
    }
    assert_eq!(first, Admission::Admitted, "a fresh tenant has its whole allowance");
    // The next unit, within a second of the first, is refused; a machine so loaded that a
    // second passed between the two refilled the allowance, so that try proves nothing and
    // a fresh tenant tries again.
    let mut tries = 0;
    loop {
        let t = h.fresh_tenant().await;
        let started = std::time::Instant::now();
        let first = h.store.charge_ingest(&t.write, units(1), one_a_second).await.expect("charge");
        let second = h.store.charge_ingest(&t.write, units(1), one_a_second).await.expect("charge");
        if started.elapsed() >= Duration::from_secs(1) && tries < 3 {
            tries += 1;
            continue;
        }
        assert_eq!(first, Admission::Admitted, "a fresh tenant has its whole allowance");
        match second {
            Admission::Refused { retry_after } => assert!(
                retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1),
                "the wait is what refills one unit at one a second: {retry_after:?}"
            ),
            other => panic!("the allowance is spent, yet {other:?}"),
        }
        break;
    }
    let other = h.store.charge_ingest(&b.write, units(1), one_a_second).await.expect("charge");
    assert_eq!(other, Admission::Admitted, "another tenant's allowance is its own");
    let c = h.fresh_tenant().await;
    let started = std::time::Instant::now();
    let big = h.store.charge_ingest(&c.write, units(1000), one_a_second).await.expect("charge");
    assert_eq!(big, Admission::Admitted, "a cost above the burst counts as the burst");
    let after = h.store.charge_ingest(&c.write, units(1), one_a_second).await.expect("charge");
    assert!(
        matches!(after, Admission::Refused { .. }) || started.elapsed() >= Duration::from_secs(1),
        "and it spends it: {after:?}"
    );
}

/// The retention timer's purge: a store that shares its purger's turn gives it to one caller
/// per interval (the next caller within the hour finds it taken); one that does not purges
/// every time. Either way a purge that runs reports no failure.
pub async fn purge_turn_is_taken_once_per_interval(h: &Harness) {
    let hour = Duration::from_secs(3600);
    let first = h.control.purge_expired_in_turn(hour).await.expect("the first purge");
    let second = h.control.purge_expired_in_turn(hour).await.expect("the second purge");
    match first {
        PurgeTurn::NotShared(outcome) => {
            assert!(outcome.failures.is_empty(), "{outcome:?}");
            assert!(
                matches!(second, PurgeTurn::NotShared(_)),
                "a store shares or it does not, always: {second:?}"
            );
        }
        PurgeTurn::Ran(outcome) => {
            assert!(outcome.failures.is_empty(), "{outcome:?}");
            assert!(
                matches!(second, PurgeTurn::Taken),
                "the turn is taken for the hour: {second:?}"
            );
        }
        PurgeTurn::Taken => {
            // Only when another caller on this store purged within the hour, which no other
            // check does.
            panic!("the first purge found the turn taken");
        }
    }
}
