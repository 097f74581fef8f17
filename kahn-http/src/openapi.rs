//! The OpenAPI 3 document, generated from the handlers' annotations and the wire types.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::wire;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.description = Some(
            "An API key (`kahn_live_sk_…`) or a JWT (EdDSA, ES256 or RS256) with `exp` and claims \
             `sub`, `email`, `name`, `role`, `nonce`, `org_id`?; reads also take the sign-in \
             session cookie `kahn_session`"
                .into(),
        );
        components.add_security_scheme("bearer", SecurityScheme::Http(http));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KAHN",
        description = "Tamper-evident, idempotent, multi-tenant storage for orchestrator run histories.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    servers((url = "/", description = "The server that serves this document")),
    paths(
        crate::ingest::ingest,
        crate::reads::list_runs,
        crate::reads::get_run,
        crate::reads::read_transitions,
        crate::reads::whoami,
        crate::reads::admin_tenants,
        crate::reads::receipt_key,
        crate::reads::run_receipt,
        crate::checkpoints::log,
        crate::checkpoints::create,
        crate::checkpoints::run_proof,
        crate::checkpoints::consistency,
        crate::reads::healthz,
        crate::reads::readyz,
        crate::reads::metrics,
        crate::reads::openapi,
        crate::oidc::config,
    ),
    components(schemas(
        wire::ErrorBody,
        wire::RunView,
        wire::RunsPage,
        wire::RunDetail,
        wire::TransitionView,
        wire::TransitionsPage,
        wire::RunAppendView,
        wire::IngestReport,
        wire::PrincipalView,
        wire::WhoAmI,
        wire::TenantView,
        wire::TenantsList,
        wire::Health,
        wire::EnvelopeView,
        wire::EnvelopeSignatureView,
        wire::ReceiptKeyView,
        wire::CheckpointView,
        wire::CheckpointLogView,
        wire::RunProofView,
        wire::ConsistencyView,
        crate::oidc::AuthConfig,
        crate::oidc::OidcView,
    )),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// The server's OpenAPI 3 document.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
