//! Shared by the provider client tests: accounts pointed at a fake upstream.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::Provider;
use crate::providers::{
    ClientContext, DEFAULT_MAX_RESPONSE_BYTES, ProviderClient, ProviderConfig, ProviderSettings, UpstreamHttp,
    registration,
};

/// One account's settings of provider `S`, read from `fields` (TOML keys as in an
/// `[[accounts]]` entry), and its client context pointed at `base_url`. A `timeout` key is the
/// account's own (default 5 s); the other keys are the provider's.
pub fn account<S: ProviderSettings>(base_url: &str, fields: &str) -> (S, ClientContext) {
    let (keys, context) = keys_and_context(S::PROVIDER, base_url, fields);
    let settings = S::deserialize(keys).unwrap_or_else(|e| panic!("test account: {e}"));
    settings.check().unwrap_or_else(|e| panic!("test account: {e:?}"));
    (settings, context)
}

/// The client of an account of `provider`, as [`account`] reads it, through the registry.
pub fn client_of(provider: Provider, base_url: &str, fields: &str) -> Arc<dyn ProviderClient> {
    let (keys, context) = keys_and_context(provider, base_url, fields);
    let settings = ProviderConfig::read(provider, keys).unwrap_or_else(|e| panic!("test account: {e:?}"));
    settings.client(context)
}

fn keys_and_context(provider: Provider, base_url: &str, fields: &str) -> (serde_json::Value, ClientContext) {
    let mut keys: serde_json::Map<String, serde_json::Value> = config::Config::builder()
        .add_source(config::File::from_str(fields, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("test account: {e}"));
    let timeout = keys.remove("timeout").map_or(Duration::from_secs(5), |t| {
        humantime::parse_duration(t.as_str().expect("a timeout is text")).expect("a timeout is a duration")
    });
    let context = ClientContext {
        base_url: base_url.parse().expect("a test base URL is a URL"),
        utc_offset: registration(provider).expect("a registered provider").default_utc_offset,
        timeout,
        http: http(),
    };
    (serde_json::Value::Object(keys), context)
}

pub fn http() -> UpstreamHttp {
    UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES)
}
