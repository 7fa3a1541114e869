//! The one HTTP client every provider shares: created once, pooled, with a connect timeout,
//! a `tally/<version>` user agent and a cap on how much of an answer it reads.

use std::time::{Duration, SystemTime};

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
        // Too deep is undocumented too: a gateway's 401 stays an auth failure, whatever its body.
        crate::domain::check_depth(&self.body).map_err(|e| UpstreamError::from_undocumented_body(self.status, &e))?;
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

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?, SystemTime::now())
}

/// `Retry-After` in either form of RFC 9110 §10.2.3: delay-seconds (`120`) or an HTTP-date
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, and the obsolete RFC 850 and asctime forms), read against
/// `now`. A date already past means "now" (zero); anything unreadable is ignored.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The longest wait an upstream's `Retry-After` can impose. Longer asks are held to it, so
/// time arithmetic on the wait cannot overflow, and a provider's typo cannot silence an
/// account for days: after an hour one call asks again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::UpstreamErrorKind;

    fn at(unix: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix)
    }

    /// 1994-11-06T08:49:37Z, the RFC's example date.
    const EXAMPLE: u64 = 784_111_777;

    #[test]
    fn retry_after_reads_delay_seconds() {
        assert_eq!(parse_retry_after("120", at(0)), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 7 ", at(0)), Some(Duration::from_secs(7)));
    }

    #[test]
    fn retry_after_reads_every_http_date_form_against_now() {
        let now = at(EXAMPLE - 30);
        for date in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_retry_after(date, now), Some(Duration::from_secs(30)), "{date}");
        }
    }

    #[tokio::test]
    async fn a_429_with_an_http_date_carries_the_delay_until_then() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::any};
        let server = MockServer::start().await;
        let then = SystemTime::now() + Duration::from_secs(120);
        Mock::given(any())
            .respond_with(ResponseTemplate::new(429).insert_header("retry-after", httpdate::fmt_http_date(then)))
            .mount(&server)
            .await;
        let http = UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES);
        let response = http.send(http.client().get(server.uri())).await.unwrap();
        let e = response.check_status().unwrap_err();
        assert_eq!(e.code(), "upstream_rate_limited");
        // The date has whole seconds, and a little time passed since it was written.
        let wait = e.retry_after.expect("the date is read");
        assert!(wait > Duration::from_secs(110) && wait <= Duration::from_secs(120), "{wait:?}");
    }

    const MIB: usize = 1024 * 1024;

    async fn fetch(url: String) -> Result<UpstreamResponse, UpstreamError> {
        let http = UpstreamHttp::new(DEFAULT_MAX_RESPONSE_BYTES);
        http.send(http.client().get(url)).await
    }

    #[tokio::test]
    async fn an_answer_over_the_cap_is_an_invalid_response_and_one_at_it_is_read() {
        use wiremock::{Mock, MockServer, ResponseTemplate, matchers::path};
        let server = MockServer::start().await;
        for (route, len) in [("/over", DEFAULT_MAX_RESPONSE_BYTES + 1), ("/at", DEFAULT_MAX_RESPONSE_BYTES)] {
            Mock::given(path(route))
                .respond_with(ResponseTemplate::new(200).set_body_raw(vec![b' '; len], "application/json"))
                .mount(&server)
                .await;
        }
        let e = fetch(format!("{}/over", server.uri())).await.unwrap_err();
        assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::InvalidResponse, Some(200)));
        assert!(e.message.contains("larger than 2097152 bytes"), "{}", e.message);
        assert_eq!(fetch(format!("{}/at", server.uri())).await.unwrap().body.len(), DEFAULT_MAX_RESPONSE_BYTES);
    }

    #[tokio::test]
    async fn a_streamed_answer_without_a_length_is_cut_off_at_the_cap() {
        // Three 1 MiB chunks, sent chunked: the size is only known by reading.
        let stream = || {
            let chunks = (0..3).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; MIB])));
            axum::body::Body::from_stream(futures_util::stream::iter(chunks))
        };
        let app = axum::Router::new().route("/stream", axum::routing::get(move || async move { stream() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/stream", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        crate::install_crypto_provider();
        let plain = reqwest::Client::new().get(&url).send().await.unwrap();
        assert_eq!(plain.content_length(), None, "no Content-Length to reject it by");
        let e = fetch(url).await.unwrap_err();
        assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::InvalidResponse, Some(200)));
    }

    #[test]
    fn a_past_date_means_now_and_garbage_is_ignored() {
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(EXAMPLE + 60)), Some(Duration::ZERO));
        for bad in ["soon", "-5", "1.5", "", "Sun, 32 Nov 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, at(0)), None, "{bad:?}");
        }
    }
}
