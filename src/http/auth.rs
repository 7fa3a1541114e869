//! Caller authentication: `Authorization: Bearer <key>` checked against the SHA-256 digests of
//! `auth.api_keys`, in constant time. The key's configured name (never the key) is recorded in
//! the request span.
//!
//! Each key has a role (SPEC §5): `read` by default, or `operate`. A handler of an action
//! (redeliver, recover, test a webhook) takes the [`Operate`] extractor, which answers
//! `403 forbidden` to a `read` key; with no keys configured every route is open to the caller
//! (tally then serves on loopback only, or as the operator allowed).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::config::{ApiKey, Role};

/// Probes: open to anyone, and never shed, so an orchestrator can always ask.
pub(super) const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// Marks a request that presented a configured key (its name is in the request's span), with
/// the key's role.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated {
    pub role: Role,
}

/// Taken by the handlers of actions (SPEC §8.4): lets through a key with the `operate` role,
/// or any caller when no keys are configured; answers `403 forbidden` to a `read` key.
#[derive(Clone, Copy, Debug)]
pub struct Operate;

impl FromRequestParts<AppState> for Operate {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.api_keys.is_empty() {
            return Ok(Self);
        }
        match parts.extensions.get::<Authenticated>() {
            Some(Authenticated { role: Role::Operate }) => Ok(Self),
            // Keys are configured, so `require_key` let the request through with one; a route
            // that is open without a key never takes this extractor.
            _ => Err(ApiError::new(ErrorCode::Forbidden, "this action needs an API key with the `operate` role")),
        }
    }
}

/// Routes that hold no data: the probes, the API description and its page (which loads the
/// description without a key), the dashboard page and its assets (the page asks for a key and
/// sends it to the data routes), and the metrics unless `metrics.require_auth`.
pub(super) fn is_open(path: &str, metrics_require_auth: bool) -> bool {
    PROBES.contains(&path)
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
        || path == "/dashboard"
        || path.starts_with("/dashboard/")
        || (path == "/metrics" && !metrics_require_auth)
        // Providers cannot send a key: each one's own verification stands in for it (SPEC §5).
        || path.starts_with("/callbacks/")
}

/// Only layered when keys are configured.
pub async fn require_key(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // A key presented on an open route still names the caller (and lets `/openapi.json`
    // show this instance's accounts).
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match presented.and_then(|key| caller(&state.api_keys, key)) {
        Some(key) => {
            tracing::Span::current().record("caller", key.name.as_str());
            request.extensions_mut().insert(Authenticated { role: key.role });
            next.run(request).await
        }
        None if is_open(request.uri().path(), state.metrics_require_auth) => next.run(request).await,
        None => ApiError::new(ErrorCode::Unauthorized, "a valid API key is required: `Authorization: Bearer <key>`")
            .into_response(),
    }
}

/// The credentials of an `Authorization: Bearer <key>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim()).filter(|k| !k.is_empty())
}

/// The configured key whose digest matches, comparing every digest in constant time so timing
/// reveals neither which key nor how much of it matched.
pub fn caller<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a ApiKey> {
    let digest = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for key in keys {
        if bool::from(key.sha256.as_slice().ct_eq(digest.as_slice())) {
            found = Some(key);
        }
    }
    found
}

/// The hex SHA-256 digest of a key, as `auth.api_keys[].sha256` holds it.
pub fn digest_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_key_whose_digest_is_configured() {
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(digest_hex("s3cret"), &mut sha256).unwrap();
        let keys = vec![ApiKey { name: "grafana".into(), sha256, role: Role::Read }];
        let name = |key: Option<&ApiKey>| key.map(|k| k.name.clone());
        assert_eq!(name(caller(&keys, "s3cret")).as_deref(), Some("grafana"));
        assert_eq!(name(bearer("Bearer s3cret").and_then(|k| caller(&keys, k))).as_deref(), Some("grafana"));
        assert_eq!(bearer("bearer  s3cret "), Some("s3cret"), "the scheme is case-insensitive");
        assert_eq!(bearer("Basic s3cret"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(caller(&keys, "s3cre").is_none());
        assert!(caller(&keys, "").is_none());
    }
}
