//! Yedpay (Hong Kong): a Bearer personal access token; balances per company and currency;
//! payouts are settlements, found by paging the settlement list.

mod config;
#[cfg(test)]
pub(crate) mod tests;
mod transformers;

use async_trait::async_trait;
use chrono::FixedOffset;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

use crate::domain::{BalanceEntry, BalanceFetch, Currency, PayoutLookup, RawJson};
use crate::providers::{ClientContext, ProviderClient, UpstreamError, UpstreamHttp, endpoint};
pub use config::YedpaySettings;
use transformers::{YedpayBalance, YedpayEnvelope, YedpaySettlement};

/// Settlements asked per page; the API's default is 40.
const PAGE_SIZE: u32 = 100;
/// A bound on paging, so a misbehaving upstream cannot keep a lookup going.
const MAX_PAGES: u32 = 50;

pub struct YedpayClient {
    http: UpstreamHttp,
    base_url: url::Url,
    timeout: std::time::Duration,
    access_token: SecretString,
    company_id: String,
    currencies: Vec<Currency>,
    utc_offset: FixedOffset,
}

impl YedpayClient {
    pub fn new(settings: &YedpaySettings, account: ClientContext) -> Self {
        Self {
            http: account.http,
            base_url: account.base_url,
            timeout: account.timeout,
            access_token: settings.access_token.clone(),
            company_id: settings.company_id.clone(),
            currencies: settings.currencies.clone(),
            utc_offset: account.utc_offset,
        }
    }

    /// GETs a Yedpay resource and returns its envelope and raw JSON. Yedpay reports bad
    /// credentials in the body (`"Unauthenticated."`, with `"status": 500`), so the body is
    /// read before the HTTP status is judged.
    async fn get<T: DeserializeOwned>(&self, url: url::Url) -> Result<(YedpayEnvelope<T>, RawJson), UpstreamError> {
        let request = self.http.client().get(url).bearer_auth(self.access_token.expose_secret()).timeout(self.timeout);
        let response = self.http.send(request).await?;
        let envelope = match response.json::<YedpayEnvelope<T>>() {
            Ok(envelope) => envelope,
            Err(e) => {
                response.check_status()?;
                return Err(e);
            }
        };
        if !envelope.success {
            let message = envelope.message.clone().unwrap_or_default();
            let error = if matches!(message.as_str(), "Unauthenticated." | "This action is unauthorized.") {
                UpstreamError::auth_failed(format!("Yedpay refused the access token: {message}"))
            } else {
                response.check_status()?;
                UpstreamError::rejected(format!("Yedpay answered: {message}"))
            };
            return Err(error.with_status(response.status).with_provider_code(message));
        }
        response.check_status()?;
        Ok((envelope, response.raw_json()?))
    }

    async fn balance(&self, currency: &Currency) -> Result<(BalanceEntry, RawJson), UpstreamError> {
        let mut url = endpoint(&self.base_url, &format!("/v1/balance/{}", self.company_id));
        url.query_pairs_mut().append_pair("currency", currency.as_str());
        let (envelope, raw) = self.get::<YedpayBalance>(url).await?;
        let data = envelope.data.ok_or_else(|| UpstreamError::invalid_response("a Yedpay balance without data"))?;
        Ok((transformers::balance_entry(&self.company_id, currency, &data)?, raw))
    }
}

#[async_trait]
impl ProviderClient for YedpayClient {
    /// One call per configured currency, concurrently; any failure fails the fetch.
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        let calls = self.currencies.iter().map(|c| self.balance(c));
        let answers = futures_util::future::join_all(calls).await;
        let mut entries = Vec::with_capacity(answers.len());
        let mut raw = Vec::with_capacity(answers.len());
        for (currency, answer) in self.currencies.iter().zip(answers) {
            let (entry, body) = answer?;
            entries.push(entry);
            raw.push((currency.to_string(), body));
        }
        Ok(BalanceFetch { entries, raw: RawJson::Object(raw) })
    }

    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError> {
        let mut page = 1;
        loop {
            let mut url = endpoint(&self.base_url, "/v1/settlements");
            url.query_pairs_mut().append_pair("page", &page.to_string()).append_pair("limit", &PAGE_SIZE.to_string());
            let (envelope, _) = self.get::<Vec<YedpaySettlement>>(url).await?;
            let total_pages = envelope.meta.as_ref().map_or(1, |m| m.pagination.total_pages);
            let found = envelope.data.unwrap_or_default().into_iter().find(|s| {
                transformers::id_text(&s.id) == id
                    || s.transaction_id.as_ref().is_some_and(|t| transformers::id_text(t) == id)
            });
            if let Some(settlement) = found {
                return Ok(PayoutLookup::Found(Box::new(transformers::payout(settlement, self.utc_offset)?)));
            }
            if page >= total_pages {
                return Ok(PayoutLookup::NotFound);
            }
            if page >= MAX_PAGES {
                // Not found in what was searched is not "unknown": the rest was never read.
                return Err(UpstreamError::invalid_response(format!(
                    "Yedpay lists {total_pages} pages of settlements; the first {MAX_PAGES} ({} settlements) \
                     do not hold `{id}` and the rest were not searched",
                    MAX_PAGES * PAGE_SIZE
                )));
            }
            page += 1;
        }
    }
}
