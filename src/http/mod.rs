//! The HTTP API: routes registered in one place (so the OpenAPI document cannot drift from
//! the code), the middleware stack, errors rendered as problem+json ([`error`]: one table of
//! codes, and the conversions from the service's refusals), and the wire types of the answers
//! ([`report`]: the `/balances` report, built from what the service found), and the connection
//! loop that serves them ([`serve()`]: header-read and idle timeouts, graceful shutdown). `http`
//! depends on `service`, never the other way.

mod auth;
pub mod balances;
mod body_cache;
pub mod callbacks;
pub mod csv;
pub mod daily;
pub mod dashboard;
pub mod error;
pub mod events;
mod layers;
pub mod monitors;
pub mod ops;
pub mod payouts;
mod query;
pub mod report;
mod serve;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{ApiKey, Settings};
use crate::service::Service;
use crate::store::MigrationGate;

pub use auth::digest_hex;
pub use error::{ApiError, ErrorCode, PROBLEM_JSON};
pub use serve::serve;

/// What every handler can reach: one reference-counted value, since axum clones the state for
/// every extraction.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub service: Arc<Service>,
    pub api_keys: Box<[ApiKey]>,
    pub metrics_require_auth: bool,
    pub metrics: PrometheusHandle,
    pub balances_body: balances::BodyCache,
    pub openapi: OpenApiDocs,
    pub migrations: Arc<MigrationGate>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(
        service: Arc<Service>,
        migrations: Arc<MigrationGate>,
        settings: &Settings,
        metrics: PrometheusHandle,
    ) -> Self {
        let auth = AuthPolicy { keys: !settings.auth.api_keys.is_empty(), metrics: settings.metrics.require_auth };
        ops::export_known_series(&service);
        if auth.keys && !auth.metrics {
            // A choice the operator may have made by default: say what it exposes.
            tracing::warn!(
                "metrics.require_auth is false: /metrics answers callers without a key, and its labels name every \
                 account id (which /openapi.json hides from them); keep this port on a private network for the \
                 scraper, or set metrics.require_auth = true"
            );
        }
        Self(Arc::new(Shared {
            openapi: OpenApiDocs::new(&service, auth),
            service,
            api_keys: settings.auth.api_keys.clone().into(),
            metrics_require_auth: settings.metrics.require_auth,
            metrics,
            balances_body: balances::BodyCache::default(),
            migrations,
        }))
    }
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
        (name = "payouts", description = "One normalized payout status across providers; the payouts tally knows and watches until final; provider callbacks and their receipts."),
        (name = "events", description = "The facts tally observed (balance changes, monitors crossing thresholds, payout transitions, account health), in a feed; the balance monitors and their states."),
        (name = "events", description = "The facts tally observed (balance changes, payout transitions, account health), in a feed."),
        (name = "webhooks", description = "Signed deliveries of events to configured receivers (Standard Webhooks), and their operation."),
        (name = "operations", description = "Health, readiness, accounts and metrics."),
    ),
    modifiers(&SecurityScheme),
    components(schemas(csv::Format)),
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
        .routes(routes!(daily::get_daily))
        .routes(routes!(payouts::get_payout))
        .routes(routes!(payouts::list_payouts))
        .routes(routes!(payouts::watch_payout))
        .routes(routes!(callbacks::receive_callback))
        .routes(routes!(callbacks::list_callbacks))
        .routes(routes!(events::get_events))
        .routes(routes!(events::get_event))
        .routes(routes!(monitors::get_monitors))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::list))
        .routes(routes!(webhooks::recover))
        .routes(routes!(webhooks::test))
        .routes(routes!(ops::accounts))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(dashboard::get_dashboard))
}

/// The OpenAPI document of the routes above, as `tally openapi` prints it: valid for any
/// instance (account ids as a pattern; the API key optional, as it is when none is configured).
pub fn openapi() -> serde_json::Value {
    document(&Instance::default())
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

/// What one running instance adds to the generic document: its account ids as enums (so
/// clients and contract testers know the valid values) and whether the API key is required.
#[derive(Default)]
struct Instance {
    account_ids: Vec<String>,
    payout_account_ids: Vec<String>,
    auth: AuthPolicy,
}

/// Which operations need the API key on an instance.
#[derive(Clone, Copy, Default)]
struct AuthPolicy {
    /// Keys are configured: the data routes need one.
    keys: bool,
    /// `/metrics` needs one too (`metrics.require_auth`).
    metrics: bool,
}

impl AuthPolicy {
    /// The rule the auth middleware applies, for the document.
    fn required(self, path: &str) -> bool {
        self.keys && !auth::is_open(path, self.metrics)
    }
}

impl Instance {
    fn of(service: &Service, auth: AuthPolicy) -> Self {
        let ids = |payouts_only: bool| -> Vec<String> {
            let accounts = service.accounts().iter();
            accounts.filter(|a| !payouts_only || a.capabilities().payouts).map(|a| a.id().to_string()).collect()
        };
        Self { account_ids: ids(false), payout_account_ids: ids(true), auth }
    }
}

/// The documents `GET /openapi.json` serves. The page at `/docs` loads it without a key, so
/// it is open; only callers allowed to read the data (or every caller, when no key is
/// configured) see this instance's account ids.
pub struct OpenApiDocs {
    generic: bytes::Bytes,
    instance: bytes::Bytes,
}

impl OpenApiDocs {
    fn new(service: &Service, auth: AuthPolicy) -> Self {
        let bytes =
            |doc: serde_json::Value| bytes::Bytes::from(serde_json::to_vec(&doc).expect("a document serializes"));
        let generic = Instance { auth, ..Instance::default() };
        Self { generic: bytes(document(&generic)), instance: bytes(document(&Instance::of(service, auth))) }
    }
}

async fn openapi_json(
    axum::extract::State(state): axum::extract::State<AppState>,
    caller: Option<axum::Extension<auth::Authenticated>>,
) -> impl axum::response::IntoResponse {
    let trusted = state.api_keys.is_empty() || caller.is_some();
    let body = if trusted { state.openapi.instance.clone() } else { state.openapi.generic.clone() };
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
}

/// The generated document refined with what annotations cannot say once for every route.
fn document(instance: &Instance) -> serde_json::Value {
    let mut doc = api().split_for_parts().1;
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut value = serde_json::to_value(&doc).expect("an OpenAPI document serializes");
    constrain_parameters(&mut value, instance);
    add_shared_responses(&mut value, instance);
    value["components"]["schemas"]["Problem"]["properties"]["code"]["enum"] =
        ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    value
}

/// Constraints shared by every route's parameters of one name, stated once here rather than
/// in each annotation: what tally accepts, so that every request valid under the document is
/// one tally answers without a 400.
fn constrain_parameters(value: &mut serde_json::Value, instance: &Instance) {
    use serde_json::{Value, json};
    let account = |ids: &[String]| {
        if ids.is_empty() {
            json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"})
        } else {
            json!({"type": "string", "enum": ids})
        }
    };
    let payout_account = account(&instance.payout_account_ids);
    // A time zone of /balances/daily: an IANA name tally knows, or an offset.
    let tz = json!({"anyOf": [
        {"type": "string", "enum": chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name()).collect::<Vec<_>>()},
        {"type": "string", "pattern": "^[+-]([01][0-9]|2[0-3]):[0-5][0-9]$"},
    ]});
    let constraints: [(&str, Value); 10] = [
        ("tz", tz),
        ("account", account(&instance.account_ids)),
        ("type", json!({"type": "string", "enum": crate::domain::event::EVENT_TYPES})),
        // Event ids as tally writes them, at most 18 significant digits (within i64).
        ("after", json!({"type": "string", "pattern": "^evt_0*[0-9]{1,18}$"})),
        ("currency", json!({"type": "string", "pattern": "^[A-Za-z0-9]{2,12}$"})),
        ("include", json!({"type": "string", "enum": ["raw"]})),
        ("max_age", json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX})),
        ("id", json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": payouts::id_pattern()})),
        // A webhook's id as `[[webhooks]]` allows it (POST /events/{id}/redeliver?webhook=).
        ("webhook", json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"})),
        ("since", json!({"type": "string", "format": "date-time"})),
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
}

/// Answers the middleware stack can give on any route (the deadline backstop, the body limit,
/// a caught panic), described once under `components/responses`, and the security each
/// operation has on this instance.
fn add_shared_responses(value: &mut serde_json::Value, instance: &Instance) {
    use serde_json::{Value, json};
    let shared = [
        ("408", "RequestTimeout", ErrorCode::RequestTimeout, "The request outlived the server's backstop timeout"),
        ("413", "PayloadTooLarge", ErrorCode::PayloadTooLarge, "The request body is larger than the server accepts"),
        ("500", "InternalError", ErrorCode::Internal, "An unexpected failure inside tally (logged; no details here)"),
    ];
    for (_, name, code, description) in &shared {
        value["components"]["responses"][*name] = json!({
            "description": format!("{description}: `{}`.", code.as_str()),
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        });
    }
    let paths = value["paths"].as_object_mut().into_iter().flat_map(|paths| paths.iter_mut());
    for (path, item) in paths {
        for op in item.as_object_mut().into_iter().flat_map(|ops| ops.values_mut()) {
            if let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) {
                for (status, name, ..) in &shared {
                    let reference = json!({"$ref": format!("#/components/responses/{name}")});
                    responses.entry(*status).or_insert(reference);
                }
            }
            // Annotated as `bearer` or none: where this instance requires the key, it is required.
            if instance.auth.required(path) && op.get("security").is_some() {
                op["security"] = json!([{"bearer": []}]);
            }
        }
    }
}

/// The whole application router, as production serves it and tests drive it.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let (routes, _) = api().split_for_parts();
    // No validator badge: by default the page sends the document to validator.swagger.io.
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::from("/openapi.json").validator_url("none"));
    let mut routes = routes
        .route("/openapi.json", axum::routing::get(openapi_json))
        .merge(docs)
        .merge(dashboard::assets())
        .fallback(|| async { ApiError::new(ErrorCode::RouteNotFound, "no such route") });
    // Without keys every caller is anonymous: no layer to pass through on every request.
    if !state.api_keys.is_empty() {
        routes = routes.layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_key));
    }
    let documented = api().split_for_parts().1.paths.paths.into_keys();
    layers::wrap(routes.with_state(state), &settings.server, documented)
}
