//! `kahn serve`: the HTTP server over a database, configured from flags, the environment and
//! an optional TOML file, in that order of precedence.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use kahn_core::{Error, StorageBackend, TenantId};
use kahn_http::{AppState, ConfigError, JwtConfig, JwtKeySource, OidcConfig, Secret, ServerConfig};
use serde::Deserialize;

use crate::failure::{CliResult, Failure};

/// How the server logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per event (audit events included), for log shippers.
    Json,
}

#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// The database: sqlite://PATH (created and migrated when missing), or postgres://… as the
    /// app role kahn_app [default: sqlite://kahn.db]
    #[arg(long, env = "KAHN_DATABASE_URL", hide_env_values = true)]
    db: Option<String>,
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "KAHN_LISTEN")]
    listen: Option<String>,
    /// Log format [default: pretty]
    #[arg(long, env = "KAHN_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// PEM file with the Ed25519 public key verifying JWTs (no JWTs accepted without one).
    #[arg(long, env = "KAHN_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// JWKS file with the keys verifying JWTs (EdDSA, ES256 or RS256; instead of
    /// --jwt-public-key).
    #[arg(long, env = "KAHN_JWT_JWKS", conflicts_with = "jwt_public_key")]
    jwt_jwks: Option<PathBuf>,
    /// URL of a JWKS verifying JWTs (https; http on loopback only), fetched at start, every 10
    /// minutes and when a token names an unknown key id (a key rotated at the provider works
    /// without a restart). Instead of --jwt-public-key / --jwt-jwks.
    #[arg(long, env = "KAHN_JWT_JWKS_URL", conflicts_with_all = ["jwt_public_key", "jwt_jwks"])]
    jwt_jwks_url: Option<String>,
    /// Sign-in for people: the OpenID Connect provider's issuer URL (discovered at start from
    /// ISSUER/.well-known/openid-configuration). Needs --oidc-client-id.
    #[arg(long, env = "KAHN_OIDC_ISSUER", value_name = "URL", requires = "oidc_client_id")]
    oidc_issuer: Option<String>,
    /// This server's client id at the provider (the ID tokens' audience).
    #[arg(long, env = "KAHN_OIDC_CLIENT_ID", value_name = "ID", requires = "oidc_issuer")]
    oidc_client_id: Option<String>,
    /// A file holding the client secret (client_secret_basic); without it, a public client
    /// (PKCE only).
    #[arg(long, env = "KAHN_OIDC_CLIENT_SECRET_FILE", value_name = "FILE")]
    oidc_client_secret_file: Option<PathBuf>,
    /// The name on the viewer's "Sign in with NAME" button [default: the issuer's host]
    #[arg(long, env = "KAHN_OIDC_PROVIDER_NAME", value_name = "NAME")]
    oidc_provider_name: Option<String>,
    /// Which ID-token claim fills a field, as FIELD=CLAIM (FIELD: org_id, role, email or
    /// name); repeat for several [default: each field's own name]
    #[arg(long = "oidc-claim", value_name = "FIELD=CLAIM")]
    oidc_claims: Vec<String>,
    /// The URL people reach this server at (scheme://host or scheme://host:PORT); the provider redirects to
    /// PUBLIC_URL/auth/callback. https, or http on loopback [default: http://LISTEN]
    #[arg(long, env = "KAHN_PUBLIC_URL", value_name = "URL")]
    public_url: Option<String>,
    /// How long a sign-in session lasts: seconds, or 30m, 8h, ... [default: 8h]
    #[arg(long, env = "KAHN_SESSION_TTL", value_name = "DURATION", value_parser = parse_duration)]
    session_ttl: Option<Duration>,
    /// An OpenTelemetry collector's OTLP/HTTP endpoint (e.g. http://127.0.0.1:4318): one span
    /// per request is exported to ENDPOINT/v1/traces. None by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// A file holding the Ed25519 private key (PKCS#8 PEM, from `kahn keygen`) that signs
    /// append receipts: every ingest that stores something answers with a signed receipt per
    /// run, and GET /v1/receipts/key serves the public half. None by default: no receipts.
    #[arg(long, env = "KAHN_RECEIPT_KEY", value_name = "FILE")]
    receipt_key: Option<PathBuf>,
    /// An origin (scheme://host or scheme://host:PORT) whose pages may call this API from a browser,
    /// credentials included; repeat for several. None by default: no cross-origin access.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// The JWT issuer (`iss`) every token must name; required with a JWT key.
    #[arg(long, env = "KAHN_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// The JWT audience (`aud`) every token must include; required with a JWT key.
    #[arg(long, env = "KAHN_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// INSECURE, for tests only: accept JWTs without an issuer and/or audience check (when
    /// --jwt-issuer / --jwt-audience are not given): any token the key ever signed for another
    /// service is then accepted. Logs a warning at startup.
    #[arg(long, env = "KAHN_JWT_INSECURE_NO_ISSUER_AUDIENCE_CHECK")]
    jwt_insecure_no_issuer_audience_check: bool,
    /// Ingest allowance per second per tenant, in cost units: a request costs one unit per
    /// started 100 runs or 10,000 transitions, whichever is more (an ordinary push chunk: one)
    /// [default: 100]
    #[arg(long, env = "KAHN_INGEST_RATE")]
    ingest_rate: Option<NonZeroU32>,
    /// One tenant's ingest allowance instead of --ingest-rate, as TENANT_ID=UNITS_PER_SECOND;
    /// repeat for several tenants. Give every server on one database the same rates: the
    /// allowance itself is shared through the database
    #[arg(long = "tenant-ingest-rate", value_name = "TENANT_ID=RATE", value_parser = parse_tenant_rate)]
    tenant_ingest_rates: Vec<(TenantId, NonZeroU32)>,
    /// Most distinct runs one ingest request may name (413 beyond) [default: 10000]
    #[arg(long, env = "KAHN_MAX_RUNS_PER_REQUEST")]
    max_runs_per_request: Option<NonZeroUsize>,
    /// Most ingest requests one tenant may have in flight (429 beyond) [default: 4]
    #[arg(long, env = "KAHN_MAX_INGESTS_IN_FLIGHT")]
    max_ingests_in_flight: Option<NonZeroUsize>,
    /// Most API requests served at once (503 with Retry-After beyond) [default: 512]
    #[arg(long, env = "KAHN_MAX_REQUESTS_IN_FLIGHT")]
    max_requests_in_flight: Option<NonZeroUsize>,
    /// Ingests read, parsed or appended at once, all tenants together; later ones wait their
    /// turn. Bounds the server's memory (a few MiB each) [default: 16]
    #[arg(long, env = "KAHN_INGEST_SLOTS")]
    ingest_slots: Option<NonZeroUsize>,
    /// Seconds between retention purges; 0 disables them [default: 3600]
    #[arg(long, env = "KAHN_RETENTION_INTERVAL_SECS")]
    retention_interval_secs: Option<u64>,
    /// Seconds between tenant checkpoints (signed with --receipt-key; every tenant whose runs
    /// changed gets one); 0 disables them [default: 3600]
    #[arg(long, env = "KAHN_CHECKPOINT_INTERVAL_SECS")]
    checkpoint_interval_secs: Option<u64>,
    /// Failed authentications (bad, unknown or revoked key; refused JWT) one client address
    /// may make per minute; past it, its requests get 429 + Retry-After until it refills.
    /// Behind a reverse proxy all clients share one address [default: 20]
    #[arg(long, env = "KAHN_AUTH_FAILURES_PER_MINUTE")]
    auth_failures_per_minute: Option<NonZeroU32>,
    /// Create no personal tenant (`user:<sub>`) when someone signs in with a JWT whose sub
    /// and org match no tenant; they then see nothing until an operator provisions one.
    #[arg(long, env = "KAHN_NO_PERSONAL_TENANTS")]
    no_personal_tenants: bool,
    /// A TOML file with any of the settings above (snake_case keys); flags and environment win.
    #[arg(long, env = "KAHN_CONFIG")]
    config: Option<PathBuf>,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    db: Option<String>,
    listen: Option<String>,
    log_format: Option<LogFormat>,
    jwt_public_key: Option<PathBuf>,
    jwt_jwks: Option<PathBuf>,
    jwt_jwks_url: Option<String>,
    oidc_issuer: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret_file: Option<PathBuf>,
    oidc_provider_name: Option<String>,
    /// Field → claim.
    #[serde(default)]
    oidc_claims: std::collections::BTreeMap<String, String>,
    public_url: Option<String>,
    otlp_endpoint: Option<String>,
    receipt_key: Option<PathBuf>,
    /// Seconds, or a duration with units ("8h").
    session_ttl: Option<TtlSetting>,
    #[serde(default)]
    cors_origins: Vec<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    #[serde(default)]
    jwt_insecure_no_issuer_audience_check: bool,
    ingest_rate: Option<NonZeroU32>,
    /// Tenant id → units per second.
    #[serde(default)]
    tenant_ingest_rates: std::collections::BTreeMap<String, NonZeroU32>,
    max_runs_per_request: Option<NonZeroUsize>,
    max_ingests_in_flight: Option<NonZeroUsize>,
    max_requests_in_flight: Option<NonZeroUsize>,
    ingest_slots: Option<NonZeroUsize>,
    retention_interval_secs: Option<u64>,
    checkpoint_interval_secs: Option<u64>,
    auth_failures_per_minute: Option<NonZeroU32>,
    #[serde(default)]
    no_personal_tenants: bool,
}

/// `session_ttl` in the config file: whole seconds or text such as `"8h"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TtlSetting {
    Secs(u64),
    Text(String),
}

/// `TENANT_ID=RATE`, for `--tenant-ingest-rate`.
fn parse_tenant_rate(text: &str) -> Result<(TenantId, NonZeroU32), String> {
    let (tenant, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not TENANT_ID=RATE (e.g. 0c8f…=10)"))?;
    let tenant: TenantId =
        tenant.trim().parse().map_err(|e| format!("tenant id {tenant:?}: {e}"))?;
    let rate: NonZeroU32 = rate.trim().parse().map_err(|e| {
        format!("rate {rate:?}: {e} (a whole number of units a second, at least 1)")
    })?;
    Ok((tenant, rate))
}

/// Whole seconds (`30`) or a duration with units (`30m`, `8h`), for `--session-ttl`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration ({e}); e.g. 3600, 30m or 8h"))?,
    };
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

impl ServeArgs {
    /// Fills every setting not given by a flag or the environment from the config file.
    fn resolve(mut self) -> CliResult<Self> {
        let Some(path) = &self.config else { return Ok(self) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| usage(format!("cannot read config {}: {e}", path.display())))?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| {
            usage(format!(
                "config {} is not valid: {e}\nhint: keys are the flag names in snake_case",
                path.display()
            ))
        })?;
        self.db = self.db.or(file.db);
        self.listen = self.listen.or(file.listen);
        self.log_format = self.log_format.or(file.log_format);
        if self.jwt_public_key.is_none() && self.jwt_jwks.is_none() && self.jwt_jwks_url.is_none() {
            self.jwt_public_key = file.jwt_public_key;
            self.jwt_jwks = file.jwt_jwks;
            self.jwt_jwks_url = file.jwt_jwks_url;
        }
        if self.oidc_issuer.is_none() {
            self.oidc_issuer = file.oidc_issuer;
            self.oidc_client_id = self.oidc_client_id.or(file.oidc_client_id);
        }
        self.oidc_client_secret_file =
            self.oidc_client_secret_file.or(file.oidc_client_secret_file);
        self.oidc_provider_name = self.oidc_provider_name.or(file.oidc_provider_name);
        for (field, claim) in file.oidc_claims {
            if !self.oidc_claims.iter().any(|c| c.split_once('=').is_some_and(|(f, _)| f == field))
            {
                self.oidc_claims.push(format!("{field}={claim}"));
            }
        }
        self.public_url = self.public_url.or(file.public_url);
        self.otlp_endpoint = self.otlp_endpoint.or(file.otlp_endpoint);
        self.receipt_key = self.receipt_key.or(file.receipt_key);
        if self.session_ttl.is_none()
            && let Some(ttl) = file.session_ttl
        {
            let text = match ttl {
                TtlSetting::Secs(secs) => secs.to_string(),
                TtlSetting::Text(text) => text,
            };
            self.session_ttl = Some(
                parse_duration(&text)
                    .map_err(|e| usage(format!("config {}: session_ttl: {e}", path.display())))?,
            );
        }
        if self.cors_origins.is_empty() {
            self.cors_origins = file.cors_origins;
        }
        self.jwt_issuer = self.jwt_issuer.or(file.jwt_issuer);
        self.jwt_audience = self.jwt_audience.or(file.jwt_audience);
        self.jwt_insecure_no_issuer_audience_check |= file.jwt_insecure_no_issuer_audience_check;
        self.no_personal_tenants |= file.no_personal_tenants;
        self.auth_failures_per_minute =
            self.auth_failures_per_minute.or(file.auth_failures_per_minute);
        self.ingest_rate = self.ingest_rate.or(file.ingest_rate);
        for (tenant, rate) in &file.tenant_ingest_rates {
            let tenant: TenantId = tenant.parse().map_err(|e| {
                usage(format!("config {}: tenant_ingest_rates: {e}", path.display()))
            })?;
            // A flag for the same tenant wins.
            if !self.tenant_ingest_rates.iter().any(|(t, _)| *t == tenant) {
                self.tenant_ingest_rates.push((tenant, *rate));
            }
        }
        self.max_runs_per_request = self.max_runs_per_request.or(file.max_runs_per_request);
        self.max_ingests_in_flight = self.max_ingests_in_flight.or(file.max_ingests_in_flight);
        self.max_requests_in_flight = self.max_requests_in_flight.or(file.max_requests_in_flight);
        self.ingest_slots = self.ingest_slots.or(file.ingest_slots);
        self.retention_interval_secs =
            self.retention_interval_secs.or(file.retention_interval_secs);
        self.checkpoint_interval_secs =
            self.checkpoint_interval_secs.or(file.checkpoint_interval_secs);
        Ok(self)
    }

    /// Sign-in with an identity provider, when `--oidc-issuer` is given; `listen` is the
    /// default public URL's host.
    fn oidc_config(&self, listen: &str) -> CliResult<Option<OidcConfig>> {
        let (Some(issuer), Some(client_id)) = (&self.oidc_issuer, &self.oidc_client_id) else {
            if self.oidc_issuer.is_some() || self.oidc_client_id.is_some() {
                return Err(usage(
                    "sign-in needs both --oidc-issuer and --oidc-client-id".to_owned(),
                ));
            }
            return Ok(None);
        };
        let public_url = self.public_url.clone().unwrap_or_else(|| format!("http://{listen}"));
        let mut oidc = OidcConfig::new(issuer.clone(), client_id.clone(), public_url);
        if let Some(path) = &self.oidc_client_secret_file {
            let secret = std::fs::read_to_string(path).map_err(|e| {
                usage(format!("cannot read --oidc-client-secret-file {}: {e}", path.display()))
            })?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(usage(format!(
                    "--oidc-client-secret-file {} is empty",
                    path.display()
                )));
            }
            oidc = oidc.with_client_secret(Secret::new(secret));
        }
        oidc.provider_name.clone_from(&self.oidc_provider_name);
        if let Some(ttl) = self.session_ttl {
            oidc = oidc.with_session_ttl(ttl);
        }
        for mapping in &self.oidc_claims {
            let (field, claim) = mapping.split_once('=').ok_or_else(|| {
                usage(format!("--oidc-claim {mapping:?} is not FIELD=CLAIM (e.g. org_id=tenant)"))
            })?;
            oidc.claims
                .set(field, claim)
                .map_err(|e| usage(format!("--oidc-claim {mapping:?}: {e}")))?;
        }
        Ok(Some(oidc))
    }

    fn server_config(&self) -> CliResult<ServerConfig> {
        let mut config = ServerConfig::default();
        let key = match (&self.jwt_public_key, &self.jwt_jwks, &self.jwt_jwks_url) {
            (Some(pem), _, _) => Some(JwtKeySource::PemFile(pem.clone())),
            (None, Some(jwks), _) => Some(JwtKeySource::JwksFile(jwks.clone())),
            (None, None, Some(url)) => Some(JwtKeySource::JwksUrl(url.clone())),
            (None, None, None) => None,
        };
        if let Some(key) = key {
            if !self.jwt_insecure_no_issuer_audience_check {
                let missing: Vec<&str> = [
                    ("--jwt-issuer", self.jwt_issuer.is_none()),
                    ("--jwt-audience", self.jwt_audience.is_none()),
                ]
                .into_iter()
                .filter_map(|(flag, missing)| missing.then_some(flag))
                .collect();
                if !missing.is_empty() {
                    return Err(usage(format!(
                        "JWT verification is on (--jwt-public-key / --jwt-jwks / --jwt-jwks-url) but {} {} not \
                         set: without them any token the key ever signed for another service \
                         would be accepted\nhint: pass --jwt-issuer ISS --jwt-audience AUD (the \
                         iss and aud your identity provider puts in KAHN's tokens); for tests \
                         only, --jwt-insecure-no-issuer-audience-check",
                        missing.join(" and "),
                        if missing.len() == 1 { "is" } else { "are" },
                    )));
                }
            }
            let mut jwt = JwtConfig::new(key);
            if self.jwt_insecure_no_issuer_audience_check {
                jwt = jwt.with_insecure_no_issuer_audience_check();
            }
            if let Some(iss) = &self.jwt_issuer {
                jwt = jwt.with_issuer(iss.clone());
            }
            if let Some(aud) = &self.jwt_audience {
                jwt = jwt.with_audience(aud.clone());
            }
            config = config.with_jwt(jwt);
        }
        if let Some(rate) = self.ingest_rate {
            config = config.with_ingest_rate(rate);
        }
        for (tenant, rate) in &self.tenant_ingest_rates {
            config = config.with_tenant_ingest_rate(*tenant, *rate);
        }
        if let Some(runs) = self.max_runs_per_request {
            config = config.with_max_runs_per_request(runs.get());
        }
        if let Some(n) = self.max_ingests_in_flight {
            config = config.with_max_ingests_in_flight_per_tenant(n.get());
        }
        if let Some(n) = self.ingest_slots {
            config = config.with_ingest_slots(n.get());
        }
        if let Some(n) = self.max_requests_in_flight {
            config = config.with_max_requests_in_flight(n.get());
        }
        if let Some(secs) = self.retention_interval_secs {
            config = config.with_retention_interval((secs > 0).then(|| Duration::from_secs(secs)));
        }
        if let Some(secs) = self.checkpoint_interval_secs {
            config = config.with_checkpoint_interval((secs > 0).then(|| Duration::from_secs(secs)));
        }
        if let Some(n) = self.auth_failures_per_minute {
            config = config.with_auth_failures_per_minute(n);
        }
        for origin in &self.cors_origins {
            config = config.with_cors_origin(origin.clone());
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            config = config.with_otlp_endpoint(endpoint.clone());
        }
        if let Some(path) = &self.receipt_key {
            config = config.with_receipt_key(read_receipt_key(path)?);
        }
        Ok(config.with_personal_tenants(!self.no_personal_tenants))
    }
}

/// The receipt signing key in `path`, refused when it is the public half, not a key at all, or
/// readable by other users: a key anyone on the machine can copy proves nothing.
pub(crate) fn read_receipt_key(
    path: &std::path::Path,
) -> CliResult<kahn_core::receipt::ReceiptSigner> {
    let shown = path.display();
    let pem = std::fs::read_to_string(path).map_err(|e| {
        usage(format!("--receipt-key {shown}: {e}\nhint: create one with `kahn keygen {shown}`"))
    })?;
    let signer = kahn_core::receipt::ReceiptSigner::from_pem(&pem).map_err(|e| {
        usage(format!(
            "--receipt-key {shown}: {e}\nhint: --receipt-key takes the private key `kahn keygen \
             FILE` wrote (FILE, not FILE.pub); make one with `kahn keygen`"
        ))
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            return Err(usage(format!(
                "--receipt-key {shown} can be read by other users (mode {:o})\nhint: chmod 600 \
                 {shown}",
                meta.permissions().mode() & 0o777
            )));
        }
    }
    Ok(signer)
}

/// Runs the server until ctrl-c or SIGTERM; in-flight requests finish first.
pub(crate) async fn run(
    args: ServeArgs,
    open: impl AsyncFnOnce(&str) -> CliResult<Arc<dyn StorageBackend>>,
) -> CliResult {
    let args = args.resolve()?;
    crate::logging::init(args.log_format.unwrap_or(LogFormat::Pretty));
    let db = args.db.clone().unwrap_or_else(|| "sqlite://kahn.db".to_owned());
    let listen = args.listen.clone().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let addr: SocketAddr = listen.parse().map_err(|e| {
        usage(format!("--listen {listen:?} is not an address: {e}\nhint: e.g. 127.0.0.1:8080"))
    })?;
    let mut config = args.server_config()?;
    config.oidc = args.oidc_config(&listen)?;
    let store = open(&db).await?;
    let state = AppState::connect(store, config).await.map_err(|e| {
        let hint = match &e {
            ConfigError::Provider { setting: "oidc.issuer", .. } => {
                "is the identity provider up, and --oidc-issuer exactly its issuer?"
            }
            ConfigError::Provider { .. } => "is the key URL reachable, and does it serve a JWKS?",
            ConfigError::Invalid { setting, .. } if setting.starts_with("oidc") => {
                "check --oidc-issuer, --public-url and --session-ttl"
            }
            ConfigError::Invalid { setting: "cors_origins", .. } => {
                "check --cors-origin: an origin is scheme://host[:port]"
            }
            ConfigError::Invalid { setting: "otlp_endpoint", .. } => {
                "check --otlp-endpoint: an OTLP/HTTP collector, e.g. http://127.0.0.1:4318"
            }
            _ => "check --jwt-public-key / --jwt-jwks / --jwt-jwks-url",
        };
        let code = if matches!(e, ConfigError::Provider { .. }) { 5 } else { 2 };
        Failure { code, message: format!("{}\nhint: {hint}", crate::failure::explained(&e)) }
    })?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| Failure {
        code: 5,
        message: format!("cannot listen on {addr}: {e}\nhint: is another server using it? pass --listen 127.0.0.1:PORT"),
    })?;
    let bound = listener.local_addr().map_err(|e| Error::backend("listen", e))?;
    // The first screen. A closed stdout must not stop a server: write errors are ignored.
    // It never shows a password; on Postgres, provisioning needs the admin DSN, not this one.
    let shown = kahn_cli::redact_dsn(&db);
    let (provision_db, provision_note) = if db.starts_with("postgres://")
        || db.starts_with("postgresql://")
    {
        ("<admin DSN>".to_owned(), "# the schema owner's DSN, not kahn_app's; prints a key once")
    } else {
        (shown.clone(), "# prints an API key, once")
    };
    let sign_in = match state.oidc_provider_name() {
        Some(name) => format!("sign in with {name}, or with the key"),
        None => "sign in with the key".to_owned(),
    };
    let receipts = match &state.config().receipt_key {
        Some(signer) => format!(
            "receipts: signed with key {} (public key: http://{bound}/v1/receipts/key)\n{}",
            signer.public_key().id(),
            match state.config().checkpoint_interval {
                Some(every) => format!(
                    "checkpoints: every tenant that changed, every {} s (kahn audit checks them)\n",
                    every.as_secs()
                ),
                None => "checkpoints: on demand only (kahn checkpoint)\n".to_owned(),
            }
        ),
        None => String::new(),
    };
    let banner = format!(
        "KAHN is serving http://{bound} over {shown}\n{receipts}\
         next:  kahn tenant provision my-team --db {provision_db}      {provision_note}\n\
        \x20      export KAHN_API_KEY=<that key>\n\
        \x20      kahn push ./runs/my-run --url http://{bound}   # a dir with transitions.ndjson\n\
        \x20      curl -H \"Authorization: Bearer $KAHN_API_KEY\" http://{bound}/v1/runs\n\
         browse: http://{bound}/ (the history viewer; {sign_in})\n\
         stop with ctrl-c; API: http://{bound}/openapi.json\n"
    );
    let mut stdout = std::io::stdout().lock();
    let _ = std::io::Write::write_all(&mut stdout, banner.as_bytes());
    let _ = std::io::Write::flush(&mut stdout);
    drop(stdout);
    kahn_http::serve(listener, state, kahn_http::shutdown_signal()).await.map_err(|e| Failure {
        code: 5,
        message: format!("server stopped: {}", crate::failure::explained(&e)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/kahn.toml, the commented sample, is a config `kahn serve --config` accepts, and
    /// what it sets is the defaults it says it sets.
    #[test]
    fn the_sample_config_is_accepted_and_sets_the_defaults() {
        let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/kahn.toml");
        let args = ServeArgs { config: Some(sample.into()), ..ServeArgs::default() };
        let resolved = args.resolve().map_err(|f| f.message).unwrap();
        assert_eq!(resolved.db.as_deref(), Some("sqlite://kahn.db"));
        assert_eq!(resolved.listen.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(resolved.session_ttl, Some(kahn_http::DEFAULT_SESSION_TTL));
        let config = resolved.server_config().map_err(|f| f.message).unwrap();
        assert_eq!(
            config,
            ServerConfig::default()
                .with_retention_interval(Some(kahn_http::DEFAULT_RETENTION_INTERVAL))
        );
        assert!(resolved.oidc_config("127.0.0.1:8080").map_err(|f| f.message).unwrap().is_none());

        // Its sample tables, uncommented, are read as what they say (they sit after every
        // plain key, so no later key falls into them).
        let text = std::fs::read_to_string(sample).unwrap();
        let (head, tables) = text.split_once("# --- Tables").unwrap();
        let uncommented: String = tables
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(t)
                    if t.starts_with('[')
                        || t.starts_with('"')
                        || t.starts_with("org_id")
                        || t.starts_with("role") =>
                {
                    format!("{t}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let file = std::env::temp_dir().join(format!("kahn-sample-{}.toml", std::process::id()));
        std::fs::write(&file, format!("{head}# --- Tables{uncommented}")).unwrap();
        let resolved = ServeArgs { config: Some(file.clone()), ..ServeArgs::default() }
            .resolve()
            .map_err(|f| f.message)
            .unwrap();
        assert_eq!(resolved.tenant_ingest_rates.len(), 1);
        assert!(
            resolved.oidc_claims.iter().any(|c| c == "org_id=tenant"),
            "{:?}",
            resolved.oidc_claims
        );
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn flags_and_env_win_over_the_config_file() {
        let dir = std::env::temp_dir().join(format!("kahn-serve-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kahn.toml");
        std::fs::write(
            &file,
            "db = \"sqlite://from-file.db\"\nlisten = \"127.0.0.1:9999\"\ningest_rate = 7\n",
        )
        .unwrap();
        // `db` came from a flag (or the environment: clap merges both before this step).
        let args = ServeArgs {
            db: Some("sqlite://from-flag.db".into()),
            config: Some(file.clone()),
            ..ServeArgs::default()
        };
        let resolved = args.resolve().ok().unwrap();
        assert_eq!(resolved.db.as_deref(), Some("sqlite://from-flag.db"));
        assert_eq!(resolved.listen.as_deref(), Some("127.0.0.1:9999"));
        assert_eq!(resolved.server_config().map(|c| c.ingest_rate.get()).ok(), Some(7));
        let (t, u) = (TenantId::new_random(), TenantId::new_random());
        std::fs::write(&file, format!("[tenant_ingest_rates]\n\"{t}\" = 3\n\"{u}\" = 4\n"))
            .unwrap();
        let args = ServeArgs {
            config: Some(file.clone()),
            tenant_ingest_rates: vec![(u, NonZeroU32::new(9).unwrap())],
            ..ServeArgs::default()
        };
        let rates = args.resolve().ok().unwrap().server_config().ok().unwrap().tenant_ingest_rates;
        assert_eq!(rates.get(&t).map(|r| r.get()), Some(3), "from the file");
        assert_eq!(rates.get(&u).map(|r| r.get()), Some(9), "the flag wins");
        std::fs::write(
            &file,
            "oidc_issuer = \"https://idp.example\"\noidc_client_id = \"kahn\"\n\
             session_ttl = \"30m\"\ncors_origins = [\"https://kahn.host\"]\n\
             [oidc_claims]\norg_id = \"tenant\"\n",
        )
        .unwrap();
        let args = ServeArgs { config: Some(file.clone()), ..ServeArgs::default() };
        let resolved = args.resolve().ok().unwrap();
        let oidc = resolved.oidc_config("127.0.0.1:8080").ok().flatten().unwrap();
        assert_eq!(oidc.session_ttl, Duration::from_secs(1800));
        assert_eq!(oidc.claims.org_id, "tenant");
        assert_eq!(oidc.public_url, "http://127.0.0.1:8080");
        assert_eq!(resolved.server_config().ok().unwrap().cors_origins, ["https://kahn.host"]);
        std::fs::write(&file, "session_ttl = 3600\n").unwrap();
        let resolved = ServeArgs { config: Some(file.clone()), ..ServeArgs::default() }.resolve();
        assert_eq!(resolved.ok().unwrap().session_ttl, Some(Duration::from_secs(3600)));
        std::fs::write(&file, "colour = \"red\"\n").unwrap();
        let bad = ServeArgs { config: Some(file), ..ServeArgs::default() }.resolve();
        assert!(bad.is_err_and(|f| f.code == 2 && f.message.contains("colour")));
        let _ = std::fs::remove_dir_all(dir);
    }
}
