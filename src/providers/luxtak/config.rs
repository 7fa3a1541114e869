//! Luxtak's own account settings: the `AppId` and the app key its signatures are made with.

use std::sync::Arc;

use secrecy::SecretString;
use serde::Deserialize;

use super::LuxtakClient;
use crate::domain::Provider;
use crate::providers::{
    Callback, CallbackAck, CallbackRefusal, CallbackRequest, Capabilities, ClientContext, ProviderClient,
    ProviderSettings,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuxtakSettings {
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub app_id: SecretString,
    #[serde(deserialize_with = "crate::secret::deserialize")]
    pub app_key: SecretString,
}

impl ProviderSettings for LuxtakSettings {
    const PROVIDER: Provider = Provider::Luxtak;
    const CAPABILITIES: Capabilities = Capabilities { balances: true, payouts: true };
    const DEFAULT_BASE_URL: &'static str = "https://api.luxtak.com";
    const DEFAULT_UTC_OFFSET_HOURS: i32 = 0;
    /// Luxtak retries a notification until its answer is `success` (PROVIDERS.md §2.5).
    const CALLBACK_ACK: CallbackAck = CallbackAck::Text("success");

    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        Arc::new(LuxtakClient::new(self, account))
    }

    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        super::callback::verify(self, request)
    }
}
