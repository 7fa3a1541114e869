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
    pub events: RawEvents,
    #[serde(default)]
    pub payouts: RawPayouts,
    #[serde(default)]
    pub accounts: Vec<RawAccount>,
    #[serde(default)]
    pub monitors: Vec<RawMonitor>,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    pub reporting: Option<RawReporting>,
}

/// `[reporting]` (SPEC §10.4). Rates are taken only as strings: a TOML number would already
/// have passed through a float.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReporting {
    pub currency: Option<String>,
    pub scale: Option<u32>,
    pub max_rate_age: Option<String>,
    #[serde(default)]
    pub rates: Vec<RawRate>,
    pub rates_file: Option<String>,
}

/// One `[reporting] rates` item.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub currency: Option<String>,
    #[serde(default, deserialize_with = "exact_amount")]
    pub rate: Option<String>,
    pub as_of: Option<String>,
}

/// One `[[monitors]]` entry (SPEC §8.2). Amounts are taken only as strings: a TOML number
/// would already have passed through a float.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMonitor {
    pub id: Option<String>,
    pub account: Option<String>,
    pub provider: Option<String>,
    pub wallet: Option<String>,
    pub currency: Option<String>,
    pub field: Option<String>,
    #[serde(default, deserialize_with = "exact_amount")]
    pub below: Option<String>,
    #[serde(default, deserialize_with = "exact_amount")]
    pub above: Option<String>,
    #[serde(default, deserialize_with = "exact_amount")]
    pub clear: Option<String>,
}

/// An amount written as a string (`"500.00"`); a number is refused, never rounded.
fn exact_amount<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an exact decimal amount written as a string, like \"500.00\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
    }
    d.deserialize_any(Text)
}

/// One `[[webhooks]]` entry (SPEC §8.3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub id: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub events: Option<Vec<String>>,
    pub accounts: Option<Vec<String>>,
    pub timeout: Option<String>,
    pub retry_schedule: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    pub retention: Option<String>,
    pub max_wait: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPayouts {
    pub watch_schedule: Option<Vec<String>>,
    pub watch_for: Option<String>,
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
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
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
    pub max_calls_per_minute: Option<u32>,
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
    pub role: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    #[serde(default)]
    pub require_auth: bool,
}

/// One `[[accounts]]` entry: the keys every account has, and the rest, which the account's
/// provider reads into its own settings type (`providers/<name>/config.rs`), refusing a key it
/// does not know.
#[derive(Debug, Default, Deserialize)]
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
    pub max_calls_per_minute: Option<u32>,
    /// The provider's own keys (credentials and the like), as written.
    #[serde(flatten)]
    pub provider_settings: serde_json::Map<String, serde_json::Value>,
}
