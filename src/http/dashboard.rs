//! `GET /dashboard` (SPEC §11): one page for the finance team, and its script, style and icon,
//! all embedded in the binary. The page reads tally's own JSON API from the browser; its
//! Content-Security-Policy lets it load and call nothing but this origin (no CDN, no font, no
//! inline script), so it works offline and no request leaves tally. Open without a key: the
//! page asks for one and the data routes check it.

use axum::http::{HeaderName, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const ICON: &str = include_str!("dashboard/icon.svg");

/// Only this origin, for everything; no inline script or style; no form posts, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; \
                       form-action 'none'; frame-ancestors 'none'";

/// The assets besides the page, as routes: `(path, content type, body)`.
pub const ASSETS: [(&str, &str, &str); 3] = [
    ("/dashboard/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/dashboard/app.css", "text/css; charset=utf-8", APP_CSS),
    ("/dashboard/icon.svg", "image/svg+xml", ICON),
];

/// An embedded file with the page's security headers. `no-cache`: the browser revalidates,
/// so a new tally version's page is used at once.
pub fn embedded(content_type: &'static str, body: &'static str) -> Response {
    let headers: [(HeaderName, &str); 6] = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, body).into_response()
}

/// The finance team's page: cash per currency (and the converted total with `[reporting]`),
/// each account's status, age and error, firing monitors, payouts not yet final and a 30-day
/// chart per currency, refreshed every 5 seconds. Open; when keys are configured it asks for
/// one and keeps it for the browser tab.
#[utoipa::path(get, path = "/dashboard", tag = "operations",
    responses((status = 200, description = "The dashboard page (HTML); its script and style are under `/dashboard/`.",
        body = String, content_type = "text/html")))]
pub async fn get_dashboard() -> Response {
    embedded("text/html; charset=utf-8", INDEX)
}

/// Routes for [`ASSETS`] (not in the API document, like the assets of `/docs`).
pub fn assets<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    ASSETS.iter().fold(axum::Router::new(), |router, &(path, content_type, body)| {
        router.route(path, axum::routing::get(move || async move { embedded(content_type, body) }))
    })
}
