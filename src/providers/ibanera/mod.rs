//! Ibanera (customer API): log in with username, password and a TOTP; every private call then
//! sends `Authorization: Bearer <token>` and a fresh TOTP in `otp`. Repeated failed logins lock
//! the account for 10 minutes, so a failed login is never retried before a cool-down.

mod callback;
mod config;
#[cfg(test)]
pub(crate) mod tests;
pub mod totp;
mod transformers;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::clock::{Clock, SystemClock};
use crate::domain::{BalanceFetch, PayoutLookup, RawJson};
use crate::providers::{ClientContext, ProviderClient, UpstreamError, UpstreamHttp, UpstreamResponse, endpoint};
pub use config::IbaneraSettings;
use transformers::{IbaneraBalance, IbaneraEnvelope, IbaneraLogin};

const LOGIN_PATH: &str = "/api/v1/public/auth/login";
const BALANCES_PATH: &str = "/api/v1/customer/accounts/balances";
/// No new login this long after a failed one: the provider locks accounts for 10 minutes.
pub const LOGIN_COOLDOWN: Duration = Duration::from_secs(600);
/// The longest token lifetime believed: a longer `expiresIn` is held to it, so time arithmetic
/// on it cannot overflow, and the token is renewed at least daily.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A bound on paging. An account with more pages fails rather than report part of its wallets
/// as if they were all (raise `page_size` instead).
const MAX_PAGES: u32 = 100;

pub struct IbaneraClient {
    http: UpstreamHttp,
    base_url: url::Url,
    timeout: Duration,
    username: SecretString,
    password: SecretString,
    totp: totp_rs::Totp,
    page_size: u32,
    session: Mutex<Session>,
    /// Wall-clock time, for the one-time passwords (injected in tests).
    clock: Arc<dyn Clock>,
}

#[derive(Default)]
struct Session {
    token: Option<(SecretString, Instant)>,
    /// Set after a failed login: no login before this.
    no_login_until: Option<(Instant, UpstreamError)>,
}

impl IbaneraClient {
    pub fn new(settings: &IbaneraSettings, account: ClientContext) -> Self {
        Self {
            http: account.http,
            base_url: account.base_url,
            timeout: account.timeout,
            username: settings.username.clone(),
            password: settings.password.clone(),
            totp: totp::generator(&settings.totp_secret).expect("IbaneraSettings::check checked the TOTP secret"),
            page_size: settings.page_size,
            session: Mutex::new(Session::default()),
            clock: Arc::new(SystemClock),
        }
    }

    /// The TOTP step now.
    fn step(&self) -> u64 {
        totp::step_at(self.clock.now().timestamp().max(0) as u64)
    }

    fn otp(&self, step: u64) -> String {
        totp::code_for_step(&self.totp, step)
    }

    /// A live access token, and whether this call just logged in for it: the cached one, or a
    /// new login (one at a time).
    async fn token(&self) -> Result<(SecretString, bool), UpstreamError> {
        let mut session = self.session.lock().await;
        if let Some((token, expires)) = &session.token
            && Instant::now() < *expires
        {
            return Ok((token.clone(), false));
        }
        if let Some((until, error)) = &session.no_login_until {
            if Instant::now() < *until {
                let wait = until.saturating_duration_since(Instant::now()).as_secs();
                return Err(UpstreamError {
                    message: format!("{} (no new login for {wait} s)", error.message),
                    ..error.clone()
                });
            }
            session.no_login_until = None;
        }
        match self.login().await {
            Ok((token, lifetime)) => {
                // Renew a minute early (or at 90% of a short lifetime) so no call races expiry.
                let margin = Duration::from_secs(60).min(lifetime / 10);
                session.token = Some((token.clone(), Instant::now() + lifetime.saturating_sub(margin)));
                Ok((token, true))
            }
            Err(e) if e.kind == crate::providers::UpstreamErrorKind::AuthFailed => {
                session.no_login_until = Some((Instant::now() + LOGIN_COOLDOWN, e.clone()));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    async fn forget_token(&self, stale: &SecretString) {
        let mut session = self.session.lock().await;
        if session.token.as_ref().is_some_and(|(t, _)| t.expose_secret() == stale.expose_secret()) {
            session.token = None;
        }
    }

    async fn login(&self) -> Result<(SecretString, Duration), UpstreamError> {
        let body = json!({
            "username": self.username.expose_secret(),
            "password": self.password.expose_secret(),
            "otp": self.otp(self.step()),
        });
        let request = self
            .http
            .client()
            .post(endpoint(&self.base_url, LOGIN_PATH))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .timeout(self.timeout);
        let response = self.http.send(request).await?;
        response.check_status()?;
        // A 401/403 without the documented envelope is an auth failure (the shared rule).
        let envelope: IbaneraEnvelope<IbaneraLogin> = response.json()?;
        match envelope.details {
            Some(login) if envelope.is_success() => Ok((
                SecretString::from(login.access_token),
                Duration::from_secs(login.expires_in).min(MAX_TOKEN_LIFETIME),
            )),
            _ => {
                let codes = envelope.codes();
                Err(UpstreamError::auth_failed(format!("Ibanera refused the login: {codes}"))
                    .with_status(response.status)
                    .with_provider_code(codes))
            }
        }
    }

    async fn balances_page(
        &self,
        token: &SecretString,
        page: u32,
        step: u64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let mut url = endpoint(&self.base_url, BALANCES_PATH);
        url.query_pairs_mut()
            .append_pair("pageNumber", &page.to_string())
            .append_pair("pageSize", &self.page_size.to_string());
        let mut otp = HeaderValue::from_str(&self.otp(step)).expect("six digits are a valid header value");
        otp.set_sensitive(true);
        let request =
            self.http.client().get(url).bearer_auth(token.expose_secret()).header("otp", otp).timeout(self.timeout);
        self.http.send(request).await
    }

    /// One page, retried once if refused with a 401.
    ///
    /// Whether Ibanera accepts one code twice within its 30 s step (for the login and then a
    /// call, or for two calls) is UNKNOWN (PROVIDERS.md §3.2); tally assumes it does, as the
    /// documented examples compute a code per request. If it does not, the call right after a
    /// login is the one refused, so the retry never sends a code already used: it sends the
    /// next step's, which a server allowing the usual one step of clock skew accepts at once
    /// (no waiting for the step to pass). A token that was just issued is kept for the retry,
    /// since a new login would reuse the refused code; an older one is dropped for a new login.
    async fn page(&self, page: u32) -> Result<UpstreamResponse, UpstreamError> {
        let (token, fresh) = self.token().await?;
        let response = self.balances_page(&token, page, self.step()).await?;
        if response.status != 401 {
            return Ok(response);
        }
        let token = if fresh {
            token
        } else {
            self.forget_token(&token).await;
            self.token().await?.0
        };
        let response = self.balances_page(&token, page, self.step() + 1).await?;
        if response.status == 401 {
            return Err(UpstreamError::auth_failed("Ibanera refused a fresh access token").with_status(401));
        }
        Ok(response)
    }
}

#[async_trait]
impl ProviderClient for IbaneraClient {
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        let mut entries = Vec::new();
        let mut pages = Vec::new();
        let mut number = 1;
        loop {
            let response = self.page(number).await?;
            response.check_status()?;
            let envelope: IbaneraEnvelope<Vec<IbaneraBalance>> = response.json()?;
            if !envelope.is_success() {
                let codes = envelope.codes();
                return Err(UpstreamError::rejected(format!("Ibanera refused the balances: {codes}"))
                    .with_status(response.status)
                    .with_provider_code(codes));
            }
            for balance in envelope.details.as_deref().unwrap_or_default() {
                entries.push(transformers::balance_entry(balance)?);
            }
            pages.push(response.raw_json()?);
            let last = envelope.number_of_pages.unwrap_or(0);
            if last > MAX_PAGES {
                return Err(UpstreamError::invalid_response(format!(
                    "Ibanera reports {last} pages of balances, more than the {MAX_PAGES} tally reads; \
                     raise this account's page_size ({})",
                    self.page_size
                ))
                .with_status(response.status));
            }
            if number >= last {
                break;
            }
            number += 1;
        }
        Ok(BalanceFetch { entries, raw: RawJson::Array(pages) })
    }

    async fn lookup_payout(&self, _id: &str) -> Result<PayoutLookup, UpstreamError> {
        Err(UpstreamError::rejected("Ibanera does not document a payout lookup"))
    }
}
