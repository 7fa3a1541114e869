//! Provider clients: one folder per provider, each speaking its documented protocol and
//! returning the normalized model of [`crate::domain`].
//!
//! Layout per provider (after hyperswitch's connectors): `mod.rs` holds the client (URLs,
//! headers, auth, calls); `transformers.rs` holds the wire types and their conversion into
//! domain types, and is the only place that knows the provider's JSON.
//!
//! The service layer sees only [`ProviderClient`]; [`client_for`] is the one place that
//! matches on the provider.

mod error;
mod http;
pub mod ibanera;
pub mod leanx;
pub mod luxtak;
#[cfg(test)]
mod test_support;
pub mod yedpay;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{AccountConfig, ProviderConfig};
use crate::domain::{BalanceFetch, PayoutLookup};

pub use error::{UpstreamError, UpstreamErrorKind};
pub use http::{DEFAULT_MAX_RESPONSE_BYTES, UpstreamHttp, UpstreamResponse};
pub use ibanera::totp::secret_is_valid as ibanera_secret_is_valid;

/// What an account's provider can do, as reported by `/accounts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub balances: bool,
    pub payouts: bool,
}

/// The behaviour every provider implements once.
#[async_trait]
pub trait ProviderClient: Send + Sync {
    fn capabilities(&self) -> Capabilities;

    /// Fetches every wallet and currency of the configured account.
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError>;

    /// Looks up one payout by the provider's id or the merchant's reference.
    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError>;
}

/// Builds the client for one configured account. All clients share one HTTP connection pool.
pub fn client_for(account: &AccountConfig, http: &UpstreamHttp) -> Arc<dyn ProviderClient> {
    match &account.provider {
        ProviderConfig::Leanx { .. } => Arc::new(leanx::LeanxClient::new(account, http.clone())),
        ProviderConfig::Luxtak { .. } => Arc::new(luxtak::LuxtakClient::new(account, http.clone())),
        ProviderConfig::Ibanera { .. } => Arc::new(ibanera::IbaneraClient::new(account, http.clone())),
        ProviderConfig::Yedpay { .. } => Arc::new(yedpay::YedpayClient::new(account, http.clone())),
    }
}

/// Joins a base URL and a documented path without losing a base path prefix
/// (`https://host/prefix` + `/api/balance` → `https://host/prefix/api/balance`).
pub fn endpoint(base: &url::Url, path: &str) -> url::Url {
    let mut url = base.clone();
    let joined = format!("{}{}", base.path().trim_end_matches('/'), path);
    url.set_path(&joined);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_a_base_path_prefix() {
        let base = url::Url::parse("http://127.0.0.1:9/prefix/").unwrap();
        assert_eq!(endpoint(&base, "/api/balance").as_str(), "http://127.0.0.1:9/prefix/api/balance");
        let base = url::Url::parse("https://api.leanx.io").unwrap();
        assert_eq!(
            endpoint(&base, "/api/v1/merchant/overall-balance").as_str(),
            "https://api.leanx.io/api/v1/merchant/overall-balance"
        );
    }
}
