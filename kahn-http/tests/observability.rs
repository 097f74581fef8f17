//! What an operator sees of a running server: request ids both ways, the trace id of a W3C
//! `traceparent`, and the metrics beyond requests (build, process, retention purges). A real
//! server on a loopback port; the access log line itself is checked through `kahn serve` in
//! kahn-cli's tests (it needs the binary's log subscriber).

mod support;

use std::sync::Arc;
use std::time::Duration;

use kahn_core::MemoryBackend;
use support::{TestKeys, TestServer, test_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_kept_or_made_and_returned() {
    let s = TestServer::memory().await;
    let get = |id: Option<&str>| {
        let mut r = s.http.get(s.url("/healthz"));
        if let Some(id) = id {
            r = r.header("x-request-id", id);
        }
        r.header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").send()
    };
    let r = get(Some("ci-run-42.step-7")).await.expect("healthz");
    assert_eq!(r.headers()["x-request-id"], "ci-run-42.step-7", "the caller's id is kept");
    let made = get(None).await.expect("healthz");
    let made = made.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert_eq!(made.len(), 32, "a fresh id: {made}");
    let again = get(None).await.expect("healthz");
    assert_ne!(again.headers()["x-request-id"].to_str().expect("ascii"), made, "one per request");
    // Not a token (a space, too long): replaced, never echoed.
    for bad in ["two words", &"x".repeat(129)] {
        let r = get(Some(bad)).await.expect("healthz");
        let id = r.headers()["x-request-id"].to_str().expect("ascii");
        assert!(id != bad && id.len() == 32, "{bad:?} -> {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_build_the_process_and_the_purges() {
    let keys = TestKeys::generate();
    let config = test_config(&keys).with_retention_interval(Some(Duration::from_millis(50)));
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.http.get(s.url("/healthz")).send().await.expect("healthz");
    let text =
        s.http.get(s.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
    };
    assert_eq!(
        value(&format!("kahn_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"))),
        1.0
    );
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_open_fds") >= 3.0);
    assert!(value("process_start_time_seconds") > 1.7e9);
    assert!(value("process_cpu_seconds_total") >= 0.0);
    assert!(value("kahn_retention_purges_total{outcome=\"ran\"}") >= 2.0, "the purge task ran");
    assert!(text.contains("kahn_retention_runs_removed_total"), "{text}");
    assert!(
        text.contains(
            "kahn_http_request_duration_seconds_bucket{method=\"GET\",route=\"/healthz\""
        )
    );
}

/// With an OTLP endpoint, each request becomes a server span sent to the collector (OTLP/HTTP,
/// JSON), in the caller's trace when it sent a `traceparent`. The collector here is a real
/// HTTP server on a loopback port recording what it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_in_the_callers_trace() {
    use axum::routing::post;
    let received: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: String| {
            let sink = sink.clone();
            async move {
                let doc: serde_json::Value = serde_json::from_str(&body).expect("OTLP JSON");
                sink.lock().expect("sink").push(doc);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let keys = TestKeys::generate();
    let config = test_config(&keys).with_otlp_endpoint(endpoint);
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    s.http
        .get(s.url("/v1/whoami"))
        .bearer_auth(s.admin_token())
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .header("x-request-id", "otlp-req-1")
        .send()
        .await
        .expect("whoami");
    s.http.get(s.url("/healthz")).send().await.expect("healthz");

    let mut spans = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spans = received
            .lock()
            .expect("sink")
            .iter()
            .flat_map(|doc| {
                doc["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if spans.len() >= 2 {
            break;
        }
    }
    let whoami = spans
        .iter()
        .find(|s| s["name"] == "GET /v1/whoami")
        .unwrap_or_else(|| panic!("a span for the request: {spans:?}"));
    assert_eq!(whoami["traceId"], trace, "the caller's trace");
    assert_eq!(whoami["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(whoami["kind"], 2, "a server span");
    let attrs = whoami["attributes"].as_array().expect("attributes");
    let attr = |k: &str| attrs.iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
    assert_eq!(attr("http.route"), Some(serde_json::json!({"stringValue": "/v1/whoami"})));
    assert_eq!(attr("kahn.request_id"), Some(serde_json::json!({"stringValue": "otlp-req-1"})));
    assert_eq!(attr("http.response.status_code"), Some(serde_json::json!({"intValue": "200"})));
    let healthz = spans.iter().find(|s| s["name"] == "GET /healthz").expect("the healthz span");
    assert_ne!(healthz["traceId"], trace, "a request without traceparent starts its own trace");
    assert!(healthz.get("parentSpanId").is_none());
    let service =
        &received.lock().expect("sink")[0]["resourceSpans"][0]["resource"]["attributes"][0];
    assert_eq!(service["value"]["stringValue"], "kahn");
}
