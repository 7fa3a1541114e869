//! The one place where upstream failures become the stable error codes of SPEC §3.
//!
//! Transport failures and HTTP statuses are classified here ([`UpstreamError::from_transport`],
//! [`UpstreamError::from_status`]); each provider's `transformers.rs` classifies its own
//! envelope codes by calling the constructors below, so every provider speaks the same codes.

use std::fmt;
use std::time::Duration;

/// The kind of an upstream failure; its [`code`](UpstreamErrorKind::code) is part of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamErrorKind {
    /// The upstream did not answer in time.
    Timeout,
    /// Connect error, reset, or a 5xx.
    Unavailable,
    /// HTTP 429 or the provider's own rate-limit code.
    RateLimited,
    /// Bad credentials. Never retried in a loop (Ibanera locks accounts).
    AuthFailed,
    /// The answer is not the documented JSON.
    InvalidResponse,
    /// A documented provider error code.
    Rejected,
    /// tally's circuit breaker is open for this account; no call was made.
    CircuitOpen,
}

impl UpstreamErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::Timeout => "upstream_timeout",
            Self::Unavailable => "upstream_unavailable",
            Self::RateLimited => "upstream_rate_limited",
            Self::AuthFailed => "upstream_auth_failed",
            Self::InvalidResponse => "upstream_invalid_response",
            Self::Rejected => "upstream_rejected",
            Self::CircuitOpen => "circuit_open",
        }
    }

    /// The kind with this [`code`](Self::code), for failures recorded by another replica.
    /// An unknown code (from a newer version) reads as `upstream_unavailable`.
    pub fn from_code(code: &str) -> Self {
        [
            Self::Timeout,
            Self::Unavailable,
            Self::RateLimited,
            Self::AuthFailed,
            Self::InvalidResponse,
            Self::Rejected,
            Self::CircuitOpen,
        ]
        .into_iter()
        .find(|k| k.code() == code)
        .unwrap_or(Self::Unavailable)
    }

    /// Transient failures are worth another attempt after a backoff.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable | Self::RateLimited)
    }
}

/// An upstream failure, carrying what the response and the log need. Its message never holds
/// a credential: constructors take text from the provider's answer, not from the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub message: String,
    /// The HTTP status the upstream answered with, when it answered at all.
    pub upstream_status: Option<u16>,
    /// How long the upstream asked us to wait (`Retry-After`), for rate limits and 503s.
    pub retry_after: Option<Duration>,
    /// The provider's own error code (`4004003`, `INVALID_TOKEN`, `Unauthenticated.`), kept
    /// for the response and the log.
    pub provider_code: Option<String>,
}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), upstream_status: None, retry_after: None, provider_code: None }
    }

    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Timeout, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Unavailable, message)
    }
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::RateLimited, message)
    }
    pub fn auth_failed(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::AuthFailed, message)
    }
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::InvalidResponse, message)
    }
    pub fn rejected(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::Rejected, message)
    }
    pub fn circuit_open(message: impl Into<String>) -> Self {
        Self::new(UpstreamErrorKind::CircuitOpen, message)
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }
    pub fn with_status_opt(mut self, status: Option<u16>) -> Self {
        self.upstream_status = status;
        self
    }
    pub fn with_retry_after(mut self, delay: Option<Duration>) -> Self {
        self.retry_after = delay;
        self
    }
    pub fn with_provider_code(mut self, code: impl Into<String>) -> Self {
        self.provider_code = Some(code.into());
        self
    }

    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// Classifies a transport-level failure from reqwest. The error's text is not used, since
    /// reqwest includes the request URL, which may carry an id.
    pub fn from_transport(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            Self::timeout("the provider did not answer in time")
        } else if err.is_connect() {
            Self::unavailable("could not connect to the provider")
        } else if err.is_body() || err.is_decode() {
            Self::unavailable("the provider's answer was cut off")
        } else {
            Self::unavailable("the request to the provider failed")
        }
    }

    /// Classifies an HTTP status that is an error whatever the body says: 429 and 5xx.
    /// Returns `None` for statuses whose meaning depends on the provider's envelope.
    pub fn from_status(status: u16, retry_after: Option<Duration>) -> Option<Self> {
        match status {
            429 => Some(
                Self::rate_limited("the provider is rate limiting tally")
                    .with_status(status)
                    .with_retry_after(retry_after),
            ),
            500..=599 => Some(
                Self::unavailable(format!("the provider answered HTTP {status}"))
                    .with_status(status)
                    .with_retry_after(retry_after),
            ),
            _ => None,
        }
    }
}

impl UpstreamError {
    /// Classifies an answer whose body is not the documented JSON. Its status still says
    /// something: a 401 or 403 is a refusal of tally's credentials whatever the body (gateways
    /// and proxies refuse with an HTML page or an empty body, which must not read as a broken
    /// provider and be retried); anything else is `upstream_invalid_response`.
    pub fn from_undocumented_body(status: u16, parse_error: &dyn fmt::Display) -> Self {
        let error = match status {
            401 | 403 => Self::auth_failed(format!(
                "the provider refused tally's credentials (HTTP {status}, without its documented JSON body)"
            )),
            _ => Self::invalid_response(format!("the provider's answer is not the documented JSON: {parse_error}")),
        };
        error.with_status(status)
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)?;
        if let Some(status) = self.upstream_status {
            write!(f, " (HTTP {status})")?;
        }
        Ok(())
    }
}

impl std::error::Error for UpstreamError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_that_are_errors_whatever_the_body() {
        let e = UpstreamError::from_status(429, Some(Duration::from_secs(7))).unwrap();
        assert_eq!(e.code(), "upstream_rate_limited");
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(UpstreamError::from_status(503, None).unwrap().code(), "upstream_unavailable");
        assert!(UpstreamError::from_status(401, None).is_none());
        assert!(UpstreamError::from_status(200, None).is_none());
    }

    #[test]
    fn an_undocumented_body_is_an_auth_failure_only_under_401_and_403() {
        for status in [401, 403] {
            let e = UpstreamError::from_undocumented_body(status, &"expected value at line 1");
            assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::AuthFailed, Some(status)));
        }
        for status in [200, 400, 404] {
            let e = UpstreamError::from_undocumented_body(status, &"expected value at line 1");
            assert_eq!((e.kind, e.upstream_status), (UpstreamErrorKind::InvalidResponse, Some(status)));
            assert!(e.message.contains("expected value at line 1"));
        }
    }

    #[test]
    fn only_transient_kinds_are_retried() {
        assert!(UpstreamErrorKind::Unavailable.is_transient());
        assert!(UpstreamErrorKind::RateLimited.is_transient());
        assert!(!UpstreamErrorKind::AuthFailed.is_transient());
        assert!(!UpstreamErrorKind::Rejected.is_transient());
    }
}
