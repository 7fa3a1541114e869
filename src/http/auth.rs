//! Caller authentication: `Authorization: Bearer <key>` checked against the SHA-256 digests of
//! `auth.api_keys`, in constant time. The key's configured name (never the key) is recorded in
//! the request span.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, ErrorCode};
use crate::config::ApiKey;

/// Probes: open to anyone, and never shed, so an orchestrator can always ask.
pub(super) const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// Marks a request that presented a configured key (its name is in the request's span).
#[derive(Clone, Copy, Debug)]
pub struct Authenticated;

/// Routes that hold no data: the probes, the API description and its page (which loads the
/// description without a key), and the metrics unless `metrics.require_auth`.
pub(super) fn is_open(path: &str, metrics_require_auth: bool) -> bool {
    PROBES.contains(&path)
        || path == "/openapi.json"
        || path == "/docs"
        || path.starts_with("/docs/")
        || (path == "/metrics" && !metrics_require_auth)
}

/// Only layered when keys are configured.
pub async fn require_key(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    // A key presented on an open route still names the caller (and lets `/openapi.json`
    // show this instance's accounts).
    let presented = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer);
    match presented.and_then(|key| caller(&state.api_keys, key)) {
        Some(name) => {
            tracing::Span::current().record("caller", name);
            request.extensions_mut().insert(Authenticated);
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

/// The name of the configured key whose digest matches, comparing every digest in constant
/// time so timing reveals neither which key nor how much of it matched.
pub fn caller<'a>(keys: &'a [ApiKey], presented: &str) -> Option<&'a str> {
    let digest = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for key in keys {
        if bool::from(key.sha256.as_slice().ct_eq(digest.as_slice())) {
            found = Some(key.name.as_str());
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
        let keys = vec![ApiKey { name: "grafana".into(), sha256 }];
        assert_eq!(caller(&keys, "s3cret"), Some("grafana"));
        assert_eq!(bearer("Bearer s3cret").and_then(|k| caller(&keys, k)), Some("grafana"));
        assert_eq!(bearer("bearer  s3cret "), Some("s3cret"), "the scheme is case-insensitive");
        assert_eq!(bearer("Basic s3cret"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(caller(&keys, "s3cre"), None);
        assert_eq!(caller(&keys, ""), None);
    }
}
