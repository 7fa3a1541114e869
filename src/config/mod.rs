//! Loading and validating the config file of SPEC §6.
//!
//! Layers, later wins: built-in defaults → the TOML file → `TALLY__SECTION__KEY` environment
//! variables. The raw file ([`raw`]) is then validated into [`Settings`]; every problem is
//! reported as one [`ConfigError`] naming the key (`accounts[2].app_key: …`).

mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::FixedOffset;
use secrecy::SecretString;
use url::Url;

use crate::domain::{AccountId, Provider};
use crate::providers::ProviderConfig;

pub use raw::RawConfig;

/// Where the settings came from, so start-up can say so in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    BuiltInDefaults,
}

/// A bad config: the key and what is wrong with it. Never holds a secret value.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}`: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}

/// Validated settings: everything tally needs to run, with secrets resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: ServerSettings,
    pub store: StoreSettings,
    pub auth: AuthSettings,
    pub metrics: MetricsSettings,
    pub events: EventsSettings,
    pub payouts: PayoutsSettings,
    pub accounts: Vec<AccountConfig>,
    /// `[[monitors]]` (SPEC §8.2), in config order.
    pub monitors: Vec<crate::domain::monitor::Monitor>,
    pub webhooks: Vec<WebhookConfig>,
    /// `[reporting]` (SPEC §10.4), when set.
    pub reporting: Option<crate::service::reporting::Reporting>,
}

/// One `[[webhooks]]` entry (SPEC §8.3): where and how events are delivered.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `[a-z0-9_-]{1,64}`, unique.
    pub id: String,
    /// An absolute http(s) URL. It may carry a credential (userinfo, a token in the query):
    /// shown only through [`WebhookConfig::shown_url`], never logged.
    pub url: Url,
    pub secret: WebhookSecret,
    /// During a rotation: every attempt is signed with both.
    pub previous_secret: Option<WebhookSecret>,
    /// The event types delivered; every type when empty.
    pub events: Vec<String>,
    /// The accounts whose events are delivered; every account when empty.
    pub accounts: Vec<AccountId>,
    /// How long one attempt may take, answer included.
    pub timeout: Duration,
    /// The delays before retries 1..n.
    pub retry_schedule: Vec<Duration>,
}

impl WebhookConfig {
    /// What the store needs to route events to this webhook.
    pub fn route(&self) -> crate::domain::webhook::Route {
        crate::domain::webhook::Route {
            id: self.id.clone(),
            events: self.events.clone(),
            accounts: self.accounts.clone(),
        }
    }

    /// The URL as the API shows it: a user, password or query value it carries is replaced by
    /// `REDACTED` (a receiver's token often travels there).
    pub fn shown_url(&self) -> String {
        let mut url = self.url.clone();
        if !url.username().is_empty() {
            let _ = url.set_username("REDACTED");
        }
        if url.password().is_some() {
            let _ = url.set_password(Some("REDACTED"));
        }
        if url.query().is_some() {
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            url.query_pairs_mut().clear().extend_pairs(keys.iter().map(|k| (k.as_str(), "REDACTED")));
        }
        url.to_string()
    }
}

/// A webhook's signing key: the bytes behind `whsec_…`, readable only on purpose
/// ([`WebhookSecret::expose`]); its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct WebhookSecret(std::sync::Arc<secrecy::SecretSlice<u8>>);

impl WebhookSecret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(std::sync::Arc::new(bytes.into()))
    }

    pub fn expose(&self) -> &[u8] {
        use secrecy::ExposeSecret;
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// `[events]`: how long events are kept, and how long a feed request may wait.
#[derive(Debug, Clone)]
pub struct EventsSettings {
    /// Events observed longer ago than this are pruned (default 30 days).
    pub retention: Duration,
    /// The longest a feed request's `wait` holds it open (default and at most 30 s): lower
    /// behind a proxy that cuts idle requests sooner. A longer `wait` is answered at this bound.
    pub max_wait: Duration,
}

/// `[payouts]` (SPEC §9.1): how non-final payouts are watched.
#[derive(Debug, Clone)]
pub struct PayoutsSettings {
    /// The delays between a watched payout's lookups, from when it is first watched; the last
    /// one repeats (default 30s, 1m, 2m, 5m, 10m, 30m, then every hour).
    pub watch_schedule: Vec<Duration>,
    /// How long a payout is watched, from when it was first watched (default 7 days).
    pub watch_for: Duration,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    /// The deadline of one API request; at the deadline tally answers with what it has.
    pub request_timeout: Duration,
    /// Upstream fetches running at once across the process.
    pub max_concurrent_fetches: usize,
    /// API requests in flight at once; more are shed with 503 and `Retry-After`.
    pub max_concurrent_requests: usize,
    pub body_limit_bytes: usize,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
    /// How long an HTTP/1 connection may take to send a request's whole head, counted from
    /// when tally is ready to read it: after connecting, and after each answer on a kept-alive
    /// connection.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight and no bytes moving.
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `sqlite://path` or `postgres://…`. Held as a secret: a PostgreSQL URL may carry a password.
    pub url: SecretString,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub api_keys: Vec<ApiKey>,
    pub allow_anonymous: bool,
}

/// A caller key, known only by the SHA-256 digest of its value.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub role: Role,
}

/// What a key may do (SPEC §5): `read` every `GET` (and the reads made by a `POST`, such as
/// watching a payout); `operate` also the actions of §8 (redeliver, recover, test a webhook).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    #[default]
    Read,
    Operate,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operate => "operate",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct MetricsSettings {
    pub require_auth: bool,
}

/// One configured provider account with its resolved settings.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub id: AccountId,
    /// Everything before the provider's documented path.
    pub base_url: Url,
    /// The offset naive upstream timestamps are read in.
    pub utc_offset: FixedOffset,
    pub freshness: Freshness,
    pub retry: RetryPolicy,
    pub circuit: CircuitPolicy,
    /// Upstream calls this account may make per minute, cluster-wide (SPEC §12); `None` is
    /// unlimited.
    pub max_calls_per_minute: Option<std::num::NonZeroU32>,
    pub provider: ProviderConfig,
}

impl AccountConfig {
    pub fn provider_kind(&self) -> Provider {
        self.provider.kind()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// A figure younger than this is served from cache.
    pub ttl: Duration,
    /// Bound on one fetch of this account (all its upstream calls).
    pub timeout: Duration,
    /// Background refresh period; zero means none.
    pub refresh_interval: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Further attempts after the first, for transient failures only.
    pub max_retries: u32,
    /// First backoff; doubles each attempt, with jitter.
    pub base_delay: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct CircuitPolicy {
    /// Consecutive failed fetches that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe is let through.
    pub cooldown: Duration,
}

/// Finds the config file: `--config`, else `$TALLY_CONFIG`, else `./tally.toml` if present.
pub fn locate(cli_path: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli_path {
        return Some(p.to_owned());
    }
    if let Some(p) = std::env::var_os("TALLY_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from("tally.toml");
    local.exists().then_some(local)
}

/// Loads and validates settings from a file (or built-in defaults) plus the environment.
pub fn load(path: Option<&Path>) -> Result<(Settings, Source), ConfigError> {
    let mut builder = config::Config::builder();
    let source = match path {
        Some(p) => {
            let key = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ConfigError::new("--config", format!("file {key} does not exist")),
                _ => ConfigError::new(&key, format!("cannot read the file: {e}")),
            })?;
            check_syntax(&key, &text)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            Source::File(p.to_owned())
        }
        None => Source::BuiltInDefaults,
    };
    builder = builder.add_source(environment());
    Ok((settings_from(builder, &file_key(&source))?, source))
}

/// Parses settings from TOML text alone (no environment layer): for tests and the demo.
pub fn from_toml(text: &str) -> Result<Settings, ConfigError> {
    check_syntax("(config)", text)?;
    settings_from(
        config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml)),
        "(config)",
    )
}

/// Builds, reads and validates the layered sources; an error of the whole document (not of
/// one key) is named by `whole`, the file it came from.
fn settings_from(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    whole: &str,
) -> Result<Settings, ConfigError> {
    let cfg = builder.build().map_err(|e| ConfigError::new(whole, e.to_string()))?;
    let raw: RawConfig = serde_path_to_error::deserialize(cfg).map_err(|e| {
        let key = e.path().to_string();
        ConfigError::new(if key == "." { whole.to_owned() } else { key }, e.into_inner().to_string())
    })?;
    validate::validate(raw)
}

/// Rejects a file that is not TOML, saying where and why in one line. The parser's own message
/// quotes the offending source line, which may hold a secret (an unterminated
/// `auth_token = "…`), so only its position and its short description are kept.
fn check_syntax(key: &str, text: &str) -> Result<(), ConfigError> {
    let Err(e) = toml::de::DeTable::parse(text) else { return Ok(()) };
    let at = e.span().map_or(0, |span| span.start.min(text.len()));
    let before = &text[..text.floor_char_boundary(at)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Err(ConfigError::new(key, format!("TOML syntax error at line {line}, column {column}: {}", e.message().trim())))
}

fn environment() -> config::Environment {
    config::Environment::with_prefix("TALLY").prefix_separator("__").separator("__").try_parsing(true)
}

fn file_key(source: &Source) -> String {
    match source {
        Source::File(p) => p.display().to_string(),
        Source::BuiltInDefaults => "(defaults)".to_owned(),
    }
}

/// Parses a duration written as `"30s"`, `"250ms"`, `"1m 30s"`.
pub fn parse_duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim())
        .map_err(|e| ConfigError::new(key, format!("`{text}` is not a duration like \"30s\" or \"250ms\" ({e})")))
}

#[cfg(test)]
mod tests;
