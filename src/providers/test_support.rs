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
