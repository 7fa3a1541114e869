//! The one HTTP client every provider shares: created once, pooled, with a connect timeout,
//! a `tally/<version>` user agent and a cap on how much of an answer it reads.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::de::DeserializeOwned;

use super::UpstreamError;
use crate::domain::RawJson;

/// Default cap on an upstream answer: balances and payout lookups are a few KiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

#[derive(Clone)]
pub struct UpstreamHttp {
    client: reqwest::Client,
    max_response_bytes: usize,
}

/// A complete upstream answer, read within the size cap.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

impl UpstreamHttp {
    pub fn new(max_response_bytes: usize) -> Self {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(3))
            .pool_idle_timeout(Duration::from_secs(60))
            // Provider APIs answer in place; a redirect would re-send credentials elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the client uses only static settings, which are valid");
        Self { client, max_response_bytes }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends a request and reads its whole body (up to the cap). Transport failures come back
    /// as classified errors; every answer, whatever its status, is returned so the provider
    /// can read its envelope first (Yedpay reports bad credentials inside an HTTP 500) and then
    /// call [`UpstreamResponse::check_status`].
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<UpstreamResponse, UpstreamError> {
        let mut response = request.send().await.map_err(|e| UpstreamError::from_transport(&e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        if let Some(len) = response.content_length()
            && len > self.max_response_bytes as u64
        {
            return Err(too_large(self.max_response_bytes).with_status(status));
        }
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| UpstreamError::from_transport(&e))? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(too_large(self.max_response_bytes).with_status(status));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(UpstreamResponse { status, retry_after, body: body.freeze() })
    }
}

impl UpstreamResponse {
    /// Fails for the statuses that are errors whatever the body says (429, 5xx).
    pub fn check_status(&self) -> Result<(), UpstreamError> {
        match UpstreamError::from_status(self.status, self.retry_after) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Parses the body as the documented JSON; anything else (an HTML error page, a truncated
    /// body) is classified by [`UpstreamError::from_undocumented_body`].
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, UpstreamError> {
        serde_json::from_slice(&self.body).map_err(|e| UpstreamError::from_undocumented_body(self.status, &e))
    }

    /// The body as exact JSON (numbers as sent), for `include=raw`.
    pub fn raw_json(&self) -> Result<RawJson, UpstreamError> {
        RawJson::from_slice(&self.body).map_err(|e| {
            UpstreamError::invalid_response(format!("the provider's answer is not JSON: {e}")).with_status(self.status)
        })
    }
}

fn too_large(cap: usize) -> UpstreamError {
    UpstreamError::invalid_response(format!("the provider's answer is larger than {cap} bytes"))
}

/// `Retry-After` in its delay-seconds form. The HTTP-date form is rare in APIs and is ignored.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}
