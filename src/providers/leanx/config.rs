//! LeanX's own account settings: the `auth-token`, the currency its pools are kept in, and the
//! Hash Key its callbacks are signed with.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use super::LeanxClient;
use crate::domain::{Currency, Provider};
use crate::providers::{
    Callback, CallbackRefusal, CallbackRequest, Capabilities, ClientContext, ProviderClient, ProviderSettings,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeanxSettings {
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub auth_token: SecretString,
    /// LeanX pools carry no currency of their own (PROVIDERS.md §1.2).
    #[serde(default = "ringgit")]
    pub currency: Currency,
    /// The portal's Hash Key: the HS256 secret of callback tokens (PROVIDERS.md §1.5). Without
    /// it a callback is only a trigger to look the payout up.
    #[serde(default, deserialize_with = "optional_secret")]
    pub hash_key: Option<SecretString>,
}

fn optional_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    crate::secret::deserialize(d).map(Some)
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

    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        super::callback::verify(self, request)
    }
}
