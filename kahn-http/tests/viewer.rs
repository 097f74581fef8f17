//! The history viewer as served: `GET /` is the page with a strict CSP, every asset it names
//! (and every module those import) resolves with its content type, nothing points off-origin,
//! and the page's code has no way to write. The browser-level tests are viewer-tests/ (headless
//! Chromium against a real `kahn serve`).

mod support;

use std::collections::BTreeSet;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use support::TestServer;

/// The `/viewer/…` paths named by `attr="…"` in `html`.
fn referenced(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!("{attr}=\""))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|p| p.starts_with("/viewer/"))
        .map(str::to_owned)
        .collect()
}

/// The relative module specifiers imported by a JS file (`from './x.js'`).
fn imports(js: &str) -> Vec<String> {
    js.split("from '")
        .skip(1)
        .filter_map(|rest| rest.split('\'').next())
        .map(|p| format!("/viewer/{}", p.trim_start_matches("./")))
        .collect()
}

async fn get(s: &TestServer, path: &str) -> reqwest::Response {
    s.http.get(s.url(path)).send().await.expect("request")
}

fn header(r: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_csp_and_every_asset_resolves() {
    let s = TestServer::memory().await;
    let r = get(&s, "/").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, CONTENT_TYPE), "text/html; charset=utf-8");
    let csp = header(&r, CONTENT_SECURITY_POLICY);
    assert_eq!(csp, kahn_http::VIEWER_CSP);
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(header(&r, reqwest::header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    let html = r.text().await.expect("body");
    assert!(html.contains("<main"), "{html}");
    assert!(!html.contains("<script>") && !html.contains("style="), "no inline script or style");

    // Every file the page names, then every module those import, until nothing new appears.
    let mut todo: Vec<String> = referenced(&html, "src");
    todo.extend(referenced(&html, "href"));
    // The API reference at /docs: the same CSP, its own module.
    let docs = get(&s, "/docs").await;
    assert_eq!(docs.status(), StatusCode::OK);
    assert_eq!(header(&docs, CONTENT_SECURITY_POLICY), kahn_http::VIEWER_CSP);
    let docs = docs.text().await.expect("docs page");
    assert!(docs.contains("/viewer/docs.js"), "{docs}");
    todo.extend(referenced(&docs, "src"));
    assert!(todo.contains(&"/viewer/app.js".to_owned()), "{todo:?}");
    assert!(todo.contains(&"/viewer/viewer.css".to_owned()), "{todo:?}");
    let mut seen = BTreeSet::new();
    while let Some(path) = todo.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let r = get(&s, &path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&r, CONTENT_SECURITY_POLICY), kahn_http::VIEWER_CSP, "{path}");
        let ct = header(&r, CONTENT_TYPE);
        let body = r.text().await.expect("body");
        match path.rsplit('.').next() {
            Some("js") => {
                assert_eq!(ct, "text/javascript; charset=utf-8", "{path}");
                todo.extend(imports(&body));
                // Read-only by construction: the page's code names no writing method — but for
                // the one POST that ends a sign-in session (`/auth/logout`, which changes no
                // data), in api.js, beside that path.
                let mut code = body.to_string();
                if path.ends_with("/api.js") {
                    assert_eq!(code.matches("'POST'").count(), 1, "{path}: one POST, the logout");
                    let logout = code.find("'/auth/logout'").expect("api.js posts to /auth/logout");
                    let post = code.find("'POST'").expect("the logout's POST");
                    assert!(post.abs_diff(logout) < 300, "{path}: the POST is the logout's");
                    code = code.replacen("'POST'", "", 1);
                }
                for verb in ["'POST'", "'PUT'", "'PATCH'", "'DELETE'", "\"POST\"", "innerHTML"] {
                    assert!(!code.contains(verb), "{path} contains {verb}");
                }
            }
            Some("css") => assert_eq!(ct, "text/css; charset=utf-8", "{path}"),
            Some("svg") => assert_eq!(ct, "image/svg+xml", "{path}"),
            other => panic!("unexpected asset kind {other:?} for {path}"),
        }
        // No CDN, no external font: the only absolute URL allowed is the SVG namespace.
        let offsite = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !offsite.contains("http://") && !offsite.contains("https://"),
            "{path} points off-origin"
        );
        assert!(!body.contains("@import") && !body.contains("@font-face"), "{path}");
    }
    let served: BTreeSet<String> =
        kahn_http::viewer_asset_names().map(|n| format!("/viewer/{n}")).collect();
    assert_eq!(seen, served, "every embedded asset is used, and every used one is embedded");
}

#[tokio::test]
async fn unknown_assets_and_other_methods_answer_json_errors() {
    let s = TestServer::memory().await;
    let r = get(&s, "/viewer/nope.js").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(header(&r, CONTENT_TYPE).starts_with("application/json"));
    let r = get(&s, "/viewer/..%2fCargo.toml").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = s.http.post(s.url("/")).body("x").send().await.expect("request");
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    // The API itself is untouched by the viewer: still JSON, still authenticated.
    let r = get(&s, "/v1/runs").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}
