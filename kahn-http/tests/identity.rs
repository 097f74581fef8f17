//! Keys fetched by URL (the allow-list of algorithms, rotation without a restart, the refresh
//! rate limit, a failed refresh), the start refusing an unusable provider or key URL, and
//! CORS. Every server is real, on a loopback port; the key server is a real HTTP server whose
//! JWKS the tests change between requests, as a provider rotating keys would.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kahn_core::MemoryBackend;
use kahn_http::{AppState, ConfigError, JwtConfig, JwtKeySource, KeyRefresh, OidcConfig};
use serde_json::{Value, json};
use support::{AUDIENCE, ISSUER, TestKeys, TestServer, claims, test_config};

const ES256_PEM: &str = include_str!("fixtures/es256.pem");
const ES256_JWK: &str = include_str!("fixtures/es256.jwk.json");
const RS256_PEM: &str = include_str!("fixtures/rs256.pem");
const RS256_JWK: &str = include_str!("fixtures/rs256.jwk.json");

/// A JWKS (or anything else) served at `/jwks`, changeable between requests, counting GETs.
struct KeyServer {
    url: String,
    answer: Arc<Mutex<(StatusCode, String)>>,
    hits: Arc<AtomicUsize>,
}

impl KeyServer {
    async fn start(body: String) -> Self {
        let answer = Arc::new(Mutex::new((StatusCode::OK, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        let app = Router::new().route(
            "/jwks",
            get(move || {
                let (a, h) = (a.clone(), h.clone());
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = a.lock().expect("answer").clone();
                    (status, [("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url: format!("http://{addr}/jwks"), answer, hits }
    }

    fn set(&self, status: StatusCode, body: String) {
        *self.answer.lock().expect("answer") = (status, body);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A public JWK with `kid` (and `alg`, when given) set.
fn jwk(text: &str, kid: &str, alg: Option<&str>) -> Value {
    let mut key: Value = serde_json::from_str(text).expect("fixture JWK");
    key["kid"] = json!(kid);
    key["use"] = json!("sig");
    if let Some(alg) = alg {
        key["alg"] = json!(alg);
    }
    key
}

fn ed_jwk(keys: &TestKeys, kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
           "x": URL_SAFE_NO_PAD.encode(keys.public_raw)})
}

fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

fn es256() -> EncodingKey {
    EncodingKey::from_ec_pem(ES256_PEM.as_bytes()).expect("ES256 fixture")
}

fn rs256() -> EncodingKey {
    EncodingKey::from_rsa_pem(RS256_PEM.as_bytes()).expect("RS256 fixture")
}

fn url_jwt(url: &str, min_refresh: Duration) -> JwtConfig {
    let mut jwt = JwtConfig::new(JwtKeySource::JwksUrl(url.to_owned()))
        .with_issuer(ISSUER)
        .with_audience(AUDIENCE);
    jwt.refresh = KeyRefresh { max_age: Duration::from_secs(3600), min_refresh };
    jwt
}

async fn server_with(keys: TestKeys, jwt: JwtConfig) -> TestServer {
    let config = test_config(&keys).with_jwt(jwt);
    TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await
}

async fn whoami(s: &TestServer, token: &str) -> (StatusCode, Value) {
    let r = s.http.get(s.url("/v1/whoami")).bearer_auth(token).send().await.expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_by_url_verify_eddsa_es256_and_rs256_and_nothing_else() {
    let keys = TestKeys::generate();
    let server = KeyServer::start(jwks(&[
        ed_jwk(&keys, "ed-1"),
        jwk(ES256_JWK, "es-1", Some("ES256")),
        jwk(RS256_JWK, "rs-1", None),
        // An EC key published for another algorithm: never used for ES256.
        jwk(ES256_JWK, "es-as-rs", Some("RS256")),
        // An HMAC secret in a JWKS: never a verification key here.
        json!({"kty": "oct", "kid": "hs-1", "k": URL_SAFE_NO_PAD.encode(b"a shared secret")}),
    ]))
    .await;
    let s = server_with(keys, url_jwt(&server.url, Duration::from_secs(60))).await;
    let c = claims("alg-tester", None, None);
    let ed = s.keys.sign_with_kid(&c, Some("ed-1"));
    assert_eq!(whoami(&s, &ed).await.0, StatusCode::OK, "EdDSA");
    assert_eq!(whoami(&s, &sign(Algorithm::ES256, "es-1", &es256(), &c)).await.0, StatusCode::OK);
    assert_eq!(whoami(&s, &sign(Algorithm::RS256, "rs-1", &rs256(), &c)).await.0, StatusCode::OK);

    // The key's own algorithm only: an ES256 token naming the RSA key, or the EC key that
    // says RS256, is refused; so is every algorithm outside the list, HMAC with a secret the
    // JWKS publishes included.
    let (status, body) = whoami(&s, &sign(Algorithm::ES256, "rs-1", &es256(), &c)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("no verification key")), "{body}");
    let (status, _) = whoami(&s, &sign(Algorithm::ES256, "es-as-rs", &es256(), &c)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let hmac = EncodingKey::from_secret(b"a shared secret");
    for (alg, key) in [
        (Algorithm::HS256, &hmac),
        (Algorithm::RS384, &rs256()),
        (Algorithm::PS256, &rs256()),
        (Algorithm::ES384, &hmac),
    ] {
        let token = if alg == Algorithm::ES384 {
            // Not signable with this key; the header alone must be refused.
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES384","kid":"es-1"}"#);
            let body = URL_SAFE_NO_PAD.encode(c.to_string());
            format!("{header}.{body}.AAAA")
        } else {
            sign(alg, "hs-1", key, &c)
        };
        let (status, body) = whoami(&s, &token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{alg:?}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("is not accepted")),
            "{alg:?}: {body}"
        );
    }
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(c.to_string())
    );
    assert_eq!(whoami(&s, &none).await.0, StatusCode::UNAUTHORIZED, "alg none");
    assert_eq!(server.hits(), 1, "all of it from the keys fetched at start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_at_the_provider_verifies_without_a_restart_and_unknown_kids_are_rate_limited()
 {
    let keys = TestKeys::generate();
    let server = KeyServer::start(jwks(&[jwk(ES256_JWK, "old", None)])).await;
    let min_refresh = Duration::from_millis(400);
    let s = server_with(keys, url_jwt(&server.url, min_refresh)).await;
    let c = claims("rotator", None, None);
    assert_eq!(whoami(&s, &sign(Algorithm::ES256, "old", &es256(), &c)).await.0, StatusCode::OK);

    // The provider rotates: a new key (another algorithm, even), the old one gone.
    server.set(StatusCode::OK, jwks(&[ed_jwk(&s.keys, "new")]));
    let new = s.keys.sign_with_kid(&c, Some("new"));
    // Within the rate limit of the fetch at start: not fetched again yet, and said so.
    let (status, body) = whoami(&s, &new).await;
    if status == StatusCode::UNAUTHORIZED {
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("fetched less than")),
            "{body}"
        );
    }
    tokio::time::sleep(min_refresh).await;
    assert_eq!(whoami(&s, &new).await.0, StatusCode::OK, "the rotated-in key, no restart");
    let (status, _) = whoami(&s, &sign(Algorithm::ES256, "old", &es256(), &c)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the retired key is gone");

    // A flood of made-up kids costs the provider at most one fetch per interval.
    let before = server.hits();
    for i in 0..30 {
        let token = s.keys.sign_with_kid(&c, Some(&format!("made-up-{i}")));
        assert_eq!(whoami(&s, &token).await.0, StatusCode::UNAUTHORIZED);
    }
    let fetched = server.hits() - before;
    assert!(fetched <= 1, "{fetched} fetches for 30 unknown kids within {min_refresh:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_good_keys_and_readyz_says_so() {
    let keys = TestKeys::generate();
    let server = KeyServer::start(jwks(&[ed_jwk(&keys, "k1")])).await;
    let min_refresh = Duration::from_millis(100);
    let s = server_with(keys, url_jwt(&server.url, min_refresh)).await;
    let c = claims("steady", None, None);
    let good = s.keys.sign_with_kid(&c, Some("k1"));
    let readyz = || async { s.http.get(s.url("/readyz")).send().await.expect("readyz") };
    let r = readyz().await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"status": "ok"}));

    for broken in
        [(StatusCode::INTERNAL_SERVER_ERROR, "oops".to_owned()), (StatusCode::OK, "{".to_owned())]
    {
        server.set(broken.0, broken.1);
        tokio::time::sleep(min_refresh).await;
        // An unknown kid makes the server try again; the fetch fails.
        let unknown = s.keys.sign_with_kid(&c, Some("k2"));
        assert_eq!(whoami(&s, &unknown).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(whoami(&s, &good).await.0, StatusCode::OK, "the last good keys stay");
        let r = readyz().await;
        assert_eq!(r.status(), StatusCode::OK, "still ready: tokens still verify");
        let body: Value = r.json().await.expect("json");
        let warning = body["warnings"][0].as_str().unwrap_or_default().to_owned();
        assert!(warning.contains(&server.url) && warning.contains("stay in use"), "{body}");
    }
    // Mended at the provider: the next refresh clears the warning.
    server.set(StatusCode::OK, jwks(&[ed_jwk(&s.keys, "k1")]));
    tokio::time::sleep(min_refresh).await;
    assert_eq!(whoami(&s, &s.keys.sign_with_kid(&c, Some("k3"))).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(readyz().await.json::<Value>().await.expect("json"), json!({"status": "ok"}));
}

async fn connect(config: kahn_http::ServerConfig) -> Result<AppState, ConfigError> {
    AppState::connect(Arc::new(MemoryBackend::new()), config).await
}

fn refused(result: Result<AppState, ConfigError>) -> String {
    match result {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

/// A loopback port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_fails_clearly_when_keys_or_the_provider_cannot_be_read() {
    kahn_http::install_crypto_provider();
    let keys = TestKeys::generate();
    let port = closed_port().await;
    let base = || test_config(&keys);
    let key_url = |url: &str| base().with_jwt(url_jwt(url, Duration::from_secs(5)));

    let message = refused(connect(key_url(&format!("http://127.0.0.1:{port}/jwks"))).await);
    assert!(
        message.starts_with("jwt.jwks_url: GET http://127.0.0.1:") && message.contains("failed"),
        "{message}"
    );
    let message = refused(connect(key_url("http://keys.example.com/jwks")).await);
    assert!(message.contains("plain http") && message.contains("loopback"), "{message}");
    let server = KeyServer::start("{\"keys\": 3}".into()).await;
    let message = refused(connect(key_url(&server.url)).await);
    assert!(message.contains("no \"keys\" array"), "{message}");
    server.set(StatusCode::OK, jwks(&[json!({"kty": "oct", "k": "c2VjcmV0"})]));
    let message = refused(connect(key_url(&server.url)).await);
    assert!(message.contains("no usable signing key"), "{message}");
    server.set(StatusCode::NOT_FOUND, "gone".into());
    let message = refused(connect(key_url(&server.url)).await);
    assert!(message.contains("404"), "{message}");
    // Without the network, keys by URL are refused, saying what to call instead.
    let message = match AppState::new(Arc::new(MemoryBackend::new()), key_url(&server.url)) {
        Ok(_) => panic!("started"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("AppState::connect"), "{message}");

    // The identity provider: unreachable, not a discovery document, another issuer.
    let oidc =
        |issuer: &str| base().with_oidc(OidcConfig::new(issuer, "kahn", "http://127.0.0.1:8080"));
    let message = refused(connect(oidc(&format!("http://127.0.0.1:{port}"))).await);
    assert!(
        message.starts_with("oidc.issuer: the provider's discovery document could not be read"),
        "{message}"
    );
    let doc = Arc::new(Mutex::new(String::from("<html>not json</html>")));
    let d = doc.clone();
    let app = Router::new().route(
        "/.well-known/openid-configuration",
        get(move || {
            let d = d.clone();
            async move { d.lock().expect("doc").clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let issuer = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let message = refused(connect(oidc(&issuer)).await);
    assert!(message.contains("is not an OpenID discovery document"), "{message}");
    *doc.lock().expect("doc") = json!({
        "issuer": "https://someone-else.example",
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
    })
    .to_string();
    let message = refused(connect(oidc(&issuer)).await);
    assert!(message.contains("names issuer \"https://someone-else.example\""), "{message}");
    *doc.lock().expect("doc") = json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("http://127.0.0.1:{port}/jwks"),
    })
    .to_string();
    let message = refused(connect(oidc(&issuer)).await);
    assert!(message.contains("the provider's keys"), "{message}");
    // A public URL that would need a Secure cookie over plain http.
    let config =
        base().with_oidc(OidcConfig::new(issuer.clone(), "kahn", "http://kahn.example.com"));
    let message = refused(connect(config).await);
    assert!(message.contains("must be https"), "{message}");
}

async fn preflight(s: &TestServer, origin: &str) -> reqwest::Response {
    s.http
        .request(reqwest::Method::OPTIONS, s.url("/v1/runs"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization, x-kahn-tenant")
        .send()
        .await
        .expect("preflight")
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_listed_origins_only_and_nothing_by_default() {
    let keys = TestKeys::generate();
    let config = test_config(&keys).with_cors_origin("https://kahn.host");
    let s = TestServer::start(Arc::new(MemoryBackend::new()), keys, config).await;
    let r = preflight(&s, "https://kahn.host").await;
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://kahn.host"));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    let allowed = header(&r, "access-control-allow-headers").unwrap_or_default().to_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("x-kahn-tenant"), "{allowed}");

    // A real read from the listed origin: its page may read the answer and the tenant headers.
    let token = s.admin_token();
    let r = s
        .http
        .get(s.url("/v1/whoami"))
        .header("origin", "https://kahn.host")
        .bearer_auth(&token)
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("https://kahn.host"));
    let exposed = header(&r, "access-control-expose-headers").unwrap_or_default().to_lowercase();
    assert!(exposed.contains("x-kahn-effective-tenant"), "{exposed}");

    // Another origin (a look-alike included) gets no grant.
    for other in
        ["https://evil.example", "https://kahn.host.evil.example", "http://kahn.host", "null"]
    {
        let r = preflight(&s, other).await;
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{other}");
    }

    // By default no origin is listed and no CORS header is ever sent.
    let plain = TestServer::memory().await;
    let r = preflight(&plain, "https://kahn.host").await;
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "access-control-allow-credentials"), None);

    // An origin list that is not origins refuses to start.
    for bad in ["*", "https://kahn.host/", "kahn.host"] {
        let config = test_config(&TestKeys::generate()).with_cors_origin(bad);
        let message = refused(connect(config).await);
        assert!(message.contains("cors_origins"), "{bad}: {message}");
    }
}
