//! The history viewer: a small read-only web page served at `/`, its assets under
//! `/viewer/`. Plain HTML, CSS and ES modules embedded in the binary (no build step, no CDN,
//! no external font); the page talks only to the public read API with the credential the user
//! pastes, kept in `sessionStorage`.
//!
//! Every response carries a strict Content-Security-Policy (`default-src 'self'`, no inline
//! script or style, no framing, no form posts), `X-Content-Type-Options: nosniff` and
//! `Referrer-Policy: no-referrer`.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The Content-Security-Policy of every viewer response: same-origin scripts, styles and API
/// calls only; no inline code, plugins, framing, `<base>` or form submission.
pub const VIEWER_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'none'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The page itself, served at `/`.
const INDEX: Asset =
    Asset { name: "index.html", content_type: HTML, body: include_bytes!("../viewer/index.html") };

/// Everything under `/viewer/`.
const ASSETS: &[Asset] = &[
    Asset { name: "viewer.css", content_type: CSS, body: include_bytes!("../viewer/viewer.css") },
    Asset { name: "app.js", content_type: JS, body: include_bytes!("../viewer/app.js") },
    Asset { name: "api.js", content_type: JS, body: include_bytes!("../viewer/api.js") },
    Asset { name: "dom.js", content_type: JS, body: include_bytes!("../viewer/dom.js") },
    Asset { name: "graph.js", content_type: JS, body: include_bytes!("../viewer/graph.js") },
    Asset { name: "gantt.js", content_type: JS, body: include_bytes!("../viewer/gantt.js") },
    Asset { name: "verify.js", content_type: JS, body: include_bytes!("../viewer/verify.js") },
    Asset { name: "docs.js", content_type: JS, body: include_bytes!("../viewer/docs.js") },
    Asset { name: "favicon.svg", content_type: SVG, body: include_bytes!("../viewer/favicon.svg") },
];

/// The names of the embedded assets served under `/viewer/` (for tests and docs).
pub fn viewer_asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|a| a.name)
}

fn respond(asset: &Asset) -> Response {
    let mut r = (StatusCode::OK, asset.body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(VIEWER_CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Assets change with the binary, never under it: revalidate rather than cache blindly.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The API reference page, served at `/docs`: this server's `/openapi.json`, rendered.
const DOCS: Asset =
    Asset { name: "docs.html", content_type: HTML, body: include_bytes!("../viewer/docs.html") };

/// `GET /docs`: the API reference.
pub(crate) async fn docs() -> Response {
    respond(&DOCS)
}

/// `GET /`: the viewer page.
pub(crate) async fn index() -> Response {
    respond(&INDEX)
}

/// `GET /viewer/{file}`: one embedded asset, or the JSON 404 every unknown path gets.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => respond(a),
        None => ApiError::no_route(&format!("/viewer/{name}")).into_response(),
    }
}
