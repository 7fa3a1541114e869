//! LeanX (Malaysia): a static `auth-token` header; every call is a POST answered in a
//! `response_code` envelope (2000 = success), whatever the HTTP status.

mod callback;
mod config;
pub mod jwt;
#[cfg(test)]
pub(crate) mod tests;
mod transformers;

use async_trait::async_trait;
use chrono::FixedOffset;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::{BalanceFetch, Currency, PayoutLookup};
use crate::providers::{ClientContext, ProviderClient, UpstreamError, UpstreamHttp, UpstreamResponse, endpoint};
pub use config::LeanxSettings;
use transformers::{LeanxBalanceData, LeanxEnvelope, LeanxPayoutData, SUCCESS};

const BALANCE_PATH: &str = "/api/v1/merchant/overall-balance";
const PAYOUT_PATH: &str = "/api/v1/merchant/get-payout-transaction-by-id";

pub struct LeanxClient {
    http: UpstreamHttp,
    base_url: url::Url,
    timeout: std::time::Duration,
    auth_token: SecretString,
    currency: Currency,
    utc_offset: FixedOffset,
}

impl LeanxClient {
    pub fn new(settings: &LeanxSettings, account: ClientContext) -> Self {
        Self {
            http: account.http,
            base_url: account.base_url,
            timeout: account.timeout,
            auth_token: settings.auth_token.clone(),
            currency: settings.currency.clone(),
            utc_offset: account.utc_offset,
        }
    }

    async fn post(&self, url: url::Url) -> Result<UpstreamResponse, UpstreamError> {
        let mut token = HeaderValue::from_str(self.auth_token.expose_secret())
            .map_err(|_| UpstreamError::auth_failed("the configured LeanX auth_token is not a valid header value"))?;
        token.set_sensitive(true);
        let response =
            self.http.send(self.http.client().post(url).header("auth-token", token).timeout(self.timeout)).await?;
        response.check_status()?;
        Ok(response)
    }
}

/// Judges a LeanX envelope: only `response_code` 2000 is success; an invalid token is an auth
/// failure (never retried); any other code is a documented rejection.
fn judge<T>(response: &UpstreamResponse, envelope: &LeanxEnvelope<T>) -> Result<(), UpstreamError> {
    if envelope.response_code == SUCCESS {
        return Ok(());
    }
    let description = envelope.description.clone().unwrap_or_default();
    let error = if description.contains("INVALID_TOKEN") || matches!(response.status, 401 | 403) {
        UpstreamError::auth_failed(format!("LeanX rejected the auth token ({description})"))
    } else {
        UpstreamError::rejected(format!("LeanX answered {} {description}", envelope.response_code))
    };
    Err(error.with_status(response.status).with_provider_code(envelope.response_code.to_string()))
}

#[async_trait]
impl ProviderClient for LeanxClient {
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        let response = self.post(endpoint(&self.base_url, BALANCE_PATH)).await?;
        let envelope: LeanxEnvelope<LeanxBalanceData> = response.json()?;
        judge(&response, &envelope)?;
        let data =
            envelope.data.ok_or_else(|| UpstreamError::invalid_response("a LeanX balance answer without data"))?;
        Ok(BalanceFetch {
            entries: transformers::balance_entries(&data, &self.currency),
            raw: transformers::redacted(response.raw_json()?),
        })
    }

    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError> {
        let mut url = endpoint(&self.base_url, PAYOUT_PATH);
        // Ids contain `:` and may hold anything else; the query encoder escapes them.
        url.query_pairs_mut().append_pair("_id", id);
        let response = self.post(url).await?;
        let envelope: LeanxEnvelope<LeanxPayoutData> = response.json()?;
        let has_data = envelope.data.as_ref().is_some_and(|d| d.transaction_status.is_some());
        if envelope.response_code != SUCCESS && !has_data {
            // The docs show no not-found answer; a refusal without data is read as "unknown
            // id", unless it is about the token.
            return match judge(&response, &envelope) {
                Err(e) if e.kind == crate::providers::UpstreamErrorKind::AuthFailed => Err(e),
                _ => Ok(PayoutLookup::NotFound),
            };
        }
        judge(&response, &envelope)?;
        let data =
            envelope.data.ok_or_else(|| UpstreamError::invalid_response("a LeanX payout answer without data"))?;
        let payout = transformers::payout(data, id, &self.currency, self.utc_offset)?;
        Ok(PayoutLookup::Found(Box::new(payout)))
    }
}
