//! Server configuration.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use kahn_core::TenantId;
use kahn_core::receipt::ReceiptSigner;

/// Default ingest requests per second per tenant.
pub const DEFAULT_INGEST_RATE: NonZeroU32 = NonZeroU32::new(100).expect("100 is not zero");
/// Default largest ingest body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// Default cap on distinct runs per ingest request: 10,000 (a 1 MiB body holds up to ~14,000
/// one-line runs).
pub const DEFAULT_MAX_RUNS_PER_REQUEST: usize = 10_000;
/// Default cap on one tenant's ingest requests in flight: 4.
pub const DEFAULT_MAX_INGESTS_IN_FLIGHT_PER_TENANT: usize = 4;
/// Default cap on requests served at once: 512.
pub const DEFAULT_MAX_REQUESTS_IN_FLIGHT: usize = 512;
/// Default number of ingests read, parsed or appended at once, server-wide: 16 (each holds a
/// body, its parsed batch and the store's encoding of it, 2.5-4.5 MiB measured: the server
/// stays near 100 MiB however many pushers wait their turn).
pub const DEFAULT_INGEST_SLOTS: usize = 16;
/// Default interval between retention purges: one hour.
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Default interval between tenant checkpoints (with a receipt key): one hour.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3600);
/// Default time for a request's head (request line and headers) to arrive; a keep-alive
/// connection idle this long is closed too.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time for a whole ingest body to arrive, counted from when its head was read.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Default clock-skew leeway for `exp` and `nbf`, in seconds.
pub const DEFAULT_JWT_LEEWAY_SECS: u64 = 30;
/// Default failed authentications allowed per peer address per minute (also the burst).
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: NonZeroU32 =
    NonZeroU32::new(20).expect("20 is not zero");

/// Where the key(s) verifying JWTs come from.
///
/// A JWKS may hold EdDSA (`OKP`/`Ed25519`), ES256 (`EC`/`P-256`) and RS256 (`RSA`, at least
/// 2048 bits) signing keys; each verifies only tokens of its own algorithm, chosen by `kid`.
/// Other keys (HMAC secrets, other curves and algorithms, encryption keys) are passed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwtKeySource {
    /// A PEM file holding one Ed25519 public key (`-----BEGIN PUBLIC KEY-----`).
    PemFile(PathBuf),
    /// A JWKS file (`{"keys": [...]}`).
    JwksFile(PathBuf),
    /// PEM text, as [`PemFile`](Self::PemFile) holds.
    Pem(String),
    /// JWKS text, as [`JwksFile`](Self::JwksFile) holds.
    Jwks(String),
    /// A JWKS fetched from this URL (`https`, or `http` on loopback only): at start (a
    /// failure stops the start, see [`AppState::connect`](crate::AppState::connect)), every
    /// [`KeyRefresh::max_age`], and when a token names a `kid` the set does not hold (at most
    /// once per [`KeyRefresh::min_refresh`]). A failed refresh keeps the last good keys and
    /// says so in `/readyz`.
    JwksUrl(String),
}

/// When keys fetched by URL are fetched again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRefresh {
    /// Scheduled refresh interval (default 10 minutes).
    pub max_age: Duration,
    /// Shortest interval between two fetches caused by tokens naming an unknown `kid`
    /// (default 5 seconds).
    pub min_refresh: Duration,
}

impl Default for KeyRefresh {
    fn default() -> Self {
        Self {
            max_age: crate::jwks::DEFAULT_KEYS_MAX_AGE,
            min_refresh: crate::jwks::DEFAULT_KEYS_MIN_REFRESH,
        }
    }
}

/// Which claim of a verified token fills each field of [`Claims`](crate::Claims) besides
/// `sub` and `iss`: by default each field's own name (`org_id`, `role`, `email`, `name`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimNames {
    /// The organisation claim (default `org_id`).
    pub org_id: String,
    /// The role claim (default `role`); its value `admin` makes an administrator.
    pub role: String,
    /// The email claim (default `email`).
    pub email: String,
    /// The display-name claim (default `name`).
    pub name: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        Self {
            org_id: "org_id".into(),
            role: "role".into(),
            email: "email".into(),
            name: "name".into(),
        }
    }
}

impl ClaimNames {
    /// Sets the claim read for `field` (`org_id`, `role`, `email` or `name`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for another field or an empty claim name.
    pub fn set(&mut self, field: &str, claim: &str) -> Result<(), ConfigError> {
        if claim.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "oidc.claims",
                message: format!("the claim for {field} is empty"),
            });
        }
        let slot = match field {
            "org_id" => &mut self.org_id,
            "role" => &mut self.role,
            "email" => &mut self.email,
            "name" => &mut self.name,
            other => {
                return Err(ConfigError::Invalid {
                    setting: "oidc.claims",
                    message: format!(
                        "{other:?} is not a mapped field (org_id, role, email or name; sub is \
                         always sub)"
                    ),
                });
            }
        };
        claim.clone_into(slot);
        Ok(())
    }
}

/// A secret that never prints (its `Debug` is `"***"`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Default lifetime of a sign-in session: 8 hours.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// Sign-in for people with an OpenID Connect provider (authorization code flow with PKCE).
///
/// At start the provider's `/.well-known/openid-configuration` is read (its `issuer` must be
/// exactly [`issuer`](Self::issuer)) and its `jwks_uri` fetched; either failing stops the
/// start. `GET /auth/login` sends the browser to the provider; `/auth/callback` exchanges the
/// code, verifies the ID token (signature by the provider's keys, `iss`, `aud` = the client
/// id, `exp`, and the `nonce` this server issued, once) and opens a session: an `HttpOnly`,
/// `SameSite=Lax` cookie (`Secure` unless the public URL is loopback `http`) naming a session
/// this server holds, signed, expiring after [`session_ttl`](Self::session_ttl) and ended by
/// `POST /auth/logout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcConfig {
    /// The provider's issuer URL (`https`, or `http` on loopback).
    pub issuer: String,
    /// This server's client id at the provider (the ID token's audience).
    pub client_id: String,
    /// The client secret (`client_secret_basic`); `None`: a public client (PKCE only).
    pub client_secret: Option<Secret>,
    /// Shown as "Sign in with NAME"; `None`: the issuer's host.
    pub provider_name: Option<String>,
    /// The URL people reach this server at (scheme, host, port; no path): the redirect URI
    /// is `<public_url>/auth/callback`. `https`, or `http` on loopback.
    pub public_url: String,
    /// How long a session lasts from sign-in.
    pub session_ttl: Duration,
    /// Which ID-token claims fill the caller's org, role, email and name.
    pub claims: ClaimNames,
}

impl OidcConfig {
    /// Sign-in with the provider at `issuer` as client `client_id`, for a server reached at
    /// `public_url`; a public client with the default session lifetime and claim names.
    pub fn new(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        public_url: impl Into<String>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            provider_name: None,
            public_url: public_url.into(),
            session_ttl: DEFAULT_SESSION_TTL,
            claims: ClaimNames::default(),
        }
    }

    /// Sets the client secret.
    #[must_use]
    pub fn with_client_secret(mut self, secret: Secret) -> Self {
        self.client_secret = Some(secret);
        self
    }

    /// Sets the session lifetime.
    #[must_use]
    pub fn with_session_ttl(mut self, ttl: Duration) -> Self {
        self.session_ttl = ttl;
        self
    }
}

/// How JWTs are verified: EdDSA, ES256 or RS256 signatures only (never `none` or HMAC), each
/// by a key of its own algorithm; `exp` is required.
///
/// An issuer and an audience are required: without them, any token the key ever signed for
/// another service would be accepted here. [`AppState::new`](crate::AppState::new) refuses a
/// config lacking either unless
/// [`insecure_no_issuer_audience_check`](Self::insecure_no_issuer_audience_check) says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtConfig {
    /// The verification key(s).
    pub key: JwtKeySource,
    /// The `iss` claim must be present, a string, and equal it. Required unless
    /// [`insecure_no_issuer_audience_check`](Self::insecure_no_issuer_audience_check).
    pub issuer: Option<String>,
    /// The `aud` claim must be present and contain it. Required unless
    /// [`insecure_no_issuer_audience_check`](Self::insecure_no_issuer_audience_check).
    pub audience: Option<String>,
    /// Clock-skew leeway for `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// When keys fetched by URL ([`JwtKeySource::JwksUrl`]) are fetched again.
    pub refresh: KeyRefresh,
    /// Which claims fill the caller's org, role, email and name.
    pub claims: ClaimNames,
    /// Accept a missing [`issuer`](Self::issuer) or [`audience`](Self::audience): the
    /// unchecked one is then not verified at all, and a warning is logged at startup. For
    /// tests and local experiments only.
    pub insecure_no_issuer_audience_check: bool,
}

impl JwtConfig {
    /// A config verifying with `key` and the default leeway; set
    /// [`with_issuer`](Self::with_issuer) and [`with_audience`](Self::with_audience) before
    /// use.
    pub fn new(key: JwtKeySource) -> Self {
        Self {
            key,
            issuer: None,
            audience: None,
            leeway_secs: DEFAULT_JWT_LEEWAY_SECS,
            refresh: KeyRefresh::default(),
            claims: ClaimNames::default(),
            insecure_no_issuer_audience_check: false,
        }
    }

    /// Knowingly accepts a missing issuer or audience (tests, local experiments): see
    /// [`insecure_no_issuer_audience_check`](Self::insecure_no_issuer_audience_check).
    #[must_use]
    pub fn with_insecure_no_issuer_audience_check(mut self) -> Self {
        self.insecure_no_issuer_audience_check = true;
        self
    }

    /// Requires `iss` to equal `issuer`.
    #[must_use]
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Requires `aud` to contain `audience`.
    #[must_use]
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }
}

/// Everything the server needs besides its backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// JWT verification; `None` refuses every JWT (API keys still work).
    pub jwt: Option<JwtConfig>,
    /// Sign-in for people with an OpenID Connect provider; `None`: no `/auth/login`.
    pub oidc: Option<OidcConfig>,
    /// When the provider's keys are fetched again.
    pub oidc_refresh: KeyRefresh,
    /// An OpenTelemetry collector's OTLP/HTTP endpoint (`http://host:4318`): one server span
    /// per request is exported to `{endpoint}/v1/traces` (JSON encoding). `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// Origins (`scheme://host[:port]`) whose pages may call this API from a browser (CORS),
    /// credentials included. Empty (the default): no cross-origin access at all.
    pub cors_origins: Vec<String>,
    /// Ingest allowance per second per tenant, in cost units (also the burst size). A request
    /// costs one unit per started 100 runs or 10,000 transitions, whichever is more, and at
    /// least one: an ordinary push chunk is one unit.
    pub ingest_rate: NonZeroU32,
    /// Per-tenant ingest rates overriding [`ingest_rate`](Self::ingest_rate).
    pub tenant_ingest_rates: HashMap<TenantId, NonZeroU32>,
    /// Largest ingest body, in bytes.
    pub body_limit: usize,
    /// Most distinct runs one ingest request may name (413 `too_many_runs` beyond).
    pub max_runs_per_request: usize,
    /// Most ingest requests one tenant may have in flight at once (429 `too_many_in_flight`
    /// with `Retry-After` beyond), so one tenant cannot hold every database connection.
    pub max_ingests_in_flight_per_tenant: usize,
    /// Most requests to `/v1` and `/api` the server serves at once; beyond, 503 with
    /// `Retry-After` at once instead of an unbounded queue.
    pub max_requests_in_flight: usize,
    /// Ingests read, parsed or appended at once, all tenants together: what bounds the
    /// server's memory (a body and its parsed batch each). Later ones wait their turn, in
    /// arrival order, for at most the body timeout (then 503 with `Retry-After`).
    pub ingest_slots: usize,
    /// Interval between retention purges; `None` runs none.
    pub retention_interval: Option<Duration>,
    /// Interval between tenant checkpoints: every tenant whose runs changed gets a signed
    /// checkpoint ([`kahn_core::checkpoint`]). Only with a [`receipt_key`](Self::receipt_key)
    /// (they are signed with it); `None` makes none (they are still made on demand).
    pub checkpoint_interval: Option<Duration>,
    /// Time for a request's head to arrive (and the longest a keep-alive connection may sit
    /// idle): a client that opens connections and sends nothing, or trickles its headers,
    /// holds no connection longer than this. Applies to [`serve`](crate::serve).
    pub header_timeout: Duration,
    /// Time for a whole ingest body to arrive once its head is read: a body trickling in
    /// (one byte a second, say) is answered 408 when it expires, and nothing is written.
    pub body_timeout: Duration,
    /// Failed authentications (a malformed, unknown or revoked API key; a refused JWT) one
    /// peer address (an IPv6 /64) may make per minute, all at once or spread out. Past it,
    /// every request from that address that presents a credential is answered 429 with
    /// `Retry-After` — before any key is looked up, its valid keys included — until the
    /// allowance refills (one failure per `60 s / n`). The peer address is the TCP peer's, as
    /// [`serve`](crate::serve) provides it (a router served otherwise needs
    /// `into_make_service_with_connect_info::<SocketAddr>()`, or the limit does not apply);
    /// behind a reverse proxy every client shares the proxy's address, so size it for that.
    pub auth_failures_per_minute: NonZeroU32,
    /// Whether a verified JWT whose `sub` has no tenant, and whose `org_id` (if any) is linked
    /// to none, gets a personal tenant (`user:<sub>`) created on first sign-in — the last rung
    /// of the tenancy ladder org → sub → personal tenant. When off, such a person has no
    /// tenant until an operator provisions one.
    pub personal_tenants: bool,
    /// The key receipts are signed with: each ingest that stores something in a run answers
    /// with a signed receipt for the run's new head, and `GET /v1/receipts/key` serves the
    /// public half. `None` (the default): no receipts, and that route answers 404.
    pub receipt_key: Option<ReceiptSigner>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            jwt: None,
            oidc: None,
            oidc_refresh: KeyRefresh::default(),
            otlp_endpoint: None,
            cors_origins: Vec::new(),
            ingest_rate: DEFAULT_INGEST_RATE,
            tenant_ingest_rates: HashMap::new(),
            body_limit: DEFAULT_BODY_LIMIT,
            max_runs_per_request: DEFAULT_MAX_RUNS_PER_REQUEST,
            max_ingests_in_flight_per_tenant: DEFAULT_MAX_INGESTS_IN_FLIGHT_PER_TENANT,
            max_requests_in_flight: DEFAULT_MAX_REQUESTS_IN_FLIGHT,
            ingest_slots: DEFAULT_INGEST_SLOTS,
            retention_interval: Some(DEFAULT_RETENTION_INTERVAL),
            checkpoint_interval: Some(DEFAULT_CHECKPOINT_INTERVAL),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            auth_failures_per_minute: DEFAULT_AUTH_FAILURES_PER_MINUTE,
            personal_tenants: true,
            receipt_key: None,
        }
    }
}

impl ServerConfig {
    /// Sets the JWT verification.
    #[must_use]
    pub fn with_jwt(mut self, jwt: JwtConfig) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Sets sign-in with an OpenID Connect provider.
    #[must_use]
    pub fn with_oidc(mut self, oidc: OidcConfig) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// Exports one span per request to the OTLP/HTTP collector at `endpoint`.
    #[must_use]
    pub fn with_otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.otlp_endpoint = Some(endpoint.into());
        self
    }

    /// Allows a browser page from `origin` (`scheme://host[:port]`) to call the API.
    #[must_use]
    pub fn with_cors_origin(mut self, origin: impl Into<String>) -> Self {
        self.cors_origins.push(origin.into());
        self
    }

    /// Signs a receipt for every ingest that stores something, with `key`.
    #[must_use]
    pub fn with_receipt_key(mut self, key: ReceiptSigner) -> Self {
        self.receipt_key = Some(key);
        self
    }

    /// Turns the creation of personal tenants on first sign-in on or off.
    #[must_use]
    pub fn with_personal_tenants(mut self, on: bool) -> Self {
        self.personal_tenants = on;
        self
    }

    /// Sets the default per-tenant ingest rate.
    #[must_use]
    pub fn with_ingest_rate(mut self, per_second: NonZeroU32) -> Self {
        self.ingest_rate = per_second;
        self
    }

    /// Sets one tenant's ingest rate.
    #[must_use]
    pub fn with_tenant_ingest_rate(mut self, tenant: TenantId, per_second: NonZeroU32) -> Self {
        self.tenant_ingest_rates.insert(tenant, per_second);
        self
    }

    /// Sets the largest ingest body.
    #[must_use]
    pub fn with_body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the most distinct runs one ingest request may name.
    #[must_use]
    pub fn with_max_runs_per_request(mut self, runs: usize) -> Self {
        self.max_runs_per_request = runs;
        self
    }

    /// Sets the most ingest requests one tenant may have in flight.
    #[must_use]
    pub fn with_max_ingests_in_flight_per_tenant(mut self, requests: usize) -> Self {
        self.max_ingests_in_flight_per_tenant = requests;
        self
    }

    /// Sets the most `/v1` and `/api` requests served at once.
    #[must_use]
    pub fn with_max_requests_in_flight(mut self, requests: usize) -> Self {
        self.max_requests_in_flight = requests;
        self
    }

    /// Sets the number of ingests read, parsed or appended at once, server-wide.
    #[must_use]
    pub fn with_ingest_slots(mut self, slots: usize) -> Self {
        self.ingest_slots = slots;
        self
    }

    /// Sets the time a request head may take to arrive (and a keep-alive connection may idle).
    #[must_use]
    pub fn with_header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Sets the time a whole ingest body may take to arrive.
    #[must_use]
    pub fn with_body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// Sets the retention interval (`None`: no purge task).
    #[must_use]
    pub fn with_retention_interval(mut self, interval: Option<Duration>) -> Self {
        self.retention_interval = interval;
        self
    }

    /// Sets the checkpoint interval (`None`: no periodic checkpoints).
    #[must_use]
    pub fn with_checkpoint_interval(mut self, interval: Option<Duration>) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// Sets the failed authentications one peer address may make per minute.
    #[must_use]
    pub fn with_auth_failures_per_minute(mut self, per_minute: NonZeroU32) -> Self {
        self.auth_failures_per_minute = per_minute;
        self
    }
}

/// A configuration the server cannot start with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A key file could not be read (why is the `source`).
    #[error("cannot read JWT key file {path}")]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The key material is not an Ed25519 public key (PEM) or holds no usable Ed25519 key
    /// (JWKS).
    #[error("invalid JWT verification key: {0}")]
    InvalidKey(String),
    /// A setting is out of range.
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        /// Which.
        setting: &'static str,
        /// Why.
        message: String,
    },
    /// The identity provider or a key URL could not be used at start: unreachable, not
    /// answering 200, or a malformed discovery document or JWKS.
    #[error("{setting}: {message}")]
    Provider {
        /// Which setting names it (`oidc.issuer`, `jwt.jwks_url`).
        setting: &'static str,
        /// What went wrong.
        message: String,
    },
    /// A setting that must be given is missing (`jwt.issuer`, `jwt.audience`).
    #[error("missing setting {setting}: {message}")]
    Missing {
        /// Which.
        setting: &'static str,
        /// Why it is needed.
        message: String,
    },
}
