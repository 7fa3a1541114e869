//! Ibanera's own account settings: the login, its TOTP shared secret, and the page size of
//! the balance listing.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use super::{IbaneraClient, totp};
use crate::domain::Provider;
use crate::providers::{
    Callback, CallbackRefusal, CallbackRequest, Capabilities, ClientContext, ProviderClient, ProviderSettings,
    SettingError,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IbaneraSettings {
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub username: SecretString,
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub password: SecretString,
    /// The base32 shared secret of the account's one-time passwords.
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub totp_secret: SecretString,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_page_size() -> u32 {
    100
}

impl ProviderSettings for IbaneraSettings {
    const PROVIDER: Provider = Provider::Ibanera;
    /// Ibanera documents no payout lookup.
    const CAPABILITIES: Capabilities = Capabilities { balances: true, payouts: false };
    /// Inferred from the `Host` header of a documented example.
    const DEFAULT_BASE_URL: &'static str = "https://public-api.ibanera.com";
    const DEFAULT_UTC_OFFSET_HOURS: i32 = 0;

    fn check(&self) -> Result<(), SettingError> {
        if !(1..=1000).contains(&self.page_size) {
            return Err(SettingError::new("page_size", "must be between 1 and 1000"));
        }
        totp::secret_is_valid(&self.totp_secret).map_err(|problem| SettingError::new("totp_secret", problem))
    }

    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        Arc::new(IbaneraClient::new(self, account))
    }

    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        Ok(super::callback::verify(request))
    }
}
