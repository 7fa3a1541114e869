//! LeanX's own account settings: the `auth-token` and the currency its pools are kept in.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use super::LeanxClient;
use crate::domain::{Currency, Provider};
use crate::providers::{Capabilities, ClientContext, ProviderClient, ProviderSettings};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeanxSettings {
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub auth_token: SecretString,
    /// LeanX pools carry no currency of their own (PROVIDERS.md §1.2).
    #[serde(default = "ringgit")]
    pub currency: Currency,
}

fn ringgit() -> Currency {
    "MYR".parse().expect("MYR is a currency code")
}

impl ProviderSettings for LeanxSettings {
    const PROVIDER: Provider = Provider::Leanx;
    const CAPABILITIES: Capabilities = Capabilities { balances: true, payouts: true };
    const DEFAULT_BASE_URL: &'static str = "https://api.leanx.io";
    const DEFAULT_UTC_OFFSET_HOURS: i32 = 8;

    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        Arc::new(LeanxClient::new(self, account))
    }
}
