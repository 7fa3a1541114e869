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

/// Routes anyone may call: probes must work without credentials.
pub(super) const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open = OPEN_PATHS.contains(&path) || (path == "/metrics" && !state.metrics_require_auth);
    if state.api_keys.is_empty() || open {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented.and_then(|key| caller(&state.api_keys, key)) {
        Some(name) => {
            tracing::Span::current().record("caller", name);
            next.run(request).await
        }
        None => ApiError::new(ErrorCode::Unauthorized, "a valid API key is required: `Authorization: Bearer <key>`")
            .into_response(),
    }
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
        assert_eq!(caller(&keys, "s3cre"), None);
        assert_eq!(caller(&keys, ""), None);
    }
}
