//! The router, the server loop with graceful shutdown, and the retention task.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use kahn_core::{ErrorChain, PurgeTurn};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;
use crate::{checkpoints, ingest, metrics, oidc, ratelimit, reads, viewer};

/// The KAHN API as an [`axum::Router`], ready to serve or to nest in another service.
///
/// Routes: `POST /v1/ingest/transitions`, `GET /v1/runs`, `GET /v1/runs/{run_id}`,
/// `GET /v1/runs/{run_id}/transitions`, `GET /v1/whoami`, `GET /api/admin/tenants`,
/// `GET /healthz`, `/readyz`, `/metrics`, `/openapi.json`, sign-in (`GET /auth/config`,
/// `/auth/login`, `/auth/callback`, `POST /auth/logout`), the read-only history viewer at
/// `GET /` with its assets under `GET /viewer/{file}`, and the API reference at `GET /docs`. Unknown paths and methods answer
/// JSON errors too. With [`ServerConfig::cors_origins`](crate::ServerConfig::cors_origins)
/// set, those origins' pages may call it (credentials included); with none, no CORS header
/// is ever sent.
pub fn router(state: AppState) -> Router {
    // Checked by AppState's constructors: an origin list that does not parse never gets here.
    let cors = crate::cors::layer(&state.inner.config.cors_origins).ok().flatten();
    let router = Router::new()
        .route("/v1/ingest/transitions", post(ingest::ingest))
        .route("/v1/runs", get(reads::list_runs))
        .route("/v1/runs/{run_id}", get(reads::get_run))
        .route("/v1/runs/{run_id}/transitions", get(reads::read_transitions))
        .route("/v1/whoami", get(reads::whoami))
        .route("/v1/receipts/key", get(reads::receipt_key))
        .route("/v1/runs/{run_id}/receipt", get(reads::run_receipt))
        .route("/v1/runs/{run_id}/proof", get(checkpoints::run_proof))
        .route("/v1/checkpoints", get(checkpoints::log).post(checkpoints::create))
        .route("/v1/checkpoints/consistency", get(checkpoints::consistency))
        .route("/api/admin/tenants", get(reads::admin_tenants))
        .route("/healthz", get(reads::healthz))
        .route("/readyz", get(reads::readyz))
        .route("/metrics", get(reads::metrics))
        .route("/openapi.json", get(reads::openapi))
        .route("/auth/config", get(oidc::config))
        .route("/auth/login", get(oidc::login))
        .route("/auth/callback", get(oidc::callback))
        .route("/auth/logout", post(oidc::logout))
        .route("/", get(viewer::index))
        .route("/docs", get(viewer::docs))
        .route("/viewer/{file}", get(viewer::asset))
        .fallback(|uri: Uri| async move { ApiError::no_route(uri.path()).into_response() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed().into_response() })
        .layer(axum::middleware::from_fn_with_state(state.clone(), ratelimit::limit_in_flight))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Spawns the refresh of every key set fetched by URL: each every `max_age` of its own (a
/// failure keeps the keys held and shows in `/readyz`). Stops when `stop` changes or its
/// sender drops.
fn spawn_key_refresh(
    state: &AppState,
    stop: &watch::Receiver<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    state
        .remote_keys()
        .into_iter()
        .map(|keys| {
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(keys.max_age);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticker.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = ticker.tick() => {}
                    }
                    keys.refresh(Duration::ZERO).await;
                }
            })
        })
        .collect()
}

/// Spawns the retention task: every `interval` (first at once), a purge at the store's own
/// clock (runs whose `received_at + retention_days` has passed), logging what each tenant
/// lost and each tenant whose purge failed. It stops when `stop` changes or its sender drops.
///
/// The purge runs in turn ([`StorageBackend::purge_expired_in_turn`]): on a store several
/// servers share (Postgres), one server at a time purges, about once per `interval` over all
/// of them; a server whose timer fires while another has the turn says so at debug level.
///
/// [`StorageBackend::purge_expired_in_turn`]: kahn_core::StorageBackend::purge_expired_in_turn
pub fn spawn_retention(
    state: AppState,
    interval: Duration,
    stop: watch::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    spawn_every(interval, stop, move || {
        let state = state.clone();
        async move { retention_turn(&state, interval).await }
    })
}

/// Runs `turn` every `interval`, the first at once; a late turn delays the next rather than
/// bunching them. Stops when `stop` changes or its sender drops.
fn spawn_every<F, Fut>(
    interval: Duration,
    mut stop: watch::Receiver<()>,
    mut turn: F,
) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = ticker.tick() => {}
            }
            turn().await;
        }
    })
}

/// One turn of the retention task.
async fn retention_turn(state: &AppState, interval: Duration) {
    let metrics = &state.inner.metrics;
    match state.inner.backend.purge_expired_in_turn(interval).await {
        Ok(PurgeTurn::Taken) => {
            metrics.purges.with_label_values(&["skipped"]).inc();
            tracing::debug!(
            target: "kahn_http::retention",
            "retention purge skipped: another server has the turn or purged within the interval"
            );
        }
        Ok(PurgeTurn::NotShared(outcome) | PurgeTurn::Ran(outcome)) => {
            metrics.purges.with_label_values(&["ran"]).inc();
            for r in &outcome.reports {
                metrics.purged_runs.inc_by(r.runs_removed);
                metrics.purged_transitions.inc_by(r.transitions_removed);
            }
            if !outcome.failures.is_empty() {
                metrics.purges.with_label_values(&["failed"]).inc();
            }
            tracing::info!(
                target: "kahn_http::retention",
                tenants_purged = outcome.reports.len(),
                tenants_failed = outcome.failures.len(),
                "retention purge ran"
            );
            for r in &outcome.reports {
                tracing::info!(
                    target: "kahn_http::retention",
                    tenant = %r.tenant_id,
                    runs_removed = r.runs_removed,
                    transitions_removed = r.transitions_removed,
                    "retention purge"
                );
            }
            for f in &outcome.failures {
                tracing::error!(
                    target: "kahn_http::retention",
                    tenant = %f.tenant_id,
                    error = %f.error.chain(),
                    "retention purge of a tenant failed; its runs are kept until the next purge"
                );
            }
        }
        Err(e) => {
            metrics.purges.with_label_values(&["failed"]).inc();
            tracing::error!(error = %e.chain(), "retention purge failed");
        }
    }
    state.inner.limits.shrink();
}

/// Spawns the checkpoint task: every `interval` (first at once), a signed checkpoint for
/// every tenant whose runs changed since its latest one ([`StorageBackendExt::make_checkpoint`];
/// an unchanged tenant gets none). Servers sharing a store may checkpoint the same tenant:
/// the log's compare-and-append keeps one. Logs each tenant's failure and goes on. It stops
/// when `stop` changes or its sender drops.
///
/// [`StorageBackendExt::make_checkpoint`]: kahn_core::StorageBackendExt::make_checkpoint
pub(crate) fn spawn_checkpoints(
    state: AppState,
    signer: kahn_core::receipt::ReceiptSigner,
    interval: Duration,
    stop: watch::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    spawn_every(interval, stop, move || {
        let (state, signer) = (state.clone(), signer.clone());
        async move { checkpoint_turn(&state, &signer).await }
    })
}

/// One turn of the checkpoint task: every tenant, one after the other.
async fn checkpoint_turn(state: &AppState, signer: &kahn_core::receipt::ReceiptSigner) {
    use kahn_core::StorageBackendExt as _;
    let backend = &state.inner.backend;
    let tenants = match backend.list_tenants().await {
        Ok(tenants) => tenants,
        Err(e) => {
            tracing::error!(target: "kahn_http::checkpoints", error = %e.chain(), "checkpoints: cannot list the tenants");
            return;
        }
    };
    let (mut made, mut failed) = (0u64, 0u64);
    for t in tenants {
        let id = t.tenant.id;
        let made_one = async {
            let scope = backend.resolve_admin_override(id).await?;
            backend.make_checkpoint_audited(&scope, signer, chrono::Utc::now()).await
        }
        .await;
        match made_one {
            Ok(c) => {
                made += 1;
                report_alteration(id, &c);
                tracing::debug!(target: "kahn_http::checkpoints", tenant = %id, tree_size = c.checkpoint.tree_size, "checkpoint");
            }
            Err(e) => {
                failed += 1;
                tracing::error!(target: "kahn_http::checkpoints", tenant = %id, error = %e.chain(), "checkpoint of a tenant failed; retried at the next interval");
            }
        }
    }
    tracing::info!(target: "kahn_http::checkpoints", tenants = made, failed, "checkpoints made");
}

/// Logs, loudly, a checkpoint that records a change made outside KAHN (the operator's
/// emergency, like a failed integrity check).
pub(crate) fn report_alteration(
    tenant: kahn_core::TenantId,
    made: &kahn_core::checkpoint::MadeCheckpoint,
) {
    if let Some(why) = &made.alteration {
        tracing::error!(
            target: "kahn_http::checkpoints",
            tenant = %tenant,
            tree_size = made.checkpoint.tree_size,
            alteration = %why,
            "a checkpoint recorded a change made outside KAHN since the previous one; kept as evidence"
        );
    }
}

/// Serves [`router`] on `listener` until `shutdown` completes, then stops accepting, lets
/// in-flight requests finish (an append either commits whole or not at all), and stops the
/// retention task.
///
/// Each connection is HTTP/1.1 with a request-head deadline
/// ([`ServerConfig::header_timeout`](crate::ServerConfig::header_timeout)): a client that
/// connects and sends nothing, trickles its headers, or leaves a keep-alive connection idle
/// is disconnected when it expires, so idle connections cannot pile up. (`axum::serve` sets
/// no timer, which leaves hyper's header timeout inert; hence this loop.)
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(());
    let refreshers = spawn_key_refresh(&state, &stop_rx);
    let exporter = state.inner.otlp.as_ref().and_then(|e| e.spawn(stop_rx.clone()));
    let retention = state
        .inner
        .config
        .retention_interval
        .map(|every| spawn_retention(state.clone(), every, stop_rx.clone()));
    let checkpointing =
        match (&state.inner.config.receipt_key, state.inner.config.checkpoint_interval) {
            (Some(signer), Some(every)) => {
                Some(spawn_checkpoints(state.clone(), signer.clone(), every, stop_rx))
            }
            _ => None,
        };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "kahn-http listening");
    }
    let header_timeout = state.inner.config.header_timeout;
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
        // Each request carries its peer address (`ConnectInfo`), as axum's
        // `into_make_service_with_connect_info` would: the failed-authentication limit and the
        // audit trail read it.
        let service = TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&service, request)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(error = %ErrorChain::new(&e), "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    drop(stop_tx);
    if let Some(task) = exporter
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "OTLP export task ended abnormally");
    }
    for task in refreshers {
        if let Err(e) = task.await {
            tracing::error!(error = %e, "key refresh task ended abnormally");
        }
    }
    if let Some(task) = retention
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "retention task ended abnormally");
    }
    if let Some(task) = checkpointing
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "checkpoint task ended abnormally");
    }
    tracing::info!("kahn-http stopped");
    Ok(())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Completes on ctrl-c or, on Unix, SIGTERM: pass it to [`serve`] in a binary.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
