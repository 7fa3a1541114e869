//! Shared by the provider client tests: accounts pointed at a fake upstream.

use std::time::Duration;

use crate::providers::{ClientContext, DEFAULT_MAX_RESPONSE_BYTES, ProviderSettings, UpstreamHttp, registration};

/// One account's settings of provider `S`, read from `fields` (TOML keys as in an
/// `[[accounts]]` entry), and its client context pointed at `base_url`. A `timeout` key is the
/// account's own (default 5 s); the other keys are the provider's.
pub fn account<S: ProviderSettings>(base_url: &str, fields: &str) -> (S, ClientContext) {
    let mut keys: serde_json::Map<String, serde_json::Value> = config::Config::builder()
        .add_source(config::File::from_str(fields, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("test account: {e}"));
    let timeout = keys.remove("timeout").map_or(Duration::from_secs(5), |t| {
        humantime::parse_duration(t.as_str().expect("a timeout is text")).expect("a timeout is a duration")
    });
    let settings = S::deserialize(serde_json::Value::Object(keys)).unwrap_or_else(|e| panic!("test account: {e}"));
    settings.check().unwrap_or_else(|e| panic!("test account: {e:?}"));
    let context = ClientContext {
        base_url: base_url.parse().expect("a test base URL is a URL"),
        utc_offset: registration(S::PROVIDER).expect("a registered provider").default_utc_offset,
        timeout,
        http: http(),
    };
    (settings, context)
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
