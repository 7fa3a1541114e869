//! The providers tally speaks to, registered once: what the rest of tally needs of each.
//!
//! A provider's folder (`providers/<name>/`) holds its client, its wire types
//! (`transformers.rs`) and its own settings (`config.rs`), whose type implements
//! [`ProviderSettings`]. The one line per provider in [`registry!`]'s call below makes
//! [`ProviderConfig`] (an enum of those settings types) and lets config, the service and
//! `/accounts` reach every provider without matching on it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::FixedOffset;
use serde::Deserializer;
use serde::de::DeserializeOwned;
use url::Url;

use super::callback::{Callback, CallbackAck, CallbackRefusal, CallbackRequest, MAX_CALLBACK_BYTES};
use super::{Capabilities, ProviderClient, UpstreamError, UpstreamHttp, ibanera, leanx, luxtak, yedpay};
use crate::domain::{BalanceFetch, PayoutLookup, Provider};

/// Writes [`ProviderConfig`] and the lookups over it from one line per provider.
macro_rules! registry {
    ($($variant:ident => $room:ident :: $settings:ident),* $(,)?) => {
        /// The provider of an account and the settings only that provider has.
        #[derive(Clone, Debug)]
        pub enum ProviderConfig {
            $($variant($room::$settings)),*
        }

        impl ProviderConfig {
            /// Reads the provider-specific keys of an account of `provider`.
            pub fn read<'de, D: Deserializer<'de>>(provider: Provider, settings: D) -> Result<Self, SettingError> {
                $(if provider == <$room::$settings as ProviderSettings>::PROVIDER {
                    return read::<$room::$settings, D>(settings).map(Self::$variant);
                })*
                Err(SettingError { key: None, problem: format!("provider {provider} is not registered") })
            }

            fn registered(&self) -> &dyn Registered {
                match self {
                    $(Self::$variant(settings) => settings),*
                }
            }
        }

        /// The fixed facts of `provider`; `None` only for a provider not registered here.
        pub fn registration(provider: Provider) -> Option<Registration> {
            $(if provider == <$room::$settings as ProviderSettings>::PROVIDER {
                return Some(Registration::of::<$room::$settings>());
            })*
            None
        }

        /// Every provider's row of the conformance suite, from its own `tests.rs`.
        #[cfg(test)]
        pub(super) fn conformance_cases() -> Vec<super::conformance::Case> {
            vec![$($room::tests::conformance()),*]
        }
    };
}

// The registered providers: a new provider is its folder, its emulator and one line here.
registry! {
    Leanx => leanx::LeanxSettings,
    Luxtak => luxtak::LuxtakSettings,
    Ibanera => ibanera::IbaneraSettings,
    Yedpay => yedpay::YedpaySettings,
}

/// What one provider tells the rest of tally, implemented once by its settings type (the
/// provider-specific keys of an `[[accounts]]` entry, read with `deny_unknown_fields`).
pub trait ProviderSettings: DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    const PROVIDER: Provider;
    const CAPABILITIES: Capabilities;
    /// Everything before the documented paths, when the account does not say.
    const DEFAULT_BASE_URL: &'static str;
    /// Hours east of UTC that naive upstream timestamps are read in, when the account does
    /// not say (LeanX and Yedpay document Malaysia / Hong Kong local time).
    const DEFAULT_UTC_OFFSET_HOURS: i32;

    /// Rules serde cannot say (a TOTP secret that is base32, a page size in range).
    fn check(&self) -> Result<(), SettingError> {
        Ok(())
    }

    /// The client for one account with these settings.
    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient>;

    /// Verifies and reads a callback to this account, exactly as the provider documents its
    /// callbacks (the room's `callback.rs`). By default a provider sends none tally can use.
    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        let _ = request;
        Err(CallbackRefusal::unsupported(format!("{} sends no callbacks tally can verify", Self::PROVIDER)))
    }

    /// What the provider expects back from an accepted callback.
    const CALLBACK_ACK: CallbackAck = CallbackAck::Json;
}

/// What a client needs of its account beyond its provider's own settings.
#[derive(Clone)]
pub struct ClientContext {
    pub base_url: Url,
    /// The offset naive upstream timestamps are read in.
    pub utc_offset: FixedOffset,
    /// Bound on one upstream call.
    pub timeout: Duration,
    /// The process's one upstream connection pool.
    pub http: UpstreamHttp,
}

/// A provider setting that is wrong: the key under the account (`None` for the account as a
/// whole) and the problem. Never holds a secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: Option<String>,
    pub problem: String,
}

impl SettingError {
    pub fn new(key: &str, problem: impl Into<String>) -> Self {
        Self { key: Some(key.to_owned()), problem: problem.into() }
    }
}

/// A provider's fixed facts, for config defaults and docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registration {
    pub provider: Provider,
    pub capabilities: Capabilities,
    pub default_base_url: &'static str,
    pub default_utc_offset: FixedOffset,
}

impl Registration {
    fn of<S: ProviderSettings>() -> Self {
        Self {
            provider: S::PROVIDER,
            capabilities: S::CAPABILITIES,
            default_base_url: S::DEFAULT_BASE_URL,
            default_utc_offset: FixedOffset::east_opt(S::DEFAULT_UTC_OFFSET_HOURS * 3600)
                .expect("a registered UTC offset is within ±24 h"),
        }
    }
}

/// [`ProviderSettings`] as an object, so the enum dispatches in one match.
trait Registered: Send + Sync {
    fn registration(&self) -> Registration;
    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient>;
    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal>;
    fn callback_ack(&self) -> CallbackAck;
}

impl<S: ProviderSettings> Registered for S {
    fn registration(&self) -> Registration {
        Registration::of::<S>()
    }

    fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        ProviderSettings::client(self, account)
    }

    fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        ProviderSettings::verify_callback(self, request)
    }

    fn callback_ack(&self) -> CallbackAck {
        S::CALLBACK_ACK
    }
}

/// Reads one provider's settings, then checks what serde cannot; errors name the key.
fn read<'de, S: ProviderSettings, D: Deserializer<'de>>(settings: D) -> Result<S, SettingError> {
    let settings: S = serde_path_to_error::deserialize(settings).map_err(|e| {
        let path = e.path().to_string();
        let problem = without_value(e.into_inner().to_string());
        // serde reports a missing field at its struct; name the field itself.
        match problem.strip_prefix("missing field `").and_then(|f| f.strip_suffix('`')) {
            Some(field) => SettingError::new(field, format!("is required for provider {}", S::PROVIDER)),
            None if path == "." => SettingError { key: None, problem },
            None => SettingError { key: Some(path), problem },
        }
    })?;
    settings.check()?;
    Ok(settings)
}

/// serde's type errors quote the value (``invalid type: integer `1234567`, expected a
/// string``), and the value may be a credential typed without quotes or into the wrong key:
/// keep only what was expected.
fn without_value(problem: String) -> String {
    let kind = if problem.starts_with("invalid type: ") {
        "has the wrong type"
    } else if problem.starts_with("invalid value: ") || problem.starts_with("invalid length ") {
        "is not a valid value"
    } else {
        return problem;
    };
    match problem.split_once(", expected ") {
        Some((_, expected)) => format!("{kind}: expected {expected}"),
        None => kind.to_owned(),
    }
}

impl ProviderConfig {
    pub fn kind(&self) -> Provider {
        self.registered().registration().provider
    }

    pub fn capabilities(&self) -> Capabilities {
        self.registered().registration().capabilities
    }

    /// The client for one account of this provider. All clients share `account.http`'s pool.
    pub fn client(&self, account: ClientContext) -> Arc<dyn ProviderClient> {
        Arc::new(Checked(self.registered().client(account)))
    }

    /// Verifies and reads a callback to an account with these settings (SPEC §9.2): what the
    /// route `POST /callbacks/{account}` calls with the raw body and headers. Pure: no I/O, and
    /// a refusal's message never holds a secret. A body over [`MAX_CALLBACK_BYTES`] is refused
    /// unread (the route answers `413` before calling this).
    pub fn verify_callback(&self, request: &CallbackRequest<'_>) -> Result<Callback, CallbackRefusal> {
        if request.body.len() > MAX_CALLBACK_BYTES {
            return Err(CallbackRefusal::malformed(format!("the body is over {} KiB", MAX_CALLBACK_BYTES / 1024)));
        }
        self.registered().verify_callback(request)
    }

    /// How the route answers an accepted callback for this provider.
    pub fn callback_ack(&self) -> CallbackAck {
        self.registered().callback_ack()
    }
}

/// What every provider's answer must be beyond its own format, checked once for all of them:
/// one figure set per `(wallet, currency)`.
struct Checked(Arc<dyn ProviderClient>);

#[async_trait]
impl ProviderClient for Checked {
    async fn fetch_balances(&self) -> Result<BalanceFetch, UpstreamError> {
        let fetch = self.0.fetch_balances().await?;
        match fetch.repeated_entry() {
            Some(e) => Err(UpstreamError::invalid_response(format!(
                "the provider listed {} in wallet `{}` more than once",
                e.currency, e.wallet
            ))),
            None => Ok(fetch),
        }
    }

    async fn lookup_payout(&self, id: &str) -> Result<PayoutLookup, UpstreamError> {
        self.0.lookup_payout(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_body_over_64_kib_is_refused_unread() {
        let config = ProviderConfig::read(
            Provider::Ibanera,
            serde_json::json!({"username": "u", "password": "p", "totp_secret": "JBSWY3DPEHPK3PXP"}),
        )
        .unwrap();
        let headers = reqwest::header::HeaderMap::new();
        let body = vec![b' '; MAX_CALLBACK_BYTES + 1];
        let request = CallbackRequest {
            body: &body,
            headers: &headers,
            now: chrono::Utc::now(),
            utc_offset: FixedOffset::east_opt(0).unwrap(),
        };
        let refusal = config.verify_callback(&request).unwrap_err();
        assert_eq!(refusal.kind, crate::providers::CallbackRefusalKind::Malformed);
        let request = CallbackRequest { body: &body[..MAX_CALLBACK_BYTES], ..request };
        assert!(config.verify_callback(&request).is_ok(), "64 KiB exactly is read");
    }

    #[test]
    fn every_provider_is_registered_under_its_own_name() {
        for provider in Provider::ALL {
            let registration = registration(provider).unwrap_or_else(|| panic!("{provider} is not registered"));
            assert_eq!(registration.provider, provider);
            Url::parse(registration.default_base_url).expect("a registered base URL is a URL");
        }
    }
}
