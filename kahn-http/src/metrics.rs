//! Prometheus metrics: requests by route and status, latency, transitions appended/skipped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use crate::state::AppState;

/// The server's metrics, in their own registry (an embedding service keeps its own).
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    pub(crate) appended: IntCounter,
    pub(crate) skipped: IntCounter,
    pub(crate) rate_limited: IntCounter,
    pub(crate) overloaded: IntCounter,
    pub(crate) admin_overrides: IntCounter,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kahn_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "kahn_http_request_duration_seconds",
                "HTTP request latency by route and method",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method"],
        )?;
        let appended = IntCounter::new(
            "kahn_transitions_appended_total",
            "Transitions newly stored by ingest",
        )?;
        let skipped = IntCounter::new(
            "kahn_transitions_skipped_total",
            "Transitions ingested again with content already stored (duplicates)",
        )?;
        let rate_limited =
            IntCounter::new("kahn_ingest_rate_limited_total", "Ingest requests refused with 429")?;
        let admin_overrides = IntCounter::new(
            "kahn_admin_overrides_total",
            "Reads served under an honoured X-KAHN-Tenant admin override",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(appended.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        let overloaded = IntCounter::new(
            "kahn_requests_overloaded_total",
            "Requests refused with 503 at the server's cap of requests in flight",
        )?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(overloaded.clone()))?;
        registry.register(Box::new(admin_overrides.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            appended,
            skipped,
            rate_limited,
            overloaded,
            admin_overrides,
        })
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Middleware counting every request by its route template (not the raw path, so run ids
/// never become label values) and status, and timing it.
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(req).await;
    let m = &state.inner.metrics;
    m.latency.with_label_values(&[route.as_str(), method]).observe(start.elapsed().as_secs_f64());
    m.requests.with_label_values(&[route.as_str(), method, response.status().as_str()]).inc();
    response
}
