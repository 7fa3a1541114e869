//! Yedpay's own account settings: the personal access token, the company whose balances are
//! read, and the currencies asked for (one call each).

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use super::YedpayClient;
use crate::domain::{Currency, Provider};
use crate::providers::{Capabilities, ClientContext, ProviderClient, ProviderSettings, SettingError};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct YedpaySettings {
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub access_token: SecretString,
    /// Part of the balance path, so held to letters, digits, `-` and `_`.
    pub company_id: String,
    #[serde(default = "hong_kong_dollars")]
    pub currencies: Vec<Currency>,
}

fn hong_kong_dollars() -> Vec<Currency> {
    vec!["HKD".parse().expect("HKD is a currency code")]
}

impl ProviderSettings for YedpaySettings {
    const PROVIDER: Provider = Provider::Yedpay;
    const CAPABILITIES: Capabilities = Capabilities { balances: true, payouts: true };
    /// The documented paths start with `/v1`, so the base URL stops before it.
    const DEFAULT_BASE_URL: &'static str = "https://api.yedpay.com";
    const DEFAULT_UTC_OFFSET_HOURS: i32 = 8;

    fn check(&self) -> Result<(), SettingError> {
        let id = &self.company_id;
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(SettingError::new("company_id", "must be the company's id (letters and digits)"));
        }
        if self.currencies.is_empty() {
            return Err(SettingError::new("currencies", "must not be empty"));
        }
        // One call per currency: a currency listed twice would be fetched and counted twice.
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = self.currencies.iter().find(|c| !seen.insert(*c)) {
            return Err(SettingError::new("currencies", format!("lists {twice} twice")));
        }
        Ok(())
    }

    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        Arc::new(YedpayClient::new(self, account))
    }
}
