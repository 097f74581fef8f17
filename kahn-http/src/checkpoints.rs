//! Tenant checkpoints over HTTP (issue 19): the signed log an auditor checks, a checkpoint on
//! demand, a run's inclusion proof and the consistency proof between two checkpoints. The
//! periodic checkpoints are [`crate::server::spawn_checkpoints`]'.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use kahn_core::StorageBackendExt as _;
use kahn_core::checkpoint::{RunProof, leaf_hashes};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::ReadAccess;
use crate::error::ApiError;
use crate::reads::{query, run_id, stamped};
use crate::state::AppState;
use crate::wire::{CheckpointLogView, CheckpointView, ConsistencyView, ErrorBody, RunProofView};

/// The scope's tenant's whole checkpoint log: every leaf and every signed checkpoint.
#[utoipa::path(get, path = "/v1/checkpoints", tag = "checkpoints", security(("bearer" = [])),
    responses(
        (status = 200, description = "The log (empty before the first checkpoint)", body = CheckpointLogView),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity` (a stored leaf does not decode) or `internal`", body = ErrorBody),
    ))]
pub(crate) async fn log(State(state): State<AppState>, ReadAccess(view): ReadAccess) -> Response {
    let result = async {
        let Some(scope) = &view.scope else {
            return Ok(
                Json(CheckpointLogView { leaves: vec![], checkpoints: vec![] }).into_response()
            );
        };
        let log = state.inner.backend.read_checkpoint_log(scope).await?;
        Ok(Json(CheckpointLogView::from(log)).into_response())
    }
    .await;
    stamped(&view, result)
}

/// Makes the tenant's checkpoint now (the server also makes them periodically): appends a
/// leaf per run that changed since the latest checkpoint and signs the log's root. When
/// nothing changed, answers the latest checkpoint.
#[utoipa::path(post, path = "/v1/checkpoints", tag = "checkpoints", security(("bearer" = [])),
    responses(
        (status = 200, description = "The tenant's latest checkpoint", body = CheckpointView),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "`what` `receipt_key`: this server signs nothing; or no tenant", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is unavailable, or other servers kept checkpointing", body = ErrorBody),
        (status = 500, description = "`integrity` or `internal`", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
) -> Response {
    let result = async {
        let Some(scope) = &view.scope else {
            return Err(ApiError::not_found("tenant", "(none for this credential)"));
        };
        let Some(signer) = &state.inner.config.receipt_key else {
            return Err(ApiError::no_receipt_key());
        };
        let made =
            state.inner.backend.make_checkpoint_audited(scope, signer, chrono::Utc::now()).await?;
        crate::server::report_alteration(scope.tenant(), &made);
        Ok(Json(CheckpointView::from(made.checkpoint)).into_response())
    }
    .await;
    stamped(&view, result)
}

/// Which checkpoint a proof is against.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ProofQuery {
    /// The checkpoint's size; the latest checkpoint when absent.
    tree_size: Option<u64>,
}

/// The proof that the run's latest state is in a checkpoint (the latest, or the one of
/// `tree_size` leaves): its leaf and the RFC 9162 inclusion proof.
#[utoipa::path(get, path = "/v1/runs/{run_id}/proof", tag = "checkpoints",
    security(("bearer" = [])),
    params(("run_id" = String, Path, description = "The run id: 1 to 200 of A-Z a-z 0-9 . _ : - (not . or ..)", pattern = r"^[A-Za-z0-9._:-]{1,200}$"),
        ProofQuery),
    responses(
        (status = 200, description = "The proof", body = RunProofView),
        (status = 400, description = "Malformed run id or query", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 404, description = "`what` `checkpoint`: no checkpoint (of that size); `run`: the run has no leaf in it", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity` (a stored leaf does not decode) or `internal`", body = ErrorBody),
    ))]
pub(crate) async fn run_proof(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<ProofQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let run = run_id(p)?;
        let q = query(q)?;
        let Some(scope) = &view.scope else {
            return Err(ApiError::not_found("run", run.to_string()));
        };
        let log = state.inner.backend.read_checkpoint_log(scope).await?;
        let checkpoint = match q.tree_size {
            Some(size) => log.at_size(size),
            None => log.latest(),
        };
        let Some(checkpoint) = checkpoint else {
            let which = q.tree_size.map_or_else(|| "latest".to_owned(), |s| format!("size {s}"));
            return Err(ApiError::not_found("checkpoint", which));
        };
        let proof = RunProof::build(&log, checkpoint, &run)?;
        Ok(Json(RunProofView::from(proof)).into_response())
    }
    .await;
    stamped(&view, result)
}

/// The two sizes a consistency proof joins.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ConsistencyQuery {
    /// The older checkpoint's size.
    from: u64,
    /// The newer checkpoint's size.
    to: u64,
}

/// The RFC 9162 consistency proof between two sizes of the tenant's leaf log: for an auditor
/// who keeps checkpoints but not the leaves.
#[utoipa::path(get, path = "/v1/checkpoints/consistency", tag = "checkpoints",
    security(("bearer" = [])), params(ConsistencyQuery),
    responses(
        (status = 200, description = "The proof", body = ConsistencyView),
        (status = 400, description = "`from` above `to`, or `to` beyond the log", body = ErrorBody),
        (status = 401, description = "Missing or invalid credential", body = ErrorBody),
        (status = 429, description = "Too many failed authentications from this address; see `Retry-After`", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 503, description = "The backend is temporarily unavailable; see `Retry-After`", body = ErrorBody),
        (status = 500, description = "`integrity` (a stored leaf does not decode) or `internal`", body = ErrorBody),
    ))]
pub(crate) async fn consistency(
    State(state): State<AppState>,
    ReadAccess(view): ReadAccess,
    q: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Response {
    let result = async {
        let q = query(q)?;
        let leaves = match &view.scope {
            Some(scope) => state.inner.backend.read_checkpoint_log(scope).await?.leaves,
            None => Vec::new(),
        };
        let to = usize::try_from(q.to).unwrap_or(usize::MAX);
        let Some(leaves) = leaves.get(..to) else {
            return Err(ApiError::bad_request(
                "to",
                format!("the log holds {} leaves, fewer than {}", leaves.len(), q.to),
            ));
        };
        let proof = kahn_core::merkle::consistency_proof(&leaf_hashes(leaves), q.from)
            .map_err(|e| ApiError::bad_request("from", e.to_string()))?;
        Ok(Json(ConsistencyView { from: q.from, to: q.to, proof }).into_response())
    }
    .await;
    stamped(&view, result)
}
