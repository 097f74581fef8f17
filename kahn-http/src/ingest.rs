//! `POST /v1/ingest/transitions`: NDJSON in, one `append`, a per-run report out.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use kahn_core::{BatchBuilder, Error, LineReader};

use crate::auth::{IngestScope, TenantView};
use crate::error::ApiError;
use crate::ratelimit::{Charge, charge};
use crate::state::AppState;
use crate::wire::{ErrorBody, IngestReport};

/// Feeds body bytes, splits them into lines, and parses and validates each line as it
/// completes: memory is bounded by the body limit, and the first bad line stops the read.
struct LineParser {
    pending: Vec<u8>,
    line_no: u64,
    builder: BatchBuilder,
    reader: LineReader,
    /// The most distinct runs the body may name.
    max_runs: usize,
}

impl LineParser {
    fn new(max_runs: usize) -> Self {
        Self {
            pending: Vec::new(),
            line_no: 0,
            builder: BatchBuilder::new(),
            reader: LineReader::new(),
            max_runs,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), ApiError> {
        while let Some(i) = memchr::memchr(b'\n', chunk) {
            let (head, rest) = chunk.split_at(i);
            let line = if self.pending.is_empty() {
                self.line(head)
            } else {
                self.pending.extend_from_slice(head);
                let whole = std::mem::take(&mut self.pending);
                self.line(&whole)
            };
            line?;
            chunk = &rest[1..];
        }
        self.pending.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(mut self) -> Result<BatchBuilder, ApiError> {
        if !self.pending.is_empty() {
            let last = std::mem::take(&mut self.pending);
            self.line(&last)?;
        }
        Ok(self.builder)
    }

    fn line(&mut self, bytes: &[u8]) -> Result<(), ApiError> {
        self.line_no += 1;
        let n = self.line_no;
        let at_line = |e: Error| match e {
            Error::InvalidInput { field, message } => ApiError::invalid_line(n, field, message),
            other => ApiError::from(other),
        };
        if let Some(parsed) = self.reader.read(bytes).map_err(at_line)? {
            self.builder.push(parsed).map_err(at_line)?;
            if self.builder.run_count() > self.max_runs {
                return Err(ApiError::too_many_runs(self.max_runs));
            }
        }
        Ok(())
    }
}

fn is_ndjson(headers: &HeaderMap) -> Result<(), ApiError> {
    // Compressed bodies are not accepted (no decompression means no gzip bomb): say so
    // with 415 rather than parse compressed bytes as lines.
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        let enc = enc.to_str().unwrap_or("<not text>").trim();
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(ApiError::unsupported_encoding(enc));
        }
    }
    let raw = headers.get(header::CONTENT_TYPE);
    let text = raw.and_then(|v| v.to_str().ok());
    let essence = text.map(|t| t.split(';').next().unwrap_or_default().trim());
    match essence {
        Some(e) if e.eq_ignore_ascii_case(crate::NDJSON) => Ok(()),
        _ => Err(ApiError::unsupported_media_type(text.or(raw.map(|_| "<not text>")))),
    }
}

/// Appends NDJSON transitions and run metadata.
///
/// The body is read as a stream, line by line, each line validated as it arrives; the first
/// invalid line answers 400 and nothing is written. The whole body is one `append`: one
/// transaction over every run it names. Requests naming the same run reach the store in the
/// order they were parsed in this server: a pusher's next chunk, sent while the previous one
/// is appended, waits for it instead of being refused as a gap.
#[utoipa::path(
    post,
    path = "/v1/ingest/transitions",
    tag = "ingest",
    security(("bearer" = [])),
    request_body(
        content_type = "application/x-ndjson",
        description = "One JSON object per line: a transition `{\"run_id\", \"seq\", \"ts\", \"to\", \"from\"?, \"node\"?, \"attrs\"?, …}` or run metadata `{\"kind\": \"run\", \"run_id\", \"source\"?, \"graph\"?, \"labels\"?}`. Blank lines are ignored. At most the configured body limit (1 MiB by default).",
        content = String,
    ),
    responses(
        (status = 200, description = "Appended; per-run report", body = IngestReport,
            headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "`invalid_line`: the first bad line (`line`, `field`); nothing written", body = ErrorBody),
        (status = 401, description = "Missing, unknown or revoked API key (JWTs cannot ingest)", body = ErrorBody),
        (status = 409, description = "`conflict` (`seq` or `field`, `stored_hash`, `incoming_hash`) or `gap` (`seq`, `expected`); nothing written", body = ErrorBody),
        (status = 408, description = "`request_timeout`: the body did not arrive within the server's body timeout; nothing written", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: body over the limit; or `too_many_runs`: more distinct runs than the server's cap per request (`limit`); nothing written", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/x-ndjson, or the body is compressed (Content-Encoding other than identity)", body = ErrorBody),
        (status = 429, description = "`rate_limited`: the tenant's ingest allowance (charged by runs and transitions) or too many failed authentications from this address; `too_many_in_flight`: the tenant's cap of ingests at once; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable, the server is at its cap of requests in flight, or no ingest slot freed within the body timeout (nothing written); see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity`: stored data fails its own checks; or `internal`", body = ErrorBody),
    )
)]
pub(crate) async fn ingest(
    State(state): State<AppState>,
    IngestScope(scope): IngestScope,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Whether the body was read to its end. An answer given before then leaves unread bytes on
    // the connection, so it closes the connection: a client that pooled it would otherwise send
    // its next request into a socket the server is about to drop.
    let mut body_done = false;
    let limits = &state.inner.limits;
    let result = async {
        // One unit up front, before the body is read; the rest of the request's cost once its
        // body is parsed (see `ratelimit`: in the store when it shares the allowance between
        // servers, else in this process).
        charge(&state, &scope, Charge::Upfront).await?;
        let Some(_in_flight) = limits.enter(scope.tenant()) else {
            state.inner.metrics.rate_limited.inc();
            return Err(ApiError::too_many_in_flight(limits.in_flight_cap()));
        };
        is_ndjson(&headers)?;
        let limit = state.inner.config.body_limit;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(ApiError::payload_too_large(limit));
        }
        let patience = state.inner.config.body_timeout;
        // A slot before the body is read: the server holds at most `ingest_slots` bodies and
        // batches, whatever the number of pushers. A request holding one waits in the run
        // queue only for requests that hold one too (they entered it after parsing), so the
        // wait always ends.
        let slots = &state.inner.ingest_slots;
        let _slot = match tokio::time::timeout(patience, slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_)) | Err(_) => {
                state.inner.metrics.overloaded.inc();
                return Err(ApiError::service_unavailable(std::time::Duration::from_secs(1)));
            }
        };
        let mut parser = LineParser::new(state.inner.config.max_runs_per_request);
        let mut seen = 0usize;
        let mut stream = body.into_data_stream();
        // The whole body has one deadline, not one per read: a client trickling a byte a
        // second would pass any per-read timeout while holding the request open forever.
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
                return Err(ApiError::request_timeout(patience));
            };
            let Some(chunk) = next else {
                body_done = true;
                break;
            };
            let chunk = chunk.map_err(|e| {
                tracing::debug!(error = %kahn_core::ErrorChain::new(&e), "ingest body read failed");
                ApiError::bad_request("body", "the body could not be read")
            })?;
            seen += chunk.len();
            if seen > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            parser.feed(&chunk)?;
        }
        let mut builder = parser.finish()?;
        state.inner.chain_tips.chain_ahead(scope.tenant(), &mut builder);
        let batch = builder.build();
        let cost = crate::ratelimit::ingest_cost(batch.runs().len(), batch.transition_count());
        charge(&state, &scope, Charge::Rest(cost)).await?;
        // Parsed while the append before it (of the same run, from this pusher) ran; it goes
        // to the store once that one is done, or once it is in the store's own queue where the
        // store keeps appends in order (see `queue`).
        let (place, ahead) = state.inner.run_queue.enter(scope.tenant(), &batch);
        ahead.wait().await;
        let backend = &state.inner.backend;
        let append = backend.append(&scope, &batch);
        let mut report = place.hold_for(append, backend.appends_in_poll_order()).await?;
        if let Some(signer) = &state.inner.config.receipt_key {
            report = sign_receipts(signer, scope.tenant(), report).await?;
        }
        state.inner.metrics.appended.inc_by(report.appended());
        state.inner.metrics.skipped.inc_by(report.skipped());
        tracing::debug!(
            tenant = %scope.tenant(),
            runs = report.runs.len(),
            appended = report.appended(),
            skipped = report.skipped(),
            "ingested"
        );
        Ok(Json(IngestReport::from(report)).into_response())
    }
    .await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if !body_done {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    TenantView::of_key(&scope).stamp(&mut response);
    response
}

/// Signs a receipt for each run the append stored something in: one signature per run per
/// request, never per transition. A run whose lines were all stored already gets none (its
/// head did not move; the pusher keeps the receipt it was given when it did). A signature
/// costs tens of µs: a request of many runs is signed on a blocking thread, never on the
/// runtime's (BENCHMARKS.md "Signed receipts" has the cost of 10,000 runs).
async fn sign_receipts(
    signer: &kahn_core::receipt::ReceiptSigner,
    tenant: kahn_core::TenantId,
    mut report: kahn_core::AppendReport,
) -> Result<kahn_core::AppendReport, ApiError> {
    const INLINE: usize = 16;
    let sign = move |signer: &kahn_core::receipt::ReceiptSigner,
                     mut report: kahn_core::AppendReport| {
        let now = chrono::Utc::now();
        for run in report.runs.iter_mut().filter(|r| r.appended > 0) {
            run.receipt = Some(signer.sign_report(tenant, run, now)?);
        }
        Ok::<_, Error>(report)
    };
    if report.runs.len() <= INLINE {
        return Ok(sign(signer, report)?);
    }
    let signer = signer.clone();
    report = tokio::task::spawn_blocking(move || sign(&signer, report)).await.map_err(|e| {
        tracing::error!(error = %e, "receipt signing stopped");
        ApiError::internal()
    })??;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(run: &str, seq: u64) -> String {
        format!(r#"{{"run_id":"{run}","seq":{seq},"ts":"2026-01-01T00:00:00Z","to":"x"}}"#)
    }

    #[test]
    fn lines_split_across_chunks_and_blank_lines_parse() {
        let text = format!("{}\n\n{}\r\n{}\n", t("a", 0), t("a", 1), t("b", 0));
        for split in 1..text.len() {
            let mut p = LineParser::new(10);
            let (x, y) = text.as_bytes().split_at(split);
            p.feed(x).expect("valid");
            p.feed(y).expect("valid");
            let batch = p.finish().expect("valid").build();
            assert_eq!(batch.transition_count(), 3, "split at {split}");
        }
    }

    #[test]
    fn first_bad_line_is_named() {
        let text = format!("{}\n\n{{\"run_id\":\"a\",\"seq\":1}}\nnot json\n", t("a", 0));
        let mut p = LineParser::new(10);
        let err = p.feed(text.as_bytes()).expect_err("line 3 lacks ts");
        assert_eq!(err.body().line, Some(3));
        assert_eq!(err.body().field.as_deref(), Some("ts"));
    }

    #[test]
    fn last_line_without_newline_counts() {
        let mut p = LineParser::new(10);
        p.feed(t("a", 0).as_bytes()).expect("valid");
        assert_eq!(p.finish().expect("valid").build().transition_count(), 1);
    }
}
