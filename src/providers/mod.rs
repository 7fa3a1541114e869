//! Provider clients: one folder per provider, each speaking its documented protocol and
//! returning the normalized model of [`crate::domain`].
//!
//! Layout per provider (after hyperswitch's connectors): `mod.rs` holds the client (URLs,
//! headers, auth, calls); `transformers.rs` holds the wire types and their conversion into
//! domain types, and is the only place that knows the provider's JSON; `config.rs` holds the
//! provider's own account settings, which register it ([`registry`]).
//!
//! The service layer sees only [`ProviderClient`], built by [`ProviderConfig::client`]; the
//! registry's one match is the only place that tells the providers apart.

pub mod callback;
#[cfg(test)]
mod conformance;
mod error;
#[cfg(test)]
mod fuzz;
mod http;
pub mod ibanera;
pub mod leanx;
pub mod luxtak;
mod registry;
#[cfg(test)]
mod test_support;
pub mod yedpay;

use async_trait::async_trait;

use crate::domain::{BalanceFetch, PayoutLookup};

pub use callback::{
    Callback, CallbackAck, CallbackRefusal, CallbackRefusalKind, CallbackRequest, MAX_CALLBACK_BYTES, Trigger,
};
pub use error::{UpstreamError, UpstreamErrorKind};
pub(crate) use http::parse_retry_after;
pub use http::{DEFAULT_MAX_RESPONSE_BYTES, MAX_RETRY_AFTER, UpstreamHttp, UpstreamResponse};
pub use registry::{ClientContext, ProviderConfig, ProviderSettings, Registration, SettingError, registration};

/// What an account's provider can do, as reported by `/accounts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Capabilities {
    pub balances: bool,
    pub payouts: bool,
}

/// The behaviour every provider implements once.
#[async_trait]
pub trait ProviderClient: Send + Sync {
    /// Fetches every wallet and currency of the configured account.
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError>;

    /// Looks up one payout by the provider's id or the merchant's reference.
    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError>;
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
