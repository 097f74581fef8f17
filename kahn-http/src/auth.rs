//! Authentication and tenant resolution: API keys, EdDSA JWTs, and the extractors that turn
//! a request into a scope.
//!
//! * [`IngestScope`] yields a [`WriteScope`] and reads nothing but `Authorization`: it takes
//!   only an API key and cannot see `X-KAHN-Tenant` at all.
//! * [`ReadAccess`] yields at most a [`ReadScope`] — the admin override included, so an
//!   override can never write, by type.
//! * [`AdminAccess`] yields the claims of a JWT whose role is exactly `admin`.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use jsonwebtoken::{Algorithm, Validation};
use kahn_core::{
    API_KEY_PREFIX, ApiKey, OrgId, ReadScope, StorageBackend, StorageBackendExt, TenantId,
    WriteScope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{ClaimNames, ConfigError, JwtConfig, JwtKeySource};
use crate::error::ApiError;
use crate::jwks::{ALLOWED_ALGORITHMS, ALLOWED_TEXT, KeySet, RemoteKeys, alg_name, fetch_url};
use crate::state::AppState;
use crate::wire::PrincipalView;
use crate::{AUDIT_TARGET, HEADER_EFFECTIVE_TENANT, HEADER_TENANT, HEADER_TENANT_SOURCE};

/// The claims KAHN reads from a verified JWT. `exp` (required), `nbf` and `aud` are checked
/// by the verifier and not kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The subject: a human's stable id; their personal tenant's `owner_sub`.
    pub sub: String,
    /// The issuer (checked against the configured one; kept for the audit trail). Always a
    /// string: a token whose `iss` is a list or a number is refused, even when the list holds
    /// the configured issuer.
    #[serde(default)]
    pub iss: Option<String>,
    /// Email.
    #[serde(default)]
    pub email: Option<String>,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Role; exactly `admin` may use the `X-KAHN-Tenant` override and admin routes.
    #[serde(default)]
    pub role: Option<String>,
    /// Nonce (kept for the audit trail).
    #[serde(default)]
    pub nonce: Option<String>,
    /// The organisation; when linked to a tenant, that tenant is the caller's.
    #[serde(default)]
    pub org_id: Option<String>,
}

impl Claims {
    /// Whether the role is exactly `admin`.
    pub fn is_admin(&self) -> bool {
        self.role.as_deref() == Some("admin")
    }
}

/// Where a verifier's keys are.
pub(crate) enum Keys {
    /// Read once from a file or text.
    Static(KeySet),
    /// Fetched by URL and kept fresh.
    Remote(Arc<RemoteKeys>),
}

impl Keys {
    /// Verifies `token`'s signature and `validation`'s claims; answers the claims as JSON.
    /// Refused: an algorithm outside the allow-list (before any key is used), a `crit`
    /// header, no key of the token's algorithm (and `kid`) — after one refresh of a remote
    /// set, rate limited — or a failed check.
    pub(crate) async fn verify(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<Map<String, Value>, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        if !ALLOWED_ALGORITHMS.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted; only {ALLOWED_TEXT}", header.alg));
        }
        // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names an extension it
        // does not understand; jsonwebtoken ignores `crit`, and this server understands none.
        if header.crit.is_some() {
            return Err("the token's header has \"crit\": no JWS extension is accepted".into());
        }
        let kid = header.kid.as_deref();
        // jsonwebtoken wants every listed algorithm in the key's family: list the token's own
        // (allowed above), and only keys of that algorithm are tried.
        let mut validation = validation.clone();
        validation.algorithms = vec![header.alg];
        let validation = &validation;
        let attempt = |keys: &KeySet| -> Option<Result<Map<String, Value>, String>> {
            let mut last = None;
            for k in keys.candidates(kid, header.alg) {
                match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, validation) {
                    Ok(data) => return Some(Ok(data.claims)),
                    Err(e) => last = Some(Err(format!("invalid token: {e}"))),
                }
            }
            last
        };
        let no_key = || {
            format!(
                "no verification key matches the token ({} key{})",
                alg_name(header.alg),
                kid.map_or_else(String::new, |k| format!(" with kid {k:?}"))
            )
        };
        match self {
            Self::Static(keys) => attempt(keys).unwrap_or_else(|| Err(no_key())),
            Self::Remote(remote) => {
                if let Some(verdict) = attempt(&remote.current()) {
                    return verdict;
                }
                // A key the set does not hold: perhaps rotated in at the provider since.
                let (keys, fetched) = remote.refresh(remote.min_refresh).await;
                match attempt(&keys) {
                    Some(verdict) => verdict,
                    None if fetched => Err(no_key()),
                    None => Err(format!(
                        "{} (the key set was fetched less than {} s ago)",
                        no_key(),
                        remote.min_refresh.as_secs()
                    )),
                }
            }
        }
    }

    /// The remote set, if any, for the refresh task and `/readyz`.
    pub(crate) fn remote(&self) -> Option<&Arc<RemoteKeys>> {
        match self {
            Self::Remote(r) => Some(r),
            Self::Static(_) => None,
        }
    }
}

/// The [`Claims`] of a verified token's claims, read through `names`: `sub` must be a string,
/// and `iss` and each mapped claim, when present, a string too (a token whose `iss` is a list
/// or a number is refused, even when the list holds the configured issuer).
pub(crate) fn map_claims(
    claims: &Map<String, Value>,
    names: &ClaimNames,
) -> Result<Claims, String> {
    let text = |claim: &str| -> Result<Option<String>, String> {
        match claims.get(claim) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("the token's {claim:?} claim is not a string")),
        }
    };
    Ok(Claims {
        sub: text("sub")?.ok_or("the token has no \"sub\" claim")?,
        iss: text("iss")?,
        email: text(&names.email)?,
        name: text(&names.name)?,
        role: text(&names.role)?,
        nonce: text("nonce")?,
        org_id: text(&names.org_id)?,
    })
}

/// Verifies bearer JWTs: EdDSA, ES256 or RS256 only (a token saying `none`, `HS*` or
/// anything else is refused before any key is used), each by a key of its own algorithm; a
/// `crit` header is refused (no JWS extension is understood here), `exp` is required, `nbf`
/// is checked when present, `iss` (a string) and `aud` are required.
pub struct JwtVerifier {
    keys: Keys,
    validation: Validation,
    claims: ClaimNames,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("remote", &self.keys.remote().is_some())
            .field("issuer", &self.validation.iss)
            .field("audience", &self.validation.aud)
            .finish()
    }
}

impl JwtVerifier {
    /// Loads the key(s) `config` names from a file or text.
    ///
    /// # Errors
    /// [`ConfigError::Missing`] when the issuer or the audience is not set (and
    /// [`JwtConfig::insecure_no_issuer_audience_check`] does not allow it);
    /// [`ConfigError::ReadKey`] when a file cannot be read; [`ConfigError::InvalidKey`] when
    /// the PEM is not an Ed25519 public key or the JWKS holds no usable key;
    /// [`ConfigError::Invalid`] for keys by URL, which only
    /// [`AppState::connect`](crate::AppState::connect) fetches.
    pub fn from_config(config: &JwtConfig) -> Result<Self, ConfigError> {
        let read = |path: &std::path::Path| {
            fs::read_to_string(path)
                .map_err(|source| ConfigError::ReadKey { path: path.to_owned(), source })
        };
        let keys = match &config.key {
            JwtKeySource::PemFile(path) => KeySet::from_ed_pem(&read(path)?),
            JwtKeySource::Pem(pem) => KeySet::from_ed_pem(pem),
            JwtKeySource::JwksFile(path) => KeySet::from_jwks(&read(path)?),
            JwtKeySource::Jwks(jwks) => KeySet::from_jwks(jwks),
            JwtKeySource::JwksUrl(_) => {
                return Err(ConfigError::Invalid {
                    setting: "jwt.key",
                    message: "keys by URL are fetched when the server starts: build its state \
                              with AppState::connect"
                        .into(),
                });
            }
        }
        .map_err(ConfigError::InvalidKey)?;
        Self::with_keys(config, Keys::Static(keys))
    }

    /// As [`from_config`](Self::from_config), fetching keys by URL.
    pub(crate) async fn connect(
        config: &JwtConfig,
        client: &reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let JwtKeySource::JwksUrl(url) = &config.key else { return Self::from_config(config) };
        let provider = |message| ConfigError::Provider { setting: "jwt.jwks_url", message };
        let url = fetch_url(url).map_err(provider)?;
        let remote = RemoteKeys::fetch_first(
            url,
            client.clone(),
            config.refresh.max_age,
            config.refresh.min_refresh,
        )
        .await
        .map_err(provider)?;
        Self::with_keys(config, Keys::Remote(Arc::new(remote)))
    }

    fn with_keys(config: &JwtConfig, keys: Keys) -> Result<Self, ConfigError> {
        let unchecked: Vec<&'static str> =
            [("jwt.issuer", config.issuer.is_none()), ("jwt.audience", config.audience.is_none())]
                .into_iter()
                .filter_map(|(setting, missing)| missing.then_some(setting))
                .collect();
        if let Some(&setting) = unchecked.first() {
            if !config.insecure_no_issuer_audience_check {
                let claim = if setting == "jwt.issuer" { "iss" } else { "aud" };
                return Err(ConfigError::Missing {
                    setting,
                    message: format!(
                        "JWT verification is on but no {claim} is required: any token the key \
                         ever signed for another service would be accepted. Set both the \
                         issuer and the audience, or opt out knowingly (tests only) with \
                         insecure_no_issuer_audience_check"
                    ),
                });
            }
            tracing::warn!(
                unchecked = %unchecked.join(" and "),
                "INSECURE: JWTs are accepted without an issuer and/or audience check \
                 (insecure_no_issuer_audience_check): any token the key ever signed for another \
                 service is accepted; for tests only"
            );
        }
        let validation = token_validation(
            config.leeway_secs,
            config.issuer.as_deref(),
            config.audience.as_deref(),
        );
        Ok(Self { keys, validation, claims: config.claims.clone() })
    }

    /// Verifies `token` and returns its claims.
    ///
    /// # Errors
    /// A message saying why the token is refused (never echoing it).
    pub async fn verify(&self, token: &str) -> Result<Claims, String> {
        let claims = self.keys.verify(token, &self.validation).await?;
        map_claims(&claims, &self.claims)
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }
}

/// The checks of a token: the allowed algorithms, `exp` required, `nbf` when present, and
/// `iss` / `aud` when given (then required).
pub(crate) fn token_validation(
    leeway: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Validation {
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.algorithms = ALLOWED_ALGORITHMS.to_vec();
    validation.leeway = leeway;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match issuer {
        Some(iss) => {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            validation.validate_aud = true;
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A verified credential.
pub(crate) enum Credential {
    /// An active API key, resolved to its tenant.
    ApiKey(WriteScope),
    /// A verified JWT.
    Jwt(Claims),
    /// A sign-in session (cookie), opened from a verified ID token.
    Session(Claims),
}

impl Credential {
    /// The claims of a person (JWT or session); `None` for an API key.
    fn claims(&self) -> Option<&Claims> {
        match self {
            Self::Jwt(c) | Self::Session(c) => Some(c),
            Self::ApiKey(_) => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::ApiKey(_) => "api_key",
            Self::Jwt(_) => "jwt",
            Self::Session(_) => "session",
        }
    }
}

/// The TCP peer of a request, when the server knows it ([`serve`](crate::serve) always
/// does).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(Option<SocketAddr>);

impl Peer {
    pub(crate) fn of(parts: &Parts) -> Self {
        Self(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0))
    }

    fn ip(self) -> Option<IpAddr> {
        self.0.map(|a| a.ip())
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

/// Refuses a header sent more than once: which copy wins would otherwise depend on who reads
/// it (the first here, maybe the last in a proxy in front).
fn single_header(parts: &Parts, name: &str) -> Result<(), ApiError> {
    if parts.headers.get_all(name).iter().nth(1).is_some() {
        return Err(ApiError::bad_request(
            header_label(name),
            format!("{} is sent more than once; send it exactly once", header_label(name)),
        ));
    }
    Ok(())
}

fn header_label(name: &str) -> &'static str {
    if name == HEADER_TENANT { "X-KAHN-Tenant" } else { "Authorization" }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    single_header(parts, header::AUTHORIZATION.as_str())?;
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <API key or JWT>"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("Authorization must be \"Bearer <token>\""))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized("Authorization must be \"Bearer <token>\""));
    }
    Ok(token.trim())
}

/// The failed-authentication gate, before any key is looked up or token verified: a peer
/// over its allowance is answered 429.
fn admit(state: &AppState, peer: Peer) -> Result<(), ApiError> {
    let Some(ip) = peer.ip() else { return Ok(()) };
    state.inner.auth_failures.admit(ip).map_err(|wait| {
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        tracing::debug!(%peer, secs, "too many failed authentications: refused");
        ApiError::auth_rate_limited(secs)
    })
}

/// Counts a refused credential (401) against `peer`'s allowance.
fn count_failure<T>(state: &AppState, peer: Peer, result: &Result<T, ApiError>) {
    if let (Err(e), Some(ip)) = (result, peer.ip())
        && e.status() == StatusCode::UNAUTHORIZED
    {
        state.inner.auth_failures.failed(ip);
    }
}

async fn resolve_key(state: &AppState, token: &str) -> Result<WriteScope, ApiError> {
    let key = ApiKey::parse(token).map_err(|_| ApiError::unauthorized("malformed API key"))?;
    match state.inner.backend.resolve_api_key(&key).await? {
        Some(scope) => Ok(scope),
        None => Err(ApiError::unauthorized("unknown or revoked API key")),
    }
}

async fn verify_jwt(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let Some(verifier) = &state.inner.jwt else {
        return Err(ApiError::unauthorized("this server is configured to accept no JWTs"));
    };
    verifier.verify(token).await.map_err(|why| {
        tracing::debug!(reason = %why, "JWT refused");
        ApiError::unauthorized(why)
    })
}

/// The session a `kahn_session` cookie names, for a request with no `Authorization`: reads
/// only (`GET`, `HEAD`), so a page on another site can never make a signed-in browser change
/// anything.
fn session_of(state: &AppState, parts: &Parts) -> Option<Result<Claims, ApiError>> {
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let provider = state.inner.oidc.as_deref()?;
    let cookie = crate::session::cookie(parts, crate::session::SESSION_COOKIE)?;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        return Some(Err(ApiError::unauthorized(
            "a sign-in session authenticates reads only; send Authorization: Bearer <token>",
        )));
    }
    Some(provider.sessions.claims(cookie).map_err(|why| ApiError::unauthorized(why.message())))
}

pub(crate) async fn authenticate(state: &AppState, parts: &Parts) -> Result<Credential, ApiError> {
    let peer = Peer::of(parts);
    if let Some(session) = session_of(state, parts) {
        admit(state, peer)?;
        let result = session.map(Credential::Session);
        count_failure(state, peer, &result);
        return result;
    }
    let token = bearer(parts)?;
    admit(state, peer)?;
    let result = if token.starts_with(API_KEY_PREFIX) {
        resolve_key(state, token).await.map(Credential::ApiKey)
    } else {
        verify_jwt(state, token).await.map(Credential::Jwt)
    };
    count_failure(state, peer, &result);
    result
}

/// The write scope of the API key presenting the request: the only way to ingest.
#[derive(Debug)]
pub(crate) struct IngestScope(pub(crate) WriteScope);

impl FromRequestParts<AppState> for IngestScope {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if !token.starts_with(API_KEY_PREFIX) {
            return Err(ApiError::unauthorized(format!(
                "ingest takes an API key ({API_KEY_PREFIX}…), not a JWT"
            )));
        }
        let peer = Peer::of(parts);
        admit(state, peer)?;
        let result = resolve_key(state, token).await;
        count_failure(state, peer, &result);
        Ok(Self(result?))
    }
}

/// Who is calling and which tenant's data they see.
#[derive(Clone, Debug)]
pub(crate) struct TenantView {
    pub(crate) principal: PrincipalView,
    /// `None`: the caller resolves to no tenant and sees nothing.
    pub(crate) scope: Option<ReadScope>,
}

impl TenantView {
    /// The view of an API key's own tenant.
    pub(crate) fn of_key(scope: &WriteScope) -> Self {
        Self { principal: key_principal(), scope: Some(scope.read()) }
    }

    pub(crate) fn source(&self) -> &'static str {
        self.scope.as_ref().map_or("none", |s| s.source().as_str())
    }

    /// Adds `X-KAHN-Effective-Tenant` and `X-KAHN-Tenant-Source` to `response`.
    pub(crate) fn stamp(&self, response: &mut Response) {
        let tenant =
            self.scope.as_ref().map_or_else(|| "none".to_owned(), |s| s.tenant().to_string());
        let headers = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&tenant) {
            headers.insert(HEADER_EFFECTIVE_TENANT, v);
        }
        headers.insert(HEADER_TENANT_SOURCE, HeaderValue::from_static(self.source()));
    }
}

fn person_principal(kind: &str, c: &Claims) -> PrincipalView {
    PrincipalView {
        kind: kind.into(),
        sub: Some(c.sub.clone()),
        email: c.email.clone(),
        name: c.name.clone(),
        role: c.role.clone(),
        org_id: c.org_id.clone(),
    }
}

fn key_principal() -> PrincipalView {
    PrincipalView {
        kind: "api_key".into(),
        sub: None,
        email: None,
        name: None,
        role: None,
        org_id: None,
    }
}

/// The tenant an `X-KAHN-Tenant` value names, in the canonical hyphenated spelling only
/// (8-4-4-4-12 hex digits, either case): braces, `urn:uuid:`, the 32-digit simple form and
/// surrounding spaces are refused, so every component reading the header reads the same
/// tenant.
fn canonical_tenant(raw: &HeaderValue) -> Option<TenantId> {
    let bytes = raw.as_bytes();
    let canonical = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if !canonical {
        return None;
    }
    raw.to_str().ok()?.parse().ok()
}

/// An attempt to use `X-KAHN-Tenant`, for the audit trail.
struct OverrideAttempt<'a> {
    parts: &'a Parts,
    claims: Option<&'a Claims>,
    /// `api_key`, `jwt` or `session`.
    credential: &'static str,
    requested: &'a HeaderValue,
}

impl OverrideAttempt<'_> {
    /// Logs the attempt and its outcome (`honoured`, `refused_*`, `ignored_*`, `failed`) as an
    /// audit event.
    fn audit(&self, outcome: &str, message: &str) {
        let route = self
            .parts
            .extensions
            .get::<MatchedPath>()
            .map_or_else(|| self.parts.uri.path().to_owned(), |p| p.as_str().to_owned());
        let claim = |f: fn(&Claims) -> Option<&str>| self.claims.and_then(f).unwrap_or("");
        // The value as sent, escaped if it is not text.
        let requested = String::from_utf8_lossy(self.requested.as_bytes());
        tracing::info!(
            target: AUDIT_TARGET,
            event = "admin_override",
            outcome,
            credential = self.credential,
            sub = claim(|c| Some(c.sub.as_str())),
            iss = claim(|c| c.iss.as_deref()),
            role = claim(|c| c.role.as_deref()),
            email = claim(|c| c.email.as_deref()),
            nonce = claim(|c| c.nonce.as_deref()),
            tenant = &*requested,
            method = %self.parts.method,
            route = %route,
            path = %self.parts.uri.path(),
            peer = %Peer::of(self.parts),
            "{message}"
        );
    }
}

/// The read access of a request: an API key's tenant, a JWT's org or personal tenant, or —
/// for a JWT whose role is exactly `admin` — the tenant named by `X-KAHN-Tenant`.
///
/// `X-KAHN-Tenant` sent twice is refused (400) whoever calls; every use of it is audited with
/// its outcome: honoured, refused (400 malformed, 404 unknown tenant) or ignored (not an
/// admin: the caller's own tenant is read).
#[derive(Debug)]
pub(crate) struct ReadAccess(pub(crate) TenantView);

impl FromRequestParts<AppState> for ReadAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let backend = &state.inner.backend;
        let credential = authenticate(state, parts).await?;
        let requested = parts.headers.get(HEADER_TENANT);
        let claims = credential.claims();
        let kind = credential.kind();
        if let Some(requested) = requested {
            let attempt = OverrideAttempt { parts, claims, credential: kind, requested };
            if let Err(e) = single_header(parts, HEADER_TENANT) {
                attempt.audit("refused_duplicate_header", "X-KAHN-Tenant sent twice: refused");
                return Err(e);
            }
            if !claims.is_some_and(Claims::is_admin) {
                attempt.audit(
                    "ignored_not_admin",
                    "X-KAHN-Tenant from a caller who is not an admin: ignored",
                );
            }
        }
        let claims = match credential {
            Credential::ApiKey(write) => {
                return Ok(Self(TenantView {
                    principal: key_principal(),
                    scope: Some(write.read()),
                }));
            }
            Credential::Jwt(claims) | Credential::Session(claims) => claims,
        };
        let principal = person_principal(kind, &claims);
        if claims.is_admin()
            && let Some(requested) = requested
        {
            let attempt =
                OverrideAttempt { parts, claims: Some(&claims), credential: kind, requested };
            let Some(tenant) = canonical_tenant(requested) else {
                attempt.audit("refused_malformed", "admin override refused: malformed tenant");
                return Err(ApiError::bad_request(
                    "X-KAHN-Tenant",
                    "must be a tenant UUID in the hyphenated form \
                     xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
                ));
            };
            let scope = match backend.resolve_admin_override(tenant).await {
                Ok(scope) => scope,
                Err(e) => {
                    let (outcome, message) = match e {
                        kahn_core::Error::NotFound { .. } => {
                            ("refused_unknown_tenant", "admin override refused: no such tenant")
                        }
                        _ => ("failed", "admin override failed: the tenant could not be resolved"),
                    };
                    attempt.audit(outcome, message);
                    return Err(e.into());
                }
            };
            attempt
                .audit("honoured", "admin override honoured: read-only access to another tenant");
            state.inner.metrics.admin_overrides.inc();
            return Ok(Self(TenantView { principal, scope: Some(scope) }));
        }
        let mut scope = None;
        if let Some(org) = &claims.org_id {
            match OrgId::new(org) {
                Ok(org) => scope = backend.resolve_org(&org).await?,
                Err(e) => tracing::debug!(error = %e, "JWT org_id is not a valid org id"),
            }
        }
        if scope.is_none() {
            scope = backend.resolve_sub(&claims.sub).await?;
        }
        if scope.is_none() && state.inner.config.personal_tenants {
            scope = personal_tenant(backend.as_ref(), &claims, &Peer::of(parts)).await?;
        }
        Ok(Self(TenantView { principal, scope }))
    }
}

/// The personal tenant of a verified subject with no tenant, created on first sign-in (and
/// audited). A subject that cannot have one (malformed for a tenant name, or `user:<sub>`
/// held by another owner) stays without a tenant, as before; the store failing is an error.
async fn personal_tenant(
    backend: &dyn StorageBackend,
    claims: &Claims,
    peer: &Peer,
) -> Result<Option<ReadScope>, ApiError> {
    match backend.resolve_sub_creating(&claims.sub).await {
        Ok(scope) => {
            tracing::info!(
                target: AUDIT_TARGET,
                event = "personal_tenant",
                outcome = "provisioned",
                sub = %claims.sub,
                iss = claims.iss.as_deref().unwrap_or(""),
                tenant = %scope.tenant(),
                peer = %peer,
                "personal tenant provisioned on first sign-in"
            );
            Ok(Some(scope))
        }
        Err(e @ kahn_core::Error::InvalidInput { .. }) => {
            tracing::warn!(
                target: AUDIT_TARGET,
                event = "personal_tenant",
                outcome = "refused",
                sub = %claims.sub,
                iss = claims.iss.as_deref().unwrap_or(""),
                reason = %e,
                peer = %peer,
                "no personal tenant for this subject"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// An administrator: a verified JWT whose role is exactly `admin`, and where the request came
/// from (for the audit trail). Refusals of other credentials are audited too.
#[derive(Debug)]
pub(crate) struct AdminAccess(pub(crate) Claims, pub(crate) Peer);

impl FromRequestParts<AppState> for AdminAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = Peer::of(parts);
        let refused = |credential: &'static str, claims: Option<&Claims>| {
            tracing::info!(
                target: AUDIT_TARGET,
                event = "admin_route",
                outcome = "refused_not_admin",
                credential,
                sub = claims.map_or("", |c| c.sub.as_str()),
                iss = claims.and_then(|c| c.iss.as_deref()).unwrap_or(""),
                role = claims.and_then(|c| c.role.as_deref()).unwrap_or(""),
                method = %parts.method,
                path = %parts.uri.path(),
                peer = %peer,
                "admin route refused: not an admin"
            );
        };
        let credential = authenticate(state, parts).await?;
        let kind = credential.kind();
        match credential {
            Credential::Jwt(claims) | Credential::Session(claims) if claims.is_admin() => {
                Ok(Self(claims, peer))
            }
            Credential::Jwt(claims) | Credential::Session(claims) => {
                refused(kind, Some(&claims));
                Err(ApiError::forbidden("this route is for role admin"))
            }
            Credential::ApiKey(_) => {
                refused(kind, None);
                Err(ApiError::forbidden("this route takes an administrator's JWT, not an API key"))
            }
        }
    }
}
