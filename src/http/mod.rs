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
    pub balances_body: Arc<balances::BodyCache>,
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

/// The OpenAPI document of the routes above, as `tally openapi` prints it.
pub fn openapi() -> serde_json::Value {
    let mut doc = api().split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    refine(doc, &[], &[])
}

/// [`openapi`] as pretty JSON or YAML, newline-terminated (what `openapi.yaml` holds).
pub fn openapi_text(yaml: bool) -> String {
    let doc = openapi();
    let mut text = if yaml {
        yaml_serde::to_string(&doc).expect("a JSON document is valid YAML")
    } else {
        serde_json::to_string_pretty(&doc).expect("a JSON document serializes")
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The document this instance serves at `/openapi.json`: `account` parameters list the
/// configured account ids (for payouts, those that can look payouts up), so clients and
/// contract testers know which values are valid.
fn openapi_for(service: &Service) -> serde_json::Value {
    let ids = |payouts_only: bool| -> Vec<String> {
        service
            .accounts()
            .iter()
            .filter(|a| !payouts_only || a.capabilities().payouts)
            .map(|a| a.id().to_string())
            .collect()
    };
    let mut doc = api().split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    refine(doc, &ids(false), &ids(true))
}

/// Constraints shared by every route's parameters of one name, stated once here rather than
/// in each annotation: what tally accepts, so that every request valid under the document is
/// one tally answers without a 400.
fn refine(doc: utoipa::openapi::OpenApi, account_ids: &[String], payout_account_ids: &[String]) -> serde_json::Value {
    use serde_json::{Value, json};
    let mut value = serde_json::to_value(&doc).expect("an OpenAPI document serializes");
    let account = |ids: &[String]| {
        if ids.is_empty() {
            json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"})
        } else {
            json!({"type": "string", "enum": ids})
        }
    };
    let payout_account = account(payout_account_ids);
    let constraints: [(&str, Value); 5] = [
        ("account", account(account_ids)),
        ("currency", json!({"type": "string", "pattern": "^[A-Za-z0-9]{2,12}$"})),
        ("include", json!({"type": "string", "enum": ["raw"]})),
        ("max_age", json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})),
        (
            "id",
            json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]+$"}),
        ),
    ];
    let paths = value["paths"].as_object_mut().into_iter().flat_map(|paths| paths.iter_mut());
    for (path, item) in paths {
        let is_payouts = path.starts_with("/payouts");
        let params = item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut());
        for param in params.flat_map(|op| op.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten())
        {
            let Some((name, schema)) = constraints.iter().find(|(name, _)| param["name"] == *name) else { continue };
            let schema = if is_payouts && *name == "account" { &payout_account } else { schema };
            let target = match param["schema"]["type"].as_str() {
                Some("array") => &mut param["schema"]["items"],
                _ => &mut param["schema"],
            };
            *target = schema.clone();
        }
    }
    value
}

/// The whole application router, as production serves it and tests drive it.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let (routes, _) = api().split_for_parts();
    let docs =
        utoipa_swagger_ui::SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", openapi_for(&state.service));
    let routes = routes
        .merge(docs)
        .fallback(|| async { ApiError::new(ErrorCode::RouteNotFound, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    layers::wrap(routes.with_state(state), &settings.server)
}
