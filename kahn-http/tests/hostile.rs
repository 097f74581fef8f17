//! The reliability battery's hostile-input and authentication attacks, against a real server
//! over a real SQLite file: every attack gets its exact status, and the store is compared
//! before and after — a refused request changes nothing. Existing coverage (the JWT attack
//! list, status codes, 413 without buffering, the admin override rules) lives in `api.rs`;
//! this file adds what the reliability issue asks beyond it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kahn_core::conformance::fixtures::recent_base;
use kahn_core::{
    ApiKey, NewTenant, RunId, RunQuery, StorageBackend, StorageBackendExt, Tenant, TenantId,
};
use kahn_http::{NDJSON, ServerConfig};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE};
use serde_json::{Value, json};
use support::{TestKeys, TestServer, claims, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Provisioned {
    tenant: Tenant,
    key: String,
}

async fn provision(s: &TestServer, sub: Option<&str>) -> Provisioned {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    let mut req = NewTenant::new(name).expect("valid");
    if let Some(sub) = sub {
        req = req.with_owner_sub(sub).expect("valid sub");
    }
    let tenant = s.backend.provision_tenant(&req).await.expect("provision");
    let key = s.backend.issue_api_key(tenant.id).await.expect("key");
    Provisioned { tenant, key: key.secret.expose_secret().to_owned() }
}

/// A server over a fresh SQLite file, with short header/body timeouts so the slow-client
/// attacks finish in seconds.
async fn sqlite_server() -> TestServer {
    sqlite_server_with(|config| {
        config.with_header_timeout(Duration::from_secs(2)).with_body_timeout(Duration::from_secs(2))
    })
    .await
}

/// A server over a fresh SQLite file, its test config adjusted by `f`.
async fn sqlite_server_with(f: impl FnOnce(ServerConfig) -> ServerConfig) -> TestServer {
    let dir = tempfile::tempdir().expect("tmp");
    let url = format!("sqlite://{}", dir.path().join("kahn.db").display());
    let backend = kahn_sqlite::SqliteBackend::connect(&url).await.expect("sqlite");
    let keys = TestKeys::generate();
    let config = f(test_config(&keys));
    TestServer::start(Arc::new(backend), keys, config).await.with_guard(dir)
}

/// The head of an ingest request with `key` and a body of `len` bytes.
fn ingest_head(addr: &str, key: &str, len: usize) -> String {
    format!(
        "POST /v1/ingest/transitions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: {NDJSON}\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// Everything the store holds, as (tenant, run, next_seq, head, first stored body): equal
/// fingerprints before and after an attack mean nothing was written.
async fn fingerprint(b: &Arc<dyn StorageBackend>) -> Vec<(TenantId, String, u64, String)> {
    let mut out = Vec::new();
    for t in b.list_tenants().await.expect("tenants") {
        let scope = b.resolve_admin_override(t.tenant.id).await.expect("scope");
        let q = RunQuery { limit: 1000, ..RunQuery::default() };
        for run in b.list_runs(&scope, &q).await.expect("runs").runs {
            let head = b.verify_run(&scope, &run.run_id).await.expect("chain verifies");
            out.push((t.tenant.id, run.run_id.to_string(), run.next_seq, head.to_string()));
        }
    }
    out.sort();
    out
}

fn line(run: &str, seq: u64, attrs: &str) -> String {
    format!(
        r#"{{"run_id":"{run}","seq":{seq},"ts":"{}","to":"running","attrs":{attrs}}}"#,
        recent_base().to_rfc3339()
    )
}

async fn post(s: &TestServer, key: &str, ctype: &str, body: Vec<u8>) -> reqwest::Response {
    s.http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(key)
        .header(CONTENT_TYPE, ctype)
        .body(body)
        .send()
        .await
        .expect("request")
}

async fn status_and_body(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    let body: Value = r.json().await.expect("every answer is JSON");
    (status, body)
}

/// Sends `head` then `body` on a raw connection, stopping the body as soon as the server
/// answers (or after `body.len()` bytes); returns the status line, or "" when the server
/// closed the connection without one.
async fn raw(addr: &str, head: String, body: Vec<u8>, piece: usize, pause: Duration) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(2).any(|w| w == b"\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned()
    });
    let _ = wr.write_all(head.as_bytes()).await;
    for part in body.chunks(piece.max(1)) {
        if reader.is_finished() || wr.write_all(part).await.is_err() {
            break;
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the server answers or closes within a minute")
        .expect("reader")
}

// ---------------------------------------------------------------------------------------
// hostile bodies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_their_exact_status_and_change_nothing() {
    let s = sqlite_server().await;
    let t = provision(&s, None).await;
    // Something stored first, so "unchanged" is not trivially an empty store.
    let seed = format!("{}\n{}\n", line("seeded", 0, "{}"), line("seeded", 1, "{}"));
    assert_eq!(post(&s, &t.key, NDJSON, seed.into_bytes()).await.status(), StatusCode::OK);
    let before = fingerprint(&s.backend).await;

    let nested = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let thousand_digits = format!("1{}", "0".repeat(999));
    let mut invalid_utf8 = line("u", 0, r#"{"k":"XX"}"#).into_bytes();
    let at = invalid_utf8.windows(2).position(|w| w == b"XX").expect("marker");
    invalid_utf8[at] = 0xff;
    invalid_utf8[at + 1] = 0xfe;
    let nul_raw = line("n", 0, "{\"k\":\"a\0b\"}").into_bytes();
    let ts = recent_base().to_rfc3339();
    let with_id = |id: &str| format!(r#"{{"run_id":{},"seq":0,"ts":"{ts}","to":"x"}}"#, json!(id));
    let with_seq = |seq: &str| format!(r#"{{"run_id":"s","seq":{seq},"ts":"{ts}","to":"x"}}"#);

    // (name, body, status, error code, field)
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        ("invalid UTF-8", invalid_utf8, StatusCode::BAD_REQUEST, "invalid_line", "line"),
        (
            "10,000 nested arrays in attrs",
            line("deep", 0, &format!(r#"{{"k":{nested}}}"#)).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "json",
        ),
        (
            "an integer of 1,000 digits (beyond the largest double)",
            line("big", 0, &format!(r#"{{"k":{thousand_digits}}}"#)).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "attrs",
        ),
        (
            "an integer of 1,000 digits as seq",
            with_seq(&thousand_digits).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "1e400 (beyond the largest double)",
            line("big", 0, r#"{"k":[1.5,{"x":1e400}]}"#).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "attrs",
        ),
        // Red team, round two: 1e-400 was stored as 0, silently another value.
        (
            "1e-400 (non-zero, below the smallest double)",
            line("tiny", 0, r#"{"k":1e-400}"#).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "attrs",
        ),
        (
            "0.(400 zeros)1 in a graph",
            format!(r#"{{"kind":"run","run_id":"tiny","graph":{{"w":-0.{}1}}}}"#, "0".repeat(400))
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "graph",
        ),
        (
            "duplicate keys (top level)",
            format!(r#"{{"run_id":"d","seq":0,"ts":"{ts}","to":"x","to":"y"}}"#).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "json",
        ),
        (
            "duplicate keys (in attrs)",
            line("d", 0, r#"{"k":1,"k":2}"#).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "json",
        ),
        ("a raw NUL byte in a string", nul_raw, StatusCode::BAD_REQUEST, "invalid_line", "json"),
        (
            "a NUL byte between lines",
            [line("n", 0, "{}").as_bytes(), b"\n\0\n"].concat(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "json",
        ),
        (
            "seq = u64::MAX",
            with_seq(&u64::MAX.to_string()).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "seq = i64::MAX + 1",
            with_seq(&(i64::MAX as u64 + 1).to_string()).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "seq = i64::MAX (valid, but a gap in a new run)",
            with_seq(&i64::MAX.to_string()).into_bytes(),
            StatusCode::CONFLICT,
            "gap",
            "",
        ),
        (
            "negative seq",
            with_seq("-1").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "fractional seq",
            with_seq("1.5").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "seq as a string",
            with_seq("\"0\"").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "seq",
        ),
        (
            "run id ..",
            with_id("..").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id ../x",
            with_id("../x").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id %00",
            with_id("%00").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id with NUL",
            with_id("a\0b").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id with a Cyrillic a (confusable)",
            with_id("run-\u{430}").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id with a Unicode hyphen (confusable)",
            with_id("run\u{2010}1").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id with a fullwidth letter",
            with_id("\u{ff52}un").into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "run id of 10 KB",
            with_id(&"r".repeat(10 * 1024)).into_bytes(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "run_id",
        ),
        (
            "a JSON array, not an object",
            b"[1,2,3]\n".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "line",
        ),
        (
            "a PNG labelled NDJSON",
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "line",
        ),
        (
            "a JSON document labelled NDJSON",
            serde_json::to_vec_pretty(&json!({"run_id": "p", "seq": 0, "ts": ts, "to": "x"}))
                .expect("json"),
            StatusCode::BAD_REQUEST,
            "invalid_line",
            "json",
        ),
    ];
    let tried = cases.len();
    for (name, body, status, code, field) in cases {
        let (got, e) = status_and_body(post(&s, &t.key, NDJSON, body).await).await;
        assert_eq!(got, status, "{name}: {e}");
        assert_eq!(e["error"], code, "{name}: {e}");
        if !field.is_empty() {
            assert_eq!(e["field"], field, "{name}: {e}");
        }
        assert_eq!(fingerprint(&s.backend).await, before, "{name} changed the store");
    }

    // Content types lying about the body: a valid NDJSON body under another label is 415.
    let valid = line("typed", 0, "{}").into_bytes();
    for ctype in ["application/json", "text/plain", "multipart/form-data; boundary=x", ""] {
        let (got, e) = status_and_body(post(&s, &t.key, ctype, valid.clone()).await).await;
        assert_eq!(got, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{ctype:?}: {e}");
        assert_eq!(e["error"], "unsupported_media_type");
    }
    // Compressed bodies are not accepted, so a gzip bomb is never inflated: 415.
    let gzip_magic = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3].to_vec();
    for enc in ["gzip", "deflate", "br", "x-gzip, gzip"] {
        let r = s
            .http
            .post(s.url("/v1/ingest/transitions"))
            .bearer_auth(&t.key)
            .header(CONTENT_TYPE, NDJSON)
            .header(CONTENT_ENCODING, enc)
            .body(gzip_magic.clone())
            .send()
            .await
            .expect("request");
        let (got, e) = status_and_body(r).await;
        assert_eq!(got, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{enc}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| m.contains("compressed")), "{e}");
    }
    assert_eq!(fingerprint(&s.backend).await, before, "content-type attacks changed the store");

    // Run ids in the path, sent raw (a client library would normalise `%2E%2E` away): 400,
    // never 5xx, never another run.
    let addr = s.url.trim_start_matches("http://").to_owned();
    let long = format!("/v1/runs/{}", "r".repeat(10 * 1024));
    for path in [
        "/v1/runs/%2E%2E",
        "/v1/runs/..%2Fseeded",
        "/v1/runs/%00",
        "/v1/runs/a%00b/transitions",
        "/v1/runs/run-%D0%B0",
        "/v1/runs/%FF%FE",
        &long,
    ] {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            t.key
        );
        let status = raw(&addr, head, Vec::new(), 1, Duration::ZERO).await;
        assert!(status.contains(" 400 "), "{path}: {status}");
    }
    // Escaped NUL and confusable text inside *values* are legitimate content: stored and read
    // back byte-exact.
    let odd = line("odd", 0, r#"{"nul":"a\u0000b","cyr":"\u0430","rtl":"\u202e"}"#);
    let r = post(&s, &t.key, NDJSON, odd.into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let scope = s.backend.resolve_admin_override(t.tenant.id).await.expect("scope");
    let stored =
        s.backend.read_all_transitions(&scope, &RunId::new("odd").expect("id")).await.expect("r");
    assert_eq!(stored[0].body["attrs"]["nul"], "a\u{0}b");
    assert_eq!(stored[0].body["attrs"]["cyr"], "\u{430}");
    // Zeros and the smallest doubles are numbers like any other: stored as sent.
    let small = line("small", 0, r#"{"z":0.0,"e":0e-999,"min":5e-324,"s":"1e-400"}"#);
    let r = post(&s, &t.key, NDJSON, small.into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let stored =
        s.backend.read_all_transitions(&scope, &RunId::new("small").expect("id")).await.expect("r");
    assert_eq!(stored[0].body["attrs"], json!({"z": 0, "e": 0, "min": 5e-324, "s": "1e-400"}));
    eprintln!("hostile bodies tried: {tried} + 4 content types + 4 encodings + 7 paths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10_mib_line_without_newline_is_refused_with_413_before_it_ends() {
    let s = sqlite_server().await;
    let t = provision(&s, None).await;
    let before = fingerprint(&s.backend).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let ten_mib = 10 * 1024 * 1024;
    // Chunked (no length to refuse up front): the parser's pending line is bounded by the
    // body limit, so the server answers 413 long before the line ends.
    let head = format!(
        "POST /v1/ingest/transitions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {NDJSON}\r\nTransfer-Encoding: chunked\r\n\r\n",
        t.key
    );
    let mut body = Vec::new();
    let piece = vec![b'a'; 64 * 1024];
    for _ in 0..ten_mib / piece.len() {
        body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        body.extend_from_slice(&piece);
        body.extend_from_slice(b"\r\n");
    }
    let status = raw(&addr, head, body, 64 * 1024, Duration::from_millis(1)).await;
    assert!(status.contains(" 413 "), "{status}");
    // Declared up front: refused from the header.
    let declared = line("big", 0, &format!(r#"{{"k":"{}"}}"#, "a".repeat(ten_mib)));
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&t.key)
        .header(CONTENT_TYPE, NDJSON)
        .header("content-length", declared.len().to_string())
        .body(declared)
        .send()
        .await;
    // The client may still be writing when the answer comes and see a reset instead: the
    // raw upload above is the precise check; here only "never 200" and "never 5xx" matter.
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    assert_eq!(fingerprint(&s.backend).await, before);
    assert_eq!(s.http.get(s.url("/healthz")).send().await.expect("up").status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_timed_out_with_408_and_the_server_stays_responsive() {
    let s = sqlite_server().await; // body timeout 2 s
    let t = provision(&s, None).await;
    let before = fingerprint(&s.backend).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let body = (line("slow", 0, "{}") + "\n").into_bytes();
    let head = ingest_head(&addr, &t.key, body.len());
    let started = Instant::now();
    let trickle = tokio::spawn({
        let addr = addr.clone();
        async move { raw(&addr, head, body, 1, Duration::from_secs(1)).await }
    });
    // While it trickles, the server serves others at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok = post(&s, &t.key, NDJSON, line("fast", 0, "{}").into_bytes()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    let status = trickle.await.expect("trickle");
    assert!(status.contains(" 408 "), "{status}");
    let took = started.elapsed();
    eprintln!("trickling body (1 byte/s, 2 s body timeout) answered 408 after {took:?}");
    let mut after = fingerprint(&s.backend).await;
    after.retain(|(_, run, ..)| run != "fast");
    assert_eq!(after, before, "the timed-out body wrote nothing");

    // Trickled headers: the connection is dropped when the head timeout (2 s) expires.
    let status = raw(
        &addr,
        String::new(),
        format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n", "a".repeat(60))
            .into_bytes(),
        1,
        Duration::from_millis(500),
    )
    .await;
    assert!(!status.contains(" 200 "), "a trickled head was served: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_connections_neither_block_service_nor_live_forever() {
    // 4,000, not 10,000: client and server share this process, two descriptors per
    // connection, and the soft descriptor limit here is 20,000; the server's cost per idle
    // connection is one task and one socket either way.
    const IDLE: usize = 4000;
    let s = sqlite_server().await; // header timeout 2 s
    let t = provision(&s, None).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    // Served while they sit there.
    let r = post(&s, &t.key, NDJSON, line("busy", 0, "{}").into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(s.http.get(s.url("/healthz")).send().await.expect("up").status(), StatusCode::OK);
    // And the server closes every one of them once the head timeout passes.
    let started = Instant::now();
    let mut closed = 0;
    for mut c in idle {
        let mut buf = [0u8; 64];
        // Ok(0), or a reset, within the bound: closed by the server.
        if tokio::time::timeout(Duration::from_secs(60), c.read(&mut buf)).await.is_ok() {
            closed += 1;
        }
    }
    eprintln!(
        "{closed} of {IDLE} idle connections closed by the server in {:?}",
        started.elapsed()
    );
    assert_eq!(closed, IDLE, "every idle connection is closed by the server");
    assert_eq!(s.http.get(s.url("/healthz")).send().await.expect("up").status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// authentication attacks beyond api.rs

async fn whoami(s: &TestServer, token: &str, tenant: Option<&str>) -> (StatusCode, Value) {
    let mut rb = s.http.get(s.url("/v1/whoami")).bearer_auth(token);
    if let Some(t) = tenant {
        rb = rb.header("X-KAHN-Tenant", t);
    }
    status_and_body(rb.send().await.expect("request")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_miss_roles_never_get_admin_and_odd_role_types_are_refused() {
    let s = sqlite_server().await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let mine = provision(&s, Some(&sub)).await;
    let other = provision(&s, None).await.tenant.id.to_string();
    let near = [
        "ADMIN",
        " admin",
        "admin\n",
        "admin\u{0}",
        "adm1n",
        "\u{430}dmin",
        "admin,admin",
        "Administrator",
        "root",
        "",
    ];
    for role in near {
        let token = s.keys.sign(&claims(&sub, Some(role), None));
        let (status, body) = whoami(&s, &token, Some(&other)).await;
        assert_eq!(status, StatusCode::OK, "{role:?}: {body}");
        assert_eq!(body["tenant_source"], "sub", "{role:?}: override ignored: {body}");
        assert_eq!(body["tenant_id"], mine.tenant.id.to_string(), "{role:?}");
        let r = s.http.get(s.url("/api/admin/tenants")).bearer_auth(&token).send().await;
        assert_eq!(r.expect("request").status(), StatusCode::FORBIDDEN, "{role:?}");
    }
    // A role that is not a string at all is a malformed token: 401, not a guess.
    for role in [json!(["admin"]), json!({"name": "admin"}), json!(true), json!(1)] {
        let mut c = claims(&sub, None, None);
        c["role"] = role.clone();
        let (status, _) = whoami(&s, &s.keys.sign(&c), Some(&other)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{role}");
    }
    // Missing role: no admin, the override header is ignored, admin routes are 403.
    let token = s.keys.sign(&claims(&sub, None, None));
    let (status, body) = whoami(&s, &token, Some("not-a-uuid")).await;
    assert_eq!((status, &body["tenant_source"]), (StatusCode::OK, &json!("sub")), "{body}");
    // The real admin: a malformed or unknown tenant is 400 / 404, in every spelling.
    let admin = s.admin_token();
    for (bad, want) in [
        ("not-a-uuid", StatusCode::BAD_REQUEST),
        ("", StatusCode::BAD_REQUEST),
        ("{00000000-0000-0000-0000-000000000000}x", StatusCode::BAD_REQUEST),
        ("00000000-0000-0000-0000-000000000000", StatusCode::NOT_FOUND),
        (&uuid::Uuid::new_v4().to_string(), StatusCode::NOT_FOUND),
    ] {
        let (status, body) = whoami(&s, &admin, Some(bad)).await;
        assert_eq!(status, want, "{bad:?}: {body}");
    }
    // And on a write route the admin's JWT is refused outright, header or not.
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&admin)
        .header("X-KAHN-Tenant", &other)
        .header(CONTENT_TYPE, NDJSON)
        .body(line("x", 0, "{}"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn altered_rotated_and_other_tenants_keys_reach_nothing_of_this_tenant() {
    let s = sqlite_server().await;
    let a = provision(&s, None).await;
    let b = provision(&s, None).await;
    assert_eq!(post(&s, &a.key, NDJSON, line("a-run", 0, "{}").into_bytes()).await.status(), 200);
    let before = fingerprint(&s.backend).await;
    // Every single-character change of A's key, at the prefix, the middle and the end.
    let mut altered = Vec::new();
    for at in [0, 5, 12, a.key.len() / 2, a.key.len() - 1] {
        let mut bytes = a.key.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        altered.push(String::from_utf8(bytes).expect("ascii"));
    }
    altered.push(format!("{}x", a.key));
    altered.push(a.key[..a.key.len() - 1].to_owned());
    altered.push(a.key.to_uppercase());
    for key in &altered {
        let r = post(&s, key, NDJSON, line("a-run", 1, "{}").into_bytes()).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "altered key on ingest");
        let r = s.http.get(s.url("/v1/runs/a-run")).bearer_auth(key).send().await;
        assert_eq!(r.expect("request").status(), StatusCode::UNAUTHORIZED, "altered key on read");
    }
    // Rotation: the old key stops at once, the new one works.
    let keys = s.backend.list_api_keys(a.tenant.id).await.expect("keys");
    let new = s.backend.rotate_api_key(a.tenant.id, keys[0].id).await.expect("rotate");
    let r = s.http.get(s.url("/v1/runs/a-run")).bearer_auth(&a.key).send().await;
    assert_eq!(r.expect("request").status(), StatusCode::UNAUTHORIZED, "rotated-out key");
    let r = s.http.get(s.url("/v1/runs/a-run")).bearer_auth(new.secret.expose_secret());
    assert_eq!(r.send().await.expect("request").status(), StatusCode::OK, "rotated-in key");
    // B's key: A's run does not exist for B; B writing the same run id makes B's own run.
    let r = s.http.get(s.url("/v1/runs/a-run")).bearer_auth(&b.key).send().await;
    assert_eq!(r.expect("request").status(), StatusCode::NOT_FOUND);
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&b.key)
        .header("X-KAHN-Tenant", a.tenant.id.to_string())
        .header(CONTENT_TYPE, NDJSON)
        .body(line("a-run", 0, r#"{"by":"b"}"#))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK, "B writes its own run; the header is not read");
    assert_eq!(r.headers()["x-kahn-effective-tenant"], b.tenant.id.to_string().as_str());
    let mut after = fingerprint(&s.backend).await;
    after.retain(|(t, ..)| *t != b.tenant.id);
    assert_eq!(after, before, "A's data is untouched by every attempt");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Keys are found by the SHA-256 of the whole key, so a key sharing a long prefix with a real
/// one should cost what any unknown key costs. Reported, with only a bound so loose it cannot
/// flake on a loaded machine (a lookup that short-circuited on a prefix would not show up as
/// a 5× difference either — the figure is the evidence, printed for RELIABILITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_prefix_and_random_keys_take_indistinguishable_time() {
    const N: usize = 300;
    let s = sqlite_server().await;
    let a = provision(&s, None).await;
    let near =
        format!("{}{}", &a.key[..a.key.len() - 1], if a.key.ends_with('A') { 'B' } else { 'A' });
    let url = s.url("/v1/whoami");
    let time = |key: String| {
        let (http, url) = (s.http.clone(), url.clone());
        async move {
            let started = Instant::now();
            let r = http.get(&url).bearer_auth(&key).send().await.expect("request");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            started.elapsed().as_secs_f64() * 1e6
        }
    };
    let (mut prefix, mut random) = (Vec::with_capacity(N), Vec::with_capacity(N));
    for i in 0..2 * N {
        // Interleaved, so drift in machine load hits both samples alike.
        if i % 2 == 0 {
            prefix.push(time(near.clone()).await);
        } else {
            random.push(time(ApiKey::generate().expect("rng").expose_secret().to_owned()).await);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let var =
        |v: &[f64], m: f64| v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    let (mp, mr) = (mean(&prefix), mean(&random));
    let t = (mp - mr) / (var(&prefix, mp) / N as f64 + var(&random, mr) / N as f64).sqrt();
    let (dp, dr) = (median(&mut prefix), median(&mut random));
    eprintln!(
        "key timing over {N} each: valid-prefix median {dp:.0} µs mean {mp:.0} µs; random median {dr:.0} µs mean {mr:.0} µs; Welch t = {t:.2}"
    );
    let ratio = dp.max(dr) / dp.min(dr);
    assert!(ratio < 5.0, "medians differ {ratio:.1}× ({dp:.0} vs {dr:.0} µs)");
}

// ---------------------------------------------------------------------------------------
// ambiguous headers and the failed-authentication limit

/// `X-KAHN-Tenant` or `Authorization` twice: which copy wins would depend on who reads the
/// request (a proxy may take the last), so neither is guessed: 400 naming the header. The
/// override takes only the canonical hyphenated UUID spelling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_auth_or_tenant_headers_and_odd_uuid_spellings_are_400() {
    let s = sqlite_server().await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let mine = provision(&s, Some(&sub)).await;
    let other = provision(&s, None).await;
    let other_id = other.tenant.id.to_string();
    let admin = s.admin_token();
    let member = s.keys.sign(&claims(&sub, Some("member"), None));
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut rb = s.http.get(s.url(path));
        for (name, value) in headers {
            rb = rb.header(*name, *value);
        }
        async move { status_and_body(rb.send().await.expect("request")).await }
    };
    let bearer = |t: &str| format!("Bearer {t}");
    let (admin_auth, member_auth) = (bearer(&admin), bearer(&member));
    let (mine_auth, other_auth) = (bearer(&mine.key), bearer(&other.key));
    let mine_id = mine.tenant.id.to_string();

    // Two X-KAHN-Tenant: refused whoever calls, never the first (or last) silently.
    for auth in [&admin_auth, &member_auth, &mine_auth] {
        for (first, second) in [(&other_id, &mine_id), (&other_id, &other_id)] {
            for path in ["/v1/whoami", "/v1/runs", "/v1/runs/x", "/v1/runs/x/transitions"] {
                let (status, body) = get(
                    path,
                    &[("authorization", auth), ("x-kahn-tenant", first), ("x-kahn-tenant", second)],
                )
                .await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
                assert_eq!(body["field"], "X-KAHN-Tenant", "{body}");
                assert!(body["message"].as_str().is_some_and(|m| m.contains("more than once")));
            }
        }
    }
    // Two Authorization headers, on every authenticated route, ingest included.
    for (first, second) in
        [(&mine_auth, &other_auth), (&mine_auth, &mine_auth), (&admin_auth, &mine_auth)]
    {
        for path in ["/v1/whoami", "/v1/runs", "/api/admin/tenants"] {
            let (status, body) =
                get(path, &[("authorization", first), ("authorization", second)]).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["field"], "Authorization", "{body}");
        }
        let before = fingerprint(&s.backend).await;
        let r = s
            .http
            .post(s.url("/v1/ingest/transitions"))
            .header("authorization", first.as_str())
            .header("authorization", second.as_str())
            .header(CONTENT_TYPE, NDJSON)
            .body(line("dup", 0, "{}"))
            .send()
            .await
            .expect("request");
        let (status, body) = status_and_body(r).await;
        assert_eq!((status, &body["field"]), (StatusCode::BAD_REQUEST, &json!("Authorization")));
        assert_eq!(fingerprint(&s.backend).await, before, "nothing written");
    }
    // The override: the canonical spelling, in either case, and nothing else.
    let u = other.tenant.id.as_uuid();
    let upper = other_id.to_uppercase();
    for ok in [other_id.as_str(), upper.as_str()] {
        let (status, body) =
            get("/v1/whoami", &[("authorization", &admin_auth), ("x-kahn-tenant", ok)]).await;
        assert_eq!(status, StatusCode::OK, "{ok}: {body}");
        assert_eq!(
            (&body["tenant_source"], &body["tenant_id"]),
            (&json!("admin_override"), &json!(other_id))
        );
    }
    for odd in [
        format!("{{{other_id}}}"),
        u.urn().to_string(),
        u.simple().to_string(),
        format!("{other_id}0"),
        other_id[..35].to_owned(),
        other_id.replace('-', "_"),
        format!("{}{}-{}", &other_id[..8], &other_id[9..10], &other_id[10..]),
    ] {
        let (status, body) =
            get("/v1/whoami", &[("authorization", &admin_auth), ("x-kahn-tenant", &odd)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{odd:?}: {body}");
        assert_eq!(body["field"], "X-KAHN-Tenant", "{odd:?}: {body}");
    }
}

/// A peer guessing credentials is stopped: after its allowance of failed authentications, every
/// request from its address that presents a credential — a valid one too — is answered 429 with
/// `Retry-After`, before any key is looked up, until the allowance refills. Another address is
/// not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_rate_limited_per_peer_address() {
    const ALLOWANCE: u32 = 30; // one failure back every 2 s
    let s = sqlite_server_with(|config| {
        config
            .with_auth_failures_per_minute(std::num::NonZeroU32::new(ALLOWANCE).expect("non-zero"))
    })
    .await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let a = provision(&s, Some(&sub)).await;
    let jwt = s.keys.sign(&claims(&sub, None, None));
    let whoami = |http: &reqwest::Client, token: &str| {
        let rb = http.get(s.url("/v1/whoami")).bearer_auth(token);
        async move { rb.send().await.expect("request") }
    };
    assert_eq!(whoami(&s.http, &a.key).await.status(), StatusCode::OK);
    // The allowance: unknown keys, malformed keys and forged JWTs all count.
    for i in 0..ALLOWANCE {
        let bad = match i % 3 {
            0 => ApiKey::generate().expect("rng").expose_secret().to_owned(),
            1 => "kahn_live_sk_short".to_owned(),
            _ => TestKeys::generate().sign(&claims(&sub, Some("admin"), None)),
        };
        let r = whoami(&s.http, &bad).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i} is still a 401");
    }
    // Over it: 429 + Retry-After for everything carrying a credential, valid ones included.
    let before = fingerprint(&s.backend).await;
    let bad = ApiKey::generate().expect("rng").expose_secret().to_owned();
    for (what, token) in
        [("a bad key", bad.as_str()), ("a valid key", &a.key), ("a valid JWT", &jwt)]
    {
        let r = whoami(&s.http, token).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{what}");
        let wait: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("secs");
        assert!((1..=2).contains(&wait), "{what}: Retry-After {wait}");
        let (_, body) = status_and_body(r).await;
        assert_eq!(body["error"], "rate_limited", "{body}");
        assert_eq!(body["retry_after_secs"], wait, "{body}");
    }
    let r = post(&s, &a.key, NDJSON, line("blocked", 0, "{}").into_bytes()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "ingest with a valid key");
    assert_eq!(fingerprint(&s.backend).await, before, "nothing written while blocked");
    // What needs no credential is unaffected, and so is another address (127.0.0.2).
    assert_eq!(s.http.get(s.url("/healthz")).send().await.expect("up").status(), StatusCode::OK);
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .expect("client");
    assert_eq!(whoami(&elsewhere, &a.key).await.status(), StatusCode::OK, "another peer");
    assert_eq!(whoami(&elsewhere, &bad).await.status(), StatusCode::UNAUTHORIZED, "another peer");
    // Once the allowance refills by one, the valid key works again; the next failure blocks
    // again at once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(whoami(&s.http, &a.key).await.status(), StatusCode::OK, "after Retry-After");
    assert_eq!(whoami(&s.http, &bad).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(whoami(&s.http, &a.key).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

// ---------------------------------------------------------------------------------------
// One tenant cannot take the server (red team, round two)

/// Opens an ingest request for `key` whose body never finishes (half of it is sent): it stays
/// in flight until the returned stream is dropped.
async fn held_ingest(addr: &str, key: &str) -> TcpStream {
    let body = (line("held", 0, "{}") + "\n").into_bytes();
    let head = ingest_head(addr, key, body.len());
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(&body[..body.len() / 2]).await.expect("half a body");
    stream
}

/// `n` one-transition runs, one line each.
fn many_runs(n: usize) -> Vec<u8> {
    (0..n).map(|i| line(&format!("r{i}"), 0, "{}") + "\n").collect::<String>().into_bytes()
}

async fn until_ok(s: &TestServer, key: &str) {
    for _ in 0..100 {
        if post(s, key, NDJSON, line("after", 0, "{}").into_bytes()).await.status()
            == StatusCode::OK
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tenant was never served again after its held requests closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_naming_more_runs_than_the_cap_is_413_and_writes_nothing() {
    let s = sqlite_server().await;
    let t = provision(&s, None).await;
    let before = fingerprint(&s.backend).await;
    let cap = kahn_http::DEFAULT_MAX_RUNS_PER_REQUEST;
    let r = post(&s, &t.key, NDJSON, many_runs(cap + 1)).await;
    assert_eq!(r.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let (status, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "too_many_runs", "{body}");
    assert_eq!(body["limit"], cap as u64, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("10000")), "{body}");
    assert_eq!(fingerprint(&s.backend).await, before, "nothing was written");
    // The cap itself is accepted.
    let r = post(&s, &t.key, NDJSON, many_runs(cap)).await;
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_at_its_cap_of_ingests_in_flight_gets_429_and_others_are_served() {
    let s = sqlite_server_with(|config| config.with_body_timeout(Duration::from_secs(30))).await;
    let (c, a) = (provision(&s, None).await, provision(&s, None).await);
    let addr = s.url.trim_start_matches("http://").to_owned();
    let cap = kahn_http::DEFAULT_MAX_INGESTS_IN_FLIGHT_PER_TENANT;
    let mut held = Vec::new();
    for _ in 0..cap {
        held.push(held_ingest(&addr, &c.key).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the server take them up
    let r = post(&s, &c.key, NDJSON, line("one-more", 0, "{}").into_bytes()).await;
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap_or("").to_owned());
    let (status, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "too_many_in_flight", "{body}");
    assert_eq!(body["limit"], cap as u64, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    // Another tenant is served meanwhile, and reads are.
    assert_eq!(
        post(&s, &a.key, NDJSON, line("a", 0, "{}").into_bytes()).await.status(),
        StatusCode::OK
    );
    drop(held);
    until_ok(&s, &c.key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_counts_runs_not_only_requests() {
    let two = std::num::NonZeroU32::new(2).expect("not zero");
    let s = sqlite_server_with(|config| config.with_ingest_rate(two)).await;
    let t = provision(&s, None).await;
    // Two units a second: 1,000 runs cost 10 units (capped at the whole allowance of 2),
    // so the next request, however small, waits for the allowance to refill.
    assert_eq!(post(&s, &t.key, NDJSON, many_runs(1000)).await.status(), StatusCode::OK);
    let r = post(&s, &t.key, NDJSON, line("small", 0, "{}").into_bytes()).await;
    assert!(r.headers().contains_key("retry-after"));
    let (status, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"], "rate_limited", "{body}");
    // A request costing more than it may is refused after its body is read, writing nothing.
    let u = provision(&s, None).await;
    let before = fingerprint(&s.backend).await;
    assert_eq!(
        post(&s, &u.key, NDJSON, line("first", 0, "{}").into_bytes()).await.status(),
        StatusCode::OK
    );
    let r = post(&s, &u.key, NDJSON, many_runs(500)).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let mut after = fingerprint(&s.backend).await;
    after.retain(|(_, run, ..)| run != "first");
    assert_eq!(after, before, "the refused request wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_servers_cap_of_requests_in_flight_it_answers_503_with_retry_after() {
    let s = sqlite_server_with(|config| {
        config.with_body_timeout(Duration::from_secs(30)).with_max_requests_in_flight(2)
    })
    .await;
    let t = provision(&s, None).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let held = vec![held_ingest(&addr, &t.key).await, held_ingest(&addr, &t.key).await];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.http.get(s.url("/v1/runs")).bearer_auth(&t.key).send().await.expect("request");
    assert_eq!(r.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let (status, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    // Liveness and metrics stay outside the cap.
    let health = s.http.get(s.url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    drop(held);
    until_ok(&s, &t.key).await;
}

/// The server holds at most `ingest_slots` bodies at once, all tenants together: one more
/// waits its turn, in arrival order (it is not refused while a slot may free up), is served
/// once one frees, and is answered 503 with `Retry-After` when none frees within the body
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_servers_ingest_slots_an_ingest_waits_its_turn_then_503s() {
    let patience = Duration::from_secs(3);
    let s =
        sqlite_server_with(|config| config.with_body_timeout(patience).with_ingest_slots(1)).await;
    let (c, a) = (provision(&s, None).await, provision(&s, None).await);
    let addr = s.url.trim_start_matches("http://").to_owned();

    // The one slot is held by a body that never ends: it times out (408) after 3 s, which
    // frees the slot; another tenant's ingest, sent 1 s in, waits and is then served.
    let held = held_ingest(&addr, &c.key).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = post(&s, &a.key, NDJSON, line("waited", 0, "{}").into_bytes()).await;
    assert_eq!(r.status(), StatusCode::OK, "served once the slot freed");
    drop(held);

    // Now two held bodies: the first holds the slot for 3 s, the second waits for it and then
    // holds it for 3 s more. An ingest sent 1 s in waits its 3 s behind both: 503.
    let first = held_ingest(&addr, &c.key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = held_ingest(&addr, &c.key).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = post(&s, &a.key, NDJSON, line("late", 0, "{}").into_bytes()).await;
    assert_eq!(r.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let (status, body) = status_and_body(r).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable", "{body}");
    drop((first, second));
    until_ok(&s, &a.key).await;
}

/// A plain-HTTP client follows no redirect (it loads no TLS roots, and a KAHN server answers
/// where it is asked): a server that redirects is reported with where it points, and the
/// place it points to is never asked.
#[tokio::test]
async fn a_redirect_is_reported_with_its_location_not_followed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let followed = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let target = format!("{base}/followed");
    let hits = followed.clone();
    let app = axum::Router::new()
        .route(
            "/followed",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { "{}" }
            }),
        )
        .fallback(move || {
            let target = target.clone();
            async move { (StatusCode::PERMANENT_REDIRECT, [(reqwest::header::LOCATION, target)]) }
        });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = kahn_http::HttpBackend::new(&base).expect("client");
    let e = client.ping().await.expect_err("a redirect is not an answer");
    let message = e.to_string();
    assert!(matches!(e, kahn_core::Error::InvalidInput { .. }), "{e:?}");
    assert!(
        message.contains(&format!("redirecting to {base}/followed; use that URL")),
        "{message}"
    );
    assert_eq!(followed.load(Ordering::SeqCst), 0, "the redirect was followed");
}
