//! Prometheus metrics: requests by route and status, latency, transitions appended/skipped.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

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
    /// Retention purges by outcome.
    pub(crate) purges: IntCounterVec,
    pub(crate) purged_runs: IntCounter,
    pub(crate) purged_transitions: IntCounter,
    process: ProcessGauges,
    pool: IntGaugeVec,
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
        let build_info = IntGaugeVec::new(
            Opts::new("kahn_build_info", "The running build: always 1, its version a label"),
            &["version"],
        )?;
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info))?;
        let purges = IntCounterVec::new(
            Opts::new(
                "kahn_retention_purges_total",
                "Retention purges by outcome (ran, skipped: another server had the turn, failed)",
            ),
            &["outcome"],
        )?;
        let purged_runs = IntCounter::new(
            "kahn_retention_runs_removed_total",
            "Runs removed by retention purges",
        )?;
        let purged_transitions = IntCounter::new(
            "kahn_retention_transitions_removed_total",
            "Transitions removed by retention purges",
        )?;
        registry.register(Box::new(purges.clone()))?;
        registry.register(Box::new(purged_runs.clone()))?;
        registry.register(Box::new(purged_transitions.clone()))?;
        let process = ProcessGauges::new(&registry)?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "kahn_db_pool_connections",
                "Database connections of the store's pool by state (idle, in_use; max: the cap)",
            ),
            &["state"],
        )?;
        registry.register(Box::new(pool.clone()))?;
        Ok(Self {
            pool,
            purges,
            purged_runs,
            purged_transitions,
            process,
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

    /// The Prometheus text exposition; `pool` is the store's pool now, when it has one.
    pub(crate) fn render(&self, pool: Option<kahn_core::PoolStatus>) -> String {
        self.process.refresh();
        if let Some(p) = pool {
            self.pool.with_label_values(&["idle"]).set(i64::from(p.idle));
            self.pool.with_label_values(&["in_use"]).set(i64::from(p.open - p.idle));
            self.pool.with_label_values(&["max"]).set(i64::from(p.max));
        }
        let mut out = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The request id of a request: the caller's `X-Request-Id` when it is a plain token (1 to
/// 128 visible ASCII characters), else one drawn here; returned on the response and logged.
fn request_id(req: &Request) -> String {
    let given = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match given {
        Some(id) => id.to_owned(),
        None => crate::session::random_hex(16),
    }
}

/// The header carrying a request's id, both ways.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Middleware counting every request by its route template (not the raw path, so run ids
/// never become label values) and status, timing it, giving it a request id (`X-Request-Id`,
/// the caller's or a new one, on the response too) and logging one access line (target
/// `kahn_http::access`, level info): method, route, status, duration, tenant, request id, and
/// the trace id (the caller's `traceparent`'s, or a new one when spans are exported); with an
/// OTLP endpoint configured, one server span per request ([`crate::otlp`]).
pub(crate) async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = request_id(&req);
    let traceparent = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
    let exporter = state.inner.otlp.as_ref();
    // A trace to join (the caller's) or, when spans are exported, a new one.
    let trace = (traceparent.is_some() || exporter.is_some())
        .then(|| crate::otlp::TraceContext::from_traceparent(traceparent));
    let started_at = std::time::SystemTime::now();
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
    let mut response = next.run(req).await;
    let took = start.elapsed();
    let m = &state.inner.metrics;
    m.latency.with_label_values(&[route.as_str(), method]).observe(took.as_secs_f64());
    m.requests.with_label_values(&[route.as_str(), method, response.status().as_str()]).inc();
    let tenant = response
        .headers()
        .get(crate::HEADER_EFFECTIVE_TENANT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    tracing::info!(
        target: ACCESS_TARGET,
        method,
        route = %route,
        status = response.status().as_u16(),
        duration_ms = took.as_secs_f64() * 1000.0,
        tenant = %tenant,
        request_id = %id,
        trace_id = trace.as_ref().map_or("-", |t| t.trace_id.as_str()),
        "request"
    );
    if let (Some(exporter), Some(trace)) = (exporter, trace) {
        exporter.record(crate::otlp::Span {
            trace,
            name: format!("{method} {route}"),
            start: started_at,
            duration: took,
            status: response.status().as_u16(),
            attributes: vec![
                ("http.request.method", method.to_owned()),
                ("http.route", route.clone()),
                ("kahn.tenant", tenant.clone()),
                ("kahn.request_id", id.clone()),
            ],
        });
    }
    if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// The `tracing` target of the access log: one line per request.
pub(crate) const ACCESS_TARGET: &str = "kahn_http::access";

/// The process's own figures, read from `/proc/self` at each scrape (Linux; elsewhere they
/// stay 0), under the names Prometheus's client libraries use.
#[derive(Clone, Debug)]
struct ProcessGauges {
    resident: IntGauge,
    cpu: Gauge,
    fds: IntGauge,
}

impl ProcessGauges {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let resident =
            IntGauge::new("process_resident_memory_bytes", "Resident memory size in bytes")?;
        let cpu =
            Gauge::new("process_cpu_seconds_total", "User and system CPU time spent, in seconds")?;
        let fds = IntGauge::new("process_open_fds", "Open file descriptors")?;
        let start = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        start.set(now);
        registry.register(Box::new(resident.clone()))?;
        registry.register(Box::new(cpu.clone()))?;
        registry.register(Box::new(fds.clone()))?;
        registry.register(Box::new(start))?;
        let gauges = Self { resident, cpu, fds };
        gauges.refresh();
        Ok(gauges)
    }

    fn refresh(&self) {
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            self.resident.set(kb * 1024);
        }
        // utime and stime (fields 14 and 15, after the parenthesised name) count the whole
        // process's threads, in USER_HZ ticks: 100 a second on Linux's architectures.
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, after_name)) = stat.rsplit_once(')')
        {
            let fields: Vec<&str> = after_name.split_whitespace().collect();
            let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // After ")" field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
            self.cpu.set((ticks(11) + ticks(12)) / 100.0);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.fds.set(i64::try_from(dir.count()).unwrap_or(i64::MAX));
        }
    }
}
