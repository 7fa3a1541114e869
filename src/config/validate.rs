//! Raw config → [`Settings`]: defaults filled in, secrets resolved, every rule checked.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::FixedOffset;
use url::Url;

use super::raw::{RawAccount, RawConfig, RawDefaults};
use super::*;
use crate::domain::monitor::{Condition, Field, Monitor};
use crate::providers::{ProviderConfig, SettingError, registration};
use crate::secret;

pub(super) fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
    let server = server(&raw)?;
    // [defaults] is checked on its own, so a bad default is refused even before an account
    // uses it.
    policies(&RawDefaults::default(), |field| format!("defaults.{field}"), &raw.defaults)?;
    calls_per_minute(&RawDefaults::default(), |field| format!("defaults.{field}"), &raw.defaults)?;
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
    let events = EventsSettings {
        retention: duration("events.retention", raw.events.retention.as_deref(), "30d", true)?,
        max_wait: match duration("events.max_wait", raw.events.max_wait.as_deref(), "30s", true)? {
            w if w > Duration::from_secs(30) => {
                return Err(ConfigError::new("events.max_wait", "must be at most 30s (the feed's longest wait)"));
            }
            w => w,
        },
    };
    let payouts = payouts(&raw)?;
    let monitors = monitors(&raw, &accounts)?;
    let webhooks = webhooks(&raw, &accounts)?;
    let reporting = raw.reporting.as_ref().map(reporting).transpose()?;
    Ok(Settings {
        server,
        store,
        auth,
        metrics: MetricsSettings { require_auth: raw.metrics.require_auth },
        events,
        payouts,
        accounts,
        monitors,
        webhooks,
        reporting,
    })
}

/// `[reporting]`: a currency code, a scale of at most 12, `max_rate_age`, and rates (from the
/// config and the optional `rates_file`, lines `date,currency,rate`) that are positive exact
/// decimals, for known currency codes other than the reporting currency, one per currency and
/// date.
fn reporting(r: &super::raw::RawReporting) -> Result<crate::service::reporting::Reporting, ConfigError> {
    use crate::service::reporting::Reporting;
    let code = r.currency.as_deref().ok_or_else(|| ConfigError::new("reporting.currency", "is required"))?;
    let currency: crate::domain::Currency = code
        .parse()
        .map_err(|e: crate::domain::InvalidCurrency| ConfigError::new("reporting.currency", e.to_string()))?;
    let scale = match r.scale {
        None => 2,
        Some(s) if s <= 12 => s,
        Some(_) => return Err(ConfigError::new("reporting.scale", "must be from 0 to 12")),
    };
    let max_rate_age = duration("reporting.max_rate_age", r.max_rate_age.as_deref(), "7d", true)?;
    let mut reporting = Reporting::new(currency, scale, max_rate_age);
    for (i, rate) in r.rates.iter().enumerate() {
        let key = |field: &str| format!("reporting.rates[{i}].{field}");
        let item = |field: &str| -> Result<&str, ConfigError> {
            let value = match field {
                "currency" => rate.currency.as_deref(),
                "rate" => rate.rate.as_deref(),
                _ => rate.as_of.as_deref(),
            };
            value.ok_or_else(|| ConfigError::new(key(field), "is required"))
        };
        reporting
            .add_rate(item("currency")?, item("rate")?, item("as_of")?)
            .map_err(|(field, problem)| ConfigError::new(key(field), problem))?;
    }
    if let Some(path) = &r.rates_file {
        let key = "reporting.rates_file";
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::new(key, format!("cannot read `{path}`: {e}")))?;
        let mut lines = csv::ReaderBuilder::new().has_headers(false).trim(csv::Trim::All).from_reader(text.as_bytes());
        for (n, record) in lines.records().enumerate() {
            let record = record.map_err(|e| ConfigError::new(key, format!("line {}: {e}", n + 1)))?;
            let line = record.position().map_or(n as u64 + 1, csv::Position::line);
            if record.len() != 3 {
                return Err(ConfigError::new(key, format!("line {line}: expected `date,currency,rate`")));
            }
            // A header line is allowed.
            if line == 1 && &record[0] == "date" {
                continue;
            }
            reporting
                .add_rate(&record[1], &record[2], &record[0])
                .map_err(|(field, problem)| ConfigError::new(key, format!("line {line}, {field}: {problem}")))?;
        }
    }
    Ok(reporting)
}

/// `[[monitors]]`: ids unique; filters naming a configured account and a known provider;
/// exactly one of `below`/`above`; `clear` not on the firing side.
fn monitors(raw: &RawConfig, accounts: &[AccountConfig]) -> Result<Vec<Monitor>, ConfigError> {
    let mut ids = HashSet::new();
    raw.monitors
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let key = |field: &str| format!("monitors[{i}].{field}");
            let id = m.id.as_deref().ok_or_else(|| ConfigError::new(key("id"), "is required"))?;
            let valid = (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !valid {
                return Err(ConfigError::new(key("id"), "must be 1 to 64 of a-z, 0-9, `_` and `-`"));
            }
            if !ids.insert(id) {
                return Err(ConfigError::new(key("id"), format!("`{id}` is used twice")));
            }
            let account =
                match m.account.as_deref() {
                    None => None,
                    Some(a) => Some(accounts.iter().find(|c| c.id.as_str() == a).ok_or_else(|| {
                        ConfigError::new(key("account"), format!("`{a}` is not a configured account"))
                    })?),
                };
            let provider =
                match m.provider.as_deref() {
                    None => None,
                    Some(p) => Some(p.parse::<Provider>().map_err(|e: crate::domain::UnknownProvider| {
                        ConfigError::new(key("provider"), e.to_string())
                    })?),
                };
            if let (Some(a), Some(p)) = (account, provider)
                && a.provider_kind() != p
            {
                return Err(ConfigError::new(
                    key("provider"),
                    format!(
                        "account `{}` is of provider {}, so the monitor would match nothing",
                        a.id,
                        a.provider_kind()
                    ),
                ));
            }
            if m.wallet.as_deref().is_some_and(|w| w.is_empty() || w.chars().any(char::is_control)) {
                return Err(ConfigError::new(key("wallet"), "must be a non-empty wallet name"));
            }
            let currency = m.currency.as_deref().ok_or_else(|| ConfigError::new(key("currency"), "is required"))?;
            let currency: crate::domain::Currency = currency
                .parse()
                .map_err(|e: crate::domain::InvalidCurrency| ConfigError::new(key("currency"), e.to_string()))?;
            let field = match m.field.as_deref() {
                None => Field::Available,
                Some(f) => Field::parse(f).ok_or_else(|| {
                    ConfigError::new(key("field"), "must be `available`, `pending`, `reserved` or `total`")
                })?,
            };
            let amount = |field: &str, text: &str| {
                crate::domain::parse_decimal(text).map_err(|_| {
                    ConfigError::new(key(field), format!("`{text}` is not an exact decimal amount like \"500.00\""))
                })
            };
            let (condition, threshold) = match (m.below.as_deref(), m.above.as_deref()) {
                (Some(b), None) => (Condition::Below, amount("below", b)?),
                (None, Some(a)) => (Condition::Above, amount("above", a)?),
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(key("above"), "give one of `below` and `above`, not both"));
                }
                (None, None) => return Err(ConfigError::new(key("below"), "one of `below` and `above` is required")),
            };
            let clear = match m.clear.as_deref() {
                None => threshold,
                Some(c) => amount("clear", c)?,
            };
            match condition {
                Condition::Below if clear < threshold => {
                    return Err(ConfigError::new(
                        key("clear"),
                        "must be at least `below` (a figure under `below` fires)",
                    ));
                }
                Condition::Above if clear > threshold => {
                    return Err(ConfigError::new(
                        key("clear"),
                        "must be at most `above` (a figure over `above` fires)",
                    ));
                }
                _ => {}
            }
            Ok(Monitor {
                id: id.to_owned(),
                account: account.map(|a| a.id.clone()),
                provider,
                wallet: m.wallet.clone(),
                currency,
                field,
                condition,
                threshold,
                clear,
            })
        })
        .collect()
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
        header_read_timeout: duration("server.header_read_timeout", s.header_read_timeout.as_deref(), "10s", true)?,
        idle_timeout: duration("server.idle_timeout", s.idle_timeout.as_deref(), "60s", true)?,
    })
}

fn store(raw: &RawConfig) -> Result<StoreSettings, ConfigError> {
    let url = raw.store.url.as_deref().unwrap_or("sqlite://tally.db");
    let url = secret::resolve_plain(url).map_err(|p| ConfigError::new("store.url", p))?;
    if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // The value may hold a password, so it is not echoed back.
        return Err(ConfigError::new("store.url", "must start with sqlite:, postgres:// or postgresql://"));
    }
    if url.starts_with("postgres") {
        check_connect_parameters(&url)?;
    }
    let max_connections = match raw.store.max_connections {
        Some(0) => return Err(ConfigError::new("store.max_connections", "must be at least 1")),
        v => v.unwrap_or(10),
    };
    Ok(StoreSettings { url: url.into(), max_connections })
}

/// The PostgreSQL driver logs a connect parameter it does not know, value included, and goes
/// on without it: a mistyped `sslmode` would silently connect unencrypted, and a secret in
/// the wrong parameter would reach the log. Only the parameters it reads are taken; an error
/// names the parameter, never a value.
fn check_connect_parameters(url: &str) -> Result<(), ConfigError> {
    const KNOWN: [&str; 17] = [
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
    ];
    let url = Url::parse(url).map_err(|e| ConfigError::new("store.url", format!("is not a URL ({e})")))?;
    match url.query_pairs().find(|(key, _)| !KNOWN.contains(&key.as_ref()) && key != "options") {
        Some((key, _)) => Err(ConfigError::new(
            "store.url",
            format!("unknown connection parameter `{key}` (PostgreSQL takes {}, options)", KNOWN.join(", ")),
        )),
        None => Ok(()),
    }
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
            let role = match k.role.as_deref().map(str::trim) {
                None | Some("read") => Role::Read,
                Some("operate") => Role::Operate,
                Some(_) => {
                    return Err(ConfigError::new(format!("auth.api_keys[{i}].role"), "must be `read` or `operate`"));
                }
            };
            Ok(ApiKey { name: k.name.clone(), sha256, role })
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
    let registered = registration(provider)
        .ok_or_else(|| ConfigError::new(key("provider"), format!("provider {provider} is not registered")))?;
    let base_url = match &a.base_url {
        Some(u) => parse_base_url(&key("base_url"), u)?,
        None => Url::parse(registered.default_base_url).expect("registered base URLs are valid"),
    };
    let utc_offset = match &a.utc_offset {
        Some(o) => o
            .parse::<FixedOffset>()
            .map_err(|_| ConfigError::new(key("utc_offset"), format!("`{o}` is not an offset like \"+08:00\"")))?,
        None => registered.default_utc_offset,
    };
    let (freshness, retry, circuit) = policies(&overrides(a), key, d)?;
    let max_calls_per_minute = calls_per_minute(&overrides(a), key, d)?;
    let settings = serde_json::Value::Object(a.provider_settings.clone());
    let provider = ProviderConfig::read(provider, settings).map_err(|SettingError { key: field, problem }| {
        ConfigError::new(field.map_or_else(|| format!("accounts[{i}]"), |f| format!("accounts[{i}].{f}")), problem)
    })?;
    Ok(AccountConfig { id, base_url, utc_offset, freshness, retry, circuit, max_calls_per_minute, provider })
}

/// An account's own overrides of `[defaults]`.
fn overrides(a: &RawAccount) -> RawDefaults {
    RawDefaults {
        ttl: a.ttl.clone(),
        timeout: a.timeout.clone(),
        refresh_interval: a.refresh_interval.clone(),
        max_retries: a.max_retries,
        retry_base_delay: a.retry_base_delay.clone(),
        circuit_failure_threshold: a.circuit_failure_threshold,
        circuit_cooldown: a.circuit_cooldown.clone(),
        max_calls_per_minute: a.max_calls_per_minute,
    }
}

/// The account's upstream budget (SPEC §12): its own `max_calls_per_minute`, else
/// `[defaults]`, else unlimited; at least 1 (a budget of nothing would be an account that can
/// never be fetched: leave it out of the config instead).
fn calls_per_minute(
    own: &RawDefaults,
    key: impl Fn(&str) -> String,
    d: &RawDefaults,
) -> Result<Option<std::num::NonZeroU32>, ConfigError> {
    let field = "max_calls_per_minute";
    let Some(calls) = own.max_calls_per_minute.or(d.max_calls_per_minute) else {
        return Ok(None);
    };
    let source = if own.max_calls_per_minute.is_some() { key(field) } else { format!("defaults.{field}") };
    std::num::NonZeroU32::new(calls).map(Some).ok_or_else(|| ConfigError::new(source, "must be at least 1"))
}

/// The per-account settings: each from the account's own key (`own`, named by `key`), else
/// `[defaults]`, else built in; an error names the key that held the bad value.
fn policies(
    own: &RawDefaults,
    key: impl Fn(&str) -> String,
    d: &RawDefaults,
) -> Result<(Freshness, RetryPolicy, CircuitPolicy), ConfigError> {
    let pick = |own: &Option<String>, default: &Option<String>| own.clone().or_else(|| default.clone());
    let dur = |field: &str, own: &Option<String>, default: &Option<String>, fallback: &str, nonzero: bool| {
        let source = if own.is_some() { key(field) } else { format!("defaults.{field}") };
        duration(&source, pick(own, default).as_deref(), fallback, nonzero)
    };
    let a = own;
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
        let field = "circuit_failure_threshold";
        let source = if a.circuit_failure_threshold.is_some() { key(field) } else { format!("defaults.{field}") };
        return Err(ConfigError::new(source, "must be at least 1"));
    }
    let circuit = CircuitPolicy {
        failure_threshold: threshold,
        cooldown: dur("circuit_cooldown", &a.circuit_cooldown, &d.circuit_cooldown, "30s", true)?,
    };
    Ok((freshness, retry, circuit))
}

/// A provider's base URL. Errors never echo the value: a credential typed into it
/// (`https://user:secret@host`) would otherwise reach the terminal and the logs.
fn parse_base_url(key: &str, text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| ConfigError::new(key, format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ConfigError::new(key, "must be an http(s) URL with a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(key, "must not carry a user or password (credentials go in the provider's keys)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ConfigError::new(key, "must not have a query or fragment"));
    }
    Ok(url)
}

/// The longest duration any key takes. Every duration tally is given is added to a clock
/// somewhere; held to a year, none of that arithmetic can overflow, and a slip of units
/// (`"1000000years"`) is refused rather than obeyed.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(key: &str, text: Option<&str>, fallback: &str, nonzero: bool) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, text.unwrap_or(fallback))?;
    if nonzero && d.is_zero() {
        return Err(ConfigError::new(key, "must be longer than zero"));
    }
    if d > MAX_DURATION {
        return Err(ConfigError::new(key, "must be at most 365 days"));
    }
    Ok(d)
}

/// The most delays a watch schedule may list, and its shortest delay (a lookup per payout per
/// second at most).
const MAX_WATCH_STEPS: usize = 50;
const MIN_WATCH_DELAY: Duration = Duration::from_secs(1);

/// `[payouts]`: a schedule of 1 to 50 delays of at least 1 s each; `watch_for` above zero.
fn payouts(raw: &RawConfig) -> Result<PayoutsSettings, ConfigError> {
    let watch_schedule = match &raw.payouts.watch_schedule {
        None => ["30s", "1m", "2m", "5m", "10m", "30m", "1h"]
            .iter()
            .map(|d| parse_duration("", d))
            .collect::<Result<_, _>>()?,
        Some(list) if list.is_empty() || list.len() > MAX_WATCH_STEPS => {
            return Err(ConfigError::new("payouts.watch_schedule", format!("must list 1 to {MAX_WATCH_STEPS} delays")));
        }
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(j, d)| {
                let key = format!("payouts.watch_schedule[{j}]");
                let d = duration(&key, Some(d), "", true)?;
                if d < MIN_WATCH_DELAY {
                    return Err(ConfigError::new(key, "must be at least 1s"));
                }
                Ok(d)
            })
            .collect::<Result<_, _>>()?,
    };
    let watch_for = duration("payouts.watch_for", raw.payouts.watch_for.as_deref(), "7d", true)?;
    Ok(PayoutsSettings { watch_schedule, watch_for })
}

/// The longest a webhook attempt may take, and the most retries a schedule may hold.
const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
const MAX_RETRIES: usize = 20;

fn webhooks(raw: &RawConfig, accounts: &[AccountConfig]) -> Result<Vec<WebhookConfig>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raw.webhooks.len());
    for (i, w) in raw.webhooks.iter().enumerate() {
        let key = |field: &str| format!("webhooks[{i}].{field}");
        let id = w.id.as_deref().ok_or_else(|| ConfigError::new(key("id"), "is required"))?;
        let valid = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return Err(ConfigError::new(
                key("id"),
                format!("`{}` must be 1-64 characters from a-z, 0-9, `_` and `-`", id.escape_debug()),
            ));
        }
        if !seen.insert(id.to_owned()) {
            return Err(ConfigError::new(key("id"), format!("`{id}` is used twice")));
        }
        let url = w.url.as_deref().ok_or_else(|| ConfigError::new(key("url"), "is required"))?;
        let url = secret::resolve_plain(url).map_err(|p| ConfigError::new(key("url"), p))?;
        // Never echoed: the URL may carry a credential.
        let url =
            Url::parse(&url).map_err(|e| ConfigError::new(key("url"), format!("is not an absolute URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::new(key("url"), "must be an absolute http(s) URL with a host"));
        }
        let signing = |field: &str, text: &str| {
            let resolved = secret::resolve(text).map_err(|p| ConfigError::new(key(field), p))?;
            let bytes = crate::domain::webhook::parse_secret(secrecy::ExposeSecret::expose_secret(&resolved))
                .map_err(|p| ConfigError::new(key(field), p))?;
            Ok::<_, ConfigError>(WebhookSecret::new(bytes))
        };
        let secret =
            signing("secret", w.secret.as_deref().ok_or_else(|| ConfigError::new(key("secret"), "is required"))?)?;
        let previous_secret = w.previous_secret.as_deref().map(|p| signing("previous_secret", p)).transpose()?;
        let events = match &w.events {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    key("events"),
                    "must list at least one event type (leave it out for every type)",
                ));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, t)| match crate::domain::event::EVENT_TYPES.iter().find(|known| **known == t.as_str()) {
                    Some(known) => Ok((*known).to_owned()),
                    None => Err(ConfigError::new(
                        format!("webhooks[{i}].events[{j}]"),
                        format!(
                            "unknown event type `{}` (known: {})",
                            t.escape_debug(),
                            crate::domain::event::EVENT_TYPES.join(", ")
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let webhook_accounts = match &w.accounts {
            None => Vec::new(),
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new(
                    key("accounts"),
                    "must list at least one account (leave it out for every account)",
                ));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, a)| {
                    let id = a.parse::<AccountId>().ok().filter(|id| accounts.iter().any(|c| c.id == *id));
                    id.ok_or_else(|| {
                        ConfigError::new(
                            format!("webhooks[{i}].accounts[{j}]"),
                            format!("no account `{}` is configured", a.escape_debug()),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let timeout = duration(&key("timeout"), w.timeout.as_deref(), "10s", true)?;
        if timeout > MAX_WEBHOOK_TIMEOUT {
            return Err(ConfigError::new(key("timeout"), "must be at most 5m"));
        }
        let retry_schedule = match &w.retry_schedule {
            None => ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]
                .iter()
                .map(|d| parse_duration("", d))
                .collect::<Result<_, _>>()?,
            Some(list) if list.is_empty() || list.len() > MAX_RETRIES => {
                return Err(ConfigError::new(key("retry_schedule"), format!("must list 1 to {MAX_RETRIES} delays")));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(j, d)| duration(&format!("webhooks[{i}].retry_schedule[{j}]"), Some(d), "", true))
                .collect::<Result<_, _>>()?,
        };
        out.push(WebhookConfig {
            id: id.to_owned(),
            url,
            secret,
            previous_secret,
            events,
            accounts: webhook_accounts,
            timeout,
            retry_schedule,
        });
    }
    Ok(out)
}
