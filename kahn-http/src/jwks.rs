//! Verification keys: a JWKS read under an allow-list of asymmetric algorithms, and the cache
//! of a JWKS fetched by URL (an identity provider's `jwks_uri`, or `--jwt-jwks-url`).
//!
//! * Only EdDSA (Ed25519), ES256 (P-256) and RS256 (RSA, at least 2048 bits) are accepted:
//!   never `none`, never an HMAC secret, and a key is used only for the algorithm its own
//!   `kty`/`crv` imply — a JWK whose `alg` names another is not a key here at all.
//! * A remote set is fetched at start (a failure stops the start), then again on a schedule
//!   and whenever a token names a `kid` the set does not hold (at most once per
//!   [`RemoteKeys::min_refresh`]): a key rotated at the provider is used without a restart. A
//!   failed refresh keeps the last good keys and is reported by `/readyz`.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::Url;
use serde_json::Value;

/// The algorithms a token may be signed with.
pub(crate) const ALLOWED_ALGORITHMS: [Algorithm; 3] =
    [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256];

/// The words for [`ALLOWED_ALGORITHMS`] in messages.
pub(crate) const ALLOWED_TEXT: &str = "EdDSA (Ed25519), ES256 (P-256) or RS256";

/// Default interval between scheduled refreshes of a remote key set: 10 minutes.
pub(crate) const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(600);
/// Default shortest interval between two fetches of a remote key set caused by unknown
/// `kid`s: 5 seconds, so a flood of tokens naming made-up keys costs the provider one request
/// per interval.
pub(crate) const DEFAULT_KEYS_MIN_REFRESH: Duration = Duration::from_secs(5);
/// The largest JWKS document read: 256 KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key and the one algorithm it verifies.
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// The keys of one source.
#[derive(Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// One Ed25519 public key in PEM (`-----BEGIN PUBLIC KEY-----`).
    pub(crate) fn from_ed_pem(pem: &str) -> Result<Self, String> {
        let key = DecodingKey::from_ed_pem(pem.as_bytes())
            .map_err(|e| format!("not an Ed25519 public key PEM: {e}"))?;
        Ok(Self { keys: vec![VerifyKey { kid: None, alg: Algorithm::EdDSA, key }] })
    }

    /// The signing keys of a JWKS (`{"keys": [...]}`) this server accepts; keys of other
    /// types, curves or algorithms, and encryption keys, are passed over.
    ///
    /// A key of an accepted type that is malformed (missing coordinates, an RSA modulus under
    /// 2048 bits) is passed over with a warning.
    ///
    /// # Errors
    /// Not JSON, no `keys` array, or no usable key at all.
    pub(crate) fn from_jwks(text: &str) -> Result<Self, String> {
        let set: Value =
            serde_json::from_str(text).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let Some(entries) = set.get("keys").and_then(Value::as_array) else {
            return Err("JWKS has no \"keys\" array".into());
        };
        let mut keys = Vec::new();
        let mut passed_over = Vec::new();
        for jwk in entries {
            match jwk_key(jwk) {
                Ok(Some(key)) => keys.push(key),
                Ok(None) => {}
                // One odd key (a provider publishing a short RSA key beside good ones) does not
                // take the others down; it is said, and never used.
                Err(why) => passed_over.push(why),
            }
        }
        if keys.is_empty() {
            let why = if passed_over.is_empty() {
                String::new()
            } else {
                format!("; passed over: {}", passed_over.join("; "))
            };
            return Err(format!("JWKS holds no usable signing key ({ALLOWED_TEXT}){why}"));
        }
        for why in passed_over {
            tracing::warn!(reason = %why, "a JWKS key is passed over");
        }
        Ok(Self { keys })
    }

    /// The keys that may have signed a token with this header: same algorithm, and the same
    /// `kid` when both name one.
    pub(crate) fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.alg == alg
                && match (kid, k.kid.as_deref()) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    /// The `kid`s held, for logs.
    pub(crate) fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect()
    }
}

/// The key of one JWK, `None` when it is not a signing key of an accepted algorithm.
fn jwk_key(jwk: &Value) -> Result<Option<VerifyKey>, String> {
    let field = |name: &str| jwk.get(name).and_then(Value::as_str);
    if field("use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let kid = field("kid").map(str::to_owned);
    let named = field("kid").map_or_else(String::new, |k| format!(" {k:?}"));
    let (alg, accepted_alg_names): (Algorithm, &[&str]) = match (field("kty"), field("crv")) {
        (Some("OKP"), Some("Ed25519")) => (Algorithm::EdDSA, &["EdDSA", "Ed25519"]),
        (Some("EC"), Some("P-256")) => (Algorithm::ES256, &["ES256"]),
        (Some("RSA"), _) => (Algorithm::RS256, &["RS256"]),
        // oct (HMAC secrets), other curves, other types: never a verification key here.
        _ => return Ok(None),
    };
    // A key published for another algorithm (RS384, PS256, ...) is not used for this one.
    if field("alg").is_some_and(|a| !accepted_alg_names.contains(&a)) {
        return Ok(None);
    }
    let part = |name: &str| {
        field(name).ok_or_else(|| format!("the {} JWK{named} has no {name:?}", alg_name(alg)))
    };
    let key = match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_components(part("x")?),
        Algorithm::ES256 => DecodingKey::from_ec_components(part("x")?, part("y")?),
        _ => {
            let n = part("n")?;
            // base64url without padding: 4 characters per 3 bytes.
            if n.len() * 3 / 4 < MIN_RSA_MODULUS_BYTES {
                return Err(format!("the RSA JWK{named} is shorter than 2048 bits"));
            }
            DecodingKey::from_rsa_components(n, part("e")?)
        }
    }
    .map_err(|e| format!("the {} JWK{named} is malformed: {e}", alg_name(alg)))?;
    Ok(Some(VerifyKey { kid, alg, key }))
}

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        _ => "other",
    }
}

/// A URL keys or provider metadata are fetched from: `https`, or `http` on a loopback host
/// only (a provider started next to the server, as the tests do).
///
/// # Errors
/// Not a URL, or `http` to a host that is not loopback, or another scheme.
pub(crate) fn fetch_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{text} is plain http: keys and provider metadata are fetched over https (http is \
             accepted on loopback only)"
        )),
        other => Err(format!("{text}: scheme {other:?} is not https")),
    }
}

/// Whether `url`'s host is this machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Gets `url` as JSON text, at most `limit` bytes, answering why not in words.
pub(crate) async fn get_text(
    client: &reqwest::Client,
    url: &Url,
    limit: usize,
) -> Result<String, String> {
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url} failed: {}", reqwest_reason(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered HTTP {status}"));
    }
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(format!("GET {url}: the document is larger than {limit} bytes"));
    }
    let body = response.bytes().await.map_err(|e| format!("GET {url}: {}", reqwest_reason(&e)))?;
    if body.len() > limit {
        return Err(format!("GET {url}: the document is larger than {limit} bytes"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: the document is not UTF-8"))
}

/// A reqwest error in words, its causes included (reqwest's own Display says only "error
/// sending request").
pub(crate) fn reqwest_reason(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The HTTP client fetching keys and talking to the identity provider: short timeouts, no
/// redirect to another origin.
pub(crate) fn http_client() -> Result<reqwest::Client, String> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("kahn-http/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", reqwest_reason(&e)))
}

struct Fetched {
    keys: Arc<KeySet>,
    /// When the keys held were fetched.
    fetched_at: Instant,
    /// When a fetch was last tried (successful or not).
    attempted_at: Instant,
    /// Why the last fetch failed, when it did: the keys held are then older than they should
    /// be.
    error: Option<String>,
}

/// A JWKS fetched by URL and kept fresh.
pub(crate) struct RemoteKeys {
    url: Url,
    client: reqwest::Client,
    /// Scheduled refresh interval.
    pub(crate) max_age: Duration,
    /// Shortest interval between fetches caused by unknown `kid`s.
    pub(crate) min_refresh: Duration,
    state: RwLock<Fetched>,
    /// One fetch at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl RemoteKeys {
    /// Fetches the set at `url` once.
    ///
    /// # Errors
    /// Why the first fetch failed (unreachable, not 200, not a JWKS, no usable key).
    pub(crate) async fn fetch_first(
        url: Url,
        client: reqwest::Client,
        max_age: Duration,
        min_refresh: Duration,
    ) -> Result<Self, String> {
        let keys = fetch_set(&client, &url).await?;
        tracing::info!(url = %url, kids = ?keys.kids(), "verification keys fetched");
        let now = Instant::now();
        Ok(Self {
            url,
            client,
            max_age,
            min_refresh,
            state: RwLock::new(Fetched {
                keys: Arc::new(keys),
                fetched_at: now,
                attempted_at: now,
                error: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The keys held now.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.read().keys)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Fetched> {
        self.state.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fetches the set again unless one was fetched (or tried) within `not_within`; answers
    /// the keys held afterwards and whether a fetch happened. A failure keeps the keys held
    /// and is remembered for [`status`](Self::status).
    pub(crate) async fn refresh(&self, not_within: Duration) -> (Arc<KeySet>, bool) {
        let _one = self.refreshing.lock().await;
        if self.read().attempted_at.elapsed() < not_within {
            return (self.current(), false);
        }
        let fetched = fetch_set(&self.client, &self.url).await;
        let mut state = self.state.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.attempted_at = Instant::now();
        match fetched {
            Ok(keys) => {
                tracing::debug!(url = %self.url, kids = ?keys.kids(), "verification keys refreshed");
                state.keys = Arc::new(keys);
                state.fetched_at = state.attempted_at;
                state.error = None;
            }
            Err(why) => {
                tracing::warn!(url = %self.url, error = %why, "verification keys could not be refreshed; the last good keys stay in use");
                state.error = Some(why);
            }
        }
        (Arc::clone(&state.keys), true)
    }

    /// `None` while the keys are fresh; else what is wrong, for `/readyz`.
    pub(crate) fn problem(&self) -> Option<String> {
        let state = self.read();
        state.error.as_ref().map(|why| {
            format!(
                "verification keys from {} could not be refreshed ({why}); the keys fetched {} s \
                 ago stay in use",
                self.url,
                state.fetched_at.elapsed().as_secs()
            )
        })
    }
}

async fn fetch_set(client: &reqwest::Client, url: &Url) -> Result<KeySet, String> {
    let text = get_text(client, url, MAX_JWKS_BYTES).await?;
    KeySet::from_jwks(&text).map_err(|why| format!("{url}: {why}"))
}
