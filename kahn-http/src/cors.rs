//! Cross-origin access for a viewer hosted on another origin (`kahn.host` calling
//! `api.kahn.host`): an explicit allow-list of origins, credentials (the session cookie)
//! for those origins only, and preflights cached for ten minutes. With no origin listed
//! there is no CORS layer at all: no `Access-Control-*` header is ever sent.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::ConfigError;
use crate::{HEADER_EFFECTIVE_TENANT, HEADER_TENANT, HEADER_TENANT_SOURCE};

/// How long a browser may cache a preflight.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The layer for `origins`, `None` when there are none.
///
/// # Errors
/// [`ConfigError::Invalid`] for an origin that is not exactly `scheme://host[:port]` (a
/// path, a trailing slash, `*`, `null` or another scheme than http/https).
pub(crate) fn layer(origins: &[String]) -> Result<Option<CorsLayer>, ConfigError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let mut allowed = Vec::with_capacity(origins.len());
    for origin in origins {
        allowed.push(origin_value(origin)?);
    }
    Ok(Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(allowed))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::HEAD, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                HeaderName::from_static(HEADER_TENANT),
                HeaderName::from_static(crate::metrics::REQUEST_ID),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                HeaderName::from_static(HEADER_EFFECTIVE_TENANT),
                HeaderName::from_static(HEADER_TENANT_SOURCE),
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static(crate::metrics::REQUEST_ID),
            ])
            .max_age(PREFLIGHT_MAX_AGE),
    ))
}

/// An origin as browsers send it: `scheme://host[:port]`, lowercase scheme and host.
fn origin_value(origin: &str) -> Result<HeaderValue, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid {
        setting: "cors_origins",
        message: format!("{origin:?} {why}; write an origin as scheme://host[:port]"),
    };
    let url = url::Url::parse(origin).map_err(|_| invalid("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("is not http or https"));
    }
    let serialized = url.origin().ascii_serialization();
    if serialized != origin {
        return Err(invalid(&format!("is not an origin (it would be {serialized:?})")));
    }
    HeaderValue::from_str(origin).map_err(|_| invalid("is not a header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_exact() {
        for good in ["https://kahn.host", "http://127.0.0.1:8080", "https://a.b.example:8443"] {
            assert!(origin_value(good).is_ok(), "{good}");
        }
        for bad in [
            "*",
            "null",
            "https://kahn.host/",
            "https://kahn.host/app",
            "kahn.host",
            "ftp://kahn.host",
            "HTTPS://KAHN.host",
            "https://kahn.host:443",
        ] {
            assert!(origin_value(bad).is_err(), "{bad}");
        }
    }
}
