//! Fuzz target logic: the `Authorization` value through the JWT verifier (pinned EdDSA key,
//! issuer and audience). Nothing an attacker can send is accepted: the fuzzer has no private
//! key, so every input must be refused, and without a panic.

use std::sync::OnceLock;

use kahn_http::{JwtConfig, JwtKeySource, JwtVerifier};

const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA5wuNYqpjBQxwHx/RCFncjiyw3EUOxFzjp2oaIFqyTVA=
-----END PUBLIC KEY-----
";

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let config = JwtConfig::new(JwtKeySource::Pem(PUBLIC_PEM.to_owned()))
            .with_issuer("https://idp.test")
            .with_audience("kahn");
        JwtVerifier::from_config(&config).expect("a valid Ed25519 PEM")
    })
}

/// A runtime to drive `verify` (async, since keys by URL may be fetched again; a PEM key
/// never is, so nothing here waits on anything).
fn runtime() -> &'static tokio::runtime::Runtime {
    static R: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    R.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().build().expect("a current-thread runtime")
    })
}

pub(crate) fn run(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let token = token.strip_prefix("Bearer ").unwrap_or(token);
    let verdict = runtime().block_on(verifier().verify(token));
    assert!(verdict.is_err(), "accepted a token no one could sign: {token:?}");
}
