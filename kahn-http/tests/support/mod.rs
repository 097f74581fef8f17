//! Test support: Ed25519 keys generated at run time, JWT minting, and a real server on an
//! ephemeral loopback port over any backend (the backend is a parameter, so the Postgres
//! composition test plugs its own factory in).

#![allow(dead_code, unreachable_pub)]

use std::num::NonZeroU32;
use std::sync::Arc;

use base64::Engine;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kahn_core::{MemoryBackend, StorageBackend};
use kahn_http::{AppState, HttpBackend, JwtConfig, JwtKeySource, ServerConfig};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// An Ed25519 key pair made for this test run.
pub struct TestKeys {
    pub private_pem: String,
    pub public_pem: String,
    pub public_raw: [u8; 32],
    encoding: EncodingKey,
}

impl TestKeys {
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("os randomness");
        let signing = SigningKey::from_bytes(&seed);
        let private_pem = signing.to_pkcs8_pem(LineEnding::LF).expect("pkcs8 pem").to_string();
        let public_pem =
            signing.verifying_key().to_public_key_pem(LineEnding::LF).expect("spki pem");
        let encoding = EncodingKey::from_ed_pem(private_pem.as_bytes()).expect("ed pem");
        Self { private_pem, public_pem, public_raw: signing.verifying_key().to_bytes(), encoding }
    }

    /// A JWKS holding this key under `kid`, beside an RSA key that must be ignored.
    pub fn jwks(&self, kid: &str) -> String {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.public_raw);
        json!({"keys": [
            {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": "sXch", "e": "AQAB"},
            {"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": x},
        ]})
        .to_string()
    }

    /// Signs `claims` with EdDSA.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_kid(claims, None)
    }

    pub fn sign_with_kid(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_owned);
        self.sign_with_header(&header, claims)
    }

    /// Signs `claims` under `header` (which should say EdDSA to be verifiable).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The issuer test servers require (see [`test_config`]).
pub const ISSUER: &str = "https://idp.test";
/// The audience test servers require (see [`test_config`]).
pub const AUDIENCE: &str = "kahn";

/// Claims valid for ten minutes, from [`ISSUER`] for [`AUDIENCE`].
pub fn claims(sub: &str, role: Option<&str>, org: Option<&str>) -> Value {
    let mut c = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "email": format!("{sub}@example.test"),
        "name": sub,
        "nonce": "n-1",
        "exp": now() + 600,
        "iat": now(),
    });
    if let Some(role) = role {
        c["role"] = json!(role);
    }
    if let Some(org) = org {
        c["org_id"] = json!(org);
    }
    c
}

/// A running server.
pub struct TestServer {
    pub url: String,
    pub backend: Arc<dyn StorageBackend>,
    pub keys: Arc<TestKeys>,
    pub http: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _guard: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The JWT verification of test servers: `keys`, [`ISSUER`] and [`AUDIENCE`] required.
pub fn test_jwt(keys: &TestKeys) -> JwtConfig {
    JwtConfig::new(JwtKeySource::Pem(keys.public_pem.clone()))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE)
}

/// The default config of test servers: JWTs verified with `keys` ([`test_jwt`]), no
/// retention task, no periodic checkpoints (only on demand), and — knowingly — no practical failed-authentication limit: these suites
/// send hundreds of bad credentials from 127.0.0.1 on purpose (the JWT attack list, the key
/// timing test, the fuzzers). The limit itself is tested in hostile.rs with a small allowance.
pub fn test_config(keys: &TestKeys) -> ServerConfig {
    ServerConfig::default()
        .with_jwt(test_jwt(keys))
        .with_retention_interval(None)
        .with_checkpoint_interval(None)
        .with_auth_failures_per_minute(NonZeroU32::MAX)
}

impl TestServer {
    /// A server over a fresh `MemoryBackend` with the default test config.
    pub async fn memory() -> Self {
        let keys = TestKeys::generate();
        let config = test_config(&keys);
        Self::start(Arc::new(MemoryBackend::new()), keys, config).await
    }

    /// A server over `backend`, configured by `config`.
    pub async fn start(
        backend: Arc<dyn StorageBackend>,
        keys: TestKeys,
        config: ServerConfig,
    ) -> Self {
        kahn_http::install_crypto_provider();
        let state = AppState::connect(backend.clone(), config).await.expect("valid config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(kahn_http::serve(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url: format!("http://{addr}"),
            backend,
            keys: Arc::new(keys),
            http: reqwest::Client::new(),
            shutdown: Some(tx),
            task: Some(task),
            _guard: None,
        }
    }

    /// Keeps `guard` (a temporary directory) alive as long as the server.
    pub fn with_guard(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self._guard = Some(Arc::new(guard));
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A client backend with no JWT.
    pub fn client(&self) -> HttpBackend {
        HttpBackend::new(&self.url).expect("client")
    }

    /// A JWT with role admin.
    pub fn admin_token(&self) -> String {
        self.keys.sign(&claims("kahn-admin", Some("admin"), None))
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server ran");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
