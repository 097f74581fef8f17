//! [`HttpBackend`]: a `StorageBackend` that forwards to a KAHN server over HTTP.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ConstantBuilder, Retryable as _};
use kahn_core::{
    ApiKey, ApiKeyId, ApiKeyInfo, AppendBatch, AppendReport, ConflictAt, Cursor, Digest, Error,
    IssuedApiKey, MAX_PAGE_SIZE, NewApiKey, NewTenant, OrgId, PurgeOutcome, PurgeReport,
    PurgeRequest, ReadScope, Result, RunId, RunPage, RunQuery, RunSummary, Seq, StorageBackend,
    StoredTransition, Tenant, TenantChange, TenantId, TenantRecord, TenantSummary, WriteScope,
};
use reqwest::header::{ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::wire::{
    ErrorBody, IngestReport, RunDetail, RunsPage, TenantsList, TransitionsPage, WhoAmI,
};
use crate::{HEADER_EFFECTIVE_TENANT, HEADER_TENANT, NDJSON};

const BACKEND: &str = "http";
/// How often a request refused with 429 is sent again (honouring `Retry-After`).
const MAX_RATE_LIMIT_RETRIES: usize = 5;
/// The wait before a 429 without `Retry-After` is sent again.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);
/// The longest `Retry-After` honoured before giving up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Why [`HttpBackend::send`] got no answer to hand on: a 429 to send again after its
/// `Retry-After` (kept, to be the error when the retries run out), or a failure.
enum Refused {
    RateLimited(reqwest::Response, Option<Duration>),
    Failed(Error),
}

impl From<Error> for Refused {
    fn from(e: Error) -> Self {
        Refused::Failed(e)
    }
}

/// A [`StorageBackend`] that talks to a KAHN server (`kahn-http`) over HTTP(S), with rustls.
///
/// Data methods authenticate with the API key their scope was resolved from
/// ([`WriteScope::api_key`], [`ReadScope::api_key`]); [`authenticate_api_key`] asks the
/// server's `GET /v1/whoami`. A JWT set with [`with_bearer`](Self::with_bearer) lets the
/// client resolve the token's own tenant (`resolve_sub`, `resolve_org`), read scopes not made
/// from a key and — when its role is `admin` — look tenants up and read any tenant through
/// `X-KAHN-Tenant`. Provisioning, keys and purges are operator tasks the server does not
/// expose: they return [`Error::Unsupported`]. Every response to a read is checked to be of
/// the scope's tenant (`X-KAHN-Effective-Tenant`).
///
/// Server errors map back to the same [`Error`] variants a local backend returns: 409 to
/// [`Error::Gap`] / [`Error::Conflict`] with their fields, 404 to [`Error::NotFound`], 400 and
/// 413 to [`Error::InvalidInput`], 401 and 403 to [`Error::Unauthorized`], anything else —
/// and connection failures — to [`Error::Backend`]. A 429 is retried after its `Retry-After`.
///
/// [`authenticate_api_key`]: StorageBackend::authenticate_api_key
#[derive(Clone)]
pub struct HttpBackend {
    base: Url,
    client: reqwest::Client,
    bearer: Option<String>,
}

impl fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBackend")
            .field("base", &self.base.as_str())
            .field("bearer", &self.bearer.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Makes ring the process's rustls crypto provider unless one is installed already.
///
/// reqwest is built here without a provider of its own (so no second crypto library is
/// linked); [`HttpBackend::new`] calls this, and so must code that builds its own
/// `reqwest::Client` in this process before it does. Calling it again does nothing.
pub fn install_crypto_provider() {
    // `Err` means a provider is installed already (ours or the host application's): fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn transport(e: impl Into<kahn_core::BoxError>) -> Error {
    Error::backend(BACKEND, e)
}

/// A failed exchange: the server unreachable, too slow, or the connection lost while sending
/// is [`Error::Unavailable`] (the same call may succeed later — and retrying is safe, since
/// appends are idempotent by content); a failure no retry can mend — a host name that does
/// not resolve, TLS spoken to a plain-http server or refused by it — and anything else is
/// [`Error::Backend`], saying which.
fn exchange(e: reqwest::Error) -> Error {
    if let Some(why) = permanent(&e) {
        return transport(why);
    }
    if e.is_connect() || e.is_timeout() || e.is_request() {
        let what = if e.is_connect() {
            "the server could not be reached"
        } else if e.is_timeout() {
            "the server did not answer in time"
        } else {
            "the request could not be sent"
        };
        Error::unavailable(BACKEND, what).with_unavailable_source(e)
    } else {
        transport(e)
    }
}

/// Why `e` cannot be mended by trying again, when it cannot: read from its causes, the way
/// hyper-util and rustls word them.
fn permanent(e: &reqwest::Error) -> Option<String> {
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        causes.push(s.to_string());
        source = s.source();
    }
    let chain = causes.join(": ");
    let host = e.url().and_then(|u| u.host_str()).unwrap_or("the server").to_owned();
    if chain.contains("dns error") || chain.contains("failed to lookup address") {
        return Some(format!(
            "the name {host:?} does not resolve (DNS: {chain}); check the host in the URL"
        ));
    }
    let tls = e.url().is_some_and(|u| u.scheme() == "https");
    if tls && (chain.contains("InvalidContentType") || chain.contains("corrupt message")) {
        return Some(format!(
            "TLS handshake failed: {host} answered in plain text, not TLS ({chain}); if the \
             server is plain http, use an http:// URL"
        ));
    }
    if tls && (chain.contains("invalid peer certificate") || chain.contains("UnknownIssuer")) {
        return Some(format!("TLS: the server's certificate is not trusted here ({chain})"));
    }
    None
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

impl HttpBackend {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    ///
    /// For an `http://` URL no TLS root certificates are loaded and redirects are not
    /// followed: a redirect is an error naming where it points ([`Error::InvalidInput`] on
    /// `url`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `url` when it is not an absolute http(s) URL;
    /// [`Error::Backend`] when the HTTP client cannot be built.
    pub fn new(base_url: &str) -> Result<Self> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("kahn-http/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        if Url::parse(base_url).is_ok_and(|u| u.scheme() == "http") {
            // A plain-HTTP server needs no TLS: the system's root certificates are not loaded
            // (~28 ms, most of a `kahn push` process's start-up), and no redirect is followed,
            // so one to https:// is reported as the server's answer, not as a TLS failure.
            builder = builder
                .tls_certs_only(Vec::<reqwest::Certificate>::new())
                .redirect(reqwest::redirect::Policy::none());
        }
        Self::with_client(base_url, builder.build().map_err(transport)?)
    }

    /// A client for `base_url` using a configured [`reqwest::Client`].
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming `url` when it is not an absolute http(s) URL.
    pub fn with_client(base_url: &str, client: reqwest::Client) -> Result<Self> {
        let mut base = Url::parse(base_url)
            .map_err(|e| Error::invalid("url", format!("{base_url:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::invalid("url", "must be an absolute http:// or https:// URL"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(Self { base, client, bearer: None })
    }

    /// Presents `jwt` for reads whose scope carries no API key, for resolving the token's own
    /// tenant, and — for role `admin` — for tenant lookups and `X-KAHN-Tenant` reads.
    #[must_use]
    pub fn with_bearer(mut self, jwt: impl Into<String>) -> Self {
        self.bearer = Some(jwt.into());
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    fn url(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base.clone();
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|()| Error::invalid("url", "cannot be a base URL"))?;
            path.pop_if_empty();
            for s in segments {
                path.push(s);
            }
        }
        Ok(url)
    }

    fn request(&self, method: Method, segments: &[&str]) -> Result<RequestBuilder> {
        Ok(self.client.request(method, self.url(segments)?))
    }

    fn bearer(&self, operation: &'static str) -> Result<&str> {
        self.bearer.as_deref().ok_or(Error::Unsupported { backend: BACKEND, operation })
    }

    /// Authenticates a read as `scope`: with its API key, or with the bearer JWT and
    /// `X-KAHN-Tenant` naming the scope's tenant (honoured for admins, ignored otherwise —
    /// the response's effective tenant is checked either way).
    fn as_reader(&self, rb: RequestBuilder, scope: &ReadScope) -> Result<RequestBuilder> {
        match scope.api_key() {
            Some(key) => Ok(rb.bearer_auth(key.expose_secret())),
            None => Ok(rb
                .bearer_auth(self.bearer("reads without an API key")?)
                .header(HEADER_TENANT, scope.tenant().to_string())),
        }
    }

    /// Sends, retrying 429s after `Retry-After`; maps failures to [`Error`].
    ///
    /// A 429 is sent again up to [`MAX_RATE_LIMIT_RETRIES`] times, each after exactly its
    /// `Retry-After` ([`RATE_LIMIT_WAIT`] when it names none); one asking for more than
    /// [`MAX_RETRY_AFTER`], or the last, is the error. Nothing else is retried here: the
    /// pusher's own retries (kahn-push) see the other failures.
    async fn send(&self, rb: RequestBuilder) -> Result<reqwest::Response> {
        let attempt = || async {
            let this = rb.try_clone().ok_or_else(|| transport("request cannot be retried"))?;
            let response = this.send().await.map_err(exchange)?;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                let wait = retry_after(&response);
                if wait.is_none_or(|w| w <= MAX_RETRY_AFTER) {
                    return Err(Refused::RateLimited(response, wait));
                }
            }
            Ok(response)
        };
        let policy = ConstantBuilder::new()
            .with_delay(RATE_LIMIT_WAIT)
            .with_max_times(MAX_RATE_LIMIT_RETRIES);
        let answered = attempt
            .retry(policy)
            .when(|r| matches!(r, Refused::RateLimited(..)))
            .adjust(|r, wait| match r {
                Refused::RateLimited(_, Some(asked)) => wait.map(|_| *asked),
                _ => wait,
            })
            .await;
        let response = match answered {
            Ok(response) | Err(Refused::RateLimited(response, _)) => response,
            Err(Refused::Failed(e)) => return Err(e),
        };
        if response.status().is_success() {
            return Ok(response);
        }
        Err(error_from(response).await)
    }

    async fn json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
        response.json().await.map_err(exchange)
    }

    /// `POST /v1/ingest/transitions` with `body`, as the tenant of `scope`'s key.
    async fn ingest(&self, scope: &WriteScope, body: bytes::Bytes) -> Result<AppendReport> {
        // An operator's scope has no key to present; it is never forwarded.
        let Some(key) = scope.api_key() else {
            return Self::unsupported("append with an operator scope");
        };
        let rb = self
            .request(Method::POST, &["v1", "ingest", "transitions"])?
            .bearer_auth(key.expose_secret())
            .header(CONTENT_TYPE, NDJSON)
            .body(body);
        let response = self.send(rb).await?;
        check_tenant(&response, scope.tenant())?;
        let report: IngestReport = Self::json(response).await?;
        Ok(report.into())
    }

    async fn read<T: DeserializeOwned>(&self, rb: RequestBuilder, scope: &ReadScope) -> Result<T> {
        let response = self.send(self.as_reader(rb, scope)?).await?;
        check_tenant(&response, scope.tenant())?;
        Self::json(response).await
    }

    /// The public key the server signs receipts with (`GET /v1/receipts/key`). Fetched from
    /// the server being checked, it proves less than a key pinned earlier: prefer the PEM
    /// the operator published.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the server signs no receipts; [`Error::InvalidInput`] when it
    /// serves something that is not an Ed25519 public key; transport errors as every call.
    pub async fn receipt_key(&self) -> Result<kahn_core::receipt::ReceiptKey> {
        let rb = self.request(Method::GET, &["v1", "receipts", "key"])?;
        let view: crate::wire::ReceiptKeyView = Self::json(self.send(rb).await?).await?;
        let key = kahn_core::receipt::ReceiptKey::from_pem(&view.public_key_pem)?;
        if key.id() != view.key_id {
            return Err(Error::invalid(
                "public key",
                format!("the server names it {}, but it hashes to {}", view.key_id, key.id()),
            ));
        }
        Ok(key)
    }

    /// A receipt for the run's head as the server holds it now (`GET
    /// /v1/runs/{run_id}/receipt`): for a run whose every transition was stored before, so no
    /// ingest of this push signed one. Ask only after checking the stored head is the one
    /// expected (the pusher does: one chain link against its file).
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what` `receipt_key`) when the server signs no receipts, (`run`)
    /// for an unknown run; as every read otherwise.
    pub async fn run_receipt(
        &self,
        scope: &ReadScope,
        run: &RunId,
    ) -> Result<kahn_core::receipt::Envelope> {
        let rb = self.request(Method::GET, &["v1", "runs", run.as_str(), "receipt"])?;
        self.read(rb, scope).await
    }

    /// Asks the server for the tenant's checkpoint now (`POST /v1/checkpoints`): the latest
    /// when nothing changed since it.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`what` `receipt_key`) when the server signs nothing; as every
    /// read otherwise.
    pub async fn checkpoint_now(
        &self,
        scope: &ReadScope,
    ) -> Result<kahn_core::checkpoint::StoredCheckpoint> {
        let rb = self.request(Method::POST, &["v1", "checkpoints"])?;
        let view: crate::wire::CheckpointView = self.read(rb, scope).await?;
        Ok(view.into())
    }

    /// The proof that `run`'s latest state is in the checkpoint of `tree_size` leaves (the
    /// latest when `None`): `GET /v1/runs/{run_id}/proof`. Check it with
    /// [`RunProof::verify`](kahn_core::checkpoint::RunProof::verify) before trusting it.
    ///
    /// # Errors
    /// [`Error::NotFound`] (`checkpoint`) with no such checkpoint, (`run`) when the run has
    /// no leaf in it; [`Error::InvalidInput`] for a malformed answer; as every read otherwise.
    pub async fn run_proof(
        &self,
        scope: &ReadScope,
        run: &RunId,
        tree_size: Option<u64>,
    ) -> Result<kahn_core::checkpoint::RunProof> {
        let mut rb = self.request(Method::GET, &["v1", "runs", run.as_str(), "proof"])?;
        if let Some(size) = tree_size {
            rb = rb.query(&[("tree_size", size)]);
        }
        let view: crate::wire::RunProofView = self.read(rb, scope).await?;
        view.try_into()
    }

    /// The name of the tenant `key` names (`GET /v1/whoami`), as a person recognises it;
    /// `None` for an unknown or revoked key.
    ///
    /// # Errors
    /// As every call: transport, unavailable, a server that is not KAHN's.
    pub async fn tenant_name(&self, key: &kahn_core::ApiKey) -> Result<Option<String>> {
        Ok(self.whoami(key.expose_secret()).await?.and_then(|w| w.tenant_name))
    }

    async fn whoami(&self, token: &str) -> Result<Option<WhoAmI>> {
        let rb = self.request(Method::GET, &["v1", "whoami"])?.bearer_auth(token);
        match self.send(rb).await {
            Ok(r) => Ok(Some(Self::json(r).await?)),
            Err(Error::Unauthorized(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn admin_tenants(&self, operation: &'static str) -> Result<Vec<TenantSummary>> {
        let rb = self
            .request(Method::GET, &["api", "admin", "tenants"])?
            .bearer_auth(self.bearer(operation)?);
        let list: TenantsList = Self::json(self.send(rb).await?).await?;
        Ok(list.tenants.into_iter().map(Into::into).collect())
    }

    /// Resolves a tenant the bearer JWT can name: its own (when `own` says the whoami answer
    /// is the one asked for), or, for an admin, any tenant `find` picks from the listing.
    async fn lookup_with_bearer(
        &self,
        operation: &'static str,
        own: impl Fn(&WhoAmI) -> bool,
        find: impl Fn(&TenantSummary) -> bool,
    ) -> Result<Option<TenantId>> {
        let token = self.bearer(operation)?;
        let Some(me) = self.whoami(token).await? else {
            return Err(Error::Unauthorized("the bearer JWT is refused by the server".into()));
        };
        if own(&me) {
            return Ok(me.tenant_id);
        }
        if me.principal.role.as_deref() == Some("admin") {
            let tenants = self.admin_tenants(operation).await?;
            return Ok(tenants.iter().find(|t| find(t)).map(|t| t.tenant.id));
        }
        Err(Error::Unauthorized(format!(
            "{operation}: a non-admin JWT resolves only its own tenant"
        )))
    }

    fn unsupported<T>(operation: &'static str) -> Result<T> {
        Err(Error::Unsupported { backend: BACKEND, operation })
    }
}

fn check_tenant(response: &reqwest::Response, expected: TenantId) -> Result<()> {
    let got = response.headers().get(HEADER_EFFECTIVE_TENANT).and_then(|v| v.to_str().ok());
    if got == Some(expected.to_string().as_str()) {
        Ok(())
    } else {
        Err(Error::Unauthorized(format!(
            "the server answered for tenant {} instead of {expected}",
            got.unwrap_or("<none>")
        )))
    }
}

/// A hash the server sent as `field` of a conflict response. A missing or malformed one is a
/// protocol error naming the field and what was wrong — never a made-up hash (the zero digest
/// would tell the caller the store holds content it does not).
fn conflict_hash(field: &str, value: Option<&str>) -> Result<Digest> {
    let value = value
        .ok_or_else(|| transport(format!("malformed conflict response: {field} is missing")))?;
    value.parse().map_err(|e| {
        transport(format!("malformed conflict response: {field} {value:?} is not a hash: {e}"))
    })
}

fn known_what(what: Option<&str>) -> &'static str {
    match what {
        Some("run") => "run",
        Some("tenant") => "tenant",
        Some("api_key") => "api_key",
        Some("receipt_key") => "receipt_key",
        _ => "resource",
    }
}

/// At most 200 characters of `text` on one line: a proxy's HTML error page is not dumped
/// whole.
fn short(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// Turns an error response back into the [`Error`] the server's backend returned.
async fn error_from(response: reqwest::Response) -> Error {
    let status = response.status();
    let wait = retry_after(&response);
    if status.is_redirection() {
        // Redirects are not followed (a KAHN server answers where it is asked): say where to.
        let to = response.headers().get(reqwest::header::LOCATION);
        let to = to.and_then(|v| v.to_str().ok()).unwrap_or("<no Location>");
        return Error::invalid(
            "url",
            format!(
                "the server answered HTTP {status}, redirecting to {}; use that URL",
                short(to)
            ),
        );
    }
    let text = response.text().await.unwrap_or_default();
    let Ok(body) = serde_json::from_str::<ErrorBody>(&text) else {
        // Not KAHN's JSON: a proxy, or not a KAHN server at all. Its page is not dumped whole.
        let what = format!("HTTP {status}: {}", short(&text));
        return if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Error::Unavailable { backend: BACKEND, message: what, retry_after: wait, source: None }
        } else {
            transport(format!("the answer is not KAHN's (is the URL a KAHN server?): {what}"))
        };
    };
    let run_id = || body.run_id.as_deref().and_then(|r| RunId::new(r).ok());
    match (status, body.error.as_str()) {
        (StatusCode::CONFLICT, "gap") => match (run_id(), body.expected, body.seq) {
            (Some(run_id), Some(expected), Some(got)) => Error::Gap { run_id, expected, got },
            _ => transport(format!("malformed gap response: {text}")),
        },
        (StatusCode::CONFLICT, "conflict") => {
            let at = match (body.seq, &body.field) {
                (Some(seq), _) => ConflictAt::Seq(seq),
                (None, Some(field)) => ConflictAt::Metadata(field.clone()),
                (None, None) => return transport(format!("malformed conflict response: {text}")),
            };
            let Some(run_id) = run_id() else {
                return transport(format!("malformed conflict response: {text}"));
            };
            let hashes = conflict_hash("stored_hash", body.stored_hash.as_deref()).and_then(|s| {
                Ok((s, conflict_hash("incoming_hash", body.incoming_hash.as_deref())?))
            });
            match hashes {
                Ok((stored_hash, incoming_hash)) => {
                    Error::Conflict { run_id, at, stored_hash, incoming_hash }
                }
                Err(e) => e,
            }
        }
        (StatusCode::NOT_FOUND, _) => Error::NotFound {
            what: known_what(body.what.as_deref()),
            id: body.id.unwrap_or(body.message),
        },
        (StatusCode::BAD_REQUEST, "invalid_line") => Error::InvalidInput {
            field: body.field.unwrap_or_else(|| "line".into()),
            message: format!("line {}: {}", body.line.unwrap_or(0), body.message),
        },
        (StatusCode::BAD_REQUEST, _) => Error::InvalidInput {
            field: body.field.unwrap_or_else(|| "request".into()),
            message: body.message,
        },
        (StatusCode::PAYLOAD_TOO_LARGE, _) => Error::InvalidInput {
            field: "body".into(),
            message: format!(
                "{} (split the batch into appends under the server's limit)",
                body.message
            ),
        },
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, _) => Error::Unauthorized(body.message),
        (StatusCode::INTERNAL_SERVER_ERROR, "integrity") => {
            Error::Integrity { run_id: run_id(), seq: body.seq, message: body.message }
        }
        (StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE, _) => {
            Error::Unavailable {
                backend: BACKEND,
                message: body.message,
                retry_after: wait,
                source: None,
            }
        }
        // A server's internal error, or a proxy in front of it that could not reach it or
        // gave up waiting: the same call may well succeed next time (and a repeated append is
        // a no-op by content).
        (
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT,
            _,
        ) => Error::Unavailable {
            backend: BACKEND,
            message: format!("HTTP {status}: {} ({})", short(&body.message), body.error),
            retry_after: wait,
            source: None,
        },
        _ => transport(format!("HTTP {status}: {} ({})", short(&body.message), body.error)),
    }
}

#[async_trait]
impl StorageBackend for HttpBackend {
    async fn provision_tenant(&self, _req: &NewTenant) -> Result<Tenant> {
        Self::unsupported("provision_tenant")
    }

    async fn get_tenant(&self, tenant: TenantId) -> Result<Tenant> {
        let tenants = self.admin_tenants("get_tenant").await?;
        tenants
            .into_iter()
            .find(|t| t.tenant.id == tenant)
            .map(|t| t.tenant)
            .ok_or_else(|| Error::not_found("tenant", tenant))
    }

    async fn update_tenant(&self, _tenant: TenantId, _change: &TenantChange) -> Result<Tenant> {
        Self::unsupported("update_tenant")
    }

    async fn delete_tenant(&self, _tenant: TenantId) -> Result<PurgeReport> {
        Self::unsupported("delete_tenant")
    }

    async fn provision_personal_tenant(&self, _sub: &str) -> Result<TenantId> {
        Self::unsupported("provision_personal_tenant")
    }

    async fn create_api_key(&self, _tenant: TenantId, _req: &NewApiKey) -> Result<IssuedApiKey> {
        Self::unsupported("create_api_key")
    }

    async fn revoke_api_key(&self, _tenant: TenantId, _key: ApiKeyId) -> Result<()> {
        Self::unsupported("revoke_api_key")
    }

    async fn list_api_keys(&self, _tenant: TenantId) -> Result<Vec<ApiKeyInfo>> {
        Self::unsupported("list_api_keys")
    }

    async fn list_tenants(&self) -> Result<Vec<TenantSummary>> {
        self.admin_tenants("list_tenants").await
    }

    async fn export_tenant(&self, _tenant: TenantId) -> Result<TenantRecord> {
        Self::unsupported("export_tenant")
    }

    async fn import_tenant(&self, _record: &TenantRecord) -> Result<Tenant> {
        Self::unsupported("import_tenant")
    }

    async fn authorize_operator(&self, _tenant: TenantId) -> Result<()> {
        Self::unsupported("authorize_operator")
    }

    async fn authenticate_api_key(&self, key: &ApiKey) -> Result<Option<TenantId>> {
        let Some(me) = self.whoami(key.expose_secret()).await? else {
            return Ok(None);
        };
        match (me.tenant_source.as_str(), me.tenant_id) {
            ("api_key", Some(tenant)) => Ok(Some(tenant)),
            _ => Err(transport(format!(
                "whoami with an API key answered source {:?}",
                me.tenant_source
            ))),
        }
    }

    async fn lookup_tenant_by_org(&self, org: &OrgId) -> Result<Option<TenantId>> {
        self.lookup_with_bearer(
            "lookup_tenant_by_org",
            |me| me.tenant_source == "org" && me.principal.org_id.as_deref() == Some(org.as_str()),
            |t| t.tenant.airlock_org_id.as_ref() == Some(org),
        )
        .await
    }

    async fn lookup_tenant_by_sub(&self, sub: &str) -> Result<Option<TenantId>> {
        self.lookup_with_bearer(
            "lookup_tenant_by_sub",
            |me| me.tenant_source == "sub" && me.principal.sub.as_deref() == Some(sub),
            |t| t.tenant.owner_sub.as_deref() == Some(sub),
        )
        .await
    }

    async fn append(&self, scope: &WriteScope, batch: &AppendBatch) -> Result<AppendReport> {
        self.ingest(scope, kahn_core::ndjson::encode_batch(batch).into()).await
    }

    /// Sends the lines as they are: the server reads every line anyway.
    async fn append_ndjson(&self, scope: &WriteScope, body: bytes::Bytes) -> Result<AppendReport> {
        self.ingest(scope, body).await
    }

    fn prefers_ndjson(&self) -> bool {
        true
    }

    async fn list_runs(&self, scope: &ReadScope, query: &RunQuery) -> Result<RunPage> {
        query.validate()?;
        let mut params: Vec<(&str, String)> = vec![("limit", query.effective_limit().to_string())];
        if let Some(c) = &query.cursor {
            params.push(("cursor", c.encode()));
        }
        if let Some(s) = &query.source {
            params.push(("source", s.clone()));
        }
        if let Some(p) = &query.run_id_prefix {
            params.push(("run_id_prefix", p.clone()));
        }
        if let Some(c) = query.node_class {
            params.push(("node_class", c.as_str().to_owned()));
        }
        if let Some(s) = &query.status {
            params.push(("status", s.clone()));
        }
        let rb = self.request(Method::GET, &["v1", "runs"])?.query(&params);
        let page: RunsPage = self.read(rb, scope).await?;
        Ok(RunPage {
            runs: page.runs.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor.as_deref().map(Cursor::decode).transpose()?,
        })
    }

    async fn get_run(&self, scope: &ReadScope, run: &RunId) -> Result<RunSummary> {
        let rb = self.request(Method::GET, &["v1", "runs", run.as_str()])?;
        let detail: RunDetail = self.read(rb, scope).await?;
        Ok(detail.into())
    }

    async fn read_transitions(
        &self,
        scope: &ReadScope,
        run: &RunId,
        after: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<StoredTransition>> {
        let mut params = vec![("limit", limit.min(MAX_PAGE_SIZE).to_string())];
        if let Some(after) = after {
            params.push(("after_seq", after.get().to_string()));
        }
        let rb = self
            .request(Method::GET, &["v1", "runs", run.as_str(), "transitions"])?
            .header(ACCEPT, "application/json")
            .query(&params);
        let page: TransitionsPage = self.read(rb, scope).await?;
        Ok(page.transitions.into_iter().map(Into::into).collect())
    }

    async fn purge_expired(&self, _req: &PurgeRequest) -> Result<PurgeOutcome> {
        Self::unsupported("purge_expired")
    }

    async fn read_checkpoint_log(
        &self,
        scope: &ReadScope,
    ) -> Result<kahn_core::checkpoint::CheckpointLog> {
        let rb = self.request(Method::GET, &["v1", "checkpoints"])?;
        let view: crate::wire::CheckpointLogView = self.read(rb, scope).await?;
        view.try_into()
    }

    async fn checkpoint_inputs(
        &self,
        scope: &ReadScope,
    ) -> Result<kahn_core::checkpoint::CheckpointInputs> {
        let _ = scope;
        Err(Error::Unsupported {
            backend: BACKEND,
            operation: "checkpoint_inputs (the server makes checkpoints: POST /v1/checkpoints)",
        })
    }

    async fn append_checkpoint(
        &self,
        scope: &ReadScope,
        next: &kahn_core::checkpoint::NewCheckpoint,
    ) -> Result<()> {
        let _ = (scope, next);
        Err(Error::Unsupported {
            backend: BACKEND,
            operation: "append_checkpoint (the server makes checkpoints: POST /v1/checkpoints)",
        })
    }

    async fn ping(&self) -> Result<()> {
        let rb = self.request(Method::GET, &["readyz"])?;
        self.send(rb).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// A conflict response whose hash is missing or not a hash is a protocol error naming the
    /// field, not a conflict against the zero digest.
    #[tokio::test]
    async fn a_conflict_with_a_malformed_hash_is_an_error_naming_it() {
        let response = |stored: Value| {
            let body = serde_json::json!({
                "error": "conflict", "message": "conflict", "run_id": "r", "seq": 2,
                "stored_hash": stored, "incoming_hash": Digest::sha256(b"in").to_string(),
            });
            let http = axum::http::Response::builder()
                .status(StatusCode::CONFLICT)
                .body(body.to_string())
                .expect("a response");
            reqwest::Response::from(http)
        };
        let good = Digest::sha256(b"stored");
        let ok = error_from(response(good.to_string().into())).await;
        assert!(
            matches!(&ok, Error::Conflict { stored_hash, .. } if *stored_hash == good),
            "{ok:?}"
        );
        for (bad, says) in [
            (Value::from("zz"), "stored_hash \"zz\" is not a hash"),
            (Value::from("0".repeat(63)), "is not a hash"),
            (Value::Null, "stored_hash is missing"),
        ] {
            let err = error_from(response(bad.clone())).await;
            let Error::Backend { backend: BACKEND, source } = &err else {
                panic!("{bad}: not a protocol error: {err:?}")
            };
            assert!(source.to_string().contains(says), "{bad}: {source}");
        }
    }

    /// A server that answers its requests with `answers` in turn (the last one again once
    /// they run out, each on a connection of its own), and counts them.
    async fn answering(
        answers: &'static [&'static str],
    ) -> (HttpBackend, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let served = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { return };
                let (mut head, mut buf) = (Vec::new(), [0u8; 1024]);
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let n = served.fetch_add(1, Ordering::SeqCst);
                let (status, extra) =
                    answers[n.min(answers.len() - 1)].split_once('|').expect("status|headers");
                let body = if status == "200" { "{}" } else { "slow down" };
                let response = format!(
                    "HTTP/1.1 {status} X\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            }
        });
        (HttpBackend::new(&url).expect("client"), count)
    }

    async fn get(backend: &HttpBackend) -> Result<reqwest::Response> {
        backend.send(backend.request(Method::GET, &["v1", "whoami"])?).await
    }

    /// A 429 is sent again after exactly its `Retry-After` (1 s when it names none), at most
    /// five times; the last 429, or one asking for more than a minute, is the error.
    #[tokio::test]
    async fn a_429_is_retried_after_its_retry_after_five_times_at_most() {
        use std::sync::atomic::Ordering;
        let (backend, count) =
            answering(&["429|retry-after: 0\r\n", "429|retry-after: 0\r\n", "200|"]).await;
        assert!(get(&backend).await.is_ok());
        assert_eq!(count.load(Ordering::SeqCst), 3, "two retries, then the answer");

        let (backend, count) = answering(&["429|retry-after: 0\r\n"]).await;
        let err = get(&backend).await.expect_err("429 to the end");
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(count.load(Ordering::SeqCst), 6, "the first call and five retries");

        let (backend, count) = answering(&["429|retry-after: 61\r\n"]).await;
        let err = get(&backend).await.expect_err("too long a wait");
        assert!(
            matches!(err, Error::Unavailable { retry_after: Some(w), .. } if w == Duration::from_secs(61)),
            "{err:?}"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1, "more than a minute: not waited for");

        let (backend, count) = answering(&["429|", "200|"]).await;
        let started = std::time::Instant::now();
        assert!(get(&backend).await.is_ok());
        assert!(started.elapsed() >= RATE_LIMIT_WAIT, "no Retry-After: {RATE_LIMIT_WAIT:?}");
        assert_eq!(count.load(Ordering::SeqCst), 2);

        let (backend, count) = answering(&["502|"]).await;
        assert!(get(&backend).await.expect_err("502").is_retryable());
        assert_eq!(count.load(Ordering::SeqCst), 1, "only 429s are retried here");
    }

    #[test]
    fn base_urls_are_normalised() {
        let b = HttpBackend::new("http://127.0.0.1:1/prefix").expect("valid");
        assert_eq!(
            b.url(&["v1", "runs", "a:b"]).expect("url").as_str(),
            "http://127.0.0.1:1/prefix/v1/runs/a:b"
        );
        assert!(HttpBackend::new("ftp://x").is_err());
        assert!(HttpBackend::new("not a url").is_err());
    }
}
