//! The HTTP API: routes registered in one place (so the OpenAPI document cannot drift from
//! the code), the middleware stack, and errors rendered as problem+json.

mod auth;
pub mod balances;
pub mod error;
mod layers;
pub mod ops;
pub mod payouts;
mod query;

use std::sync::Arc;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{ApiKey, Settings};
use crate::service::Service;

pub use auth::digest_hex;
pub use error::{ApiError, ErrorCode};

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub api_keys: Arc<[ApiKey]>,
    pub metrics_require_auth: bool,
    pub metrics: PrometheusHandle,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tally",
        description = "How much money is held at each payment provider, and what happened to each payout, \
                       normalized into one exact-decimal JSON shape.\n\n\
                       Amounts are JSON strings holding plain decimals with the provider's scale. \
                       Errors are RFC 9457 `application/problem+json` documents with a stable snake_case `code`.",
        license(name = "MIT", identifier = "MIT"),
    ),
    servers((url = "/", description = "This tally instance")),
    tags(
        (name = "balances", description = "Balances across providers, with freshness."),
        (name = "payouts", description = "One normalized payout status across providers."),
        (name = "operations", description = "Health, readiness, accounts and metrics."),
    ),
    modifiers(&SecurityScheme),
)]
struct ApiDoc;

struct SecurityScheme;

impl utoipa::Modify for SecurityScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key whose SHA-256 digest is listed in `auth.api_keys`."))
                    .build(),
            ),
        );
    }
}

/// Every API route, with its OpenAPI description.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(balances::get_balances))
        .routes(routes!(balances::get_history))
        .routes(routes!(payouts::get_payout))
        .routes(routes!(ops::accounts))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
}

/// The OpenAPI document of the routes above, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// The whole application router, as production serves it and tests drive it.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let (routes, _) = api().split_for_parts();
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi());
    let routes = routes
        .merge(docs)
        .fallback(|| async { ApiError::new(ErrorCode::RouteNotFound, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    layers::wrap(routes.with_state(state), &settings.server)
}
