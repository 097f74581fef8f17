//! The one error type of the server: every failure becomes a JSON `{"error", "message", …}`
//! body with the right status. Internal details are logged, never sent.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kahn_core::{ConflictAt, Error, ErrorChain};

use crate::wire::ErrorBody;

/// The `Retry-After` of a 503 when the backend named no wait of its own.
pub(crate) const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An HTTP error response: a status, a JSON [`ErrorBody`], and headers where they apply
/// (`Retry-After`, `WWW-Authenticate`).
///
/// Boxed, so the `Result`s carrying it stay small.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Repr>);

#[derive(Debug, Clone)]
struct Repr {
    status: StatusCode,
    body: ErrorBody,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, body: ErrorBody) -> Self {
        Self(Box::new(Repr { status, body, headers: Vec::new() }))
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The body.
    pub fn body(&self) -> &ErrorBody {
        &self.0.body
    }

    /// 400 `invalid_input` naming `field`.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut body = ErrorBody::new("invalid_input", message);
        body.field = Some(field.into());
        Self::new(StatusCode::BAD_REQUEST, body)
    }

    /// 400 `invalid_line`: the first bad NDJSON line; nothing was written.
    pub fn invalid_line(line: u64, field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut body = ErrorBody::new("invalid_line", message);
        body.line = Some(line);
        body.field = Some(field.into());
        Self::new(StatusCode::BAD_REQUEST, body)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, ErrorBody::new("unauthorized", message));
        e.0.headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        e
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorBody::new("forbidden", message))
    }

    /// 404 `not_found`.
    pub fn not_found(what: &str, id: impl Into<String>) -> Self {
        let id = id.into();
        let mut body = ErrorBody::new("not_found", format!("{what} not found: {id}"));
        body.what = Some(what.to_owned());
        body.id = Some(id);
        Self::new(StatusCode::NOT_FOUND, body)
    }

    /// 404 `not_found` (`what`: `receipt_key`): this server holds no receipt key.
    pub fn no_receipt_key() -> Self {
        let mut body = ErrorBody::new(
            "not_found",
            "this server signs no receipts: it was started without --receipt-key",
        );
        body.what = Some("receipt_key".to_owned());
        Self::new(StatusCode::NOT_FOUND, body)
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorBody::new("not_found", format!("no route for {path}")),
        )
    }

    /// 405 for a method a route does not serve.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorBody::new("method_not_allowed", "this route does not serve that method"),
        )
    }

    /// 408 `request_timeout`: the body did not arrive in time; nothing was written.
    pub fn request_timeout(after: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorBody::new(
                "request_timeout",
                format!(
                    "the body did not arrive within {} s; nothing was written",
                    after.as_secs()
                ),
            ),
        );
        e.0.headers.push((header::CONNECTION, HeaderValue::from_static("close")));
        e
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        let mut body =
            ErrorBody::new("payload_too_large", format!("the body is over {limit} bytes"));
        body.limit = Some(limit as u64);
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, body)
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = got.map_or_else(|| "none".to_owned(), |g| format!("{g:?}"));
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorBody::new(
                "unsupported_media_type",
                format!("Content-Type must be {}, got {got}", crate::NDJSON),
            ),
        )
    }

    /// 415 `unsupported_media_type` for a compressed body (`Content-Encoding`).
    pub fn unsupported_encoding(got: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorBody::new(
                "unsupported_media_type",
                format!(
                    "compressed bodies are not accepted (Content-Encoding {got:?}); send identity"
                ),
            ),
        )
    }

    /// 429 `too_many_in_flight`: the tenant already has `cap` ingests being served.
    pub fn too_many_in_flight(cap: usize) -> Self {
        let mut body = ErrorBody::new(
            "too_many_in_flight",
            format!(
                "this tenant already has {cap} ingest requests in flight (the server's cap per \
                 tenant); retry after 1 s, or send fewer requests at once"
            ),
        );
        body.limit = Some(cap as u64);
        body.retry_after_secs = Some(1);
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, body);
        e.0.headers.push((header::RETRY_AFTER, HeaderValue::from(1u64)));
        e
    }

    /// 413 `too_many_runs`: the body names more distinct runs than the server's cap.
    pub fn too_many_runs(cap: usize) -> Self {
        let mut body = ErrorBody::new(
            "too_many_runs",
            format!(
                "the body names more than {cap} distinct runs (the server's cap per request); \
                 split it into several requests"
            ),
        );
        body.limit = Some(cap as u64);
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, body)
    }

    /// 429 `rate_limited` with `Retry-After: secs`.
    pub fn rate_limited(secs: u64) -> Self {
        let mut body = ErrorBody::new(
            "rate_limited",
            format!("this tenant's ingest rate limit is reached; retry after {secs} s"),
        );
        body.retry_after_secs = Some(secs);
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, body);
        e.0.headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        e
    }

    /// 503 `unavailable` with a generic message and `Retry-After` (whole seconds, at least 1):
    /// every 503 this server sends says when to come back.
    pub fn service_unavailable(wait: Duration) -> Self {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorBody::new(
                "unavailable",
                "the server is temporarily unable to serve this request; nothing was written; \
                 retry after the Retry-After delay",
            ),
        );
        e.0.body.retry_after_secs = Some(secs);
        e.0.headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        e
    }

    /// 429 `rate_limited` with `Retry-After: secs`: too many failed authentications from the
    /// caller's address.
    pub fn auth_rate_limited(secs: u64) -> Self {
        let mut body = ErrorBody::new(
            "rate_limited",
            format!(
                "too many failed authentications from this address; every request from it is \
                 refused for {secs} s"
            ),
        );
        body.retry_after_secs = Some(secs);
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, body);
        e.0.headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        e
    }

    /// 500 `internal`: the details are logged under `request` by the caller, not sent.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorBody::new("internal", "the server failed; the details are in its log"),
        )
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let message = e.to_string();
        match e {
            Error::Gap { run_id, expected, got } => {
                let mut body = ErrorBody::new("gap", message);
                body.run_id = Some(run_id.to_string());
                body.seq = Some(got);
                body.expected = Some(expected);
                Self::new(StatusCode::CONFLICT, body)
            }
            Error::Conflict { run_id, at, stored_hash, incoming_hash } => {
                let mut body = ErrorBody::new("conflict", message);
                body.run_id = Some(run_id.to_string());
                match at {
                    ConflictAt::Seq(seq) => body.seq = Some(seq),
                    ConflictAt::Metadata(field) => body.field = Some(field),
                }
                body.stored_hash = Some(stored_hash.to_string());
                body.incoming_hash = Some(incoming_hash.to_string());
                Self::new(StatusCode::CONFLICT, body)
            }
            Error::NotFound { what, id } => Self::not_found(what, id),
            Error::InvalidInput { field, message } => Self::bad_request(field, message),
            Error::Unauthorized(message) => Self::unauthorized(message),
            Error::Unavailable { backend, retry_after, source, .. } => {
                // The cause (a driver's pool or connection error) goes to the log only: the
                // caller learns that it may retry, and when, never the internals.
                match &source {
                    Some(cause) => {
                        let cause = ErrorChain::new(cause.as_ref());
                        tracing::warn!(backend, error = %message, %cause, "backend unavailable");
                    }
                    None => tracing::warn!(backend, error = %message, "backend unavailable"),
                }
                Self::service_unavailable(retry_after.unwrap_or(DEFAULT_RETRY_AFTER))
            }
            Error::Integrity { run_id, seq, message: what } => {
                // Stored data failing its own checks is the operator's emergency, never the
                // caller's fault: logged loudly, and reported as what it is. The body's message
                // is the finding alone (code, run and seq say the rest), so a client rebuilding
                // the error does not say "integrity check failed" twice.
                tracing::error!(run = ?run_id, seq, error = %message, "integrity check failed");
                let mut body = ErrorBody::new("integrity", what);
                body.run_id = run_id.map(|r| r.to_string());
                body.seq = seq;
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, body)
            }
            Error::Unsupported { .. } => {
                Self::new(StatusCode::NOT_IMPLEMENTED, ErrorBody::new("not_implemented", message))
            }
            Error::Backend { backend, source } => {
                // The whole chain of causes, each once: the driver's error, its I/O cause…
                let cause = ErrorChain::new(source.as_ref());
                tracing::error!(backend, error = %cause, "backend failure");
                Self::internal()
            }
            other => {
                tracing::error!(error = %other.chain(), "unclassified failure");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Repr { status, body, headers } = *self.0;
        let mut response = (status, Json(body)).into_response();
        for (name, value) in headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
