//! Fuzz target logic: the whole ingest request path in-process (router, auth, content-type
//! and encoding checks, streamed line parsing, one append into a `MemoryBackend`), no network.
//! The first input byte picks the headers, the rest is the body. Never a 5xx, never a panic;
//! a refused request writes nothing.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kahn_core::{MemoryBackend, NewTenant, StorageBackend, StorageBackendExt};
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    backend: Arc<MemoryBackend>,
    router: axum::Router,
    key: String,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let backend = Arc::new(MemoryBackend::new());
        let key = rt.block_on(async {
            let t =
                backend.provision_tenant(&NewTenant::new("fuzz").expect("name")).await.expect("t");
            backend.issue_api_key(t.id).await.expect("key").secret.expose_secret().to_owned()
        });
        let config = kahn_http::ServerConfig::default()
            .with_retention_interval(None)
            .with_ingest_rate(std::num::NonZeroU32::new(u32::MAX).expect("non-zero"))
            .with_body_limit(64 * 1024);
        let state = kahn_http::AppState::new(backend.clone(), config).expect("state");
        World { rt, backend, router: kahn_http::router(state), key }
    })
}

async fn stored(b: &MemoryBackend) -> u64 {
    let mut n = 0;
    for t in b.list_tenants().await.expect("tenants") {
        n += t.run_count;
    }
    n
}

pub(crate) fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else { return };
    let w = world();
    let ctype = [
        "application/x-ndjson",
        "application/json",
        "application/x-ndjson; charset=utf-8",
        "text/plain",
    ][usize::from(selector & 3)];
    let mut req = Request::post("/v1/ingest/transitions").header("content-type", ctype);
    req = match (selector >> 2) & 3 {
        0 => req.header("authorization", format!("Bearer {}", w.key)),
        1 => req.header("authorization", format!("Bearer {}x", w.key)),
        2 => req.header("authorization", "Bearer kahn_live_sk_").header("x-kahn-tenant", "x"),
        _ => req
            .header("authorization", format!("Bearer {}", w.key))
            .header("content-encoding", "gzip"),
    };
    let req = req.body(Body::from(body.to_vec())).expect("request");
    // One request at a time: fuzz_props drives this target from two proptest tests on parallel
    // threads sharing the world, and the other's successful write must not be counted as this
    // refused request's.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    w.rt.block_on(async {
        let before = stored(&w.backend).await;
        let status = w.router.clone().oneshot(req).await.expect("infallible").status();
        assert!(!status.is_server_error(), "{status} for {body:?}");
        if status != StatusCode::OK {
            assert_eq!(stored(&w.backend).await, before, "a refused request wrote");
        }
    });
}
