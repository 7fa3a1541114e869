//! Luxtak (the Pagsmile/Transfersmile payout platform): every call is a signed POST with a
//! JSON body carrying a unix `timestamp`, headers `AppId` and `Authorization` (the signature).

pub(crate) mod callback;
mod config;
pub(crate) mod signature;
#[cfg(test)]
pub(crate) mod tests;
mod transformers;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::domain::{BalanceFetch, PayoutLookup, RawJson};
use crate::providers::{ClientContext, ProviderClient, UpstreamError, UpstreamHttp, endpoint};
use transformers::{LuxtakBalance, LuxtakEnvelope, LuxtakPayoutDetail, LuxtakPayoutStatus};

pub use config::LuxtakSettings;
pub use signature::sign;

pub struct LuxtakClient {
    http: UpstreamHttp,
    base_url: url::Url,
    timeout: std::time::Duration,
    app_id: SecretString,
    app_key: SecretString,
}

/// A Luxtak answer: the envelope, its raw JSON, and the HTTP status.
struct Answer {
    envelope: LuxtakEnvelope,
    raw: RawJson,
    status: u16,
    retry_after: Option<std::time::Duration>,
}

impl LuxtakClient {
    pub fn new(settings: &LuxtakSettings, account: ClientContext) -> Self {
        Self {
            http: account.http,
            base_url: account.base_url,
            timeout: account.timeout,
            app_id: settings.app_id.clone(),
            app_key: settings.app_key.clone(),
        }
    }

    /// Signs and sends `params` plus a fresh `timestamp`, exactly as serialized.
    async fn call(&self, path: &str, mut params: Map<String, Value>) -> Result<Answer, UpstreamError> {
        // Signed immediately before sending: the provider rejects stale timestamps.
        params.insert("timestamp".into(), json!(chrono::Utc::now().timestamp()));
        let signature = sign(&params, self.app_key.expose_secret());
        let mut app_id = HeaderValue::from_str(self.app_id.expose_secret())
            .map_err(|_| UpstreamError::auth_failed("the configured Luxtak app_id is not a valid header value"))?;
        app_id.set_sensitive(true);
        let mut authorization = HeaderValue::from_str(&signature).expect("a hex digest is a valid header value");
        authorization.set_sensitive(true);
        let request = self
            .http
            .client()
            .post(endpoint(&self.base_url, path))
            .header("Content-Type", "application/json; charset=UTF-8")
            .header("AppId", app_id)
            .header("Authorization", authorization)
            .body(Value::Object(params).to_string())
            .timeout(self.timeout);
        let response = self.http.send(request).await?;
        // Luxtak's codes say more than its HTTP statuses (4004029 rides on a 429, auth codes on
        // a 401), so the envelope is read first when there is one.
        let envelope: LuxtakEnvelope = match response.json() {
            Ok(envelope) => envelope,
            Err(e) => {
                response.check_status()?;
                return Err(e);
            }
        };
        Ok(Answer { raw: response.raw_json()?, envelope, status: response.status, retry_after: response.retry_after })
    }

    /// A successful answer's `data`, or the classified error.
    fn data<T: DeserializeOwned>(answer: &Answer) -> Result<T, UpstreamError> {
        if !answer.envelope.is_success() {
            // A 429 or 5xx is transient whatever the code; other statuses go by Luxtak's code.
            let error = UpstreamError::from_status(answer.status, answer.retry_after)
                .map(|e| e.with_provider_code(answer.envelope.code.to_string()))
                .unwrap_or_else(|| answer.envelope.error(answer.status, answer.retry_after));
            return Err(error);
        }
        serde_json::from_value(answer.envelope.data.clone())
            .map_err(|e| UpstreamError::invalid_response(format!("Luxtak data is not the documented JSON: {e}")))
    }

    /// `/api/payout/status` by one key; `None` when the answer is a refusal that `is_miss` reads
    /// as "no payout under this key". A 429 or 5xx is never a miss.
    async fn status_by(
        &self,
        key: &str,
        id: &str,
        is_miss: fn(&LuxtakEnvelope) -> bool,
    ) -> Result<Option<LuxtakPayoutStatus>, UpstreamError> {
        let mut params = Map::new();
        params.insert(key.into(), json!(id));
        let answer = self.call("/api/payout/status", params).await?;
        let transient = UpstreamError::from_status(answer.status, None).is_some();
        if !transient && is_miss(&answer.envelope) {
            return Ok(None);
        }
        let status: LuxtakPayoutStatus = Self::data(&answer)?;
        Ok(status.status.is_some().then_some(status))
    }
}

#[async_trait]
impl ProviderClient for LuxtakClient {
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        let answer = self.call("/api/balance", Map::new()).await?;
        let items: Vec<LuxtakBalance> = Self::data(&answer)?;
        Ok(BalanceFetch { entries: transformers::balance_entries(items)?, raw: answer.raw })
    }

    /// The same id may be Luxtak's `payout_id` or the merchant's `custom_code`: it is tried as
    /// `payout_id`, then as `custom_code` when Luxtak says it is none of its payout ids (see
    /// [`LuxtakEnvelope::is_not_a_payout_id`]). Only a not-found answer to the second is "not
    /// found"; any other refusal stays an error. Amounts and times come from
    /// `/api/payout/detail`, best effort.
    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError> {
        let status = match self.status_by("payout_id", id, LuxtakEnvelope::is_not_a_payout_id).await? {
            Some(status) => status,
            None => match self.status_by("custom_code", id, LuxtakEnvelope::is_not_found).await? {
                Some(status) => status,
                None => return Ok(PayoutLookup::NotFound),
            },
        };
        let transaction_id = status.payout_id.clone().unwrap_or_else(|| id.to_owned());
        let mut params = Map::new();
        params.insert("transaction_id".into(), json!(transaction_id));
        let detail =
            match self.call("/api/payout/detail", params).await.and_then(|a| Self::data::<LuxtakPayoutDetail>(&a)) {
                Ok(detail) => Some(detail),
                Err(e) => {
                    tracing::warn!(provider = "luxtak", code = e.code(), provider_code = ?e.provider_code,
                    "payout detail unavailable; serving the status alone");
                    None
                }
            };
        Ok(PayoutLookup::Found(Box::new(transformers::payout(status, id, detail)?)))
    }
}
