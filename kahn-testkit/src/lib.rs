//! KAHN's shared test kit: what the workspace's tests, benches and end-to-end suites used to
//! copy into each other. A `publish = false` crate, used only as a dev-dependency.
//!
//! - [`TestDb`]: a fresh, migrated Postgres database per test on the real server, with the
//!   admin backend and the app role (`kahn_app`, not a superuser) beside it, dropped when the
//!   test ends. Each test gets its own database, so tests run in parallel. No server → the test
//!   **fails** with a message naming `scripts/ensure-postgres.sh`; it never skips.
//! - [`TestRole`]: a throwaway login role for negative tests (`BYPASSRLS`, …).
//! - [`KahnServer`]: the real `kahn serve` binary on a free loopback port; waits for its URL,
//!   exposes it, and kills and reaps the process on drop.
//! - [`Citus`]: the local Citus cluster (coordinator on 127.0.0.1:5440, started by
//!   `bash ../shared/scripts/citus-cluster.sh` through `scripts/ensure-citus.sh`), and a fresh
//!   database on it ([`CitusDb`]). With `KAHN_TEST_PG_TARGET=citus` ([`Target`]), every
//!   [`TestDb`] of the process is on the cluster, migrated and distributed.
//! - [`PgBouncer`]: a transaction-pooling pgbouncer on a free loopback port in front of a
//!   Postgres server, for several `kahn serve` processes on one database; killed on drop. No
//!   binary → the test fails naming `scripts/ensure-pgbouncer.sh`.
//!
//! ```no_run
//! # async fn demo() {
//! use kahn_testkit::{KahnServer, TestDb};
//!
//! let (db, admin) = TestDb::new().await; // fresh, migrated; `admin` is a PgBackend
//! let app = db.app().await; // the app role's backend, through its startup check
//! let server = KahnServer::builder(kahn_testkit::kahn_bin()).db(db.url_as_app()).start();
//! println!("serving at {}", server.url());
//! # drop((admin, app));
//! # }
//! ```
//!
//! Setup failures panic with the reason: a test that cannot set up must fail loudly, never
//! pass by skipping its work.

pub mod citus;
pub mod pg;
pub mod pgbouncer;
pub mod server;

pub use citus::{CITUS_SCRIPT, Citus, CitusDb};
pub use pg::{Target, TestDb, TestRole, admin_url};
pub use pgbouncer::{PGBOUNCER_SCRIPT, PgBouncer};
pub use server::{KahnServer, KahnServerBuilder, ServerStderr, StartError, kahn_bin};
