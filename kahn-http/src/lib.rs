//! # kahn-http
//!
//! KAHN over HTTP, both ways:
//!
//! * a thin [axum] server exposing any [`StorageBackend`](kahn_core::StorageBackend):
//!   [`router`] builds an embeddable [`axum::Router`] from an [`AppState`] (a backend plus a
//!   [`ServerConfig`]); [`serve`] runs it with graceful shutdown and the retention task;
//! * [`HttpBackend`], a client (reqwest, rustls) that is itself a `StorageBackend`, so the
//!   same code — and the same conformance suite — works against a remote server.
//!
//! The routes, headers and status codes are the contract's "HTTP API" section; `GET
//! /openapi.json` serves the OpenAPI 3 document generated from this crate's handlers. `GET /`
//! serves a read-only history viewer (HTML, CSS and ES modules embedded in the binary) that
//! talks only to that public API.
//!
//! ```no_run
//! use std::sync::Arc;
//! use kahn_core::MemoryBackend;
//! use kahn_http::{AppState, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let state = AppState::new(Arc::new(MemoryBackend::new()), ServerConfig::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! kahn_http::serve(listener, state, kahn_http::shutdown_signal()).await?;
//! # Ok(()) }
//! ```

mod auth;
mod auth_limit;
mod checkpoints;
mod client;
mod config;
mod cors;
mod error;
mod ingest;
mod jwks;
mod metrics;
mod oidc;
mod openapi;
mod otlp;
mod queue;
mod ratelimit;
mod reads;
mod server;
mod session;
mod state;
mod viewer;
pub mod wire;

pub use auth::{Claims, JwtVerifier};
pub use client::{HttpBackend, install_crypto_provider};
pub use config::{
    ClaimNames, ConfigError, DEFAULT_AUTH_FAILURES_PER_MINUTE, DEFAULT_BODY_LIMIT,
    DEFAULT_BODY_TIMEOUT, DEFAULT_CHECKPOINT_INTERVAL, DEFAULT_HEADER_TIMEOUT, DEFAULT_INGEST_RATE,
    DEFAULT_INGEST_SLOTS, DEFAULT_JWT_LEEWAY_SECS, DEFAULT_MAX_INGESTS_IN_FLIGHT_PER_TENANT,
    DEFAULT_MAX_REQUESTS_IN_FLIGHT, DEFAULT_MAX_RUNS_PER_REQUEST, DEFAULT_RETENTION_INTERVAL,
    DEFAULT_SESSION_TTL, JwtConfig, JwtKeySource, KeyRefresh, OidcConfig, Secret, ServerConfig,
};
pub use error::ApiError;
pub use openapi::openapi_document;
pub use server::{router, serve, shutdown_signal, spawn_retention};
pub use state::AppState;
pub use viewer::{VIEWER_CSP, viewer_asset_names};

/// The `tracing` target of audit events (admin overrides honoured, refused or ignored; admin
/// routes used or refused). A subscriber should keep it on whatever its filter says; `kahn
/// serve` does.
pub const AUDIT_TARGET: &str = "kahn::audit";
/// Request header an administrator sets to read another tenant's data.
pub const HEADER_TENANT: &str = "x-kahn-tenant";
/// Response header naming the tenant whose data a response shows (`none` when none).
pub const HEADER_EFFECTIVE_TENANT: &str = "x-kahn-effective-tenant";
/// Response header saying how the tenant was resolved: `api_key`, `org`, `sub`,
/// `admin_override`, or `none`.
pub const HEADER_TENANT_SOURCE: &str = "x-kahn-tenant-source";
/// The NDJSON media type of ingest bodies and of NDJSON transition reads.
pub const NDJSON: &str = "application/x-ndjson";
