//! Read routes, admin routes and operational routes.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kahn_core::{Cursor, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, RunId, RunQuery, Seq};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{AdminAccess, ReadAccess, TenantView};
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::{
    EnvelopeView, ErrorBody, Health, ReceiptKeyView, RunDetail, RunsPage, TenantView as TenantRow,
    TenantsList, TransitionView, TransitionsPage, WhoAmI,
};

/// Default page size of a transitions read.
const DEFAULT_TRANSITIONS_PAGE: u32 = 100;

/// Runs the body of a tenant-data handler and stamps the tenant headers on whatever it
/// answers, errors included.
pub(crate) fn stamped(view: &TenantView, result: Result<Response, ApiError>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    view.stamp(&mut response);
    response
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(t)| t).map_err(|e| ApiError::bad_request("query", e.body_text()))
}

pub(crate) fn run_id(p: Result<Path<String>, PathRejection>) -> Result<RunId, ApiError> {
    let Path(raw) = p.map_err(|e| ApiError::bad_request("run_id", e.body_text()))?;
    RunId::new(raw).map_err(ApiError::from)
}

fn page_limit(limit: Option<u32>, default: u32, min: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (min..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request("limit", format!("must be {min} to {MAX_PAGE_SIZE}"))),
    }
}

/// Query of `GET /v1/runs`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListRunsParams {
    /// Continue after this cursor (from a previous page's `next_cursor`; opaque hex). Any
    /// other value — not hex, or a position no run can have — is refused with 400 naming
    /// `cursor`.
    #[param(min_length = 2, pattern = r"^([0-9A-Fa-f]{2})+$")]
    cursor: Option<String>,
    /// Only runs with this source. Follows the rule of a run's `source` at ingest: 1 to 256
    /// bytes, no whitespace or control characters (else 400 naming `source`).
    #[param(min_length = 1, max_length = 256)]
    source: Option<String>,
    /// Only runs whose status is this: the latest run-level state, else derived from the
    /// nodes (`running`, `failed`, `pending`, `cancelled`, `succeeded`). Not empty (else 400
    /// naming `status`).
    #[param(min_length = 1)]
    status: Option<String>,
    /// Only runs whose id starts with this: 1 to 200 characters of the run id alphabet
    /// `[A-Za-z0-9._:-]` (else 400 naming `run_id_prefix`).
    #[param(min_length = 1, max_length = 200, pattern = r"^[A-Za-z0-9._:-]+$")]
    run_id_prefix: Option<String>,
    /// Only runs with at least one node whose latest state is of this class: `failed`,
    /// `cancelled`, `active`, `waiting`, `succeeded`, `skipped` or `other` (else 400 naming
    /// `node_class`). `?status=running&node_class=failed`: running, something already failed.
    #[param(pattern = "^(failed|cancelled|active|waiting|succeeded|skipped|other)$")]
    node_class: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Lists the effective tenant's runs, newest activity first.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(ListRunsParams, ("X-KAHN-Tenant" = Option<String>, Header, description = "Admin only: read this tenant (UUID)")),
    responses(
        (status = 200, description = "A page of runs (empty, with `X-KAHN-Tenant-Source: none`, when the caller has no tenant)", body = RunsPage,
            headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "`invalid_input` naming the parameter: a `source` or `status` filter its field's ingest rule refuses, a cursor the server did not issue, a bad `limit`; X-KAHN-Tenant not a hyphenated UUID or sent twice; Authorization sent twice", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "X-KAHN-Tenant names no tenant", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address: refused before any credential is checked; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable, or the server is at its cap of requests in flight; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity`: stored data fails its own checks (`run_id`, `seq`); or `internal`", body = ErrorBody),
    )
)]
pub(crate) async fn list_runs(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    q: Result<Query<ListRunsParams>, QueryRejection>,
) -> Response {
    let result = async {
        let p = query(q)?;
        let cursor = p.cursor.as_deref().map(Cursor::decode).transpose()?;
        let query = RunQuery {
            source: p.source,
            status: p.status,
            run_id_prefix: p.run_id_prefix,
            node_class: p.node_class.as_deref().map(node_class).transpose()?,
            limit: page_limit(p.limit, DEFAULT_PAGE_SIZE, 1)?,
            cursor,
        };
        // The backend checks it too; checked here also when there is no tenant to ask.
        query.validate()?;
        let page = match &view.scope {
            Some(scope) => state.inner.backend.list_runs(scope, &query).await?,
            None => kahn_core::RunPage { runs: Vec::new(), next_cursor: None },
        };
        Ok(Json(RunsPage {
            runs: page.runs.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor.map(|c| c.encode()),
        })
        .into_response())
    }
    .await;
    stamped(&view, result)
}

/// One run: summary with graph, counts, status and head hash.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}",
    tag = "runs",
    security(("bearer" = [])),
    params(("run_id" = String, Path, description = "The run id: 1 to 200 of A-Z a-z 0-9 . _ : - (not . or ..)", pattern = r"^[A-Za-z0-9._:-]{1,200}$"),
        ("X-KAHN-Tenant" = Option<String>, Header, description = "Admin only: read this tenant (UUID)")),
    responses(
        (status = 200, description = "The run", body = RunDetail,
            headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "Malformed run id or X-KAHN-Tenant (not a hyphenated UUID, or sent twice); Authorization sent twice", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "No such run for the effective tenant, or unknown override tenant", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address: refused before any credential is checked; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable, or the server is at its cap of requests in flight; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity`: stored data fails its own checks (`run_id`, `seq`); or `internal`", body = ErrorBody),
    )
)]
pub(crate) async fn get_run(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let run = run_id(p)?;
        let Some(scope) = &view.scope else {
            return Err(ApiError::not_found("run", run.to_string()));
        };
        let summary = state.inner.backend.get_run(scope, &run).await?;
        Ok(Json(RunDetail::from(summary)).into_response())
    }
    .await;
    stamped(&view, result)
}

/// Query of `GET /v1/runs/{run_id}/transitions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TransitionsParams {
    /// Only transitions with a seq greater than this (exclusive); from seq 0 when absent.
    #[param(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    after_seq: Option<u64>,
    /// Page size, 0 to 1000 (default 100); 0 reads nothing but still checks the run exists.
    #[param(minimum = 0, maximum = 1000)]
    limit: Option<u32>,
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| m.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case(crate::NDJSON))
}

/// A page of a run's transitions in seq order: JSON, or NDJSON with `Accept:
/// application/x-ndjson` (one source line per transition — `run_id`, `seq` and the body — so
/// the output can be pushed again as is).
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}/transitions",
    tag = "runs",
    security(("bearer" = [])),
    params(("run_id" = String, Path, description = "The run id: 1 to 200 of A-Z a-z 0-9 . _ : - (not . or ..)", pattern = r"^[A-Za-z0-9._:-]{1,200}$"), TransitionsParams,
        ("X-KAHN-Tenant" = Option<String>, Header, description = "Admin only: read this tenant (UUID)")),
    responses(
        (status = 200, description = "Transitions with their content and chain hashes", content(
            (TransitionsPage = "application/json"),
            (String = "application/x-ndjson"),
        ), headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "Bad query, run id or X-KAHN-Tenant (not a hyphenated UUID, or sent twice); Authorization sent twice", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "No such run for the effective tenant", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address: refused before any credential is checked; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable, or the server is at its cap of requests in flight; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity`: stored data fails its own checks (`run_id`, `seq`); or `internal`", body = ErrorBody),
    )
)]
pub(crate) async fn read_transitions(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    headers: HeaderMap,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<TransitionsParams>, QueryRejection>,
) -> Response {
    let result = async {
        let run = run_id(p)?;
        let params = query(q)?;
        let after = params.after_seq.map(Seq::new).transpose()?;
        let limit = page_limit(params.limit, DEFAULT_TRANSITIONS_PAGE, 0)?;
        let Some(scope) = &view.scope else {
            return Err(ApiError::not_found("run", run.to_string()));
        };
        let rows = state.inner.backend.read_transitions(scope, &run, after, limit).await?;
        if wants_ndjson(&headers) {
            let mut out = String::new();
            for row in &rows {
                kahn_core::ndjson::write_stored(&mut out, &run, row);
            }
            let mut r = out.into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::NDJSON));
            return Ok(r);
        }
        Ok(Json(TransitionsPage {
            run_id: run,
            transitions: rows.into_iter().map(TransitionView::from).collect(),
        })
        .into_response())
    }
    .await;
    stamped(&view, result)
}

/// The caller, the effective tenant, and how it was resolved.
#[utoipa::path(
    get,
    path = "/v1/whoami",
    tag = "auth",
    security(("bearer" = [])),
    params(("X-KAHN-Tenant" = Option<String>, Header, description = "Admin only: read this tenant (UUID)")),
    responses(
        (status = 200, description = "Who the server thinks the caller is", body = WhoAmI,
            headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "X-KAHN-Tenant not a hyphenated UUID, or sent twice; Authorization sent twice", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "X-KAHN-Tenant names no tenant", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address: refused before any credential is checked; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn whoami(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
) -> Response {
    let message = match view.scope.as_ref().map(|s| s.source()) {
        Some(kahn_core::TenantSource::ApiKey) => "the tenant of this API key".to_owned(),
        Some(kahn_core::TenantSource::Org) => "the tenant linked to the token's org_id".to_owned(),
        Some(kahn_core::TenantSource::Sub) => "the personal tenant of the token's sub".to_owned(),
        Some(kahn_core::TenantSource::AdminOverride) => {
            "an administrator's read-only override (X-KAHN-Tenant)".to_owned()
        }
        None => "no tenant: the token's org_id is linked to none, its sub owns none, and this server creates no personal tenant for it, so there is nothing to show".to_owned(),
    };
    let result = async {
        let tenant_name = match &view.scope {
            Some(scope) => Some(state.inner.backend.get_tenant(scope.tenant()).await?.name),
            None => None,
        };
        let body = WhoAmI {
            principal: view.principal.clone(),
            tenant_id: view.scope.as_ref().map(|s| s.tenant()),
            tenant_name,
            tenant_source: view.source().to_owned(),
            message,
        };
        Ok(Json(body).into_response())
    }
    .await;
    stamped(&view, result)
}

/// Every tenant with its run count. JWT with role `admin` only.
#[utoipa::path(
    get,
    path = "/api/admin/tenants",
    tag = "admin",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "All tenants, by name", body = TenantsList),
        (status = 400, description = "Authorization sent twice", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 403, description = "Not a JWT with role admin", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address: refused before any credential is checked; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    )
)]
pub(crate) async fn admin_tenants(
    State(state): State<AppState>,
    AdminAccess(admin, peer): AdminAccess,
) -> Result<Json<TenantsList>, ApiError> {
    let tenants = state.inner.backend.list_tenants().await?;
    tracing::info!(
        target: crate::AUDIT_TARGET,
        event = "admin_list_tenants",
        outcome = "honoured",
        sub = admin.sub.as_str(),
        iss = admin.iss.as_deref().unwrap_or(""),
        email = admin.email.as_deref().unwrap_or(""),
        nonce = admin.nonce.as_deref().unwrap_or(""),
        tenants = tenants.len(),
        peer = %peer,
        "admin listed every tenant"
    );
    Ok(Json(TenantsList { tenants: tenants.into_iter().map(TenantRow::from).collect() }))
}

/// A signed receipt for the run's head as the server holds it now. An ingest signs one for
/// each run it stores something in; this one is for a run whose transitions were all stored
/// before (a re-push from a fresh CI runner). `received_at` is when it was signed.
#[utoipa::path(
    get,
    path = "/v1/runs/{run_id}/receipt",
    tag = "receipts",
    security(("bearer" = [])),
    params(("run_id" = String, Path, description = "The run id: 1 to 200 of A-Z a-z 0-9 . _ : - (not . or ..)", pattern = r"^[A-Za-z0-9._:-]{1,200}$"),
        ("X-KAHN-Tenant" = Option<String>, Header, description = "Admin only: read this tenant (UUID)")),
    responses(
        (status = 200, description = "The receipt (a DSSE envelope)", body = EnvelopeView,
            headers(("X-KAHN-Effective-Tenant" = String), ("X-KAHN-Tenant-Source" = String))),
        (status = 400, description = "Malformed run id or X-KAHN-Tenant", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "No such run for the effective tenant; or `what` `receipt_key`: this server signs no receipts", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity` or `internal`", body = ErrorBody),
    )
)]
pub(crate) async fn run_receipt(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    let result = async {
        let run = run_id(p)?;
        let Some(scope) = &view.scope else {
            return Err(ApiError::not_found("run", run.to_string()));
        };
        let Some(signer) = &state.inner.config.receipt_key else {
            return Err(ApiError::no_receipt_key());
        };
        let info = state.inner.backend.get_run(scope, &run).await?.info;
        let report = kahn_core::RunAppendReport {
            run_id: run,
            appended: 0,
            skipped: 0,
            next_seq: info.next_seq,
            head_hash: info.head_hash,
            receipt: None,
        };
        let envelope = signer.sign_report(scope.tenant(), &report, chrono::Utc::now())?;
        Ok(Json(envelope).into_response())
    }
    .await;
    stamped(&view, result)
}

/// The public key this server signs append receipts with: what a producer or an auditor
/// checks receipts against (pin it; a key fetched later from the same server proves less).
#[utoipa::path(get, path = "/v1/receipts/key", tag = "receipts", security(()),
    responses((status = 200, description = "The receipt key", body = ReceiptKeyView),
        (status = 404, description = "`not_found`: this server signs no receipts (it was started without a receipt key)", body = ErrorBody)))]
pub(crate) async fn receipt_key(
    State(state): State<AppState>,
) -> Result<Json<ReceiptKeyView>, ApiError> {
    let Some(signer) = &state.inner.config.receipt_key else {
        return Err(ApiError::no_receipt_key());
    };
    let key = signer.public_key();
    Ok(Json(ReceiptKeyView {
        key_id: key.id().to_owned(),
        algorithm: "ed25519".into(),
        public_key_pem: key.to_pem(),
    }))
}

/// Liveness: the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "Alive", body = Health)))]
pub(crate) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".into(), warnings: Vec::new() })
}

/// Readiness: the backend is reachable.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses((status = 200, description = "Ready", body = Health),
        (status = 503, description = "The backend is unreachable; see `Retry-After`", body = ErrorBody)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.inner.backend.ping().await {
        Ok(()) => {
            let warnings = state.remote_keys().iter().filter_map(|k| k.problem()).collect();
            Ok(Json(Health { status: "ok".into(), warnings }))
        }
        Err(e) => {
            tracing::warn!(error = %e.chain(), "readiness check failed");
            Err(ApiError::service_unavailable(crate::error::DEFAULT_RETRY_AFTER))
        }
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain; version=0.0.4")))]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let mut r = state.inner.metrics.render(state.inner.backend.pool_status()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", security(()),
    responses((status = 200, description = "The OpenAPI 3 document", body = Object)))]
pub(crate) async fn openapi() -> Response {
    (StatusCode::OK, Json(crate::openapi::openapi_document())).into_response()
}

/// A `node_class` parameter: one of the class names.
fn node_class(name: &str) -> Result<kahn_core::StateClass, ApiError> {
    kahn_core::StateClass::from_name(name).ok_or_else(|| {
        ApiError::from(kahn_core::Error::invalid(
            "node_class",
            format!(
                "{name:?} is not a class (failed, cancelled, active, waiting, succeeded, skipped, other)"
            ),
        ))
    })
}
