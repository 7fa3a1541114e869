//! Raw config → [`Settings`]: defaults filled in, secrets resolved, every rule checked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::FixedOffset;
use url::Url;

use super::raw::{RawAccount, RawConfig, RawDefaults};
use super::secret;
use super::*;

pub(super) fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let server = server(&raw)?;
    let store = store(&raw)?;
    let auth = auth(&raw)?;
    let mut seen = HashSet::new();
    let accounts = raw
        .accounts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let account = account(i, a, &raw.defaults)?;
            if !seen.insert(account.id.clone()) {
                return Err(ConfigError::new(format!("accounts[{i}].id"), format!("`{}` is used twice", account.id)));
            }
            Ok(account)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings { server, store, auth, metrics: MetricsSettings { require_auth: raw.metrics.require_auth }, accounts })
}

fn server(raw: &RawConfig) -> Result<ServerSettings, ConfigError> {
    let s = &raw.server;
    let listen = s.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| ConfigError::new("server.listen", format!("`{listen}` is not an address like 127.0.0.1:8080")))?;
    let positive = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(ConfigError::new(key, "must be at least 1")),
        v => Ok(v.unwrap_or(default)),
    };
    Ok(ServerSettings {
        listen,
        request_timeout: duration("server.request_timeout", s.request_timeout.as_deref(), "10s", true)?,
        max_concurrent_fetches: positive("server.max_concurrent_fetches", s.max_concurrent_fetches, 64)?,
        max_concurrent_requests: positive("server.max_concurrent_requests", s.max_concurrent_requests, 512)?,
        body_limit_bytes: positive("server.body_limit_bytes", s.body_limit_bytes, 64 * 1024)?,
        shutdown_timeout: duration("server.shutdown_timeout", s.shutdown_timeout.as_deref(), "10s", true)?,
    })
}

fn store(raw: &RawConfig) -> Result<StoreSettings, ConfigError> {
    let url = raw.store.url.as_deref().unwrap_or("sqlite://tally.db");
    let url = secret::resolve_plain(url).map_err(|p| ConfigError::new("store.url", p))?;
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // The value may hold a password, so it is not echoed back.
        return Err(ConfigError::new("store.url", "must start with sqlite:, postgres:// or postgresql://"));
    }
    let max_connections = match raw.store.max_connections {
        Some(0) => return Err(ConfigError::new("store.max_connections", "must be at least 1")),
        v => v.unwrap_or(10),
    };
    Ok(StoreSettings { url: url.into(), max_connections })
}

fn auth(raw: &RawConfig) -> Result<AuthSettings, ConfigError> {
    let mut names = HashSet::new();
    let api_keys = raw
        .auth
        .api_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if k.name.trim().is_empty() || !names.insert(k.name.clone()) {
                return Err(ConfigError::new(format!("auth.api_keys[{i}].name"), "must be a non-empty, unique name"));
            }
            let digest = hex::decode(k.sha256.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
            let sha256 = digest.ok_or_else(|| {
                ConfigError::new(
                    format!("auth.api_keys[{i}].sha256"),
                    "must be the 64-character hex SHA-256 digest of the key (see `tally hash-key`)",
                )
            })?;
            Ok(ApiKey { name: k.name.clone(), sha256 })
        })
        .collect::<Result<_, _>>()?;
    Ok(AuthSettings { api_keys, allow_anonymous: raw.auth.allow_anonymous })
}

fn account(i: usize, a: &RawAccount, d: &RawDefaults) -> Result<AccountConfig, ConfigError> {
    let key = |field: &str| format!("accounts[{i}].{field}");
    let id = a.id.as_deref().ok_or_else(|| ConfigError::new(key("id"), "is required"))?;
    let id: AccountId =
        id.parse().map_err(|e: crate::domain::InvalidAccountId| ConfigError::new(key("id"), e.to_string()))?;
    let provider = a.provider.as_deref().ok_or_else(|| ConfigError::new(key("provider"), "is required"))?;
    let provider: Provider = provider
        .parse()
        .map_err(|e: crate::domain::UnknownProvider| ConfigError::new(key("provider"), e.to_string()))?;
    reject_foreign_fields(i, a, provider)?;

    let base_url = match &a.base_url {
        Some(u) => parse_base_url(&key("base_url"), u)?,
        None => Url::parse(default_base_url(provider)).expect("built-in base URLs are valid"),
    };
    let utc_offset = match &a.utc_offset {
        Some(o) => o
            .parse::<FixedOffset>()
            .map_err(|_| ConfigError::new(key("utc_offset"), format!("`{o}` is not an offset like \"+08:00\"")))?,
        None => default_utc_offset(provider),
    };
    let pick = |own: &Option<String>, default: &Option<String>| own.clone().or_else(|| default.clone());
    let dur = |field: &str, own: &Option<String>, default: &Option<String>, fallback: &str, nonzero: bool| {
        let source = if own.is_some() { key(field) } else { format!("defaults.{field}") };
        duration(&source, pick(own, default).as_deref(), fallback, nonzero)
    };
    let freshness = Freshness {
        ttl: dur("ttl", &a.ttl, &d.ttl, "30s", false)?,
        timeout: dur("timeout", &a.timeout, &d.timeout, "5s", true)?,
        refresh_interval: dur("refresh_interval", &a.refresh_interval, &d.refresh_interval, "0s", false)?,
    };
    let retry = RetryPolicy {
        max_retries: a.max_retries.or(d.max_retries).unwrap_or(2),
        base_delay: dur("retry_base_delay", &a.retry_base_delay, &d.retry_base_delay, "200ms", false)?,
    };
    let threshold = a.circuit_failure_threshold.or(d.circuit_failure_threshold).unwrap_or(5);
    if threshold == 0 {
        return Err(ConfigError::new(key("circuit_failure_threshold"), "must be at least 1"));
    }
    let circuit = CircuitPolicy {
        failure_threshold: threshold,
        cooldown: dur("circuit_cooldown", &a.circuit_cooldown, &d.circuit_cooldown, "30s", true)?,
    };
    let provider = provider_config(i, a, provider)?;
    Ok(AccountConfig { id, base_url, utc_offset, freshness, retry, circuit, provider })
}

fn provider_config(i: usize, a: &RawAccount, provider: Provider) -> Result<ProviderConfig, ConfigError> {
    let key = |field: &str| format!("accounts[{i}].{field}");
    let secret = |field: &str, value: &Option<String>| {
        let value = value
            .as_deref()
            .ok_or_else(|| ConfigError::new(key(field), format!("is required for provider {provider}")))?;
        secret::resolve(value).map_err(|p| ConfigError::new(key(field), p))
    };
    let currency =
        |field: &str, value: &str| value.parse::<Currency>().map_err(|e| ConfigError::new(key(field), e.to_string()));
    Ok(match provider {
        Provider::Leanx => ProviderConfig::Leanx {
            auth_token: secret("auth_token", &a.auth_token)?,
            currency: currency("currency", a.currency.as_deref().unwrap_or("MYR"))?,
        },
        Provider::Luxtak => {
            ProviderConfig::Luxtak { app_id: secret("app_id", &a.app_id)?, app_key: secret("app_key", &a.app_key)? }
        }
        Provider::Ibanera => {
            let page_size = a.page_size.unwrap_or(100);
            if !(1..=1000).contains(&page_size) {
                return Err(ConfigError::new(key("page_size"), "must be between 1 and 1000"));
            }
            ProviderConfig::Ibanera {
                username: secret("username", &a.username)?,
                password: secret("password", &a.password)?,
                totp_secret: {
                    let s = secret("totp_secret", &a.totp_secret)?;
                    crate::providers::ibanera_secret_is_valid(&s)
                        .map_err(|p| ConfigError::new(key("totp_secret"), p))?;
                    s
                },
                page_size,
            }
        }
        Provider::Yedpay => {
            let company_id = a
                .company_id
                .as_deref()
                .ok_or_else(|| ConfigError::new(key("company_id"), "is required for provider yedpay"))?;
            if company_id.is_empty() || !company_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ConfigError::new(key("company_id"), "must be the company's id (letters and digits)"));
            }
            let currencies = match &a.currencies {
                None => vec![currency("currencies", "HKD")?],
                Some(list) if list.is_empty() => return Err(ConfigError::new(key("currencies"), "must not be empty")),
                Some(list) => list.iter().map(|c| currency("currencies", c)).collect::<Result<_, _>>()?,
            };
            ProviderConfig::Yedpay {
                access_token: secret("access_token", &a.access_token)?,
                company_id: company_id.to_owned(),
                currencies,
            }
        }
    })
}

/// A credential field of another provider is almost always a copy-paste slip; say so.
fn reject_foreign_fields(i: usize, a: &RawAccount, provider: Provider) -> Result<(), ConfigError> {
    let fields: [(&str, bool, Provider); 10] = [
        ("auth_token", a.auth_token.is_some(), Provider::Leanx),
        ("currency", a.currency.is_some(), Provider::Leanx),
        ("app_id", a.app_id.is_some(), Provider::Luxtak),
        ("app_key", a.app_key.is_some(), Provider::Luxtak),
        ("username", a.username.is_some(), Provider::Ibanera),
        ("password", a.password.is_some(), Provider::Ibanera),
        ("totp_secret", a.totp_secret.is_some(), Provider::Ibanera),
        ("page_size", a.page_size.is_some(), Provider::Ibanera),
        ("access_token", a.access_token.is_some(), Provider::Yedpay),
        ("company_id", a.company_id.is_some(), Provider::Yedpay),
    ];
    let foreign = fields.iter().find(|(_, present, owner)| *present && *owner != provider);
    let foreign = foreign.map(|(f, _, owner)| (*f, *owner)).or_else(|| {
        (a.currencies.is_some() && provider != Provider::Yedpay).then_some(("currencies", Provider::Yedpay))
    });
    match foreign {
        Some((field, owner)) => Err(ConfigError::new(
            format!("accounts[{i}].{field}"),
            format!("is a {owner} setting, not one of provider {provider}"),
        )),
        None => Ok(()),
    }
}

pub(super) fn default_base_url(provider: Provider) -> &'static str {
    match provider {
        Provider::Leanx => "https://api.leanx.io",
        Provider::Luxtak => "https://api.luxtak.com",
        Provider::Ibanera => "https://public-api.ibanera.com",
        Provider::Yedpay => "https://api.yedpay.com",
    }
}

/// LeanX and Yedpay document local (Malaysia / Hong Kong) naive times; the others send UTC.
fn default_utc_offset(provider: Provider) -> FixedOffset {
    let hours = match provider {
        Provider::Leanx | Provider::Yedpay => 8,
        Provider::Luxtak | Provider::Ibanera => 0,
    };
    FixedOffset::east_opt(hours * 3600).expect("offsets of ±8h are in range")
}

fn parse_base_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| ConfigError::new(key, format!("`{text}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(key, format!("`{text}` must be an http(s) URL with a host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(key, "must not have a query or fragment"));
    }
    Ok(url)
}

fn duration(key: &str, text: Option<&str>, fallback: &str, nonzero: bool) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, text.unwrap_or(fallback))?;
    if nonzero && d.is_zero() {
        return Err(ConfigError::new(key, "must be longer than zero"));
    }
    Ok(d)
}
