//! A handle on the local Citus cluster, for the scale-out tests: one coordinator at
//! 127.0.0.1:5440 and two workers (5441, 5442), started by
//! `bash ../shared/scripts/citus-cluster.sh` from the repository root ([`CITUS_SCRIPT`]).
//!
//! `scripts/ensure-citus.sh` starts it for `scripts/test`, which runs the Citus tests and, with
//! `KAHN_TEST_PG_TARGET=citus` ([`Target`](crate::Target)), the conformance suite, the RLS
//! guarantees and the composition test on it. [`Citus::connect`] fails — never skips — with a
//! message naming the script when the coordinator is not up. `KAHN_TEST_CITUS_URL` overrides
//! the coordinator's admin URL.
//!
//! Citus keeps its node list per database, so [`Citus::fresh_database`] creates the database
//! on every node, creates the `citus` extension in each, and registers the coordinator and
//! the workers in the new database: each test gets a cluster-wide database of its own.

use std::str::FromStr;
use std::time::Duration;

use kahn_pg::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx_core::connection::Connection;
use sqlx_core::query::query;
use sqlx_core::row::Row;
use sqlx_core::sql_str::AssertSqlSafe;
use sqlx_postgres::PgConnection;

use crate::pg::{block_on_side_thread, now_secs, random_hex, with_database};

/// The script that starts the cluster, relative to the repository root.
pub const CITUS_SCRIPT: &str = "../shared/scripts/citus-cluster.sh";

/// The coordinator's admin URL the script prints.
const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5440/postgres";

/// The message of a test that found no Citus coordinator.
pub(crate) fn not_up_message(url: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "\n\nThis test needs the Citus cluster and could not use its coordinator at {url}: {e}\n\
         Start it (idempotent; builds Citus once, about 6 minutes) with\n    \
         bash {CITUS_SCRIPT}\n\
         from the repository root, or with\n    \
         scripts/ensure-citus.sh\n\
         (KAHN_TEST_CITUS_URL overrides the coordinator's admin URL.)\n\n"
    )
}

/// The coordinator of a running Citus cluster and its workers.
#[derive(Debug, Clone)]
pub struct Citus {
    url: String,
    options: PgConnectOptions,
    workers: Vec<(String, u16)>,
}

impl Citus {
    /// Connects to the coordinator at `KAHN_TEST_CITUS_URL` or `127.0.0.1:5440`.
    ///
    /// # Panics
    ///
    /// When it is not reachable, is not a Citus coordinator, or has no workers: the message
    /// names [`CITUS_SCRIPT`].
    pub async fn connect() -> Self {
        let url = std::env::var("KAHN_TEST_CITUS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
        Self::connect_to(&url).await
    }

    /// Connects to the coordinator whose admin URL is `url`.
    ///
    /// # Panics
    ///
    /// As [`Citus::connect`].
    pub async fn connect_to(url: &str) -> Self {
        let not_up = |e: &dyn std::fmt::Display| -> ! { panic!("{}", not_up_message(url, e)) };
        let options = PgConnectOptions::from_str(url).unwrap_or_else(|e| not_up(&e));
        let mut conn = match tokio::time::timeout(
            Duration::from_secs(10),
            PgConnection::connect_with(&options),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => not_up(&e),
            Err(_) => not_up(&"no answer within 10 s"),
        };
        let version: Option<String> = query(
            "SELECT extversion::text AS v FROM pg_catalog.pg_extension WHERE extname = 'citus'",
        )
        .fetch_optional(&mut conn)
        .await
        .unwrap_or_else(|e| not_up(&e))
        .and_then(|row| row.try_get("v").ok());
        if version.is_none() {
            not_up(&"the citus extension is not installed in its maintenance database");
        }
        let rows = query(
            "SELECT nodename::text AS host, nodeport AS port FROM pg_catalog.pg_dist_node \
             WHERE groupid <> 0 AND noderole = 'primary' AND isactive ORDER BY nodeport",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_else(|e| not_up(&e));
        let workers: Vec<(String, u16)> = rows
            .iter()
            .filter_map(|r| {
                let port: i32 = r.try_get("port").ok()?;
                Some((r.try_get("host").ok()?, u16::try_from(port).ok()?))
            })
            .collect();
        if workers.is_empty() {
            not_up(&"the coordinator has no active workers");
        }
        let _ = conn.close().await;
        Self { url: url.to_owned(), options, workers }
    }

    /// The coordinator's admin URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The workers, as `(host, port)`.
    pub fn workers(&self) -> &[(String, u16)] {
        &self.workers
    }

    /// A connection to the coordinator's maintenance database.
    ///
    /// # Panics
    ///
    /// When it cannot connect.
    pub async fn connection(&self) -> PgConnection {
        PgConnection::connect_with(&self.options)
            .await
            .unwrap_or_else(|e| panic!("{}", not_up_message(&self.url, &e)))
    }

    /// A fresh database on every node, the `citus` extension created in each and the nodes
    /// registered in it; dropped on every node when the handle is dropped.
    ///
    /// # Panics
    ///
    /// When a node refuses any step.
    pub async fn fresh_database(&self) -> CitusDb {
        let name = format!("kahn_c_{}_{}", now_secs(), random_hex());
        let db = CitusDb { name: name.clone(), coordinator: self.clone() };
        // The workers first: registering a node checks its database has the extension.
        for (host, port) in &self.workers {
            let node = self.options.clone().host(host).port(*port);
            create_with_citus(&node, &name).await;
        }
        create_with_citus(&self.options, &name).await;
        let mut conn = PgConnection::connect_with(&db.options())
            .await
            .unwrap_or_else(|e| panic!("connect to {name} on the coordinator: {e}"));
        let host = self.options.get_host().to_owned();
        let port = i32::from(self.options.get_port());
        query("SELECT citus_set_coordinator_host($1, $2)")
            .bind(&host)
            .bind(port)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("register the coordinator in {name}: {e}"));
        for (host, port) in &self.workers {
            query("SELECT citus_add_node($1, $2)")
                .bind(host)
                .bind(i32::from(*port))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("add worker {host}:{port} to {name}: {e}"));
        }
        let _ = conn.close().await;
        db
    }
}

async fn create_with_citus(node: &PgConnectOptions, name: &str) {
    let where_ = format!("{}:{}", node.get_host(), node.get_port());
    let mut conn = PgConnection::connect_with(node)
        .await
        .unwrap_or_else(|e| panic!("connect to Citus node {where_}: {e}"));
    query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create {name} on {where_}: {e}"));
    let _ = conn.close().await;
    let mut conn = PgConnection::connect_with(&node.clone().database(name))
        .await
        .unwrap_or_else(|e| panic!("connect to {name} on {where_}: {e}"));
    query("CREATE EXTENSION IF NOT EXISTS citus")
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("create extension citus in {name} on {where_}: {e}"));
    let _ = conn.close().await;
}

/// A database of one test on every node of the Citus cluster, dropped on every node (best
/// effort) when the test ends.
#[derive(Debug)]
pub struct CitusDb {
    /// The database's name (`kahn_c_<unix seconds>_<random hex>`).
    pub name: String,
    coordinator: Citus,
}

impl CitusDb {
    /// The admin's connect options for this database on the coordinator.
    pub fn options(&self) -> PgConnectOptions {
        self.coordinator.options.clone().database(&self.name)
    }

    /// The coordinator's admin URL (its maintenance database).
    pub fn server_url(&self) -> &str {
        &self.coordinator.url
    }

    /// The admin DSN of this database on the coordinator.
    pub fn url(&self) -> String {
        with_database(&self.coordinator.url, &self.name, None)
    }

    /// A pool on this database on the coordinator, as the admin.
    ///
    /// # Panics
    ///
    /// When it cannot connect.
    pub async fn pool(&self, max: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(max)
            .connect_with(self.options())
            .await
            .unwrap_or_else(|e| panic!("connect to {} on the coordinator: {e}", self.name))
    }
}

impl Drop for CitusDb {
    fn drop(&mut self) {
        let name = std::mem::take(&mut self.name);
        if !name.starts_with("kahn_c_") {
            return;
        }
        let citus = self.coordinator.clone();
        block_on_side_thread("dropping a Citus test database", async move {
            let mut nodes = vec![citus.options.clone()];
            nodes.extend(citus.workers.iter().map(|(h, p)| citus.options.clone().host(h).port(*p)));
            for node in nodes {
                let Ok(mut conn) = PgConnection::connect_with(&node).await else { continue };
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                if let Err(e) = query(AssertSqlSafe(sql)).execute(&mut conn).await {
                    eprintln!("warning: could not drop Citus test database {name}: {e}");
                }
                let _ = conn.close().await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_script_that_starts_the_cluster() {
        let text = not_up_message(DEFAULT_URL, &"connection refused");
        assert!(text.contains("bash ../shared/scripts/citus-cluster.sh"), "{text}");
        assert!(text.contains("scripts/ensure-citus.sh"), "{text}");
        assert!(text.contains("127.0.0.1:5440"), "{text}");
    }
}
