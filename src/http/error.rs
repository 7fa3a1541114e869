//! The API's error policy, in one table: every error has one HTTP status and one stable
//! snake_case `code` (messages may change, codes may not), rendered as RFC 9457
//! `application/problem+json`. 5xx bodies never carry internal text; the cause is logged once,
//! where it is handled.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::report::AccountError;

use crate::domain::{AccountId, Provider};
use crate::service::balances::SelectionError;
use crate::service::payouts::PayoutQueryError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The table of every stable error code of the API, one line per code: the variant, its HTTP
/// status, and its name on the wire. The enum, [`ErrorCode::ALL`] (the `Problem.code` enum of
/// the OpenAPI document, in this order), [`ErrorCode::status`] and [`ErrorCode::as_str`] are
/// generated from it, so a code cannot be added without its status and name.
macro_rules! error_codes {
    ($($code:ident => $status:ident, $name:literal;)*) => {
        /// Every stable error code of the API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCode {
            $($code,)*
        }

        impl ErrorCode {
            pub const ALL: [ErrorCode; [$($name),*].len()] = [$(Self::$code),*];

            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$code => StatusCode::$status,)*
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$code => $name,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidQuery            => BAD_REQUEST,           "invalid_query";
    UnknownParameter        => BAD_REQUEST,           "unknown_parameter";
    UnknownAccount          => BAD_REQUEST,           "unknown_account";
    UnknownProvider         => BAD_REQUEST,           "unknown_provider";
    InvalidMaxAge           => BAD_REQUEST,           "invalid_max_age";
    InvalidCurrency         => BAD_REQUEST,           "invalid_currency";
    InvalidInclude          => BAD_REQUEST,           "invalid_include";
    InvalidTime             => BAD_REQUEST,           "invalid_time";
    InvalidLimit            => BAD_REQUEST,           "invalid_limit";
    InvalidAsOf             => BAD_REQUEST,           "invalid_as_of";
    InvalidFormat           => BAD_REQUEST,           "invalid_format";
    InvalidDate             => BAD_REQUEST,           "invalid_date";
    InvalidTz               => BAD_REQUEST,           "invalid_tz";
    InvalidPayoutId         => BAD_REQUEST,           "invalid_payout_id";
    UnknownEventType        => BAD_REQUEST,           "unknown_event_type";
    PayoutLookupUnsupported => BAD_REQUEST,           "payout_lookup_unsupported";
    InvalidCallback         => BAD_REQUEST,           "invalid_callback";
    InvalidStatus           => BAD_REQUEST,           "invalid_status";
    Unauthorized            => UNAUTHORIZED,          "unauthorized";
    CallbackUnverified      => UNAUTHORIZED,          "callback_unverified";
    Forbidden               => FORBIDDEN,             "forbidden";
    RouteNotFound           => NOT_FOUND,             "route_not_found";
    PayoutNotFound          => NOT_FOUND,             "payout_not_found";
    EventNotFound           => NOT_FOUND,             "event_not_found";
    WebhookNotFound         => NOT_FOUND,             "webhook_not_found";
    CallbacksUnsupported    => NOT_FOUND,             "callbacks_unsupported";
    MethodNotAllowed        => METHOD_NOT_ALLOWED,    "method_not_allowed";
    RequestTimeout          => REQUEST_TIMEOUT,       "request_timeout";
    PayoutAmbiguous         => CONFLICT,              "payout_ambiguous";
    PayloadTooLarge         => PAYLOAD_TOO_LARGE,     "payload_too_large";
    Internal                => INTERNAL_SERVER_ERROR, "internal_error";
    UpstreamFailed          => BAD_GATEWAY,           "upstream_failed";
    NothingToServe          => SERVICE_UNAVAILABLE,   "nothing_to_serve";
    NotReady                => SERVICE_UNAVAILABLE,   "not_ready";
    Overloaded              => SERVICE_UNAVAILABLE,   "overloaded";
    RateBudgetExhausted     => SERVICE_UNAVAILABLE,   "rate_budget_exhausted";
    UpstreamTimeout         => GATEWAY_TIMEOUT,       "upstream_timeout";
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
    /// Another status than the code's own: only `unknown_account` in a path (`POST
    /// /callbacks/{account}`: SPEC §9.2 answers 404 there, 400 in a query).
    pub status: Option<StatusCode>,
    pub detail: String,
    pub retry_after_secs: Option<u64>,
    pub accounts: Option<Vec<ProblemAccount>>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { code, status: None, detail: detail.into(), retry_after_secs: None, accounts: None }
    }

    /// An account named in the path that no configured account has: `404`, code
    /// `unknown_account`.
    pub fn unknown_account_in_path(id: &str) -> Self {
        Self { status: Some(StatusCode::NOT_FOUND), ..Self::unknown_account(id) }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn with_accounts(mut self, accounts: Vec<ProblemAccount>) -> Self {
        self.accounts = Some(accounts);
        self
    }

    /// An account id the query names that no configured account has (or that is no account
    /// id at all: to the caller, both are an account tally does not know). Worded as the
    /// service words [`SelectionError::UnknownAccount`].
    pub fn unknown_account(id: &str) -> Self {
        Self::new(ErrorCode::UnknownAccount, format!("no account `{id}` is configured"))
    }
}

// The service's refusals of a query: its message is the detail, and the code says which
// refusal it is. Every handler that asks the service converts with `?`, so one refusal has one
// code on every route.

impl From<SelectionError> for ApiError {
    fn from(e: SelectionError) -> Self {
        let code = match e {
            SelectionError::UnknownAccount(_) => ErrorCode::UnknownAccount,
        };
        Self::new(code, e.to_string())
    }
}

impl From<PayoutQueryError> for ApiError {
    fn from(e: PayoutQueryError) -> Self {
        let code = match e {
            PayoutQueryError::UnknownAccount(_) => ErrorCode::UnknownAccount,
            PayoutQueryError::Unsupported(_) => ErrorCode::PayoutLookupUnsupported,
        };
        Self::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status.unwrap_or(self.code.status());
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
