//! The HTTP API against a real server on an ephemeral loopback port, with real requests:
//! every status code of the contract's table, the JWT attack list, tenant resolution, the
//! admin override rules, two tenants side by side, rate limits, body limits without
//! buffering, graceful shutdown, retention, metrics and the OpenAPI document.

mod support;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use kahn_core::conformance::SourceLog;
use kahn_core::conformance::fixtures::recent_base;
use kahn_core::{
    ApiKey, Error, MemoryBackend, NewTenant, OrgId, RunId, StorageBackend, StorageBackendExt,
    Tenant,
};
use kahn_http::{HEADER_EFFECTIVE_TENANT, HEADER_TENANT_SOURCE, HttpBackend, NDJSON};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use serde_json::{Value, json};
use support::{TestKeys, TestServer, claims, now, test_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------
// helpers

struct Provisioned {
    tenant: Tenant,
    key: String,
}

async fn provision(s: &TestServer, f: impl FnOnce(NewTenant) -> NewTenant) -> Provisioned {
    let name = format!("t-{}", uuid::Uuid::new_v4().simple());
    let tenant = s
        .backend
        .provision_tenant(&f(NewTenant::new(name).expect("valid")))
        .await
        .expect("provision");
    let key = s.backend.issue_api_key(tenant.id).await.expect("key");
    Provisioned { tenant, key: key.secret.expose_secret().to_owned() }
}

async fn tenant(s: &TestServer) -> Provisioned {
    provision(s, |t| t).await
}

fn lines(log: &SourceLog) -> String {
    log.lines.join("\n") + "\n"
}

async fn ingest(s: &TestServer, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    s.http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(token)
        .header(CONTENT_TYPE, NDJSON)
        .body(body)
        .send()
        .await
        .expect("request")
}

async fn get(
    s: &TestServer,
    path: &str,
    token: Option<&str>,
    tenant: Option<&str>,
) -> reqwest::Response {
    let mut rb = s.http.get(s.url(path));
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(t) = tenant {
        rb = rb.header("X-KAHN-Tenant", t);
    }
    rb.send().await.expect("request")
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.expect("a JSON body")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("<absent>").to_owned()
}

/// Asserts the status and that the body is a JSON error with `error` and `message`.
async fn expect_error(r: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "status");
    let body = json_of(r).await;
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    body
}

fn transition(run: &str, seq: u64) -> String {
    json!({"run_id": run, "seq": seq, "ts": recent_base().to_rfc3339(), "to": "running"})
        .to_string()
}

// ---------------------------------------------------------------------------------------
// ingest

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_200_reports_per_run_and_stamps_the_tenant() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let log = SourceLog::new("r-200", 5, "a", recent_base());
    let meta = json!({"kind": "run", "run_id": "r-200", "source": "choco"}).to_string();
    let r = ingest(&s, &t.key, format!("{meta}\n{}", lines(&log))).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), t.tenant.id.to_string());
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), "api_key");
    let body = json_of(r).await;
    assert_eq!((body["appended"].as_u64(), body["skipped"].as_u64()), (Some(5), Some(0)));
    assert_eq!(body["runs"][0]["run_id"], "r-200");
    assert_eq!(body["runs"][0]["next_seq"], 5);
    let again = json_of(ingest(&s, &t.key, lines(&log)).await).await;
    assert_eq!((again["appended"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(5)));
    assert_eq!(again["runs"][0]["head_hash"], body["runs"][0]["head_hash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_accepts_blank_lines_crlf_and_no_trailing_newline() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let body = format!("\n{}\r\n\n  \n{}", transition("blank", 0), transition("blank", 1));
    let r = ingest(&s, &t.key, body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(json_of(r).await["appended"], 2);
    let with_params = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&t.key)
        .header(CONTENT_TYPE, "Application/X-NDJSON; charset=utf-8")
        .body(transition("blank", 2) + "\n")
        .send()
        .await
        .expect("request");
    assert_eq!(with_params.status(), StatusCode::OK, "media type parameters are fine");
    let empty = ingest(&s, &t.key, "").await;
    assert_eq!(empty.status(), StatusCode::OK, "an empty body is an empty batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_400_names_the_first_bad_line_and_writes_nothing() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let scope = s
        .backend
        .resolve_api_key(&ApiKey::parse(&t.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    let cases = [
        (r#"{"run_id":"bad","seq":1,"to":"x"}"#.to_owned(), "ts"),
        ("{not json".to_owned(), "json"),
        ("[1]".to_owned(), "line"),
        (transition("bad", 0), "seq"), // a duplicate of line 1
        (transition("a/b", 0), "run_id"),
    ];
    for (bad, field) in cases {
        let body = format!("{}\n\n{bad}\n{}\n", transition("bad", 0), transition("bad", 1));
        let r = ingest(&s, &t.key, body).await;
        let e = expect_error(r, StatusCode::BAD_REQUEST, "invalid_line").await;
        assert_eq!(e["line"], 3, "{e}");
        assert_eq!(e["field"], field, "{e}");
        let run = RunId::new("bad").expect("valid");
        assert!(
            matches!(s.backend.get_run(&scope.read(), &run).await, Err(Error::NotFound { .. })),
            "nothing written for {bad}"
        );
    }
    let r = ingest(&s, &t.key, b"\xff\xfe\n".to_vec()).await;
    let e = expect_error(r, StatusCode::BAD_REQUEST, "invalid_line").await;
    assert_eq!(e["line"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_409_gap_and_conflict_carry_seq_hashes_and_expected() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let base = recent_base();
    let log = SourceLog::new("c409", 6, "a", base);
    assert_eq!(ingest(&s, &t.key, log.lines[..4].join("\n")).await.status(), StatusCode::OK);

    let gap = ingest(&s, &t.key, log.lines[5].clone()).await;
    let e = expect_error(gap, StatusCode::CONFLICT, "gap").await;
    assert_eq!(
        (e["run_id"].as_str(), e["seq"].as_u64(), e["expected"].as_u64()),
        (Some("c409"), Some(5), Some(4))
    );

    let other = log.diverging_at(2, "b", base);
    let conflict = ingest(&s, &t.key, other.lines[..5].join("\n")).await;
    let e = expect_error(conflict, StatusCode::CONFLICT, "conflict").await;
    assert_eq!((e["run_id"].as_str(), e["seq"].as_u64()), (Some("c409"), Some(2)));
    assert_eq!(e["stored_hash"], log.body(2).content_hash().to_string());
    assert_eq!(e["incoming_hash"], other.body(2).content_hash().to_string());

    let meta = |src: &str| json!({"kind": "run", "run_id": "c409", "source": src}).to_string();
    assert_eq!(ingest(&s, &t.key, meta("choco")).await.status(), StatusCode::OK);
    let e =
        expect_error(ingest(&s, &t.key, meta("stratt")).await, StatusCode::CONFLICT, "conflict")
            .await;
    assert_eq!(e["field"], "source");
    assert!(e.get("seq").is_none(), "{e}");
    // The tail was not written by the refused pushes.
    let run = json_of(get(&s, "/v1/runs/c409", Some(&t.key), None).await).await;
    assert_eq!(run["next_seq"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_415_for_any_other_content_type() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    for ct in [Some("application/json"), Some("text/plain"), Some("application/x-ndjsonx"), None] {
        let mut rb = s
            .http
            .post(s.url("/v1/ingest/transitions"))
            .bearer_auth(&t.key)
            .body(transition("ct", 0));
        if let Some(ct) = ct {
            rb = rb.header(CONTENT_TYPE, ct);
        }
        let r = rb.send().await.expect("request");
        expect_error(r, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_401_for_missing_malformed_unknown_and_revoked_keys_and_for_jwts() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let unknown = ApiKey::generate().expect("random");
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .header(CONTENT_TYPE, NDJSON)
        .body("")
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    for token in ["kahn_live_sk_short", unknown.expose_secret(), &s.admin_token()] {
        let r = ingest(&s, token, transition("auth", 0)).await;
        assert_eq!(header(&r, "www-authenticate"), "Bearer");
        expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let keys = s.backend.list_api_keys(t.tenant.id).await.expect("keys");
    s.backend.revoke_api_key(t.tenant.id, keys[0].id).await.expect("revoke");
    expect_error(
        ingest(&s, &t.key, transition("auth", 0)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
    let basic = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .header("authorization", format!("Basic {}", t.key))
        .header(CONTENT_TYPE, NDJSON)
        .send()
        .await
        .expect("req");
    expect_error(basic, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// Sends raw HTTP on a fresh connection: `head`, then `body_bytes` of filler in chunks,
/// reading the response concurrently; returns the status line and how many body bytes had
/// been written when the response arrived.
async fn raw_upload(addr: &str, head: String, body_bytes: usize, chunked: bool) -> (String, usize) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(2).any(|w| w == b"\r\n") {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let at = sent.load(std::sync::atomic::Ordering::SeqCst);
            (String::from_utf8_lossy(&got).lines().next().unwrap_or_default().to_owned(), at)
        })
    };
    wr.write_all(head.as_bytes()).await.expect("write head");
    // Blank lines are valid NDJSON: only the size can refuse this body.
    let chunk: Vec<u8> = [[b' '; 63].as_slice(), b"\n"].concat().repeat(1024);
    let mut written = 0;
    while written < body_bytes && !reader.is_finished() {
        let piece = &chunk[..chunk.len().min(body_bytes - written)];
        let ok = if chunked {
            let framed = [format!("{:x}\r\n", piece.len()).as_bytes(), piece, b"\r\n"].concat();
            wr.write_all(&framed).await.is_ok()
        } else {
            wr.write_all(piece).await.is_ok()
        };
        if !ok {
            break;
        }
        written += piece.len();
        sent.store(written, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Never finish the body: a server that buffered it whole would never answer.
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("the server answered before the body ended")
        .expect("reader")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_413_refuses_5_mib_without_buffering_it() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let five_mib = 5 * 1024 * 1024;
    let head = |framing: &str| {
        format!(
            "POST /v1/ingest/transitions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {NDJSON}\r\n{framing}\r\n\r\n",
            t.key
        )
    };
    // Declared 5 MiB: refused from the header, before a single body byte is sent.
    let (status, sent) =
        raw_upload(&addr, head(&format!("Content-Length: {five_mib}")), 0, false).await;
    assert!(status.contains(" 413 "), "{status}");
    assert_eq!(sent, 0);
    // Chunked, no length: refused once the stream passes 1 MiB, long before 5 MiB arrive.
    let (status, sent) =
        raw_upload(&addr, head("Transfer-Encoding: chunked"), five_mib, true).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(sent < five_mib, "answered after {sent} bytes");
    eprintln!("chunked upload answered after {sent} bytes");
    // Through reqwest, a body just over the limit gets a JSON 413. (Just over: a client still
    // writing megabytes when the server refuses from the header may see the connection close
    // before it reads the answer; the raw uploads above cover the large bodies.)
    let line = transition("big", 0) + "\n";
    let body = line.repeat(1024 * 1024 / line.len() + 20);
    assert!(body.len() > 1024 * 1024);
    let r = ingest(&s, &t.key, body).await;
    // The body was left unread, so the answer closes the connection: a pooled client must
    // not send its next request into it.
    assert_eq!(header(&r, "connection"), "close");
    let e = expect_error(r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(e["limit"], 1024 * 1024);
    // Nothing was written, and the server still serves.
    let r = get(&s, "/v1/runs", Some(&t.key), None).await;
    assert_eq!(json_of(r).await["runs"], json!([]));
}

// ---------------------------------------------------------------------------------------
// reads

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_list_page_filter_get_and_transitions_as_json_and_ndjson() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let base = recent_base();
    let mut body = String::new();
    for i in 0..5u64 {
        let run = format!("read-{i}");
        let src = if i % 2 == 0 { "choco" } else { "stratt" };
        body += &(json!({"kind": "run", "run_id": run, "source": src, "graph": {"n": [i]}})
            .to_string()
            + "\n");
        body +=
            &lines(&SourceLog::new(&run, 3 + i, "a", base + chrono::Duration::minutes(i as i64)));
    }
    assert_eq!(ingest(&s, &t.key, body).await.status(), StatusCode::OK);

    let r = get(&s, "/v1/runs?limit=2", Some(&t.key), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), "api_key");
    let page = json_of(r).await;
    let ids: Vec<_> =
        page["runs"].as_array().expect("runs").iter().map(|r| r["run_id"].clone()).collect();
    assert_eq!(ids, [json!("read-4"), json!("read-3")], "newest activity first");
    let cursor = page["next_cursor"].as_str().expect("more pages");
    let page2 =
        json_of(get(&s, &format!("/v1/runs?limit=2&cursor={cursor}"), Some(&t.key), None).await)
            .await;
    assert_eq!(page2["runs"][0]["run_id"], "read-2");
    let choco = json_of(get(&s, "/v1/runs?source=choco", Some(&t.key), None).await).await;
    assert_eq!(choco["runs"].as_array().map(Vec::len), Some(3));
    assert!(choco["next_cursor"].is_null());
    let status = page["runs"][0]["status"].as_str().expect("status").to_owned();
    let by_status =
        json_of(get(&s, &format!("/v1/runs?status={status}&limit=100"), Some(&t.key), None).await)
            .await;
    assert!(
        by_status["runs"].as_array().expect("runs").iter().all(|r| r["status"] == status.as_str())
    );
    expect_error(
        get(&s, "/v1/runs?cursor=zz", Some(&t.key), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    expect_error(
        get(&s, "/v1/runs?limit=0", Some(&t.key), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    expect_error(
        get(&s, "/v1/runs?limit=abc", Some(&t.key), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
    for (bad, field) in [
        ("node_class=broken", "node_class"),
        ("node_class=", "node_class"),
        ("run_id_prefix=a%25", "run_id_prefix"),
    ] {
        let r = get(&s, &format!("/v1/runs?{bad}"), Some(&t.key), None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(json_of(r).await["field"], field, "{bad}");
    }
    // The fixture's states are pending, running and succeeded: runs with an active node, none
    // with a failed one.
    let runs_with = |class: &'static str| {
        let s = &s;
        let key = t.key.clone();
        async move {
            let path = format!("/v1/runs?node_class={class}&limit=100");
            let page = json_of(get(s, &path, Some(&key), None).await).await;
            page["runs"].as_array().expect("runs").clone()
        }
    };
    let active = runs_with("active").await;
    assert!(!active.is_empty());
    assert!(active.iter().all(|r| r["node_counts"]["active"].as_u64().is_some_and(|n| n > 0)));
    assert!(runs_with("failed").await.is_empty());

    let run = json_of(get(&s, "/v1/runs/read-4", Some(&t.key), None).await).await;
    assert_eq!(
        (run["source"].as_str(), run["next_seq"].as_u64(), run["transition_count"].as_u64()),
        (Some("choco"), Some(7), Some(7))
    );
    assert_eq!(run["graph"], json!({"n": [4]}));
    assert_eq!(run["head_hash"].as_str().map(str::len), Some(64));

    let tr = json_of(
        get(&s, "/v1/runs/read-4/transitions?after_seq=2&limit=3", Some(&t.key), None).await,
    )
    .await;
    let seqs: Vec<_> =
        tr["transitions"].as_array().expect("list").iter().map(|t| t["seq"].as_u64()).collect();
    assert_eq!(seqs, [Some(3), Some(4), Some(5)]);
    assert_eq!(tr["transitions"][0]["content_hash"].as_str().map(str::len), Some(64));

    let nd = s
        .http
        .get(s.url("/v1/runs/read-4/transitions?limit=1000"))
        .bearer_auth(&t.key)
        .header(ACCEPT, NDJSON)
        .send()
        .await
        .expect("req");
    assert_eq!(nd.status(), StatusCode::OK);
    assert_eq!(header(&nd, "content-type"), NDJSON);
    assert_eq!(header(&nd, HEADER_TENANT_SOURCE), "api_key");
    let text = nd.text().await.expect("text");
    assert_eq!(text.lines().count(), 7);
    // The NDJSON export is the source log: pushing it again is a no-op.
    let again = json_of(ingest(&s, &t.key, text).await).await;
    assert_eq!((again["appended"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_401_without_or_with_bad_credentials_and_404_for_unknown_runs() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    for path in ["/v1/runs", "/v1/runs/x", "/v1/runs/x/transitions", "/v1/whoami"] {
        expect_error(get(&s, path, None, None).await, StatusCode::UNAUTHORIZED, "unauthorized")
            .await;
        expect_error(
            get(&s, path, Some("not.a.jwt"), None).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let r = get(&s, "/v1/runs/nope", Some(&t.key), None).await;
    assert_eq!(
        header(&r, HEADER_EFFECTIVE_TENANT),
        t.tenant.id.to_string(),
        "errors are stamped too"
    );
    let e = expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(e["what"], "run");
    expect_error(
        get(&s, "/v1/runs/nope/transitions", Some(&t.key), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        get(&s, "/v1/runs/..", Some(&t.key), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_error(
        get(&s, "/v1/runs/a%20b", Some(&t.key), None).await,
        StatusCode::BAD_REQUEST,
        "invalid_input",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json_errors() {
    let s = TestServer::memory().await;
    expect_error(get(&s, "/v2/nothing", None, None).await, StatusCode::NOT_FOUND, "not_found")
        .await;
    let r = s.http.delete(s.url("/v1/runs")).send().await.expect("req");
    expect_error(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

// ---------------------------------------------------------------------------------------
// JWTs

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn forged(alg: &str, claims: &Value, sig: &[u8]) -> String {
    let header = json!({"alg": alg, "typ": "JWT"}).to_string();
    format!("{}.{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()), b64(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_attacks_are_all_401() {
    let s = TestServer::memory().await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let mine = provision(&s, |t| t.with_owner_sub(sub.clone()).expect("valid")).await;
    // The test servers require iss https://idp.test and aud kahn (support::test_config).
    let good = claims(&sub, None, None);
    assert_eq!((&good["iss"], &good["aud"]), (&json!("https://idp.test"), &json!("kahn")));
    let ok = get(&s, "/v1/whoami", Some(&s.keys.sign(&good)), None).await;
    assert_eq!(ok.status(), StatusCode::OK, "the well-formed token is accepted");
    let who = json_of(ok).await;
    assert_eq!(who["tenant_source"], "sub");
    assert_eq!(who["tenant_name"], json!(mine.tenant.name), "whoami names the tenant");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let other_key = TestKeys::generate();
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(s.keys.public_pem.as_bytes()),
    )
    .expect("sign");
    let hs256_raw = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&s.keys.public_raw),
    )
    .expect("sign");
    let valid_sig = s.keys.sign(&good);
    let sig_of_valid = valid_sig.rsplit('.').next().expect("sig").to_owned();
    let attacks: Vec<(&str, String)> = vec![
        ("alg none", forged("none", &good, b"")),
        ("alg none, upper case", forged("None", &good, b"")),
        ("HS256 keyed with the public key PEM", hs256),
        ("HS256 keyed with the raw public key", hs256_raw),
        ("RS256", forged("RS256", &good, &[7u8; 256])),
        ("ES256", forged("ES256", &good, &[7u8; 64])),
        ("EdDSA signed by another key", other_key.sign(&good)),
        ("EdDSA with a signature moved from another token", {
            let c = with(&|c| c["role"] = json!("admin"));
            let parts: Vec<_> = s.keys.sign(&c).split('.').map(str::to_owned).collect();
            format!("{}.{}.{sig_of_valid}", parts[0], parts[1])
        }),
        ("expired", s.keys.sign(&with(&|c| c["exp"] = json!(now() - 3600)))),
        ("expired beyond the leeway", s.keys.sign(&with(&|c| c["exp"] = json!(now() - 120)))),
        ("nbf in the future", s.keys.sign(&with(&|c| c["nbf"] = json!(now() + 3600)))),
        (
            "nbf as a string (CVE-2026-25537)",
            s.keys.sign(&with(&|c| c["nbf"] = json!((now() + 3600).to_string()))),
        ),
        (
            "exp as a string (CVE-2026-25537)",
            s.keys.sign(&with(&|c| c["exp"] = json!("9999999999"))),
        ),
        (
            "missing exp",
            s.keys.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("exp");
            })),
        ),
        ("wrong iss", s.keys.sign(&with(&|c| c["iss"] = json!("https://evil.test")))),
        (
            "missing iss",
            s.keys.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("iss");
            })),
        ),
        ("wrong aud", s.keys.sign(&with(&|c| c["aud"] = json!("other")))),
        (
            "missing aud",
            s.keys.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("aud");
            })),
        ),
        (
            "missing sub",
            s.keys.sign(&with(&|c| {
                c.as_object_mut().expect("object").remove("sub");
            })),
        ),
        (
            "iss a list holding the configured issuer",
            s.keys.sign(&with(&|c| c["iss"] = json!(["https://idp.test", "https://evil.test"]))),
        ),
        ("iss a one-item list", s.keys.sign(&with(&|c| c["iss"] = json!(["https://idp.test"])))),
        ("iss a number", s.keys.sign(&with(&|c| c["iss"] = json!(7)))),
        ("iss null", s.keys.sign(&with(&|c| c["iss"] = Value::Null))),
        ("crit naming a claim", signed_with_crit(&s, &good, &["exp"])),
        ("crit naming b64 (RFC 7797)", signed_with_crit(&s, &good, &["b64"])),
        ("crit naming an unknown extension", signed_with_crit(&s, &good, &["kahn-ext"])),
        ("crit empty", signed_with_crit(&s, &good, &[])),
        ("garbage", "a.b.c".to_owned()),
        ("truncated", valid_sig[..valid_sig.len() - 4].to_owned()),
    ];
    for (name, token) in attacks {
        for path in ["/v1/whoami", "/v1/runs", "/api/admin/tenants"] {
            let r = get(&s, path, Some(&token), None).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{name} on {path}");
            let body = json_of(r).await;
            assert_eq!(body["error"], "unauthorized", "{name}: {body}");
        }
    }
    // Within the small leeway, a just-expired token still passes.
    let r =
        get(&s, "/v1/whoami", Some(&s.keys.sign(&with(&|c| c["exp"] = json!(now() - 5)))), None)
            .await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A valid signature over `claims` under a header whose `crit` names `crit`.
fn signed_with_crit(s: &TestServer, claims: &Value, crit: &[&str]) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.crit = Some(crit.iter().map(|c| (*c).to_owned()).collect());
    s.keys.sign_with_header(&header, claims)
}

/// A JWT key without an issuer or an audience would accept any token the key ever signed for
/// another service: the server refuses to start, naming the missing setting, unless the
/// insecure opt-out says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwt_key_without_issuer_and_audience_is_refused_unless_opted_out_knowingly() {
    let keys = TestKeys::generate();
    let key = || kahn_http::JwtKeySource::Pem(keys.public_pem.clone());
    let start = |jwt: kahn_http::JwtConfig| {
        kahn_http::AppState::new(Arc::new(MemoryBackend::new()), test_config(&keys).with_jwt(jwt))
    };
    for (jwt, missing) in [
        (kahn_http::JwtConfig::new(key()), "jwt.issuer"),
        (kahn_http::JwtConfig::new(key()).with_audience("kahn"), "jwt.issuer"),
        (kahn_http::JwtConfig::new(key()).with_issuer("https://idp.test"), "jwt.audience"),
    ] {
        match start(jwt) {
            Err(e @ kahn_http::ConfigError::Missing { setting, .. }) => {
                assert_eq!(setting, missing, "{e}");
                assert!(e.to_string().contains("another service"), "{e}");
            }
            other => panic!("{missing}: expected ConfigError::Missing, got {other:?}"),
        }
    }
    // Knowingly opted out: tokens without iss or aud pass; iss, when present, is still a
    // string, and crit is still refused.
    let jwt = kahn_http::JwtConfig::new(key()).with_insecure_no_issuer_audience_check();
    let config = test_config(&keys).with_jwt(jwt);
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let mut bare = claims("someone", None, None);
    let object = bare.as_object_mut().expect("object");
    object.remove("iss");
    object.remove("aud");
    let r = get(&s, "/v1/whoami", Some(&s.keys.sign(&bare)), None).await;
    assert_eq!(r.status(), StatusCode::OK, "opted out: no iss/aud needed");
    let mut listed = bare.clone();
    listed["iss"] = json!(["https://idp.test"]);
    let r = get(&s, "/v1/whoami", Some(&s.keys.sign(&listed)), None).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = get(&s, "/v1/whoami", Some(&signed_with_crit(&s, &bare, &["exp"])), None).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_keys_are_chosen_by_kid() {
    let keys = TestKeys::generate();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, keys.jwks("k1")).expect("write jwks");
    let config = test_config(&keys).with_jwt(
        kahn_http::JwtConfig::new(kahn_http::JwtKeySource::JwksFile(path))
            .with_issuer("https://idp.test")
            .with_audience("kahn"),
    );
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let c = claims("someone", None, None);
    assert_eq!(
        get(&s, "/v1/whoami", Some(&s.keys.sign_with_kid(&c, Some("k1"))), None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        get(&s, "/v1/whoami", Some(&s.keys.sign(&c)), None).await.status(),
        StatusCode::OK,
        "no kid: try the keys"
    );
    let r = get(&s, "/v1/whoami", Some(&s.keys.sign_with_kid(&c, Some("rsa-1"))), None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the RSA entry is never a verification key");
    let r = get(&s, "/v1/whoami", Some(&s.keys.sign_with_kid(&c, Some("k9"))), None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Bad key configurations refuse to start.
    for bad in [
        kahn_http::JwtKeySource::Jwks(r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#.into()),
        kahn_http::JwtKeySource::Jwks("not json".into()),
        kahn_http::JwtKeySource::Pem(
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into(),
        ),
        kahn_http::JwtKeySource::PemFile(dir.path().join("missing.pem")),
    ] {
        let jwt = kahn_http::JwtConfig::new(bad.clone())
            .with_issuer("https://idp.test")
            .with_audience("kahn");
        let config = kahn_http::ServerConfig::default().with_jwt(jwt);
        assert!(
            matches!(
                kahn_http::AppState::new(Arc::new(MemoryBackend::new()), config),
                Err(kahn_http::ConfigError::InvalidKey(_) | kahn_http::ConfigError::ReadKey { .. })
            ),
            "{bad:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_jwt_config_refuses_every_jwt() {
    let keys = TestKeys::generate();
    let config = kahn_http::ServerConfig::default().with_retention_interval(None);
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let r = get(&s, "/v1/whoami", Some(&s.admin_token()), None).await;
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

// ---------------------------------------------------------------------------------------
// tenant resolution and the admin override

async fn check_view(
    s: &TestServer,
    token: String,
    tenant: Option<&Tenant>,
    source: &str,
    runs: Vec<&str>,
) {
    let r = get(s, "/v1/whoami", Some(&token), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let want = tenant.map_or_else(|| "none".to_owned(), |t| t.id.to_string());
    assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), want);
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), source);
    let me = json_of(r).await;
    assert_eq!(me["tenant_source"], source);
    assert_eq!(me["tenant_id"], tenant.map_or(Value::Null, |t| json!(t.id)));
    let r = get(s, "/v1/runs", Some(&token), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), source);
    assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), want);
    let listed: Vec<String> = json_of(r).await["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| r["run_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(listed, runs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tenant_is_org_then_sub_then_none_and_none_shows_nothing() {
    // Without personal tenants on first sign-in, a stranger has no tenant at all.
    let keys = TestKeys::generate();
    let config = test_config(&keys).with_personal_tenants(false);
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let personal = provision(&s, |t| t.with_owner_sub(sub.clone()).expect("valid")).await;
    let team = tenant(&s).await;
    let org = format!("org_{}", uuid::Uuid::new_v4().simple());
    s.backend.link_org(team.tenant.id, &OrgId::new(&org).expect("valid")).await.expect("link");
    ingest(&s, &personal.key, transition("mine", 0)).await;
    ingest(&s, &team.key, transition("ours", 0)).await;

    check_view(
        &s,
        s.keys.sign(&claims(&sub, None, None)),
        Some(&personal.tenant),
        "sub",
        vec!["mine"],
    )
    .await;
    check_view(
        &s,
        s.keys.sign(&claims(&sub, None, Some(&org))),
        Some(&team.tenant),
        "org",
        vec!["ours"],
    )
    .await;
    check_view(
        &s,
        s.keys.sign(&claims(&sub, None, Some("org_unlinked"))),
        Some(&personal.tenant),
        "sub",
        vec!["mine"],
    )
    .await;
    check_view(&s, s.keys.sign(&claims("stranger", None, None)), None, "none", vec![]).await;
    let stranger = s.keys.sign(&claims("stranger", Some("member"), Some("org_unlinked")));
    let r = get(&s, "/v1/runs/ours", Some(&stranger), None).await;
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), "none");
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    let me = json_of(get(&s, "/v1/whoami", Some(&stranger), None).await).await;
    assert!(me["message"].as_str().is_some_and(|m| m.contains("no tenant")), "{me}");
}

#[tokio::test]
async fn a_stranger_gets_a_personal_tenant_once_unless_their_org_is_linked() {
    let s = TestServer::memory().await;
    let log = audit_log();
    let sub = format!("auth0|{}", uuid::Uuid::new_v4().simple());
    let token = s.keys.sign(&claims(&sub, None, Some("org_unlinked")));
    let me = json_of(get(&s, "/v1/whoami", Some(&token), None).await).await;
    assert_eq!(me["tenant_source"], "sub", "{me}");
    let id: kahn_core::TenantId =
        me["tenant_id"].as_str().and_then(|t| t.parse().ok()).expect("a tenant");
    let created = s.backend.get_tenant(id).await.expect("created");
    assert_eq!(created.name, format!("user:{sub}"));
    assert_eq!(created.owner_sub.as_deref(), Some(sub.as_str()));
    let r = get(&s, "/v1/runs", Some(&token), None).await;
    assert_eq!(header(&r, HEADER_TENANT_SOURCE), "sub");
    assert_eq!(json_of(r).await["runs"], serde_json::json!([]));
    let again = json_of(get(&s, "/v1/whoami", Some(&token), None).await).await;
    assert_eq!(again["tenant_id"], me["tenant_id"], "one tenant, however many sign-ins");
    let events = log.lock().expect("lock").clone();
    let provisioned: Vec<_> = events
        .iter()
        .filter(|e| e.get("event").map(String::as_str) == Some("personal_tenant"))
        .filter(|e| e.get("sub") == Some(&sub))
        .collect();
    assert_eq!(provisioned.len(), 1, "the creation is audited once: {provisioned:?}");
    assert_eq!(provisioned[0].get("outcome").map(String::as_str), Some("provisioned"));

    // A member of a linked org reads the org's tenant; no personal tenant is made for them.
    let team = tenant(&s).await;
    let org = format!("org_{}", uuid::Uuid::new_v4().simple());
    s.backend.link_org(team.tenant.id, &OrgId::new(&org).expect("valid")).await.expect("link");
    let member = format!("member-{}", uuid::Uuid::new_v4().simple());
    let token = s.keys.sign(&claims(&member, None, Some(&org)));
    let me = json_of(get(&s, "/v1/whoami", Some(&token), None).await).await;
    assert_eq!(me["tenant_source"], "org");
    assert!(s.backend.lookup_tenant_by_sub(&member).await.expect("lookup").is_none());
}

type AuditLog = Arc<Mutex<Vec<BTreeMap<String, String>>>>;

/// Records the audit events the server emits (`target: kahn::audit`).
fn audit_log() -> AuditLog {
    use tracing_subscriber::layer::SubscriberExt;
    static LOG: OnceLock<AuditLog> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(log.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        log
    })
    .clone()
}

struct Capture(AuditLog);

struct Fields(BTreeMap<String, String>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == kahn_http::AUDIT_TARGET {
            let mut f = Fields(BTreeMap::new());
            event.record(&mut f);
            self.0.lock().expect("lock").push(f.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_override_reads_any_tenant_is_audited_and_follows_the_rules() {
    let log = audit_log();
    let s = TestServer::memory().await;
    let a = tenant(&s).await;
    let b = tenant(&s).await;
    ingest(&s, &a.key, transition("a-run", 0)).await;
    ingest(&s, &b.key, transition("b-run", 0)).await;
    let admin = s.admin_token();
    let b_id = b.tenant.id.to_string();

    // Honoured for role admin: reads B, says so, and is audited.
    for path in ["/v1/runs", "/v1/runs/b-run", "/v1/runs/b-run/transitions", "/v1/whoami"] {
        let r = get(&s, path, Some(&admin), Some(&b_id)).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), b_id);
        assert_eq!(header(&r, HEADER_TENANT_SOURCE), "admin_override");
    }
    let events: Vec<_> = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| e.get("tenant") == Some(&b_id))
        .cloned()
        .collect();
    assert_eq!(events.len(), 4, "one audit event per honoured override: {events:?}");
    assert_eq!(events[0].get("sub").map(String::as_str), Some("kahn-admin"));
    assert_eq!(events[0].get("route").map(String::as_str), Some("/v1/runs"));
    assert_eq!(events[1].get("route").map(String::as_str), Some("/v1/runs/{run_id}"));
    assert_eq!(events[0].get("event").map(String::as_str), Some("admin_override"));
    assert_eq!(events[0].get("outcome").map(String::as_str), Some("honoured"));
    assert_eq!(events[0].get("iss").map(String::as_str), Some("https://idp.test"));
    let peer = events[0].get("peer").cloned().unwrap_or_default();
    assert!(peer.starts_with("127.0.0.1:"), "the peer address is recorded: {peer:?}");

    // Malformed → 400; unknown → 404; both audited as refused.
    let r = get(&s, "/v1/runs", Some(&admin), Some("not-a-uuid")).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await;
    let braced = format!("{{{b_id}}}");
    let r = get(&s, "/v1/runs", Some(&admin), Some(&braced)).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let r = get(&s, "/v1/runs", Some(&admin), Some(&unknown)).await;
    let e = expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(e["what"], "tenant");
    let outcome_of = |tenant: &str| -> Vec<String> {
        log.lock()
            .expect("lock")
            .iter()
            .filter(|e| e.get("tenant").map(String::as_str) == Some(tenant))
            .map(|e| {
                assert_eq!(e.get("iss").map(String::as_str), Some("https://idp.test"), "{e:?}");
                assert!(e.get("peer").is_some_and(|p| p.starts_with("127.0.0.1:")), "{e:?}");
                e.get("outcome").cloned().unwrap_or_default()
            })
            .collect()
    };
    assert_eq!(outcome_of(&braced), ["refused_malformed"]);
    assert_eq!(outcome_of(&unknown), ["refused_unknown_tenant"]);

    // Not admin exactly → ignored (own tenant or none), even when malformed.
    let a_sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let a_owner = provision(&s, |t| t.with_owner_sub(a_sub.clone()).expect("valid")).await;
    for role in [None, Some("Admin"), Some("admin "), Some("superadmin"), Some("member")] {
        let token = s.keys.sign(&claims(&a_sub, role, None));
        for tenant_header in [b_id.as_str(), "not-a-uuid"] {
            let r = get(&s, "/v1/runs", Some(&token), Some(tenant_header)).await;
            assert_eq!(r.status(), StatusCode::OK, "{role:?}");
            assert_eq!(
                header(&r, HEADER_EFFECTIVE_TENANT),
                a_owner.tenant.id.to_string(),
                "{role:?}"
            );
            assert_eq!(header(&r, HEADER_TENANT_SOURCE), "sub");
        }
        let r = get(&s, "/api/admin/tenants", Some(&token), None).await;
        expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // Ignored overrides are audited too, with the role that did not qualify.
    let ignored: Vec<_> = log
        .lock()
        .expect("lock")
        .iter()
        .filter(|e| {
            e.get("sub") == Some(&a_sub)
                && e.get("event").map(String::as_str) == Some("admin_override")
        })
        .map(|e| (e.get("outcome").cloned().unwrap_or_default(), e.get("role").cloned()))
        .collect();
    assert_eq!(ignored.len(), 10, "two attempts for each of five roles: {ignored:?}");
    assert!(ignored.iter().all(|(o, _)| o == "ignored_not_admin"), "{ignored:?}");
    assert!(ignored.iter().any(|(_, r)| r.as_deref() == Some("admin ")), "{ignored:?}");
    // An API key never sees the header either.
    let r = get(&s, "/v1/runs/b-run", Some(&a.key), Some(&b_id)).await;
    assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), a.tenant.id.to_string());
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;

    // An override cannot write: ingest takes only an API key, and with one the header is
    // ignored — the key's own tenant is written.
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&admin)
        .header("X-KAHN-Tenant", &b_id)
        .header(CONTENT_TYPE, NDJSON)
        .body(transition("b-run", 1))
        .send()
        .await
        .expect("req");
    expect_error(r, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let r = s
        .http
        .post(s.url("/v1/ingest/transitions"))
        .bearer_auth(&a.key)
        .header("X-KAHN-Tenant", &b_id)
        .header(CONTENT_TYPE, NDJSON)
        .body(transition("b-run", 0))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, HEADER_EFFECTIVE_TENANT), a.tenant.id.to_string());
    let b_run = json_of(get(&s, "/v1/runs/b-run", Some(&b.key), None).await).await;
    assert_eq!(b_run["next_seq"], 1, "B's run is untouched");

    // The admin listing.
    let r = get(&s, "/api/admin/tenants", Some(&admin), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let list = json_of(r).await;
    let b_row = list["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .find(|t| t["id"] == b_id.as_str())
        .cloned();
    assert_eq!(b_row.map(|t| t["run_count"].clone()), Some(json!(1)));
    let r = get(&s, "/api/admin/tenants", Some(&a.key), None).await;
    expect_error(r, StatusCode::FORBIDDEN, "forbidden").await;
    expect_error(
        get(&s, "/api/admin/tenants", None, None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_tenants_pushing_and_reading_side_by_side_never_see_each_other() {
    let s = TestServer::memory().await;
    let a = tenant(&s).await;
    let b = tenant(&s).await;
    let base = recent_base();
    let push = |key: String, tag: &'static str| {
        let (url, http) = (s.url("/v1/ingest/transitions"), s.http.clone());
        tokio::spawn(async move {
            for run in ["shared-id", &format!("{tag}-only")] {
                let log = SourceLog::new(run, 40, tag, base);
                for chunk in log.lines.chunks(7) {
                    let r = http
                        .post(&url)
                        .bearer_auth(&key)
                        .header(CONTENT_TYPE, NDJSON)
                        .body(chunk.join("\n"))
                        .send()
                        .await
                        .expect("req");
                    assert_eq!(r.status(), StatusCode::OK);
                }
            }
        })
    };
    let (ta, tb) = (push(a.key.clone(), "a"), push(b.key.clone(), "b"));
    ta.await.expect("a pushes");
    tb.await.expect("b pushes");
    for (me, tag, other) in [(&a, "a", "b"), (&b, "b", "a")] {
        let runs = json_of(get(&s, "/v1/runs?limit=100", Some(&me.key), None).await).await;
        let mut ids: Vec<_> = runs["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["run_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        ids.sort();
        assert_eq!(ids, [format!("{tag}-only"), "shared-id".to_owned()]);
        let nd = s
            .http
            .get(s.url("/v1/runs/shared-id/transitions?limit=1000"))
            .bearer_auth(&me.key)
            .header(ACCEPT, NDJSON)
            .send()
            .await
            .expect("req");
        let text = nd.text().await.expect("text");
        assert_eq!(text.lines().count(), 40);
        assert!(text.lines().all(|l| l.contains(&format!("\"tag\":\"{tag}\""))), "only my content");
        let r = get(&s, &format!("/v1/runs/{other}-only"), Some(&me.key), None).await;
        expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    }
    // Through HttpBackend too.
    let client = s.client();
    let a_scope = client
        .resolve_api_key(&ApiKey::parse(&a.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    let b_only = RunId::new("b-only").expect("valid");
    assert!(matches!(client.get_run(&a_scope.read(), &b_only).await, Err(Error::NotFound { .. })));
}

// ---------------------------------------------------------------------------------------
// limits, shutdown, retention

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_429_with_retry_after_then_success() {
    let keys = TestKeys::generate();
    let backend: Arc<dyn StorageBackend> = Arc::new(MemoryBackend::new());
    let fast = backend.provision_tenant(&NewTenant::new("fast").expect("valid")).await.expect("t");
    let config = test_config(&keys)
        .with_ingest_rate(NonZeroU32::new(1).expect("not zero"))
        .with_tenant_ingest_rate(fast.id, NonZeroU32::new(1000).expect("not zero"));
    let s = TestServer::start(backend, keys, config).await;
    let slow = tenant(&s).await;
    let fast_key =
        s.backend.issue_api_key(fast.id).await.expect("key").secret.expose_secret().to_owned();

    assert_eq!(ingest(&s, &slow.key, transition("rl", 0)).await.status(), StatusCode::OK);
    // At 1 request/s the next one is refused (re-sending seq 0 is an idempotent no-op, so a
    // slow machine that lets one through changes nothing; it just tries again).
    let mut refused = None;
    for _ in 0..10 {
        let r = ingest(&s, &slow.key, transition("rl", 0)).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r = refused.expect("a 429 within ten back-to-back requests");
    let wait: u64 = header(&r, RETRY_AFTER.as_str()).parse().expect("Retry-After in seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    let e = expect_error(r, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(e["retry_after_secs"], wait);
    // Another tenant is not slowed by this one, and its own limit is its own.
    for seq in 0..20 {
        assert_eq!(ingest(&s, &fast_key, transition("rl", seq)).await.status(), StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let r = ingest(&s, &slow.key, transition("rl", 1)).await;
    assert_eq!(r.status(), StatusCode::OK, "allowed again after Retry-After");
    // The client honours Retry-After by itself.
    let client = s.client();
    let scope = client
        .resolve_api_key(&ApiKey::parse(&slow.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    let batch = kahn_core::AppendBatch::from_ndjson(&transition("rl", 2)).expect("valid");
    let report = client.append(&scope, &batch).await.expect("retried after 429");
    assert_eq!(report.appended(), 1);
    let metrics =
        s.http.get(s.url("/metrics")).send().await.expect("req").text().await.expect("text");
    assert!(metrics.contains("kahn_ingest_rate_limited_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_an_in_flight_ingest_finish() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let body = format!("{}\n{}\n", transition("inflight", 0), transition("inflight", 1));
    let (first, rest) = body.split_at(body.len() / 2);
    let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/ingest/transitions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: {NDJSON}\r\nContent-Length: {}\r\n\r\n{first}",
        t.key,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("write");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let backend = s.backend.clone();
    let stopping = tokio::spawn(s.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!stopping.is_finished(), "the server waits for the request in flight");
    conn.write_all(rest.as_bytes()).await.expect("write the rest");
    let mut response = String::new();
    conn.read_to_string(&mut response).await.expect("read");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("stops").expect("task");
    let scope = backend
        .resolve_api_key(&ApiKey::parse(&t.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    let run = backend
        .get_run(&scope.read(), &RunId::new("inflight").expect("valid"))
        .await
        .expect("written");
    assert_eq!(run.info.next_seq, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_task_purges_expired_runs_on_its_interval() {
    // The store's clock, moved forward by the test: retention counts from receipt.
    let skew = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let clock = skew.clone();
    let backend = MemoryBackend::with_clock(move || {
        Utc::now() + chrono::Duration::seconds(clock.load(std::sync::atomic::Ordering::SeqCst))
    });
    let keys = TestKeys::generate();
    let config = test_config(&keys).with_retention_interval(Some(Duration::from_millis(100)));
    let s = TestServer::start(Arc::new(backend), keys, config).await;
    let t = provision(&s, |t| t.with_retention_days(1).expect("valid")).await;
    // Dated ten days ago, received now: a backfill is kept.
    let old = SourceLog::new("old", 3, "a", Utc::now() - chrono::Duration::days(10));
    assert_eq!(ingest(&s, &t.key, lines(&old)).await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get(&s, "/v1/runs/old", Some(&t.key), None).await.status(), StatusCode::OK);
    // Two days pass; a run received now is fresh, the backfill is past its day.
    skew.store(2 * 86_400, std::sync::atomic::Ordering::SeqCst);
    let fresh = SourceLog::new("fresh", 2, "a", recent_base());
    assert_eq!(ingest(&s, &t.key, lines(&fresh)).await.status(), StatusCode::OK);
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if get(&s, "/v1/runs/old", Some(&t.key), None).await.status() == StatusCode::NOT_FOUND {
            gone = true;
            break;
        }
    }
    assert!(gone, "the expired run was purged");
    assert_eq!(get(&s, "/v1/runs/fresh", Some(&t.key), None).await.status(), StatusCode::OK);
}

// ---------------------------------------------------------------------------------------
// ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    for path in ["/healthz", "/readyz"] {
        let r = get(&s, path, None, None).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(json_of(r).await["status"], "ok");
    }
    ingest(&s, &t.key, transition("m", 0)).await;
    ingest(&s, &t.key, transition("m", 0)).await;
    get(&s, "/v1/runs/unknown", Some(&t.key), None).await;
    let r = get(&s, "/metrics", None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").starts_with("text/plain"));
    let text = r.text().await.expect("text");
    for needle in [
        r#"kahn_http_requests_total{method="POST",route="/v1/ingest/transitions",status="200"} 2"#,
        r#"kahn_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="404"} 1"#,
        "kahn_transitions_appended_total 1",
        "kahn_transitions_skipped_total 1",
        "kahn_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} in\n{text}");
    }
    assert!(!text.contains("/v1/runs/unknown"), "raw paths never become labels");
    assert!(HttpBackend::new(&s.url).expect("client").ping().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_validates_and_covers_every_route() {
    let s = TestServer::memory().await;
    let r = get(&s, "/openapi.json", None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("text");
    let spec = oas3::from_json(&text).expect("a valid OpenAPI 3.1 document");
    assert!(spec.openapi.starts_with("3."), "{}", spec.openapi);
    let doc: Value = serde_json::from_str(&text).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    let want = [
        ("/v1/ingest/transitions", "post", &["200", "400", "401", "409", "413", "415", "429"][..]),
        ("/v1/runs", "get", &["200", "400", "401", "404", "429"][..]),
        ("/v1/runs/{run_id}", "get", &["200", "400", "401", "404", "429"][..]),
        ("/v1/runs/{run_id}/transitions", "get", &["200", "400", "401", "404", "429"][..]),
        ("/v1/whoami", "get", &["200", "400", "401", "429"][..]),
        ("/api/admin/tenants", "get", &["200", "400", "401", "403", "429"][..]),
        ("/healthz", "get", &["200"][..]),
        ("/readyz", "get", &["200", "503"][..]),
        ("/metrics", "get", &["200"][..]),
        ("/openapi.json", "get", &["200"][..]),
        ("/auth/config", "get", &["200"][..]),
        ("/v1/receipts/key", "get", &["200", "404"][..]),
        ("/v1/runs/{run_id}/receipt", "get", &["200", "400", "401", "404", "429"][..]),
        ("/v1/checkpoints", "get", &["200", "401", "429"][..]),
        ("/v1/checkpoints", "post", &["200", "401", "404", "429"][..]),
        ("/v1/runs/{run_id}/proof", "get", &["200", "400", "401", "404", "429"][..]),
        ("/v1/checkpoints/consistency", "get", &["200", "400", "401", "429"][..]),
    ];
    let methods: usize = paths.values().map(|p| p.as_object().map_or(0, |o| o.len())).sum();
    assert_eq!(methods, want.len(), "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, method, codes) in want {
        let op = &paths[path][method];
        for code in codes {
            assert!(op["responses"].get(*code).is_some(), "{method} {path} documents {code}");
        }
        // Every documented path is really served (never the JSON 404 of unknown routes).
        let real = path.replace("{run_id}", "x");
        let r = s
            .http
            .request(method.parse().expect("method"), s.url(&real))
            .send()
            .await
            .expect("req");
        if r.status() == StatusCode::NOT_FOUND {
            let body = json_of(r).await;
            assert!(
                !body["message"].as_str().unwrap_or_default().starts_with("no route"),
                "{path}"
            );
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

/// Schemathesis generates query parameters from the document: every parameter of the reads
/// is described with the rule the server enforces, so out-of-rule values are generated and
/// must be refused (`scripts/schemathesis.sh`, on SQLite and PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_query_parameter_with_its_rule() {
    let s = TestServer::memory().await;
    let doc = json_of(get(&s, "/openapi.json", None, None).await).await;
    let param = |path: &str, name: &str| -> Value {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name && p["in"] == "query"))
            .cloned()
            .unwrap_or_else(|| panic!("{path} documents query parameter {name}"))
    };
    let source = param("/v1/runs", "source");
    assert_eq!(
        (source["schema"]["minLength"].as_u64(), source["schema"]["maxLength"].as_u64()),
        (Some(1), Some(256))
    );
    assert_eq!(param("/v1/runs", "status")["schema"]["minLength"].as_u64(), Some(1));
    let cursor = param("/v1/runs", "cursor");
    assert_eq!(cursor["schema"]["pattern"], "^([0-9A-Fa-f]{2})+$");
    let limit = param("/v1/runs", "limit");
    assert_eq!(
        (limit["schema"]["minimum"].as_u64(), limit["schema"]["maximum"].as_u64()),
        (Some(1), Some(1000))
    );
    let transitions = "/v1/runs/{run_id}/transitions";
    assert_eq!(param(transitions, "after_seq")["schema"]["maximum"].as_i64(), Some(i64::MAX));
    assert_eq!(param(transitions, "limit")["schema"]["maximum"].as_u64(), Some(1000));
}

// ---------------------------------------------------------------------------------------
// the client's error mapping beyond the conformance suite

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_maps_errors_back_to_the_same_variants() {
    let s = TestServer::memory().await;
    let t = tenant(&s).await;
    let client = s.client();
    let scope = client
        .resolve_api_key(&ApiKey::parse(&t.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    assert!(matches!(
        client.provision_tenant(&NewTenant::new("x").expect("valid")).await,
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        client.purge_expired(&kahn_core::PurgeRequest::at_store_clock()).await,
        Err(Error::Unsupported { .. })
    ));
    assert!(
        matches!(client.list_tenants().await, Err(Error::Unsupported { .. })),
        "no JWT: no admin listing"
    );
    assert!(matches!(client.lookup_tenant_by_sub("x").await, Err(Error::Unsupported { .. })));
    // A non-admin JWT resolves its own tenant and nothing else.
    let sub = format!("user-{}", uuid::Uuid::new_v4().simple());
    let mine = provision(&s, |t| t.with_owner_sub(sub.clone()).expect("valid")).await;
    let jwt_client = s.client().with_bearer(s.keys.sign(&claims(&sub, None, None)));
    let read = jwt_client.resolve_sub(&sub).await.expect("ok").expect("own tenant");
    assert_eq!(read.tenant(), mine.tenant.id);
    assert!(
        jwt_client
            .list_runs(&read, &kahn_core::RunQuery::default())
            .await
            .expect("reads with the JWT")
            .runs
            .is_empty()
    );
    assert!(matches!(jwt_client.resolve_sub("someone-else").await, Err(Error::Unauthorized(_))));
    // Reading another tenant's scope with a non-admin JWT is refused, never answered with
    // the JWT's own tenant's data.
    assert!(
        jwt_client.list_runs(&scope.read(), &kahn_core::RunQuery::default()).await.is_ok(),
        "a key scope uses its key"
    );
    let admin_client = s.client().with_bearer(s.admin_token());
    let over = admin_client.resolve_admin_override(t.tenant.id).await.expect("override");
    let as_non_admin = jwt_client.list_runs(&over, &kahn_core::RunQuery::default()).await;
    assert!(matches!(as_non_admin, Err(Error::Unauthorized(_))), "{as_non_admin:?}");
    // Revoked key → Unauthorized.
    let keys = s.backend.list_api_keys(t.tenant.id).await.expect("keys");
    s.backend.revoke_api_key(t.tenant.id, keys[0].id).await.expect("revoke");
    let batch = kahn_core::AppendBatch::from_ndjson(&transition("x", 0)).expect("valid");
    assert!(matches!(client.append(&scope, &batch).await, Err(Error::Unauthorized(_))));
    // A server that is gone → Unavailable (retryable).
    let url = s.url.clone();
    s.stop().await;
    let gone = HttpBackend::new(&url).expect("client");
    let err = gone.ping().await.expect_err("no server");
    assert!(err.is_retryable(), "{err:?}");
}

/// A corrupt store is the server's failure, never the caller's: a stored graph that is not
/// JSON answers 500 `integrity` (with the run named), not 400 — whether the request reads the
/// run or appends metadata that must be merged into it — and the client maps it back to the
/// same corrupt variant a local backend returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_graph_is_a_500_not_a_400() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("kahn.db");
    let backend = kahn_sqlite::SqliteBackend::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("sqlite");
    let keys = TestKeys::generate();
    let config = test_config(&keys);
    let s = TestServer::start(Arc::new(backend), keys, config).await.with_guard(dir);
    let t = tenant(&s).await;
    let meta = |meta: Value| {
        let mut line = meta;
        line["kind"] = json!("run");
        line["run_id"] = json!("rotten");
        line.to_string() + "\n"
    };
    let r = ingest(&s, &t.key, meta(json!({"graph": {"nodes": ["a"]}}))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let raw = rusqlite::Connection::open(&db).expect("open the file");
    let changed = raw
        .execute("UPDATE runs SET graph = '{not json' WHERE run_id = 'rotten'", [])
        .expect("sql");
    assert_eq!(changed, 1);

    let r = ingest(&s, &t.key, meta(json!({"source": "choco"}))).await;
    let body = expect_error(r, StatusCode::INTERNAL_SERVER_ERROR, "integrity").await;
    assert_eq!(body["run_id"], "rotten", "{body}");
    assert!(body.get("field").is_none(), "nothing the caller sent is blamed: {body}");
    let r = get(&s, "/v1/runs/rotten", Some(&t.key), None).await;
    expect_error(r, StatusCode::INTERNAL_SERVER_ERROR, "integrity").await;

    let client = s.client();
    let scope = client
        .resolve_api_key(&ApiKey::parse(&t.key).expect("key"))
        .await
        .expect("ok")
        .expect("scope");
    let err = client.get_run(&scope.read(), &RunId::new("rotten").expect("id")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { run_id: Some(r), .. } if r.as_str() == "rotten"),
        "{err:?}"
    );
}

/// With a receipt key, each ingest answers with one signed receipt per run it stored
/// something in (none for a run that was all duplicates); the receipt verifies under the key
/// `GET /v1/receipts/key` serves, names the tenant, run, `next_seq` and head of the report,
/// and reaches a pusher through `HttpBackend`'s append report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_signs_one_receipt_per_run_that_stored_something() {
    use kahn_core::receipt::{Envelope, ReceiptKey, ReceiptSigner};
    let keys = support::TestKeys::generate();
    let signer = ReceiptSigner::generate().expect("key");
    let config = test_config(&keys).with_receipt_key(signer.clone());
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let p = tenant(&s).await;

    let served: Value = get(&s, "/v1/receipts/key", None, None).await.json().await.expect("json");
    let key = ReceiptKey::from_pem(served["public_key_pem"].as_str().expect("pem")).expect("key");
    assert_eq!(&key, signer.public_key());
    assert_eq!(served["key_id"], key.id());

    let line = |run: &str, seq: u64| {
        format!(r#"{{"run_id":"{run}","seq":{seq},"ts":"2026-01-01T00:00:0{seq}Z","to":"x"}}"#)
    };
    let first = format!("{}\n{}\n{}\n", line("a", 0), line("a", 1), line("b", 0));
    let r = ingest(&s, &p.key, first.clone()).await;
    assert_eq!(r.status(), StatusCode::OK);
    let report: Value = r.json().await.expect("json");
    for run in report["runs"].as_array().expect("runs") {
        let envelope: Envelope = serde_json::from_value(run["receipt"].clone()).expect("receipt");
        let receipt = key.verify(&envelope).expect("signed by the served key");
        assert_eq!(receipt.tenant_id, p.tenant.id);
        assert_eq!(receipt.run_id.as_str(), run["run_id"].as_str().expect("id"));
        assert_eq!(receipt.next_seq, run["next_seq"].as_u64().expect("n"));
        assert_eq!(receipt.head_hash.to_string(), run["head_hash"].as_str().expect("head"));
    }
    // `a` is all duplicates now: no receipt; `b` grows: a receipt.
    let again = format!("{first}{}\n", line("b", 1));
    let report: Value = ingest(&s, &p.key, again).await.json().await.expect("json");
    let runs = report["runs"].as_array().expect("runs");
    assert!(runs[0]["receipt"].is_null(), "{report}");
    assert!(runs[1]["receipt"].is_object(), "{report}");

    // A stored run's receipt on demand: the head the server holds now.
    let r = get(&s, "/v1/runs/a/receipt", Some(&p.key), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let envelope: Envelope = r.json().await.expect("an envelope");
    let receipt = key.verify(&envelope).expect("signed by the served key");
    assert_eq!((receipt.run_id.as_str(), receipt.next_seq), ("a", 2));
    let r = get(&s, "/v1/runs/nope/receipt", Some(&p.key), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Through the client, the receipt is in the append report.
    let client = s.client();
    let scope = client.resolve_api_key(&ApiKey::parse(&p.key).expect("key")).await;
    let scope = scope.expect("resolves").expect("known");
    let batch = kahn_core::AppendBatch::from_ndjson(&line("c", 0)).expect("batch");
    let appended = client.append(&scope, &batch).await.expect("append");
    let envelope = appended.runs[0].receipt.as_ref().expect("a receipt through the client");
    assert_eq!(key.verify(envelope).expect("verifies").run_id.as_str(), "c");

    // Without a key: no receipts, and the key route says why.
    let plain = TestServer::memory().await;
    let p = tenant(&plain).await;
    let report: Value = ingest(&plain, &p.key, line("a", 0)).await.json().await.expect("json");
    assert!(report["runs"][0].get("receipt").is_none(), "{report}");
    let r = get(&plain, "/v1/receipts/key", None, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.text().await.expect("text").contains("--receipt-key"));
    let r = get(&plain, "/v1/runs/a/receipt", Some(&p.key), None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["what"], "receipt_key", "{body}");
}

/// Checkpoints over the wire: one on demand (`POST /v1/checkpoints`; the same one again when
/// nothing changed), a run's inclusion proof checked under the served key, the consistency
/// proof between two checkpoints, the log through `HttpBackend` equal to the store's — and
/// each tenant sees only its own log. Without a receipt key the server makes none, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_are_made_on_demand_and_prove_runs_and_consistency() {
    use kahn_core::checkpoint::{RunProof, leaf_hashes};
    use kahn_core::merkle::verify_consistency;
    use kahn_core::receipt::ReceiptSigner;
    let keys = support::TestKeys::generate();
    let signer = ReceiptSigner::generate().expect("key");
    let config = test_config(&keys).with_receipt_key(signer.clone());
    let backend = Arc::new(MemoryBackend::new());
    let s = TestServer::start(backend.clone(), keys, config).await;
    let (p, other) = (tenant(&s).await, tenant(&s).await);
    let post = |token: String| {
        let rb = s.http.post(s.url("/v1/checkpoints")).bearer_auth(token);
        async move { rb.send().await.expect("request") }
    };

    ingest(&s, &p.key, format!("{}\n{}\n", transition("a", 0), transition("b", 0))).await;
    let c1 = json_of(post(p.key.clone()).await).await;
    assert_eq!(c1["tree_size"], 2, "{c1}");
    assert_eq!(json_of(post(p.key.clone()).await).await, c1, "unchanged: the same checkpoint");
    ingest(&s, &p.key, format!("{}\n{}\n", transition("a", 1), transition("c", 0))).await;
    let c2 = json_of(post(p.key.clone()).await).await;
    assert_eq!(c2["tree_size"], 4, "{c2}");

    let client = s.client();
    let scope = client.resolve_api_key(&ApiKey::parse(&p.key).expect("key")).await;
    let scope = scope.expect("resolves").expect("known").read();
    let proof = client.run_proof(&scope, &RunId::new("a").expect("id"), None).await.expect("proof");
    let signed = proof.verify(signer.public_key(), p.tenant.id).expect("the proof verifies");
    assert_eq!((signed.tree_size, proof.leaf.next_seq), (4, 2));
    let older = client.run_proof(&scope, &RunId::new("a").expect("id"), Some(2)).await;
    assert_eq!(older.expect("proof at size 2").leaf.next_seq, 1, "run a's state then");
    let r = get(&s, "/v1/runs/a/proof?tree_size=3", Some(&p.key), None).await;
    assert_eq!(expect_error(r, StatusCode::NOT_FOUND, "not_found").await["what"], "checkpoint");
    let r = get(&s, "/v1/runs/nope/proof", Some(&p.key), None).await;
    assert_eq!(expect_error(r, StatusCode::NOT_FOUND, "not_found").await["what"], "run");

    let log = client.read_checkpoint_log(&scope).await.expect("the log over HTTP");
    assert_eq!(log, backend.read_checkpoint_log(&scope).await.expect("the store's log"));
    let consistency =
        json_of(get(&s, "/v1/checkpoints/consistency?from=2&to=4", Some(&p.key), None).await).await;
    let proof: Vec<kahn_core::Digest> =
        serde_json::from_value(consistency["proof"].clone()).expect("hashes");
    let root = |n: usize| kahn_core::merkle::root(&leaf_hashes(&log.leaves[..n]));
    verify_consistency(2, 4, &root(2), &root(4), &proof).expect("the proof joins the two roots");
    let r = get(&s, "/v1/checkpoints/consistency?from=4&to=2", Some(&p.key), None).await;
    expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await;
    let r = get(&s, "/v1/checkpoints/consistency?from=1&to=9", Some(&p.key), None).await;
    assert_eq!(expect_error(r, StatusCode::BAD_REQUEST, "invalid_input").await["field"], "to");

    // Another tenant's log is its own (empty); its proof of `a` does not exist.
    let theirs = json_of(get(&s, "/v1/checkpoints", Some(&other.key), None).await).await;
    assert_eq!(theirs, json!({"leaves": [], "checkpoints": []}));
    let r = get(&s, "/v1/runs/a/proof", Some(&other.key), None).await;
    expect_error(r, StatusCode::NOT_FOUND, "not_found").await;
    // A proof checked as another tenant's is refused.
    let built = RunProof::build(&log, log.latest().expect("latest"), &RunId::new("b").expect("id"));
    assert!(built.expect("b's proof").verify(signer.public_key(), other.tenant.id).is_err());

    // Without a receipt key: none made, and the 404 says why.
    let plain = TestServer::memory().await;
    let q = tenant(&plain).await;
    let r = plain.http.post(plain.url("/v1/checkpoints")).bearer_auth(&q.key).send().await;
    let body = expect_error(r.expect("request"), StatusCode::NOT_FOUND, "not_found").await;
    assert_eq!(body["what"], "receipt_key", "{body}");
}

/// With a receipt key and an interval, the server checkpoints every tenant that changed on
/// its own: a run pushed appears in a signed checkpoint without anyone asking, and a tenant
/// whose runs did not change gets no new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_checkpoints_changed_tenants_periodically() {
    use kahn_core::receipt::ReceiptSigner;
    let keys = support::TestKeys::generate();
    let signer = ReceiptSigner::generate().expect("key");
    let config = test_config(&keys)
        .with_receipt_key(signer.clone())
        .with_checkpoint_interval(Some(Duration::from_millis(100)));
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let p = tenant(&s).await;
    ingest(&s, &p.key, format!("{}\n", transition("periodic", 0))).await;
    let log = async || json_of(get(&s, "/v1/checkpoints", Some(&p.key), None).await).await;
    // A tick may have come between the tenant's creation and the push (a checkpoint of an
    // empty log): wait for the one that holds the run.
    let covers_the_run = |seen: &Value| {
        seen["checkpoints"].as_array().and_then(|c| c.last()).is_some_and(|c| c["tree_size"] == 1)
    };
    let mut seen = log().await;
    for _ in 0..100 {
        if covers_the_run(&seen) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = log().await;
    }
    assert!(covers_the_run(&seen), "no checkpoint of the run within 5 s: {seen}");
    let checkpoints = seen["checkpoints"].as_array().expect("a list").clone();
    let last = checkpoints.last().expect("one");
    let envelope = serde_json::from_value(last["envelope"].clone()).expect("envelope");
    let signed = signer.public_key().verify_checkpoint(&envelope).expect("signed by the key");
    assert_eq!((signed.tenant_id, signed.tree_size), (p.tenant.id, 1));
    // Nothing changes: several more intervals add no checkpoint.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let later = log().await;
    assert_eq!(later["checkpoints"].as_array().map(Vec::len), Some(checkpoints.len()), "{later}");
}
