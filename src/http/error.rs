//! The API's error policy, in one table: every error has one HTTP status and one stable
//! snake_case `code` (messages may change, codes may not), rendered as RFC 9457
//! `application/problem+json`. 5xx bodies never carry internal text; the cause is logged once,
//! where it is handled.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{AccountId, Provider};
use crate::service::report::AccountError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Every stable error code of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidQuery,
    UnknownParameter,
    UnknownAccount,
    UnknownProvider,
    InvalidMaxAge,
    InvalidCurrency,
    InvalidInclude,
    InvalidTime,
    InvalidLimit,
    InvalidPayoutId,
    PayoutLookupUnsupported,
    Unauthorized,
    RouteNotFound,
    PayoutNotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayoutAmbiguous,
    PayloadTooLarge,
    Internal,
    UpstreamFailed,
    NothingToServe,
    NotReady,
    Overloaded,
    UpstreamTimeout,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 24] = [
        Self::InvalidQuery,
        Self::UnknownParameter,
        Self::UnknownAccount,
        Self::UnknownProvider,
        Self::InvalidMaxAge,
        Self::InvalidCurrency,
        Self::InvalidInclude,
        Self::InvalidTime,
        Self::InvalidLimit,
        Self::InvalidPayoutId,
        Self::PayoutLookupUnsupported,
        Self::Unauthorized,
        Self::RouteNotFound,
        Self::PayoutNotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::PayoutAmbiguous,
        Self::PayloadTooLarge,
        Self::Internal,
        Self::UpstreamFailed,
        Self::NothingToServe,
        Self::NotReady,
        Self::Overloaded,
        Self::UpstreamTimeout,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidQuery
            | Self::UnknownParameter
            | Self::UnknownAccount
            | Self::UnknownProvider
            | Self::InvalidMaxAge
            | Self::InvalidCurrency
            | Self::InvalidInclude
            | Self::InvalidTime
            | Self::InvalidLimit
            | Self::InvalidPayoutId
            | Self::PayoutLookupUnsupported => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RouteNotFound | Self::PayoutNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayoutAmbiguous => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::UpstreamFailed => StatusCode::BAD_GATEWAY,
            Self::NothingToServe | Self::NotReady | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidQuery => "invalid_query",
            Self::UnknownParameter => "unknown_parameter",
            Self::UnknownAccount => "unknown_account",
            Self::UnknownProvider => "unknown_provider",
            Self::InvalidMaxAge => "invalid_max_age",
            Self::InvalidCurrency => "invalid_currency",
            Self::InvalidInclude => "invalid_include",
            Self::InvalidTime => "invalid_time",
            Self::InvalidLimit => "invalid_limit",
            Self::InvalidPayoutId => "invalid_payout_id",
            Self::PayoutLookupUnsupported => "payout_lookup_unsupported",
            Self::Unauthorized => "unauthorized",
            Self::RouteNotFound => "route_not_found",
            Self::PayoutNotFound => "payout_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout => "request_timeout",
            Self::PayoutAmbiguous => "payout_ambiguous",
            Self::PayloadTooLarge => "payload_too_large",
            Self::Internal => "internal_error",
            Self::UpstreamFailed => "upstream_failed",
            Self::NothingToServe => "nothing_to_serve",
            Self::NotReady => "not_ready",
            Self::Overloaded => "overloaded",
            Self::UpstreamTimeout => "upstream_timeout",
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[schema(example = "about:blank")]
    pub r#type: &'static str,
    #[schema(example = "Not Found")]
    pub title: &'static str,
    #[schema(example = 404)]
    pub status: u16,
    #[schema(example = "no account knows payout `X`")]
    pub detail: String,
    /// A stable snake_case code; messages may change, codes may not. The document lists every
    /// code (this schema's enum) and each response says which of them it carries.
    #[schema(example = "payout_not_found")]
    pub code: &'static str,
    /// The accounts behind the problem: those that know an ambiguous payout
    /// (`payout_ambiguous`), each failed lookup with its error (`upstream_failed`,
    /// `upstream_timeout`), or each selected account with nothing to serve (`nothing_to_serve`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<Vec<ProblemAccount>>,
}

/// An account named by a problem, and why it could not answer when it could not.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ProblemAccount {
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AccountError>,
}

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    pub accounts: Option<Vec<ProblemAccount>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, detail: detail.into(), retry_after_secs: None, accounts: None }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn with_accounts(mut self, accounts: Vec<ProblemAccount>) -> Self {
        self.accounts = Some(accounts);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let problem = Problem {
            r#type: "about:blank",
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.detail,
            code: self.code.as_str(),
            accounts: self.accounts,
        };
        let mut response = (status, axum::Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.code == ErrorCode::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s} is not snake_case");
        }
    }
}
