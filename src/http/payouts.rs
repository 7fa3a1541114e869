//! `GET /payouts/{id}`, `GET /payouts` and `POST /payouts/{id}/watch`.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorCode, Problem, ProblemAccount};
use super::query::Params;
use super::report::AccountError;
use crate::domain::event::PayoutObject;
use crate::domain::{AccountId, Currency, PayoutFailure, PayoutStatus, Provider};
use crate::providers::UpstreamErrorKind;
use crate::service::payout_watch::WatchError;
use crate::service::payouts::{PayoutAnswer, PayoutQuery, PayoutView};
use crate::store::PayoutListQuery;

/// The longest payout id accepted (LeanX and Luxtak ids are far shorter).
const MAX_ID_CHARS: usize = 128;

/// One payout, normalized.
#[derive(Serialize, ToSchema)]
pub struct PayoutResponse {
    /// The provider's payout id.
    #[schema(example = "PAYOUT-A9D5:174307-LEANX")]
    pub id: String,
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    pub provider: Provider,
    pub status: PayoutStatus,
    /// The status exactly as the provider sent it.
    #[schema(example = "SUCCESS")]
    pub provider_status: String,
    /// True when the provider documents this status as final.
    #[serde(rename = "final")]
    pub is_final: bool,
    #[schema(value_type = Option<String>, example = "13.00", pattern = r"^-?\d+(\.\d+)?$")]
    pub amount: Option<rust_decimal::Decimal>,
    #[schema(value_type = Option<String>, example = "MYR")]
    pub currency: Option<Currency>,
    #[schema(value_type = Option<String>, example = "0.00", pattern = r"^-?\d+(\.\d+)?$")]
    pub fee: Option<rust_decimal::Decimal>,
    /// The merchant's own reference (LeanX `external_invoice_ref`, Luxtak `custom_code`).
    #[schema(example = "INVOICE1234")]
    pub reference: Option<String>,
    pub failure: Option<PayoutFailure>,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    /// When tally last observed this payout at the provider.
    pub fetched_at: DateTime<Utc>,
    /// True when a refresh failed and the stored observation is served.
    pub stale: bool,
    /// Why the refresh failed, or was not made (`rate_budget_exhausted`); null otherwise.
    pub error: Option<AccountError>,
}

impl From<PayoutView> for PayoutResponse {
    fn from(view: PayoutView) -> Self {
        // The object events carry too: one construction from the domain payout.
        let s = view.stored;
        let p = PayoutObject::of(&s.account, s.provider, &s.payout, s.fetched_at);
        Self {
            id: p.id,
            account: p.account,
            provider: p.provider,
            status: p.status,
            provider_status: p.provider_status,
            is_final: p.is_final,
            amount: p.amount,
            currency: p.currency,
            fee: p.fee,
            reference: p.reference,
            failure: p.failure,
            created_at: p.created_at,
            updated_at: p.updated_at,
            fetched_at: p.fetched_at,
            stale: view.stale,
            error: view.error.map(AccountError::from),
        }
    }
}

/// The status of one payout, by the provider's id or the merchant's reference, across every
/// payout-capable account (or only `account`).
#[utoipa::path(
    get,
    path = "/payouts/{id}",
    tag = "payouts",
    params(
        ("id" = String, Path, description = "The provider's payout id or the merchant's reference, percent-encoded (LeanX ids contain `:`). Printable, at most 128 characters.", example = "PAYOUT-A9D5:174307-LEANX"),
        ("account" = Option<String>, Query, description = "Look only in this account."),
        ("max_age" = Option<u32>, Query, description = "Accept a stored non-final payout at most this many seconds old (default 10); 0 forces a lookup even for a final payout.", minimum = 0),
    ),
    responses(
        (status = 200, description = "Exactly one account knows the payout.", body = PayoutResponse),
        (status = 400, description = "Bad request: `invalid_payout_id`, `unknown_parameter`, `invalid_query`, `unknown_account`, `invalid_max_age`, `payout_lookup_unsupported`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No asked account knows the id: `payout_not_found`.", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Several accounts know the id and no `account` was given: `payout_ambiguous`; `accounts` lists them.", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "No account found the id and at least one lookup failed with nothing stored: `upstream_failed`; `accounts` has each failed lookup's error.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "tally is overloaded (`overloaded`), or the payout is not stored and no asked account's upstream budget can afford a lookup now (`rate_budget_exhausted`; `accounts` has each account's error); see `Retry-After`.", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again."))),
        (status = 504, description = "As 502, when every failed lookup timed out: `upstream_timeout`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn get_payout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<PayoutResponse>, ApiError> {
    validate_id(&id)?;
    let params = Params::parse(query.as_deref(), &["account", "max_age"])?;
    let account = params
        .single("account")?
        .map(|a| a.parse::<AccountId>().map_err(|_| ApiError::unknown_account(a)))
        .transpose()?;
    let query = PayoutQuery { id: id.clone(), account, max_age: params.max_age()? };
    let answer = state.service.payout(&query).await?;
    match answer {
        PayoutAnswer::Found(view) => Ok(axum::Json((*view).into())),
        PayoutAnswer::NotFound => {
            Err(ApiError::new(ErrorCode::PayoutNotFound, format!("no account knows payout `{id}`")))
        }
        PayoutAnswer::Ambiguous(accounts) => Err(ApiError::new(
            ErrorCode::PayoutAmbiguous,
            format!("several accounts know payout `{id}`; ask one with `account`"),
        )
        .with_accounts(accounts.into_iter().map(|a| problem_account(&state, a, None)).collect())),
        PayoutAnswer::Failed(errors) if errors.iter().all(|(_, f)| f.denied.is_some()) => {
            // No lookup was made: every asked account's upstream budget is spent (or paused).
            let wait = errors.iter().filter_map(|(_, f)| f.retry_after()).min().unwrap_or_default();
            let accounts = errors
                .into_iter()
                .map(|(a, failure)| problem_account(&state, a, Some(AccountError::from(failure))))
                .collect();
            let detail = "the payout is not stored, and the upstream budget cannot afford a lookup now";
            Err(ApiError::new(ErrorCode::RateBudgetExhausted, detail)
                .retry_after(wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0)))
                .with_accounts(accounts))
        }
        PayoutAnswer::Failed(errors) => {
            let all_timeouts = errors.iter().all(|(_, f)| f.error.kind == UpstreamErrorKind::Timeout);
            let code = if all_timeouts { ErrorCode::UpstreamTimeout } else { ErrorCode::UpstreamFailed };
            let accounts = errors
                .into_iter()
                .map(|(a, failure)| problem_account(&state, a, Some(AccountError::from(failure))))
                .collect();
            let detail = "no account found the payout, and a lookup failed with nothing stored: it may be there";
            Err(ApiError::new(code, detail).with_accounts(accounts))
        }
    }
}

/// A payout tally keeps, with its watch.
#[derive(Serialize, ToSchema)]
pub struct ListedPayout {
    #[serde(flatten)]
    pub payout: PayoutResponse,
    /// True while tally looks it up again by itself (not final, within `watch_for`).
    pub watched: bool,
    /// When the watch looks it up next; null when not watched.
    pub next_check_at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct PayoutsResponse {
    /// Newest first (the provider's creation time, else when tally last saw it).
    pub payouts: Vec<ListedPayout>,
}

/// The payouts tally knows (stored), newest first, each with its watch.
#[utoipa::path(
    get,
    path = "/payouts",
    tag = "payouts",
    params(
        ("account" = Option<String>, Query, description = "Only this account's payouts."),
        ("status" = Option<PayoutStatus>, Query, description = "Only payouts in this normalized status."),
        ("final" = Option<bool>, Query, description = "Only final (`true`) or non-final (`false`) payouts."),
        ("limit" = Option<u32>, Query, description = "At most this many (1-1000, default 100).", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "The stored payouts, newest first.", body = PayoutsResponse),
        (status = 400, description = "Bad query: `unknown_parameter`, `invalid_query`, `unknown_account`, `invalid_status`, `invalid_limit`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn list_payouts(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<axum::Json<PayoutsResponse>, ApiError> {
    let params = Params::parse(query.as_deref(), &["account", "status", "final", "limit"])?;
    let account = super::callbacks::configured_account(&state, params.single("account")?)?;
    let status = params
        .single("status")?
        .map(|s| {
            PayoutStatus::parse(s)
                .ok_or_else(|| ApiError::new(ErrorCode::InvalidStatus, format!("`{s}` is no payout status")))
        })
        .transpose()?;
    let is_final = match params.single("final")? {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::new(ErrorCode::InvalidQuery, format!("`final` is `true` or `false`, not `{other}`")));
        }
    };
    let limit = super::callbacks::limit(params.single("limit")?)?;
    let query = PayoutListQuery { account, status, is_final, limit };
    let listed = state.service.list_payouts(&query).await.map_err(super::events::store_failed)?;
    let payouts = listed
        .into_iter()
        .map(|(stored, watch)| ListedPayout {
            payout: PayoutView { stored, stale: false, error: None }.into(),
            watched: watch.is_some(),
            next_check_at: watch.map(|w| w.next_check_at),
        })
        .collect();
    Ok(axum::Json(PayoutsResponse { payouts }))
}

/// A payout's watch, as `POST /payouts/{id}/watch` answers it.
#[derive(Serialize, ToSchema)]
pub struct WatchResponse {
    /// The provider's id once the payout is stored; until then the id given.
    #[schema(example = "PAYOUT-B7E1:091512-LEANX")]
    pub id: String,
    #[schema(value_type = String, example = "leanx-main")]
    pub account: AccountId,
    /// The stored status; null until the payout is found.
    pub status: Option<PayoutStatus>,
    /// True when the payout is stored in a final status (then it is not watched).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// When the watch looks it up next; null for a final payout.
    pub next_check_at: Option<DateTime<Utc>>,
    /// When the watch ends if the payout is not final by then; null for a final payout.
    pub watch_until: Option<DateTime<Utc>>,
}

/// Watches a payout: tally looks it up again on `[payouts] watch_schedule` until it is final or
/// `watch_for` has passed, raising `payout.status_changed` / `payout.finalized` on each change.
/// An id not found yet stays watched (the payout may not be visible yet).
#[utoipa::path(
    post,
    path = "/payouts/{id}/watch",
    tag = "payouts",
    params(
        ("id" = String, Path, description = "The provider's payout id or the merchant's reference, percent-encoded.", example = "PAYOUT-B7E1:091512-LEANX"),
        ("account" = String, Query, description = "The account the payout belongs to (required)."),
    ),
    responses(
        (status = 202, description = "Watched (or final already: `final` true, nothing to watch).", body = WatchResponse),
        (status = 400, description = "Bad request: `invalid_payout_id`, `unknown_parameter`, `invalid_query` (no `account`), `unknown_account`, `payout_lookup_unsupported`.", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or unknown API key: `unauthorized`.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store is unreachable: `not_ready`.", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []), ()),
)]
pub async fn watch_payout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<(StatusCode, axum::Json<WatchResponse>), ApiError> {
    validate_id(&id)?;
    let params = Params::parse(query.as_deref(), &["account"])?;
    let given = params
        .single("account")?
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidQuery, "`account` is required: the account the payout is at"))?;
    let account = given.parse::<AccountId>().map_err(|_| ApiError::unknown_account(given))?;
    let (stored, watch) = match state.service.request_watch(&account, &id).await {
        Ok(found) => found,
        Err(WatchError::Query(e)) => return Err(e.into()),
        Err(WatchError::Store(e)) => return Err(super::events::store_failed(e)),
    };
    let answer = WatchResponse {
        id: stored.as_ref().map_or(id, |s| s.payout.id.clone()),
        account,
        status: stored.as_ref().map(|s| s.payout.status),
        is_final: stored.as_ref().is_some_and(|s| s.payout.is_final),
        next_check_at: watch.as_ref().map(|w| w.next_check_at),
        watch_until: watch.as_ref().map(|w| w.watch_until),
    };
    Ok((StatusCode::ACCEPTED, axum::Json(answer)))
}

fn problem_account(state: &AppState, account: AccountId, error: Option<AccountError>) -> ProblemAccount {
    // The service only names configured accounts.
    let provider = state.service.account(&account).expect("a configured account").provider();
    ProblemAccount { account, provider, error }
}

fn validate_id(id: &str) -> Result<(), ApiError> {
    let chars = id.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS || id.chars().any(forbidden) {
        return Err(ApiError::new(
            ErrorCode::InvalidPayoutId,
            format!("a payout id is 1 to {MAX_ID_CHARS} printable characters"),
        ));
    }
    Ok(())
}

/// What a payout id may not hold: control characters, and invisible format characters (soft
/// hyphen, zero-width spaces and joiners, bidirectional controls, the byte-order mark) that
/// make two different ids look alike in a log or a support ticket. One table serves the check
/// and the OpenAPI `pattern`, so the two cannot disagree.
const FORBIDDEN: [(char, char); 10] = [
    ('\u{0}', '\u{1f}'),
    ('\u{7f}', '\u{9f}'),
    ('\u{ad}', '\u{ad}'),
    ('\u{61c}', '\u{61c}'),
    ('\u{180e}', '\u{180e}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{2028}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206f}'),
    ('\u{feff}', '\u{feff}'),
];

fn forbidden(c: char) -> bool {
    FORBIDDEN.iter().any(|&(from, to)| (from..=to).contains(&c))
}

/// The OpenAPI `pattern` of a payout id: none of [`FORBIDDEN`].
pub(super) fn id_pattern() -> String {
    let escape = |c: char| format!("\\u{:04x}", u32::from(c));
    let range =
        |&(from, to): &(char, char)| if from == to { escape(from) } else { format!("{}-{}", escape(from), escape(to)) };
    let ranges: String = FORBIDDEN.iter().map(range).collect();
    format!("^[^{ranges}]+$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_printable_and_bounded() {
        for ok in ["PAYOUT-A9D5:174307-LEANX", "a/b c", "€ü中", &"x".repeat(128)] {
            assert!(validate_id(ok).is_ok(), "{ok:?} is a valid id");
        }
        for bad in ["", "a\nb", "a\u{7f}", "pay\u{200b}out", "\u{202e}tuoyap", "\u{feff}id", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn the_documented_pattern_accepts_exactly_what_the_check_accepts() {
        let pattern = regex::Regex::new(&id_pattern()).unwrap();
        for c in (0..=0x3000u32).chain(0xfe00..=0xffff).filter_map(char::from_u32) {
            assert_eq!(pattern.is_match(&c.to_string()), !forbidden(c), "U+{:04X}", u32::from(c));
        }
    }
}
