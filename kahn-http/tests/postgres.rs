//! The composition the product relies on, over the real PostgreSQL server with the server
//! running as the app role (`kahn_app`, Row-Level Security enforced): a JWT verified → role
//! admin → `X-KAHN-Tenant` resolved (through the SECURITY DEFINER `get_tenant`) → the tenant
//! set in the read transaction → RLS returns exactly that tenant's rows. A non-admin's header
//! changes nothing, an override cannot write, and two tenants side by side never meet.
//!
//! Each test has its own fresh database (the test kit's `TestDb`); tenants
//! and keys are provisioned with the admin backend, as an operator would. No PostgreSQL
//! server → every test fails, saying how to start one.

mod support;

use std::sync::Arc;

use kahn_core::conformance::SourceLog;
use kahn_core::conformance::fixtures::recent_base;
use kahn_core::{NewTenant, OrgId, StorageBackend, StorageBackendExt, Tenant, TenantId};
use kahn_http::{HEADER_EFFECTIVE_TENANT, HEADER_TENANT_SOURCE, NDJSON};
use kahn_pg::PgBackend;
use kahn_testkit::TestDb;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde_json::{Value, json};
use sqlx_core::query::query;
use sqlx_core::row::Row;
use support::{TestKeys, TestServer, claims, test_config};

/// A server over the app-role backend of a fresh database, with the admin backend beside it.
/// Field order matters: the server and the pools go before the database is dropped.
struct Pg {
    s: TestServer,
    admin: PgBackend,
    app: PgBackend,
    _db: TestDb,
}

impl Pg {
    /// A server that creates no personal tenants: a stranger's JWT resolves to none.
    async fn start() -> Self {
        Self::start_with(|c| c.with_personal_tenants(false)).await
    }

    async fn start_with(
        f: impl FnOnce(kahn_http::ServerConfig) -> kahn_http::ServerConfig,
    ) -> Self {
        let (db, admin) = TestDb::new().await;
        let app = db.app().await;
        assert_eq!(app.mode(), kahn_pg::Mode::App, "the server runs as the app role");
        let keys = TestKeys::generate();
        let config = f(test_config(&keys));
        let s = TestServer::start(Arc::new(app.clone()), keys, config).await;
        Self { s, admin, app, _db: db }
    }

    /// Provisions a tenant (admin DSN) and issues it a key.
    async fn provision(&self, f: impl FnOnce(NewTenant) -> NewTenant) -> Provisioned {
        let name = format!("t-{}", uuid::Uuid::new_v4().simple());
        let new = f(NewTenant::new(name).expect("valid"));
        let tenant = self.admin.provision_tenant(&new).await.expect("provision");
        let key = self.admin.issue_api_key(tenant.id).await.expect("key");
        Provisioned { tenant, key: key.secret.expose_secret().to_owned() }
    }

    async fn tenant(&self) -> Provisioned {
        self.provision(|t| t).await
    }

    async fn ingest(&self, token: &str, tenant: Option<&str>, body: String) -> reqwest::Response {
        let mut rb = self
            .s
            .http
            .post(self.s.url("/v1/ingest/transitions"))
            .bearer_auth(token)
            .header(CONTENT_TYPE, NDJSON);
        if let Some(t) = tenant {
            rb = rb.header("X-KAHN-Tenant", t);
        }
        rb.body(body).send().await.expect("request")
    }

    /// Pushes `log` with an API key; must succeed.
    async fn push(&self, key: &str, log: &SourceLog) -> Value {
        let r = self.ingest(key, None, lines(log)).await;
        assert_eq!(r.status(), StatusCode::OK);
        json_of(r).await
    }

    async fn get(&self, path: &str, token: &str, tenant: Option<&str>) -> reqwest::Response {
        let mut rb = self.s.http.get(self.s.url(path)).bearer_auth(token);
        if let Some(t) = tenant {
            rb = rb.header("X-KAHN-Tenant", t);
        }
        rb.send().await.expect("request")
    }

    /// The run ids `/v1/runs` lists for this caller, sorted, after checking the tenant
    /// headers.
    async fn runs(&self, token: &str, tenant: Option<&str>, want: (&str, &str)) -> Vec<String> {
        let r = self.get("/v1/runs?limit=1000", token, tenant).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(headers(&r), (want.0.to_owned(), want.1.to_owned()));
        let mut ids: Vec<String> = json_of(r).await["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["run_id"].as_str().expect("run_id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    /// The transitions an admin reads with no filter but Row-Level Security, in the very
    /// transaction the backend's reads run in for `tenant` (as the app role): the rows RLS
    /// lets through, whatever the queries' own predicates say.
    async fn rls_view(&self, tenant: TenantId) -> (Vec<String>, i64) {
        let scope = self.app.resolve_admin_override(tenant).await.expect("a known tenant");
        let mut tx = self.app.read_transaction(&scope).await.expect("tx");
        let runs = query("SELECT run_id FROM kahn.runs ORDER BY run_id")
            .fetch_all(&mut *tx)
            .await
            .expect("select runs")
            .iter()
            .map(|row| row.try_get::<String, _>("run_id").expect("run_id"))
            .collect();
        let transitions: i64 = query("SELECT count(*) AS n FROM kahn.transitions")
            .fetch_one(&mut *tx)
            .await
            .expect("count")
            .try_get("n")
            .expect("n");
        tx.rollback().await.expect("rollback");
        (runs, transitions)
    }

    /// Every transition of `tenant`, counted by the admin (who sees all tenants).
    async fn stored_transitions(&self, tenant: TenantId) -> i64 {
        query("SELECT count(*) AS n FROM kahn.transitions WHERE tenant_id = $1")
            .bind(tenant.as_uuid())
            .fetch_one(self.admin.pool())
            .await
            .expect("count")
            .try_get("n")
            .expect("n")
    }
}

struct Provisioned {
    tenant: Tenant,
    key: String,
}

impl Provisioned {
    fn id(&self) -> String {
        self.tenant.id.to_string()
    }
}

fn lines(log: &SourceLog) -> String {
    log.lines.join("\n") + "\n"
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("a JSON body")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("<absent>").to_owned()
}

/// (`X-KAHN-Effective-Tenant`, `X-KAHN-Tenant-Source`).
fn headers(r: &reqwest::Response) -> (String, String) {
    (header(r, HEADER_EFFECTIVE_TENANT), header(r, HEADER_TENANT_SOURCE))
}

async fn expect_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let body = json_of(r).await;
    assert_eq!(body["error"], code, "{body}");
    body
}

/// The `attrs.tag` of every transition of a JSON transitions page.
fn tags(page: &Value) -> Vec<String> {
    page["transitions"]
        .as_array()
        .expect("transitions")
        .iter()
        .map(|t| t["body"]["attrs"]["tag"].as_str().expect("tag").to_owned())
        .collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_jwt_override_reads_exactly_that_tenants_rows_under_rls() {
    let pg = Pg::start().await;
    let (a, b) = (pg.tenant().await, pg.tenant().await);
    let base = recent_base();
    // The same run id in both tenants, with different content, and one run of each alone.
    let a_shared = pg.push(&a.key, &SourceLog::new("shared", 3, "a", base)).await;
    let b_shared = pg.push(&b.key, &SourceLog::new("shared", 5, "b", base)).await;
    pg.push(&a.key, &SourceLog::new("a-only", 2, "a", base)).await;
    pg.push(&b.key, &SourceLog::new("b-only", 4, "b", base)).await;
    assert_ne!(a_shared["runs"][0]["head_hash"], b_shared["runs"][0]["head_hash"]);
    let admin = pg.s.admin_token();

    for (me, tag, n, head, other) in
        [(&a, "a", 3, &a_shared, "b-only"), (&b, "b", 5, &b_shared, "a-only")]
    {
        let (id, src) = (me.id(), "admin_override");
        let want = (id.as_str(), src);
        let mine = strs(&[&format!("{tag}-only"), "shared"]);
        assert_eq!(pg.runs(&admin, Some(&id), want).await, mine);

        let r = pg.get("/v1/runs/shared", &admin, Some(&id)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(headers(&r), (id.clone(), src.to_owned()));
        let run = json_of(r).await;
        assert_eq!(run["next_seq"], n);
        assert_eq!(run["head_hash"], head["runs"][0]["head_hash"], "this tenant's chain");

        let r = pg.get("/v1/runs/shared/transitions?limit=1000", &admin, Some(&id)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(headers(&r), (id.clone(), src.to_owned()));
        assert_eq!(tags(&json_of(r).await), vec![tag.to_owned(); n], "only this tenant's rows");
        let r =
            pg.s.http
                .get(pg.s.url("/v1/runs/shared/transitions?limit=1000"))
                .bearer_auth(&admin)
                .header("X-KAHN-Tenant", &id)
                .header(ACCEPT, NDJSON)
                .send()
                .await
                .expect("req");
        assert_eq!(headers(&r), (id.clone(), src.to_owned()));
        let text = r.text().await.expect("text");
        assert_eq!(text.lines().count(), n);
        assert!(text.lines().all(|l| l.contains(&format!("\"tag\":\"{tag}\""))), "{text}");

        // The other tenant's run does not exist here.
        let r = pg.get(&format!("/v1/runs/{other}"), &admin, Some(&id)).await;
        assert_eq!(headers(&r), (id.clone(), src.to_owned()));
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
        let r = pg.get(&format!("/v1/runs/{other}/transitions"), &admin, Some(&id)).await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;

        let r = pg.get("/v1/whoami", &admin, Some(&id)).await;
        assert_eq!(headers(&r), (id.clone(), src.to_owned()));
        let me_json = json_of(r).await;
        assert_eq!(
            (me_json["tenant_id"].as_str(), me_json["tenant_source"].as_str()),
            (Some(id.as_str()), Some(src))
        );

        // And the database agrees: in that tenant's transaction, as the app role, RLS alone
        // (no predicate) shows exactly these rows.
        let want_rows = i64::try_from(n + if tag == "a" { 2 } else { 4 }).expect("small");
        assert_eq!(pg.rls_view(me.tenant.id).await, (mine, want_rows));
    }

    // Without a tenant set the app role sees nothing at all.
    let bare: i64 = query("SELECT count(*) AS n FROM kahn.runs")
        .fetch_one(pg.app.pool())
        .await
        .expect("count")
        .try_get("n")
        .expect("n");
    assert_eq!(bare, 0, "RLS hides every row when no tenant is set");

    // The admin without the header has no tenant of its own (its sub owns none).
    assert_eq!(pg.runs(&admin, None, ("none", "none")).await, Vec::<String>::new());
    // Malformed → 400; unknown (the SECURITY DEFINER lookup finds nothing) → 404.
    let r = pg.get("/v1/runs", &admin, Some("not-a-uuid")).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await;
    let r = pg.get("/v1/runs", &admin, Some(&uuid::Uuid::new_v4().to_string())).await;
    assert_eq!(expect_error(r, StatusCode::NOT_FOUND, "not_found").await["what"], "tenant");

    // The admin listing, as the app role, counts each tenant's runs.
    let r = pg.get("/api/admin/tenants", &admin, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let list = json_of(r).await;
    let count = |id: String| {
        list["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .find(|t| t["id"] == id.as_str())
            .map(|t| t["run_count"].clone())
    };
    assert_eq!((count(a.id()), count(b.id())), (Some(json!(2)), Some(json!(2))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admins_tenant_header_changes_nothing() {
    let pg = Pg::start().await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let personal = pg.provision(|t| t.with_owner_sub(sub.clone()).expect("valid")).await;
    let team = pg.tenant().await;
    let org = format!("org_{}", uuid::Uuid::new_v4().simple());
    pg.admin.link_org(team.tenant.id, &OrgId::new(&org).expect("valid")).await.expect("link");
    let target = pg.tenant().await;
    let base = recent_base();
    pg.push(&personal.key, &SourceLog::new("mine", 2, "p", base)).await;
    pg.push(&team.key, &SourceLog::new("ours", 2, "t", base)).await;
    pg.push(&target.key, &SourceLog::new("theirs", 2, "x", base)).await;
    let (target_id, personal_id, team_id) = (target.id(), personal.id(), team.id());

    // Every role but exactly "admin", with the header naming another tenant (or garbage).
    for role in [None, Some("member"), Some("Admin"), Some("admin "), Some("superadmin")] {
        for tenant_header in [target_id.as_str(), "not-a-uuid"] {
            let h = Some(tenant_header);
            let by_sub = pg.s.keys.sign(&claims(&sub, role, None));
            let got = pg.runs(&by_sub, h, (&personal_id, "sub")).await;
            assert_eq!(got, strs(&["mine"]), "{role:?}");
            let by_org = pg.s.keys.sign(&claims(&sub, role, Some(&org)));
            assert_eq!(pg.runs(&by_org, h, (&team_id, "org")).await, strs(&["ours"]), "{role:?}");
            let stranger = pg.s.keys.sign(&claims("stranger", role, Some("org_unlinked")));
            assert!(pg.runs(&stranger, h, ("none", "none")).await.is_empty(), "{role:?}");
            for token in [&by_sub, &by_org, &stranger] {
                let r = pg.get("/v1/runs/theirs", token, h).await;
                assert_ne!(header(&r, HEADER_TENANT_SOURCE), "admin_override");
                expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
                let r = pg.get("/v1/runs/theirs/transitions", token, h).await;
                expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
            }
            let me = json_of(pg.get("/v1/whoami", &by_sub, h).await).await;
            assert_eq!(me["tenant_id"].as_str(), Some(personal_id.as_str()), "{role:?}");
            let r = pg.get("/api/admin/tenants", &by_sub, h).await;
            expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
        }
    }
    // An API key never sees the header either.
    let got = pg.runs(&personal.key, Some(&target_id), (&personal_id, "api_key")).await;
    assert_eq!(got, strs(&["mine"]));
    let r = pg.get("/v1/runs/theirs", &personal.key, Some(&target_id)).await;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_override_cannot_write() {
    let pg = Pg::start().await;
    let (a, b) = (pg.tenant().await, pg.tenant().await);
    let base = recent_base();
    let b_log = SourceLog::new("b-run", 3, "b", base);
    pg.push(&b.key, &b_log).await;
    let admin = pg.s.admin_token();
    let b_id = b.id();
    let next = SourceLog::new("b-run", 5, "b", base);
    let tail = next.lines[3..].join("\n");
    let fresh = lines(&SourceLog::new("admin-made", 1, "x", base));

    // Ingest takes only an API key: an admin JWT is refused, with or without the header.
    for (body, tenant) in
        [(&tail, Some(b_id.as_str())), (&fresh, Some(b_id.as_str())), (&fresh, None)]
    {
        let r = pg.ingest(&admin, tenant, body.clone()).await;
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    // No read route takes a write method.
    for path in ["/v1/runs", "/v1/runs/b-run", "/v1/runs/b-run/transitions", "/api/admin/tenants"] {
        for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE] {
            let r =
                pg.s.http
                    .request(method.clone(), pg.s.url(path))
                    .bearer_auth(&admin)
                    .header("X-KAHN-Tenant", &b_id)
                    .header(CONTENT_TYPE, NDJSON)
                    .body(tail.clone())
                    .send()
                    .await
                    .expect("req");
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    assert_eq!(pg.stored_transitions(b.tenant.id).await, 3, "B untouched");

    // With an API key the header is ignored: the key's own tenant is written, not B.
    let r = pg.ingest(&a.key, Some(&b_id), tail.clone()).await;
    // A has no b-run yet, so seqs 3.. are a gap in A — refused, and nothing lands in B.
    expect_error(r, StatusCode::CONFLICT, "gap").await;
    let r = pg.ingest(&a.key, Some(&b_id), fresh.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(headers(&r), (a.id(), "api_key".to_owned()));
    assert_eq!(pg.stored_transitions(b.tenant.id).await, 3, "B untouched");
    assert_eq!(pg.stored_transitions(a.tenant.id).await, 1);
    let a_view = pg.rls_view(a.tenant.id).await;
    assert_eq!(a_view, (strs(&["admin-made"]), 1));
    let b_view = pg.rls_view(b.tenant.id).await;
    assert_eq!(b_view, (strs(&["b-run"]), 3));

    // B's own key still continues its run where it was.
    let r = pg.ingest(&b.key, None, tail).await;
    assert_eq!(r.status(), StatusCode::OK);
    let run = json_of(pg.get("/v1/runs/b-run", &admin, Some(&b_id)).await).await;
    assert_eq!(run["next_seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_pushing_and_reading_side_by_side_never_see_each_other() {
    let pg = Pg::start().await;
    let (a, b) = (pg.tenant().await, pg.tenant().await);
    let base = recent_base();
    // Each tenant pushes the same run ids in chunks and, between chunks, reads back: at no
    // moment does it see a run or a row of the other.
    let side = |key: String, tag: &'static str| {
        let (url, http) = (pg.s.url(""), pg.s.http.clone());
        tokio::spawn(async move {
            let mine = [format!("{tag}-only"), "shared-id".to_owned()];
            for run in ["shared-id", &format!("{tag}-only")] {
                let log = SourceLog::new(run, 40, tag, base);
                for chunk in log.lines.chunks(7) {
                    let r = http
                        .post(format!("{url}/v1/ingest/transitions"))
                        .bearer_auth(&key)
                        .header(CONTENT_TYPE, NDJSON)
                        .body(chunk.join("\n"))
                        .send()
                        .await
                        .expect("req");
                    assert_eq!(r.status(), StatusCode::OK);
                    let r = http
                        .get(format!("{url}/v1/runs?limit=1000"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .expect("req");
                    let page: Value = r.json().await.expect("json");
                    for run in page["runs"].as_array().expect("runs") {
                        let id = run["run_id"].as_str().expect("id").to_owned();
                        assert!(mine.contains(&id), "{tag} sees {id}");
                    }
                    let r = http
                        .get(format!("{url}/v1/runs/shared-id/transitions?limit=1000"))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .expect("req");
                    assert!(tags(&r.json().await.expect("json")).iter().all(|t| t == tag));
                }
            }
        })
    };
    let (ta, tb) = (side(a.key.clone(), "a"), side(b.key.clone(), "b"));
    ta.await.expect("a pushes and reads");
    tb.await.expect("b pushes and reads");

    let admin = pg.s.admin_token();
    for (me, tag, other) in [(&a, "a", "b"), (&b, "b", "a")] {
        let mine = strs(&[&format!("{tag}-only"), "shared-id"]);
        assert_eq!(pg.runs(&me.key, None, (&me.id(), "api_key")).await, mine);
        assert_eq!(pg.runs(&admin, Some(&me.id()), (&me.id(), "admin_override")).await, mine);
        let r = pg.get("/v1/runs/shared-id/transitions?limit=1000", &me.key, None).await;
        assert_eq!(tags(&json_of(r).await), vec![tag.to_owned(); 40]);
        let r = pg.get(&format!("/v1/runs/{other}-only"), &me.key, None).await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(pg.rls_view(me.tenant.id).await, (mine, 80));
        assert_eq!(pg.stored_transitions(me.tenant.id).await, 80);
    }
}

/// A backend that cannot serve answers 503 with `Retry-After` and a generic message: the
/// driver's text (here sqlx's pool timeout) goes to the server's log, never to the client
/// (red team, round two: the 503 body used to carry "pool timed out while waiting for an open
/// connection" and no `Retry-After`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_database_answers_503_with_retry_after_and_no_driver_text() {
    let (db, admin) = TestDb::new().await;
    let pool = sqlx_postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_with(db.options_as(kahn_pg::APP_ROLE))
        .await
        .expect("pool");
    let app = PgBackend::app_from_pool(pool.clone()).await.expect("app");
    let keys = TestKeys::generate();
    let config = test_config(&keys);
    let s = TestServer::start(Arc::new(app), keys, config).await;
    let t = admin.provision_tenant(&NewTenant::new("busy").expect("valid")).await.expect("t");
    let key = admin.issue_api_key(t.id).await.expect("key");
    let held = pool.acquire().await.expect("take the pool's only connection");
    for path in ["/v1/runs", "/readyz"] {
        let r = s
            .http
            .get(s.url(path))
            .bearer_auth(key.secret.expose_secret())
            .send()
            .await
            .expect("request");
        assert_eq!(header(&r, "retry-after"), "1", "{path}");
        let body = expect_error(r, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
        let message = body["message"].as_str().expect("message").to_lowercase();
        for internal in ["pool", "sqlx", "timed out", "postgres", "connection"] {
            assert!(!message.contains(internal), "{path}: {internal:?} leaked: {message}");
        }
        assert_eq!(body["retry_after_secs"], 1, "{body}");
    }
    drop(held);
    let r = s.http.get(s.url("/v1/runs")).bearer_auth(key.secret.expose_secret()).send().await;
    assert_eq!(r.expect("request").status(), StatusCode::OK, "served again once free");
}

/// The red team's 500s on PostgreSQL: a NUL in the `source` filter (PostgreSQL text cannot
/// hold one) and a forged cursor whose time PostgreSQL cannot represent. Filters follow the
/// ingest rules of their fields and cursors are range-checked: 400 naming the parameter, and
/// the valid queries around them still answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_answer_400_naming_the_parameter_on_postgres() {
    let pg = Pg::start().await;
    let a = pg.tenant().await;
    pg.push(&a.key, &SourceLog::new("listed", 3, "a", recent_base())).await;
    // The cursor's text form: hex of `MICROS|RUN_ID`.
    let forged =
        |micros: i64| format!("{micros}|x").bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let cases = [
        ("source=%00".to_owned(), "source"),
        ("source=a%00b".to_owned(), "source"),
        ("source=a%20b".to_owned(), "source"),
        ("source=".to_owned(), "source"),
        (format!("source={}", "s".repeat(257)), "source"),
        ("status=".to_owned(), "status"),
        (format!("cursor={}", forged(-8_000_000_000_000_000_000)), "cursor"),
        (format!("cursor={}", forged(i64::MAX)), "cursor"),
        (format!("cursor={}", forged(kahn_core::MAX_CURSOR_MICROS + 1)), "cursor"),
        (format!("cursor={}", forged(kahn_core::MIN_CURSOR_MICROS - 1)), "cursor"),
    ];
    for (q, field) in &cases {
        let r = pg.get(&format!("/v1/runs?{q}"), &a.key, None).await;
        let body = expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await;
        assert_eq!(body["field"], *field, "{q}: {body}");
        assert!(!body["message"].as_str().unwrap_or_default().is_empty(), "{q}: {body}");
    }
    // Near the edges of the range, and a status with a NUL (a transition's `to` may hold one):
    // valid, so PostgreSQL answers them.
    for q in [
        format!("cursor={}", forged(kahn_core::MAX_CURSOR_MICROS)),
        format!("cursor={}", forged(kahn_core::MIN_CURSOR_MICROS)),
        "status=%00".to_owned(),
        "source=choco&status=done".to_owned(),
    ] {
        let r = pg.get(&format!("/v1/runs?{q}"), &a.key, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{q}");
    }
    let path = format!("/v1/runs?cursor={}", forged(kahn_core::MAX_CURSOR_MICROS));
    let page = json_of(pg.get(&path, &a.key, None).await).await;
    assert_eq!(page["runs"].as_array().map(Vec::len), Some(1), "{page}");
}

/// Percent-encodes every byte (so any bytes, NUL and invalid UTF-8 included, reach the server).
fn percent_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

/// A query parameter value: arbitrary bytes or text, forged cursors (hex of `MICROS|RUN_ID`
/// with any 64-bit time), numbers at and beyond every edge, and plain tokens.
fn query_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let cursor_time = prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(kahn_core::MIN_CURSOR_MICROS - 1),
        Just(kahn_core::MAX_CURSOR_MICROS + 1),
        Just(kahn_core::MIN_CURSOR_MICROS),
        Just(kahn_core::MAX_CURSOR_MICROS),
        -300_000_000_000_000_000i64..300_000_000_000_000_000,
    ];
    let cursor_run = prop_oneof![Just("x".to_owned()), "[A-Za-z0-9._:-]{0,4}", ".{0,4}"];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|b| percent_all(&b)),
        ".{0,20}".prop_map(|s| percent_all(s.as_bytes())),
        (cursor_time, cursor_run).prop_map(|(t, r)| {
            let text = format!("{t}|{r}");
            text.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        }),
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_owned()),
            Just("-0".to_owned()),
            Just("1e3".to_owned()),
        ],
        "[A-Za-z0-9._~-]{0,12}",
    ]
}

/// A request target: `/v1/runs` or a run's transitions (a real run, or any bytes as the run
/// id), with up to five parameters, known names or any.
fn request_target() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let path = prop_oneof![
        Just("/v1/runs".to_owned()),
        Just("/v1/runs/listed/transitions".to_owned()),
        Just("/v1/runs/listed".to_owned()),
        prop::collection::vec(any::<u8>(), 1..12)
            .prop_map(|b| format!("/v1/runs/{}/transitions", percent_all(&b))),
    ];
    let name = prop_oneof![
        Just("cursor".to_owned()),
        Just("source".to_owned()),
        Just("status".to_owned()),
        Just("limit".to_owned()),
        Just("after_seq".to_owned()),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(|b| percent_all(&b)),
    ];
    let params = prop::collection::vec((name, query_value()), 0..5);
    (path, params).prop_map(|(path, params)| {
        let query: Vec<String> = params.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("{path}?{}", query.join("&"))
    })
}

/// Whatever query string a client sends to the reads of a PostgreSQL-backed server (as
/// `kahn_app`), it answers without a 5xx: every parameter is validated before the database
/// sees it. Before the filters and cursors were validated in kahn-core, a NUL in `source` or a
/// cursor time out of PostgreSQL's range answered 500.
#[test]
fn no_query_string_reaches_a_5xx_on_postgres() {
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (pg, key) = rt.block_on(async {
        let pg = Pg::start().await;
        let a = pg.tenant().await;
        pg.push(&a.key, &SourceLog::new("listed", 3, "a", recent_base())).await;
        (pg, a.key)
    });
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(400);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&request_target(), |target| {
        let r = rt.block_on(pg.get(&target, &key, None));
        let status = r.status();
        let body = rt.block_on(r.text()).unwrap_or_default();
        if status.is_server_error() {
            return Err(TestCaseError::fail(format!("GET {target} answered {status}: {body}")));
        }
        Ok(())
    });
    rt.block_on(async move { drop(pg) });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// First sign-in on Postgres: the app role creates the personal tenant through its SECURITY
/// DEFINER function (it has no INSERT on tenants), once, and the person reads it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_first_sign_in_creates_their_personal_tenant_as_the_app_role() {
    let pg = Pg::start_with(|c| c).await;
    let sub = format!("okta|{}", uuid::Uuid::new_v4().simple());
    let token = pg.s.keys.sign(&claims(&sub, Some("member"), Some("org_unlinked")));
    let r = pg.get("/v1/whoami", &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me = json_of(r).await;
    assert_eq!(me["tenant_source"], "sub", "{me}");
    let id = me["tenant_id"].as_str().expect("a tenant").to_owned();
    let tenants = pg.admin.list_tenants().await.expect("list");
    let created: Vec<_> =
        tenants.iter().filter(|t| t.tenant.owner_sub.as_deref() == Some(sub.as_str())).collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].tenant.id.to_string(), id);
    assert_eq!(created[0].tenant.name, format!("user:{sub}"));
    let listed = pg.runs(&token, None, (&id, "sub")).await;
    assert!(listed.is_empty());
    let again = json_of(pg.get("/v1/whoami", &token, None).await).await;
    assert_eq!(again["tenant_id"].as_str(), Some(id.as_str()));
}

/// `/metrics` shows the Postgres pool the server reads and writes through: connections idle
/// and in use, and the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_postgres_pool() {
    let pg = Pg::start().await;
    let t = pg.tenant().await;
    let r = pg.s.http.get(pg.s.url("/v1/runs")).bearer_auth(&t.key).send().await.expect("runs");
    assert_eq!(r.status(), StatusCode::OK);
    let text =
        pg.s.http.get(pg.s.url("/metrics")).send().await.expect("m").text().await.expect("t");
    let value = |state: &str| -> i64 {
        let name = format!("kahn_db_pool_connections{{state=\"{state}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    let status = pg.app.pool_status().expect("a Postgres backend has a pool");
    assert_eq!(value("max"), i64::from(status.max));
    assert!(value("max") >= 1);
    assert!(value("idle") + value("in_use") >= 1, "a read opened a connection");
}
