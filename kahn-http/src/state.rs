//! The server's shared state.

use std::fmt;
use std::sync::Arc;

use kahn_core::StorageBackend;

use crate::auth::JwtVerifier;
use crate::auth_limit::AuthFailures;
use crate::config::{ConfigError, ServerConfig};
use crate::metrics::Metrics;
use crate::oidc::Provider;
use crate::queue::{ChainTips, RunQueue};
use crate::ratelimit::IngestLimits;

/// Everything a request handler needs: the backend, the config, the JWT verifier, rate
/// limiters and metrics. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn StorageBackend>,
    pub(crate) config: ServerConfig,
    pub(crate) jwt: Option<JwtVerifier>,
    /// Sign-in with an identity provider, and its sessions.
    pub(crate) oidc: Option<Box<Provider>>,
    pub(crate) limits: IngestLimits,
    pub(crate) metrics: Metrics,
    /// Permits for the requests served at once (`max_requests_in_flight`).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    pub(crate) auth_failures: AuthFailures,
    /// Permits for the ingests read, parsed or appended at once (`ingest_slots`).
    pub(crate) ingest_slots: Arc<tokio::sync::Semaphore>,
    /// Appends to one run, in arrival order within this server.
    pub(crate) run_queue: RunQueue,
    /// Where each run's chain was last computed to, for the next chunk's links.
    pub(crate) chain_tips: ChainTips,
    /// Spans to an OpenTelemetry collector, when `otlp_endpoint` is set.
    pub(crate) otlp: Option<Arc<crate::otlp::Exporter>>,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.inner.backend)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State serving `backend` under `config`; loads the JWT key(s) the config names from
    /// files or text. A config that fetches anything over the network (keys by URL, an
    /// identity provider) needs [`connect`](Self::connect).
    ///
    /// # Errors
    /// [`ConfigError`] when a key file cannot be read or holds no usable key, a JWT key
    /// comes without an issuer or an audience, a setting is out of range (a zero body
    /// limit), or the config needs [`connect`](Self::connect).
    pub fn new(
        backend: Arc<dyn StorageBackend>,
        config: ServerConfig,
    ) -> Result<Self, ConfigError> {
        if config.oidc.is_some() {
            return Err(ConfigError::Invalid {
                setting: "oidc",
                message: "sign-in with an identity provider reads the provider when the server \
                          starts: build its state with AppState::connect"
                    .into(),
            });
        }
        Self::check(&config)?;
        let jwt = config.jwt.as_ref().map(JwtVerifier::from_config).transpose()?;
        Self::assemble(backend, config, jwt, None)
    }

    /// State serving `backend` under `config`, reading what it names over the network first:
    /// JWT keys by URL, and the identity provider's discovery document and keys. Whatever
    /// cannot be read stops the start here, with a message naming the setting and why.
    ///
    /// # Errors
    /// As [`new`](Self::new), and [`ConfigError::Provider`] when the provider or a key URL is
    /// unreachable, answers other than 200, or serves a malformed document.
    pub async fn connect(
        backend: Arc<dyn StorageBackend>,
        config: ServerConfig,
    ) -> Result<Self, ConfigError> {
        Self::check(&config)?;
        let http = crate::jwks::http_client()
            .map_err(|message| ConfigError::Invalid { setting: "http_client", message })?;
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::connect(jwt, &http).await?),
            None => None,
        };
        let oidc = match &config.oidc {
            Some(oidc) => {
                Some(Box::new(Provider::discover(oidc, config.oidc_refresh, &http).await?))
            }
            None => None,
        };
        Self::assemble(backend, config, jwt, oidc)
    }

    fn check(config: &ServerConfig) -> Result<(), ConfigError> {
        if config.body_limit == 0 {
            return Err(ConfigError::Invalid {
                setting: "body_limit",
                message: "must be at least 1 byte".into(),
            });
        }
        for (setting, interval) in [
            ("retention_interval", config.retention_interval),
            ("checkpoint_interval", config.checkpoint_interval),
        ] {
            if interval.is_some_and(|i| i.is_zero()) {
                return Err(ConfigError::Invalid {
                    setting,
                    message: "must be longer than zero".into(),
                });
            }
        }
        for (setting, value) in [
            ("max_runs_per_request", config.max_runs_per_request),
            ("max_ingests_in_flight_per_tenant", config.max_ingests_in_flight_per_tenant),
            ("max_requests_in_flight", config.max_requests_in_flight),
            ("ingest_slots", config.ingest_slots),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid { setting, message: "must be at least 1".into() });
            }
        }
        for (setting, value) in
            [("header_timeout", config.header_timeout), ("body_timeout", config.body_timeout)]
        {
            if value.is_zero() {
                return Err(ConfigError::Invalid {
                    setting,
                    message: "must be longer than zero".into(),
                });
            }
        }
        crate::cors::layer(&config.cors_origins)?;
        if let Some(endpoint) = &config.otlp_endpoint {
            crate::otlp::Exporter::new(endpoint)
                .map_err(|message| ConfigError::Invalid { setting: "otlp_endpoint", message })?;
        }
        Ok(())
    }

    fn assemble(
        backend: Arc<dyn StorageBackend>,
        config: ServerConfig,
        jwt: Option<JwtVerifier>,
        oidc: Option<Box<Provider>>,
    ) -> Result<Self, ConfigError> {
        let otlp = match &config.otlp_endpoint {
            Some(endpoint) => {
                Some(Arc::new(crate::otlp::Exporter::new(endpoint).map_err(|message| {
                    ConfigError::Invalid { setting: "otlp_endpoint", message }
                })?))
            }
            None => None,
        };
        let limits = IngestLimits::new(
            config.ingest_rate,
            &config.tenant_ingest_rates,
            config.max_ingests_in_flight_per_tenant,
        );
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_requests_in_flight));
        let ingest_slots = Arc::new(tokio::sync::Semaphore::new(config.ingest_slots));
        let metrics = Metrics::new()
            .map_err(|e| ConfigError::Invalid { setting: "metrics", message: e.to_string() })?;
        let auth_failures = AuthFailures::new(config.auth_failures_per_minute);
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                config,
                jwt,
                oidc,
                limits,
                metrics,
                in_flight,
                auth_failures,
                ingest_slots,
                run_queue: RunQueue::default(),
                chain_tips: ChainTips::default(),
                otlp,
            }),
        })
    }

    /// The backend served.
    pub fn backend(&self) -> &Arc<dyn StorageBackend> {
        &self.inner.backend
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The name of the identity provider people sign in with, when one is configured.
    pub fn oidc_provider_name(&self) -> Option<&str> {
        self.inner.oidc.as_deref().map(Provider::name)
    }

    /// Every key set fetched by URL (bearer JWTs', the identity provider's).
    pub(crate) fn remote_keys(&self) -> Vec<Arc<crate::jwks::RemoteKeys>> {
        let jwt = self.inner.jwt.as_ref().and_then(|j| j.keys().remote());
        let oidc = self.inner.oidc.as_deref().and_then(|p| p.keys().remote());
        jwt.into_iter().chain(oidc).cloned().collect()
    }
}
