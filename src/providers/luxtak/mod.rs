//! Luxtak client (placeholder until the provider issue lands).

use async_trait::async_trait;

use crate::config::AccountConfig;
use crate::domain::{BalanceFetch, PayoutLookup};
use crate::providers::{Capabilities, ProviderClient, UpstreamError, UpstreamHttp};

pub struct LuxtakClient {
    _http: UpstreamHttp,
}

impl LuxtakClient {
    pub fn new(_account: &AccountConfig, http: UpstreamHttp) -> Self {
        Self { _http: http }
    }
}

#[async_trait]
impl ProviderClient for LuxtakClient {
    fn capabilities(&self) -> Capabilities {
        Capabilities { balances: true, payouts: false }
    }

    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        Err(UpstreamError::rejected("not implemented yet"))
    }

    async fn lookup_payout(&self, _id: &str) -> Result<PayoutLookup, UpstreamError> {
        Err(UpstreamError::rejected("not implemented yet"))
    }
}
