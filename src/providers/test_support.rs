//! Shared by the provider client tests: accounts pointed at a fake upstream.

use crate::config::{AccountConfig, from_toml};
use crate::providers::{DEFAULT_MAX_RESPONSE_BYTES, UpstreamHttp};

/// One account of `provider` with `fields` (credentials etc.), its base URL at `base_url`.
pub fn account(provider: &str, base_url: &str, fields: &str) -> AccountConfig {
    let toml = format!("[[accounts]]\nid = \"test\"\nprovider = \"{provider}\"\nbase_url = \"{base_url}\"\n{fields}\n");
    from_toml(&toml).unwrap_or_else(|e| panic!("test account: {e}")).accounts.remove(0)
}

pub fn http() -> UpstreamHttp {
    UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES)
}

/// A 401 and a 403 without any documented body, as a gateway in front of a provider sends
/// them: each must come out of `balance_error` as an auth failure carrying its status, whatever
/// order the client reads status and body in.
pub async fn bare_refusals_are_auth_failures<F, Fut>(balance_error: F)
where
    F: Fn(wiremock::ResponseTemplate) -> Fut,
    Fut: std::future::Future<Output = crate::providers::UpstreamError>,
{
    let refusals = [
        (401, wiremock::ResponseTemplate::new(401).set_body_raw("<html>Unauthorized</html>", "text/html")),
        (403, wiremock::ResponseTemplate::new(403)),
    ];
    for (status, response) in refusals {
        let e = balance_error(response).await;
        assert_eq!((e.kind, e.upstream_status), (crate::providers::UpstreamErrorKind::AuthFailed, Some(status)), "{e}");
    }
}
