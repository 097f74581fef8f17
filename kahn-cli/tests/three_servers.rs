//! Stateless servers (DESIGN.md "Scale-out"): three real `kahn serve` processes on one
//! database, all through one transaction-pooling pgbouncer as the app role.
//!
//! * 32 pushers spread over the three servers push overlapping chunks of a set of source runs
//!   at once; afterwards every run's stored log is exactly its source (bodies, content hashes,
//!   chain links and head, read back and recomputed).
//! * A tenant limited to a few ingests a second is admitted that many times spread over the
//!   three servers, then refused with 429 and `Retry-After` by each of them: the allowance is
//!   one, in the database, not one per process.
//! * The three servers' retention timers all fire at startup; exactly one purge runs (the
//!   database counts the turns taken, the servers' logs say who purged and who skipped), and
//!   it removes the expired run.
//!
//! The body takes the database as a parameter, so the Citus tier runs the same test on a
//! distributed database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kahn_core::conformance::SourceLog;
use kahn_core::{
    Error, IssuedApiKey, MemoryBackend, NewTenant, RunId, StorageBackend, StorageBackendExt,
    Tenant, WriteScope,
};
use kahn_http::HttpBackend;
use kahn_pg::{PgBackend, PgConnectOptions};
use kahn_testkit::{KahnServer, PgBouncer, ServerStderr, Target, TestDb};
use sqlx_core::query::query;
use sqlx_core::row::Row;

const SERVERS: usize = 3;
const PUSHERS: usize = 32;
const RUNS: usize = 6;
const TRANSITIONS: u64 = 240;
/// The limited tenants' allowance, in ingests a second.
const LIMITED_RATE: u32 = 3;
/// How many limited tenants there are: one per try at sending the 2 × 3 requests within
/// 1 s (past that the allowance may have refilled up to six, and nothing can be concluded).
const LIMITED_TRIES: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_behind_pgbouncer_on_postgres() {
    let (db, admin) = TestDb::new().await;
    three_servers_behind_pgbouncer(&admin, &db.admin_options()).await;
}

/// The same on the Citus cluster: pgbouncer in front of the coordinator, the tables distributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_behind_pgbouncer_on_citus() {
    let (db, admin) = TestDb::new_on(Target::Citus).await;
    three_servers_behind_pgbouncer(&admin, &db.admin_options()).await;
}

/// A small deterministic generator (xorshift), one per pusher.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

async fn provision(admin: &PgBackend, req: NewTenant) -> (Tenant, IssuedApiKey) {
    let tenant = admin.provision_tenant(&req).await.expect("provision a tenant");
    let key = admin.issue_api_key(tenant.id).await.expect("issue a key");
    (tenant, key)
}

fn fresh_name(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The whole scenario on the database `upstream` names: `admin` is a migrated admin backend on
/// it; pgbouncer fronts `upstream`'s host and port, and the servers log in through it as
/// `kahn_app`.
pub async fn three_servers_behind_pgbouncer(admin: &PgBackend, upstream: &PgConnectOptions) {
    let database = upstream.get_database().expect("the upstream options name a database");
    let bouncer = PgBouncer::start(upstream);
    let app_url = bouncer.url_as(database, kahn_pg::APP_ROLE);

    // Tenants: one for the pushers, a few limited ones, one whose run has expired.
    let (pushing, pushing_key) =
        provision(admin, NewTenant::new(fresh_name("push")).expect("name")).await;
    let mut limited = Vec::new();
    for _ in 0..LIMITED_TRIES {
        limited.push(provision(admin, NewTenant::new(fresh_name("limited")).expect("name")).await);
    }
    let expired_run = RunId::new("expired").expect("run id");
    let (old, _) = provision(
        admin,
        NewTenant::new(fresh_name("old")).expect("name").with_retention_days(1).expect("1 day"),
    )
    .await;
    let old_scope = admin.operator_write_scope(old.id).await.expect("operator scope");
    let log = SourceLog::new("expired", 3, "old", chrono::Utc::now());
    admin.append(&old_scope, &log.all()).await.expect("append the soon expired run");
    backdate_receipt(admin, &old, Duration::from_secs(2 * 86_400)).await;

    // Three servers through one pgbouncer, each with its retention timer (all fire now).
    let mut servers = Vec::new();
    for _ in 0..SERVERS {
        let mut builder = KahnServer::builder(env!("CARGO_BIN_EXE_kahn"))
            .db(&app_url)
            .retention_timer(true)
            .args(["--retention-interval-secs", "3600", "--ingest-rate", "100000"])
            .args(["--max-ingests-in-flight", "64"])
            .env("KAHN_LOG", "warn,kahn_http::retention=debug")
            .stderr(ServerStderr::Capture);
        for (tenant, _) in &limited {
            builder =
                builder.args(["--tenant-ingest-rate", &format!("{}={LIMITED_RATE}", tenant.id)]);
        }
        servers.push(builder.start());
    }
    let urls: Vec<String> = servers.iter().map(|s| s.url().to_owned()).collect();

    pushers_leave_exactly_the_source_logs(admin, &urls, &pushing, &pushing_key).await;
    limit_is_shared_by_the_servers(&urls, &limited).await;

    // Exactly one purge ran, and it removed the expired run.
    let old_read = admin.resolve_admin_override(old.id).await.expect("read scope");
    match admin.get_run(&old_read, &expired_run).await {
        Err(Error::NotFound { .. }) => {}
        other => panic!("the expired run should have been purged: {other:?}"),
    }
    let purges: i64 = query("SELECT purges FROM kahn.purge_turn")
        .fetch_one(admin.pool())
        .await
        .expect("read the purge count")
        .try_get("purges")
        .expect("purges");
    let logs: Vec<String> = servers.into_iter().map(KahnServer::stop).collect();
    let count = |needle: &str| logs.iter().map(|l| l.matches(needle).count()).sum::<usize>();
    assert_eq!(purges, 1, "one purge for three timers; logs:\n{}", logs.join("\n---\n"));
    assert_eq!(count("retention purge ran"), 1, "one server purged:\n{}", logs.join("\n---\n"));
    assert_eq!(
        count("retention purge skipped"),
        SERVERS - 1,
        "the others said they skipped:\n{}",
        logs.join("\n---\n")
    );
    drop(bouncer);
}

/// Moves `tenant`'s runs' receipt `ago` into the past. `received_at` may only ever be set to
/// the database's now() (a trigger); the owner lifts it for this one transaction.
async fn backdate_receipt(admin: &PgBackend, tenant: &Tenant, ago: Duration) {
    // Triggers off for this transaction only (replica mode), on Citus also on the workers,
    // where the shards' receipt trigger runs.
    let mut tx = admin.pool().begin().await.expect("begin");
    query("SET LOCAL citus.propagate_set_commands = 'local'")
        .execute(&mut *tx)
        .await
        .expect("propagate");
    query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .expect("lift the receipt trigger");
    query("UPDATE kahn.runs SET received_at = pg_catalog.now() - pg_catalog.make_interval(secs => $2) WHERE tenant_id = $1")
        .bind(tenant.id.as_uuid())
        .bind(ago.as_secs_f64())
        .execute(&mut *tx)
        .await
        .expect("backdate");
    tx.commit().await.expect("commit");
}

/// 32 pushers, pusher i on server i % 3, each pushing every run (in its own order) from seq 0
/// in chunks of 1–40 that step back up to 5 seqs (overlapping what it and the others stored),
/// all at once. Then every run's stored log is exactly its source.
async fn pushers_leave_exactly_the_source_logs(
    admin: &PgBackend,
    urls: &[String],
    tenant: &Tenant,
    key: &IssuedApiKey,
) {
    let base = chrono::Utc::now();
    let logs: Arc<Vec<SourceLog>> = Arc::new(
        (0..RUNS).map(|r| SourceLog::new(&format!("run-{r}"), TRANSITIONS, "src", base)).collect(),
    );
    let mut tasks = Vec::new();
    for p in 0..PUSHERS {
        let client = HttpBackend::new(&urls[p % urls.len()]).expect("a client");
        let scope: WriteScope = client
            .resolve_api_key(&key.secret)
            .await
            .expect("resolve the key")
            .expect("the key resolves");
        let logs = Arc::clone(&logs);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (p as u64 + 1));
            for r in 0..RUNS {
                let log = &logs[(r + p) % RUNS];
                let mut end = 0;
                while end < TRANSITIONS {
                    let start = end.saturating_sub(rng.below(6));
                    end = (end + 1 + rng.below(40)).min(TRANSITIONS);
                    let batch = log.chunk(start, end);
                    let mut tries = 0;
                    loop {
                        match client.append(&scope, &batch).await {
                            Ok(_) => break,
                            Err(Error::Unavailable { .. }) if tries < 50 => {
                                tries += 1;
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(e) => {
                                panic!("pusher {p}: chunk [{start}, {end}) of {}: {e}", log.run_id)
                            }
                        }
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a pusher panicked");
    }

    // The reference: each source log pushed once into the in-memory store.
    let reference = MemoryBackend::new();
    let ref_tenant =
        reference.provision_tenant(&NewTenant::new("ref").expect("name")).await.expect("tenant");
    let ref_key = reference.issue_api_key(ref_tenant.id).await.expect("key");
    let ref_scope =
        reference.resolve_api_key(&ref_key.secret).await.expect("resolve").expect("key");
    let read = admin.resolve_admin_override(tenant.id).await.expect("read scope");
    for log in logs.iter() {
        reference.append(&ref_scope, &log.all()).await.expect("reference append");
        let expected = reference
            .read_all_transitions(&ref_scope.read(), &log.run_id)
            .await
            .expect("reference");
        let stored = admin.read_all_transitions(&read, &log.run_id).await.expect("read back");
        assert_eq!(stored.len(), expected.len(), "{}: every transition, once", log.run_id);
        for (s, e) in stored.iter().zip(&expected) {
            assert_eq!(
                (s.seq, &s.body, s.content_hash, s.chain_hash),
                (e.seq, &e.body, e.content_hash, e.chain_hash),
                "{}: the stored transition is the source's",
                log.run_id
            );
        }
        let head = admin.verify_run(&read, &log.run_id).await.expect("the chain verifies");
        let ref_head = reference.get_run(&ref_scope.read(), &log.run_id).await.expect("run");
        assert_eq!(head, ref_head.info.head_hash, "{}: the head is the source's", log.run_id);
    }
}

/// Sends one ingest (one transition) of `key` to `url`: the status and `Retry-After`.
async fn ingest(
    http: &reqwest::Client,
    url: &str,
    key: &IssuedApiKey,
    line: &str,
) -> (u16, Option<u64>) {
    let response = http
        .post(format!("{url}/v1/ingest/transitions"))
        .header("authorization", format!("Bearer {}", key.secret.expose_secret()))
        .header("content-type", "application/x-ndjson")
        .body(format!("{line}\n"))
        .send()
        .await
        .expect("the server answers");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (response.status().as_u16(), retry_after)
}

/// A tenant limited to LIMITED_RATE ingests a second: LIMITED_RATE ingests, one per server, are
/// admitted, and the next one to each server is refused with 429 and `Retry-After` — when
/// all six are sent within 1 / LIMITED_RATE s. Sent more slowly (a loaded machine), the
/// allowance refilled meanwhile by at most LIMITED_RATE × the time taken, which bounds how many
/// of the six a shared allowance admits; while that bound is under six (servers keeping an
/// allowance each would admit all six), the count is checked instead, and past it the next
/// limited tenant tries again.
async fn limit_is_shared_by_the_servers(urls: &[String], limited: &[(Tenant, IssuedApiKey)]) {
    let http = reqwest::Client::new();
    let window = Duration::from_secs(1) / LIMITED_RATE;
    let log = SourceLog::new("limited", 2 * SERVERS as u64, "lim", chrono::Utc::now());
    let mut slow = Vec::new();
    for (tenant, key) in limited {
        let started = Instant::now();
        let mut answers = Vec::new();
        for (i, line) in log.lines.iter().enumerate() {
            answers.push(ingest(&http, &urls[i % urls.len()], key, line).await);
        }
        let elapsed = started.elapsed();
        // The most a shared allowance can have admitted: its burst and what refilled since.
        let most =
            LIMITED_RATE as usize + (elapsed.as_secs_f64() * f64::from(LIMITED_RATE)) as usize;
        if most >= answers.len() {
            slow.push(elapsed);
            continue;
        }
        for (status, retry_after) in &answers {
            assert!(*status == 200 || *status == 429, "tenant {}: {answers:?}", tenant.id);
            assert!(
                *status == 200 || retry_after.is_some_and(|s| s >= 1),
                "a refusal says when to retry: {answers:?}"
            );
        }
        let (first, rest) = answers.split_at(LIMITED_RATE as usize);
        for (i, (status, _)) in first.iter().enumerate() {
            assert_eq!(*status, 200, "tenant {}: ingest {i} is within its allowance", tenant.id);
        }
        let admitted = answers.iter().filter(|(status, _)| *status == 200).count();
        assert!(
            admitted <= most,
            "tenant {}: {admitted} of {} ingests admitted in {elapsed:?}, where one allowance \
             shared by the servers admits at most {most} (answers: {answers:?})",
            tenant.id,
            answers.len()
        );
        if elapsed < window {
            for (i, (status, _)) in rest.iter().enumerate() {
                assert_eq!(
                    *status,
                    429,
                    "tenant {}: past its allowance, server {} refuses (answers: {answers:?})",
                    tenant.id,
                    i % urls.len()
                );
            }
        }
        return;
    }
    panic!(
        "never sent {} ingests within {:?} in {LIMITED_TRIES} tries ({slow:?}): the machine is \
         too loaded to tell a shared allowance from a refilled one",
        log.lines.len(),
        Duration::from_secs(1),
    );
}
