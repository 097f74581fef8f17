//! Traces to an OpenTelemetry collector: one server span per request, exported over OTLP/HTTP
//! with the JSON encoding (`POST {endpoint}/v1/traces`), in batches, off the request path.
//!
//! A request carrying a W3C `traceparent` continues that trace (same trace id, its span as
//! parent); any other starts one. A span holds the method, the route template, the status,
//! the tenant and the request id. Spans wait in a bounded queue: when the collector is slow or
//! down they are dropped (counted, and said once a minute), never the requests.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Spans waiting to be sent, at most.
const QUEUE: usize = 4096;
/// Spans in one export, at most.
const BATCH: usize = 512;
/// The longest a span waits before its batch is sent.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The trace a request belongs to: the caller's (from `traceparent`) or a new one.
#[derive(Clone, Debug)]
pub(crate) struct TraceContext {
    /// 32 lowercase hex digits.
    pub(crate) trace_id: String,
    /// The caller's span (16 hex digits), when the trace came with the request.
    pub(crate) parent_span_id: Option<String>,
}

/// One finished server span.
#[derive(Debug)]
pub(crate) struct Span {
    pub(crate) trace: TraceContext,
    pub(crate) name: String,
    pub(crate) start: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) status: u16,
    pub(crate) attributes: Vec<(&'static str, String)>,
}

/// The exporter's side the requests see.
pub(crate) struct Exporter {
    endpoint: Url,
    tx: mpsc::Sender<Span>,
    rx: Mutex<Option<mpsc::Receiver<Span>>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("endpoint", &self.endpoint.as_str()).finish()
    }
}

impl TraceContext {
    /// The context `traceparent` names, or a new trace.
    pub(crate) fn from_traceparent(value: Option<&str>) -> Self {
        match value.and_then(parse_traceparent) {
            Some((trace_id, parent)) => Self { trace_id, parent_span_id: Some(parent) },
            None => Self { trace_id: crate::session::random_hex(16), parent_span_id: None },
        }
    }
}

/// `00-<trace id>-<parent id>-<flags>` (lowercase hex, neither id all zeros, version not
/// `ff`): the trace and parent span ids.
pub(crate) fn parse_traceparent(value: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let [version, trace, parent, flags] = parts.as_slice() else { return None };
    let valid = hex(version, 2)
        && *version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then(|| ((*trace).to_owned(), (*parent).to_owned()))
}

impl Exporter {
    /// An exporter to the collector at `endpoint` (`http(s)://host:port`; spans go to
    /// `/v1/traces` under it).
    ///
    /// # Errors
    /// `endpoint` is not an http(s) URL.
    pub(crate) fn new(endpoint: &str) -> Result<Self, String> {
        let base = Url::parse(endpoint).map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!("{endpoint}: an OTLP/HTTP endpoint is http:// or https://"));
        }
        let path = format!("{}/v1/traces", base.path().trim_end_matches('/'));
        let mut url = base;
        url.set_path(&path);
        let (tx, rx) = mpsc::channel(QUEUE);
        Ok(Self { endpoint: url, tx, rx: Mutex::new(Some(rx)), dropped: AtomicU64::new(0) })
    }

    /// Queues `span`; a full queue drops it (counted).
    pub(crate) fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spawns the task sending the spans, until `stop` changes (then what is queued is sent).
    /// Only the first call spawns anything.
    pub(crate) fn spawn(
        self: &std::sync::Arc<Self>,
        mut stop: watch::Receiver<()>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut rx = self.rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()?;
        let me = std::sync::Arc::clone(self);
        Some(tokio::spawn(async move {
            let client = match crate::jwks::http_client() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "OTLP export off: no HTTP client");
                    return;
                }
            };
            let mut batch = Vec::with_capacity(BATCH);
            let mut last_warning: Option<Instant> = None;
            loop {
                let stopping = tokio::select! {
                    _ = stop.changed() => true,
                    got = rx.recv() => match got {
                        Some(span) => { batch.push(span); false }
                        None => true,
                    },
                    () = tokio::time::sleep(FLUSH_EVERY) => false,
                };
                while batch.len() < BATCH
                    && let Ok(span) = rx.try_recv()
                {
                    batch.push(span);
                }
                if !batch.is_empty() {
                    let body = encode(&batch);
                    let sent = client
                        .post(me.endpoint.clone())
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .map_err(|e| crate::jwks::reqwest_reason(&e))
                        .and_then(|r| {
                            if r.status().is_success() {
                                Ok(())
                            } else {
                                Err(format!("HTTP {}", r.status()))
                            }
                        });
                    if let Err(why) = sent {
                        me.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                            last_warning = Some(Instant::now());
                            tracing::warn!(
                                endpoint = %me.endpoint,
                                error = %why,
                                dropped = me.dropped.load(Ordering::Relaxed),
                                "OTLP export failed; spans are dropped, requests are not"
                            );
                        }
                    }
                    batch.clear();
                }
                if stopping {
                    return;
                }
            }
        }))
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string()
}

/// An OTLP `ExportTraceServiceRequest` in the JSON encoding (ids in hex, 64-bit integers as
/// strings).
fn encode(spans: &[Span]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| json!({ "key": k, "value": { "stringValue": v } }))
                .chain(std::iter::once(json!({
                    "key": "http.response.status_code",
                    "value": { "intValue": s.status.to_string() }
                })))
                .collect();
            let mut span = json!({
                "traceId": s.trace.trace_id,
                "spanId": crate::session::random_hex(8),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.start + s.duration),
                "attributes": attributes,
                "status": { "code": if s.status >= 500 { 2 } else { 0 } },
            });
            if let Some(parent) = &s.trace.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "kahn" } },
                { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "kahn-http", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(good),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), "00f067aa0ba902b7".into()))
        );
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        let fresh = TraceContext::from_traceparent(None);
        assert_eq!(fresh.trace_id.len(), 32);
        assert!(fresh.parent_span_id.is_none());
    }

    #[test]
    fn the_endpoint_gets_v1_traces() {
        let e = Exporter::new("http://127.0.0.1:4318").map(|e| e.endpoint.to_string());
        assert_eq!(e.as_deref(), Ok("http://127.0.0.1:4318/v1/traces"));
        let e = Exporter::new("https://otel.example.com/otlp/").map(|e| e.endpoint.to_string());
        assert_eq!(e.as_deref(), Ok("https://otel.example.com/otlp/v1/traces"));
        assert!(Exporter::new("grpc://x:4317").is_err());
    }
}
