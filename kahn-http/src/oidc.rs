//! Sign-in for people: OpenID Connect authorization code flow with PKCE.
//!
//! `GET /auth/login` → the provider's login page (with `state`, `nonce` and an S256 code
//! challenge, each fresh; `state` also in a `kahn_login` cookie) → `GET /auth/callback` →
//! the code exchanged at the token endpoint (with the code verifier and, for a confidential
//! client, `client_secret_basic`) → the ID token verified (signature by the provider's keys,
//! `iss`, `aud`, `azp`, `exp`, and the `nonce` issued for this `state`) → a session
//! ([`crate::session`]). Each `state` is used once: a replayed callback, one with an unknown
//! `state`, or one arriving in another browser than the one that started it, is 400.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Validation;
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::AUDIT_TARGET;
use crate::auth::{Claims, Keys, map_claims, token_validation};
use crate::config::{ConfigError, KeyRefresh, OidcConfig};
use crate::jwks::{RemoteKeys, fetch_url, get_text, is_loopback, reqwest_reason};
use crate::session::{LOGIN_COOKIE, SESSION_COOKIE, Sessions, random_token, set_cookie};
use crate::state::AppState;
use crate::viewer::VIEWER_CSP;

/// How long a sign-in may take between `/auth/login` and the callback.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// The most sign-ins in progress at once (beyond: 503 until some finish or expire).
const MAX_PENDING: usize = 10_000;
/// The largest discovery document or token response read.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The scopes asked for.
const SCOPES: &str = "openid profile email";

struct Pending {
    nonce: String,
    verifier: String,
    return_to: String,
    started: Instant,
}

/// A provider read at start, and the sign-ins and sessions of this server.
pub(crate) struct Provider {
    config: OidcConfig,
    name: String,
    authorization_endpoint: Url,
    token_endpoint: Url,
    keys: Keys,
    validation: Validation,
    redirect_uri: String,
    secure_cookies: bool,
    http: reqwest::Client,
    pending: Mutex<HashMap<String, Pending>>,
    pub(crate) sessions: Sessions,
}

/// The part of a discovery document read here.
#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

impl Provider {
    /// Reads the provider's discovery document and keys.
    ///
    /// # Errors
    /// [`ConfigError::Provider`] when the issuer, public URL or endpoints are not usable
    /// URLs, the document or keys cannot be fetched or are malformed, the document's issuer
    /// differs, or the provider does not do S256 PKCE.
    pub(crate) async fn discover(
        config: &OidcConfig,
        refresh: KeyRefresh,
        http: &reqwest::Client,
    ) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError::Provider { setting: "oidc.issuer", message };
        let issuer = fetch_url(&config.issuer).map_err(&fail)?;
        let public = Url::parse(&config.public_url).map_err(|e| ConfigError::Invalid {
            setting: "oidc.public_url",
            message: format!("{:?} is not a URL: {e}", config.public_url),
        })?;
        let secure_cookies = match public.scheme() {
            "https" => true,
            "http" if is_loopback(&public) => false,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "oidc.public_url",
                    message: format!(
                        "{} must be https (http only on loopback): the session cookie is Secure",
                        config.public_url
                    ),
                });
            }
        };
        if public.path() != "/" || public.query().is_some() {
            return Err(ConfigError::Invalid {
                setting: "oidc.public_url",
                message: format!(
                    "{} must be scheme://host[:port] with no path: sign-in lives at /auth/",
                    config.public_url
                ),
            });
        }
        if config.session_ttl.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "oidc.session_ttl",
                message: "must be longer than zero".into(),
            });
        }
        let well_known = Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        ))
        .map_err(|e| fail(format!("{}: {e}", config.issuer)))?;
        let text = get_text(http, &well_known, MAX_DOCUMENT_BYTES).await.map_err(|why| {
            fail(format!("the provider's discovery document could not be read: {why}"))
        })?;
        let doc: Discovery = serde_json::from_str(&text)
            .map_err(|e| fail(format!("{well_known} is not an OpenID discovery document: {e}")))?;
        if doc.issuer != config.issuer {
            return Err(fail(format!(
                "{well_known} names issuer {:?}, not {:?} (the issuer must match exactly)",
                doc.issuer, config.issuer
            )));
        }
        if doc
            .code_challenge_methods_supported
            .as_ref()
            .is_some_and(|m| !m.iter().any(|m| m == "S256"))
        {
            return Err(fail("the provider does not support PKCE with S256".into()));
        }
        let endpoint = |name: &str, text: &str| {
            fetch_url(text).map_err(|why| fail(format!("the provider's {name}: {why}")))
        };
        let authorization_endpoint =
            endpoint("authorization_endpoint", &doc.authorization_endpoint)?;
        let token_endpoint = endpoint("token_endpoint", &doc.token_endpoint)?;
        let jwks_uri = endpoint("jwks_uri", &doc.jwks_uri)?;
        let remote =
            RemoteKeys::fetch_first(jwks_uri, http.clone(), refresh.max_age, refresh.min_refresh)
                .await
                .map_err(|why| fail(format!("the provider's keys: {why}")))?;
        let name = config.provider_name.clone().unwrap_or_else(|| {
            issuer.host_str().map_or_else(|| config.issuer.clone(), str::to_owned)
        });
        let validation = token_validation(
            crate::DEFAULT_JWT_LEEWAY_SECS,
            Some(&config.issuer),
            Some(&config.client_id),
        );
        let sessions = Sessions::new(config.session_ttl)
            .map_err(|e| fail(format!("no randomness for session keys: {e}")))?;
        tracing::info!(issuer = %config.issuer, client_id = %config.client_id, "OpenID provider discovered");
        Ok(Self {
            config: config.clone(),
            name,
            authorization_endpoint,
            token_endpoint,
            keys: Keys::Remote(Arc::new(remote)),
            validation,
            redirect_uri: format!("{}/auth/callback", config.public_url.trim_end_matches('/')),
            secure_cookies,
            http: http.clone(),
            pending: Mutex::new(HashMap::new()),
            sessions,
        })
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exchanges `code` and verifies the ID token against `pending`.
    async fn finish(&self, code: &str, pending: &Pending) -> Result<Claims, Refusal> {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_verifier", pending.verifier.as_str()),
        ];
        let mut request = self.http.post(self.token_endpoint.clone());
        match &self.config.client_secret {
            // RFC 6749 §2.3.1: both parts form-urlencoded before the Basic encoding.
            Some(secret) => {
                request = request.basic_auth(
                    form_encode(&self.config.client_id),
                    Some(form_encode(secret.expose())),
                );
            }
            None => form.push(("client_id", self.config.client_id.as_str())),
        }
        let response = request.form(&form).send().await.map_err(|e| {
            Refusal::provider(format!(
                "the token endpoint could not be reached: {}",
                reqwest_reason(&e)
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| {
            Refusal::provider(format!(
                "the token endpoint's answer was cut: {}",
                reqwest_reason(&e)
            ))
        })?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(Refusal::provider("the token endpoint's answer is too large".into()));
        }
        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let error = json.get("error").and_then(Value::as_str).unwrap_or("no error code");
            let description = json.get("error_description").and_then(Value::as_str).unwrap_or("");
            return Err(Refusal::provider(format!(
                "the identity provider refused the code (HTTP {status}): {error} {description}"
            )));
        }
        let Some(id_token) = json.get("id_token").and_then(Value::as_str) else {
            return Err(Refusal::provider("the token endpoint answered no id_token".into()));
        };
        let claims = self.keys.verify(id_token, &self.validation).await.map_err(|why| {
            Refusal::bad(format!("the identity provider's ID token was refused: {why}"))
        })?;
        // OpenID Connect Core §2: iat is required (jsonwebtoken checks only exp, nbf, iss, aud
        // and sub for presence).
        if !claims.get("iat").is_some_and(Value::is_number) {
            return Err(Refusal::bad("the ID token has no \"iat\" (issued at) time".into()));
        }
        // OpenID Connect Core §3.1.3.7: with several audiences, azp must be this client.
        if let Some(azp) = claims.get("azp")
            && azp.as_str() != Some(self.config.client_id.as_str())
        {
            return Err(Refusal::bad("the ID token was issued to another client (azp)".into()));
        }
        if claims.get("nonce").and_then(Value::as_str) != Some(pending.nonce.as_str()) {
            return Err(Refusal::bad(
                "the ID token's nonce is not the one this sign-in issued (a replayed token)".into(),
            ));
        }
        map_claims(&claims, &self.config.claims)
            .map_err(|why| Refusal::bad(format!("the ID token's claims: {why}")))
    }
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A sign-in that did not complete, shown to the person as a page.
struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn bad(message: String) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message }
    }

    fn provider(message: String) -> Self {
        Self { status: StatusCode::BAD_GATEWAY, message }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        tracing::info!(target: AUDIT_TARGET, event = "sign_in", outcome = "refused", reason = %self.message, "sign-in refused");
        page(self.status, "Sign-in failed", &self.message)
    }
}

/// Text with `&`, `<`, `>`, `"` and `'` escaped for HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small page under the viewer's CSP: a title, a message (escaped) and a way back.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — KAHN</title><link rel=\"stylesheet\" href=\"/viewer/viewer.css\"></head>\
         <body><main class=\"auth-page\"><h1>{title}</h1><p role=\"alert\" data-testid=\"auth-error\">{}</p>\
         <p><a href=\"/\">Back to the sign-in page</a></p></main></body></html>\n",
        escape(message)
    );
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(VIEWER_CSP));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn provider_of(state: &AppState) -> Result<&Provider, crate::ApiError> {
    state.inner.oidc.as_deref().ok_or_else(|| {
        crate::ApiError::not_found("sign-in provider", "this server has no --oidc-issuer")
    })
}

/// What the viewer needs to offer sign-in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AuthConfig {
    /// The identity provider, when sign-in with one is configured.
    oidc: Option<OidcView>,
}

/// A configured identity provider.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OidcView {
    /// Its name, for "Sign in with <name>".
    name: String,
    /// Where the browser goes to sign in.
    login_url: String,
}

/// Whether this server offers sign-in with an identity provider.
#[utoipa::path(get, path = "/auth/config", tag = "auth", security(()),
    responses((status = 200, description = "The sign-in options", body = AuthConfig)))]
pub(crate) async fn config(State(state): State<AppState>) -> Json<AuthConfig> {
    Json(AuthConfig {
        oidc: state
            .inner
            .oidc
            .as_deref()
            .map(|p| OidcView { name: p.name.clone(), login_url: "/auth/login".into() }),
    })
}

/// `return_to` of `/auth/login`.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    return_to: Option<String>,
}

/// A path on this server (`/…`, not `//…` or `/\…`, which browsers read as another host).
fn local_path(path: Option<String>) -> String {
    match path {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && !p.chars().any(char::is_control) =>
        {
            p
        }
        _ => "/".into(),
    }
}

/// Starts a sign-in: redirects to the provider.
pub(crate) async fn login(
    State(state): State<AppState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let provider = match provider_of(&state) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (Ok(login_state), Ok(nonce), Ok(verifier)) =
        (random_token(32), random_token(32), random_token(32))
    else {
        return crate::ApiError::internal().into_response();
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    {
        let mut pending = provider.pending();
        pending.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING {
            return crate::ApiError::service_unavailable(Duration::from_secs(5)).into_response();
        }
        pending.insert(
            login_state.clone(),
            Pending {
                nonce: nonce.clone(),
                verifier,
                return_to: local_path(query.return_to),
                started: Instant::now(),
            },
        );
    }
    let mut target = provider.authorization_endpoint.clone();
    target
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &provider.config.client_id)
        .append_pair("redirect_uri", &provider.redirect_uri)
        .append_pair("scope", SCOPES)
        .append_pair("state", &login_state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(target.as_str()) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &login_state, "/auth", Some(LOGIN_TTL), provider.secure_cookies),
    );
    response
}

/// The provider's answer.
#[derive(Debug, Deserialize)]
pub(crate) struct CallbackQuery {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Finishes a sign-in: checks `state`, exchanges the code, opens a session.
pub(crate) async fn callback(
    State(state): State<AppState>,
    Query(query): Query<CallbackQuery>,
    parts: Parts,
) -> Response {
    let provider = match provider_of(&state) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match finish(provider, query, &parts).await {
        Ok((cookie, claims, return_to)) => {
            tracing::info!(
                target: AUDIT_TARGET,
                event = "sign_in",
                outcome = "signed_in",
                sub = %claims.sub,
                iss = claims.iss.as_deref().unwrap_or(""),
                role = claims.role.as_deref().unwrap_or(""),
                org_id = claims.org_id.as_deref().unwrap_or(""),
                "signed in with the identity provider"
            );
            let mut response = StatusCode::SEE_OTHER.into_response();
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&return_to) {
                headers.insert(header::LOCATION, location);
            }
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            let ttl = provider.sessions.ttl();
            headers.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &cookie, "/", Some(ttl), provider.secure_cookies),
            );
            headers.append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, "", "/auth", None, provider.secure_cookies),
            );
            response
        }
        Err(refusal) => {
            let mut response = refusal.into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, "", "/auth", None, provider.secure_cookies),
            );
            response
        }
    }
}

async fn finish(
    provider: &Provider,
    query: CallbackQuery,
    parts: &Parts,
) -> Result<(String, Claims, String), Refusal> {
    let Some(login_state) = query.state else {
        return Err(Refusal::bad("the sign-in callback has no state: start again".into()));
    };
    // Taken out before anything else: a state is good for one callback, whatever happens.
    let Some(pending) = provider.pending().remove(&login_state) else {
        return Err(Refusal::bad(
            "this sign-in is unknown or was already used (a callback opened twice, or after a \
             restart): start again"
                .into(),
        ));
    };
    if crate::session::cookie(parts, LOGIN_COOKIE) != Some(login_state.as_str()) {
        return Err(Refusal::bad(
            "this sign-in was started in another browser (its state does not match this \
             browser's): start again here"
                .into(),
        ));
    }
    if pending.started.elapsed() >= LOGIN_TTL {
        return Err(Refusal::bad("this sign-in took longer than 10 minutes: start again".into()));
    }
    if let Some(error) = query.error {
        let description = query.error_description.unwrap_or_default();
        return Err(Refusal::bad(format!(
            "the identity provider did not sign you in: {error}{}{description}",
            if description.is_empty() { "" } else { ": " }
        )));
    }
    let Some(code) = query.code else {
        return Err(Refusal::bad("the sign-in callback has no code: start again".into()));
    };
    let claims = provider.finish(&code, &pending).await?;
    let cookie = provider
        .sessions
        .open(claims.clone())
        .map_err(|e| Refusal::provider(format!("no randomness for a session: {e}")))?;
    Ok((cookie, claims, pending.return_to))
}

/// Ends the session the cookie names (here, not only in the browser) and removes the cookie.
pub(crate) async fn logout(State(state): State<AppState>, parts: Parts) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let secure = state.inner.oidc.as_deref().is_some_and(|p| p.secure_cookies);
    if let (Some(provider), Some(cookie)) =
        (state.inner.oidc.as_deref(), crate::session::cookie(&parts, SESSION_COOKIE))
        && provider.sessions.end(cookie)
    {
        tracing::info!(target: AUDIT_TARGET, event = "sign_out", outcome = "ended", "session ended");
    }
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", "/", None, secure));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(local_path(Some("/#/runs/a".into())), "/#/runs/a");
        for bad in ["//evil.example/", "/\\evil.example", "https://evil.example/", "runs", "/a\nb"]
        {
            assert_eq!(local_path(Some(bad.into())), "/", "{bad:?}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<script>x</script> & \"'"),
            "&lt;script&gt;x&lt;/script&gt; &amp; &quot;&#39;"
        );
    }
}
