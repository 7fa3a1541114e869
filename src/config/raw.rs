//! The config file exactly as written (SPEC §6), before validation. Unknown keys are errors,
//! so a typo never silently falls back to a default.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub auth: RawAuth,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub accounts: Vec<RawAccount>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub request_timeout: Option<String>,
    pub max_concurrent_fetches: Option<usize>,
    pub max_concurrent_requests: Option<usize>,
    pub body_limit_bytes: Option<usize>,
    pub shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

/// Per-account settings; every one may be overridden in an `[[accounts]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub ttl: Option<String>,
    pub timeout: Option<String>,
    pub refresh_interval: Option<String>,
    pub max_retries: Option<u32>,
    pub retry_base_delay: Option<String>,
    pub circuit_failure_threshold: Option<u32>,
    pub circuit_cooldown: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default)]
    pub api_keys: Vec<RawApiKey>,
    #[serde(default)]
    pub allow_anonymous: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    pub require_auth: bool,
}

/// One `[[accounts]]` entry. Credential fields are per provider; validation rejects a field
/// that does not belong to the account's provider.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccount {
    pub id: Option<String>,
    pub provider: Option<String>,
    pub base_url: Option<String>,
    pub utc_offset: Option<String>,
    // overrides of [defaults]
    pub ttl: Option<String>,
    pub timeout: Option<String>,
    pub refresh_interval: Option<String>,
    pub max_retries: Option<u32>,
    pub retry_base_delay: Option<String>,
    pub circuit_failure_threshold: Option<u32>,
    pub circuit_cooldown: Option<String>,
    // leanx
    pub auth_token: Option<String>,
    pub currency: Option<String>,
    // luxtak
    pub app_id: Option<String>,
    pub app_key: Option<String>,
    // ibanera
    pub username: Option<String>,
    pub password: Option<String>,
    pub totp_secret: Option<String>,
    pub page_size: Option<u32>,
    // yedpay
    pub access_token: Option<String>,
    pub company_id: Option<String>,
    pub currencies: Option<Vec<String>>,
}
